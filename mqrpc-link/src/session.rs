//! Protocol state of one MQTT session, free of I/O: the event loop feeds it
//! commands and packets, it encodes what must be sent into `wbuf` and resolves
//! the callers' futures. It outlives connections (session resume).

use std::collections::VecDeque;

use rustc_hash::FxHashMap as HashMap;
use std::io;

use bytes::BytesMut;
use rumqttc::v5::mqttbytes::v5::{
    ConnAck, Filter, Packet, PubAck, PubComp, PubCompReason, PubRec, PubRel, PubRelReason, Publish,
    Subscribe, SubscribeProperties, Unsubscribe,
};
use rumqttc::v5::mqttbytes::QoS;
use tokio::sync::mpsc;

use crate::acks::{AckQueue, Reply};
use crate::coalesce::Replies;
use crate::codes;
use crate::events::EventSink;
use crate::packet_ids::PacketIds;
use crate::{
    AckToken, Event, IncomingPublish, OutgoingPublish, ReasonCode, ServerLimits, TransportError,
};

/// An outgoing QoS 1/2 publish on the wire, waiting for its ack.
struct InFlight {
    publish: Publish,
    reply: Replies,
    /// QoS 2: PUBREC received (code kept), PUBREL sent, waiting for PUBCOMP.
    released: Option<u8>,
    /// Send order, to resend in the original order after a reconnect.
    order: u64,
}

/// A SUBSCRIBE or UNSUBSCRIBE waiting for its ack.
enum PendingSub {
    Subscribe(Subscribe, Reply<Vec<ReasonCode>>),
    Unsubscribe(Unsubscribe, Reply<Vec<ReasonCode>>),
}

/// One incoming QoS 1/2 publish in the ordered ack release queue.
struct AckSlot {
    seq: u64,
    pkid: u16,
    qos: QoS,
    /// Set when the application acked; released once all older slots are.
    code: Option<u8>,
}

/// Incoming QoS 2 between delivery and PUBREL.
#[derive(PartialEq, Eq)]
enum Qos2In {
    /// Given to the application, its PUBREC not yet sent.
    Delivered,
    /// PUBREC sent, waiting for PUBREL.
    Received,
}

pub(crate) struct Session {
    ids: PacketIds,
    inflight: HashMap<u16, InFlight>,
    next_order: u64,
    /// QoS 1/2 publishes waiting for a Receive Maximum slot, in call order.
    waiting: VecDeque<(Publish, Replies)>,
    subs: HashMap<u16, PendingSub>,
    acks: VecDeque<AckSlot>,
    next_seq: u64,
    incoming_qos2: HashMap<u16, Qos2In>,
    /// QoS 0 publishes in `wbuf`, resolved once it is written out.
    qos0: Vec<Replies>,
    /// Everything to send, written with one write.
    pub(crate) wbuf: BytesMut,
    pub(crate) limits: ServerLimits,
    ack_queue: std::sync::Arc<AckQueue>,
    /// Acks taken from `ack_queue` after a dispatch (kept for its allocation).
    inline_acks: Vec<(u64, u8)>,
    events: EventSink,
}

impl Session {
    pub(crate) fn new(ack_tx: mpsc::UnboundedSender<(u64, u8)>, events: EventSink) -> Self {
        Session {
            ids: PacketIds::new(),
            inflight: HashMap::default(),
            next_order: 0,
            waiting: VecDeque::new(),
            subs: HashMap::default(),
            acks: VecDeque::new(),
            next_seq: 0,
            incoming_qos2: HashMap::default(),
            qos0: Vec::new(),
            wbuf: BytesMut::with_capacity(16 * 1024),
            limits: default_limits(),
            ack_queue: std::sync::Arc::new(AckQueue::new(ack_tx)),
            inline_acks: Vec::new(),
            events,
        }
    }

    /// Nothing is waiting for the broker.
    pub(crate) fn is_idle(&self) -> bool {
        self.inflight.is_empty() && self.waiting.is_empty() && self.subs.is_empty()
    }

