//! The MQTT v5 transport: our own session loop over rumqttc's public codec
//! (`rumqttc::v5::mqttbytes::v5`, `Packet::read` / `Packet::write` only).
//!
//! Contract, and the reason this module exists (issue 13): every
//! [`Transport::publish`] returns a future resolving to the broker's reason
//! code for *that* publish, every [`Transport::subscribe`] to the SUBACK's
//! codes, incoming publishes come with a manual [`AckToken`], and connection
//! changes arrive as [`Event::State`]. Nothing above this module sees a packet
//! id. Why our own loop and what it costs: BENCHMARKS.md, "The transport
//! spike".
//!
//! Files: [`connector`] opens streams (TCP; `tls`: `TlsConnector`;
//! `websocket`: `WsConnector`), `session` holds the protocol state
//! (ids, in-flight, Receive Maximum, incoming ack order), `event_loop` owns the
//! socket, reconnects and keep-alive, `codes` maps the codec's reason enums to
//! numbers, `packet_ids` allocates ids.
//!
//! Subscriptions: the transport does not remember granted subscriptions. A
//! SUBSCRIBE or UNSUBSCRIBE still waiting for its ack when the link drops is
//! sent again after the reconnect (same packet id) so its future resolves with
//! the real answer. When a reconnect reports `session_present: false`, the
//! layer above re-subscribes what it needs.

mod coalesce;
mod codes;
pub mod connector;
mod event_loop;
mod packet_ids;
mod session;
#[cfg(feature = "tls")]
mod tls;
#[cfg(feature = "websocket")]
mod websocket;

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
pub use rumqttc::v5::mqttbytes::v5::{Filter, LastWill, PublishProperties, SubscribeProperties};
pub use rumqttc::v5::mqttbytes::QoS;
use tokio::sync::{mpsc, oneshot, watch};

pub(crate) use coalesce::Replies;
pub use coalesce::{Coalesce, CoalesceLimits};
pub use connector::{Connector, TcpConnector};
#[cfg(feature = "tls")]
pub(crate) use tls::client_config as tls_client_config;
#[cfg(feature = "tls")]
pub use tls::TlsConnector;
#[cfg(feature = "websocket")]
pub use websocket::{MaybeTlsStream, WsConnector, WsStream};

/// Settings of a [`Transport`].
#[derive(Debug, Clone)]
pub struct TransportConfig {
    /// MQTT client identifier.
    pub client_id: String,
    /// Keep-alive sent in CONNECT (zero disables PINGREQ). A server keep-alive
    /// in CONNACK replaces it. No PINGRESP within one more interval means the
    /// link is dead: the transport reconnects.
    pub keep_alive: Duration,
    /// How long one connection attempt may take, from opening the stream
    /// to the CONNACK; a peer that accepts but never answers fails the
    /// attempt once it has passed.
    pub connect_timeout: Duration,
    /// Clean Start on the first connection only; reconnects always ask to
    /// resume the session.
    pub clean_start: bool,
    /// Session Expiry Interval in seconds (0: the session ends with the link,
    /// so resume is impossible).
    pub session_expiry: u32,
    /// User name and password.
    pub credentials: Option<(String, String)>,
    /// Last Will.
    pub last_will: Option<LastWill>,
    /// Largest packet we accept (sent as Maximum Packet Size).
    pub max_packet_size: u32,
    /// How many unacked QoS 1/2 publishes the broker may send us (sent as
    /// Receive Maximum).
    pub receive_maximum: u16,
    /// Delays between reconnect attempts; `None`: no reconnect, the transport
    /// ends with the first lost link.
    pub reconnect: Option<Backoff>,
    /// Ask the server for Response Information in CONNECT.
    pub request_response_information: bool,
    /// Merges publishes queued together (see [`Coalesce`]); `None`: every
    /// publish goes alone.
    pub coalescer: Option<std::sync::Arc<dyn Coalesce>>,
    /// Bounds of a merged publish.
    pub coalesce_limits: CoalesceLimits,
    /// When a reconnect finds the session gone, send unacknowledged QoS 1
    /// publishes again as new ones (`true`), or end them with
    /// [`TransportError::SessionLost`] (`false`: for senders that have
    /// already given up on them, e.g. calls failed at the link loss).
    pub resend_after_session_loss: bool,
}

