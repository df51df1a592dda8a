//! Soak (issue 23): mixed calls, streams, broadcasts and reconnections
//! through Mosquitto for `MQRPC_SOAK_SECS` seconds (default 60), with the
//! process's resident memory, open file descriptors and live Tokio tasks
//! sampled every second. After a warm-up (the first quarter), each must
//! stay flat: its least-squares slope, extrapolated to an hour, and its
//! growth from the first to the last sample of the steady part stay
//! within generous bounds. Ignored by default; run in release:
//! `cargo test --release -p mqrpc-tests --test soak -- --ignored --nocapture`.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use mqrpc::{ClientOptions, ConnectOptions, Connection};
use mqrpc_tests::proxy::Proxy;
use mqrpc_tests::{Calc, CalculatorClient, CalculatorServer, Mosquitto};

fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .expect("VmRSS in /proc/self/status")
}

fn open_fds() -> u64 {
    std::fs::read_dir("/proc/self/fd").unwrap().count() as u64
}

/// Least-squares slope of `(seconds, value)` points, per hour.
fn slope_per_hour(points: &[(f64, f64)]) -> f64 {
    let n = points.len() as f64;
    let (sx, sy) = points
        .iter()
        .fold((0.0, 0.0), |(a, b), (x, y)| (a + x, b + y));
    let (mx, my) = (sx / n, sy / n);
    let (num, den) = points.iter().fold((0.0, 0.0), |(a, b), (x, y)| {
        (a + (x - mx) * (y - my), b + (x - mx) * (x - mx))
    });
    if den == 0.0 {
        0.0
    } else {
        num / den * 3600.0
    }
}

#[derive(Default)]
struct Counts {
    calls: AtomicU64,
    call_errors: AtomicU64,
    stream_items: AtomicU64,
    stream_errors: AtomicU64,
    broadcast_answers: AtomicU64,
    mismatched: AtomicU64,
    reconnects: AtomicU64,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "soak: run with --release -- --ignored (MQRPC_SOAK_SECS, default 60)"]
