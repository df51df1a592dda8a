//! The server's table of calls by (Response Topic, Correlation Data): the
//! running ones (so a cancel message can stop them) and, for a while after
//! they end, their responses (so a QoS 1 redelivery of a request is
//! answered from memory instead of running the handler twice).

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::oneshot;

/// Identifies one call: where its answer goes and its Correlation Data.
pub(crate) type CallKey = (String, Bytes);

/// A response kept for duplicates.
#[derive(Debug)]
pub(crate) struct CachedReply {
    pub status: crate::Status,
    pub content_type: &'static str,
    pub payload: Bytes,
}

enum Entry {
    /// Handler queued or running; sending on the channel stops it.
    Running(Option<oneshot::Sender<()>>),
    /// Answered; duplicates get the reply again (`None`: it was too big to
    /// keep, duplicates are dropped — the first answer went out).
    Done(Option<Arc<CachedReply>>, Instant),
    /// Cancelled (possibly before the request arrived): never run it.
    Cancelled(Instant),
}

/// What to do with an arriving request.
pub(crate) enum Admission {
    /// New: run it (the table now holds it as running).
    Run,
    /// A duplicate of a call still running: its answer will come.
    AlreadyRunning,
    /// A duplicate of an answered call: send this again (`None`: the
    /// reply was too big to keep; drop the duplicate).
    Answered(Option<Arc<CachedReply>>),
    /// Cancelled before it arrived.
    Cancelled,
}

/// Bounds of the table; see `ServerOptions::dedup_capacity`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    pub max_entries: usize,
    pub max_bytes: usize,
    /// How long an entry stays after its deadline.
    pub grace: Duration,
    /// Retention for requests that carry no deadline.
    pub window: Duration,
}

pub(crate) struct CallTable {
    entries: HashMap<CallKey, Entry>,
    /// Ended entries in the order they ended, with their expiry.
    ended: VecDeque<(Instant, CallKey)>,
    cached_bytes: usize,
    limits: Limits,
}

impl CallTable {
    pub fn new(limits: Limits) -> CallTable {
        CallTable {
            entries: HashMap::new(),
            ended: VecDeque::new(),
            cached_bytes: 0,
            limits,
        }
    }

    /// Registers an arriving request, or says why it must not run.
    pub fn admit(&mut self, key: &CallKey, now: Instant) -> Admission {
        self.expire(now);
        match self.entries.get(key) {
            Some(Entry::Running(_)) => Admission::AlreadyRunning,
            Some(Entry::Done(reply, _)) => Admission::Answered(reply.clone()),
            Some(Entry::Cancelled(_)) => Admission::Cancelled,
            None => {
                self.entries.insert(key.clone(), Entry::Running(None));
                Admission::Run
            }
        }
    }

    /// Gives a running call the channel that stops it. Returns false if it
    /// was cancelled meanwhile.
    pub fn set_stopper(&mut self, key: &CallKey, stop: oneshot::Sender<()>) -> bool {
        match self.entries.get_mut(key) {
            Some(Entry::Running(slot)) => {
                *slot = Some(stop);
                true
            }
            _ => false,
        }
    }

    /// A cancel message: stops the call if it runs; remembers it otherwise,
    /// so the request, should it arrive late, is not run.
    pub fn cancel(&mut self, key: CallKey, now: Instant) -> bool {
        let expires = now + self.limits.window;
        match self.entries.get_mut(&key) {
            Some(entry @ Entry::Running(_)) => {
                if let Entry::Running(Some(stop)) =
                    std::mem::replace(entry, Entry::Cancelled(expires))
                {
                    let _ = stop.send(());
                }
                self.ended.push_back((expires, key));
                self.evict();
                true
            }
            Some(_) => false,
            None => {
                self.entries.insert(key.clone(), Entry::Cancelled(expires));
                self.ended.push_back((expires, key));
                self.evict();
                false
            }
        }
    }

    /// The call ran and was answered with `reply`.
    pub fn finish(&mut self, key: &CallKey, reply: CachedReply, expires: Instant) {
        let Some(entry) = self.entries.get_mut(key) else {
            return;
        };
        if !matches!(entry, Entry::Running(_)) {
            return; // cancelled meanwhile: keep that
        }
        // One reply may take at most 1/16 of the budget, so one huge reply
        // cannot flush every other entry.
        let kept = if reply.payload.len() <= self.limits.max_bytes / 16 {
            self.cached_bytes += reply.payload.len();
            Some(Arc::new(reply))
        } else {
            None
        };
        *entry = Entry::Done(kept, expires);
        self.ended.push_back((expires, key.clone()));
        self.evict();
    }

