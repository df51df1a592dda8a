//! Property test of the dispatcher's input: whatever method name, Content
//! Type and payload bytes arrive, the server answers with a valid status
//! and never panics; an `ok` or `error` answer decodes as the method's
//! declared type, in the request's codec, and `add` adds. Besides
//! arbitrary input, requests of the corpus of real traffic
//! (`tests/corpus/`, `harness/corpus.rs`) with bytes changed, cut or
//! appended.

use futures_util::FutureExt;
use mqrpc::{respond, Codec, Service, Status};
use mqrpc_tests::{Calc, CalculatorServer, MathError};
use proptest::prelude::*;

#[derive(serde::Deserialize)]
struct AddArgs {
    a: i64,
    b: i64,
}

/// Decodes an `ok` (or, for `divide`, `error`) answer as the method's
/// declared type; for `add`, checks the sum against the arguments.
fn check_answer(
    method: &str,
    codec: Codec,
    status: Status,
    request: &[u8],
    answer: &[u8],
) -> Result<(), TestCaseError> {
    let decoded = match (method, status) {
        ("add" | "add_qos0", Status::Ok) => {
            let sum: i64 = codec
                .decode(answer)
                .map_err(|e| TestCaseError::fail(e.to_string()))?;
            let args: AddArgs = codec
                .decode(request)
                .expect("the server decoded these arguments");
            prop_assert_eq!(sum, args.a.wrapping_add(args.b));
            Ok(())
        }
        ("divide", Status::Ok) => codec.decode::<f64>(answer).map(drop),
        ("divide", Status::Error) => codec.decode::<MathError>(answer).map(drop),
        ("echo", Status::Ok) => codec.decode::<String>(answer).map(drop),
        ("count", Status::Ok) => codec.decode::<u64>(answer).map(drop),
        ("explode", Status::Ok) => codec.decode::<u32>(answer).map(drop),
        (_, Status::Error) => {
            return Err(TestCaseError::fail(format!(
                "`{method}` has no typed error"
            )))
        }
        // Other methods of the service: decoded as JSON at least.
        _ if codec == Codec::Json => serde_json::from_slice::<serde_json::Value>(answer)
            .map(drop)
            .map_err(|e| mqrpc::Error::Decode {
                reason: e.to_string(),
            }),
        _ => Ok(()),
    };
    prop_assert!(
        decoded.is_ok(),
        "`{method}` answered {status} with {answer:?}: {decoded:?}"
    );
    Ok(())
}

fn method() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("add".to_string()),
        Just("divide".to_string()),
        Just("echo".to_string()),
        Just("explode".to_string()),
        Just("count".to_string()),
        Just("add_qos0".to_string()),
        Just("_cancel".to_string()),
        ".{0,12}",
    ]
}

/// Arbitrary bytes, and well-formed `add` arguments in either codec, so
/// `ok` answers are checked too.
fn payload() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        prop::collection::vec(any::<u8>(), 0..64),
        (any::<i64>(), any::<i64>()).prop_map(|(a, b)| Codec::Postcard.encode(&(a, b)).unwrap()),
        (any::<i64>(), any::<i64>())
            .prop_map(|(a, b)| format!(r#"{{"a": {a}, "b": {b}}}"#).into_bytes()),
    ]
}

fn content_type() -> impl Strategy<Value = Option<String>> {
    prop_oneof![
        Just(None),
        Just(Some("application/json".to_string())),
        Just(Some("application/postcard".to_string())),
        Just(Some("application/json; charset=utf-8".to_string())),
        ".{0,24}".prop_map(Some),
    ]
}

/// The method, Content Type and payload of each single request of the
/// corpus (batches, cancels and credits are not the dispatcher's input).
fn recorded_requests() -> Vec<(String, Option<String>, Vec<u8>)> {
    mqrpc_tests::corpus::load()
        .into_iter()
        .filter(|r| r.kind.starts_with("request-") && r.kind != "request-cancel")
        .map(|r| {
            let topic = String::from_utf8_lossy(&r.publish.topic).to_string();
            let method = topic.rsplit('/').next().unwrap_or_default().to_string();
            let content_type = r.publish.properties.and_then(|p| p.content_type);
            (method, content_type, r.publish.payload.to_vec())
        })
        .collect()
}

/// A recorded request, its payload changed: bytes flipped, cut short, or
/// more appended.
fn recorded_request() -> impl Strategy<Value = (String, Option<String>, Vec<u8>)> {
    let seeds = recorded_requests();
    assert!(!seeds.is_empty(), "the corpus has requests");
    let damage = prop_oneof![
        Just((Vec::new(), None, Vec::new())),
        prop::collection::vec((any::<usize>(), 1..=255u8), 1..4).prop_map(|f| (
            f,
            None,
            Vec::new()
        )),
        any::<usize>().prop_map(|n| (Vec::new(), Some(n), Vec::new())),
        prop::collection::vec(any::<u8>(), 1..32).prop_map(|more| (Vec::new(), None, more)),
    ];
    (0..seeds.len(), damage).prop_map(move |(i, (flips, cut, more))| {
        let (method, content_type, mut payload) = seeds[i].clone();
        for (at, mask) in flips {
            if !payload.is_empty() {
                let len = payload.len();
                payload[at % len] ^= mask;
            }
        }
        if let Some(n) = cut {
            payload.truncate(n % (payload.len() + 1));
        }
        payload.extend_from_slice(&more);
        (method, content_type, payload)
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2_000))]

    #[test]
    fn any_request_gets_a_valid_answer(
        method in method(),
        content_type in content_type(),
        payload in payload(),
    ) {
        check_reply(&method, content_type, &payload)?;
    }

    #[test]
    fn any_damage_to_a_recorded_request_gets_a_valid_answer(
        (method, content_type, payload) in recorded_request(),
    ) {
        check_reply(&method, content_type, &payload)?;
    }
}

/// The server's answer to one request is valid for its status.
fn check_reply(
    method: &str,
    content_type: Option<String>,
    payload: &[u8],
) -> Result<(), TestCaseError> {
    let method = method.to_string();
    {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        let _guard = runtime.enter();
        let server = CalculatorServer::new(Calc::default());
        // Methods that wait (sleep, hang) stay pending: dropped, never a panic.
        let Some(reply) =
            respond(&server, &method, content_type.as_deref(), payload).now_or_never()
        else {
            return Ok(());
        };
        match reply.status() {
            Status::Ok if reply.is_stream() => {}
            status @ (Status::Ok | Status::Error) => {
                let codec = Codec::from_content_type(content_type.as_deref()).unwrap();
                check_answer(&method, codec, status, payload, reply.payload())?;
            }
            Status::UnknownMethod => {
                let methods = <CalculatorServer<Calc> as Service>::METHODS;
                prop_assert!(
                    !methods.contains(&method.as_str()),
                    "`{method}` is a method"
                );
            }
            Status::BadRequest
            | Status::UnsupportedContentType
            | Status::Internal
            | Status::SchemaMismatch => {
                prop_assert!(std::str::from_utf8(reply.payload()).is_ok());
            }
            other => prop_assert!(false, "unexpected status {other}"),
        }
    }
    Ok(())
}
