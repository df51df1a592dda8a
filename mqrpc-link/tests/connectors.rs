//! The transport's TLS and WebSocket connectors (`TlsConnector`,
//! `WsConnector`) against real brokers: Mosquitto with a TLS listener, the
//! embedded broker's WebSocket endpoint, and an `mqtt5` broker with TLS and
//! TLS WebSocket listeners, certificates made at test time. Each link
//! subscribes, publishes QoS 1 with Response Topic and Correlation Data, gets
//! the PUBACK's code and its own publish back with the properties intact.
//! Timeouts are only hang guards. (Connections made from options and
//! URLs are tested with mqrpc's own tests: `security.rs`, `websocket.rs`.)

#![cfg(all(feature = "tls", feature = "websocket"))]

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use mqrpc::EmbeddedBroker;
use mqrpc_link::*;
use mqrpc_tests::security::Pki;
use mqrpc_tests::Mosquitto;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

const GUARD: Duration = Duration::from_secs(30);

async fn guard<F: std::future::Future>(f: F) -> F::Output {
    tokio::time::timeout(GUARD, f).await.expect("hang guard")
}

/// A rustls configuration trusting the CA in `ca` only, with a client
/// certificate and key when given.
fn tls_config(ca: &Path, client: Option<(&Path, &Path)>) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca).unwrap() {
        roots.add(cert.unwrap()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots);
    let config = match client {
        None => builder.with_no_client_auth(),
        Some((cert, key)) => {
            let chain = CertificateDer::pem_file_iter(cert)
                .unwrap()
                .collect::<Result<Vec<_>, _>>()
                .unwrap();
            let key = PrivateKeyDer::from_pem_file(key).unwrap();
            builder.with_client_auth_cert(chain, key).unwrap()
        }
    };
    Arc::new(config)
}

/// No reconnect: a failed connect ends the transport with its reason.
fn config(id: &str) -> TransportConfig {
    let mut c = TransportConfig::new(id);
    c.session_expiry = 0;
    c.reconnect = None;
    c
}

/// Waits for the first Connected, or panics with the Disconnected reason.
async fn connected(incoming: &mut Incoming) {
    loop {
        match guard(incoming.recv()).await.expect("transport stopped") {
            Event::State(ConnectionState::Connected { .. }) => return,
            Event::State(ConnectionState::Disconnected { error, .. }) => {
                panic!("not connected: {error}")
            }
            Event::State(ConnectionState::Connecting) => {}
            Event::Publish(p) => panic!("unexpected publish {p:?}"),
        }
    }
}

/// Waits for the transport to stop; returns the reason it gave.
async fn failed(incoming: &mut Incoming) -> String {
    loop {
        match guard(incoming.recv())
            .await
            .expect("transport stopped silently")
        {
            Event::State(ConnectionState::Disconnected {
                error,
                retry_in: None,
                refused: None,
            }) => return error,
            Event::State(ConnectionState::Connected { .. }) => panic!("connected"),
            Event::State(_) => {}
            Event::Publish(p) => panic!("unexpected publish {p:?}"),
        }
    }
}

