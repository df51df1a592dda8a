//! The caller's side of a streaming call.

use crate::protocol::STREAM_WINDOW as WINDOW;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::time::Sleep;

use crate::client::{BroadcastSlot, Client, Response};
use crate::{Error, Status};

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
    pub(crate) rx: tokio::sync::mpsc::Receiver<Result<Response, crate::error::Failure>>,
    /// When the caller waits for an item: the deadline of the next one.
    pub(crate) idle: Idle,
    /// The limit of the whole stream, if one was set.
    pub(crate) total: Option<(Duration, Pin<Box<Sleep>>)>,
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

/// The idle timeout of a stream: it runs while the caller waits for an
/// item (from the request on, then from each wait after an item).
pub(crate) struct Idle {
    pub(crate) timeout: Duration,
    pub(crate) timer: Pin<Box<Sleep>>,
    pub(crate) running: bool,
}

impl Idle {
    /// Running from now: the request just went out.
    pub(crate) fn start(timeout: Duration) -> Idle {
        Idle {
            timeout,
            timer: Box::pin(tokio::time::sleep(timeout)),
            running: true,
        }
    }

    /// Ready once the caller waited `timeout` for the next item.
    fn poll_expired(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        if !self.running {
            self.running = true;
            let next = tokio::time::Instant::now() + self.timeout;
            self.timer.as_mut().reset(next);
        }
        self.timer.as_mut().poll(cx)
    }
}

impl<T> Items<T> {
    fn finish(&mut self, item: Option<Result<T, Error>>) -> Poll<Option<Result<T, Error>>> {
        self.done = true;
        Poll::Ready(item)
    }

    /// Ends the stream with a timeout: the server may still produce, so it
    /// is told to stop.
    fn time_out(&mut self, timeout: Duration) -> Poll<Option<Result<T, Error>>> {
        self.client
            .send_control(self.id, self.instance.as_deref(), Control::Cancel);
        let error = Error::Timeout {
            method: self.method.clone(),
            timeout,
        };
        self.finish(Some(Err(error)))
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
                // A call refused before its method ran (`schema-mismatch`,
                // `bad-request`, ..) has no `mqrpc-seq`: its status says why.
                let refused =
                    response.seq.is_none() && !matches!(response.status, Status::Ok | Status::End);
                if !refused && response.seq != Some(self.next_seq) {
                    let reason = format!(
                        "stream `{}`: expected item {}, got {:?}",
                        self.method, self.next_seq, response.seq
                    );
                    return self.finish(Some(Err(Error::Protocol { reason })));
                }
                self.next_seq += 1;
                match response.status {
                    Status::End => self.finish(None),
                    // The server's view of the same budget.
                    Status::DeadlineExceeded => {
                        let timeout = self.idle.timeout;
                        self.time_out(timeout)
                    }
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
                        self.idle.running = false;
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
            Poll::Pending => {
                if let Some((limit, total)) = &mut self.total {
                    if total.as_mut().poll(cx).is_ready() {
                        let limit = *limit;
                        return self.time_out(limit);
                    }
                }
                match self.idle.poll_expired(cx) {
                    Poll::Ready(()) => {
                        let timeout = self.idle.timeout;
                        self.time_out(timeout)
                    }
                    Poll::Pending => Poll::Pending,
                }
            }
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
