//! The serving side: subscribe to a service's method topics, admit each
//! request (deadline, duplicates, concurrency limit, size), run it on the
//! generated [`Service`] implementation, and always answer when the request
//! names a Response Topic.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::{FutureExt, StreamExt};
use rumqttc::v5::mqttbytes::v5::{Publish, PublishProperties};
use serde::Serialize;
use tokio::sync::{oneshot, OwnedSemaphorePermit, Semaphore};
use tracing::{debug, warn};

use crate::calls::{Admission, CachedReply, CallId, CallKey, CallTable, Limits};
use crate::connection::{Connection, Sink};
use crate::context::CallContext;
use crate::observe::{self, TraceContext};
use crate::protocol::{
    Status, ANY_SERVICE, BROADCAST_LEVEL, CANCEL_METHOD, CANCEL_RESPONSE_TOPIC_PROPERTY,
    CREDIT_METHOD, CREDIT_PROPERTY, DEFAULT_PREFIX, DEFAULT_SHARE_GROUP, INSTANCE_PROPERTY,
    POSTCARD_CONTENT_TYPE, SCHEMA_PARAMETER, SEQ_PROPERTY, STATUS_PROPERTY, TEXT_CONTENT_TYPE,
    TIMEOUT_PROPERTY,
};
use crate::{topic, Codec, Error, QoS};

/// A service the runtime can serve: implemented by the generated
/// `<Trait>Server` type, rarely by hand.
///
/// ```
/// use mqrpc_runtime::{Codec, Reply, Service, Status};
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

    /// Version of the crate that defines the server (generated:
    /// its `CARGO_PKG_VERSION`), reported by `_info`.
    fn version() -> &'static str {
        ""
    }

    /// The schema fingerprint of `method` (generated: a hash of its
    /// argument and return types as declared in the trait), compared with
    /// the one a request names. `None`: not checked.
    fn schema(method: &str) -> Option<&'static str> {
        let _ = method;
        None
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
    stream: Option<Arc<crate::stream::EncodedItems>>,
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
            stream: Some(Arc::new(crate::stream::EncodedItems::new(codec, items))),
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

/// Per-server settings.
///
/// ```
/// use std::time::Duration;
/// use mqrpc_runtime::{ServerOptions, QoS};
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
    prefix: String,
    qos: QoS,
    share_group: Option<String>,
    instance: Option<String>,
    max_concurrent: usize,
    max_queued: usize,
    max_request_size: usize,
    dedup_entries: usize,
    dedup_bytes: usize,
    dedup_window: Duration,
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
    /// at once with status `overloaded` ([`Error::Overloaded`] on the client).
    pub fn max_queued(mut self, limit: usize) -> Self {
        self.max_queued = limit;
        self
    }

    /// Largest request payload served (default 1 MiB); larger ones are
    /// answered with status `too-large` ([`Error::TooLarge`]).
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

    /// The configured concurrency limit.
    pub fn get_max_concurrent(&self) -> usize {
        self.max_concurrent
    }
}

/// A running server. Dropping it leaves the service running for as long as
/// the connection lives; call [`ServerHandle::shutdown`] to stop gracefully.
#[derive(Debug)]
#[must_use = "keep the handle to stop the server later; dropping it does not stop serving"]
pub struct ServerHandle {
    conn: Connection,
    /// The method subscription, and the cancel subscription of a shared one.
    route_ids: Vec<u64>,
    filter: String,
    instance: String,
    activity: Arc<Activity>,
}

/// Requests admitted and not yet answered, for a graceful shutdown.
#[derive(Debug, Default)]
struct Activity {
    admitted: AtomicUsize,
    idle: tokio::sync::Notify,
}

impl Activity {
    fn enter(self: &Arc<Self>) -> ActivityGuard {
        self.admitted.fetch_add(1, Ordering::AcqRel);
        ActivityGuard(self.clone())
    }
}

/// Counts one admitted request until it is answered (or dropped).
struct ActivityGuard(Arc<Activity>);

