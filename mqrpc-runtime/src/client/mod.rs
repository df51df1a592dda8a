//! The calling side: one response topic per connection, a bounded map of
//! calls waiting for answers, and [`Client`], the untyped stub that the
//! generated `<Trait>Client` wraps.

mod batching;
mod chunked;
#[cfg(test)]
mod chunked_doc;
mod discovery;
mod items;
pub(crate) mod layers;
mod many;
mod nagle;
mod options;
mod pending;
mod raw;
mod response;
mod retry;

pub(crate) use batching::BatchTargets;
pub use discovery::discover;
pub(crate) use items::Control;
pub use items::Items;
pub use many::Answers;
pub(crate) use many::BroadcastSlot;
pub use options::{ClientOptions, DEFAULT_TIMEOUT};
use pending::answer;
pub(crate) use pending::{Caller, PendingSlot, Waiter};
pub use raw::RawAnswers;
pub use response::Response;
pub use retry::RetryPolicy;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use rumqttc::v5::mqttbytes::v5::PublishProperties;
use serde::{de::DeserializeOwned, Serialize};
use tokio::sync::oneshot;

use crate::connection::{AckTo, Connection};
use crate::error::Failure;
use crate::protocol::topic;
use crate::protocol::QoS;
use crate::protocol::{Status, SCHEMA_PARAMETER, TIMEOUT_PROPERTY};
use crate::{observe, Codec, Error};