impl TransportConfig {
    /// Defaults: keep-alive 30 s, connect timeout 10 s, clean start,
    /// session expiry 0, 1 MiB
    /// packets, Receive Maximum 100, reconnect after 100 ms doubling up to 5 s,
    /// no Response Information asked, QoS 1 resent after a session loss.
    pub fn new(client_id: impl Into<String>) -> Self {
        TransportConfig {
            client_id: client_id.into(),
            keep_alive: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(10),
            clean_start: true,
            session_expiry: 0,
            credentials: None,
            last_will: None,
            max_packet_size: 1024 * 1024,
            receive_maximum: 100,
            reconnect: Some(Backoff {
                min: Duration::from_millis(100),
                max: Duration::from_secs(5),
            }),
            request_response_information: false,
            coalescer: None,
            coalesce_limits: CoalesceLimits {
                max_parts: 64,
                max_bytes: 64 * 1024,
            },
            resend_after_session_loss: true,
        }
    }
}

/// Reconnect delays: `min` after the first failure, doubled per further
/// failure up to `max`, back to `min` after a CONNACK.
#[derive(Debug, Clone, Copy)]
pub struct Backoff {
    /// First delay.
    pub min: Duration,
    /// Longest delay.
    pub max: Duration,
}

/// A reason code from the broker: PUBACK / PUBREC (0x00 success, 0x10 no
/// matching subscribers, 0x87 not authorized, 0x97 quota exceeded…), or one
/// SUBACK / UNSUBACK entry (0x00–0x02 granted QoS, ≥ 0x80 refused).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ReasonCode(pub u8);

impl ReasonCode {
    /// Codes below 0x80 are successes (0x10 included).
    pub fn is_success(self) -> bool {
        self.0 < 0x80
    }
}

/// Why an operation of the transport did not get a reason code.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TransportError {
    /// The transport has stopped (disconnected, or no reconnect configured).
    #[error("transport closed")]
    Closed,
    /// A QoS 2 publish was in flight (no PUBREC yet) and the broker reconnected
    /// us without our session: sending it again could deliver it twice, so it
    /// is not resent.
    #[error("session lost before the QoS 2 publish was received")]
    SessionLost,
    /// Larger than the server's Maximum Packet Size: not sent.
    #[error("packet of {size} bytes exceeds the server's Maximum Packet Size {max}")]
    PacketTooLarge {
        /// Encoded size of the packet.
        size: u32,
        /// The server's limit (from CONNACK).
        max: u32,
    },
    /// QoS above the server's Maximum QoS: not sent.
    #[error("QoS above the server's Maximum QoS")]
    QosNotSupported,
    /// A QoS 2 publish refused by its PUBREC (code ≥ 0x80).
    #[error("publish refused with reason code {0:#04x}")]
    Refused(u8),
    /// The link dropped before this QoS 0 publish was written.
    #[error("connection lost before the QoS 0 publish was written")]
    ConnectionLost,
    /// Every packet id is in flight.
    #[error("no packet identifier available")]
    NoPacketId,
}

/// A publish to send.
#[derive(Debug, Clone)]
pub struct OutgoingPublish {
    /// Topic name.
    pub topic: Bytes,
    /// Delivery guarantee.
    pub qos: QoS,
    /// Retain flag.
    pub retain: bool,
    /// Payload.
    pub payload: Bytes,
    /// Response Topic, Correlation Data, user properties, Content Type,
    /// Message Expiry…
    pub properties: Option<PublishProperties>,
    /// May be merged with other publishes queued at the same time (see
    /// [`TransportConfig::coalescer`]).
    pub coalesce: bool,
}

impl OutgoingPublish {
    /// A publish without properties.
    pub fn new(topic: impl Into<Bytes>, qos: QoS, payload: impl Into<Bytes>) -> Self {
        OutgoingPublish {
            topic: topic.into(),
            qos,
            retain: false,
            payload: payload.into(),
            properties: None,
            coalesce: false,
        }
    }
}

/// A publish received from the broker.
#[derive(Debug)]
pub struct IncomingPublish {
    /// Topic name.
    pub topic: Bytes,
    /// QoS it was delivered with.
    pub qos: QoS,
    /// DUP flag (a redelivery).
    pub dup: bool,
    /// Retain flag.
    pub retain: bool,
    /// Payload.
    pub payload: Bytes,
    /// Its properties.
    pub properties: Option<PublishProperties>,
    /// For QoS 1 and 2: acknowledges it (PUBACK or PUBREC). `None` for QoS 0.
    pub ack: Option<AckToken>,
}

