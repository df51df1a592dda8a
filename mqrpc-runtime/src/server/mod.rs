//! The serving side: subscribe to a service's method topics, admit each
//! request (deadline, duplicates, concurrency limit, size), run it on the
//! generated [`Service`] implementation, and always answer when the request
//! names a Response Topic.

mod answer;
mod backlog;
mod call;
pub mod context;
mod dispatch;
mod duplicates;
mod handle;
pub(crate) mod layers;
mod limits;
mod options;
pub(crate) mod reassembly;
mod request;
mod retries;
mod stats;
mod streaming;
pub(crate) mod upstream;

pub use call::Call;
pub use handle::{serve, ServerHandle};
pub use limits::ServerUsage;
pub use options::ServerOptions;
pub use reassembly::ChunkedUsage;
pub(crate) use request::Request;
pub(crate) use stats::Counters;
pub(crate) use streaming::EncodedItems;
pub use streaming::Stream;

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;

use futures_util::FutureExt;
use serde::Serialize;
use tracing::warn;

use crate::protocol::{Status, SCHEMA_PARAMETER};
use crate::{Codec, Error};

/// A service the runtime can serve: implemented by the generated
/// `<Trait>Server` type, rarely by hand.
///
/// ```
/// # use mqrpc_runtime as mqrpc;
/// use mqrpc::{Codec, Reply, Service, Status};
/// struct Echo;
/// impl Service for Echo {
///     const NAME: &'static str = "Echo";
///     const METHODS: &'static [&'static str] = &["echo"];
///     async fn call(&self, method: &str, codec: Codec, payload: &[u8]) -> Reply {
///         match method {
///             "echo" => match codec.decode::<String>(payload) {
///                 Ok(text) => Reply::ok(codec, &text),
///                 Err(e) => Reply::bad_request(e),
///             },
///             other => Reply::unknown_method(other),
///         }
///     }
/// }
/// # let reply = futures_util::FutureExt::now_or_never(Echo.call("nope", Codec::Json, b"")).unwrap();
/// # assert_eq!(reply.status(), Status::UnknownMethod);
/// ```
pub trait Service: Send + Sync + 'static {
    /// Service name: the topic level after the prefix.
    const NAME: &'static str;
    /// Wire names of the methods.
    const METHODS: &'static [&'static str];
    /// Wire names of the methods marked `#[mqrpc(idempotent)]`: running
    /// one twice does no harm, so the server runs a retry of it even when
    /// it cannot tell whether an earlier attempt ran (PROTOCOL.md,
    /// "Retries"). Default: none.
    const IDEMPOTENT: &'static [&'static str] = &[];

    /// Version of the crate that defines the server (generated:
    /// its `CARGO_PKG_VERSION`), reported by `_info`.
    fn version() -> &'static str {
        ""
    }

    /// The schema fingerprint of `method`, compared with the one a request
    /// names; `None`: not checked. Generated: a hash of the wire structure
    /// of its argument and output types, traced through their serde impls
    /// ([`protocol::schema`](crate::protocol::schema); PROTOCOL.md,
    /// "Schema fingerprints").
    fn schema(method: &str) -> Option<&'static str> {
        let _ = method;
        None
    }

    /// Whether `method` takes a stream of items from its caller (an
    /// argument of type `mqrpc::Stream<T>`; PROTOCOL.md, "Client streaming
    /// and bidirectional streaming"): its calls then get an upstream,
    /// which the generated [`call`](Service::call) takes with
    /// `mqrpc::__private::upstream::take`. Generated; `false` by default.
    ///
    /// ```
    /// # use mqrpc_runtime as mqrpc;
    /// use mqrpc::{Codec, Reply, Service};
    /// struct Plain;
    /// impl Service for Plain {
    ///     const NAME: &'static str = "Plain";
    ///     const METHODS: &'static [&'static str] = &["get"];
    ///     async fn call(&self, _: &str, codec: Codec, _: &[u8]) -> Reply {
    ///         Reply::ok(codec, &1u8)
    ///     }
    /// }
    /// assert!(!Plain::takes_stream("get"));
    /// ```
    fn takes_stream(method: &str) -> bool {
        let _ = method;
        false
    }

    /// Decodes the arguments of `method`, runs it, encodes its outcome.
    fn call(
        &self,
        method: &str,
        codec: Codec,
        payload: &[u8],
    ) -> impl Future<Output = Reply> + Send;
}

/// The outcome of one call, ready to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    status: Status,
    /// `None`: the payload is a UTF-8 message.
    codec: Option<Codec>,
    payload: Vec<u8>,
    /// A streaming method's items, sent one response each.
    stream: Option<Arc<crate::server::EncodedItems>>,
}

impl Reply {
    /// A successful result.
    pub fn ok<T: Serialize + ?Sized>(codec: Codec, value: &T) -> Reply {
        Self::encoded(Status::Ok, codec, value)
    }

