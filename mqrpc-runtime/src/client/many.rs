//! Calls with many answers: broadcasts to every server of a service, and
//! the sending of every request answered more than once (broadcasts,
//! streams).

use super::request::{Answer, Target};
use super::{topic_base, Caller, Client, Response, Waiter};
use std::sync::Arc;

use bytes::Bytes;
use rumqttc::v5::mqttbytes::v5::PublishProperties;
use serde::{de::DeserializeOwned, Serialize};

use crate::client::Control;
use crate::error::Failure;
use crate::protocol::topic;
use crate::protocol::QoS;
use crate::protocol::{
    CANCEL_METHOD, CANCEL_RESPONSE_TOPIC_PROPERTY, CREDIT_METHOD, CREDIT_PROPERTY, INFO_METHOD,
    PING_METHOD, STATS_METHOD,
};
use crate::Error;

impl Client {
    /// [`broadcast`](Self::broadcast) with a QoS and schema fingerprint,
    /// decoding each answer with `decode`.
    pub(super) async fn broadcast_encoded<A, T>(
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
        let payload = self.options.codec.encode(args)?;
        let capacity = max_answers.unwrap_or(1024).clamp(1, 1024);
        let target = Target::Broadcast;
        let (rx, slot) =
            self.send_many(target, method, qos, schema, payload, capacity, Gather::All)?;
        Ok(Answers {
            rx,
            deadline: Box::pin(tokio::time::sleep(self.options.timeout)),
            left: max_answers,
            decode,
            method: method.to_string(),
            asked: None,
            record: self.response_metadata.clone(),
            _slot: slot,
        })
    }

    /// Sends a request whose answers come as a stream (broadcast, server
    /// streaming, a built-in asked of one instance): the call stays
    /// pending, each answer goes to the returned receiver, until the
    /// returned slot is dropped. A stream is bound to one instance (this
    /// client's, or the first to answer).
    #[allow(clippy::too_many_arguments)]
    pub(super) fn send_many(
        &self,
        target: Target,
        method: &str,
        qos: Option<QoS>,
        schema: Option<&'static str>,
        payload: Vec<u8>,
        capacity: usize,
        gather: Gather,
    ) -> Result<
        (
            tokio::sync::mpsc::Receiver<Result<Response, Failure>>,
            BroadcastSlot,
        ),
        Error,
    > {
        self.conn.ensure_open()?;
        let caller = &self.caller;
        let (tx, rx) = tokio::sync::mpsc::channel(capacity);
        let id = match gather {
            Gather::Stream => caller.register(Waiter::Stream(tx), self.instance.clone())?,
            Gather::One => caller.register(Waiter::Many(tx), self.instance.clone())?,
            Gather::All => caller.register(Waiter::Many(tx), None)?,
        };
        // Made before publishing, so a failed publish clears the entry.
        let slot = BroadcastSlot {
            caller: caller.clone(),
            id,
        };
        // A stream's budget is per item (PROTOCOL.md, "Server streaming").
        let budget = if gather == Gather::Stream {
            self.options.get_stream_idle_timeout()
        } else {
            self.options.timeout
        };
        // No call span of its own (the answers outlive this function): the
        // servers join the caller's current trace.
        let answer = Answer::Many { id, budget };
        let request = self.build_request(target, method, qos, schema, payload, answer, None)?;
        // A refusal (no server subscribed, not authorized) ends the
        // answers at once, through the caller.
        request.send(self, caller, id, false);
        Ok((rx, slot))
    }

    /// Asks one server of the service (`_ping`) whether it is there: this
    /// client's instance ([`to_instance`](Self::to_instance)), or any one
    /// through the share group. Returns at its answer, or ends with
    /// [`Error::Timeout`] after the client's timeout (10 s by default).
    pub async fn ping(&self) -> Result<(), Error> {
        self.call::<_, ()>(PING_METHOD, &()).await
    }

