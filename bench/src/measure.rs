//! Latency, throughput and memory measurements over any [`Target`].

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::systems::{Scenario, Target};

/// One row of the summary.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    pub system: String,
    pub scenario: String,
    pub in_flight: usize,
    pub qos: Option<u8>,
    pub p50_us: f64,
    pub p99_us: f64,
    pub calls_per_s: f64,
    pub calls: u64,
    pub lost: u64,
    /// Messages through the broker per call: every PUBLISH the client and
    /// server sent, counted once in and once out (PUBACKs of QoS 1 not
    /// counted); `None` for systems without an MQTT broker.
    pub broker_messages_per_call: Option<f64>,
}

fn percentile(sorted: &[u32], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[index] as f64 / 10.0
}

/// Runs `in_flight` workers, each calling in a loop, for `duration` after a
/// short warm-up; latencies are per call, in tenths of µs.
pub async fn run(
    target: &Arc<dyn Target>,
    system: &str,
    qos: Option<u8>,
    scenario: Scenario,
    in_flight: usize,
    duration: Duration,
) -> Row {
    // Warm-up: connections, caches, the broker's session state.
    for i in 0..50 {
        let _ = target.call(scenario, i).await;
    }
    let stop = Arc::new(AtomicBool::new(false));
    let publishes_before = target.publishes();
    let started = Instant::now();
    let mut workers = Vec::with_capacity(in_flight);
    for worker in 0..in_flight {
        let target = target.clone();
        let stop = stop.clone();
        workers.push(tokio::spawn(async move {
            let mut samples: Vec<u32> = Vec::with_capacity(4096);
            let mut lost = 0u64;
            let mut i = (worker as i64) << 32;
            while !stop.load(Ordering::Relaxed) {
                let begin = Instant::now();
                match target.call(scenario, i).await {
                    Ok(()) => samples
                        .push((begin.elapsed().as_nanos() / 100).min(u32::MAX as u128) as u32),
                    Err(_) => {
                        lost += 1;
                        // A system that fails at once must not spin this
                        // worker thread and starve the timer.
                        tokio::task::yield_now().await;
                    }
                }
                i += 1;
            }
            (samples, lost)
        }));
    }
    tokio::time::sleep(duration).await;
    stop.store(true, Ordering::Relaxed);
    let mut samples = Vec::new();
    let mut lost = 0;
    for worker in workers {
        let (mut s, l) = worker.await.expect("worker");
        samples.append(&mut s);
        lost += l;
    }
    let elapsed = started.elapsed().as_secs_f64();
    // Calls still running when the clock stopped have sent requests too;
    // they are few next to the count.
    let calls = samples.len() as f64;
    let broker_messages_per_call = match (publishes_before, target.publishes()) {
        (Some(before), Some(after)) if calls > 0.0 => Some(2.0 * (after - before) as f64 / calls),
        _ => target.fixed_publishes_per_call().map(|p| 2.0 * p),
    };
    samples.sort_unstable();
    Row {
        system: system.to_string(),
        scenario: scenario.name().to_string(),
        in_flight,
        qos,
        p50_us: percentile(&samples, 0.50),
        p99_us: percentile(&samples, 0.99),
        calls_per_s: samples.len() as f64 / elapsed,
        calls: samples.len() as u64 + lost,
        lost,
        broker_messages_per_call,
    }
}

/// Resident set size of this process, in bytes.
pub fn rss_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1)?.parse::<u64>().ok())
        .map(|pages| pages * 4096)
        .unwrap_or(0)
}

/// Folds repeated runs of the same (system, qos, scenario, depth) into one
/// row: the median of each figure, calls and losses summed.
pub fn median_of_rounds(runs: &[Row]) -> Vec<Row> {
    let mut out: Vec<Row> = Vec::new();
    for run in runs {
        if out.iter().any(|r| same_case(r, run)) {
            continue;
        }
        let group: Vec<&Row> = runs.iter().filter(|r| same_case(r, run)).collect();
        let median = |f: fn(&Row) -> f64| {
            let mut values: Vec<f64> = group.iter().map(|r| f(r)).collect();
            values.sort_by(|a, b| a.total_cmp(b));
            values[values.len() / 2]
        };
        out.push(Row {
            p50_us: median(|r| r.p50_us),
            p99_us: median(|r| r.p99_us),
            calls_per_s: median(|r| r.calls_per_s),
            calls: group.iter().map(|r| r.calls).sum(),
            lost: group.iter().map(|r| r.lost).sum(),
            broker_messages_per_call: run
                .broker_messages_per_call
                .map(|_| median(|r| r.broker_messages_per_call.unwrap_or(f64::NAN))),
            ..run.clone()
        });
    }
    out
}

fn same_case(a: &Row, b: &Row) -> bool {
    a.system == b.system && a.qos == b.qos && a.scenario == b.scenario && a.in_flight == b.in_flight
}
