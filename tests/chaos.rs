//! Chaos scenarios through Mosquitto (issue 23): loss, delay, partitions,
//! half-open links and cut connections between the parts, with thousands of
//! calls in flight. Each scenario prints its tally (`--nocapture`) and
//! asserts what mqrpc promises (README, "Guarantees"): no call mismatched,
//! none outliving its deadline (plus a generous hang guard), a QoS 1/2
//! request run at most once where the duplicate table covers it, no call
//! left in the client's pending table. Never a timing threshold.
//!
//! Who makes which fault:
//! - the kernel, in network namespaces of `harness/netns.rs` (skipped with a
//!   notice without root or `ip netns`, unless `MQRPC_REQUIRE_NETNS=1`):
//!   real packet loss (iptables statistic match), partitions (iptables
//!   DROP of everything: silent, no RST);
//! - the TCP proxy of `harness/proxy.rs`: delay with jitter (this kernel has
//!   no `netem`), half-open links, cuts, and "loss" as the retransmission
//!   delay it causes on a TCP stream (loopback cases, no root needed).

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::time::Duration;

use mqrpc::{ClientOptions, ConnectOptions, Connection, QoS, ServerOptions};
use mqrpc_tests::chaos::{within, ChaosClient, ChaosServer, Load, Worker};
use mqrpc_tests::netns::{KernelFault, Lab, Site};
use mqrpc_tests::proxy::{Faults, Proxy};
use mqrpc_tests::Mosquitto;

/// Calls of the main scenarios.
const CALLS: u64 = 10_000;
/// Calls at once.
const IN_FLIGHT: usize = 100;
/// The client's pending-table limit: the check after a scenario fills it.
const PENDING_LIMIT: usize = 600;
/// Calls at once in the heavy (ignored) variants.
const HEAVY_IN_FLIGHT: usize = 500;

