//! `cargo run --release -p mqrpc-bench [-- --quick]`
//!
//! Starts its own brokers on loopback (Mosquitto with TCP_NODELAY,
//! nats-server, the embedded broker), measures every system on the same
//! calls, times the compile cost of the macro, prints a table and writes
//! `target/mqrpc-bench/summary.json`.
//!
//! Flags: `--quick`, `--systems a,b` (system names, plus `memory` and
//! `compile`), `--seconds S` per case, `--rounds N`, `--depths 1,100` (calls in
//! flight), `--qos 0|1` (MQTT rows of that QoS only), `--no-compile`,
//! `--compile-reps N`; `--profile mqrpc|raw-rumqttc [--calls N] [--qos Q]`
//! is a separate mode for profiling (see `profile.rs`).

mod alloc;
mod brokers;
mod bytes;
mod compile;
mod measure;
mod profile;
mod systems;

#[global_allocator]
static GLOBAL: alloc::Counting = alloc::Counting;

use std::sync::Arc;
use std::time::{Duration, Instant};

use measure::{rss_bytes, Row};
use serde_json::json;
use systems::{Scenario, Target};

struct Settings {
    quick: bool,
    /// `--systems raw-rumqttc,mqrpc`: measure only these (all by default).
    systems: Option<Vec<String>>,
    run_for: Duration,
    depths: Vec<usize>,
    memory_calls: usize,
    growth_calls: usize,
    /// Each system is measured this many times, interleaved; the table
    /// shows the median round.
    rounds: usize,
    /// Repetitions of each timed build of the compile-cost crates; 0 skips
    /// the compile measurement.
    compile_reps: usize,
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.iter().any(|a| a == "--profile") {
        profile::main(&args);
        return;
    }
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime")
        .block_on(bench(args));
}

