//! Batches (PROTOCOL.md, "Batches"; issue 14), on both brokers: a batch
//! request's calls are admitted one by one (bad arguments, typed errors,
//! expiry, duplicates, overload, cancellation per call), clients batch only
//! to targets that answered a probe, foreign single-request servers keep
//! working, and the generated client's batched path loses nothing.
//!
//! Batch frames here are written and read by `mqrpc_tests::batch`, an
//! implementation of PROTOCOL.md independent of the runtime's.

use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use mqrpc::{Codec, ServerOptions};
use mqrpc_tests::batch::{batch_properties, call_frame, collect, Call};
use mqrpc_tests::raw::{correlation_of, request_properties, RawPeer};
use mqrpc_tests::{eventually, CalculatorClient, MathError, TestBroker};

const REPLIES: &str = "replies/batch";
const BATCH_TOPIC: &str = "mqrpc/Calculator/_batch/1";

mqrpc_tests::on_both_brokers!(
    each_call_of_a_batch_gets_its_own_outcome,
    a_redelivered_batch_runs_each_call_once,
    overload_is_answered_per_call,
    one_call_of_a_batch_is_cancelled,
    probe_and_broken_frames,
    generated_calls_at_depth_travel_in_batches,
    single_request_servers_keep_working,
);

fn postcard<T: serde::Serialize>(value: &T) -> Vec<u8> {
    Codec::Postcard.encode(value).unwrap()
}

async fn each_call_of_a_batch_gets_its_own_outcome(broker: TestBroker) {
    let (_conn, _calc) = broker.serve_calc().await;
    let mut peer = RawPeer::connect(broker.port(), &[REPLIES]).await;
    let calls = [
        Call::new("add", b"a", postcard(&(1i64, 2i64))),
        // Not an `(i64, i64)`: only this call is a bad request.
        Call::new("add", b"b", vec![0xff; 12]),
        Call::new("divide", b"c", postcard(&(1.0f64, 0.0f64))),
        Call::new("echo", b"d", postcard(&"hi")),
        Call::new("sqrt", b"e", vec![]),
        Call {
            timeout_ms: Some(0),
            ..Call::new("add", b"f", postcard(&(5i64, 5i64)))
        },
        Call {
            content_type: Some("application/json".into()),
            ..Call::new("add", b"g", b"{\"a\":20,\"b\":22}".to_vec())
        },
    ];
    peer.publish(BATCH_TOPIC, call_frame(&calls), batch_properties(REPLIES))
        .await;
    let expected: Vec<(&[u8], usize)> = calls.iter().map(|c| (&c.correlation[..], 1)).collect();
    let got = collect(&mut peer, &expected).await;
    let one = |c: &[u8]| got[c][0].clone();
    let kind = broker.kind();
    assert_eq!(one(b"a").status, None, "{kind}");
    assert_eq!(one(b"a").payload, postcard(&3i64));
    assert_eq!(one(b"b").status.as_deref(), Some("bad-request"), "{kind}");
    assert_eq!(one(b"c").status.as_deref(), Some("error"), "{kind}");
    let error: MathError = Codec::Postcard.decode(&one(b"c").payload).unwrap();
    assert_eq!(error, MathError::DivideByZero);
    assert_eq!(one(b"d").payload, postcard(&"hi"));
    assert_eq!(
        one(b"e").status.as_deref(),
        Some("unknown-method"),
        "{kind}"
    );
    assert_eq!(
        one(b"f").status.as_deref(),
        Some("deadline-exceeded"),
        "{kind}"
    );
    assert_eq!(one(b"g").status, None, "{kind}");
    assert_eq!(one(b"g").content_type.as_deref(), Some("application/json"));
    assert_eq!(one(b"g").payload, b"42");
}

async fn a_redelivered_batch_runs_each_call_once(broker: TestBroker) {
    let (_conn, calc) = broker.serve_calc().await;
    let mut peer = RawPeer::connect(broker.port(), &[REPLIES]).await;
    let calls = [
        Call::new("count", b"d1", vec![]),
        Call::new("count", b"d2", vec![]),
        Call::new("count", b"d3", vec![]),
    ];
    let frame = call_frame(&calls);
    peer.publish(BATCH_TOPIC, frame.clone(), batch_properties(REPLIES))
        .await;
    collect(&mut peer, &[(b"d1", 1), (b"d2", 1), (b"d3", 1)]).await;
    // The same batch again, as a broker redelivering it would send it.
    peer.publish(BATCH_TOPIC, frame, batch_properties(REPLIES))
        .await;
    let again = collect(&mut peer, &[(b"d1", 1), (b"d2", 1), (b"d3", 1)]).await;
    assert_eq!(calc.calls.load(Ordering::SeqCst), 3, "{}", broker.kind());
    let mut counts: Vec<u64> = again
        .values()
        .map(|a| Codec::Postcard.decode(&a[0].payload).unwrap())
        .collect();
    counts.sort();
    assert_eq!(counts, [1, 2, 3], "answered again from memory");
}