impl Drop for ActivityGuard {
    fn drop(&mut self) {
        if self.0.admitted.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.idle.notify_waiters();
        }
    }
}

impl ServerHandle {
    /// The topic filter the server subscribed to, e.g.
    /// `$share/mqrpc/mqrpc/Calculator/+` (or `mqrpc/Calculator/+` without a
    /// share group).
    pub fn topic_filter(&self) -> &str {
        &self.filter
    }

    /// The instance id: requests to `<prefix>/<service>/_to/<instance>/<method>`
    /// reach this server alone (`Client::to_instance`).
    pub fn instance(&self) -> &str {
        &self.instance
    }

    /// Unsubscribes; requests published afterwards are no longer served.
    /// Handlers already running still answer, later (see
    /// [`shutdown`](Self::shutdown) to wait for them).
    pub async fn stop(self) -> Result<(), Error> {
        self.unsubscribe().await
    }

    async fn unsubscribe(&self) -> Result<(), Error> {
        let mut result = Ok(());
        for id in &self.route_ids {
            if let Err(e) = self.conn.unsubscribe(*id).await {
                result = Err(e);
            }
        }
        result
    }

    /// Graceful shutdown: unsubscribes, then waits until every request
    /// already received (running or waiting for a slot) is answered.
    /// Bound the wait with `tokio::time::timeout` if you must.
    pub async fn shutdown(self) -> Result<(), Error> {
        let unsubscribed = self.unsubscribe().await;
        loop {
            let idle = self.activity.idle.notified();
            if self.activity.admitted.load(Ordering::Acquire) == 0 {
                break;
            }
            idle.await;
        }
        unsubscribed
    }
}

/// Serves `service` on `conn`: subscribes to `<prefix>/<name>/+` — as the
/// shared subscription `$share/<group>/<prefix>/<name>/+` unless
/// [`ServerOptions::no_share_group`] — and returns once the broker
/// acknowledged it.
pub async fn serve<S: Service>(
    conn: &Connection,
    service: S,
    options: ServerOptions,
) -> Result<ServerHandle, Error> {
    topic::validate_prefix(&options.prefix)?;
    topic::validate_level(S::NAME)?;
    conn.check_qos(options.qos)?;
    if S::NAME.starts_with('_') {
        return Err(Error::InvalidName {
            name: S::NAME.to_string(),
            reason: "service names starting with `_` are reserved".into(),
        });
    }
    if let Some(group) = &options.share_group {
        topic::validate_level(group)?;
    }
    let topics = topic::service_filter(&options.prefix, S::NAME);
    let method_offset = topics.len() - 1; // the method level starts where `+` is
    let filter = match &options.share_group {
        Some(group) => format!("$share/{group}/{topics}"),
        None => topics.clone(),
    };
    let instance = match &options.instance {
        Some(instance) => instance.clone(),
        None => topic::as_level(conn.client_id()),
    };
    topic::validate_level(&instance)?;
    let activity = Arc::new(Activity::default());
    let dispatcher = Arc::new(Dispatcher {
        service,
        instance: Arc::from(instance.as_str()),
        streams: Mutex::new(std::collections::HashMap::new()),
        counters: S::METHODS.iter().map(|_| Default::default()).collect(),
        activity: activity.clone(),
        permits: Arc::new(Semaphore::new(options.max_concurrent)),
        queued: AtomicUsize::new(0),
        calls: Mutex::new(CallTable::new(Limits {
            max_entries: options.dedup_entries,
            max_bytes: options.dedup_bytes,
            grace: Duration::from_secs(5),
            window: options.dedup_window,
        })),
        max_queued: options.max_queued,
        max_request_size: options.max_request_size,
    });
    let sink: Sink = Arc::new(move |conn, publish| dispatcher.clone().admit(conn, publish));
    let service_base = &topics[..method_offset]; // `<prefix>/<service>/`
    let mut filters = vec![
        (filter.clone(), options.qos),
        // Calls addressed to this instance (`Client::to_instance`).
        (topic::instance_filter(service_base, &instance), options.qos),
        // Broadcasts reach every instance.
        (format!("{service_base}{BROADCAST_LEVEL}/+"), options.qos),
        // Discovery: built-ins asked of every server of every service.
        (
            format!("{}/{ANY_SERVICE}/{BROADCAST_LEVEL}/+", options.prefix),
            options.qos,
        ),
    ];
    if options.share_group.is_some() {
        // In a group each request reaches one instance, and the client does
        // not know which: every instance hears every cancel (and ignores
        // the ones of calls it does not run).
        filters.push((format!("{service_base}{CANCEL_METHOD}"), QoS::AtMostOnce));
    }
    let mut route_ids = Vec::new();
    for (filter, qos) in filters {
        match conn.subscribe(filter, qos, sink.clone()).await {
            Ok(id) => route_ids.push(id),
            Err(e) => {
                for id in &route_ids {
                    let _ = conn.unsubscribe(*id).await;
                }
                return Err(e);
            }
        }
    }
    Ok(ServerHandle {
        conn: conn.clone(),
        route_ids,
        filter,
        instance,
        activity,
    })
}

