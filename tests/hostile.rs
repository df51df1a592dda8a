//! A hostile or careless foreign client (a raw MQTT v5 peer using only
//! what PROTOCOL.md allows) cannot make a server hold more than its
//! documented bounds: Correlation Data, Response Topics and user
//! properties over the server's limits are refused with `bad-request`
//! naming the limit (or dropped and counted when there is no usable
//! Response Topic) and leave nothing behind; keys just under the limits
//! fill the duplicate table only up to its byte budget, by the table's own
//! accounting; waiting requests stay within theirs; good calls are still
//! answered. Answers go at the request's QoS (PROTOCOL.md, "Response").

use std::time::Duration;

use mqrpc::{ServerHandle, ServerOptions, ServerUsage};
use mqrpc_tests::raw::{correlation_of, request_properties, status_of, RawPeer};
use mqrpc_tests::{Calc, CalculatorClient, CalculatorServer, TestBroker};
use rumqttc::v5::mqttbytes::v5::{Publish, PublishProperties};
use rumqttc::v5::mqttbytes::QoS;

mqrpc_tests::on_both_brokers!(
    oversized_correlation_data_is_refused_and_nothing_is_kept,
    oversized_user_properties_are_refused_and_nothing_is_kept,
    an_oversized_response_topic_is_dropped_and_counted,
    keys_just_under_the_limits_fill_the_table_within_its_budget,
    waiting_requests_stay_within_their_byte_budget,
    answers_go_at_the_requests_qos,
    the_table_empties_after_the_window_without_further_requests,
);

/// Requests per flood (the issue's figure).
const CALLS: u64 = 10_000;
/// "64 KiB": the most an MQTT binary or string field holds (a 2-byte
/// length), the most a peer can put in one key or property.
const BIG: usize = 65_535;
const WAIT: Duration = Duration::from_secs(5);
const REPLY: &str = "hostile/replies";
/// A Response Topic nobody subscribes to: the broker drops what goes there.
const NOBODY: &str = "hostile/nobody";
const ADD: &str = "mqrpc/Calculator/add";
const ARGS: &str = r#"{"a": 1, "b": 2}"#;
const JSON: Option<&str> = Some("application/json");

async fn serve(broker: &TestBroker, options: ServerOptions) -> (mqrpc::Connection, ServerHandle) {
    let conn = broker.connect().await;
    let handle = CalculatorServer::new(Calc::default())
        .serve_with(&conn, options)
        .await
        .unwrap();
    (conn, handle)
}

