//! PROTOCOL.md against the code (issue 26): the rules a foreign implementer
//! had to find out by experiment, each checked on the wire by a raw MQTT v5
//! peer (what a Python program would be) against a running server, on both
//! brokers. Where the document quotes a value (a QoS mapping, a refusal's
//! message, a fingerprint), the test reads it from PROTOCOL.md itself.
//!
//! Batch frames are written and read by `mqrpc_tests::batch`, independently
//! of the runtime's code.

use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use mqrpc::{Codec, ServerOptions};
use mqrpc_tests::batch::{answers_of, batch_properties, call_frame, collect, Answer, Call};
use mqrpc_tests::raw::{correlation_of, request_properties, status_of, RawPeer};
use mqrpc_tests::{eventually, Calc, CalculatorServer, TestBroker};
use rumqttc::v5::mqttbytes::v5::PublishProperties;
use rumqttc::v5::mqttbytes::QoS;

mqrpc_tests::on_both_brokers!(
    answers_have_the_qos_the_document_maps,
    a_batch_over_the_entry_limit_gets_the_documented_refusal,
    a_large_batch_fills_the_queue_call_by_call,
    size_limits_count_each_calls_arguments_only,
    batches_without_content_type_or_response_topic,
    cancels_and_credits_are_never_answered,
    batch_entries_sharing_correlation_data,
    empty_and_dollar_response_topics,
    stats_count_handler_runs_not_copies,
);

const REPLIES: &str = "replies/protocol";
const BATCH_TOPIC: &str = "mqrpc/Calculator/_batch/1";
const INSTANCE: &str = "protocol-1";

fn document() -> String {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../PROTOCOL.md");
    std::fs::read_to_string(path).expect("PROTOCOL.md")
}

/// The text between the two `<!-- name -->` markers of PROTOCOL.md.
fn marked(name: &str) -> String {
    let marker = format!("<!-- {name} -->");
    document()
        .split(&marker)
        .nth(1)
        .unwrap_or_else(|| panic!("PROTOCOL.md marks `{name}`"))
        .to_string()
}

fn postcard<T: serde::Serialize>(value: &T) -> Vec<u8> {
    Codec::Postcard.encode(value).unwrap()
}

async fn serve(broker: &TestBroker, options: ServerOptions) -> (mqrpc::Connection, Calc) {
    let conn = broker.connect().await;
    let calc = Calc::default();
    let _handle = CalculatorServer::new(calc.clone())
        .serve_with(&conn, options.instance(INSTANCE))
        .await
        .unwrap();
    (conn, calc)
}

/// A single `add(1, 2)` with this Correlation Data, then its answer; the
/// answers that came before it are returned. The requests sent before it
/// were admitted before it, so an answer they caused at admission would
/// most likely have left first: a check that they caused none (one that
/// a much later answer would escape).
async fn barrier(peer: &mut RawPeer, key: &[u8]) -> Vec<Answer> {
    let properties = request_properties(REPLIES, key, None);
    peer.publish("mqrpc/Calculator/add", postcard(&(1i64, 2i64)), properties)
        .await;
    let mut before = Vec::new();
    loop {
        let publish = peer
            .next_publish(Duration::from_secs(10))
            .await
            .expect("hang guard: the barrier's answer");
        for answer in answers_of(&publish) {
            if answer.correlation == key {
                return before;
            }
            before.push(answer);
        }
    }
}

/// "Response": the table's `request → answer` QoS mapping, observed.
async fn answers_have_the_qos_the_document_maps(broker: TestBroker) {
    let doc = marked("response qos");
    let mapping: Vec<(u8, u8)> = doc
        .split(',')
        .map(|pair| {
            let (from, to) = pair.split_once('→').expect("`request → answer`");
            (from.trim().parse().unwrap(), to.trim().parse().unwrap())
        })
        .collect();
    assert_eq!(mapping.len(), 3, "{doc}");
    let (_conn, _calc) = serve(&broker, ServerOptions::default()).await;
    let mut peer = RawPeer::connect(broker.port(), &[]).await;
    peer.subscribe(REPLIES, QoS::ExactlyOnce).await;
    let qos = |n: u8| match n {
        0 => QoS::AtMostOnce,
        1 => QoS::AtLeastOnce,
        _ => QoS::ExactlyOnce,
    };
    for (request, answer) in mapping {
        let key = [request];
        let properties = request_properties(REPLIES, &key, None);
        peer.publish_qos(
            "mqrpc/Calculator/add",
            qos(request),
            postcard(&(2i64, 3i64)),
            properties,
        )
        .await;
        let got = peer.next_publish(Duration::from_secs(10)).await.unwrap();
        assert_eq!(correlation_of(&got).as_deref(), Some(&key[..]));
        assert_eq!(
            got.qos,
            qos(answer),
            "QoS {request} request, {}",
            broker.kind()
        );
    }
}

