//! Chunked calls (PROTOCOL.md, "Chunked transfer"): arguments and results
//! larger than the broker's Maximum Packet Size, through a Mosquitto that
//! caps it at 256 KiB; flow control by grants; cancellation, a server
//! killed, a chunk lost, all mid-transfer, leaving nothing behind; a
//! foreign (raw and Python) peer.

use std::time::Duration;

use bytes::Bytes;
use mqrpc::{Chunking, ClientOptions, Connection, Error, ServerOptions};
use mqrpc_tests::raw::{correlation_of, status_of, RawPeer};
use mqrpc_tests::{eventually, Mosquitto};
use rumqttc::v5::mqttbytes::v5::{Publish, PublishProperties};

#[mqrpc::service]
pub trait Files {
    /// The bytes back.
    async fn echo(&self, data: Vec<u8>) -> Vec<u8>;
    /// `len` bytes of the test pattern.
    async fn get(&self, len: u32) -> Vec<u8>;
    /// The sum of the bytes.
    async fn sum(&self, data: Vec<u8>) -> u64;
}

struct Store;

impl Files for Store {
    async fn echo(&self, data: Vec<u8>) -> Vec<u8> {
        data
    }

    async fn get(&self, len: u32) -> Vec<u8> {
        pattern(len as usize)
    }

    async fn sum(&self, data: Vec<u8>) -> u64 {
        data.iter().map(|b| u64::from(*b)).sum()
    }
}

fn pattern(len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i % 251) as u8 ^ (i >> 12) as u8)
        .collect()
}

const CAP: &str = "max_packet_size 262144";
const LONG: Duration = Duration::from_secs(300);
const WINDOW: u32 = 8;

fn server_options() -> ServerOptions {
    ServerOptions::default()
        .max_request_size(80 << 20)
        .max_reassembly_bytes(160 << 20)
        .chunking(Chunking::default().window(WINDOW))
}

fn client_options() -> ClientOptions {
    ClientOptions::default()
        .timeout(LONG)
        .max_response_size(80 << 20)
}

/// A Mosquitto capping packets at 256 KiB (`None`: not installed and not required).
fn capped_mosquitto() -> Option<Mosquitto> {
    if !mqrpc_tests::mosquitto_available() {
        return None;
    }
    Some(Mosquitto::start(&[CAP]).unwrap())
}

async fn connect(mosquitto: &Mosquitto) -> Connection {
    Connection::connect_url(&format!("mqtt://127.0.0.1:{}", mosquitto.port))
        .await
        .unwrap()
}

/// `len` bytes as argument and `len` bytes as result, both chunked; the
/// server never saw a chunk beyond its window, and keeps nothing after.
async fn both_ways(len: usize) {
    let Some(mosquitto) = capped_mosquitto() else {
        return;
    };
    let server_conn = connect(&mosquitto).await;
    let server = FilesServer::new(Store)
        .serve_with(&server_conn, server_options())
        .await
        .unwrap();
    let conn = connect(&mosquitto).await;
    let client = FilesClient::with_options(&conn, client_options())
        .await
        .unwrap();
    let data = pattern(len);
    let back = client.echo(data.clone()).await.unwrap();
    assert!(back == data, "the bytes came back equal");
    let got = client.get(len as u32).await.unwrap();
    assert!(got == data, "the result's bytes are the pattern");
    let usage = server.usage().chunked;
    assert!(usage.peak_ahead >= 1, "chunks were received: {usage:?}");
    assert!(
        usage.peak_ahead <= usage.window && usage.window == WINDOW,
        "a sender never had more than the window unacknowledged: {usage:?}"
    );
    assert_eq!(
        (usage.open, usage.reserved_bytes, usage.held_bytes),
        (0, 0, 0)
    );
    assert!(eventually(|| server.usage().chunked.sending == 0).await);
    assert_eq!(client.client().pending_counts(), (0, 0));
    assert!(conn.is_connected() && server_conn.is_connected());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_mib_argument_and_result_through_a_256_kib_broker() {
    both_ways(4 << 20).await;
}

/// The 64 MiB variant, in the release step of `.ci/run`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "64 MiB each way: release builds only (.ci/run)"]
async fn sixty_four_mib_argument_and_result_through_a_256_kib_broker() {
    both_ways(64 << 20).await;
}

/// Over the chunk size with no broker limit (the embedded broker): chunked
/// all the same, so that no message exceeds what a peer accepts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_the_chunk_size_on_the_embedded_broker() {
    let broker = mqrpc_tests::embedded().await;
    let server_conn = broker.connect().await;
    let chunking = Chunking::default().size(64 << 10);
    let server = FilesServer::new(Store)
        .serve_with(&server_conn, server_options().chunking(chunking))
        .await
        .unwrap();
    let conn = broker.connect().await;
    let client = FilesClient::with_options(&conn, client_options().chunking(chunking))
        .await
        .unwrap();
    let data = pattern(1 << 20);
    assert!(client.echo(data.clone()).await.unwrap() == data);
    assert!(server.usage().chunked.peak_ahead >= 1);
    // Small calls stay one message.
    assert_eq!(client.echo(vec![1, 2, 3]).await.unwrap(), [1, 2, 3]);
    assert_eq!(client.client().pending_counts(), (0, 0));
}