/// Waits until `condition` holds on the server's usage; a bound far above
/// what a working server needs, only so a broken one fails instead of
/// hanging (not a timing assertion).
async fn wait_for(server: &ServerHandle, what: &str, condition: impl Fn(&ServerUsage) -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    loop {
        let usage = server.usage();
        if condition(&usage) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what}: never happened; usage {usage:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Requests a flood may have ahead of the server: Mosquitto queues at most
/// 1 000 messages for a client (`max_queued_messages`) and drops the rest,
/// so a peer faster than the server must wait for it.
const AHEAD: u64 = 100;

/// Waits, every [`AHEAD`] requests, until the server has handled all but
/// [`AHEAD`] of the `sent` ones (by `handled`, one of its counters): the
/// flood is never more than 2 × [`AHEAD`] ahead.
async fn pace(server: &ServerHandle, sent: u64, handled: impl Fn(&ServerUsage) -> u64) {
    if sent.is_multiple_of(AHEAD) {
        wait_for(server, "the server keeps up", |u| {
            handled(u) + AHEAD >= sent
        })
        .await;
    }
}

/// Correlation Data of `len` bytes, distinct per `n`.
fn correlation(n: u64, len: usize) -> Vec<u8> {
    let mut data = vec![b'c'; len];
    data[..8].copy_from_slice(&n.to_be_bytes());
    data
}

fn with_user_properties(
    mut properties: PublishProperties,
    user: Vec<(String, String)>,
) -> PublishProperties {
    properties.user_properties = user;
    properties
}

/// After a flood, the server still answers: a raw request and a typed call.
async fn good_calls_are_still_answered(broker: &TestBroker, peer: &mut RawPeer) {
    let key = *b"0123456789abcdef"; // a 16-byte UUID
    peer.publish(ADD, ARGS, request_properties(REPLY, &key, JSON))
        .await;
    let answer = next_answer(peer).await;
    assert_eq!(status_of(&answer).as_deref(), Some("ok"));
    assert_eq!(&answer.payload[..], b"3");
    assert_eq!(correlation_of(&answer).as_deref(), Some(&key[..]));
    let calc = broker.client(WAIT).await;
    assert_eq!(calc.add(40, 2).await.unwrap(), 42);
}

async fn next_answer(peer: &mut RawPeer) -> Publish {
    peer.next_publish(WAIT).await.expect("an answer")
}

/// The table keeps nothing of a refused request: its entries and bytes are
/// those of a server that got none.
fn assert_nothing_kept(usage: &ServerUsage, fresh: &ServerUsage) {
    assert_eq!(usage.dedup_entries, 0, "{usage:?}");
    assert_eq!(usage.dedup_bytes, fresh.dedup_bytes, "{usage:?}");
    assert_eq!((usage.queued, usage.queued_bytes, usage.streams), (0, 0, 0));
}

async fn oversized_correlation_data_is_refused_and_nothing_is_kept(broker: TestBroker) {
    let (_conn, server) = serve(&broker, ServerOptions::default()).await;
    let fresh = server.usage();
    let mut peer = RawPeer::connect(broker.port(), &[REPLY]).await;
    let big = correlation(0, BIG);
    peer.publish(ADD, ARGS, request_properties(REPLY, &big, JSON))
        .await;
    let answer = next_answer(&mut peer).await;
    assert_eq!(status_of(&answer).as_deref(), Some("bad-request"));
    assert_eq!(
        std::str::from_utf8(&answer.payload).unwrap(),
        "correlation data is 65535 bytes, limit 256"
    );
    assert_eq!(
        correlation_of(&answer).as_deref(),
        Some(&big[..]),
        "echoed, so the caller can match the refusal"
    );
    for n in 1..=CALLS {
        let key = correlation(n, BIG);
        peer.publish(ADD, ARGS, request_properties(NOBODY, &key, JSON))
            .await;
        pace(&server, n, |u| u.refused_over_limits).await;
    }
    wait_for(&server, "every request refused", |u| {
        u.refused_over_limits == CALLS + 1
    })
    .await;
    let usage = server.usage();
    assert_nothing_kept(&usage, &fresh);
    assert_eq!(usage.dropped_over_limits, 0);
    good_calls_are_still_answered(&broker, &mut peer).await;
}

async fn oversized_user_properties_are_refused_and_nothing_is_kept(broker: TestBroker) {
    let (_conn, server) = serve(&broker, ServerOptions::default()).await;
    let fresh = server.usage();
    let mut peer = RawPeer::connect(broker.port(), &[REPLY]).await;
    let big = vec![("pad".to_string(), "p".repeat(BIG))];
    let properties = |topic, n| {
        let key = correlation(n, 16);
        with_user_properties(request_properties(topic, &key, JSON), big.clone())
    };
    peer.publish(ADD, ARGS, properties(REPLY, 0)).await;
    let answer = next_answer(&mut peer).await;
    assert_eq!(status_of(&answer).as_deref(), Some("bad-request"));
    // The broker may add properties of its own (the embedded one names
    // the sender): at least the peer's 65 538 bytes.
    let message = std::str::from_utf8(&answer.payload).unwrap();
    let size: usize = message
        .strip_prefix("user property size is ")
        .and_then(|m| m.strip_suffix(" bytes, limit 16384"))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{message}"));
    assert!(size >= 65_538, "{message}");
    // Too many, however small.
    let many = (0..65)
        .map(|i| (format!("k{i}"), "v".to_string()))
        .collect();
    let key = correlation(1, 16);
    let request = with_user_properties(request_properties(REPLY, &key, JSON), many);
    peer.publish(ADD, ARGS, request).await;
    let answer = next_answer(&mut peer).await;
    assert_eq!(status_of(&answer).as_deref(), Some("bad-request"));
    let message = std::str::from_utf8(&answer.payload).unwrap();
    let count: usize = message
        .strip_prefix("user property count is ")
        .and_then(|m| m.strip_suffix(", limit 64"))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{message}"));
    assert!(count >= 65, "{message}");
    for n in 2..CALLS + 2 {
        peer.publish(ADD, ARGS, properties(NOBODY, n)).await;
        pace(&server, n, |u| u.refused_over_limits).await;
    }
    wait_for(&server, "every request refused", |u| {
        u.refused_over_limits == CALLS + 2
    })
    .await;
    assert_nothing_kept(&server.usage(), &fresh);
    good_calls_are_still_answered(&broker, &mut peer).await;
}

async fn an_oversized_response_topic_is_dropped_and_counted(broker: TestBroker) {
    let (_conn, server) = serve(&broker, ServerOptions::default()).await;
    let fresh = server.usage();
    let mut peer = RawPeer::connect(broker.port(), &[REPLY]).await;
    let topic = format!("{REPLY}/{}", "t".repeat(BIG - REPLY.len() - 1));
    for n in 0..1_000 {
        let key = correlation(n, 16);
        peer.publish(ADD, ARGS, request_properties(&topic, &key, JSON))
            .await;
        pace(&server, n, |u| u.dropped_over_limits).await;
    }
    // Cancels and credits name a call by its Response Topic too.
    let key = correlation(0, 16);
    let control = with_user_properties(
        PublishProperties {
            correlation_data: Some(key.into()),
            ..PublishProperties::default()
        },
        vec![("mqrpc-response-topic".to_string(), "t".repeat(2048))],
    );
    peer.publish("mqrpc/Calculator/_cancel", "", control).await;
    // The cancel comes twice: through the shared method subscription
    // (`+` matches `_cancel`) and the cancel subscription of every server.
    wait_for(&server, "every request dropped", |u| {
        u.dropped_over_limits == 1_002
    })
    .await;
    let usage = server.usage();
    assert_nothing_kept(&usage, &fresh);
    assert_eq!(usage.refused_over_limits, 0);
    good_calls_are_still_answered(&broker, &mut peer).await;
}

async fn keys_just_under_the_limits_fill_the_table_within_its_budget(broker: TestBroker) {
    let (_conn, server) = serve(&broker, ServerOptions::default()).await;
    // A Response Topic of exactly the limit, 1 024 bytes.
    let topic = format!("{REPLY}/{}", "t".repeat(1024 - REPLY.len() - 1));
    assert_eq!(topic.len(), 1024);
    let mut peer = RawPeer::connect(broker.port(), &[topic.as_str()]).await;
    let mut answered = 0;
    for n in 1..=CALLS {
        let key = correlation(n, 256);
        peer.publish(ADD, ARGS, request_properties(&topic, &key, JSON))
            .await;
        if n % 100 == 0 {
            let usage = server.usage();
            assert!(usage.dedup_bytes <= usage.dedup_budget, "{usage:?}");
        }
        // The answers come to this peer: it reads them as it goes, so
        // Mosquitto's queue for it never overflows.
        while answered + AHEAD < n || (n == CALLS && answered < CALLS) {
            let answer = next_answer(&mut peer).await;
            assert_eq!(status_of(&answer).as_deref(), Some("ok"));
            assert_eq!(&answer.payload[..], b"3");
            answered += 1;
        }
    }
    let usage = server.usage();
    assert!(usage.dedup_bytes <= usage.dedup_budget, "{usage:?}");
    assert!(
        usage.dedup_bytes > usage.dedup_budget * 9 / 10,
        "the table filled up: {usage:?}"
    );
    assert!(
        usage.dedup_entries < CALLS as usize,
        "the budget forgot the oldest calls: {usage:?}"
    );
    assert_eq!(usage.refused_over_limits + usage.dropped_over_limits, 0);
    eprintln!(
        "{}: {} calls with 1 024 + 256 byte keys remembered in {} of {} bytes",
        broker.kind(),
        usage.dedup_entries,
        usage.dedup_bytes,
        usage.dedup_budget
    );
    // The newest is remembered: its copy is answered again.
    let key = correlation(CALLS, 256);
    peer.publish(ADD, ARGS, request_properties(&topic, &key, JSON))
        .await;
    assert_eq!(&next_answer(&mut peer).await.payload[..], b"3");
    good_calls_are_still_answered(
        &broker,
        &mut RawPeer::connect(broker.port(), &[REPLY]).await,
    )
    .await;
}

async fn waiting_requests_stay_within_their_byte_budget(broker: TestBroker) {
    let budget = 64 * 1024;
    let options = ServerOptions::default()
        .max_concurrent(1)
        .max_queued_bytes(budget);
    let (_conn, server) = serve(&broker, options).await;
    let mut peer = RawPeer::connect(broker.port(), &[REPLY]).await;
    let timeout = |mut p: PublishProperties| {
        p.user_properties = vec![("mqrpc-timeout-ms".to_string(), "3000".to_string())];
        p
    };
    // One call takes the only slot until its deadline.
    let key = correlation(0, 16);
    let hang = timeout(request_properties(NOBODY, &key, JSON));
    peer.publish("mqrpc/Calculator/hang", "{}", hang).await;
    wait_for(&server, "the hanging call runs", |u| u.dedup_entries == 1).await;
    // 20 requests of 8 KiB wait for it: some fit the budget, the others are
    // refused at once.
    let padded = format!(r#"{{"a": 1, "b": 2, "pad": "{}"}}"#, "x".repeat(8 * 1024));
    for n in 1..=20 {
        let key = correlation(n, 16);
        let request = timeout(request_properties(REPLY, &key, JSON));
        peer.publish(ADD, padded.clone(), request).await;
    }
    let mut overloaded = 0;
    loop {
        let usage = server.usage();
        assert!(usage.queued_bytes <= budget, "{usage:?}");
        if usage.queued + overloaded == 20 {
            assert!(usage.queued >= 1, "{usage:?}");
            break;
        }
        let answer = next_answer(&mut peer).await;
        assert_eq!(status_of(&answer).as_deref(), Some("overloaded"));
        let message = std::str::from_utf8(&answer.payload).unwrap();
        assert!(message.contains("65536 bytes"), "{message}");
        overloaded += 1;
    }
    assert!(overloaded >= 1);
    let usage = server.usage();
    eprintln!(
        "{}: {} requests of 8 KiB waiting in {} of {budget} bytes, {overloaded} refused",
        broker.kind(),
        usage.queued,
        usage.queued_bytes
    );
}

async fn answers_go_at_the_requests_qos(broker: TestBroker) {
    let (_conn, _server) = serve(&broker, ServerOptions::default()).await;
    let low = ServerOptions::default()
        .prefix("low")
        .qos(mqrpc::QoS::AtLeastOnce);
    let (_low_conn, _low) = serve(&broker, low).await;
    let mut peer = RawPeer::connect(broker.port(), &[]).await;
    peer.subscribe(REPLY, QoS::ExactlyOnce).await;
    for (n, qos) in [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce]
        .into_iter()
        .enumerate()
    {
        let key = correlation(n as u64, 16);
        peer.publish_qos(ADD, qos, ARGS, request_properties(REPLY, &key, JSON))
            .await;
        let answer = next_answer(&mut peer).await;
        assert_eq!(&answer.payload[..], b"3");
        assert_eq!(answer.qos, qos, "the answer has the request's QoS");
    }
    // A server subscribed with maximum QoS 1 receives a QoS 2 request at
    // QoS 1, and answers at that.
    let key = correlation(9, 16);
    let request = request_properties(REPLY, &key, JSON);
    peer.publish_qos("low/Calculator/add", QoS::ExactlyOnce, ARGS, request)
        .await;
    let answer = next_answer(&mut peer).await;
    assert_eq!(&answer.payload[..], b"3");
    assert_eq!(answer.qos, QoS::AtLeastOnce);
    let calc: CalculatorClient = broker.client(WAIT).await;
    assert_eq!(calc.add(1, 1).await.unwrap(), 2);
}

async fn the_table_empties_after_the_window_without_further_requests(broker: TestBroker) {
    let window = Duration::from_secs(1);
    let options = ServerOptions::default().dedup(10_000, 8 << 20, window);
    let (_conn, server) = serve(&broker, options).await;
    let fresh = server.usage();
    let mut peer = RawPeer::connect(broker.port(), &[REPLY]).await;
    // Requests without a deadline: remembered for the window.
    for n in 0..100 {
        let key = correlation(n, 256);
        peer.publish(ADD, ARGS, request_properties(REPLY, &key, JSON))
            .await;
    }
    for _ in 0..100 {
        assert_eq!(&next_answer(&mut peer).await.payload[..], b"3");
    }
    let usage = server.usage();
    assert!(usage.dedup_entries > 0, "{usage:?}");
    assert!(usage.dedup_bytes > fresh.dedup_bytes, "{usage:?}");
    // No request comes to expire them: the server's own sweep does, and
    // the table is back to what an empty one holds.
    wait_for(&server, "the window passed", |u| u.dedup_entries == 0).await;
    assert_nothing_kept(&server.usage(), &fresh);
}