    /// Calls `method` on every server of the service at once (topic
    /// `<prefix>/<service>/_all/<method>`): a stream of `(instance,
    /// outcome)` that ends at this client's timeout (10 s by default) or
    /// after `max_answers` answers, whichever comes first. Each answer decodes as `T`; a method declared
    /// `-> Result<T, E>` is best called through its generated client's
    /// `broadcast()`, which decodes its typed errors.
    ///
    /// ```
    /// # use mqrpc_runtime as mqrpc;
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), mqrpc::Error> {
    /// use mqrpc::StreamExt;
    /// use mqrpc::{Client, ClientOptions, Connection};
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
        self.broadcast_encoded(method, None, None, args, max_answers, Response::into_value)
            .await
    }

    /// `_info` (service, version, instance, methods and their schema
    /// fingerprints) of the servers of the service, as `(instance,
    /// outcome)` answers.
    ///
    /// - On a client of one instance ([`to_instance`](Self::to_instance)):
    ///   that server's answer, and the stream ends with it (at once, not at
    ///   the timeout; [`Error::ServerGone`] if the instance goes away
    ///   first, [`Error::Timeout`] if no answer comes within the client's
    ///   timeout).
    /// - Otherwise every server's, a broadcast: the stream gathers answers
    ///   for the whole client's timeout (10 s by default,
    ///   [`DEFAULT_TIMEOUT`](crate::DEFAULT_TIMEOUT)), since it cannot
    ///   know how many servers there are. Take
    ///   `answers.next().await` to stop at the first one.
    ///
    /// ```
    /// # use mqrpc_runtime as mqrpc;
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), mqrpc::Error> {
    /// use futures_util::StreamExt;
    /// use mqrpc::{Client, ClientOptions, Codec, Connection, Reply, ServerOptions, Service};
    /// struct Echo;
    /// impl Service for Echo {
    ///     const NAME: &'static str = "Echo";
    ///     const METHODS: &'static [&'static str] = &["echo"];
    ///     async fn call(&self, _method: &str, codec: Codec, payload: &[u8]) -> Reply {
    ///         Reply::ok(codec, &payload.len())
    ///     }
    /// }
    /// let conn = Connection::from_env_or_embedded().await?;
    /// let _server = mqrpc::serve(&conn, Echo, ServerOptions::default().instance("echo-1")).await?;
    /// let client = Client::new(&conn, "Echo", ClientOptions::default()).await?;
    /// // One instance: its answer ends the stream.
    /// let infos: Vec<_> = client.to_instance("echo-1")?.info().await?.collect().await;
    /// assert_eq!(infos.len(), 1);
    /// assert_eq!(infos[0].1.as_ref().unwrap().instance, "echo-1");
    /// // Every instance: the first answer, without waiting for the others.
    /// let (instance, info) = client.info().await?.next().await.expect("one answer");
    /// assert_eq!((instance.as_str(), info?.service.as_str()), ("echo-1", "Echo"));
    /// # Ok(()) }
    /// ```
    pub async fn info(&self) -> Result<Answers<crate::ServiceInfo>, Error> {
        self.builtin_answers(INFO_METHOD).await
    }

    /// `_stats` (per-method calls, errors, p50/p99) of the servers of the
    /// service, as `(instance, outcome)` answers: on a client of one
    /// instance, that server's answer, ending the stream at once; otherwise
    /// every server's, gathered for the whole client's timeout (10 s by
    /// default), like [`info`](Self::info).
    pub async fn stats(&self) -> Result<Answers<crate::ServiceStats>, Error> {
        self.builtin_answers(STATS_METHOD).await
    }

    /// A built-in asked of this client's instance (one answer ends it) or
    /// of every server of the service (answers until the timeout).
    async fn builtin_answers<T: DeserializeOwned>(
        &self,
        method: &str,
    ) -> Result<Answers<T>, Error> {
        if self.instance.is_none() {
            return self
                .broadcast_encoded(method, None, None, &(), None, Response::into_value)
                .await;
        }
        let payload = self.options.codec.encode(&())?;
        let (rx, slot) =
            self.send_many(Target::Method, method, None, None, payload, 1, Gather::One)?;
        Ok(Answers {
            rx,
            deadline: Box::pin(tokio::time::sleep(self.options.timeout)),
            left: Some(1),
            decode: Response::into_value,
            method: method.to_string(),
            asked: self.instance.clone(),
            record: self.response_metadata.clone(),
            _slot: slot,
        })
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
            Some(instance) => {
                let service_base = topic_base(&self.options.prefix, &self.service);
                topic::method_topic(&topic::instance_base(&service_base, instance), method)
            }
            None => topic::method_topic(&self.topic_base, method),
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
        // Best effort (a cancel comes from `Drop`); never waits.
        let qos = match credit {
            None => QoS::AtMostOnce,
            Some(_) => QoS::AtLeastOnce,
        };
        drop(
            self.conn
                .publish(topic, qos, Bytes::new(), properties, false),
        );
    }
}

/// Whose answers a request with many answers gathers.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Gather {
    /// Every server's (a broadcast), until the timeout.
    All,
    /// One instance's (this client's), bound to it.
    One,
    /// A stream's items, from one instance.
    Stream,
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

/// The answers to a broadcast: a
/// [`Stream`](https://docs.rs/futures/0.3/futures/stream/trait.Stream.html)
/// (read it with `mqrpc::StreamExt`) of `(instance, outcome)`, one per server that answered, ending at the
/// client's timeout (10 s by default, [`DEFAULT_TIMEOUT`](crate::DEFAULT_TIMEOUT):
/// it cannot know how many servers there are) or after the requested
/// number of answers, whichever comes first. An error
/// that no server sent (e.g. [`Error::NoResponder`], [`Error::Disconnected`])
/// comes with an empty instance and ends the stream.
///
/// ```
/// # use mqrpc_runtime as mqrpc;
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), mqrpc::Error> {
/// use mqrpc::StreamExt;
/// use std::time::Duration;
/// use mqrpc::{Client, ClientOptions, Connection};
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
    /// The instance asked, for answers that do not name theirs (only
    /// broadcasts' do).
    asked: Option<Arc<str>>,
    /// Where each answer's metadata goes, if anywhere.
    record: Option<super::ResponseMetadata>,
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
                let instance = match (&response.instance, &self.asked) {
                    (Some(instance), _) => instance.to_string(),
                    (None, asked) => asked.as_deref().unwrap_or_default().to_string(),
                };
                if let Some(record) = &self.record {
                    record.record(response.metadata());
                }
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
