//! Deadlines, cancellation, at-most-once execution, back-pressure, size
//! limits and graceful shutdown, each against both brokers.

use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use mqrpc::{ClientOptions, Connection, Error, ServerOptions};
use mqrpc_tests::raw::{request_properties, status_of, RawPeer};
use mqrpc_tests::{eventually, Calc, CalculatorClient, CalculatorServer, TestBroker};

mqrpc_tests::on_both_brokers!(
    handler_reads_its_deadline,
    request_carries_expiry_and_budget,
    expired_request_is_answered_but_not_run,
    request_that_waited_past_its_deadline_is_not_run,
    dropping_a_call_stops_its_handler,
    handler_is_stopped_at_the_deadline,
    redelivered_request_runs_once,
    method_qos_attribute_sets_the_request_qos,
    concurrency_limit_is_respected,
    full_queue_is_refused_with_overloaded,
    oversized_request_is_refused,
    shutdown_finishes_running_calls,
);

fn client_options(timeout_ms: u64) -> ClientOptions {
    ClientOptions::default().timeout(Duration::from_millis(timeout_ms))
}

async fn handler_reads_its_deadline(broker: TestBroker) {
    let (conn, _) = broker.serve_calc().await;
    let client = CalculatorClient::with_options(&conn, client_options(5_000))
        .await
        .unwrap();
    let budget = client.budget_ms().await.unwrap().expect("a deadline");
    assert!(budget > 0 && budget <= 5_000, "{budget}");
    let budget = client
        .with_timeout(Duration::from_millis(700))
        .budget_ms()
        .await
        .unwrap()
        .expect("a deadline");
    assert!(budget <= 700, "{budget}");
}

/// What a foreign server sees: Message Expiry Interval and mqrpc-timeout-ms.
async fn request_carries_expiry_and_budget(broker: TestBroker) {
    let mut server = RawPeer::connect(broker.port(), &["mqrpc/Calculator/+"]).await;
    let conn = broker.connect().await;
    let client = CalculatorClient::with_options(&conn, client_options(2_500))
        .await
        .unwrap();
    let call = tokio::spawn(async move { client.add(1, 2).await });
    let request = server
        .next_publish(Duration::from_secs(5))
        .await
        .expect("the request");
    let properties = request.properties.clone().unwrap();
    let expiry = properties
        .message_expiry_interval
        .expect("Message Expiry Interval");
    assert!((1..=3).contains(&expiry), "{expiry}");
    let budget = properties
        .user_properties
        .iter()
        .find(|(k, _)| k == "mqrpc-timeout-ms")
        .map(|(_, v)| v.clone());
    assert_eq!(budget.as_deref(), Some("2500"));
    assert!(call.await.unwrap().unwrap_err().is_timeout());
}

async fn expired_request_is_answered_but_not_run(broker: TestBroker) {
    let (_conn, calc) = broker.serve_calc().await;
    let mut peer = RawPeer::connect(broker.port(), &["replies/expired"]).await;
    let mut properties = request_properties("replies/expired", b"c1", Some("application/json"));
    properties
        .user_properties
        .push(("mqrpc-timeout-ms".into(), "0".into()));
    peer.publish("mqrpc/Calculator/count", "{}", properties)
        .await;
    let answer = peer
        .next_publish(Duration::from_secs(5))
        .await
        .expect("an answer");
    assert_eq!(status_of(&answer).as_deref(), Some("deadline-exceeded"));
    assert_eq!(
        calc.calls.load(Ordering::SeqCst),
        0,
        "the handler must not run"
    );
}

async fn request_that_waited_past_its_deadline_is_not_run(broker: TestBroker) {
    let (conn, calc) = broker
        .serve_calc_with(ServerOptions::default().max_concurrent(1))
        .await;
    let client = CalculatorClient::new(&conn).await.unwrap();
    let busy = tokio::spawn({
        let client = client.clone();
        async move { client.linger(1_500).await }
    });
    assert!(eventually(|| calc.stats.started.load(Ordering::SeqCst) == 1).await);
    // Waits for the only slot, which frees after its 300 ms deadline.
    let err = client
        .with_timeout(Duration::from_millis(300))
        .count()
        .await
        .unwrap_err();
    assert!(err.is_timeout(), "{err:?}");
    assert_eq!(busy.await.unwrap().unwrap(), 1_500);
    // Let the server take the queued request off its queue.
    assert_eq!(client.add(1, 1).await.unwrap(), 2);
    assert_eq!(
        calc.calls.load(Ordering::SeqCst),
        0,
        "expired while queued: not run"
    );
}