    /// Some QoS 1/2 publish of ours waits for its acknowledgement.
    pub(crate) fn has_unacked(&self) -> bool {
        !self.inflight.is_empty()
    }

    /// Encodes a publish unless it exceeds the server's Maximum Packet Size.
    fn encode_publish(&mut self, p: &Publish) -> Result<(), TransportError> {
        let size = p.size();
        if let Some(max) = self.limits.max_packet_size {
            if size > max as usize {
                return Err(TransportError::PacketTooLarge {
                    size: size as u32,
                    max,
                });
            }
        }
        p.write(&mut self.wbuf)
            .map(drop)
            .map_err(|_| TransportError::PacketTooLarge {
                size: size as u32,
                max: u32::MAX,
            })
    }

    fn encode(&mut self, p: Packet) {
        // Only acks, PUBRELs, SUBSCRIBEs and DISCONNECT go through here; the codec
        // fails only on sizes, which these (small, ours) cannot reach.
        let _ = p.write(&mut self.wbuf, None);
    }

    pub(crate) fn publish(&mut self, out: OutgoingPublish, reply: Replies) {
        if out.qos as u8 > self.limits.max_qos as u8 {
            self.settle(reply, Err(TransportError::QosNotSupported));
            return;
        }
        let publish = Publish {
            dup: false,
            qos: out.qos,
            retain: out.retain,
            topic: out.topic,
            pkid: 0,
            payload: out.payload,
            properties: out.properties,
        };
        if publish.qos == QoS::AtMostOnce {
            match self.encode_publish(&publish) {
                Ok(()) => self.qos0.push(reply),
                Err(e) => self.settle(reply, Err(e)),
            }
        } else if self.inflight.len() >= self.receive_maximum() || !self.waiting.is_empty() {
            // Behind older waiting ones: order is kept.
            self.waiting.push_back((publish, reply));
        } else {
            self.send_new(publish, reply);
        }
    }

    /// Hands out a publish's answer; the parts of a refused merged publish
    /// are sent again one by one (behind what waits already).
    fn settle(&mut self, reply: Replies, answer: Result<ReasonCode, TransportError>) {
        if let Some(parts) = reply.resolve(answer) {
            for (mut part, reply) in parts {
                part.coalesce = false;
                self.publish(part, Replies::One(reply));
            }
        }
    }

    fn receive_maximum(&self) -> usize {
        self.limits.receive_maximum as usize
    }

    /// Gives a QoS 1/2 publish a packet id and puts it on the wire.
    fn send_new(&mut self, mut publish: Publish, reply: Replies) {
        let Some(id) = self.ids.take() else {
            self.settle(reply, Err(TransportError::NoPacketId));
            return;
        };
        publish.pkid = id;
        publish.dup = false;
        if let Err(e) = self.encode_publish(&publish) {
            self.ids.release(id);
            self.settle(reply, Err(e));
            return;
        }
        let order = self.next_order;
        self.next_order += 1;
        self.inflight.insert(
            id,
            InFlight {
                publish,
                reply,
                released: None,
                order,
            },
        );
    }

    fn drain_waiting(&mut self) {
        while self.inflight.len() < self.receive_maximum() {
            let Some((p, reply)) = self.waiting.pop_front() else {
                break;
            };
            self.send_new(p, reply);
        }
    }

    pub(crate) fn subscribe(
        &mut self,
        filters: Vec<Filter>,
        properties: Option<SubscribeProperties>,
        reply: Reply<Vec<ReasonCode>>,
    ) {
        let Some(pkid) = self.ids.take() else {
            let _ = reply.send(Err(TransportError::NoPacketId));
            return;
        };
        let s = Subscribe {
            pkid,
            filters,
            properties,
        };
        self.encode(Packet::Subscribe(s.clone()));
        self.subs.insert(pkid, PendingSub::Subscribe(s, reply));
    }

