//! One MQTT v5 connection shared by every client and server of a process:
//! it drives rumqttc's event loop, routes incoming publishes, waits for
//! SUBACK/UNSUBACK, and reconnects (re-subscribing) after a broker outage.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::time::Duration;

use rumqttc::v5::mqttbytes::v5::{
    Packet, PubAckReason, PubRecReason, Publish, PublishProperties, SubscribeReasonCode,
};
use rumqttc::v5::{AsyncClient, Event, EventLoop, MqttOptions};
use rumqttc::Outgoing;
use tokio::sync::oneshot;
use tracing::{debug, info, warn};

use crate::client::Caller;
use crate::error::Refusal;
use crate::protocol::BROKER_ENV;
use crate::transport::tls::TlsSettings;
use crate::{Error, QoS};

/// Where and how to connect.
///
/// ```
/// use mqrpc_runtime::ConnectOptions;
/// let opts = ConnectOptions::from_url("mqtt://alice:secret@127.0.0.1:1884?client_id=billing-1").unwrap();
/// assert_eq!(opts.broker_address(), "127.0.0.1:1884");
/// assert_eq!(opts.get_client_id(), Some("billing-1"));
/// assert!(ConnectOptions::from_url("http://x").is_err());
/// ```
#[derive(Clone)]
pub struct ConnectOptions {
    host: String,
    port: u16,
    client_id: Option<String>,
    credentials: Option<(String, String)>,
    keep_alive: Duration,
    connect_timeout: Duration,
    max_packet_size: u32,
    tcp_nodelay: bool,
    request_channel_capacity: usize,
    max_pending_calls: usize,
    session_expiry: Option<Duration>,
    reply_prefix: String,
    assumed_response_information: Option<String>,
    tls: Option<TlsSettings>,
    /// MQTT over WebSocket: the HTTP path of the broker's endpoint.
    websocket_path: Option<String>,
}

// By hand: the password and an inline client key must not reach logs.
impl std::fmt::Debug for ConnectOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnectOptions")
            .field("broker", &self.broker_address())
            .field("client_id", &self.client_id)
            .field("user", &self.credentials.as_ref().map(|(user, _)| user))
            .field("tls", &self.tls.as_ref().map(TlsSettings::redacted))
            .field("websocket_path", &self.websocket_path)
            .field("keep_alive", &self.keep_alive)
            .field("connect_timeout", &self.connect_timeout)
            .field("max_packet_size", &self.max_packet_size)
            .field("tcp_nodelay", &self.tcp_nodelay)
            .field("max_pending_calls", &self.max_pending_calls)
            .field("session_expiry", &self.session_expiry)
            .field("reply_prefix", &self.reply_prefix)
            .field(
                "assumed_response_information",
                &self.assumed_response_information,
            )
            .finish()
    }
}

impl ConnectOptions {
    /// Defaults: random client id, keep-alive 30 s, connect timeout 5 s,
    /// max packet 4 MiB, TCP_NODELAY on, 100 000 calls in flight at most.
    pub fn new(host: impl Into<String>, port: u16) -> Self {
        ConnectOptions {
            host: host.into(),
            port,
            client_id: None,
            credentials: None,
            keep_alive: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(5),
            max_packet_size: 4 * 1024 * 1024,
            tcp_nodelay: true,
            request_channel_capacity: 1024,
            max_pending_calls: 100_000,
            session_expiry: None,
            reply_prefix: crate::protocol::DEFAULT_PREFIX.to_string(),
            assumed_response_information: None,
            tls: None,
            websocket_path: None,
        }
    }

