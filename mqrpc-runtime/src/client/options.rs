//! Per-client settings.

use std::sync::Arc;
use std::time::Duration;

use crate::protocol::DEFAULT_PREFIX;
use crate::{Codec, QoS};

/// Default time a call waits for its answer.
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
}

impl Default for ClientOptions {
    /// Prefix `mqrpc`, timeout 10 s, QoS 1, postcard, batches on.
    fn default() -> Self {
        ClientOptions {
            prefix: Arc::from(DEFAULT_PREFIX),
            timeout: DEFAULT_TIMEOUT,
            qos: QoS::AtLeastOnce,
            codec: Codec::Postcard,
            batches: true,
        }
    }
}

impl ClientOptions {
    /// Topic prefix of the service (default `mqrpc`); must match the server's.
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = Arc::from(prefix.into());
        self
    }

    /// Time a call waits for its answer (default 10 s).
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

    /// The configured timeout.
    pub fn get_timeout(&self) -> Duration {
        self.timeout
    }
}
