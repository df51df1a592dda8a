//! Admission and dispatch of one service's requests: duplicates,
//! deadline, size, concurrency limit, then the handler on its own task.

use super::answer::{send_refusal, send_reply, HeldAck};
use super::handle::{Activity, ActivityGuard};
use super::{Reply, Request, Service};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use rumqttc::v5::mqttbytes::v5::Publish;
use tokio::sync::{oneshot, Semaphore};
use tracing::{debug, warn};

use crate::connection::AckToken;
use crate::connection::Connection;
use crate::observe::{self};
use crate::protocol::batch::BATCH_SUFFIX;
use crate::protocol::QoS;
use crate::protocol::{
    Status, CANCEL_METHOD, CREDIT_METHOD, POSTCARD_CONTENT_TYPE, TEXT_CONTENT_TYPE,
};
use crate::server::duplicates::{call_key, Admission, CachedReply, CallId, CallTable};
use crate::server::limits::{Held, RequestLimits};
use crate::Codec;

/// What tokio's task adds to the future it runs (header, scheduler link,
/// trailer), rounded up.
const TASK_HEADER: usize = 256;

/// Admission and dispatch of one service's requests.
pub(super) struct Dispatcher<S> {
    pub(super) service: Arc<S>,
    /// The layers around the service's methods, if any
    /// ([`ServerOptions::layer`](super::ServerOptions::layer)).
    pub(super) layered: Option<super::layers::Layered>,
    pub(super) instance: Arc<str>,
    /// The duplicate table, running streams, the queue's counts.
    pub(super) held: Arc<Held>,
    pub(super) limits: RequestLimits,
    /// Per method of `S::METHODS`, for `_stats`.
    pub(super) counters: Vec<crate::server::Counters>,
    pub(super) activity: Arc<Activity>,
    pub(super) permits: Arc<Semaphore>,
    pub(super) max_queued: usize,
    pub(super) max_queued_bytes: usize,
    pub(super) max_request_size: usize,
    /// Keep each request's ack token until its answer is queued
    /// ([`ServerOptions::ack_after_answer`](super::ServerOptions::ack_after_answer)).
    pub(super) ack_after_answer: bool,
    /// Subscribed in a share group: another instance may take a request.
    pub(super) shared: bool,
}

