//! Metrics (feature `metrics`): calls move the per-method counters and
//! latency histograms of client and server, read through the `metrics`
//! facade with metrics-util's debugging recorder. Its own test binary with
//! one test: the recorder is process-wide.

use std::collections::BTreeMap;

use metrics_util::debugging::{DebugValue, DebuggingRecorder, Snapshotter};
use mqrpc::{Client, ClientOptions, Error};
use mqrpc_tests::{Calc, CalculatorClient, CalculatorServer, MathError, TestBroker};

/// `name{label=value,...}` → counter value or histogram sample count, for
/// what was recorded since the last snapshot.
fn take(snapshotter: &Snapshotter) -> BTreeMap<String, (u64, Vec<f64>)> {
    let mut metrics = BTreeMap::new();
    for (key, _, _, value) in snapshotter.snapshot().into_vec() {
        let key = key.key();
        let mut labels: Vec<String> = key
            .labels()
            .map(|l| format!("{}={}", l.key(), l.value()))
            .collect();
        labels.sort();
        let name = format!("{}{{{}}}", key.name(), labels.join(","));
        let entry = metrics.entry(name).or_insert((0, Vec::new()));
        match value {
            DebugValue::Counter(n) => entry.0 += n,
            DebugValue::Histogram(samples) => entry.1.extend(samples.iter().map(|s| s.0)),
            DebugValue::Gauge(_) => {}
        }
    }
    metrics
}

fn counter(metrics: &BTreeMap<String, (u64, Vec<f64>)>, name: &str) -> u64 {
    metrics.get(name).map_or(0, |m| m.0)
}

fn samples(metrics: &BTreeMap<String, (u64, Vec<f64>)>, name: &str) -> Vec<f64> {
    metrics.get(name).map_or(Vec::new(), |m| m.1.clone())
}

