//! What a server accepts and how much of it: [`ServerOptions`].

use std::time::Duration;

use tokio::sync::Semaphore;

use crate::protocol::QoS;
use crate::protocol::{DEFAULT_PREFIX, DEFAULT_SHARE_GROUP};

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
    pub(super) max_queued_bytes: usize,
    pub(super) max_request_size: usize,
    pub(super) max_correlation_data: usize,
    pub(super) max_response_topic: usize,
    pub(super) max_user_properties: usize,
    pub(super) max_user_property_bytes: usize,
    pub(super) max_metadata_entries: usize,
    pub(super) max_metadata_bytes: usize,
    pub(super) dedup_entries: usize,
    pub(super) dedup_bytes: usize,
    pub(super) dedup_window: Duration,
    pub(super) ack_after_answer: bool,
    /// Chunked transfers (`reassembly/`): their settings and the bytes all
    /// partial requests may hold.
    pub(super) chunking: crate::Chunking,
    pub(super) max_reassembly_bytes: usize,
    pub(super) max_answer_backlog: usize,
    pub(super) layers: super::layers::Layers,
}

impl Default for ServerOptions {
    /// Prefix `mqrpc`, shared subscription in group `mqrpc`, subscription
    /// QoS 2 (answers at the request's QoS), 1 024 handlers at once,
    /// 10 000 waiting in 64 MiB, requests up to 1 MiB, Correlation Data up
    /// to 256 bytes, Response Topics up to 1 024 bytes, up to 64 user
    /// properties of 16 KiB in all, duplicate detection over 10 000 calls
    /// in 8 MiB, 8 MiB of answers waiting to leave, chunked requests
    /// reassembled in 64 MiB at most.
    fn default() -> Self {
        ServerOptions {
            prefix: DEFAULT_PREFIX.to_string(),
            qos: QoS::ExactlyOnce,
            share_group: Some(DEFAULT_SHARE_GROUP.to_string()),
            instance: None,
            max_concurrent: 1024,
            max_queued: 10_000,
            max_queued_bytes: 64 * 1024 * 1024,
            max_request_size: 1024 * 1024,
            max_correlation_data: 256,
            max_response_topic: 1024,
            max_user_properties: 64,
            max_user_property_bytes: 16 * 1024,
            max_metadata_entries: crate::protocol::metadata::MAX_METADATA_ENTRIES,
            max_metadata_bytes: crate::protocol::metadata::MAX_METADATA_BYTES,
            dedup_entries: 10_000,
            dedup_bytes: 8 * 1024 * 1024,
            dedup_window: Duration::from_secs(60),
            ack_after_answer: false,
            chunking: crate::Chunking::default(),
            max_reassembly_bytes: 64 * 1024 * 1024,
            max_answer_backlog: 8 * 1024 * 1024,
            layers: Default::default(),
        }
    }
}

impl ServerOptions {
    /// Topic prefix (default `mqrpc`); must match the clients'.
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// Maximum QoS of the method subscription (default 2). The broker
    /// delivers each request at the lower of its own QoS and this one, and
    /// the server answers at the QoS it received: by default a request's
    /// answer has the request's QoS; with `qos(QoS::AtLeastOnce)` a QoS 2
    /// request is received, and answered, at QoS 1.
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
    ///
    /// An id other than the connection's client id costs one more broker
    /// connection per id (client id `<client id>-will-<instance>`), made
    /// when the first server with that id starts: its Last Will announces
    /// the instance gone if the process dies, so that callers get
    /// [`Error::ServerGone`](crate::Error::ServerGone) rather than a
    /// timeout (PROTOCOL.md, "Server gone").
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

