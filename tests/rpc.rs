//! Typed client ↔ server scenarios, each run against the embedded broker
//! and against Mosquitto.

use std::collections::HashSet;
use std::time::Duration;

use mqrpc::{Client, ClientOptions, ConnectOptions, Connection, Error};
use mqrpc_tests::{Calc, CalculatorClient, CalculatorServer, MathError, TestBroker};

mqrpc_tests::on_both_brokers!(
    add_and_echo,
    concurrent_calls_from_many_tasks_and_two_clients,
    typed_error_round_trip,
    unknown_method_is_a_clear_error,
    wrong_argument_types_are_a_bad_request,
    handler_that_never_answers_times_out,
    call_without_any_server_is_unserved,
    unserved_streams_and_broadcasts_name_their_method,
    untyped_client_broadcasts_and_streams,
    late_response_is_dropped_and_next_call_is_right,
    panicking_handler_gives_internal_error_and_server_keeps_serving,
    dropped_call_frees_its_pending_slot,
    pending_calls_are_bounded,
    service_and_prefix_options_route_separately,
    stopped_server_no_longer_answers,
    json_codec_client_round_trip,
    closed_connection_fails_calls,
    changed_signature_is_a_schema_mismatch_not_garbage,
);

async fn add_and_echo(broker: TestBroker) {
    let (conn, _) = broker.serve_calc().await;
    let client = CalculatorClient::new(&conn).await.unwrap();
    assert_eq!(client.add(40, 2).await.unwrap(), 42);
    assert_eq!(client.add(i64::MAX, 1).await.unwrap(), i64::MIN);
    let text = "ünïcødé ✓ ".repeat(100);
    assert_eq!(client.echo(text.clone()).await.unwrap(), text);
    assert_eq!(client.echo(String::new()).await.unwrap(), "");
}

async fn concurrent_calls_from_many_tasks_and_two_clients(broker: TestBroker) {
    let (server_conn, _) = broker.serve_calc().await;
    // Two clients on their own connections, each with 8 tasks of 200 calls.
    let mut tasks = Vec::new();
    for client_index in 0..2i64 {
        let conn = broker.connect().await;
        let client = CalculatorClient::new(&conn).await.unwrap();
        for task in 0..8i64 {
            let client = client.clone();
            let conn = conn.clone();
            tasks.push(tokio::spawn(async move {
                let _keep = conn;
                let mut seen = Vec::new();
                let mut calls = Vec::new();
                for i in 0..200i64 {
                    let a = client_index * 1_000_000 + task * 10_000 + i;
                    let client = client.clone();
                    calls.push(async move {
                        let sum = client.add(a, 7).await.unwrap();
                        let echo = client
                            .echo(format!("c{client_index}-t{task}-{i}"))
                            .await
                            .unwrap();
                        (a, sum, echo)
                    });
                }
                // 20 calls in flight per task at a time.
                while !calls.is_empty() {
                    let chunk: Vec<_> = calls.drain(..calls.len().min(20)).collect();
                    for (a, sum, echo) in futures_util::future::join_all(chunk).await {
                        assert_eq!(sum, a + 7, "mismatched answer for {a}");
                        let i = a % 10_000;
                        assert_eq!(echo, format!("c{client_index}-t{task}-{i}"));
                        seen.push(a);
                    }
                }
                seen
            }));
        }
    }
    let mut all = HashSet::new();
    for task in tasks {
        for a in task.await.unwrap() {
            assert!(all.insert(a), "answer {a} seen twice");
        }
    }
    assert_eq!(all.len(), 2 * 8 * 200);
    drop(server_conn);
}

async fn typed_error_round_trip(broker: TestBroker) {
    let (conn, _) = broker.serve_calc().await;
    let client = CalculatorClient::new(&conn).await.unwrap();
    assert_eq!(client.divide(1.0, 4.0).await.unwrap(), Ok(0.25));
    assert_eq!(
        client.divide(1.0, 0.0).await.unwrap(),
        Err(MathError::DivideByZero)
    );
    assert_eq!(
        client.divide(f64::MAX, 0.5).await.unwrap(),
        Err(MathError::NotFinite {
            value: f64::INFINITY
        })
    );
}