async fn bench(args: Vec<String>) {
    let quick = args.iter().any(|a| a == "--quick");
    let value_of = |flag: &str| {
        args.iter()
            .position(|a| a == flag)
            .and_then(|i| args.get(i + 1).cloned())
    };
    let seconds = value_of("--seconds").and_then(|s| s.parse::<f64>().ok());
    let settings = Settings {
        quick,
        systems: value_of("--systems").map(|s| s.split(',').map(str::to_string).collect()),
        run_for: match seconds {
            Some(s) => Duration::from_secs_f64(s),
            None if quick => Duration::from_millis(700),
            None => Duration::from_secs(5),
        },
        depths: value_of("--depths")
            .map(|d| d.split(',').filter_map(|n| n.parse().ok()).collect())
            .unwrap_or_else(|| vec![1, 10, 100, 1000]),
        memory_calls: 10_000,
        growth_calls: if quick { 20_000 } else { 200_000 },
        rounds: value_of("--rounds")
            .and_then(|r| r.parse().ok())
            .unwrap_or(if quick { 1 } else { 3 }),
        compile_reps: if args.iter().any(|a| a == "--no-compile") {
            0
        } else {
            value_of("--compile-reps")
                .and_then(|r| r.parse().ok())
                .unwrap_or(if quick { 3 } else { 5 })
        },
    };
    let started = Instant::now();
    let load_at_start = load_average();
    let mut rows: Vec<Row> = Vec::new();
    let mut notes: Vec<String> = Vec::new();

    let mut mosquitto = brokers::mosquitto();
    let mut nats = brokers::nats_server();
    let embedded = mqrpc::EmbeddedBroker::start().await;

    // Every system stays up for the whole run; rounds interleave them so
    // drift of the machine (other load, CPU frequency) hits all alike.
    let mut targets: Vec<(&str, Option<u8>, Arc<dyn Target>)> = Vec::new();
    match &mosquitto {
        Ok(m) => {
            let url = format!("mqtt://127.0.0.1:{}", m.port);
            for qos in [0u8, 1] {
                let raw_qos = if qos == 0 {
                    rumqttc::v5::mqttbytes::QoS::AtMostOnce
                } else {
                    rumqttc::v5::mqttbytes::QoS::AtLeastOnce
                };
                match systems::Raw::start(m.port, raw_qos).await {
                    Ok(t) => targets.push(("raw-rumqttc", Some(qos), Arc::new(t))),
                    Err(e) => notes.push(format!("raw-rumqttc qos{qos}: {e}")),
                }
                let mqrpc_qos = if qos == 0 {
                    mqrpc::QoS::AtMostOnce
                } else {
                    mqrpc::QoS::AtLeastOnce
                };
                match systems::Mqrpc::start(&url, mqrpc_qos).await {
                    Ok(t) => targets.push(("mqrpc", Some(qos), Arc::new(t))),
                    Err(e) => notes.push(format!("mqrpc qos{qos}: {e}")),
                }
            }
        }
        Err(e) => notes.push(format!("Mosquitto cases skipped: {e}")),
    }
    match &embedded {
        Ok(broker) => match systems::Mqrpc::start(&broker.url(), mqrpc::QoS::AtLeastOnce).await {
            Ok(t) => targets.push(("mqrpc-embedded", Some(1), Arc::new(t))),
            Err(e) => notes.push(format!("mqrpc-embedded: {e}")),
        },
        Err(e) => notes.push(format!("embedded broker: {e}")),
    }
    match systems::Tarpc::start().await {
        Ok(t) => targets.push(("tarpc", None, Arc::new(t))),
        Err(e) => notes.push(format!("tarpc: {e}")),
    }
    match &nats {
        Ok(n) => match systems::Nats::start(n.port).await {
            Ok(t) => targets.push(("async-nats", None, Arc::new(t))),
            Err(e) => notes.push(format!("async-nats: {e}")),
        },
        Err(e) => notes.push(format!("NATS cases skipped: {e}")),
    }
    if let Some(only) = &settings.systems {
        targets.retain(|(name, _, _)| only.iter().any(|s| s == name));
    }
    if let Some(only) = value_of("--qos").and_then(|q| q.parse::<u8>().ok()) {
        targets.retain(|(_, qos, _)| qos.is_none_or(|q| q == only));
    }
    let mut runs: Vec<Row> = Vec::new();
    for round in 0..settings.rounds {
        eprintln!("round {} of {}", round + 1, settings.rounds);
        for scenario in [Scenario::Add, Scenario::Echo1k] {
            for &depth in &settings.depths {
                for (system, qos, target) in &targets {
                    let row =
                        measure::run(target, system, *qos, scenario, depth, settings.run_for).await;
                    eprintln!(
                        "{:<15} {:<5} {:<8} {:>5} in flight: p50 {:>8.1} µs  p99 {:>8.1} µs  {:>9.0} calls/s  lost {}",
                        row.system,
                        qos.map(|q| format!("qos{q}")).unwrap_or_else(|| "-".into()),
                        row.scenario,
                        row.in_flight,
                        row.p50_us,
                        row.p99_us,
                        row.calls_per_s,
                        row.lost
                    );
                    runs.push(row);
                }
            }
        }
    }
    for (name, broker) in [("mosquitto", &mut mosquitto), ("nats-server", &mut nats)] {
        if let Some(status) = broker.as_mut().ok().and_then(|b| b.exit_status()) {
            notes.push(format!(
                "{name} exited during the run ({status}), killed from outside? Rows through it are void"
            ));
        }
    }
    rows.extend(measure::median_of_rounds(&runs));
    let order = [
        "raw-rumqttc",
        "mqrpc",
        "mqrpc-embedded",
        "tarpc",
        "async-nats",
    ];
    rows.sort_by_key(|r| {
        let system = order
            .iter()
            .position(|s| *s == r.system)
            .unwrap_or(order.len());
        (r.qos, system, r.scenario.clone(), r.in_flight)
    });
    drop(targets);

    let mut memory = Vec::new();
    let want_memory = settings
        .systems
        .as_ref()
        .is_none_or(|s| s.iter().any(|s| s == "memory"));
    if let (Ok(m), true) = (&mosquitto, want_memory) {
        memory.extend(measure_memory(&settings, &format!("mqtt://127.0.0.1:{}", m.port)).await);
    }

    // Chunked calls: payload bytes per second against the raw floor.
    let want_bytes = settings
        .systems
        .as_ref()
        .is_none_or(|s| s.iter().any(|s| s == "bytes"));
    let (bytes_rows, bytes_ratios) = if want_bytes {
        let (rows, ratios, bytes_notes) = bytes::measure(settings.quick).await;
        notes.extend(bytes_notes);
        (rows, ratios)
    } else {
        (Vec::new(), json!({}))
    };

    let mut compile = Vec::new();
    let want_compile = settings.compile_reps > 0
        && settings
            .systems
            .as_ref()
            .is_none_or(|s| s.iter().any(|s| s == "compile"));
    if want_compile {
        // Brokers and clients are idle by now; the builds run alone.
        let root = target_dir().join("mqrpc-bench").join("compile");
        match compile::measure(&root, settings.compile_reps) {
            Ok(cost) => {
                if cost.deps_seconds > 1.0 {
                    notes.push(format!(
                        "compile: the first, untimed build (shared dependencies when not cached, then both crates) took {:.0} s",
                        cost.deps_seconds
                    ));
                }
                compile = cost.entries;
            }
            Err(e) => notes.push(format!("compile cost skipped: {e}")),
        }
    }

    print_table(&rows);
    // Ratios are taken within each round (the rounds interleave the
    // systems, so both sides of a ratio saw the same machine state), then
    // the median over rounds. On a shared VM the sequential latency of
    // every MQTT system can jump between rounds (~40 µs vs ~120 µs), which
    // a ratio of per-system medians would mistake for a difference.
    let per_round = runs.len() / settings.rounds.max(1);
    // `(system, qos)` against `(system, qos)` on `add` at `depth`.
    let ratio_of = |f: fn(&Row) -> f64,
                    a: (&str, Option<u8>),
                    b: (&str, Option<u8>),
                    depth: usize| {
        fn find<'r>(
            round: &'r [Row],
            (system, qos): (&str, Option<u8>),
            depth: usize,
        ) -> Option<&'r Row> {
            round.iter().find(|r| {
                r.system == system && r.qos == qos && r.scenario == "add" && r.in_flight == depth
            })
        }
        let mut values: Vec<f64> = runs
            .chunks(per_round.max(1))
            .filter_map(|round| Some(f(find(round, a, depth)?) / f(find(round, b, depth)?)))
            .filter(|v| v.is_finite())
            .collect();
        values.sort_by(|a, b| a.total_cmp(b));
        match values.len() {
            0 => json!(null),
            n => json!(values[n / 2]),
        }
    };
    let ratio = |f: fn(&Row) -> f64, qos: u8, depth: usize| {
        ratio_of(f, ("mqrpc", Some(qos)), ("raw-rumqttc", Some(qos)), depth)
    };
    let throughput = |r: &Row| r.calls_per_s;
    let ratios = json!({
        "mqrpc_vs_raw_p50": ratio(|r| r.p50_us, 1, 1),
        "mqrpc_vs_raw_throughput_100": ratio(throughput, 1, 100),
        "mqrpc_vs_raw_throughput_1000": ratio(throughput, 1, 1000),
        "mqrpc_vs_raw_p50_qos0": ratio(|r| r.p50_us, 0, 1),
        "mqrpc_vs_raw_throughput_100_qos0": ratio(throughput, 0, 100),
        "mqrpc_vs_raw_throughput_1000_qos0": ratio(throughput, 0, 1000),
        // mqrpc through its embedded broker against raw rumqttc through
        // Mosquitto (the raw floor runs on Mosquitto only).
        "mqrpc_vs_raw_throughput_100_embedded": ratio_of(throughput, ("mqrpc-embedded", Some(1)), ("raw-rumqttc", Some(1)), 100),
        "mqrpc_vs_nats_throughput_100": ratio_of(throughput, ("mqrpc", Some(1)), ("async-nats", None), 100),
    });
    println!(
        "\nratios (add, QoS 1 unless named): {}",
        serde_json::to_string_pretty(&ratios).unwrap()
    );
    let mut ratios = ratios;
    if let (Some(all), Some(more)) = (ratios.as_object_mut(), bytes_ratios.as_object()) {
        all.extend(more.clone());
    }
    let targets = targets_met(&rows, &ratios, &memory);
    println!(
        "targets: {}",
        serde_json::to_string_pretty(&targets).unwrap()
    );
    for entry in &memory {
        println!("memory: {entry}");
    }
    for entry in &compile {
        println!("compile: {entry}");
    }
    for note in &notes {
        println!("note: {note}");
    }
    let summary = json!({
        "mode": if settings.quick { "quick" } else { "full" },
        "machine": {
            "cores": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
            "load_average_start": load_at_start,
            "load_average_end": load_average(),
            "versions": versions(),
        },
        "measurements": rows,
        "memory": memory,
        "bytes": bytes_rows,
        "compile": compile,
        "ratios": ratios,
        "targets": targets,
        "notes": notes,
        "seconds": started.elapsed().as_secs_f64(),
    });
    let dir = target_dir().join("mqrpc-bench");
    std::fs::create_dir_all(&dir).expect("create target/mqrpc-bench");
    let path = dir.join("summary.json");
    std::fs::write(&path, serde_json::to_string_pretty(&summary).unwrap()).expect("write summary");
    println!(
        "\nwrote {} ({:.0} s)",
        path.display(),
        started.elapsed().as_secs_f64()
    );
}

