//! mqrpc across the nodes of a real 3-node clustered broker (rmqtt 0.24,
//! broadcast cluster plugin, shared subscriptions; `harness/cluster.rs`):
//! shared calls, broadcasts, discovery and streams crossing nodes, and a
//! node killed (SIGKILL, by PID) under load. Skipped with a notice without
//! the node binary (`MQRPC_CLUSTER_NODE`), unless `MQRPC_REQUIRE_CLUSTER=1`.
//! Figures are printed (`--nocapture`), never asserted as timings.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use mqrpc::{ClientOptions, Connection, Error, ServerOptions};
use mqrpc_tests::cluster::Cluster;
use mqrpc_tests::tally::Tally;
use mqrpc_tests::{eventually, Calc, CalculatorClient, CalculatorServer};

/// Says which server answered.
#[mqrpc::service]
pub trait Where {
    /// Returns `n` and the serving node's name.
    async fn whoami(&self, n: u64) -> (u64, String);
}

/// A [`Where`] server on one node, counting what it served.
#[derive(Clone)]
struct Here {
    node: String,
    served: Arc<AtomicU64>,
}

impl Here {
    fn new(node: &str) -> Here {
        Here {
            node: node.to_string(),
            served: Arc::default(),
        }
    }

    fn served(&self) -> u64 {
        self.served.load(Ordering::SeqCst)
    }
}

impl Where for Here {
    async fn whoami(&self, n: u64) -> (u64, String) {
        self.served.fetch_add(1, Ordering::SeqCst);
        (n, self.node.clone())
    }
}

async fn connect(url: &str) -> Connection {
    Connection::connect_url(url)
        .await
        .unwrap_or_else(|e| panic!("connect to {url}: {e}"))
}

/// A [`Where`] server named `node` on a new connection to `url`.
async fn serve_where(url: &str, node: &str) -> (Connection, Here) {
    let conn = connect(url).await;
    let here = Here::new(node);
    let _handle = WhereServer::new(here.clone()).serve(&conn).await.unwrap();
    (conn, here)
}

/// p50 and p99 of `samples`, in µs.
fn percentiles(mut samples: Vec<Duration>) -> (f64, f64) {
    samples.sort();
    let at = |q: f64| samples[((samples.len() - 1) as f64 * q) as usize].as_secs_f64() * 1e6;
    (at(0.5), at(0.99))
}

