//! Server middleware: [`tower::Layer`]s around a service's methods
//! ([`ServerOptions::layer`](crate::ServerOptions::layer)), in the shape of
//! tonic's and jsonrpsee's: each request is a [`Call`], each answer a
//! [`Reply`], so tower's `ConcurrencyLimitLayer`, `RateLimitLayer`,
//! `LoadShedLayer`, `TimeoutLayer` and a user's own layers apply unchanged.
//!
//! The layers see every call of the service's own methods, after the
//! server's admission (duplicates, deadline, size, its own queue) and
//! before the method runs; the built-ins (`_ping`, `_info`, `_stats`) pass
//! them by, so a service held back by its layers can still be looked at.
//! A layer refuses a call by failing it: a [`Rejection`] carries the status
//! the caller sees (`unauthenticated`, `permission-denied`,
//! `resource-exhausted`, ...), tower's load shedding answers
//! `resource-exhausted` and its timeout `deadline-exceeded`; any other
//! error is `internal`.
//!
//! All calls go through one stack of layers, as through one tower
//! service: a call waits for the stack to be ready (`poll_ready`: a
//! concurrency limit's permit, a rate limit's next period) in turn, then
//! runs on its own. Without layers none of this exists: the handler is
//! called directly.

mod intercept;

pub use intercept::{intercept, InterceptLayer};

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use tower::util::BoxService;
use tower::{Layer, Service as _, ServiceExt};

use super::{respond, Reply, Request, Service};
use crate::Status;

/// The error type of layered services: any error, boxed (tower's own
/// `BoxError`).
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The service a layer wraps: the layers added after it, around the
/// service's methods.
pub type CallService = BoxService<Call, Reply, BoxError>;

/// One call as the server's layers see it: which method, its payload
/// (still encoded), its Content Type and deadline.
///
/// ```
/// # use mqrpc_runtime as mqrpc;
/// use mqrpc::layers::Call;
/// let call = Call::new("Calculator", "add", None, vec![4, 6]);
/// assert_eq!((call.service(), call.method()), ("Calculator", "add"));
/// assert_eq!(call.payload(), &[4, 6]);
/// assert_eq!(call.deadline(), None);
/// ```
#[derive(Debug, Clone)]
pub struct Call {
    service: &'static str,
    method: String,
    content_type: Option<String>,
    payload: Bytes,
    deadline: Option<Instant>,
    metadata: crate::Metadata,
}

impl Call {
    /// A call of `method` of `service` (to drive a layered service in a
    /// test, or a layer of one's own).
    pub fn new(
        service: &'static str,
        method: &str,
        content_type: Option<&str>,
        payload: impl Into<Bytes>,
    ) -> Call {
        Call {
            service,
            method: method.to_string(),
            content_type: content_type.map(str::to_string),
            payload: payload.into(),
            deadline: None,
            metadata: crate::Metadata::new(),
        }
    }

    pub(in crate::server) fn of(service: &'static str, request: &Request) -> Call {
        Call {
            service,
            method: request.method.clone(),
            content_type: request.content_type.clone(),
            payload: request.payload.clone(),
            deadline: request.deadline,
            metadata: request.metadata.clone(),
        }
    }

    /// The service's name.
    pub fn service(&self) -> &'static str {
        self.service
    }

    /// The method's wire name.
    pub fn method(&self) -> &str {
        &self.method
    }

    /// The request's Content Type, if it has one (absent: postcard).
    pub fn content_type(&self) -> Option<&str> {
        self.content_type.as_deref()
    }

    /// The encoded arguments.
    pub fn payload(&self) -> &[u8] {
        &self.payload
    }

    /// The caller's metadata (PROTOCOL.md, "Call metadata"): where an
    /// auth layer finds a token.
    pub fn metadata(&self) -> &crate::Metadata {
        &self.metadata
    }

    /// When the caller stops waiting, if the request says.
    pub fn deadline(&self) -> Option<Instant> {
        self.deadline
    }
}

/// A layer's refusal of a call, with the status its caller sees; the
/// method does not run. Return it (boxed, as any error) from a layer's
/// service.
///
/// ```
/// # use mqrpc_runtime as mqrpc;
/// use mqrpc::layers::Rejection;
/// use mqrpc::Status;
/// let no = Rejection::unauthenticated("no token");
/// assert_eq!(no.status(), Status::Unauthenticated);
/// assert_eq!(no.to_string(), "no token");
/// let reply = Rejection::resource_exhausted("10 calls a minute").into_reply();
/// assert_eq!(reply.status(), Status::ResourceExhausted);
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    status: Status,
    message: String,
}

impl Rejection {
    /// A refusal with any status that means "did not run" (for `ok`,
    /// `error` and `end`, which do not, `internal` is sent instead).
    pub fn new(status: Status, message: impl Into<String>) -> Rejection {
        let status = match status {
            Status::Ok | Status::Error | Status::End => Status::Internal,
            other => other,
        };
        Rejection {
            status,
            message: message.into(),
        }
    }

