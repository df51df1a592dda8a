//! Server streaming: a method returning [`Stream<T>`] answers with one
//! response per item (each with a sequence number), then an end marker.
//! The caller gets [`Items<T>`]. Flow control is by credit: the server
//! sends at most [`WINDOW`] items ahead of what the caller has consumed;
//! dropping `Items` cancels the stream on the server.

use std::pin::Pin;
use std::sync::Mutex;
use std::task::{Context, Poll};

use bytes::Bytes;
use futures_util::stream::BoxStream;
use futures_util::StreamExt;
use serde::Serialize;

use super::answer::send_reply;
use super::dispatch::Dispatcher;
use super::{Request, Service};
use crate::connection::Connection;
use crate::protocol::{Status, TEXT_CONTENT_TYPE};
use crate::server::duplicates::{CallId, KeyData};
use crate::server::limits::Credit;
use crate::{Codec, Error};
use std::sync::Arc;
use tokio::sync::oneshot;
use tracing::debug;

use crate::protocol::STREAM_WINDOW as WINDOW;

/// What a streaming method returns on the server: any `futures` stream of
/// values, boxed.
///
/// ```
/// # use mqrpc_runtime as mqrpc;
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// use mqrpc::StreamExt;
/// let numbers = mqrpc::Stream::iter(vec![1u64, 2, 3]);
/// assert_eq!(numbers.collect::<Vec<_>>().await, [1, 2, 3]);
/// # }
/// ```
pub struct Stream<T> {
    inner: BoxStream<'static, T>,
}

impl<T> Stream<T> {
    /// Wraps a stream.
    pub fn new(stream: impl futures_util::Stream<Item = T> + Send + 'static) -> Stream<T> {
        Stream {
            inner: stream.boxed(),
        }
    }

    /// The items of an iterator.
    pub fn iter<I>(items: I) -> Stream<T>
    where
        I: IntoIterator<Item = T>,
        I::IntoIter: Send + 'static,
    {
        Stream::new(futures_util::stream::iter(items))
    }
}

impl<T> futures_util::Stream for Stream<T> {
    type Item = T;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<T>> {
        self.inner.poll_next_unpin(cx)
    }
}

impl<T> std::fmt::Debug for Stream<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Stream")
    }
}

/// The encoded items of a streaming reply, taken once by the server.
pub(crate) struct EncodedItems(pub(crate) Mutex<Option<BoxStream<'static, Result<Bytes, Error>>>>);

impl EncodedItems {
    pub(crate) fn new<T: Serialize + Send + 'static>(
        codec: Codec,
        stream: Stream<T>,
    ) -> EncodedItems {
        let encoded = stream
            .map(move |item| codec.encode(&item).map(Bytes::from))
            .boxed();
        EncodedItems(Mutex::new(Some(encoded)))
    }

    pub(crate) fn take(&self) -> Option<BoxStream<'static, Result<Bytes, Error>>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).take()
    }
}

/// Two replies carry the same items only if they share them.
impl PartialEq for EncodedItems {
    fn eq(&self, other: &Self) -> bool {
        std::ptr::eq(self, other)
    }
}

impl Eq for EncodedItems {}

impl std::fmt::Debug for EncodedItems {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("EncodedItems")
    }
}

/// The sending side of a stream, on the server.
impl<S: Service> Dispatcher<S> {
    /// A stream credit: the caller takes `n` more items.
    pub(super) fn credit(&self, request: &Request) {
        let (Some(topic), Some(correlation)) = (&request.cancel_of, &request.correlation) else {
            return;
        };
        let n = request.credit.unwrap_or(0);
        let key = KeyData {
            topic: topic.as_str().into(),
            correlation: correlation.as_ref().into(),
        };
        match self.held.streams().get(&key) {
            Some((_, credit)) => credit.grant(n),
            None => debug!(service = S::NAME, "credit for no running stream: ignored"),
        }
    }

    /// Sends a streaming reply's items, each within the caller's credit,
    /// then the end marker; stops on cancel, an item later than the
    /// call's budget, or a failing item.
    pub(super) async fn stream_items(
        &self,
        conn: Connection,
        mut request: Request,
        key: Option<CallId>,
        items: Arc<crate::server::EncodedItems>,
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
        let granted = Arc::new(Credit::default());
        self.held
            .streams()
            .insert(key.key.clone(), (key.digest, granted.clone()));
        request.instance = Some(self.instance.clone());
        // The call's budget is per item (PROTOCOL.md, "Server streaming"):
        // the first item is due by the request's deadline, each next one
        // within the budget of the previous one, or of the credit that let
        // it go. Waiting for credit does not count.
        let budget = request
            .deadline
            .map(|deadline| deadline.saturating_duration_since(request.arrived));
        let mut due = request.deadline.map(tokio::time::Instant::from_std);
        let next_due = || budget.map(|budget| tokio::time::Instant::now() + budget);
        let mut credit = WINDOW;
        let mut seq = 0u64;
        let end = loop {
            let waiting_for_credit = credit == 0;
            let expired = async move {
                match due {
                    Some(due) if !waiting_for_credit => tokio::time::sleep_until(due).await,
                    _ => std::future::pending().await,
                }
            };
            tokio::select! {
                item = items.next(), if credit > 0 => match item {
                    Some(Ok(bytes)) => {
                        let mut answer = request.clone();
                        answer.seq = Some(seq);
                        let held = &self.held;
                        send_reply(conn.clone(), held, answer, Status::Ok, content_type, bytes).await;
                        // The answer's metadata goes with the first item only.
                        request.reply_metadata = crate::Metadata::new();
                        seq += 1;
                        credit -= 1;
                        due = next_due();
                    }
                    Some(Err(e)) => {
                        break Some((Status::Internal, format!("cannot encode item {seq}: {e}")));
                    }
                    None => break None,
                },
                n = granted.take() => {
                    if credit == 0 {
                        due = next_due();
                    }
                    credit = credit.saturating_add(n);
                }
                Ok(()) = &mut stop_rx => {
                    debug!(service = S::NAME, method = %request.method, "stream cancelled by the caller");
                    self.end_stream(&key);
                    return;
                }
                () = expired => {
                    let budget = budget.unwrap_or_default();
                    break Some((Status::DeadlineExceeded, format!("`{}`: item {seq} not produced within {budget:?}", request.method)));
                }
            }
        };
        self.end_stream(&key);
        request.seq = Some(seq);
        match end {
            None => {
                let end = Bytes::new();
                send_reply(
                    conn,
                    &self.held,
                    request,
                    Status::End,
                    TEXT_CONTENT_TYPE,
                    end,
                )
                .await
            }
            Some((status, message)) => {
                send_reply(
                    conn,
                    &self.held,
                    request,
                    status,
                    TEXT_CONTENT_TYPE,
                    Bytes::from(message),
                )
                .await
            }
        }
    }

    pub(super) fn end_stream(&self, key: &CallId) {
        let mut streams = self.held.streams();
        if streams
            .get(&key.key)
            .is_some_and(|(digest, _)| *digest == key.digest)
        {
            streams.remove(&key.key);
        }
        drop(streams);
        self.calls().forget(key);
    }
}
