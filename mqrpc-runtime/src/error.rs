//! The one error type of mqrpc.

use std::time::Duration;

/// Everything that can go wrong in an mqrpc call, connection or server.
///
/// Application errors are *not* in here: a method declared as
/// `async fn divide(&self, a: f64, b: f64) -> Result<f64, MathError>` returns
/// `Result<Result<f64, MathError>, mqrpc::Error>` on the client, so the typed
/// `MathError` arrives as itself in the inner `Err` and this enum only says
/// that the call itself failed.
///
/// ```
/// # use mqrpc_runtime as mqrpc;
/// use std::time::Duration;
/// let err = mqrpc::Error::Timeout {
///     method: "add".into(),
///     timeout: Duration::from_millis(50),
/// };
/// assert!(err.is_timeout());
/// assert_eq!(err.to_string(), "call to `add` timed out after 50ms");
/// ```
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The broker URL could not be parsed.
    #[error("invalid broker URL `{url}`: {reason}")]
    InvalidUrl {
        /// The URL as given.
        url: String,
        /// What is wrong with it.
        reason: String,
    },
    /// `MQRPC_BROKER` is not set and no broker was given.
    #[error("environment variable MQRPC_BROKER is not set (expected e.g. mqtt://127.0.0.1:1883)")]
    BrokerNotConfigured,
    /// The first connection to the broker failed (refused, unreachable, bad credentials).
    #[error("cannot connect to the MQTT broker at {broker}: {reason}")]
    Connect {
        /// `host:port` of the broker.
        broker: String,
        /// Why the connection failed.
        reason: String,
    },
    /// The broker refused this client's credentials at connect time
    /// (CONNACK reason 0x86 "Bad User Name or Password" or 0x87 "Not
    /// authorized"). Retrying with the same credentials will not help.
    #[error("the MQTT broker at {broker} refused the credentials: {reason}")]
    AuthFailed {
        /// `host:port` of the broker.
        broker: String,
        /// The broker's reason code.
        reason: String,
    },
    /// The TLS settings are unusable: an unreadable or malformed CA file,
    /// certificate or key, or no usable system roots. Handshake failures
    /// with the broker (e.g. an untrusted certificate) are
    /// [`Error::Connect`]; `mqtts://` without mqrpc's `tls` feature is
    /// [`Error::InvalidUrl`].
    #[error("TLS: {reason}")]
    Tls {
        /// What is wrong.
        reason: String,
    },
    /// The connection to the broker is down; the call was not sent or its
    /// answer can no longer arrive. The connection reconnects by itself.
    #[error("not connected to the MQTT broker")]
    Disconnected,
    /// [`Connection::close`](crate::Connection::close) was called.
    #[error("the connection was closed")]
    Closed,
    /// The broker refused a subscription or did not acknowledge it in time.
    #[error("subscription to `{filter}` failed: {reason}")]
    Subscribe {
        /// The topic filter.
        filter: String,
        /// The broker's reason code or the local cause.
        reason: String,
    },
    /// No response arrived before the call's timeout, or the server saw the
    /// call's deadline pass (status `deadline-exceeded`): either way, the
    /// call did not finish in time.
    #[error("call to `{method}` timed out after {timeout:?}")]
    Timeout {
        /// Wire name of the method.
        method: String,
        /// The timeout that expired.
        timeout: Duration,
    },
    /// Nobody is subscribed to the method's topic: the broker answered the
    /// request's PUBACK with reason 0x10 "No matching subscribers"
    /// (Mosquitto does; brokers that do not report it end in [`Error::Timeout`]).
    #[error("no server is listening for `{method}` (the broker reported no matching subscribers)")]
    NoResponder {
        /// Wire name of the method.
        method: String,
    },
    /// The broker refused the request: this client may not publish to the
    /// method's topic (PUBACK reason 0x87, e.g. an ACL for another tenant).
    #[error("not authorized to call `{method}` (the broker refused the request)")]
    NotAuthorized {
        /// Wire name of the method.
        method: String,
    },
    /// The broker refused the request for another reason (its PUBACK
    /// reason code).
    #[error("the broker refused the request: {reason}")]
    Refused {
        /// The broker's reason code.
        reason: String,
    },
    /// Client and server disagree on the method's signature (argument or
    /// return types changed, or one side is an older build): the method
    /// did not run. Rebuild both from the same trait.
    #[error("`{method}` has another signature on the server (schema fingerprint: client {client}, server {server})")]
    SchemaMismatch {
        /// Wire name of the method.
        method: String,
        /// The client's fingerprint of the method.
        client: String,
        /// The server's fingerprint of the method.
        server: String,
    },
    /// The server's queue of waiting requests is full: back off and retry.
    #[error("the server is overloaded: {message}")]
    Overloaded {
        /// The server's explanation.
        message: String,
    },
    /// The request, or its answer, is larger than the broker or the server
    /// accepts.
    #[error("the request is too large: {message}")]
    TooLarge {
        /// Sizes and the limit that was hit.
        message: String,
    },
    /// The client already has its maximum number of calls waiting for answers.
    #[error("too many calls in flight on this connection (limit {limit})")]
    TooManyPending {
        /// The configured limit.
        limit: usize,
    },
    /// The server instance the call was bound to went away before it
    /// answered: its connection dropped without a clean disconnect (the
    /// broker published its Last Will: a crash, a kill, a lost network) or
    /// it shut down. Calls sent to one instance
    /// ([`Client::to_instance`](crate::Client::to_instance)) and streams
    /// (once their first item named the instance serving them) end with it
    /// as soon as the notice arrives, instead of at their deadline
    /// (PROTOCOL.md, "Server gone"). The call may or may not have run.
    ///
    /// ```
    /// # use mqrpc_runtime as mqrpc;
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), mqrpc::Error> {
    /// use std::time::Duration;
    /// use mqrpc::{Client, ClientOptions, Codec, Connection, Reply, Service};
    /// struct Slow;
    /// impl Service for Slow {
    ///     const NAME: &'static str = "Slow";
    ///     const METHODS: &'static [&'static str] = &["wait"];
    ///     async fn call(&self, _method: &str, codec: Codec, _payload: &[u8]) -> Reply {
    ///         std::future::pending::<()>().await; // never answers
    ///         Reply::ok(codec, &())
    ///     }
    /// }
    /// let server_conn = Connection::from_env_or_embedded().await?;
    /// let server = mqrpc::serve(&server_conn, Slow, Default::default()).await?;
    /// let conn = Connection::connect_url(&server_conn.broker_url()).await?;
    /// let client = Client::new(&conn, "Slow", ClientOptions::default()).await?;
    /// let one = client.with_timeout(Duration::from_secs(60)).to_instance(server.instance())?;
    /// let call = tokio::spawn(async move { one.call::<_, ()>("wait", &()).await });
    /// tokio::time::sleep(Duration::from_millis(200)).await; // the call runs
    /// server_conn.close().await; // the server goes away mid-call
    /// let err = call.await.unwrap().unwrap_err();
    /// assert!(err.is_server_gone(), "{err}"); // at once, not after 60 s
    /// # Ok(()) }
    /// ```
    #[error("the server instance `{instance}` serving `{method}` is gone")]
    ServerGone {
        /// The instance id of the server that went away.
        instance: String,
        /// Wire name of the method.
        method: String,
    },
    /// A server layer refused the call (status `unauthenticated`): no
    /// credentials, or none it accepts. The method did not run.
    #[error("the server refused the call: unauthenticated: {message}")]
    Unauthenticated {
        /// The server's explanation.
        message: String,
    },
    /// A server layer refused the call (status `permission-denied`): the
    /// caller may not call this method. The method did not run.
    #[error("the server refused the call: permission denied: {message}")]
    PermissionDenied {
        /// The server's explanation.
        message: String,
    },
    /// A server layer refused the call for a quota (status
    /// `resource-exhausted`: a rate limit, a load shedder). The method did
    /// not run; back off and retry.
    #[error("the server refused the call: resource exhausted: {message}")]
    ResourceExhausted {
        /// The server's explanation.
        message: String,
    },
    /// A retry ([`ClientOptions::retry`](crate::ClientOptions::retry)) of a
    /// method not marked `#[mqrpc(idempotent)]` reached a server that does
    /// not remember the call (status `retry-refused`): an earlier attempt
    /// may have run, so the server did not run it again. Whether it ran is
    /// unknown; PROTOCOL.md, "Retries".
    #[error("`{method}` was not retried: {message}")]
    RetryRefused {
        /// Wire name of the method.
        method: String,
        /// The server's explanation.
        message: String,
    },
    /// The server answered that it has no such method.
    #[error("the server has no method `{method}`")]
    UnknownMethod {
        /// Wire name of the method.
        method: String,
    },
    /// The server could not decode the request (wrong argument types, older
    /// build of the trait, corrupt payload).
    #[error("the server rejected the request: {message}")]
    BadRequest {
        /// The server's explanation.
        message: String,
    },
    /// The server does not speak the request's Content Type.
    #[error("the server does not support the request's content type: {message}")]
    UnsupportedContentType {
        /// The server's explanation.
        message: String,
    },
    /// The handler panicked or its result could not be encoded.
    #[error("the server failed to handle the call: {message}")]
    Internal {
        /// The server's explanation.
        message: String,
    },
    /// Arguments could not be encoded.
    #[error("cannot encode the request: {reason}")]
    Encode {
        /// The codec's message.
        reason: String,
    },
    /// The response payload could not be decoded into the declared type.
    #[error("cannot decode the response: {reason}")]
    Decode {
        /// The codec's message.
        reason: String,
    },
    /// The response broke the mqrpc protocol (e.g. an unknown status).
    #[error("malformed response: {reason}")]
    Protocol {
        /// What was wrong.
        reason: String,
    },
    /// A name given at run time is not usable as an MQTT topic level.
    #[error("invalid topic name `{name}`: {reason}")]
    InvalidName {
        /// The name as given.
        name: String,
        /// What is wrong with it.
        reason: String,
    },
    /// Call metadata that cannot be sent: a key outside the rules of
    /// [`Metadata`](crate::Metadata), or more entries or bytes than
    /// [`MAX_METADATA_ENTRIES`](crate::protocol::metadata::MAX_METADATA_ENTRIES)
    /// and [`MAX_METADATA_BYTES`](crate::protocol::metadata::MAX_METADATA_BYTES)
    /// allow. Nothing was sent.
    #[error("invalid call metadata: {reason}")]
    InvalidMetadata {
        /// What is wrong, naming the limit.
        reason: String,
    },
    /// A combination of options mqrpc does not support.
    #[error("not supported: {what}")]
    Unsupported {
        /// What was asked for.
        what: String,
    },
    /// Formerly both "every packet identifier in flight" and an internal
    /// failure; mqrpc returns neither as this any more.
    #[deprecated(
        since = "0.1.0",
        note = "not returned any more: see Error::PacketIdsExhausted and Error::Invariant"
    )]
    #[error("MQTT client error: {0}")]
    Mqtt(String),
    /// All 65 535 MQTT packet identifiers of the connection are taken by
    /// QoS 1/2 publishes still waiting for the broker's acknowledgement: the
    /// publish was not sent. Fewer calls in flight, or QoS 0, avoid it.
    ///
    /// ```
    /// # use mqrpc_runtime as mqrpc;
    /// let err = mqrpc::Error::PacketIdsExhausted;
    /// assert!(err.to_string().contains("65 535"));
    /// ```
    #[error("every MQTT packet identifier (65 535) is in flight on this connection")]
    PacketIdsExhausted,
    /// Something mqrpc holds for itself was not as it must be: a bug of
    /// mqrpc (please report it with the reason).
    ///
    /// ```
    /// # use mqrpc_runtime as mqrpc;
    /// let err = mqrpc::Error::Invariant { reason: "example".into() };
    /// assert_eq!(err.to_string(), "mqrpc bug: example");
    /// ```
    #[error("mqrpc bug: {reason}")]
    Invariant {
        /// What did not hold.
        reason: String,
    },
    /// The embedded broker could not start.
    #[error("embedded broker: {0}")]
    Broker(String),
}