    /// The call did not run (refused for overload or size): forget it, so
    /// that a retry may run.
    pub fn forget(&mut self, key: &CallKey) {
        if matches!(self.entries.get(key), Some(Entry::Running(_))) {
            self.entries.remove(key);
        }
    }

    fn expire(&mut self, now: Instant) {
        while let Some((expires, _)) = self.ended.front() {
            if *expires > now {
                break;
            }
            self.drop_oldest();
        }
    }

    fn evict(&mut self) {
        while self.ended.len() > self.limits.max_entries
            || self.cached_bytes > self.limits.max_bytes
        {
            if !self.drop_oldest() {
                break;
            }
        }
    }

    fn drop_oldest(&mut self) -> bool {
        let Some((expires, key)) = self.ended.pop_front() else {
            return false;
        };
        let stale = match self.entries.get(&key) {
            Some(Entry::Done(_, e)) | Some(Entry::Cancelled(e)) => *e == expires,
            _ => false,
        };
        if stale {
            if let Some(Entry::Done(Some(reply), _)) = self.entries.remove(&key) {
                self.cached_bytes -= reply.payload.len();
            }
        }
        true
    }

    /// How long to keep an ended call: past its deadline by the grace, or
    /// the window when it had none.
    pub fn expiry(&self, deadline: Option<Instant>, arrived: Instant) -> Instant {
        match deadline {
            Some(deadline) => deadline.max(arrived) + self.limits.grace,
            None => arrived + self.limits.window,
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.entries.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> Limits {
        Limits {
            max_entries: 3,
            max_bytes: 1 << 20,
            grace: Duration::from_secs(1),
            window: Duration::from_secs(60),
        }
    }

    fn key(n: u8) -> CallKey {
        ("reply".to_string(), Bytes::from(vec![n]))
    }

    fn reply(bytes: usize) -> CachedReply {
        CachedReply {
            status: crate::Status::Ok,
            content_type: "application/postcard",
            payload: Bytes::from(vec![0; bytes]),
        }
    }

    #[test]
    fn duplicates_are_recognised_while_running_and_after() {
        let now = Instant::now();
        let mut table = CallTable::new(limits());
        assert!(matches!(table.admit(&key(1), now), Admission::Run));
        assert!(matches!(
            table.admit(&key(1), now),
            Admission::AlreadyRunning
        ));
        table.finish(&key(1), reply(3), now + Duration::from_secs(5));
        assert!(
            matches!(table.admit(&key(1), now), Admission::Answered(Some(r)) if r.payload.len() == 3)
        );
        // After its expiry the entry is gone.
        let later = now + Duration::from_secs(6);
        assert!(matches!(table.admit(&key(1), later), Admission::Run));
    }

    #[test]
    fn the_table_is_bounded_by_entries_and_bytes() {
        let now = Instant::now();
        let mut table = CallTable::new(limits());
        for n in 0..10 {
            table.admit(&key(n), now);
            table.finish(&key(n), reply(1), now + Duration::from_secs(60));
        }
        assert_eq!(table.len(), 3, "only the newest max_entries are kept");
        let mut small = CallTable::new(Limits {
            max_entries: 100,
            max_bytes: 320,
            ..limits()
        });
        for n in 0..40 {
            small.admit(&key(n), now);
            small.finish(&key(n), reply(20), now + Duration::from_secs(60));
        }
        assert_eq!(small.cached_bytes, 320);
        assert_eq!(
            small.len(),
            16,
            "the byte budget holds 16 replies of 20 bytes"
        );
    }

    #[test]
    fn cancel_before_arrival_blocks_the_request() {
        let now = Instant::now();
        let mut table = CallTable::new(limits());
        assert!(!table.cancel(key(7), now));
        assert!(matches!(table.admit(&key(7), now), Admission::Cancelled));
    }

    #[test]
    fn cancel_stops_a_running_call() {
        let now = Instant::now();
        let mut table = CallTable::new(limits());
        table.admit(&key(1), now);
        let (tx, mut rx) = oneshot::channel();
        assert!(table.set_stopper(&key(1), tx));
        assert!(table.cancel(key(1), now));
        assert!(rx.try_recv().is_ok());
    }
}
