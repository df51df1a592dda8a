//! The calling side: one response topic per connection, a bounded map of
//! calls waiting for answers, and [`Client`], the untyped stub that the
//! generated `<Trait>Client` wraps.

mod batching;
mod chunked;
#[cfg(test)]
mod chunked_doc;
mod discovery;
mod generated;
mod items;
pub(crate) mod layers;
mod many;
mod metadata;
mod nagle;
mod options;
mod pending;
mod raw;
mod request;
mod response;
mod retry;
mod sequence;
mod upstream;

pub(crate) use batching::BatchTargets;
pub use discovery::discover;
pub use generated::Generated;
pub use items::Items;
pub use many::Answers;
pub(crate) use many::BroadcastSlot;
pub use metadata::ResponseMetadata;
pub use options::{ClientOptions, DEFAULT_TIMEOUT};
use pending::answer;
pub(crate) use pending::{Caller, PendingSlot, Waiter};
pub use raw::RawAnswers;
pub(crate) use request::request_properties;
use request::{Answer, Outgoing, Target};
pub use response::Response;
pub use retry::RetryPolicy;
pub(crate) use sequence::Control;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde::{de::DeserializeOwned, Serialize};
use tokio::sync::oneshot;

use crate::connection::Connection;
use crate::error::Failure;
use crate::protocol::topic;
use crate::protocol::{QoS, Status};
use crate::{observe, Error};

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
    /// Sent with every call: the options' defaults with
    /// [`with_metadata`](Self::with_metadata)'s on top.
    metadata: crate::Metadata,
    /// Where the metadata of answers goes, if anywhere.
    response_metadata: Option<ResponseMetadata>,
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
            .map_err(|_| Error::Invariant {
                reason: "the connection's client state has another type".into(),
            })?;
        let topic_base = topic_base(&options.prefix, service);
        Ok(Client {
            conn: conn.clone(),
            batch: caller.batch_targets.get(&topic_base),
            caller,
            service: Arc::from(service),
            topic_base,
            instance: None,
            metadata: options.metadata.clone(),
            response_metadata: None,
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
        client.metadata = options.metadata.clone();
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
        self.call_encoded(method, None, None, args)
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
        self.call_encoded(method, None, None, args)
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
        self.notify_encoded(method, None, None, args).await
    }

    /// The entry point of the code `#[mqrpc::service]` generates: calls
    /// with the method's declared QoS and schema fingerprint. Not a public
    /// API and not covered by semver: call the methods above, or the
    /// generated client.
    #[doc(hidden)]
    pub fn __private(&self) -> generated::Generated<'_> {
        generated::Generated(self)
    }

    /// [`notify`](Self::notify) with a QoS and schema fingerprint.
    pub(super) async fn notify_encoded<A: Serialize + ?Sized>(
        &self,
        method: &str,
        qos: Option<QoS>,
        schema: Option<&'static str>,
        args: &A,
    ) -> Result<(), Error> {
        self.conn.ensure_open()?;
        let payload = self.options.codec.encode(args)?;
        let request = self.build_request(
            Target::Method,
            method,
            qos,
            schema,
            payload,
            Answer::None,
            None,
        )?;
        request.send_one_way(self, method).await
    }

    pub(super) async fn call_encoded<A: Serialize + ?Sized>(
        &self,
        method: &str,
        qos: Option<QoS>,
        schema: Option<&'static str>,
        args: &A,
    ) -> Result<Response, Error> {
        let payload = self.options.codec.encode(args)?;
        self.send(method, qos, schema, payload).await
    }

    /// Sends an already-encoded request (in this client's codec) and returns
    /// the raw response. Ends with [`Error::Timeout`] after the timeout.
    pub async fn call_raw(&self, method: &str, payload: Vec<u8>) -> Result<Response, Error> {
        self.send(method, None, None, payload).await
    }

    /// One request and its answer. A single `async fn` on purpose: its
    /// future is what every call in flight costs in memory.
    async fn send(
        &self,
        method: &str,
        qos: Option<QoS>,
        schema: Option<&'static str>,
        payload: Vec<u8>,
    ) -> Result<Response, Error> {
        // Calls sent in chunks are neither layered nor retried.
        let small = |_: &_| payload.len() <= self.options.chunking.get_size();
        if let Some(extras) = self.options.extras.as_ref().filter(small) {
            // Boxed: a call without layers or retries carries none of it.
            let extras = extras.clone();
            let qos = qos.unwrap_or(self.options.qos);
            return Box::pin(self.send_extra(extras, method, qos, schema, payload)).await;
        }
        #[cfg(feature = "metrics")]
        let meter = observe::CallMeter::start(&self.service, method);
        // Bound by `let`, not matched in place: a match scrutinee would stay
        // in the future across the await, 250 bytes per call in flight.
        let (slot, span, request, rx) = match self.prepare(method, qos, schema, payload) {
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
        let chunked_request = if request.chunked {
            Some(Box::new(request))
        } else {
            let batch = self.batchable();
            let qos = request.qos;
            request.send(self, &self.caller, slot.id, batch);
            slot.sent.store(true, Ordering::Relaxed);
            tracing::debug!(correlation = slot.id, ?qos, batch, "request sent");
            None
        };
        let exchange = async {
            let outcome = match chunked_request {
                Some(request) => {
                    let Outgoing {
                        topic,
                        qos,
                        properties,
                        payload,
                        ..
                    } = *request;
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
        if let (Ok(response), Some(record)) = (&result, &self.response_metadata) {
            record.record(response.metadata());
        }
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

    /// Everything before a unary request goes out: the pending slot, the
    /// span and the request.
    #[allow(clippy::type_complexity)]
    fn prepare(
        &self,
        method: &str,
        qos: Option<QoS>,
        schema: Option<&'static str>,
        payload: Vec<u8>,
    ) -> Result<
        (
            PendingSlot<'_>,
            tracing::Span,
            Outgoing,
            oneshot::Receiver<Result<Response, Failure>>,
        ),
        Error,
    > {
        self.conn.ensure_open()?;
        let (tx, rx) = oneshot::channel();
        let id = self
            .caller
            .register(Waiter::Once(tx), self.instance.clone())?;
        let slot = PendingSlot {
            client: self,
            id,
            sent: AtomicBool::new(false),
        };
        let span = observe::client_span(&self.service, method, id);
        let answer = Answer::Once {
            id,
            budget: self.options.timeout,
        };
        let request = self.build_request(
            Target::Method,
            method,
            qos,
            schema,
            payload,
            answer,
            Some(&span),
        )?;
        Ok((slot, span, request, rx))
    }

    /// Best effort, from `Drop`: QoS 0, never waits.
    fn send_cancel(&self, id: u64) {
        self.send_control(id, None, Control::Cancel);
    }
}

/// `<prefix>/<service>/`.
fn topic_base(prefix: &str, service: &str) -> Arc<str> {
    Arc::from(topic::service_base(prefix, service))
}