/// "Batches": a frame announcing more entries than a decoder accepts is
/// one `bad-request`, whose message the document quotes.
async fn a_batch_over_the_entry_limit_gets_the_documented_refusal(broker: TestBroker) {
    let (_conn, calc) = serve(&broker, ServerOptions::default()).await;
    let mut peer = RawPeer::connect(broker.port(), &[REPLIES]).await;
    let limit: u64 = marked("batch entry limit")
        .trim()
        .replace(' ', "")
        .parse()
        .expect("the entry limit, a number");
    for (count, tail) in [
        (limit + 1, "entries (at most"),
        (limit, "entries announced in"),
    ] {
        // The count, then one call: the count is read first.
        let mut frame = call_frame(&[Call::new("count", b"c", vec![])]);
        frame.remove(0);
        let mut varint = Vec::new();
        let mut n = count;
        while n >= 0x80 {
            varint.push((n as u8) | 0x80);
            n >>= 7;
        }
        varint.push(n as u8);
        varint.extend(frame);
        let mut properties = batch_properties(REPLIES);
        properties.correlation_data = Some(Bytes::from_static(b"batch"));
        peer.publish(BATCH_TOPIC, varint, properties).await;
        let answer = peer.next_publish(Duration::from_secs(10)).await.unwrap();
        assert_eq!(status_of(&answer).as_deref(), Some("bad-request"));
        assert_eq!(correlation_of(&answer).as_deref(), Some(&b"batch"[..]));
        let message = std::str::from_utf8(&answer.payload).unwrap();
        assert!(
            message.starts_with(&format!("undecodable batch request: {count} {tail}")),
            "{message}"
        );
        if count > limit {
            assert!(
                document().contains(message),
                "PROTOCOL.md quotes `{message}`"
            );
        }
    }
    assert_eq!(calc.calls.load(Ordering::SeqCst), 0, "no call of it ran");
}

/// "Batches": each call of a batch is admitted alone, so a batch larger
/// than what the server runs and queues gets `overloaded` for the rest.
async fn a_large_batch_fills_the_queue_call_by_call(broker: TestBroker) {
    let options = ServerOptions::default().max_concurrent(1).max_queued(2);
    let (_conn, _calc) = serve(&broker, options).await;
    let mut peer = RawPeer::connect(broker.port(), &[REPLIES]).await;
    let keys: Vec<[u8; 1]> = (0..5u8).map(|n| [n]).collect();
    let calls: Vec<Call> = keys
        .iter()
        .map(|key| Call::new("sleep_ms", key, postcard(&(50u64,))))
        .collect();
    peer.publish(BATCH_TOPIC, call_frame(&calls), batch_properties(REPLIES))
        .await;
    let expected: Vec<(&[u8], usize)> = keys.iter().map(|k| (&k[..], 1)).collect();
    let got = collect(&mut peer, &expected).await;
    let statuses: Vec<Option<String>> =
        keys.iter().map(|k| got[&k[..]][0].status.clone()).collect();
    let overloaded = Some("overloaded".to_string());
    // One runs, two wait, in the batch's order; the last two are refused.
    assert_eq!(
        statuses,
        vec![None, None, None, overloaded.clone(), overloaded],
        "{}",
        broker.kind()
    );
}