async fn unknown_method_is_a_clear_error(broker: TestBroker) {
    let (conn, _) = broker.serve_calc().await;
    let client = Client::new(&conn, "Calculator", ClientOptions::default())
        .await
        .unwrap();
    let err = client
        .call::<_, i64>("subtract", &(1i64, 2i64))
        .await
        .unwrap_err();
    assert_eq!(
        err,
        Error::UnknownMethod {
            method: "subtract".into()
        }
    );
}

async fn wrong_argument_types_are_a_bad_request(broker: TestBroker) {
    let (conn, _) = broker.serve_calc().await;
    let client = Client::new(&conn, "Calculator", ClientOptions::default())
        .await
        .unwrap();
    // `add` takes two i64; send a string: a client built from an older trait.
    let err = client
        .call::<_, i64>("add", &("not a number".to_string(),))
        .await
        .unwrap_err();
    match err {
        Error::BadRequest { message } => assert!(message.contains("cannot decode"), "{message}"),
        other => panic!("expected BadRequest, got {other:?}"),
    }
    // Too many bytes for the arguments is caught as well (trailing bytes).
    let err = client
        .call::<_, i64>("add", &(1i64, 2i64, 3i64))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::BadRequest { .. }), "{err:?}");
}

async fn handler_that_never_answers_times_out(broker: TestBroker) {
    let (conn, _) = broker.serve_calc().await;
    let client = CalculatorClient::with_options(
        &conn,
        ClientOptions::default().timeout(Duration::from_millis(200)),
    )
    .await
    .unwrap();
    let err = client.hang().await.unwrap_err();
    assert_eq!(
        err,
        Error::Timeout {
            method: "hang".into(),
            timeout: Duration::from_millis(200)
        }
    );
    // The per-call override wins over the client's timeout.
    let err = client
        .with_timeout(Duration::from_millis(50))
        .hang()
        .await
        .unwrap_err();
    assert_eq!(
        err,
        Error::Timeout {
            method: "hang".into(),
            timeout: Duration::from_millis(50)
        }
    );
}

/// Asserts the error of a call nobody serves: Mosquitto reports "no
/// matching subscribers" (→ `NoResponder` at once); the embedded broker
/// does not, so the call ends with its timeout.
fn assert_unserved(broker: &TestBroker, err: Error) {
    if broker.kind() == "mosquitto" {
        // The error names the method that was called.
        assert!(
            matches!(&err, Error::NoResponder { method } if method == "add"),
            "{err:?}"
        );
    } else {
        assert!(
            matches!(&err, Error::Timeout { method, .. } if method == "add"),
            "{err:?}"
        );
    }
}

async fn call_without_any_server_is_unserved(broker: TestBroker) {
    let conn = broker.connect().await;
    let client = CalculatorClient::new(&conn).await.unwrap();
    let err = client
        .with_timeout(Duration::from_millis(200))
        .add(1, 2)
        .await
        .unwrap_err();
    assert_unserved(&broker, err);
}

/// A stream or broadcast nobody serves ends with an error that names the
/// method, like a call (`NoResponder` where the broker reports it).
async fn unserved_streams_and_broadcasts_name_their_method(broker: TestBroker) {
    use futures_util::StreamExt;
    let client = broker.client(Duration::from_millis(200)).await;
    let mut items = client.count_up(3).await.unwrap();
    let err = items.next().await.expect("an error").unwrap_err();
    let names_method = |err: &Error, name: &str| match err {
        Error::NoResponder { method } | Error::Timeout { method, .. } => method == name,
        _ => false,
    };
    assert!(names_method(&err, "count_up"), "{err:?}");
    assert_eq!(
        broker.kind() == "mosquitto",
        err.is_no_responder(),
        "{err:?}"
    );
    let answers: Vec<_> = client
        .broadcast(None)
        .count()
        .await
        .unwrap()
        .collect()
        .await;
    if broker.kind() == "mosquitto" {
        let [(instance, Err(err))] = &answers[..] else {
            panic!("one error, not {answers:?}")
        };
        assert_eq!(instance, "");
        assert!(
            err.is_no_responder() && names_method(err, "count"),
            "{err:?}"
        );
    } else {
        assert!(answers.is_empty(), "{answers:?}");
    }
}

