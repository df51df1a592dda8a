//! The server's table of calls by (Response Topic, Correlation Data): the
//! running ones (so a cancel message can stop them) and, for a while after
//! they end, their responses (so a QoS 1 redelivery of a request is
//! answered from memory instead of running the handler twice).
//!
//! A redelivered copy is byte-identical; a foreign client that reuses its
//! Correlation Data for another request is not. Each entry keeps a digest
//! of the request (method, Content Type, payload), and a key hit with
//! another digest is a new call, never answered with the old reply.
//!
//! Every byte the table holds counts against its budget
//! ([`Limits::max_bytes`]): each key's topic and Correlation Data, each
//! kept answer's allocation, and a fixed [`ENTRY_COST`] per call and
//! [`ENDED_COST`] per place in the expiry queue for the table's own
//! structure (map slots, queue slots, reference counts, the channel that
//! stops a running call). The fixed costs are upper bounds: the map and the
//! queue are shrunk whenever they are less than a quarter full, so their
//! spare capacity stays within what the costs allow (see the tests).

use std::collections::{HashMap, VecDeque};
use std::mem::size_of;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::oneshot;

#[cfg(test)]
mod tests;

/// Where a call's answer goes and its Correlation Data, copied out of the
/// request: a slice of the request would hold the whole buffer the packet
/// was read into, for as long as the call is remembered.
#[derive(Debug, PartialEq, Eq, Hash)]
pub(crate) struct KeyData {
    pub topic: Box<str>,
    pub correlation: Box<[u8]>,
}

/// Identifies one call: where its answer goes and its Correlation Data.
pub(crate) type CallKey = Arc<KeyData>;

/// The key of the call answered on `topic` with this Correlation Data.
pub(crate) fn call_key(topic: &str, correlation: &[u8]) -> CallKey {
    Arc::new(KeyData {
        topic: topic.into(),
        correlation: correlation.into(),
    })
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
            key,
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
    /// Bytes of the payload's allocation (its capacity, which may exceed
    /// its length), and of the metadata.
    pub held: usize,
    /// The answer's metadata, sent again with it.
    pub metadata: crate::Metadata,
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

    /// Bytes of the kept answer, if any.
    fn reply_bytes(&self) -> usize {
        match &self.state {
            State::Done(Some(reply), _) => reply.held,
            _ => 0,
        }
    }
}

/// Map buckets counted per entry: the map is shrunk when its capacity
/// is over 4 slots per entry (see [`CallTable::shrink`]), and a hash map
/// has up to 8/7 buckets per slot of capacity, so it never has more than
/// 5 buckets per entry once it holds [`SPARE`] entries or more.
const SLOTS_PER_ENTRY: usize = 5;

/// Below this many entries the map and the queue keep capacity for this
/// many (instead of shrinking after every removal).
const SPARE: usize = 16;

/// What one remembered call costs besides its key's and answer's bytes:
/// its map buckets (each a slot and a control byte), the key's reference
/// count and pointers, a kept answer's reference count and fields, the
/// channel that stops it while it runs.
pub(crate) const ENTRY_COST: usize = SLOTS_PER_ENTRY * (size_of::<(CallKey, Entry)>() + 1)
    + 2 * size_of::<usize>()
    + size_of::<KeyData>()
    + 2 * size_of::<usize>()
    + size_of::<CachedReply>()
    + STOPPER_COST;

/// The allocation of a running call's stop channel (tokio's oneshot:
/// state, value and two wakers behind a reference count), rounded up.
const STOPPER_COST: usize = 96;

/// One place in the expiry queue, at up to 4 places per element (the
/// queue too is shrunk when less than a quarter full); an element whose
/// entry is gone keeps the key's reference count and pointers (a weak
/// reference), never its bytes.
pub(crate) const ENDED_COST: usize =
    4 * size_of::<(Instant, Weak<KeyData>)>() + 2 * size_of::<usize>() + size_of::<KeyData>();

/// What an almost empty table holds: the spare capacity of its map (its
/// buckets and control bytes) and of its queue.
const BASE_COST: usize = SLOTS_PER_ENTRY * SPARE * (size_of::<(CallKey, Entry)>() + 1)
    + 16
    + 4 * SPARE * size_of::<(Instant, Weak<KeyData>)>();

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
    /// The budget is all taken by calls still running: refuse it
    /// (`overloaded`) rather than run a call the table cannot track.
    Full,
}

