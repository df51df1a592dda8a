//! Load-balanced servers: the servers of a service share its requests
//! through an MQTT v5 shared subscription, and a lost server's share moves
//! to the others.

use std::sync::atomic::Ordering;
use std::time::Duration;

use mqrpc::{ClientOptions, Connection, ServerOptions};
use mqrpc_tests::{Calc, CalculatorClient, CalculatorServer, TestBroker};

mqrpc_tests::on_both_brokers!(
    servers_in_a_group_split_the_load_and_survive_a_lost_one,
    servers_without_a_group_each_get_every_request,
    cancel_reaches_the_instance_running_the_call,
    oneway_method_runs_and_gets_no_answer,
    a_named_instance_gets_the_calls_sent_to_it,
    broadcast_gets_one_typed_answer_per_instance,
);

fn served(calcs: &[Calc]) -> Vec<u64> {
    calcs
        .iter()
        .map(|c| c.calls.load(Ordering::SeqCst))
        .collect()
}

async fn servers_in_a_group_split_the_load_and_survive_a_lost_one(broker: TestBroker) {
    let mut conns = Vec::new();
    let mut calcs = Vec::new();
    for _ in 0..3 {
        let conn = broker.connect().await;
        let calc = Calc::default();
        let handle = CalculatorServer::new(calc.clone())
            .serve(&conn)
            .await
            .unwrap();
        assert_eq!(handle.topic_filter(), "$share/mqrpc/mqrpc/Calculator/+");
        conns.push(conn);
        calcs.push(calc);
    }
    let client_conn = broker.connect().await;
    let client = CalculatorClient::new(&client_conn).await.unwrap();
    for _ in 0..300 {
        client.count().await.unwrap();
    }
    let first = served(&calcs);
    assert_eq!(
        first.iter().sum::<u64>(),
        300,
        "each call served exactly once: {first:?}"
    );
    assert!(
        first.iter().all(|&n| n > 0),
        "every server got a share: {first:?}"
    );

    // One server goes away; the others take its share.
    conns[0].close().await;
    let client = CalculatorClient::with_options(
        &client_conn,
        ClientOptions::default().timeout(Duration::from_secs(5)),
    )
    .await
    .unwrap();
    for _ in 0..200 {
        client.count().await.unwrap();
    }
    let after = served(&calcs);
    assert_eq!(after[0], first[0], "the closed server got calls: {after:?}");
    assert_eq!(after.iter().sum::<u64>(), 500, "{after:?}");
    assert!(
        after[1] > first[1] && after[2] > first[2],
        "{first:?} -> {after:?}"
    );
}

async fn servers_without_a_group_each_get_every_request(broker: TestBroker) {
    let mut calcs = Vec::new();
    let mut conns: Vec<Connection> = Vec::new();
    for _ in 0..2 {
        let conn = broker.connect().await;
        let calc = Calc::default();
        let _handle = CalculatorServer::new(calc.clone())
            .serve_with(&conn, ServerOptions::default().no_share_group())
            .await
            .unwrap();
        conns.push(conn);
        calcs.push(calc);
    }
    let client_conn = broker.connect().await;
    let client = CalculatorClient::new(&client_conn).await.unwrap();
    for _ in 0..20 {
        client.count().await.unwrap();
    }
    // The first answer wins; both ran every call.
    assert!(
        mqrpc_tests::eventually(|| served(&calcs) == vec![20, 20]).await,
        "{:?}",
        served(&calcs)
    );
}

/// The client does not know which server of the group took its call; the
/// cancel reaches every one, and the one running it stops.
async fn cancel_reaches_the_instance_running_the_call(broker: TestBroker) {
    let mut conns = Vec::new();
    let mut calcs = Vec::new();
    for _ in 0..3 {
        let conn = broker.connect().await;
        let calc = Calc::default();
        let _handle = CalculatorServer::new(calc.clone())
            .serve(&conn)
            .await
            .unwrap();
        conns.push(conn);
        calcs.push(calc);
    }
    let client = broker.client(Duration::from_secs(60)).await;
    let stat = |calcs: &[Calc], f: fn(&mqrpc_tests::Stats) -> &std::sync::atomic::AtomicU64| {
        calcs
            .iter()
            .map(|c| f(&c.stats).load(Ordering::SeqCst))
            .sum::<u64>()
    };
    for round in 1..=3 {
        let call = tokio::spawn({
            let client = client.clone();
            async move { client.linger(30_000).await }
        });
        assert!(mqrpc_tests::eventually(|| stat(&calcs, |s| &s.started) == round).await);
        call.abort();
        assert!(
            mqrpc_tests::eventually(|| stat(&calcs, |s| &s.stopped) == round).await,
            "round {round}: the handler was not stopped"
        );
    }
    assert_eq!(stat(&calcs, |s| &s.finished), 0);
}

