//! The AsyncAPI 3.0 documents `#[mqrpc::service]` generates: valid for the
//! official AsyncAPI parser (`tests/asyncapi/validate.mjs`, run with Node),
//! and true to the wire — the documented addresses are the topics a real
//! server serves, and a raw MQTT client that follows the document gets its
//! answers.
//!
//! The validator needs `npm ci --prefix tests/asyncapi`; without it those
//! checks are skipped with a notice, unless `MQRPC_REQUIRE_ASYNCAPI=1`
//! (CI sets it), which makes them fail.

// `Shop::misc` takes one argument of each kind; the generated broadcast
// methods do not carry the method's own `#[allow]` attributes.
#![allow(clippy::too_many_arguments)]

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use mqrpc::asyncapi::{to_json_pretty, AsyncApiOptions, Value};
use mqrpc::{Codec, ServerOptions, Service};
use mqrpc_tests::raw::{content_type_of, correlation_of, request_properties, status_of, RawPeer};
use mqrpc_tests::{Calc, CalculatorServer};

/// Set to `1` to fail instead of skipping when the validator is not installed.
const REQUIRE_ENV: &str = "MQRPC_REQUIRE_ASYNCAPI";

/// A line of an order: derives `JsonSchema`, so it gets its full schema.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, schemars::JsonSchema)]
pub struct Line {
    /// Stock keeping unit.
    pub sku: String,
    pub quantity: u32,
}

/// An order: derives `JsonSchema`.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, schemars::JsonSchema)]
pub struct Order {
    pub id: u64,
    pub lines: Vec<Line>,
    pub note: Option<String>,
}

/// The shop's typed error: no `JsonSchema`, so it gets the placeholder.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub enum ShopError {
    NotFound(u64),
    OutOfStock { sku: String },
}

/// Neither `JsonSchema` nor a std type.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Opaque(pub u8);

/// A shop, with every kind of method.
#[mqrpc::service(name = "shop")]
pub trait Shop {
    /// Places an order.
    ///
    /// Returns the order's number.
    async fn place(&self, order: Order, priority: Option<u8>) -> Result<u64, ShopError>;
    /// Stock of each SKU.
    #[mqrpc(name = "stock-levels")]
    async fn stock(&self, skus: Vec<String>) -> HashMap<String, u32>;
    /// Writes a line to the audit log.
    #[mqrpc(oneway)]
    async fn audit(&self, line: String);
    /// Stock changes of one SKU: (time, delta).
    async fn watch(&self, sku: String) -> mqrpc::Stream<(u64, i32)>;
    #[mqrpc(qos = 2)]
    async fn misc(
        &self,
        c: char,
        bytes: [u8; 4],
        flag: bool,
        ratio: f32,
        blobs: Vec<Opaque>,
        keyed: BTreeMap<u16, Opaque>,
        r#type: String,
        nothing: (),
    ) -> Option<Vec<Order>>;
}

/// The validator script, when its dependencies are installed; `None` (with
/// a notice) otherwise, or a panic when [`REQUIRE_ENV`] is `1`.
fn validator() -> Option<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("asyncapi");
    let installed = dir
        .join("node_modules/@asyncapi/parser/package.json")
        .is_file();
    let node = Command::new("node").arg("--version").output().is_ok();
    if installed && node {
        return Some(dir.join("validate.mjs"));
    }
    let missing = if node {
        "tests/asyncapi/node_modules (run `npm ci --prefix tests/asyncapi`)"
    } else {
        "node"
    };
    if std::env::var(REQUIRE_ENV).as_deref() == Ok("1") {
        panic!("the AsyncAPI validator is not installed: missing {missing}, and {REQUIRE_ENV}=1");
    }
    eprintln!("NOTICE: skipping AsyncAPI validation: missing {missing} (set {REQUIRE_ENV}=1 to fail instead)");
    None
}

/// Runs the official parser on `doc`: `Ok(output)` when it reports no
/// error, `Err(output)` otherwise. `None` when the validator is missing.
fn validate(doc: &Value) -> Option<Result<String, String>> {
    let script = validator()?;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("asyncapi.json");
    std::fs::write(&file, to_json_pretty(doc)).unwrap();
    let output = Command::new("node")
        .arg(&script)
        .arg(&file)
        .output()
        .expect("run node");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    println!("{text}");
    Some(if output.status.success() {
        Ok(text)
    } else {
        Err(text)
    })
}

fn assert_valid(doc: &Value) {
    if let Some(Err(output)) = validate(doc) {
        panic!(
            "the AsyncAPI parser rejected the document:\n{output}\n{}",
            to_json_pretty(doc)
        );
    }
}