/// Bounds of the table; see `ServerOptions::dedup`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    /// Ended calls remembered.
    pub max_entries: usize,
    /// Everything the table holds, running calls included.
    pub max_bytes: usize,
    /// How long an entry stays after its deadline.
    pub grace: Duration,
    /// Retention for requests that carry no deadline.
    pub window: Duration,
}

pub(crate) struct CallTable {
    entries: HashMap<CallKey, Entry>,
    /// Ended entries in the order they ended, with their expiry.
    ended: VecDeque<(Instant, Weak<KeyData>)>,
    /// Everything counted (see the module's documentation), [`BASE_COST`]
    /// included.
    bytes: usize,
    limits: Limits,
    /// Since when the table has forgotten no ended call before its time:
    /// its creation, or the last call its bounds made it drop early.
    remembers_since: Instant,
}

/// What a key costs while its entry lives.
fn entry_cost(key: &KeyData) -> usize {
    ENTRY_COST + key.topic.len() + key.correlation.len()
}

impl CallTable {
    pub fn new(limits: Limits) -> CallTable {
        CallTable {
            entries: HashMap::new(),
            ended: VecDeque::new(),
            bytes: BASE_COST,
            limits,
            remembers_since: Instant::now(),
        }
    }

    /// Since when every call answered here is still remembered until its
    /// expiry: the table's creation, or the last time its bounds
    /// (entries, bytes) made it forget an answered call early. A retry of
    /// a call first sent before then may find the call forgotten
    /// (`server/retries.rs`).
    pub fn remembers_since(&self) -> Instant {
        self.remembers_since
    }

    /// Calls remembered (running or ended).
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Bytes held, by the accounting of the module's documentation; never
    /// more than the budget once the table holds anything.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// The byte budget.
    pub fn budget(&self) -> usize {
        self.limits.max_bytes
    }