    /// Parses `mqtt://[user[:password]@]host[:port][?client_id=ID]`
    /// (`tcp://` is accepted too; the port defaults to 1883) and, with the
    /// `tls` feature, `mqtts://…` (also `ssl://`; port 8883 by default)
    /// with the query parameters `ca=<PEM file>` (trust only these CAs
    /// instead of the system's roots) and `cert=<PEM file>&key=<PEM file>`
    /// (a client certificate). With the `websocket` feature,
    /// `ws://host[:port]/path` (port 80) and, with `tls` too,
    /// `wss://host[:port]/path` (port 443, same query parameters) speak
    /// MQTT over a WebSocket. User, password and query values are
    /// percent-decoded (`+` stays `+`).
    pub fn from_url(url: &str) -> Result<Self, Error> {
        let invalid = |reason: &str| Error::InvalidUrl {
            url: url.to_string(),
            reason: reason.to_string(),
        };
        let parsed = url::Url::parse(url).map_err(|e| invalid(&e.to_string()))?;
        let scheme = Scheme::parse(parsed.scheme())
            .ok_or_else(|| invalid("the scheme must be mqtt://, mqtts://, ws:// or wss://"))?;
        let (tls, websocket) = (scheme.is_tls(), scheme.is_websocket());
        if tls && !cfg!(feature = "tls") {
            return Err(invalid(&format!(
                "{}:// needs the `tls` feature of mqrpc (cargo add mqrpc -F tls)",
                parsed.scheme()
            )));
        }
        if websocket && !cfg!(feature = "websocket") {
            return Err(invalid(&format!(
                "{}:// needs the `websocket` feature of mqrpc (cargo add mqrpc -F websocket)",
                parsed.scheme()
            )));
        }
        let (host, port) = host_and_port(&parsed, scheme).ok_or_else(|| invalid("no host"))?;
        let mut opts = ConnectOptions::new(host, port);
        if websocket {
            opts.websocket_path = Some(parsed.path().to_string());
        }
        if !parsed.username().is_empty() {
            let user = decode_component(parsed.username());
            let password = decode_component(parsed.password().unwrap_or(""));
            opts.credentials = Some((user, password));
        }
        let mut settings = TlsSettings::default();
        let (mut cert, mut key) = (None, None);
        // Percent-decoding only: form decoding would turn `+` in a file
        // name into a space.
        let pairs = parsed
            .query()
            .unwrap_or("")
            .split('&')
            .filter(|p| !p.is_empty());
        for pair in pairs {
            let (key_name, value) = pair.split_once('=').unwrap_or((pair, ""));
            let (key_name, value) = (decode_component(key_name), decode_component(value));
            let file = || crate::transport::tls::Pem::File(value.as_str().into());
            match key_name.as_str() {
                "client_id" => opts.client_id = Some(value.clone()),
                "ca" if tls => settings.roots = crate::transport::tls::Roots::Ca(file()),
                "cert" if tls => cert = Some(file()),
                "key" if tls => key = Some(file()),
                "ca" | "cert" | "key" => {
                    return Err(invalid(&format!("`{key_name}` needs mqtts:// or wss://")))
                }
                other => return Err(invalid(&format!("unknown query parameter `{other}`"))),
            }
        }
        settings.client_cert = match (cert, key) {
            (Some(cert), Some(key)) => Some((cert, key)),
            (None, None) => None,
            _ => return Err(invalid("`cert` and `key` go together")),
        };
        if tls {
            opts.tls = Some(settings);
        }
        Ok(opts)
    }

    /// Reads the broker URL from the `MQRPC_BROKER` environment variable.
    pub fn from_env() -> Result<Self, Error> {
        match std::env::var(BROKER_ENV) {
            Ok(url) if !url.trim().is_empty() => Self::from_url(url.trim()),
            _ => Err(Error::BrokerNotConfigured),
        }
    }

    /// Sets the MQTT client id (default: `mqrpc-` and 16 random hex digits).
    pub fn client_id(mut self, id: impl Into<String>) -> Self {
        self.client_id = Some(id.into());
        self
    }

    /// Sets username and password.
    pub fn credentials(mut self, username: impl Into<String>, password: impl Into<String>) -> Self {
        self.credentials = Some((username.into(), password.into()));
        self
    }