/// One request, as the server reads it off the wire.
#[derive(Debug, Clone)]
pub(crate) struct Request {
    pub method: String,
    pub response_topic: Option<String>,
    pub correlation: Option<Bytes>,
    pub content_type: Option<String>,
    pub deadline: Option<Instant>,
    pub qos: QoS,
    pub payload: Bytes,
    /// For cancel and credit messages: the Response Topic of the call.
    pub cancel_of: Option<String>,
    /// For credit messages: how many more items the caller takes.
    pub credit: Option<u32>,
    pub arrived: Instant,
    /// Sent to `<prefix>/<service>/_all/<method>`: every instance answers.
    pub broadcast: bool,
    /// Set on broadcasts: the answer names the instance.
    pub instance: Option<Arc<str>>,
    /// Sent to `<prefix>/_all/_all/<method>`: discovery, built-ins only.
    pub discovery: bool,
    /// Set on the answers of a stream: the item's position.
    pub seq: Option<u64>,
    /// The caller's W3C trace context (`traceparent`, `tracestate`).
    pub trace: Option<TraceContext>,
}

impl Request {
    /// Reads a publish whose topic matched one of the server's filters.
    pub(crate) fn from_publish(mut publish: Publish, now: Instant) -> Request {
        let properties = publish.properties.take().unwrap_or_default();
        // Every subscription of a server ends in `/+`: the method is the
        // last level, whether the request came to the service or to this
        // instance.
        let method = std::str::from_utf8(&publish.topic)
            .ok()
            .and_then(|topic| topic.rsplit('/').next())
            .unwrap_or_default()
            .to_string();
        let mut levels = std::str::from_utf8(&publish.topic)
            .map(|topic| topic.rsplit('/').skip(1))
            .ok();
        let mut next = || levels.as_mut().and_then(|l| l.next());
        let broadcast = next() == Some(BROADCAST_LEVEL);
        let discovery = broadcast && next() == Some(ANY_SERVICE);
        let mut request =
            Request::from_parts(method, properties, publish.qos.into(), publish.payload, now);
        request.broadcast = broadcast;
        request.discovery = discovery;
        request
    }

    fn from_parts(
        method: String,
        properties: PublishProperties,
        qos: QoS,
        payload: Bytes,
        now: Instant,
    ) -> Request {
        let user = |name: &str| {
            properties
                .user_properties
                .iter()
                .find(|(key, _)| key == name)
                .map(|(_, value)| value.clone())
        };
        // The caller's budget, capped by what the broker left of the Message
        // Expiry Interval (which counts time spent queued at the broker).
        let budget = user(TIMEOUT_PROPERTY).and_then(|ms| ms.trim().parse::<u64>().ok());
        let expiry = properties.message_expiry_interval;
        let deadline = match (budget, expiry) {
            (Some(ms), Some(s)) => {
                Some(Duration::from_millis(ms).min(Duration::from_secs(s.into())))
            }
            (Some(ms), None) => Some(Duration::from_millis(ms)),
            (None, Some(s)) => Some(Duration::from_secs(s.into())),
            (None, None) => None,
        }
        .and_then(|d| now.checked_add(d));
        Request {
            trace: TraceContext::from_user_properties(&properties.user_properties),
            cancel_of: user(CANCEL_RESPONSE_TOPIC_PROPERTY),
            credit: user(CREDIT_PROPERTY).and_then(|n| n.trim().parse().ok()),
            method,
            response_topic: properties.response_topic,
            correlation: properties.correlation_data,
            content_type: properties.content_type,
            deadline,
            qos,
            payload,
            arrived: now,
            broadcast: false,
            instance: None,
            discovery: false,
            seq: None,
        }
    }

