//! The caller's side of a streaming call: [`Client::stream`] and its typed
//! [`Items`].

use std::pin::Pin;
use std::task::{Context, Poll};

use serde::{de::DeserializeOwned, Serialize};

use super::many::Gather;
use super::sequence::{Next, Sequence};
use crate::client::{Client, Response};
use crate::protocol::{QoS, Status};
use crate::Error;

impl Client {
    /// Calls a method returning `mqrpc::Stream<T>`: its items, as they
    /// come (see [`Items`]).
    ///
    /// ```
    /// # use mqrpc_runtime as mqrpc;
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), mqrpc::Error> {
    /// use mqrpc::StreamExt;
    /// use mqrpc::{Client, ClientOptions, Connection, Error};
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
        self.stream_encoded(method, None, None, args).await
    }

    /// [`stream`](Self::stream) with a QoS and schema fingerprint.
    pub(super) async fn stream_encoded<A, T>(
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
        let payload = self.options.codec.encode(args)?;
        let sequence = self.start_sequence(method, qos, schema, payload)?;
        Ok(Items {
            sequence,
            decode: Response::into_value::<T>,
        })
    }

    /// Sends a request answered by a stream of answers, bound to one
    /// instance, and starts their [`Sequence`].
    pub(super) fn start_sequence(
        &self,
        method: &str,
        qos: Option<QoS>,
        schema: Option<&'static str>,
        payload: Vec<u8>,
    ) -> Result<Sequence, Error> {
        // Room for a whole window plus the end marker: the server never
        // sends more, so nothing is dropped.
        let capacity = crate::protocol::STREAM_WINDOW as usize + 2;
        let target = super::request::Target::Method;
        let (rx, slot) = self.send_many(
            target,
            method,
            qos,
            schema,
            payload,
            capacity,
            Gather::Stream,
        )?;
        Ok(Sequence::start(self, method, rx, slot))
    }
}

/// The caller's side of a streaming call: a
/// [`Stream`](https://docs.rs/futures/0.3/futures/stream/trait.Stream.html)
/// of the items, in order (read it with `mqrpc::StreamExt`'s `next`). It ends after the last item, or with one error:
/// the server's (e.g. a panicking producer), [`Error::Timeout`] when the
/// next item does not come within the stream idle timeout
/// ([`ClientOptions::stream_idle_timeout`](crate::ClientOptions::stream_idle_timeout):
/// by default the client's timeout, 10 s) or at the limit of the whole
/// stream if one was set
/// ([`ClientOptions::stream_timeout`](crate::ClientOptions::stream_timeout),
/// none by default), [`Error::ServerGone`] when the instance serving it
/// goes away (known from its first item, or named with `to_instance`), or
/// [`Error::Protocol`] if an item went missing. A stream whose items keep
/// coming lasts as long as they do. Dropping it, or its ending with
/// [`Error::Timeout`], stops the server's producer.
pub struct Items<T> {
    sequence: Sequence,
    decode: fn(Response, &str) -> Result<T, Error>,
}

impl<T> futures_util::Stream for Items<T> {
    type Item = Result<T, Error>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if self.sequence.is_done() {
            return Poll::Ready(None);
        }
        let next = std::task::ready!(self.sequence.poll_next(cx));
        let method = &self.sequence.method;
        Poll::Ready(match next {
            Next::Item(response) => Some((self.decode)(response, method)),
            Next::Last(response) if matches!(response.status, Status::Ok | Status::End) => {
                let reason = format!("stream `{method}`: expected item 0, got None");
                Some(Err(Error::Protocol { reason }))
            }
            Next::Last(response) => Some(Err((self.decode)(response, method).err().unwrap_or(
                Error::Protocol {
                    reason: "unexpected status in a stream".into(),
                },
            ))),
            Next::End => None,
            Next::Failed(error) => Some(Err(error)),
        })
    }
}

impl<T> std::fmt::Debug for Items<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Items")
            .field("method", &self.sequence.method)
            .field("next_seq", &self.sequence.received())
            .field("done", &self.sequence.is_done())
            .finish()
    }
}