    /// Registers an arriving request, or says why it must not run.
    pub fn admit(&mut self, id: &CallId, now: Instant) -> Admission {
        self.expire(now);
        if let Some(entry) = self.entries.get_mut(&id.key) {
            if entry.is_for(id) {
                return match &entry.state {
                    State::Running(_) => Admission::AlreadyRunning,
                    State::Done(reply, _) => Admission::Answered(reply.clone()),
                    State::Cancelled(_) => {
                        // A cancel that came first blocks its own request
                        // (and that request's copies), not a later one
                        // reusing the key.
                        entry.digest = Some(id.digest);
                        Admission::Cancelled
                    }
                };
            }
            tracing::debug!("Correlation Data reused for another request: a new call");
            // A call the new one displaces keeps running, but its end no
            // longer touches the entry (see `is_for`). The map keeps its
            // key (equal to the new one); its place in the expiry queue,
            // if any, no longer matches and is skipped when it comes up.
            self.bytes -= entry.reply_bytes();
            *entry = Entry {
                digest: Some(id.digest),
                state: State::Running(None),
            };
            return Admission::Run;
        }
        let cost = entry_cost(&id.key);
        if !self.make_room(cost) {
            return Admission::Full;
        }
        self.bytes += cost;
        let entry = Entry {
            digest: Some(id.digest),
            state: State::Running(None),
        };
        self.entries.insert(id.key.clone(), entry);
        Admission::Run
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
    /// so the request, should it arrive late, is not run (unless the
    /// budget is all taken by running calls).
    pub fn cancel(&mut self, key: CallKey, now: Instant) -> bool {
        let expires = now + self.limits.window;
        match self.entries.get_key_value(&key) {
            Some((
                _,
                Entry {
                    state: State::Running(_),
                    ..
                },
            )) => {}
            Some(_) => return false,
            None => {
                let cost = entry_cost(&key);
                if !self.make_room(cost + ENDED_COST) {
                    return false;
                }
                self.bytes += cost;
                let entry = Entry {
                    digest: None,
                    state: State::Cancelled(expires),
                };
                self.entries.insert(key.clone(), entry);
                self.push_ended(expires, &key);
                self.evict();
                return false;
            }
        }
        if let Some(Entry { state, .. }) = self.entries.get_mut(&key) {
            if let State::Running(Some(stop)) = std::mem::replace(state, State::Cancelled(expires))
            {
                let _ = stop.send(());
            }
        }
        self.push_ended(expires, &key);
        self.evict();
        true
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
        let kept = if reply.held <= self.limits.max_bytes / 16 {
            self.bytes += reply.held;
            Some(Arc::new(reply))
        } else {
            None
        };
        entry.state = State::Done(kept, expires);
        self.push_ended(expires, &id.key);
        self.evict();
    }

    /// The call did not run (refused for overload or size) or keeps
    /// nothing (QoS 0, streams): forget it, so that a retry may run.
    pub fn forget(&mut self, id: &CallId) {
        if let Some(entry) = self.entries.get(&id.key) {
            if entry.is_for(id) && matches!(entry.state, State::Running(_)) {
                self.remove(&id.key);
                self.shrink();
            }
        }
    }

    /// Queues the entry of `key` for expiry, by the map's own key (so the
    /// queue holds no second copy of it).
    fn push_ended(&mut self, expires: Instant, key: &KeyData) {
        if let Some((key, _)) = self.entries.get_key_value(key) {
            self.ended.push_back((expires, Arc::downgrade(key)));
            self.bytes += ENDED_COST;
        }
    }

    fn remove(&mut self, key: &KeyData) {
        if let Some((key, entry)) = self.entries.remove_entry(key) {
            self.bytes -= entry_cost(&key) + entry.reply_bytes();
        }
    }

    /// Forgets the ended calls whose time is up (at each request, and
    /// every few seconds, so memory goes back once the traffic stops).
    pub fn expire(&mut self, now: Instant) {
        let mut dropped = false;
        while let Some((expires, _)) = self.ended.front() {
            if *expires > now {
                break;
            }
            self.drop_oldest();
            dropped = true;
        }
        if dropped {
            self.shrink();
        }
    }

    fn evict(&mut self) {
        while self.ended.len() > self.limits.max_entries || self.bytes > self.limits.max_bytes {
            if !self.drop_oldest() {
                break;
            }
            self.remembers_since = Instant::now();
        }
        self.shrink();
    }

    /// Forgets ended calls, oldest first, until `cost` more bytes fit.
    fn make_room(&mut self, cost: usize) -> bool {
        while self.bytes + cost > self.limits.max_bytes {
            if !self.drop_oldest() {
                self.shrink();
                return false;
            }
            self.remembers_since = Instant::now();
        }
        self.shrink();
        true
    }

    fn drop_oldest(&mut self) -> bool {
        let Some((expires, key)) = self.ended.pop_front() else {
            return false;
        };
        self.bytes -= ENDED_COST;
        // Gone already (forgotten after a newer call took its key), or its
        // key now belongs to a newer call: nothing to drop.
        let Some(key) = key.upgrade() else {
            return true;
        };
        let stale = match self.entries.get(&*key).map(|entry| &entry.state) {
            Some(State::Done(_, e)) | Some(State::Cancelled(e)) => *e == expires,
            _ => false,
        };
        if stale {
            self.remove(&key);
        }
        true
    }

    /// Returns the spare capacity of the map and the queue once they have
    /// room for over 4 times what they hold (and more than 4 × [`SPARE`]).
    /// Shrunk to twice what they hold, they do not shrink again before
    /// they have lost half of it.
    fn shrink(&mut self) {
        let entries = self.entries.len().max(SPARE);
        if self.entries.capacity() > 4 * entries {
            self.entries.shrink_to(2 * entries);
        }
        let ended = self.ended.len().max(SPARE);
        if self.ended.capacity() > 4 * ended {
            self.ended.shrink_to(2 * ended);
        }
    }

    /// How long to keep an ended call: past its deadline by the grace, or
    /// the window when it had none.
    pub fn expiry(&self, deadline: Option<Instant>, arrived: Instant) -> Instant {
        match deadline {
            Some(deadline) => deadline.max(arrived) + self.limits.grace,
            None => arrived + self.limits.window,
        }
    }
}
