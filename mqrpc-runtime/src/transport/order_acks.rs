//! Acknowledgements matched to requests by order: rumqttc assigns packet
//! ids inside its event loop and reports them as `Outgoing` events in
//! request order. This is what the `link` session loop replaces (issue 13).

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::Ordering;
use std::time::Duration;

use rumqttc::v5::mqttbytes::v5::{Packet, PubAckReason, PubRecReason, SubscribeReasonCode};
use rumqttc::v5::{Event, EventLoop};
use rumqttc::Outgoing;
use tokio::sync::oneshot;

use crate::error::Refusal;
use crate::Error;

use super::Connection;

pub(super) type AckSender = oneshot::Sender<Result<(), String>>;

/// SUBSCRIBE/UNSUBSCRIBE requests waiting for their ack. rumqttc assigns the
/// packet id inside its event loop and reports it as an `Outgoing` event in
/// request order, so waiters queue in that order until their id is known.
#[derive(Default)]
pub(super) struct AckWaiters {
    pub(super) queued_subscribe: VecDeque<AckSender>,
    pub(super) queued_unsubscribe: VecDeque<AckSender>,
    pub(super) subscribe: HashMap<u16, AckSender>,
    pub(super) unsubscribe: HashMap<u16, AckSender>,
}

impl AckWaiters {
    pub(super) fn fail_all(&mut self, error: &str) {
        let all = self
            .queued_subscribe
            .drain(..)
            .chain(self.queued_unsubscribe.drain(..))
            .chain(self.subscribe.drain().map(|(_, w)| w))
            .chain(self.unsubscribe.drain().map(|(_, w)| w));
        for waiter in all {
            let _ = waiter.send(Err(error.to_string()));
        }
    }
}

/// Maps QoS 1/2 publishes to the calls that sent them, so a PUBACK/PUBREC
/// with reason 0x10 "No matching subscribers" fails its call at once.
/// rumqttc assigns packet ids in its event loop and reports them as
/// `Outgoing::Publish` events in request order; every QoS 1/2 publish
/// pushes a marker (`Some(call)` or `None`) in that same order, under
/// `publish_order`.
#[derive(Default)]
pub(super) struct PublishTracker {
    pub(super) markers: VecDeque<Option<u64>>,
    /// The marker of a publish rumqttc parked on a packet-id collision
    /// (`Outgoing::AwaitAck`); its `Outgoing::Publish` comes later.
    pub(super) collision: Option<Option<u64>>,
    pub(super) by_packet_id: HashMap<u16, u64>,
    /// Publishes waiting for room in rumqttc's queue.
    pub(super) slow_publishers: usize,
}

#[derive(Clone, Copy)]
pub(super) enum AckKind {
    Subscribe,
    Unsubscribe,
}

impl Connection {
    pub(super) async fn await_ack<F, Fut>(
        &self,
        kind: AckKind,
        filter: &str,
        send: F,
    ) -> Result<(), Error>
    where
        F: FnOnce() -> Fut,
        Fut: std::future::Future<Output = Result<(), rumqttc::v5::ClientError>>,
    {
        let failed = |reason: String| Error::Subscribe {
            filter: filter.to_string(),
            reason,
        };
        let (tx, rx) = oneshot::channel();
        {
            let _order = self.shared.ack_order.lock().await;
            {
                let mut acks = self.shared.acks.lock().unwrap_or_else(|e| e.into_inner());
                match kind {
                    AckKind::Subscribe => acks.queued_subscribe.push_back(tx),
                    AckKind::Unsubscribe => acks.queued_unsubscribe.push_back(tx),
                }
            }
            if let Err(e) = send().await {
                return Err(failed(format!("MQTT client: {e}")));
            }
        }
        let ack_timeout = self
            .shared
            .options
            .connect_timeout
            .max(Duration::from_secs(1))
            * 2;
        match tokio::time::timeout(ack_timeout, rx).await {
            Ok(Ok(Ok(()))) => Ok(()),
            Ok(Ok(Err(reason))) => Err(failed(reason)),
            Ok(Err(_)) => Err(failed("connection closed".into())),
            Err(_) => Err(failed(format!("no acknowledgement within {ack_timeout:?}"))),
        }
    }

    pub(super) fn tracker(&self) -> std::sync::MutexGuard<'_, PublishTracker> {
        self.shared
            .publishes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    /// Follows packet ids of QoS 1/2 publishes to their acknowledgements.
    pub(super) fn track_publish(&self, event: &Event) {
        let outcome = match event {
            Event::Outgoing(Outgoing::Publish(0)) => return, // QoS 0: no marker
            Event::Outgoing(Outgoing::Publish(pkid)) => {
                let mut tracker = self.tracker();
                let marker = match tracker.collision.take() {
                    Some(marker) => marker,
                    None => tracker.markers.pop_front().flatten(),
                };
                if let Some(call) = marker {
                    tracker.by_packet_id.insert(*pkid, call);
                }
                return;
            }
            Event::Outgoing(Outgoing::AwaitAck(_)) => {
                let mut tracker = self.tracker();
                let marker = tracker.markers.pop_front().flatten();
                tracker.collision = Some(marker);
                return;
            }
            Event::Incoming(Packet::PubAck(ack)) => (
                ack.pkid,
                match ack.reason {
                    PubAckReason::Success => None,
                    PubAckReason::NoMatchingSubscribers => Some(Refusal::NoMatchingSubscribers),
                    PubAckReason::NotAuthorized => Some(Refusal::NotAuthorized),
                    other => Some(Refusal::Other(format!("{other:?}"))),
                },
            ),
            Event::Incoming(Packet::PubRec(rec)) => (
                rec.pkid,
                match rec.reason {
                    PubRecReason::Success => None,
                    PubRecReason::NoMatchingSubscribers => Some(Refusal::NoMatchingSubscribers),
                    PubRecReason::NotAuthorized => Some(Refusal::NotAuthorized),
                    other => Some(Refusal::Other(format!("{other:?}"))),
                },
            ),
            _ => return,
        };
        let (pkid, refusal) = outcome;
        let call = self.tracker().by_packet_id.remove(&pkid);
        if let (Some(call), Some(refusal)) = (call, refusal) {
            if let Some(caller) = self.shared.caller.get() {
                caller.fail_call(call, refusal);
            }
        }
    }