fn calculator(options: &AsyncApiOptions) -> Value {
    CalculatorServer::asyncapi(options)
}

#[test]
fn calculator_document_is_valid_asyncapi() {
    assert_valid(&calculator(&AsyncApiOptions::new()));
    assert_valid(&calculator(
        &AsyncApiOptions::new()
            .title("Calculator")
            .version("9.9.9")
            .description("Test service.")
            .prefix("acme/prod/rpc")
            .broker("mqtt://user:secret@127.0.0.1:1884")
            .unwrap()
            .codecs([Codec::Postcard]),
    ));
}

#[test]
fn shop_document_is_valid_asyncapi() {
    assert_valid(&ShopServer::asyncapi(&AsyncApiOptions::new()));
    assert_valid(&ShopServer::asyncapi(
        &AsyncApiOptions::new().codecs([Codec::Json]),
    ));
}

/// The validator is not a rubber stamp: it rejects a broken document.
#[test]
fn validator_rejects_a_broken_document() {
    let mut doc = ShopServer::asyncapi(&AsyncApiOptions::new());
    doc["operations"]["place"]["action"] = "listen".into();
    if let Some(result) = validate(&doc) {
        let output = result.expect_err("an operation with action `listen` must be rejected");
        assert!(output.contains("error"), "{output}");
    }
    let mut doc = ShopServer::asyncapi(&AsyncApiOptions::new());
    doc["operations"]["place"]["reply"]["channel"]["$ref"] = "#/channels/nowhere".into();
    if let Some(result) = validate(&doc) {
        result.expect_err("a reply to a channel that does not exist must be rejected");
    }
}

fn pointer<'a>(doc: &'a Value, path: &str) -> &'a Value {
    doc.pointer(path)
        .unwrap_or_else(|| panic!("{path} missing in\n{}", to_json_pretty(doc)))
}

/// Follows a `{"$ref": "#/..."}`.
fn resolve<'a>(doc: &'a Value, reference: &Value) -> &'a Value {
    let target = reference["$ref"].as_str().expect("a $ref");
    pointer(doc, target.strip_prefix('#').expect("a local $ref"))
}

