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

    std::env::set_var("MQRPC_BROKER", "ftp://nope");
    assert!(matches!(
        Connection::from_env().await.unwrap_err(),
        Error::InvalidUrl { .. }
    ));
    std::env::remove_var("MQRPC_BROKER");
}