    fn key(&self) -> Option<CallId> {
        let key = (self.response_topic.clone()?, self.correlation.clone()?);
        let content_type = self.content_type.as_deref();
        Some(CallId::new(key, &self.method, content_type, &self.payload))
    }

    fn expired(&self, now: Instant) -> bool {
        self.deadline.is_some_and(|d| d <= now)
    }
}

/// Decodes, runs and encodes one request on `service`, without a broker:
/// what a server answers (its status and payload), deadline aside. Useful
/// to test a service implementation, and what the server runs per request.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// use mqrpc_runtime::{respond, Codec, Reply, Service, Status};
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

/// Admission and dispatch of one service's requests.
struct Dispatcher<S> {
    service: S,
    instance: Arc<str>,
    /// Running streams: where their callers' credits go.
    streams: Mutex<std::collections::HashMap<CallKey, tokio::sync::mpsc::UnboundedSender<u32>>>,
    /// Per method of `S::METHODS`, for `_stats`.
    counters: Vec<crate::discovery::Counters>,
    activity: Arc<Activity>,
    permits: Arc<Semaphore>,
    /// Requests waiting for a permit.
    queued: AtomicUsize,
    calls: Mutex<CallTable>,
    max_queued: usize,
    max_request_size: usize,
}

impl<S: Service> Dispatcher<S> {
    fn calls(&self) -> std::sync::MutexGuard<'_, CallTable> {
        self.calls.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Runs on the connection's event-loop task: decides at once, never
    /// waits; handlers run on their own tasks.
    fn admit(self: Arc<Self>, conn: &Connection, publish: Publish) {
        let now = Instant::now();
        let mut request = Request::from_publish(publish, now);
        if request.broadcast {
            request.instance = Some(self.instance.clone());
        }
        if request.method == CANCEL_METHOD {
            return self.cancel(&request, now);
        }
        if request.method == CREDIT_METHOD {
            return self.credit(&request);
        }
        let key = request.key();
        if let Some(key) = &key {
            match self.calls().admit(key, now) {
                Admission::Run => {}
                Admission::AlreadyRunning => {
                    debug!(service = S::NAME, method = %request.method, "duplicate of a running call: dropped");
                    return;
                }
                Admission::Answered(Some(reply)) => {
                    debug!(service = S::NAME, method = %request.method, "duplicate of an answered call: answered again");
                    let (status, content_type) = (reply.status, reply.content_type);
                    let payload = reply.payload.clone();
                    tokio::spawn(send_reply(
                        conn.clone(),
                        request,
                        status,
                        content_type,
                        payload,
                    ));
                    return;
                }
                Admission::Answered(None) => {
                    debug!(service = S::NAME, method = %request.method, "duplicate of an answered call (reply not kept): dropped");
                    return;
                }
                Admission::Cancelled => {
                    debug!(service = S::NAME, method = %request.method, "request of a cancelled call: not run");
                    return;
                }
            }
        }
        let refuse = |request: Request, status: Status, message: String| {
            if let Some(key) = &key {
                self.calls().forget(key);
            }
            #[cfg(feature = "metrics")]
            observe::server_request(
                S::NAME,
                known_method::<S>(&request.method),
                status,
                Duration::ZERO,
            );
            let payload = Bytes::from(message);
            tokio::spawn(send_reply(
                conn.clone(),
                request,
                status,
                TEXT_CONTENT_TYPE,
                payload,
            ));
        };
        if request.payload.len() > self.max_request_size {
            let message = format!(
                "the request has {} bytes; this server accepts at most {}",
                request.payload.len(),
                self.max_request_size
            );
            return refuse(request, Status::TooLarge, message);
        }
        if request.expired(now) {
            let message = format!("`{}` arrived after its deadline", request.method);
            return refuse(request, Status::DeadlineExceeded, message);
        }
        let permit = match self.permits.clone().try_acquire_owned() {
            Ok(permit) => Some(permit),
            Err(_) if self.queued.fetch_add(1, Ordering::AcqRel) < self.max_queued => None,
            Err(_) => {
                self.queued.fetch_sub(1, Ordering::AcqRel);
                let message = format!(
                    "{} handlers are running and {} requests are waiting",
                    self.permits.available_permits().max(1),
                    self.max_queued
                );
                warn!(service = S::NAME, method = %request.method, "overloaded: request refused");
                return refuse(request, Status::Overloaded, message);
            }
        };
        let active = self.activity.enter();
        tokio::spawn(self.run(conn.clone(), request, key, permit, active));
    }