/// The untyped `Client` calls every server and takes a stream, with
/// arguments encoded as the generated client does (postcard: fields in
/// order, like a tuple).
async fn untyped_client_broadcasts_and_streams(broker: TestBroker) {
    use futures_util::StreamExt;
    let (conn, _) = broker.serve_calc().await;
    let options = ClientOptions::default().timeout(Duration::from_secs(5));
    let client = Client::new(&conn, "Calculator", options).await.unwrap();
    let answers: Vec<_> = client
        .broadcast::<_, i64>("add", &(40i64, 2i64), Some(1))
        .await
        .unwrap()
        .collect()
        .await;
    let [(instance, Ok(42))] = &answers[..] else {
        panic!("one answer 42, not {answers:?}")
    };
    assert!(!instance.is_empty(), "the answer names its server");
    let items: Vec<u64> = client
        .stream::<_, u64>("count_up", &(3u64,))
        .await
        .unwrap()
        .map(Result::unwrap)
        .collect()
        .await;
    assert_eq!(items, [0, 1, 2]);
}

async fn late_response_is_dropped_and_next_call_is_right(broker: TestBroker) {
    let (conn, _) = broker.serve_calc().await;
    let client = CalculatorClient::new(&conn).await.unwrap();
    let err = client
        .with_timeout(Duration::from_millis(50))
        .sleep_ms(300)
        .await
        .unwrap_err();
    assert!(err.is_timeout());
    // The late answer (300) arrives while this call waits; it must not be
    // taken for this call's answer.
    assert_eq!(client.sleep_ms(400).await.unwrap(), 400);
    assert_eq!(client.add(1, 1).await.unwrap(), 2);
}

async fn panicking_handler_gives_internal_error_and_server_keeps_serving(broker: TestBroker) {
    let (conn, _) = broker.serve_calc().await;
    let client = CalculatorClient::new(&conn).await.unwrap();
    match client.explode("boom 17".into()).await.unwrap_err() {
        Error::Internal { message } => assert!(message.contains("boom 17"), "{message}"),
        other => panic!("expected Internal, got {other:?}"),
    }
    assert_eq!(client.add(2, 2).await.unwrap(), 4);
}

async fn dropped_call_frees_its_pending_slot(broker: TestBroker) {
    let server_conn = broker.serve_calc().await.0;
    let conn = Connection::connect(
        ConnectOptions::from_url(broker.url())
            .unwrap()
            .max_pending_calls(1),
    )
    .await
    .unwrap();
    let client = CalculatorClient::new(&conn).await.unwrap();
    for _ in 0..3 {
        // Dropping the future (here by an outer timeout) must free the one slot.
        let outer = tokio::time::timeout(Duration::from_millis(50), client.hang()).await;
        assert!(outer.is_err(), "hang() cannot finish");
        assert_eq!(client.add(3, 4).await.unwrap(), 7);
    }
    drop(server_conn);
}

