//! Where responses go (Response Information or a reply prefix) and tenant
//! isolation with a Mosquitto ACL: a tenant cannot call another tenant's
//! service nor read its responses, and is told so at once.

use std::time::Duration;

use mqrpc::{ClientOptions, ConnectOptions, Connection, Error, ServerOptions};
use mqrpc_tests::raw::RawPeer;
use mqrpc_tests::{Calc, CalculatorClient, CalculatorServer, Mosquitto};

/// Mosquitto gives no Response Information: the default response topic;
/// with Response Information (here assumed, as a broker would grant it)
/// the response topic is built under it. Calls work either way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn response_topic_follows_response_information() {
    let Some(broker) = mqrpc_tests::mosquitto() else {
        return;
    };
    let server_conn = broker.connect().await;
    let _server = CalculatorServer::new(Calc::default())
        .serve(&server_conn)
        .await
        .unwrap();
    let plain = broker.connect().await;
    let client = CalculatorClient::new(&plain).await.unwrap();
    assert_eq!(
        client.client().reply_topic(),
        format!("mqrpc/_reply/{}", plain.client_id())
    );
    assert_eq!(client.add(1, 2).await.unwrap(), 3);

    let options = ConnectOptions::from_url(broker.url())
        .unwrap()
        .assume_response_information("granted/space/");
    let granted = Connection::connect(options).await.unwrap();
    let client = CalculatorClient::new(&granted).await.unwrap();
    assert_eq!(
        client.client().reply_topic(),
        format!("granted/space/{}", granted.client_id())
    );
    assert_eq!(client.add(2, 3).await.unwrap(), 5);
}

fn tenant_broker() -> Option<(Mosquitto, tempfile::TempDir)> {
    if !mqrpc_tests::mosquitto_available() {
        return None;
    }
    let dir = tempfile::tempdir().unwrap();
    let passwords = dir.path().join("passwords");
    mqrpc_tests::security::write_password_file(
        &passwords,
        &[("alice", "a-secret"), ("bob", "b-secret")],
    );
    // The ACL lines the README shows.
    let acl = dir.path().join("acl");
    std::fs::write(
        &acl,
        "user alice\ntopic readwrite tenant-a/#\n\nuser bob\ntopic readwrite tenant-b/#\n",
    )
    .unwrap();
    let mosquitto = Mosquitto::start(&[
        "allow_anonymous false",
        &format!("password_file {}", passwords.display()),
        &format!("acl_file {}", acl.display()),
    ])
    .unwrap();
    Some((mosquitto, dir))
}

fn tenant(port: u16, user: &str, password: &str, prefix: &str) -> ConnectOptions {
    ConnectOptions::new("127.0.0.1", port)
        .credentials(user, password)
        .reply_prefix(prefix)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenants_cannot_call_or_read_each_other() {
    let Some((mosquitto, _dir)) = tenant_broker() else {
        return;
    };
    let port = mosquitto.port;
    // Bob serves under his prefix and calls his own service.
    let bob = Connection::connect(tenant(port, "bob", "b-secret", "tenant-b"))
        .await
        .unwrap();
    let _server = CalculatorServer::new(Calc::default())
        .serve_with(&bob, ServerOptions::default().prefix("tenant-b"))
        .await
        .unwrap();
    let bobs = CalculatorClient::with_options(&bob, ClientOptions::default().prefix("tenant-b"))
        .await
        .unwrap();
    assert_eq!(bobs.add(1, 2).await.unwrap(), 3);

    // Alice may not call Bob's service: refused at once, not a timeout.
    let alice = Connection::connect(tenant(port, "alice", "a-secret", "tenant-a"))
        .await
        .unwrap();
    let client = CalculatorClient::with_options(
        &alice,
        ClientOptions::default()
            .prefix("tenant-b")
            .timeout(Duration::from_secs(30)),
    )
    .await
    .unwrap();
    let err = client.add(1, 2).await.unwrap_err();
    assert!(
        matches!(&err, Error::NotAuthorized { method } if method == "add"),
        "{err:?}"
    );

    // Nor read Bob's requests or responses: Mosquitto accepts the
    // subscription but delivers nothing the ACL does not allow.
    let mut snooper = RawPeer::connect_as(port, Some(("alice", "a-secret")), &["tenant-b/#"]).await;
    // The control: Bob reading his own space sees the traffic.
    let mut bobs_eye = RawPeer::connect_as(port, Some(("bob", "b-secret")), &["tenant-b/#"]).await;
    assert_eq!(bobs.add(20, 22).await.unwrap(), 42);
    assert!(bobs_eye
        .next_publish(Duration::from_secs(5))
        .await
        .is_some());
    assert!(snooper
        .next_publish(Duration::from_millis(500))
        .await
        .is_none());
}
