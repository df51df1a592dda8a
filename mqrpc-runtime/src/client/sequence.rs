//! The caller's side of a call answered in several messages, shared by the
//! typed [`Items`](super::Items) and the raw [`RawAnswers`](super::RawAnswers):
//! answers in order (`mqrpc-seq`), credits back to the server, the idle
//! and total limits, the server's `deadline-exceeded`, and the cancel sent
//! when the caller stops early (PROTOCOL.md, "Server streaming").

use crate::protocol::STREAM_WINDOW as WINDOW;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::time::Sleep;

use super::{BroadcastSlot, Client, Response};
use crate::error::Failure;
use crate::protocol::Status;
use crate::Error;

/// What came next on a stream of answers.
pub(crate) enum Next {
    /// An item, in order (status `ok`): more may follow.
    Item(Response),
    /// An answer that ends the stream and that the reader judges: the one
    /// answer of a call refused before its first item, or of a plain
    /// method (no `mqrpc-seq`), or an item with an error status.
    Last(Response),
    /// The end marker, or no more answers.
    End,
    /// The stream failed: out of order, timed out, its server gone, ...
    Failed(Error),
}

/// The state of one stream of answers. Ends exactly once; dropped before
/// that, it tells the server to stop.
pub(crate) struct Sequence {
    rx: tokio::sync::mpsc::Receiver<Result<Response, Failure>>,
    /// When the caller waits for an item: the deadline of the next one.
    idle: Idle,
    /// The limit of the whole stream, if one was set.
    total: Option<(Duration, Pin<Box<Sleep>>)>,
    pub(crate) method: String,
    client: Client,
    id: u64,
    next_seq: u64,
    unacknowledged: u32,
    instance: Option<String>,
    done: bool,
    _slot: BroadcastSlot,
}

impl Sequence {
    /// Starts the limits now: the request just went out.
    pub(crate) fn start(
        client: &Client,
        method: &str,
        rx: tokio::sync::mpsc::Receiver<Result<Response, Failure>>,
        slot: BroadcastSlot,
    ) -> Sequence {
        let total = client
            .options
            .get_stream_timeout()
            .map(|limit| (limit, Box::pin(tokio::time::sleep(limit))));
        Sequence {
            rx,
            idle: Idle::start(client.options.get_stream_idle_timeout()),
            total,
            method: method.to_string(),
            client: client.clone(),
            id: slot.id,
            next_seq: 0,
            unacknowledged: 0,
            instance: None,
            done: false,
            _slot: slot,
        }
    }

    /// Items received so far.
    pub(crate) fn received(&self) -> u64 {
        self.next_seq
    }

    pub(crate) fn is_done(&self) -> bool {
        self.done
    }

    fn finish(&mut self, next: Next) -> Poll<Next> {
        self.done = true;
        Poll::Ready(next)
    }

    /// Ends the stream with a timeout: the server may still produce, so it
    /// is told to stop.
    fn time_out(&mut self, timeout: Duration) -> Poll<Next> {
        self.client
            .send_control(self.id, self.instance.as_deref(), Control::Cancel);
        let error = Error::Timeout {
            method: self.method.clone(),
            timeout,
        };
        self.finish(Next::Failed(error))
    }

    /// The next answer; call only while not [`is_done`](Self::is_done).
    pub(crate) fn poll_next(&mut self, cx: &mut Context<'_>) -> Poll<Next> {
        match self.rx.poll_recv(cx) {
            Poll::Ready(Some(Ok(response))) => self.accept(response),
            Poll::Ready(Some(Err(failure))) => {
                let error = failure.into_error(&self.method);
                self.finish(Next::Failed(error))
            }
            Poll::Ready(None) => self.finish(Next::End),
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

    fn accept(&mut self, response: Response) -> Poll<Next> {
        if self.instance.is_none() {
            self.instance = response.instance.clone();
        }
        if self.next_seq == 0 {
            if let Some(record) = &self.client.response_metadata {
                record.record(response.metadata());
            }
        }
        // The server's view of the same budget, before the first item or
        // between two.
        if response.status == Status::DeadlineExceeded
            && (response.seq.is_none() || response.seq == Some(self.next_seq))
        {
            let timeout = self.idle.timeout;
            return self.time_out(timeout);
        }
        match response.seq {
            // Refused before its first item (`schema-mismatch`,
            // `bad-request`, ..), or a plain method's one answer.
            None if self.next_seq == 0 => self.finish(Next::Last(response)),
            Some(seq) if seq == self.next_seq => {
                self.next_seq += 1;
                match response.status {
                    Status::End => self.finish(Next::End),
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
                        self.idle.running = false;
                        Poll::Ready(Next::Item(response))
                    }
                    _ => self.finish(Next::Last(response)),
                }
            }
            other => {
                let reason = format!(
                    "stream `{}`: expected item {}, got {other:?}",
                    self.method, self.next_seq
                );
                self.finish(Next::Failed(Error::Protocol { reason }))
            }
        }
    }
}

impl Drop for Sequence {
    fn drop(&mut self) {
        if !self.done {
            self.client
                .send_control(self.id, self.instance.as_deref(), Control::Cancel);
        }
    }
}

/// The idle timeout of a stream: it runs while the caller waits for an
/// item (from the request on, then from each wait after an item).
struct Idle {
    timeout: Duration,
    timer: Pin<Box<Sleep>>,
    running: bool,
}

impl Idle {
    /// Running from now: the request just went out.
    fn start(timeout: Duration) -> Idle {
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

/// Messages from a caller to the server about a running call.
pub(crate) enum Control {
    Cancel,
    Credit(u32),
}
