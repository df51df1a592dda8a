//! Fuzzing what a broker sends (issue 23): the session loop reads broker
//! bytes through rumqttc's codec. A fake broker (`harness/fake_broker.rs`)
//! answers the handshake or a call with bytes chosen by proptest: random
//! bytes, or real packets of this exchange (CONNACK, SUBACK, the answer
//! PUBLISH with its Correlation Data and user properties) with bytes
//! changed, cut or appended, and answers of the corpus of real traffic
//! (`tests/corpus/`: single, batch, stream and error answers a real
//! server sent) addressed to this call and damaged the same ways.
//! Whatever arrives, the client ends with a value
//! or an error by its deadline (plus a hang guard), and nothing panics,
//! in any task (a panic hook counts them).
//!
//! `cargo fuzz` needs a nightly compiler, which these machines lack: these
//! are bounded proptest runs (`PROPTEST_CASES` raises the count).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use mqrpc::{ClientOptions, ConnectOptions, Connection};
use mqrpc_tests::fake_broker::{puback, suback, Connack, FakeBroker, Link};
use mqrpc_tests::CalculatorClient;
use proptest::prelude::*;
use rumqttc::v5::mqttbytes::v5::{Packet, Publish, PublishProperties};
use rumqttc::v5::mqttbytes::QoS;

/// Past every deadline of these cases: a case not over by then hangs.
const HANG_GUARD: Duration = Duration::from_secs(15);

static PANICS: AtomicU64 = AtomicU64::new(0);

fn count_panics() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            PANICS.fetch_add(1, Ordering::SeqCst);
            previous(info);
        }));
    });
}

fn options(broker: &FakeBroker) -> ConnectOptions {
    let (host, port) = broker
        .addr()
        .rsplit_once(':')
        .map(|(h, p)| (h.to_string(), p.parse().unwrap()))
        .unwrap();
    ConnectOptions::new(host, port)
        .connect_timeout(Duration::from_millis(500))
        .keep_alive(Duration::from_secs(1))
}

/// How a real packet is damaged before it is sent.
#[derive(Debug, Clone)]
enum Damage {
    None,
    /// Byte `at` (mod length) xor `mask`, for each pair.
    Flip(Vec<(usize, u8)>),
    /// Only the first `n` (mod length + 1) bytes.
    Cut(usize),
    /// These bytes after the packet.
    Append(Vec<u8>),
}

fn damage() -> impl Strategy<Value = Damage> {
    prop_oneof![
        Just(Damage::None),
        proptest::collection::vec((any::<usize>(), 1..=255u8), 1..4).prop_map(Damage::Flip),
        any::<usize>().prop_map(Damage::Cut),
        proptest::collection::vec(any::<u8>(), 1..64).prop_map(Damage::Append),
    ]
}

fn damaged(packet: &Packet, damage: &Damage) -> Vec<u8> {
    let mut buf = BytesMut::new();
    packet.write(&mut buf, None).expect("encode");
    let mut bytes = buf.to_vec();
    match damage {
        Damage::None => {}
        Damage::Flip(flips) => {
            for (at, mask) in flips {
                let len = bytes.len();
                bytes[at % len] ^= mask;
            }
        }
        Damage::Cut(n) => bytes.truncate(n % (bytes.len() + 1)),
        Damage::Append(more) => bytes.extend_from_slice(more),
    }
    bytes
}

/// Runs one case on a runtime of its own; fails on a hang or a panic.
fn run_case(
    case: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), TestCaseError> {
    count_panics();
    let before = PANICS.load(Ordering::SeqCst);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let outcome = runtime.block_on(async { tokio::time::timeout(HANG_GUARD, case).await });
    runtime.shutdown_background();
    prop_assert!(
        outcome.is_ok(),
        "hang: the case did not end within {HANG_GUARD:?}"
    );
    prop_assert_eq!(PANICS.load(Ordering::SeqCst), before, "a task panicked");
    Ok(())
}