async fn overload_is_answered_per_call(broker: TestBroker) {
    let options = ServerOptions::default().max_concurrent(1).max_queued(0);
    let (_conn, _calc) = broker.serve_calc_with(options).await;
    let mut peer = RawPeer::connect(broker.port(), &[REPLIES]).await;
    let calls = [
        Call::new("sleep_ms", b"o1", postcard(&300u64)),
        Call::new("sleep_ms", b"o2", postcard(&300u64)),
        Call::new("sleep_ms", b"o3", postcard(&300u64)),
    ];
    peer.publish(BATCH_TOPIC, call_frame(&calls), batch_properties(REPLIES))
        .await;
    let got = collect(&mut peer, &[(b"o1", 1), (b"o2", 1), (b"o3", 1)]).await;
    let statuses: Vec<Option<String>> = [&b"o1"[..], b"o2", b"o3"]
        .iter()
        .map(|c| got[*c][0].status.clone())
        .collect();
    assert_eq!(
        statuses,
        [None, Some("overloaded".into()), Some("overloaded".into())],
        "{}",
        broker.kind()
    );
}

async fn one_call_of_a_batch_is_cancelled(broker: TestBroker) {
    let (_conn, calc) = broker.serve_calc().await;
    let mut peer = RawPeer::connect(broker.port(), &[REPLIES]).await;
    let calls = [
        Call::new("linger", b"keep", postcard(&300u64)),
        Call::new("linger", b"stop", postcard(&60_000u64)),
    ];
    peer.publish(BATCH_TOPIC, call_frame(&calls), batch_properties(REPLIES))
        .await;
    assert!(eventually(|| calc.stats.started.load(Ordering::SeqCst) == 2).await);
    let mut cancel = request_properties("ignored", b"stop", None);
    cancel.response_topic = None;
    cancel
        .user_properties
        .push(("mqrpc-response-topic".into(), REPLIES.into()));
    peer.publish("mqrpc/Calculator/_cancel", Bytes::new(), cancel)
        .await;
    assert!(eventually(|| calc.stats.stopped.load(Ordering::SeqCst) == 1).await);
    let got = collect(&mut peer, &[(b"keep", 1)]).await;
    assert_eq!(got[&b"keep"[..]][0].payload, postcard(&300u64));
    assert!(!got.contains_key(&b"stop"[..]), "{}", broker.kind());
    assert_eq!(calc.stats.finished.load(Ordering::SeqCst), 1);
}

/// An empty batch is the probe: a server that takes batches answers it
/// `ok` (a single answer with the probe's Correlation Data); a frame that
/// cannot be read is answered `bad-request`, and the server goes on.
async fn probe_and_broken_frames(broker: TestBroker) {
    let (_conn, _calc) = broker.serve_calc().await;
    let mut peer = RawPeer::connect(broker.port(), &[REPLIES]).await;
    let mut properties = batch_properties(REPLIES);
    properties.correlation_data = Some(Bytes::from_static(b"probe"));
    peer.publish(BATCH_TOPIC, vec![0x00], properties).await;
    let answer = peer.next_publish(Duration::from_secs(10)).await.unwrap();
    assert_eq!(correlation_of(&answer).as_deref(), Some(&b"probe"[..]));
    assert_eq!(mqrpc_tests::raw::status_of(&answer).as_deref(), Some("ok"));
    for (i, frame) in [
        vec![],
        vec![0x05, 0x00],
        vec![0x01, 0x40, b'x'],
        vec![0x00, 0x00],
    ]
    .into_iter()
    .enumerate()
    {
        let mut properties = batch_properties(REPLIES);
        properties.correlation_data = Some(Bytes::from(format!("broken-{i}")));
        peer.publish(BATCH_TOPIC, frame, properties).await;
        let answer = peer.next_publish(Duration::from_secs(10)).await.unwrap();
        assert_eq!(
            correlation_of(&answer).unwrap(),
            Bytes::from(format!("broken-{i}"))
        );
        assert_eq!(
            mqrpc_tests::raw::status_of(&answer).as_deref(),
            Some("bad-request")
        );
    }
    let calls = [Call::new("add", b"after", postcard(&(2i64, 2i64)))];
    peer.publish(BATCH_TOPIC, call_frame(&calls), batch_properties(REPLIES))
        .await;
    let got = collect(&mut peer, &[(b"after", 1)]).await;
    assert_eq!(got[&b"after"[..]][0].payload, postcard(&4i64));
}

