//! Fault tests of the MQTT v5 transport (issue 13) against a scripted fake
//! broker, plus one case against Mosquitto. Deterministic: every ordering
//! claim is checked with packets on the wire (a SUBSCRIBE is used as a marker
//! where "nothing else was sent before" must be proven); timeouts are only
//! hang guards.

#[allow(dead_code)]
#[path = "support/fake_broker.rs"]
mod fake_broker;

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use fake_broker::{
    puback, pubcomp, publish, pubrec, pubrel, suback, Connack, FakeBroker, Link, GUARD,
};
use mqrpc_link::*;
use rumqttc::v5::mqttbytes::v5::{Packet, PubAckReason, PubRecReason};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

fn config(id: &str) -> TransportConfig {
    let mut c = TransportConfig::new(id);
    c.keep_alive = Duration::from_secs(60);
    c.session_expiry = 300;
    c.reconnect = Some(Backoff {
        min: Duration::from_millis(1),
        max: Duration::from_millis(20),
    });
    c
}

fn q1(i: usize) -> OutgoingPublish {
    OutgoingPublish::new("t/q1", QoS::AtLeastOnce, i.to_string())
}

fn q2(i: usize) -> OutgoingPublish {
    OutgoingPublish::new("t/q2", QoS::ExactlyOnce, i.to_string())
}

fn index(payload: &Bytes) -> usize {
    std::str::from_utf8(payload).unwrap().parse().unwrap()
}

async fn guard<F: std::future::Future>(f: F) -> F::Output {
    tokio::time::timeout(GUARD, f).await.expect("hang guard")
}

/// Waits for the next Connected state; returns session_present.
async fn connected(incoming: &mut Incoming) -> bool {
    loop {
        match guard(incoming.recv()).await.expect("transport stopped") {
            Event::State(ConnectionState::Connected {
                session_present, ..
            }) => return session_present,
            Event::State(_) => {}
            Event::Publish(p) => panic!("unexpected publish {p:?}"),
        }
    }
}

/// Sends SUBSCRIBE `marker` and checks it is the very next packet the broker
/// reads (proof that nothing else was written before it), then answers it.
async fn marker(t: &Transport, link: &mut Link, name: &str) {
    let sub = t.subscribe(vec![Filter::new(name, QoS::AtMostOnce)], None);
    match link.recv().await {
        Packet::Subscribe(s) => {
            assert_eq!(s.filters[0].path, name);
            link.send(suback(s.pkid, 1, QoS::AtMostOnce)).await;
        }
        other => panic!("expected the marker SUBSCRIBE {name}, got {other:?}"),
    }
    assert_eq!(guard(sub).await.unwrap(), vec![ReasonCode(0)]);
}

#[tokio::test]
async fn acks_in_another_order_reach_their_own_publish() {
    let broker = FakeBroker::start().await;
    let (t, _incoming) = Transport::start(config("order"), TcpConnector::new(broker.addr()));
    let (mut link, _) = broker.accept_with(Connack::default()).await;
    let codes = [0x00, 0x10, 0x87, 0x97, 0x83];
    let acks: Vec<_> = (0..codes.len()).map(|i| t.publish(q1(i))).collect();
    let mut ids = Vec::new();
    for _ in 0..codes.len() {
        let p = link.recv_publish().await;
        ids.push((p.pkid, index(&p.payload)));
    }
    // Answer newest first.
    let answers: Vec<Packet> = ids
        .iter()
        .rev()
        .map(|(id, i)| puback(*id, codes[*i]))
        .collect();
    link.send_all(&answers).await;
    for (i, ack) in acks.into_iter().enumerate() {
        assert_eq!(
            guard(ack).await.unwrap(),
            ReasonCode(codes[i]),
            "publish {i}"
        );
    }
}

#[tokio::test]
async fn second_gets_0x10_third_gets_0x87_first_0x00() {
    let broker = FakeBroker::start().await;
    let (t, _incoming) = Transport::start(config("three"), TcpConnector::new(broker.addr()));
    let (mut link, _) = broker.accept_with(Connack::default()).await;
    let acks: Vec<_> = (0..3).map(|i| t.publish(q1(i))).collect();
    let mut by_index = HashMap::new();
    for _ in 0..3 {
        let p = link.recv_publish().await;
        by_index.insert(index(&p.payload), p.pkid);
    }
    link.send_all(&[
        puback(by_index[&2], 0x87),
        puback(by_index[&0], 0x00),
        puback(by_index[&1], 0x10),
    ])
    .await;
    let got: Vec<_> = futures_util::future::join_all(acks).await;
    assert_eq!(
        got,
        vec![
            Ok(ReasonCode(0x00)),
            Ok(ReasonCode(0x10)),
            Ok(ReasonCode(0x87))
        ]
    );
}

