//! One MQTT v5 connection shared by every client and server of a process:
//! it runs the session loop of [`link`](super::link) over the stream
//! [`Dialer`] opens, routes incoming publishes, waits for SUBACK/UNSUBACK,
//! and re-subscribes after a reconnect that lost the session.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use rumqttc::v5::mqttbytes::v5::PublishProperties;
use tokio::sync::oneshot;
use tracing::warn;

use crate::error::{Failure, Refusal};
use crate::{Error, QoS};

use super::dial::Dialer;
use super::link::{
    AckTo, Filter, OutgoingPublish, PublishAck, ReasonCode, Transport, TransportConfig,
    TransportError,
};
use super::options::ConnectOptions;
use super::routing::{Held, Route};

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
    pub(super) served: super::gone::Served,
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
            for instance in super::gone::served_instances(&self.served) {
                let notice = super::gone::notice(&self.options, &instance);
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

impl Connection {
    /// Connects to the broker at `url` (see [`ConnectOptions::from_url`]).
    pub async fn connect_url(url: &str) -> Result<Connection, Error> {
        Self::connect(ConnectOptions::from_url(url)?).await
    }

    /// Connects to the broker named by `MQRPC_BROKER`.
    pub async fn from_env() -> Result<Connection, Error> {
        Self::connect(ConnectOptions::from_env()?).await
    }

    /// Connects to the broker named by `MQRPC_BROKER`, or, when it is unset,
    /// starts an [`EmbeddedBroker`](crate::EmbeddedBroker) on a free
    /// loopback port and connects to it. The broker lives as long as the
    /// connection (get its URL from [`Connection::broker_url`] to connect
    /// other processes or connections to it).
    #[cfg(feature = "embedded-broker")]
    pub async fn from_env_or_embedded() -> Result<Connection, Error> {
        match ConnectOptions::from_env() {
            Ok(options) => Self::connect(options).await,
            Err(Error::BrokerNotConfigured) => {
                let broker = crate::EmbeddedBroker::start().await?;
                let options = ConnectOptions::from_url(&broker.url())?;
                Self::establish(options, None, Some(broker)).await
            }
            Err(e) => Err(e),
        }
    }

    /// Without the `embedded-broker` feature there is no broker to start:
    /// this stand-in connects to the broker `MQRPC_BROKER` names and, when
    /// it is unset, fails with [`Error::Unsupported`] naming the feature.
    /// It is deprecated so that the compiler says so where it is called:
    /// turn the feature on (`cargo add mqrpc -F embedded-broker`) for the
    /// quickstart, or call [`Connection::from_env`] in a service.
    ///
    /// ```
    /// # use mqrpc_runtime as mqrpc;
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// # std::env::remove_var("MQRPC_BROKER");
    /// #[allow(deprecated)]
    /// let err = mqrpc::Connection::from_env_or_embedded().await.unwrap_err();
    /// assert!(err.to_string().contains("`embedded-broker` feature"));
    /// # }
    /// ```
    #[cfg(not(feature = "embedded-broker"))]
    #[deprecated(
        note = "starting an embedded broker needs the `embedded-broker` feature of mqrpc \
                (cargo add mqrpc -F embedded-broker); without it, use Connection::from_env"
    )]
    pub async fn from_env_or_embedded() -> Result<Connection, Error> {
        match ConnectOptions::from_env() {
            Ok(options) => Self::connect(options).await,
            Err(Error::BrokerNotConfigured) => Err(Error::Unsupported {
                what: "an embedded broker without the `embedded-broker` feature of mqrpc: \
                       cargo add mqrpc -F embedded-broker, or set MQRPC_BROKER=mqtt://host:port"
                    .into(),
            }),
            Err(e) => Err(e),
        }
    }

    /// Connects with explicit options. Fails with [`Error::Connect`] when the
    /// broker is unreachable or refuses the connection, and with
    /// [`Error::AuthFailed`] when it refuses the credentials.
    pub async fn connect(options: ConnectOptions) -> Result<Connection, Error> {
        Self::establish(
            options,
            None,
            #[cfg(feature = "embedded-broker")]
            None,
        )
        .await
    }

    /// `will`: the instance its Last Will names (default: its client id).
    pub(super) async fn establish(
        options: ConnectOptions,
        will: Option<&str>,
        #[cfg(feature = "embedded-broker")] embedded: Option<crate::EmbeddedBroker>,
    ) -> Result<Connection, Error> {
        let client_id = options
            .client_id
            .clone()
            .unwrap_or_else(|| format!("mqrpc-{:016x}", random_u64()));
        let dialer = Dialer::new(&options)?;
        let (connected_tx, connected_rx) = oneshot::channel();
        let driver = Arc::new(super::driver::Driver::new(connected_tx));
        let transport =
            Transport::start_with_handler(transport_config(&options, &client_id, will), dialer, {
                let driver = driver.clone();
                move |event| driver.handle(event)
            });
        let broker = options.broker_address();
        let shared = Arc::new(Shared {
            transport,
            client_id,
            broker: broker.clone(),
            options,
            routes: RwLock::new(Vec::new()),
            next_route_id: AtomicU64::new(1),
            ready: AtomicBool::new(false),
            closed: AtomicBool::new(false),
            held: Mutex::new(Held::default()),
            response_information: Mutex::new(None),
            broker_max_packet: AtomicU32::new(0),
            link_lost: Mutex::new(Vec::new()),
            served: Mutex::new(std::collections::HashMap::new()),
            client_state: tokio::sync::OnceCell::new(),
            #[cfg(feature = "embedded-broker")]
            _embedded: embedded,
        });
        driver.attach(Arc::downgrade(&shared));
        let outcome = match connected_rx.await {
            Ok(outcome) => outcome,
            Err(_) => Err(Error::Connect {
                broker,
                reason: "the connection task ended".into(),
            }),
        };
        match outcome {
            Ok(()) => Ok(Connection { shared }),
            Err(error) => {
                // No retries for a connection nobody got.
                shared.closed.store(true, Ordering::Release);
                shared.transport.disconnect().await;
                Err(error)
            }
        }
    }

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

    /// Disconnects from the broker. Calls in flight fail with
    /// [`Error::Closed`]; later calls fail the same way. Before the
    /// DISCONNECT it announces every server instance still running on
    /// this connection as gone (PROTOCOL.md, "Server gone"), so that their
    /// callers' calls end at once: a clean DISCONNECT discards the Will.
    pub async fn close(&self) {
        if self.shared.closed.swap(true, Ordering::AcqRel) {
            return;
        }
        self.shared.ready.store(false, Ordering::Release);
        self.announce_all_gone();
        self.link_lost(&Error::Closed);
        // Writes what is queued, then DISCONNECT; pending acks end `Closed`.
        let _ =
            tokio::time::timeout(Duration::from_secs(1), self.shared.transport.disconnect()).await;
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

    /// Unsubscribes and removes a route.
    pub(crate) async fn unsubscribe(&self, route_id: u64) -> Result<(), Error> {
        let filter = self.remove_route(route_id);
        let Some(filter) = filter else { return Ok(()) };
        let still_needed = self
            .shared
            .routes
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .any(|r| r.filter == filter);
        if still_needed || !self.is_connected() {
            return Ok(());
        }
        let unsubscribed = self.shared.transport.unsubscribe(vec![filter.clone()]);
        match tokio::time::timeout(self.ack_timeout(), unsubscribed).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(Error::Subscribe {
                filter,
                reason: e.to_string(),
            }),
            Err(_) => Err(Error::Subscribe {
                filter,
                reason: format!("no UNSUBACK within {:?}", self.ack_timeout()),
            }),
        }
    }

    pub(super) fn remove_route(&self, route_id: u64) -> Option<String> {
        let mut routes = self
            .shared
            .routes
            .write()
            .unwrap_or_else(|e| e.into_inner());
        let index = routes.iter().position(|r| r.id == route_id)?;
        Some(routes.remove(index).filter)
    }

    pub(super) fn ack_timeout(&self) -> Duration {
        self.shared
            .options
            .connect_timeout
            .max(Duration::from_secs(1))
            * 2
    }

    /// One SUBSCRIBE for all `filters`; fails if the broker refuses any.
    pub(super) async fn subscribe_filters(&self, filters: Vec<(String, QoS)>) -> Result<(), Error> {
        self.subscribe_each(filters).await?.into_iter().collect()
    }

    /// One SUBSCRIBE for all `filters`: the broker's answer for each, or an
    /// error if there was no SUBACK.
    pub(super) async fn subscribe_each(
        &self,
        filters: Vec<(String, QoS)>,
    ) -> Result<Vec<Result<(), Error>>, Error> {
        let first = filters.first().map(|(f, _)| f.clone()).unwrap_or_default();
        let packet = filters
            .iter()
            .map(|(filter, qos)| Filter::new(filter.clone(), (*qos).into()))
            .collect();
        let acked = self.shared.transport.subscribe(packet, None);
        let reason = match tokio::time::timeout(self.ack_timeout(), acked).await {
            Ok(Ok(codes)) => {
                let outcome = |(code, (filter, _)): (&ReasonCode, &(String, QoS))| {
                    if code.is_success() {
                        return Ok(());
                    }
                    Err(Error::Subscribe {
                        filter: filter.clone(),
                        reason: format!("the broker answered {}", describe(*code)),
                    })
                };
                return Ok(codes.iter().zip(&filters).map(outcome).collect());
            }
            Ok(Err(e)) => e.to_string(),
            Err(_) => format!("no SUBACK within {:?}", self.ack_timeout()),
        };
        Err(Error::Subscribe {
            filter: first,
            reason,
        })
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
    pub fn publish_counts(&self) -> super::PublishCounts {
        self.shared.transport.counts()
    }

    /// The broker's Maximum Packet Size from CONNACK, if it sent one.
    pub(crate) fn broker_max_packet_size(&self) -> Option<u32> {
        match self.shared.broker_max_packet.load(Ordering::Relaxed) {
            0 => None,
            size => Some(size),
        }
    }
}

