//! Fault tests of the generated client and server over a scripted fake
//! broker (issue 13): the broker's acknowledgements reach the call that
//! caused them whatever their order, a link drop with calls in flight ends
//! every call with its own answer or a clear error, QoS 2 runs a method once
//! across a reconnect, and Receive Maximum holds. Deterministic: orderings
//! are checked with packets on the wire; timeouts are hang guards only.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use mqrpc::{ClientOptions, Codec, ConnectOptions, Connection, Error, QoS, ServerOptions};
use mqrpc_tests::fake_broker::{
    puback, pubcomp, pubrec, pubrel, suback, Connack, FakeBroker, Link, GUARD,
};
use mqrpc_tests::{Calc, CalculatorClient, CalculatorServer};
use rumqttc::v5::mqttbytes::v5::{Packet, Publish, PublishProperties};
use rumqttc::v5::mqttbytes::QoS as WireQoS;
use tokio::task::JoinHandle;

async fn guard<F: std::future::Future>(f: F) -> F::Output {
    tokio::time::timeout(GUARD, f).await.expect("hang guard")
}

fn options(broker: &FakeBroker) -> ConnectOptions {
    let (host, port) = broker
        .addr()
        .rsplit_once(':')
        .map(|(h, p)| (h.to_string(), p.parse().unwrap()))
        .unwrap();
    ConnectOptions::new(host, port).keep_alive(Duration::from_secs(60))
}

/// Connects `options` through the fake broker (answering CONNACK with
/// `connack`) and makes a client, answering its response-topic SUBSCRIBE.
async fn client_over(
    broker: &FakeBroker,
    options: ConnectOptions,
    connack: Connack,
    client_options: ClientOptions,
) -> (Connection, CalculatorClient, Link) {
    let (conn, (mut link, _)) =
        tokio::join!(Connection::connect(options), broker.accept_with(connack));
    let conn = conn.unwrap();
    // Single requests only: these tests script every packet (batches have
    // their own tests).
    let client_options = client_options.batches(false);
    let (client, ()) = tokio::join!(
        CalculatorClient::with_options(&conn, client_options),
        answer_subscribe(&mut link)
    );
    (conn, client.unwrap(), link)
}

/// Reads one SUBSCRIBE and grants every filter in it.
async fn answer_subscribe(link: &mut Link) {
    match link.recv().await {
        Packet::Subscribe(s) => {
            link.send(suback(s.pkid, s.filters.len(), WireQoS::AtLeastOnce))
                .await
        }
        other => panic!("expected SUBSCRIBE, got {other:?}"),
    }
}

/// The `(a, b)` of an `add` request (postcard).
fn add_args(p: &Publish) -> (i64, i64) {
    Codec::Postcard.decode(&p.payload).unwrap()
}

/// The answer to a request: its value on its Response Topic with its
/// Correlation Data (QoS 0, status ok: PROTOCOL.md "Response").
fn answer(request: &Publish, value: &impl serde::Serialize) -> Packet {
    let properties = request.properties.as_ref().unwrap();
    let topic = properties.response_topic.clone().unwrap();
    let reply = PublishProperties {
        correlation_data: properties.correlation_data.clone(),
        ..PublishProperties::default()
    };
    let payload = Codec::Postcard.encode(value).unwrap();
    Packet::Publish(Publish::new(
        topic,
        WireQoS::AtMostOnce,
        payload,
        Some(reply),
    ))
}

fn spawn_adds(
    client: &CalculatorClient,
    range: std::ops::Range<i64>,
) -> Vec<(i64, JoinHandle<Result<i64, Error>>)> {
    range
        .map(|a| {
            let client = client.clone();
            (a, tokio::spawn(async move { client.add(a, 1_000).await }))
        })
        .collect()
}