    /// Connects over TLS, trusting the system's root certificates (the
    /// `tls_ca_*` methods narrow this to given CAs). Feature `tls`, like
    /// the other `tls_*` methods.
    ///
    /// ```
    /// use mqrpc_runtime::ConnectOptions;
    /// let opts = ConnectOptions::new("broker.example.com", 8883)
    ///     .tls()
    ///     .credentials("billing", "s3cret");
    /// assert!(opts.is_tls());
    /// // The same from a URL (also what MQRPC_BROKER takes):
    /// let url = ConnectOptions::from_url("mqtts://billing:s3cret@broker.example.com?ca=/etc/mqtt/ca.pem").unwrap();
    /// assert!(url.is_tls());
    /// assert_eq!(url.broker_address(), "broker.example.com:8883");
    /// ```
    #[cfg(feature = "tls")]
    pub fn tls(mut self) -> Self {
        self.tls.get_or_insert_with(TlsSettings::default);
        self
    }

    /// Connects over TLS, trusting only the CA certificates in this PEM
    /// file (read when connecting).
    #[cfg(feature = "tls")]
    pub fn tls_ca_file(mut self, path: impl Into<std::path::PathBuf>) -> Self {
        self.tls.get_or_insert_with(TlsSettings::default).roots =
            crate::transport::tls::Roots::Ca(crate::transport::tls::Pem::File(path.into()));
        self
    }

    /// Connects over TLS, trusting only the CA certificates in this PEM text.
    #[cfg(feature = "tls")]
    pub fn tls_ca_pem(mut self, pem: impl Into<Vec<u8>>) -> Self {
        self.tls.get_or_insert_with(TlsSettings::default).roots =
            crate::transport::tls::Roots::Ca(crate::transport::tls::Pem::Bytes(pem.into()));
        self
    }

    /// Connects over TLS and presents this client certificate (PEM chain
    /// file and PEM private key file, read when connecting).
    #[cfg(feature = "tls")]
    pub fn tls_client_cert_files(
        mut self,
        cert: impl Into<std::path::PathBuf>,
        key: impl Into<std::path::PathBuf>,
    ) -> Self {
        self.tls
            .get_or_insert_with(TlsSettings::default)
            .client_cert = Some((
            crate::transport::tls::Pem::File(cert.into()),
            crate::transport::tls::Pem::File(key.into()),
        ));
        self
    }

    /// Connects over TLS and presents this client certificate (PEM texts).
    #[cfg(feature = "tls")]
    pub fn tls_client_cert_pem(
        mut self,
        cert: impl Into<Vec<u8>>,
        key: impl Into<Vec<u8>>,
    ) -> Self {
        self.tls
            .get_or_insert_with(TlsSettings::default)
            .client_cert = Some((
            crate::transport::tls::Pem::Bytes(cert.into()),
            crate::transport::tls::Pem::Bytes(key.into()),
        ));
        self
    }

    /// True when this connection uses TLS (`mqtts://`, `wss://`).
    pub fn is_tls(&self) -> bool {
        self.tls.is_some()
    }

    /// Speaks MQTT over a WebSocket to the broker's endpoint at `path`
    /// (e.g. `/mqtt`), as `ws://host:port/path`, or `wss://` together
    /// with the `tls*` settings. Feature `websocket`.
    ///
    /// ```
    /// use mqrpc_runtime::ConnectOptions;
    /// let opts = ConnectOptions::new("broker.example.com", 80).websocket("/mqtt");
    /// assert!(opts.is_websocket());
    /// let url = ConnectOptions::from_url("ws://broker.example.com/mqtt").unwrap();
    /// assert!(url.is_websocket());
    /// assert_eq!(url.broker_address(), "broker.example.com:80");
    /// ```
    #[cfg(feature = "websocket")]
    pub fn websocket(mut self, path: impl Into<String>) -> Self {
        let path = path.into();
        self.websocket_path = Some(if path.starts_with('/') {
            path
        } else {
            format!("/{path}")
        });
        self
    }

    /// True when this connection speaks MQTT over a WebSocket.
    pub fn is_websocket(&self) -> bool {
        self.websocket_path.is_some()
    }