impl<S: Service> Dispatcher<S> {
    pub(super) fn calls(&self) -> std::sync::MutexGuard<'_, CallTable> {
        self.held.calls()
    }

    /// Runs on the connection's event-loop task: decides at once, never
    /// waits; handlers run on their own tasks.
    /// `ack`: the request's ack token. Taken: a refusal that waits for
    /// room in the answer backlog holds it (`server/backlog.rs`), and so
    /// does a handler if answers come first; dropped (acked) at once
    /// otherwise.
    pub(super) fn admit(
        self: Arc<Self>,
        conn: &Connection,
        publish: Publish,
        ack: &mut Option<AckToken>,
    ) {
        let now = Instant::now();
        let held = ack.take().map(Arc::new);
        if publish.topic.ends_with(BATCH_SUFFIX.as_bytes()) {
            return self.admit_batch(conn, publish, now, held);
        }
        if publish.topic.ends_with(super::upstream::ITEM_SUFFIX) {
            return self.upstream_item(conn, publish, now);
        }
        let request = Request::from_publish(publish, now);
        self.admit_request(conn, request, now, held);
    }

    /// A batch request: each of its calls is admitted as if it had come
    /// alone (duplicates, deadline, size, overload, cancellation apply per
    /// call), and answered in a batch answer when answers are ready together.
    fn admit_batch(
        self: Arc<Self>,
        conn: &Connection,
        mut publish: Publish,
        now: Instant,
        ack: HeldAck,
    ) {
        let properties = publish.properties.take().unwrap_or_default();
        let mut batch = Request::from_batch(&properties, publish.qos.into(), now);
        batch.redelivered = publish.dup;
        drop(properties);
        if let Err(violation) = self.limits.check(&batch) {
            return self.over_limit(conn, batch, violation, ack);
        }
        let calls = match crate::protocol::batch::decode_calls(&publish.payload) {
            Ok(calls) => calls,
            Err(reason) => {
                warn!(service = S::NAME, %reason, "undecodable batch request");
                let payload = Bytes::from(format!("undecodable batch request: {reason}"));
                let status = Status::BadRequest;
                let held = &self.held;
                return send_refusal(conn, held, batch, status, TEXT_CONTENT_TYPE, payload, ack);
            }
        };
        if calls.is_empty() {
            // A probe: the client learns that this target takes batches.
            let payload = Bytes::new();
            let status = Status::Ok;
            let held = &self.held;
            return send_refusal(
                conn,
                held,
                batch,
                status,
                POSTCARD_CONTENT_TYPE,
                payload,
                ack,
            );
        }
        for call in calls {
            let request = batch.entry(call);
            self.clone().admit_request(conn, request, now, ack.clone());
        }
    }

    pub(super) fn admit_request(
        self: Arc<Self>,
        conn: &Connection,
        mut request: Request,
        now: Instant,
        ack: HeldAck,
    ) {
        if request.broadcast {
            request.instance = Some(self.instance.clone());
        }
        // Before anything of the request is kept.
        if let Err(violation) = self.limits.check(&request) {
            return self.over_limit(conn, request, violation, ack);
        }
        if request.method == CANCEL_METHOD {
            return self.cancel(&request, now);
        }
        if request.chunk_grant.is_some() {
            return self.chunk_grant(&request); // PROTOCOL.md, "Chunked transfer"
        }
        if request.method == CREDIT_METHOD {
            return self.credit(&request);
        }
        if request.chunk.is_some() {
            // Reassembled first: what follows sees one whole request.
            return self.accept_chunk(conn, request);
        }
        let key = request.key();
        let mut full = false;
        if let Some(key) = &key {
            match self.calls().admit(key, now) {
                Admission::Run => {}
                Admission::Full => full = true,
                Admission::AlreadyRunning => {
                    debug!(service = S::NAME, method = %request.method, "duplicate of a running call: dropped");
                    return;
                }
                Admission::Answered(Some(reply)) => {
                    debug!(service = S::NAME, method = %request.method, "duplicate of an answered call: answered again");
                    let (status, content_type) = (reply.status, reply.content_type);
                    let payload = reply.payload.clone();
                    let mut request = request;
                    request.reply_metadata = reply.metadata.clone();
                    if self.answer_in_chunks(conn, &request, status, content_type, &payload) {
                        let this = self.clone();
                        let conn = conn.clone();
                        tokio::spawn(async move {
                            this.answer(conn, request, status, content_type, payload)
                                .await;
                            drop(ack); // once the answer is queued
                        });
                        return;
                    }
                    let held = &self.held;
                    return send_refusal(conn, held, request, status, content_type, payload, ack);
                }
                Admission::Answered(None) => {
                    debug!(service = S::NAME, method = %request.method, "duplicate of an answered call (reply not kept): dropped");
                    return;
                }
                Admission::Cancelled => {
                    debug!(service = S::NAME, method = %request.method, "request of a cancelled call: not run");
                    return;
                }
            }
        }
        let refuse = |request: Request, status: Status, message: String| {
            if let Some(key) = key.as_ref().filter(|_| !full) {
                self.calls().forget(key);
            }
            #[cfg(feature = "metrics")]
            observe::server_request(
                S::NAME,
                known_method::<S>(&request.method),
                status,
                std::time::Duration::ZERO,
            );
            let payload = Bytes::from(message);
            let (held, ack) = (&self.held, ack.clone());
            send_refusal(conn, held, request, status, TEXT_CONTENT_TYPE, payload, ack);
        };
        if full {
            let calls = self.calls();
            let message = format!(
                "the calls running take the server's duplicate table ({} of {} bytes)",
                calls.bytes(),
                calls.budget()
            );
            drop(calls);
            warn!(service = S::NAME, method = %request.method, "overloaded (duplicate table full of running calls): request refused");
            return refuse(request, Status::Overloaded, message);
        }
        if request.attempt > 1 {
            if let Some(message) = self.unknown_retry(&request, now) {
                warn!(service = S::NAME, method = %request.method, "retry of a call not remembered: refused");
                return refuse(request, Status::RetryRefused, message);
            }
        }
        if request.payload.len() > self.max_request_size {
            let message = format!(
                "the request has {} bytes; this server accepts at most {}",
                request.payload.len(),
                self.max_request_size
            );
            return refuse(request, Status::TooLarge, message);
        }
        if request.expired(now) {
            let message = format!("`{}` arrived after its deadline", request.method);
            return refuse(request, Status::DeadlineExceeded, message);
        }
        let slot = match self.permits.clone().try_acquire_owned() {
            Ok(permit) => Slot::Running(permit),
            Err(_) => {
                // It waits: with its own copies, not slices of the packet's
                // buffer, and counted.
                request.unpin();
                let task = self.held.task_bytes.load(Ordering::Relaxed);
                let bytes = request.held_bytes() + task;
                if !self
                    .held
                    .enqueue(bytes, self.max_queued, self.max_queued_bytes)
                {
                    let message = format!(
                        "{} handlers are running and {} requests are waiting ({} bytes, at most {} requests and {} bytes)",
                        self.permits.available_permits().max(1),
                        self.held.queued.load(Ordering::Acquire),
                        self.held.queued_bytes.load(Ordering::Acquire),
                        self.max_queued,
                        self.max_queued_bytes,
                    );
                    warn!(service = S::NAME, method = %request.method, "overloaded: request refused");
                    return refuse(request, Status::Overloaded, message);
                }
                Slot::Waiting(bytes)
            }
        };
        let active = self.activity.enter();
        let held = self.held.clone();
        let ack = ack.filter(|_| self.ack_after_answer);
        // Boxed: the task then holds a pointer, not the whole future, which
        // tokio would copy several times while spawning.
        let run = Box::pin(self.run(conn.clone(), request, key, slot, active, ack));
        if held.task_bytes.load(Ordering::Relaxed) == 0 {
            // The same for every call of this service: measured on the
            // first, which never waits (there is always one slot).
            let bytes = std::mem::size_of_val(&*run) + TASK_HEADER;
            held.task_bytes.store(bytes, Ordering::Relaxed);
        }
        tokio::spawn(run);
    }

    /// The answer to a built-in method (`_ping`, `_info`, `_stats`), or
    /// `None` for the service's own methods. On the discovery topic only
    /// built-ins are served.
    fn builtin(&self, request: &Request) -> Option<Reply> {
        let Some(builtin) = crate::protocol::builtins::Builtin::parse(&request.method) else {
            return request
                .discovery
                .then(|| Reply::unknown_method(&request.method));
        };
        let codec = match Codec::from_content_type(request.content_type.as_deref()) {
            Ok(codec) => codec,
            Err(e) => return Some(Reply::failure(Status::UnsupportedContentType, e)),
        };
        Some(match builtin {
            crate::protocol::builtins::Builtin::Ping => Reply::ok(codec, &()),
            crate::protocol::builtins::Builtin::Info => Reply::ok(
                codec,
                &crate::ServiceInfo {
                    service: S::NAME.to_string(),
                    version: S::version().to_string(),
                    instance: self.instance.to_string(),
                    methods: S::METHODS
                        .iter()
                        .map(|name| crate::MethodInfo {
                            name: name.to_string(),
                            schema: S::schema(name).map(str::to_string),
                        })
                        .collect(),
                },
            ),
            crate::protocol::builtins::Builtin::Stats => Reply::ok(
                codec,
                &crate::ServiceStats {
                    service: S::NAME.to_string(),
                    instance: self.instance.to_string(),
                    methods: S::METHODS
                        .iter()
                        .zip(&self.counters)
                        .map(|(name, counters)| counters.snapshot(name))
                        .collect(),
                },
            ),
        })
    }

    fn cancel(&self, request: &Request, now: Instant) {
        let (Some(topic), Some(correlation)) = (&request.cancel_of, &request.correlation) else {
            debug!(
                service = S::NAME,
                "cancel message without response topic or correlation: ignored"
            );
            return;
        };
        let key = call_key(topic, correlation);
        let transfer = self.cancel_transfers(&key);
        let stopped = self.calls().cancel(key, now) || transfer;
        debug!(service = S::NAME, stopped, "cancel message");
    }

    async fn run(
        self: Arc<Self>,
        conn: Connection,
        mut request: Request,
        key: Option<CallId>,
        slot: Slot,
        _active: ActivityGuard,
        // Dropped (acked) when this returns: after the answer is queued.
        ack: HeldAck,
    ) {
        let _permit = match slot {
            Slot::Running(permit) => permit,
            Slot::Waiting(bytes) => {
                let acquired = self.permits.clone().acquire_owned().await;
                self.held.dequeue(bytes);
                match acquired {
                    Ok(permit) => permit,
                    Err(_) => return, // semaphore closed: cannot happen, never closed
                }
            }
        };
        // Waiting for a slot may have used up the budget.
        if request.expired(Instant::now()) {
            if let Some(key) = &key {
                self.calls().forget(key);
            }
            let message = format!(
                "`{}` waited past its deadline for a free handler",
                request.method
            );
            #[cfg(feature = "metrics")]
            observe::server_request(
                S::NAME,
                known_method::<S>(&request.method),
                Status::DeadlineExceeded,
                std::time::Duration::ZERO,
            );
            let payload = Bytes::from(message);
            return send_reply(
                conn,
                &self.held,
                request,
                Status::DeadlineExceeded,
                TEXT_CONTENT_TYPE,
                payload,
            )
            .await;
        }
        let (stop_tx, mut stop_rx) = oneshot::channel::<()>();
        if let Some(key) = &key {
            if !self.calls().set_stopper(key, stop_tx) {
                debug!(service = S::NAME, method = %request.method, "cancelled before it started");
                return;
            }
        }
        let started = Instant::now();
        if let Some(reply) = self.builtin(&request) {
            if let Some(key) = &key {
                self.calls().forget(key);
            }
            let content_type = reply.codec.map_or(TEXT_CONTENT_TYPE, Codec::content_type);
            let payload = Bytes::from(reply.payload);
            let held = &self.held;
            return send_reply(conn, held, request, reply.status, content_type, payload).await;
        }
        // One lookup for the statistics, the span and the metrics.
        let index = S::METHODS.iter().position(|m| *m == request.method);
        let method = index.map(|index| S::METHODS[index]);
        let span = observe::server_span(
            S::NAME,
            // Names the service lacks share one span name: a caller must
            // not create span names without bound in the trace backend.
            method.unwrap_or(observe::UNKNOWN_METHOD),
            request.correlation.as_deref(),
            request.trace.as_ref(),
        );
        debug!(parent: &span, qos = ?request.qos, "request received");
        // The handler runs inside its call's context (`mqrpc::context`),
        // made of the request's own fields; they come back afterwards.
        // Through the layers, if the server has any. In a block: the
        // handler's future is dead before the awaits that follow, so the
        // task's state does not hold it and them at once.
        let outcome = {
            let layered = (self.layered.as_ref())
                .map(|layers| (layers, super::layers::Call::of(S::NAME, &request)));
            let upstream = self.open_upstream(&conn, &request);
            let call = super::Call::of_request::<S>(&mut request, method);
            let mut scoped = std::pin::pin!(self.handle(call, layered, upstream));
            let work = observe::InSpan::new(&span, scoped.as_mut());
            let deadline = request.deadline.map(tokio::time::Instant::from_std);
            let outcome = tokio::select! {
                reply = async {
                    match deadline {
                        Some(deadline) => tokio::time::timeout_at(deadline, work).await.ok(),
                        None => Some(work.await),
                    }
                } => Some(reply),
                Ok(()) = &mut stop_rx => None,
            };
            super::call::give_back(&mut request, scoped.as_mut().take_value());
            outcome
        };
        let reply = match outcome {
            None => {
                debug!(service = S::NAME, method = %request.method, "cancelled by the caller: handler stopped");
                return;
            }
            Some(Some(reply)) => reply,
            Some(None) => {
                debug!(service = S::NAME, method = %request.method, "deadline passed: handler stopped");
                Reply::failure(
                    Status::DeadlineExceeded,
                    format!("`{}` did not finish before its deadline", request.method),
                )
            }
        };
        let content_type = match reply.codec {
            Some(codec) => codec.content_type(),
            None => TEXT_CONTENT_TYPE,
        };
        if let Some(index) = index {
            self.counters[index].record(started.elapsed(), reply.status);
        }
        observe::record_status(&span, reply.status.as_str());
        debug!(parent: &span, status = reply.status.as_str(), elapsed = ?started.elapsed(), "answering");
        #[cfg(feature = "metrics")]
        observe::server_request(S::NAME, method, reply.status, started.elapsed());
        if let Some(items) = reply.stream.clone() {
            // A stream is acked once it started: a copy run elsewhere
            // would start its items again from 0.
            drop(ack);
            return self
                .stream_items(conn, request, key, items, content_type, stop_rx)
                .await;
        }
        let held = reply.payload.capacity();
        let payload = Bytes::from(reply.payload);
        if let Some(key) = &key {
            let mut calls = self.calls();
            if request.qos == QoS::AtMostOnce {
                calls.forget(key); // never redelivered: nothing to keep
            } else {
                let expires = calls.expiry(request.deadline, request.arrived);
                let cached = CachedReply {
                    status: reply.status,
                    content_type,
                    payload: payload.clone(),
                    held: held + request.reply_metadata.wire_bytes(),
                    metadata: request.reply_metadata.clone(),
                };
                calls.finish(key, cached, expires);
            }
        }
        self.answer(conn, request, reply.status, content_type, payload)
            .await;
    }
}

/// A request's handler slot: taken, or waited for while holding this many
/// bytes of the queue's budget.
enum Slot {
    Running(tokio::sync::OwnedSemaphorePermit),
    Waiting(usize),
}

/// The wire name of `name` if the service has such a method: a label
/// callers cannot multiply.
#[cfg(feature = "metrics")]
pub(super) fn known_method<S: Service>(name: &str) -> Option<&'static str> {
    S::METHODS.iter().copied().find(|m| *m == name)
}
