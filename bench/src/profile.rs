//! `--profile mqrpc|raw-rumqttc [--calls N] [--qos 0|1] [--in-flight D]`:
//! N `add` calls through Mosquitto (D at a time, 1 by default), client and
//! server in this process, on a single-threaded runtime so the work is the
//! same from run to run. Prints time, allocations and (mqrpc) PUBLISH
//! packets per call as one JSON line.
//!
//! Instruction counts come from running this mode under
//! `valgrind --tool=callgrind` twice with different N (see
//! `bench/profile.sh`): the difference divided by the difference in calls
//! is the cost of one call, start-up excluded.

use std::sync::Arc;
use std::time::Instant;

use serde_json::json;

use crate::systems::{self, Scenario, Target};
use crate::{alloc, brokers};

pub fn main(args: &[String]) {
    let value_of = |flag: &str| {
        args.iter()
            .position(|a| a == flag)
            .and_then(|i| args.get(i + 1).cloned())
    };
    let system = value_of("--profile").unwrap_or_else(|| "mqrpc".into());
    let calls: i64 = value_of("--calls")
        .and_then(|n| n.parse().ok())
        .unwrap_or(10_000);
    let qos: u8 = value_of("--qos").and_then(|q| q.parse().ok()).unwrap_or(1);
    let in_flight: i64 = value_of("--in-flight")
        .and_then(|n| n.parse().ok())
        .unwrap_or(1)
        .max(1);
    let warm_up = 500;

    let mosquitto = brokers::mosquitto().expect("mosquitto");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let target: Arc<dyn Target> = match system.as_str() {
            "mqrpc" => {
                let qos = if qos == 0 {
                    mqrpc::QoS::AtMostOnce
                } else {
                    mqrpc::QoS::AtLeastOnce
                };
                let url = format!("mqtt://127.0.0.1:{}", mosquitto.port);
                Arc::new(systems::Mqrpc::start(&url, qos).await.expect("mqrpc"))
            }
            "raw-rumqttc" | "raw" => {
                let qos = if qos == 0 {
                    rumqttc::v5::mqttbytes::QoS::AtMostOnce
                } else {
                    rumqttc::v5::mqttbytes::QoS::AtLeastOnce
                };
                Arc::new(
                    systems::Raw::start(mosquitto.port, qos)
                        .await
                        .expect("raw-rumqttc"),
                )
            }
            other => panic!("--profile {other}: expected mqrpc or raw-rumqttc"),
        };
        for i in 0..warm_up {
            target.call(Scenario::Add, i).await.expect("warm-up call");
        }
        let publishes_before = target.publishes();
        alloc::start();
        let started = Instant::now();
        if in_flight == 1 {
            for i in 0..calls {
                target.call(Scenario::Add, i).await.expect("call");
            }
        } else {
            let workers: Vec<_> = (0..in_flight)
                .map(|w| {
                    let target = target.clone();
                    tokio::spawn(async move {
                        let mut i = w;
                        while i < calls {
                            target.call(Scenario::Add, i).await.expect("call");
                            i += in_flight;
                        }
                    })
                })
                .collect();
            for worker in workers {
                worker.await.expect("worker");
            }
        }
        let elapsed = started.elapsed();
        let counts = alloc::stop();
        let publishes = match (publishes_before, target.publishes()) {
            (Some(before), Some(after)) => Some((after - before) as f64 / calls as f64),
            _ => target.fixed_publishes_per_call(),
        };
        let per = |x: u64| x as f64 / calls as f64;
        println!(
            "{}",
            json!({
                "profile": system,
                "qos": qos,
                "calls": calls,
                "in_flight": in_flight,
                "publishes_per_call": publishes,
                "us_per_call": elapsed.as_secs_f64() * 1e6 / calls as f64,
                "allocs_per_call": per(counts.allocs),
                "reallocs_per_call": per(counts.reallocs),
                "alloc_bytes_per_call": per(counts.bytes),
            })
        );
    });
    drop(runtime);
    drop(mosquitto);
}