/// Acknowledges one incoming QoS 1/2 publish.
///
/// Acks leave in the order the publishes arrived (MQTT-4.6.0-2): an ack made
/// early waits until every older publish on the connection is acked.
/// **Dropping a token without calling [`ack`](Self::ack) or
/// [`reject`](Self::reject) acks it with 0x00**, so one forgotten token can
/// never hold back the acks behind it forever.
#[derive(Debug)]
pub struct AckToken {
    acks: std::sync::Arc<AckQueue>,
    seq: u64,
    done: bool,
}

/// Where ended tokens put their acks. A token ended while the loop is
/// handing out publishes (the usual case: nobody took it) goes into
/// `inline`, which the loop takes right after: no wake-up of the loop's own
/// task, which would have it rescheduled and another worker woken up for
/// every QoS 1 publish. Tokens ended later, by other tasks, go through the
/// channel.
#[derive(Debug)]
pub(crate) struct AckQueue {
    /// `(dispatching, acks)`: one lock, so no ack lands after the loop took them.
    inline: std::sync::Mutex<(bool, Vec<(u64, u8)>)>,
    tx: mpsc::UnboundedSender<(u64, u8)>,
}

impl AckQueue {
    pub(crate) fn new(tx: mpsc::UnboundedSender<(u64, u8)>) -> Self {
        AckQueue {
            inline: std::sync::Mutex::new((false, Vec::new())),
            tx,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, (bool, Vec<(u64, u8)>)> {
        self.inline.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The loop starts handing out publishes.
    pub(crate) fn dispatching(&self) {
        self.lock().0 = true;
    }

    /// The loop is done handing out: the acks of the tokens ended meanwhile.
    pub(crate) fn dispatched(&self, into: &mut Vec<(u64, u8)>) {
        let mut inline = self.lock();
        inline.0 = false;
        into.append(&mut inline.1);
    }

    fn push(&self, ack: (u64, u8)) {
        let mut inline = self.lock();
        if inline.0 {
            inline.1.push(ack);
        } else {
            drop(inline);
            let _ = self.tx.send(ack);
        }
    }
}

impl AckToken {
    /// PUBACK / PUBREC with 0x00.
    pub fn ack(mut self) {
        self.send(0x00);
    }

    /// PUBACK / PUBREC with this code (0x80 and up refuse the publish; codes
    /// the codec cannot carry become 0x80).
    pub fn reject(mut self, code: u8) {
        self.send(code);
    }

    fn send(&mut self, code: u8) {
        self.done = true;
        self.acks.push((self.seq, code));
    }
}

impl Drop for AckToken {
    fn drop(&mut self) {
        if !self.done {
            self.send(0x00);
        }
    }
}

/// What the server told us in CONNACK.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerLimits {
    /// Receive Maximum: QoS 1/2 publishes we may have unacked.
    pub receive_maximum: u16,
    /// Maximum Packet Size (`None`: no limit beyond the protocol's).
    pub max_packet_size: Option<u32>,
    /// Maximum QoS.
    pub max_qos: QoS,
    /// Retain Available.
    pub retain_available: bool,
    /// Topic Alias Maximum (the transport itself never uses aliases).
    pub topic_alias_maximum: u16,
    /// Response Information (MQTT v5 §3.2.2.3.15), if asked for with
    /// [`TransportConfig::request_response_information`] and granted.
    pub response_information: Option<String>,
}

/// State of the link.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConnectionState {
    /// Connecting (first time or after a loss).
    Connecting,
    /// CONNACK accepted.
    Connected {
        /// The broker kept our session (subscriptions and in-flight state).
        /// `false` after a reconnect: subscriptions must be made again.
        session_present: bool,
        /// The server's limits.
        server: ServerLimits,
    },
    /// The link is down.
    Disconnected {
        /// Why.
        error: String,
        /// When the next attempt starts; `None`: the transport has stopped.
        retry_in: Option<Duration>,
        /// The CONNACK's reason code when the server refused the connection
        /// (0x86 bad user name or password, 0x87 not authorized…).
        refused: Option<u8>,
    },
}

/// What [`Incoming`] yields: publishes and state changes, in the order the
/// transport saw them.
#[derive(Debug)]
pub enum Event {
    /// A publish from the broker.
    Publish(IncomingPublish),
    /// The link changed state.
    State(ConnectionState),
}

/// The receiving side of a [`Transport`].
#[derive(Debug)]
pub struct Incoming(mpsc::UnboundedReceiver<Event>);

impl Incoming {
    /// The next event; `None` once the transport has stopped.
    pub async fn recv(&mut self) -> Option<Event> {
        self.0.recv().await
    }