/// Starts a transport over `connector` and checks one QoS 1 round trip.
async fn round_trip<C: Connector>(connector: C, id: &str) {
    let (t, mut incoming) = Transport::start(config(id), connector);
    connected(&mut incoming).await;
    let filter = format!("mqrpc/link/{id}/#");
    let granted = guard(t.subscribe(vec![Filter::new(filter, QoS::AtLeastOnce)], None)).await;
    assert_eq!(granted, Ok(vec![ReasonCode(1)]));

    let properties = PublishProperties {
        response_topic: Some(format!("mqrpc/reply/{id}")),
        correlation_data: Some(Bytes::from_static(b"\x00\x01corr\xff")),
        user_properties: vec![("k".into(), "v".into())],
        ..Default::default()
    };
    let topic = format!("mqrpc/link/{id}/x");
    let mut msg = OutgoingPublish::new(topic.clone(), QoS::AtLeastOnce, "hello");
    msg.properties = Some(properties.clone());
    assert_eq!(guard(t.publish(msg)).await, Ok(ReasonCode(0x00)), "PUBACK");

    let got = guard(incoming.next_publish())
        .await
        .expect("the publish back");
    assert_eq!(&got.topic[..], topic.as_bytes());
    assert_eq!(&got.payload[..], b"hello");
    assert_eq!(got.qos, QoS::AtLeastOnce);
    let p = got.properties.clone().expect("properties");
    assert_eq!(p.response_topic, properties.response_topic);
    assert_eq!(p.correlation_data, properties.correlation_data);
    // The mqtt5 broker adds its own `x-mqtt-client-id`.
    for pair in &properties.user_properties {
        assert!(p.user_properties.contains(pair), "{:?}", p.user_properties);
    }
    got.ack.expect("QoS 1 has an ack token").ack();
    guard(t.disconnect()).await;
}

/// Mosquitto with its plain listener and a TLS one; `None` when Mosquitto is
/// not installed (the harness prints the notice).
fn mosquitto_tls(pki: &Pki, require_client_cert: bool) -> Option<(Mosquitto, u16)> {
    if !mqrpc_tests::mosquitto_available() {
        return None;
    }
    let mut last_error = None;
    for _ in 0..5 {
        let port = mqrpc_tests::free_port().unwrap();
        let lines = pki.mosquitto_listener(port, require_client_cert);
        let lines: Vec<&str> = lines.iter().map(String::as_str).collect();
        match Mosquitto::start(&lines) {
            Ok(mosquitto) => return Some((mosquitto, port)),
            Err(e) => last_error = Some(e),
        }
    }
    panic!("mosquitto with a TLS listener did not start: {last_error:?}")
}

#[tokio::test]
async fn tls_to_mosquitto_with_a_given_ca() {
    let pki = Pki::generate("link-tls");
    let Some((_mosquitto, port)) = mosquitto_tls(&pki, false) else {
        return;
    };
    // By IP address and by DNS name: both are in the broker's certificate.
    for host in ["127.0.0.1", "localhost"] {
        let config = tls_config(&pki.file("ca.pem"), None);
        let connector = TlsConnector::new(host, port, config).unwrap();
        round_trip(connector, &format!("tls-{host}")).await;
    }
}

#[tokio::test]
async fn tls_to_mosquitto_with_a_client_certificate() {
    let pki = Pki::generate("link-mtls");
    let Some((_mosquitto, port)) = mosquitto_tls(&pki, true) else {
        return;
    };
    let (cert, key) = (pki.file("client.pem"), pki.file("client.key"));
    let with_cert = tls_config(&pki.file("ca.pem"), Some((&cert, &key)));
    round_trip(
        TlsConnector::new("127.0.0.1", port, with_cert).unwrap(),
        "mtls",
    )
    .await;

    // Without the certificate the broker ends the handshake.
    let without = tls_config(&pki.file("ca.pem"), None);
    let (_t, mut incoming) = Transport::start(
        config("mtls-none"),
        TlsConnector::new("127.0.0.1", port, without).unwrap(),
    );
    let error = failed(&mut incoming).await;
    assert!(!error.is_empty());
}

#[tokio::test]
async fn tls_with_an_untrusted_ca_fails_with_the_rustls_reason() {
    let pki = Pki::generate("link-tls-bad");
    let Some((_mosquitto, port)) = mosquitto_tls(&pki, false) else {
        return;
    };
    let other = Pki::generate("link-tls-other");
    let untrusted = tls_config(&other.file("ca.pem"), None);
    let (t, mut incoming) = Transport::start(
        config("untrusted"),
        TlsConnector::new("127.0.0.1", port, untrusted).unwrap(),
    );
    let error = failed(&mut incoming).await;
    assert!(
        error.contains("invalid peer certificate: UnknownIssuer"),
        "{error}"
    );
    assert_eq!(
        *t.state().borrow(),
        ConnectionState::Disconnected {
            error,
            retry_in: None,
            refused: None,
        }
    );
}

