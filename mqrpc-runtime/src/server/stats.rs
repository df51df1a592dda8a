//! Per-method statistics behind `_stats`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::protocol::builtins::MethodStats;

/// Lock-free counters of one method: a histogram of handler times in
/// power-of-two µs buckets, so recording costs a few atomic adds.
pub(crate) struct Counters {
    calls: AtomicU64,
    failures: AtomicU64,
    app_errors: AtomicU64,
    buckets: [AtomicU64; 40],
}

impl Default for Counters {
    fn default() -> Self {
        Counters {
            calls: AtomicU64::new(0),
            failures: AtomicU64::new(0),
            app_errors: AtomicU64::new(0),
            buckets: std::array::from_fn(|_| AtomicU64::new(0)),
        }
    }
}

impl Counters {
    pub(crate) fn record(&self, took: Duration, status: crate::Status) {
        self.calls.fetch_add(1, Ordering::Relaxed);
        match status {
            crate::Status::Ok => {}
            crate::Status::Error => {
                self.app_errors.fetch_add(1, Ordering::Relaxed);
            }
            _ => {
                self.failures.fetch_add(1, Ordering::Relaxed);
            }
        }
        let micros = took.as_micros().min(u128::from(u64::MAX)) as u64;
        let bucket = (64 - micros.leading_zeros() as usize).min(self.buckets.len() - 1);
        self.buckets[bucket].fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn snapshot(&self, name: &str) -> MethodStats {
        let counts: Vec<u64> = self
            .buckets
            .iter()
            .map(|b| b.load(Ordering::Relaxed))
            .collect();
        let total: u64 = counts.iter().sum();
        let percentile = |p: f64| {
            if total == 0 {
                return 0;
            }
            let rank = ((total as f64) * p).ceil().max(1.0) as u64;
            let mut seen = 0;
            for (bucket, count) in counts.iter().enumerate() {
                seen += count;
                if seen >= rank {
                    // Bucket b holds times in [2^(b-1), 2^b) µs.
                    return if bucket == 0 { 0 } else { 1u64 << bucket };
                }
            }
            1u64 << (counts.len() - 1)
        };
        MethodStats {
            name: name.to_string(),
            calls: self.calls.load(Ordering::Relaxed),
            failures: self.failures.load(Ordering::Relaxed),
            app_errors: self.app_errors.load(Ordering::Relaxed),
            p50_us: percentile(0.50),
            p99_us: percentile(0.99),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_come_from_the_histogram() {
        let counters = Counters::default();
        for _ in 0..98 {
            counters.record(Duration::from_micros(100), crate::Status::Ok);
        }
        counters.record(Duration::from_millis(50), crate::Status::Error);
        counters.record(Duration::from_millis(50), crate::Status::Internal);
        let stats = counters.snapshot("m");
        assert_eq!((stats.calls, stats.app_errors, stats.failures), (100, 1, 1));
        assert_eq!(stats.p50_us, 128, "100 µs is in the 64..128 bucket");
        assert_eq!(stats.p99_us, 65_536, "50 ms is in the 32768..65536 bucket");
    }
}