/// Polls `call` once: its request (or first chunk) goes out.
async fn poll_once<F: std::future::Future + Unpin>(call: &mut F) {
    tokio::select! {
        biased;
        _ = call => panic!("the call ended at once"),
        () = std::future::ready(()) => {}
    }
}

/// A call dropped mid-transfer, both ways: its cancel ends the server's
/// partial request (or chunked answer); nothing stays on either side.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelled_mid_transfer_leaves_nothing() {
    let Some(mosquitto) = capped_mosquitto() else {
        return;
    };
    let server_conn = connect(&mosquitto).await;
    let server = FilesServer::new(Store)
        .serve_with(&server_conn, server_options())
        .await
        .unwrap();
    let conn = connect(&mosquitto).await;
    let client = FilesClient::with_options(&conn, client_options())
        .await
        .unwrap();
    // The argument: chunk 0 goes out, the rest waits for this future to be
    // polled again, which it never is.
    let mut call = Box::pin(client.echo(pattern(2 << 20)));
    poll_once(&mut call).await;
    assert!(eventually(|| server.usage().chunked.open == 1).await);
    assert_eq!(client.client().pending_counts(), (1, 1));
    drop(call);
    assert_eq!(client.client().pending_counts(), (0, 0));
    assert!(eventually(|| server.usage().chunked.open == 0).await);
    assert_eq!(server.usage().chunked.reserved_bytes, 0);
    // The result: its chunk 0 arrives, the next ones wait for grants that
    // this unpolled call never sends.
    let mut call = Box::pin(client.get(2 << 20));
    poll_once(&mut call).await;
    assert!(eventually(|| client.client().pending_counts() == (0, 1)).await);
    assert_eq!(server.usage().chunked.sending, 1);
    drop(call);
    assert_eq!(client.client().pending_counts(), (0, 0));
    assert!(eventually(|| server.usage().chunked.sending == 0).await);
    // And the server still serves.
    assert!(client.get(3 << 20).await.unwrap() == pattern(3 << 20));
}

/// A `calc-server` process, serving through `mosquitto`.
async fn spawn_calc_server(mosquitto: &Mosquitto, client_id: &str) -> tokio::process::Child {
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_calc-server"));
    command.env(
        "MQRPC_BROKER",
        format!("mqtt://127.0.0.1:{}?client_id={client_id}", mosquitto.port),
    );
    mqrpc_tests::spawn_serving(command).await
}

/// The server process killed mid-transfer, either way: the call ends with
/// `ServerGone` (from the server's Last Will), nothing stays pending.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_killed_mid_transfer_ends_the_call() {
    let Some(mosquitto) = capped_mosquitto() else {
        return;
    };
    let conn = connect(&mosquitto).await;
    let client = mqrpc_tests::CalculatorClient::with_options(&conn, client_options())
        .await
        .unwrap();
    for (direction, instance) in [("argument", "chunk-kill-a"), ("result", "chunk-kill-r")] {
        let mut server = spawn_calc_server(&mosquitto, instance).await;
        let mut call: std::pin::Pin<
            Box<dyn std::future::Future<Output = Result<(), Error>> + Send + '_>,
        > = match direction {
            // 900 000 bytes: within the server's default 1 MiB, in 4 chunks.
            "argument" => Box::pin(async { client.echo("x".repeat(900_000)).await.map(drop) }),
            _ => Box::pin(async { client.repeat(b'y', 900_000).await.map(drop) }),
        };
        poll_once(&mut call).await;
        // Bound to the instance: by its first grant, or its first chunk.
        let bound = || match direction {
            "argument" => {
                client.client().pending_counts() == (1, 1) && client.client().bound_calls() == 1
            }
            _ => client.client().pending_counts() == (0, 1),
        };
        assert!(eventually(bound).await, "{direction}: mid-transfer");
        server.start_kill().unwrap();
        server.wait().await.unwrap();
        let err = call.await.unwrap_err();
        assert!(
            matches!(&err, Error::ServerGone { instance: i, .. } if i == instance),
            "{direction}: {err:?}"
        );
        assert_eq!(client.client().pending_counts(), (0, 0), "{direction}");
    }
}