    /// Sets the MQTT keep-alive interval (default 30 s).
    pub fn keep_alive(mut self, interval: Duration) -> Self {
        self.keep_alive = interval;
        self
    }

    /// Sets how long connecting may take (default 5 s, whole seconds, at least 1).
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// Sets the largest packet this client accepts (default 4 MiB).
    pub fn max_packet_size(mut self, bytes: u32) -> Self {
        self.max_packet_size = bytes;
        self
    }

    /// Turns TCP_NODELAY on or off (default on: with Nagle's algorithm a
    /// round trip costs ~40 ms instead of ~0.1 ms).
    pub fn tcp_nodelay(mut self, nodelay: bool) -> Self {
        self.tcp_nodelay = nodelay;
        self
    }

    /// Sets how many calls may wait for answers at once on this connection
    /// (default 100 000); one more fails with [`Error::TooManyPending`].
    pub fn max_pending_calls(mut self, limit: usize) -> Self {
        self.max_pending_calls = limit.max(1);
        self
    }

    /// Keeps the MQTT session on the broker for `expiry` after the link
    /// drops (Clean Start 0 + Session Expiry Interval): subscriptions
    /// survive a reconnect and QoS 1/2 requests sent to a server while it
    /// was away are delivered when it is back — also to a restarted
    /// process with the same [`client_id`](Self::client_id): what arrives
    /// before its server is serving again waits (up to 10 000 messages and
    /// 16 MiB) until it is, its wait counted against its Message Expiry
    /// Interval.
    /// Default: none (clean start; the connection re-subscribes after every
    /// reconnect). QoS 2 is refused on such a connection
    /// ([`Error::Unsupported`]).
    pub fn session_expiry(mut self, expiry: Duration) -> Self {
        self.session_expiry = Some(expiry);
        self
    }

