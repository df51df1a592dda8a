//! Every answer of a call by name, as it came off the wire, whether the
//! method answers once or streams: what a tool that does not know the
//! method's declared type (the `mqrpc` command) reads.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use crate::client::{BroadcastSlot, Client, Control, Response};
use crate::error::Failure;
use crate::{Error, Status, STREAM_WINDOW as WINDOW};

impl Client {
    /// Sends an already-encoded request (in this client's codec) and
    /// returns its answers raw: the one answer of a plain method, or each
    /// item of a method returning `mqrpc::Stream<T>` until its end marker.
    /// An answer with an error status ([`Status::Error`], a framework
    /// status) is the last. No answer for the client's timeout (from the
    /// request, then between items) ends it with [`Error::Timeout`].
    ///
    /// ```
    /// # use mqrpc_runtime as mqrpc;
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), mqrpc::Error> {
    /// use mqrpc::{Client, ClientOptions, Codec, Connection, Reply, Service, StreamExt};
    /// struct Count;
    /// impl Service for Count {
    ///     const NAME: &'static str = "Count";
    ///     const METHODS: &'static [&'static str] = &["up"];
    ///     async fn call(&self, method: &str, codec: Codec, payload: &[u8]) -> Reply {
    ///         let n: u64 = codec.decode(payload).unwrap_or(0);
    ///         Reply::stream(codec, mqrpc::Stream::iter(0..n))
    ///     }
    /// }
    /// let conn = Connection::from_env_or_embedded().await?;
    /// let _server = mqrpc::serve(&conn, Count, Default::default()).await?;
    /// let client = Client::new(&conn, "Count", ClientOptions::default().codec(Codec::Json)).await?;
    /// let answers = client.call_raw_answers("up", b"3".to_vec()).await?;
    /// let items: Vec<_> = answers.map(|a| a.unwrap().payload).collect().await;
    /// assert_eq!(items, ["0", "1", "2"]);
    /// # Ok(()) }
    /// ```
    pub async fn call_raw_answers(
        &self,
        method: &str,
        payload: Vec<u8>,
    ) -> Result<RawAnswers, Error> {
        let topic = crate::protocol::topic::method_topic(&self.topic_base, method);
        let capacity = WINDOW as usize + 2;
        let (rx, slot) = self
            .send_many_encoded(
                topic,
                None,
                None,
                payload,
                capacity,
                super::many::Gather::Stream,
            )
            .await?;
        let idle = self.options.get_stream_idle_timeout();
        Ok(RawAnswers {
            rx,
            idle,
            deadline: Box::pin(tokio::time::sleep(idle)),
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

/// The answers of [`Client::call_raw_answers`]: a
/// [`Stream`](https://docs.rs/futures/0.3/futures/stream/trait.Stream.html)
/// of [`Response`]s (read it with `mqrpc::StreamExt`).
/// Dropping it before the end stops the server's producer.
pub struct RawAnswers {
    rx: tokio::sync::mpsc::Receiver<Result<Response, Failure>>,
    idle: Duration,
    deadline: Pin<Box<tokio::time::Sleep>>,
    method: String,
    client: Client,
    id: u64,
    next_seq: u64,
    unacknowledged: u32,
    instance: Option<String>,
    done: bool,
    _slot: BroadcastSlot,
}

impl RawAnswers {
    fn finish(
        &mut self,
        item: Option<Result<Response, Error>>,
    ) -> Poll<Option<<Self as futures_util::Stream>::Item>> {
        self.done = true;
        Poll::Ready(item)
    }

    /// One answer: the last unless it is a stream item.
    fn accept(&mut self, response: Response) -> Poll<Option<Result<Response, Error>>> {
        if self.instance.is_none() {
            self.instance = response.instance.clone();
        }
        match response.seq {
            // A plain method's one answer (or a stream refused before its
            // first item).
            None if self.next_seq == 0 => self.finish(Some(Ok(response))),
            Some(seq) if seq == self.next_seq => {
                self.next_seq += 1;
                match response.status {
                    Status::End => self.finish(None),
                    Status::Ok => {
                        self.unacknowledged += 1;
                        if self.unacknowledged >= WINDOW / 2 {
                            let credit = std::mem::take(&mut self.unacknowledged);
                            self.client.send_control(
                                self.id,
                                self.instance.as_deref(),
                                Control::Credit(credit),
                            );
                        }
                        Poll::Ready(Some(Ok(response)))
                    }
                    _ => self.finish(Some(Ok(response))),
                }
            }
            other => {
                let reason = format!(
                    "answers of `{}`: expected item {}, got {other:?}",
                    self.method, self.next_seq
                );
                self.finish(Some(Err(Error::Protocol { reason })))
            }
        }
    }
}

impl futures_util::Stream for RawAnswers {
    type Item = Result<Response, Error>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if self.done {
            return Poll::Ready(None);
        }
        match self.rx.poll_recv(cx) {
            Poll::Ready(Some(Ok(response))) => {
                let next = tokio::time::Instant::now() + self.idle;
                self.deadline.as_mut().reset(next);
                self.accept(response)
            }
            Poll::Ready(Some(Err(failure))) => {
                let error = failure.into_error(&self.method);
                self.finish(Some(Err(error)))
            }
            Poll::Ready(None) => self.finish(None),
            Poll::Pending => match std::future::Future::poll(self.deadline.as_mut(), cx) {
                Poll::Ready(()) => {
                    let error = Error::Timeout {
                        method: self.method.clone(),
                        timeout: self.idle,
                    };
                    self.finish(Some(Err(error)))
                }
                Poll::Pending => Poll::Pending,
            },
        }
    }
}

impl Drop for RawAnswers {
    fn drop(&mut self) {
        if !self.done {
            self.client
                .send_control(self.id, self.instance.as_deref(), Control::Cancel);
        }
    }
}

impl std::fmt::Debug for RawAnswers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RawAnswers")
            .field("method", &self.method)
            .field("next_seq", &self.next_seq)
            .field("done", &self.done)
            .finish()
    }
}
