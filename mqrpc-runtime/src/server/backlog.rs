//! The answers a server has handed to its connection that have not left
//! yet: its backlog, bounded in bytes (`ServerOptions::max_answer_backlog`).
//!
//! An answer counts from the moment it is queued until the connection has
//! written it to the socket (QoS 0) or the broker has acknowledged it
//! (QoS 1: PUBACK, QoS 2: PUBCOMP): everything in between (the
//! connection's command queue, its write buffer, publishes waiting for
//! one of the broker's Receive Maximum slots) is in this count. When the
//! broker takes answers slower than requests arrive (a flood of requests
//! nobody reads the answers of), the backlog fills and:
//!
//! - **answers of calls that ran** (and of built-ins, stream items, a
//!   call that waited past its deadline) wait for room in their handler's
//!   task, which keeps its handler slot meanwhile: the server runs no more
//!   handlers than `max_concurrent`, queues no more than `max_queued`, and
//!   refuses the rest `overloaded` (below). Never dropped.
//! - **refusals at QoS 0** (`overloaded`, `too-large`,
//!   `deadline-exceeded`, `bad-request` for a request over a limit or an
//!   undecodable batch) are dropped and counted
//!   ([`ServerUsage::refusals_dropped`](super::ServerUsage)): the request
//!   itself could have been lost at QoS 0, and its caller times out.
//! - **refusals at QoS 1 and 2**, and answers to a redelivered call taken
//!   from the duplicate table, wait for room, holding their request's
//!   acknowledgement: acknowledgements leave in arrival order (MQTT 5.0
//!   §4.6), so the broker sends no more than its Receive Maximum to the
//!   connection (the Receive Maximum mqrpc asks for: 100) and
//!   holds the rest. Each waits with its answer only (a few hundred bytes:
//!   topic, Correlation Data, message), never its request. Only when those
//!   waiting answers take another budget's worth of bytes (at least
//!   1 MiB: many calls of a batch refused at once) is one more dropped,
//!   counted like the QoS 0 ones, with a warning.
//!
//! Answers waiting for room are served before new refusals take any: a
//! flood of refusals does not hold back good answers.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use rumqttc::v5::mqttbytes::v5::PublishProperties;
use tokio::sync::Notify;
use tracing::{debug, warn};

use super::answer::HeldAck;
use crate::connection::{AckListener, AckTo, Connection};
use crate::protocol::QoS;

/// The least the refusals waiting for room may hold together (see
/// [`Backlog::waiting_budget`]).
const MIN_WAITING_BUDGET: usize = 1 << 20;

/// What one queued answer costs besides its packet's bytes: the command
/// on the connection's queue, the publish and its properties' structure,
/// the listener's handle.
const ANSWER_OVERHEAD: usize = 256;

/// The server's answers that have not left yet, by their bytes.
pub(crate) struct Backlog {
    budget: usize,
    bytes: AtomicUsize,
    peak: AtomicUsize,
    /// Tasks waiting for room (answers and refusals): served before a new
    /// refusal takes any.
    waiters: AtomicUsize,
    room: Notify,
    /// Refusals waiting for room, and the bytes they hold meanwhile.
    waiting: AtomicUsize,
    waiting_bytes: AtomicUsize,
    waiting_peak: AtomicUsize,
    dropped: AtomicU64,
}

/// A figure of the backlog, for [`ServerUsage`](super::ServerUsage).
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct BacklogUsage {
    pub bytes: usize,
    pub peak: usize,
    pub budget: usize,
    pub waiting: usize,
    pub waiting_peak: usize,
    pub dropped: u64,
}

impl Backlog {
    pub fn new(budget: usize) -> Backlog {
        Backlog {
            budget,
            bytes: AtomicUsize::new(0),
            peak: AtomicUsize::new(0),
            waiters: AtomicUsize::new(0),
            room: Notify::new(),
            waiting: AtomicUsize::new(0),
            waiting_bytes: AtomicUsize::new(0),
            waiting_peak: AtomicUsize::new(0),
            dropped: AtomicU64::new(0),
        }
    }