fn unique(role: &str) -> String {
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    format!(
        "chaos-{role}-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// A connection to `url`; `keep_alive` in seconds.
async fn connect(
    url: String,
    keep_alive: u64,
    tweak: fn(ConnectOptions) -> ConnectOptions,
) -> Connection {
    let options = ConnectOptions::from_url(&url)
        .unwrap()
        .keep_alive(Duration::from_secs(keep_alive))
        .connect_timeout(Duration::from_secs(2))
        .max_pending_calls(PENDING_LIMIT);
    Connection::connect(tweak(options))
        .await
        .unwrap_or_else(|e| panic!("connect to {url}: {e}"))
}

fn same(options: ConnectOptions) -> ConnectOptions {
    options
}

/// A server of `worker` on `conn`, as `instance`, answering at `qos`.
async fn serve(conn: &Connection, worker: &Worker, instance: &str, qos: QoS) {
    let _serving = ChaosServer::new(worker.clone())
        .serve_with(conn, ServerOptions::default().instance(instance).qos(qos))
        .await
        .unwrap();
}

async fn client(conn: &Connection, options: ClientOptions) -> ChaosClient {
    ChaosClient::with_options(conn, options).await.unwrap()
}

/// The promises every scenario keeps (`harness/chaos.rs`).
async fn check(name: &str, load: &mqrpc_tests::chaos::Tally, worker: &Worker, qos_covered: bool) {
    mqrpc_tests::chaos::check(name, load, worker, qos_covered);
}

/// No call left in `client`'s pending table (`harness/chaos.rs`).
async fn check_pending(name: &str, client: &ChaosClient) {
    mqrpc_tests::chaos::check_pending(name, client, PENDING_LIMIT).await;
}

/// (a) 5 % packet loss (kernel) and 50 ± 20 ms delay (proxy) on one link.
async fn lossy_link(faulty_server: bool, calls: u64, in_flight: usize) {
    let Some(lab) = Lab::start(&[]) else { return };
    let server_site = lab.site("server", 1);
    let client_site = lab.site("client", 1);
    let faulty: &Site = if faulty_server {
        &server_site
    } else {
        &client_site
    };
    let upstream = faulty.broker_addr();
    let proxy = faulty
        .run(async move { Proxy::start(upstream).await.unwrap() })
        .await;
    proxy.set(Faults {
        delay: Duration::from_millis(50),
        jitter: Duration::from_millis(20),
        ..Faults::default()
    });
    faulty.link().set(KernelFault::Loss(0.05)).unwrap();
    let url_of = |site: &Site| {
        if std::ptr::eq(site, faulty) {
            proxy.url()
        } else {
            site.broker_url()
        }
    };
    let (server_url, client_url) = (url_of(&server_site), url_of(&client_site));
    let worker = Worker::default();
    let server_conn = server_site.run(connect(server_url, 30, same)).await;
    serve(&server_conn, &worker, &unique("server"), QoS::AtLeastOnce).await;
    let conn = client_site.run(connect(client_url, 30, same)).await;
    let calc = client(
        &conn,
        ClientOptions::default().timeout(Duration::from_secs(20)),
    )
    .await;
    let load = Load::start(client_site.runtime().handle(), &calc, in_flight, calls, 0);
    let tally = load.wait().await;
    let dropped = faulty.link().dropped_packets();
    let name = if faulty_server {
        "loss+delay server<->broker"
    } else {
        "loss+delay client<->broker"
    };
    println!("chaos {name}: kernel dropped {dropped} packets");
    check(name, &tally, &worker, true).await;
    assert!(dropped > 0, "the loss rule dropped nothing");
    assert_eq!(tally.calls(), calls);
    faulty.link().set(KernelFault::None).unwrap();
    proxy.heal();
    check_pending(name, &calc).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loss_and_delay_between_client_and_broker() {
    lossy_link(false, CALLS, IN_FLIGHT).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loss_and_delay_between_server_and_broker() {
    lossy_link(true, CALLS, IN_FLIGHT).await;
}

/// The same, 100 000 calls each way, 500 in flight; `.ci/run` runs it in
/// release.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "100 000 calls per link: run with --release -- --ignored"]
async fn loss_and_delay_100k_calls() {
    lossy_link(false, 100_000, HEAVY_IN_FLIGHT).await;
    lossy_link(true, 100_000, HEAVY_IN_FLIGHT).await;
}

/// Keep-alive of the servers that lose their link in (b) and (c).
const SHORT_KEEP_ALIVE: u64 = 2;

/// Shared and pinned load while server 1's link fails (`fail`) for longer
/// than its keep-alive, then heals (`heal`): its Will ends the calls to its
/// instance with `ServerGone`, shared calls move to server 2, and once
/// healed, server 1 answers its instance calls again.
#[allow(clippy::too_many_arguments)]
async fn server_link_fails_then_heals(
    name: &str,
    runtime: &tokio::runtime::Handle,
    client_conn: &Connection,
    server1: &Connection,
    server2: &Connection,
    fail: impl Fn(),
    heal: impl Fn(),
) -> Worker {
    let worker = Worker::default();
    let worker2 = Worker {
        runs: worker.runs.clone(),
        ..Worker::default()
    };
    // The instance id is its connection's client id, which its Will names
    // (PROTOCOL.md, "Server gone": another id is not noticed on a crash).
    let instance = server1.client_id().to_string();
    serve(server1, &worker, &instance, QoS::AtLeastOnce).await;
    serve(server2, &worker2, &unique("s2"), QoS::AtLeastOnce).await;
    let shared = client(
        client_conn,
        ClientOptions::default().timeout(Duration::from_secs(3)),
    )
    .await;
    // Longer than the broker takes to find the link dead (1.5 keep-alives):
    // calls in flight then end with the Will, not at their deadline.
    let pinned = shared
        .to_instance(&instance)
        .unwrap()
        .with_timeout(Duration::from_secs(SHORT_KEEP_ALIVE * 5));
    let shared_load = Load::start(runtime, &shared, IN_FLIGHT * 6 / 10, u64::MAX / 4, 0);
    let pinned_load = Load::start(
        runtime,
        &pinned,
        IN_FLIGHT * 4 / 10,
        u64::MAX / 4,
        u64::MAX / 4,
    );
    assert!(
        within(Duration::from_secs(30), || pinned_load
            .tally
            .answered
            .load(Ordering::Relaxed)
            > 100)
        .await
    );
    fail();
    let on_server2 = worker2.here.load(Ordering::Relaxed);
    // Detected by keep-alive: the broker fires the Will, the server sees
    // its link dead (both within ~1.5 keep-alives; the bound is generous).
    let gone = within(Duration::from_secs(60), || {
        pinned_load.tally.failed_with("ServerGone") > 0
    })
    .await;
    let noticed = within(Duration::from_secs(60), || !server1.is_connected()).await;
    tokio::time::sleep(Duration::from_secs(SHORT_KEEP_ALIVE * 2)).await;
    let moved = worker2.here.load(Ordering::Relaxed) - on_server2;
    heal();
    let answered_at_heal = pinned_load.tally.answered.load(Ordering::Relaxed);
    let resumed = within(Duration::from_secs(60), || {
        pinned_load.tally.answered.load(Ordering::Relaxed) > answered_at_heal + 100
    })
    .await;
    println!(
        "chaos {name}: server 1 connected again: {}",
        server1.is_connected()
    );
    // Enough calls in all before stopping (bounded: a broken system ends
    // the wait too).
    within(Duration::from_secs(120), || {
        shared_load.ended() + pinned_load.ended() >= CALLS
    })
    .await;
    let shared_tally = shared_load.stop().await;
    let pinned_tally = pinned_load.stop().await;
    println!("chaos {name}: shared calls moved to server 2 while server 1 was away: {moved}");
    check(&format!("{name}, shared"), &shared_tally, &worker, false).await;
    check(
        &format!("{name}, pinned to server 1"),
        &pinned_tally,
        &worker,
        true,
    )
    .await;
    assert!(
        gone,
        "{name}: calls to the lost instance never ended with ServerGone"
    );
    assert!(noticed, "{name}: server 1 never noticed its dead link");
    assert!(
        moved > 0,
        "{name}: no shared call reached server 2 meanwhile"
    );
    assert!(
        resumed,
        "{name}: server 1 did not answer again after healing"
    );
    for kind in pinned_tally.kinds() {
        assert!(
            ["ServerGone", "Timeout", "NoResponder"].contains(&kind.as_str()),
            "{name}: pinned {kind}"
        );
    }
    for kind in shared_tally.kinds() {
        assert!(
            ["Timeout"].contains(&kind.as_str()),
            "{name}: shared {kind}"
        );
    }
    assert!(shared_tally.calls() + pinned_tally.calls() >= CALLS);
    check_pending(name, &shared).await;
    worker
}

/// (b) Server 1 partitioned from the broker (kernel: all packets dropped)
/// for longer than its keep-alive, then healed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_partitioned_longer_than_keep_alive_then_healed() {
    let Some(lab) = Lab::start(&[]) else { return };
    let s1 = lab.site("server1", 1);
    let others = lab.site("others", 1);
    let server1 = s1
        .run(connect(s1.broker_url(), SHORT_KEEP_ALIVE, same))
        .await;
    let server2 = others.run(connect(others.broker_url(), 30, same)).await;
    let conn = others.run(connect(others.broker_url(), 30, same)).await;
    let link = s1.link();
    server_link_fails_then_heals(
        "server partition",
        others.runtime().handle(),
        &conn,
        &server1,
        &server2,
        || link.set(KernelFault::Partition).unwrap(),
        || link.set(KernelFault::None).unwrap(),
    )
    .await;
}

fn loopback_mosquitto() -> Option<(Mosquitto, SocketAddr)> {
    if !mqrpc_tests::mosquitto_available() {
        return None;
    }
    let mosquitto = Mosquitto::start(&[]).unwrap();
    let addr = SocketAddr::from(([127, 0, 0, 1], mosquitto.port));
    Some((mosquitto, addr))
}

/// (c) A half-open link (proxy: traffic silently dropped both ways, no
/// FIN, no RST), first of server 1, then of the client: detected by
/// keep-alive, nothing left hanging, all healed afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_open_links_are_detected_by_keep_alive() {
    let Some((_mosquitto, broker)) = loopback_mosquitto() else {
        return;
    };
    let server_proxy = Proxy::start(broker).await.unwrap();
    let client_proxy = Proxy::start(broker).await.unwrap();
    let server1 = connect(server_proxy.url(), SHORT_KEEP_ALIVE, same).await;
    let server2 = connect(format!("mqtt://{broker}"), 30, same).await;
    let conn = connect(client_proxy.url(), SHORT_KEEP_ALIVE, same).await;
    let runtime = tokio::runtime::Handle::current();
    let worker = server_link_fails_then_heals(
        "half-open server link",
        &runtime,
        &conn,
        &server1,
        &server2,
        || server_proxy.half_open(),
        || server_proxy.heal(),
    )
    .await;

    // The client's own link half-open: its calls end (at their deadline,
    // or when keep-alive finds the link dead), then it reconnects.
    let calc = client(
        &conn,
        ClientOptions::default().timeout(Duration::from_secs(3)),
    )
    .await;
    // Ids of their own: the Runs of the first phase go on counting.
    let load = Load::start(&runtime, &calc, IN_FLIGHT, u64::MAX / 8, 3 << 62);
    assert!(
        within(Duration::from_secs(30), || load
            .tally
            .answered
            .load(Ordering::Relaxed)
            > 100)
        .await
    );
    client_proxy.half_open();
    let noticed = within(Duration::from_secs(60), || !conn.is_connected()).await;
    tokio::time::sleep(Duration::from_secs(SHORT_KEEP_ALIVE)).await;
    client_proxy.heal();
    let at_heal = load.tally.answered.load(Ordering::Relaxed);
    let resumed = within(Duration::from_secs(60), || {
        load.tally.answered.load(Ordering::Relaxed) > at_heal + 100
    })
    .await;
    within(Duration::from_secs(120), || load.ended() >= CALLS).await;
    let tally = load.stop().await;
    check("half-open client link", &tally, &worker, false).await;
    assert!(noticed, "the client never noticed its dead link");
    assert!(resumed, "the client did not resume after healing");
    assert!(tally.failures() > 0, "the dead link must show as errors");
    check_pending("half-open client link", &calc).await;
}

/// (d) The client partitioned (kernel) for 2 s, with a kept session or a
/// clean one; calls in flight across the partition.
async fn client_partitioned(persistent: bool) {
    let Some(lab) = Lab::start(&[]) else { return };
    let server_site = lab.site("server", 1);
    let client_site = lab.site("client", 1);
    let worker = Worker::default();
    let server_conn = server_site
        .run(connect(server_site.broker_url(), 30, same))
        .await;
    serve(&server_conn, &worker, &unique("server"), QoS::AtLeastOnce).await;
    let tweak: fn(ConnectOptions) -> ConnectOptions = if persistent {
        |o| {
            o.client_id(unique("client"))
                .session_expiry(Duration::from_secs(60))
        }
    } else {
        same
    };
    let conn = client_site
        .run(connect(client_site.broker_url(), 1, tweak))
        .await;
    let calc = client(
        &conn,
        ClientOptions::default().timeout(Duration::from_secs(6)),
    )
    .await;
    let load = Load::start(client_site.runtime().handle(), &calc, IN_FLIGHT, CALLS, 0);
    assert!(within(Duration::from_secs(30), || load.ended() > CALLS / 4).await);
    client_site.link().set(KernelFault::Partition).unwrap();
    let mut disconnected = false;
    let until = tokio::time::Instant::now() + Duration::from_secs(2);
    while tokio::time::Instant::now() < until {
        disconnected |= !conn.is_connected();
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    client_site.link().set(KernelFault::None).unwrap();
    let tally = load.wait().await;
    let name = if persistent {
        "client partition 2 s, kept session"
    } else {
        "client partition 2 s, clean session"
    };
    println!("chaos {name}: the client saw its link down: {disconnected}");
    // A kept session gets the answers sent while away (QoS 1) and sends
    // its unacknowledged requests again, which the server's duplicate
    // table runs once.
    check(name, &tally, &worker, persistent).await;
    assert_eq!(tally.calls(), CALLS);
    for kind in tally.kinds() {
        assert!(
            ["Timeout", "Disconnected"].contains(&kind.as_str()),
            "{name}: {kind}"
        );
    }
    check_pending(name, &calc).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_partitioned_2s_with_kept_session() {
    client_partitioned(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_partitioned_2s_with_clean_session() {
    client_partitioned(false).await;
}

/// (e) One cell of the matrix: batches on or off, QoS 0, 1 or 2, both
/// links through a proxy with 20 ± 10 ms delay and 5 % "loss" (as
/// retransmission delay), and the client's connection (a kept session)
/// cut once mid-load: its unacknowledged requests are sent again.
async fn matrix_cell(batches: bool, qos: QoS, calls: u64, in_flight: usize, cut: bool) {
    let Some((_mosquitto, broker)) = loopback_mosquitto() else {
        return;
    };
    let server_proxy = Proxy::start(broker).await.unwrap();
    let client_proxy = Proxy::start(broker).await.unwrap();
    server_proxy.set(Faults::lossy(20, 10, 0.05));
    client_proxy.set(Faults::lossy(20, 10, 0.05));
    let worker = Worker::default();
    let server_conn = connect(server_proxy.url(), 30, same).await;
    serve(&server_conn, &worker, &unique("server"), qos).await;
    let conn = connect(client_proxy.url(), 30, |o| {
        o.client_id(unique("client"))
            .session_expiry(Duration::from_secs(60))
    })
    .await;
    let options = ClientOptions::default()
        .timeout(Duration::from_secs(5))
        .batches(batches)
        .qos(qos);
    let calc = client(&conn, options).await;
    let runtime = tokio::runtime::Handle::current();
    let load = Load::start(&runtime, &calc, in_flight, calls, 0);
    assert!(within(Duration::from_secs(60), || load.ended() > calls / 2).await);
    if cut {
        client_proxy.cut();
    }
    let tally = load.wait().await;
    let name = format!(
        "batches {}, QoS {}",
        if batches { "on" } else { "off" },
        qos as u8
    );
    println!(
        "chaos {name}: proxy delayed {} chunks for modelled retransmissions",
        client_proxy.stats().losses.load(Ordering::Relaxed)
            + server_proxy.stats().losses.load(Ordering::Relaxed)
    );
    // QoS 0 is never sent again; QoS 1 and 2 are, and run once.
    check(&name, &tally, &worker, true).await;
    assert_eq!(tally.calls(), calls);
    for kind in tally.kinds() {
        assert!(
            ["Timeout", "Disconnected"].contains(&kind.as_str()),
            "{name}: {kind}"
        );
    }
    client_proxy.heal();
    server_proxy.heal();
    check_pending(&name, &calc).await;
}

const QOS: [QoS; 3] = [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn matrix_batches_and_qos_through_a_lossy_slow_link() {
    for batches in [true, false] {
        for qos in QOS {
            matrix_cell(batches, qos, 1_000, IN_FLIGHT, true).await;
        }
    }
}

/// The matrix at 10 000 calls per cell, 500 in flight; `.ci/run` runs it
/// in release.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "60 000 calls: run with --release -- --ignored"]
async fn matrix_10k_calls_per_cell() {
    for batches in [true, false] {
        for qos in QOS {
            matrix_cell(batches, qos, CALLS, HEAVY_IN_FLIGHT, true).await;
        }
    }
}

/// The kernel's token bucket (`tbf`) on a link: 10 000 calls through a
/// 2 Mbit/s link, all answered or ended by their deadline.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limited_link() {
    let Some(lab) = Lab::start(&[]) else { return };
    let server_site = lab.site("server", 1);
    let client_site = lab.site("client", 1);
    client_site.link().rate_limit(Some(2_000)).unwrap();
    let worker = Worker::default();
    let server_conn = server_site
        .run(connect(server_site.broker_url(), 30, same))
        .await;
    serve(&server_conn, &worker, &unique("server"), QoS::AtLeastOnce).await;
    let conn = client_site
        .run(connect(client_site.broker_url(), 30, same))
        .await;
    let calc = client(
        &conn,
        ClientOptions::default().timeout(Duration::from_secs(20)),
    )
    .await;
    let load = Load::start(client_site.runtime().handle(), &calc, IN_FLIGHT, CALLS, 0);
    let tally = load.wait().await;
    check("tbf 2 Mbit/s client<->broker", &tally, &worker, true).await;
    assert_eq!(tally.calls(), CALLS);
    client_site.link().rate_limit(None).unwrap();
    check_pending("tbf", &calc).await;
}
