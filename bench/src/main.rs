//! `cargo run --release -p mqrpc-bench [-- --quick]`
//!
//! Starts its own brokers on loopback (Mosquitto with TCP_NODELAY,
//! nats-server, the embedded broker), measures every system on the same
//! calls, prints a table and writes `target/mqrpc-bench/summary.json`.

mod brokers;
mod measure;
mod systems;

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
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
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
        depths: vec![1, 10, 100, 1000],
        memory_calls: 10_000,
        growth_calls: if quick { 20_000 } else { 200_000 },
        rounds: value_of("--rounds")
            .and_then(|r| r.parse().ok())
            .unwrap_or(if quick { 1 } else { 3 }),
    };
    let started = Instant::now();
    let mut rows: Vec<Row> = Vec::new();
    let mut notes: Vec<String> = Vec::new();

    let mosquitto = brokers::mosquitto();
    let nats = brokers::nats_server();
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

    print_table(&rows);
    let find = |system: &str, qos: u8, depth: usize| {
        rows.iter().find(|r| {
            r.system == system && r.qos == Some(qos) && r.scenario == "add" && r.in_flight == depth
        })
    };
    let ratio = |f: fn(&Row) -> f64, qos: u8, depth: usize| match (
        find("mqrpc", qos, depth),
        find("raw-rumqttc", qos, depth),
    ) {
        (Some(a), Some(b)) => json!(f(a) / f(b)),
        _ => json!(null),
    };
    let ratios = json!({
        "mqrpc_vs_raw_p50": ratio(|r| r.p50_us, 1, 1),
        "mqrpc_vs_raw_throughput_100": ratio(|r| r.calls_per_s, 1, 100),
        "mqrpc_vs_raw_p50_qos0": ratio(|r| r.p50_us, 0, 1),
        "mqrpc_vs_raw_throughput_100_qos0": ratio(|r| r.calls_per_s, 0, 100),
    });
    println!(
        "\nratios (add, QoS 1 unless named): {}",
        serde_json::to_string_pretty(&ratios).unwrap()
    );
    for entry in &memory {
        println!("memory: {entry}");
    }
    for note in &notes {
        println!("note: {note}");
    }
    let summary = json!({
        "mode": if settings.quick { "quick" } else { "full" },
        "machine": { "cores": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0) },
        "measurements": rows,
        "memory": memory,
        "ratios": ratios,
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

fn target_dir() -> std::path::PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(Into::into)
        .unwrap_or_else(|| std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"))
}

/// RSS per in-flight mqrpc call (10 000 calls nobody answers), and RSS
/// growth over a long sequential run.
async fn measure_memory(settings: &Settings, url: &str) -> Vec<serde_json::Value> {
    let mut out = Vec::new();
    // In flight: no server on this prefix, so every call stays pending.
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
    let n = settings.memory_calls;
    let calls: Vec<_> = (0..n)
        .map(|i| {
            let client = client.clone();
            tokio::spawn(async move { client.add(i as i64, 1).await })
        })
        .collect();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let during = rss_bytes();
    for call in &calls {
        call.abort();
    }
    let per_call = during.saturating_sub(before) as f64 / n as f64;
    out.push(json!({"system": "mqrpc", "measure": "rss_bytes_per_in_flight_call", "in_flight": n, "value": per_call, "rss_before": before, "rss_during": during}));
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
        "\n{:<15} {:<5} {:<8} {:>9} {:>10} {:>10} {:>12} {:>10} {:>6}",
        "system",
        "qos",
        "scenario",
        "in_flight",
        "p50_us",
        "p99_us",
        "calls_per_s",
        "calls",
        "lost"
    );
    for r in rows {
        println!(
            "{:<15} {:<5} {:<8} {:>9} {:>10.1} {:>10.1} {:>12.0} {:>10} {:>6}",
            r.system,
            r.qos.map(|q| q.to_string()).unwrap_or_else(|| "-".into()),
            r.scenario,
            r.in_flight,
            r.p50_us,
            r.p99_us,
            r.calls_per_s,
            r.calls,
            r.lost
        );
    }
}
