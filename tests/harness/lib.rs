//! Test harness: real brokers only. Starts Mosquitto (when installed) on a
//! free loopback port with `set_tcp_nodelay true`, or the embedded broker,
//! and a test service to call.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

pub mod batch;
pub mod chaos;
pub mod cluster;
pub mod corpus;
/// The scripted broker of the session loop's own tests (`mqrpc-link`),
/// shared with the fault tests here.
#[path = "../../mqrpc-link/tests/support/fake_broker.rs"]
pub mod fake_broker;
pub mod meta;
pub mod netns;
pub mod proxy;
pub mod raw;
pub mod security;
pub mod tally;

/// Set to `1` (CI does) to fail instead of skipping when Mosquitto is missing.
pub const REQUIRE_MOSQUITTO_ENV: &str = "MQRPC_REQUIRE_MOSQUITTO";

/// A broker for one test; stops when dropped.
pub struct TestBroker {
    url: String,
    port: u16,
    kind: &'static str,
    _mosquitto: Option<Mosquitto>,
    _embedded: Option<mqrpc::EmbeddedBroker>,
}

impl TestBroker {
    /// `mqtt://127.0.0.1:<port>`.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The TCP port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `mosquitto` or `embedded`.
    pub fn kind(&self) -> &'static str {
        self.kind
    }

    /// A new connection to this broker.
    pub async fn connect(&self) -> mqrpc::Connection {
        mqrpc::Connection::connect_url(&self.url)
            .await
            .unwrap_or_else(|e| panic!("connect to {} broker: {e}", self.kind))
    }

    /// A fresh [`Calc`] served on a new connection, with the connection
    /// (dropping the handle leaves it serving while the connection lives)
    /// and the `Calc` whose counters the server moves.
    pub async fn serve_calc(&self) -> (mqrpc::Connection, Calc) {
        self.serve_calc_with(mqrpc::ServerOptions::default()).await
    }

    /// A calculator client on a new connection, with this call timeout.
    pub async fn client(&self, timeout: Duration) -> CalculatorClient {
        let conn = self.connect().await;
        CalculatorClient::with_options(&conn, mqrpc::ClientOptions::default().timeout(timeout))
            .await
            .unwrap()
    }

    /// [`serve_calc`](Self::serve_calc) with these server options.
    pub async fn serve_calc_with(
        &self,
        options: mqrpc::ServerOptions,
    ) -> (mqrpc::Connection, Calc) {
        let conn = self.connect().await;
        let calc = Calc::default();
        let _handle = CalculatorServer::new(calc.clone())
            .serve_with(&conn, options)
            .await
            .unwrap();
        (conn, calc)
    }
}

/// The embedded broker, always available.
pub async fn embedded() -> TestBroker {
    init_tracing();
    let broker = mqrpc::EmbeddedBroker::start()
        .await
        .expect("start embedded broker");
    TestBroker {
        url: broker.url(),
        port: broker.addr().port(),
        kind: "embedded",
        _mosquitto: None,
        _embedded: Some(broker),
    }
}

/// Mosquitto on a free port, or `None` (with a notice) when the binary is
/// missing. Panics instead when `MQRPC_REQUIRE_MOSQUITTO=1`.
pub fn mosquitto() -> Option<TestBroker> {
    if !mosquitto_available() {
        return None;
    }
    let mosquitto = Mosquitto::start(&[]).expect("start mosquitto");
    Some(TestBroker {
        url: format!("mqtt://127.0.0.1:{}", mosquitto.port),
        port: mosquitto.port,
        kind: "mosquitto",
        _mosquitto: Some(mosquitto),
        _embedded: None,
    })
}

/// True when Mosquitto is installed; false (with a notice) when it is
/// missing, so the caller skips its case. Panics instead when
/// `MQRPC_REQUIRE_MOSQUITTO=1`.
pub fn mosquitto_available() -> bool {
    init_tracing();
    if !mosquitto_installed() {
        if std::env::var(REQUIRE_MOSQUITTO_ENV).as_deref() == Ok("1") {
            panic!("mosquitto is not on PATH and {REQUIRE_MOSQUITTO_ENV}=1: install it (apt-get install mosquitto mosquitto-clients)");
        }
        eprintln!("NOTICE: mosquitto is not installed; skipping this Mosquitto case (set {REQUIRE_MOSQUITTO_ENV}=1 to fail instead)");
        return false;
    }
    true
}

