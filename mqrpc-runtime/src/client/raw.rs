//! Every answer of a call by name, as it came off the wire, whether the
//! method answers once or streams: what a tool that does not know the
//! method's declared type (the `mqrpc` command) reads.

use std::pin::Pin;
use std::task::{Context, Poll};

use super::sequence::{Next, Sequence};
use crate::client::{Client, Response};
use crate::Error;

impl Client {
    /// Sends an already-encoded request (in this client's codec) and
    /// returns its answers raw: the one answer of a plain method, or each
    /// item of a method returning `mqrpc::Stream<T>` until its end marker.
    /// An answer with an error status ([`Status::Error`](crate::Status::Error), a framework
    /// status) is the last. No answer within the stream idle timeout (by
    /// default the client's timeout; from the request, then while the
    /// caller waits for each item), or at the stream's limit if one is set,
    /// ends it with [`Error::Timeout`], as does the server's
    /// `deadline-exceeded`.
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
        let sequence = self.start_sequence(method, None, None, payload)?;
        Ok(RawAnswers { sequence })
    }
}

/// The answers of [`Client::call_raw_answers`]: a
/// [`Stream`](https://docs.rs/futures/0.3/futures/stream/trait.Stream.html)
/// of [`Response`]s (read it with `mqrpc::StreamExt`), with the same
/// order, credit, idle-timeout and cancellation rules as [`Items`](crate::Items).
/// Dropping it before the end stops the server's producer.
pub struct RawAnswers {
    sequence: Sequence,
}

impl futures_util::Stream for RawAnswers {
    type Item = Result<Response, Error>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if self.sequence.is_done() {
            return Poll::Ready(None);
        }
        Poll::Ready(match std::task::ready!(self.sequence.poll_next(cx)) {
            Next::Item(response) | Next::Last(response) => Some(Ok(response)),
            Next::End => None,
            Next::Failed(error) => Some(Err(error)),
        })
    }
}

impl std::fmt::Debug for RawAnswers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RawAnswers")
            .field("method", &self.sequence.method)
            .field("next_seq", &self.sequence.received())
            .field("done", &self.sequence.is_done())
            .finish()
    }
}