async fn dropping_a_call_stops_its_handler(broker: TestBroker) {
    let (conn, calc) = broker.serve_calc().await;
    let client = CalculatorClient::with_options(&conn, client_options(60_000))
        .await
        .unwrap();
    let call = tokio::spawn({
        let client = client.clone();
        async move { client.linger(30_000).await }
    });
    assert!(eventually(|| calc.stats.started.load(Ordering::SeqCst) == 1).await);
    call.abort(); // drops the client future
    assert!(
        eventually(|| calc.stats.stopped.load(Ordering::SeqCst) == 1).await,
        "the server did not stop the handler of a dropped call"
    );
    assert_eq!(calc.stats.finished.load(Ordering::SeqCst), 0);
    // The service is fine afterwards.
    assert_eq!(client.add(2, 2).await.unwrap(), 4);
}

async fn handler_is_stopped_at_the_deadline(broker: TestBroker) {
    let (conn, calc) = broker.serve_calc().await;
    let client = CalculatorClient::with_options(&conn, client_options(300))
        .await
        .unwrap();
    let err = client.linger(30_000).await.unwrap_err();
    assert!(err.is_timeout(), "{err:?}");
    assert!(
        eventually(|| calc.stats.stopped.load(Ordering::SeqCst) == 1).await,
        "the handler kept running past its deadline"
    );
}

/// A QoS 1 redelivery (same Response Topic, same Correlation Data) gets the
/// first answer again; the handler runs once.
async fn redelivered_request_runs_once(broker: TestBroker) {
    let (_conn, calc) = broker.serve_calc().await;
    let mut peer = RawPeer::connect(broker.port(), &["replies/dup"]).await;
    let publisher = RawPeer::connect(broker.port(), &[]).await;
    let send = |id: &'static [u8]| {
        let properties = request_properties("replies/dup", id, Some("application/json"));
        publisher.publish("mqrpc/Calculator/count", "{}", properties)
    };
    // A copy after the answer: answered again from the cache.
    for _ in 0..2 {
        send(b"same-id").await;
        let answer = peer_answer(&mut peer).await;
        assert_eq!(status_of(&answer).as_deref(), Some("ok"));
        assert_eq!(&answer.payload[..], b"1");
    }
    assert_eq!(calc.calls.load(Ordering::SeqCst), 1, "ran twice");
    // Copies while the call runs: it still runs once (the first answers).
    tokio::join!(send(b"burst"), send(b"burst"), send(b"burst"));
    let answer = peer_answer(&mut peer).await;
    assert_eq!(&answer.payload[..], b"2");
    // Another correlation is another call.
    send(b"other-id").await;
    loop {
        let answer = peer_answer(&mut peer).await;
        if &answer.payload[..] != b"2" {
            assert_eq!(&answer.payload[..], b"3");
            break;
        }
    }
    assert_eq!(calc.calls.load(Ordering::SeqCst), 3);
}

async fn peer_answer(peer: &mut RawPeer) -> rumqttc::v5::mqttbytes::v5::Publish {
    peer.next_publish(Duration::from_secs(5))
        .await
        .expect("an answer")
}

async fn method_qos_attribute_sets_the_request_qos(broker: TestBroker) {
    let mut server = RawPeer::connect(broker.port(), &[]).await;
    server
        .client
        .subscribe(
            "mqrpc/Calculator/+",
            rumqttc::v5::mqttbytes::QoS::ExactlyOnce,
        )
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await; // no SUBACK helper for QoS 2
    let conn = broker.connect().await;
    let client = CalculatorClient::with_options(&conn, client_options(200))
        .await
        .unwrap();
    let _ = client.add_qos0(1, 2).await;
    let _ = client.add(1, 2).await;
    let mut seen = Vec::new();
    while let Some(publish) = server.next_publish(Duration::from_millis(500)).await {
        seen.push((
            String::from_utf8_lossy(&publish.topic).into_owned(),
            publish.qos as u8,
        ));
    }
    assert!(
        seen.contains(&("mqrpc/Calculator/add_qos0".into(), 0)),
        "{seen:?}"
    );
    assert!(
        seen.contains(&("mqrpc/Calculator/add".into(), 1)),
        "{seen:?}"
    );
}

