//! The session state machine without I/O: packets in through
//! [`Session::incoming`] and [`Session::on_connack`], the bytes it would
//! write read back from `wbuf`, the callers' answers from their futures.

use futures_util::FutureExt;
use rumqttc::v5::mqttbytes::v5::Packet;
use rumqttc::v5::mqttbytes::QoS;
use tokio::sync::mpsc;

use super::Session;
use crate::coalesce::Replies;
use crate::events::EventSink;
use crate::{
    AckTo, Event, IncomingPublish, OutgoingPublish, PublishAck, ReasonCode, TransportError,
};

#[allow(dead_code)]
#[path = "../../tests/support/fake_broker.rs"]
mod fake;
use fake::{puback, pubcomp, publish, pubrec, pubrel, Connack};

/// A connected session, its incoming events and the acks its tokens send.
struct Rig {
    session: Session,
    events: mpsc::UnboundedReceiver<Event>,
    acks: mpsc::UnboundedReceiver<(u64, u8)>,
}

fn rig(connack: Connack) -> Rig {
    let (ack_tx, acks) = mpsc::unbounded_channel();
    let (event_tx, events) = mpsc::unbounded_channel();
    let mut session = Session::new(ack_tx, EventSink::Channel(event_tx));
    let Packet::ConnAck(connack) = connack.packet() else {
        unreachable!()
    };
    session.on_connack(&connack, true);
    Rig {
        session,
        events,
        acks,
    }
}

impl Rig {
    /// Queues a publish; the future of its answer.
    fn publish(&mut self, qos: QoS, payload: &'static str) -> PublishAck {
        let (ack, acked) = AckTo::future();
        let publish = OutgoingPublish::new("t", qos, payload);
        self.session.publish(publish, Replies::One(ack));
        acked
    }

    /// The packets the session would write now (and takes them).
    fn written(&mut self) -> Vec<Packet> {
        let mut packets = Vec::new();
        while !self.session.wbuf.is_empty() {
            packets.push(Packet::read(&mut self.session.wbuf, None).expect("a whole packet"));
        }
        self.session.written();
        packets
    }

    /// The next publish handed to the application.
    fn delivered(&mut self) -> IncomingPublish {
        match self.events.try_recv().expect("a delivered publish") {
            Event::Publish(p) => p,
            Event::State(s) => panic!("a state event: {s:?}"),
        }
    }

    /// What the tokens ended outside a dispatch sent: handed to the session,
    /// as the loop does.
    fn feed_acks(&mut self) {
        while let Ok((seq, code)) = self.acks.try_recv() {
            self.session.app_ack(seq, code);
        }
    }
}

fn pkid(packet: &Packet) -> u16 {
    match packet {
        Packet::Publish(p) => p.pkid,
        Packet::PubAck(a) => a.pkid,
        Packet::PubRec(r) => r.pkid,
        Packet::PubRel(r) => r.pkid,
        Packet::PubComp(c) => c.pkid,
        other => panic!("no packet id in {other:?}"),
    }
}

#[test]
fn each_puback_reaches_its_own_publish() {
    let mut r = rig(Connack::default());
    let first = r.publish(QoS::AtLeastOnce, "1");
    let second = r.publish(QoS::AtLeastOnce, "2");
    let sent = r.written();
    assert_eq!(sent.len(), 2);
    let (a, b) = (pkid(&sent[0]), pkid(&sent[1]));
    assert_ne!(a, b);
    // Acked in the other order, with different codes.
    r.session.incoming(puback(b, 0x87)).unwrap();
    r.session.incoming(puback(a, 0x10)).unwrap();
    assert_eq!(first.now_or_never(), Some(Ok(ReasonCode(0x10))));
    assert_eq!(second.now_or_never(), Some(Ok(ReasonCode(0x87))));
    assert!(r.session.is_idle());
}