async fn calls_move_the_counters(broker: TestBroker, snapshotter: &Snapshotter) {
    let server_conn = broker.connect().await;
    let server = CalculatorServer::new(Calc::default())
        .serve(&server_conn)
        .await
        .unwrap();
    let conn = broker.connect().await;
    let calc = CalculatorClient::new(&conn).await.unwrap();
    take(snapshotter); // start from zero

    for i in 0..3 {
        assert_eq!(calc.add(i, 1).await.unwrap(), i + 1);
    }
    assert_eq!(
        calc.divide(1.0, 0.0).await.unwrap(),
        Err(MathError::DivideByZero)
    );
    assert!(matches!(
        calc.explode("boom".into()).await,
        Err(Error::Internal { .. })
    ));
    let untyped = Client::new(&conn, "Calculator", ClientOptions::default())
        .await
        .unwrap();
    assert!(matches!(
        untyped.call::<_, ()>("nope", &()).await,
        Err(Error::UnknownMethod { .. })
    ));
    // A call given up by its caller (future dropped) is `cancelled`.
    let abandoned = tokio::time::timeout(std::time::Duration::from_millis(100), calc.hang()).await;
    assert!(abandoned.is_err(), "`hang` never answers");
    // A request refused on arrival (its deadline already passed) is
    // counted by the server too.
    let mut peer = mqrpc_tests::raw::RawPeer::connect(broker.port(), &["replies/metrics"]).await;
    let mut properties =
        mqrpc_tests::raw::request_properties("replies/metrics", b"m1", Some("application/json"));
    properties
        .user_properties
        .push(("mqrpc-timeout-ms".into(), "0".into()));
    peer.publish("mqrpc/Calculator/count", "{}", properties)
        .await;
    let refused = peer
        .next_publish(std::time::Duration::from_secs(5))
        .await
        .expect("an answer");
    assert_eq!(
        mqrpc_tests::raw::status_of(&refused).as_deref(),
        Some("deadline-exceeded")
    );
    // The server counts after it answered: wait for its last count.
    let server_key =
        "mqrpc_server_requests_total{method=_unknown,service=Calculator,status=unknown-method}";
    let mut metrics = BTreeMap::new();
    for _ in 0..500 {
        for (name, (n, s)) in take(snapshotter) {
            let entry = metrics.entry(name).or_insert((0, Vec::new()));
            entry.0 += n;
            entry.1.extend(s);
        }
        if counter(&metrics, server_key) > 0 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    let kind = broker.kind();

    let client = |method: &str, status: &str| {
        counter(
            &metrics,
            &format!(
                "mqrpc_client_calls_total{{method={method},service=Calculator,status={status}}}"
            ),
        )
    };
    assert_eq!(client("add", "ok"), 3, "{kind}: {metrics:#?}");
    assert_eq!(
        client("divide", "error"),
        1,
        "{kind}: typed errors are `error`"
    );
    assert_eq!(client("explode", "internal"), 1, "{kind}");
    assert_eq!(client("nope", "unknown-method"), 1, "{kind}");
    assert_eq!(client("hang", "cancelled"), 1, "{kind}: a dropped call");
    let add_latency = samples(
        &metrics,
        "mqrpc_client_call_duration_seconds{method=add,service=Calculator}",
    );
    assert_eq!(add_latency.len(), 3, "{kind}: one latency sample per call");
    assert!(add_latency.iter().all(|s| *s > 0.0), "{add_latency:?}");

    let served = |method: &str, status: &str| {
        counter(
            &metrics,
            &format!(
                "mqrpc_server_requests_total{{method={method},service=Calculator,status={status}}}"
            ),
        )
    };
    assert_eq!(served("add", "ok"), 3, "{kind}: {metrics:#?}");
    assert_eq!(served("divide", "error"), 1, "{kind}");
    assert_eq!(served("explode", "internal"), 1, "{kind}");
    assert_eq!(served("count", "deadline-exceeded"), 1, "{kind}");
    assert_eq!(
        served("_unknown", "unknown-method"),
        1,
        "{kind}: unknown names share one label"
    );
    assert_eq!(
        samples(
            &metrics,
            "mqrpc_server_request_duration_seconds{method=add,service=Calculator}"
        )
        .len(),
        3,
        "{kind}"
    );
    server.shutdown().await.unwrap();

    // A call nobody serves is counted too, with how it ended.
    let lonely = calc.with_timeout(std::time::Duration::from_millis(200));
    let error = lonely.add(1, 2).await.unwrap_err();
    let status = if error.is_no_responder() {
        "no-responder"
    } else {
        assert!(error.is_timeout(), "{error}");
        "timeout"
    };
    let metrics = take(snapshotter);
    assert_eq!(
        counter(
            &metrics,
            &format!("mqrpc_client_calls_total{{method=add,service=Calculator,status={status}}}")
        ),
        1,
        "{kind}: {metrics:#?}"
    );

    // Retries are counted: a server with one handler slot and no queue,
    // its slot held by `linger`, answers `overloaded` to every attempt.
    let options = mqrpc::ServerOptions::default()
        .max_concurrent(1)
        .max_queued(0);
    let (_busy_conn, busy) = broker.serve_calc_with(options).await;
    let held = {
        let calc = calc.clone();
        tokio::spawn(async move { calc.linger(9_000).await })
    };
    let running = || busy.stats.started.load(std::sync::atomic::Ordering::SeqCst) > 0;
    assert!(
        mqrpc_tests::eventually(running).await,
        "{kind}: `linger` runs"
    );
    let policy = mqrpc::RetryPolicy::new(3).backoff(
        std::time::Duration::from_millis(1),
        std::time::Duration::from_millis(1),
    );
    let retrying = CalculatorClient::with_options(&conn, ClientOptions::default().retry(policy))
        .await
        .unwrap();
    let error = retrying.add(1, 2).await.unwrap_err();
    assert!(matches!(error, Error::Overloaded { .. }), "{kind}: {error}");
    held.abort();
    let metrics = take(snapshotter);
    let retries = "mqrpc_client_retries_total{method=add,reason=overloaded,service=Calculator}";
    assert_eq!(counter(&metrics, retries), 2, "{kind}: {metrics:#?}");
    let calls = "mqrpc_client_calls_total{method=add,service=Calculator,status=overloaded}";
    assert_eq!(counter(&metrics, calls), 1, "{kind}: one call, 3 attempts");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_move_the_counters_on_both_brokers() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    recorder
        .install()
        .expect("the only recorder of this binary");
    calls_move_the_counters(mqrpc_tests::embedded().await, &snapshotter).await;
    if let Some(broker) = mqrpc_tests::mosquitto() {
        calls_move_the_counters(broker, &snapshotter).await;
    }
}