    /// The answer to a built-in method (`_ping`, `_info`, `_stats`), or
    /// `None` for the service's own methods. On the discovery topic only
    /// built-ins are served.
    fn builtin(&self, request: &Request) -> Option<Reply> {
        let Some(builtin) = crate::discovery::Builtin::parse(&request.method) else {
            return request
                .discovery
                .then(|| Reply::unknown_method(&request.method));
        };
        let codec = match Codec::from_content_type(request.content_type.as_deref()) {
            Ok(codec) => codec,
            Err(e) => return Some(Reply::failure(Status::UnsupportedContentType, e)),
        };
        Some(match builtin {
            crate::discovery::Builtin::Ping => Reply::ok(codec, &()),
            crate::discovery::Builtin::Info => Reply::ok(
                codec,
                &crate::ServiceInfo {
                    service: S::NAME.to_string(),
                    version: S::version().to_string(),
                    instance: self.instance.to_string(),
                    methods: S::METHODS
                        .iter()
                        .map(|name| crate::MethodInfo {
                            name: name.to_string(),
                            schema: S::schema(name).map(str::to_string),
                        })
                        .collect(),
                },
            ),
            crate::discovery::Builtin::Stats => Reply::ok(
                codec,
                &crate::ServiceStats {
                    service: S::NAME.to_string(),
                    instance: self.instance.to_string(),
                    methods: S::METHODS
                        .iter()
                        .zip(&self.counters)
                        .map(|(name, counters)| counters.snapshot(name))
                        .collect(),
                },
            ),
        })
    }

    /// A stream credit: the caller takes `n` more items.
    fn credit(&self, request: &Request) {
        let (Some(topic), Some(correlation)) = (&request.cancel_of, &request.correlation) else {
            return;
        };
        let n = request.credit.unwrap_or(0);
        let streams = self.streams.lock().unwrap_or_else(|e| e.into_inner());
        match streams.get(&(topic.clone(), correlation.clone())) {
            Some(credits) => {
                let _ = credits.send(n);
            }
            None => debug!(service = S::NAME, "credit for no running stream: ignored"),
        }
    }