/// The generated client at depth: 1 000 concurrent calls go out in batches
/// once the probe has answered, and come back (in batch answers) each to
/// its own call.
async fn generated_calls_at_depth_travel_in_batches(broker: TestBroker) {
    let (server_conn, _calc) = broker.serve_calc().await;
    let client = broker.client(Duration::from_secs(30)).await;
    let conn = client.client().connection().clone();
    // The probe runs beside the first calls; once it has answered, the
    // client batches.
    let mut rounds = 0;
    while conn.publish_counts().merged == 0 {
        rounds += 1;
        assert!(
            rounds <= 50,
            "{}: no batch after {rounds} rounds",
            broker.kind()
        );
        let calls: Vec<_> = (0..1_000i64)
            .map(|i| {
                let client = client.clone();
                tokio::spawn(async move { (i, client.add(i, 1).await) })
            })
            .collect();
        for call in calls {
            let (i, sum) = call.await.unwrap();
            assert_eq!(sum.unwrap(), i + 1, "{}", broker.kind());
        }
    }
    let sent = conn.publish_counts();
    println!(
        "{}: client {sent:?}, server {:?}",
        broker.kind(),
        server_conn.publish_counts()
    );
    assert!(sent.merged_parts > sent.merged, "{sent:?}");
    let answered = server_conn.publish_counts();
    assert!(
        answered.merged > 0,
        "{}: no batch answer: {answered:?}",
        broker.kind()
    );
}

/// A foreign server that knows only single requests (it subscribes
/// `<prefix>/<service>/+`) gets no batch and answers every call; next to an
/// mqrpc server in the same share group, the calls are split between them
/// and every call is answered.
async fn single_request_servers_keep_working(broker: TestBroker) {
    for with_mqrpc_server in [false, true] {
        let _mqrpc = if with_mqrpc_server {
            Some(broker.serve_calc().await)
        } else {
            None
        };
        let foreign = RawPeer::connect(broker.port(), &["$share/mqrpc/mqrpc/Calculator/+"]).await;
        let served = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let server = tokio::spawn(serve_adds(foreign, served.clone()));
        let client: CalculatorClient = broker.client(Duration::from_secs(5)).await;
        for _ in 0..3 {
            let calls: Vec<_> = (0..300i64)
                .map(|i| {
                    let client = client.clone();
                    tokio::spawn(async move { (i, client.add(i, 7).await) })
                })
                .collect();
            for call in calls {
                let (i, sum) = call.await.unwrap();
                assert_eq!(
                    sum.unwrap(),
                    i + 7,
                    "{} mqrpc server: {with_mqrpc_server}",
                    broker.kind()
                );
            }
        }
        assert!(served.load(Ordering::SeqCst) > 0, "{}", broker.kind());
        assert!(!server.is_finished(), "the single-request server failed");
        server.abort();
    }
}

/// A single-request server on a raw peer: answers `add` requests and fails
/// the test on anything else (a batch would be a protocol break).
async fn serve_adds(mut peer: RawPeer, served: std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    while let Some(request) = peer.next_publish(Duration::from_secs(600)).await {
        let topic = String::from_utf8(request.topic.to_vec()).unwrap();
        assert_eq!(
            topic, "mqrpc/Calculator/add",
            "a single-request server got {topic}"
        );
        let properties = request.properties.clone().unwrap();
        let content_type = properties.content_type.unwrap_or_default();
        assert!(!content_type.contains("batch"), "{content_type}");
        let (a, b): (i64, i64) = Codec::Postcard.decode(&request.payload).unwrap();
        let reply = rumqttc::v5::mqttbytes::v5::PublishProperties {
            correlation_data: properties.correlation_data,
            ..Default::default()
        };
        peer.client
            .publish_with_properties(
                properties.response_topic.unwrap(),
                rumqttc::v5::mqttbytes::QoS::AtLeastOnce,
                false,
                postcard(&(a + b)),
                reply,
            )
            .await
            .unwrap();
        served.fetch_add(1, Ordering::SeqCst);
    }
}
