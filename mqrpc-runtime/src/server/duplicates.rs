//! The server's table of calls by (Response Topic, Correlation Data): the
//! running ones (so a cancel message can stop them) and, for a while after
//! they end, their responses (so a QoS 1 redelivery of a request is
//! answered from memory instead of running the handler twice).
//!
//! A redelivered copy is byte-identical; a foreign client that reuses its
//! Correlation Data for another request is not. Each entry keeps a digest
//! of the request (method, Content Type, payload), and a key hit with
//! another digest is a new call, never answered with the old reply.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::oneshot;

/// Identifies one call: where its answer goes and its Correlation Data.
pub(crate) type CallKey = (String, Bytes);

/// The key as the table keeps it: its Correlation Data copied out of the
/// packet it arrived in. A slice would keep that whole packet (and the read
/// buffer around it) alive for as long as the entry lives: a peer sending
/// big requests would make each kept entry cost its request's size.
fn own(key: CallKey) -> CallKey {
    (key.0, Bytes::copy_from_slice(&key.1))
}

/// One admitted request: its key and the digest that tells a redelivered
/// copy (same digest) from a new call that reuses the key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct CallId {
    pub key: CallKey,
    pub digest: u64,
}

impl CallId {
    /// The id of a request to `method` with this Content Type and payload.
    pub fn new(key: CallKey, method: &str, content_type: Option<&str>, payload: &[u8]) -> CallId {
        use std::hash::{Hash, Hasher};
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        (method, content_type, payload).hash(&mut hasher);
        CallId {
            key: own(key),
            digest: hasher.finish(),
        }
    }
}

/// A response kept for duplicates.
#[derive(Debug)]
pub(crate) struct CachedReply {
    pub status: crate::Status,
    pub content_type: &'static str,
    pub payload: Bytes,
}

struct Entry {
    /// Digest of the request this entry is about (`None`: a cancel that
    /// came before any request).
    digest: Option<u64>,
    state: State,
}

enum State {
    /// Handler queued or running; sending on the channel stops it.
    Running(Option<oneshot::Sender<()>>),
    /// Answered; duplicates get the reply again (`None`: it was too big to
    /// keep, duplicates are dropped — the first answer went out).
    Done(Option<Arc<CachedReply>>, Instant),
    /// Cancelled (possibly before the request arrived): never run it.
    Cancelled(Instant),
}

impl Entry {
    /// True when this entry is about the request `id` (a cancel that came
    /// first is about whichever request uses its key).
    fn is_for(&self, id: &CallId) -> bool {
        self.digest.is_none_or(|digest| digest == id.digest)
    }
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
    pub fn admit(&mut self, id: &CallId, now: Instant) -> Admission {
        self.expire(now);
        match self.entries.get_mut(&id.key) {
            Some(entry) if entry.is_for(id) => match &entry.state {
                State::Running(_) => Admission::AlreadyRunning,
                State::Done(reply, _) => Admission::Answered(reply.clone()),
                State::Cancelled(_) => {
                    // A cancel that came first blocks its own request (and
                    // that request's copies), not a later one reusing the key.
                    entry.digest = Some(id.digest);
                    Admission::Cancelled
                }
            },
            found => {
                if found.is_some() {
                    tracing::debug!("Correlation Data reused for another request: a new call");
                }
                // A call the new one displaces keeps running, but its end no
                // longer touches the entry (see `is_for`).
                if let Some(Entry {
                    state: State::Done(Some(reply), _),
                    ..
                }) = self.entries.insert(
                    id.key.clone(),
                    Entry {
                        digest: Some(id.digest),
                        state: State::Running(None),
                    },
                ) {
                    self.cached_bytes -= reply.payload.len();
                }
                Admission::Run
            }
        }
    }

    /// Gives a running call the channel that stops it. Returns false if it
    /// was cancelled meanwhile.
    pub fn set_stopper(&mut self, id: &CallId, stop: oneshot::Sender<()>) -> bool {
        match self.entries.get_mut(&id.key) {
            // Displaced by a newer call with the same key: runs untracked.
            Some(entry) if !entry.is_for(id) => true,
            Some(Entry {
                state: State::Running(slot),
                ..
            }) => {
                *slot = Some(stop);
                true
            }
            // Displaced, and the displacing call already forgotten.
            None => true,
            Some(_) => false,
        }
    }

    /// A cancel message: stops the call if it runs; remembers it otherwise,
    /// so the request, should it arrive late, is not run.
    pub fn cancel(&mut self, key: CallKey, now: Instant) -> bool {
        let key = own(key);
        let expires = now + self.limits.window;
        match self.entries.get_mut(&key) {
            Some(Entry { state, .. }) if matches!(state, State::Running(_)) => {
                if let State::Running(Some(stop)) =
                    std::mem::replace(state, State::Cancelled(expires))
                {
                    let _ = stop.send(());
                }
                self.ended.push_back((expires, key));
                self.evict();
                true
            }
            Some(_) => false,
            None => {
                let entry = Entry {
                    digest: None,
                    state: State::Cancelled(expires),
                };
                self.entries.insert(key.clone(), entry);
                self.ended.push_back((expires, key));
                self.evict();
                false
            }
        }
    }