    pub fn usage(&self) -> BacklogUsage {
        BacklogUsage {
            bytes: self.bytes.load(Ordering::Acquire),
            peak: self.peak.load(Ordering::Relaxed),
            budget: self.budget,
            waiting: self.waiting.load(Ordering::Acquire),
            waiting_peak: self.waiting_peak.load(Ordering::Relaxed),
            dropped: self.dropped.load(Ordering::Relaxed),
        }
    }

    /// Takes `n` bytes if they fit (an answer larger than the whole budget
    /// fits an empty backlog: it is never refused for its size here).
    fn try_reserve(&self, n: usize) -> bool {
        let taken = self
            .bytes
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |held| {
                (held == 0 || held + n <= self.budget).then_some(held + n)
            });
        match taken {
            Ok(held) => {
                self.peak.fetch_max(held + n, Ordering::Relaxed);
                true
            }
            Err(_) => false,
        }
    }

    /// Waits until `n` bytes fit, and takes them.
    async fn reserve(&self, n: usize) {
        if self.waiters.load(Ordering::SeqCst) == 0 && self.try_reserve(n) {
            return;
        }
        self.waiters.fetch_add(1, Ordering::SeqCst);
        let _waiter = Leave(&self.waiters);
        loop {
            let notified = self.room.notified();
            tokio::pin!(notified);
            // Registered before looking: a release in between wakes it.
            notified.as_mut().enable();
            if self.try_reserve(n) {
                return;
            }
            notified.await;
        }
    }

    fn release(&self, n: usize) {
        self.bytes.fetch_sub(n, Ordering::SeqCst);
        if self.waiters.load(Ordering::SeqCst) > 0 {
            self.room.notify_waiters();
        }
    }

    /// What refusals waiting for room may hold together: the budget again,
    /// at least [`MIN_WAITING_BUDGET`]. Reached only by batches: single
    /// requests wait at most a Receive Maximum at a time.
    fn waiting_budget(&self) -> usize {
        self.budget.max(MIN_WAITING_BUDGET)
    }

    fn count_dropped(&self, answer: &Answer, why: &str) {
        let dropped = self.dropped.fetch_add(1, Ordering::Relaxed) + 1;
        // A peer sending nothing else must not flood the log either.
        if dropped == 1 || dropped.is_multiple_of(1000) {
            warn!(topic = %answer.topic, dropped, budget = self.budget, "{why}: refusal dropped");
        } else {
            debug!(topic = %answer.topic, "{why}: refusal dropped");
        }
    }
}

/// Decrements a waiter count when dropped (also when the waiting task is).
struct Leave<'a>(&'a AtomicUsize);

impl Drop for Leave<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl AckListener for Backlog {
    /// The answer left (QoS 0: written; QoS 1/2: acknowledged, or the
    /// broker refused it, or the link closed): its bytes are free. `id` is
    /// what it was charged.
    fn acked(&self, id: u64, _answer: crate::connection::BrokerAck) {
        self.release(id as usize);
    }
}

/// An answer ready to publish, with what it costs while it waits to leave.
pub(super) struct Answer {
    pub topic: String,
    pub qos: QoS,
    pub payload: Bytes,
    pub properties: PublishProperties,
    pub batched: bool,
}

impl Answer {
    /// What this answer holds until it has left: its packet and the
    /// queue's structure.
    fn cost(&self) -> usize {
        crate::connection::publish_size(&self.topic, self.payload.len(), &self.properties)
            + ANSWER_OVERHEAD
    }

    fn publish(self, conn: &Connection, backlog: &Arc<Backlog>, cost: usize) {
        let listener: Arc<dyn AckListener> = backlog.clone();
        conn.publish_to(
            self.topic,
            self.qos,
            self.payload,
            self.properties,
            self.batched,
            AckTo::Listener(listener, cost as u64),
        );
    }

    /// Sends an answer that must not be lost: waits for room first.
    pub async fn send(self, conn: &Connection, backlog: &Arc<Backlog>) {
        let cost = self.cost();
        backlog.reserve(cost).await;
        self.publish(conn, backlog, cost);
    }