#[tokio::test]
async fn acks_in_another_order_reach_their_own_calls() {
    let broker = FakeBroker::start().await;
    let (_conn, client, mut link) = client_over(
        &broker,
        options(&broker),
        Connack::default(),
        ClientOptions::default(),
    )
    .await;
    let calls = spawn_adds(&client, 1..4);
    let mut requests: HashMap<i64, Publish> = HashMap::new();
    for _ in 0..3 {
        let p = link.recv_publish().await;
        requests.insert(add_args(&p).0, p);
    }
    // Call 3 refused (not authorized), call 1 answered before its own
    // PUBACK, call 2 refused (no matching subscribers), then call 1's PUBACK.
    link.send_all(&[
        puback(requests[&3].pkid, 0x87),
        answer(&requests[&1], &1_001i64),
        puback(requests[&2].pkid, 0x10),
        puback(requests[&1].pkid, 0x00),
    ])
    .await;
    let mut outcomes = HashMap::new();
    for (a, call) in calls {
        outcomes.insert(a, guard(call).await.unwrap());
    }
    assert_eq!(outcomes[&1], Ok(1_001));
    assert_eq!(
        outcomes[&2],
        Err(Error::NoResponder {
            method: "add".into()
        })
    );
    assert_eq!(
        outcomes[&3],
        Err(Error::NotAuthorized {
            method: "add".into()
        })
    );
}

/// With a persistent session, calls survive a link drop: the 100 requests
/// the broker has not acknowledged go again with DUP and their own packet
/// ids, and every call gets its own answer. New calls then reuse packet
/// ids without confusion.
#[tokio::test]
async fn link_drop_with_100_unacked_calls_resumes_them() {
    let broker = FakeBroker::start().await;
    let options = options(&broker)
        .client_id("resume-100")
        .session_expiry(Duration::from_secs(300));
    let client_options = ClientOptions::default().timeout(Duration::from_secs(60));
    let (conn, client, mut link) =
        client_over(&broker, options, Connack::default(), client_options).await;
    let calls = spawn_adds(&client, 0..100);
    let mut ids: HashMap<u16, i64> = HashMap::new();
    for _ in 0..100 {
        let p = link.recv_publish().await;
        assert!(!p.dup);
        ids.insert(p.pkid, add_args(&p).0);
    }
    link.drop_link();
    let (mut link, _) = broker.accept_resumed().await;
    let mut resent = Vec::new();
    for _ in 0..100 {
        let p = link.recv_publish().await;
        assert!(p.dup, "a resent request carries DUP");
        assert_eq!(
            ids.get(&p.pkid),
            Some(&add_args(&p).0),
            "same packet id, same call"
        );
        resent.push(p);
    }
    // New calls while the resent ones are still unacknowledged: their
    // packet ids must not collide with the resent ones.
    let new_calls = spawn_adds(&client, 200..300);
    let mut fresh = Vec::new();
    for _ in 0..100 {
        let p = link.recv_publish().await;
        assert!(!p.dup);
        assert!(
            !ids.contains_key(&p.pkid),
            "packet id {} is still in flight",
            p.pkid
        );
        fresh.push(p);
    }
    // Acks and answers of all 200, old and new mixed, in reverse order.
    let packets: Vec<Packet> = resent
        .iter()
        .zip(&fresh)
        .flat_map(|(old, new)| [old, new])
        .rev()
        .flat_map(|p| [puback(p.pkid, 0), answer(p, &(add_args(p).0 + 1_000))])
        .collect();
    link.send_all(&packets).await;
    for (a, call) in calls.into_iter().chain(new_calls) {
        assert_eq!(guard(call).await.unwrap(), Ok(a + 1_000));
    }
    assert!(conn.is_connected());
}

