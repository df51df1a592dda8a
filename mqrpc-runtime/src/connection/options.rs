//! Where and how to connect: [`ConnectOptions`], from a URL, the
//! environment or a builder, and the scheme table every URL user shares.

use std::time::Duration;

use crate::protocol::BROKER_ENV;
use crate::Error;
use tls_settings::{Pem, Roots, TlsSettings};

mod brokers;
pub(crate) mod tls_settings;

/// Where and how to connect.
///
/// ```
/// # use mqrpc_runtime as mqrpc;
/// use mqrpc::ConnectOptions;
/// let opts = ConnectOptions::from_url("mqtt://alice:secret@127.0.0.1:1884?client_id=billing-1").unwrap();
/// assert_eq!(opts.broker_address(), "127.0.0.1:1884");
/// assert_eq!(opts.get_client_id(), Some("billing-1"));
/// assert!(ConnectOptions::from_url("http://x").is_err());
/// // The nodes of a clustered broker, tried in turn:
/// let cluster = ConnectOptions::from_url("mqtt://node1:1883,node2:1883,[fd00::3]").unwrap();
/// assert_eq!(cluster.broker_address(), "node1:1883");
/// ```
#[derive(Clone)]
pub struct ConnectOptions {
    pub(super) host: String,
    pub(super) port: u16,
    /// Further brokers (host without brackets, port), after `host:port`.
    pub(super) fallbacks: Vec<(String, u16)>,
    pub(super) client_id: Option<String>,
    pub(super) credentials: Option<(String, String)>,
    pub(super) keep_alive: Duration,
    pub(super) connect_timeout: Duration,
    pub(super) max_packet_size: u32,
    pub(super) tcp_nodelay: bool,
    pub(super) max_pending_calls: usize,
    pub(super) session_expiry: Option<Duration>,
    pub(super) reply_prefix: String,
    pub(super) assumed_response_information: Option<String>,
    pub(super) tls: Option<TlsSettings>,
    /// MQTT over WebSocket: the HTTP path of the broker's endpoint.
    pub(super) websocket_path: Option<String>,
}