/// A chunked request from a raw peer, as PROTOCOL.md describes it.
struct RawCall<'a> {
    correlation: &'a [u8],
    reply: &'a str,
    payload: Vec<u8>,
    size: usize,
}

impl RawCall<'_> {
    fn count(&self) -> usize {
        self.payload.len().div_ceil(self.size)
    }

    async fn send(&self, peer: &RawPeer, index: usize, topic: &str) {
        let properties = PublishProperties {
            response_topic: Some(self.reply.to_string()),
            correlation_data: Some(Bytes::copy_from_slice(self.correlation)),
            user_properties: vec![(
                "mqrpc-chunk".into(),
                format!("{index}/{}/{}", self.count(), self.payload.len()),
            )],
            ..PublishProperties::default()
        };
        let start = index * self.size;
        let end = (start + self.size).min(self.payload.len());
        peer.publish(topic, self.payload[start..end].to_vec(), properties)
            .await;
    }
}

fn user<'a>(publish: &'a Publish, name: &str) -> Option<&'a str> {
    publish
        .properties
        .as_ref()?
        .user_properties
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

/// The next publish on the raw peer, which must come.
async fn next(peer: &mut RawPeer) -> Publish {
    peer.next_publish(Duration::from_secs(30))
        .await
        .expect("a message within 30 s")
}

/// A raw peer's chunked request: with a chunk sent twice it runs once and
/// is answered; with a chunk skipped the server answers `bad-request`
/// naming it, at once, and keeps nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raw_peer_chunks_copied_and_lost() {
    let Some(mosquitto) = capped_mosquitto() else {
        return;
    };
    let server_conn = connect(&mosquitto).await;
    let server = FilesServer::new(Store)
        .serve_with(
            &server_conn,
            server_options().instance("files-raw").no_share_group(),
        )
        .await
        .unwrap();
    let reply = "replies/raw-chunks";
    let mut peer = RawPeer::connect(mosquitto.port, &[reply]).await;
    // postcard of `echo(data)`: the length as a varint, then the bytes.
    let data = pattern(40_000);
    let payload = mqrpc::Codec::Postcard.encode(&data).unwrap();
    for (case, correlation) in [("copies", &b"c-1"[..]), ("lost", &b"c-2"[..])] {
        let call = RawCall {
            correlation,
            reply,
            payload: payload.clone(),
            size: 4096,
        };
        call.send(&peer, 0, "mqrpc/Files/echo").await;
        let grant = next(&mut peer).await;
        let mut granted: usize = user(&grant, "mqrpc-chunk-grant").unwrap().parse().unwrap();
        assert_eq!(
            granted,
            1 + WINDOW as usize,
            "the first grant: a window after chunk 0"
        );
        assert_eq!(user(&grant, "mqrpc-instance"), Some("files-raw"));
        let topic = "mqrpc/Files/_to/files-raw/echo";
        let mut sent = 1;
        let answer = loop {
            while sent < granted.min(call.count()) {
                if case == "lost" && sent == 5 {
                    sent += 1; // never sent
                    continue;
                }
                call.send(&peer, sent, topic).await;
                if case == "copies" {
                    call.send(&peer, sent, topic).await; // a redelivered copy
                }
                sent += 1;
            }
            let p = next(&mut peer).await;
            match user(&p, "mqrpc-chunk-grant") {
                Some(n) => granted = granted.max(n.parse().unwrap()),
                None => break p,
            }
        };
        assert_eq!(correlation_of(&answer).as_deref(), Some(correlation));
        if case == "copies" {
            assert_eq!(status_of(&answer).as_deref(), Some("ok"));
            let back: Vec<u8> = mqrpc::Codec::Postcard.decode(&answer.payload).unwrap();
            assert!(back == data);
        } else {
            assert_eq!(status_of(&answer).as_deref(), Some("bad-request"));
            let message = String::from_utf8_lossy(&answer.payload).into_owned();
            assert!(message.contains("chunk 5 of 10 was lost"), "{message}");
        }
        assert!(
            eventually(|| server.usage().chunked.open == 0).await,
            "{case}"
        );
        assert_eq!(server.usage().chunked.reserved_bytes, 0);
    }
}

