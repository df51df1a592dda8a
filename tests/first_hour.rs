//! What a new user meets in the first hour: a wrong port or a URL without
//! a scheme gives an error that says what is wrong and what to write, and
//! the connect timeout covers the whole handshake.

use std::time::Duration;

use mqrpc::{Client, ClientOptions, ConnectOptions, Connection, Error};
use mqrpc_tests::fake_broker::{puback, suback, Connack, FakeBroker};
use rumqttc::v5::mqttbytes::v5::Packet;
use rumqttc::v5::mqttbytes::QoS;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// A peer on a loopback port that accepts connections and hands each to
/// `serve`; the port and the task (aborted when the test ends).
async fn peer<F, Fut>(serve: F) -> (u16, tokio::task::JoinHandle<()>)
where
    F: Fn(tokio::net::TcpStream) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let task = tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(serve(stream));
        }
    });
    (port, task)
}

fn connect_reason(error: Error) -> String {
    match error {
        Error::Connect { reason, .. } => reason,
        other => panic!("expected Error::Connect, got {other:?}"),
    }
}

/// A port that accepts but never answers: `connect_timeout` covers the
/// CONNACK wait, and the error says what the peer did not do.
#[tokio::test]
async fn a_silent_peer_fails_at_the_connect_timeout() {
    let (port, task) = peer(|mut stream| async move {
        // Read what comes, answer nothing, keep the socket open.
        let mut buf = [0u8; 1024];
        while matches!(stream.read(&mut buf).await, Ok(n) if n > 0) {}
    })
    .await;
    let options = ConnectOptions::new("127.0.0.1", port).connect_timeout(Duration::from_secs(1));
    // The deadline of the test is ten times the connect timeout: the old
    // CONNACK wait (30 s) would hit it.
    let outcome = tokio::time::timeout(Duration::from_secs(10), Connection::connect(options))
        .await
        .expect("connect must end at its connect timeout");
    let error = outcome.unwrap_err();
    let text = error.to_string();
    let reason = connect_reason(error);
    assert!(reason.contains("no CONNACK within 1s"), "{reason}");
    assert!(reason.contains("is it an MQTT v5 broker port?"), "{reason}");
    assert!(text.contains(&format!("127.0.0.1:{port}")), "{text}");
    task.abort();
}

/// A web server where the broker should be: the error names HTTP and the
/// WebSocket form, not the codec's "Invalid property type".
#[tokio::test]
async fn an_http_peer_is_named_as_such() {
    let (port, task) = peer(|mut stream| async move {
        let mut buf = [0u8; 1024];
        let _ = stream.read(&mut buf).await;
        let _ = stream
            .write_all(
                b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            )
            .await;
        let _ = stream.shutdown().await;
    })
    .await;
    let options = ConnectOptions::new("127.0.0.1", port).connect_timeout(Duration::from_secs(5));
    let reason = connect_reason(Connection::connect(options).await.unwrap_err());
    assert!(
        reason.contains("did not answer as an MQTT v5 broker"),
        "{reason}"
    );
    assert!(reason.contains("it answered in HTTP"), "{reason}");
    assert!(reason.contains("ws://"), "{reason}");
    task.abort();

    // Python's http.server answers a request it cannot parse as HTTP/0.9:
    // the page alone.
    let (port, task) = peer(|mut stream| async move {
        let mut buf = [0u8; 1024];
        let _ = stream.read(&mut buf).await;
        let _ = stream
            .write_all(b"<!DOCTYPE HTML>\n<html><body>400</body></html>\n")
            .await;
        let _ = stream.shutdown().await;
    })
    .await;
    let options = ConnectOptions::new("127.0.0.1", port).connect_timeout(Duration::from_secs(5));
    let reason = connect_reason(Connection::connect(options).await.unwrap_err());
    assert!(
        reason.contains("it answered in text, `<!DOCTYPE HTML>"),
        "{reason}"
    );
    task.abort();
}

/// Bytes that are no MQTT at all: the codec's complaint is kept, with what
/// is wrong around it.
#[tokio::test]
async fn a_garbage_peer_is_not_an_mqtt_broker() {
    let (port, task) = peer(|mut stream| async move {
        let mut buf = [0u8; 1024];
        let _ = stream.read(&mut buf).await;
        // A CONNACK header whose property is of an invalid type (46, '.').
        let _ = stream
            .write_all(&[0x20, 0x05, 0x00, 0x00, 0x02, 0x2e, 0x2e])
            .await;
        let _ = stream.read(&mut buf).await;
    })
    .await;
    let options = ConnectOptions::new("127.0.0.1", port).connect_timeout(Duration::from_secs(5));
    let reason = connect_reason(Connection::connect(options).await.unwrap_err());
    assert!(
        reason.starts_with("the peer did not answer as an MQTT v5 broker: it sent "),
        "{reason}"
    );
    assert!(
        reason.ends_with("is it an MQTT v5 broker port?"),
        "{reason}"
    );
    task.abort();
}

/// `host:port` without `mqtt://`: the error says what to write.
#[test]
fn a_url_without_scheme_says_what_to_write() {
    for (url, suggestion) in [
        ("127.0.0.1:1883", "write mqtt://127.0.0.1:1883"),
        ("localhost:1883", "write mqtt://localhost:1883"),
        ("broker.example.com", "write mqtt://broker.example.com"),
    ] {
        let Err(Error::InvalidUrl { reason, .. }) = ConnectOptions::from_url(url) else {
            panic!("{url} must be an invalid URL");
        };
        assert!(reason.contains(suggestion), "{url}: {reason}");
    }
}

/// A one-way call returns once the broker has the request (its PUBACK at
/// QoS 1), as its docs and the README say, and a PUBACK 0x10 makes it
/// `Error::NoResponder`.
#[tokio::test]
async fn a_one_way_call_returns_at_the_brokers_puback() {
    let broker = FakeBroker::start().await;
    let url = format!("mqtt://{}", broker.addr());
    let connecting = tokio::spawn(async move { Connection::connect_url(&url).await });
    let (mut link, _) = broker.accept_with(Connack::default()).await;
    let conn = connecting.await.unwrap().unwrap();
    let making = tokio::spawn({
        let conn = conn.clone();
        async move { Client::new(&conn, "Calculator", ClientOptions::default()).await }
    });
    // The response topic and the notices of servers gone: one SUBSCRIBE.
    let Packet::Subscribe(subscribe) = link.recv().await else {
        panic!("expected SUBSCRIBE");
    };
    link.send(suback(
        subscribe.pkid,
        subscribe.filters.len(),
        QoS::AtLeastOnce,
    ))
    .await;
    let client = making.await.unwrap().unwrap();
    let notify = tokio::spawn(async move { client.notify("bump", &(5u64,)).await });
    let request = link.recv_publish().await;
    assert_eq!(request.properties.unwrap_or_default().response_topic, None);
    tokio::task::yield_now().await;
    assert!(
        !notify.is_finished(),
        "returned before the broker acknowledged"
    );
    link.send(puback(request.pkid, 0x10)).await;
    let err = notify.await.unwrap().unwrap_err();
    assert!(err.is_no_responder(), "{err:?}");
}
