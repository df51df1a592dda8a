//! The outcomes of calls made under load while something breaks (a broker
//! node killed, a broker restarted): each call checked against what it
//! must return, bounded by its timeout plus a 5 s hang guard.

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use mqrpc::Error;

/// What the calls gave.
#[derive(Default, Debug)]
pub struct Tally {
    pub ok: AtomicU64,
    /// Successes after the mark (see [`Tally::call`]).
    pub ok_after_mark: AtomicU64,
    /// Answers that were not the call's.
    pub mismatched: AtomicU64,
    /// Not resolved within the call's timeout + 5 s: hung.
    pub hung: AtomicU64,
    pub errors: Mutex<Vec<Error>>,
    /// Longest time a call took to resolve, in µs.
    pub worst_us: AtomicU64,
    /// First success after the mark, in µs since it.
    pub first_ok_after_mark_us: AtomicU64,
}

impl Tally {
    /// The errors so far.
    pub fn errors(&self) -> Vec<Error> {
        self.errors.lock().unwrap().clone()
    }

    /// Runs one call (of this `timeout`) and counts its outcome: `ok` when
    /// `check` accepts its value (and after `mark`, when one is set: the
    /// moment of the fault), else `mismatched`; an error is kept, then the
    /// caller backs off for `backoff` (errors while a broker is away come
    /// at once, as a real caller would not retry).
    pub async fn call<T>(
        &self,
        timeout: Duration,
        mark: &Mutex<Option<Instant>>,
        call: impl Future<Output = Result<T, Error>>,
        check: impl FnOnce(&T) -> bool,
        backoff: Duration,
    ) {
        let started = Instant::now();
        let outcome = tokio::time::timeout(timeout + Duration::from_secs(5), call).await;
        let took = started.elapsed().as_micros() as u64;
        self.worst_us.fetch_max(took, Ordering::Relaxed);
        match outcome {
            Err(_) => {
                self.hung.fetch_add(1, Ordering::Relaxed);
            }
            Ok(Ok(value)) if check(&value) => {
                self.ok.fetch_add(1, Ordering::Relaxed);
                if let Some(mark) = *mark.lock().unwrap() {
                    self.ok_after_mark.fetch_add(1, Ordering::Relaxed);
                    let since = Instant::now().saturating_duration_since(mark).as_micros() as u64;
                    let _ = self.first_ok_after_mark_us.compare_exchange(
                        0,
                        since.max(1),
                        Ordering::Relaxed,
                        Ordering::Relaxed,
                    );
                }
            }
            Ok(Ok(_)) => {
                self.mismatched.fetch_add(1, Ordering::Relaxed);
            }
            Ok(Err(e)) => {
                self.errors.lock().unwrap().push(e);
                tokio::time::sleep(backoff).await;
            }
        }
    }
}
