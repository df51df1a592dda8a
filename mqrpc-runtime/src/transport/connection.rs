//! One MQTT v5 connection shared by every client and server of a process:
//! it drives rumqttc's event loop, routes incoming publishes, waits for
//! SUBACK/UNSUBACK, and reconnects (re-subscribing) after a broker outage.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::time::Duration;

use rumqttc::v5::mqttbytes::v5::{Packet, Publish, PublishProperties};
use rumqttc::v5::{AsyncClient, Event, EventLoop};
use tokio::sync::oneshot;
use tracing::{debug, info, warn};

use crate::client::Caller;
use crate::{Error, QoS};

use super::options::ConnectOptions;
use super::order_acks::{AckKind, AckWaiters, PublishTracker};
use super::routing::{Held, Route, Sink};

pub(crate) struct Shared {
    pub(super) client: AsyncClient,
    pub(super) client_id: String,
    pub(super) broker: String,
    pub(super) options: ConnectOptions,
    pub(super) routes: RwLock<Vec<Route>>,
    pub(super) next_route_id: AtomicU64,
    /// Connected *and* every route re-subscribed: only then can a call's
    /// answer arrive, so calls fail fast while this is false.
    pub(super) ready: AtomicBool,
    pub(super) closed: AtomicBool,
    pub(super) acks: Mutex<AckWaiters>,
    /// Held while a SUBSCRIBE/UNSUBSCRIBE is queued, so waiter order and
    /// request order stay the same.
    pub(super) ack_order: tokio::sync::Mutex<()>,
    /// Held while a QoS 1/2 publish is queued (see [`PublishTracker`]).
    pub(super) publish_order: tokio::sync::Mutex<()>,
    pub(super) publishes: Mutex<PublishTracker>,
    /// With a persistent session, publishes the broker delivers before a
    /// route for them exists again (right after CONNACK) wait here for it.
    pub(super) held: Mutex<Held>,
    /// Response Information from the broker's first CONNACK.
    pub(super) response_information: Mutex<Option<String>>,
    /// Maximum Packet Size from the broker's CONNACK (0: none given).
    pub(super) broker_max_packet: AtomicU32,
    pub(crate) caller: tokio::sync::OnceCell<Arc<Caller>>,
    pub(super) driver: Mutex<Option<tokio::task::JoinHandle<()>>>,
    #[cfg(feature = "embedded-broker")]
    pub(super) _embedded: Option<crate::EmbeddedBroker>,
}

impl Drop for Shared {
    fn drop(&mut self) {
        if let Some(driver) = self.driver.lock().unwrap_or_else(|e| e.into_inner()).take() {
            driver.abort();
        }
    }
}

