//! Network namespaces for chaos tests, created and removed by the harness
//! (as root): Mosquitto in a namespace of its own, each client or server
//! "site" in another, joined to the broker's by a veth pair with addresses
//! in `10.77.<link>.0/30` (private to these namespaces: nothing is added to
//! the host's own network). Faults are made by the kernel on the link:
//! packet loss with the iptables statistic match (random DROP on each
//! side's INPUT), partitions with DROP of everything (no RST: a silent,
//! half-open link), rate limits with the `tbf` qdisc. This kernel has no
//! `netem`, so delay and jitter come from the TCP proxy
//! ([`crate::proxy`]) run inside a site.
//!
//! Code of a site runs on a Tokio runtime whose threads entered the site's
//! namespace (`setns`), so every socket it opens, reconnections included,
//! is in that namespace.
//!
//! Without `ip netns` (or root) the cases skip with a notice, unless
//! `MQRPC_REQUIRE_NETNS=1` (CI), which fails them instead. Namespaces have
//! unique names (`mqrpc-<pid>-<n>-<role>`) and are removed when their guard
//! is dropped, also when a test panics; those a killed run left behind are
//! removed by the next run.

use std::future::Future;
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

/// Set to `1` (CI does) to fail instead of skipping when network
/// namespaces cannot be made.
pub const REQUIRE_NETNS_ENV: &str = "MQRPC_REQUIRE_NETNS";

/// The port Mosquitto listens on inside its namespace.
pub const BROKER_PORT: u16 = 1883;

/// True when this process can make namespaces, veth pairs and iptables
/// rules; false (with a notice) when not, so the caller skips its case.
/// Panics instead when `MQRPC_REQUIRE_NETNS=1`.
pub fn netns_available() -> bool {
    crate::init_tracing();
    let probe = || -> Result<(), String> {
        let ns = Namespace::create("probe").map_err(|e| format!("ip netns add: {e}"))?;
        ns.exec(&["iptables", "-w", "-L", "INPUT", "-n"])
            .map_err(|e| format!("iptables: {e}"))?;
        ns.exec(&["tc", "qdisc", "show"])
            .map_err(|e| format!("tc: {e}"))?;
        Ok(())
    };
    match probe() {
        Ok(()) => true,
        Err(why) => {
            if std::env::var(REQUIRE_NETNS_ENV).as_deref() == Ok("1") {
                panic!("network namespaces unavailable and {REQUIRE_NETNS_ENV}=1: {why} (run as root with iproute2 and iptables installed)");
            }
            eprintln!("NOTICE: network namespaces unavailable ({why}); skipping this netns case (set {REQUIRE_NETNS_ENV}=1 to fail instead)");
            false
        }
    }
}

fn run(program: &str, args: &[&str]) -> std::io::Result<String> {
    let output = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()?;
    if !output.status.success() {
        return Err(std::io::Error::other(format!(
            "`{program} {}` failed ({}): {}",
            args.join(" "),
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        )));
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// Removes namespaces of this harness whose process is gone (a killed run).
fn remove_stale() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let Ok(list) = run("ip", &["netns", "list"]) else {
            return;
        };
        for name in list.lines().filter_map(|l| l.split_whitespace().next()) {
            let Some(pid) = name
                .strip_prefix("mqrpc-")
                .and_then(|r| r.split('-').next())
            else {
                continue;
            };
            if !PathBuf::from(format!("/proc/{pid}")).exists() {
                let _ = run("ip", &["netns", "del", name]);
            }
        }
    });
}

/// A network namespace, deleted when dropped.
pub struct Namespace {
    name: String,
}