#[test]
fn receive_maximum_holds_back_the_next_publish_until_an_ack() {
    let mut r = rig(Connack {
        receive_max: Some(1),
        ..Connack::default()
    });
    let first = r.publish(QoS::AtLeastOnce, "1");
    let second = r.publish(QoS::AtLeastOnce, "2");
    let sent = r.written();
    assert_eq!(sent.len(), 1, "one in flight at most");
    r.session.incoming(puback(pkid(&sent[0]), 0)).unwrap();
    assert_eq!(first.now_or_never(), Some(Ok(ReasonCode(0))));
    let sent = r.written();
    assert!(matches!(&sent[..], [Packet::Publish(p)] if &p.payload[..] == b"2"));
    assert!(second.now_or_never().is_none(), "not acked yet");
}

#[test]
fn a_publish_over_the_servers_maximum_packet_size_fails_alone() {
    let mut r = rig(Connack {
        max_packet_size: Some(64),
        ..Connack::default()
    });
    let big = r.publish(QoS::AtLeastOnce, "x".repeat(100).leak());
    let small = r.publish(QoS::AtLeastOnce, "y");
    assert!(matches!(
        big.now_or_never(),
        Some(Err(TransportError::PacketTooLarge { max: 64, .. }))
    ));
    assert_eq!(r.written().len(), 1, "the small one still goes");
    drop(small);
}

#[test]
fn qos2_out_pubrec_pubrel_pubcomp_and_a_refusing_pubrec() {
    let mut r = rig(Connack::default());
    let kept = r.publish(QoS::ExactlyOnce, "1");
    let refused = r.publish(QoS::ExactlyOnce, "2");
    let sent = r.written();
    let (a, b) = (pkid(&sent[0]), pkid(&sent[1]));
    r.session.incoming(pubrec(a, 0x00)).unwrap();
    let sent = r.written();
    assert!(matches!(&sent[..], [Packet::PubRel(rel)] if rel.pkid == a));
    r.session.incoming(pubrec(b, 0x87)).unwrap();
    assert_eq!(
        refused.now_or_never(),
        Some(Err(TransportError::Refused(0x87)))
    );
    r.session.incoming(pubcomp(a)).unwrap();
    assert_eq!(kept.now_or_never(), Some(Ok(ReasonCode(0x00))));
    assert!(r.session.is_idle());
}