/// A connection to an MQTT v5 broker, shared by all clients and servers
/// created from it. Cheap to clone; it closes when the last clone is dropped.
///
/// It reconnects by itself after the broker goes away (backoff 100 ms
/// doubling to 5 s) and re-subscribes every client and server. While it is
/// down, calls fail at once with [`Error::Disconnected`] instead of waiting
/// for their timeout.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), mqrpc_runtime::Error> {
/// // With MQRPC_BROKER unset this starts the embedded broker on loopback.
/// let conn = mqrpc_runtime::Connection::from_env_or_embedded().await?;
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
                Self::establish(options, Some(broker)).await
            }
            Err(e) => Err(e),
        }
    }

    /// Connects with explicit options. Fails with [`Error::Connect`] when the
    /// broker is unreachable or refuses the connection.
    pub async fn connect(options: ConnectOptions) -> Result<Connection, Error> {
        Self::establish(
            options,
            #[cfg(feature = "embedded-broker")]
            None,
        )
        .await
    }

    async fn establish(
        options: ConnectOptions,
        #[cfg(feature = "embedded-broker")] embedded: Option<crate::EmbeddedBroker>,
    ) -> Result<Connection, Error> {
        let client_id = options
            .client_id
            .clone()
            .unwrap_or_else(|| format!("mqrpc-{:016x}", random_u64()));
        let (client, eventloop) = AsyncClient::new(
            options.mqtt_options(&client_id)?,
            options.request_channel_capacity,
        );
        let broker = options.broker_address();
        let shared = Arc::new(Shared {
            client,
            client_id,
            broker: broker.clone(),
            options,
            routes: RwLock::new(Vec::new()),
            next_route_id: AtomicU64::new(1),
            ready: AtomicBool::new(false),
            closed: AtomicBool::new(false),
            acks: Mutex::new(AckWaiters::default()),
            ack_order: tokio::sync::Mutex::new(()),
            publish_order: tokio::sync::Mutex::new(()),
            publishes: Mutex::new(PublishTracker::default()),
            held: Mutex::new(Held::default()),
            response_information: Mutex::new(None),
            broker_max_packet: AtomicU32::new(0),
            caller: tokio::sync::OnceCell::new(),
            driver: Mutex::new(None),
            #[cfg(feature = "embedded-broker")]
            _embedded: embedded,
        });
        let (connected_tx, connected_rx) = oneshot::channel();
        let driver = tokio::spawn(drive(Arc::downgrade(&shared), eventloop, connected_tx));
        *shared.driver.lock().unwrap_or_else(|e| e.into_inner()) = Some(driver);
        match connected_rx.await {
            Ok(Ok(())) => Ok(Connection { shared }),
            Ok(Err(error)) => Err(error),
            Err(_) => Err(Error::Connect {
                broker,
                reason: "the connection task ended".into(),
            }),
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
    /// [`Error::Closed`]; later calls fail the same way.
    pub async fn close(&self) {
        if self.shared.closed.swap(true, Ordering::AcqRel) {
            return;
        }
        self.shared.ready.store(false, Ordering::Release);
        if let Some(caller) = self.shared.caller.get() {
            caller.fail_all(&Error::Closed);
        }
        let _ = tokio::time::timeout(Duration::from_secs(1), self.shared.client.disconnect()).await;
        // Give the event loop a moment to send DISCONNECT before stopping it.
        let driver = self
            .shared
            .driver
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some(mut driver) = driver {
            if tokio::time::timeout(Duration::from_millis(500), &mut driver)
                .await
                .is_err()
            {
                driver.abort();
            }
        }
        self.shared
            .acks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .fail_all("connection closed");
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

    /// Adds a route and subscribes to its filter, returning once the broker
    /// has acknowledged the subscription (SUBACK).
    pub(crate) async fn subscribe(
        &self,
        filter: String,
        qos: QoS,
        sink: Sink,
    ) -> Result<u64, Error> {
        self.ensure_open()?;
        let id = self.shared.next_route_id.fetch_add(1, Ordering::Relaxed);
        // Route first: a message may arrive right after the SUBACK. The
        // held queue's lock orders this against `route` (see there).
        let released: Vec<(std::time::Instant, Publish)> = {
            let mut held = self.held();
            self.shared
                .routes
                .write()
                .unwrap_or_else(|e| e.into_inner())
                .push(Route {
                    id,
                    filter: filter.clone(),
                    matcher: crate::protocol::topic::Filter::new(&filter),
                    qos,
                    sink: sink.clone(),
                });
            let (mine, others): (Vec<_>, Vec<_>) = held.publishes.drain(..).partition(|(_, p)| {
                std::str::from_utf8(&p.topic)
                    .is_ok_and(|t| crate::protocol::topic::matches(&filter, t))
            });
            held.publishes = others.into();
            held.bytes -= mine.iter().map(|(_, p)| p.payload.len()).sum::<usize>();
            mine
        };
        for (arrived, mut publish) in released {
            // Count the time held against the Message Expiry Interval, as
            // the broker would have.
            let waited = u32::try_from(arrived.elapsed().as_secs()).unwrap_or(u32::MAX);
            if let Some(expiry) = publish
                .properties
                .as_mut()
                .and_then(|p| p.message_expiry_interval.as_mut())
            {
                if waited >= *expiry {
                    debug!("dropping a held publish that expired while held");
                    continue;
                }
                *expiry -= waited;
            }
            sink(self, publish);
        }
        if let Err(e) = self.subscribe_filter(&filter, qos).await {
            self.remove_route(id);
            return Err(e);
        }
        Ok(id)
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
        self.await_ack(AckKind::Unsubscribe, &filter, || {
            self.shared.client.unsubscribe(filter.clone())
        })
        .await
    }

    fn remove_route(&self, route_id: u64) -> Option<String> {
        let mut routes = self
            .shared
            .routes
            .write()
            .unwrap_or_else(|e| e.into_inner());
        let index = routes.iter().position(|r| r.id == route_id)?;
        Some(routes.remove(index).filter)
    }

    async fn subscribe_filter(&self, filter: &str, qos: QoS) -> Result<(), Error> {
        self.await_ack(AckKind::Subscribe, filter, || {
            self.shared.client.subscribe(filter.to_string(), qos.into())
        })
        .await
    }

    /// Publishes; for QoS 1/2, `call` names the call whose request this is,
    /// so that "no matching subscribers" fails it (see [`PublishTracker`]).
    ///
    /// Usually rumqttc's queue has room and this does not wait (and the
    /// caller's future stays small); when it is full, a task waits for room
    /// in publish order.
    pub(crate) async fn publish(
        &self,
        topic: String,
        qos: QoS,
        payload: bytes::Bytes,
        properties: PublishProperties,
        call: Option<u64>,
    ) -> Result<(), Error> {
        let client = &self.shared.client;
        let (topic, payload, properties) = {
            let mut tracker = self.tracker();
            // With slow publishers waiting, QoS 1/2 publishes queue behind
            // them, or markers and packets would come in different orders.
            if qos == QoS::AtMostOnce || tracker.slow_publishers == 0 {
                match client.try_publish_with_properties(
                    topic,
                    qos.into(),
                    false,
                    payload,
                    properties,
                ) {
                    Ok(()) => {
                        if qos != QoS::AtMostOnce {
                            tracker.markers.push_back(call);
                        }
                        return Ok(());
                    }
                    Err(rumqttc::v5::ClientError::TryRequest(rumqttc::v5::Request::Publish(p))) => {
                        let topic = String::from_utf8_lossy(&p.topic).into_owned();
                        (topic, p.payload, p.properties.unwrap_or_default())
                    }
                    Err(e) => return Err(Error::Mqtt(e.to_string())),
                }
            } else {
                (topic, payload, properties)
            }
        };
        if qos == QoS::AtMostOnce {
            return Box::pin(client.publish_with_properties(
                topic,
                qos.into(),
                false,
                payload,
                properties,
            ))
            .await
            .map_err(|e| Error::Mqtt(e.to_string()));
        }
        self.tracker().slow_publishers += 1;
        // A task, so that a caller dropped meanwhile cannot leave a marker
        // without its packet.
        let conn = self.clone();
        let slow = tokio::spawn(async move {
            let _order = conn.shared.publish_order.lock().await;
            let gone = call.is_some_and(|call| {
                conn.shared
                    .caller
                    .get()
                    .is_some_and(|c| !c.is_pending(call))
            });
            if gone {
                // The call ended (timeout, dropped) while waiting for room:
                // do not send a request nobody waits for.
                conn.tracker().slow_publishers -= 1;
                return Ok(());
            }
            conn.tracker().markers.push_back(call);
            let sent = conn
                .shared
                .client
                .publish_with_properties(topic, qos.into(), false, payload, properties)
                .await;
            let mut tracker = conn.tracker();
            if sent.is_err() {
                tracker.markers.pop_back(); // not queued: no event will take it
            }
            tracker.slow_publishers -= 1;
            sent.map_err(|e| Error::Mqtt(e.to_string()))
        });
        slow.await
            .unwrap_or_else(|e| Err(Error::Mqtt(e.to_string())))
    }

    /// Publishes without waiting: for cancel messages sent from `Drop`.
    pub(crate) fn try_publish_qos0(
        &self,
        topic: String,
        payload: Vec<u8>,
        properties: PublishProperties,
    ) -> Result<(), Error> {
        self.shared
            .client
            .try_publish_with_properties(
                topic,
                rumqttc::v5::mqttbytes::QoS::AtMostOnce,
                false,
                payload,
                properties,
            )
            .map_err(|e| Error::Mqtt(e.to_string()))
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

    /// QoS 2 is refused with a persistent session: rumqttc forgets the
    /// QoS 2 state of incoming messages across reconnects, so the resumed
    /// session would fail on the broker's PUBRELs.
    pub(crate) fn check_qos(&self, qos: QoS) -> Result<(), Error> {
        if qos == QoS::ExactlyOnce && self.shared.options.session_expiry.is_some() {
            return Err(Error::Unsupported {
                what: "QoS 2 on a connection with a persistent session (use QoS 1)".into(),
            });
        }
        Ok(())
    }

    /// The broker's Maximum Packet Size from CONNACK, if it sent one.
    pub(crate) fn broker_max_packet_size(&self) -> Option<u32> {
        match self.shared.broker_max_packet.load(Ordering::Relaxed) {
            0 => None,
            size => Some(size),
        }
    }

    /// After a reconnect (clean start: the broker forgot us), subscribe every
    /// route again, then report ready.
    async fn resubscribe_all(self) {
        let filters: Vec<(String, QoS)> = {
            let routes = self.shared.routes.read().unwrap_or_else(|e| e.into_inner());
            let mut seen = std::collections::HashSet::new();
            routes
                .iter()
                .filter(|r| seen.insert(r.filter.clone()))
                .map(|r| (r.filter.clone(), r.qos))
                .collect()
        };
        for (filter, qos) in filters {
            if let Err(e) = self.subscribe_filter(&filter, qos).await {
                warn!(%filter, error = %e, "re-subscription after reconnect failed");
                return; // the link broke again; the next ConnAck retries
            }
        }
        self.shared.ready.store(true, Ordering::Release);
        info!(broker = %self.shared.broker, "reconnected and re-subscribed");
    }
}

/// The event-loop task. Holds only a weak reference, so dropping the last
/// `Connection` ends it.
async fn drive(
    shared: Weak<Shared>,
    mut eventloop: EventLoop,
    connected: oneshot::Sender<Result<(), Error>>,
) {
    let mut connected = Some(connected);
    let mut backoff = Duration::from_millis(100);
    loop {
        let event = eventloop.poll().await;
        let Some(shared) = shared.upgrade() else {
            return;
        };
        let conn = Connection { shared };
        match event {
            Ok(Event::Incoming(Packet::Publish(publish))) => conn.route(publish),
            Ok(Event::Incoming(Packet::ConnAck(connack))) => {
                backoff = Duration::from_millis(100);
                let max_packet = connack
                    .properties
                    .as_ref()
                    .and_then(|p| p.max_packet_size)
                    .unwrap_or(0);
                conn.shared
                    .broker_max_packet
                    .store(max_packet, Ordering::Relaxed);
                if let Some(first) = connected.take() {
                    let information = connack
                        .properties
                        .as_ref()
                        .and_then(|p| p.response_information.clone());
                    *conn
                        .shared
                        .response_information
                        .lock()
                        .unwrap_or_else(|e| e.into_inner()) = information;
                    conn.shared.ready.store(true, Ordering::Release);
                    let _ = first.send(Ok(()));
                } else {
                    tokio::spawn(conn.resubscribe_all());
                }
            }
            Ok(Event::Incoming(Packet::Disconnect(disconnect))) => {
                warn!(reason = ?disconnect.reason_code, "the broker sent DISCONNECT");
            }
            Ok(event) => {
                conn.track_publish(&event);
                conn.on_ack(&event);
            }
            Err(error) => {
                if conn.shared.closed.load(Ordering::Acquire) {
                    return;
                }
                if let Some(first) = connected.take() {
                    let _ = first.send(Err(connect_error(&conn.shared.broker, error)));
                    return;
                }
                let was_ready = conn.shared.ready.load(Ordering::Acquire);
                conn.on_link_lost(&mut eventloop);
                if was_ready {
                    warn!(broker = %conn.shared.broker, %error, "lost the broker; reconnecting");
                } else {
                    debug!(broker = %conn.shared.broker, %error, "reconnect failed");
                }
                drop(conn);
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    }
}

/// Why the first connection failed, as the caller should see it: refused
/// credentials apart from everything else.
fn connect_error(broker: &str, error: rumqttc::v5::ConnectionError) -> Error {
    use rumqttc::v5::mqttbytes::v5::ConnectReturnCode;
    use rumqttc::v5::ConnectionError;
    match error {
        ConnectionError::ConnectionRefused(ConnectReturnCode::BadUserNamePassword) => {
            Error::AuthFailed {
                broker: broker.to_string(),
                reason: "bad user name or password (CONNACK reason 0x86)".into(),
            }
        }
        ConnectionError::ConnectionRefused(ConnectReturnCode::NotAuthorized) => Error::AuthFailed {
            broker: broker.to_string(),
            reason: "not authorized (CONNACK reason 0x87)".into(),
        },
        ConnectionError::ConnectionRefused(code) => Error::Connect {
            broker: broker.to_string(),
            reason: format!("the broker refused the connection: {code:?}"),
        },
        other => Error::Connect {
            broker: broker.to_string(),
            reason: other.to_string(),
        },
    }
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
