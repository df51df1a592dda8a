//! Server streaming: items in order with sequence numbers and an end
//! marker, credit-based back-pressure, cancellation when the caller drops
//! the stream.

use std::sync::atomic::Ordering;
use std::time::Duration;

use futures_util::StreamExt;
use mqrpc_tests::{eventually, Calc, CalculatorClient, TestBroker};

mqrpc_tests::on_both_brokers!(
    items_arrive_in_order_then_the_stream_ends,
    a_slow_caller_holds_the_producer_to_the_window,
    dropping_the_stream_stops_the_producer,
);

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