async fn concurrency_limit_is_respected(broker: TestBroker) {
    let (conn, calc) = broker
        .serve_calc_with(ServerOptions::default().max_concurrent(2))
        .await;
    let client = CalculatorClient::new(&conn).await.unwrap();
    let calls: Vec<_> = (0..8)
        .map(|_| {
            let client = client.clone();
            tokio::spawn(async move { client.linger(100).await })
        })
        .collect();
    for call in calls {
        assert_eq!(call.await.unwrap().unwrap(), 100);
    }
    assert_eq!(calc.stats.finished.load(Ordering::SeqCst), 8);
    assert_eq!(calc.stats.max_active.load(Ordering::SeqCst), 2);
}

async fn full_queue_is_refused_with_overloaded(broker: TestBroker) {
    let options = ServerOptions::default().max_concurrent(1).max_queued(1);
    let (conn, calc) = broker.serve_calc_with(options).await;
    let client = CalculatorClient::new(&conn).await.unwrap();
    let first = tokio::spawn({
        let client = client.clone();
        async move { client.linger(1_000).await }
    });
    assert!(eventually(|| calc.stats.started.load(Ordering::SeqCst) == 1).await);
    let (a, b) = tokio::join!(client.linger(10), client.linger(10));
    assert_eq!(first.await.unwrap().unwrap(), 1_000);
    let results = [a, b];
    let refused = results
        .iter()
        .filter(|r| matches!(r, Err(Error::Overloaded { .. })))
        .count();
    let served = results.iter().filter(|r| matches!(r, Ok(10))).count();
    assert_eq!((refused, served), (1, 1), "{results:?}");
    assert!(results
        .iter()
        .any(|r| r.as_ref().is_err_and(|e| e.is_retryable())));
}

async fn oversized_request_is_refused(broker: TestBroker) {
    let (conn, _) = broker
        .serve_calc_with(ServerOptions::default().max_request_size(1_000))
        .await;
    let client = CalculatorClient::new(&conn).await.unwrap();
    let err = client.echo("x".repeat(2_000)).await.unwrap_err();
    assert!(matches!(err, Error::TooLarge { .. }), "{err:?}");
    assert_eq!(client.echo("small".into()).await.unwrap(), "small");
}

async fn shutdown_finishes_running_calls(broker: TestBroker) {
    let conn = broker.connect().await;
    let calc = Calc::default();
    let handle = CalculatorServer::new(calc.clone())
        .serve(&conn)
        .await
        .unwrap();
    let client = CalculatorClient::with_options(&conn, client_options(10_000))
        .await
        .unwrap();
    let running = tokio::spawn({
        let client = client.clone();
        async move { client.linger(500).await }
    });
    assert!(eventually(|| calc.stats.started.load(Ordering::SeqCst) == 1).await);
    handle.shutdown().await.unwrap();
    // shutdown returned after the running call finished and answered.
    assert_eq!(calc.stats.finished.load(Ordering::SeqCst), 1);
    assert_eq!(running.await.unwrap().unwrap(), 500);
    let err = client
        .with_timeout(Duration::from_millis(200))
        .add(1, 1)
        .await
        .unwrap_err();
    assert!(err.is_no_responder() || err.is_timeout(), "{err:?}");
}

/// The broker's Maximum Packet Size is checked before sending: rumqttc would
/// drop the whole connection on an oversized packet. Calls over it travel in
/// chunks (tests/chunked.rs); a one-way request, which is never chunked, is
/// refused before it is sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn packet_over_the_brokers_limit_fails_without_breaking_the_connection() {
    if !mqrpc_tests::mosquitto_available() {
        return;
    }
    let mosquitto = mqrpc_tests::Mosquitto::start(&["max_packet_size 4096"]).unwrap();
    let url = format!("mqtt://127.0.0.1:{}", mosquitto.port);
    let conn = Connection::connect_url(&url).await.unwrap();
    let _server = CalculatorServer::new(Calc::default())
        .serve(&conn)
        .await
        .unwrap();
    let client = CalculatorClient::new(&conn).await.unwrap();
    let long = "x".repeat(10_000);
    let err = client.client().notify("echo", &long).await.unwrap_err();
    assert!(matches!(err, Error::TooLarge { .. }), "{err:?}");
    assert!(conn.is_connected());
    // Calls over the limit go in chunks, both ways.
    assert_eq!(client.echo(long.clone()).await.unwrap(), long);
    assert_eq!(
        client.repeat(b'x', 10_000).await.unwrap(),
        vec![b'x'; 10_000]
    );
    assert_eq!(client.echo("fits".into()).await.unwrap(), "fits");
    assert!(conn.is_connected());
}