    /// Sends a streaming reply's items, each within the caller's credit,
    /// then the end marker; stops on cancel, deadline or a failing item.
    async fn stream_items(
        &self,
        conn: Connection,
        mut request: Request,
        key: Option<CallId>,
        items: Arc<crate::stream::EncodedItems>,
        content_type: &'static str,
        mut stop_rx: oneshot::Receiver<()>,
    ) {
        let Some(mut items) = items.take() else {
            return;
        };
        let Some(key) = key else {
            debug!(service = S::NAME, method = %request.method, "stream without Response Topic or Correlation Data: not sent");
            return;
        };
        let (credit_tx, mut credit_rx) = tokio::sync::mpsc::unbounded_channel();
        self.streams
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(key.key.clone(), credit_tx);
        request.instance = Some(self.instance.clone());
        let deadline = request.deadline.map(tokio::time::Instant::from_std);
        let mut credit = crate::stream::WINDOW;
        let mut seq = 0u64;
        let end = loop {
            let expired = async {
                match deadline {
                    Some(deadline) => tokio::time::sleep_until(deadline).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                item = items.next(), if credit > 0 => match item {
                    Some(Ok(bytes)) => {
                        let mut answer = request.clone();
                        answer.seq = Some(seq);
                        send_reply(conn.clone(), answer, Status::Ok, content_type, bytes).await;
                        seq += 1;
                        credit -= 1;
                    }
                    Some(Err(e)) => {
                        break Some((Status::Internal, format!("cannot encode item {seq}: {e}")));
                    }
                    None => break None,
                },
                Some(n) = credit_rx.recv() => credit = credit.saturating_add(n),
                Ok(()) = &mut stop_rx => {
                    debug!(service = S::NAME, method = %request.method, "stream cancelled by the caller");
                    self.end_stream(&key);
                    return;
                }
                () = expired => {
                    break Some((Status::DeadlineExceeded, format!("`{}` did not finish before its deadline", request.method)));
                }
            }
        };
        self.end_stream(&key);
        request.seq = Some(seq);
        match end {
            None => send_reply(conn, request, Status::End, TEXT_CONTENT_TYPE, Bytes::new()).await,
            Some((status, message)) => {
                send_reply(
                    conn,
                    request,
                    status,
                    TEXT_CONTENT_TYPE,
                    Bytes::from(message),
                )
                .await
            }
        }
    }

    fn end_stream(&self, key: &CallId) {
        self.streams
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&key.key);
        self.calls().forget(key);
    }

    fn cancel(&self, request: &Request, now: Instant) {
        let (Some(topic), Some(correlation)) = (&request.cancel_of, &request.correlation) else {
            debug!(
                service = S::NAME,
                "cancel message without response topic or correlation: ignored"
            );
            return;
        };
        let stopped = self
            .calls()
            .cancel((topic.clone(), correlation.clone()), now);
        debug!(service = S::NAME, stopped, "cancel message");
    }

