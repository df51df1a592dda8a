//! TLS (`mqtts://`) and credentials against a Mosquitto the harness starts
//! with a TLS listener (CA and certificates made at test time) and a
//! password file: what works works, and what is refused is refused at
//! connect time with a clear error, not a hang.

use std::time::Duration;

use mqrpc::{ConnectOptions, Connection, Error};
use mqrpc_tests::security::{write_password_file, Pki};
use mqrpc_tests::{Calc, CalculatorClient, CalculatorServer, Mosquitto};

/// Connect failures must come back, not hang: a guard far above any
/// connect timeout (5 s by default), not a timing assertion.
async fn connect(options: ConnectOptions) -> Result<Connection, Error> {
    tokio::time::timeout(Duration::from_secs(30), Connection::connect(options))
        .await
        .expect("connect neither succeeded nor failed within 30 s")
}

async fn connect_url(url: &str) -> Result<Connection, Error> {
    connect(ConnectOptions::from_url(url)?).await
}

/// Serves the calculator on one connection and calls it from another;
/// the server keeps serving while the handle lives.
async fn round_trip(server: &Connection, client: &Connection) -> mqrpc::ServerHandle {
    let handle = CalculatorServer::new(Calc::default())
        .serve(server)
        .await
        .unwrap();
    let calc = CalculatorClient::new(client).await.unwrap();
    assert_eq!(calc.add(40, 2).await.unwrap(), 42);
    handle
}

