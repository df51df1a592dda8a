//! A 3-node clustered MQTT v5 broker on loopback: the `mqrpc-cluster-node`
//! binary of `tests/cluster-node` (rmqtt 0.24, broadcast cluster plugin,
//! shared subscriptions), found through `MQRPC_CLUSTER_NODE`. Nodes are
//! started as processes on free ports and killed by their PID.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rumqttc::v5::mqttbytes::v5::PublishProperties;

use crate::raw::RawPeer;

/// Path of the `mqrpc-cluster-node` binary (`.ci/run` builds it and sets it).
pub const CLUSTER_NODE_ENV: &str = "MQRPC_CLUSTER_NODE";
/// Set to `1` (CI does) to fail instead of skipping when the binary is missing.
pub const REQUIRE_CLUSTER_ENV: &str = "MQRPC_REQUIRE_CLUSTER";

/// Nodes in a cluster.
pub const NODES: usize = 3;

/// How long a node waits for a peer's gRPC answer.
pub const GRPC_TIMEOUT_MS: u64 = 3_000;

/// One node process.
struct Node {
    child: Option<Child>,
    mqtt_port: u16,
}

/// Three broker nodes that form one cluster; every node still running is
/// killed (by its PID) when this is dropped.
pub struct Cluster {
    nodes: Vec<Node>,
    dir: tempfile::TempDir,
    /// One cluster at a time in a test process: fifteen nodes on a small
    /// machine time out each other's gRPC calls, and a node's circuit
    /// breaker then hides its peers' subscribers.
    turn: Option<tokio::sync::MutexGuard<'static, ()>>,
}

static TURN: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The node binary, or `None` with a notice when `MQRPC_CLUSTER_NODE` is
/// unset or names no file. Panics instead when `MQRPC_REQUIRE_CLUSTER=1`.
pub fn cluster_node_binary() -> Option<PathBuf> {
    crate::init_tracing();
    let path = std::env::var_os(CLUSTER_NODE_ENV).map(PathBuf::from);
    match path {
        Some(path) if path.is_file() => Some(path),
        other => {
            let why = match other {
                Some(path) => format!("{CLUSTER_NODE_ENV}={} is not a file", path.display()),
                None => format!("{CLUSTER_NODE_ENV} is not set"),
            };
            if std::env::var(REQUIRE_CLUSTER_ENV).as_deref() == Ok("1") {
                panic!("{why} and {REQUIRE_CLUSTER_ENV}=1: build tests/cluster-node (cargo build --release --locked --manifest-path tests/cluster-node/Cargo.toml) and point {CLUSTER_NODE_ENV} at tests/cluster-node/target/release/mqrpc-cluster-node");
            }
            eprintln!("NOTICE: {why}; skipping this cluster case (set {REQUIRE_CLUSTER_ENV}=1 to fail instead)");
            None
        }
    }
}

impl Cluster {
    /// Starts 3 nodes on free loopback ports and waits until each node
    /// delivers to subscribers on every other node. `None` (with a notice)
    /// when the binary is missing, see [`cluster_node_binary`].
    pub async fn start() -> Option<Cluster> {
        let binary = cluster_node_binary()?;
        let turn = TURN.lock().await;
        let mut last_error = String::new();
        // A free port may be taken by someone else before a node binds it.
        for _ in 0..3 {
            match Self::start_once(&binary).await {
                Ok(mut cluster) => {
                    cluster.turn = Some(turn);
                    return Some(cluster);
                }
                Err(e) => last_error = e,
            }
        }
        panic!("the cluster did not start: {last_error}");
    }

    async fn start_once(binary: &std::path::Path) -> Result<Cluster, String> {
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let mut ports = Vec::new();
        // Held until all are chosen, so the six ports differ.
        let mut holders = Vec::new();
        for _ in 0..2 * NODES {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
            ports.push(listener.local_addr().map_err(|e| e.to_string())?.port());
            holders.push(listener);
        }
        drop(holders);
        let (mqtt_ports, grpc_ports) = ports.split_at(NODES);
        let peers = grpc_ports
            .iter()
            .enumerate()
            .map(|(i, port)| format!("{}@127.0.0.1:{port}", i + 1))
            .collect::<Vec<_>>()
            .join(",");
        let mut cluster = Cluster {
            nodes: Vec::new(),
            dir,
            turn: None,
        };
        for i in 0..NODES {
            let log = std::fs::File::create(cluster.log_path(i)).map_err(|e| e.to_string())?;
            let child = Command::new(binary)
                .args(["--id", &(i + 1).to_string()])
                .args(["--mqtt", &format!("127.0.0.1:{}", mqtt_ports[i])])
                .args(["--grpc", &format!("127.0.0.1:{}", grpc_ports[i])])
                .args(["--peers", &peers])
                .args(["--log", "warn"])
                // rmqtt's default is 60 s; 1 s made calls between nodes of
                // a loaded machine time out, opening the breaker (hiding
                // that peer's subscribers for 10 s). The cost: after a kill,
                // publishes wait up to this long until the breaker opens.
                .args(["--grpc-timeout-ms", &GRPC_TIMEOUT_MS.to_string()])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .map_err(|e| format!("spawn {}: {e}", binary.display()))?;
            cluster.nodes.push(Node {
                child: Some(child),
                mqtt_port: mqtt_ports[i],
            });
        }
        cluster.wait_listening()?;
        cluster.wait_connected().await?;
        Ok(cluster)
    }