/// `#[mqrpc(oneway)]`: no Response Topic, no Correlation Data on the wire;
/// the server runs it.
async fn oneway_method_runs_and_gets_no_answer(broker: TestBroker) {
    let mut observer =
        mqrpc_tests::raw::RawPeer::connect(broker.port(), &["mqrpc/Calculator/bump"]).await;
    let server_conn = broker.connect().await;
    let calc = Calc::default();
    let _server = CalculatorServer::new(calc.clone())
        .serve(&server_conn)
        .await
        .unwrap();
    let conn = broker.connect().await;
    let client = CalculatorClient::new(&conn).await.unwrap();
    client.bump(5).await.unwrap();
    client.bump(7).await.unwrap();
    assert!(mqrpc_tests::eventually(|| calc.calls.load(Ordering::SeqCst) == 12).await);
    let request = observer
        .next_publish(Duration::from_secs(5))
        .await
        .expect("the request");
    let properties = request.properties.unwrap_or_default();
    assert_eq!(properties.response_topic, None);
    assert_eq!(properties.correlation_data, None);
}

async fn a_named_instance_gets_the_calls_sent_to_it(broker: TestBroker) {
    let mut conns = Vec::new();
    let mut calcs = Vec::new();
    for name in ["alpha", "beta"] {
        let conn = broker.connect().await;
        let calc = Calc::default();
        let handle = CalculatorServer::new(calc.clone())
            .serve_with(&conn, ServerOptions::default().instance(name))
            .await
            .unwrap();
        assert_eq!(handle.instance(), name);
        conns.push(conn);
        calcs.push(calc);
    }
    let client_conn = broker.connect().await;
    let client = CalculatorClient::new(&client_conn).await.unwrap();
    let beta = client.to_instance("beta").unwrap();
    for _ in 0..30 {
        beta.count().await.unwrap();
    }
    assert_eq!(served(&calcs), vec![0, 30]);
    // Nobody is called gamma.
    let err = client
        .with_timeout(Duration::from_millis(300))
        .to_instance("gamma")
        .unwrap()
        .count()
        .await
        .unwrap_err();
    assert!(err.is_no_responder() || err.is_timeout(), "{err:?}");
    assert!(client.to_instance("a/b").is_err());
    // By default the instance id is the connection's client id.
    let conn = broker.connect().await;
    let handle = CalculatorServer::new(Calc::default())
        .serve(&conn)
        .await
        .unwrap();
    assert_eq!(handle.instance(), conn.client_id());
}

async fn broadcast_gets_one_typed_answer_per_instance(broker: TestBroker) {
    use futures_util::StreamExt;
    let mut conns = Vec::new();
    for name in ["a", "b", "c"] {
        let (conn, _) = broker
            .serve_calc_with(ServerOptions::default().instance(name))
            .await;
        conns.push(conn);
    }
    let client = broker.client(Duration::from_millis(700)).await;
    // Until the deadline: every instance answers once.
    let mut answers: Vec<(String, i64)> = client
        .broadcast(None)
        .add(20, 22)
        .await
        .unwrap()
        .map(|(instance, sum)| (instance, sum.unwrap()))
        .collect()
        .await;
    answers.sort();
    assert_eq!(
        answers,
        vec![("a".into(), 42), ("b".into(), 42), ("c".into(), 42)]
    );
    // Typed errors come through per instance.
    let errors: Vec<_> = client
        .broadcast(None)
        .divide(1.0, 0.0)
        .await
        .unwrap()
        .collect()
        .await;
    assert_eq!(errors.len(), 3);
    assert!(errors
        .iter()
        .all(|(_, r)| r == &Ok(Err(mqrpc_tests::MathError::DivideByZero))));
    // After N answers the stream ends.
    let two: Vec<_> = client
        .with_timeout(Duration::from_secs(30))
        .broadcast(Some(2))
        .count()
        .await
        .unwrap()
        .collect()
        .await;
    assert_eq!(two.len(), 2, "{two:?}");
}