fn mosquitto_installed() -> bool {
    Command::new("mosquitto")
        .arg("-h")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok()
}

/// True when `mosquitto_rr` (package mosquitto-clients) is on PATH.
pub fn mosquitto_rr_installed() -> bool {
    Command::new("mosquitto_rr")
        .arg("--help")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok()
}

/// A Mosquitto process we started, killed (by its PID) when dropped.
pub struct Mosquitto {
    child: Child,
    pub port: u16,
    dir: tempfile::TempDir,
}

impl Mosquitto {
    /// Starts Mosquitto on a free loopback port, with extra config lines.
    pub fn start(extra_config: &[&str]) -> std::io::Result<Mosquitto> {
        let mut last_error = None;
        for _ in 0..5 {
            let port = free_port()?;
            match Self::start_on(port, extra_config) {
                Ok(m) => return Ok(m),
                Err(e) => last_error = Some(e),
            }
        }
        Err(last_error.unwrap())
    }

    /// Starts Mosquitto on a given port (e.g. to restart it where it was).
    pub fn start_on(port: u16, extra_config: &[&str]) -> std::io::Result<Mosquitto> {
        // Every listener, the extra ones (e.g. TLS) included, must be open.
        let ports: Vec<u16> = std::iter::once(port)
            .chain(extra_config.iter().filter_map(|line| {
                let mut words = line.split_whitespace();
                (words.next() == Some("listener")).then(|| words.next()?.parse().ok())?
            }))
            .collect();
        let up = move || {
            Ok(ports
                .iter()
                .all(|p| std::net::TcpStream::connect(("127.0.0.1", *p)).is_ok()))
        };
        let listener = format!("{port} 127.0.0.1");
        let (child, dir) =
            launch_mosquitto(&listener, extra_config, Command::new("mosquitto"), up)?;
        Ok(Mosquitto { child, port, dir })
    }

    /// What Mosquitto logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("mosquitto.log")).unwrap_or_default()
    }

    /// The directory holding its config (for ACL or password files).
    pub fn dir(&self) -> PathBuf {
        self.dir.path().to_path_buf()
    }

    /// Kills the process and waits for it.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Writes a Mosquitto config into a new directory (`listener <listener>`,