impl Namespace {
    /// A new namespace named `mqrpc-<pid>-<n>-<role>`, its loopback up.
    pub fn create(role: &str) -> std::io::Result<Namespace> {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        remove_stale();
        let name = format!(
            "mqrpc-{}-{}-{role}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        run("ip", &["netns", "add", &name])?;
        let ns = Namespace { name };
        ns.exec(&["ip", "link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// Its name (`ip netns exec <name> ...`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Runs a command inside, waiting for it; its stdout, or an error.
    pub fn exec(&self, command: &[&str]) -> std::io::Result<String> {
        let mut args = vec!["netns", "exec", &self.name];
        args.extend_from_slice(command);
        run("ip", &args)
    }

    /// A command to spawn inside (`ip netns exec` enters the namespace,
    /// then execs it: the child's PID is the program's).
    pub fn command(&self, program: &str) -> Command {
        let mut command = Command::new("ip");
        command.args(["netns", "exec", &self.name, program]);
        command
    }

    fn file(&self) -> std::io::Result<std::fs::File> {
        std::fs::File::open(format!("/var/run/netns/{}", self.name))
    }

    /// A multi-threaded Tokio runtime whose threads are in this namespace.
    pub fn runtime(&self, workers: usize) -> std::io::Result<NsRuntime> {
        let file = Arc::new(self.file()?);
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(workers)
            .enable_all()
            .thread_name(format!("ns-{}", self.name))
            .on_thread_start(move || enter(&file))
            .build()?;
        Ok(NsRuntime(Some(runtime)))
    }

    /// Runs `f` on a thread inside this namespace and returns its result.
    pub fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> std::io::Result<T> {
        let file = self.file()?;
        Ok(std::thread::spawn(move || {
            enter(&file);
            f()
        })
        .join()
        .expect("thread in namespace panicked"))
    }
}

/// Moves the calling thread into the namespace of `file`.
fn enter(file: &std::fs::File) {
    // SAFETY: setns on a valid namespace fd affects only this thread.
    let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
    assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
}

impl Drop for Namespace {
    fn drop(&mut self) {
        if let Err(e) = run("ip", &["netns", "del", &self.name]) {
            eprintln!("NOTICE: could not remove namespace {}: {e}", self.name);
        }
    }
}

/// A runtime in a namespace; shut down (without blocking) when dropped, so
/// it may be dropped inside another runtime.
pub struct NsRuntime(Option<tokio::runtime::Runtime>);

impl NsRuntime {
    /// Spawns a task on it.
    pub fn spawn<F>(&self, future: F) -> tokio::task::JoinHandle<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.handle().spawn(future)
    }

    /// Its handle.
    pub fn handle(&self) -> &tokio::runtime::Handle {
        self.0.as_ref().unwrap().handle()
    }
}

impl Drop for NsRuntime {
    fn drop(&mut self) {
        if let Some(runtime) = self.0.take() {
            runtime.shutdown_background();
        }
    }
}

/// A kernel-made fault on a [`Link`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum KernelFault {
    /// Nothing dropped.
    None,
    /// Each packet, each way, dropped with this probability.
    Loss(f64),
    /// Every packet dropped, both ways (no RST: both ends see silence).
    Partition,
}

/// One end of a veth pair.
struct End {
    ns: String,
    interface: String,
    address: String,
}

impl End {
    fn exec(&self, command: &[&str]) -> std::io::Result<String> {
        let mut args = vec!["netns", "exec", &self.ns];
        args.extend_from_slice(command);
        run("ip", &args)
    }

    fn chain(&self) -> String {
        format!("CHAOS-{}", self.interface)
    }
}

/// A veth pair between a site's namespace and the broker's; removed with
/// the namespaces.
pub struct Link {
    site: End,
    broker: End,
}

impl Link {
    /// Joins `site` to `broker` on `10.77.<index>.0/30` (site `.1`,
    /// broker `.2`), with an iptables chain on each side's INPUT for
    /// faults.
    pub fn create(site: &Namespace, broker: &Namespace, index: u8) -> std::io::Result<Link> {
        let site_if = format!("s{index}");
        let broker_if = format!("b{index}");
        run(
            "ip",
            &[
                "link",
                "add",
                "name",
                &site_if,
                "netns",
                &site.name,
                "type",
                "veth",
                "peer",
                "name",
                &broker_if,
                "netns",
                &broker.name,
            ],
        )?;
        let link = Link {
            site: End {
                ns: site.name.clone(),
                interface: site_if,
                address: format!("10.77.{index}.1"),
            },
            broker: End {
                ns: broker.name.clone(),
                interface: broker_if,
                address: format!("10.77.{index}.2"),
            },
        };
        for end in [&link.site, &link.broker] {
            let cidr = format!("{}/30", end.address);
            end.exec(&["ip", "addr", "add", &cidr, "dev", &end.interface])?;
            end.exec(&["ip", "link", "set", &end.interface, "up"])?;
            let chain = end.chain();
            end.exec(&["iptables", "-w", "-N", &chain])?;
            end.exec(&[
                "iptables",
                "-w",
                "-A",
                "INPUT",
                "-i",
                &end.interface,
                "-j",
                &chain,
            ])?;
        }
        Ok(link)
    }

    /// The broker's address as the site reaches it.
    pub fn broker_address(&self) -> &str {
        &self.broker.address
    }

    /// Puts `fault` in force on both sides (replacing the one before).
    pub fn set(&self, fault: KernelFault) -> std::io::Result<()> {
        for end in [&self.site, &self.broker] {
            let chain = end.chain();
            end.exec(&["iptables", "-w", "-F", &chain])?;
            match fault {
                KernelFault::None => {}
                KernelFault::Loss(p) => {
                    let p = format!("{p}");
                    end.exec(&[
                        "iptables",
                        "-w",
                        "-A",
                        &chain,
                        "-m",
                        "statistic",
                        "--mode",
                        "random",
                        "--probability",
                        &p,
                        "-j",
                        "DROP",
                    ])?;
                }
                KernelFault::Partition => {
                    end.exec(&["iptables", "-w", "-A", &chain, "-j", "DROP"])?;
                }
            }
        }
        Ok(())
    }

    /// Packets the fault rules dropped so far (both sides).
    pub fn dropped_packets(&self) -> u64 {
        [&self.site, &self.broker]
            .iter()
            .filter_map(|end| {
                end.exec(&["iptables", "-w", "-L", &end.chain(), "-n", "-v", "-x"])
                    .ok()
            })
            .flat_map(|listing| {
                listing
                    .lines()
                    .skip(2)
                    .filter_map(|l| l.split_whitespace().next()?.parse::<u64>().ok())
                    .collect::<Vec<_>>()
            })
            .sum()
    }

    /// Limits each direction to `kbit` kbit/s with a token bucket (`tbf`);
    /// `None` removes the limit.
    pub fn rate_limit(&self, kbit: Option<u32>) -> std::io::Result<()> {
        for end in [&self.site, &self.broker] {
            match kbit {
                Some(kbit) => {
                    let rate = format!("{kbit}kbit");
                    end.exec(&[
                        "tc",
                        "qdisc",
                        "replace",
                        "dev",
                        &end.interface,
                        "root",
                        "tbf",
                        "rate",
                        &rate,
                        "burst",
                        "16kb",
                        "latency",
                        "400ms",
                    ])?;
                }
                None => {
                    let _ = end.exec(&["tc", "qdisc", "del", "dev", &end.interface, "root"]);
                }
            }
        }
        Ok(())
    }
}

/// Mosquitto in a namespace, listening on every address of it; killed
/// (by PID) when dropped.
pub struct NsMosquitto {
    child: Child,
    dir: tempfile::TempDir,
}

impl NsMosquitto {
    /// Starts it in `ns` with these extra config lines and waits until it
    /// listens.
    pub fn start(ns: &Namespace, extra_config: &[&str]) -> std::io::Result<NsMosquitto> {
        let mut config = vec!["max_queued_messages 100000"];
        config.extend_from_slice(extra_config);
        let up =
            || ns.blocking(|| std::net::TcpStream::connect(("127.0.0.1", BROKER_PORT)).is_ok());
        let listener = format!("{BROKER_PORT} 0.0.0.0");
        let (child, dir) =
            crate::launch_mosquitto(&listener, &config, ns.command("mosquitto"), up)?;
        Ok(NsMosquitto { child, dir })
    }

    /// What it logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("mosquitto.log")).unwrap_or_default()
    }
}

impl Drop for NsMosquitto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Mosquitto in a namespace of its own, and the sites joined to it.
pub struct Lab {
    // Dropped in this order: the broker, then its namespace.
    mosquitto: NsMosquitto,
    broker: Namespace,
    links: AtomicU32,
}

impl Lab {
    /// A broker namespace with Mosquitto in it, or `None` (with a notice)
    /// when namespaces or Mosquitto are unavailable (panics instead when
    /// `MQRPC_REQUIRE_NETNS=1` or `MQRPC_REQUIRE_MOSQUITTO=1`).
    pub fn start(extra_config: &[&str]) -> Option<Lab> {
        if !crate::mosquitto_available() || !netns_available() {
            return None;
        }
        let broker = Namespace::create("broker").expect("broker namespace");
        let mosquitto = NsMosquitto::start(&broker, extra_config).expect("mosquitto in namespace");
        Some(Lab {
            mosquitto,
            broker,
            links: AtomicU32::new(1),
        })
    }

