//! MQTT over WebSocket (feature `websocket`), through the embedded broker's
//! WebSocket endpoint and an `mqtt5` broker with a TLS WebSocket endpoint:
//! Debian's Mosquitto 2.0.11 here refuses to open a websockets listener,
//! so it cannot take part.

use std::time::Duration;

use mqrpc::{ConnectOptions, Connection, EmbeddedBroker, Error};
use mqrpc_tests::{Calc, CalculatorClient, CalculatorServer};

/// Connect failures must come back, not hang: a guard, not a timing check.
async fn connect(options: ConnectOptions) -> Result<Connection, Error> {
    tokio::time::timeout(Duration::from_secs(30), Connection::connect(options))
        .await
        .expect("connect neither succeeded nor failed within 30 s")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_cross_between_websocket_and_tcp_clients() {
    mqrpc_tests::init_tracing();
    let broker = EmbeddedBroker::start_with_websocket().await.unwrap();
    let ws_url = broker.websocket_url().expect("a WebSocket endpoint");
    assert!(ws_url.starts_with("ws://127.0.0.1:"), "{ws_url}");

    // The server speaks MQTT over WebSocket, the client plain MQTT, and
    // the other way round.
    let over_ws = connect(ConnectOptions::from_url(&ws_url).unwrap())
        .await
        .unwrap();
    assert!(over_ws.options().is_websocket());
    assert_eq!(over_ws.broker_url(), ws_url);
    let over_tcp = Connection::connect_url(&broker.url()).await.unwrap();
    let _serving_ws = CalculatorServer::new(Calc::default())
        .serve(&over_ws)
        .await
        .unwrap();
    let tcp_client = CalculatorClient::new(&over_tcp).await.unwrap();
    assert_eq!(tcp_client.add(40, 2).await.unwrap(), 42);
    let ws_client = CalculatorClient::new(&over_ws).await.unwrap();
    assert_eq!(
        ws_client.echo("über WebSocket".into()).await.unwrap(),
        "über WebSocket"
    );

    // The builder form names the same endpoint.
    let port = ws_url
        .trim_start_matches("ws://127.0.0.1:")
        .trim_end_matches("/mqtt")
        .parse::<u16>()
        .unwrap();
    let built = connect(ConnectOptions::new("127.0.0.1", port).websocket("mqtt"))
        .await
        .unwrap();
    let client = CalculatorClient::new(&built).await.unwrap();
    assert_eq!(client.add(1, 2).await.unwrap(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_endpoint_is_a_connect_error() {
    mqrpc_tests::init_tracing();
    let broker = EmbeddedBroker::start_with_websocket().await.unwrap();
    let ws_url = broker.websocket_url().unwrap();
    // A path the broker does not serve: the HTTP upgrade is refused.
    let wrong_path = ws_url.replace("/mqtt", "/nothing-here");
    let error = connect(ConnectOptions::from_url(&wrong_path).unwrap())
        .await
        .unwrap_err();
    assert!(matches!(error, Error::Connect { .. }), "{error:?}");
    // A WebSocket client on the plain MQTT port: no HTTP there.
    let plain = format!("ws://{}/mqtt", broker.addr());
    let error = connect(ConnectOptions::from_url(&plain).unwrap())
        .await
        .unwrap_err();
    assert!(matches!(error, Error::Connect { .. }), "{error:?}");
}

/// `wss://` and `mqtts://` against an `mqtt5` broker with a TLS WebSocket
/// endpoint and a TLS listener, its certificate from a CA made here.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_travel_over_secure_websocket() {
    mqrpc_tests::init_tracing();
    let pki = mqrpc_tests::security::Pki::generate("wss");
    let broker = mqrpc_tests::security::TlsMqtt5::start(&pki).await;
    let (wss_port, tls_addr) = (broker.wss_port, broker.tls_addr);

    let ca = pki.file("ca.pem");
    let wss = format!("wss://127.0.0.1:{wss_port}/mqtt?ca={}", ca.display());
    let over_wss = connect(ConnectOptions::from_url(&wss).unwrap())
        .await
        .unwrap();
    assert!(over_wss.options().is_websocket() && over_wss.options().is_tls());
    assert_eq!(
        over_wss.broker_url(),
        format!("wss://127.0.0.1:{wss_port}/mqtt")
    );
    let over_tls = connect(
        ConnectOptions::from_url(&format!("mqtts://{tls_addr}?ca={}", ca.display())).unwrap(),
    )
    .await
    .unwrap();
    let _serving = CalculatorServer::new(Calc::default())
        .serve(&over_wss)
        .await
        .unwrap();
    let client = CalculatorClient::new(&over_tls).await.unwrap();
    assert_eq!(client.add(20, 22).await.unwrap(), 42);

    // Another CA did not sign the broker's certificate.
    let other = mqrpc_tests::security::Pki::generate("wss-other");
    let untrusted = format!(
        "wss://127.0.0.1:{wss_port}/mqtt?ca={}",
        other.file("ca.pem").display()
    );
    let error = connect(ConnectOptions::from_url(&untrusted).unwrap())
        .await
        .unwrap_err();
    assert!(error.to_string().contains("certificate"), "{error}");
    drop(broker);
}