// By hand: the password and an inline client key must not reach logs.
impl std::fmt::Debug for ConnectOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnectOptions")
            .field("broker", &self.broker_address())
            .field("fallback_brokers", &&self.brokers()[1..])
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
            fallbacks: Vec::new(),
            client_id: None,
            credentials: None,
            keep_alive: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(5),
            max_packet_size: 4 * 1024 * 1024,
            tcp_nodelay: true,
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
    ///
    /// Several brokers (the nodes of a cluster) go comma-separated after
    /// the one scheme, `mqtt://[user[:password]@]h1[:port],h2[:port]…`
    /// (IPv6 hosts in brackets): the first is the primary, the others
    /// are [fallbacks](Self::fallback_broker) tried in turn when a
    /// connection fails; credentials, path and query apply to all. An
    /// empty or malformed entry is an [`Error::InvalidUrl`] naming it.
    pub fn from_url(url: &str) -> Result<Self, Error> {
        let invalid = |reason: &str| Error::InvalidUrl {
            url: url.to_string(),
            reason: reason.to_string(),
        };
        if !url.contains("://") {
            // `127.0.0.1:1883` would be "a relative URL without a base",
            // `localhost:1883` a URL of scheme `localhost`.
            return Err(invalid(&format!(
                "no scheme: write mqtt://{} (or mqtts://, ws://, wss://)",
                url.trim()
            )));
        }
        let (primary, further) = brokers::split_hosts(url).map_err(|e| invalid(&e))?;
        let parsed = url::Url::parse(&primary).map_err(|e| invalid(&e.to_string()))?;
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
        for entry in &further {
            let fallback = brokers::parse_entry(entry, scheme).map_err(|e| invalid(&e))?;
            opts.fallbacks.push(fallback);
        }
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
            let file = || Pem::File(value.as_str().into());
            match key_name.as_str() {
                "client_id" => opts.client_id = Some(value.clone()),
                "ca" if tls => settings.roots = Roots::Ca(file()),
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
    /// # use mqrpc_runtime as mqrpc;
    /// use mqrpc::ConnectOptions;
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
        self.tls.get_or_insert_with(TlsSettings::default).roots = Roots::Ca(Pem::File(path.into()));
        self
    }

    /// Connects over TLS, trusting only the CA certificates in this PEM text.
    #[cfg(feature = "tls")]
    pub fn tls_ca_pem(mut self, pem: impl Into<Vec<u8>>) -> Self {
        self.tls.get_or_insert_with(TlsSettings::default).roots = Roots::Ca(Pem::Bytes(pem.into()));
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
            .client_cert = Some((Pem::File(cert.into()), Pem::File(key.into())));
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
            .client_cert = Some((Pem::Bytes(cert.into()), Pem::Bytes(key.into())));
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
    /// # use mqrpc_runtime as mqrpc;
    /// use mqrpc::ConnectOptions;
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

    /// Sets how long one connection attempt may take, from opening the
    /// stream (TCP, TLS, WebSocket handshake) to the broker's CONNACK
    /// (default 5 s). A peer that accepts the connection but never answers
    /// as an MQTT v5 broker fails [`Connection::connect`](crate::Connection::connect)
    /// with [`Error::Connect`] once it has passed.
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// Sets the largest packet this client accepts (default 4 MiB).
    pub fn max_packet_size(mut self, bytes: u32) -> Self {
        self.max_packet_size = bytes;
        self
    }

    /// Turns TCP_NODELAY on or off for plain `mqtt://` connections (default
    /// on: with Nagle's algorithm a round trip costs ~40 ms instead of
    /// ~0.1 ms). TLS and WebSocket connections always have it on.
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
    /// reconnect). QoS 1 and 2 state survives a reconnect that resumes the
    /// session: unacknowledged publishes are sent again (QoS 2 exactly once).
    /// The Last Will that announces this connection's servers gone waits
    /// as long (Will Delay Interval): it is published only if the
    /// connection does not come back in time (PROTOCOL.md, "Server gone").
    pub fn session_expiry(mut self, expiry: Duration) -> Self {
        self.session_expiry = Some(expiry);
        self
    }

    /// Prefix of this connection's response topic when the broker gives no
    /// Response Information: `<reply_prefix>/_reply/<client id>` (default
    /// `mqrpc`), and of the notices that a server is gone,
    /// `<reply_prefix>/_gone/<instance>` (its Last Will among them; see
    /// PROTOCOL.md, "Server gone"): clients and servers that should hear
    /// each other's notices share it. Set it to the tenant's prefix when
    /// ACLs confine a client to it.
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

    /// `host:port` of the (primary) broker.
    pub fn broker_address(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }

    /// The configured limit of calls waiting for answers (set with
    /// [`max_pending_calls`](Self::max_pending_calls)).
    ///
    /// Getters of options are named `get_<setter>` where the builder's
    /// setter holds the plain name, as `std::process::Command::get_args`
    /// beside `args`; values an option does not set by that name
    /// ([`broker_address`](Self::broker_address)) have no prefix.
    ///
    /// ```
    /// # use mqrpc_runtime as mqrpc;
    /// let opts = mqrpc::ConnectOptions::new("localhost", 1883).max_pending_calls(10);
    /// assert_eq!(opts.get_max_pending_calls(), 10);
    /// ```
    pub fn get_max_pending_calls(&self) -> usize {
        self.max_pending_calls
    }

    /// The configured limit of calls waiting for answers.
    #[deprecated(
        since = "0.1.0",
        note = "renamed: ConnectOptions::get_max_pending_calls"
    )]
    pub fn max_pending_calls_limit(&self) -> usize {
        self.get_max_pending_calls()
    }

    /// The configured client id, if one was set.
    pub fn get_client_id(&self) -> Option<&str> {
        self.client_id.as_deref()
    }

    /// How this connects: TLS or not, WebSocket or not.
    pub(super) fn scheme(&self) -> Scheme {
        match (self.tls.is_some(), self.websocket_path.is_some()) {
            (false, false) => Scheme::Mqtt,
            (true, false) => Scheme::Mqtts,
            (false, true) => Scheme::Ws,
            (true, true) => Scheme::Wss,
        }
    }

    /// `<scheme>://host:port[/path]`, without credentials or TLS files.
    pub(super) fn endpoint(&self) -> String {
        let path = self.websocket_path.as_deref().unwrap_or("");
        format!(
            "{}://{}{path}",
            self.scheme().as_str(),
            self.broker_address()
        )
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
            Roots::Ca(Pem::File("/etc/c++/ca.pem".into()))
        );
        let inline = ConnectOptions::new("host", 8883)
            .tls_client_cert_pem("CERT", "-----BEGIN PRIVATE KEY----- secret");
        let shown = format!("{inline:?}");
        assert!(shown.contains("<inline PEM>"), "{shown}");
        assert!(!shown.contains("secret"), "{shown}");
    }
}
