//! Builds the AsyncAPI document of a service: channels, operations,
//! messages and schemas.

use serde_json::Value;
use serde_json::{json, Map};

use crate::protocol::topic;
use crate::protocol::{
    CANCEL_METHOD, CANCEL_RESPONSE_TOPIC_PROPERTY, DEFAULT_PREFIX, SCHEMA_PARAMETER,
    STATUS_PROPERTY,
};

use super::messages::*;
use super::model::{MethodDoc, OutputDoc, Schemas, ServiceDoc};
use super::{AsyncApiOptions, ASYNCAPI_VERSION, MQTT_BINDING_VERSION};

/// Ids of channels and operations: AsyncAPI wants `[A-Za-z0-9_.-]`, wire
/// names allow more; collisions get a numeric suffix.
#[derive(Default)]
struct Ids(std::collections::HashSet<String>);

impl Ids {
    fn take(&mut self, name: &str) -> String {
        let base: String = name
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || matches!(c, '_' | '-') {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        let mut id = base.clone();
        let mut n = 2;
        while !self.0.insert(id.clone()) {
            id = format!("{base}_{n}");
            n += 1;
        }
        id
    }
}

pub(super) struct Builder<'a> {
    service: &'a ServiceDoc,
    options: &'a AsyncApiOptions,
    ids: Ids,
    channels: Map<String, Value>,
    operations: Map<String, Value>,
    replies: Map<String, Value>,
}

const REPLIES: &str = "_replies";

impl<'a> Builder<'a> {
    pub(super) fn new(service: &'a ServiceDoc, options: &'a AsyncApiOptions) -> Self {
        let mut ids = Ids::default();
        // Wire names cannot start with `_`, so these never collide with a method.
        ids.take(REPLIES);
        ids.take(CANCEL_METHOD);
        Builder {
            service,
            options,
            ids,
            channels: Map::new(),
            operations: Map::new(),
            replies: Map::new(),
        }
    }

    fn address(&self, method: &str) -> String {
        topic::request_topic(&self.options.prefix, self.service.name, method)
    }

