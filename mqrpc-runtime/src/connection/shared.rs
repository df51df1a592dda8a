//! The state of one connection, shared by its clones, the session loop's
//! event handler and the clients and servers on it: [`Connection`] and
//! what it holds (routes, held publishes, served instances), with the
//! accessors and the publish path every layer above uses.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use mqrpc_link::{AckTo, OutgoingPublish, PublishAck, Transport};
use rumqttc::v5::mqttbytes::v5::{Publish, PublishProperties};
use tracing::warn;

use crate::protocol::QoS;
use crate::Error;

use super::options::ConnectOptions;
use super::will::notice;

/// A handler for publishes whose topic matches a route's filter. Runs on the
/// event-loop task: it must not block (spawn or send, never await). It may
/// take the publish's ack token (QoS 1/2) to acknowledge it later; one it
/// leaves is acked when it returns.
pub(crate) type Sink =
    Arc<dyn Fn(&Connection, Publish, &mut Option<mqrpc_link::AckToken>) + Send + Sync>;

/// One subscription's handler.
pub(super) struct Route {
    pub(super) id: u64,
    pub(super) filter: String,
    pub(super) matcher: crate::protocol::topic::Filter,
    pub(super) qos: QoS,
    pub(super) sink: Sink,
}

/// Publishes waiting for their route, with when they arrived.
#[derive(Default)]
pub(super) struct Held {
    pub(super) publishes: std::collections::VecDeque<(std::time::Instant, Publish)>,
    pub(super) bytes: usize,
}

/// The servers running on a connection, by instance id: the notices owed
/// when they stop.
pub(super) type Served = Mutex<HashMap<String, Instance>>;

/// One instance id served on a connection.
#[derive(Default)]
pub(super) struct Instance {
    /// How many servers use it.
    pub(super) servers: usize,
    /// For an instance id other than the connection's own (its client id
    /// as a topic level): the connection whose Last Will is this
    /// instance's notice. Dropping it sends its DISCONNECT (no Will).
    pub(super) will: Option<Connection>,
}

/// The instances with servers on a connection.
pub(super) fn served_instances(served: &Served) -> Vec<String> {
    served
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .keys()
        .cloned()
        .collect()
}

/// Told the error when the link drops or the connection closes (the
/// clients fail their pending calls): the transport knows nothing of calls.
pub(crate) type LinkLost = Box<dyn Fn(&Error) + Send + Sync>;

pub(crate) struct Shared {
    pub(super) transport: Transport,
    pub(super) client_id: String,
    pub(super) broker: String,
    pub(super) options: ConnectOptions,
    pub(super) routes: RwLock<Vec<Route>>,
    pub(super) next_route_id: AtomicU64,
    /// Connected *and* every route subscribed: only then can a call's
    /// answer arrive, so calls fail fast while this is false.
    pub(super) ready: AtomicBool,
    pub(super) closed: AtomicBool,
    /// With a persistent session, publishes the broker delivers before a
    /// route for them exists again (right after CONNACK) wait here for it.
    pub(super) held: Mutex<Held>,
    /// Response Information from the broker's first CONNACK.
    pub(super) response_information: Mutex<Option<String>>,
    /// Maximum Packet Size from the broker's CONNACK (0: none given).
    pub(super) broker_max_packet: AtomicU32,
    pub(super) link_lost: Mutex<Vec<LinkLost>>,
    /// Instance ids of the servers running on this connection, with how
    /// many servers use each: the notices owed when they stop.
    pub(super) served: Served,
    /// What the client layer keeps per connection (its pending calls),
    /// opaque here so that the transport does not depend on the client.
    pub(crate) client_state: tokio::sync::OnceCell<Arc<dyn std::any::Any + Send + Sync>>,
    #[cfg(feature = "embedded-broker")]
    pub(super) _embedded: Option<crate::EmbeddedBroker>,
}

impl Drop for Shared {
    fn drop(&mut self) {
        // The transport ends with a DISCONNECT, which discards the Will:
        // announce the instances still served first (queued before it).
        if !self.closed.load(Ordering::Acquire) {
            for instance in served_instances(&self.served) {
                let notice = notice(&self.options, &instance);
                drop(self.transport.publish(notice));
            }
        }
    }
}

/// A connection to an MQTT v5 broker, shared by all clients and servers
/// created from it. Cheap to clone; it closes when the last clone is dropped.
///
/// It reconnects by itself after the broker goes away (backoff 100 ms
/// doubling to 5 s) and re-subscribes every client and server when the
/// broker did not keep the session. While it is down, calls fail at once
/// with [`Error::Disconnected`] instead of waiting for their timeout.
///
/// ```
/// # use mqrpc_runtime as mqrpc;
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), mqrpc::Error> {
/// // With MQRPC_BROKER unset this starts the embedded broker on loopback.
/// let conn = mqrpc::Connection::from_env_or_embedded().await?;
/// assert!(conn.is_connected());
/// conn.close().await;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Connection {
    pub(crate) shared: Arc<Shared>,
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection")
            .field("broker", &self.shared.broker)
            .field("client_id", &self.shared.client_id)
            .field("connected", &self.is_connected())
            .finish()
    }
}

