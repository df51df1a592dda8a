//! The calling side: one response topic per connection, a bounded map of
//! calls waiting for answers, and [`Client`], the untyped stub that the
//! generated `<Trait>Client` wraps.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use rumqttc::v5::mqttbytes::v5::{Publish, PublishProperties};
use serde::{de::DeserializeOwned, Serialize};
use tokio::sync::oneshot;
use tracing::debug;

use crate::connection::{Connection, Sink};
use crate::error::{Failure, Refusal};
use crate::protocol::{
    Status, BROADCAST_LEVEL, CANCEL_METHOD, CANCEL_RESPONSE_TOPIC_PROPERTY, CREDIT_METHOD,
    CREDIT_PROPERTY, DEFAULT_PREFIX, INFO_METHOD, INSTANCE_LEVEL, INSTANCE_PROPERTY, PING_METHOD,
    SCHEMA_PARAMETER, SEQ_PROPERTY, STATS_METHOD, STATUS_PROPERTY, TIMEOUT_PROPERTY,
};
use crate::stream::{Control, Items};
use crate::{observe, topic, Codec, Error, QoS};

/// Default time a call waits for its answer.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// A response as it came off the wire.
#[derive(Debug, Clone)]
pub struct Response {
    /// The `mqrpc-status` user property (absent means [`Status::Ok`]).
    pub status: Status,
    /// The codec of the payload, from the Content Type.
    pub codec: Codec,
    /// The payload: the encoded value for [`Status::Ok`] / [`Status::Error`],
    /// a UTF-8 message otherwise.
    pub payload: Bytes,
    /// The answering server's instance id (`mqrpc-instance`), sent on
    /// answers to broadcasts and on stream items.
    pub instance: Option<String>,
    /// Position of a stream item (`mqrpc-seq`), from 0; the end marker
    /// carries the number of items.
    pub seq: Option<u64>,
}

impl Response {
    fn from_publish(publish: Publish, properties: PublishProperties) -> Result<Response, Error> {
        let status = match properties
            .user_properties
            .iter()
            .find(|(key, _)| key == STATUS_PROPERTY)
        {
            None => Status::Ok,
            Some((_, value)) => Status::parse(value).ok_or_else(|| Error::Protocol {
                reason: format!("unknown {STATUS_PROPERTY} `{value}`"),
            })?,
        };
        let codec = if status.has_encoded_payload() {
            Codec::from_content_type(properties.content_type.as_deref())?
        } else {
            Codec::default()
        };
        let mut instance = None;
        let mut seq = None;
        for (key, value) in properties.user_properties {
            if key == INSTANCE_PROPERTY {
                instance = Some(value);
            } else if key == SEQ_PROPERTY {
                seq = value.parse().ok();
            }
        }
        Ok(Response {
            status,
            codec,
            payload: publish.payload,
            instance,
            seq,
        })
    }

    /// The value of a method returning `T`, or the framework error the
    /// response carries.
    pub fn into_value<T: DeserializeOwned>(self, method: &str) -> Result<T, Error> {
        match self.status {
            Status::Ok => self.codec.decode(&self.payload),
            Status::Error => Err(Error::Protocol {
                reason: format!("`{method}` returned an application error but declares none"),
            }),
            _ => Err(self.framework_error(method)),
        }
    }

    /// The outcome of a method returning `Result<T, E>`: `Ok(Err(e))` for
    /// its typed error, `Err` for a framework error.
    pub fn into_result<T: DeserializeOwned, E: DeserializeOwned>(
        self,
        method: &str,
    ) -> Result<Result<T, E>, Error> {
        match self.status {
            Status::Ok => self.codec.decode(&self.payload).map(Ok),
            Status::Error => self.codec.decode(&self.payload).map(Err),
            _ => Err(self.framework_error(method)),
        }
    }

    fn message(&self) -> String {
        String::from_utf8_lossy(&self.payload).into_owned()
    }

    /// Turns a non-success status into its [`Error`]. `deadline-exceeded`
    /// does not get here: the call turns it into [`Error::Timeout`].
    fn framework_error(&self, method: &str) -> Error {
        let message = self.message();
        match self.status {
            Status::UnknownMethod => Error::UnknownMethod {
                method: method.to_string(),
            },
            Status::BadRequest => Error::BadRequest { message },
            Status::UnsupportedContentType => Error::UnsupportedContentType { message },
            Status::Internal => Error::Internal { message },
            Status::Overloaded => Error::Overloaded { message },
            Status::TooLarge => Error::TooLarge { message },
            Status::SchemaMismatch => {
                // "client <fingerprint>, server <fingerprint>"
                let mut words = message.split([' ', ',']).filter(|w| !w.is_empty());
                let mut after = |label: &str| {
                    words
                        .by_ref()
                        .skip_while(|w| *w != label)
                        .nth(1)
                        .unwrap_or("?")
                        .to_string()
                };
                let client = after("client");
                let server = after("server");
                Error::SchemaMismatch {
                    method: method.to_string(),
                    client,
                    server,
                }
            }
            Status::Ok | Status::Error | Status::DeadlineExceeded | Status::End => {
                Error::Protocol {
                    reason: format!("unexpected status {}", self.status),
                }
            }
        }
    }
}

