//! The wire protocol as PROTOCOL.md describes it, checked with peers that
//! are not mqrpc: a raw rumqttc v5 client and mosquitto_rr.

use std::time::Duration;

use bytes::Bytes;
use mqrpc::{ClientOptions, Codec};
use mqrpc_tests::raw::{content_type_of, correlation_of, request_properties, status_of, RawPeer};
use mqrpc_tests::{CalculatorClient, TestBroker};
use rumqttc::v5::mqttbytes::v5::PublishProperties;

mqrpc_tests::on_both_brokers!(
    json_request_from_raw_client_gets_json_answer,
    malformed_payload_gets_bad_request,
    unsupported_content_type_is_answered,
    unknown_method_from_raw_client,
    request_without_response_topic_is_not_answered,
    request_without_correlation_data_is_answered_without_it,
    invalid_response_topic_is_ignored_and_server_survives,
    raw_json_server_serves_a_rust_client,
    garbage_response_gives_clear_client_error,
    reused_correlation_data_with_another_request_is_a_new_call,
);

const WAIT: Duration = Duration::from_secs(5);
const REPLY: &str = "raw/replies";

async fn json_request_from_raw_client_gets_json_answer(broker: TestBroker) {
    let _server = broker.serve_calc().await;
    let mut peer = RawPeer::connect(broker.port(), &[REPLY]).await;
    peer.publish(
        "mqrpc/Calculator/add",
        r#"{"a": 40, "b": 2}"#,
        request_properties(REPLY, b"req-1", Some("application/json")),
    )
    .await;
    let answer = peer.next_publish(WAIT).await.expect("an answer");
    assert_eq!(answer.topic, REPLY);
    assert_eq!(&answer.payload[..], b"42");
    assert_eq!(status_of(&answer).as_deref(), Some("ok"));
    assert_eq!(
        content_type_of(&answer).as_deref(),
        Some("application/json")
    );
    assert_eq!(correlation_of(&answer).as_deref(), Some(&b"req-1"[..]));

    // The typed error arrives as JSON too, marked `error`.
    peer.publish(
        "mqrpc/Calculator/divide",
        r#"{"a": 1.0, "b": 0.0}"#,
        request_properties(REPLY, b"req-2", Some("application/json")),
    )
    .await;
    let answer = peer.next_publish(WAIT).await.expect("an answer");
    assert_eq!(status_of(&answer).as_deref(), Some("error"));
    assert_eq!(&answer.payload[..], br#""DivideByZero""#);
    assert_eq!(correlation_of(&answer).as_deref(), Some(&b"req-2"[..]));
}

/// A foreign client whose Correlation Data repeats (a counter restarted, a
/// fixed value) gets each request's own answer; a byte-identical copy is
/// still a duplicate, answered from memory.
async fn reused_correlation_data_with_another_request_is_a_new_call(broker: TestBroker) {
    let (_server, calc) = broker.serve_calc().await;
    let mut peer = RawPeer::connect(broker.port(), &[REPLY]).await;
    let same_key = || request_properties(REPLY, b"fixed-1", Some("application/json"));
    for (method, payload, expected) in [
        ("add", r#"{"a": 1, "b": 2}"#, "3"),
        ("add", r#"{"a": 100, "b": 200}"#, "300"),
        // Another method with the same key is a new call too.
        ("linger", r#"{"ms": 1}"#, "1"),
        ("linger", r#"{"ms": 2}"#, "2"),
        // A byte-identical copy is a duplicate: answered, not run again.
        ("linger", r#"{"ms": 2}"#, "2"),
    ] {
        let topic = format!("mqrpc/Calculator/{method}");
        peer.publish(&topic, payload, same_key()).await;
        let answer = peer.next_publish(WAIT).await.expect("an answer");
        assert_eq!(status_of(&answer).as_deref(), Some("ok"));
        assert_eq!(
            std::str::from_utf8(&answer.payload).unwrap(),
            expected,
            "{method} {payload}"
        );
        assert_eq!(correlation_of(&answer).as_deref(), Some(&b"fixed-1"[..]));
    }
    assert_eq!(
        calc.stats.started.load(std::sync::atomic::Ordering::SeqCst),
        2,
        "the repeated copy was answered from memory, not run again"
    );
}

async fn malformed_payload_gets_bad_request(broker: TestBroker) {
    let _server = broker.serve_calc().await;
    let mut peer = RawPeer::connect(broker.port(), &[REPLY]).await;
    // Postcard (no Content Type): one byte where two varints are expected.
    peer.publish(
        "mqrpc/Calculator/add",
        vec![0xff],
        request_properties(REPLY, b"bad-1", None),
    )
    .await;
    let answer = peer.next_publish(WAIT).await.expect("an answer");
    assert_eq!(status_of(&answer).as_deref(), Some("bad-request"));
    assert_eq!(correlation_of(&answer).as_deref(), Some(&b"bad-1"[..]));
    assert_eq!(
        content_type_of(&answer).as_deref(),
        Some("text/plain; charset=utf-8")
    );
    let message = String::from_utf8(answer.payload.to_vec()).unwrap();
    assert!(message.contains("cannot decode"), "{message}");

    // Broken JSON.
    peer.publish(
        "mqrpc/Calculator/add",
        "{\"a\": 1,",
        request_properties(REPLY, b"bad-2", Some("application/json")),
    )
    .await;
    let answer = peer.next_publish(WAIT).await.expect("an answer");
    assert_eq!(status_of(&answer).as_deref(), Some("bad-request"));
    assert_eq!(correlation_of(&answer).as_deref(), Some(&b"bad-2"[..]));
}

async fn unsupported_content_type_is_answered(broker: TestBroker) {
    let _server = broker.serve_calc().await;
    let mut peer = RawPeer::connect(broker.port(), &[REPLY]).await;
    peer.publish(
        "mqrpc/Calculator/add",
        "<a>1</a>",
        request_properties(REPLY, b"xml", Some("application/xml")),
    )
    .await;
    let answer = peer.next_publish(WAIT).await.expect("an answer");
    assert_eq!(
        status_of(&answer).as_deref(),
        Some("unsupported-content-type")
    );
    let message = String::from_utf8(answer.payload.to_vec()).unwrap();
    assert!(message.contains("application/xml"), "{message}");
}

async fn unknown_method_from_raw_client(broker: TestBroker) {
    let _server = broker.serve_calc().await;
    let mut peer = RawPeer::connect(broker.port(), &[REPLY]).await;
    peer.publish(
        "mqrpc/Calculator/sqrt",
        "{}",
        request_properties(REPLY, b"u", Some("application/json")),
    )
    .await;
    let answer = peer.next_publish(WAIT).await.expect("an answer");
    assert_eq!(status_of(&answer).as_deref(), Some("unknown-method"));
    assert_eq!(&answer.payload[..], b"no method `sqrt`");
}

async fn request_without_response_topic_is_not_answered(broker: TestBroker) {
    let (_conn, calc) = broker.serve_calc().await;
    let mut peer = RawPeer::connect(broker.port(), &[REPLY, "mqrpc/_reply/#"]).await;
    let no_reply_topic = PublishProperties {
        correlation_data: Some(Bytes::from_static(b"one-way")),
        content_type: Some("application/json".into()),
        ..PublishProperties::default()
    };
    peer.publish("mqrpc/Calculator/count", "{}", no_reply_topic)
        .await;
    // A second, normal request acts as a barrier: its answer comes after any
    // answer to the first one would have.
    peer.publish(
        "mqrpc/Calculator/count",
        "{}",
        request_properties(REPLY, b"barrier", Some("application/json")),
    )
    .await;
    let answer = peer.next_publish(WAIT).await.expect("the barrier's answer");
    assert_eq!(correlation_of(&answer).as_deref(), Some(&b"barrier"[..]));
    // Both requests run (concurrently, in either order); only the barrier is answered.
    for _ in 0..100 {
        if calc.calls.load(std::sync::atomic::Ordering::SeqCst) == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(calc.calls.load(std::sync::atomic::Ordering::SeqCst), 2);
    assert!(peer
        .next_publish(Duration::from_millis(300))
        .await
        .is_none());
}

async fn request_without_correlation_data_is_answered_without_it(broker: TestBroker) {
    let _server = broker.serve_calc().await;
    let mut peer = RawPeer::connect(broker.port(), &[REPLY]).await;
    let properties = PublishProperties {
        response_topic: Some(REPLY.into()),
        content_type: Some("application/json".into()),
        ..PublishProperties::default()
    };
    peer.publish("mqrpc/Calculator/add", r#"{"a":1,"b":1}"#, properties)
        .await;
    let answer = peer.next_publish(WAIT).await.expect("an answer");
    assert_eq!(&answer.payload[..], b"2");
    assert_eq!(correlation_of(&answer), None);
}

async fn invalid_response_topic_is_ignored_and_server_survives(broker: TestBroker) {
    let (conn, _) = broker.serve_calc().await;
    let peer = RawPeer::connect(broker.port(), &[]).await;
    // Publishing to a wildcard topic would get the server disconnected.
    peer.publish(
        "mqrpc/Calculator/add",
        r#"{"a":1,"b":1}"#,
        request_properties("evil/#", b"x", Some("application/json")),
    )
    .await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let client = CalculatorClient::new(&conn).await.unwrap();
    assert_eq!(client.add(2, 3).await.unwrap(), 5);
    assert!(conn.is_connected());
}

/// A server written against PROTOCOL.md alone (as a Python program would
/// be), answering a Rust client that uses the JSON codec.
async fn raw_json_server_serves_a_rust_client(broker: TestBroker) {
    let mut foreign = RawPeer::connect(broker.port(), &["mqrpc/Calculator/+"]).await;
    let server = tokio::spawn(async move {
        for _ in 0..2 {
            let request = foreign.next_publish(WAIT).await.expect("a request");
            let properties = request.properties.clone().unwrap();
            // The essence; a generated client adds `; schema=<fingerprint>`.
            let content_type = properties.content_type.as_deref().unwrap_or_default();
            assert_eq!(content_type.split(';').next(), Some("application/json"));
            assert!(content_type.contains("; schema="), "{content_type}");
            let args: serde_json::Value = serde_json::from_slice(&request.payload).unwrap();
            let (status, body) = match std::str::from_utf8(&request.topic).unwrap() {
                "mqrpc/Calculator/add" => (
                    "ok",
                    (args["a"].as_i64().unwrap() + args["b"].as_i64().unwrap()).to_string(),
                ),
                _ => ("error", r#"{"NotFinite":{"value":1.5}}"#.to_string()),
            };
            let response = PublishProperties {
                correlation_data: properties.correlation_data,
                content_type: Some("application/json".into()),
                user_properties: vec![("mqrpc-status".into(), status.into())],
                ..PublishProperties::default()
            };
            foreign
                .publish(&properties.response_topic.unwrap(), body, response)
                .await;
        }
        foreign // dropping it now could cut off the last response
    });
    let conn = broker.connect().await;
    let client = CalculatorClient::with_options(&conn, ClientOptions::default().codec(Codec::Json))
        .await
        .unwrap();
    assert_eq!(client.add(2, 40).await.unwrap(), 42);
    assert_eq!(
        client.divide(3.0, 2.0).await.unwrap(),
        Err(mqrpc_tests::MathError::NotFinite { value: 1.5 })
    );
    server.await.unwrap();
}

async fn garbage_response_gives_clear_client_error(broker: TestBroker) {
    let mut foreign = RawPeer::connect(broker.port(), &["mqrpc/Calculator/+"]).await;
    let server = tokio::spawn(async move {
        let statuses = ["ok", "teapot"];
        for status in statuses {
            let request = foreign.next_publish(WAIT).await.expect("a request");
            let properties = request.properties.clone().unwrap();
            let response = PublishProperties {
                correlation_data: properties.correlation_data,
                user_properties: vec![("mqrpc-status".into(), status.into())],
                ..PublishProperties::default()
            };
            foreign
                .publish(
                    &properties.response_topic.unwrap(),
                    vec![0xff, 0xff, 0xff],
                    response,
                )
                .await;
        }
        foreign // dropping it now could cut off the last response
    });
    let conn = broker.connect().await;
    let client = CalculatorClient::new(&conn).await.unwrap();
    let err = client.add(1, 2).await.unwrap_err();
    assert!(matches!(err, mqrpc::Error::Decode { .. }), "{err:?}");
    let err = client.add(1, 2).await.unwrap_err();
    assert!(matches!(err, mqrpc::Error::Protocol { .. }), "{err:?}");
    server.await.unwrap();
}

/// The README's mosquitto_rr command, against a real Mosquitto.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mosquitto_rr_calls_a_service() {
    let Some(broker) = mqrpc_tests::mosquitto() else {
        return;
    };
    if !mqrpc_tests::mosquitto_rr_installed() {
        if std::env::var(mqrpc_tests::REQUIRE_MOSQUITTO_ENV).as_deref() == Ok("1") {
            panic!("mosquitto_rr is missing: apt-get install mosquitto-clients");
        }
        eprintln!("NOTICE: mosquitto_rr is not installed; skipping");
        return;
    }
    let _server = broker.serve_calc().await;
    let port = broker.port().to_string();
    let run = |topic: &'static str, message: &'static str| {
        let port = port.clone();
        tokio::task::spawn_blocking(move || {
            std::process::Command::new("mosquitto_rr")
                .args([
                    "-h",
                    "127.0.0.1",
                    "-p",
                    &port,
                    "-t",
                    topic,
                    "-e",
                    "replies/rr-demo",
                ])
                .args([
                    "-m",
                    message,
                    "-D",
                    "PUBLISH",
                    "content-type",
                    "application/json",
                ])
                .args(["-W", "5"])
                .output()
                .expect("run mosquitto_rr")
        })
    };
    let output = run("mqrpc/Calculator/add", r#"{"a": 40, "b": 2}"#)
        .await
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    assert_eq!(String::from_utf8_lossy(&output.stdout).trim(), "42");
    let output = run("mqrpc/Calculator/divide", r#"{"a": 1, "b": 0}"#)
        .await
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&output.stdout).trim(),
        r#""DivideByZero""#
    );
}

/// The Python server of PROTOCOL.md (examples/python/calculator_server.py,
/// paho-mqtt) answering a Rust client, through both brokers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_paho_server_serves_a_rust_client() {
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
        let script = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../examples/python/calculator_server.py"
        );
        let mut python = tokio::process::Command::new("python3")
            .arg(script)
            .arg(broker.port().to_string())
            .stdout(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("start python3");
        let stdout = python.stdout.take().unwrap();
        let mut lines = tokio::io::AsyncBufReadExt::lines(tokio::io::BufReader::new(stdout));
        let ready = tokio::time::timeout(WAIT, lines.next_line()).await;
        assert!(
            matches!(&ready, Ok(Ok(Some(line))) if line == "ready"),
            "python server did not get ready on {}: {ready:?}",
            broker.kind()
        );

        let conn = broker.connect().await;
        let client =
            CalculatorClient::with_options(&conn, ClientOptions::default().codec(Codec::Json))
                .await
                .unwrap();
        assert_eq!(client.add(40, 2).await.unwrap(), 42);
        assert_eq!(client.divide(1.0, 4.0).await.unwrap(), Ok(0.25));
        assert_eq!(
            client.divide(1.0, 0.0).await.unwrap(),
            Err(mqrpc_tests::MathError::DivideByZero)
        );
        assert_eq!(
            client.echo("x".into()).await.unwrap_err(),
            mqrpc::Error::UnknownMethod {
                method: "echo".into()
            }
        );
        python.kill().await.unwrap();
    }
}