    /// Bytes the requests waiting for a slot may hold together (default
    /// 64 MiB): their payloads, topics and properties (copied out of the
    /// packets they came in) and their tasks. A request that would go over
    /// is answered `overloaded` at once, like one over
    /// [`max_queued`](Self::max_queued).
    ///
    /// ```
    /// # use mqrpc_runtime as mqrpc;
    /// use mqrpc::ServerOptions;
    /// let opts = ServerOptions::default().max_queued_bytes(16 << 20);
    /// # let _ = opts;
    /// ```
    pub fn max_queued_bytes(mut self, bytes: usize) -> Self {
        self.max_queued_bytes = bytes;
        self
    }

    /// Largest request payload served (default 1 MiB); larger ones are
    /// answered with status `too-large` ([`Error::TooLarge`](crate::Error::TooLarge)).
    pub fn max_request_size(mut self, bytes: usize) -> Self {
        self.max_request_size = bytes;
        self
    }

    /// Longest Correlation Data served (default 256 bytes; mqrpc clients
    /// send 8, UUIDs take 16). A longer one is answered `bad-request`
    /// (`correlation data is 65536 bytes, limit 256`) when the request's
    /// Response Topic is within its limit, and dropped with a warning
    /// otherwise; the server keeps nothing of the request.
    ///
    /// ```
    /// # use mqrpc_runtime as mqrpc;
    /// use mqrpc::ServerOptions;
    /// let opts = ServerOptions::default()
    ///     .max_correlation_data(64)
    ///     .max_response_topic(256)
    ///     .max_user_properties(16, 4096);
    /// # let _ = opts;
    /// ```
    pub fn max_correlation_data(mut self, bytes: usize) -> Self {
        self.max_correlation_data = bytes;
        self
    }

    /// Longest Response Topic served (default 1 024 bytes), and longest
    /// `mqrpc-response-topic` of a cancel or credit message. A request over
    /// it cannot be answered: it is dropped with a warning (and counted in
    /// [`ServerUsage::dropped_over_limits`](crate::ServerUsage)).
    pub fn max_response_topic(mut self, bytes: usize) -> Self {
        self.max_response_topic = bytes;
        self
    }

    /// Most user properties a request may carry (default 64), and most
    /// bytes of their names and values in all (default 16 KiB). Over
    /// either, the request is answered `bad-request` naming the limit (or
    /// dropped, without a usable Response Topic).
    pub fn max_user_properties(mut self, count: usize, bytes: usize) -> Self {
        self.max_user_properties = count;
        self.max_user_property_bytes = bytes;
        self
    }

    /// Most entries of a call's metadata (default 32), and most bytes of
    /// their `md-` names and values (default 8 KiB): the limits mqrpc
    /// clients check before sending (PROTOCOL.md, "Call metadata"). Over
    /// either, the request is answered `bad-request` naming the limit
    /// (`metadata entry count is 40, limit 32`); the handler does not run.
    /// The user-property limits ([`max_user_properties`](Self::max_user_properties))
    /// apply as well.
    ///
    /// ```
    /// # use mqrpc_runtime as mqrpc;
    /// let opts = mqrpc::ServerOptions::default().max_metadata(8, 1024);
    /// # let _ = opts;
    /// ```
    pub fn max_metadata(mut self, entries: usize, bytes: usize) -> Self {
        self.max_metadata_entries = entries;
        self.max_metadata_bytes = bytes;
        self
    }