/// The session loop's settings for these options.
fn transport_config(
    options: &ConnectOptions,
    client_id: &str,
    will: Option<&str>,
) -> TransportConfig {
    let mut config = TransportConfig::new(client_id);
    let will = will.map_or_else(
        || crate::protocol::topic::as_level(client_id),
        str::to_string,
    );
    config.last_will = Some(super::gone::last_will(options, &will));
    config.keep_alive = options.keep_alive.max(Duration::from_secs(1));
    config.connect_timeout = options.connect_timeout.max(Duration::from_millis(100));
    config.credentials = options.credentials.clone();
    config.max_packet_size = options.max_packet_size;
    // Ask for Response Information (MQTT v5 §3.1.2.11.7): a broker may
    // grant a topic space for responses.
    config.request_response_information = true;
    config.coalescer = Some(Arc::new(super::coalesce::Batcher));
    match options.session_expiry {
        Some(expiry) => {
            config.clean_start = false;
            config.session_expiry = u32::try_from(expiry.as_secs()).unwrap_or(u32::MAX).max(1);
        }
        None => {
            // Calls whose requests were in flight fail at the link loss:
            // sending those requests again would run calls nobody awaits.
            config.resend_after_session_loss = false;
        }
    }
    config
}

/// What the broker's answer to a request means for its call: 0x10 and
/// codes of 0x80 and up refuse it, a lost link or closed connection fail it.
pub(crate) fn ack_outcome(ack: Result<ReasonCode, TransportError>) -> Result<(), Failure> {
    let refused = |code: u8| {
        Failure::Refused(match code {
            0x10 => Refusal::NoMatchingSubscribers,
            0x87 => Refusal::NotAuthorized,
            code => Refusal::Other(describe(ReasonCode(code))),
        })
    };
    match ack {
        Ok(ReasonCode(code)) if code == 0x10 || code >= 0x80 => Err(refused(code)),
        Ok(_) => Ok(()),
        Err(TransportError::Refused(code)) => Err(refused(code)),
        Err(TransportError::Closed) => Err(Failure::Error(Error::Closed)),
        Err(TransportError::SessionLost | TransportError::ConnectionLost) => {
            Err(Failure::Error(Error::Disconnected))
        }
        Err(TransportError::PacketTooLarge { size, max }) => Err(Failure::Error(Error::TooLarge {
            message: format!(
                "a {size}-byte packet is over the broker's Maximum Packet Size of {max} bytes"
            ),
        })),
        Err(TransportError::QosNotSupported) => Err(Failure::Error(Error::Unsupported {
            what: "a QoS above the broker's Maximum QoS".into(),
        })),
        Err(e @ TransportError::NoPacketId) => Err(Failure::Error(Error::Mqtt(e.to_string()))),
    }
}