/// the harness's settings, then `extra_config`), runs `mosquitto` on it
/// through `command` (`mosquitto`, or a wrapper such as `ip netns exec`),
/// and returns once `up` says it listens; an error with its log if it
/// exits first or does not listen within 10 s. Its stderr goes to
/// `mosquitto.log` in the directory.
pub fn launch_mosquitto(
    listener: &str,
    extra_config: &[&str],
    mut command: Command,
    mut up: impl FnMut() -> std::io::Result<bool>,
) -> std::io::Result<(Child, tempfile::TempDir)> {
    let dir = tempfile::tempdir()?;
    let config = dir.path().join("mosquitto.conf");
    let mut text = format!(
        "listener {listener}\nallow_anonymous true\nset_tcp_nodelay true\npersistence false\nlog_dest stderr\nlog_type error\nlog_type warning\n"
    );
    for line in extra_config {
        text.push_str(line);
        text.push('\n');
    }
    std::fs::write(&config, text)?;
    let log_path = dir.path().join("mosquitto.log");
    let log = std::fs::File::create(&log_path)?;
    let mut child = command
        .arg("-c")
        .arg(&config)
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()?;
    let deadline = Instant::now() + Duration::from_secs(10);
    let failed = |child: &mut Child, error: String| {
        let _ = child.kill();
        let _ = child.wait();
        let log = std::fs::read_to_string(&log_path).unwrap_or_default();
        Err(std::io::Error::other(format!("{error}: {log}")))
    };
    loop {
        match up() {
            Ok(true) => return Ok((child, dir)),
            Ok(false) => {}
            Err(e) => return failed(&mut child, e.to_string()),
        }
        if let Some(status) = child.try_wait()? {
            return failed(&mut child, format!("mosquitto exited with {status}"));
        }
        if Instant::now() > deadline {
            return failed(&mut child, "mosquitto did not listen within 10 s".into());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A port nobody listens on right now.
pub fn free_port() -> std::io::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// Logs to the test output when `RUST_LOG` is set.
pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
}

/// The typed error of the test service.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub enum MathError {
    DivideByZero,
    NotFinite { value: f64 },
}

/// The service every test calls.
#[mqrpc::service]
pub trait Calculator {
    /// Adds two numbers.
    async fn add(&self, a: i64, b: i64) -> i64;
    /// Divides, with a typed error.
    async fn divide(&self, a: f64, b: f64) -> Result<f64, MathError>;
    /// Returns its argument.
    async fn echo(&self, text: String) -> String;
    /// Sleeps, then returns its argument.
    async fn sleep_ms(&self, ms: u64) -> u64;
    /// Never returns: a server that never answers.
    async fn hang(&self);
    /// Panics.
    async fn explode(&self, message: String) -> u32;
    /// Counts calls; returns the count after this one.
    async fn count(&self) -> u64;
    /// The handler's remaining budget in ms, as `mqrpc::context` reports it.
    async fn budget_ms(&self) -> Option<u64>;
    /// Sleeps `ms` while counted in [`Stats`] (started, active, finished,
    /// stopped before the end).
    async fn linger(&self, ms: u64) -> u64;
    /// `add` at QoS 0, whatever the client's QoS.
    #[mqrpc(qos = 0)]
    async fn add_qos0(&self, a: i64, b: i64) -> i64;
    /// `n` copies of `byte`: a small request with a big answer.
    async fn repeat(&self, byte: u8, n: u32) -> Vec<u8>;
    /// Fire and forget: adds `n` to the `calls` counter.
    #[mqrpc(oneway)]
    async fn bump(&self, n: u64);
    /// A stream of `0..n`, produced as fast as the caller takes them,
    /// counted in [`Stats::produced`]; a stream dropped before its end
    /// counts in [`Stats::stopped`].
    async fn count_up(&self, n: u64) -> mqrpc::Stream<u64>;
}

/// A second service, for tests that need two (discovery, two servers under
/// one instance id).
#[mqrpc::service]
pub trait Greeter {
    /// `Hello, <name>!`
    async fn hello(&self, name: String) -> String;
}

/// The [`Greeter`] every test serves.
pub struct English;

impl Greeter for English {
    async fn hello(&self, name: String) -> String {
        format!("Hello, {name}!")
    }
}

/// What the `linger` handlers did.
#[derive(Default, Debug)]
pub struct Stats {
    pub started: AtomicU64,
    pub finished: AtomicU64,
    /// Dropped before the end: cancelled or past the deadline.
    pub stopped: AtomicU64,
    pub active: AtomicU64,
    pub max_active: AtomicU64,
    /// Items `count_up` streams produced.
    pub produced: AtomicU64,
}

/// The test implementation; `calls` counts every `count` call.
#[derive(Clone, Default)]
pub struct Calc {
    pub calls: Arc<AtomicU64>,
    pub stats: Arc<Stats>,
}

/// Counts a `linger` handler as stopped if dropped before it finished.
struct LingerGuard(Arc<Stats>, bool);

impl Drop for LingerGuard {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Ordering::SeqCst);
        if self.1 {
            self.0.finished.fetch_add(1, Ordering::SeqCst);
        } else {
            self.0.stopped.fetch_add(1, Ordering::SeqCst);
        }
    }
}

impl Calculator for Calc {
    async fn add(&self, a: i64, b: i64) -> i64 {
        a.wrapping_add(b)
    }

    async fn divide(&self, a: f64, b: f64) -> Result<f64, MathError> {
        if b == 0.0 {
            return Err(MathError::DivideByZero);
        }
        let value = a / b;
        if value.is_finite() {
            Ok(value)
        } else {
            Err(MathError::NotFinite { value })
        }
    }

    async fn echo(&self, text: String) -> String {
        text
    }

    async fn sleep_ms(&self, ms: u64) -> u64 {
        tokio::time::sleep(Duration::from_millis(ms)).await;
        ms
    }