    pub(super) fn build<'m>(
        mut self,
        methods: impl Iterator<Item = &'m MethodDoc>,
        schemas: Schemas,
    ) -> Value {
        let mut any_reply = false;
        for method in methods {
            any_reply |= !matches!(method.output, OutputDoc::Oneway);
            self.method(method);
        }
        if any_reply {
            self.replies.insert(FAILURE.into(), failure_message());
        }
        self.cancel();
        let Builder {
            service,
            options,
            mut channels,
            operations,
            replies,
            ..
        } = self;
        if !replies.is_empty() {
            channels.insert(
                REPLIES.into(),
                json!({
                    "address": null,
                    "title": "Responses",
                    "description": format!(
                        "Answers go to the request's MQTT v5 Response Topic, whatever it is, with the \
                         request's Correlation Data. mqrpc clients use `{}/_reply/<client id>` (the \
                         reply prefix is the connection's, `mqrpc` by default), or `<Response \
                         Information>/<client id>` when the broker grants Response Information.",
                        DEFAULT_PREFIX
                    ),
                    "messages": replies,
                }),
            );
        }
        let mut doc = json!({
            "asyncapi": ASYNCAPI_VERSION,
            "info": info(service, options),
            "defaultContentType": options.codecs[0].content_type(),
            "channels": channels,
            "operations": operations,
        });
        if let Some((host, protocol)) = &options.broker {
            doc["servers"] = json!({
                "broker": {
                    "host": host,
                    "protocol": protocol,
                    "protocolVersion": "5",
                    "description": "MQTT v5 broker (any: requests, responses and shared subscriptions are standard MQTT v5).",
                }
            });
        }
        let mut definitions = schemas.into_definitions();
        if !definitions.is_empty() {
            rename_definitions(&mut definitions, &mut doc);
            doc["components"] = json!({ "schemas": definitions });
        }
        doc
    }

    fn method(&mut self, method: &MethodDoc) {
        let id = self.ids.take(method.name);
        let codecs = self.options.codecs.clone();
        let mut messages = Map::new();
        for &codec in &codecs {
            messages.insert(
                format!("request_{}", codec_id(codec)),
                request_message(method, codec),
            );
        }
        let refs: Vec<Value> = messages
            .keys()
            .map(|key| json!({ "$ref": format!("#/channels/{id}/messages/{key}") }))
            .collect();
        self.channels.insert(
            id.clone(),
            json!({
                "address": self.address(method.name),
                "title": method.name,
                "description": format!(
                    "Requests of `{}`. Servers subscribe `{}/{}/+` (as the shared subscription \
                     `$share/<group>/...`, group `mqrpc` by default); the same method is also \
                     served at `.../{}/_all/{}` (every server) and `.../{}/_to/<instance>/{}` \
                     (one server).",
                    method.name, self.options.prefix, self.service.name,
                    self.service.name, method.name, self.service.name, method.name,
                ),
                "messages": messages,
            }),
        );
        let qos = method.qos.unwrap_or_default();
        let mut operation = json!({
            "action": "receive",
            "channel": { "$ref": format!("#/channels/{id}") },
            "title": method.ident,
            "description": operation_description(method),
            "messages": refs,
            "bindings": { "mqtt": { "qos": qos_number(qos), "bindingVersion": MQTT_BINDING_VERSION } },
            "x-mqrpc-schema": method.fingerprint,
        });
        if let Some(summary) = summary(method.docs) {
            operation["summary"] = json!(summary);
        }
        let mut reply_refs = Vec::new();
        let mut reply = |key: String, message: Value, replies: &mut Map<String, Value>| {
            reply_refs.push(json!({ "$ref": format!("#/channels/{REPLIES}/messages/{key}") }));
            replies.insert(key, message);
        };
        for &codec in &codecs {
            let c = codec_id(codec);
            match &method.output {
                OutputDoc::Oneway => {}
                OutputDoc::Value(schema) => reply(
                    format!("{id}_result_{c}"),
                    value_message(method, codec, schema, ValueKind::Ok),
                    &mut self.replies,
                ),
                OutputDoc::Fallible { ok, err } => {
                    reply(
                        format!("{id}_result_{c}"),
                        value_message(method, codec, ok, ValueKind::Ok),
                        &mut self.replies,
                    );
                    reply(
                        format!("{id}_error_{c}"),
                        value_message(method, codec, err, ValueKind::Error),
                        &mut self.replies,
                    );
                }
                OutputDoc::Stream(item) => reply(
                    format!("{id}_item_{c}"),
                    value_message(method, codec, item, ValueKind::Item),
                    &mut self.replies,
                ),
            }
        }
        if !matches!(method.output, OutputDoc::Oneway) {
            if matches!(method.output, OutputDoc::Stream(_)) {
                reply(format!("{id}_end"), end_message(method), &mut self.replies);
            }
            reply_refs.push(json!({ "$ref": format!("#/channels/{REPLIES}/messages/{FAILURE}") }));
            operation["reply"] = json!({
                "address": {
                    "location": "$message.header#/responseTopic",
                    "description": "The request's MQTT v5 Response Topic property.",
                },
                "channel": { "$ref": format!("#/channels/{REPLIES}") },
                "messages": reply_refs,
            });
        }
        self.operations.insert(id, operation);
    }

    /// The cancel topic every server hears.
    fn cancel(&mut self) {
        let id = CANCEL_METHOD;
        self.channels.insert(
            id.into(),
            json!({
                "address": self.address(CANCEL_METHOD),
                "title": "Cancel",
                "description": "A caller gave up on a call: the server stops its handler, or does not run it if the request comes later.",
                "messages": {
                    "cancel": {
                        "name": "cancel",
                        "title": "Cancel a call",
                        "summary": "Identifies the call by its Response Topic and Correlation Data. Empty payload; never answered.",
                        "headers": headers(
                            json!({
                                CANCEL_RESPONSE_TOPIC_PROPERTY: {
                                    "type": "string",
                                    "description": "The Response Topic of the call to cancel (MQTT user property).",
                                }
                            }),
                            &[CANCEL_RESPONSE_TOPIC_PROPERTY],
                        ),
                        "correlationId": correlation_id(),
                        "bindings": { "mqtt": {
                            "correlationData": correlation_schema(),
                            "bindingVersion": MQTT_BINDING_VERSION,
                        } },
                    }
                },
            }),
        );
        self.operations.insert(
            id.into(),
            json!({
                "action": "receive",
                "channel": { "$ref": format!("#/channels/{id}") },
                "summary": "Cancels a running call.",
                "messages": [{ "$ref": format!("#/channels/{id}/messages/cancel") }],
                "bindings": { "mqtt": { "qos": 0, "bindingVersion": MQTT_BINDING_VERSION } },
            }),
        );
    }
}

