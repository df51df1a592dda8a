//! Chunked transfers on the server (PROTOCOL.md, "Chunked transfer"):
//! requests reassembled from their chunks *before* admission, so the
//! duplicate table, deadlines and limits see one whole request, within a
//! bounded budget and with expiring partial transfers; and answers sent in
//! chunks within the caller's grants ([`send`]).

mod send;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Instant;

use bytes::Bytes;
use tracing::debug;

use super::answer::send_refusal;
use super::dispatch::Dispatcher;
use super::duplicates::{call_key, CallKey};
use super::limits::Held;
use super::{Request, ServerOptions, Service};
use crate::connection::Connection;
use crate::protocol::chunk::{grant_properties, Assembly, ChunkHeader, Progress};
use crate::protocol::QoS;
use crate::protocol::{topic, Status, CREDIT_METHOD, TEXT_CONTENT_TYPE};
use crate::Chunking;

pub(crate) use send::Grants;

/// Chunked transfers of one server: partial requests and answers being
/// sent, by call.
pub(crate) struct Transfers {
    inner: Mutex<Inner>,
    chunking: Chunking,
    /// The most bytes the open transfers may announce in all.
    budget: usize,
    /// The furthest any chunk came beyond those held in order.
    peak_ahead: AtomicU32,
    /// Where callers send the grants of chunked answers:
    /// `<prefix>/<service>/_to/<instance>/_credit`.
    grant_topic: Arc<str>,
}

#[derive(Default)]
struct Inner {
    open: HashMap<CallKey, Transfer>,
    /// Bytes the open transfers announced (what they may come to hold).
    reserved: usize,
    next_id: u64,
    /// Chunked answers being sent, and where their grants go.
    sending: HashMap<CallKey, Arc<Grants>>,
}

/// A request being reassembled.
struct Transfer {
    id: u64,
    assembly: Assembly,
    /// Chunk 0's request, without its payload: the call it will be.
    first: Request,
    reserved: usize,
    last: Instant,
}

