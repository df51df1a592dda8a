//! Property test of the dispatcher's input: whatever method name, Content
//! Type and payload bytes arrive, the server answers with a valid status
//! and never panics.

use futures_util::FutureExt;
use mqrpc::{respond, Codec, Status};
use mqrpc_tests::{Calc, CalculatorServer};
use proptest::prelude::*;

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
        payload in prop::collection::vec(any::<u8>(), 0..64),
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
            Status::Ok | Status::Error => {
                let codec = Codec::from_content_type(content_type.as_deref()).unwrap();
                if codec == Codec::Json {
                    prop_assert!(serde_json::from_slice::<serde_json::Value>(reply.payload()).is_ok());
                }
            }
            Status::UnknownMethod => prop_assert!(!["add", "divide", "echo", "explode", "count"].contains(&method.as_str())),
            Status::BadRequest | Status::UnsupportedContentType | Status::Internal | Status::SchemaMismatch => {
                prop_assert!(std::str::from_utf8(reply.payload()).is_ok());
            }
            other => prop_assert!(false, "unexpected status {other}"),
        }
    }
}