/// "Server limits": `max_request_size` bounds each call's arguments, not
/// the batch, and properties do not count toward it.
async fn size_limits_count_each_calls_arguments_only(broker: TestBroker) {
    let options = ServerOptions::default().max_request_size(64);
    let (_conn, _calc) = serve(&broker, options).await;
    let mut peer = RawPeer::connect(broker.port(), &[REPLIES]).await;
    let text = |n: usize| "x".repeat(n);
    // 63 bytes of arguments each (a 1-byte length, 62 bytes), 189 together.
    let mut calls: Vec<Call> = [b"a", b"b", b"c"]
        .iter()
        .map(|key| Call::new("echo", &key[..], postcard(&(text(62),))))
        .collect();
    calls.push(Call::new("echo", b"d", postcard(&(text(64),))));
    peer.publish(BATCH_TOPIC, call_frame(&calls), batch_properties(REPLIES))
        .await;
    let got = collect(&mut peer, &[(b"a", 1), (b"b", 1), (b"c", 1), (b"d", 1)]).await;
    for key in [b"a", b"b", b"c"] {
        assert_eq!(got[&key[..]][0].status, None, "{}", broker.kind());
    }
    assert_eq!(got[&b"d"[..]][0].status.as_deref(), Some("too-large"));
    // A single request of 63 bytes with 4 KiB of user properties.
    let mut properties = request_properties(REPLIES, b"e", None);
    properties.user_properties = vec![("note".into(), text(4096))];
    peer.publish("mqrpc/Calculator/echo", postcard(&(text(62),)), properties)
        .await;
    let answer = peer.next_publish(Duration::from_secs(10)).await.unwrap();
    assert_eq!(correlation_of(&answer).as_deref(), Some(&b"e"[..]));
    assert_eq!(status_of(&answer).as_deref(), Some("ok"));
}

/// "Batches": a batch is read by its topic, whatever its Content Type; one
/// without a Response Topic runs its calls and answers none.
async fn batches_without_content_type_or_response_topic(broker: TestBroker) {
    let (_conn, calc) = serve(&broker, ServerOptions::default()).await;
    let mut peer = RawPeer::connect(broker.port(), &[REPLIES]).await;
    let calls = [Call::new("add", b"a", postcard(&(2i64, 2i64)))];
    let mut properties = batch_properties(REPLIES);
    properties.content_type = None;
    peer.publish(BATCH_TOPIC, call_frame(&calls), properties)
        .await;
    let got = collect(&mut peer, &[(b"a", 1)]).await;
    assert_eq!(got[&b"a"[..]][0].payload, postcard(&4i64));
    // No Response Topic: three `count` calls run, and a probe, nothing is
    // answered.
    let one_way = PublishProperties {
        response_topic: None,
        ..batch_properties(REPLIES)
    };
    let calls: Vec<Call> = [b"x", b"y", b"z"]
        .iter()
        .map(|key| Call::new("count", &key[..], vec![]))
        .collect();
    peer.publish(BATCH_TOPIC, call_frame(&calls), one_way.clone())
        .await;
    let probe = PublishProperties {
        correlation_data: Some(Bytes::from_static(b"probe")),
        ..one_way
    };
    peer.publish(BATCH_TOPIC, call_frame(&[]), probe).await;
    assert!(eventually(|| calc.calls.load(Ordering::SeqCst) == 3).await);
    assert_eq!(barrier(&mut peer, b"barrier").await, vec![]);
}

/// "Cancellation" and "Server streaming": cancel and credit messages are
/// never answered, even with a Response Topic, and still do their work.
async fn cancels_and_credits_are_never_answered(broker: TestBroker) {
    let (_conn, calc) = serve(&broker, ServerOptions::default()).await;
    let mut peer = RawPeer::connect(broker.port(), &[REPLIES]).await;
    let linger = request_properties(REPLIES, b"long", None);
    peer.publish("mqrpc/Calculator/linger", postcard(&(60_000u64,)), linger)
        .await;
    assert!(eventually(|| calc.stats.started.load(Ordering::SeqCst) == 1).await);
    let named = |property: &str, value: &str| {
        let mut properties = request_properties(REPLIES, b"long", None);
        properties.user_properties = vec![
            ("mqrpc-response-topic".into(), REPLIES.into()),
            (property.into(), value.into()),
        ];
        properties
    };
    let credit = format!("mqrpc/Calculator/_to/{INSTANCE}/_credit");
    peer.publish(&credit, Bytes::new(), named("mqrpc-credit", "16"))
        .await;
    peer.publish("mqrpc/Calculator/_cancel", Bytes::new(), named("x", "y"))
        .await;
    assert!(eventually(|| calc.stats.stopped.load(Ordering::SeqCst) == 1).await);
    // In a batch they are ignored: a batch entry cannot name the call's
    // Response Topic.
    let calls = [
        Call::new("_cancel", b"long", vec![]),
        Call::new("_credit", b"long", vec![]),
    ];
    peer.publish(BATCH_TOPIC, call_frame(&calls), batch_properties(REPLIES))
        .await;
    assert_eq!(
        barrier(&mut peer, b"barrier").await,
        vec![],
        "{}",
        broker.kind()
    );
}