/// Serves the handshake and subscriptions honestly, then answers the
/// first request with `answer(request)`; PINGREQs get PINGRESPs.
async fn serve_then_answer(broker: FakeBroker, answer: impl FnOnce(&Publish) -> Vec<u8> + Send) {
    let (mut link, _) = broker.accept_with(Connack::default()).await;
    let mut answer = Some(answer);
    while let Some(packet) = next(&mut link).await {
        match packet {
            Packet::Subscribe(s) => {
                link.send(suback(s.pkid, s.filters.len(), QoS::AtLeastOnce))
                    .await
            }
            Packet::PingReq(_) => {
                link.send(Packet::PingResp(rumqttc::v5::mqttbytes::v5::PingResp))
                    .await
            }
            Packet::Publish(p) => {
                if p.qos == QoS::AtLeastOnce {
                    link.send(puback(p.pkid, 0)).await;
                }
                if let Some(answer) = answer.take() {
                    link.send_raw(&answer(&p)).await;
                }
            }
            _ => {}
        }
    }
}

/// The next packet, `None` when the client went away or stayed silent
/// for a few seconds (keep-alive is 1 s).
async fn next(link: &mut Link) -> Option<Packet> {
    tokio::time::timeout(Duration::from_secs(3), link.try_recv())
        .await
        .ok()
        .flatten()
}

/// The answer a real server would send to `request`: `add(1, 2) = 3`.
fn real_answer(request: &Publish, status: Option<String>, payload: Vec<u8>) -> Packet {
    let properties = request.properties.clone().unwrap_or_default();
    let mut user_properties = Vec::new();
    if let Some(status) = status {
        user_properties.push(("mqrpc-status".to_string(), status));
    }
    let topic = properties.response_topic.clone().unwrap_or_default();
    let mut answer = Publish::new(
        topic,
        QoS::AtMostOnce,
        Bytes::from(payload),
        Some(PublishProperties {
            correlation_data: properties.correlation_data,
            content_type: properties.content_type,
            user_properties,
            ..PublishProperties::default()
        }),
    );
    answer.pkid = 0;
    Packet::Publish(answer)
}

/// The answers of the corpus (`harness/corpus.rs`).
fn recorded_answers() -> Vec<Publish> {
    let answers: Vec<Publish> = mqrpc_tests::corpus::load()
        .into_iter()
        .filter(|r| !r.is_request())
        .map(|r| r.publish)
        .collect();
    assert!(!answers.is_empty(), "the corpus has answers");
    answers
}