    /// Every node's MQTT port accepts TCP (a node opens gRPC first).
    fn wait_listening(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            for i in 0..NODES {
                if let Some(status) = self.nodes[i]
                    .child
                    .as_mut()
                    .and_then(|c| c.try_wait().ok()?)
                {
                    return Err(format!(
                        "node {} exited with {status}: {}",
                        i + 1,
                        self.log(i)
                    ));
                }
            }
            if (0..NODES).all(|i| std::net::TcpStream::connect(("127.0.0.1", self.port(i))).is_ok())
            {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "the nodes did not listen within 30 s: {}",
                    self.logs()
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Publishes from every node to a subscriber on every other node until
    /// all of these arrive: an open port is no proof that the node's links
    /// to its peers are up (the first messages across may be lost).
    async fn wait_connected(&self) -> Result<(), String> {
        let topic = |to: usize| format!("_mqrpc_cluster_ready/{}/{to}", std::process::id());
        let mut peers = Vec::new();
        for i in 0..NODES {
            peers.push(RawPeer::connect(self.port(i), &[&topic(i)]).await);
        }
        let mut missing: Vec<(usize, usize)> = (0..NODES)
            .flat_map(|from| {
                (0..NODES)
                    .filter(move |&to| to != from)
                    .map(move |to| (from, to))
            })
            .collect();
        let deadline = Instant::now() + Duration::from_secs(30);
        while !missing.is_empty() {
            if Instant::now() > deadline {
                return Err(format!(
                    "no delivery across {missing:?} (from, to) within 30 s: {}",
                    self.logs()
                ));
            }
            for &(from, to) in &missing {
                peers[from]
                    .publish(&topic(to), from.to_string(), PublishProperties::default())
                    .await;
            }
            let mut arrived = Vec::new();
            for (to, peer) in peers.iter_mut().enumerate() {
                while let Some(publish) = peer.next_publish(Duration::from_millis(300)).await {
                    if let Ok(from) = std::str::from_utf8(&publish.payload).unwrap_or("").parse() {
                        arrived.push((from, to));
                    }
                }
            }
            missing.retain(|pair| !arrived.contains(pair));
        }
        Ok(())
    }

    /// The MQTT port of node `i` (0, 1 or 2).
    pub fn port(&self, i: usize) -> u16 {
        self.nodes[i].mqtt_port
    }

    /// `mqtt://127.0.0.1:<port>` of node `i` alone.
    pub fn url(&self, i: usize) -> String {
        format!("mqtt://127.0.0.1:{}", self.port(i))
    }

    /// Every node, node `i` first, then the others in order:
    /// `mqtt://127.0.0.1:<i>,127.0.0.1:<j>,127.0.0.1:<k>`, for a
    /// connection that moves to another node when its node fails.
    pub fn urls_from(&self, i: usize) -> String {
        let others = (0..NODES)
            .filter(|&j| j != i)
            .map(|j| format!(",127.0.0.1:{}", self.port(j)))
            .collect::<String>();
        format!("{}{others}", self.url(i))
    }

    /// Kills node `i` with SIGKILL (by the PID this cluster started) and
    /// waits for it to exit.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut child) = self.nodes[i].child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn log_path(&self, i: usize) -> PathBuf {
        self.dir.path().join(format!("node{}.log", i + 1))
    }

    /// What node `i` logged (warnings and errors) so far.
    pub fn log(&self, i: usize) -> String {
        std::fs::read_to_string(self.log_path(i)).unwrap_or_default()
    }

    fn logs(&self) -> String {
        (0..NODES)
            .map(|i| format!("\n--- node {} ---\n{}", i + 1, self.log(i)))
            .collect()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for i in 0..self.nodes.len() {
            self.kill(i);
        }
        if std::thread::panicking() {
            // What the nodes said last (warnings and errors), for the failure.
            for i in 0..self.nodes.len() {
                let log = self.log(i);
                let lines: Vec<&str> = log.lines().collect();
                let tail = lines[lines.len().saturating_sub(30)..].join("\n");
                eprintln!(
                    "--- node {} log, last {} of {} lines ---\n{tail}",
                    i + 1,
                    lines.len().min(30),
                    lines.len()
                );
            }
        }
        // The next cluster's turn, once these nodes are gone.
        self.turn.take();
    }
}