/// Without a persistent session the answers of the lost link cannot come:
/// the calls fail with `Disconnected` at once, and their requests are not
/// sent again after the reconnect (nobody waits for them any more).
#[tokio::test]
async fn link_drop_without_session_fails_the_calls_and_replays_nothing() {
    let broker = FakeBroker::start().await;
    let opts = options(&broker).client_id("clean-100");
    let (conn, client, mut link) =
        client_over(&broker, opts, Connack::default(), ClientOptions::default()).await;
    let calls = spawn_adds(&client, 0..100);
    for _ in 0..100 {
        link.recv_publish().await;
    }
    link.drop_link();
    for (_, call) in calls {
        assert_eq!(guard(call).await.unwrap(), Err(Error::Disconnected));
    }
    let (mut link, _) = broker.accept_with(Connack::default()).await;
    // The response topic again, then nothing but the new call.
    answer_subscribe(&mut link).await;
    assert!(mqrpc_tests::eventually(|| conn.is_connected()).await);
    let call = spawn_adds(&client, 7..8).pop().unwrap().1;
    let p = link.recv_publish().await;
    assert_eq!(
        add_args(&p),
        (7, 1_000),
        "the first request after the reconnect is the new one"
    );
    link.send_all(&[puback(p.pkid, 0), answer(&p, &1_007i64)])
        .await;
    assert_eq!(guard(call).await.unwrap(), Ok(1_007));
}

/// Receive Maximum 1: a second QoS 1 request waits for the first one's
/// PUBACK. A QoS 0 call (not counted by Receive Maximum) made after all
/// three is the marker: had a second QoS 1 request gone out, it would come
/// before it.
#[tokio::test]
async fn receive_maximum_1_holds_for_generated_calls() {
    let broker = FakeBroker::start().await;
    let connack = Connack {
        receive_max: Some(1),
        ..Default::default()
    };
    let (_conn, client, mut link) =
        client_over(&broker, options(&broker), connack, ClientOptions::default()).await;
    let mut calls = Vec::new();
    for a in 0..3 {
        let client = client.clone();
        calls.push(tokio::spawn(async move { client.add(a, 1_000).await }));
        // Queued in this order.
        tokio::task::yield_now().await;
    }
    let mut answered = 0;
    for round in 0..3 {
        let request = link.recv_publish().await;
        assert_eq!(request.qos, WireQoS::AtLeastOnce);
        let marker = {
            let client = client.clone();
            tokio::spawn(async move { client.add_qos0(round, round).await })
        };
        let next = link.recv_publish().await;
        assert_eq!(
            next.qos,
            WireQoS::AtMostOnce,
            "round {round}: a second unacked QoS 1 request went out"
        );
        link.send_all(&[
            answer(&next, &(2 * round)),
            answer(&request, &(add_args(&request).0 + 1_000)),
            puback(request.pkid, 0),
        ])
        .await;
        assert_eq!(guard(marker).await.unwrap(), Ok(2 * round));
        answered += 1;
    }
    assert_eq!(answered, 3);
    for (a, call) in calls.into_iter().enumerate() {
        assert_eq!(guard(call).await.unwrap(), Ok(a as i64 + 1_000));
    }
}