    /// A new site (namespace, link to the broker, runtime with `workers`
    /// threads inside).
    pub fn site(&self, role: &str, workers: usize) -> Site {
        let index = self.links.fetch_add(1, Ordering::Relaxed);
        let index = u8::try_from(index).expect("at most 255 sites per lab");
        let ns = Namespace::create(role).expect("site namespace");
        let link = Link::create(&ns, &self.broker, index).expect("veth link");
        let runtime = ns.runtime(workers).expect("runtime in namespace");
        Site { runtime, link, ns }
    }

    /// What Mosquitto logged so far.
    pub fn broker_log(&self) -> String {
        self.mosquitto.log()
    }
}

/// A namespace joined to the broker's, with a runtime inside.
pub struct Site {
    // Dropped in this order: the runtime, the link, the namespace.
    runtime: NsRuntime,
    link: Link,
    ns: Namespace,
}

impl Site {
    /// `mqtt://<broker address>:1883`, as this site reaches the broker.
    pub fn broker_url(&self) -> String {
        format!("mqtt://{}:{BROKER_PORT}", self.link.broker_address())
    }

    /// The broker's socket address, as this site reaches it.
    pub fn broker_addr(&self) -> std::net::SocketAddr {
        format!("{}:{BROKER_PORT}", self.link.broker_address())
            .parse()
            .unwrap()
    }

    /// The link's fault controls.
    pub fn link(&self) -> &Link {
        &self.link
    }

    /// The runtime inside.
    pub fn runtime(&self) -> &NsRuntime {
        &self.runtime
    }

    /// Spawns `future` inside the site and waits for its result.
    pub async fn run<F>(&self, future: F) -> F::Output
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.runtime
            .spawn(future)
            .await
            .expect("site task panicked")
    }

    /// The namespace.
    pub fn namespace(&self) -> &Namespace {
        &self.ns
    }
}