impl Error {
    /// True for [`Error::Timeout`].
    pub fn is_timeout(&self) -> bool {
        matches!(self, Error::Timeout { .. })
    }

    /// True when nobody served the call: [`Error::NoResponder`].
    pub fn is_no_responder(&self) -> bool {
        matches!(self, Error::NoResponder { .. })
    }

    /// True when the call certainly did not run on a server and may be
    /// retried as it is: no responder, overloaded, resource exhausted, or
    /// too many calls pending.
    /// ([`Error::Disconnected`] is not among them: a request sent just
    /// before the link broke may have run.)
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            Error::NoResponder { .. }
                | Error::Overloaded { .. }
                | Error::TooManyPending { .. }
                | Error::ResourceExhausted { .. }
        )
    }

    /// True for [`Error::ServerGone`]: the server serving the call went
    /// away. Another instance may serve it if called again.
    ///
    /// ```
    /// # use mqrpc_runtime as mqrpc;
    /// let err = mqrpc::Error::ServerGone {
    ///     instance: "billing-1".into(),
    ///     method: "charge".into(),
    /// };
    /// assert!(err.is_server_gone() && !err.is_timeout());
    /// assert_eq!(err.to_string(), "the server instance `billing-1` serving `charge` is gone");
    /// ```
    pub fn is_server_gone(&self) -> bool {
        matches!(self, Error::ServerGone { .. })
    }

    /// True when the broker link is the cause ([`Error::Disconnected`],
    /// [`Error::Connect`], [`Error::Closed`]): retrying later may succeed.
    pub fn is_connection(&self) -> bool {
        matches!(
            self,
            Error::Disconnected | Error::Connect { .. } | Error::Closed
        )
    }
}