    /// `unauthenticated`: no credentials, or none accepted
    /// ([`Error::Unauthenticated`](crate::Error::Unauthenticated)).
    pub fn unauthenticated(message: impl Into<String>) -> Rejection {
        Rejection::new(Status::Unauthenticated, message)
    }

    /// `permission-denied`: the caller may not call this method
    /// ([`Error::PermissionDenied`](crate::Error::PermissionDenied)).
    pub fn permission_denied(message: impl Into<String>) -> Rejection {
        Rejection::new(Status::PermissionDenied, message)
    }

    /// `resource-exhausted`: a quota is used up; retry later
    /// ([`Error::ResourceExhausted`](crate::Error::ResourceExhausted)).
    pub fn resource_exhausted(message: impl Into<String>) -> Rejection {
        Rejection::new(Status::ResourceExhausted, message)
    }

    /// The status the caller sees.
    pub fn status(&self) -> Status {
        self.status
    }

    /// The answer it makes.
    pub fn into_reply(self) -> Reply {
        Reply::failure(self.status, self.message)
    }
}

impl std::fmt::Display for Rejection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Rejection {}

/// The answer to a call its layers failed with `error`.
fn failed(error: BoxError) -> Reply {
    let error = match error.downcast::<Rejection>() {
        Ok(rejection) => return rejection.into_reply(),
        Err(error) => error,
    };
    if error.is::<tower::load_shed::error::Overloaded>() {
        return Reply::failure(
            Status::ResourceExhausted,
            "the service sheds load: too many calls at once",
        );
    }
    if error.is::<tower::timeout::error::Elapsed>() {
        return Reply::failure(
            Status::DeadlineExceeded,
            "a server layer's timeout passed before the method finished",
        );
    }
    Reply::failure(Status::Internal, format!("a server layer failed: {error}"))
}

/// How to wrap a service: one function per [`ServerOptions::layer`]
/// (crate::ServerOptions::layer), applied when it is served.
type Wrap = Arc<dyn Fn(CallService) -> CallService + Send + Sync>;

/// The layers of a server's options, outermost first.
#[derive(Clone, Default)]
pub(crate) struct Layers(Vec<Wrap>);

impl std::fmt::Debug for Layers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} layers", self.0.len())
    }
}

impl Layers {
    pub(crate) fn push<L>(&mut self, layer: L)
    where
        L: Layer<CallService> + Send + Sync + 'static,
        L::Service: tower::Service<Call, Response = Reply> + Send + 'static,
        <L::Service as tower::Service<Call>>::Error: Into<BoxError>,
        <L::Service as tower::Service<Call>>::Future: Send + 'static,
    {
        self.0.push(Arc::new(move |inner| {
            BoxService::new(layer.layer(inner).map_err(Into::into))
        }));
    }

    /// The layers around `service`'s methods, or `None` without layers.
    pub(crate) fn build<S: Service>(&self, service: &Arc<S>) -> Option<Layered> {
        if self.0.is_empty() {
            return None;
        }
        let inner = BoxService::new(Methods(service.clone()));
        let stack = self.0.iter().rev().fold(inner, |inner, wrap| wrap(inner));
        Some(Layered(tokio::sync::Mutex::new(stack)))
    }
}

/// A served service's layers around its methods.
pub(crate) struct Layered(tokio::sync::Mutex<CallService>);

impl Layered {
    /// Runs `request` through the layers; boxed, so that a server without
    /// layers does not carry this future's size in every call.
    pub(crate) fn call(&self, call: Call) -> Pin<Box<dyn Future<Output = Reply> + Send + '_>> {
        Box::pin(async move {
            let answer = {
                let mut stack = self.0.lock().await;
                match stack.ready().await {
                    Ok(ready) => ready.call(call),
                    Err(error) => return failed(error),
                }
            };
            answer.await.unwrap_or_else(failed)
        })
    }
}

impl<S: Service> super::dispatch::Dispatcher<S> {
    /// The handler of `call` in its context: through the layers, if the
    /// server has any (`layered`: them, and the call as they see it).
    pub(in crate::server) fn handle<'a>(
        &'a self,
        call: super::Call,
        layered: Option<(&'a Layered, Call)>,
        upstream: Option<super::upstream::RawUpstream>,
    ) -> tokio::task::futures::TaskLocalFuture<
        super::context::Context,
        impl Future<Output = Reply> + Send + 'a,
    > {
        let (context, content_type, payload) = call.into_parts();
        let method = context.method_name();
        let service = &*self.service;
        context.scoped(async move {
            let work = async move {
                match layered {
                    None => respond(service, &method, content_type.as_deref(), &payload).await,
                    Some((layers, call)) => layers.call(call).await,
                }
            };
            super::upstream::scope(upstream, work).await
        })
    }
}

/// The innermost service: the methods themselves.
struct Methods<S>(Arc<S>);

impl<S: Service> tower::Service<Call> for Methods<S> {
    type Response = Reply;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Reply, BoxError>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, call: Call) -> Self::Future {
        let service = self.0.clone();
        Box::pin(async move {
            let content_type = call.content_type.as_deref();
            Ok(respond(&*service, &call.method, content_type, &call.payload).await)
        })
    }
}
