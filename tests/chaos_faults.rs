//! Chaos scenarios with the proxy faults `tests/chaos.rs` does not use
//! (issue 23): a stall (bytes held, TCP flow control pushing back), a
//! black hole of one direction, and refused reconnections, each on the
//! client's link and on the server's, through Mosquitto with 100 calls in
//! flight and 10 000+ calls per scenario. Each prints its tally
//! (`--nocapture`) and asserts the promises of README "Guarantees": no
//! call mismatched, none past its deadline (plus the hang guard), a QoS 1
//! request run at most once where the duplicate table covers it, and
//! afterwards nothing left behind: the client's pending table empty, the
//! server holding no queued request, stream or answer waiting to leave,
//! the process's RSS within a bound of where it started. Never a timing
//! threshold. The scenarios run one at a time (RSS is the process's).

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::time::Duration;

use mqrpc::{ClientOptions, ConnectOptions, Connection, QoS, ServerHandle, ServerOptions};
use mqrpc_tests::chaos::{check, check_pending, within, ChaosClient, ChaosServer, Load, Worker};
use mqrpc_tests::proxy::{Direction, Proxy};
use mqrpc_tests::Mosquitto;

/// Calls at once.
const IN_FLIGHT: usize = 100;
/// Calls per scenario, at least.
const CALLS: u64 = 10_000;
/// The client's pending-table limit: the check after a scenario fills it.
const PENDING_LIMIT: usize = 600;
/// Keep-alive of the faulty links, in seconds: a 3 s fault outlasts it.
const KEEP_ALIVE: u64 = 1;
/// How long each fault lasts.
const FAULT: Duration = Duration::from_secs(3);
/// What the process's RSS may grow by over a scenario (its calls, the
/// proxy's buffers, allocator slack): far above what it needs, far below
/// what a leak of its 10 000 calls' requests would take with the traffic
/// repeated (every scenario checks it).
const RSS_GROWTH_KIB: u64 = 64 * 1024;

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .expect("VmRSS")
}

/// Where the fault is.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Side {
    Client,
    Server,
}

/// A proxy fault, put in force and healed.
#[derive(Debug, Clone, Copy)]
enum Fault {
    /// Both directions held (`Faults::stall`).
    Stall,
    /// One direction swallowed (`Proxy::black_hole`).
    BlackHole(Direction),
    /// The connection cut and new ones closed at once after accepting
    /// (`Faults::refuse`).
    Refuse,
}

impl Fault {
    fn apply(self, proxy: &Proxy) {
        match self {
            Fault::Stall => proxy.update(|f| f.stall = true),
            Fault::BlackHole(direction) => proxy.black_hole(direction),
            Fault::Refuse => {
                proxy.update(|f| f.refuse = true);
                proxy.cut();
            }
        }
    }
}

async fn connect(url: String, keep_alive: u64) -> Connection {
    let options = ConnectOptions::from_url(&url)
        .unwrap()
        .keep_alive(Duration::from_secs(keep_alive))
        .connect_timeout(Duration::from_secs(2))
        .max_pending_calls(PENDING_LIMIT);
    Connection::connect(options)
        .await
        .unwrap_or_else(|e| panic!("connect to {url}: {e}"))
}

/// After a healed scenario: the server holds nothing for its callers
/// but its duplicate table (bounded, kept for the window on purpose).
async fn check_server(name: &str, server: &ServerHandle) {
    let idle = within(Duration::from_secs(60), || {
        let usage = server.usage();
        (
            usage.queued,
            usage.streams,
            usage.answer_backlog_bytes,
            usage.refusals_waiting,
        ) == (0, 0, 0, 0)
    })
    .await;
    let usage = server.usage();
    assert!(idle, "{name}: the server still holds {usage:?}");
    assert!(usage.dedup_bytes <= usage.dedup_budget, "{name}: {usage:?}");
    assert_eq!(usage.refusals_dropped, 0, "{name}: {usage:?}");
}

