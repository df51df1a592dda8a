//! Built-in `_ping`, `_info` and `_stats`, and discovery of every service
//! without a registry.

use std::time::Duration;

use futures_util::StreamExt;
use mqrpc::ServerOptions;
use mqrpc_tests::raw::{request_properties, status_of, RawPeer};
use mqrpc_tests::{Calc, CalculatorServer, English, GreeterServer, TestBroker};

mqrpc_tests::on_both_brokers!(
    every_server_answers_ping_info_and_stats,
    discover_finds_every_service,
    discovery_topic_serves_only_builtins,
    info_stats_and_ping_of_one_instance_end_at_its_answer,
);

async fn every_server_answers_ping_info_and_stats(broker: TestBroker) {
    let mut conns = Vec::new();
    for name in ["a", "b"] {
        let (conn, _) = broker
            .serve_calc_with(ServerOptions::default().instance(name))
            .await;
        conns.push(conn);
    }
    let calc = broker.client(Duration::from_millis(700)).await;
    calc.client().ping().await.unwrap();
    for i in 0..6 {
        calc.add(i, 1).await.unwrap();
    }
    calc.divide(1.0, 0.0).await.unwrap().unwrap_err();
    calc.explode("boom".into()).await.unwrap_err();

    let mut infos: Vec<mqrpc::ServiceInfo> = calc
        .client()
        .info()
        .await
        .unwrap()
        .map(|(_, info)| info.unwrap())
        .collect()
        .await;
    infos.sort_by(|a, b| a.instance.cmp(&b.instance));
    assert_eq!(infos.len(), 2, "{infos:?}");
    assert_eq!(
        infos
            .iter()
            .map(|i| i.instance.as_str())
            .collect::<Vec<_>>(),
        ["a", "b"]
    );
    let info = &infos[0];
    assert_eq!(
        (info.service.as_str(), info.version.as_str()),
        ("Calculator", env!("CARGO_PKG_VERSION"))
    );
    let add = info.methods.iter().find(|m| m.name == "add").unwrap();
    assert_eq!(add.schema.as_ref().map(String::len), Some(16));

    let stats: Vec<mqrpc::ServiceStats> = calc
        .client()
        .stats()
        .await
        .unwrap()
        .map(|(_, stats)| stats.unwrap())
        .collect()
        .await;
    assert_eq!(stats.len(), 2);
    let total = |name: &str, f: fn(&mqrpc::MethodStats) -> u64| {
        stats
            .iter()
            .flat_map(|s| s.methods.iter())
            .filter(|m| m.name == name)
            .map(f)
            .sum::<u64>()
    };
    assert_eq!(total("add", |m| m.calls), 6);
    assert_eq!(total("divide", |m| m.app_errors), 1);
    assert_eq!(total("explode", |m| m.failures), 1);
}

async fn discover_finds_every_service(broker: TestBroker) {
    let conn = broker.connect().await;
    let _calc = CalculatorServer::new(Calc::default())
        .serve_with(&conn, ServerOptions::default().instance("calc-1"))
        .await
        .unwrap();
    let _greeter = GreeterServer::new(English)
        .serve_with(&conn, ServerOptions::default().instance("greeter-1"))
        .await
        .unwrap();
    let found = mqrpc::discover(&conn, "mqrpc", Duration::from_millis(700))
        .await
        .unwrap();
    let names: Vec<_> = found
        .iter()
        .map(|i| (i.service.as_str(), i.instance.as_str()))
        .collect();
    assert_eq!(names, [("Calculator", "calc-1"), ("Greeter", "greeter-1")]);
    // Another prefix holds nothing.
    let none = mqrpc::discover(&conn, "elsewhere", Duration::from_millis(300))
        .await
        .unwrap();
    assert!(none.is_empty());
}

async fn discovery_topic_serves_only_builtins(broker: TestBroker) {
    let (_conn, calc) = broker.serve_calc().await;
    let mut peer = RawPeer::connect(broker.port(), &["replies/discovery"]).await;
    let properties = request_properties("replies/discovery", b"d1", Some("application/json"));
    peer.publish("mqrpc/_all/_all/count", "{}", properties)
        .await;
    let answer = peer.next_publish(Duration::from_secs(5)).await.unwrap();
    assert_eq!(status_of(&answer).as_deref(), Some("unknown-method"));
    assert_eq!(calc.calls.load(std::sync::atomic::Ordering::SeqCst), 0);
}

/// `info`, `stats` and `ping` of one instance end at its answer: the
/// client's timeout is 600 s, and the hang guard of 60 s, far below it,
/// fails the case if any of them waited for the timeout. (A guard against
/// a hang, not a measure of speed.)
async fn info_stats_and_ping_of_one_instance_end_at_its_answer(broker: TestBroker) {
    const HANG_GUARD: Duration = Duration::from_secs(60);
    let (_conn, _) = broker
        .serve_calc_with(ServerOptions::default().instance("only"))
        .await;
    let calc = broker.client(Duration::from_secs(600)).await;
    let one = calc.to_instance("only").unwrap();
    let (infos, stats) = tokio::time::timeout(HANG_GUARD, async {
        one.client().ping().await.unwrap();
        let infos: Vec<_> = one.client().info().await.unwrap().collect().await;
        let stats: Vec<_> = one.client().stats().await.unwrap().collect().await;
        (infos, stats)
    })
    .await
    .expect("hang guard: an answer of one instance waited for the timeout");
    let [(instance, Ok(info))] = &infos[..] else {
        panic!("one answer, not {infos:?}")
    };
    assert_eq!(
        (
            instance.as_str(),
            info.service.as_str(),
            info.instance.as_str()
        ),
        ("only", "Calculator", "only")
    );
    let [(_, Ok(stats))] = &stats[..] else {
        panic!("one answer, not {stats:?}")
    };
    assert_eq!(stats.instance, "only");
    // Of every server: the first answer, without waiting for others.
    let (instance, info) = tokio::time::timeout(HANG_GUARD, async {
        calc.client().info().await.unwrap().next().await.unwrap()
    })
    .await
    .expect("hang guard");
    assert_eq!(
        (instance.as_str(), info.unwrap().instance.as_str()),
        ("only", "only")
    );
}