/// Mosquitto with a plain listener (the harness's) and a TLS listener.
fn tls_broker(pki: &Pki, require_client_cert: bool, extra: &[String]) -> Option<(Mosquitto, u16)> {
    if !mqrpc_tests::mosquitto_available() {
        return None;
    }
    // Another process may take the TLS port before Mosquitto binds it: a
    // new port each attempt.
    let mut last_error = None;
    for _ in 0..5 {
        let tls_port = mqrpc_tests::free_port().unwrap();
        let mut lines = pki.mosquitto_listener(tls_port, require_client_cert);
        lines.extend(extra.iter().cloned());
        let lines: Vec<&str> = lines.iter().map(String::as_str).collect();
        match Mosquitto::start(&lines) {
            Ok(mosquitto) => return Some((mosquitto, tls_port)),
            Err(e) => last_error = Some(e),
        }
    }
    panic!("mosquitto with a TLS listener did not start: {last_error:?}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_travel_over_tls_with_a_given_ca() {
    let pki = Pki::generate("calls");
    let Some((_mosquitto, port)) = tls_broker(&pki, false, &[]) else {
        return;
    };
    let url = format!(
        "mqtts://127.0.0.1:{port}?ca={}",
        pki.file("ca.pem").display()
    );
    let server = connect_url(&url).await.unwrap();
    // The same settings through the builder, with the CA given as PEM text.
    let ca = std::fs::read(pki.file("ca.pem")).unwrap();
    let client = connect(ConnectOptions::new("127.0.0.1", port).tls_ca_pem(ca))
        .await
        .unwrap();
    assert!(client.options().is_tls());
    assert_eq!(client.broker_url(), format!("mqtts://127.0.0.1:{port}"));
    let _serving = round_trip(&server, &client).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_untrusted_broker_certificate_is_a_connect_error() {
    let pki = Pki::generate("trusted");
    let other = Pki::generate("other");
    let Some((_mosquitto, port)) = tls_broker(&pki, false, &[]) else {
        return;
    };
    // A CA that did not sign the broker's certificate.
    let url = format!(
        "mqtts://127.0.0.1:{port}?ca={}",
        other.file("ca.pem").display()
    );
    match connect_url(&url).await {
        Err(error @ Error::Connect { .. }) => {
            eprintln!("untrusted broker: {error}");
            assert!(error.to_string().contains("certificate"), "{error}")
        }
        other => panic!("expected Error::Connect, got {other:?}"),
    }
    // The system's roots do not know the test CA either.
    match connect(ConnectOptions::new("127.0.0.1", port).tls()).await {
        Err(Error::Connect { .. } | Error::Tls { .. }) => {}
        other => panic!("expected a connect or TLS error, got {other:?}"),
    }
    // A TLS client on the plain listener: a handshake that cannot succeed.
    let plain = ConnectOptions::from_url(&format!(
        "mqtts://127.0.0.1:{}?ca={}",
        _mosquitto.port,
        pki.file("ca.pem").display()
    ))
    .unwrap();
    assert!(matches!(connect(plain).await, Err(Error::Connect { .. })));
}

/// The broker's certificate must name the host connected to: here it
/// names only `localhost`, and the client connects to 127.0.0.1.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_for_another_name_is_refused() {
    let pki = Pki::generate_for("names", &["localhost"]);
    let Some((_mosquitto, port)) = tls_broker(&pki, false, &[]) else {
        return;
    };
    let options = ConnectOptions::new("127.0.0.1", port).tls_ca_file(pki.file("ca.pem"));
    match connect(options).await {
        Err(error @ Error::Connect { .. }) => {
            assert!(error.to_string().contains("not valid for name"), "{error}")
        }
        other => panic!("expected Error::Connect, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_certificate_is_presented_when_the_broker_requires_one() {
    let pki = Pki::generate("mtls");
    let Some((_mosquitto, port)) = tls_broker(&pki, true, &[]) else {
        return;
    };
    let ca = pki.file("ca.pem");
    let without = connect(ConnectOptions::new("127.0.0.1", port).tls_ca_file(&ca)).await;
    eprintln!("without a client certificate: {without:?}");
    assert!(
        matches!(without, Err(Error::Connect { .. })),
        "expected Error::Connect without a client certificate, got {without:?}"
    );

    let url = format!(
        "mqtts://127.0.0.1:{port}?ca={}&cert={}&key={}",
        ca.display(),
        pki.file("client.pem").display(),
        pki.file("client.key").display()
    );
    let server = connect_url(&url).await.unwrap();
    let client = connect(
        ConnectOptions::new("127.0.0.1", port)
            .tls_ca_file(&ca)
            .tls_client_cert_files(pki.file("client.pem"), pki.file("client.key")),
    )
    .await
    .unwrap();
    let _serving = round_trip(&server, &client).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unusable_tls_files_are_a_tls_error_before_any_network() {
    let pki = Pki::generate("files");
    let missing = ConnectOptions::new("127.0.0.1", 1).tls_ca_file("/nonexistent/ca.pem");
    match connect(missing).await {
        Err(Error::Tls { reason }) => assert!(reason.contains("/nonexistent/ca.pem"), "{reason}"),
        other => panic!("expected Error::Tls, got {other:?}"),
    }
    let garbage = ConnectOptions::new("127.0.0.1", 1).tls_ca_pem("not a certificate");
    assert!(matches!(connect(garbage).await, Err(Error::Tls { .. })));
    // A key that does not belong to the certificate.
    let mismatched = ConnectOptions::new("127.0.0.1", 1)
        .tls_ca_file(pki.file("ca.pem"))
        .tls_client_cert_files(pki.file("client.pem"), pki.file("server.key"));
    assert!(matches!(connect(mismatched).await, Err(Error::Tls { .. })));
    // URL mistakes are caught when parsing.
    for url in [
        "mqtt://127.0.0.1?ca=/tmp/ca.pem",
        "mqtts://127.0.0.1?cert=/tmp/c.pem",
    ] {
        assert!(
            matches!(ConnectOptions::from_url(url), Err(Error::InvalidUrl { .. })),
            "{url}"
        );
    }
}

fn password_broker(dir: &tempfile::TempDir, pki: &Pki) -> Option<(Mosquitto, u16)> {
    let passwords = dir.path().join("passwords");
    if !mqrpc_tests::mosquitto_available() {
        return None;
    }
    write_password_file(
        &passwords,
        &[("billing", "pa:ss/w@rd+plus"), ("audit", "other")],
    );
    tls_broker(
        pki,
        false,
        &[
            "allow_anonymous false".into(),
            format!("password_file {}", passwords.display()),
        ],
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credentials_are_checked_at_connect_time() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::generate("auth");
    let Some((mosquitto, tls_port)) = password_broker(&dir, &pki) else {
        return;
    };
    let plain = mosquitto.port;

    // Good credentials: in the URL (percent-encoded; `+` stays `+`) and
    // through the builder.
    let server = connect_url(&format!(
        "mqtt://billing:pa%3Ass%2Fw%40rd+plus@127.0.0.1:{plain}"
    ))
    .await
    .unwrap();
    let client = connect(ConnectOptions::new("127.0.0.1", plain).credentials("audit", "other"))
        .await
        .unwrap();
    let _serving = round_trip(&server, &client).await;

    // Wrong password, unknown user, no credentials: AuthFailed at once.
    for options in [
        ConnectOptions::new("127.0.0.1", plain).credentials("billing", "wrong"),
        ConnectOptions::new("127.0.0.1", plain).credentials("nobody", "x"),
        ConnectOptions::new("127.0.0.1", plain),
    ] {
        match connect(options).await {
            Err(error @ Error::AuthFailed { .. }) => {
                eprintln!("refused: {error}");
                assert!(
                    error.to_string().contains("refused the credentials"),
                    "{error}"
                );
                assert!(!error.is_connection());
            }
            other => panic!("expected Error::AuthFailed, got {other:?}"),
        }
    }

    // TLS and credentials together.
    let ca = pki.file("ca.pem");
    let over_tls = connect_url(&format!(
        "mqtts://audit:other@127.0.0.1:{tls_port}?ca={}",
        ca.display()
    ))
    .await
    .unwrap();
    let calc = CalculatorClient::new(&over_tls).await.unwrap();
    assert_eq!(calc.add(1, 2).await.unwrap(), 3);
    let refused = connect_url(&format!(
        "mqtts://audit:wrong@127.0.0.1:{tls_port}?ca={}",
        ca.display()
    ))
    .await;
    assert!(
        matches!(refused, Err(Error::AuthFailed { .. })),
        "{refused:?}"
    );
}
