//! Server streaming: items in order with sequence numbers and an end
//! marker, credit-based back-pressure, cancellation when the caller drops
//! the stream, and a timeout per item rather than for the whole stream.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use mqrpc::{ClientOptions, Error, ServerOptions};
use mqrpc_tests::raw::{request_properties, status_of, RawPeer};
use mqrpc_tests::{eventually, Calc, CalculatorClient, TestBroker};

mqrpc_tests::on_both_brokers!(
    items_arrive_in_order_then_the_stream_ends,
    a_slow_caller_holds_the_producer_to_the_window,
    dropping_the_stream_stops_the_producer,
    a_stream_outlasting_the_timeout_gets_every_item_that_comes_in_time,
    a_stream_stalling_past_its_idle_timeout_ends_with_timeout_and_stops,
    a_stream_ends_at_its_total_limit_when_one_is_set,
    the_server_bounds_each_item_not_the_whole_stream,
);

/// A stream service whose items come at a pace.
#[mqrpc::service]
pub trait Ticker {
    /// `0..n`, one every `every_ms`.
    async fn ticks(&self, n: u64, every_ms: u64) -> mqrpc::Stream<u64>;
    /// `0..n` at once, then nothing, forever.
    async fn stall_after(&self, n: u64) -> mqrpc::Stream<u64>;
}

/// Counts the producers dropped (ended or stopped).
#[derive(Clone, Default)]
struct Metronome {
    dropped: Arc<AtomicU64>,
}

struct DropCount(Arc<AtomicU64>);

impl Drop for DropCount {
    fn drop(&mut self) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

impl Ticker for Metronome {
    async fn ticks(&self, n: u64, every_ms: u64) -> mqrpc::Stream<u64> {
        let guard = DropCount(self.dropped.clone());
        let state = (0, guard);
        mqrpc::Stream::new(futures_util::stream::unfold(
            state,
            move |(i, guard)| async move {
                if i == n {
                    return None;
                }
                tokio::time::sleep(Duration::from_millis(every_ms)).await;
                Some((i, (i + 1, guard)))
            },
        ))
    }

    async fn stall_after(&self, n: u64) -> mqrpc::Stream<u64> {
        let guard = DropCount(self.dropped.clone());
        let stall = futures_util::stream::once(async move {
            let _guard = guard;
            std::future::pending::<u64>().await
        });
        mqrpc::Stream::new(futures_util::stream::iter(0..n).chain(stall))
    }
}

/// A [`Metronome`] served on its own connection, and a client of it with
/// these options.
async fn serve_ticker(
    broker: &TestBroker,
    options: ClientOptions,
) -> (mqrpc::Connection, Metronome, TickerClient) {
    let server_conn = broker.connect().await;
    let metronome = Metronome::default();
    let _server = TickerServer::new(metronome.clone())
        .serve_with(&server_conn, ServerOptions::default())
        .await
        .unwrap();
    let client = TickerClient::with_options(&broker.connect().await, options)
        .await
        .unwrap();
    (server_conn, metronome, client)
}

/// A guard against a hang, far above what each case needs: a case that
/// reaches it fails (it is not a measure of speed).
const HANG_GUARD: Duration = Duration::from_secs(60);

async fn serve(broker: &TestBroker) -> (mqrpc::Connection, Calc, CalculatorClient) {
    let (conn, calc) = broker.serve_calc().await;
    let client = broker.client(Duration::from_secs(30)).await;
    (conn, calc, client)
}

async fn items_arrive_in_order_then_the_stream_ends(broker: TestBroker) {
    let (_conn, _calc, client) = serve(&broker).await;
    let items: Vec<u64> = client
        .count_up(100)
        .await
        .unwrap()
        .map(|item| item.unwrap())
        .collect()
        .await;
    assert_eq!(items, (0..100).collect::<Vec<_>>());
    // An empty stream ends at once.
    let none: Vec<_> = client.count_up(0).await.unwrap().collect().await;
    assert!(none.is_empty());
}

async fn a_slow_caller_holds_the_producer_to_the_window(broker: TestBroker) {
    let (_conn, calc, client) = serve(&broker).await;
    let mut items = client.count_up(1_000).await.unwrap();
    for expected in 0..5 {
        assert_eq!(items.next().await.unwrap().unwrap(), expected);
    }
    // The caller took 5 and waits: the server stops at the window.
    let window = u64::from(mqrpc::STREAM_WINDOW);
    assert!(eventually(|| calc.stats.produced.load(Ordering::SeqCst) == window).await);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        calc.stats.produced.load(Ordering::SeqCst),
        window,
        "ran ahead of the window"
    );
    // Taking the rest lets it finish, in order.
    let mut next = 5;
    while let Some(item) = items.next().await {
        assert_eq!(item.unwrap(), next);
        next += 1;
    }
    assert_eq!(next, 1_000);
}

async fn dropping_the_stream_stops_the_producer(broker: TestBroker) {
    let (_conn, calc, client) = serve(&broker).await;
    let mut items = client.count_up(1_000_000).await.unwrap();
    for expected in 0..3 {
        assert_eq!(items.next().await.unwrap().unwrap(), expected);
    }
    drop(items);
    assert!(
        eventually(|| calc.stats.stopped.load(Ordering::SeqCst) == 1).await,
        "the producer kept running"
    );
    assert!(calc.stats.produced.load(Ordering::SeqCst) < 1_000_000);
}