    /// The call ran and was answered with `reply`.
    pub fn finish(&mut self, id: &CallId, reply: CachedReply, expires: Instant) {
        let Some(entry) = self.entries.get_mut(&id.key) else {
            return;
        };
        if !entry.is_for(id) || !matches!(entry.state, State::Running(_)) {
            return; // displaced or cancelled meanwhile: keep that
        }
        // One reply may take at most 1/16 of the budget, so one huge reply
        // cannot flush every other entry.
        let kept = if reply.payload.len() <= self.limits.max_bytes / 16 {
            self.cached_bytes += reply.payload.len();
            Some(Arc::new(reply))
        } else {
            None
        };
        entry.state = State::Done(kept, expires);
        self.ended.push_back((expires, id.key.clone()));
        self.evict();
    }

    /// The call did not run (refused for overload or size): forget it, so
    /// that a retry may run.
    pub fn forget(&mut self, id: &CallId) {
        if let Some(entry) = self.entries.get(&id.key) {
            if entry.is_for(id) && matches!(entry.state, State::Running(_)) {
                self.entries.remove(&id.key);
            }
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
        let stale = match self.entries.get(&key).map(|entry| &entry.state) {
            Some(State::Done(_, e)) | Some(State::Cancelled(e)) => *e == expires,
            _ => false,
        };
        if stale {
            if let Some(Entry {
                state: State::Done(Some(reply), _),
                ..
            }) = self.entries.remove(&key)
            {
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

    /// Regression (issue 23, hostile peer): a kept entry held its request's
    /// whole packet through the Correlation Data slice.
    #[test]
    fn kept_keys_do_not_hold_the_packet_they_came_in() {
        let packet = Bytes::from(vec![7u8; 1 << 20]);
        let inside = |b: &Bytes| packet.as_ptr_range().contains(&b.as_ptr());
        let id = CallId::new(("r".into(), packet.slice(10..18)), "m", None, &packet);
        assert!(!inside(&id.key.1));
        assert_eq!(&id.key.1[..], &packet[10..18]);
        let mut table = CallTable::new(limits());
        assert!(!table.cancel(("r".into(), packet.slice(20..28)), Instant::now()));
        assert!(table.entries.keys().all(|(_, c)| !inside(c)));
    }

    fn limits() -> Limits {
        Limits {
            max_entries: 3,
            max_bytes: 1 << 20,
            grace: Duration::from_secs(1),
            window: Duration::from_secs(60),
        }
    }

    fn key(n: u8) -> CallId {
        CallId::new(
            ("reply".to_string(), Bytes::from(vec![n])),
            "add",
            None,
            b"args",
        )
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
        assert!(!table.cancel(key(7).key, now));
        assert!(matches!(table.admit(&key(7), now), Admission::Cancelled));
    }

    #[test]
    fn cancel_stops_a_running_call() {
        let now = Instant::now();
        let mut table = CallTable::new(limits());
        table.admit(&key(1), now);
        let (tx, mut rx) = oneshot::channel();
        assert!(table.set_stopper(&key(1), tx));
        assert!(table.cancel(key(1).key, now));
        assert!(rx.try_recv().is_ok());
    }

    #[test]
    fn a_cancel_before_arrival_blocks_only_the_first_request_with_its_key() {
        let now = Instant::now();
        let mut table = CallTable::new(limits());
        let first = key(1);
        let other = CallId::new(first.key.clone(), "add", None, b"other");
        table.cancel(first.key.clone(), now);
        assert!(matches!(table.admit(&first, now), Admission::Cancelled));
        assert!(
            matches!(table.admit(&first, now), Admission::Cancelled),
            "its copies too"
        );
        assert!(matches!(table.admit(&other, now), Admission::Run));
    }

    #[test]
    fn a_displaced_call_still_runs_after_its_displacer_is_forgotten() {
        let now = Instant::now();
        let mut table = CallTable::new(limits());
        let first = key(1);
        let second = CallId::new(first.key.clone(), "add", None, b"second");
        table.admit(&first, now);
        table.admit(&second, now);
        table.forget(&second); // e.g. answered at QoS 0
        let (tx, _rx) = oneshot::channel();
        assert!(table.set_stopper(&first, tx));
    }

    #[test]
    fn a_reused_key_with_another_request_is_a_new_call() {
        let now = Instant::now();
        let expires = now + Duration::from_secs(5);
        let mut table = CallTable::new(limits());
        let first = key(1);
        let second = CallId::new(first.key.clone(), "add", None, b"other args");
        assert_ne!(first.digest, second.digest);
        assert!(matches!(table.admit(&first, now), Admission::Run));
        table.finish(&first, reply(3), expires);
        assert!(matches!(table.admit(&second, now), Admission::Run));
        assert_eq!(table.cached_bytes, 0, "the displaced reply is not kept");
        assert!(matches!(
            table.admit(&second, now),
            Admission::AlreadyRunning
        ));
        table.finish(&second, reply(4), expires);
        assert!(
            matches!(table.admit(&second, now), Admission::Answered(Some(r)) if r.payload.len() == 4)
        );
        // While one call runs, another with its key displaces it; the first
        // one's end no longer touches the entry.
        let third = CallId::new(first.key.clone(), "add", None, b"third");
        let fourth = CallId::new(first.key.clone(), "add", None, b"fourth");
        let mut table = CallTable::new(limits());
        table.admit(&third, now);
        assert!(matches!(table.admit(&fourth, now), Admission::Run));
        let (tx, _rx) = oneshot::channel();
        assert!(
            table.set_stopper(&third, tx),
            "the displaced call still runs"
        );
        table.finish(&third, reply(7), expires);
        assert!(matches!(
            table.admit(&fourth, now),
            Admission::AlreadyRunning
        ));
        table.forget(&third);
        assert!(matches!(
            table.admit(&fourth, now),
            Admission::AlreadyRunning
        ));
    }
}
