//! One node of a clustered MQTT v5 broker for mqrpc's cluster tests: rmqtt
//! 0.24 with a TCP listener (TCP_NODELAY on, anonymous clients allowed),
//! the broadcast cluster plugin and the shared-subscription plugin.
//!
//! ```text
//! mqrpc-cluster-node --id 1 --mqtt 127.0.0.1:21881 --grpc 127.0.0.1:21981 \
//!     --peers 1@127.0.0.1:21981,2@127.0.0.1:21982,3@127.0.0.1:21983 \
//!     [--grpc-timeout-ms 1000] [--breaker-open-ms 10000] [--log warn]
//! ```
//!
//! `--peers` lists every node's gRPC address, this one's included. Logs go
//! to stderr. The node runs until it is killed.

use std::net::SocketAddr;
use std::time::Duration;

use rmqtt::context::{CircuitBreakerConfig, ServerContext, TimeBasedWindowConfig};
use rmqtt::net::Builder;
use rmqtt::server::MqttServer;

/// What the command line says.
struct Args {
    id: u64,
    mqtt: SocketAddr,
    grpc: SocketAddr,
    peers: Vec<String>,
    grpc_timeout: Duration,
    breaker_open: Duration,
    log: log::LevelFilter,
}

const USAGE: &str = "usage: mqrpc-cluster-node --id N --mqtt HOST:PORT --grpc HOST:PORT \
--peers ID@HOST:PORT,... [--grpc-timeout-ms MS] [--breaker-open-ms MS] \
[--log off|error|warn|info|debug]";

fn parse_args(mut argv: impl Iterator<Item = String>) -> Result<Args, String> {
    let (mut id, mut mqtt, mut grpc, mut peers) = (None, None, None, None);
    let mut grpc_timeout = Duration::from_secs(1);
    let mut breaker_open = Duration::from_secs(10);
    let mut log = log::LevelFilter::Warn;
    while let Some(flag) = argv.next() {
        let mut value = || argv.next().ok_or_else(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--id" => {
                let v = value()?;
                id = Some(v.parse().map_err(|_| format!("--id {v}: not a node id"))?);
            }
            "--mqtt" => {
                let v = value()?;
                mqtt = Some(
                    v.parse()
                        .map_err(|_| format!("--mqtt {v}: not HOST:PORT"))?,
                );
            }
            "--grpc" => {
                let v = value()?;
                grpc = Some(
                    v.parse()
                        .map_err(|_| format!("--grpc {v}: not HOST:PORT"))?,
                );
            }
            "--peers" => {
                let v = value()?;
                let list: Vec<String> = v.split(',').map(|p| p.trim().to_string()).collect();
                for peer in &list {
                    let (node, addr) = peer
                        .split_once('@')
                        .ok_or_else(|| format!("--peers: `{peer}` is not ID@HOST:PORT"))?;
                    node.parse::<u64>()
                        .map_err(|_| format!("--peers: `{peer}` has no numeric id"))?;
                    addr.parse::<SocketAddr>()
                        .map_err(|_| format!("--peers: `{peer}` has no HOST:PORT"))?;
                }
                peers = Some(list);
            }
            "--grpc-timeout-ms" => {
                let v = value()?;
                let ms: u64 = v
                    .parse()
                    .map_err(|_| format!("--grpc-timeout-ms {v}: not a number"))?;
                grpc_timeout = Duration::from_millis(ms.max(1));
            }
            "--breaker-open-ms" => {
                let v = value()?;
                let ms: u64 = v
                    .parse()
                    .map_err(|_| format!("--breaker-open-ms {v}: not a number"))?;
                breaker_open = Duration::from_millis(ms.max(1));
            }
            "--log" => {
                let v = value()?;
                log = v.parse().map_err(|_| format!("--log {v}: not a level"))?;
            }
            "-h" | "--help" => return Err(USAGE.to_string()),
            other => return Err(format!("unknown argument `{other}`\n{USAGE}")),
        }
    }
    let missing = |name: &str| format!("{name} is required\n{USAGE}");
    let args = Args {
        id: id.ok_or_else(|| missing("--id"))?,
        mqtt: mqtt.ok_or_else(|| missing("--mqtt"))?,
        grpc: grpc.ok_or_else(|| missing("--grpc"))?,
        peers: peers.ok_or_else(|| missing("--peers"))?,
        grpc_timeout,
        breaker_open,
        log,
    };
    let me = format!("{}@{}", args.id, args.grpc);
    if !args.peers.contains(&me) {
        return Err(format!("--peers must list this node as `{me}`"));
    }
    Ok(args)
}

/// Writes log records to stderr, one a line.
struct StderrLog;

impl log::Log for StderrLog {
    fn enabled(&self, _: &log::Metadata) -> bool {
        true
    }
    fn log(&self, record: &log::Record) {
        eprintln!("{} {} {}", record.level(), record.target(), record.args());
    }
    fn flush(&self) {}
}

fn main() {
    let args = match parse_args(std::env::args().skip(1)) {
        Ok(args) => args,
        Err(message) => {
            eprintln!("{message}");
            std::process::exit(2);
        }
    };
    log::set_logger(&StderrLog).expect("one logger");
    log::set_max_level(args.log);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    if let Err(e) = runtime.block_on(run(args)) {
        eprintln!("mqrpc-cluster-node: {e}");
        std::process::exit(1);
    }
}

async fn run(args: Args) -> rmqtt::Result<()> {
    let peers = args
        .peers
        .iter()
        .map(|p| format!("\"{p}\""))
        .collect::<Vec<_>>()
        .join(", ");
    let timeout_ms = args.grpc_timeout.as_millis();
    let cluster_config =
        format!("node_grpc_addrs = [{peers}]\nnode_grpc_client_timeout = \"{timeout_ms}ms\"\n");
    // rmqtt's default breaker needs 10 failed calls within 45 s before it
    // stops waiting for a dead peer: at one call per gRPC timeout that never
    // happens, and every publish waits the timeout. Three failures open it
    // for `--breaker-open-ms`.
    let breaker = CircuitBreakerConfig {
        minimum_number_of_calls: 3,
        window: TimeBasedWindowConfig {
            sliding_window_duration: Duration::from_secs(10),
            ..TimeBasedWindowConfig::default()
        }
        .into(),
        wait_duration_in_open: args.breaker_open,
        ..CircuitBreakerConfig::default()
    };
    let scx = ServerContext::new()
        .node_id(args.id)
        // The load average of a shared test machine is no reason to refuse
        // connections.
        .busy_check_enable(false)
        .circuit_breaker_config(breaker)
        .plugins_config_map_add("rmqtt-cluster-broadcast", cluster_config)
        .plugins_config_map_add("rmqtt-shared-subscription", "strategy = \"round_robin\"\n")
        .build()
        .await;
    scx.node
        .start_grpc_server(scx.clone(), args.grpc, true, false);
    // Started now (default_startup) and not stoppable at run time (immutable).
    rmqtt_cluster_broadcast::register(&scx, true, true).await?;
    rmqtt_shared_subscription::register(&scx, true, false).await?;
    let listener = Builder::new()
        .name("tcp")
        .laddr(args.mqtt)
        .nodelay(true)
        .allow_anonymous(true)
        .reuseaddr(Some(true))
        .bind()?
        .tcp()?;
    eprintln!(
        "mqrpc-cluster-node {} listening on {} (gRPC {})",
        args.id, args.mqtt, args.grpc
    );
    MqttServer::new(scx).listener(listener).build().run().await
}