fn info(service: &ServiceDoc, options: &AsyncApiOptions) -> Value {
    let mut description = String::new();
    if let Some(text) = &options.description {
        description.push_str(text);
        description.push_str("\n\n");
    }
    if !service.docs.is_empty() {
        description.push_str(service.docs);
        description.push_str("\n\n");
    }
    description.push_str(&format!(
        "The `{}` service over MQTT v5, from the server's side, following the mqrpc wire \
         protocol version 1 (`PROTOCOL.md`). Requests go to `{}/{}/<method>` with a Response \
         Topic and Correlation Data; the answer goes to that Response Topic with the same \
         Correlation Data. A request without Response Topic is one-way: it runs, nothing is sent \
         back. The user property `{STATUS_PROPERTY}` gives the outcome of every answer (absent \
         means `ok`). Built-in methods `_ping`, `_info` and `_stats` are served too, and stream \
         credits arrive at `.../_to/<instance>/_credit`; they are not listed here.",
        service.name, options.prefix, service.name
    ));
    json!({
        "title": options.title.as_deref().unwrap_or(service.name),
        "version": options.version.as_deref().unwrap_or(if service.version.is_empty() {
            "0.0.0"
        } else {
            service.version
        }),
        "description": description,
    })
}

/// The first paragraph of a doc comment, on one line.
fn summary(docs: &str) -> Option<String> {
    let first = docs.split("\n\n").next()?.trim();
    (!first.is_empty()).then(|| first.split_whitespace().collect::<Vec<_>>().join(" "))
}

fn operation_description(method: &MethodDoc) -> String {
    let mut text = String::new();
    if !method.docs.is_empty() {
        text.push_str(method.docs);
        text.push_str("\n\n");
    }
    text.push_str(&format!("Rust method `{}`. ", method.ident));
    text.push_str(match method.output {
        OutputDoc::Oneway => {
            "One-way (`#[mqrpc(oneway)]`): requests carry no Response Topic and nothing is sent \
             back. "
        }
        OutputDoc::Value(_) => "Answers once: the value with status `ok`, or a framework failure. ",
        OutputDoc::Fallible { .. } => {
            "Answers once: the `Ok` value with status `ok`, the `Err` value with status `error` \
             (the typed error, in the request's codec), or a framework failure. "
        }
        OutputDoc::Stream(_) => {
            "Server streaming: one answer per item (status absent, `mqrpc-seq` 0, 1, 2, ...), \
             then an end marker (status `end`, `mqrpc-seq` = the number of items, empty \
             payload); a failure ends the stream early. The server sends at most 32 items \
             beyond the credit the caller granted on `.../_to/<instance>/_credit`. "
        }
    });
    text.push_str(&format!(
        "Generated clients send the schema fingerprint `{0}` as the Content Type parameter \
         `{SCHEMA_PARAMETER}={0}`; a server with another fingerprint answers `schema-mismatch`.",
        method.fingerprint
    ));
    text
}

/// Gives every `components/schemas` key the characters AsyncAPI allows
/// (`[A-Za-z0-9_.-]`) and rewrites the `$ref`s that point at renamed ones.
fn rename_definitions(definitions: &mut Map<String, Value>, doc: &mut Value) {
    let valid = |c: char| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-');
    if definitions.keys().all(|k| k.chars().all(valid)) {
        return;
    }
    let mut ids = Ids::default();
    let mut renamed = std::collections::HashMap::new();
    let old = std::mem::take(definitions);
    for key in old.keys() {
        if key.chars().all(valid) {
            ids.0.insert(key.clone());
        }
    }
    for (key, schema) in old {
        let new = if key.chars().all(valid) {
            key.clone()
        } else {
            ids.take(&key)
        };
        renamed.insert(
            format!("#/components/schemas/{}", encode_pointer(&key)),
            format!("#/components/schemas/{new}"),
        );
        definitions.insert(new, schema);
    }
    fn rewrite(value: &mut Value, renamed: &std::collections::HashMap<String, String>) {
        match value {
            Value::Object(map) => {
                for (key, child) in map.iter_mut() {
                    match child {
                        Value::String(target) if key == "$ref" => {
                            if let Some(new) = renamed.get(target.as_str()) {
                                *target = new.clone();
                            }
                        }
                        _ => rewrite(child, renamed),
                    }
                }
            }
            Value::Array(items) => items.iter_mut().for_each(|v| rewrite(v, renamed)),
            _ => {}
        }
    }
    rewrite(doc, &renamed);
    for schema in definitions.values_mut() {
        rewrite(schema, &renamed);
    }
}

