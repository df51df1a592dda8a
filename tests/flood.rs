//! A flooding peer (issue 23): floods of requests with distinct Correlation
//! Data (2 KiB each) and Response Topics nobody reads, big requests whose
//! arguments do not decode, batches declaring billions of entries,
//! requests with oversized user properties. The server (bounded: 1 000
//! calls in its duplicate table, 16 handlers, 100 queued requests) keeps
//! answering good calls and answers each probe correctly, on both brokers.
//!
//! The resident memory of the test process over the flood is printed, not
//! bounded: it grows by 55-150 MiB (RELIABILITY.md, "Hostile peer"),
//! though what the server holds is bounded (answers waiting to leave:
//! `tests/backlog.rs`); the peer's and the broker's buffers and the
//! allocator's retention are in the figure too.
//! What this test fixed: a kept duplicate-table entry held the whole packet
//! its request came in (`server::duplicates`,
//! `kept_keys_do_not_hold_the_packet_they_came_in`). The cases run one
//! after the other (the process's memory is shared).

use std::time::Duration;

use bytes::Bytes;
use mqrpc_tests::batch::batch_properties;
use mqrpc_tests::raw::{request_properties, status_of, RawPeer};
use mqrpc_tests::TestBroker;

mqrpc_tests::on_both_brokers!(flood_of_unread_requests_stays_bounded_and_good_calls_are_answered);

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .expect("VmRSS")
}

const FLOOD: usize = 30_000;

async fn flood_of_unread_requests_stays_bounded_and_good_calls_are_answered(broker: TestBroker) {
    static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    let _alone = ONE_AT_A_TIME.lock().await;
    let options = mqrpc::ServerOptions::default()
        .dedup(1_000, 1 << 20, Duration::from_secs(60))
        .max_concurrent(16)
        .max_queued(100);
    let (conn, calc) = broker.serve_calc_with(options).await;
    let client = mqrpc_tests::CalculatorClient::with_options(
        &conn,
        mqrpc::ClientOptions::default().timeout(Duration::from_secs(60)),
    )
    .await
    .unwrap();
    assert_eq!(client.add(1, 1).await.unwrap(), 2);
    let mut peer = RawPeer::connect(broker.port(), &["hostile/answers"]).await;
    let before = rss_kib();
    let args = mqrpc::Codec::Postcard.encode(&(2i64, 3i64)).unwrap();
    for i in 0..FLOOD {
        let mut correlation = vec![0u8; 2048];
        correlation[..8].copy_from_slice(&(i as u64).to_be_bytes());
        let properties = request_properties(&format!("void/{i}"), &correlation, None);
        peer.publish("mqrpc/Calculator/add", args.clone(), properties)
            .await;
    }
    // Big requests whose arguments do not decode (answered `bad-request`
    // to nobody): a kept entry must not hold its 32 KiB packet.
    let garbage = vec![0xffu8; 32 * 1024];
    for i in 0..2_000u64 {
        let properties = request_properties(&format!("void/big/{i}"), &i.to_be_bytes(), None);
        peer.publish("mqrpc/Calculator/add", garbage.clone(), properties)
            .await;
    }
    // Good calls answered once the flood is taken in (`Overloaded` while
    // the queue is full of it).
    let mut overloaded = 0;
    for i in 0..100 {
        loop {
            match client.add(i, 1).await {
                Ok(sum) => break assert_eq!(sum, i + 1),
                Err(e) if e.is_retryable() => {
                    overloaded += 1;
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                Err(e) => panic!("a good call failed: {e:?}"),
            }
        }
    }
    // Batches announcing 2^32 - 1 entries, and requests with 64 user
    // properties of 1 KiB (64 KiB in all, over the server's 16 KiB limit,
    // PROTOCOL.md "Server limits"): each refused `bad-request`, nothing kept.
    for i in 0..100u32 {
        let mut properties = batch_properties("hostile/answers");
        properties.correlation_data = Some(Bytes::from(format!("huge-{i}")));
        peer.publish(
            "mqrpc/Calculator/_batch/1",
            vec![0xff, 0xff, 0xff, 0xff, 0x0f],
            properties,
        )
        .await;
        let mut properties =
            request_properties("hostile/answers", format!("props-{i}").as_bytes(), None);
        properties.user_properties = (0..64)
            .map(|k| (format!("k{k}"), "v".repeat(1024)))
            .collect();
        peer.publish("mqrpc/Calculator/add", args.clone(), properties)
            .await;
    }
    let mut statuses = std::collections::BTreeMap::new();
    while let Some(answer) = peer.next_publish(Duration::from_secs(30)).await {
        *statuses
            .entry(status_of(&answer).unwrap_or_default())
            .or_insert(0u32) += 1;
        if statuses.values().sum::<u32>() == 200 {
            break;
        }
    }
    let after = rss_kib();
    println!(
        "hostile ({}): {FLOOD} unread requests of 2 KiB Correlation Data, 2 000 unread 32 KiB requests, 100 huge batches, 100 requests with 64 KiB of user properties: answers {statuses:?}; good calls refused as overloaded first {overloaded} times; RSS {before} -> {after} KiB",
        broker.kind()
    );
    assert_eq!(statuses.get("bad-request"), Some(&200), "{statuses:?}");
    assert_eq!(statuses.get("ok"), None, "{statuses:?}");
    drop(calc);
}
