//! The sending handle: [`Transport`] queues commands for the loop it
//! started and counts what it sent.

use tokio::sync::{mpsc, oneshot, watch};

use crate::acks::Answer;
use crate::commands::{Command, Counts};
use crate::events::EventSink;
use crate::{
    event_loop, AckTo, ConnectionState, Connector, Event, Filter, Incoming, OutgoingPublish,
    PublishAck, SubAck, SubscribeProperties, TransportConfig, UnsubAck,
};
#[cfg(doc)]
use crate::{AckListener, Coalesce, TransportError};

/// Sends to the broker. Cheap to clone; the loop stops (with a DISCONNECT)
/// when every clone is dropped or [`disconnect`](Self::disconnect) is called.
#[derive(Clone)]
pub struct Transport {
    cmd: mpsc::UnboundedSender<Command>,
    state: watch::Receiver<ConnectionState>,
    counts: std::sync::Arc<Counts>,
}

/// Publishes handed to the session loop so far (see [`Transport::counts`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PublishCounts {
    /// PUBLISH packets queued for the broker (a merged one counts once).
    pub publishes: u64,
    /// How many of them were merged by the [`Coalesce`]r.
    pub merged: u64,
    /// How many publishes those merged ones carried.
    pub merged_parts: u64,
}

impl Transport {
    /// Spawns the session loop (on the current tokio runtime) and returns the
    /// sending handle and the incoming stream.
    pub fn start<C: Connector>(config: TransportConfig, connector: C) -> (Transport, Incoming) {
        let (cmd, cmd_rx) = mpsc::unbounded_channel();
        let (events, events_rx) = mpsc::unbounded_channel();
        let events = EventSink::Channel(events);
        let (state_tx, state) = watch::channel(ConnectionState::Connecting);
        let counts = std::sync::Arc::new(Counts::default());
        let looped = event_loop::run(config, connector, cmd_rx, events, state_tx, counts.clone());
        tokio::spawn(looped);
        (Transport { cmd, state, counts }, Incoming(events_rx))
    }

    /// Like [`start`](Self::start), but every event is handed to `handler`
    /// on the loop's own task, as it happens, instead of through
    /// [`Incoming`]: one task switch less per incoming publish. `handler`
    /// must not block (queue or spawn, never wait).
    pub fn start_with_handler<C: Connector>(
        config: TransportConfig,
        connector: C,
        handler: impl Fn(Event) + Send + Sync + 'static,
    ) -> Transport {
        let (cmd, cmd_rx) = mpsc::unbounded_channel();
        let (state_tx, state) = watch::channel(ConnectionState::Connecting);
        let counts = std::sync::Arc::new(Counts::default());
        let events = EventSink::Call(std::sync::Arc::new(handler));
        let looped = event_loop::run(config, connector, cmd_rx, events, state_tx, counts.clone());
        tokio::spawn(looped);
        Transport { cmd, state, counts }
    }

    /// Publishes sent so far, and how many were merged.
    pub fn counts(&self) -> PublishCounts {
        use std::sync::atomic::Ordering::Relaxed;
        PublishCounts {
            publishes: self.counts.publishes.load(Relaxed),
            merged: self.counts.merged.load(Relaxed),
            merged_parts: self.counts.merged_parts.load(Relaxed),
        }
    }

    /// Queues a publish (no await needed). The returned future resolves: for
    /// QoS 0 once written to the stream; for QoS 1 with the PUBACK's code
    /// (0x80 and up included); for QoS 2 with the PUBREC's code once PUBCOMP
    /// arrives, or [`TransportError::Refused`] if the PUBREC refused it.
    pub fn publish(&self, publish: OutgoingPublish) -> PublishAck {
        let (ack, acked) = AckTo::future();
        self.publish_to(publish, ack);
        acked
    }

    /// Queues a publish whose answer goes to `ack`: a [`PublishAck`] future
    /// ([`AckTo::future`]) or an [`AckListener`], called on the loop's task.
    pub fn publish_to(&self, publish: OutgoingPublish, ack: AckTo) {
        let _ = self.cmd.send(Command::Publish(publish, ack));
    }

    /// Subscribes; resolves to one code per filter (granted QoS, or ≥ 0x80).
    pub fn subscribe(
        &self,
        filters: Vec<Filter>,
        properties: Option<SubscribeProperties>,
    ) -> SubAck {
        let (tx, rx) = oneshot::channel();
        let _ = self.cmd.send(Command::Subscribe(filters, properties, tx));
        SubAck(Answer(rx))
    }

    /// Unsubscribes; resolves to one code per filter.
    pub fn unsubscribe(&self, filters: Vec<String>) -> UnsubAck {
        let (tx, rx) = oneshot::channel();
        let _ = self.cmd.send(Command::Unsubscribe(filters, tx));
        UnsubAck(Answer(rx))
    }

    /// The link's state, updated on every change.
    pub fn state(&self) -> watch::Receiver<ConnectionState> {
        self.state.clone()
    }

    /// Writes what is queued, sends DISCONNECT (normal, 0x00) and stops.
    /// Pending acks resolve with [`TransportError::Closed`].
    pub async fn disconnect(&self) {
        let (tx, rx) = oneshot::channel();
        if self.cmd.send(Command::Disconnect(tx)).is_ok() {
            let _ = rx.await;
        }
    }
}
