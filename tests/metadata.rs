//! Call metadata both ways (PROTOCOL.md, "Call metadata") and a handler's
//! `mqrpc::context`, through both brokers: unary, batched, stream,
//! broadcast and one-way calls; limits on both sides; a paho-mqtt peer;
//! the redelivery flag after a server restart (Mosquitto).

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use futures_util::StreamExt;
use mqrpc::{ClientOptions, Error, Metadata, ResponseMetadata, ServerOptions};
use mqrpc_tests::meta::{MetaClient, MetaImpl, MetaServer};
use mqrpc_tests::raw::{request_properties, status_of, RawPeer};
use mqrpc_tests::TestBroker;

mqrpc_tests::on_both_brokers!(
    unary_metadata_round_trip_and_context_fields,
    batched_calls_each_keep_their_metadata,
    stream_broadcast_and_one_way_carry_metadata,
    oversize_metadata_is_refused_on_both_sides,
);

const WAIT: Duration = Duration::from_secs(10);

fn md(pairs: &[(&str, &str)]) -> Metadata {
    Metadata::from_pairs(pairs.iter().copied()).unwrap()
}

fn owned(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

async fn serve(
    broker: &TestBroker,
    name: &str,
    options: ServerOptions,
) -> (mqrpc::Connection, MetaImpl) {
    let conn = broker.connect().await;
    let meta = MetaImpl {
        name: name.to_string(),
        ..MetaImpl::default()
    };
    let _handle = MetaServer::new(meta.clone())
        .serve_with(&conn, options)
        .await
        .unwrap();
    (conn, meta)
}

async fn client(broker: &TestBroker, options: ClientOptions) -> MetaClient {
    let conn = broker.connect().await;
    MetaClient::with_options(&conn, options).await.unwrap()
}

async fn unary_metadata_round_trip_and_context_fields(broker: TestBroker) {
    let (_server, _) = serve(&broker, "node-1", ServerOptions::default()).await;
    let defaults = md(&[("authorization", "Bearer t0k3n"), ("tenant", "default")]);
    let meta = client(
        &broker,
        ClientOptions::default().timeout(WAIT).metadata(defaults),
    )
    .await;
    let answer = ResponseMetadata::new();
    let seen = meta
        .with_metadata(md(&[("tenant", "acme"), ("x-id", "1"), ("x-id", "2")]))
        .with_response_metadata(&answer)
        .seen()
        .await
        .unwrap();
    // The call's entries on top of the client's defaults, in order.
    assert_eq!(
        seen.metadata,
        owned(&[
            ("authorization", "Bearer t0k3n"),
            ("tenant", "acme"),
            ("x-id", "1"),
            ("x-id", "2")
        ])
    );
    let back = answer.get().expect("the answer's metadata");
    assert_eq!(back.get("echo-tenant"), Some("acme"));
    assert_eq!(back.get_all("echo-x-id").collect::<Vec<_>>(), ["1", "2"]);
    assert_eq!(back.get("served-by"), Some("node-1"));
    assert_eq!(back.get("from-task"), Some("yes"));
    // The rest of the context.
    assert_eq!(
        (seen.service.as_str(), seen.method.as_str()),
        ("Meta", "seen")
    );
    let reply_topic = meta.client().reply_topic().to_string();
    assert_eq!(seen.reply_topic.as_deref(), Some(reply_topic.as_str()));
    assert_eq!(seen.caller_id.as_deref(), reply_topic.rsplit('/').next());
    let left = seen.deadline_ms.expect("a deadline");
    assert!(left > 0 && left <= WAIT.as_millis() as u64, "{left}");
    assert!(!seen.redelivered);
    assert!(!seen.spawned_plain, "a plainly spawned task has no context");
    assert_eq!(seen.spawned_scoped.as_deref(), Some("seen"));
    // Without metadata of its own, a client sends its defaults only, and
    // an answer without metadata leaves it empty.
    let plain = client(&broker, ClientOptions::default().timeout(WAIT)).await;
    let seen = plain.with_response_metadata(&answer).seen().await.unwrap();
    assert_eq!(seen.metadata, vec![]);
    assert_eq!(answer.get().unwrap().get("echo-tenant"), None);
}

async fn batched_calls_each_keep_their_metadata(broker: TestBroker) {
    let (_server, _) = serve(&broker, "node-1", ServerOptions::default()).await;
    let meta = client(&broker, ClientOptions::default().timeout(WAIT)).await;
    // Enough calls at once for the client to probe and then batch.
    for _round in 0..3 {
        let calls = (0..40).map(|i| {
            let meta = meta.clone();
            async move {
                let answer = ResponseMetadata::new();
                let value = i.to_string();
                let caller = if i % 2 == 0 {
                    meta.with_metadata(md(&[("call", &value)]))
                } else {
                    meta.clone()
                };
                let seen = caller.with_response_metadata(&answer).seen().await.unwrap();
                (i, seen, answer.get().unwrap())
            }
        });
        for (i, seen, back) in futures_util::future::join_all(calls).await {
            if i % 2 == 0 {
                assert_eq!(seen.metadata, owned(&[("call", &i.to_string())]));
                assert_eq!(back.get("echo-call"), Some(i.to_string().as_str()));
            } else {
                assert_eq!(seen.metadata, vec![]);
                assert_eq!(back.get("echo-call"), None);
            }
            assert_eq!(back.get("served-by"), Some("node-1"));
        }
    }
}

async fn stream_broadcast_and_one_way_carry_metadata(broker: TestBroker) {
    let (_a, a) = serve(&broker, "a", ServerOptions::default().instance(unique("a"))).await;
    let (_b, b) = serve(&broker, "b", ServerOptions::default().instance(unique("b"))).await;
    let meta = client(
        &broker,
        ClientOptions::default().timeout(Duration::from_secs(3)),
    )
    .await;
    let tenant = md(&[("tenant", "acme")]);

    // A stream: the answer's metadata comes with its first item.
    let answer = ResponseMetadata::new();
    let items: Vec<u64> = meta
        .with_metadata(tenant.clone())
        .with_response_metadata(&answer)
        .items(4)
        .await
        .unwrap()
        .map(Result::unwrap)
        .collect()
        .await;
    assert_eq!(items, [0, 1, 2, 3]);
    let back = answer.get().unwrap();
    assert_eq!(
        (back.get("items"), back.get("tenant-seen")),
        (Some("4"), Some("acme"))
    );

    // A broadcast: every server sees the metadata and answers its own.
    let answer = ResponseMetadata::new();
    let mut served_by = Vec::new();
    let mut answers = meta
        .with_metadata(tenant.clone())
        .with_response_metadata(&answer)
        .broadcast(Some(2))
        .seen()
        .await
        .unwrap();
    while let Some((_instance, seen)) = answers.next().await {
        assert_eq!(seen.unwrap().metadata, owned(&[("tenant", "acme")]));
        let back = answer.get().unwrap();
        assert_eq!(back.get("echo-tenant"), Some("acme"));
        served_by.push(back.get("served-by").unwrap().to_string());
    }
    served_by.sort();
    assert_eq!(served_by, ["a", "b"]);

    // One-way: the handler that runs it sees the metadata.
    meta.with_metadata(md(&[("tenant", "acme"), ("k", "v")]))
        .note("n1".into())
        .await
        .unwrap();
    let noted = || {
        let all: Vec<_> = [&a, &b]
            .iter()
            .flat_map(|m| m.notes.lock().unwrap().clone())
            .collect();
        all
    };
    assert!(mqrpc_tests::eventually(|| !noted().is_empty()).await);
    for (tag, metadata) in noted() {
        assert_eq!(tag, "n1");
        assert_eq!(metadata, owned(&[("tenant", "acme"), ("k", "v")]));
    }
}

async fn oversize_metadata_is_refused_on_both_sides(broker: TestBroker) {
    let (_server, meta_impl) = serve(&broker, "node-1", ServerOptions::default()).await;
    let meta = client(&broker, ClientOptions::default().timeout(WAIT)).await;
    // On the client, before anything is sent: entries, then bytes.
    let many = Metadata::from_pairs((0..33).map(|i| (format!("k{i}"), "v"))).unwrap();
    let err = meta.with_metadata(many.clone()).seen().await.unwrap_err();
    assert!(
        matches!(&err, Error::InvalidMetadata { reason } if reason.contains("metadata entry count is 33, limit 32")),
        "{err:?}"
    );
    let big = md(&[("blob", &"x".repeat(9000))]);
    let err = meta
        .with_metadata(big)
        .note("never".into())
        .await
        .unwrap_err();
    assert!(
        matches!(&err, Error::InvalidMetadata { reason } if reason.contains("metadata size is 9007 bytes, limit 8192")),
        "{err:?}"
    );
    assert!(meta.with_metadata(many).items(1).await.is_err());
    assert!(meta_impl.notes.lock().unwrap().is_empty());

    // On the server: a peer over the limits gets `bad-request` naming it.
    let mut peer = RawPeer::connect(broker.port(), &["raw/md-replies"]).await;
    let mut properties = request_properties("raw/md-replies", b"md-1", Some("application/json"));
    for i in 0..40 {
        properties
            .user_properties
            .push((format!("md-k{i}"), "v".to_string()));
    }
    peer.publish("mqrpc/Meta/seen", "{}", properties).await;
    let refused = peer.next_publish(WAIT).await.expect("an answer");
    assert_eq!(status_of(&refused).as_deref(), Some("bad-request"));
    assert_eq!(
        &refused.payload[..],
        b"metadata entry count is 40, limit 32"
    );
    // A server with lower limits refuses what a client may send.
    let (_strict, _) = serve(
        &broker,
        "strict",
        ServerOptions::default()
            .prefix("strict")
            .max_metadata(2, 64),
    )
    .await;
    let strict = client(
        &broker,
        ClientOptions::default().prefix("strict").timeout(WAIT),
    )
    .await;
    let err = strict
        .with_metadata(md(&[("a", "1"), ("b", "2"), ("c", "3")]))
        .seen()
        .await
        .unwrap_err();
    assert_eq!(
        err,
        Error::BadRequest {
            message: "metadata entry count is 3, limit 2".into()
        }
    );
    let err = strict
        .with_metadata(md(&[("a", &"x".repeat(100))]))
        .seen()
        .await
        .unwrap_err();
    assert_eq!(
        err,
        Error::BadRequest {
            message: "metadata size is 104 bytes, limit 64".into()
        }
    );
}

fn unique(prefix: &str) -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    format!(
        "{prefix}-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// The paho-mqtt peer of PROTOCOL.md, "Call metadata": it sends `md-`
/// properties with a JSON request and prints the answer's.
const PAHO_CALLER: &str = r#"
import json, sys
import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

def on_connect(client, userdata, flags, reason_code, properties):
    client.subscribe("py/md-replies", qos=1)

def on_subscribe(client, userdata, mid, reason_codes, properties):
    props = Properties(PacketTypes.PUBLISH)
    props.ResponseTopic = "py/md-replies"
    props.CorrelationData = b"py-1"
    props.ContentType = "application/json"
    props.UserProperty = [("md-tenant", "acme"), ("md-trace-id", "t-42")]
    client.publish("mqrpc/Meta/seen", "{}", qos=1, properties=props)

def on_message(client, userdata, msg):
    user = getattr(msg.properties, "UserProperty", [])
    print(json.dumps({"answer": json.loads(msg.payload), "user": user}), flush=True)
    client.disconnect()

client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="py-md-" + sys.argv[2], protocol=mqtt.MQTTv5)
client.on_connect = on_connect
client.on_subscribe = on_subscribe
client.on_message = on_message
client.connect("127.0.0.1", int(sys.argv[1]))
client.loop_forever()
"#;

/// A paho-mqtt (Python) caller sends metadata as `md-` user properties
/// and reads the answer's, through both brokers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paho_peer_sends_and_reads_metadata() {
    let has_paho = std::process::Command::new("python3")
        .args(["-c", "import paho.mqtt.client"])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    if !has_paho {
        if std::env::var(mqrpc_tests::REQUIRE_MOSQUITTO_ENV).as_deref() == Ok("1") {
            panic!("python3 with paho-mqtt is missing: pip install paho-mqtt");
        }
        eprintln!("NOTICE: python3 + paho-mqtt not installed; skipping");
        return;
    }
    let mut brokers = vec![mqrpc_tests::embedded().await];
    brokers.extend(mqrpc_tests::mosquitto());
    for broker in brokers {
        let (_server, _) = serve(&broker, "node-py", ServerOptions::default()).await;
        let run = tokio::process::Command::new("python3")
            .args(["-c", PAHO_CALLER, &broker.port().to_string(), &unique("c")])
            .kill_on_drop(true)
            .output();
        let output = tokio::time::timeout(WAIT, run)
            .await
            .expect("the paho peer got its answer")
            .unwrap();
        assert!(output.status.success(), "{output:?}");
        let printed: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
        assert_eq!(
            printed["answer"]["metadata"],
            serde_json::json!([["tenant", "acme"], ["trace-id", "t-42"]]),
            "{}: {printed}",
            broker.kind()
        );
        let user = printed["user"].as_array().unwrap();
        for expected in [
            serde_json::json!(["md-echo-tenant", "acme"]),
            serde_json::json!(["md-echo-trace-id", "t-42"]),
            serde_json::json!(["md-served-by", "node-py"]),
        ] {
            assert!(user.contains(&expected), "{}: {user:?}", broker.kind());
        }
    }
}