#[test]
fn incoming_acks_leave_in_arrival_order() {
    let mut r = rig(Connack::default());
    r.session
        .incoming(publish("t", QoS::AtLeastOnce, 7, b"a"))
        .unwrap();
    r.session
        .incoming(publish("t", QoS::AtLeastOnce, 8, b"b"))
        .unwrap();
    let (first, second) = (r.delivered(), r.delivered());
    assert!(
        r.written().is_empty(),
        "no PUBACK before the application acks"
    );
    // The second is acked first: its PUBACK waits for the first one's.
    second.ack.unwrap().reject(0x97);
    r.feed_acks();
    assert!(r.written().is_empty());
    first.ack.unwrap().ack();
    r.feed_acks();
    let sent = r.written();
    let codes: Vec<(u16, u8)> = sent
        .iter()
        .map(|p| match p {
            Packet::PubAck(a) => (a.pkid, crate::codes::puback(&a.reason)),
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(codes, [(7, 0x00), (8, 0x97)]);
}

#[test]
fn a_dropped_token_acks_with_success() {
    let mut r = rig(Connack::default());
    r.session
        .incoming(publish("t", QoS::AtLeastOnce, 3, b"a"))
        .unwrap();
    drop(r.delivered());
    r.feed_acks();
    let sent = r.written();
    assert!(
        matches!(&sent[..], [Packet::PubAck(a)] if a.pkid == 3 && crate::codes::puback(&a.reason) == 0)
    );
}

#[test]
fn incoming_qos2_is_delivered_once_and_completed() {
    let mut r = rig(Connack::default());
    r.session
        .incoming(publish("t", QoS::ExactlyOnce, 5, b"once"))
        .unwrap();
    let got = r.delivered();
    got.ack.unwrap().ack();
    r.feed_acks();
    assert!(matches!(&r.written()[..], [Packet::PubRec(rec)] if rec.pkid == 5));
    // The broker sends it again (no PUBREL yet): answered, not delivered.
    r.session
        .incoming(publish("t", QoS::ExactlyOnce, 5, b"once"))
        .unwrap();
    assert!(r.events.try_recv().is_err(), "delivered twice");
    assert!(matches!(&r.written()[..], [Packet::PubRec(rec)] if rec.pkid == 5));
    r.session.incoming(pubrel(5)).unwrap();
    assert!(matches!(&r.written()[..], [Packet::PubComp(comp)] if comp.pkid == 5));
}

#[test]
fn a_reconnect_without_the_session_ends_what_must_not_be_resent() {
    let (ack_tx, _acks) = mpsc::unbounded_channel();
    let (event_tx, _events) = mpsc::unbounded_channel();
    let mut session = Session::new(ack_tx, EventSink::Channel(event_tx));
    let Packet::ConnAck(connack) = Connack::default().packet() else {
        unreachable!()
    };
    session.on_connack(&connack, false);
    let (q1, q1_acked) = AckTo::future();
    let (q2, q2_acked) = AckTo::future();
    session.publish(
        OutgoingPublish::new("t", QoS::AtLeastOnce, "1"),
        Replies::One(q1),
    );
    session.publish(
        OutgoingPublish::new("t", QoS::ExactlyOnce, "2"),
        Replies::One(q2),
    );
    session.wbuf.clear();
    session.on_link_lost();
    // Back without the session, QoS 1 not to be resent: both end.
    session.on_connack(&connack, false);
    assert_eq!(
        q1_acked.now_or_never(),
        Some(Err(TransportError::SessionLost))
    );
    assert_eq!(
        q2_acked.now_or_never(),
        Some(Err(TransportError::SessionLost))
    );
    assert!(session.is_idle());
}

#[test]
fn a_resumed_session_resends_with_dup() {
    let mut r = rig(Connack::default());
    let acked = r.publish(QoS::AtLeastOnce, "1");
    let id = pkid(&r.written()[0]);
    r.session.on_link_lost();
    let Packet::ConnAck(resumed) = Connack {
        session_present: true,
        ..Connack::default()
    }
    .packet() else {
        unreachable!()
    };
    r.session.on_connack(&resumed, true);
    let sent = r.written();
    assert!(matches!(&sent[..], [Packet::Publish(p)] if p.dup && p.pkid == id));
    r.session.incoming(puback(id, 0)).unwrap();
    assert_eq!(acked.now_or_never(), Some(Ok(ReasonCode(0))));
}

#[test]
fn packets_a_client_must_not_get_end_the_link() {
    let mut r = rig(Connack::default());
    let error = r
        .session
        .incoming(Packet::PingReq(rumqttc::v5::mqttbytes::v5::PingReq))
        .unwrap_err();
    assert!(error.to_string().contains("unexpected packet"), "{error}");
    let disconnect = rumqttc::v5::mqttbytes::v5::Disconnect::new(
        rumqttc::v5::mqttbytes::v5::DisconnectReasonCode::ServerShuttingDown,
    );
    let error = r
        .session
        .incoming(Packet::Disconnect(disconnect))
        .unwrap_err();
    assert!(error.to_string().contains("DISCONNECT"), "{error}");
    // Acks for ids never used change nothing.
    r.session.incoming(puback(999, 0)).unwrap();
    r.session.incoming(pubcomp(998)).unwrap();
    assert!(r.session.is_idle());
}

#[test]
fn closing_fails_everything_waiting() {
    let mut r = rig(Connack {
        receive_max: Some(1),
        ..Connack::default()
    });
    let inflight = r.publish(QoS::AtLeastOnce, "1");
    let waiting = r.publish(QoS::AtLeastOnce, "2");
    let qos0 = r.publish(QoS::AtMostOnce, "3");
    r.session.close();
    assert_eq!(inflight.now_or_never(), Some(Err(TransportError::Closed)));
    assert_eq!(waiting.now_or_never(), Some(Err(TransportError::Closed)));
    assert_eq!(
        qos0.now_or_never(),
        Some(Err(TransportError::ConnectionLost))
    );
}
