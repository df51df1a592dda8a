//! What a running handler knows about the call it serves: [`Context`].
//!
//! # Task-local, not an argument
//!
//! The server runs every handler inside a **task-local** [`Context`]
//! (`tokio::task_local!`), read with [`Context::current`] or the functions
//! of this module ([`remaining`], [`metadata`], ...). An explicit
//! `&Context` argument was the other choice; the task-local wins because
//! a trait method's signature stays the one its clients see (the same
//! trait gives the client stub and the server), a handler that does not
//! look pays nothing (the context is built from fields the request already
//! has, with no allocation), and code deep inside a handler (a helper,
//! a tower layer, a logging call) reads it without every function passing
//! it on.
//!
//! # Spawned tasks lose it, unless carried over
//!
//! A task-local belongs to the handler's own task: a task started with
//! `tokio::spawn` from a handler sees **no** context
//! ([`Context::current`] is `None` there), and its response metadata
//! would go nowhere. To keep it, carry it over explicitly:
//! `let cx = Context::current()`, then `tokio::spawn(cx.unwrap().scope(fut))`.
//! A carried-over context shares the call's response metadata: what the
//! spawned task sets before the handler returns goes with the answer;
//! later changes are lost (the answer is gone). The items of a streaming
//! method are produced after the handler returned, outside its context.
//!
//! ```
//! # use mqrpc_runtime as mqrpc;
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), mqrpc::Error> {
//! use mqrpc::context::{self, Context};
//! use mqrpc::Metadata;
//! let cx = Context::new("Calculator", "add")
//!     .with_metadata(Metadata::from_pairs([("tenant", "acme")])?);
//! cx.clone().scope(async {
//!     // What a handler sees:
//!     assert_eq!(context::metadata().unwrap().get("tenant"), Some("acme"));
//!     context::set_response_metadata("served-by", "node-1").unwrap();
//!     // A spawned task has no context, unless it is carried over.
//!     let lost = tokio::spawn(async { Context::current().is_none() });
//!     assert!(lost.await.unwrap());
//!     let carried = Context::current().unwrap();
//!     let kept = tokio::spawn(carried.scope(async { Context::current().unwrap().method().to_string() }));
//!     assert_eq!(kept.await.unwrap(), "add");
//! })
//! .await;
//! assert_eq!(cx.response_metadata().get("served-by"), Some("node-1"));
//! // Outside a handler there is no call.
//! assert!(context::current().is_none());
//! # Ok(()) }
//! ```

use std::borrow::Cow;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use crate::{Error, Metadata};

tokio::task_local! {
    static CURRENT: Context;
}

/// The call a handler is serving: its service and method, the caller's
/// metadata, Response Topic and deadline, its trace context, whether it
/// was delivered before, and the metadata of its answer.
///
/// Built by the server for every call; [`Context::new`] builds one for
/// tests. Cloning it (what [`Context::current`] returns) shares the
/// answer's metadata with the original.
pub struct Context {
    service: &'static str,
    method: Cow<'static, str>,
    metadata: Metadata,
    reply_topic: Option<String>,
    deadline: Option<Instant>,
    traceparent: Option<String>,
    tracestate: Option<String>,
    redelivered: bool,
    /// The answer's metadata, made on first use.
    response: OnceLock<Arc<Mutex<Metadata>>>,
}

impl Clone for Context {
    fn clone(&self) -> Context {
        Context {
            service: self.service,
            method: self.method.clone(),
            metadata: self.metadata.clone(),
            reply_topic: self.reply_topic.clone(),
            deadline: self.deadline,
            traceparent: self.traceparent.clone(),
            tracestate: self.tracestate.clone(),
            redelivered: self.redelivered,
            response: OnceLock::from(self.response_slot().clone()),
        }
    }
}

impl std::fmt::Debug for Context {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Context")
            .field("service", &self.service)
            .field("method", &self.method)
            .field("metadata", &self.metadata)
            .field("reply_topic", &self.reply_topic)
            .field("deadline", &self.deadline)
            .field("traceparent", &self.traceparent)
            .field("redelivered", &self.redelivered)
            .finish()
    }
}

