//! Per-client settings.

use std::sync::Arc;
use std::time::Duration;

use crate::protocol::QoS;
use crate::protocol::DEFAULT_PREFIX;
use crate::Codec;

/// Default time a call waits for its answer: 10 s. Also, unless set
/// apart, the longest a stream waits for each of its items
/// ([`ClientOptions::stream_idle_timeout`]) and how long a broadcast
/// gathers answers ([`Client::broadcast`](crate::Client::broadcast)).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// Per-client settings.
///
/// ```
/// # use mqrpc_runtime as mqrpc;
/// use std::time::Duration;
/// use mqrpc::{ClientOptions, Codec, QoS};
/// let opts = ClientOptions::default()
///     .prefix("acme/prod")
///     .timeout(Duration::from_secs(2))
///     .qos(QoS::AtMostOnce)
///     .codec(Codec::Json);
/// assert_eq!(opts.get_timeout(), Duration::from_secs(2));
/// ```
#[derive(Debug, Clone)]
pub struct ClientOptions {
    pub(super) prefix: Arc<str>,
    pub(super) timeout: Duration,
    pub(super) qos: QoS,
    pub(super) codec: Codec,
    pub(super) batches: bool,
    pub(super) stream_idle_timeout: Option<Duration>,
    pub(super) stream_timeout: Option<Duration>,
    pub(super) metadata: crate::Metadata,
    /// Chunked transfers (`chunked.rs`): their settings, and the largest
    /// answer this client reassembles.
    pub(super) chunking: crate::Chunking,
    pub(super) max_response_size: usize,
    /// Retries and layers, when set: one pointer in every client (and
    /// every call's future) without them.
    pub(super) extras: Option<Arc<Extras>>,
}

/// What a client with retries or layers has on top.
#[derive(Debug, Clone, Default)]
pub(super) struct Extras {
    pub(super) retry: Option<super::RetryPolicy>,
    pub(super) layers: super::layers::ClientLayers,
}

impl Default for ClientOptions {
    /// Prefix `mqrpc`, timeout 10 s, QoS 1, postcard, batches on; streams
    /// wait up to the timeout (10 s) for each item and have no limit on
    /// their whole length.
    fn default() -> Self {
        ClientOptions {
            prefix: Arc::from(DEFAULT_PREFIX),
            timeout: DEFAULT_TIMEOUT,
            qos: QoS::AtLeastOnce,
            codec: Codec::Postcard,
            batches: true,
            stream_idle_timeout: None,
            stream_timeout: None,
            metadata: crate::Metadata::new(),
            chunking: crate::Chunking::default(),
            max_response_size: 16 * 1024 * 1024,
            extras: None,
        }
    }
}