    pub(crate) fn unsubscribe(&mut self, filters: Vec<String>, reply: Reply<Vec<ReasonCode>>) {
        let Some(pkid) = self.ids.take() else {
            let _ = reply.send(Err(TransportError::NoPacketId));
            return;
        };
        let u = Unsubscribe {
            pkid,
            filters,
            properties: None,
        };
        self.encode(Packet::Unsubscribe(u.clone()));
        self.subs.insert(pkid, PendingSub::Unsubscribe(u, reply));
    }

    /// The application acked incoming publish `seq`; releases every ack that
    /// is now at the head of the queue (arrival order, MQTT-4.6.0-2).
    pub(crate) fn app_ack(&mut self, seq: u64, code: u8) {
        // Slots of a previous connection may be gone: then there is nothing to do.
        if let Ok(i) = self.acks.binary_search_by_key(&seq, |s| s.seq) {
            self.acks[i].code = Some(code);
        }
        self.release_acks();
    }

    fn release_acks(&mut self) {
        while let Some(AckSlot {
            code: Some(code), ..
        }) = self.acks.front()
        {
            let code = *code;
            let slot = self.acks.pop_front().expect("front exists");
            if slot.qos == QoS::ExactlyOnce {
                let mut rec = PubRec::new(slot.pkid, None);
                rec.reason = codes::pubrec_reason(code);
                if code < 0x80 {
                    self.incoming_qos2.insert(slot.pkid, Qos2In::Received);
                } else {
                    // A refusing PUBREC ends the exchange.
                    self.incoming_qos2.remove(&slot.pkid);
                }
                self.encode(Packet::PubRec(rec));
            } else {
                let mut ack = PubAck::new(slot.pkid, None);
                ack.reason = codes::puback_reason(code);
                self.encode(Packet::PubAck(ack));
            }
        }
    }

    fn push_slot(&mut self, pkid: u16, qos: QoS, code: Option<u8>) -> u64 {
        let seq = self.next_seq;
        self.next_seq += 1;
        self.acks.push_back(AckSlot {
            seq,
            pkid,
            qos,
            code,
        });
        seq
    }

    fn deliver(&mut self, p: Publish, token: Option<AckToken>) {
        let inline = token.is_some();
        if inline {
            self.ack_queue.dispatching();
        }
        self.events.send(Event::Publish(IncomingPublish {
            topic: p.topic,
            qos: p.qos,
            dup: p.dup,
            retain: p.retain,
            payload: p.payload,
            properties: p.properties,
            ack: token,
        }));
        if inline {
            let mut acks = std::mem::take(&mut self.inline_acks);
            self.ack_queue.dispatched(&mut acks);
            for (seq, code) in acks.drain(..) {
                self.app_ack(seq, code);
            }
            self.inline_acks = acks;
        }
    }

    fn token(&self, seq: u64) -> AckToken {
        AckToken::new(self.ack_queue.clone(), seq)
    }