    async fn run(
        self: Arc<Self>,
        conn: Connection,
        request: Request,
        key: Option<CallId>,
        permit: Option<OwnedSemaphorePermit>,
        _active: ActivityGuard,
    ) {
        let _permit = match permit {
            Some(permit) => permit,
            None => {
                let acquired = self.permits.clone().acquire_owned().await;
                self.queued.fetch_sub(1, Ordering::AcqRel);
                match acquired {
                    Ok(permit) => permit,
                    Err(_) => return, // semaphore closed: cannot happen, never closed
                }
            }
        };
        // Waiting for a slot may have used up the budget.
        if request.expired(Instant::now()) {
            if let Some(key) = &key {
                self.calls().forget(key);
            }
            let message = format!(
                "`{}` waited past its deadline for a free handler",
                request.method
            );
            #[cfg(feature = "metrics")]
            observe::server_request(
                S::NAME,
                known_method::<S>(&request.method),
                Status::DeadlineExceeded,
                Duration::ZERO,
            );
            let payload = Bytes::from(message);
            return send_reply(
                conn,
                request,
                Status::DeadlineExceeded,
                TEXT_CONTENT_TYPE,
                payload,
            )
            .await;
        }
        let (stop_tx, mut stop_rx) = oneshot::channel::<()>();
        if let Some(key) = &key {
            if !self.calls().set_stopper(key, stop_tx) {
                debug!(service = S::NAME, method = %request.method, "cancelled before it started");
                return;
            }
        }
        let started = Instant::now();
        if let Some(reply) = self.builtin(&request) {
            if let Some(key) = &key {
                self.calls().forget(key);
            }
            let content_type = reply.codec.map_or(TEXT_CONTENT_TYPE, Codec::content_type);
            let payload = Bytes::from(reply.payload);
            return send_reply(conn, request, reply.status, content_type, payload).await;
        }
        // One lookup for the statistics, the span and the metrics.
        let index = S::METHODS.iter().position(|m| *m == request.method);
        let method = index.map(|index| S::METHODS[index]);
        let span = observe::server_span(
            S::NAME,
            // Names the service lacks share one span name: a caller must
            // not create span names without bound in the trace backend.
            method.unwrap_or(observe::UNKNOWN_METHOD),
            request.correlation.as_deref(),
            request.trace.as_ref(),
        );
        let work = observe::InSpan::new(
            &span,
            CallContext::new(request.deadline).scope(respond(
                &self.service,
                &request.method,
                request.content_type.as_deref(),
                &request.payload,
            )),
        );
        let deadline = request.deadline.map(tokio::time::Instant::from_std);
        let outcome = tokio::select! {
            reply = async {
                match deadline {
                    Some(deadline) => tokio::time::timeout_at(deadline, work).await.ok(),
                    None => Some(work.await),
                }
            } => Some(reply),
            Ok(()) = &mut stop_rx => None,
        };
        let reply = match outcome {
            None => {
                debug!(service = S::NAME, method = %request.method, "cancelled by the caller: handler stopped");
                return;
            }
            Some(Some(reply)) => reply,
            Some(None) => {
                debug!(service = S::NAME, method = %request.method, "deadline passed: handler stopped");
                Reply::failure(
                    Status::DeadlineExceeded,
                    format!("`{}` did not finish before its deadline", request.method),
                )
            }
        };
        let content_type = match reply.codec {
            Some(codec) => codec.content_type(),
            None => TEXT_CONTENT_TYPE,
        };
        if let Some(index) = index {
            self.counters[index].record(started.elapsed(), reply.status);
        }
        observe::record_status(&span, reply.status.as_str());
        #[cfg(feature = "metrics")]
        observe::server_request(S::NAME, method, reply.status, started.elapsed());
        if let Some(items) = reply.stream.clone() {
            return self
                .stream_items(conn, request, key, items, content_type, stop_rx)
                .await;
        }
        let payload = Bytes::from(reply.payload);
        if let Some(key) = &key {
            let mut calls = self.calls();
            if request.qos == QoS::AtMostOnce {
                calls.forget(key); // never redelivered: nothing to keep
            } else {
                let expires = calls.expiry(request.deadline, request.arrived);
                let cached = CachedReply {
                    status: reply.status,
                    content_type,
                    payload: payload.clone(),
                };
                calls.finish(key, cached, expires);
            }
        }
        send_reply(conn, request, reply.status, content_type, payload).await;
    }
}

/// The wire name of `name` if the service has such a method: a label
/// callers cannot multiply.
#[cfg(feature = "metrics")]
fn known_method<S: Service>(name: &str) -> Option<&'static str> {
    S::METHODS.iter().copied().find(|m| *m == name)
}

/// The properties of an answer. Defaults are left out (absent status =
/// `ok`, absent Content Type = postcard): each property costs allocations
/// on both sides.
fn reply_properties(request: &Request, status: Status, content_type: &str) -> PublishProperties {
    let mut user = Vec::new();
    if status != Status::Ok {
        user.push((STATUS_PROPERTY.to_string(), status.as_str().to_string()));
    }
    if let Some(instance) = &request.instance {
        user.push((INSTANCE_PROPERTY.to_string(), instance.to_string()));
    }
    if let Some(seq) = request.seq {
        user.push((SEQ_PROPERTY.to_string(), seq.to_string()));
    }
    PublishProperties {
        correlation_data: request.correlation.clone(),
        content_type: (content_type != POSTCARD_CONTENT_TYPE).then(|| content_type.to_string()),
        user_properties: user,
        ..PublishProperties::default()
    }
}