/// Where the answer(s) of a call go.
pub(crate) enum Waiter {
    /// A call: one answer.
    Once(oneshot::Sender<Result<Response, Failure>>),
    /// A broadcast: every answer, until the stream is dropped.
    Many(tokio::sync::mpsc::Sender<Result<Response, Failure>>),
}

impl Waiter {
    fn finish(self, outcome: Result<Response, Failure>) {
        match self {
            Waiter::Once(tx) => {
                let _ = tx.send(outcome);
            }
            Waiter::Many(tx) => {
                let _ = tx.try_send(outcome);
            }
        }
    }
}

/// Calls of one connection waiting for answers, keyed by correlation id.
pub(crate) struct Caller {
    reply_topic: String,
    next_id: AtomicU64,
    pending: Mutex<HashMap<u64, Waiter>>,
    max_pending: usize,
}

impl Caller {
    /// Subscribes the connection's response topic and waits for the SUBACK,
    /// so no answer can arrive before anyone listens for it.
    async fn start(conn: &Connection) -> Result<Arc<Caller>, Error> {
        let reply_topic = conn.reply_topic();
        let caller = Arc::new(Caller {
            reply_topic: reply_topic.clone(),
            next_id: AtomicU64::new(crate::connection::random_u64() >> 16),
            pending: Mutex::new(HashMap::new()),
            max_pending: conn.options().max_pending_calls_limit(),
        });
        let weak = Arc::downgrade(&caller);
        let sink: Sink = Arc::new(move |_conn, publish| {
            if let Some(caller) = weak.upgrade() {
                caller.deliver(publish);
            }
        });
        conn.subscribe(reply_topic, QoS::AtLeastOnce, sink).await?;
        Ok(caller)
    }

    /// Hands a response to its waiting call; unknown or late ones are dropped.
    fn deliver(&self, mut publish: Publish) {
        let properties = publish.properties.take().unwrap_or_default();
        let Some(id) = properties
            .correlation_data
            .as_deref()
            .and_then(|bytes| <[u8; 8]>::try_from(bytes).ok())
            .map(u64::from_be_bytes)
        else {
            debug!(
                topic = %self.reply_topic,
                "dropping a response without valid Correlation Data"
            );
            return;
        };
        let mut pending = self.lock();
        let waiter = match pending.get(&id) {
            // A broadcast stays pending for more answers.
            Some(Waiter::Many(tx)) => Waiter::Many(tx.clone()),
            Some(Waiter::Once(_)) => pending.remove(&id).expect("present"),
            None => {
                drop(pending);
                debug!(
                    correlation = id,
                    "dropping a late or unknown response (its call already ended)"
                );
                return;
            }
        };
        drop(pending);
        waiter.finish(Response::from_publish(publish, properties).map_err(Failure::Error));
    }