fn code_for(i: usize) -> u8 {
    [0x00, 0x10, 0x87, 0x97][i % 4]
}

#[tokio::test]
async fn link_drop_with_100_unacked_then_session_resumed() {
    let broker = FakeBroker::start().await;
    let (t, mut incoming) = Transport::start(config("resume"), TcpConnector::new(broker.addr()));
    let (mut link, seen) = broker.accept_with(Connack::default()).await;
    assert!(seen.connect.clean_start);
    assert!(!connected(&mut incoming).await);
    let acks: Vec<_> = (0..100).map(|i| t.publish(q1(i))).collect();
    let mut first: HashMap<u16, usize> = HashMap::new();
    for _ in 0..100 {
        let p = link.recv_publish().await;
        assert!(!p.dup);
        assert!(
            first.insert(p.pkid, index(&p.payload)).is_none(),
            "id used twice"
        );
    }
    link.drop_link();

    let (mut link, _) = broker.accept_resumed().await;
    assert!(connected(&mut incoming).await);
    let mut resent = Vec::new();
    for _ in 0..100 {
        let p = link.recv_publish().await;
        assert!(p.dup, "resent with DUP=1");
        assert_eq!(
            first.get(&p.pkid),
            Some(&index(&p.payload)),
            "same id, same message"
        );
        resent.push((p.pkid, index(&p.payload)));
    }
    // Ack in reverse, each with its own code.
    let answers: Vec<Packet> = resent
        .iter()
        .rev()
        .map(|(id, i)| puback(*id, code_for(*i)))
        .collect();
    link.send_all(&answers).await;
    for (i, ack) in acks.into_iter().enumerate() {
        assert_eq!(
            guard(ack).await.unwrap(),
            ReasonCode(code_for(i)),
            "publish {i}"
        );
    }

    // New publishes may reuse the ids: no confusion.
    let acks: Vec<_> = (100..140).map(|i| t.publish(q1(i))).collect();
    let mut fresh = Vec::new();
    for _ in 0..40 {
        let p = link.recv_publish().await;
        assert!(!p.dup);
        fresh.push((p.pkid, index(&p.payload)));
    }
    let answers: Vec<Packet> = fresh
        .iter()
        .rev()
        .map(|(id, i)| puback(*id, code_for(*i)))
        .collect();
    link.send_all(&answers).await;
    for (k, ack) in acks.into_iter().enumerate() {
        assert_eq!(guard(ack).await.unwrap(), ReasonCode(code_for(100 + k)));
    }
}

#[tokio::test]
async fn link_drop_then_session_lost_resends_qos1_and_fails_qos2() {
    let broker = FakeBroker::start().await;
    let (t, mut incoming) = Transport::start(config("lost"), TcpConnector::new(broker.addr()));
    let (mut link, _) = broker.accept_with(Connack::default()).await;
    connected(&mut incoming).await;
    let q1_acks: Vec<_> = (0..3).map(|i| t.publish(q1(i))).collect();
    let q2_acks: Vec<_> = (3..5).map(|i| t.publish(q2(i))).collect();
    let mut old_ids = Vec::new();
    for _ in 0..5 {
        old_ids.push(link.recv_publish().await.pkid);
    }
    link.drop_link();

    let (mut link, _) = broker
        .accept_with(Connack {
            session_present: false,
            ..Default::default()
        })
        .await;
    assert!(!connected(&mut incoming).await);
    let mut resent = Vec::new();
    for _ in 0..3 {
        let p = link.recv_publish().await;
        assert!(!p.dup, "a new publish in the new session");
        assert_eq!(p.qos, QoS::AtLeastOnce, "QoS 2 is never sent twice");
        resent.push((p.pkid, index(&p.payload)));
    }
    assert_eq!(
        resent.iter().map(|r| r.1).collect::<Vec<_>>(),
        vec![0, 1, 2],
        "in call order"
    );
    for (ack, want) in q2_acks.into_iter().zip([3, 4]) {
        assert_eq!(
            guard(ack).await,
            Err(TransportError::SessionLost),
            "QoS 2 publish {want}"
        );
    }
    marker(&t, &mut link, "m/lost").await;
    let answers: Vec<Packet> = resent
        .iter()
        .map(|(id, i)| puback(*id, code_for(*i)))
        .collect();
    link.send_all(&answers).await;
    for (i, ack) in q1_acks.into_iter().enumerate() {
        assert_eq!(guard(ack).await.unwrap(), ReasonCode(code_for(i)));
    }
}