    pub(super) fn on_link_lost(&self, eventloop: &mut EventLoop) {
        self.shared.ready.store(false, Ordering::Release);
        self.discard_unsent(eventloop);
        if let Some(caller) = self.shared.caller.get() {
            caller.fail_all(&Error::Disconnected);
        }
        self.shared
            .acks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .fail_all("disconnected from the broker");
    }

    /// Drops what rumqttc kept of the lost link, and the markers of the
    /// publishes among it, so markers and `Outgoing::Publish` events stay
    /// aligned. Their callers are failed with `Disconnected`; the session
    /// is gone (clean start) or, if kept, replaying them would run calls
    /// whose callers were already told they failed.
    pub(super) fn discard_unsent(&self, eventloop: &mut EventLoop) {
        use rumqttc::v5::Request;
        // Under the tracker lock no publisher can queue (fast path) or push
        // a marker; `clean` takes what reached the channel since the error.
        let mut tracker = self.tracker();
        eventloop.clean();
        // Events of publishes written to the dead link, not yet read by us:
        // each holds a marker at the front of the queue.
        let stale = eventloop
            .state
            .events
            .iter()
            .filter(|e| {
                matches!(
                    e,
                    Event::Outgoing(Outgoing::Publish(1..) | Outgoing::AwaitAck(_))
                )
            })
            .count();
        eventloop.state.events.retain(|e| {
            !matches!(
                e,
                Event::Outgoing(Outgoing::Publish(1..) | Outgoing::AwaitAck(_))
            )
        });
        // QoS 1/2 requests taken from the channel (no packet id yet): their
        // markers follow. Those with a packet id already had their events.
        let unsent = eventloop
            .pending
            .iter()
            .filter(|r| {
                matches!(r, Request::Publish(p)
                    if p.pkid == 0 && p.qos != rumqttc::v5::mqttbytes::QoS::AtMostOnce)
            })
            .count();
        let drop_markers = (stale + unsent).min(tracker.markers.len());
        tracker.markers.drain(..drop_markers);
        // What slow publishers have not sent yet keeps its markers: it goes
        // into the channel after this and is sent on the new link.
        tracker.by_packet_id.clear();
        tracker.collision = None;
        // rumqttc keeps a collided publish across `clean`, which would block
        // its request queue on the new link for good.
        eventloop.state.collision = None;
        if self.shared.options.session_expiry.is_some() {
            // Keep QoS 2 releases the kept session still expects.
            eventloop
                .pending
                .retain(|r| matches!(r, Request::PubRel(_)));
        } else {
            eventloop.pending.clear();
        }
    }

    pub(super) fn on_ack(&self, event: &Event) {
        let concerns_acks = matches!(
            event,
            Event::Outgoing(Outgoing::Subscribe(_) | Outgoing::Unsubscribe(_))
                | Event::Incoming(Packet::SubAck(_) | Packet::UnsubAck(_))
        );
        if !concerns_acks {
            return;
        }
        let mut acks = self.shared.acks.lock().unwrap_or_else(|e| e.into_inner());
        match event {
            Event::Outgoing(Outgoing::Subscribe(pkid)) => {
                if let Some(waiter) = acks.queued_subscribe.pop_front() {
                    acks.subscribe.insert(*pkid, waiter);
                }
            }
            Event::Outgoing(Outgoing::Unsubscribe(pkid)) => {
                if let Some(waiter) = acks.queued_unsubscribe.pop_front() {
                    acks.unsubscribe.insert(*pkid, waiter);
                }
            }
            Event::Incoming(Packet::SubAck(ack)) => {
                if let Some(waiter) = acks.subscribe.remove(&ack.pkid) {
                    let refused = ack
                        .return_codes
                        .iter()
                        .find(|code| !matches!(code, SubscribeReasonCode::Success(_)));
                    let _ = waiter.send(match refused {
                        None => Ok(()),
                        Some(code) => Err(format!("the broker answered {code:?}")),
                    });
                }
            }
            Event::Incoming(Packet::UnsubAck(ack)) => {
                if let Some(waiter) = acks.unsubscribe.remove(&ack.pkid) {
                    let _ = waiter.send(Ok(()));
                }
            }
            _ => {}
        }
    }
}