async fn a_stream_outlasting_the_timeout_gets_every_item_that_comes_in_time(broker: TestBroker) {
    // 15 items 150 ms apart: about 2.3 s in all, over twice the 1 s
    // timeout, each item well within it.
    let options = ClientOptions::default().timeout(Duration::from_secs(1));
    let (_conn, _metronome, client) = serve_ticker(&broker, options).await;
    let items = client.ticks(15, 150).await.unwrap();
    let items: Vec<u64> = tokio::time::timeout(HANG_GUARD, items.map(Result::unwrap).collect())
        .await
        .expect("hang guard");
    assert_eq!(items, (0..15).collect::<Vec<_>>());
}

async fn a_stream_stalling_past_its_idle_timeout_ends_with_timeout_and_stops(broker: TestBroker) {
    // The idle timeout apart from the call timeout (which would be 600 s).
    let options = ClientOptions::default()
        .timeout(Duration::from_secs(600))
        .stream_idle_timeout(Duration::from_millis(500));
    let (_conn, metronome, client) = serve_ticker(&broker, options).await;
    let mut items = client.stall_after(3).await.unwrap();
    let outcomes = tokio::time::timeout(HANG_GUARD, async {
        let mut outcomes = Vec::new();
        while let Some(item) = items.next().await {
            outcomes.push(item);
        }
        outcomes
    })
    .await
    .expect("hang guard");
    assert_eq!(
        outcomes,
        [
            Ok(0),
            Ok(1),
            Ok(2),
            Err(Error::Timeout {
                method: "stall_after".into(),
                timeout: Duration::from_millis(500),
            })
        ]
    );
    // The stream that timed out told the server to stop its producer.
    assert!(
        eventually(|| metronome.dropped.load(Ordering::SeqCst) == 1).await,
        "the stalled producer kept running"
    );
    drop(items);
    // With the default idle timeout (the call timeout, 1 s here) too.
    let short = client
        .client()
        .with_timeout(Duration::from_secs(1))
        .stream::<_, u64>("stall_after", &(0u64,))
        .await
        .unwrap();
    let outcomes: Vec<_> = tokio::time::timeout(HANG_GUARD, short.collect())
        .await
        .expect("hang guard");
    assert!(
        matches!(&outcomes[..], [Err(e)] if e.is_timeout()),
        "{outcomes:?}"
    );
}

async fn a_stream_ends_at_its_total_limit_when_one_is_set(broker: TestBroker) {
    // Items every 100 ms, each within the 1 s idle timeout, for 10 s: the
    // 500 ms limit of the whole stream ends it first.
    let options = ClientOptions::default()
        .timeout(Duration::from_secs(1))
        .stream_timeout(Duration::from_millis(500));
    let (_conn, metronome, client) = serve_ticker(&broker, options).await;
    let items = client.ticks(100, 100).await.unwrap();
    let outcomes: Vec<_> = tokio::time::timeout(HANG_GUARD, items.collect())
        .await
        .expect("hang guard");
    let (last, got) = outcomes.split_last().unwrap();
    assert_eq!(
        last,
        &Err(Error::Timeout {
            method: "ticks".into(),
            timeout: Duration::from_millis(500),
        })
    );
    assert!(got.len() < 100, "{} items", got.len());
    for (i, item) in got.iter().enumerate() {
        assert_eq!(item, &Ok(i as u64));
    }
    assert!(
        eventually(|| metronome.dropped.load(Ordering::SeqCst) == 1).await,
        "the producer kept running"
    );
}

/// On the wire, as a foreign caller sees it (PROTOCOL.md, "Server
/// streaming"): the request's 1 s budget bounds each item, not the stream.
async fn the_server_bounds_each_item_not_the_whole_stream(broker: TestBroker) {
    let (_conn, metronome, _client) = serve_ticker(&broker, ClientOptions::default()).await;
    let mut peer = RawPeer::connect(broker.port(), &["replies/ticks"]).await;
    let mut properties = request_properties("replies/ticks", b"t1", Some("application/json"));
    properties.message_expiry_interval = Some(1);
    properties
        .user_properties
        .push(("mqrpc-timeout-ms".into(), "1000".into()));
    // 15 items 150 ms apart: over 2 s in all, within the window of 32.
    peer.publish(
        "mqrpc/Ticker/ticks",
        r#"{"n":15,"every_ms":150}"#,
        properties.clone(),
    )
    .await;
    let mut statuses = Vec::new();
    while statuses.last().map(String::as_str) != Some("end") {
        let answer = peer
            .next_publish(HANG_GUARD)
            .await
            .expect("hang guard: no answer");
        statuses.push(status_of(&answer).unwrap());
    }
    assert_eq!(statuses.len(), 16, "{statuses:?}");
    assert!(statuses[..15].iter().all(|s| s == "ok"), "{statuses:?}");

    // A producer that stalls: the items it made, then `deadline-exceeded`
    // with the count of items sent.
    properties.correlation_data = Some(bytes::Bytes::from_static(b"t2"));
    peer.publish("mqrpc/Ticker/stall_after", r#"{"n":2}"#, properties)
        .await;
    let mut answers = Vec::new();
    while answers.len() < 3 {
        let answer = peer
            .next_publish(HANG_GUARD)
            .await
            .expect("hang guard: no answer");
        let seq = answer
            .properties
            .as_ref()
            .and_then(|p| p.user_properties.iter().find(|(k, _)| k == "mqrpc-seq"))
            .map(|(_, v)| v.clone());
        answers.push((status_of(&answer).unwrap(), seq));
    }
    let expected = [("ok", "0"), ("ok", "1"), ("deadline-exceeded", "2")]
        .map(|(status, seq)| (status.to_string(), Some(seq.to_string())));
    assert_eq!(answers, expected);
    assert!(eventually(|| metronome.dropped.load(Ordering::SeqCst) == 2).await);
}