#[tokio::test]
async fn qos2_across_reconnect_with_session_resume() {
    let broker = FakeBroker::start().await;
    let (t, mut incoming) = Transport::start(config("qos2"), TcpConnector::new(broker.addr()));
    let (mut link, _) = broker.accept_with(Connack::default()).await;
    connected(&mut incoming).await;

    // Incoming QoS 2 (pkid 7): delivered, PUBREC'd, link lost before PUBREL.
    link.send(publish("in/q2", QoS::ExactlyOnce, 7, b"once"))
        .await;
    let p = guard(incoming.next_publish()).await.unwrap();
    assert_eq!(&p.payload[..], b"once");
    p.ack.unwrap().ack();
    match link.recv().await {
        Packet::PubRec(r) => assert_eq!((r.pkid, r.reason), (7, PubRecReason::Success)),
        other => panic!("expected PUBREC 7, got {other:?}"),
    }
    // Outgoing QoS 2: PUBREC received, PUBREL sent, link lost before PUBCOMP.
    let out = t.publish(q2(1));
    let sent = link.recv_publish().await;
    link.send(pubrec(sent.pkid, 0x10)).await;
    match link.recv().await {
        Packet::PubRel(r) => assert_eq!(r.pkid, sent.pkid),
        other => panic!("expected PUBREL, got {other:?}"),
    }
    link.drop_link();

    let (mut link, _) = broker.accept_resumed().await;
    assert!(connected(&mut incoming).await);
    // The client resends PUBREL (not the PUBLISH) for its QoS 2.
    match link.recv().await {
        Packet::PubRel(r) => assert_eq!(r.pkid, sent.pkid),
        other => panic!("expected the PUBREL resent, got {other:?}"),
    }
    // The broker redelivers pkid 7 before PUBREL: answered, not delivered again.
    let mut dup = publish("in/q2", QoS::ExactlyOnce, 7, b"once");
    if let Packet::Publish(p) = &mut dup {
        p.dup = true;
    }
    link.send(dup).await;
    match link.recv().await {
        Packet::PubRec(r) => assert_eq!(r.pkid, 7),
        other => panic!("expected PUBREC 7 again, got {other:?}"),
    }
    link.send_all(&[pubrel(7), pubcomp(sent.pkid)]).await;
    match link.recv().await {
        Packet::PubComp(c) => assert_eq!(c.pkid, 7),
        other => panic!("expected PUBCOMP 7, got {other:?}"),
    }
    assert_eq!(
        guard(out).await,
        Ok(ReasonCode(0x10)),
        "completes once, with the PUBREC's code"
    );
    // The next publish the application sees is the QoS 0 one: no second "once".
    link.send(publish("in/q0", QoS::AtMostOnce, 0, b"after"))
        .await;
    let p = guard(incoming.next_publish()).await.unwrap();
    assert_eq!(&p.payload[..], b"after");
}

#[tokio::test]
async fn receive_maximum_1_never_two_unacked() {
    let broker = FakeBroker::start().await;
    let (t, mut incoming) = Transport::start(config("rm1"), TcpConnector::new(broker.addr()));
    let (mut link, _) = broker
        .accept_with(Connack {
            receive_max: Some(1),
            ..Default::default()
        })
        .await;
    connected(&mut incoming).await;
    let acks: Vec<_> = (0..5).map(|i| t.publish(q1(i))).collect();
    for k in 0..5 {
        let p = link.recv_publish().await;
        assert_eq!(index(&p.payload), k, "in call order");
        // Every publish command is already in the client; had it sent a
        // second unacked PUBLISH, it would come before this SUBSCRIBE.
        marker(&t, &mut link, &format!("m/{k}")).await;
        link.send(puback(p.pkid, 0)).await;
    }
    for ack in acks {
        assert_eq!(guard(ack).await, Ok(ReasonCode(0)));
    }
}