    /// A packet from the broker (CONNACK and PINGRESP are the loop's).
    pub(crate) fn incoming(&mut self, packet: Packet) -> io::Result<()> {
        match packet {
            Packet::Publish(p) => match p.qos {
                QoS::AtMostOnce => self.deliver(p, None),
                QoS::AtLeastOnce => {
                    let seq = self.push_slot(p.pkid, p.qos, None);
                    let token = self.token(seq);
                    self.deliver(p, Some(token));
                }
                QoS::ExactlyOnce => match self.incoming_qos2.get(&p.pkid) {
                    // Already delivered and PUBREC'd: answer PUBREC again, in order.
                    Some(Qos2In::Received) => {
                        self.push_slot(p.pkid, p.qos, Some(0));
                        self.release_acks();
                    }
                    // Delivered, the application's token will send the PUBREC.
                    Some(Qos2In::Delivered) => {}
                    None => {
                        self.incoming_qos2.insert(p.pkid, Qos2In::Delivered);
                        let seq = self.push_slot(p.pkid, p.qos, None);
                        let token = self.token(seq);
                        self.deliver(p, Some(token));
                    }
                },
            },
            Packet::PubAck(a) => {
                if let Some(f) = self.inflight.remove(&a.pkid) {
                    self.ids.release(a.pkid);
                    self.settle(f.reply, Ok(ReasonCode(codes::puback(&a.reason))));
                    self.drain_waiting();
                }
            }
            Packet::PubRec(r) => {
                let code = codes::pubrec(&r.reason);
                if code >= 0x80 {
                    if let Some(f) = self.inflight.remove(&r.pkid) {
                        self.ids.release(r.pkid);
                        self.settle(f.reply, Err(TransportError::Refused(code)));
                        self.drain_waiting();
                    }
                } else {
                    let mut rel = PubRel::new(r.pkid, None);
                    match self.inflight.get_mut(&r.pkid) {
                        Some(f) => f.released = Some(code),
                        None => rel.reason = PubRelReason::PacketIdentifierNotFound,
                    }
                    self.encode(Packet::PubRel(rel));
                }
            }
            Packet::PubComp(c) => {
                if let Some(f) = self.inflight.remove(&c.pkid) {
                    self.ids.release(c.pkid);
                    let code = f.released.unwrap_or(0);
                    self.settle(f.reply, Ok(ReasonCode(code)));
                    self.drain_waiting();
                }
            }
            Packet::PubRel(r) => {
                let mut comp = PubComp::new(r.pkid, None);
                if self.incoming_qos2.remove(&r.pkid).is_none() {
                    comp.reason = PubCompReason::PacketIdentifierNotFound;
                }
                self.encode(Packet::PubComp(comp));
            }
            Packet::SubAck(a) => {
                if let Some(PendingSub::Subscribe(_, reply)) = self.subs.remove(&a.pkid) {
                    self.ids.release(a.pkid);
                    let codes = a.return_codes.iter().map(|c| ReasonCode(codes::suback(c)));
                    let _ = reply.send(Ok(codes.collect()));
                }
            }
            Packet::UnsubAck(a) => {
                if let Some(PendingSub::Unsubscribe(_, reply)) = self.subs.remove(&a.pkid) {
                    self.ids.release(a.pkid);
                    let codes = a.reasons.iter().map(|c| ReasonCode(codes::unsuback(c)));
                    let _ = reply.send(Ok(codes.collect()));
                }
            }
            Packet::Disconnect(d) => {
                return Err(io::Error::other(format!(
                    "server sent DISCONNECT {:?}",
                    d.reason_code
                )));
            }
            other => {
                return Err(io::Error::other(format!(
                    "unexpected packet from the server: {other:?}"
                )));
            }
        }
        Ok(())
    }