/// A recorded answer sent to `request`: its Response Topic, and (single
/// answers) its Correlation Data, so that it reaches the call.
fn recorded_answer(recorded: &Publish, request: &Publish) -> Packet {
    let wanted = request.properties.clone().unwrap_or_default();
    let mut answer = recorded.clone();
    answer.topic = wanted.response_topic.unwrap_or_default().into();
    answer.qos = QoS::AtMostOnce;
    answer.pkid = 0;
    if let Some(properties) = &mut answer.properties {
        if properties.correlation_data.is_some() {
            properties.correlation_data = wanted.correlation_data;
        }
    }
    Packet::Publish(answer)
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: std::env::var("PROPTEST_CASES").ok().and_then(|c| c.parse().ok()).unwrap_or(24),
        ..ProptestConfig::default()
    })]

    /// Random bytes, or a damaged CONNACK, instead of the CONNACK:
    /// `Connection::connect` ends (connected or with an error).
    #[test]
    fn any_bytes_for_a_connack(
        random in proptest::collection::vec(any::<u8>(), 0..256),
        damage in damage(),
        use_random in any::<bool>(),
        keep_open in proptest::bool::weighted(0.15),
    ) {
        run_case(async move {
            let broker = FakeBroker::start().await;
            let options = options(&broker);
            let client = tokio::spawn(Connection::connect(options));
            let mut link = broker.accept().await;
            link.expect_connect().await;
            let bytes = if use_random { random } else { damaged(&Connack::default().packet(), &damage) };
            link.send_raw(&bytes).await;
            // With the link left open, an incomplete packet must not stall
            // the client for good (it waits up to 10 s for a CONNACK).
            let link = keep_open.then_some(link); // else closed now
            let connection = client.await.expect("connect task");
            if let Ok(connection) = connection {
                connection.close().await;
            }
            drop(link);
        })?;
    }

    /// A damaged answer (real PUBLISH of this call, bytes changed) or
    /// random bytes after a good session start: the call ends with its
    /// answer or an error by its deadline; the connection does not panic.
    #[test]
    fn any_bytes_for_an_answer(
        random in proptest::collection::vec(any::<u8>(), 0..256),
        damage in damage(),
        use_random in any::<bool>(),
        status in proptest::option::of("(ok|error|bad-request|[a-z-]{0,12})"),
        payload in proptest::option::of(proptest::collection::vec(any::<u8>(), 0..16)),
    ) {
        run_case(async move {
            let broker = FakeBroker::start().await;
            let options = options(&broker);
            let server = tokio::spawn(serve_then_answer(broker, move |request| {
                if use_random {
                    random
                } else {
                    let payload = payload.unwrap_or_else(|| vec![6]); // postcard 3i64
                    damaged(&real_answer(request, status, payload), &damage)
                }
            }));
            let conn = Connection::connect(options).await.expect("a good handshake");
            let calc = CalculatorClient::with_options(&conn, ClientOptions::default().timeout(Duration::from_millis(800)))
                .await
                .expect("client on a good session");
            // A value (possibly the damaged one: not ours to judge) or an
            // error; the guard of run_case catches a hang.
            let _ = calc.add(1, 2).await;
            conn.close().await;
            server.abort();
        })?;
    }
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: std::env::var("PROPTEST_CASES").ok().and_then(|c| c.parse().ok()).unwrap_or(24),
        ..ProptestConfig::default()
    })]

    /// A recorded answer of real traffic (any kind: batch, stream item,
    /// error, refusal), addressed to this call and damaged: the call ends
    /// with a value or an error by its deadline; nothing panics.
    #[test]
    fn any_damage_to_a_recorded_answer(
        index in any::<usize>(),
        damage in damage(),
    ) {
        let answers = recorded_answers();
        let recorded = answers[index % answers.len()].clone();
        run_case(async move {
            let broker = FakeBroker::start().await;
            let options = options(&broker);
            let server = tokio::spawn(serve_then_answer(broker, move |request| {
                damaged(&recorded_answer(&recorded, request), &damage)
            }));
            let conn = Connection::connect(options).await.expect("a good handshake");
            let calc = CalculatorClient::with_options(&conn, ClientOptions::default().timeout(Duration::from_millis(800)))
                .await
                .expect("client on a good session");
            let _ = calc.add(1, 2).await;
            conn.close().await;
            server.abort();
        })?;
    }
}

/// A recorded `ok` answer, undamaged, is this call's answer: the corpus
/// is real traffic the client reads.
#[test]
fn a_recorded_answer_is_answered() {
    let recorded = mqrpc_tests::corpus::load()
        .into_iter()
        .find(|r| r.kind == "answer-ok" && r.publish.payload.len() == 1)
        .expect("a recorded `add` answer (one postcard byte)")
        .publish;
    let expected: i64 = mqrpc::Codec::Postcard.decode(&recorded.payload).unwrap();
    run_case(async move {
        let broker = FakeBroker::start().await;
        let options = options(&broker);
        let server = tokio::spawn(serve_then_answer(broker, move |request| {
            damaged(&recorded_answer(&recorded, request), &Damage::None)
        }));
        let conn = Connection::connect(options).await.unwrap();
        let calc = CalculatorClient::with_options(
            &conn,
            ClientOptions::default().timeout(Duration::from_secs(5)),
        )
        .await
        .unwrap();
        assert_eq!(calc.add(1, 2).await, Ok(expected));
        conn.close().await;
        server.abort();
    })
    .unwrap();
}

/// The undamaged answer is the answer: the fuzz cases above exercise the
/// real exchange, not a broken one.
#[test]
fn the_undamaged_answer_is_answered() {
    run_case(async {
        let broker = FakeBroker::start().await;
        let options = options(&broker);
        let server = tokio::spawn(serve_then_answer(broker, |request| {
            damaged(&real_answer(request, None, vec![6]), &Damage::None)
        }));
        let conn = Connection::connect(options).await.unwrap();
        let calc = CalculatorClient::with_options(
            &conn,
            ClientOptions::default().timeout(Duration::from_secs(5)),
        )
        .await
        .unwrap();
        assert_eq!(calc.add(1, 2).await, Ok(3));
        conn.close().await;
        server.abort();
    })
    .unwrap();
}
