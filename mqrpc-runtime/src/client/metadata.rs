//! Call metadata on the calling side: what a client sends with its calls
//! ([`Client::with_metadata`], [`ClientOptions::metadata`](crate::ClientOptions::metadata))
//! and where it puts the metadata of their answers
//! ([`Client::with_response_metadata`], [`ResponseMetadata`]).

use std::sync::{Arc, Mutex};

use super::Client;
use crate::Metadata;

/// Where a client puts the metadata of the answers to its calls, like
/// grpc-go's `grpc.Header(&md)` call option: give it to
/// [`Client::with_response_metadata`] (or a generated client's method of
/// the same name), make the call, then read it. Cheap to clone; clones
/// share what was recorded.
///
/// It holds the metadata of the latest answer: of a unary call, its
/// answer's; of a stream, its first answer's; of a broadcast, the last
/// answer read. A call that got no answer records nothing.
///
/// ```
/// # use mqrpc_runtime as mqrpc;
/// use mqrpc::ResponseMetadata;
/// let answer = ResponseMetadata::new();
/// assert!(answer.get().is_none()); // no answer yet
/// ```
#[derive(Debug, Clone, Default)]
pub struct ResponseMetadata(Arc<Mutex<Option<Metadata>>>);

impl ResponseMetadata {
    /// Nothing recorded yet.
    pub fn new() -> ResponseMetadata {
        ResponseMetadata::default()
    }

    /// The metadata of the latest answer (empty if it had none); `None`
    /// before any answer.
    pub fn get(&self) -> Option<Metadata> {
        self.lock().clone()
    }

    /// [`get`](Self::get), leaving nothing recorded.
    pub fn take(&self) -> Option<Metadata> {
        self.lock().take()
    }

    pub(crate) fn record(&self, metadata: &Metadata) {
        *self.lock() = Some(metadata.clone());
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Metadata>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Client {
    /// The same client, sending `metadata` with each call (unary, one-way,
    /// stream, broadcast) on top of its
    /// [`ClientOptions::metadata`](crate::ClientOptions::metadata): a key
    /// given here replaces the default's values for it. Cheap: made per
    /// call, like [`with_timeout`](Self::with_timeout). The handler reads it
    /// with `mqrpc::context::metadata()`; on the wire it is the user
    /// properties `md-<key>` (PROTOCOL.md, "Call metadata"). Metadata over
    /// its limits fails the call with
    /// [`Error::InvalidMetadata`](crate::Error::InvalidMetadata) before
    /// anything is sent.
    ///
    /// ```
    /// # use mqrpc_runtime as mqrpc;
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), mqrpc::Error> {
    /// use mqrpc::{context, Client, ClientOptions, Codec, Connection, Metadata, Reply, ResponseMetadata, Service};
    /// struct Whoami;
    /// impl Service for Whoami {
    ///     const NAME: &'static str = "Whoami";
    ///     const METHODS: &'static [&'static str] = &["tenant"];
    ///     async fn call(&self, _method: &str, codec: Codec, _payload: &[u8]) -> Reply {
    ///         let tenant = context::metadata().unwrap_or_default().get("tenant").map(str::to_string);
    ///         context::set_response_metadata("served-by", "node-1").unwrap();
    ///         Reply::ok(codec, &tenant)
    ///     }
    /// }
    /// let conn = Connection::from_env_or_embedded().await?;
    /// let _server = mqrpc::serve(&conn, Whoami, Default::default()).await?;
    /// let client = Client::new(&conn, "Whoami", ClientOptions::default()).await?;
    /// let answer = ResponseMetadata::new();
    /// let tenant: Option<String> = client
    ///     .with_metadata(Metadata::from_pairs([("tenant", "acme")])?)
    ///     .with_response_metadata(&answer)
    ///     .call("tenant", &())
    ///     .await?;
    /// assert_eq!(tenant.as_deref(), Some("acme"));
    /// assert_eq!(answer.get().unwrap().get("served-by"), Some("node-1"));
    /// # Ok(()) }
    /// ```
    pub fn with_metadata(&self, metadata: Metadata) -> Client {
        let mut client = self.clone();
        client.metadata = self.metadata.merged(&metadata);
        client
    }

    /// The same client, recording the metadata of its calls' answers in
    /// `answer` (see [`ResponseMetadata`] and the example at
    /// [`with_metadata`](Self::with_metadata)).
    pub fn with_response_metadata(&self, answer: &ResponseMetadata) -> Client {
        let mut client = self.clone();
        client.response_metadata = Some(answer.clone());
        client
    }

    /// The metadata this client sends with each call.
    pub fn metadata(&self) -> &Metadata {
        &self.metadata
    }
}
