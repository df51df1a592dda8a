//! `--profile mqrpc|raw-rumqttc [--calls N] [--qos 0|1]`: N sequential
//! `add` calls through Mosquitto, client and server in this process, on a
//! single-threaded runtime so the work is the same from run to run. Prints
//! time and allocations per call as one JSON line.
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
        alloc::start();
        let started = Instant::now();
        for i in 0..calls {
            target.call(Scenario::Add, i).await.expect("call");
        }
        let elapsed = started.elapsed();
        let counts = alloc::stop();
        let per = |x: u64| x as f64 / calls as f64;
        println!(
            "{}",
            json!({
                "profile": system,
                "qos": qos,
                "calls": calls,
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