    /// A new call waiting for its answer(s): its correlation id, unless
    /// the connection already has its maximum of calls pending.
    fn register(&self, waiter: Waiter) -> Result<u64, Error> {
        let mut pending = self.lock();
        if pending.len() >= self.max_pending {
            return Err(Error::TooManyPending {
                limit: self.max_pending,
            });
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        pending.insert(id, waiter);
        Ok(id)
    }

    /// True while call `id` waits for its answer.
    pub(crate) fn is_pending(&self, id: u64) -> bool {
        self.lock().contains_key(&id)
    }

    /// The broker refused the call's request (no subscriber, not
    /// authorized, ...): the call names its method in the error.
    pub(crate) fn fail_call(&self, id: u64, refusal: Refusal) {
        let waiter = self.lock().remove(&id);
        if let Some(waiter) = waiter {
            waiter.finish(Err(Failure::Refused(refusal)));
        }
    }

    pub(crate) fn fail_all(&self, error: &Error) {
        let waiters: Vec<Waiter> = self.lock().drain().map(|(_, w)| w).collect();
        for waiter in waiters {
            waiter.finish(Err(Failure::Error(error.clone())));
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Waiter>> {
        self.pending.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Removes a call's entry when the call ends in any way: answered, timed
/// out, or its future dropped. A call that ends unanswered after its
/// request went out tells the server to stop working on it.
struct PendingSlot<'a> {
    client: &'a Client,
    id: u64,
    sent: AtomicBool,
}

impl Drop for PendingSlot<'_> {
    fn drop(&mut self) {
        let unanswered = self.client.caller.lock().remove(&self.id).is_some();
        if unanswered && self.sent.load(Ordering::Relaxed) {
            self.client.send_cancel(self.id);
        }
    }
}

/// Per-client settings.
///
/// ```
/// use std::time::Duration;
/// use mqrpc_runtime::{ClientOptions, Codec, QoS};
/// let opts = ClientOptions::default()
///     .prefix("acme/prod")
///     .timeout(Duration::from_secs(2))
///     .qos(QoS::AtMostOnce)
///     .codec(Codec::Json);
/// assert_eq!(opts.get_timeout(), Duration::from_secs(2));
/// ```
#[derive(Debug, Clone)]
pub struct ClientOptions {
    prefix: Arc<str>,
    timeout: Duration,
    qos: QoS,
    codec: Codec,
}

impl Default for ClientOptions {
    /// Prefix `mqrpc`, timeout 10 s, QoS 1, postcard.
    fn default() -> Self {
        ClientOptions {
            prefix: Arc::from(DEFAULT_PREFIX),
            timeout: DEFAULT_TIMEOUT,
            qos: QoS::AtLeastOnce,
            codec: Codec::Postcard,
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

    /// The configured timeout.
    pub fn get_timeout(&self) -> Duration {
        self.timeout
    }
}

/// An untyped client of one service: what a generated `<Trait>Client`
/// wraps. Use it directly to call methods by name.
///
/// Cheap to clone; clones share the connection and its response topic.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), mqrpc_runtime::Error> {
/// use mqrpc_runtime::{Client, ClientOptions, Connection};
/// use std::time::Duration;
/// let conn = Connection::from_env_or_embedded().await?;
/// let client = Client::new(&conn, "Nobody", ClientOptions::default()).await?;
/// // Nobody serves `Nobody`: the call ends with a timeout, not a hang.
/// let err = client
///     .with_timeout(Duration::from_millis(100))
///     .call::<_, ()>("ping", &())
///     .await
///     .unwrap_err();
/// assert!(err.is_timeout());
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Client {
    conn: Connection,
    caller: Arc<Caller>,
    service: Arc<str>,
    /// `<prefix>/<service>/`: request topics are this plus the method.
    topic_base: Arc<str>,
    options: ClientOptions,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("service", &self.service)
            .field("options", &self.options)
            .field("reply_topic", &self.caller.reply_topic)
            .finish()
    }
}

impl Client {
    /// A client of `service`. The first client of a connection subscribes its
    /// response topic and waits for the SUBACK.
    pub async fn new(
        conn: &Connection,
        service: &str,
        options: ClientOptions,
    ) -> Result<Client, Error> {
        topic::validate_level(service)?;
        topic::validate_prefix(&options.prefix)?;
        let caller = conn
            .shared
            .caller
            .get_or_try_init(|| Caller::start(conn))
            .await?
            .clone();
        Ok(Client {
            conn: conn.clone(),
            caller,
            service: Arc::from(service),
            topic_base: topic_base(&options.prefix, service),
            options,
        })
    }

    /// The same client with another timeout: per-call override.
    pub fn with_timeout(&self, timeout: Duration) -> Client {
        let mut client = self.clone();
        client.options.timeout = timeout;
        client
    }

    /// The same client, sending to one instance of the service (its
    /// [`ServerHandle::instance`](crate::ServerHandle::instance)) instead of
    /// any: `<prefix>/<service>/_to/<instance>/<method>`.
    pub fn to_instance(&self, instance: &str) -> Result<Client, Error> {
        topic::validate_level(instance)?;
        let mut client = self.clone();
        client.topic_base = Arc::from(format!(
            "{}{}/{instance}/",
            topic_base(&self.options.prefix, &self.service),
            crate::protocol::INSTANCE_LEVEL
        ));
        Ok(client)
    }

    /// The same client with another QoS for its requests.
    pub fn with_qos(&self, qos: QoS) -> Client {
        let mut client = self.clone();
        client.options.qos = qos;
        client
    }

    /// The same client with other options (prefix, QoS, codec, timeout).
    pub fn with_options(&self, options: ClientOptions) -> Result<Client, Error> {
        topic::validate_prefix(&options.prefix)?;
        let mut client = self.clone();
        client.topic_base = topic_base(&options.prefix, &self.service);
        client.options = options;
        Ok(client)
    }

    /// This client's options.
    pub fn options(&self) -> &ClientOptions {
        &self.options
    }

    /// The response topic shared by every client of this connection.
    pub fn reply_topic(&self) -> &str {
        &self.caller.reply_topic
    }

    /// Calls a method whose result is a plain value.
    pub async fn call<A, T>(&self, method: &str, args: &A) -> Result<T, Error>
    where
        A: Serialize + ?Sized,
        T: DeserializeOwned,
    {
        self.call_qos(method, None, None, args).await
    }

    /// [`call`](Self::call) with the method's own QoS, if it declares one
    /// (`#[mqrpc(qos = ..)]`); used by generated clients.
    ///
    /// Entry point of generated clients (the method's declared QoS and
    /// schema fingerprint); hidden from the docs and not covered by semver:
    /// call the untyped form without `_qos`, or the generated client.
    #[doc(hidden)]
    pub async fn call_qos<A, T>(
        &self,
        method: &str,
        qos: Option<QoS>,
        schema: Option<&'static str>,
        args: &A,
    ) -> Result<T, Error>
    where
        A: Serialize + ?Sized,
        T: DeserializeOwned,
    {
        self.call_encoded(method, qos, schema, args)
            .await?
            .into_value(method)
    }

    /// Calls a method declared as returning `Result<T, E>`: the server's
    /// `Err(E)` arrives as `Ok(Err(E))`, framework failures as `Err(Error)`.
    pub async fn call_fallible<A, T, E>(
        &self,
        method: &str,
        args: &A,
    ) -> Result<Result<T, E>, Error>
    where
        A: Serialize + ?Sized,
        T: DeserializeOwned,
        E: DeserializeOwned,
    {
        self.call_fallible_qos(method, None, None, args).await
    }

    /// [`call_fallible`](Self::call_fallible) with the method's own QoS.
    ///
    /// Entry point of generated clients (the method's declared QoS and
    /// schema fingerprint); hidden from the docs and not covered by semver:
    /// call the untyped form without `_qos`, or the generated client.
    #[doc(hidden)]
    pub async fn call_fallible_qos<A, T, E>(
        &self,
        method: &str,
        qos: Option<QoS>,
        schema: Option<&'static str>,
        args: &A,
    ) -> Result<Result<T, E>, Error>
    where
        A: Serialize + ?Sized,
        T: DeserializeOwned,
        E: DeserializeOwned,
    {
        self.call_encoded(method, qos, schema, args)
            .await?
            .into_result(method)
    }

    /// Calls `method` on every server of the service at once (topic
    /// `<prefix>/<service>/_all/<method>`): a stream of `(instance,
    /// outcome)` that ends at this client's timeout or after `max_answers`.
    /// `decode` turns each answer into the method's type
    /// ([`Response::into_value`], [`Response::into_result`]).
    ///
    /// Entry point of generated clients (the method's declared QoS and
    /// schema fingerprint); hidden from the docs and not covered by semver:
    /// call the untyped form without `_qos`, or the generated client.
    #[doc(hidden)]
    pub async fn broadcast_qos<A, T>(
        &self,
        method: &str,
        qos: Option<QoS>,
        schema: Option<&'static str>,
        args: &A,
        max_answers: Option<usize>,
        decode: fn(Response, &str) -> Result<T, Error>,
    ) -> Result<Answers<T>, Error>
    where
        A: Serialize + ?Sized,
    {
        let topic = format!(
            "{}{BROADCAST_LEVEL}/{method}",
            topic_base(&self.options.prefix, &self.service)
        );
        let capacity = max_answers.unwrap_or(1024).clamp(1, 1024);
        let (rx, slot) = self.send_many(topic, qos, schema, args, capacity).await?;
        Ok(Answers {
            rx,
            deadline: Box::pin(tokio::time::sleep(self.options.timeout)),
            left: max_answers,
            decode,
            method: method.to_string(),
            _slot: slot,
        })
    }

    /// Sends a request whose answers come as a stream (broadcast, server
    /// streaming): the call stays pending, each answer goes to the
    /// returned receiver, until the returned slot is dropped.
    async fn send_many<A: Serialize + ?Sized>(
        &self,
        topic: String,
        qos: Option<QoS>,
        schema: Option<&'static str>,
        args: &A,
        capacity: usize,
    ) -> Result<
        (
            tokio::sync::mpsc::Receiver<Result<Response, Failure>>,
            BroadcastSlot,
        ),
        Error,
    > {
        self.conn.ensure_open()?;
        let qos = qos.unwrap_or(self.options.qos);
        self.conn.check_qos(qos)?;
        let payload = self.options.codec.encode(args)?;
        let caller = self.caller.clone();
        let (tx, rx) = tokio::sync::mpsc::channel(capacity);
        let id = caller.register(Waiter::Many(tx))?;
        // Made before publishing, so a failed publish clears the entry.
        let slot = BroadcastSlot {
            caller: caller.clone(),
            id,
        };
        let mut properties = request_properties(
            &caller.reply_topic,
            id,
            self.options.codec,
            schema,
            self.options.timeout,
        );
        // No call span of its own (the answers outlive this function): the
        // servers join the caller's current trace.
        observe::inject_current(&mut properties.user_properties);
        self.check_size(&topic, payload.len(), &properties)?;
        self.conn
            .publish(topic, qos, Bytes::from(payload), properties, Some(id))
            .await?;
        Ok((rx, slot))
    }

    /// Asks one server of the service (`_ping`) whether it is there.
    pub async fn ping(&self) -> Result<(), Error> {
        self.call::<_, ()>(PING_METHOD, &()).await
    }

    /// Calls `method` on every server of the service at once (topic
    /// `<prefix>/<service>/_all/<method>`): a stream of `(instance,
    /// outcome)` that ends at this client's timeout or after `max_answers`
    /// answers. For a method declared `-> Result<T, E>`, ask for
    /// `Result<T, E>` as `T`.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), mqrpc_runtime::Error> {
    /// use futures_util::StreamExt;
    /// use mqrpc_runtime::{Client, ClientOptions, Connection};
    /// let conn = Connection::from_env_or_embedded().await?;
    /// let client = Client::new(&conn, "Nobody", ClientOptions::default()).await?;
    /// // Nobody serves `Nobody`: the stream ends at the timeout, empty.
    /// let short = client.with_timeout(std::time::Duration::from_millis(100));
    /// let answers = short.broadcast::<_, u64>("count", &(), None).await?;
    /// assert_eq!(answers.collect::<Vec<_>>().await.len(), 0);
    /// # Ok(()) }
    /// ```
    pub async fn broadcast<A, T>(
        &self,
        method: &str,
        args: &A,
        max_answers: Option<usize>,
    ) -> Result<Answers<T>, Error>
    where
        A: Serialize + ?Sized,
        T: DeserializeOwned,
    {
        self.broadcast_qos(method, None, None, args, max_answers, Response::into_value)
            .await
    }

    /// Calls a method returning `mqrpc::Stream<T>`: its items, as they
    /// come (see [`Items`]).
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), mqrpc_runtime::Error> {
    /// use futures_util::StreamExt;
    /// use mqrpc_runtime::{Client, ClientOptions, Connection, Error};
    /// let conn = Connection::from_env_or_embedded().await?;
    /// let client = Client::new(&conn, "Nobody", ClientOptions::default()).await?;
    /// let short = client.with_timeout(std::time::Duration::from_millis(100));
    /// let mut items = short.stream::<_, u64>("count_up", &3u64).await?;
    /// // Nobody serves it: the stream ends with an error, no items.
    /// assert!(matches!(items.next().await, Some(Err(Error::Timeout { .. } | Error::NoResponder { .. }))));
    /// # Ok(()) }
    /// ```
    pub async fn stream<A, T>(&self, method: &str, args: &A) -> Result<Items<T>, Error>
    where
        A: Serialize + ?Sized,
        T: DeserializeOwned,
    {
        self.stream_qos(method, None, None, args).await
    }

    /// `_info` of every server of the service, until this client's timeout.
    pub async fn info(&self) -> Result<Answers<crate::ServiceInfo>, Error> {
        self.broadcast_qos(INFO_METHOD, None, None, &(), None, Response::into_value)
            .await
    }

    /// `_stats` of every server of the service, until this client's timeout.
    pub async fn stats(&self) -> Result<Answers<crate::ServiceStats>, Error> {
        self.broadcast_qos(STATS_METHOD, None, None, &(), None, Response::into_value)
            .await
    }

    /// Sends a one-way request: no Response Topic, no answer, no pending
    /// slot. Returns once the request is queued for the broker; nothing
    /// tells whether a server ran it (`#[mqrpc(oneway)]` methods).
    pub async fn notify<A: Serialize + ?Sized>(&self, method: &str, args: &A) -> Result<(), Error> {
        self.notify_qos(method, None, None, args).await
    }

    /// [`notify`](Self::notify) with the method's own QoS.
    ///
    /// Entry point of generated clients (the method's declared QoS and
    /// schema fingerprint); hidden from the docs and not covered by semver:
    /// call the untyped form without `_qos`, or the generated client.
    #[doc(hidden)]
    pub async fn notify_qos<A: Serialize + ?Sized>(
        &self,
        method: &str,
        qos: Option<QoS>,
        schema: Option<&'static str>,
        args: &A,
    ) -> Result<(), Error> {
        self.conn.ensure_open()?;
        let qos = qos.unwrap_or(self.options.qos);
        self.conn.check_qos(qos)?;
        let payload = self.options.codec.encode(args)?;
        let topic = [&*self.topic_base, method].concat();
        let mut properties = PublishProperties {
            content_type: content_type(self.options.codec, schema),
            message_expiry_interval: Some(expiry_seconds(self.options.timeout)),
            ..PublishProperties::default()
        };
        observe::inject_current(&mut properties.user_properties);
        self.check_size(&topic, payload.len(), &properties)?;
        self.conn
            .publish(topic, qos, Bytes::from(payload), properties, None)
            .await
    }

    async fn call_encoded<A: Serialize + ?Sized>(
        &self,
        method: &str,
        qos: Option<QoS>,
        schema: Option<&'static str>,
        args: &A,
    ) -> Result<Response, Error> {
        let payload = self.options.codec.encode(args)?;
        self.send(method, qos.unwrap_or(self.options.qos), schema, payload)
            .await
    }

    /// Sends an already-encoded request (in this client's codec) and returns
    /// the raw response. Ends with [`Error::Timeout`] after the timeout.
    pub async fn call_raw(&self, method: &str, payload: Vec<u8>) -> Result<Response, Error> {
        self.send(method, self.options.qos, None, payload).await
    }

    /// One request and its answer. A single `async fn` on purpose: its
    /// future is what every call in flight costs in memory.
    async fn send(
        &self,
        method: &str,
        qos: QoS,
        schema: Option<&'static str>,
        payload: Vec<u8>,
    ) -> Result<Response, Error> {
        #[cfg(feature = "metrics")]
        let meter = observe::CallMeter::start(&self.service, method);
        // Bound by `let`, not matched in place: a match scrutinee would stay
        // in the future across the await, 250 bytes per call in flight.
        let (slot, span, topic, properties, rx) =
            match self.prepare(method, qos, schema, payload.len()) {
                Ok(prepared) => prepared,
                Err(error) => {
                    #[cfg(feature = "metrics")]
                    meter.finish(observe::error_label(&error));
                    return Err(error);
                }
            };
        let timeout = self.options.timeout;
        let exchange = async {
            self.conn
                .publish(topic, qos, Bytes::from(payload), properties, Some(slot.id))
                .await?;
            slot.sent.store(true, Ordering::Relaxed);
            match rx.await {
                Ok(outcome) => outcome.map_err(|failure| failure.into_error(method)),
                Err(_) => Err(Error::Disconnected),
            }
        };
        let result =
            match observe::InSpan::new(&span, tokio::time::timeout(timeout, exchange)).await {
                Ok(result) => result,
                Err(_) => Err(Error::Timeout {
                    method: method.to_string(),
                    timeout,
                }),
            };
        drop(slot);
        let result = match result {
            // The server's view of the same deadline.
            Ok(response) if response.status == Status::DeadlineExceeded => Err(Error::Timeout {
                method: method.to_string(),
                timeout,
            }),
            other => other,
        };
        let status = observe::outcome_label(&result);
        observe::record_status(&span, status);
        #[cfg(feature = "metrics")]
        meter.finish(status);
        result
    }

    /// Everything before a request goes out: checks, the pending slot, the
    /// span and the properties.
    #[allow(clippy::type_complexity)]
    fn prepare(
        &self,
        method: &str,
        qos: QoS,
        schema: Option<&'static str>,
        payload_len: usize,
    ) -> Result<
        (
            PendingSlot<'_>,
            tracing::Span,
            String,
            PublishProperties,
            oneshot::Receiver<Result<Response, Failure>>,
        ),
        Error,
    > {
        self.conn.ensure_open()?;
        self.conn.check_qos(qos)?;
        let caller = &*self.caller;
        let (tx, rx) = oneshot::channel();
        let id = caller.register(Waiter::Once(tx))?;
        let slot = PendingSlot {
            client: self,
            id,
            sent: AtomicBool::new(false),
        };
        let span = observe::client_span(&self.service, method, id);
        let mut properties = request_properties(
            &caller.reply_topic,
            id,
            self.options.codec,
            schema,
            self.options.timeout,
        );
        observe::inject(&span, &mut properties.user_properties);
        let topic = [&*self.topic_base, method].concat();
        self.check_size(&topic, payload_len, &properties)?;
        Ok((slot, span, topic, properties, rx))
    }

    /// Refuses a request the broker would not take: rumqttc drops the whole
    /// connection on a packet over the broker's Maximum Packet Size.
    fn check_size(
        &self,
        topic: &str,
        payload_len: usize,
        properties: &PublishProperties,
    ) -> Result<(), Error> {
        let Some(limit) = self.conn.broker_max_packet_size() else {
            return Ok(());
        };
        let size = crate::connection::publish_size(topic, payload_len, properties);
        if size > limit as usize {
            return Err(Error::TooLarge {
                message: format!(
                    "a {payload_len}-byte payload makes a packet over the broker's Maximum Packet Size of {limit} bytes"
                ),
            });
        }
        Ok(())
    }

    /// Best effort, from `Drop`: QoS 0, never waits.
    fn send_cancel(&self, id: u64) {
        self.send_control(id, None, Control::Cancel);
    }

    /// A cancel (QoS 0, best effort) or a stream credit (QoS 1: a lost
    /// credit would stall the stream) about call `id`, to the instance
    /// serving it when known.
    pub(crate) fn send_control(&self, id: u64, instance: Option<&str>, control: Control) {
        let (method, credit) = match control {
            Control::Cancel => (CANCEL_METHOD, None),
            Control::Credit(n) => (CREDIT_METHOD, Some(n)),
        };
        let topic = match instance {
            Some(instance) => format!(
                "{}{INSTANCE_LEVEL}/{instance}/{method}",
                topic_base(&self.options.prefix, &self.service)
            ),
            None => [&*self.topic_base, method].concat(),
        };
        let mut user_properties = vec![(
            CANCEL_RESPONSE_TOPIC_PROPERTY.to_string(),
            self.caller.reply_topic.clone(),
        )];
        if let Some(n) = credit {
            user_properties.push((CREDIT_PROPERTY.to_string(), n.to_string()));
        }
        let properties = PublishProperties {
            correlation_data: Some(Bytes::copy_from_slice(&id.to_be_bytes())),
            user_properties,
            ..PublishProperties::default()
        };
        if credit.is_none() {
            if let Err(e) = self.conn.try_publish_qos0(topic, Vec::new(), properties) {
                debug!(correlation = id, error = %e, "could not send a cancel message");
            }
            return;
        }
        let conn = self.conn.clone();
        tokio::spawn(async move {
            let sent = conn
                .publish(topic, QoS::AtLeastOnce, Bytes::new(), properties, None)
                .await;
            if let Err(e) = sent {
                debug!(correlation = id, error = %e, "could not send a stream credit");
            }
        });
    }

    /// Calls a method returning `mqrpc::Stream<T>`: its items, as they
    /// come (see [`Items`]).
    ///
    /// Entry point of generated clients (the method's declared QoS and
    /// schema fingerprint); hidden from the docs and not covered by semver:
    /// call the untyped form without `_qos`, or the generated client.
    #[doc(hidden)]
    pub async fn stream_qos<A, T>(
        &self,
        method: &str,
        qos: Option<QoS>,
        schema: Option<&'static str>,
        args: &A,
    ) -> Result<Items<T>, Error>
    where
        A: Serialize + ?Sized,
        T: DeserializeOwned,
    {
        let topic = [&*self.topic_base, method].concat();
        // Room for a whole window plus the end marker: the server never
        // sends more, so nothing is dropped.
        let capacity = crate::stream::WINDOW as usize + 2;
        let (rx, slot) = self.send_many(topic, qos, schema, args, capacity).await?;
        Ok(Items {
            rx,
            deadline: Box::pin(tokio::time::sleep(self.options.timeout)),
            decode: Response::into_value::<T>,
            method: method.to_string(),
            client: self.clone(),
            id: slot.id,
            next_seq: 0,
            unacknowledged: 0,
            instance: None,
            done: false,
            _slot: slot,
        })
    }
}

/// Ends a broadcast's (or stream's) pending entry when it is dropped.
pub(crate) struct BroadcastSlot {
    pub(crate) caller: Arc<Caller>,
    pub(crate) id: u64,
}

impl Drop for BroadcastSlot {
    fn drop(&mut self) {
        self.caller.lock().remove(&self.id);
    }
}

/// The answers to a broadcast: a [`Stream`](futures_util::Stream) of
/// `(instance, outcome)`, one per server that answered, ending at the
/// client's timeout or after the requested number of answers. An error
/// that no server sent (e.g. [`Error::NoResponder`], [`Error::Disconnected`])
/// comes with an empty instance and ends the stream.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), mqrpc_runtime::Error> {
/// use futures_util::StreamExt;
/// use std::time::Duration;
/// use mqrpc_runtime::{Client, ClientOptions, Connection};
/// let conn = Connection::from_env_or_embedded().await?;
/// let client = Client::new(&conn, "Nobody", ClientOptions::default().timeout(Duration::from_millis(100))).await?;
/// let answers = client.broadcast::<_, ()>("ping", &(), None).await?;
/// // Nobody serves `Nobody`: the stream ends at the timeout, empty.
/// assert_eq!(answers.collect::<Vec<_>>().await.len(), 0);
/// # Ok(()) }
/// ```
pub struct Answers<T> {
    rx: tokio::sync::mpsc::Receiver<Result<Response, Failure>>,
    deadline: std::pin::Pin<Box<tokio::time::Sleep>>,
    left: Option<usize>,
    decode: fn(Response, &str) -> Result<T, Error>,
    method: String,
    _slot: BroadcastSlot,
}

impl<T> futures_util::Stream for Answers<T> {
    type Item = (String, Result<T, Error>);

    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        use std::task::Poll;
        if self.left == Some(0) {
            return Poll::Ready(None);
        }
        match self.rx.poll_recv(cx) {
            Poll::Ready(Some(Ok(response))) => {
                if let Some(left) = &mut self.left {
                    *left -= 1;
                }
                let instance = response.instance.clone().unwrap_or_default();
                let outcome = (self.decode)(response, &self.method);
                Poll::Ready(Some((instance, outcome)))
            }
            Poll::Ready(Some(Err(failure))) => {
                self.left = Some(0); // not from a server: nothing more will come
                let error = failure.into_error(&self.method);
                Poll::Ready(Some((String::new(), Err(error))))
            }
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => match std::future::Future::poll(self.deadline.as_mut(), cx) {
                Poll::Ready(()) => {
                    self.left = Some(0);
                    Poll::Ready(None)
                }
                Poll::Pending => Poll::Pending,
            },
        }
    }
}

impl<T> std::fmt::Debug for Answers<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Answers")
            .field("method", &self.method)
            .field("left", &self.left)
            .finish()
    }
}

/// The properties of a request (PROTOCOL.md, "Request"). Values that are
/// the protocol's defaults are left out: every property costs allocations
/// on both sides and in the broker.
fn request_properties(
    reply_topic: &str,
    id: u64,
    codec: Codec,
    schema: Option<&'static str>,
    timeout: Duration,
) -> PublishProperties {
    let millis = timeout.as_millis();
    let budget = if millis.is_multiple_of(1000) && millis > 0 {
        Vec::new() // the Message Expiry Interval says it exactly
    } else {
        vec![(TIMEOUT_PROPERTY.to_string(), millis.to_string())]
    };
    PublishProperties {
        response_topic: Some(reply_topic.to_string()),
        correlation_data: Some(Bytes::copy_from_slice(&id.to_be_bytes())),
        content_type: content_type(codec, schema),
        // The broker drops the request if nobody took it in time.
        message_expiry_interval: Some(expiry_seconds(timeout)),
        user_properties: budget,
        ..PublishProperties::default()
    }
}

/// The Content Type of a request: absent for postcard without schema
/// fingerprint, else the codec's with `; schema=<fingerprint>`.
fn content_type(codec: Codec, schema: Option<&'static str>) -> Option<String> {
    match schema {
        // One exact allocation (`format!` grows its buffer as it goes).
        Some(schema) => Some([codec.content_type(), "; ", SCHEMA_PARAMETER, "=", schema].concat()),
        None => (codec != Codec::Postcard).then(|| codec.content_type().to_string()),
    }
}

/// `<prefix>/<service>/`.
fn topic_base(prefix: &str, service: &str) -> Arc<str> {
    Arc::from(format!("{prefix}/{service}/"))
}

/// Message Expiry Interval for a timeout: whole seconds, rounded up, ≥ 1.
fn expiry_seconds(timeout: Duration) -> u32 {
    let millis = timeout.as_millis().max(1);
    u32::try_from(millis.div_ceil(1000)).unwrap_or(u32::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rumqttc::v5::mqttbytes::QoS as WireQoS;

    fn hex(bytes: &[u8]) -> String {
        bytes
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<Vec<_>>()
            .join(" ")
    }

    /// The request of PROTOCOL.md's byte-level example, byte for byte.
    #[test]
    fn request_bytes_match_the_protocol_document() {
        let properties =
            request_properties("mqrpc/_reply/c1", 7, Codec::Postcard, None, DEFAULT_TIMEOUT);
        let payload = Codec::Postcard.encode(&(2i64, 3i64)).unwrap();
        let mut publish = Publish::new(
            "mqrpc/Calculator/add",
            WireQoS::AtLeastOnce,
            payload,
            Some(properties),
        );
        publish.pkid = 1;
        let mut buffer = bytes::BytesMut::new();
        publish.write(&mut buffer).unwrap();
        let document = include_str!("../../PROTOCOL.md");
        let example = document
            .split("<!-- request bytes -->")
            .nth(1)
            .expect("PROTOCOL.md marks the request bytes");
        // Each line: hex pairs and "quoted" strings, then a comment.
        let mut documented = Vec::new();
        for line in example.lines().filter(|l| !l.starts_with("```")) {
            for token in line.split_whitespace() {
                if let Some(text) = token.strip_prefix('"').and_then(|t| t.strip_suffix('"')) {
                    documented.extend_from_slice(text.as_bytes());
                } else if let Ok(byte) = u8::from_str_radix(token, 16)
                    .map_err(|_| ())
                    .and_then(|b| if token.len() == 2 { Ok(b) } else { Err(()) })
                {
                    documented.push(byte);
                } else {
                    break;
                }
            }
        }
        assert_eq!(hex(&documented), hex(&buffer));
        assert_eq!(expiry_seconds(Duration::from_millis(1)), 1);
        assert_eq!(expiry_seconds(Duration::from_millis(2_001)), 3);
    }
}
