//! The `mqrpc` command against a real Mosquitto with a Calculator served
//! in this process.

use std::process::Output;

use mqrpc::ServerOptions;
use mqrpc_tests::{Calc, CalculatorServer};

async fn mqrpc(url: &str, args: &[&str]) -> Output {
    tokio::process::Command::new(env!("CARGO_BIN_EXE_mqrpc"))
        .args(["--broker", url, "--wait-ms", "700"])
        .args(args)
        .output()
        .await
        .expect("run mqrpc")
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_lists_inspects_and_calls_services() {
    let Some(broker) = mqrpc_tests::mosquitto() else {
        return;
    };
    let conn = broker.connect().await;
    let _server = CalculatorServer::new(Calc::default())
        .serve_with(&conn, ServerOptions::default().instance("calc-1"))
        .await
        .unwrap();
    let url = broker.url();

    let list = mqrpc(url, &["list"]).await;
    assert!(list.status.success(), "{list:?}");
    let line = stdout(&list);
    assert!(line.starts_with("Calculator\tcalc-1\t"), "{line}");
    assert!(line.contains("add,divide"), "{line}");

    let call = mqrpc(url, &["call", "Calculator", "add", r#"{"a": 40, "b": 2}"#]).await;
    assert!(call.status.success(), "{call:?}");
    assert_eq!(stdout(&call).trim(), "42");

    // The typed error is printed as JSON, with exit code 1.
    let call = mqrpc(
        url,
        &["call", "Calculator", "divide", r#"{"a": 1.0, "b": 0.0}"#],
    )
    .await;
    assert_eq!(call.status.code(), Some(1), "{call:?}");
    assert_eq!(stdout(&call).trim(), r#""DivideByZero""#);

    // Framework errors and bad input: exit code 2 and a message.
    let call = mqrpc(url, &["call", "Calculator", "sqrt", "{}"]).await;
    assert_eq!(call.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&call.stderr).contains("unknown-method"));
    let call = mqrpc(url, &["call", "Calculator", "add", "not json"]).await;
    assert_eq!(call.status.code(), Some(2));

    let ping = mqrpc(url, &["ping", "Calculator", "--instance", "calc-1"]).await;
    assert!(ping.status.success(), "{ping:?}");

    let info = mqrpc(url, &["info", "Calculator"]).await;
    let info: serde_json::Value = serde_json::from_str(stdout(&info).trim()).unwrap();
    assert_eq!(info["instance"], "calc-1");

    let stats = mqrpc(url, &["stats", "Calculator"]).await;
    let stats: serde_json::Value = serde_json::from_str(stdout(&stats).trim()).unwrap();
    let add = stats["methods"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["name"] == "add")
        .unwrap();
    assert_eq!(add["calls"], 1);

    // A broker that is not there: a clear error, not a hang.
    let port = mqrpc_tests::free_port().unwrap();
    let down = mqrpc(&format!("mqtt://127.0.0.1:{port}"), &["list"]).await;
    assert_eq!(down.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&down.stderr).contains("cannot connect"));
}