    /// Prefix of this connection's response topic when the broker gives no
    /// Response Information: `<reply_prefix>/_reply/<client id>` (default
    /// `mqrpc`). Set it to the tenant's prefix when ACLs confine a client
    /// to it.
    pub fn reply_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.reply_prefix = prefix.into();
        self
    }

    /// The Response Information to use when the broker's CONNACK carries
    /// none (mqrpc asks for it in CONNECT). With Response Information `R`
    /// the response topic is `R/<client id>`.
    pub fn assume_response_information(mut self, information: impl Into<String>) -> Self {
        self.assumed_response_information = Some(information.into());
        self
    }

    /// `host:port` of the broker.
    pub fn broker_address(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }

    /// The configured limit of calls waiting for answers.
    pub fn max_pending_calls_limit(&self) -> usize {
        self.max_pending_calls
    }

    /// The configured client id, if one was set.
    pub fn get_client_id(&self) -> Option<&str> {
        self.client_id.as_deref()
    }

    /// How this connects: TLS or not, WebSocket or not.
    fn scheme(&self) -> Scheme {
        match (self.tls.is_some(), self.websocket_path.is_some()) {
            (false, false) => Scheme::Mqtt,
            (true, false) => Scheme::Mqtts,
            (false, true) => Scheme::Ws,
            (true, true) => Scheme::Wss,
        }
    }

    /// The broker's host (IPv6 without brackets), for the TLS server name.
    #[cfg(feature = "tls")]
    pub(crate) fn host(&self) -> &str {
        &self.host
    }

    /// The broker's port.
    #[cfg(feature = "tls")]
    pub(crate) fn port(&self) -> u16 {
        self.port
    }

    /// The TLS settings (`None`: no TLS).
    #[cfg(feature = "tls")]
    pub(crate) fn tls_settings(&self) -> Option<&TlsSettings> {
        self.tls.as_ref()
    }

    /// `ws://host:port/path` or `wss://…` (`None`: not WebSocket).
    #[cfg(feature = "websocket")]
    pub(crate) fn websocket_endpoint(&self) -> Option<String> {
        self.websocket_path.as_ref().map(|_| self.endpoint())
    }

    /// `<scheme>://host:port[/path]`, without credentials or TLS files.
    fn endpoint(&self) -> String {
        let path = self.websocket_path.as_deref().unwrap_or("");
        format!(
            "{}://{}{path}",
            self.scheme().as_str(),
            self.broker_address()
        )
    }

    fn mqtt_options(&self, client_id: &str) -> Result<MqttOptions, Error> {
        // rumqttc takes a WebSocket endpoint's whole URL as its "host".
        let host = match self.websocket_path {
            Some(_) => self.endpoint(),
            None => self.host.clone(),
        };
        let mut mqtt = MqttOptions::new(client_id, host, self.port);
        mqtt.set_keep_alive(self.keep_alive.max(Duration::from_secs(1)));
        match self.session_expiry {
            Some(expiry) => {
                mqtt.set_clean_start(false);
                let seconds = u32::try_from(expiry.as_secs()).unwrap_or(u32::MAX);
                mqtt.set_session_expiry_interval(Some(seconds.max(1)));
            }
            None => {
                mqtt.set_clean_start(true);
            }
        }
        mqtt.set_max_packet_size(Some(self.max_packet_size));
        mqtt.set_request_channel_capacity(self.request_channel_capacity);
        mqtt.set_connection_timeout(self.connect_timeout.as_secs().max(1));
        if let Some((user, password)) = &self.credentials {
            mqtt.set_credentials(user.clone(), password.clone());
        }
        // Ask for Response Information (MQTT v5 §3.1.2.11.7): a broker may
        // grant a topic space for responses.
        mqtt.set_request_response_info(Some(1));
        let mut network = rumqttc::NetworkOptions::new();
        network.set_tcp_nodelay(self.tcp_nodelay);
        mqtt.set_network_options(network);
        #[cfg(feature = "tls")]
        if let Some(tls) = &self.tls {
            let config = tls.client_config()?;
            mqtt.set_transport(rumqttc::Transport::tls_with_config(
                rumqttc::TlsConfiguration::Rustls(Arc::new(config)),
            ));
        }
        #[cfg(feature = "websocket")]
        if self.websocket_path.is_some() {
            mqtt.set_transport(match mqtt.transport() {
                #[cfg(feature = "tls")]
                rumqttc::Transport::Tls(config) => rumqttc::Transport::Wss(config),
                _ => rumqttc::Transport::Ws,
            });
        }
        Ok(mqtt)
    }
}

/// The URL schemes of a broker (`tcp://` and `ssl://` are aliases).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Scheme {
    Mqtt,
    Mqtts,
    Ws,
    Wss,
}

impl Scheme {
    pub(crate) fn parse(scheme: &str) -> Option<Scheme> {
        match scheme {
            "mqtt" | "tcp" => Some(Scheme::Mqtt),
            "mqtts" | "ssl" => Some(Scheme::Mqtts),
            "ws" => Some(Scheme::Ws),
            "wss" => Some(Scheme::Wss),
            _ => None,
        }
    }

    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Scheme::Mqtt => "mqtt",
            Scheme::Mqtts => "mqtts",
            Scheme::Ws => "ws",
            Scheme::Wss => "wss",
        }
    }

    pub(crate) fn is_tls(self) -> bool {
        matches!(self, Scheme::Mqtts | Scheme::Wss)
    }

    pub(crate) fn is_websocket(self) -> bool {
        matches!(self, Scheme::Ws | Scheme::Wss)
    }

    fn default_port(self) -> u16 {
        match self {
            Scheme::Mqtt => 1883,
            Scheme::Mqtts => 8883,
            Scheme::Ws => 80,
            Scheme::Wss => 443,
        }
    }
}

/// Host (without the brackets `Url` keeps on IPv6 literals, which the
/// socket layer does not want) and port of a broker URL, the scheme's
/// default port when it names none; `None` without a host.
pub(crate) fn host_and_port(parsed: &url::Url, scheme: Scheme) -> Option<(String, u16)> {
    let host = parsed.host_str().filter(|h| !h.is_empty())?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    Some((
        host.to_string(),
        parsed.port().unwrap_or(scheme.default_port()),
    ))
}

