//! Load and fault tests against a real Mosquitto the test starts and kills
//! (by PID, on loopback): no call lost, none mismatched, none hanging when
//! the broker restarts or the server dies. Figures are printed (run with
//! `--nocapture`), never asserted as timings.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mqrpc::{ClientOptions, Connection};
use mqrpc_tests::tally::Tally;
use mqrpc_tests::{Calc, CalculatorClient, CalculatorServer, Mosquitto};

/// `calls` calls, `in_flight` at a time, spread over `clients` connections;
/// with the PUBLISH counts of the client connections.
async fn load(
    url: &str,
    calls: u64,
    in_flight: u64,
    clients: usize,
) -> (Tally, Duration, mqrpc::PublishCounts) {
    let server_conn = Connection::connect_url(url).await.unwrap();
    let _server = CalculatorServer::new(Calc::default())
        .serve(&server_conn)
        .await
        .unwrap();
    let mut stubs = Vec::new();
    for _ in 0..clients {
        let conn = Connection::connect_url(url).await.unwrap();
        let options = ClientOptions::default().timeout(Duration::from_secs(60));
        stubs.push((
            conn.clone(),
            CalculatorClient::with_options(&conn, options)
                .await
                .unwrap(),
        ));
    }
    let tally = Arc::new(Tally::default());
    let next = Arc::new(AtomicU64::new(0));
    let mark = Arc::new(Mutex::new(None));
    let started = Instant::now();
    let workers: Vec<_> = (0..in_flight)
        .map(|w| {
            let client = stubs[w as usize % clients].1.clone();
            let (tally, next, mark) = (tally.clone(), next.clone(), mark.clone());
            tokio::spawn(async move {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= calls {
                        return;
                    }
                    let i = i as i64;
                    let call = client.add(i, 1);
                    let backoff = Duration::from_millis(5);
                    let timeout = Duration::from_secs(60);
                    tally
                        .call(timeout, &mark, call, |sum| *sum == i + 1, backoff)
                        .await;
                }
            })
        })
        .collect();
    for worker in workers {
        worker.await.unwrap();
    }
    let elapsed = started.elapsed();
    let mut sent = mqrpc::PublishCounts::default();
    for (conn, _) in &stubs {
        let counts = conn.publish_counts();
        sent.publishes += counts.publishes;
        sent.merged += counts.merged;
        sent.merged_parts += counts.merged_parts;
    }
    (Arc::into_inner(tally).unwrap(), elapsed, sent)
}

fn start_mosquitto() -> Option<Mosquitto> {
    if !mqrpc_tests::mosquitto_available() {
        return None;
    }
    Some(Mosquitto::start(&[]).unwrap())
}