/// Publishes the answer to `request`, if it asked for one.
async fn send_reply(
    conn: Connection,
    mut request: Request,
    status: Status,
    content_type: &'static str,
    payload: Bytes,
) {
    let method = &request.method;
    let Some(response_topic) = request.response_topic.take() else {
        debug!(%method, "request without Response Topic: not answered");
        return;
    };
    if !topic::is_publishable(&response_topic) {
        warn!(%method, %response_topic, "invalid Response Topic: not answered");
        return;
    }
    if request.correlation.is_none() {
        debug!(%method, "request without Correlation Data: answering without it");
    }
    let mut properties = reply_properties(&request, status, content_type);
    let mut payload = payload;
    // rumqttc drops the whole connection on a packet over the broker's
    // Maximum Packet Size: answer `too-large` instead.
    if let Some(limit) = conn.broker_max_packet_size() {
        let fits = |properties: &PublishProperties, payload: &Bytes| {
            crate::connection::publish_size(&response_topic, payload.len(), properties)
                <= limit as usize
        };
        if !fits(&properties, &payload) {
            warn!(%method, size = payload.len(), limit, "answer over the broker's Maximum Packet Size");
            let message = format!(
                "the answer to `{method}` has {} bytes, over the broker's Maximum Packet Size of {limit}",
                payload.len()
            );
            payload = Bytes::from(message);
            properties = reply_properties(&request, Status::TooLarge, TEXT_CONTENT_TYPE);
            if !fits(&properties, &payload) {
                warn!(%method, "not even the error fits the broker's packet size: not answered");
                return;
            }
        }
    }
    if let Err(e) = conn
        .publish(response_topic, request.qos, payload, properties, None)
        .await
    {
        warn!(%method, error = %e, "could not send the response");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn properties(timeout_ms: Option<&str>, expiry: Option<u32>) -> PublishProperties {
        PublishProperties {
            message_expiry_interval: expiry,
            user_properties: timeout_ms
                .map(|ms| vec![(TIMEOUT_PROPERTY.to_string(), ms.to_string())])
                .unwrap_or_default(),
            ..PublishProperties::default()
        }
    }

    proptest::proptest! {
        /// Whatever properties a request carries, reading it never panics
        /// and its deadline is never before its arrival.
        #[test]
        fn any_request_properties_are_read_without_panic(
            method in ".{0,16}",
            user in proptest::collection::vec(("(mqrpc-timeout-ms|mqrpc-response-topic|.{0,8})", ".{0,24}"), 0..4),
            expiry in proptest::option::of(proptest::num::u32::ANY),
            response_topic in proptest::option::of(".{0,24}"),
            correlation in proptest::option::of(proptest::collection::vec(proptest::num::u8::ANY, 0..16)),
            content_type in proptest::option::of(".{0,24}"),
            payload in proptest::collection::vec(proptest::num::u8::ANY, 0..32),
        ) {
            let now = Instant::now();
            let properties = PublishProperties {
                message_expiry_interval: expiry,
                response_topic,
                correlation_data: correlation.map(Bytes::from),
                content_type,
                user_properties: user,
                ..PublishProperties::default()
            };
            let request = Request::from_parts(method, properties, QoS::AtLeastOnce, Bytes::from(payload), now);
            if let Some(deadline) = request.deadline {
                proptest::prop_assert!(deadline >= now);
            }
            let _ = request.key();
            let _ = request.expired(now);
        }
    }

    #[test]
    fn deadline_is_the_budget_capped_by_message_expiry() {
        let now = Instant::now();
        let read =
            |p| Request::from_parts("m".into(), p, QoS::AtLeastOnce, Bytes::new(), now).deadline;
        assert_eq!(
            read(properties(Some("1500"), None)),
            Some(now + Duration::from_millis(1500))
        );
        assert_eq!(
            read(properties(Some("9000"), Some(2))),
            Some(now + Duration::from_secs(2))
        );
        assert_eq!(
            read(properties(None, Some(3))),
            Some(now + Duration::from_secs(3))
        );
        assert_eq!(read(properties(Some("soon"), None)), None);
        assert_eq!(read(properties(None, None)), None);
        let expired = Request::from_parts(
            "m".into(),
            properties(Some("0"), None),
            QoS::AtMostOnce,
            Bytes::new(),
            now,
        );
        assert!(expired.expired(now));
    }
}
