//! A dead server is noticed (PROTOCOL.md, "Server gone"): every connection
//! has a Last Will on `<reply prefix>/_gone/<client id>`, a server that
//! stops cleanly publishes the same notice, and clients end the calls bound
//! to that instance with `Error::ServerGone` instead of waiting for their
//! deadline. Also `ServerOptions::ack_after_answer`: requests acknowledged
//! only once answered, so that a broker sends them again.
//!
//! Servers that must die for real run as `calc-server` processes, killed
//! (SIGKILL) by their PID. The last case runs on the 3-node rmqtt cluster
//! of `harness/cluster.rs` (skipped with a notice without its node binary).

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use futures_util::StreamExt;
use mqrpc::{ClientOptions, Error, ServerOptions};
use mqrpc_tests::raw::RawPeer;
use mqrpc_tests::{
    Calc, CalculatorClient, CalculatorServer, English, GreeterClient, GreeterServer, TestBroker,
};

mqrpc_tests::on_both_brokers!(
    killed_server_ends_its_instance_calls_and_stream_with_server_gone,
    closing_a_connection_announces_every_instance_it_served,
    dropping_a_serving_connection_announces_its_instance,
    shutdown_announces_the_instance_after_its_last_server_and_answers,
    discover_leaves_out_a_server_gone_within_its_window,
    ack_after_answer_serves_calls_batches_streams_and_slow_calls,
    a_dead_members_unacknowledged_request_is_not_handed_to_a_survivor,
    a_killed_server_with_a_named_instance_ends_its_calls_and_stream_with_server_gone,
    shutdown_succeeds_with_no_client_listening_for_notices,
);

/// Longer than any of these tests: a call that ends at its deadline
/// instead of at the notice fails with `Timeout`, not `ServerGone`.
const LONG: Duration = Duration::from_secs(60);

