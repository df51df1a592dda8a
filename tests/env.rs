//! `MQRPC_BROKER` handling. Its own test binary with one test: environment
//! variables are process-wide.

use mqrpc::{ConnectOptions, Connection, Error};
use mqrpc_tests::{Calc, CalculatorClient, CalculatorServer};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_from_environment() {
    std::env::remove_var("MQRPC_BROKER");
    assert_eq!(
        ConnectOptions::from_env().unwrap_err(),
        Error::BrokerNotConfigured
    );
    assert_eq!(
        Connection::from_env().await.unwrap_err(),
        Error::BrokerNotConfigured
    );

    // Unset: the quickstart path starts an embedded broker and serves through it.
    let conn = Connection::from_env_or_embedded().await.unwrap();
    let url = conn.broker_url();
    assert!(url.starts_with("mqtt://127.0.0.1:"), "{url}");
    let _server = CalculatorServer::new(Calc::default())
        .serve(&conn)
        .await
        .unwrap();

    // Set: both constructors connect to the named broker (here, that one).
    std::env::set_var("MQRPC_BROKER", format!("{url}?client_id=env-test-client"));
    let from_env = Connection::from_env().await.unwrap();
    assert_eq!(from_env.client_id(), "env-test-client");
    let client = CalculatorClient::new(&from_env).await.unwrap();
    assert_eq!(client.add(20, 22).await.unwrap(), 42);
    let also = Connection::from_env_or_embedded().await.unwrap();
    assert_eq!(also.broker_url(), url);

    // mqtts:// with credentials and a CA file, through the variable, to a
    // Mosquitto with a TLS listener and a password file.
    if mqrpc_tests::mosquitto_available() {
        let pki = mqrpc_tests::security::Pki::generate("env");
        let dir = tempfile::tempdir().unwrap();
        let passwords = dir.path().join("passwords");
        mqrpc_tests::security::write_password_file(&passwords, &[("svc", "secret")]);
        let tls_port = mqrpc_tests::free_port().unwrap();
        let mut lines = pki.mosquitto_listener(tls_port, false);
        lines.push("allow_anonymous false".into());
        lines.push(format!("password_file {}", passwords.display()));
        let lines: Vec<&str> = lines.iter().map(String::as_str).collect();
        let _mosquitto = mqrpc_tests::Mosquitto::start(&lines).unwrap();
        let ca = pki.file("ca.pem");
        let secure = format!(
            "mqtts://svc:secret@127.0.0.1:{tls_port}?ca={}",
            ca.display()
        );
        std::env::set_var("MQRPC_BROKER", &secure);
        let conn = Connection::from_env().await.unwrap();
        assert!(conn.broker_url().starts_with("mqtts://"));
        let _server = CalculatorServer::new(Calc::default())
            .serve(&conn)
            .await
            .unwrap();
        let client = CalculatorClient::new(&conn).await.unwrap();
        assert_eq!(client.add(2, 2).await.unwrap(), 4);
        std::env::set_var("MQRPC_BROKER", secure.replace("secret", "wrong"));
        assert!(matches!(
            Connection::from_env().await.unwrap_err(),
            Error::AuthFailed { .. }
        ));
    }

    std::env::set_var("MQRPC_BROKER", "ftp://nope");
    assert!(matches!(
        Connection::from_env().await.unwrap_err(),
        Error::InvalidUrl { .. }
    ));
    std::env::remove_var("MQRPC_BROKER");
}