impl Context {
    /// A context of `method` of `service`, with no deadline, metadata or
    /// Response Topic (add them with the `with_*` methods): for tests of
    /// handlers, and for layers that make calls of their own.
    pub fn new(service: &'static str, method: &str) -> Context {
        Context {
            service,
            method: Cow::Owned(method.to_string()),
            metadata: Metadata::new(),
            reply_topic: None,
            deadline: None,
            traceparent: None,
            tracestate: None,
            redelivered: false,
            response: OnceLock::new(),
        }
    }

    /// What the server knows of a request, moved in (no copies).
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn of_request(
        service: &'static str,
        method: Cow<'static, str>,
        metadata: Metadata,
        reply_topic: Option<String>,
        deadline: Option<Instant>,
        trace: Option<crate::observe::TraceContext>,
        redelivered: bool,
    ) -> Context {
        let (traceparent, tracestate) =
            trace.map_or((None, None), |t| (t.traceparent, t.tracestate));
        Context {
            service,
            method,
            metadata,
            reply_topic,
            deadline,
            traceparent,
            tracestate,
            redelivered,
            response: OnceLock::new(),
        }
    }

    /// The same context with this deadline.
    pub fn with_deadline(mut self, deadline: Option<Instant>) -> Context {
        self.deadline = deadline;
        self
    }

    /// The same context with this caller's metadata.
    pub fn with_metadata(mut self, metadata: Metadata) -> Context {
        self.metadata = metadata;
        self
    }

    /// The same context with this Response Topic.
    pub fn with_reply_topic(mut self, topic: impl Into<String>) -> Context {
        self.reply_topic = Some(topic.into());
        self
    }

    /// The same context, marked as a redelivery (or not).
    pub fn with_redelivered(mut self, redelivered: bool) -> Context {
        self.redelivered = redelivered;
        self
    }

    /// The context of the call the current task serves: `None` outside a
    /// handler, and in a task it spawned unless carried over with
    /// [`scope`](Self::scope).
    pub fn current() -> Option<Context> {
        CURRENT.try_with(Context::clone).ok()
    }

    /// Runs `future` with this context as the current one: how a task
    /// spawned by a handler keeps it.
    pub async fn scope<F: std::future::Future>(self, future: F) -> F::Output {
        CURRENT.scope(self, future).await
    }

    /// [`scope`](Self::scope) as a named future, whose context the
    /// dispatcher takes back afterwards.
    pub(crate) fn scoped<F: std::future::Future>(
        self,
        future: F,
    ) -> tokio::task::futures::TaskLocalFuture<Context, F> {
        CURRENT.scope(self, future)
    }

    /// The service's wire name.
    pub fn service(&self) -> &str {
        self.service
    }

    /// The method's wire name (the request topic's last level).
    pub fn method(&self) -> &str {
        &self.method
    }

