//! What a server accepts and how much of it: [`ServerOptions`].

use std::time::Duration;

use tokio::sync::Semaphore;

use crate::protocol::{DEFAULT_PREFIX, DEFAULT_SHARE_GROUP};
use crate::QoS;

/// Per-server settings.
///
/// ```
/// # use mqrpc_runtime as mqrpc;
/// use std::time::Duration;
/// use mqrpc::{ServerOptions, QoS};
/// let opts = ServerOptions::default()
///     .prefix("acme/prod")
///     .qos(QoS::AtMostOnce)
///     .max_concurrent(64)
///     .max_queued(1_000)
///     .max_request_size(64 * 1024);
/// assert_eq!(opts.get_max_concurrent(), 64);
/// ```
#[derive(Debug, Clone)]
pub struct ServerOptions {
    pub(super) prefix: String,
    pub(super) qos: QoS,
    pub(super) share_group: Option<String>,
    pub(super) instance: Option<String>,
    pub(super) max_concurrent: usize,
    pub(super) max_queued: usize,
    pub(super) max_request_size: usize,
    pub(super) dedup_entries: usize,
    pub(super) dedup_bytes: usize,
    pub(super) dedup_window: Duration,
    pub(super) ack_after_answer: bool,
}

impl Default for ServerOptions {
    /// Prefix `mqrpc`, shared subscription in group `mqrpc`, subscription
    /// QoS 1, 1 024 handlers at once, 10 000
    /// waiting, requests up to 1 MiB, duplicate detection over 10 000 calls
    /// and 8 MiB of kept responses.
    fn default() -> Self {
        ServerOptions {
            prefix: DEFAULT_PREFIX.to_string(),
            qos: QoS::AtLeastOnce,
            share_group: Some(DEFAULT_SHARE_GROUP.to_string()),
            instance: None,
            max_concurrent: 1024,
            max_queued: 10_000,
            max_request_size: 1024 * 1024,
            dedup_entries: 10_000,
            dedup_bytes: 8 * 1024 * 1024,
            dedup_window: Duration::from_secs(60),
            ack_after_answer: false,
        }
    }
}

impl ServerOptions {
    /// Topic prefix (default `mqrpc`); must match the clients'.
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// Maximum QoS of the method subscription (default 1).
    pub fn qos(mut self, qos: QoS) -> Self {
        self.qos = qos;
        self
    }

    /// Share group of the method subscription (default `mqrpc`): the
    /// servers of one service in one group split its requests between them
    /// (MQTT v5 shared subscription `$share/<group>/...`), each request
    /// reaching one of them. Servers in different groups each get every
    /// request.
    pub fn share_group(mut self, group: impl Into<String>) -> Self {
        self.share_group = Some(group.into());
        self
    }

    /// A plain subscription instead of a shared one: this server gets
    /// every request of the service, as does every other server of it.
    pub fn no_share_group(mut self) -> Self {
        self.share_group = None;
        self
    }

    /// This server's instance id (default: its connection's client id):
    /// besides its share of the service's requests, it serves those sent
    /// to `<prefix>/<service>/_to/<instance>/<method>`.
    pub fn instance(mut self, id: impl Into<String>) -> Self {
        self.instance = Some(id.into());
        self
    }

    /// Handlers running at once (default 1 024). Further requests wait, in
    /// arrival order, for a free slot.
    pub fn max_concurrent(mut self, limit: usize) -> Self {
        self.max_concurrent = limit.clamp(1, Semaphore::MAX_PERMITS);
        self
    }

    /// Requests waiting for a slot (default 10 000). One more is answered
    /// at once with status `overloaded` ([`Error::Overloaded`](crate::Error::Overloaded) on the client).
    pub fn max_queued(mut self, limit: usize) -> Self {
        self.max_queued = limit;
        self
    }

    /// Largest request payload served (default 1 MiB); larger ones are
    /// answered with status `too-large` ([`Error::TooLarge`](crate::Error::TooLarge)).
    pub fn max_request_size(mut self, bytes: usize) -> Self {
        self.max_request_size = bytes;
        self
    }

    /// Bounds of duplicate detection (default 10 000 calls, 8 MiB of kept
    /// responses; one response of over 1/16 of the bytes is not kept, and a
    /// duplicate of its call is dropped). A call is remembered until 5 s
    /// past its deadline, or for `window` (default 60 s) when the request
    /// carries none. Beyond the bounds the oldest calls are forgotten first.
    pub fn dedup(mut self, entries: usize, bytes: usize, window: Duration) -> Self {
        self.dedup_entries = entries;
        self.dedup_bytes = bytes;
        self.dedup_window = window;
        self
    }

    /// Acknowledge each request (its PUBACK) only once it is answered,
    /// instead of as soon as it arrives (default off).
    ///
    /// On, a request whose server dies before answering is still
    /// unacknowledged at the broker, which sends it again: to the same
    /// server when it comes back with its session
    /// ([`ConnectOptions::session_expiry`](crate::ConnectOptions::session_expiry)
    /// and the same client id), or, with brokers that do this, to another
    /// member of the share group (MQTT 5.0 §4.8.2; neither Mosquitto 2.0
    /// nor the embedded broker does: README, "Brokers"). Copies of a call
    /// still running or answered are not run twice (PROTOCOL.md,
    /// "Duplicates"). A stream is acknowledged once its handler returned
    /// it, before its items.
    ///
    /// Off by default because acknowledgements leave in arrival order
    /// (MQTT 5.0 §4.6): one slow call holds back the acks of every request
    /// that came after it on the connection, and the broker sends a
    /// connection no more unacknowledged requests than its Receive Maximum
    /// (100 here) or its own in-flight limit (20 on Mosquitto), so a server
    /// with slow and fast calls mixed would stall behind the slow ones.
    ///
    /// ```
    /// # use mqrpc_runtime as mqrpc;
    /// use mqrpc::ServerOptions;
    /// let opts = ServerOptions::default().ack_after_answer(true);
    /// assert!(opts.get_ack_after_answer());
    /// assert!(!ServerOptions::default().get_ack_after_answer());
    /// ```
    pub fn ack_after_answer(mut self, on: bool) -> Self {
        self.ack_after_answer = on;
        self
    }

    /// Whether requests are acknowledged only once answered
    /// ([`ack_after_answer`](Self::ack_after_answer)).
    pub fn get_ack_after_answer(&self) -> bool {
        self.ack_after_answer
    }

    /// The configured concurrency limit.
    pub fn get_max_concurrent(&self) -> usize {
        self.max_concurrent
    }
}
