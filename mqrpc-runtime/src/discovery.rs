//! Built-in methods every server answers — `_ping`, `_info`, `_stats` —
//! and the per-method statistics behind `_stats`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::protocol::{INFO_METHOD, PING_METHOD, STATS_METHOD};

/// What `_info` answers: who this server is and what it serves.
///
/// ```
/// let info = mqrpc_runtime::ServiceInfo {
///     service: "Calculator".into(),
///     version: "1.2.0".into(),
///     instance: "calc-1".into(),
///     methods: vec![mqrpc_runtime::MethodInfo { name: "add".into(), schema: Some("5c1d0e9b2f7a4e11".into()) }],
/// };
/// assert_eq!(info.methods[0].name, "add");
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceInfo {
    /// Wire name of the service.
    pub service: String,
    /// Version of the crate that built the server (its `CARGO_PKG_VERSION`).
    pub version: String,
    /// The server's instance id.
    pub instance: String,
    /// Its methods.
    pub methods: Vec<MethodInfo>,
}

/// One method in [`ServiceInfo`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MethodInfo {
    /// Wire name.
    pub name: String,
    /// Schema fingerprint (see PROTOCOL.md).
    pub schema: Option<String>,
}

/// What `_stats` answers: per-method counts and latency since the server
/// started.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServiceStats {
    /// Wire name of the service.
    pub service: String,
    /// The server's instance id.
    pub instance: String,
    /// One entry per method.
    pub methods: Vec<MethodStats>,
}

/// One method in [`ServiceStats`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MethodStats {
    /// Wire name.
    pub name: String,
    /// Calls answered.
    pub calls: u64,
    /// Of those, answered with a status other than `ok` and `error`.
    pub failures: u64,
    /// Of those, answered with the method's typed error (`error`).
    pub app_errors: u64,
    /// Median handler time in µs (upper bound of its power-of-two bucket).
    pub p50_us: u64,
    /// 99th percentile handler time in µs (likewise).
    pub p99_us: u64,
}

/// Every server of every service under `prefix` that answers `_info`
/// within `within`: discovery without a registry.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), mqrpc_runtime::Error> {
/// use std::time::Duration;
/// let conn = mqrpc_runtime::Connection::from_env_or_embedded().await?;
/// let found = mqrpc_runtime::discover(&conn, "mqrpc", Duration::from_millis(200)).await?;
/// assert!(found.is_empty()); // nobody serves anything yet
/// # Ok(()) }
/// ```
pub async fn discover(
    conn: &crate::Connection,
    prefix: &str,
    within: Duration,
) -> Result<Vec<ServiceInfo>, crate::Error> {
    use futures_util::StreamExt;
    let options = crate::ClientOptions::default()
        .prefix(prefix)
        .timeout(within);
    let everyone = crate::Client::new(conn, crate::protocol::ANY_SERVICE, options).await?;
    let answers = everyone.info().await?;
    let mut found = Vec::new();
    let mut answers = std::pin::pin!(answers);
    while let Some((_, info)) = answers.next().await {
        match info {
            Ok(info) => found.push(info),
            // Nobody listens: nothing to find.
            Err(crate::Error::NoResponder { .. }) => break,
            Err(e) => return Err(e),
        }
    }
    found.sort_by(|a, b| (&a.service, &a.instance).cmp(&(&b.service, &b.instance)));
    Ok(found)
}

/// The built-in methods.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Builtin {
    Ping,
    Info,
    Stats,
}

impl Builtin {
    pub(crate) fn parse(method: &str) -> Option<Builtin> {
        match method {
            PING_METHOD => Some(Builtin::Ping),
            INFO_METHOD => Some(Builtin::Info),
            STATS_METHOD => Some(Builtin::Stats),
            _ => None,
        }
    }
}

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