    /// Sends a refusal, from the connection's task (never waits there):
    /// at once if there is room, else dropped (QoS 0) or handed to a task
    /// that waits for room with `ack` (QoS 1/2; see the module's doc).
    pub fn refuse(mut self, conn: &Connection, backlog: &Arc<Backlog>, ack: HeldAck) {
        let cost = self.cost();
        if backlog.waiters.load(Ordering::SeqCst) == 0 && backlog.try_reserve(cost) {
            self.publish(conn, backlog, cost);
            return drop(ack);
        }
        if self.qos == QoS::AtMostOnce {
            return backlog.count_dropped(&self, "answer backlog full (QoS 0)");
        }
        if ack.is_none() {
            // Acknowledged already: waiting would not hold the broker back.
            return backlog.count_dropped(&self, "answer backlog full (request acknowledged)");
        }
        // Waits with its own copy of the Correlation Data, not a slice of
        // the packet its request came in.
        if let Some(correlation) = &mut self.properties.correlation_data {
            *correlation = Bytes::copy_from_slice(correlation);
        }
        let held = cost + std::mem::size_of::<Self>();
        let waiting = backlog.waiting_bytes.fetch_add(held, Ordering::AcqRel);
        if waiting > 0 && waiting + held > backlog.waiting_budget() {
            backlog.waiting_bytes.fetch_sub(held, Ordering::AcqRel);
            return backlog
                .count_dropped(&self, "answer backlog full and its waiting refusals too");
        }
        let count = backlog.waiting.fetch_add(1, Ordering::AcqRel) + 1;
        backlog.waiting_peak.fetch_max(count, Ordering::Relaxed);
        let (conn, backlog) = (conn.clone(), backlog.clone());
        tokio::spawn(async move {
            backlog.reserve(cost).await;
            self.publish(&conn, &backlog, cost);
            backlog.waiting.fetch_sub(1, Ordering::AcqRel);
            backlog.waiting_bytes.fetch_sub(held, Ordering::AcqRel);
            drop(ack); // after the answer is queued
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::FutureExt;

    #[test]
    fn reserving_stops_at_the_budget_but_never_refuses_one_answer_for_its_size() {
        let backlog = Backlog::new(1_000);
        assert!(backlog.try_reserve(600));
        assert!(backlog.try_reserve(400));
        assert!(!backlog.try_reserve(1), "full");
        backlog.release(1_000);
        assert!(
            backlog.try_reserve(5_000),
            "an empty backlog takes any one answer"
        );
        assert!(!backlog.try_reserve(1));
        backlog.release(5_000);
        let usage = backlog.usage();
        assert_eq!((usage.bytes, usage.peak, usage.budget), (0, 5_000, 1_000));
    }

    #[tokio::test]
    async fn a_waiting_answer_gets_the_room_a_release_makes() {
        let backlog = Arc::new(Backlog::new(100));
        assert!(backlog.try_reserve(100));
        let waiting = tokio::spawn({
            let backlog = backlog.clone();
            async move { backlog.reserve(60).await }
        });
        while backlog.waiters.load(Ordering::SeqCst) == 0 {
            tokio::task::yield_now().await;
        }
        assert!(!waiting.is_finished());
        // A refusal does not take room while an answer waits for it.
        backlog.release(100);
        assert!(backlog.waiters.load(Ordering::SeqCst) <= 1);
        waiting.await.unwrap();
        assert_eq!(backlog.usage().bytes, 60);
        assert_eq!(backlog.waiters.load(Ordering::SeqCst), 0);
    }

    #[test]
    fn a_reservation_that_fits_is_taken_without_waiting() {
        let backlog = Backlog::new(100);
        assert_eq!(backlog.reserve(100).now_or_never(), Some(()));
        assert_eq!(backlog.reserve(1).now_or_never(), None, "full: it waits");
        assert_eq!(
            backlog.waiters.load(Ordering::SeqCst),
            0,
            "a dropped waiter leaves"
        );
    }
}