    /// Bounds of duplicate detection (default 10 000 answered calls, and
    /// 8 MiB, at least 64 KiB, for everything the table holds: the keys
    /// (Response Topic, Correlation Data) of running and answered calls,
    /// kept answers, and a fixed few hundred bytes per call for its digest
    /// and the table's own structure). One answer of over 1/16 of the bytes
    /// is not kept, and a duplicate of its call is dropped. A call is
    /// remembered until 5 s past its deadline, or for `window` (default
    /// 60 s) when the request carries none, and forgotten at the next
    /// request after that or within 5 s, whichever comes first, its memory
    /// then given back. Beyond the bounds the oldest
    /// answered calls are forgotten first; a request that finds the bytes
    /// all taken by running calls is answered `overloaded`.
    /// [`ServerHandle::usage`](crate::ServerHandle::usage) shows what the
    /// table holds.
    pub fn dedup(mut self, entries: usize, bytes: usize, window: Duration) -> Self {
        self.dedup_entries = entries;
        self.dedup_bytes = bytes.max(64 * 1024);
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

    /// Adds a [`tower::Layer`] around the service's methods (PROTOCOL.md,
    /// "Server layers"; [`layers`](crate::layers)). Layers added first are
    /// outermost, as in tower's `ServiceBuilder`. A layer wraps a
    /// [`CallService`](crate::layers::CallService) (a [`Call`](crate::layers::Call)
    /// in, a [`Reply`](crate::Reply) out); it refuses a call by failing
    /// with a [`Rejection`](crate::layers::Rejection), whose status the
    /// caller sees. Tower's own layers apply as they are: a concurrency
    /// limit, a rate limit, load shedding (answered `resource-exhausted`),
    /// a timeout (`deadline-exceeded`). Built-ins (`_ping`, `_info`,
    /// `_stats`) pass the layers by. Without layers (the default) a call
    /// costs nothing more.
    ///
    /// ```
    /// # use mqrpc_runtime as mqrpc;
    /// use mqrpc::layers::{intercept, Rejection};
    /// use mqrpc::ServerOptions;
    /// let options = ServerOptions::default()
    ///     .layer(tower::limit::ConcurrencyLimitLayer::new(8))
    ///     .layer(intercept(|call| match call.method() {
    ///         "shutdown" => Err(Rejection::permission_denied("not over MQTT")),
    ///         _ => Ok(()),
    ///     }));
    /// # let _ = options;
    /// ```
    pub fn layer<L>(mut self, layer: L) -> Self
    where
        L: tower::Layer<super::layers::CallService> + Send + Sync + 'static,
        L::Service: tower::Service<super::layers::Call, Response = super::Reply> + Send + 'static,
        <L::Service as tower::Service<super::layers::Call>>::Error: Into<super::layers::BoxError>,
        <L::Service as tower::Service<super::layers::Call>>::Future: Send + 'static,
    {
        self.layers.push(layer);
        self
    }

    /// Whether requests are acknowledged only once answered
    /// ([`ack_after_answer`](Self::ack_after_answer)).
    pub fn get_ack_after_answer(&self) -> bool {
        self.ack_after_answer
    }

    /// Bytes of answers and refusals that may wait to leave (default
    /// 8 MiB): handed to the connection, not yet written to the socket
    /// (QoS 0) or acknowledged by the broker (QoS 1/2). When a broker
    /// takes answers slower than requests arrive, answers of calls that
    /// ran wait for room (keeping their handler slot, so that further
    /// requests queue and are then refused `overloaded`); refusals at QoS 0
    /// are dropped and counted; refusals at QoS 1/2 wait holding their
    /// request's acknowledgement, so the broker holds back the requests
    /// behind them (PROTOCOL.md, "Server limits";
    /// [`ServerUsage::refusals_dropped`](crate::ServerUsage)). One answer
    /// larger than the budget still goes, alone.
    /// ```
    /// # use mqrpc_runtime as mqrpc;
    /// use mqrpc::ServerOptions;
    /// let opts = ServerOptions::default().max_answer_backlog(1 << 20);
    /// assert_eq!(opts.get_max_answer_backlog(), 1 << 20);
    /// ```
    pub fn max_answer_backlog(mut self, bytes: usize) -> Self {
        self.max_answer_backlog = bytes;
        self
    }

    /// The answer backlog's budget ([`max_answer_backlog`](Self::max_answer_backlog)).
    pub fn get_max_answer_backlog(&self) -> usize {
        self.max_answer_backlog
    }

    /// The configured concurrency limit.
    pub fn get_max_concurrent(&self) -> usize {
        self.max_concurrent
    }
}
