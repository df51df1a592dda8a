//! The caller's side of a streaming call.

use crate::STREAM_WINDOW as WINDOW;
use std::pin::Pin;
use std::task::{Context, Poll};

use crate::client::{BroadcastSlot, Client, Response};
use crate::{Error, Status};

/// The caller's side of a streaming call: a
/// [`Stream`](https://docs.rs/futures/0.3/futures/stream/trait.Stream.html)
/// of the items, in order (read it with `mqrpc::StreamExt`'s
/// `next`). It ends after the last item, or with one error:
/// the server's (e.g. a panicking producer), [`Error::Timeout`] at the
/// call's deadline (which covers the whole stream),
/// [`Error::ServerGone`] when the instance serving it goes away (known
/// from its first item, or named with `to_instance`), or
/// [`Error::Protocol`] if an item went missing. Dropping it stops the
/// server's producer.
pub struct Items<T> {
    pub(crate) rx: tokio::sync::mpsc::Receiver<Result<Response, crate::error::Failure>>,
    pub(crate) deadline: Pin<Box<tokio::time::Sleep>>,
    pub(crate) decode: fn(Response, &str) -> Result<T, Error>,
    pub(crate) method: String,
    pub(crate) client: Client,
    pub(crate) id: u64,
    pub(crate) next_seq: u64,
    pub(crate) unacknowledged: u32,
    pub(crate) instance: Option<String>,
    pub(crate) done: bool,
    pub(crate) _slot: BroadcastSlot,
}

impl<T> Items<T> {
    fn finish(&mut self, item: Option<Result<T, Error>>) -> Poll<Option<Result<T, Error>>> {
        self.done = true;
        Poll::Ready(item)
    }
}

impl<T> futures_util::Stream for Items<T> {
    type Item = Result<T, Error>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if self.done {
            return Poll::Ready(None);
        }
        match self.rx.poll_recv(cx) {
            Poll::Ready(Some(Ok(response))) => {
                if self.instance.is_none() {
                    self.instance = response.instance.clone();
                }
                if response.seq != Some(self.next_seq) {
                    let reason = format!(
                        "stream `{}`: expected item {}, got {:?}",
                        self.method, self.next_seq, response.seq
                    );
                    return self.finish(Some(Err(Error::Protocol { reason })));
                }
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
                        let item = (self.decode)(response, &self.method);
                        Poll::Ready(Some(item))
                    }
                    _ => {
                        let method = self.method.clone();
                        let error =
                            (self.decode)(response, &method)
                                .err()
                                .unwrap_or(Error::Protocol {
                                    reason: "unexpected status in a stream".into(),
                                });
                        self.finish(Some(Err(error)))
                    }
                }
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
                        timeout: self.client.options().get_timeout(),
                    };
                    self.finish(Some(Err(error)))
                }
                Poll::Pending => Poll::Pending,
            },
        }
    }
}

impl<T> Drop for Items<T> {
    fn drop(&mut self) {
        if !self.done {
            self.client
                .send_control(self.id, self.instance.as_deref(), Control::Cancel);
        }
    }
}

impl<T> std::fmt::Debug for Items<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Items")
            .field("method", &self.method)
            .field("next_seq", &self.next_seq)
            .field("done", &self.done)
            .finish()
    }
}

/// Messages from a caller to the server about a running call.
pub(crate) enum Control {
    Cancel,
    Credit(u32),
}