    async fn hang(&self) {
        std::future::pending::<()>().await
    }

    async fn explode(&self, message: String) -> u32 {
        panic!("{message}")
    }

    async fn count(&self) -> u64 {
        self.calls.fetch_add(1, Ordering::SeqCst) + 1
    }

    async fn budget_ms(&self) -> Option<u64> {
        mqrpc::context::remaining().map(|d| d.as_millis() as u64)
    }

    async fn linger(&self, ms: u64) -> u64 {
        let stats = &self.stats;
        stats.started.fetch_add(1, Ordering::SeqCst);
        let active = stats.active.fetch_add(1, Ordering::SeqCst) + 1;
        stats.max_active.fetch_max(active, Ordering::SeqCst);
        let mut guard = LingerGuard(stats.clone(), false);
        tokio::time::sleep(Duration::from_millis(ms)).await;
        guard.1 = true;
        ms
    }

    async fn add_qos0(&self, a: i64, b: i64) -> i64 {
        a.wrapping_add(b)
    }

    async fn repeat(&self, byte: u8, n: u32) -> Vec<u8> {
        vec![byte; n.min(1 << 24) as usize]
    }

    async fn bump(&self, n: u64) {
        self.calls.fetch_add(n, Ordering::SeqCst);
    }

    async fn count_up(&self, n: u64) -> mqrpc::Stream<u64> {
        /// Counts the stream as stopped if dropped before its end.
        struct Producer {
            stats: Arc<Stats>,
            next: u64,
            end: u64,
        }
        impl Drop for Producer {
            fn drop(&mut self) {
                if self.next < self.end {
                    self.stats.stopped.fetch_add(1, Ordering::SeqCst);
                }
            }
        }
        let producer = Producer {
            stats: self.stats.clone(),
            next: 0,
            end: n,
        };
        mqrpc::Stream::new(futures_util::stream::unfold(producer, |mut p| async move {
            if p.next == p.end {
                return None;
            }
            let item = p.next;
            p.next += 1;
            p.stats.produced.fetch_add(1, Ordering::SeqCst);
            Some((item, p))
        }))
    }
}

/// Waits (up to 10 s) until `condition` holds; false if it never did.
/// For events that happen at once in a working system; the bound only
/// stops a broken one from hanging the test.
pub async fn eventually(mut condition: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if condition() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    condition()
}

/// Runs each listed scenario `async fn(TestBroker)` once against the
/// embedded broker and once against Mosquitto (skipped with a notice when
/// Mosquitto is missing, unless `MQRPC_REQUIRE_MOSQUITTO=1`).
///
/// `on_both_brokers!(setup = name; a, b)` calls the test file's `fn name()`
/// first in each test, before the broker starts (e.g. to install a
/// `tracing` subscriber before the harness installs its own).
#[macro_export]
macro_rules! on_both_brokers {
    (setup = $setup:ident; $($scenario:ident),* $(,)?) => {
        $crate::on_both_brokers!(@tests { super::$setup(); } $($scenario),*);
    };
    ($($scenario:ident),* $(,)?) => {
        $crate::on_both_brokers!(@tests {} $($scenario),*);
    };
    (@tests $setup:block $($scenario:ident),*) => {
        mod embedded {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $scenario() {
                    $setup
                    super::$scenario($crate::embedded().await).await
                }
            )*
        }
        mod mosquitto {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $scenario() {
                    $setup
                    if let Some(broker) = $crate::mosquitto() {
                        super::$scenario(broker).await
                    }
                }
            )*
        }
    };
}

/// Starts a server process (`calc-server`: its path,
/// `env!("CARGO_BIN_EXE_calc-server")`, is known to test files only) and
/// returns it once it printed `serving`. Killed when dropped; its stdout
/// stays open.
pub async fn spawn_serving(mut command: tokio::process::Command) -> tokio::process::Child {
    let mut server = command
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut stdout = server.stdout.take().unwrap();
    let mut line = [0u8; 7];
    tokio::io::AsyncReadExt::read_exact(&mut stdout, &mut line)
        .await
        .unwrap();
    assert_eq!(&line, b"serving");
    server.stdout = Some(stdout);
    server
}