#[tokio::test]
async fn a_name_outside_the_certificate_is_refused() {
    // The broker's certificate names only 127.0.0.1.
    let pki = Pki::generate_for("link-tls-name", &["127.0.0.1"]);
    let Some((_mosquitto, port)) = mosquitto_tls(&pki, false) else {
        return;
    };
    let trusted = tls_config(&pki.file("ca.pem"), None);
    let (_t, mut incoming) = Transport::start(
        config("wrong-name"),
        TlsConnector::new("localhost", port, trusted).unwrap(),
    );
    let error = failed(&mut incoming).await;
    assert!(error.contains("invalid peer certificate"), "{error}");
    assert!(error.contains("not valid for name"), "{error}");
}

#[tokio::test]
async fn websocket_to_the_embedded_broker() {
    let broker = EmbeddedBroker::start_with_websocket().await.unwrap();
    let url = broker.websocket_url().expect("a WebSocket endpoint");
    round_trip(WsConnector::new(&url).unwrap(), "ws").await;
}

#[tokio::test]
async fn a_websocket_path_the_broker_does_not_serve_fails_the_handshake() {
    let broker = EmbeddedBroker::start_with_websocket().await.unwrap();
    let url = broker
        .websocket_url()
        .unwrap()
        .replace("/mqtt", "/nothing-here");
    let (_t, mut incoming) = Transport::start(config("ws-404"), WsConnector::new(&url).unwrap());
    let error = failed(&mut incoming).await;
    assert!(error.contains("WebSocket handshake"), "{error}");
}

/// `mqtts://` and `wss://` to an `mqtt5` broker with a TLS listener and a
/// TLS WebSocket endpoint.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_and_secure_websocket_to_an_mqtt5_broker() {
    let pki = Pki::generate("link-wss");
    let broker = mqrpc_tests::security::TlsMqtt5::start(&pki).await;
    let (wss_port, tls_addr) = (broker.wss_port, broker.tls_addr);
    let trusted = tls_config(&pki.file("ca.pem"), None);
    let wss = format!("wss://127.0.0.1:{wss_port}/mqtt");
    let connector = WsConnector::new_secure(&wss, trusted.clone()).unwrap();
    round_trip(connector, "wss").await;

    let tls = TlsConnector::new("127.0.0.1", tls_addr.port(), trusted).unwrap();
    round_trip(tls, "mqtts").await;

    // Another CA did not sign the broker's certificate.
    let other = Pki::generate("link-wss-other");
    let untrusted = tls_config(&other.file("ca.pem"), None);
    let (_t, mut incoming) = Transport::start(
        self::config("wss-untrusted"),
        WsConnector::new_secure(&wss, untrusted).unwrap(),
    );
    let error = failed(&mut incoming).await;
    assert!(
        error.contains("invalid peer certificate: UnknownIssuer"),
        "{error}"
    );
    drop(broker);
}

#[test]
fn constructors_check_their_urls() {
    assert!(WsConnector::new("wss://127.0.0.1/mqtt").is_err());
    assert!(WsConnector::new("mqtt://127.0.0.1/mqtt").is_err());
    assert!(WsConnector::new("ws://127.0.0.1/mqtt").is_ok());
    let config = tls_config(&Pki::generate("link-urls").file("ca.pem"), None);
    assert!(WsConnector::new_secure("ws://127.0.0.1/mqtt", config.clone()).is_err());
    assert!(WsConnector::new_secure("wss://127.0.0.1/mqtt", config.clone()).is_ok());
    // Not a TLS server name: refused before any connection, as bad input.
    let error = TlsConnector::new("no such host", 8883, config).unwrap_err();
    assert_eq!(error.kind(), std::io::ErrorKind::InvalidInput);
    assert!(
        error.to_string().contains("not a valid TLS server name"),
        "{error}"
    );
}
