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

use crate::{Codec, Error};

/// Items the server may send beyond what the caller consumed.
pub const WINDOW: u32 = 32;

/// What a streaming method returns on the server: any `futures` stream of
/// values, boxed.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// use futures_util::StreamExt;
/// let numbers = mqrpc_runtime::Stream::iter(vec![1u64, 2, 3]);
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