    pub(crate) fn method_name(&self) -> Cow<'static, str> {
        self.method.clone()
    }

    /// The caller's metadata (PROTOCOL.md, "Call metadata"), as it came:
    /// the `md-` user properties of the request.
    pub fn metadata(&self) -> &Metadata {
        &self.metadata
    }

    /// Where the answer goes: the request's Response Topic (`None` for a
    /// one-way call).
    pub fn reply_topic(&self) -> Option<&str> {
        self.reply_topic.as_deref()
    }

    /// The caller's MQTT client id, where the request carries it: the last
    /// level of a Response Topic of mqrpc's form
    /// `<reply prefix>/_reply/<client id>` (as a topic level). MQTT does
    /// not tell a receiver who published, so this is what the caller says,
    /// not a proof; `None` for other topics (a foreign peer's, or one
    /// under a broker's Response Information).
    pub fn caller_id(&self) -> Option<&str> {
        let topic = self.reply_topic.as_deref()?;
        let (rest, id) = topic.rsplit_once('/')?;
        let reply_level = rest.rsplit('/').next()?;
        (reply_level == crate::protocol::REPLY_LEVEL && !id.is_empty()).then_some(id)
    }

    /// When the caller stops waiting. The server stops the handler then.
    pub fn deadline(&self) -> Option<Instant> {
        self.deadline
    }

    /// Time left until the deadline (zero once it passed).
    pub fn remaining(&self) -> Option<Duration> {
        self.deadline
            .map(|d| d.saturating_duration_since(Instant::now()))
    }

    /// The caller's W3C `traceparent`, if the request carried one
    /// (PROTOCOL.md, "Trace context").
    pub fn traceparent(&self) -> Option<&str> {
        self.traceparent.as_deref()
    }

    /// The caller's W3C `tracestate`, if the request carried one.
    pub fn tracestate(&self) -> Option<&str> {
        self.tracestate.as_deref()
    }

    /// True when the broker delivered this request before (the MQTT DUP
    /// flag: a QoS 1 or 2 request sent again after a reconnect, whose
    /// first delivery the server did not acknowledge). A copy of a call
    /// the server still remembers never runs again (PROTOCOL.md,
    /// "Duplicates"); one it forgot does, with this set, so a handler
    /// with side effects can check before acting twice.
    pub fn is_redelivery(&self) -> bool {
        self.redelivered
    }

    fn response_slot(&self) -> &Arc<Mutex<Metadata>> {
        self.response.get_or_init(Default::default)
    }

    fn response_lock(&self) -> std::sync::MutexGuard<'_, Metadata> {
        self.response_slot()
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    /// Sets `key` of the answer's metadata (replacing its values); the
    /// caller reads it with `Client::with_response_metadata`. Checked like
    /// [`Metadata::insert`].
    pub fn set_response_metadata(&self, key: &str, value: impl Into<String>) -> Result<(), Error> {
        self.response_lock().insert(key, value)
    }

    /// Adds a value to `key` of the answer's metadata, keeping those it
    /// had ([`Metadata::append`]).
    pub fn append_response_metadata(
        &self,
        key: &str,
        value: impl Into<String>,
    ) -> Result<(), Error> {
        self.response_lock().append(key, value)
    }

    /// Replaces the answer's metadata.
    pub fn replace_response_metadata(&self, metadata: Metadata) {
        *self.response_lock() = metadata;
    }

    /// The answer's metadata so far.
    pub fn response_metadata(&self) -> Metadata {
        match self.response.get() {
            Some(_) => self.response_lock().clone(),
            None => Metadata::new(),
        }
    }

    /// What the server sends with the answer, and the Response Topic back.
    pub(crate) fn into_reply_parts(self) -> (Metadata, Option<String>) {
        (self.response_metadata(), self.reply_topic)
    }
}

/// The context of the call the current task serves, if any (a clone; see
/// [`Context::current`]).
pub fn current() -> Option<Context> {
    Context::current()
}

/// Deadline of the call the current task serves.
pub fn deadline() -> Option<Instant> {
    CURRENT.try_with(|c| c.deadline()).ok().flatten()
}

/// Time left for the call the current task serves.
pub fn remaining() -> Option<Duration> {
    CURRENT.try_with(|c| c.remaining()).ok().flatten()
}

/// The caller's metadata of the call the current task serves (a cheap
/// clone); `None` outside a handler.
pub fn metadata() -> Option<Metadata> {
    CURRENT.try_with(|c| c.metadata().clone()).ok()
}

/// Sets `key` of the answer's metadata of the call the current task
/// serves ([`Context::set_response_metadata`]). Fails outside a handler.
pub fn set_response_metadata(key: &str, value: impl Into<String>) -> Result<(), Error> {
    let value = value.into();
    CURRENT
        .try_with(|c| c.set_response_metadata(key, value))
        .unwrap_or_else(|_| {
            Err(Error::InvalidMetadata {
                reason: "no call is being served on this task (outside a handler, or in a task it spawned without `Context::scope`)".into(),
            })
        })
}