async fn pending_calls_are_bounded(broker: TestBroker) {
    let _server = broker.serve_calc().await;
    let conn = Connection::connect(
        ConnectOptions::from_url(broker.url())
            .unwrap()
            .max_pending_calls(2),
    )
    .await
    .unwrap();
    let client = CalculatorClient::new(&conn).await.unwrap();
    let first = tokio::spawn({
        let client = client.clone();
        async move { client.with_timeout(Duration::from_millis(500)).hang().await }
    });
    let second = tokio::spawn({
        let client = client.clone();
        async move { client.with_timeout(Duration::from_millis(500)).hang().await }
    });
    // Wait until both occupy their slots (they are registered before the publish).
    let mut third = None;
    for _ in 0..100 {
        tokio::time::sleep(Duration::from_millis(5)).await;
        match client
            .with_timeout(Duration::from_millis(500))
            .add(1, 1)
            .await
        {
            Err(Error::TooManyPending { limit }) => {
                third = Some(limit);
                break;
            }
            Ok(2) => continue, // the hangs had not started yet
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(third, Some(2));
    assert!(first.await.unwrap().unwrap_err().is_timeout());
    assert!(second.await.unwrap().unwrap_err().is_timeout());
    assert_eq!(client.add(1, 1).await.unwrap(), 2);
}

async fn service_and_prefix_options_route_separately(broker: TestBroker) {
    let conn = broker.connect().await;
    let handle = CalculatorServer::new(Calc::default())
        .serve_with(
            &conn,
            mqrpc::ServerOptions::default().prefix("tenant-a/rpc"),
        )
        .await
        .unwrap();
    assert_eq!(
        handle.topic_filter(),
        "$share/mqrpc/tenant-a/rpc/Calculator/+"
    );
    let right =
        CalculatorClient::with_options(&conn, ClientOptions::default().prefix("tenant-a/rpc"))
            .await
            .unwrap();
    assert_eq!(right.add(1, 2).await.unwrap(), 3);
    let wrong = CalculatorClient::with_options(
        &conn,
        ClientOptions::default()
            .prefix("tenant-b/rpc")
            .timeout(Duration::from_millis(200)),
    )
    .await
    .unwrap();
    assert_unserved(&broker, wrong.add(1, 2).await.unwrap_err());
    // Invalid names are refused up front.
    let err = CalculatorClient::with_options(&conn, ClientOptions::default().prefix("a/+/b"))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::InvalidName { .. }), "{err:?}");
}

async fn stopped_server_no_longer_answers(broker: TestBroker) {
    let conn = broker.connect().await;
    let handle = CalculatorServer::new(Calc::default())
        .serve(&conn)
        .await
        .unwrap();
    let client = CalculatorClient::new(&conn).await.unwrap();
    assert_eq!(client.add(1, 2).await.unwrap(), 3);
    handle.stop().await.unwrap();
    let err = client
        .with_timeout(Duration::from_millis(200))
        .add(1, 2)
        .await
        .unwrap_err();
    assert_unserved(&broker, err);
}

async fn json_codec_client_round_trip(broker: TestBroker) {
    let (conn, _) = broker.serve_calc().await;
    let client =
        CalculatorClient::with_options(&conn, ClientOptions::default().codec(mqrpc::Codec::Json))
            .await
            .unwrap();
    assert_eq!(client.add(5, 6).await.unwrap(), 11);
    assert_eq!(
        client.divide(1.0, 0.0).await.unwrap(),
        Err(MathError::DivideByZero)
    );
}

async fn closed_connection_fails_calls(broker: TestBroker) {
    let (_server, _) = broker.serve_calc().await;
    let conn = broker.connect().await;
    let client = CalculatorClient::new(&conn).await.unwrap();
    let hanging = tokio::spawn({
        let client = client.clone();
        async move { client.hang().await }
    });
    tokio::time::sleep(Duration::from_millis(50)).await;
    conn.close().await;
    assert_eq!(hanging.await.unwrap().unwrap_err(), Error::Closed);
    assert_eq!(client.add(1, 2).await.unwrap_err(), Error::Closed);
}