/// An untyped client of one service: what a generated `<Trait>Client`
/// wraps. Use it directly to call methods by name.
///
/// Cheap to clone; clones share the connection and its response topic.
///
/// ```
/// # use mqrpc_runtime as mqrpc;
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), mqrpc::Error> {
/// use mqrpc::{Client, ClientOptions, Connection};
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
    /// Whether `topic_base` takes batches.
    batch: Arc<batching::BatchTarget>,
    /// The instance `topic_base` names ([`to_instance`](Self::to_instance)):
    /// its calls end when it is gone.
    instance: Option<Arc<str>>,
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
            .client_state
            .get_or_try_init(|| async {
                let caller: Arc<dyn std::any::Any + Send + Sync> = Caller::start(conn).await?;
                Ok::<_, Error>(caller)
            })
            .await?
            .clone()
            .downcast::<Caller>()
            .map_err(|_| Error::Mqtt("the connection's client state has another type".into()))?;
        let topic_base = topic_base(&options.prefix, service);
        Ok(Client {
            conn: conn.clone(),
            batch: caller.batch_targets.get(&topic_base),
            caller,
            service: Arc::from(service),
            topic_base,
            instance: None,
            options,
        })
    }

    /// The same client with another timeout: per-call override (for a
    /// stream, the wait for each item, unless
    /// [`ClientOptions::stream_idle_timeout`] is set).
    pub fn with_timeout(&self, timeout: Duration) -> Client {
        let mut client = self.clone();
        client.options.timeout = timeout;
        client
    }

    /// The same client, sending to one instance of the service (its
    /// [`ServerHandle::instance`](crate::ServerHandle::instance)) instead of
    /// any: `<prefix>/<service>/_to/<instance>/<method>`.
    ///
    /// When that instance goes away (its process dies, its connection
    /// closes, it shuts down), its calls still waiting end at once with
    /// [`Error::ServerGone`] rather than at their deadline (PROTOCOL.md,
    /// "Server gone"; an example is at [`Error::ServerGone`]).
    pub fn to_instance(&self, instance: &str) -> Result<Client, Error> {
        topic::validate_level(instance)?;
        let mut client = self.clone();
        client.instance = Some(Arc::from(instance));
        let service_base = topic::service_base(&self.options.prefix, &self.service);
        client.topic_base = Arc::from(topic::instance_base(&service_base, instance));
        client.batch = self.caller.batch_targets.get(&client.topic_base);
        Ok(client)
    }

    /// The same client with another QoS for its requests.
    pub fn with_qos(&self, qos: QoS) -> Client {
        let mut client = self.clone();
        client.options.qos = qos;
        client
    }

    /// The same client with other options (prefix, QoS, codec, timeout),
    /// sending to any instance of the service.
    pub fn with_options(&self, options: ClientOptions) -> Result<Client, Error> {
        topic::validate_prefix(&options.prefix)?;
        let mut client = self.clone();
        client.topic_base = topic_base(&options.prefix, &self.service);
        client.batch = self.caller.batch_targets.get(&client.topic_base);
        client.instance = None;
        client.options = options;
        Ok(client)
    }

    /// The connection this client calls through.
    pub fn connection(&self) -> &Connection {
        &self.conn
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

    /// Sends a one-way request: no Response Topic, no answer, no pending
    /// slot (`#[mqrpc(oneway)]` methods). Returns once the broker has the
    /// request: its PUBACK at QoS 1, its PUBCOMP at QoS 2, the write to the
    /// socket at QoS 0. A broker that reports no subscriber (PUBACK 0x10,
    /// e.g. Mosquitto) gives [`Error::NoResponder`], one that refuses it
    /// [`Error::NotAuthorized`] or [`Error::Refused`]; nothing tells whether
    /// a server ran it.
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
        let payload = self.options.codec.encode(args)?;
        let topic = topic::method_topic(&self.topic_base, method);
        let mut properties = PublishProperties {
            content_type: content_type(self.options.codec, schema),
            message_expiry_interval: Some(expiry_seconds(self.options.timeout)),
            ..PublishProperties::default()
        };
        observe::inject_current(&mut properties.user_properties);
        self.check_size(&topic, payload.len(), &properties)?;
        let ack = self
            .conn
            .publish(topic, qos, Bytes::from(payload), properties, false);
        crate::connection::ack_outcome(ack.await).map_err(|failure| failure.into_error(method))
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
        // Calls sent in chunks are neither layered nor retried.
        let small = |_: &_| payload.len() <= self.options.chunking.get_size();
        if let Some(extras) = self.options.extras.as_ref().filter(small) {
            // Boxed: a call without layers or retries carries none of it.
            let extras = extras.clone();
            return Box::pin(self.send_extra(extras, method, qos, schema, payload)).await;
        }
        #[cfg(feature = "metrics")]
        let meter = observe::CallMeter::start(&self.service, method);
        // Bound by `let`, not matched in place: a match scrutinee would stay
        // in the future across the await, 250 bytes per call in flight.
        let (slot, span, topic, properties, rx, chunked) =
            match self.prepare(method, schema, payload.len()) {
                Ok(prepared) => prepared,
                Err(error) => {
                    #[cfg(feature = "metrics")]
                    meter.finish(observe::error_label(&error));
                    return Err(error);
                }
            };
        // In the future's state in place of the timeout, which `self` has.
        let started = std::time::Instant::now();
        // Sent before the future that waits is made (unless chunked, whose
        // sending waits for credit): what that future would capture (topic,
        // properties, payload: some 250 bytes) would stay in every call's
        // state until its answer.
        let chunked_request = if chunked {
            Some(Box::new((topic, payload, properties)))
        } else {
            let batch = self.batchable();
            // A refusal ends the call through the caller, which also takes
            // its entry: no cancel is sent for a request no server has.
            let ack = AckTo::Listener(self.caller.clone(), slot.id);
            self.conn
                .publish_to(topic, qos, Bytes::from(payload), properties, batch, ack);
            slot.sent.store(true, Ordering::Relaxed);
            tracing::debug!(correlation = slot.id, ?qos, batch, "request sent");
            None
        };
        let exchange = async {
            let outcome = match chunked_request {
                Some(request) => {
                    let (topic, payload, properties) = *request;
                    // Boxed: small calls' futures do not carry its state.
                    let send = chunked::send_request(
                        self, &slot, method, topic, qos, payload, properties, rx,
                    );
                    Box::pin(send).await
                }
                None => answer(rx).await,
            };
            match outcome {
                // The answer comes in chunks (PROTOCOL.md, "Chunked transfer").
                Err(Failure::Chunked(incoming)) => {
                    Box::pin(chunked::receive_answer(self, slot.id, incoming)).await
                }
                other => other,
            }
            .map_err(|failure| failure.into_error(method))
        };
        let waited = tokio::time::timeout(self.options.timeout, exchange);
        let result = observe::InSpan::new(&span, waited).await;
        let timeout = self.options.timeout;
        let result = match result {
            Ok(result) => result,
            Err(_) => {
                self.batch_timed_out();
                Err(Error::Timeout {
                    method: method.to_string(),
                    timeout,
                })
            }
        };
        if result.is_ok() {
            self.caller
                .nagle
                .observe(started.elapsed(), || self.conn.options().broker_address());
        }
        let id = slot.id;
        drop(slot);
        let result = match result {
            // The server's view of the same deadline.
            Ok(response) if response.status == Status::DeadlineExceeded => Err(Error::Timeout {
                method: method.to_string(),
                timeout,
            }),
            other => other,
        };
        let status = observe::outcome_label(result.as_ref().map(|response| &response.status));
        observe::record_status(&span, status);
        match &result {
            Ok(_) => tracing::debug!(parent: &span, correlation = id, status, "answered"),
            Err(error) => {
                tracing::debug!(parent: &span, correlation = id, status, %error, "call failed")
            }
        }
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
        schema: Option<&'static str>,
        payload_len: usize,
    ) -> Result<
        (
            PendingSlot<'_>,
            tracing::Span,
            String,
            PublishProperties,
            oneshot::Receiver<Result<Response, Failure>>,
            bool,
        ),
        Error,
    > {
        self.conn.ensure_open()?;
        let caller = &*self.caller;
        let (tx, rx) = oneshot::channel();
        let id = caller.register(Waiter::Once(tx), self.instance.clone())?;
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
        let topic = topic::method_topic(&self.topic_base, method);
        let chunked = chunked::needs_chunks(self, &topic, payload_len, &properties);
        if !chunked {
            self.check_size(&topic, payload_len, &properties)?;
        }
        Ok((slot, span, topic, properties, rx, chunked))
    }

    /// Refuses a request over the broker's Maximum Packet Size before it
    /// takes a pending slot (the broker would drop the connection for it),
    /// with an error that names the payload.
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
}

/// The properties of a request (PROTOCOL.md, "Request"). Values that are
/// the protocol's defaults are left out: every property costs allocations
/// on both sides and in the broker.
pub(super) fn request_properties(
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
    Arc::from(topic::service_base(prefix, service))
}

/// Message Expiry Interval for a timeout: whole seconds, rounded up, ≥ 1.
fn expiry_seconds(timeout: Duration) -> u32 {
    let millis = timeout.as_millis().max(1);
    u32::try_from(millis.div_ceil(1000)).unwrap_or(u32::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rumqttc::v5::mqttbytes::v5::Publish;
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
        let document = include_str!("../../../PROTOCOL.md");
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