#[tokio::test]
async fn too_large_for_the_server_fails_and_the_link_stays() {
    let broker = FakeBroker::start().await;
    let (t, mut incoming) = Transport::start(config("mps"), TcpConnector::new(broker.addr()));
    let (mut link, _) = broker
        .accept_with(Connack {
            max_packet_size: Some(100),
            ..Default::default()
        })
        .await;
    connected(&mut incoming).await;
    let big = OutgoingPublish::new("t/big", QoS::AtLeastOnce, vec![0u8; 200]);
    let big0 = OutgoingPublish::new("t/big", QoS::AtMostOnce, vec![0u8; 200]);
    assert!(matches!(
        guard(t.publish(big)).await,
        Err(TransportError::PacketTooLarge { max: 100, .. })
    ));
    assert!(matches!(
        guard(t.publish(big0)).await,
        Err(TransportError::PacketTooLarge { .. })
    ));
    let small = t.publish(q1(1));
    let p = link.recv_publish().await;
    assert_eq!(index(&p.payload), 1, "the large ones were never sent");
    link.send(puback(p.pkid, 0)).await;
    assert_eq!(guard(small).await, Ok(ReasonCode(0)));
}

#[tokio::test]
async fn incoming_acks_leave_in_arrival_order() {
    let broker = FakeBroker::start().await;
    let (t, mut incoming) = Transport::start(config("inorder"), TcpConnector::new(broker.addr()));
    let (mut link, _) = broker.accept_with(Connack::default()).await;
    connected(&mut incoming).await;
    link.send_all(&[
        publish("in/1", QoS::AtLeastOnce, 1, b"1"),
        publish("in/2", QoS::ExactlyOnce, 2, b"2"),
        publish("in/3", QoS::AtLeastOnce, 3, b"3"),
        publish("in/4", QoS::AtLeastOnce, 4, b"4"),
    ])
    .await;
    let mut tokens = Vec::new();
    for _ in 0..4 {
        tokens.push(guard(incoming.next_publish()).await.unwrap().ack.unwrap());
    }
    let t4 = tokens.pop().unwrap();
    let t3 = tokens.pop().unwrap();
    let t2 = tokens.pop().unwrap();
    let t1 = tokens.pop().unwrap();
    t3.reject(0x87);
    t2.ack();
    drop(t4); // dropped unacked: acked with 0x00
              // Those acks are processed by now, but held back behind publish 1.
    marker(&t, &mut link, "m/order").await;
    t1.ack();
    let mut seen = Vec::new();
    for _ in 0..4 {
        seen.push(match link.recv().await {
            Packet::PubAck(a) => ("PUBACK", a.pkid, a.reason == PubAckReason::Success),
            Packet::PubRec(r) => ("PUBREC", r.pkid, r.reason == PubRecReason::Success),
            other => panic!("expected an ack, got {other:?}"),
        });
    }
    assert_eq!(
        seen,
        vec![
            ("PUBACK", 1, true),
            ("PUBREC", 2, true),
            ("PUBACK", 3, false),
            ("PUBACK", 4, true)
        ]
    );
}

#[tokio::test]
async fn connect_carries_will_and_credentials_keep_alive_and_disconnect() {
    let broker = FakeBroker::start().await;
    let mut c = config("ka");
    c.keep_alive = Duration::from_secs(1);
    c.credentials = Some(("user".into(), "secret".into()));
    c.last_will = Some(LastWill::new(
        "will/t",
        "gone",
        QoS::AtLeastOnce,
        false,
        None,
    ));
    let (t, mut incoming) = Transport::start(c, TcpConnector::new(broker.addr()));
    let (mut link, seen) = broker.accept_with(Connack::default()).await;
    connected(&mut incoming).await;
    assert_eq!(seen.connect.keep_alive, 1);
    let login = seen.login.expect("credentials");
    assert_eq!(
        (login.username.as_str(), login.password.as_str()),
        ("user", "secret")
    );
    let will = seen.will.expect("will");
    assert_eq!(
        (&will.topic[..], &will.message[..]),
        (&b"will/t"[..], &b"gone"[..])
    );

    // Idle link: PINGREQ; no PINGRESP: the client drops the link and reconnects.
    assert!(matches!(link.recv().await, Packet::PingReq(_)));
    assert!(link.try_recv().await.is_none(), "no PINGRESP: link closed");
    let (mut link, _) = broker.accept_resumed().await;
    assert!(connected(&mut incoming).await);

    // disconnect(): what is queued goes out, then DISCONNECT; pending acks fail Closed.
    let pending = t.publish(q1(1));
    t.disconnect().await;
    assert_eq!(index(&link.recv_publish().await.payload), 1);
    assert!(matches!(link.recv().await, Packet::Disconnect(_)));
    assert_eq!(guard(pending).await, Err(TransportError::Closed));
    assert!(matches!(
        guard(incoming.recv()).await,
        Some(Event::State(ConnectionState::Disconnected {
            retry_in: None,
            ..
        }))
    ));
    assert_eq!(guard(t.publish(q1(2))).await, Err(TransportError::Closed));
}