/// "Batches": entries sharing Correlation Data are admitted like single
/// requests sharing it: an identical one is a copy (one run, one answer),
/// a different one a new call (both run, two answers with one key).
async fn batch_entries_sharing_correlation_data(broker: TestBroker) {
    let (_conn, calc) = serve(&broker, ServerOptions::default()).await;
    let mut peer = RawPeer::connect(broker.port(), &[REPLIES]).await;
    let calls = [
        Call::new("count", b"same", vec![]),
        Call::new("count", b"same", vec![]),
    ];
    peer.publish(BATCH_TOPIC, call_frame(&calls), batch_properties(REPLIES))
        .await;
    let got = collect(&mut peer, &[(b"same", 1)]).await;
    assert_eq!(got[&b"same"[..]][0].payload, postcard(&1u64));
    assert_eq!(
        barrier(&mut peer, b"barrier-1").await,
        vec![],
        "{}",
        broker.kind()
    );
    assert_eq!(calc.calls.load(Ordering::SeqCst), 1, "the copy did not run");
    let calls = [
        Call::new("add", b"shared", postcard(&(1i64, 1i64))),
        Call::new("add", b"shared", postcard(&(2i64, 2i64))),
    ];
    peer.publish(BATCH_TOPIC, call_frame(&calls), batch_properties(REPLIES))
        .await;
    let got = collect(&mut peer, &[(b"shared", 2)]).await;
    let mut payloads: Vec<Vec<u8>> = got[&b"shared"[..]]
        .iter()
        .map(|a| a.payload.clone())
        .collect();
    payloads.sort();
    assert_eq!(payloads, vec![postcard(&2i64), postcard(&4i64)]);
}

/// A service whose types show the fingerprint text's rules: a generic
/// `Result` traced, and a type that cannot be traced, as written.
mod documented {
    #[mqrpc::service]
    pub trait Tags {
        async fn tag(
            &self,
            labels: std::collections::HashMap<String, serde_json::Value>,
        ) -> Vec<serde_json::Value>;
    }
}

/// "Schema fingerprints": each quoted text gives its quoted fingerprint,
/// and the macro computes that fingerprint for the method.
#[test]
fn documented_fingerprint_texts_are_the_macros() {
    let examples = marked("fingerprint examples");
    let mut lines = examples
        .lines()
        .filter(|line| !line.trim().is_empty() && !line.starts_with("```"));
    let mut documented = Vec::new();
    while let (Some(text), Some(fingerprint)) = (lines.next(), lines.next()) {
        let fingerprint = fingerprint.trim().trim_start_matches("fingerprint").trim();
        assert_eq!(
            mqrpc::protocol::schema::fingerprint(text),
            fingerprint,
            "{text}"
        );
        documented.push(fingerprint.to_string());
    }
    let generated = [
        mqrpc_tests::CalculatorClient::__mqrpc_schema(1),
        documented::TagsClient::__mqrpc_schema(0),
    ];
    assert_eq!(documented, generated);
}