#[tokio::test]
async fn unreachable_broker_is_a_connect_error() {
    let port = mqrpc_tests::free_port().unwrap();
    let err = Connection::connect_url(&format!("mqtt://127.0.0.1:{port}"))
        .await
        .unwrap_err();
    match err {
        Error::Connect { broker, reason } => {
            assert_eq!(broker, format!("127.0.0.1:{port}"));
            assert!(!reason.is_empty());
        }
        other => panic!("expected Connect, got {other:?}"),
    }
}

#[tokio::test]
async fn invalid_urls_are_rejected() {
    for url in [
        "http://127.0.0.1:1883",
        "mqtt://",
        "not a url",
        "mqtt://h:1?bogus=1",
    ] {
        let err = Connection::connect_url(url).await.unwrap_err();
        assert!(matches!(err, Error::InvalidUrl { .. }), "{url}: {err:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_restart_fails_fast_then_recovers() {
    if !mqrpc_tests::mosquitto_available() {
        return;
    }
    let mut mosquitto = mqrpc_tests::Mosquitto::start(&[]).unwrap();
    let port = mosquitto.port;
    let url = format!("mqtt://127.0.0.1:{port}");
    let server_conn = Connection::connect_url(&url).await.unwrap();
    let _server = CalculatorServer::new(Calc::default())
        .serve(&server_conn)
        .await
        .unwrap();
    let conn = Connection::connect_url(&url).await.unwrap();
    let client = CalculatorClient::new(&conn).await.unwrap();
    assert_eq!(client.add(1, 2).await.unwrap(), 3);
    let in_flight = tokio::spawn({
        let client = client.clone();
        async move {
            client
                .with_timeout(Duration::from_secs(30))
                .sleep_ms(2_000)
                .await
        }
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    mosquitto.kill();
    // The call in flight ends with a connection error, long before its 30 s timeout.
    let err = in_flight.await.unwrap().unwrap_err();
    assert_eq!(err, Error::Disconnected);
    // While the broker is down, calls fail at once.
    let err = client.add(1, 2).await.unwrap_err();
    assert!(err.is_connection(), "{err:?}");
    let _mosquitto = mqrpc_tests::Mosquitto::start_on(port, &[]).unwrap();
    // Both sides reconnect and re-subscribe by themselves.
    let mut answer = None;
    for _ in 0..200 {
        match client
            .with_timeout(Duration::from_millis(500))
            .add(20, 22)
            .await
        {
            Ok(sum) => {
                answer = Some(sum);
                break;
            }
            Err(e) if e.is_connection() || e.is_timeout() => {
                tokio::time::sleep(Duration::from_millis(50)).await
            }
            Err(e) => panic!("unexpected {e:?}"),
        }
    }
    assert_eq!(answer, Some(42));
}

/// The same service name built from another version of the trait: `add`
/// takes `u64` now, which postcard would decode from the old `i64`
/// arguments without complaint. The fingerprints differ, so the call fails
/// with an error naming the method and both fingerprints, and never runs.
#[mqrpc::service(name = "Calculator")]
trait CalculatorV2 {
    async fn add(&self, a: u64, b: u64) -> u64;
}

async fn changed_signature_is_a_schema_mismatch_not_garbage(broker: TestBroker) {
    let (conn, _) = broker.serve_calc().await;
    let v2 = CalculatorV2Client::new(&conn).await.unwrap();
    match v2.add(1, 2).await.unwrap_err() {
        Error::SchemaMismatch {
            method,
            client,
            server,
        } => {
            assert_eq!(method, "add");
            assert_ne!(client, server);
            assert_eq!((client.len(), server.len()), (16, 16), "{client} {server}");
        }
        other => panic!("expected SchemaMismatch, got {other:?}"),
    }
    // The same build on both sides passes the check.
    let v1 = CalculatorClient::new(&conn).await.unwrap();
    assert_eq!(v1.add(1, 2).await.unwrap(), 3);
    // Untyped callers send no fingerprint and are not checked.
    assert_eq!(
        v1.client()
            .call::<_, i64>("add", &(5i64, 6i64))
            .await
            .unwrap(),
        11
    );
}
