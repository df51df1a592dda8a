//! The fuzz corpus of real traffic (`tests/corpus/`, `harness/corpus.rs`):
//! recorded from a real client and server through a broker by a peer
//! subscribed to `#` (`MQRPC_RECORD_CORPUS=1 cargo test -p mqrpc-tests
//! --test corpus -- --ignored record_corpus` writes it again), and
//! checked: every file is one PUBLISH of a known kind, and replayed to a
//! fresh server through a real broker, every request of it is answered.

use std::collections::BTreeMap;
use std::time::Duration;

use mqrpc::{ClientOptions, Codec};
use mqrpc_tests::corpus::{self, kind_of};
use mqrpc_tests::raw::{status_of, RawPeer};
use mqrpc_tests::{CalculatorClient, TestBroker};

mqrpc_tests::on_both_brokers!(every_recorded_request_is_answered_again);

/// How many packets of one kind the corpus keeps.
const PER_KIND: usize = 2;

/// Records the corpus: the calls below, every PUBLISH the broker routed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "writes tests/corpus/: MQRPC_RECORD_CORPUS=1 ... -- --ignored record_corpus"]
async fn record_corpus() {
    if std::env::var_os("MQRPC_RECORD_CORPUS").is_none() {
        return;
    }
    let broker = mqrpc_tests::embedded().await;
    let mut recorder = RawPeer::connect(broker.port(), &["#"]).await;
    let (_server_conn, _calc) = broker.serve_calc().await;
    let client = broker.client(Duration::from_secs(5)).await;
    assert_eq!(client.add(2, 3).await.unwrap(), 5);
    let _ = client.divide(1.0, 0.0).await.unwrap();
    assert_eq!(client.echo("héllo".into()).await.unwrap(), "héllo");
    let _ = client.explode("boom".into()).await;
    let items: Vec<_> =
        mqrpc::StreamExt::collect::<Vec<_>>(client.count_up(3).await.unwrap()).await;
    assert_eq!(items.len(), 3);
    // A call that times out: its request, then its cancel.
    let short = client.with_timeout(Duration::from_millis(200));
    assert!(short.hang().await.is_err());
    // JSON, an unknown method, arguments that do not decode.
    let conn = client.client().connection().clone();
    let json = CalculatorClient::with_options(
        &conn,
        ClientOptions::default().codec(Codec::Json).batches(false),
    )
    .await
    .unwrap();
    assert_eq!(json.add(40, 2).await.unwrap(), 42);
    let _ = json.client().call_raw("nope", b"{}".to_vec()).await;
    let _ = json.client().call_raw("add", b"[1,".to_vec()).await;
    // A call given up before its deadline: its cancel.
    let given_up = tokio::spawn({
        let client = client.clone();
        async move { client.hang().await }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    given_up.abort();
    // Calls at once: batches and batch answers, once the probe answered.
    for _ in 0..50 {
        let calls: Vec<_> = (0..200i64)
            .map(|i| {
                let client = client.clone();
                tokio::spawn(async move { client.add(i, 1).await })
            })
            .collect();
        for call in calls {
            call.await.unwrap().unwrap();
        }
        if conn.publish_counts().merged > 0 {
            break;
        }
    }
    let mut kept: BTreeMap<String, Vec<rumqttc::v5::mqttbytes::v5::Publish>> = BTreeMap::new();
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    while let Some(publish) = recorder.next_publish(Duration::from_secs(2)).await {
        let kind = kind_of(&publish);
        *seen
            .entry(format!(
                "{kind} {}",
                String::from_utf8_lossy(&publish.topic)
                    .split('/')
                    .take(3)
                    .collect::<Vec<_>>()
                    .join("/")
            ))
            .or_default() += 1;
        if kind.starts_with("request-gone")
            || String::from_utf8_lossy(&publish.topic).contains("/_gone/")
        {
            continue;
        }
        let of_kind = kept.entry(kind).or_default();
        if of_kind.len() < PER_KIND {
            of_kind.push(publish);
        }
    }
    let dir = corpus::dir();
    for old in std::fs::read_dir(&dir).unwrap() {
        let path = old.unwrap().path();
        if path.extension().is_some_and(|e| e == "mqtt") {
            std::fs::remove_file(path).unwrap();
        }
    }
    let mut n = 0;
    for (kind, publishes) in &kept {
        for publish in publishes {
            n += 1;
            std::fs::write(
                dir.join(format!("{n:02}-{kind}.mqtt")),
                corpus::encode(publish),
            )
            .unwrap();
        }
    }
    println!(
        "corpus: {n} packets of {} kinds: {:?}; seen {seen:?}",
        kept.len(),
        kept.keys()
    );
}

/// Every file reads as one PUBLISH of the kind its name says, and the
/// corpus covers what the fuzzers start from.
#[test]
fn the_corpus_reads_and_covers_each_kind() {
    let recorded = corpus::load();
    for packet in &recorded {
        assert_eq!(kind_of(&packet.publish), packet.kind, "{}", packet.name);
    }
    let kinds: Vec<&str> = recorded.iter().map(|r| r.kind.as_str()).collect();
    for needed in [
        "request-add",
        "request-cancel",
        "batch-request",
        "batch-answer",
        "answer-ok",
        "answer-error",
        "answer-bad-request",
        "answer-stream-ok",
    ] {
        assert!(kinds.contains(&needed), "no {needed} in {kinds:?}");
    }
}

/// Replayed as recorded (topic, QoS, properties, payload) to a fresh
/// server, each request with a Response Topic gets an answer there, and
/// a recorded `add` the same sum.
async fn every_recorded_request_is_answered_again(broker: TestBroker) {
    let (_server_conn, _calc) = broker.serve_calc().await;
    let requests: Vec<_> = corpus::load()
        .into_iter()
        .filter(|r| r.is_request() && r.kind != "request-cancel" && r.kind != "request-credit")
        .collect();
    assert!(!requests.is_empty());
    for request in requests {
        let properties = request.publish.properties.clone().unwrap_or_default();
        let Some(reply_to) = properties.response_topic.clone() else {
            continue;
        };
        let mut peer = RawPeer::connect(broker.port(), &[reply_to.as_str()]).await;
        let topic = String::from_utf8_lossy(&request.publish.topic).to_string();
        peer.publish_qos(
            &topic,
            request.publish.qos,
            request.publish.payload.clone(),
            properties,
        )
        .await;
        let answer = peer
            .next_publish(Duration::from_secs(10))
            .await
            .unwrap_or_else(|| panic!("{} ({}): no answer", request.name, broker.kind()));
        let status = status_of(&answer).unwrap_or_default();
        println!(
            "corpus ({}): {} answered {status}",
            broker.kind(),
            request.name
        );
        if request.kind == "request-add"
            && answer
                .properties
                .as_ref()
                .and_then(|p| p.content_type.as_deref())
                .is_none()
        {
            assert_eq!(status, "ok", "{}", request.name);
            let (a, b): (i64, i64) = Codec::Postcard.decode(&request.publish.payload).unwrap();
            let sum: i64 = Codec::Postcard.decode(&answer.payload).unwrap();
            assert_eq!(sum, a + b, "{}", request.name);
        }
    }
}
