//! One call as the server hands it to a service: [`Call`], the request
//! type that layers around a service see (method, service, metadata,
//! payload, and the whole [`Context`]), and how the dispatcher runs it.

use std::borrow::Cow;
use std::future::Future;

use bytes::Bytes;
use tokio::task::futures::TaskLocalFuture;

use super::context::Context;
use super::{respond, Reply, Request, Service};
use crate::Metadata;

/// One call on the server, after admission (duplicates, deadline, limits)
/// and before its handler: its [`Context`] (service, method, the caller's
/// metadata, Response Topic, deadline, trace context, redelivery flag,
/// the answer's metadata) and its encoded arguments.
///
/// ```
/// # use mqrpc_runtime as mqrpc;
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), mqrpc::Error> {
/// use mqrpc::context::Context;
/// use mqrpc::{Call, Codec, Metadata, Reply, Service, Status};
/// struct Echo;
/// impl Service for Echo {
///     const NAME: &'static str = "Echo";
///     const METHODS: &'static [&'static str] = &["echo"];
///     async fn call(&self, _method: &str, codec: Codec, payload: &[u8]) -> Reply {
///         let who = mqrpc::context::metadata().unwrap_or_default();
///         Reply::ok(codec, &(who.get("user").unwrap_or("?"), payload.len()))
///     }
/// }
/// let md = Metadata::from_pairs([("user", "ada")])?;
/// let call = Call::new(Context::new("Echo", "echo").with_metadata(md), None, vec![1, 2, 3]);
/// assert_eq!((call.service(), call.method()), ("Echo", "echo"));
/// assert_eq!(call.metadata().get("user"), Some("ada"));
/// let (reply, _cx) = call.run(&Echo).await;
/// assert_eq!(reply.status(), Status::Ok);
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct Call {
    context: Context,
    content_type: Option<String>,
    payload: Bytes,
}

impl Call {
    /// A call of `context`'s method with these encoded arguments (the
    /// request's Content Type: `None` is postcard).
    pub fn new(context: Context, content_type: Option<String>, payload: impl Into<Bytes>) -> Call {
        Call {
            context,
            content_type,
            payload: payload.into(),
        }
    }

    /// The request's fields, moved into a call (no copies).
    pub(crate) fn of_request<S: Service>(
        request: &mut Request,
        method: Option<&'static str>,
    ) -> Call {
        let name = match method {
            Some(known) => Cow::Borrowed(known),
            None => Cow::Owned(request.method.clone()),
        };
        let context = Context::of_request(
            S::NAME,
            name,
            std::mem::take(&mut request.metadata),
            request.response_topic.take(),
            request.deadline,
            request.trace.take(),
            request.redelivered,
        );
        Call {
            context,
            content_type: request.content_type.take(),
            payload: std::mem::take(&mut request.payload),
        }
    }

    /// The call's parts: its context, Content Type and arguments.
    pub fn into_parts(self) -> (Context, Option<String>, Bytes) {
        (self.context, self.content_type, self.payload)
    }

    /// The call's context.
    pub fn context(&self) -> &Context {
        &self.context
    }

    /// The service's wire name.
    pub fn service(&self) -> &str {
        self.context.service()
    }

    /// The method's wire name.
    pub fn method(&self) -> &str {
        self.context.method()
    }

    /// The caller's metadata.
    pub fn metadata(&self) -> &Metadata {
        self.context.metadata()
    }

    /// The request's Content Type (`None`: postcard).
    pub fn content_type(&self) -> Option<&str> {
        self.content_type.as_deref()
    }

    /// The encoded arguments.
    pub fn payload(&self) -> &Bytes {
        &self.payload
    }

    /// Runs the call on `service` inside its context (what the server
    /// does, without deadline or cancellation: see [`respond`]), and gives
    /// the context back with the answer's metadata in it.
    pub async fn run<S: Service>(self, service: &S) -> (Reply, Context) {
        let mut scoped = std::pin::pin!(self.handler(service));
        let reply = scoped.as_mut().await;
        let context = scoped
            .as_mut()
            .take_value()
            .expect("the context is taken back once");
        (reply, context)
    }

    /// The handler of this call on `service`, inside its context, which
    /// the caller takes back from the future (`take_value`) when it is
    /// done, or stopped.
    pub(crate) fn handler<S: Service>(
        self,
        service: &S,
    ) -> TaskLocalFuture<Context, impl Future<Output = Reply> + '_> {
        let Call {
            context,
            content_type,
            payload,
        } = self;
        let method = context.method_name();
        context.scoped(
            async move { respond(service, &method, content_type.as_deref(), &payload).await },
        )
    }
}

/// What the handler's context gives back to its request: the Response
/// Topic it borrowed, and the answer's metadata.
pub(crate) fn give_back(request: &mut Request, context: Option<Context>) {
    if let Some(context) = context {
        let (reply_metadata, reply_topic) = context.into_reply_parts();
        request.reply_metadata = reply_metadata;
        request.response_topic = reply_topic;
    }
}