/// A TCP stream counting its write calls.
struct CountingStream {
    inner: TcpStream,
    writes: Arc<AtomicUsize>,
}

impl AsyncRead for CountingStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for CountingStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, buf);
        if r.is_ready() {
            self.writes.fetch_add(1, Ordering::SeqCst);
        }
        r
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

struct CountingConnector {
    tcp: TcpConnector,
    writes: Arc<AtomicUsize>,
}

impl Connector for CountingConnector {
    type Stream = CountingStream;
    async fn connect(&mut self) -> std::io::Result<CountingStream> {
        let inner = self.tcp.connect().await?;
        Ok(CountingStream {
            inner,
            writes: self.writes.clone(),
        })
    }
}

#[tokio::test]
async fn queued_packets_leave_in_one_write() {
    let broker = FakeBroker::start().await;
    let writes = Arc::new(AtomicUsize::new(0));
    let connector = CountingConnector {
        tcp: TcpConnector::new(broker.addr()),
        writes: writes.clone(),
    };
    let (t, _incoming) = Transport::start(config("batch"), connector);
    let mut link = broker.accept().await;
    link.expect_connect().await;
    // The client waits for CONNACK: these 50 queue up meanwhile.
    let acks: Vec<_> = (0..50)
        .map(|i| t.publish(OutgoingPublish::new("t/q0", QoS::AtMostOnce, i.to_string())))
        .collect();
    let before = writes.load(Ordering::SeqCst);
    link.send(Connack::default().packet()).await;
    for i in 0..50 {
        assert_eq!(index(&link.recv_publish().await.payload), i);
    }
    for ack in acks {
        assert_eq!(
            guard(ack).await,
            Ok(ReasonCode(0)),
            "QoS 0 resolves once written"
        );
    }
    assert_eq!(
        writes.load(Ordering::SeqCst) - before,
        1,
        "50 publishes, one write"
    );
}

#[tokio::test]
async fn against_mosquitto_codes_and_properties() {
    if !mqrpc_tests::mosquitto_available() {
        return;
    }
    let mosquitto = mqrpc_tests::Mosquitto::start(&[]).expect("start mosquitto");
    let addr = format!("127.0.0.1:{}", mosquitto.port);
    let (t, mut incoming) = Transport::start(config("mosq"), TcpConnector::new(addr));
    connected(&mut incoming).await;
    assert_eq!(
        guard(t.publish(q1(0))).await,
        Ok(ReasonCode(0x10)),
        "no subscriber"
    );

    let granted = guard(t.subscribe(vec![Filter::new("mqrpc/t/#", QoS::AtLeastOnce)], None)).await;
    assert_eq!(granted, Ok(vec![ReasonCode(1)]));
    let properties = PublishProperties {
        response_topic: Some("mqrpc/reply/1".into()),
        correlation_data: Some(Bytes::from_static(b"\x01\x02corr")),
        user_properties: vec![("k".into(), "v".into()), ("k".into(), "w".into())],
        content_type: Some("application/x-test".into()),
        ..Default::default()
    };
    let mut msg = OutgoingPublish::new("mqrpc/t/x", QoS::AtLeastOnce, "hello");
    msg.properties = Some(properties.clone());
    assert_eq!(guard(t.publish(msg)).await, Ok(ReasonCode(0x00)));
    let got = guard(incoming.next_publish()).await.unwrap();
    assert_eq!(&got.topic[..], b"mqrpc/t/x");
    assert_eq!(&got.payload[..], b"hello");
    assert_eq!(got.qos, QoS::AtLeastOnce);
    let p = got.properties.clone().expect("properties");
    assert_eq!(p.response_topic, properties.response_topic);
    assert_eq!(p.correlation_data, properties.correlation_data);
    assert_eq!(p.user_properties, properties.user_properties);
    assert_eq!(p.content_type, properties.content_type);
    got.ack.unwrap().ack();
    t.disconnect().await;
}