/// The 1-minute load average, from /proc/loadavg: other work on the machine
/// (compiles) skews every figure, so the summary records it.
fn load_average() -> Option<f64> {
    std::fs::read_to_string("/proc/loadavg")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// First line of `program args` (stdout or stderr), e.g. a version banner.
fn first_line(program: &str, args: &[&str]) -> Option<String> {
    let out = std::process::Command::new(program)
        .args(args)
        .output()
        .ok()?;
    let text = if out.stdout.is_empty() {
        out.stderr
    } else {
        out.stdout
    };
    String::from_utf8_lossy(&text)
        .lines()
        .next()
        .map(|l| l.trim().to_string())
}

fn versions() -> serde_json::Value {
    json!({
        "mosquitto": first_line("mosquitto", &["-h"]),
        "nats-server": first_line("nats-server", &["--version"]),
        "rustc": first_line("rustc", &["-V"]),
    })
}

/// The targets, reported (never asserted): value, bound, met.
fn targets_met(
    rows: &[Row],
    ratios: &serde_json::Value,
    memory: &[serde_json::Value],
) -> serde_json::Value {
    let check = |value: Option<f64>, bound: f64, at_most: bool| match value {
        Some(v) if v.is_finite() => json!({
            "value": v,
            "bound": bound,
            "met": if at_most { v <= bound } else { v >= bound },
        }),
        _ => json!({ "value": null, "bound": bound, "met": null }),
    };
    let embedded_p50 = rows
        .iter()
        .find(|r| r.system == "mqrpc-embedded" && r.scenario == "add" && r.in_flight == 1)
        .map(|r| r.p50_us);
    let memory_value = |measure: &str| {
        memory
            .iter()
            .find(|m| m["measure"] == measure)
            .and_then(|m| m["value"].as_f64())
    };
    json!({
        "mqrpc_vs_raw_p50 <= 1.10": check(ratios["mqrpc_vs_raw_p50"].as_f64(), 1.10, true),
        "mqrpc_vs_raw_throughput_100 >= 0.90": check(ratios["mqrpc_vs_raw_throughput_100"].as_f64(), 0.90, false),
        // Issue 14: batches.
        "mqrpc_vs_raw_throughput_100 >= 3.0": check(ratios["mqrpc_vs_raw_throughput_100"].as_f64(), 3.0, false),
        "mqrpc_vs_raw_throughput_1000 >= 3.0": check(ratios["mqrpc_vs_raw_throughput_1000"].as_f64(), 3.0, false),
        "mqrpc_vs_raw_throughput_100_qos0 >= 2.0": check(ratios["mqrpc_vs_raw_throughput_100_qos0"].as_f64(), 2.0, false),
        "mqrpc_vs_raw_throughput_1000_qos0 >= 2.0": check(ratios["mqrpc_vs_raw_throughput_1000_qos0"].as_f64(), 2.0, false),
        "mqrpc_vs_raw_throughput_100_embedded >= 2.0": check(ratios["mqrpc_vs_raw_throughput_100_embedded"].as_f64(), 2.0, false),
        "embedded_p50_us < 1000": check(embedded_p50, 1000.0, true),
        // Issue 21: chunked calls against the raw floor's bytes per second.
        "mqrpc_vs_raw_bytes_1mib >= 0.8": check(ratios["mqrpc_vs_raw_bytes_1mib"].as_f64(), 0.8, false),
        "mqrpc_vs_raw_bytes_16mib >= 0.8": check(ratios["mqrpc_vs_raw_bytes_16mib"].as_f64(), 0.8, false),
        "rss_bytes_per_in_flight_call <= 1024": check(memory_value("rss_bytes_per_in_flight_call"), 1024.0, true),
        // "No growth": within 1 MiB over the run (allocator noise).
        "rss_growth_bytes_sequential <= 1 MiB": check(memory_value("rss_growth_bytes_sequential"), 1048576.0, true),
    })
}

fn target_dir() -> std::path::PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(Into::into)
        .unwrap_or_else(|| std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"))
}

/// RSS per in-flight mqrpc call (10 000 calls nobody answers), and RSS
/// growth over a long sequential run.
async fn measure_memory(settings: &Settings, url: &str) -> Vec<serde_json::Value> {
    let mut out = Vec::new();
    // In flight: a subscriber in another process takes the requests and
    // never answers, so every call stays pending. (With no subscriber at
    // all, Mosquitto's "no matching subscribers" would end them at once.)
    let port = url.rsplit(':').next().unwrap_or("1883");
    let sink = std::process::Command::new("mosquitto_sub")
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            port,
            "-V",
            "mqttv5",
            "-t",
            "bench-void/#",
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn();
    let mut sink = match sink {
        Ok(child) => child,
        Err(e) => {
            out.push(json!({"system": "mqrpc", "measure": "rss_bytes_per_in_flight_call", "value": null, "note": format!("mosquitto_sub not available: {e}")}));
            return out;
        }
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let conn = mqrpc::Connection::connect_url(url).await.expect("connect");
    let client = systems::BenchClient::with_options(
        &conn,
        mqrpc::ClientOptions::default()
            .prefix("bench-void")
            .timeout(Duration::from_secs(60)),
    )
    .await
    .expect("client");
    tokio::time::sleep(Duration::from_millis(200)).await;
    let before = rss_bytes();
    // The heap bytes the calls in flight hold, counted by the allocator
    // (RSS also depends on what earlier cases freed).
    alloc::start();
    let n = settings.memory_calls;
    // Started at ~10 000 calls/s, below what the broker link sends, so
    // rumqttc's queue never fills: what stays is the cost of a call that
    // waits, not of a burst's transient buffers (RSS keeps its peak).
    let mut calls = Vec::with_capacity(n);
    for i in 0..n {
        let client = client.clone();
        calls.push(tokio::spawn(async move { client.add(i as i64, 1).await }));
        if i % 100 == 99 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let during = rss_bytes();
    let heap = alloc::now();
    // Only a measure of calls in flight if they all still are.
    let ended = calls.iter().filter(|c| c.is_finished()).count();
    for call in &calls {
        call.abort();
    }
    alloc::stop();
    let _ = sink.kill();
    let _ = sink.wait();
    let per_call = during.saturating_sub(before) as f64 / n as f64;
    let value = if ended == 0 {
        json!(per_call)
    } else {
        json!(null)
    };
    out.push(json!({"system": "mqrpc", "measure": "rss_bytes_per_in_flight_call", "in_flight": n, "value": value, "ended_early": ended, "rss_before": before, "rss_during": during}));
    out.push(json!({"system": "mqrpc", "measure": "heap_bytes_per_in_flight_call", "in_flight": n, "value": heap.live as f64 / n as f64, "allocs_per_call": heap.allocs as f64 / n as f64}));
    // Most of that is the call's future (each waiting call is a task):
    // its size is part of the cost of a call in flight.
    let future_bytes = std::mem::size_of_val(&client.add(0, 1));
    out.push(json!({"system": "mqrpc", "measure": "call_future_bytes", "value": future_bytes}));
    drop(calls);
    conn.close().await;

    // Growth: sequential calls against a real server.
    let target = Arc::new(
        systems::Mqrpc::start(url, mqrpc::QoS::AtLeastOnce)
            .await
            .expect("mqrpc"),
    );
    for i in 0..2_000 {
        let _ = target.call(Scenario::Add, i).await;
    }
    let start_rss = rss_bytes();
    for i in 0..settings.growth_calls as i64 {
        let _ = target.call(Scenario::Add, i).await;
    }
    let end_rss = rss_bytes();
    out.push(json!({"system": "mqrpc", "measure": "rss_growth_bytes_sequential", "calls": settings.growth_calls, "value": end_rss as i64 - start_rss as i64, "rss_start": start_rss, "rss_end": end_rss}));
    out
}

fn print_table(rows: &[Row]) {
    println!(
        "\n{:<15} {:<5} {:<8} {:>9} {:>10} {:>10} {:>12} {:>10} {:>6} {:>8}",
        "system",
        "qos",
        "scenario",
        "in_flight",
        "p50_us",
        "p99_us",
        "calls_per_s",
        "calls",
        "lost",
        "msgs/call"
    );
    for r in rows {
        println!(
            "{:<15} {:<5} {:<8} {:>9} {:>10.1} {:>10.1} {:>12.0} {:>10} {:>6} {:>8}",
            r.system,
            r.qos.map(|q| q.to_string()).unwrap_or_else(|| "-".into()),
            r.scenario,
            r.in_flight,
            r.p50_us,
            r.p99_us,
            r.calls_per_s,
            r.calls,
            r.lost,
            r.broker_messages_per_call
                .map(|m| format!("{m:.2}"))
                .unwrap_or_else(|| "-".into())
        );
    }
}
