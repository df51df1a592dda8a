//! Load with a tally, for the chaos scenarios (`tests/chaos.rs`): a
//! service whose handler counts how often it ran for each call id, and
//! callers that check every answer and sort every failure by kind.
//!
//! A call is *hung* when its future has not ended [`HANG_GUARD`] after its
//! own deadline (the client's timeout); it is *mismatched* when it answered
//! with the wrong value.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// How long after its deadline a call may still end before it counts as
/// hung: generous, so a slow machine is never mistaken for a hang.
pub const HANG_GUARD: Duration = Duration::from_secs(10);

/// The service the chaos load calls.
#[mqrpc::service]
pub trait Chaos {
    /// Returns `id * 2 + 1`, counted in the server's [`Runs`] under `id`.
    async fn work(&self, id: u64) -> u64;
}

/// How often each call id's handler ran, over every server sharing it.
#[derive(Default)]
pub struct Runs(Mutex<HashMap<u64, u32>>);

impl Runs {
    /// Ids whose handler ran more than once, and the extra runs.
    pub fn duplicates(&self) -> (u64, u64) {
        let runs = self.0.lock().unwrap();
        runs.values()
            .filter(|&&n| n > 1)
            .fold((0, 0), |(ids, extra), &n| {
                (ids + 1, extra + u64::from(n - 1))
            })
    }

    /// Handler runs in all.
    pub fn total(&self) -> u64 {
        self.0.lock().unwrap().values().map(|&n| u64::from(n)).sum()
    }
}

/// A [`Chaos`] server; clones share their [`Runs`] and counter.
#[derive(Clone, Default)]
pub struct Worker {
    pub runs: Arc<Runs>,
    /// Runs on this server.
    pub here: Arc<AtomicU64>,
}

impl Chaos for Worker {
    async fn work(&self, id: u64) -> u64 {
        *self.runs.0.lock().unwrap().entry(id).or_default() += 1;
        self.here.fetch_add(1, Ordering::Relaxed);
        id.wrapping_mul(2).wrapping_add(1)
    }
}

/// What a load saw.
#[derive(Default)]
pub struct Tally {
    pub answered: AtomicU64,
    pub mismatched: AtomicU64,
    pub hung: AtomicU64,
    /// Failures by error kind (the `mqrpc::Error` variant).
    pub failed: Mutex<BTreeMap<String, u64>>,
    /// How long the load ran, in ms (reported, never asserted).
    pub elapsed_ms: AtomicU64,
}

impl Tally {
    /// Calls ended, in all.
    pub fn calls(&self) -> u64 {
        self.answered.load(Ordering::Relaxed)
            + self.mismatched.load(Ordering::Relaxed)
            + self.hung.load(Ordering::Relaxed)
            + self.failures()
    }

    /// Failed calls, all kinds.
    pub fn failures(&self) -> u64 {
        self.failed.lock().unwrap().values().sum()
    }

    /// Failed calls of this kind (`"Timeout"`, `"ServerGone"`, ...).
    pub fn failed_with(&self, kind: &str) -> u64 {
        self.failed.lock().unwrap().get(kind).copied().unwrap_or(0)
    }

    /// Kinds of failure seen.
    pub fn kinds(&self) -> Vec<String> {
        self.failed.lock().unwrap().keys().cloned().collect()
    }

    /// One line: `answered N, failed {Kind: n, ..}, mismatched N, hung N`.
    pub fn line(&self) -> String {
        format!(
            "{} calls in {:.1} s: answered {}, failed {:?}, mismatched {}, hung {}",
            self.calls(),
            self.elapsed_ms.load(Ordering::Relaxed) as f64 / 1e3,
            self.answered.load(Ordering::Relaxed),
            self.failed.lock().unwrap(),
            self.mismatched.load(Ordering::Relaxed),
            self.hung.load(Ordering::Relaxed),
        )
    }

    fn fail(&self, error: &mqrpc::Error) {
        let debug = format!("{error:?}");
        let kind: String = debug.chars().take_while(|c| c.is_alphanumeric()).collect();
        *self.failed.lock().unwrap().entry(kind).or_default() += 1;
    }
}