/// Undoes the URL's percent-encoding of user and password (`+` stays `+`).
fn decode_component(s: &str) -> String {
    percent_encoding::percent_decode_str(s)
        .decode_utf8_lossy()
        .into_owned()
}

/// Publishes held for routes not (yet) registered, with a persistent
/// session: at most this many, and this many payload bytes.
const MAX_HELD: usize = 10_000;
const MAX_HELD_BYTES: usize = 16 * 1024 * 1024;

/// Publishes waiting for their route, with when they arrived.
#[derive(Default)]
struct Held {
    publishes: VecDeque<(std::time::Instant, Publish)>,
    bytes: usize,
}

/// A handler for publishes whose topic matches a route's filter. Runs on the
/// event-loop task: it must not block (spawn or send, never await).
pub(crate) type Sink = Arc<dyn Fn(&Connection, Publish) + Send + Sync>;

struct Route {
    id: u64,
    filter: String,
    matcher: crate::protocol::topic::Filter,
    qos: QoS,
    sink: Sink,
}

type AckSender = oneshot::Sender<Result<(), String>>;

/// SUBSCRIBE/UNSUBSCRIBE requests waiting for their ack. rumqttc assigns the
/// packet id inside its event loop and reports it as an `Outgoing` event in
/// request order, so waiters queue in that order until their id is known.
#[derive(Default)]
struct AckWaiters {
    queued_subscribe: VecDeque<AckSender>,
    queued_unsubscribe: VecDeque<AckSender>,
    subscribe: HashMap<u16, AckSender>,
    unsubscribe: HashMap<u16, AckSender>,
}