/// A request the broker delivers again (its server was killed before
/// acknowledging it, and came back under the same session) runs with
/// `is_redelivery()` set. Mosquitto only: the embedded broker keeps no
/// sessions.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redelivered_request_is_marked_in_the_context() {
    let Some(broker) = mqrpc_tests::mosquitto() else {
        return;
    };
    let id = unique("meta-restarted");
    let spawn = || {
        let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_calc-server"));
        command
            .env("MQRPC_BROKER", format!("{}?client_id={id}", broker.url()))
            .envs([
                ("CALC_SESSION_EXPIRY_S", "60"),
                ("CALC_ACK_AFTER_ANSWER", "1"),
                ("CALC_META", "1"),
            ]);
        mqrpc_tests::spawn_serving(command)
    };
    let server = spawn().await;
    let meta = client(
        &broker,
        ClientOptions::default().timeout(Duration::from_secs(8)),
    )
    .await;
    let one = meta.to_instance(&id).unwrap();
    let tagged = one.with_metadata(md(&[("tenant", "acme")]));
    let mut call = Box::pin(tagged.once_redelivered());
    // Polled once, the call's request is queued before the ping's: the
    // broker hands them to the server in that order, so once the ping is
    // answered the server holds the request, unacknowledged.
    assert!(futures_util::poll!(call.as_mut()).is_pending());
    one.client().ping().await.unwrap();
    kill(server).await;
    let again = spawn().await;
    let seen = call.await.unwrap();
    assert!(seen.redelivered);
    assert_eq!(seen.method, "once_redelivered");
    assert_eq!(seen.metadata, owned(&[("tenant", "acme")]));
    kill(again).await;
}

async fn kill(mut server: tokio::process::Child) {
    server.start_kill().unwrap();
    server.wait().await.unwrap();
}