/// JSON Pointer escaping of one reference token (RFC 6901).
fn encode_pointer(token: &str) -> String {
    token.replace('~', "~0").replace('/', "~1")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::asyncapi::codegen::*;

    fn service(methods: Vec<MethodDoc>) -> ServiceDoc {
        ServiceDoc {
            name: "Calc",
            docs: "A calculator.",
            version: "1.0.0",
            methods,
        }
    }

    fn add() -> MethodDoc {
        MethodDoc {
            name: "add",
            ident: "add",
            docs: "Adds.",
            qos: None,
            fingerprint: "0123456789abcdef",
            args: vec![
                ArgDoc {
                    name: "a",
                    schema: integer("i64", i64::MIN.into(), i64::MAX as u128),
                    optional: false,
                },
                ArgDoc {
                    name: "b",
                    schema: option(integer("u8", 0, 255)),
                    optional: true,
                },
            ],
            output: OutputDoc::Value(integer("i64", i64::MIN.into(), i64::MAX as u128)),
        }
    }

    #[test]
    fn channels_operations_and_replies_reference_each_other() {
        let doc = document(
            service(vec![add()]),
            Schemas::new(),
            &AsyncApiOptions::new(),
        );
        assert_eq!(doc["channels"]["add"]["address"], "mqrpc/Calc/add");
        let op = &doc["operations"]["add"];
        assert_eq!(op["action"], "receive");
        for reference in op["messages"].as_array().unwrap() {
            let pointer = reference["$ref"].as_str().unwrap().trim_start_matches('#');
            assert!(doc.pointer(pointer).is_some(), "{pointer}");
        }
        for reference in op["reply"]["messages"].as_array().unwrap() {
            let pointer = reference["$ref"].as_str().unwrap().trim_start_matches('#');
            assert!(doc.pointer(pointer).is_some(), "{pointer}");
        }
        let request = &doc["channels"]["add"]["messages"]["request_json"];
        assert_eq!(request["payload"]["oneOf"][0]["required"], json!(["a"]));
        assert_eq!(request["payload"]["oneOf"][1]["minItems"], 2);
        assert_eq!(doc["defaultContentType"], "application/json");
    }

    #[test]
    fn ids_are_sanitized_and_unique() {
        let mut ids = Ids::default();
        assert_eq!(ids.take("a.b"), "a_b");
        assert_eq!(ids.take("a_b"), "a_b_2");
        assert_eq!(ids.take("stock-levels"), "stock-levels");
    }

    #[test]
    fn oneway_methods_have_no_reply() {
        let mut bump = add();
        bump.name = "bump";
        bump.output = OutputDoc::Oneway;
        let doc = document(service(vec![bump]), Schemas::new(), &AsyncApiOptions::new());
        assert!(doc["operations"]["bump"].get("reply").is_none());
        assert!(doc["channels"].get(REPLIES).is_none());
    }

    #[test]
    fn definitions_get_valid_names_and_refs_follow() {
        let mut definitions = Map::new();
        definitions.insert("Wrapper<u8>".into(), json!({ "type": "object" }));
        let mut doc = json!({ "x": { "$ref": "#/components/schemas/Wrapper<u8>" } });
        rename_definitions(&mut definitions, &mut doc);
        assert!(definitions.contains_key("Wrapper_u8_"));
        assert_eq!(doc["x"]["$ref"], "#/components/schemas/Wrapper_u8_");
    }
}