/// Why the broker refused a request (its PUBACK or PUBREC reason code),
/// told to the call that sent it, which names its method.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// 0x10 No matching subscribers.
    NoMatchingSubscribers,
    /// 0x87 Not authorized.
    NotAuthorized,
    /// Any other reason code of 0x80 or more.
    Other(String),
}

impl Refusal {
    /// The error of a call to `method` that the broker refused.
    pub(crate) fn into_error(self, method: &str) -> Error {
        match self {
            Refusal::NoMatchingSubscribers => Error::NoResponder {
                method: method.to_string(),
            },
            Refusal::NotAuthorized => Error::NotAuthorized {
                method: method.to_string(),
            },
            Refusal::Other(reason) => Error::Refused { reason },
        }
    }
}

/// How a pending call ends without an answer: refused by the broker, or
/// failed for a reason of the whole connection.
#[derive(Debug, Clone)]
pub(crate) enum Failure {
    Refused(Refusal),
    Error(Error),
    /// The instance serving the call is gone (its notice arrived).
    Gone(std::sync::Arc<str>),
    /// Not an end: the answer comes in chunks, which the call reads from
    /// this (the client's receiver of them, PROTOCOL.md "Chunked transfer").
    Chunked(std::sync::Arc<dyn std::any::Any + Send + Sync>),
}

impl Failure {
    /// The error the call to `method` reports.
    pub(crate) fn into_error(self, method: &str) -> Error {
        match self {
            Failure::Refused(refusal) => refusal.into_error(method),
            Failure::Error(error) => error,
            Failure::Gone(instance) => Error::ServerGone {
                instance: instance.to_string(),
                method: method.to_string(),
            },
            Failure::Chunked(_) => Error::Protocol {
                reason: format!("a chunked answer to `{method}` where none was expected"),
            },
        }
    }
}