/// Publishes handed to the session loop so far (see
/// [`Connection::publish_counts`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PublishCounts {
    /// PUBLISH packets queued for the broker (a batch counts once).
    pub publishes: u64,
    /// How many of them were batches of several requests or answers.
    pub merged: u64,
    /// How many requests or answers those batches carried.
    pub merged_parts: u64,
}

impl Connection {
    /// True while the broker link is up and all subscriptions are in place.
    pub fn is_connected(&self) -> bool {
        self.shared.ready.load(Ordering::Acquire) && !self.shared.closed.load(Ordering::Acquire)
    }

    /// The MQTT client id of this connection.
    pub fn client_id(&self) -> &str {
        &self.shared.client_id
    }

    /// `mqtt://host:port` (or `mqtts://`, `ws://host:port/path`,
    /// `wss://`) of the broker, without credentials or TLS files.
    pub fn broker_url(&self) -> String {
        self.shared.options.endpoint()
    }

    /// The options this connection was made with.
    pub fn options(&self) -> &ConnectOptions {
        &self.shared.options
    }

    /// Registers what to do when the link drops or the connection closes.
    pub(crate) fn on_link_lost(&self, listener: LinkLost) {
        self.shared
            .link_lost
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(listener);
    }

    pub(super) fn link_lost(&self, error: &Error) {
        let listeners = self
            .shared
            .link_lost
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        for listener in listeners.iter() {
            listener(error);
        }
    }

    pub(crate) fn ensure_open(&self) -> Result<(), Error> {
        if self.shared.closed.load(Ordering::Acquire) {
            Err(Error::Closed)
        } else if !self.shared.ready.load(Ordering::Acquire) {
            Err(Error::Disconnected)
        } else {
            Ok(())
        }
    }

    pub(super) fn ack_timeout(&self) -> Duration {
        self.shared
            .options
            .connect_timeout
            .max(Duration::from_secs(1))
            * 2
    }

    /// Queues a publish. The returned future resolves with the broker's
    /// answer to *this* publish (see [`ack_outcome`]); dropping it does not
    /// cancel the publish. `batch`: it may travel in a batch frame with
    /// others queued at the same time (a unary request to a target that
    /// answered a batch probe, or the answer to a request that came in a
    /// batch).
    pub(crate) fn publish(
        &self,
        topic: String,
        qos: QoS,
        payload: bytes::Bytes,
        properties: PublishProperties,
        batch: bool,
    ) -> PublishAck {
        let (ack, acked) = AckTo::future();
        self.publish_to(topic, qos, payload, properties, batch, ack);
        acked
    }

    /// Queues a publish like [`publish`](Self::publish), but hands the
    /// broker's answer to `ack` (an [`AckTo::Listener`], on the loop's task):
    /// a call that needs its ack only to see a refusal then wakes once, for
    /// its answer.
    pub(crate) fn publish_to(
        &self,
        topic: String,
        qos: QoS,
        payload: bytes::Bytes,
        properties: PublishProperties,
        batch: bool,
        ack: AckTo,
    ) {
        let publish = OutgoingPublish {
            topic: topic.into(),
            qos: qos.into(),
            retain: false,
            payload,
            properties: Some(properties),
            coalesce: batch,
        };
        self.shared.transport.publish_to(publish, ack);
    }

    /// The one response topic of this connection: under the broker's
    /// Response Information if it gave one (or one is assumed), else
    /// `<reply_prefix>/_reply/<client id>`.
    pub fn reply_topic(&self) -> String {
        let client = crate::protocol::topic::as_level(&self.shared.client_id);
        let granted = self
            .shared
            .response_information
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
            .or_else(|| self.shared.options.assumed_response_information.clone());
        if let Some(base) = granted {
            let topic = format!("{}/{client}", base.trim_end_matches('/'));
            if crate::protocol::topic::is_publishable(&topic) {
                return topic;
            }
            warn!(%topic, "unusable Response Information; using the default response topic");
        }
        crate::protocol::topic::reply_topic(
            &self.shared.options.reply_prefix,
            &self.shared.client_id,
        )
    }

    /// How many PUBLISH packets this connection has sent, and how many of
    /// them were batches (PROTOCOL.md, "Batches"): requests and answers
    /// that were queued together travel as one message.
    ///
    /// ```
    /// # use mqrpc_runtime as mqrpc;
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), mqrpc::Error> {
    /// let conn = mqrpc::Connection::from_env_or_embedded().await?;
    /// let counts = conn.publish_counts();
    /// assert!(counts.merged_parts >= counts.merged);
    /// # Ok(()) }
    /// ```
    pub fn publish_counts(&self) -> PublishCounts {
        let counts = self.shared.transport.counts();
        PublishCounts {
            publishes: counts.publishes,
            merged: counts.merged,
            merged_parts: counts.merged_parts,
        }
    }

    /// The broker's Maximum Packet Size from CONNACK, if it sent one.
    pub(crate) fn broker_max_packet_size(&self) -> Option<u32> {
        match self.shared.broker_max_packet.load(Ordering::Relaxed) {
            0 => None,
            size => Some(size),
        }
    }
}