    /// After an accepted CONNACK: take the server's limits, then resume (resend
    /// with DUP) or restart (QoS 1 as new publishes, QoS 2 `SessionLost`).
    pub(crate) fn on_connack(&mut self, connack: &ConnAck, resend_after_session_loss: bool) {
        let props = connack.properties.as_ref();
        self.limits = ServerLimits {
            receive_maximum: props.and_then(|p| p.receive_max).unwrap_or(u16::MAX).max(1),
            max_packet_size: props.and_then(|p| p.max_packet_size),
            max_qos: match props.and_then(|p| p.max_qos) {
                Some(0) => QoS::AtMostOnce,
                Some(1) => QoS::AtLeastOnce,
                _ => QoS::ExactlyOnce,
            },
            retain_available: props.and_then(|p| p.retain_available) != Some(0),
            topic_alias_maximum: props.and_then(|p| p.topic_alias_max).unwrap_or(0),
            response_information: props.and_then(|p| p.response_information.clone()),
        };
        let mut inflight: Vec<(u16, InFlight)> = self.inflight.drain().collect();
        inflight.sort_unstable_by_key(|(_, f)| f.order);
        if !inflight.is_empty() {
            tracing::debug!(
                publishes = inflight.len(),
                session_present = connack.session_present,
                "unacknowledged publishes after the reconnect: resent or ended"
            );
        }
        if connack.session_present {
            // The broker redelivers our unacked QoS 1 with DUP and their ids may
            // come back: acks owed on the old link are void (MQTT-4.4.0-1).
            self.acks.retain(|s| s.qos == QoS::ExactlyOnce);
            for (id, f) in inflight {
                if f.released.is_some() {
                    self.encode(Packet::PubRel(PubRel::new(id, None)));
                    self.inflight.insert(id, f);
                } else {
                    let mut p = f.publish.clone();
                    p.dup = true;
                    match self.encode_publish(&p) {
                        Ok(()) => drop(self.inflight.insert(id, f)),
                        Err(e) => {
                            self.ids.release(id);
                            self.settle(f.reply, Err(e));
                        }
                    }
                }
            }
        } else {
            self.acks.clear();
            self.incoming_qos2.clear();
            let mut resend = Vec::new();
            for (id, f) in inflight {
                self.ids.release(id);
                match (f.publish.qos, f.released) {
                    // PUBREC means the broker owns it: it is delivered once.
                    (QoS::ExactlyOnce, Some(code)) => self.settle(f.reply, Ok(ReasonCode(code))),
                    // Sending again could deliver it twice.
                    (QoS::ExactlyOnce, None) => {
                        self.settle(f.reply, Err(TransportError::SessionLost))
                    }
                    _ if !resend_after_session_loss => {
                        self.settle(f.reply, Err(TransportError::SessionLost))
                    }
                    _ => {
                        let mut p = f.publish;
                        p.pkid = 0;
                        resend.push((p, f.reply));
                    }
                }
            }
            for item in resend.into_iter().rev() {
                self.waiting.push_front(item);
            }
        }
        // SUBSCRIBE / UNSUBSCRIBE without an answer: ask again (same id).
        let mut subs: Vec<u16> = self.subs.keys().copied().collect();
        subs.sort_unstable();
        for id in subs {
            let packet = match &self.subs[&id] {
                PendingSub::Subscribe(s, _) => Packet::Subscribe(s.clone()),
                PendingSub::Unsubscribe(u, _) => Packet::Unsubscribe(u.clone()),
            };
            self.encode(packet);
        }
        self.drain_waiting();
        self.release_acks();
    }

    /// `wbuf` has been written out: QoS 0 publishes are on their way.
    pub(crate) fn written(&mut self) {
        for reply in std::mem::take(&mut self.qos0) {
            self.settle(reply, Ok(ReasonCode(0)));
        }
    }

    /// The link is gone: unsent bytes are dropped (what matters is resent
    /// after CONNACK), QoS 0 publishes not written fail.
    pub(crate) fn on_link_lost(&mut self) {
        self.wbuf.clear();
        for reply in std::mem::take(&mut self.qos0) {
            self.settle(reply, Err(TransportError::ConnectionLost));
        }
    }

    /// The transport stops: everything still waiting fails with `Closed`.
    pub(crate) fn close(&mut self) {
        self.on_link_lost();
        for (_, f) in std::mem::take(&mut self.inflight) {
            self.settle(f.reply, Err(TransportError::Closed));
        }
        for (_, reply) in std::mem::take(&mut self.waiting) {
            self.settle(reply, Err(TransportError::Closed));
        }
        for (_, s) in self.subs.drain() {
            let reply = match s {
                PendingSub::Subscribe(_, r) | PendingSub::Unsubscribe(_, r) => r,
            };
            let _ = reply.send(Err(TransportError::Closed));
        }
    }
}

fn default_limits() -> ServerLimits {
    ServerLimits {
        receive_maximum: u16::MAX,
        max_packet_size: None,
        max_qos: QoS::ExactlyOnce,
        retain_available: true,
        topic_alias_maximum: 0,
        response_information: None,
    }
}

#[cfg(test)]
mod tests;
