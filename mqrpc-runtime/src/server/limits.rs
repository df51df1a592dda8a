//! What a server holds for its callers, and how much one request may make
//! it hold: the limits on a request's keys and properties
//! ([`RequestLimits`]), the state every call leaves ([`Held`]), and the
//! public view of both ([`ServerUsage`]).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;
use tokio::sync::Notify;
use tracing::{debug, warn};

use super::answer::{send_refusal, HeldAck};
use super::backlog::Backlog;
use super::dispatch::Dispatcher;
use super::duplicates::{CallKey, CallTable};
use super::{Request, Service};
use crate::connection::Connection;
use crate::protocol::{Status, CANCEL_METHOD, CREDIT_METHOD, TEXT_CONTENT_TYPE};

/// The limits on one request (see `ServerOptions::max_correlation_data`
/// and the setters after it): checked before the server keeps anything of
/// it, by comparing lengths.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RequestLimits {
    pub correlation_data: usize,
    pub response_topic: usize,
    pub user_properties: usize,
    pub user_property_bytes: usize,
    /// Entries and bytes of the caller's metadata (`md-` properties).
    pub metadata_entries: usize,
    pub metadata_bytes: usize,
}

/// Which limit a request is over, for the `bad-request` message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Violation {
    what: &'static str,
    size: usize,
    limit: usize,
    unit: &'static str,
}

impl std::fmt::Display for Violation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let Violation {
            what,
            size,
            limit,
            unit,
        } = self;
        write!(f, "{what} is {size}{unit}, limit {limit}")
    }
}

impl RequestLimits {
    /// The first limit `request` is over, if any.
    pub fn check(&self, request: &Request) -> Result<(), Violation> {
        let over = |what, size: usize, limit: usize, unit| {
            (size > limit).then_some(Violation {
                what,
                size,
                limit,
                unit,
            })
        };
        let topic = request.response_topic.as_ref().map_or(0, String::len);
        let cancel_of = request.cancel_of.as_ref().map_or(0, String::len);
        let correlation = request.correlation.as_ref().map_or(0, |c| c.len());
        let violation = over("response topic", topic, self.response_topic, " bytes")
            .or_else(|| {
                over(
                    "correlation data",
                    correlation,
                    self.correlation_data,
                    " bytes",
                )
            })
            .or_else(|| {
                let (count, limit) = (request.user_properties, self.user_properties);
                over("user property count", count, limit, "")
            })
            .or_else(|| {
                let (size, limit) = (request.user_property_bytes, self.user_property_bytes);
                over("user property size", size, limit, " bytes")
            })
            .or_else(|| {
                let (count, limit) = (request.metadata.len(), self.metadata_entries);
                over("metadata entry count", count, limit, "")
            })
            .or_else(|| {
                let (size, limit) = (request.metadata.wire_bytes(), self.metadata_bytes);
                over("metadata size", size, limit, " bytes")
            })
            // The Response Topic a cancel or credit names.
            .or_else(|| {
                over(
                    "mqrpc-response-topic",
                    cancel_of,
                    self.response_topic,
                    " bytes",
                )
            });
        violation.map_or(Ok(()), Err)
    }

    /// True when an answer may go to the request's Response Topic: it has
    /// one, and within its limit.
    pub fn answerable(&self, request: &Request) -> bool {
        request
            .response_topic
            .as_ref()
            .is_some_and(|topic| topic.len() <= self.response_topic)
    }
}

/// Requests over a limit, on the server.
impl<S: Service> Dispatcher<S> {
    /// A request over one of [`RequestLimits`]: answered `bad-request`
    /// naming the limit when its Response Topic is usable, dropped with a
    /// warning otherwise. The server keeps nothing of it.
    pub(super) fn over_limit(
        &self,
        conn: &Connection,
        request: Request,
        violation: Violation,
        ack: HeldAck,
    ) {
        let control = request.method == CANCEL_METHOD || request.method == CREDIT_METHOD;
        if !control && self.limits.answerable(&request) {
            self.held.refused.fetch_add(1, Ordering::Relaxed);
            debug!(service = S::NAME, %violation, "request over a limit: refused");
            #[cfg(feature = "metrics")]
            crate::observe::server_request(
                S::NAME,
                super::dispatch::known_method::<S>(&request.method),
                Status::BadRequest,
                std::time::Duration::ZERO,
            );
            let payload = Bytes::from(violation.to_string());
            let status = Status::BadRequest;
            let held = &self.held;
            return send_refusal(conn, held, request, status, TEXT_CONTENT_TYPE, payload, ack);
        }
        let dropped = self.held.dropped.fetch_add(1, Ordering::Relaxed) + 1;
        // A peer sending nothing else must not flood the log either.
        if dropped == 1 || dropped.is_multiple_of(1000) {
            warn!(service = S::NAME, %violation, dropped, "request over a limit without a usable Response Topic: dropped");
        } else {
            debug!(service = S::NAME, %violation, "request over a limit without a usable Response Topic: dropped");
        }
    }
}