/// A raw server answering in chunks with one skipped: the Rust client ends
/// the call with an error naming it, before its deadline, and cancels.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_names_a_lost_answer_chunk() {
    let Some(mosquitto) = capped_mosquitto() else {
        return;
    };
    let mut server =
        RawPeer::connect(mosquitto.port, &["mqrpc/Files/+", "mqrpc/Files/_to/raw/+"]).await;
    let conn = connect(&mosquitto).await;
    let client = FilesClient::with_options(&conn, client_options())
        .await
        .unwrap();
    let call = tokio::spawn(async move {
        let result = client.get(100).await;
        (result, client.client().pending_counts())
    });
    let request = next(&mut server).await;
    let properties = request.properties.clone().unwrap();
    let reply = properties.response_topic.unwrap();
    let answer = mqrpc::Codec::Postcard.encode(&pattern(100)).unwrap(); // 101 bytes
    let chunk = |index: usize| {
        let start = (index * 11).min(answer.len());
        let end = (start + 11).min(answer.len());
        let properties = PublishProperties {
            correlation_data: properties.correlation_data.clone(),
            response_topic: Some("mqrpc/Files/_to/raw/_credit".into()),
            user_properties: vec![
                ("mqrpc-chunk".into(), format!("{index}/10/{}", answer.len())),
                ("mqrpc-instance".into(), "raw".into()),
            ],
            ..PublishProperties::default()
        };
        (answer[start..end].to_vec(), properties)
    };
    let (bytes, first) = chunk(0);
    server.publish(&reply, bytes, first).await;
    let grant = next(&mut server).await;
    assert_eq!(&grant.topic[..], b"mqrpc/Files/_to/raw/_credit");
    assert_eq!(user(&grant, "mqrpc-chunk-grant"), Some("9"));
    for index in (1..9).filter(|i| *i != 3) {
        let (bytes, properties) = chunk(index);
        server.publish(&reply, bytes, properties).await;
    }
    let (result, pending) = call.await.unwrap();
    match result {
        Err(Error::Protocol { reason }) => {
            assert!(reason.contains("chunk 3 of 10 was lost"), "{reason}")
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(pending, (0, 0));
    let cancel = loop {
        let p = next(&mut server).await;
        if p.topic.ends_with(b"/_cancel") {
            break p;
        }
    };
    assert_eq!(&cancel.topic[..], b"mqrpc/Files/_to/raw/_cancel");
}

/// The Python client of PROTOCOL.md sends a chunked call to a Rust server
/// from the document alone (`examples/python/chunked_client.py`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_paho_sends_a_chunked_call() {
    let has_paho = std::process::Command::new("python3")
        .args(["-c", "import paho.mqtt"])
        .status()
        .is_ok_and(|s| s.success());
    if !has_paho {
        if std::env::var("MQRPC_REQUIRE_PAHO").as_deref() == Ok("1") {
            panic!("python3 with paho-mqtt is missing: pip install paho-mqtt");
        }
        eprintln!("NOTICE: python3 + paho-mqtt not installed; skipping");
        return;
    }
    let Some(mosquitto) = capped_mosquitto() else {
        return;
    };
    let server_conn = connect(&mosquitto).await;
    let server = FilesServer::new(Store)
        .serve_with(&server_conn, server_options())
        .await
        .unwrap();
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../examples/python/chunked_client.py"
    );
    let output = tokio::process::Command::new("python3")
        .arg(script)
        .arg(mosquitto.port.to_string())
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    // The script sends 600 000 bytes (a JSON array of numbers, ~2.3 MB)
    // and checks their sum; it prints the chunks it sent.
    assert!(stdout.contains("summed 600000 bytes"), "{stdout}");
    let chunks: u32 = stdout
        .lines()
        .find_map(|l| l.strip_prefix("chunks sent "))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(chunks > 1, "{stdout}");
    let usage = server.usage().chunked;
    assert!((1..=WINDOW).contains(&usage.peak_ahead), "{usage:?}");
    assert_eq!((usage.open, usage.reserved_bytes), (0, 0));
}