/// A reason code with its name (MQTT v5 §2.4).
fn describe(code: ReasonCode) -> String {
    let name = match code.0 {
        0x10 => "no matching subscribers",
        0x80 => "unspecified error",
        0x83 => "implementation specific error",
        0x87 => "not authorized",
        0x8F => "topic filter invalid",
        0x90 => "topic name invalid",
        0x91 => "packet identifier in use",
        0x97 => "quota exceeded",
        0x99 => "payload format invalid",
        0x9E => "shared subscriptions not supported",
        0xA1 => "subscription identifiers not supported",
        0xA2 => "wildcard subscriptions not supported",
        _ => "reason code",
    };
    format!("{name} ({:#04x})", code.0)
}

/// An upper bound of the encoded size of a PUBLISH packet (MQTT v5
/// §3.3): each property is an id byte and its value, strings and binary
/// data with 2 length bytes.
pub(crate) fn publish_size(
    topic: &str,
    payload_len: usize,
    properties: &PublishProperties,
) -> usize {
    let string = |s: &Option<String>| s.as_ref().map_or(0, |s| 3 + s.len());
    let user: usize = properties
        .user_properties
        .iter()
        .map(|(k, v)| 5 + k.len() + v.len())
        .sum();
    // Fixed header (≤ 5), topic length (2), packet id (2), properties
    // length (≤ 4), Payload Format, Message Expiry, Topic Alias (≤ 10).
    const FIXED: usize = 23;
    FIXED
        + topic.len()
        + payload_len
        + string(&properties.response_topic)
        + properties
            .correlation_data
            .as_ref()
            .map_or(0, |c| 3 + c.len())
        + string(&properties.content_type)
        + user
        + 5 * properties.subscription_identifiers.len()
}

/// 64 random bits from the standard library's per-process hasher seed,
/// the time and a counter: unique client ids without a `rand` dependency.
pub(crate) fn random_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
    hasher.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default(),
    );
    hasher.write_u32(std::process::id());
    hasher.finish()
}