impl ClientOptions {
    /// Topic prefix of the service (default `mqrpc`); must match the server's.
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = Arc::from(prefix.into());
        self
    }

    /// Time a call waits for its answer (default 10 s,
    /// [`DEFAULT_TIMEOUT`]). A stream is not bound by it as a whole: it
    /// waits this long for each item, unless
    /// [`stream_idle_timeout`](Self::stream_idle_timeout) says otherwise.
    /// A broadcast gathers answers this long.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// QoS of requests (default 1, at least once).
    pub fn qos(mut self, qos: QoS) -> Self {
        self.qos = qos;
        self
    }

    /// Codec of requests (default postcard).
    pub fn codec(mut self, codec: Codec) -> Self {
        self.codec = codec;
        self
    }

    /// Whether calls queued together may travel as one batch message
    /// (default on; PROTOCOL.md, "Batches"). A client batches only to
    /// targets where a server answered its probe, and never holds a call
    /// back to wait for others; off, every call is a single request.
    pub fn batches(mut self, on: bool) -> Self {
        self.batches = on;
        self
    }

    /// The longest a stream waits for its next item (default: the
    /// [`timeout`](Self::timeout), 10 s unless set): a stream lasts as
    /// long as its items keep coming, and ends with
    /// [`Error::Timeout`](crate::Error::Timeout) when the next one takes
    /// longer than this. The time counts while the caller waits for an
    /// item, not while it works on the previous one; but the server, too,
    /// stops a stream whose producer takes longer than this for an item
    /// (PROTOCOL.md, "Server streaming").
    ///
    /// ```
    /// # use mqrpc_runtime as mqrpc;
    /// use std::time::Duration;
    /// use mqrpc::ClientOptions;
    /// let opts = ClientOptions::default().timeout(Duration::from_secs(2));
    /// assert_eq!(opts.get_stream_idle_timeout(), Duration::from_secs(2));
    /// let opts = opts.stream_idle_timeout(Duration::from_secs(30));
    /// assert_eq!(opts.get_stream_idle_timeout(), Duration::from_secs(30));
    /// ```
    pub fn stream_idle_timeout(mut self, idle: Duration) -> Self {
        self.stream_idle_timeout = Some(idle);
        self
    }

    /// A limit on the whole length of a stream (default none): it ends
    /// with [`Error::Timeout`](crate::Error::Timeout) this long after it
    /// was sent, however fast its items come.
    ///
    /// ```
    /// # use mqrpc_runtime as mqrpc;
    /// use std::time::Duration;
    /// use mqrpc::ClientOptions;
    /// assert_eq!(ClientOptions::default().get_stream_timeout(), None);
    /// let opts = ClientOptions::default().stream_timeout(Duration::from_secs(60));
    /// assert_eq!(opts.get_stream_timeout(), Some(Duration::from_secs(60)));
    /// ```
    pub fn stream_timeout(mut self, total: Duration) -> Self {
        self.stream_timeout = Some(total);
        self
    }

    /// Retries of unary calls ([`RetryPolicy`](crate::RetryPolicy);
    /// default none: each call is sent once). Every attempt keeps the
    /// call's Correlation Data, so a server that already ran the call
    /// answers from its duplicate table; all attempts stay within the
    /// call's [`timeout`](Self::timeout). A server that does not remember
    /// the call runs a retry only of a method marked
    /// `#[mqrpc(idempotent)]`, or when it can vouch that the first attempt
    /// did not run there, and answers
    /// [`Error::RetryRefused`](crate::Error::RetryRefused) otherwise
    /// (PROTOCOL.md, "Retries").
    ///
    /// ```
    /// # use mqrpc_runtime as mqrpc;
    /// use mqrpc::{ClientOptions, RetryPolicy};
    /// assert!(ClientOptions::default().get_retry().is_none());
    /// let options = ClientOptions::default().retry(RetryPolicy::default());
    /// assert_eq!(options.get_retry(), Some(&RetryPolicy::new(3)));
    /// ```
    pub fn retry(mut self, policy: super::RetryPolicy) -> Self {
        let extras = self.extras.get_or_insert_with(Default::default);
        Arc::make_mut(extras).retry = Some(policy);
        self
    }

    /// Adds a [`tower::Layer`] around this client's unary calls
    /// ([`layers`](crate::layers)): each call is a
    /// [`ClientCall`](crate::layers::ClientCall) in, a
    /// [`Response`](crate::Response) out. Layers added first are outermost;
    /// retries run under them (a layer sees one call, whatever its
    /// attempts). A layer that fails a call with an
    /// [`Error`](crate::Error) gives the caller that error; tower's load
    /// shedding gives [`Error::ResourceExhausted`](crate::Error::ResourceExhausted),
    /// its timeout [`Error::Timeout`](crate::Error::Timeout). Streams,
    /// broadcasts, one-way calls and calls sent in chunks do not pass
    /// through them.
    ///
    /// ```
    /// # use mqrpc_runtime as mqrpc;
    /// use mqrpc::ClientOptions;
    /// // At most 16 calls of this client (and its clones) at once.
    /// let options = ClientOptions::default().layer(tower::limit::ConcurrencyLimitLayer::new(16));
    /// # let _ = options;
    /// ```
    pub fn layer<L>(mut self, layer: L) -> Self
    where
        L: tower::Layer<super::layers::ClientCallService> + Send + Sync + 'static,
        L::Service:
            tower::Service<super::layers::ClientCall, Response = super::Response> + Send + 'static,
        <L::Service as tower::Service<super::layers::ClientCall>>::Error:
            Into<super::layers::BoxError>,
        <L::Service as tower::Service<super::layers::ClientCall>>::Future: Send + 'static,
    {
        let extras = self.extras.get_or_insert_with(Default::default);
        Arc::make_mut(extras).layers.push(layer);
        self
    }

    /// The retry policy, if any ([`retry`](Self::retry)).
    pub fn get_retry(&self) -> Option<&super::RetryPolicy> {
        self.extras.as_ref()?.retry.as_ref()
    }

    /// Metadata sent with every call of the client (default none; PROTOCOL.md,
    /// "Call metadata"), e.g. a token or a tenant id;
    /// [`Client::with_metadata`](crate::Client::with_metadata) adds to it
    /// per call.
    ///
    /// ```
    /// # use mqrpc_runtime as mqrpc;
    /// use mqrpc::{ClientOptions, Metadata};
    /// let opts = ClientOptions::default()
    ///     .metadata(Metadata::from_pairs([("authorization", "Bearer t0k3n")])?);
    /// # let _ = opts;
    /// # Ok::<(), mqrpc::Error>(())
    /// ```
    pub fn metadata(mut self, metadata: crate::Metadata) -> Self {
        self.metadata = metadata;
        self
    }

    /// The configured timeout.
    pub fn get_timeout(&self) -> Duration {
        self.timeout
    }

    /// The longest a stream waits for its next item: the
    /// [`stream_idle_timeout`](Self::stream_idle_timeout) if set, else the
    /// [`timeout`](Self::timeout).
    pub fn get_stream_idle_timeout(&self) -> Duration {
        self.stream_idle_timeout.unwrap_or(self.timeout)
    }

    /// The limit on a stream's whole length, if set
    /// ([`stream_timeout`](Self::stream_timeout)).
    pub fn get_stream_timeout(&self) -> Option<Duration> {
        self.stream_timeout
    }
}