/// "Request": an empty Response Topic is invalid (the method runs, nothing
/// is answered); one starting with `$` is answered like any other.
async fn empty_and_dollar_response_topics(broker: TestBroker) {
    let (_conn, calc) = serve(&broker, ServerOptions::default()).await;
    let dollar = "$replies/protocol";
    let mut peer = RawPeer::connect(broker.port(), &[REPLIES, dollar]).await;
    let args = postcard(&(2i64, 2i64));
    // The embedded broker refuses an empty Response Topic (it disconnects
    // the sender); Mosquitto delivers the request.
    if broker.kind() == "mosquitto" {
        let empty = request_properties("", b"empty", None);
        peer.publish("mqrpc/Calculator/count", Bytes::new(), empty)
            .await;
        assert!(
            eventually(|| calc.calls.load(Ordering::SeqCst) == 1).await,
            "it ran"
        );
    }
    peer.publish(
        "mqrpc/Calculator/add",
        args,
        request_properties(dollar, b"dollar", None),
    )
    .await;
    let got = collect(&mut peer, &[(b"dollar", 1)]).await;
    assert_eq!(got[&b"dollar"[..]][0].payload, postcard(&4i64));
    assert!(!got.contains_key(&b"empty"[..]), "{got:?}");
}

/// "Built-in methods": `_stats`' `calls` counts handler runs; a copy
/// answered from the duplicate table is not one.
async fn stats_count_handler_runs_not_copies(broker: TestBroker) {
    let (_conn, calc) = serve(&broker, ServerOptions::default()).await;
    let mut peer = RawPeer::connect(broker.port(), &[REPLIES]).await;
    for _ in 0..2 {
        let properties = request_properties(REPLIES, b"twice", None);
        peer.publish("mqrpc/Calculator/count", Bytes::new(), properties)
            .await;
        let answer = peer.next_publish(Duration::from_secs(10)).await.unwrap();
        assert_eq!(answer.payload, postcard(&1u64), "the same answer twice");
    }
    assert_eq!(calc.calls.load(Ordering::SeqCst), 1);
    let json = request_properties(REPLIES, b"stats", Some("application/json"));
    peer.publish("mqrpc/Calculator/_stats", "{}", json).await;
    let answer = peer.next_publish(Duration::from_secs(10)).await.unwrap();
    let stats: serde_json::Value = serde_json::from_slice(&answer.payload).unwrap();
    let count = stats["methods"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["name"] == "count")
        .unwrap();
    assert_eq!(count["calls"], 1, "{stats}");
}

mod subscribe {
    use mqrpc::{ConnectOptions, Connection, Error, ServerOptions};
    use mqrpc_tests::fake_broker::{Connack, FakeBroker, Link};
    use mqrpc_tests::{Calc, CalculatorServer};
    use rumqttc::v5::mqttbytes::v5::{Packet, SubAck, Subscribe, SubscribeReasonCode, UnsubAck};
    use rumqttc::v5::mqttbytes::QoS;

    /// The filters of a server of `Calculator` in the default group, with
    /// instance `calc-1`, as PROTOCOL.md's topic table lists them.
    const FILTERS: [(&str, QoS); 7] = [
        ("$share/mqrpc/mqrpc/Calculator/+", QoS::ExactlyOnce),
        ("mqrpc/Calculator/_to/calc-1/+", QoS::ExactlyOnce),
        ("mqrpc/Calculator/_all/+", QoS::ExactlyOnce),
        ("mqrpc/_all/_all/+", QoS::ExactlyOnce),
        ("$share/mqrpc/mqrpc/Calculator/_batch/1", QoS::ExactlyOnce),
        ("mqrpc/Calculator/_to/calc-1/_batch/1", QoS::ExactlyOnce),
        ("mqrpc/Calculator/_cancel", QoS::AtMostOnce),
    ];

    async fn connected(broker: &FakeBroker) -> (Connection, Link) {
        let port = broker.addr().rsplit_once(':').unwrap().1.parse().unwrap();
        // The instance id is the client id: no connection of its own for
        // its Will (PROTOCOL.md, "Server gone").
        let options = ConnectOptions::new("127.0.0.1", port).client_id("calc-1");
        let (conn, (link, _)) = tokio::join!(
            Connection::connect(options),
            broker.accept_with(Connack::default())
        );
        (conn.unwrap(), link)
    }