/// Credits granted to a running stream, and the wake-up of its sender:
/// the same few bytes however many credit messages come.
#[derive(Debug, Default)]
pub(crate) struct Credit {
    granted: AtomicU32,
    more: Notify,
}

impl Credit {
    /// The caller takes `n` more items.
    pub fn grant(&self, n: u32) {
        let _ = self
            .granted
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |g| {
                Some(g.saturating_add(n))
            });
        self.more.notify_one();
    }

    /// Waits for a grant, and takes what was granted since the last take.
    pub async fn take(&self) -> u32 {
        loop {
            let granted = self.granted.swap(0, Ordering::AcqRel);
            if granted > 0 {
                return granted;
            }
            self.more.notified().await;
        }
    }
}

/// Running streams by key: where their callers' credits go, with the
/// digest of the request that started each (a newer call may reuse its
/// key). At most one per running handler.
pub(crate) type Streams = HashMap<CallKey, (u64, Arc<Credit>)>;

/// What a server holds for its callers, shared with its [`ServerHandle`](super::ServerHandle).
pub(crate) struct Held {
    pub calls: Mutex<CallTable>,
    pub streams: Mutex<Streams>,
    /// Client streams whose handler reads items (`server/upstream.rs`).
    pub upstreams: Mutex<super::upstream::Upstreams>,
    /// Requests waiting for a handler slot, and the bytes they hold.
    pub queued: AtomicUsize,
    pub queued_bytes: AtomicUsize,
    /// What one waiting task costs besides its request's own bytes: the
    /// size of the handler's future and tokio's task header (measured on
    /// the first call, before any can wait).
    pub task_bytes: AtomicUsize,
    pub refused: AtomicU64,
    pub dropped: AtomicU64,
    /// Chunked transfers, partial requests and answers being sent.
    pub transfers: super::reassembly::Transfers,
    /// Answers not yet written or acknowledged (`server/backlog.rs`).
    pub backlog: Arc<Backlog>,
}

impl std::fmt::Debug for Held {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Held").field(&self.usage()).finish()
    }
}

impl Held {
    pub fn new(
        calls: CallTable,
        backlog_budget: usize,
        transfers: super::reassembly::Transfers,
    ) -> Held {
        Held {
            transfers,
            calls: Mutex::new(calls),
            streams: Mutex::new(HashMap::new()),
            upstreams: Mutex::new(HashMap::new()),
            queued: AtomicUsize::new(0),
            queued_bytes: AtomicUsize::new(0),
            task_bytes: AtomicUsize::new(0),
            refused: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            backlog: Arc::new(Backlog::new(backlog_budget)),
        }
    }

    pub fn calls(&self) -> MutexGuard<'_, CallTable> {
        self.calls.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn streams(&self) -> MutexGuard<'_, Streams> {
        self.streams.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn upstreams(&self) -> MutexGuard<'_, super::upstream::Upstreams> {
        self.upstreams.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Takes a place in the queue for a request holding `bytes`, or says
    /// that the queue is full (by count or by bytes).
    pub fn enqueue(&self, bytes: usize, max_queued: usize, max_bytes: usize) -> bool {
        if self.queued.fetch_add(1, Ordering::AcqRel) >= max_queued {
            self.queued.fetch_sub(1, Ordering::AcqRel);
            return false;
        }
        if self.queued_bytes.fetch_add(bytes, Ordering::AcqRel) + bytes > max_bytes {
            self.dequeue(bytes);
            return false;
        }
        true
    }

    /// A waiting request got its slot (or was dropped).
    pub fn dequeue(&self, bytes: usize) {
        self.queued.fetch_sub(1, Ordering::AcqRel);
        self.queued_bytes.fetch_sub(bytes, Ordering::AcqRel);
    }

    pub fn usage(&self) -> ServerUsage {
        let (dedup_entries, dedup_bytes, dedup_budget) = {
            let calls = self.calls();
            (calls.len(), calls.bytes(), calls.budget())
        };
        let backlog = self.backlog.usage();
        ServerUsage {
            dedup_entries,
            dedup_bytes,
            dedup_budget,
            queued: self.queued.load(Ordering::Acquire),
            queued_bytes: self.queued_bytes.load(Ordering::Acquire),
            streams: self.streams().len(),
            upstreams: self.upstreams().len(),
            refused_over_limits: self.refused.load(Ordering::Relaxed),
            dropped_over_limits: self.dropped.load(Ordering::Relaxed),
            chunked: self.transfers.usage(),
            answer_backlog_bytes: backlog.bytes,
            answer_backlog_peak: backlog.peak,
            answer_backlog_budget: backlog.budget,
            refusals_waiting: backlog.waiting,
            refusals_waiting_peak: backlog.waiting_peak,
            refusals_dropped: backlog.dropped,
        }
    }
}

