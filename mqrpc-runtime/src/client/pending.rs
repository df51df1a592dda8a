//! The calls of one connection waiting for answers, by Correlation Data.

use super::{Client, Response};
use rustc_hash::FxHashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use rumqttc::v5::mqttbytes::v5::Publish;
use tokio::sync::oneshot;
use tracing::debug;

use std::future::Future;
use std::pin::Pin;
use std::task::Poll;

use crate::error::Failure;
use crate::protocol::BATCH_CONTENT_TYPE;
use crate::transport::link::PublishAck;
use crate::transport::{ack_outcome, Connection, Sink};
use crate::{Error, QoS};

/// Where the answer(s) of a call go.
pub(crate) enum Waiter {
    /// A call: one answer.
    Once(oneshot::Sender<Result<Response, Failure>>),
    /// A broadcast: every answer, until the stream is dropped.
    Many(tokio::sync::mpsc::Sender<Result<Response, Failure>>),
}

impl Waiter {
    fn finish(self, outcome: Result<Response, Failure>) {
        match self {
            Waiter::Once(tx) => {
                let _ = tx.send(outcome);
            }
            Waiter::Many(tx) => {
                let _ = tx.try_send(outcome);
            }
        }
    }
}

/// Calls of one connection waiting for answers, keyed by correlation id.
pub(crate) struct Caller {
    pub(super) reply_topic: String,
    next_id: AtomicU64,
    pending: Mutex<FxHashMap<u64, Waiter>>,
    max_pending: usize,
    /// Which request targets take batches.
    pub(super) batch_targets: super::BatchTargets,
}

impl Caller {
    /// Subscribes the connection's response topic and waits for the SUBACK,
    /// so no answer can arrive before anyone listens for it.
    pub(super) async fn start(conn: &Connection) -> Result<Arc<Caller>, Error> {
        let reply_topic = conn.reply_topic();
        let caller = Arc::new(Caller {
            reply_topic: reply_topic.clone(),
            next_id: AtomicU64::new(crate::transport::random_u64() >> 16),
            pending: Mutex::new(FxHashMap::default()),
            max_pending: conn.options().max_pending_calls_limit(),
            batch_targets: Default::default(),
        });
        let weak = Arc::downgrade(&caller);
        let sink: Sink = Arc::new(move |_conn, publish| {
            if let Some(caller) = weak.upgrade() {
                caller.deliver(publish);
            }
        });
        conn.subscribe(reply_topic, QoS::AtLeastOnce, sink).await?;
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
        let Some(waiter) = self.waiter_of(id) else {
            debug!(
                correlation = id,
                "dropping a late or unknown response (its call already ended)"
            );
            return;
        };
        waiter.finish(Response::from_publish(publish, properties).map_err(Failure::Error));
    }

    /// Where an answer to call `id` goes: a call's waiter is taken (one
    /// answer), a broadcast's stays pending for more; `None` when the call
    /// already ended.
    fn waiter_of(&self, id: u64) -> Option<Waiter> {
        let mut pending = self.lock();
        match pending.get(&id)? {
            Waiter::Many(tx) => Some(Waiter::Many(tx.clone())),
            Waiter::Once(_) => pending.remove(&id),
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
            let Some(waiter) = self.waiter_of(id) else {
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
    pub(super) fn register(&self, waiter: Waiter) -> Result<u64, Error> {
        let mut pending = self.lock();
        if pending.len() >= self.max_pending {
            return Err(Error::TooManyPending {
                limit: self.max_pending,
            });
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        pending.insert(id, waiter);
        Ok(id)
    }

    /// A waiter outside the limit (the batch probe).
    pub(super) fn register_unbounded(&self, waiter: Waiter) -> u64 {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        self.lock().insert(id, waiter);
        id
    }

    /// The broker refused the call's request (no subscriber, not
    /// authorized, ...) or the link dropped before it was taken: the call
    /// names its method in the error.
    pub(crate) fn fail_call(&self, id: u64, failure: Failure) {
        let waiter = self.lock().remove(&id);
        if let Some(waiter) = waiter {
            waiter.finish(Err(failure));
        }
    }

    pub(crate) fn fail_all(&self, error: &Error) {
        let waiters: Vec<Waiter> = self.lock().drain().map(|(_, w)| w).collect();
        for waiter in waiters {
            waiter.finish(Err(Failure::Error(error.clone())));
        }
    }

    pub(super) fn lock(&self) -> std::sync::MutexGuard<'_, FxHashMap<u64, Waiter>> {
        self.pending.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A call's answer, or its end when the broker refuses its request. The
/// answer wins even when it comes before the broker's PUBACK.
pub(super) async fn answer(
    ack: PublishAck,
    mut rx: oneshot::Receiver<Result<Response, Failure>>,
) -> Result<Response, Failure> {
    let mut ack = Some(ack);
    std::future::poll_fn(|cx| {
        if let Poll::Ready(outcome) = Pin::new(&mut rx).poll(cx) {
            return Poll::Ready(outcome.unwrap_or(Err(Failure::Error(Error::Disconnected))));
        }
        if let Some(pending) = ack.as_mut() {
            if let Poll::Ready(acked) = Pin::new(pending).poll(cx) {
                ack = None;
                if let Err(failure) = ack_outcome(acked) {
                    return Poll::Ready(Err(failure));
                }
            }
        }
        Poll::Pending
    })
    .await
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
        let unanswered = self.client.caller.lock().remove(&self.id).is_some();
        if unanswered && self.sent.load(Ordering::Relaxed) {
            self.client.send_cancel(self.id);
        }
    }
}