    /// The items of a streaming method (`-> mqrpc::Stream<T>`).
    pub fn stream<T: Serialize + Send + 'static>(codec: Codec, items: crate::Stream<T>) -> Reply {
        Reply {
            status: Status::Ok,
            codec: Some(codec),
            payload: Vec::new(),
            stream: Some(Arc::new(crate::server::EncodedItems::new(codec, items))),
        }
    }

    /// A typed application error (`Err(E)` of a `Result<T, E>` method).
    pub fn app_error<E: Serialize + ?Sized>(codec: Codec, error: &E) -> Reply {
        Self::encoded(Status::Error, codec, error)
    }

    fn encoded<T: Serialize + ?Sized>(status: Status, codec: Codec, value: &T) -> Reply {
        match codec.encode(value) {
            Ok(payload) => Reply {
                status,
                codec: Some(codec),
                payload,
                stream: None,
            },
            Err(e) => Reply::failure(Status::Internal, format!("cannot encode the result: {e}")),
        }
    }

    /// A framework failure with a human-readable message.
    pub fn failure(status: Status, message: impl std::fmt::Display) -> Reply {
        Reply {
            status,
            codec: None,
            payload: message.to_string().into_bytes(),
            stream: None,
        }
    }

    /// The answer to a method the service does not have.
    pub fn unknown_method(method: &str) -> Reply {
        Self::failure(Status::UnknownMethod, format!("no method `{method}`"))
    }

    /// The answer to arguments that could not be decoded.
    pub fn bad_request(error: Error) -> Reply {
        let message = match error {
            Error::Decode { reason } => format!("cannot decode the arguments: {reason}"),
            other => other.to_string(),
        };
        Self::failure(Status::BadRequest, message)
    }

    /// The status this reply carries.
    pub fn status(&self) -> Status {
        self.status
    }

    /// True for the reply of a streaming method: its items follow as
    /// separate answers.
    pub fn is_stream(&self) -> bool {
        self.stream.is_some()
    }

    /// The encoded payload (or UTF-8 message).
    pub fn payload(&self) -> &[u8] {
        &self.payload
    }
}

/// Decodes, runs and encodes one request on `service`, without a broker:
/// what a server answers (its status and payload), deadline aside. Useful
/// to test a service implementation, and what the server runs per request.
///
/// ```
/// # use mqrpc_runtime as mqrpc;
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// use mqrpc::{respond, Codec, Reply, Service, Status};
/// struct Echo;
/// impl Service for Echo {
///     const NAME: &'static str = "Echo";
///     const METHODS: &'static [&'static str] = &["echo"];
///     async fn call(&self, method: &str, codec: Codec, payload: &[u8]) -> Reply {
///         match codec.decode::<String>(payload) {
///             Ok(text) => Reply::ok(codec, &text),
///             Err(e) => Reply::bad_request(e),
///         }
///     }
/// }
/// let reply = respond(&Echo, "echo", Some("application/json"), br#""hi""#).await;
/// assert_eq!((reply.status(), reply.payload()), (Status::Ok, &br#""hi""#[..]));
/// let reply = respond(&Echo, "echo", Some("text/xml"), b"<hi/>").await;
/// assert_eq!(reply.status(), Status::UnsupportedContentType);
/// # }
/// ```
pub async fn respond<S: Service>(
    service: &S,
    method: &str,
    content_type: Option<&str>,
    payload: &[u8],
) -> Reply {
    let codec = match Codec::from_content_type(content_type) {
        Ok(codec) => codec,
        Err(Error::Protocol { reason }) | Err(Error::Decode { reason }) => {
            return Reply::failure(Status::UnsupportedContentType, reason)
        }
        Err(other) => return Reply::failure(Status::UnsupportedContentType, other),
    };
    if method.starts_with('_') {
        return Reply::unknown_method(method);
    }
    if let Some(theirs) = content_type.and_then(schema_parameter) {
        if let Some(ours) = S::schema(method) {
            if theirs != ours {
                return Reply::failure(
                    Status::SchemaMismatch,
                    format!("client {theirs}, server {ours}"),
                );
            }
        }
    }
    AssertUnwindSafe(service.call(method, codec, payload))
        .catch_unwind()
        .await
        .unwrap_or_else(|panic| {
            let what = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".into());
            warn!(service = S::NAME, %method, panic = %what, "handler panicked");
            Reply::failure(
                Status::Internal,
                format!("the handler of `{method}` panicked: {what}"),
            )
        })
}

/// The `schema=` parameter of a Content Type.
fn schema_parameter(content_type: &str) -> Option<&str> {
    content_type.split(';').skip(1).find_map(|parameter| {
        let (name, value) = parameter.split_once('=')?;
        (name.trim() == SCHEMA_PARAMETER).then(|| value.trim())
    })
}