impl AckWaiters {
    fn fail_all(&mut self, error: &str) {
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
struct PublishTracker {
    markers: VecDeque<Option<u64>>,
    /// The marker of a publish rumqttc parked on a packet-id collision
    /// (`Outgoing::AwaitAck`); its `Outgoing::Publish` comes later.
    collision: Option<Option<u64>>,
    by_packet_id: HashMap<u16, u64>,
    /// Publishes waiting for room in rumqttc's queue.
    slow_publishers: usize,
}

pub(crate) struct Shared {
    client: AsyncClient,
    client_id: String,
    broker: String,
    options: ConnectOptions,
    routes: RwLock<Vec<Route>>,
    next_route_id: AtomicU64,
    /// Connected *and* every route re-subscribed: only then can a call's
    /// answer arrive, so calls fail fast while this is false.
    ready: AtomicBool,
    closed: AtomicBool,
    acks: Mutex<AckWaiters>,
    /// Held while a SUBSCRIBE/UNSUBSCRIBE is queued, so waiter order and
    /// request order stay the same.
    ack_order: tokio::sync::Mutex<()>,
    /// Held while a QoS 1/2 publish is queued (see [`PublishTracker`]).
    publish_order: tokio::sync::Mutex<()>,
    publishes: Mutex<PublishTracker>,
    /// With a persistent session, publishes the broker delivers before a
    /// route for them exists again (right after CONNACK) wait here for it.
    held: Mutex<Held>,
    /// Response Information from the broker's first CONNACK.
    response_information: Mutex<Option<String>>,
    /// Maximum Packet Size from the broker's CONNACK (0: none given).
    broker_max_packet: AtomicU32,
    pub(crate) caller: tokio::sync::OnceCell<Arc<Caller>>,
    driver: Mutex<Option<tokio::task::JoinHandle<()>>>,
    #[cfg(feature = "embedded-broker")]
    _embedded: Option<crate::EmbeddedBroker>,
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

    async fn await_ack<F, Fut>(&self, kind: AckKind, filter: &str, send: F) -> Result<(), Error>
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

    fn tracker(&self) -> std::sync::MutexGuard<'_, PublishTracker> {
        self.shared
            .publishes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    /// Follows packet ids of QoS 1/2 publishes to their acknowledgements.
    fn track_publish(&self, event: &Event) {
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

    fn route(&self, publish: Publish) {
        let Ok(topic) = std::str::from_utf8(&publish.topic) else {
            warn!("dropping a publish whose topic is not UTF-8");
            return;
        };
        // Every route that wants it, each sink once: servers of several
        // services on one connection share the discovery filter, while one
        // server's shared and cancel filters may both match a cancel.
        let find = || {
            let routes = self.shared.routes.read().unwrap_or_else(|e| e.into_inner());
            let mut matching = routes
                .iter()
                .filter(|r| r.matcher.matches(topic))
                .map(|r| &r.sink);
            let first = matching.next()?.clone();
            let mut more: Vec<Sink> = Vec::new(); // allocates only if needed
            for sink in matching {
                if !Arc::ptr_eq(sink, &first) && !more.iter().any(|s| Arc::ptr_eq(s, sink)) {
                    more.push(sink.clone());
                }
            }
            Some((first, more))
        };
        let deliver = |(first, more): (Sink, Vec<Sink>), publish: Publish| {
            for sink in &more {
                sink(self, publish.clone());
            }
            first(self, publish);
        };
        if self.shared.options.session_expiry.is_none() {
            match find() {
                Some(sinks) => deliver(sinks, publish),
                None => debug!(topic, "dropping a publish no route wants"),
            }
            return;
        }
        // Persistent session: the broker may deliver what it kept for us
        // before the server has re-registered; hold it until it does.
        let mut held = self.held();
        match find() {
            Some(sinks) => {
                drop(held);
                deliver(sinks, publish)
            }
            None if held.publishes.len() < MAX_HELD
                && held.bytes + publish.payload.len() <= MAX_HELD_BYTES =>
            {
                held.bytes += publish.payload.len();
                held.publishes
                    .push_back((std::time::Instant::now(), publish));
            }
            None => warn!(topic, "dropping a publish no route wants (held queue full)"),
        }
    }

    fn held(&self) -> std::sync::MutexGuard<'_, Held> {
        self.shared.held.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn on_link_lost(&self, eventloop: &mut EventLoop) {
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
    fn discard_unsent(&self, eventloop: &mut EventLoop) {
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

    fn on_ack(&self, event: &Event) {
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

#[derive(Clone, Copy)]
enum AckKind {
    Subscribe,
    Unsubscribe,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_query_values_are_percent_decoded_only() {
        let opts =
            ConnectOptions::from_url("mqtt://u:p%2Bq+r@127.0.0.1?client_id=a+b%20c").unwrap();
        assert_eq!(opts.get_client_id(), Some("a+b c"));
        assert_eq!(
            opts.credentials,
            Some(("u".to_string(), "p+q+r".to_string()))
        );
    }

    #[test]
    fn debug_output_hides_secrets() {
        let shown = format!(
            "{:?}",
            ConnectOptions::new("broker", 1883).credentials("svc", "hunter2")
        );
        assert!(shown.contains("svc"), "{shown}");
        assert!(!shown.contains("hunter2"), "{shown}");
    }

    #[cfg(feature = "tls")]
    #[test]
    fn tls_query_parameters_keep_plus_signs_and_hide_inline_keys() {
        let opts = ConnectOptions::from_url("mqtts://host?ca=/etc/c++/ca.pem").unwrap();
        assert_eq!(
            opts.tls.as_ref().unwrap().roots,
            crate::transport::tls::Roots::Ca(crate::transport::tls::Pem::File(
                "/etc/c++/ca.pem".into()
            ))
        );
        let inline = ConnectOptions::new("host", 8883)
            .tls_client_cert_pem("CERT", "-----BEGIN PRIVATE KEY----- secret");
        let shown = format!("{inline:?}");
        assert!(shown.contains("<inline PEM>"), "{shown}");
        assert!(!shown.contains("secret"), "{shown}");
    }
}