async fn soak_mixed_load_stays_flat() {
    if !mqrpc_tests::mosquitto_available() {
        return;
    }
    let seconds: u64 = std::env::var("MQRPC_SOAK_SECS")
        .ok()
        .map(|s| s.parse().expect("MQRPC_SOAK_SECS: seconds"))
        .unwrap_or(60);
    let mosquitto = Mosquitto::start(&[]).unwrap();
    let broker = std::net::SocketAddr::from(([127, 0, 0, 1], mosquitto.port));
    // Servers direct; clients through a proxy that is cut now and then.
    let proxy = Proxy::start(broker).await.unwrap();
    let mut servers = Vec::new();
    for _ in 0..2 {
        let conn = Connection::connect_url(&format!("mqtt://{broker}"))
            .await
            .unwrap();
        let _handle = CalculatorServer::new(Calc::default())
            .serve(&conn)
            .await
            .unwrap();
        servers.push(conn);
    }
    let mut clients = Vec::new();
    for _ in 0..2 {
        let options = ConnectOptions::from_url(&proxy.url())
            .unwrap()
            .keep_alive(Duration::from_secs(5));
        let conn = Connection::connect(options).await.unwrap();
        let options = ClientOptions::default().timeout(Duration::from_secs(5));
        clients.push(
            CalculatorClient::with_options(&conn, options)
                .await
                .unwrap(),
        );
    }
    let counts = Arc::new(Counts::default());
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    // Calls: 64 callers.
    for w in 0..64u64 {
        let (client, counts, stop) = (
            clients[w as usize % 2].clone(),
            counts.clone(),
            stop.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let mut i = (w << 40) as i64;
            while !stop.load(Ordering::Relaxed) {
                match client.add(i, 1).await {
                    Ok(sum) if sum == i + 1 => counts.calls.fetch_add(1, Ordering::Relaxed),
                    Ok(_) => counts.mismatched.fetch_add(1, Ordering::Relaxed),
                    Err(_) => {
                        tokio::time::sleep(Duration::from_millis(20)).await;
                        counts.call_errors.fetch_add(1, Ordering::Relaxed)
                    }
                };
                i += 1;
            }
        }));
    }
    // Streams: 4 readers of 200-item streams.
    for w in 0..4 {
        let (client, counts, stop) = (clients[w % 2].clone(), counts.clone(), stop.clone());
        tasks.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let Ok(mut items) = client.count_up(200).await else {
                    counts.stream_errors.fetch_add(1, Ordering::Relaxed);
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                };
                let mut next = 0;
                while let Some(item) = items.next().await {
                    match item {
                        Ok(n) if n == next => next += 1,
                        Ok(_) => {
                            counts.mismatched.fetch_add(1, Ordering::Relaxed);
                            break;
                        }
                        Err(_) => {
                            counts.stream_errors.fetch_add(1, Ordering::Relaxed);
                            break;
                        }
                    }
                }
                counts.stream_items.fetch_add(next, Ordering::Relaxed);
            }
        }));
    }
    // Broadcasts: every 100 ms, to both servers.
    {
        let (client, counts, stop) = (clients[0].clone(), counts.clone(), stop.clone());
        tasks.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                if let Ok(answers) = client.broadcast(Some(2)).add(20, 22).await {
                    let answers: Vec<_> = answers.collect().await;
                    for (_, sum) in answers {
                        match sum {
                            Ok(42) => counts.broadcast_answers.fetch_add(1, Ordering::Relaxed),
                            Ok(_) => counts.mismatched.fetch_add(1, Ordering::Relaxed),
                            Err(_) => 0,
                        };
                    }
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }));
    }
    // Reconnections: the clients' links cut every 10 s.
    let started = Instant::now();
    let mut samples = Vec::new();
    let mut last_cut = Instant::now();
    let metrics = tokio::runtime::Handle::current().metrics();
    while started.elapsed() < Duration::from_secs(seconds) {
        tokio::time::sleep(Duration::from_secs(1)).await;
        if last_cut.elapsed() >= Duration::from_secs(10) {
            proxy.cut();
            counts.reconnects.fetch_add(1, Ordering::Relaxed);
            last_cut = Instant::now();
        }
        samples.push((
            started.elapsed().as_secs_f64(),
            rss_kib() as f64,
            open_fds() as f64,
            metrics.num_alive_tasks() as f64,
        ));
    }
    stop.store(true, Ordering::Relaxed);
    for task in tasks {
        task.await.unwrap();
    }
    let steady = &samples[samples.len() / 4..];
    let series = |f: fn(&(f64, f64, f64, f64)) -> f64| -> Vec<(f64, f64)> {
        steady.iter().map(|s| (s.0, f(s))).collect()
    };
    let rss = series(|s| s.1);
    let fds = series(|s| s.2);
    let tasks = series(|s| s.3);
    let (first, last) = (steady.first().unwrap(), steady.last().unwrap());
    println!(
        "soak {seconds} s: {} calls ({} failed), {} stream items ({} streams failed), {} broadcast answers, {} link cuts, mismatched {}",
        counts.calls.load(Ordering::Relaxed),
        counts.call_errors.load(Ordering::Relaxed),
        counts.stream_items.load(Ordering::Relaxed),
        counts.stream_errors.load(Ordering::Relaxed),
        counts.broadcast_answers.load(Ordering::Relaxed),
        counts.reconnects.load(Ordering::Relaxed),
        counts.mismatched.load(Ordering::Relaxed),
    );
    println!(
        "soak after warm-up: RSS {:.0} -> {:.0} KiB (slope {:+.0} KiB/h), fds {} -> {} (slope {:+.1}/h), tasks {} -> {} (slope {:+.1}/h)",
        first.1, last.1, slope_per_hour(&rss), first.2, last.2, slope_per_hour(&fds), first.3, last.3, slope_per_hour(&tasks),
    );
    assert_eq!(counts.mismatched.load(Ordering::Relaxed), 0);
    assert!(counts.calls.load(Ordering::Relaxed) > 0);
    assert!(counts.stream_items.load(Ordering::Relaxed) > 0);
    assert!(counts.broadcast_answers.load(Ordering::Relaxed) > 0);
    // Flat: growth over the steady part within generous bounds (a leak of
    // one connection, task or call per second would exceed them over a
    // few minutes; the bounds absorb allocator noise and the moment a
    // cut catches the load).
    let max_rss = steady.iter().map(|s| s.1).fold(0.0, f64::max);
    assert!(
        last.1 <= first.1 * 1.5 + 16_384.0,
        "RSS grew: {:.0} -> {:.0} KiB",
        first.1,
        last.1
    );
    assert!(
        max_rss <= first.1 * 2.0 + 32_768.0,
        "RSS peaked at {max_rss:.0} KiB"
    );
    assert!(
        last.2 <= first.2 + 16.0,
        "fds grew: {} -> {}",
        first.2,
        last.2
    );
    assert!(
        last.3 <= first.3 * 1.5 + 64.0,
        "tasks grew: {} -> {}",
        first.3,
        last.3
    );
    drop(servers);
}
