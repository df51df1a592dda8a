//! The calls of one connection waiting for answers, by Correlation Data.

use super::{Client, Response};
use rustc_hash::FxHashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use rumqttc::v5::mqttbytes::v5::Publish;
use tokio::sync::oneshot;
use tracing::debug;

use crate::connection::{ack_outcome, AckListener, BrokerAck, Connection, Sink};
use crate::error::Failure;
use crate::protocol::QoS;
use crate::protocol::BATCH_CONTENT_TYPE;
use crate::Error;

/// Where the answer(s) of a call go.
pub(crate) enum Waiter {
    /// A call: one answer.
    Once(oneshot::Sender<Result<Response, Failure>>),
    /// A broadcast: every answer, until the stream is dropped.
    Many(tokio::sync::mpsc::Sender<Result<Response, Failure>>),
    /// A stream: every answer, from one instance (bound to it by the
    /// first answer that names it, if the call did not name it).
    Stream(tokio::sync::mpsc::Sender<Result<Response, Failure>>),
}

impl Waiter {
    fn finish(self, outcome: Result<Response, Failure>) {
        match self {
            Waiter::Once(tx) => {
                let _ = tx.send(outcome);
            }
            Waiter::Many(tx) | Waiter::Stream(tx) => {
                let _ = tx.try_send(outcome);
            }
        }
    }

    /// The same sender again, for one more answer (`None` for a call,
    /// which takes one only).
    fn again(&self) -> Option<Waiter> {
        match self {
            Waiter::Once(_) => None,
            Waiter::Many(tx) => Some(Waiter::Many(tx.clone())),
            Waiter::Stream(tx) => Some(Waiter::Stream(tx.clone())),
        }
    }
}

/// A call waiting for its answer(s), and the server instance it is bound
/// to, if any: a notice that this instance is gone ends it
/// (PROTOCOL.md, "Server gone").
pub(crate) struct Pending {
    pub(crate) waiter: Waiter,
    pub(crate) instance: Option<Arc<str>>,
}

/// Calls of one connection waiting for answers, keyed by correlation id.
pub(crate) struct Caller {
    pub(super) reply_topic: String,
    next_id: AtomicU64,
    pending: Mutex<FxHashMap<u64, Pending>>,
    max_pending: usize,
    /// Which request targets take batches.
    pub(super) batch_targets: super::BatchTargets,
    /// Every notice of an instance gone, for whoever listens (`discover`).
    gone: tokio::sync::broadcast::Sender<Arc<str>>,
    /// Round trips that look like Nagle's delay.
    pub(super) nagle: super::nagle::NagleWatch,
    /// Chunked requests being sent and answers being received.
    pub(super) chunks: super::chunked::Chunks,
}

impl Caller {
    /// Subscribes the connection's response topic and waits for the SUBACK,
    /// so no answer can arrive before anyone listens for it.
    pub(super) async fn start(conn: &Connection) -> Result<Arc<Caller>, Error> {
        let reply_topic = conn.reply_topic();
        let caller = Arc::new(Caller {
            reply_topic: reply_topic.clone(),
            next_id: AtomicU64::new(crate::connection::random_u64() >> 16),
            pending: Mutex::new(FxHashMap::default()),
            max_pending: conn.options().get_max_pending_calls(),
            batch_targets: Default::default(),
            gone: tokio::sync::broadcast::channel(64).0,
            nagle: super::nagle::NagleWatch::new(
                conn.options()
                    .brokers()
                    .iter()
                    .all(|(host, _)| super::nagle::is_loopback(host)),
            ),
            chunks: Default::default(),
        });
        let weak = Arc::downgrade(&caller);
        let sink: Sink = Arc::new(move |_conn, publish, _ack| {
            if let Some(caller) = weak.upgrade() {
                caller.deliver(publish);
            }
        });
        // Notices of server instances gone (Last Wills and clean
        // shutdowns), so that calls bound to one end at once.
        let weak = Arc::downgrade(&caller);
        let gone: Sink = Arc::new(move |_conn, publish, _ack| {
            let instance = std::str::from_utf8(&publish.topic)
                .ok()
                .and_then(|topic| topic.rsplit('/').next());
            if let (Some(caller), Some(instance)) = (weak.upgrade(), instance) {
                caller.instance_gone(instance);
            }
        });
        // One SUBSCRIBE for both.
        let routes = vec![
            (reply_topic, QoS::AtLeastOnce, sink),
            (conn.gone_topic("+"), QoS::AtLeastOnce, gone),
        ];
        let mut subscribed = conn.subscribe_routes(routes).await?.into_iter();
        let missing = || Error::Subscribe {
            filter: caller.reply_topic.clone(),
            reason: "the SUBACK has no reason code for it".into(),
        };
        subscribed.next().unwrap_or_else(|| Err(missing()))?;
        if let Some(Err(error)) = subscribed.next() {
            // E.g. an ACL that allows the response topic only: calls still
            // work, bound ones end at their deadline instead.
            tracing::warn!(%error, "no notices of servers gone on this connection");
        }
        let weak = Arc::downgrade(&caller);
        conn.on_link_lost(Box::new(move |error| {
            if let Some(caller) = weak.upgrade() {
                caller.fail_all(error);
            }
        }));
        Ok(caller)
    }