fn unique(prefix: &str) -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    format!(
        "{prefix}-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// A `calc-server` process with client id `client_id` (its default
/// instance id), once it serves.
async fn spawn_server(
    broker: &TestBroker,
    client_id: &str,
    env: &[(&str, &str)],
) -> tokio::process::Child {
    spawn_server_at(broker.url(), client_id, env).await
}

/// [`spawn_server`] through the broker at `url`.
async fn spawn_server_at(
    url: &str,
    client_id: &str,
    env: &[(&str, &str)],
) -> tokio::process::Child {
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_calc-server"));
    command
        .env("MQRPC_BROKER", format!("{url}?client_id={client_id}"))
        .envs(env.iter().copied());
    mqrpc_tests::spawn_serving(command).await
}

/// Waits until a `calc-server` started with `CALC_ANNOUNCE_STARTS=1`
/// prints that a `linger` handler has started.
async fn wait_for_start(server: &mut tokio::process::Child) {
    let stdout = server.stdout.as_mut().expect("spawn_serving keeps stdout");
    let mut line = [0u8; 8];
    tokio::time::timeout(LONG, tokio::io::AsyncReadExt::read_exact(stdout, &mut line))
        .await
        .expect("the linger call never reached its handler")
        .unwrap();
    assert_eq!(&line, b"\nstarted");
}

/// SIGKILL, by PID, and wait for the process to end.
async fn kill(mut server: tokio::process::Child) {
    server.start_kill().unwrap();
    server.wait().await.unwrap();
}

fn gone(instance: &str, method: &str) -> Error {
    Error::ServerGone {
        instance: instance.to_string(),
        method: method.to_string(),
    }
}

async fn killed_server_ends_its_instance_calls_and_stream_with_server_gone(broker: TestBroker) {
    let id = unique("calc-killed");
    let server = spawn_server(&broker, &id, &[]).await;
    let conn = broker.connect().await;
    let calc = CalculatorClient::with_options(&conn, ClientOptions::default().timeout(LONG))
        .await
        .unwrap();
    let one = calc.to_instance(&id).unwrap();
    let lingering: Vec<_> = (0..3)
        .map(|_| {
            let one = one.clone();
            tokio::spawn(async move { one.linger(50_000).await })
        })
        .collect();
    let hanging = tokio::spawn({
        let one = one.clone();
        async move { one.hang().await }
    });
    // A stream through the share group: bound to the instance by its
    // first item. The server sends a window of 32 and waits for credit.
    let mut items = calc.count_up(1_000_000).await.unwrap();
    assert_eq!(items.next().await.unwrap().unwrap(), 0);
    // The instance has the requests (one connection publishes in order).
    one.client().ping().await.unwrap();

    kill(server).await;

    for call in lingering {
        assert_eq!(call.await.unwrap().unwrap_err(), gone(&id, "linger"));
    }
    assert_eq!(hanging.await.unwrap().unwrap_err(), gone(&id, "hang"));
    // The items sent before the kill, in order, then the error.
    let mut next = 1;
    let end = loop {
        match items.next().await {
            Some(Ok(n)) => {
                assert_eq!(n, next);
                next += 1;
            }
            Some(Err(e)) => break e,
            None => panic!("the stream ended without an error after {next} items"),
        }
    };
    assert_eq!(end, gone(&id, "count_up"));
    assert!(next <= 1 + mqrpc::STREAM_WINDOW as u64, "{next} items");
    assert!(items.next().await.is_none());

    // Calls not bound to an instance are not affected by the notice, and
    // the connection keeps working.
    let (_server_conn, _calc) = broker.serve_calc().await;
    assert_eq!(calc.add(2, 3).await.unwrap(), 5);
}

/// An instance id other than the connection's client id
/// (`ServerOptions::instance`): its own Will, on a connection of its own,
/// still tells the callers when the process dies.
async fn a_killed_server_with_a_named_instance_ends_its_calls_and_stream_with_server_gone(
    broker: TestBroker,
) {
    let instance = unique("billing-A");
    let server = spawn_server(
        &broker,
        &unique("calc-client-id"),
        &[("CALC_INSTANCE", &instance)],
    )
    .await;
    let conn = broker.connect().await;
    let calc = CalculatorClient::with_options(&conn, ClientOptions::default().timeout(LONG))
        .await
        .unwrap();
    let one = calc.to_instance(&instance).unwrap();
    let hanging = tokio::spawn({
        let one = one.clone();
        async move { one.hang().await }
    });
    // One stream sent to the instance, one through the share group (bound
    // to the instance its first item names).
    let mut to_it = one.count_up(1_000_000).await.unwrap();
    let mut to_any = calc.count_up(1_000_000).await.unwrap();
    assert_eq!(to_it.next().await.unwrap().unwrap(), 0);
    assert_eq!(to_any.next().await.unwrap().unwrap(), 0);
    one.client().ping().await.unwrap();

    kill(server).await;

    assert_eq!(hanging.await.unwrap().unwrap_err(), gone(&instance, "hang"));
    for mut items in [to_it, to_any] {
        let end = loop {
            match items.next().await {
                Some(Ok(_)) => {}
                Some(Err(e)) => break e,
                None => panic!("the stream ended without an error"),
            }
        };
        assert_eq!(end, gone(&instance, "count_up"));
    }
}

/// A clean stop with nobody subscribed to the notices: Mosquitto answers
/// the notice with PUBACK 0x10 (no matching subscribers), which is no
/// failure of the shutdown (nobody had to be told).
async fn shutdown_succeeds_with_no_client_listening_for_notices(broker: TestBroker) {
    let conn = broker.connect().await;
    for options in [
        ServerOptions::default(),
        ServerOptions::default().instance(unique("calc-alone").as_str()),
    ] {
        let server = CalculatorServer::new(Calc::default())
            .serve_with(&conn, options)
            .await
            .unwrap();
        server.shutdown().await.unwrap();
    }
}

async fn closing_a_connection_announces_every_instance_it_served(broker: TestBroker) {
    let mut watcher = RawPeer::connect(broker.port(), &["mqrpc/_gone/+"]).await;
    // One server under the connection's client id, one under an instance
    // id of its own (on another connection: one service per connection).
    let (default_conn, _) = broker.serve_calc().await;
    let default_instance = default_conn.client_id().to_string();
    let custom = unique("calc-custom");
    let (custom_conn, _) = broker
        .serve_calc_with(ServerOptions::default().instance(custom.as_str()))
        .await;

    let calc = broker.client(LONG).await;
    let mut calls = Vec::new();
    for instance in [&default_instance, &custom] {
        let one = calc.to_instance(instance).unwrap();
        calls.push(tokio::spawn(async move { one.hang().await }));
        calc.to_instance(instance)
            .unwrap()
            .client()
            .ping()
            .await
            .unwrap();
    }
    default_conn.close().await;
    custom_conn.close().await;
    let mut outcomes = Vec::new();
    for call in calls {
        outcomes.push(call.await.unwrap().unwrap_err());
    }
    assert_eq!(
        outcomes,
        [gone(&default_instance, "hang"), gone(&custom, "hang")]
    );

    // On the wire: an empty message per instance, not retained (notices of
    // other connections that went away meanwhile are skipped).
    let mut expected = vec![
        format!("mqrpc/_gone/{default_instance}"),
        format!("mqrpc/_gone/{custom}"),
    ];
    while !expected.is_empty() {
        let publish = watcher
            .next_publish(Duration::from_secs(10))
            .await
            .unwrap_or_else(|| panic!("no notice for {expected:?}"));
        let topic = String::from_utf8(publish.topic.to_vec()).unwrap();
        if let Some(i) = expected.iter().position(|t| *t == topic) {
            assert!(publish.payload.is_empty());
            assert!(!publish.retain);
            expected.remove(i);
        }
    }
}

async fn dropping_a_serving_connection_announces_its_instance(broker: TestBroker) {
    let mut watcher = RawPeer::connect(broker.port(), &["mqrpc/_gone/+"]).await;
    let instance = unique("calc-dropped");
    let (conn, _) = broker
        .serve_calc_with(ServerOptions::default().instance(instance.as_str()))
        .await;
    // A client on the same connection: its own notices are not owed.
    let client = CalculatorClient::new(&conn).await.unwrap();
    drop(client);
    drop(conn); // the last handle: no close(), no handler running
    let notice = watcher.next_publish(Duration::from_secs(10)).await.unwrap();
    assert_eq!(
        String::from_utf8(notice.topic.to_vec()).unwrap(),
        format!("mqrpc/_gone/{instance}")
    );
}

async fn shutdown_announces_the_instance_after_its_last_server_and_answers(broker: TestBroker) {
    let mut watcher = RawPeer::connect(broker.port(), &["mqrpc/_gone/+"]).await;
    let instance = unique("calc-shared");
    let conn = broker.connect().await;
    let options = || ServerOptions::default().instance(instance.as_str());
    let service = Calc::default();
    let stats = service.stats.clone();
    let calc_server = CalculatorServer::new(service)
        .serve_with(&conn, options())
        .await
        .unwrap();
    let greeter_server = GreeterServer::new(English)
        .serve_with(&conn, options())
        .await
        .unwrap();
    let calc = broker.client(LONG).await;
    let one = calc.to_instance(&instance).unwrap();

    // A call in flight at the shutdown is answered, not ended by the notice.
    let call = tokio::spawn({
        let one = one.clone();
        async move { one.linger(300).await }
    });
    // The handler runs before the shutdown starts (the spawned call could
    // otherwise be published after it, to nobody).
    tokio::time::timeout(LONG, async {
        while stats.started.load(std::sync::atomic::Ordering::SeqCst) == 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("the linger call never reached its handler");
    one.client().ping().await.unwrap();
    calc_server.shutdown().await.unwrap();
    assert_eq!(call.await.unwrap().unwrap(), 300);
    // The greeter still serves under that instance: no notice yet. (A
    // marker published after the shutdown returned is the first message.)
    watcher
        .publish("mqrpc/_gone/marker", "", Default::default())
        .await;
    let first = watcher.next_publish(Duration::from_secs(10)).await.unwrap();
    assert_eq!(&first.topic[..], b"mqrpc/_gone/marker");
    let greeter = GreeterClient::new(&broker.connect().await).await.unwrap();
    let greeter = greeter.to_instance(&instance).unwrap();
    assert_eq!(greeter.hello("Ada".into()).await.unwrap(), "Hello, Ada!");

    greeter_server.shutdown().await.unwrap();
    let notice = watcher.next_publish(Duration::from_secs(10)).await.unwrap();
    assert_eq!(
        String::from_utf8(notice.topic.to_vec()).unwrap(),
        format!("mqrpc/_gone/{instance}")
    );
}

async fn discover_leaves_out_a_server_gone_within_its_window(broker: TestBroker) {
    let (_staying_conn, _) = broker
        .serve_calc_with(ServerOptions::default().instance("staying"))
        .await;
    let (leaving_conn, _) = broker
        .serve_calc_with(ServerOptions::default().instance("leaving"))
        .await;
    let conn = broker.connect().await;
    let instances = |found: Vec<mqrpc::ServiceInfo>| -> Vec<String> {
        found.into_iter().map(|info| info.instance).collect()
    };
    let before = mqrpc::discover(&conn, "mqrpc", Duration::from_millis(500))
        .await
        .unwrap();
    assert_eq!(instances(before), ["leaving", "staying"]);

    // Both answer at once; "leaving" goes away within the window.
    let discovering = tokio::spawn({
        let conn = conn.clone();
        async move { mqrpc::discover(&conn, "mqrpc", Duration::from_secs(2)).await }
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    leaving_conn.close().await;
    let during = discovering.await.unwrap().unwrap();
    assert_eq!(instances(during), ["staying"]);
}

async fn ack_after_answer_serves_calls_batches_streams_and_slow_calls(broker: TestBroker) {
    let (_server_conn, calc_impl) = broker
        .serve_calc_with(ServerOptions::default().ack_after_answer(true))
        .await;
    let calc = broker.client(LONG).await;
    // A slow call holds back the acks of every later request (they leave
    // in arrival order) until it is answered; the fast ones still run.
    let slow = tokio::spawn({
        let calc = calc.clone();
        async move { calc.linger(500).await }
    });
    let fast = futures_util::future::join_all((0..300).map(|i| {
        let calc = calc.clone();
        async move { calc.add(i, 1).await }
    }))
    .await;
    for (i, sum) in fast.into_iter().enumerate() {
        assert_eq!(sum.unwrap(), i as i64 + 1);
    }
    assert_eq!(slow.await.unwrap().unwrap(), 500);
    let items: Vec<u64> = calc
        .count_up(100)
        .await
        .unwrap()
        .map(Result::unwrap)
        .collect()
        .await;
    assert_eq!(items, (0..100).collect::<Vec<_>>());
    for _ in 0..10 {
        calc.count().await.unwrap();
    }
    assert_eq!(calc_impl.calls.load(Ordering::SeqCst), 10);
}

/// With a kept session, a server killed mid-call and started again under
/// its client id gets the requests it had not acknowledged: with
/// `ack_after_answer` it answers them; without, they were acknowledged on
/// arrival and are lost (the call ends at its deadline). Its Will waits as
/// long as its session, so the callers are not told it is gone.
/// Mosquitto only: the embedded broker keeps no sessions (it grants a
/// Session Expiry Interval of 0, so the Will goes out at once).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarted_server_runs_the_requests_it_had_not_acknowledged() {
    let Some(broker) = mqrpc_tests::mosquitto() else {
        return;
    };
    for ack_after_answer in [true, false] {
        let id = unique("calc-restarted");
        let env = [
            ("CALC_SESSION_EXPIRY_S", "60"),
            (
                "CALC_ACK_AFTER_ANSWER",
                if ack_after_answer { "1" } else { "0" },
            ),
            ("CALC_ANNOUNCE_STARTS", "1"),
        ];
        let mut server = spawn_server(&broker, &id, &env).await;
        let calc = broker.client(Duration::from_secs(8)).await;
        let one = calc.to_instance(&id).unwrap();
        let call = tokio::spawn({
            let one = one.clone();
            async move { one.linger(1_000).await }
        });
        // Killed while the handler runs: not before its request arrived
        // (that request would wait in the kept session and run after the
        // restart whether or not it had been acknowledged).
        wait_for_start(&mut server).await;
        kill(server).await;
        let again = spawn_server(&broker, &id, &env).await;
        let outcome = call.await.unwrap();
        if ack_after_answer {
            assert_eq!(outcome, Ok(1_000));
        } else {
            assert!(matches!(&outcome, Err(e) if e.is_timeout()), "{outcome:?}");
        }
        kill(again).await;
    }
}

/// MQTT 5.0 §4.8.2 lets a broker hand the unacknowledged messages of a
/// share group member that went away to another member. Neither broker
/// here does it (README, "Brokers"): the request is lost with its server
/// and the call ends at its deadline. If this starts failing, the broker
/// does it now: update the README.
async fn a_dead_members_unacknowledged_request_is_not_handed_to_a_survivor(broker: TestBroker) {
    let env = [("CALC_ACK_AFTER_ANSWER", "1")];
    let first = spawn_server(&broker, &unique("calc-first"), &env).await;
    let calc = broker.client(Duration::from_secs(6)).await;
    // The only member takes the request and holds its ack for 2 s.
    let call = tokio::spawn({
        let calc = calc.clone();
        async move { calc.linger(2_000).await }
    });
    calc.client().ping().await.unwrap();
    let survivor = spawn_server(&broker, &unique("calc-survivor"), &env).await;
    kill(first).await;
    let outcome = call.await.unwrap();
    assert!(
        matches!(&outcome, Err(e) if e.is_timeout()),
        "{}: {outcome:?}",
        broker.kind()
    );
    // The survivor serves what comes next.
    assert_eq!(calc.add(1, 2).await.unwrap(), 3);
    kill(survivor).await;
}

/// Across the nodes of a clustered broker (rmqtt 0.24, `harness/cluster.rs`;
/// skipped with a notice without its node binary): a server process on
/// node 2 is killed; the Will its node publishes reaches a client on node
/// 1, whose call to that instance and stream end with `ServerGone`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_server_is_noticed_across_cluster_nodes() {
    let Some(cluster) = mqrpc_tests::cluster::Cluster::start().await else {
        return;
    };
    let id = unique("calc-on-node-2");
    let server = spawn_server_at(&cluster.url(1), &id, &[]).await;
    let conn = mqrpc::Connection::connect_url(&cluster.url(0))
        .await
        .unwrap();
    let calc = CalculatorClient::with_options(&conn, ClientOptions::default().timeout(LONG))
        .await
        .unwrap();
    let one = calc.to_instance(&id).unwrap();
    let hanging = tokio::spawn({
        let one = one.clone();
        async move { one.hang().await }
    });
    let mut items = one.count_up(1_000_000).await.unwrap();
    assert_eq!(items.next().await.unwrap().unwrap(), 0);
    one.client().ping().await.unwrap();

    kill(server).await;

    assert_eq!(hanging.await.unwrap().unwrap_err(), gone(&id, "hang"));
    let end = loop {
        match items.next().await {
            Some(Ok(_)) => {}
            Some(Err(e)) => break e,
            None => panic!("the stream ended without an error"),
        }
    };
    assert_eq!(end, gone(&id, "count_up"));
}

/// MQTT 5.0 §4.8.2 on the rmqtt cluster (`harness/cluster.rs`; skipped with
/// a notice without its node binary): the only member of the share group,
/// on node 2, holds a request unacknowledged (`ack_after_answer`) and is
/// killed; a second member waits on node 3, the caller is on node 1.
/// rmqtt 0.24 (broadcast cluster, shared-subscription plugin) does not hand
/// the request to the survivor either: the call ends at its deadline. If
/// this starts failing, it does now: update the README and PROTOCOL.md.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_the_cluster_a_dead_members_unacknowledged_request_is_not_handed_to_a_survivor() {
    let Some(cluster) = mqrpc_tests::cluster::Cluster::start().await else {
        return;
    };
    let env = [("CALC_ACK_AFTER_ANSWER", "1")];
    let first = spawn_server_at(&cluster.url(1), &unique("calc-first"), &env).await;
    let conn = mqrpc::Connection::connect_url(&cluster.url(0))
        .await
        .unwrap();
    let calc = CalculatorClient::with_options(
        &conn,
        ClientOptions::default().timeout(Duration::from_secs(8)),
    )
    .await
    .unwrap();
    let call = tokio::spawn({
        let calc = calc.clone();
        async move { calc.linger(2_000).await }
    });
    calc.client().ping().await.unwrap();
    let survivor = spawn_server_at(&cluster.url(2), &unique("calc-survivor"), &env).await;
    kill(first).await;
    let outcome = call.await.unwrap();
    assert!(matches!(&outcome, Err(e) if e.is_timeout()), "{outcome:?}");
    // The survivor serves what comes next.
    assert_eq!(calc.add(1, 2).await.unwrap(), 3);
    kill(survivor).await;
}