    /// Answers the connection's own SUBSCRIBEs (response topic, notices)
    /// until the server's: that one is returned, unanswered.
    async fn server_subscribe(link: &mut Link) -> Subscribe {
        loop {
            match link.recv().await {
                Packet::Subscribe(s) if s.filters.iter().any(|f| f.path.contains("Calculator")) => {
                    return s
                }
                Packet::Subscribe(s) => {
                    let codes =
                        vec![SubscribeReasonCode::Success(QoS::AtLeastOnce); s.filters.len()];
                    link.send(suback(s.pkid, codes)).await
                }
                _ => {}
            }
        }
    }

    fn suback(pkid: u16, return_codes: Vec<SubscribeReasonCode>) -> Packet {
        Packet::SubAck(SubAck {
            pkid,
            return_codes,
            properties: None,
        })
    }

    /// "Topics": every filter of the table, in one SUBSCRIBE, at the
    /// documented QoS; served once its one SUBACK came.
    #[tokio::test]
    async fn a_server_subscribes_every_filter_in_one_subscribe() {
        let broker = FakeBroker::start().await;
        let (conn, mut link) = connected(&broker).await;
        let options = ServerOptions::default();
        let serving = CalculatorServer::new(Calc::default()).serve_with(&conn, options);
        tokio::pin!(serving);
        let subscribe = tokio::select! {
            s = server_subscribe(&mut link) => s,
            served = &mut serving => panic!("served before any SUBACK: {:?}", served.err()),
        };
        let seen: Vec<(&str, QoS)> = subscribe
            .filters
            .iter()
            .map(|f| (f.path.as_str(), f.qos))
            .collect();
        assert_eq!(seen, FILTERS);
        let document = super::document();
        for (filter, _) in &FILTERS[..4] {
            let pattern = filter
                .replace("mqrpc/Calculator", "<prefix>/<service>")
                .replace("mqrpc/_all", "<prefix>/_all")
                .replace("$share/mqrpc/", "$share/<group>/")
                .replace("calc-1", "<instance>");
            assert!(document.contains(&pattern), "PROTOCOL.md names `{pattern}`");
        }
        let granted = vec![SubscribeReasonCode::Success(QoS::ExactlyOnce); FILTERS.len()];
        link.send(suback(subscribe.pkid, granted)).await;
        let server = serving.await.unwrap();
        assert_eq!(server.topic_filter(), FILTERS[0].0);
    }

    /// A broker refusing one filter: the server does not start, the error
    /// names that filter, and the others are unsubscribed again.
    #[tokio::test]
    async fn a_refused_filter_fails_serve_and_leaves_nothing_subscribed() {
        let broker = FakeBroker::start().await;
        let (conn, mut link) = connected(&broker).await;
        let options = ServerOptions::default();
        let serving = CalculatorServer::new(Calc::default()).serve_with(&conn, options);
        let broker_side = async {
            let subscribe = server_subscribe(&mut link).await;
            let mut codes = vec![SubscribeReasonCode::Success(QoS::ExactlyOnce); FILTERS.len()];
            codes[3] = SubscribeReasonCode::NotAuthorized;
            link.send(suback(subscribe.pkid, codes)).await;
            let mut unsubscribed = Vec::new();
            while unsubscribed.len() < FILTERS.len() - 1 {
                if let Packet::Unsubscribe(u) = link.recv().await {
                    let reasons =
                        vec![rumqttc::v5::mqttbytes::v5::UnsubAckReason::Success; u.filters.len()];
                    let ack = UnsubAck {
                        pkid: u.pkid,
                        reasons,
                        properties: None,
                    };
                    link.send(Packet::UnsubAck(ack)).await;
                    unsubscribed.extend(u.filters);
                }
            }
            unsubscribed
        };
        let (served, mut unsubscribed) = tokio::join!(serving, broker_side);
        match served {
            Err(Error::Subscribe { filter, .. }) => assert_eq!(filter, FILTERS[3].0),
            other => panic!("expected a refused subscription, got {:?}", other.err()),
        }
        let mut expected: Vec<&str> = FILTERS.iter().map(|(f, _)| *f).collect();
        expected.remove(3);
        unsubscribed.sort();
        expected.sort();
        assert_eq!(unsubscribed, expected);
    }
}