/// A QoS 2 request whose PUBREC was lost with the link comes again (DUP)
/// after a reconnect that resumes the session: the server runs it once and
/// answers once.
#[tokio::test]
async fn qos2_request_across_a_resumed_session_runs_once() {
    let broker = FakeBroker::start().await;
    let opts = options(&broker)
        .client_id("qos2-server")
        .session_expiry(Duration::from_secs(300));
    let (conn, (mut link, _)) = tokio::join!(
        Connection::connect(opts),
        broker.accept_with(Connack::default())
    );
    let conn = conn.unwrap();
    let calc = Calc::default();
    let serving = CalculatorServer::new(calc.clone())
        .serve_with(&conn, ServerOptions::default().qos(QoS::ExactlyOnce));
    tokio::pin!(serving);
    let _server = loop {
        tokio::select! {
            served = &mut serving => break served.unwrap(),
            packet = link.recv() => match packet {
                Packet::Subscribe(s) => link.send(suback(s.pkid, s.filters.len(), WireQoS::ExactlyOnce)).await,
                other => panic!("expected SUBSCRIBE, got {other:?}"),
            },
        }
    };
    let request = |correlation: &'static [u8], pkid: u16, dup: bool| {
        let properties = PublishProperties {
            response_topic: Some("replies/qos2".into()),
            correlation_data: Some(Bytes::from_static(correlation)),
            ..PublishProperties::default()
        };
        let mut p = Publish::new(
            "mqrpc/Calculator/count",
            WireQoS::ExactlyOnce,
            Bytes::new(),
            Some(properties),
        );
        p.pkid = pkid;
        p.dup = dup;
        Packet::Publish(p)
    };
    let mut answers = Answers::default();
    link.send(request(b"c1", 7, false)).await;
    // The server may answer before or after its PUBREC: take both.
    loop {
        match link.recv().await {
            Packet::PubRec(r) if r.pkid == 7 => break,
            other => answers.take(&mut link, other).await,
        }
    }
    link.drop_link();
    let (mut link, _) = broker.accept_resumed().await;
    // As if the PUBREC had been lost: the broker sends the PUBLISH again.
    link.send(request(b"c1", 7, true)).await;
    let mut second_sent = false;
    while answers.received.len() < 2 {
        match link.recv().await {
            Packet::PubRec(r) if r.pkid == 7 || r.pkid == 8 => link.send(pubrel(r.pkid)).await,
            Packet::PubComp(c) if c.pkid == 7 && !second_sent => {
                // A second call: its answer must come after the first's.
                link.send(request(b"c2", 8, false)).await;
                second_sent = true;
            }
            other => answers.take(&mut link, other).await,
        }
    }
    let correlations: Vec<&[u8]> = answers
        .received
        .iter()
        .map(|p| {
            p.properties
                .as_ref()
                .unwrap()
                .correlation_data
                .as_deref()
                .unwrap()
        })
        .collect();
    assert_eq!(
        correlations,
        [&b"c1"[..], &b"c2"[..]],
        "one answer per call, in order"
    );
    let counts: Vec<u64> = answers
        .received
        .iter()
        .map(|p| Codec::Postcard.decode(&p.payload).unwrap())
        .collect();
    assert_eq!(counts, [1, 2], "the first call ran once");
    assert_eq!(calc.calls.load(Ordering::SeqCst), 2);
}

/// The broker's side of the server's QoS 2 answers: each PUBLISH is
/// received once (a DUP of one not yet released is the same message).
#[derive(Default)]
struct Answers {
    received: Vec<Publish>,
    unreleased: std::collections::HashSet<u16>,
}

impl Answers {
    async fn take(&mut self, link: &mut Link, packet: Packet) {
        match packet {
            Packet::Publish(p) => {
                assert_eq!(p.qos, WireQoS::ExactlyOnce);
                link.send(pubrec(p.pkid, 0)).await;
                if self.unreleased.insert(p.pkid) {
                    self.received.push(p);
                }
            }
            Packet::PubRel(r) => {
                self.unreleased.remove(&r.pkid);
                link.send(pubcomp(r.pkid)).await;
            }
            Packet::PubComp(_) => {}
            other => panic!("unexpected {other:?}"),
        }
    }
}

/// A QoS 2 call whose PUBREC arrived before the link dropped: after the
/// resumed session the client releases it (PUBREL, same id) instead of
/// sending the request again, and the call gets its answer.
#[tokio::test]
async fn qos2_call_across_a_resumed_session_is_sent_once() {
    let broker = FakeBroker::start().await;
    let opts = options(&broker)
        .client_id("qos2-client")
        .session_expiry(Duration::from_secs(300));
    let client_options = ClientOptions::default().qos(QoS::ExactlyOnce);
    let (_conn, client, mut link) =
        client_over(&broker, opts, Connack::default(), client_options).await;
    let call = spawn_adds(&client, 5..6).pop().unwrap().1;
    let request = link.recv_publish().await;
    assert_eq!(request.qos, WireQoS::ExactlyOnce);
    link.send(pubrec(request.pkid, 0)).await;
    assert!(matches!(link.recv().await, Packet::PubRel(r) if r.pkid == request.pkid));
    link.drop_link();
    let (mut link, _) = broker.accept_resumed().await;
    match link.recv().await {
        Packet::PubRel(r) => assert_eq!(r.pkid, request.pkid),
        other => panic!("expected the PUBREL again, got {other:?}"),
    }
    link.send_all(&[pubcomp(request.pkid), answer(&request, &1_005i64)])
        .await;
    assert_eq!(guard(call).await.unwrap(), Ok(1_005));
}