    /// Hands a response to its waiting call; unknown or late ones are dropped.
    fn deliver(&self, mut publish: Publish) {
        let properties = publish.properties.take().unwrap_or_default();
        if properties.content_type.as_deref() == Some(BATCH_CONTENT_TYPE) {
            return self.deliver_batch(&publish.payload);
        }
        let Some(id) = properties
            .correlation_data
            .as_deref()
            .and_then(|bytes| <[u8; 8]>::try_from(bytes).ok())
            .map(u64::from_be_bytes)
        else {
            debug!(
                topic = %self.reply_topic,
                "dropping a response without valid Correlation Data"
            );
            return;
        };
        if super::chunked::is_chunked(&properties) {
            return super::chunked::deliver(self, id, publish, properties);
        }
        let response = Response::from_publish(publish, properties).map_err(Failure::Error);
        let answered_by = response
            .as_ref()
            .ok()
            .and_then(|answer| answer.instance.as_deref());
        let Some(waiter) = self.waiter_of(id, answered_by) else {
            debug!(
                correlation = id,
                "dropping a late or unknown response (its call already ended)"
            );
            return;
        };
        waiter.finish(response);
    }

    /// Where an answer to call `id` goes: a call's waiter is taken (one
    /// answer), a broadcast's or stream's stays pending for more, and a
    /// stream is bound to the instance that answered first; `None` when the
    /// call already ended.
    fn waiter_of(&self, id: u64, answered_by: Option<&str>) -> Option<Waiter> {
        let mut pending = self.lock();
        let entry = pending.get_mut(&id)?;
        match entry.waiter.again() {
            Some(waiter) => {
                if matches!(waiter, Waiter::Stream(_)) && entry.instance.is_none() {
                    entry.instance = answered_by.map(Arc::from);
                }
                Some(waiter)
            }
            None => pending.remove(&id).map(|entry| entry.waiter),
        }
    }

    /// The answers of a batch answer, each to its call.
    fn deliver_batch(&self, frame: &bytes::Bytes) {
        let answers = match crate::protocol::batch::decode_answers(frame) {
            Ok(answers) => answers,
            Err(reason) => {
                debug!(topic = %self.reply_topic, %reason, "dropping an undecodable batch answer");
                return;
            }
        };
        for answer in answers {
            let Some(id) = <[u8; 8]>::try_from(&answer.correlation[..])
                .ok()
                .map(u64::from_be_bytes)
            else {
                debug!("dropping a batched answer without valid Correlation Data");
                continue;
            };
            // Streams are never batched: no instance to bind here.
            let Some(waiter) = self.waiter_of(id, None) else {
                debug!(
                    correlation = id,
                    "dropping a late or unknown batched answer"
                );
                continue;
            };
            let response = Response::from_parts(
                answer.status.as_deref(),
                answer.content_type.as_deref(),
                answer.payload,
            );
            waiter.finish(response.map_err(Failure::Error));
        }
    }