/// A server's chunked transfers at one moment
/// ([`ServerUsage::chunked`](crate::ServerUsage::chunked)): partial
/// requests and the bytes they hold, bounded by
/// [`ServerOptions::max_reassembly_bytes`], and answers being sent.
///
/// ```
/// # use mqrpc_runtime as mqrpc;
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), mqrpc::Error> {
/// use mqrpc::{Chunking, Codec, Connection, Reply, ServerOptions, Service};
/// struct Echo;
/// impl Service for Echo {
///     const NAME: &'static str = "Echo";
///     const METHODS: &'static [&'static str] = &["echo"];
///     async fn call(&self, _method: &str, codec: Codec, payload: &[u8]) -> Reply {
///         Reply::ok(codec, &payload.len())
///     }
/// }
/// let conn = Connection::from_env_or_embedded().await?;
/// let opts = ServerOptions::default()
///     .chunking(Chunking::default().window(4))
///     .max_reassembly_bytes(8 << 20);
/// let server = mqrpc::serve(&conn, Echo, opts).await?;
/// let chunked = server.usage().chunked;
/// assert_eq!((chunked.open, chunked.held_bytes, chunked.budget), (0, 0, 8 << 20));
/// assert_eq!(chunked.window, 4);
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct ChunkedUsage {
    /// Chunked requests being received.
    pub open: usize,
    /// The bytes they announced (what they may come to hold), within
    /// `budget`.
    pub reserved_bytes: usize,
    /// The bytes they hold now.
    pub held_bytes: usize,
    /// [`ServerOptions::max_reassembly_bytes`].
    pub budget: usize,
    /// Chunked answers being sent.
    pub sending: usize,
    /// Since the server started, the furthest a chunk came beyond the
    /// chunks received in order (1: it was the next one): never more than
    /// `window`, the chunks a sender may have unacknowledged.
    pub peak_ahead: u32,
    /// The window the server grants ([`Chunking::window`]).
    pub window: u32,
}

impl Transfers {
    /// `service_base`: `<prefix>/<service>/`.
    pub fn new(options: &ServerOptions, service_base: &str, instance: &str) -> Transfers {
        Transfers {
            grant_topic: Arc::from(topic::method_topic(
                &topic::instance_base(service_base, instance),
                CREDIT_METHOD,
            )),
            inner: Mutex::default(),
            chunking: options.chunking,
            budget: options.max_reassembly_bytes,
            peak_ahead: AtomicU32::new(0),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn chunking(&self) -> &Chunking {
        &self.chunking
    }

    pub fn usage(&self) -> ChunkedUsage {
        let inner = self.lock();
        ChunkedUsage {
            open: inner.open.len(),
            reserved_bytes: inner.reserved,
            held_bytes: inner.open.values().map(|t| t.assembly.held_bytes()).sum(),
            budget: self.budget,
            sending: inner.sending.len(),
            peak_ahead: self.peak_ahead.load(Ordering::Relaxed),
            window: self.chunking.get_window(),
        }
    }

    /// A cancel: the call's partial request is dropped, its chunked answer
    /// stops. True if there was either.
    pub fn cancel(&self, key: &CallKey) -> bool {
        let mut inner = self.lock();
        let open = inner.open.remove(key);
        if let Some(transfer) = &open {
            inner.reserved -= transfer.reserved;
        }
        let sending = inner.sending.remove(key);
        drop(inner);
        if let Some(grants) = &sending {
            grants.stop();
        }
        open.is_some() || sending.is_some()
    }

    /// Removes the transfer `id` of `key` if it is still open.
    fn close(&self, key: &CallKey, id: u64) -> Option<Transfer> {
        let mut inner = self.lock();
        if inner.open.get(key).is_none_or(|t| t.id != id) {
            return None;
        }
        let transfer = inner.open.remove(key)?;
        inner.reserved -= transfer.reserved;
        Some(transfer)
    }
}

/// What to do after a chunk, decided under the table's lock.
enum Next {
    Nothing,
    Grant(Request, u32),
    /// The transfer just opened: grant, and watch its deadline.
    Opened(Request, u32, u64, Option<Instant>),
    Refuse(Request, Status, String),
    Complete(Request),
}

impl<S: Service> Dispatcher<S> {
    fn transfers(&self) -> &Transfers {
        &self.held.transfers
    }

    /// A chunk of a request: kept until its transfer is complete, which is
    /// then admitted as one request.
    pub(super) fn accept_chunk(self: Arc<Self>, conn: &Connection, mut request: Request) {
        let now = Instant::now();
        let header = match request.chunk.take() {
            Some(Ok(header)) => header,
            Some(Err(reason)) => return self.refuse(conn, request, Status::BadRequest, reason),
            None => return,
        };
        let (Some(topic), Some(correlation)) = (&request.response_topic, &request.correlation)
        else {
            debug!(
                service = S::NAME,
                "chunk without Response Topic or Correlation Data: dropped"
            );
            return;
        };
        let key = call_key(topic, correlation);
        let payload = std::mem::take(&mut request.payload);
        let next = self.chunk_step(key.clone(), request, header, payload, now);
        match next {
            Next::Nothing => {}
            Next::Grant(request, n) => self.send_grant(conn, &request, n),
            Next::Opened(request, n, id, deadline) => {
                self.send_grant(conn, &request, n);
                watch(Arc::downgrade(&self.held), key, id, deadline);
            }
            Next::Refuse(request, status, message) => self.refuse(conn, request, status, message),
            Next::Complete(request) => {
                debug!(service = S::NAME, method = %request.method, bytes = request.payload.len(), "chunked request reassembled");
                self.admit_request(conn, request, now, None);
            }
        }
    }

    fn chunk_step(
        &self,
        key: CallKey,
        request: Request,
        header: ChunkHeader,
        payload: Bytes,
        now: Instant,
    ) -> Next {
        let transfers = self.transfers();
        let mut inner = transfers.lock();
        let inner = &mut *inner;
        let Some(transfer) = inner.open.get_mut(&key) else {
            if header.index != 0 {
                debug!(
                    service = S::NAME,
                    index = header.index,
                    "chunk of no open transfer: dropped"
                );
                return Next::Nothing;
            }
            if header.total > self.max_request_size as u64 {
                let message = format!(
                    "the request has {} bytes; this server accepts at most {}",
                    header.total, self.max_request_size
                );
                return Next::Refuse(request, Status::TooLarge, message);
            }
            let total = header.total as usize;
            if inner.reserved + total > transfers.budget {
                let message = format!(
                    "the chunked requests being received take {} of {} bytes; this one needs {total}",
                    inner.reserved, transfers.budget
                );
                return Next::Refuse(request, Status::Overloaded, message);
            }
            if request.expired(now) {
                let message = format!("`{}` arrived after its deadline", request.method);
                return Next::Refuse(request, Status::DeadlineExceeded, message);
            }
            let mut assembly = Assembly::new(&header, transfers.chunking.get_window());
            let progress = assembly.accept(&header, payload);
            let grant = match progress {
                Ok(Progress::Grant(n)) => n,
                Ok(Progress::Done(bytes)) => {
                    let mut request = request;
                    request.payload = bytes;
                    return Next::Complete(request);
                }
                Ok(_) => 1,
                Err(reason) => return Next::Refuse(request, Status::BadRequest, reason),
            };
            inner.next_id += 1;
            let id = inner.next_id;
            inner.reserved += total;
            let deadline = request.deadline;
            let answer_to = request.clone();
            inner.open.insert(
                key,
                Transfer {
                    id,
                    assembly,
                    first: request,
                    reserved: total,
                    last: now,
                },
            );
            return Next::Opened(answer_to, grant, id, deadline);
        };
        transfer.last = now;
        let progress = transfer.assembly.accept(&header, payload);
        transfers
            .peak_ahead
            .fetch_max(transfer.assembly.peak_ahead, Ordering::Relaxed);
        match progress {
            Ok(Progress::Kept | Progress::Duplicate) => Next::Nothing,
            Ok(Progress::Grant(n)) => Next::Grant(transfer.first.clone(), n),
            Ok(Progress::Done(bytes)) => {
                let transfer = inner.open.remove(&key).expect("just found");
                inner.reserved -= transfer.reserved;
                let mut request = transfer.first;
                request.payload = bytes;
                Next::Complete(request)
            }
            Err(reason) => {
                let transfer = inner.open.remove(&key).expect("just found");
                inner.reserved -= transfer.reserved;
                debug!(service = S::NAME, %reason, "chunked request failed");
                Next::Refuse(transfer.first, Status::BadRequest, reason)
            }
        }
    }

    /// A grant to the client sending a chunked request: on its Response
    /// Topic, naming this instance (where the next chunks go).
    fn send_grant(&self, conn: &Connection, request: &Request, n: u32) {
        let Some(topic) = request.response_topic.clone() else {
            return;
        };
        let properties = grant_properties(request.correlation.clone(), n, &self.instance);
        drop(conn.publish(topic, QoS::AtLeastOnce, Bytes::new(), properties, false));
    }

    /// Answers a chunked request that failed, as a single answer.
    fn refuse(&self, conn: &Connection, request: Request, status: Status, message: String) {
        let payload = Bytes::from(message);
        send_refusal(
            conn,
            &self.held,
            request,
            status,
            TEXT_CONTENT_TYPE,
            payload,
            None,
        );
    }

    /// A cancel also ends the call's chunked transfers.
    pub(super) fn cancel_transfers(&self, key: &CallKey) -> bool {
        self.transfers().cancel(key)
    }
}

/// Ends the transfer `id` of `key` when its deadline passes or when no
/// chunk came for the idle timeout: a lost or abandoned transfer leaves
/// nothing behind. Nothing is answered: at the deadline the caller stops
/// waiting too.
fn watch(held: Weak<Held>, key: CallKey, id: u64, deadline: Option<Instant>) {
    tokio::spawn(async move {
        loop {
            let wake = {
                let Some(held) = held.upgrade() else {
                    return;
                };
                let transfers = &held.transfers;
                let idle = transfers.chunking.get_idle();
                let now = Instant::now();
                let last = match transfers.lock().open.get(&key) {
                    Some(transfer) if transfer.id == id => transfer.last,
                    _ => return,
                };
                let idle_end = last + idle;
                if deadline.is_some_and(|d| d <= now) || idle_end <= now {
                    if let Some(transfer) = transfers.close(&key, id) {
                        debug!(method = %transfer.first.method, "chunked request past its deadline or idle: dropped");
                    }
                    return;
                }
                deadline.map_or(idle_end, |d| d.min(idle_end))
            };
            tokio::time::sleep_until(tokio::time::Instant::from_std(wake)).await;
        }
    });
}

/// Chunked transfers ([`Chunking`], PROTOCOL.md "Chunked transfer"): the
/// per-call limit is [`max_request_size`](ServerOptions::max_request_size).
impl ServerOptions {
    /// How chunked requests and answers travel: the chunk size of answers,
    /// the window granted to callers, the idle timeout of transfers
    /// without deadline (default [`Chunking::default`]).
    ///
    /// ```
    /// # use mqrpc_runtime as mqrpc;
    /// use mqrpc::{Chunking, ServerOptions};
    /// let opts = ServerOptions::default()
    ///     .max_request_size(256 << 20) // arguments of up to 256 MiB, in chunks
    ///     .chunking(Chunking::default().size(256 << 10).window(16))
    ///     .max_reassembly_bytes(512 << 20);
    /// assert_eq!(opts.get_chunking().get_window(), 16);
    /// ```
    pub fn chunking(mut self, chunking: Chunking) -> Self {
        self.chunking = chunking;
        self
    }

    /// Bytes all chunked requests being received may announce together
    /// (default 64 MiB); one more is answered `overloaded`.
    pub fn max_reassembly_bytes(mut self, bytes: usize) -> Self {
        self.max_reassembly_bytes = bytes;
        self
    }

    /// The [`chunking`](Self::chunking) settings.
    pub fn get_chunking(&self) -> Chunking {
        self.chunking
    }
}