/// `n` sequential `whoami` calls after 50 unmeasured ones: answers by node,
/// and the round trips.
async fn timed_calls(client: &WhereClient, n: u64) -> (BTreeMap<String, u64>, Vec<Duration>) {
    let mut by_node = BTreeMap::new();
    let mut times = Vec::new();
    for i in 0..n + 50 {
        let started = Instant::now();
        let (echoed, node) = client.whoami(i).await.unwrap();
        let took = started.elapsed();
        assert_eq!(echoed, i, "mismatched answer");
        if i >= 50 {
            times.push(took);
            *by_node.entry(node).or_insert(0) += 1;
        }
    }
    (by_node, times)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn servers_on_two_nodes_share_the_calls_of_a_client_on_a_third() {
    let Some(cluster) = Cluster::start().await else {
        return;
    };
    let (_c2, on_2) = serve_where(&cluster.url(1), "node2").await;
    let (_c3, on_3) = serve_where(&cluster.url(2), "node3").await;
    let conn = connect(&cluster.url(0)).await;
    let client = WhereClient::new(&conn).await.unwrap();

    // Sequential calls, every one across two nodes and back.
    let (by_node, cross) = timed_calls(&client, 1_000).await;
    assert_eq!(by_node.values().sum::<u64>(), 1_000, "{by_node:?}");
    assert!(
        by_node.get("node2").is_some_and(|&n| n > 0)
            && by_node.get("node3").is_some_and(|&n| n > 0),
        "both servers get calls: {by_node:?}"
    );

    // 200 at once: each answered once, by one of the two.
    let calls = (0..200u64).map(|i| {
        let client = client.clone();
        async move { client.whoami(1_000_000 + i).await.unwrap() }
    });
    let answers = futures_util::future::join_all(calls).await;
    for (i, (echoed, node)) in answers.iter().enumerate() {
        assert_eq!(*echoed, 1_000_000 + i as u64);
        assert!(node == "node2" || node == "node3", "{node}");
    }
    assert_eq!(on_2.served() + on_3.served(), 1_050 + 200);

    // The same client and server on one node, for comparison (own prefix,
    // so the cross-node servers above do not take these calls).
    let local_conn = connect(&cluster.url(0)).await;
    let _local = WhereServer::new(Here::new("node1"))
        .serve_with(&local_conn, ServerOptions::default().prefix("local"))
        .await
        .unwrap();
    let local_client = WhereClient::with_options(&conn, ClientOptions::default().prefix("local"))
        .await
        .unwrap();
    let (local_by_node, local) = timed_calls(&local_client, 1_000).await;
    assert_eq!(local_by_node.get("node1"), Some(&1_000));
    let (cross_p50, cross_p99) = percentiles(cross);
    let (local_p50, local_p99) = percentiles(local);
    println!(
        "cluster round trips, QoS 1, 1 000 sequential calls: client node 1 -> servers on nodes 2+3 p50 {cross_p50:.0} µs p99 {cross_p99:.0} µs (split {by_node:?}); client and server on node 1 p50 {local_p50:.0} µs p99 {local_p99:.0} µs"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broadcast_discovery_and_named_instances_reach_every_node() {
    let Some(cluster) = Cluster::start().await else {
        return;
    };
    let mut servers = Vec::new();
    for i in 0..3 {
        let conn = connect(&cluster.url(i)).await;
        let calc = Calc::default();
        let name = format!("calc-on-node{}", i + 1);
        let _handle = CalculatorServer::new(calc.clone())
            .serve_with(&conn, ServerOptions::default().instance(&name))
            .await
            .unwrap();
        servers.push((conn, calc, name));
    }
    let names: Vec<String> = servers.iter().map(|(_, _, n)| n.clone()).collect();
    let conn = connect(&cluster.url(0)).await;
    let client = CalculatorClient::with_options(
        &conn,
        ClientOptions::default().timeout(Duration::from_secs(30)),
    )
    .await
    .unwrap();

    // A broadcast from node 1 gets one answer from each node's server.
    let mut answers: Vec<(String, i64)> = client
        .broadcast(Some(3))
        .add(20, 22)
        .await
        .unwrap()
        .map(|(instance, sum)| (instance, sum.unwrap()))
        .collect()
        .await;
    answers.sort();
    let expected: Vec<(String, i64)> = names.iter().map(|n| (n.clone(), 42)).collect();
    assert_eq!(answers, expected);

    // Discovery lists the servers of every node.
    let found = mqrpc::discover(&conn, "mqrpc", Duration::from_secs(3))
        .await
        .unwrap();
    let mut instances: Vec<&str> = found
        .iter()
        .filter(|info| info.service == "Calculator")
        .map(|info| info.instance.as_str())
        .collect();
    instances.sort();
    assert_eq!(instances, names);

    // A named instance on another node gets exactly the calls sent to it.
    let on_3 = client.to_instance("calc-on-node3").unwrap();
    for _ in 0..20 {
        on_3.count().await.unwrap();
    }
    let served: Vec<u64> = servers
        .iter()
        .map(|(_, calc, _)| calc.calls.load(Ordering::SeqCst))
        .collect();
    assert_eq!(served, vec![0, 0, 20]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_crosses_nodes_with_its_credits_and_its_cancel() {
    let Some(cluster) = Cluster::start().await else {
        return;
    };
    let server_conn = connect(&cluster.url(2)).await;
    let calc = Calc::default();
    let _handle = CalculatorServer::new(calc.clone())
        .serve(&server_conn)
        .await
        .unwrap();
    let conn = connect(&cluster.url(0)).await;
    let client = CalculatorClient::with_options(
        &conn,
        ClientOptions::default().timeout(Duration::from_secs(60)),
    )
    .await
    .unwrap();
    // 1 000 items: far past the 32-item window, so credits cross too.
    let items: Vec<u64> = client
        .count_up(1_000)
        .await
        .unwrap()
        .map(|item| item.unwrap())
        .collect()
        .await;
    assert_eq!(items, (0..1_000).collect::<Vec<_>>());

    // Dropping a stream sends its cancel to the node of the server.
    let mut endless = client.count_up(u64::MAX).await.unwrap();
    for expected in 0..3 {
        assert_eq!(endless.next().await.unwrap().unwrap(), expected);
    }
    drop(endless);
    assert!(
        eventually(|| calc.stats.stopped.load(Ordering::SeqCst) == 1).await,
        "the producer on node 3 kept running"
    );
}

/// A call nobody serves, on any node, ends with a clear error: rmqtt
/// acknowledges such a request with PUBACK 0x00, not 0x10 No matching
/// subscribers (Mosquitto), so the call ends at its own timeout instead of
/// with `NoResponder` at once (printed, for the README's broker table).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_nobody_serves_ends_with_a_clear_error() {
    let Some(cluster) = Cluster::start().await else {
        return;
    };
    // A server of another service on node 2: the cluster has subscribers,
    // just none for this one.
    let (_other, _) = serve_where(&cluster.url(1), "node2").await;
    let conn = connect(&cluster.url(0)).await;
    let client = CalculatorClient::with_options(
        &conn,
        ClientOptions::default().timeout(Duration::from_secs(1)),
    )
    .await
    .unwrap();
    let err = client.add(1, 2).await.unwrap_err();
    println!("a call nobody serves, on the cluster: {err:?}");
    assert!(err.is_timeout() || err.is_no_responder(), "{err:?}");
}

/// Callers calling `whoami` in a loop, each call with its own deadline.
struct Load {
    tally: Arc<Tally>,
    stop: Arc<AtomicBool>,
    workers: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    fn start(client: &WhereClient, workers: u64, killed_at: Arc<Mutex<Option<Instant>>>) -> Load {
        let tally = Arc::new(Tally::default());
        let stop = Arc::new(AtomicBool::new(false));
        let timeout = client_timeout();
        let workers = (0..workers)
            .map(|w| {
                let (client, tally, stop) = (client.clone(), tally.clone(), stop.clone());
                let killed_at = killed_at.clone();
                tokio::spawn(async move {
                    let mut n = w << 40;
                    while !stop.load(Ordering::Relaxed) {
                        n += 1;
                        let call = client.whoami(n);
                        let check = |(echoed, _): &(u64, String)| *echoed == n;
                        // Errors while disconnected come at once; back off
                        // as a real caller would.
                        let backoff = Duration::from_millis(20);
                        tally.call(timeout, &killed_at, call, check, backoff).await;
                    }
                })
            })
            .collect();
        Load {
            tally,
            stop,
            workers,
        }
    }

    fn ok(&self) -> u64 {
        self.tally.ok.load(Ordering::Relaxed)
    }

    fn ok_after_kill(&self) -> u64 {
        self.tally.ok_after_mark.load(Ordering::Relaxed)
    }

    async fn finish(self) -> Arc<Tally> {
        self.stop.store(true, Ordering::Relaxed);
        for worker in self.workers {
            worker.await.unwrap();
        }
        self.tally
    }
}

fn client_timeout() -> Duration {
    Duration::from_secs(2)
}

/// Waits until `condition` holds, at most `guard` (a hang guard for a
/// broken system, not a measurement); false if it never did.
async fn until(guard: Duration, mut condition: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + guard;
    while Instant::now() < deadline {
        if condition() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    condition()
}

/// Node 3 is killed while a client on node 1 and a client on node 3 call
/// servers on nodes 2 and 3. Every connection lists all three nodes, its
/// own first, so the ones on node 3 move to another node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_killed_mid_load_every_call_resolves_and_its_clients_and_servers_move() {
    let Some(mut cluster) = Cluster::start().await else {
        return;
    };
    let (_s2, on_2) = serve_where(&cluster.urls_from(1), "node2").await;
    let (_s3, on_3) = serve_where(&cluster.urls_from(2), "node3").await;
    let options = ClientOptions::default().timeout(client_timeout());
    let c1_conn = connect(&cluster.urls_from(0)).await;
    let c1 = WhereClient::with_options(&c1_conn, options.clone())
        .await
        .unwrap();
    let c3_conn = connect(&cluster.urls_from(2)).await;
    let c3 = WhereClient::with_options(&c3_conn, options).await.unwrap();

    let killed_at = Arc::new(Mutex::new(None));
    let on_1 = Load::start(&c1, 20, killed_at.clone());
    let on_3_load = Load::start(&c3, 20, killed_at.clone());
    assert!(
        until(Duration::from_secs(60), || on_1.ok() >= 500
            && on_3_load.ok() >= 500)
        .await,
        "no load before the kill: {} and {} calls answered",
        on_1.ok(),
        on_3_load.ok()
    );
    assert!(on_2.served() > 0 && on_3.served() > 0);

    cluster.kill(2);
    *killed_at.lock().unwrap() = Some(Instant::now());
    let served_by_3_at_kill = on_3.served();

    // The survivors go on; what was on node 3 comes back through another
    // node: its client's calls and its server's share.
    let recovered = until(Duration::from_secs(60), || {
        on_1.ok_after_kill() >= 500
            && on_3_load.ok_after_kill() >= 500
            && on_3.served() > served_by_3_at_kill
    })
    .await;
    let served_by_3_after = on_3.served() - served_by_3_at_kill;
    let from_1 = on_1.finish().await;
    let from_3 = on_3_load.finish().await;

    for (name, tally) in [("client on node 1", &from_1), ("client on node 3", &from_3)] {
        let errors = tally.errors.lock().unwrap().clone();
        let kind = |f: fn(&Error) -> bool| errors.iter().filter(|e| f(e)).count();
        println!(
            "node 3 killed, {name}: ok {} ({} after the kill, first {:.1} ms after it), timeouts {}, disconnected {}, other errors {}, mismatched {}, hung {}",
            tally.ok.load(Ordering::Relaxed),
            tally.ok_after_mark.load(Ordering::Relaxed),
            tally.first_ok_after_mark_us.load(Ordering::Relaxed) as f64 / 1e3,
            kind(Error::is_timeout),
            kind(Error::is_connection),
            errors.len() - kind(Error::is_timeout) - kind(Error::is_connection),
            tally.mismatched.load(Ordering::Relaxed),
            tally.hung.load(Ordering::Relaxed),
        );
        assert_eq!(
            tally.hung.load(Ordering::Relaxed),
            0,
            "{name}: calls outlived their deadline"
        );
        assert_eq!(tally.mismatched.load(Ordering::Relaxed), 0, "{name}");
        for e in &errors {
            assert!(
                e.is_timeout() || e.is_connection() || e.is_no_responder(),
                "{name}: unexpected error {e:?}"
            );
        }
    }
    println!("node 3 killed: its server served {served_by_3_after} calls after the kill, node 2's {} in all", on_2.served());
    assert!(
        from_1.ok_after_mark.load(Ordering::Relaxed) > 0,
        "the client on node 1 got no answer after the kill"
    );
    assert!(
        recovered,
        "what was on the killed node did not carry on through another node: client on node 3 answered {} calls after the kill, server on node 3 served {served_by_3_after} (the connection must move to the next broker address)",
        from_3.ok_after_mark.load(Ordering::Relaxed)
    );
}