/// One scenario: load through Mosquitto, `fault` on `side`'s link for
/// [`FAULT`] once the load runs, healed, then the checks.
async fn scenario(fault: Fault, side: Side) {
    static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    let _alone = ONE_AT_A_TIME.lock().await;
    if !mqrpc_tests::mosquitto_available() {
        return;
    }
    let mosquitto = Mosquitto::start(&[]).unwrap();
    let broker = SocketAddr::from(([127, 0, 0, 1], mosquitto.port));
    let direct = format!("mqtt://{broker}");
    let proxy = Proxy::start(broker).await.unwrap();
    let rss_before = rss_kib();
    let (server_url, server_keep_alive) = match side {
        Side::Server => (proxy.url(), KEEP_ALIVE),
        Side::Client => (direct.clone(), 30),
    };
    let (client_url, client_keep_alive) = match side {
        Side::Client => (proxy.url(), KEEP_ALIVE),
        Side::Server => (direct, 30),
    };
    let worker = Worker::default();
    let server_conn = connect(server_url, server_keep_alive).await;
    let server = ChaosServer::new(worker.clone())
        .serve_with(&server_conn, ServerOptions::default().qos(QoS::AtLeastOnce))
        .await
        .unwrap();
    let conn = connect(client_url, client_keep_alive).await;
    let calc = ChaosClient::with_options(
        &conn,
        ClientOptions::default().timeout(Duration::from_secs(3)),
    )
    .await
    .unwrap();
    let runtime = tokio::runtime::Handle::current();
    let load = Load::start(&runtime, &calc, IN_FLIGHT, u64::MAX / 4, 0);
    assert!(
        within(Duration::from_secs(30), || load
            .tally
            .answered
            .load(Ordering::Relaxed)
            > 1_000)
        .await
    );
    let faulty_conn = match side {
        Side::Client => &conn,
        Side::Server => &server_conn,
    };
    fault.apply(&proxy);
    let mut seen_down = false;
    let until = tokio::time::Instant::now() + FAULT;
    while tokio::time::Instant::now() < until {
        seen_down |= !faulty_conn.is_connected();
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    proxy.heal();
    let at_heal = load.tally.answered.load(Ordering::Relaxed);
    let resumed = within(Duration::from_secs(60), || {
        load.tally.answered.load(Ordering::Relaxed) > at_heal + 1_000
    })
    .await;
    within(Duration::from_secs(120), || load.ended() >= CALLS).await;
    let tally = load.stop().await;
    let name = format!("{fault:?} of the {side:?}'s link for {FAULT:?}");
    println!(
        "chaos {name}: link seen down {seen_down}, proxy dropped {} bytes",
        proxy.stats().bytes_dropped.load(Ordering::Relaxed)
    );
    // A stall or a one-way black hole ends the calls in flight at their
    // deadline, or at once when the link is declared dead; requests taken
    // by the broker for a server that is away find no subscriber.
    check(&name, &tally, &worker, true);
    assert!(
        resumed,
        "{name}: calls were not answered again after healing"
    );
    assert!(tally.calls() >= CALLS, "{name}: {}", tally.line());
    for kind in tally.kinds() {
        assert!(
            ["Timeout", "Disconnected", "NoResponder"].contains(&kind.as_str()),
            "{name}: {kind}"
        );
    }
    // The fault outlasted keep-alive and every reconnection attempt: the
    // connection noticed, and came back (the pending check waits for it).
    assert!(seen_down, "{name}: the link was never declared down");
    check_pending(&name, &calc, PENDING_LIMIT).await;
    check_server(&name, &server).await;
    drop((calc, conn, server, server_conn));
    let rss_after = rss_kib();
    println!("chaos {name}: RSS {rss_before} -> {rss_after} KiB");
    assert!(
        rss_after <= rss_before + RSS_GROWTH_KIB,
        "{name}: RSS {rss_before} -> {rss_after} KiB"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_links_are_found_by_keep_alive_and_heal() {
    scenario(Fault::Stall, Side::Server).await;
    scenario(Fault::Stall, Side::Client).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_way_black_holes_are_found_by_keep_alive_and_heal() {
    // Requests (and PINGREQs) swallowed on their way up; answers (and
    // PINGRESPs, CONNACKs) swallowed on their way down.
    scenario(Fault::BlackHole(Direction::Up), Side::Client).await;
    scenario(Fault::BlackHole(Direction::Down), Side::Server).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_reconnections_end_calls_then_heal() {
    scenario(Fault::Refuse, Side::Client).await;
    scenario(Fault::Refuse, Side::Server).await;
}