    /// A new call waiting for its answer(s): its correlation id, unless
    /// the connection already has its maximum of calls pending.
    /// `instance`: the server instance the call is bound to, if known.
    pub(super) fn register(
        &self,
        waiter: Waiter,
        instance: Option<Arc<str>>,
    ) -> Result<u64, Error> {
        let mut pending = self.lock();
        if pending.len() >= self.max_pending {
            return Err(Error::TooManyPending {
                limit: self.max_pending,
            });
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        pending.insert(id, Pending { waiter, instance });
        Ok(id)
    }

    /// Call `id` waits again (a retry, whose earlier attempt's answer or
    /// failure took its entry): outside the limit, which it already counted
    /// in.
    pub(super) fn reregister(&self, id: u64, waiter: Waiter, instance: Option<Arc<str>>) {
        self.lock().insert(id, Pending { waiter, instance });
    }

    /// A waiter outside the limit (the batch probe).
    pub(super) fn register_unbounded(&self, waiter: Waiter) -> u64 {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        self.lock().insert(
            id,
            Pending {
                waiter,
                instance: None,
            },
        );
        id
    }

    /// The call's request cannot go on (e.g. a chunked transfer the
    /// server refused): the call ends with `failure`.
    pub(crate) fn fail_call(&self, id: u64, failure: Failure) {
        let entry = self.lock().remove(&id);
        if let Some(entry) = entry {
            entry.waiter.finish(Err(failure));
        }
    }

    pub(crate) fn fail_all(&self, error: &Error) {
        let waiters: Vec<Waiter> = self.lock().drain().map(|(_, p)| p.waiter).collect();
        for waiter in waiters {
            waiter.finish(Err(Failure::Error(error.clone())));
        }
        self.chunks.fail_all(error);
    }

    /// `instance` is gone: every call bound to it ends with
    /// [`Error::ServerGone`]; [`gone_notices`](Self::gone_notices) hear it.
    pub(crate) fn instance_gone(&self, instance: &str) {
        let ended: Vec<(Arc<str>, Waiter)> = {
            let mut pending = self.lock();
            let ids: Vec<u64> = pending
                .iter()
                .filter(|(_, p)| p.instance.as_deref() == Some(instance))
                .map(|(id, _)| *id)
                .collect();
            ids.iter()
                .filter_map(|id| pending.remove(id))
                .filter_map(|p| Some((p.instance?, p.waiter)))
                .collect()
        };
        debug!(instance, calls = ended.len(), "server instance gone");
        for (instance, waiter) in ended {
            waiter.finish(Err(Failure::Gone(instance)));
        }
        self.chunks.instance_gone(instance);
        let _ = self.gone.send(Arc::from(instance));
    }

    /// Notices of instances gone from now on (for `discover`).
    pub(crate) fn gone_notices(&self) -> tokio::sync::broadcast::Receiver<Arc<str>> {
        self.gone.subscribe()
    }

    pub(super) fn lock(&self) -> std::sync::MutexGuard<'_, FxHashMap<u64, Pending>> {
        self.pending.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The broker's answer to a request, on the session loop's task: only a
/// refusal (or a lost link) ends the call here, so the usual PUBACK wakes
/// no task. An answer that came before the PUBACK already took the entry.
impl AckListener for Caller {
    fn acked(&self, id: u64, answer: BrokerAck) {
        match &answer {
            Ok(code) => debug!(
                correlation = id,
                reason = code.0,
                "request acknowledged by the broker"
            ),
            Err(error) => debug!(correlation = id, %error, "request not acknowledged"),
        }
        if let Err(failure) = ack_outcome(answer) {
            let entry = self.lock().remove(&id);
            if let Some(entry) = entry {
                entry.waiter.finish(Err(failure));
            }
        }
    }
}

/// A call's answer: the one from the server, or its end by a refusal
/// ([`Caller::acked`](AckListener::acked)) or a lost link.
pub(super) async fn answer(
    rx: oneshot::Receiver<Result<Response, Failure>>,
) -> Result<Response, Failure> {
    rx.await.unwrap_or(Err(Failure::Error(Error::Disconnected)))
}

/// Removes a call's entry when the call ends in any way: answered, timed
/// out, or its future dropped. A call that ends unanswered after its
/// request went out tells the server to stop working on it.
pub(crate) struct PendingSlot<'a> {
    pub(super) client: &'a Client,
    pub(super) id: u64,
    pub(super) sent: AtomicBool,
}

impl Drop for PendingSlot<'_> {
    fn drop(&mut self) {
        let unanswered = self.client.caller.lock().remove(&self.id).is_some()
            | self.client.caller.chunks.forget(self.id);
        if unanswered && self.sent.load(Ordering::Relaxed) {
            self.client.send_cancel(self.id);
        }
    }
}