/// What a server holds for its callers at one moment, and how many
/// requests it refused for their size: [`ServerHandle::usage`](super::ServerHandle::usage).
///
/// Every figure is bounded by [`ServerOptions`](super::ServerOptions):
/// `dedup_bytes` by `dedup`'s bytes (keys, digests, kept answers and the
/// table's own structure all count), `queued` and `queued_bytes` by
/// `max_queued` and `max_queued_bytes`, `streams` by `max_concurrent`,
/// `answer_backlog_bytes` by `max_answer_backlog` (or one answer larger
/// than it).
///
/// ```
/// # use mqrpc_runtime as mqrpc;
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), mqrpc::Error> {
/// use mqrpc::{Codec, Connection, Reply, ServerOptions, Service};
/// struct Echo;
/// impl Service for Echo {
///     const NAME: &'static str = "Echo";
///     const METHODS: &'static [&'static str] = &["echo"];
///     async fn call(&self, _method: &str, codec: Codec, payload: &[u8]) -> Reply {
///         Reply::ok(codec, &payload.len())
///     }
/// }
/// let conn = Connection::from_env_or_embedded().await?;
/// let server = mqrpc::serve(&conn, Echo, ServerOptions::default()).await?;
/// let usage = server.usage();
/// assert_eq!((usage.dedup_entries, usage.queued, usage.streams), (0, 0, 0));
/// assert!(usage.dedup_bytes <= usage.dedup_budget);
/// assert!(usage.answer_backlog_peak <= usage.answer_backlog_budget);
/// assert_eq!(usage.refusals_dropped, 0);
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct ServerUsage {
    /// Calls the duplicate table remembers (running, or answered within
    /// the window).
    pub dedup_entries: usize,
    /// Bytes the duplicate table holds, by its own accounting: the keys
    /// (Response Topic, Correlation Data), kept answers, and a fixed
    /// upper bound per call for digests, map and queue slots.
    pub dedup_bytes: usize,
    /// The duplicate table's byte budget (`ServerOptions::dedup`).
    pub dedup_budget: usize,
    /// Requests waiting for a handler slot.
    pub queued: usize,
    /// Bytes those waiting requests hold (their topics, properties and
    /// payloads, copied out of the packets they came in, and their tasks).
    pub queued_bytes: usize,
    /// Streams sending items.
    pub streams: usize,
    /// Client streams whose handler is reading items (methods taking
    /// `mqrpc::Stream<T>`).
    pub upstreams: usize,
    /// Requests answered `bad-request` for being over a request limit
    /// (`ServerOptions::max_correlation_data` and the setters after it).
    pub refused_over_limits: u64,
    /// Requests, cancels and credits over a request limit that could not
    /// be answered (no usable Response Topic): dropped, with a warning.
    pub dropped_over_limits: u64,
    /// Chunked transfers (PROTOCOL.md, "Chunked transfer").
    pub chunked: crate::ChunkedUsage,
    /// Bytes of answers and refusals handed to the connection and not yet
    /// written (QoS 0) or acknowledged by the broker (QoS 1/2): its
    /// queue, write buffer and publishes waiting for a Receive Maximum
    /// slot (`ServerOptions::max_answer_backlog`).
    pub answer_backlog_bytes: usize,
    /// The most `answer_backlog_bytes` has been since the server started:
    /// at most `answer_backlog_budget`, or one answer larger than it.
    pub answer_backlog_peak: usize,
    /// The backlog's byte budget (`ServerOptions::max_answer_backlog`).
    pub answer_backlog_budget: usize,
    /// QoS 1/2 refusals waiting for room in the backlog, each holding its
    /// request's acknowledgement (so the broker holds back what follows).
    pub refusals_waiting: usize,
    /// The most `refusals_waiting` has been since the server started.
    pub refusals_waiting_peak: usize,
    /// Refusals dropped because the backlog was full: at QoS 0 (their
    /// callers time out), or at QoS 1/2 once the refusals waiting for room
    /// hold another budget's worth of bytes.
    pub refusals_dropped: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credits_add_up_however_many_messages_bring_them() {
        let credit = Credit::default();
        for _ in 0..10_000 {
            credit.grant(16);
        }
        credit.grant(u32::MAX);
        let taken = futures_util::FutureExt::now_or_never(credit.take());
        assert_eq!(taken, Some(u32::MAX), "saturated, never wrapped");
        assert_eq!(credit.granted.load(Ordering::Acquire), 0);
    }

    #[test]
    fn a_violation_names_the_limit_and_both_sizes() {
        let over = Violation {
            what: "correlation data",
            size: 65_535,
            limit: 256,
            unit: " bytes",
        };
        assert_eq!(
            over.to_string(),
            "correlation data is 65535 bytes, limit 256"
        );
    }
}