    /// The next publish, skipping state events.
    pub async fn next_publish(&mut self) -> Option<IncomingPublish> {
        loop {
            match self.0.recv().await? {
                Event::Publish(p) => return Some(p),
                Event::State(_) => {}
            }
        }
    }
}

type Reply<T> = oneshot::Sender<Result<T, TransportError>>;

/// Who is told the broker's answer to one publish.
pub(crate) enum AckTo {
    /// A [`PublishAck`] future.
    Future(Reply<ReasonCode>),
    /// A listener, called on the loop's task with the publish's id: no task
    /// to wake when only a refusal matters (a call's answer, which comes
    /// later, wakes its task anyway).
    Listener(std::sync::Arc<dyn AckListener>, u64),
}

impl AckTo {
    /// An ack to await: the [`PublishAck`] it resolves.
    pub(crate) fn future() -> (AckTo, PublishAck) {
        let (tx, rx) = oneshot::channel();
        (AckTo::Future(tx), PublishAck(Answer(rx)))
    }

    pub(super) fn send(self, answer: Result<ReasonCode, TransportError>) {
        match self {
            AckTo::Future(reply) => drop(reply.send(answer)),
            AckTo::Listener(listener, id) => listener.acked(id, answer),
        }
    }
}

/// Told the broker's answer to publishes queued with an
/// [`AckTo::Listener`]. Runs on the loop's task: it must not block.
pub(crate) trait AckListener: Send + Sync {
    fn acked(&self, id: u64, answer: Result<ReasonCode, TransportError>);
}

/// Where the loop hands its events.
#[derive(Clone)]
pub(crate) enum EventSink {
    /// To an [`Incoming`].
    Channel(mpsc::UnboundedSender<Event>),
    /// To a function, on the loop's task.
    Call(std::sync::Arc<dyn Fn(Event) + Send + Sync>),
}

impl EventSink {
    pub(crate) fn send(&self, event: Event) {
        match self {
            EventSink::Channel(tx) => drop(tx.send(event)),
            EventSink::Call(handler) => handler(event),
        }
    }
}

/// A request from a handle to the loop.
enum Command {
    Publish(OutgoingPublish, AckTo),
    Subscribe(
        Vec<Filter>,
        Option<SubscribeProperties>,
        Reply<Vec<ReasonCode>>,
    ),
    Unsubscribe(Vec<String>, Reply<Vec<ReasonCode>>),
    Disconnect(oneshot::Sender<()>),
}

/// Sends to the broker. Cheap to clone; the loop stops (with a DISCONNECT)
/// when every clone is dropped or [`disconnect`](Self::disconnect) is called.
#[derive(Clone)]
pub struct Transport {
    cmd: mpsc::UnboundedSender<Command>,
    state: watch::Receiver<ConnectionState>,
    counts: std::sync::Arc<Counts>,
}

/// What the transport has sent, counted as it goes.
#[derive(Debug, Default)]
pub(crate) struct Counts {
    pub(crate) publishes: std::sync::atomic::AtomicU64,
    pub(crate) merged: std::sync::atomic::AtomicU64,
    pub(crate) merged_parts: std::sync::atomic::AtomicU64,
}

/// Publishes handed to the session loop so far (see
/// [`Connection::publish_counts`](crate::Connection::publish_counts)).
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

    /// Queues a publish whose answer goes to `ack`.
    pub(crate) fn publish_to(&self, publish: OutgoingPublish, ack: AckTo) {
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

/// The shared body of the ack futures.
#[derive(Debug)]
struct Answer<T>(oneshot::Receiver<Result<T, TransportError>>);

impl<T> Future for Answer<T> {
    type Output = Result<T, TransportError>;
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        Pin::new(&mut self.0)
            .poll(cx)
            .map(|r| r.unwrap_or(Err(TransportError::Closed)))
    }
}

macro_rules! answer_future {
    ($(#[$doc:meta])* $name:ident, $t:ty) => {
        $(#[$doc])*
        #[derive(Debug)]
        #[must_use = "the broker's answer is only seen by awaiting it"]
        pub struct $name(Answer<$t>);

        impl Future for $name {
            type Output = Result<$t, TransportError>;
            fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
                Pin::new(&mut self.0).poll(cx)
            }
        }
    };
}

answer_future!(
    /// Resolves to the reason code of one publish (see [`Transport::publish`]).
    /// Dropping it does not cancel the publish.
    PublishAck,
    ReasonCode
);
answer_future!(
    /// Resolves to the SUBACK's codes, one per filter.
    SubAck,
    Vec<ReasonCode>
);
answer_future!(
    /// Resolves to the UNSUBACK's codes, one per filter.
    UnsubAck,
    Vec<ReasonCode>
);