async fn load_case(calls: u64, in_flight: u64, clients: usize) {
    let Some(mosquitto) = start_mosquitto() else {
        return;
    };
    let url = format!("mqtt://127.0.0.1:{}", mosquitto.port);
    let (tally, elapsed, sent) = load(&url, calls, in_flight, clients).await;
    let errors = tally.errors();
    println!(
        "load: {calls} calls, {in_flight} in flight, {clients} clients: {} request messages ({} batches carrying {} calls), ok {}, lost {}, mismatched {}, hung {} in {:.2} s ({:.0} calls/s)",
        sent.publishes,
        sent.merged,
        sent.merged_parts,
        tally.ok.load(Ordering::Relaxed),
        errors.len(),
        tally.mismatched.load(Ordering::Relaxed),
        tally.hung.load(Ordering::Relaxed),
        elapsed.as_secs_f64(),
        calls as f64 / elapsed.as_secs_f64(),
    );
    assert!(
        errors.is_empty(),
        "{} calls failed, e.g. {:?}",
        errors.len(),
        errors.first()
    );
    assert_eq!(tally.mismatched.load(Ordering::Relaxed), 0);
    assert_eq!(tally.hung.load(Ordering::Relaxed), 0);
    assert_eq!(tally.ok.load(Ordering::Relaxed), calls);
    // The batched path carried most of the load.
    assert!(sent.merged_parts > calls / 2, "{sent:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn load_20k_calls_1000_in_flight_none_lost() {
    load_case(20_000, 1_000, 4).await;
}

/// The full figure; `.ci/run` runs it in release with `--ignored`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "100 000 calls: run with --release -- --ignored"]
async fn load_100k_calls_1000_in_flight_none_lost() {
    load_case(100_000, 1_000, 4).await;
}

/// `workers` callers calling in a loop, each call with `timeout`, until
/// [`Callers::finish`].
struct Callers {
    tally: Arc<Tally>,
    mark: Arc<Mutex<Option<Instant>>>,
    stop: Arc<AtomicBool>,
    workers: Vec<tokio::task::JoinHandle<()>>,
}

impl Callers {
    fn start(client: &CalculatorClient, workers: usize, timeout: Duration) -> Callers {
        let tally = Arc::new(Tally::default());
        let mark = Arc::new(Mutex::new(None));
        let stop = Arc::new(AtomicBool::new(false));
        let workers = (0..workers)
            .map(|w| {
                let client = client.with_timeout(timeout);
                let (tally, mark, stop) = (tally.clone(), mark.clone(), stop.clone());
                tokio::spawn(async move {
                    let mut i = (w as i64) << 32;
                    while !stop.load(Ordering::Relaxed) {
                        let call = client.add(i, 1);
                        let backoff = Duration::from_millis(5);
                        tally
                            .call(timeout, &mark, call, |sum| *sum == i + 1, backoff)
                            .await;
                        i += 1;
                    }
                })
            })
            .collect();
        Callers {
            tally,
            mark,
            stop,
            workers,
        }
    }

    fn ok(&self) -> u64 {
        self.tally.ok.load(Ordering::Relaxed)
    }

    /// From now on, note how long until the first success.
    fn mark_now(&self) {
        *self.mark.lock().unwrap() = Some(Instant::now());
    }

    async fn finish(self) -> Arc<Tally> {
        self.stop.store(true, Ordering::Relaxed);
        for worker in self.workers {
            worker.await.unwrap();
        }
        self.tally
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_restart_mid_load_every_call_resolves() {
    let Some(mut mosquitto) = start_mosquitto() else {
        return;
    };
    let port = mosquitto.port;
    let url = format!("mqtt://127.0.0.1:{port}");
    let server_conn = Connection::connect_url(&url).await.unwrap();
    let _server = CalculatorServer::new(Calc::default())
        .serve(&server_conn)
        .await
        .unwrap();
    let conn = Connection::connect_url(&url).await.unwrap();
    let client = CalculatorClient::new(&conn).await.unwrap();
    let timeout = Duration::from_secs(2);
    let callers = Callers::start(&client, 100, timeout);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let ok_before = callers.ok();
    mosquitto.kill();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let _mosquitto = Mosquitto::start_on(port, &[]).unwrap();
    callers.mark_now();
    tokio::time::sleep(Duration::from_secs(4)).await;
    let tally = callers.finish().await;
    let errors = tally.errors();
    let first_ok_ms = tally.first_ok_after_mark_us.load(Ordering::Relaxed) as f64 / 1e3;
    println!(
        "broker restart: ok {} ({ok_before} before the kill), errors {}, mismatched {}, hung {}, slowest call {:.1} ms (timeout {timeout:?}), first success {first_ok_ms:.1} ms after the restart",
        tally.ok.load(Ordering::Relaxed),
        errors.len(),
        tally.mismatched.load(Ordering::Relaxed),
        tally.hung.load(Ordering::Relaxed),
        tally.worst_us.load(Ordering::Relaxed) as f64 / 1e3,
    );
    assert!(ok_before > 0);
    assert_eq!(
        tally.hung.load(Ordering::Relaxed),
        0,
        "calls outlived their deadline"
    );
    assert_eq!(tally.mismatched.load(Ordering::Relaxed), 0);
    assert!(!errors.is_empty(), "the outage must show as errors");
    for e in &errors {
        assert!(
            e.is_connection() || e.is_timeout() || e.is_no_responder(),
            "unexpected error: {e:?}"
        );
    }
    assert!(
        first_ok_ms > 0.0,
        "service did not resume after the restart"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_killed_mid_load_callers_get_errors_not_hangs() {
    let Some(mosquitto) = start_mosquitto() else {
        return;
    };
    let url = format!("mqtt://127.0.0.1:{}", mosquitto.port);
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_calc-server"));
    command.env("MQRPC_BROKER", &url);
    let mut server = mqrpc_tests::spawn_serving(command).await;
    let conn = Connection::connect_url(&url).await.unwrap();
    let client = CalculatorClient::new(&conn).await.unwrap();
    let callers = Callers::start(&client, 100, Duration::from_secs(2));
    tokio::time::sleep(Duration::from_secs(1)).await;
    let ok_before = callers.ok();
    server.start_kill().unwrap(); // SIGKILL, by PID
    server.wait().await.unwrap();
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    let tally = callers.finish().await;
    let errors = tally.errors();
    let no_responder = errors.iter().filter(|e| e.is_no_responder()).count();
    let timeouts = errors.iter().filter(|e| e.is_timeout()).count();
    println!(
        "server killed: ok {} ({ok_before} before the kill), no-responder {no_responder}, timeouts {timeouts}, other errors {}, hung {}, slowest {:.1} ms",
        tally.ok.load(Ordering::Relaxed),
        errors.len() - no_responder - timeouts,
        tally.hung.load(Ordering::Relaxed),
        tally.worst_us.load(Ordering::Relaxed) as f64 / 1e3,
    );
    assert!(ok_before > 0);
    assert_eq!(tally.hung.load(Ordering::Relaxed), 0);
    assert_eq!(tally.mismatched.load(Ordering::Relaxed), 0);
    assert_eq!(no_responder + timeouts, errors.len(), "{errors:?}");
    // Once the broker has noticed, calls fail at once instead of timing out.
    let err = client
        .with_timeout(Duration::from_secs(30))
        .add(1, 1)
        .await
        .unwrap_err();
    assert!(err.is_no_responder(), "{err:?}");
}