/// One checked call.
pub async fn checked_call(client: &ChaosClient, id: u64, tally: &Tally) {
    let timeout = client.client().options().get_timeout();
    match tokio::time::timeout(timeout + HANG_GUARD, client.work(id)).await {
        Err(_) => {
            tally.hung.fetch_add(1, Ordering::Relaxed);
        }
        Ok(Ok(v)) if v == id.wrapping_mul(2).wrapping_add(1) => {
            tally.answered.fetch_add(1, Ordering::Relaxed);
        }
        Ok(Ok(_)) => {
            tally.mismatched.fetch_add(1, Ordering::Relaxed);
        }
        Ok(Err(e)) => {
            tally.fail(&e);
            // Errors can come at once (a link down): back off as a real
            // caller would.
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// Callers of `client` calling in a loop, `in_flight` at once, until `max_calls` were
/// made or [`Load::stop`]; call ids from a shared counter (unique per
/// load, offset by `first_id`).
pub struct Load {
    pub tally: Arc<Tally>,
    next: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    first_id: u64,
    started: std::time::Instant,
    workers: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    /// Starts on `runtime` (a site's, or the current one).
    pub fn start(
        runtime: &tokio::runtime::Handle,
        client: &ChaosClient,
        in_flight: usize,
        max_calls: u64,
        first_id: u64,
    ) -> Load {
        let tally = Arc::new(Tally::default());
        let next = Arc::new(AtomicU64::new(first_id));
        let stop = Arc::new(AtomicBool::new(false));
        let end = first_id + max_calls;
        let workers = (0..in_flight)
            .map(|_| {
                let client = client.clone();
                let (tally, next, stop) = (tally.clone(), next.clone(), stop.clone());
                runtime.spawn(async move {
                    while !stop.load(Ordering::Relaxed) {
                        let id = next.fetch_add(1, Ordering::Relaxed);
                        if id >= end {
                            return;
                        }
                        checked_call(&client, id, &tally).await;
                    }
                })
            })
            .collect();
        Load {
            tally,
            next,
            stop,
            first_id,
            started: std::time::Instant::now(),
            workers,
        }
    }

    /// Calls started so far.
    pub fn started(&self) -> u64 {
        self.next.load(Ordering::Relaxed) - self.first_id
    }

    /// Calls ended so far.
    pub fn ended(&self) -> u64 {
        self.tally.calls()
    }

    /// Waits until every call was made (or the load stopped).
    pub async fn wait(self) -> Arc<Tally> {
        for worker in self.workers {
            worker.await.expect("caller panicked");
        }
        let elapsed = self.started.elapsed().as_millis() as u64;
        self.tally.elapsed_ms.store(elapsed, Ordering::Relaxed);
        self.tally
    }

    /// Stops starting calls, and waits for those under way.
    pub async fn stop(self) -> Arc<Tally> {
        self.stop.store(true, Ordering::Relaxed);
        self.wait().await
    }
}

/// Waits up to `bound` until `condition` holds; false if it never did.
/// The bound only keeps a broken system from hanging the test.
pub async fn within(bound: Duration, mut condition: impl FnMut() -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + bound;
    while tokio::time::Instant::now() < deadline {
        if condition() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    condition()
}

/// Checks that no call is left in `client`'s pending table: with the
/// connection's `max_pending_calls` set to `limit`, `limit` calls at once
/// must all be accepted (a leaked entry would make one fail with
/// `TooManyPending`). Returns the errors other than timeouts.
pub async fn pending_table_is_empty(client: &ChaosClient, limit: usize) -> Vec<mqrpc::Error> {
    let calls = (0..limit as u64).map(|i| {
        let client = client.clone();
        async move { client.work(u64::MAX / 2 + i).await }
    });
    futures_util::future::join_all(calls)
        .await
        .into_iter()
        .filter_map(Result::err)
        .collect()
}

/// Asserts the promises every scenario keeps, after printing the tally:
/// no answer mismatched, no call past its deadline (plus [`HANG_GUARD`]),
/// something answered, and (`qos_covered`: where the duplicate table
/// covers every copy) no call id run twice.
pub fn check(name: &str, load: &Tally, worker: &Worker, qos_covered: bool) {
    let (dup_ids, dup_runs) = worker.runs.duplicates();
    println!(
        "chaos {name}: {}; handler runs {} (ids run more than once: {dup_ids}, extra runs {dup_runs})",
        load.line(),
        worker.runs.total(),
    );
    assert_eq!(
        load.mismatched.load(Ordering::Relaxed),
        0,
        "{name}: mismatched answers"
    );
    assert_eq!(
        load.hung.load(Ordering::Relaxed),
        0,
        "{name}: calls outlived their deadline"
    );
    assert!(
        load.answered.load(Ordering::Relaxed) > 0,
        "{name}: nothing answered"
    );
    if qos_covered {
        assert_eq!(dup_ids, 0, "{name}: a request ran more than once");
    }
}

/// Fills the pending table of `client`'s connection (healed link) with
/// `limit` calls, its `max_pending_calls`: a leaked entry would make one
/// fail with `TooManyPending`.
pub async fn check_pending(name: &str, client: &ChaosClient, limit: usize) {
    let client = client.with_timeout(Duration::from_secs(30));
    let conn = client.client().connection().clone();
    assert!(
        within(Duration::from_secs(60), || conn.is_connected()).await,
        "{name}: the client did not reconnect"
    );
    let errors = pending_table_is_empty(&client, limit).await;
    assert!(
        errors
            .iter()
            .all(|e| !matches!(e, mqrpc::Error::TooManyPending { .. })),
        "{name}: calls left in the pending table: {errors:?}"
    );
    assert!(errors.is_empty(), "{name}: on a healed link: {errors:?}");
}