/// QoS 2 on persistent sessions (refused before the transport kept QoS 2
/// state across reconnects; `call_faults` covers the resume itself).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qos2_works_on_a_persistent_session() {
    let mut brokers = vec![mqrpc_tests::embedded().await];
    brokers.extend(mqrpc_tests::mosquitto());
    for broker in brokers {
        let options = |id: &str| {
            mqrpc::ConnectOptions::from_url(broker.url())
                .unwrap()
                .client_id(format!("qos2-persistent-{id}-{}", broker.kind()))
                .session_expiry(Duration::from_secs(30))
        };
        let server_conn = Connection::connect(options("server")).await.unwrap();
        let _server = CalculatorServer::new(Calc::default())
            .serve_with(
                &server_conn,
                ServerOptions::default().qos(mqrpc::QoS::ExactlyOnce),
            )
            .await
            .unwrap();
        let conn = Connection::connect(options("client")).await.unwrap();
        let client = CalculatorClient::with_options(
            &conn,
            ClientOptions::default().qos(mqrpc::QoS::ExactlyOnce),
        )
        .await
        .unwrap();
        assert_eq!(client.add(1, 2).await.unwrap(), 3, "{}", broker.kind());
        assert_eq!(client.count().await.unwrap(), 1, "{}", broker.kind());
    }
}

/// A cancel message for a call whose request has not arrived yet keeps
/// the request from running when it does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_before_request_keeps_it_from_running() {
    let broker = mqrpc_tests::embedded().await;
    let (_conn, calc) = broker.serve_calc().await;
    let mut peer = RawPeer::connect(broker.port(), &["replies/cancel"]).await;
    let mut cancel = mqrpc_tests::raw::request_properties("ignored", b"early", None);
    cancel.response_topic = None;
    cancel
        .user_properties
        .push(("mqrpc-response-topic".into(), "replies/cancel".into()));
    peer.publish("mqrpc/Calculator/_cancel", Bytes::new(), cancel)
        .await;
    // Give the broker time to deliver the cancel before the request.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let properties = request_properties("replies/cancel", b"early", Some("application/json"));
    peer.publish("mqrpc/Calculator/count", "{}", properties)
        .await;
    // A second, uncancelled call proves the server read both.
    let properties = request_properties("replies/cancel", b"later", Some("application/json"));
    peer.publish("mqrpc/Calculator/count", "{}", properties)
        .await;
    let answer = peer.next_publish(Duration::from_secs(5)).await.unwrap();
    assert_eq!(
        mqrpc_tests::raw::correlation_of(&answer).as_deref(),
        Some(&b"later"[..])
    );
    assert_eq!(calc.calls.load(Ordering::SeqCst), 1);
    assert!(peer
        .next_publish(Duration::from_millis(300))
        .await
        .is_none());
}

/// With a persistent session, a request sent while the server is away is
/// kept by the broker and answered when the server is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn persistent_session_serves_requests_sent_while_away() {
    let Some(broker) = mqrpc_tests::mosquitto() else {
        return;
    };
    let options = || {
        mqrpc::ConnectOptions::from_url(broker.url())
            .unwrap()
            .client_id("persistent-calc")
            .session_expiry(Duration::from_secs(60))
    };
    let server_conn = Connection::connect(options()).await.unwrap();
    let calc = Calc::default();
    let _server = CalculatorServer::new(calc.clone())
        .serve(&server_conn)
        .await
        .unwrap();
    server_conn.close().await; // the broker keeps the session
    let conn = broker.connect().await;
    let client = CalculatorClient::new(&conn).await.unwrap();
    let call = tokio::spawn(async move { client.count().await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!call.is_finished(), "{:?}", call.await);
    // The server comes back (same client id, a new process would do the same).
    let server_conn = Connection::connect(options()).await.unwrap();
    let _server = CalculatorServer::new(calc.clone())
        .serve(&server_conn)
        .await
        .unwrap();
    assert_eq!(call.await.unwrap().unwrap(), 1);
}
