//! Property test of the dispatcher's input: whatever method name, Content
//! Type and payload bytes arrive, the server answers with a valid status
//! and never panics; an `ok` or `error` answer decodes as the method's
//! declared type, in the request's codec, and `add` adds.

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

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2_000))]

    #[test]
    fn any_request_gets_a_valid_answer(
        method in method(),
        content_type in content_type(),
        payload in payload(),
    ) {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap();
        let _guard = runtime.enter();
        let server = CalculatorServer::new(Calc::default());
        // Methods that wait (sleep, hang) stay pending: dropped, never a panic.
        let Some(reply) = respond(&server, &method, content_type.as_deref(), &payload).now_or_never() else {
            return Ok(());
        };
        match reply.status() {
            Status::Ok if reply.is_stream() => {}
            status @ (Status::Ok | Status::Error) => {
                let codec = Codec::from_content_type(content_type.as_deref()).unwrap();
                check_answer(&method, codec, status, &payload, reply.payload())?;
            }
            Status::UnknownMethod => {
                let methods = <CalculatorServer<Calc> as Service>::METHODS;
                prop_assert!(!methods.contains(&method.as_str()), "`{method}` is a method");
            }
            Status::BadRequest | Status::UnsupportedContentType | Status::Internal | Status::SchemaMismatch => {
                prop_assert!(std::str::from_utf8(reply.payload()).is_ok());
            }
            other => prop_assert!(false, "unexpected status {other}"),
        }
    }
}