#[test]
fn document_describes_the_protocol() {
    let doc = ShopServer::asyncapi(&AsyncApiOptions::new().broker("mqtt://10.1.2.3").unwrap());
    assert_eq!(doc["asyncapi"], "3.0.0");
    assert_eq!(doc["info"]["title"], "shop");
    assert_eq!(doc["info"]["version"], env!("CARGO_PKG_VERSION"));
    assert!(doc["info"]["description"]
        .as_str()
        .unwrap()
        .starts_with("A shop, with every kind of method."));
    assert_eq!(pointer(&doc, "/servers/broker/host"), "10.1.2.3:1883");
    assert_eq!(pointer(&doc, "/servers/broker/protocol"), "mqtt");

    // One channel per method at its real wire name, the renamed one included.
    assert_eq!(pointer(&doc, "/channels/place/address"), "mqrpc/shop/place");
    assert_eq!(
        pointer(&doc, "/channels/stock-levels/address"),
        "mqrpc/shop/stock-levels"
    );
    assert_eq!(
        pointer(&doc, "/channels/_cancel/address"),
        "mqrpc/shop/_cancel"
    );
    assert!(pointer(&doc, "/channels/_replies/address").is_null());

    // The server receives requests and replies on the Response Topic.
    let place = pointer(&doc, "/operations/place");
    assert_eq!(place["action"], "receive");
    assert_eq!(place["summary"], "Places an order.");
    assert_eq!(place["bindings"]["mqtt"]["qos"], 1);
    assert_eq!(place["bindings"]["mqtt"]["bindingVersion"], "0.2.0");
    assert_eq!(
        place["reply"]["address"]["location"],
        "$message.header#/responseTopic"
    );
    assert_eq!(pointer(&doc, "/operations/misc/bindings/mqtt/qos"), 2);

    // Request messages, one per content type.
    let json_request = resolve(&doc, &place["messages"][0]);
    assert_eq!(json_request["contentType"], "application/json");
    assert_eq!(
        json_request["bindings"]["mqtt"]["contentType"],
        "application/json"
    );
    assert!(json_request["bindings"]["mqtt"]["correlationData"].is_object());
    assert!(json_request["bindings"]["mqtt"]["responseTopic"].is_object());
    let postcard_request = resolve(&doc, &place["messages"][1]);
    assert_eq!(postcard_request["contentType"], "application/postcard");
    // postcard is positional: every field is there, `None` included.
    assert_eq!(
        postcard_request["payload"]["required"],
        serde_json::json!(["order", "priority"])
    );

    // JSON arguments: an object by name (Option fields optional) or an array.
    let by_name = &json_request["payload"]["oneOf"][0];
    assert_eq!(by_name["type"], "object");
    assert_eq!(by_name["required"], serde_json::json!(["order"]));
    let in_order = &json_request["payload"]["oneOf"][1];
    assert_eq!(in_order["type"], "array");
    assert_eq!(in_order["minItems"], 2);
    assert_eq!(in_order["maxItems"], 2);

    // The Result method: `ok` carries the T, `error` the E, plus failures.
    let replies: Vec<&Value> = place["reply"]["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| resolve(&doc, r))
        .collect();
    let by_name = |name: &str, content_type: &str| {
        replies
            .iter()
            .find(|m| m["name"] == name && m["contentType"] == content_type)
            .unwrap_or_else(|| panic!("no reply {name} ({content_type})"))
    };
    let ok = by_name("place_result", "application/json");
    assert_eq!(ok["payload"]["type"], "integer");
    assert_eq!(ok["payload"]["maximum"], u64::MAX);
    let error = by_name("place_error", "application/json");
    assert_eq!(
        error["headers"]["required"],
        serde_json::json!(["mqrpc-status"])
    );
    assert_eq!(
        error["headers"]["properties"]["mqrpc-status"]["const"],
        "error"
    );
    assert_eq!(error["payload"]["title"], "ShopError");
    let failure = by_name("failure", "text/plain; charset=utf-8");
    let statuses = failure["headers"]["properties"]["mqrpc-status"]["enum"]
        .as_array()
        .unwrap();
    assert!(statuses.contains(&"bad-request".into()));
    assert!(statuses.contains(&"deadline-exceeded".into()));

    // One-way: no reply.
    assert!(pointer(&doc, "/operations/audit").get("reply").is_none());

    // Streaming: items with their sequence number, then the end marker.
    let watch = pointer(&doc, "/operations/watch");
    let names: Vec<&str> = watch["reply"]["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| resolve(&doc, r)["name"].as_str().unwrap())
        .collect();
    assert!(names.contains(&"watch_item"), "{names:?}");
    assert!(names.contains(&"watch_end"), "{names:?}");
    let item = pointer(&doc, "/channels/_replies/messages/watch_item_json");
    assert_eq!(item["headers"]["properties"]["mqrpc-seq"]["type"], "string");
    assert_eq!(item["payload"]["type"], "array");
    assert_eq!(item["payload"]["minItems"], 2);
    assert_eq!(item["payload"]["items"][1]["minimum"], i32::MIN);
    let end = pointer(&doc, "/channels/_replies/messages/watch_end");
    assert_eq!(end["headers"]["properties"]["mqrpc-status"]["const"], "end");
}

#[test]
fn primitive_and_std_types_get_structural_schemas() {
    let doc = ShopServer::asyncapi(&AsyncApiOptions::new());
    let args = pointer(
        &doc,
        "/channels/misc/messages/request_json/payload/oneOf/0/properties",
    );
    assert_eq!(args["c"]["type"], "string");
    assert_eq!(args["c"]["maxLength"], 1);
    assert_eq!(args["bytes"]["type"], "array");
    assert_eq!(args["bytes"]["minItems"], 4);
    assert_eq!(args["bytes"]["maxItems"], 4);
    assert_eq!(args["bytes"]["items"]["minimum"], 0);
    assert_eq!(args["bytes"]["items"]["maximum"], 255);
    assert_eq!(args["flag"]["type"], "boolean");
    assert_eq!(args["ratio"]["type"], "number");
    assert_eq!(args["blobs"]["items"]["title"], "Opaque");
    assert_eq!(args["keyed"]["type"], "object");
    assert_eq!(args["keyed"]["additionalProperties"]["title"], "Opaque");
    assert!(args["keyed"]["propertyNames"]["pattern"].is_string());
    // A raw identifier is its plain name on the wire.
    assert_eq!(args["type"]["type"], "string");
    assert_eq!(args["nothing"]["type"], "null");

    let calc = calculator(&AsyncApiOptions::new());
    let add = pointer(
        &calc,
        "/channels/add/messages/request_json/payload/oneOf/0/properties",
    );
    assert_eq!(add["a"]["type"], "integer");
    assert_eq!(add["a"]["minimum"], i64::MIN);
    assert_eq!(add["a"]["maximum"], i64::MAX);
    let stock = pointer(
        &doc,
        "/channels/_replies/messages/stock-levels_result_json/payload",
    );
    assert_eq!(stock["type"], "object");
    assert_eq!(stock["additionalProperties"]["maximum"], u32::MAX);
}

/// Types deriving `schemars::JsonSchema` get their full schema in
/// `components/schemas` (the tests enable `mqrpc/schemars`).
#[test]
fn json_schema_types_get_their_full_schema() {
    let doc = ShopServer::asyncapi(&AsyncApiOptions::new());
    let order_arg = pointer(
        &doc,
        "/channels/place/messages/request_json/payload/oneOf/0/properties/order",
    );
    let order = resolve(&doc, order_arg);
    assert_eq!(order["type"], "object");
    assert_eq!(order["properties"]["id"]["type"], "integer");
    assert_eq!(order["properties"]["lines"]["type"], "array");
    let line = resolve(&doc, &order["properties"]["lines"]["items"]);
    assert_eq!(line["properties"]["sku"]["type"], "string");
    assert_eq!(
        line["properties"]["sku"]["description"],
        "Stock keeping unit."
    );
    // Inside std containers too.
    let orders = pointer(
        &doc,
        "/channels/_replies/messages/misc_result_json/payload/anyOf/0/items",
    );
    assert_eq!(orders["$ref"], order_arg["$ref"]);
    assert_eq!(
        resolve(&doc, orders)["properties"]["note"]["type"],
        serde_json::json!(["string", "null"])
    );
}

/// The documented addresses are where a real server listens: a raw MQTT
/// client that publishes what the document describes gets the answer the
/// document describes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn documented_topics_and_payloads_reach_a_real_server() {
    let broker = mqrpc_tests::embedded().await;
    let conn = broker.connect().await;
    let prefix = "acme/rpc";
    let server = CalculatorServer::new(Calc::default())
        .serve_with(&conn, ServerOptions::default().prefix(prefix))
        .await
        .unwrap();
    let doc = calculator(&AsyncApiOptions::new().prefix(prefix));

    // Every method has a channel, at the topic the server's filter takes.
    let filter = server
        .topic_filter()
        .strip_prefix("$share/mqrpc/")
        .unwrap()
        .strip_suffix('+')
        .unwrap();
    for method in <CalculatorServer<Calc> as Service>::METHODS {
        let address = pointer(&doc, &format!("/channels/{method}/address"));
        assert_eq!(address, &Value::from(format!("{filter}{method}")));
    }

    let reply = "asyncapi/replies";
    let mut peer = RawPeer::connect(broker.port(), &[reply]).await;
    let add = pointer(&doc, "/channels/add");
    let content_type = add["messages"]["request_json"]["contentType"]
        .as_str()
        .unwrap();
    let address = add["address"].as_str().unwrap();
    // Both argument forms the JSON payload schema allows.
    for (n, payload) in [r#"{"a": 40, "b": 2}"#, "[40, 2]"].into_iter().enumerate() {
        let correlation = [n as u8];
        peer.publish(
            address,
            payload,
            request_properties(reply, &correlation, Some(content_type)),
        )
        .await;
        let answer = peer
            .next_publish(Duration::from_secs(5))
            .await
            .expect("an answer");
        assert_eq!(status_of(&answer).as_deref(), Some("ok"), "{payload}");
        assert_eq!(&answer.payload[..], b"42");
        assert_eq!(correlation_of(&answer).as_deref(), Some(&correlation[..]));
        let result = pointer(&doc, "/channels/_replies/messages/add_result_json");
        assert_eq!(
            content_type_of(&answer).as_deref(),
            result["contentType"].as_str()
        );
    }

    // The typed error: status `error`, payload as the error message says.
    let divide = pointer(&doc, "/channels/divide/address").as_str().unwrap();
    peer.publish(
        divide,
        r#"{"a": 1.0, "b": 0.0}"#,
        request_properties(reply, b"d", Some("application/json")),
    )
    .await;
    let answer = peer
        .next_publish(Duration::from_secs(5))
        .await
        .expect("an answer");
    let error = pointer(&doc, "/channels/_replies/messages/divide_error_json");
    assert_eq!(
        status_of(&answer).as_deref(),
        error["headers"]["properties"]["mqrpc-status"]["const"].as_str()
    );
    assert_eq!(&answer.payload[..], br#""DivideByZero""#);
    server.stop().await.unwrap();
}
