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

mqrpc_tests::on_both_brokers!(
    call_prints_every_item_of_a_stream,
    list_returns_once_answers_stop,
);

/// A streaming method: every item, one JSON value per line, exit code 0;
/// past the credit window (32 items) too.
async fn call_prints_every_item_of_a_stream(broker: mqrpc_tests::TestBroker) {
    let conn = broker.connect().await;
    let _server = CalculatorServer::new(Calc::default())
        .serve(&conn)
        .await
        .unwrap();
    let url = broker.url();
    let call = mqrpc(url, &["call", "Calculator", "count_up", r#"{"n": 3}"#]).await;
    assert!(call.status.success(), "{call:?}");
    assert_eq!(stdout(&call), "0\n1\n2\n");
    let call = mqrpc(url, &["call", "Calculator", "count_up", r#"{"n": 100}"#]).await;
    assert!(call.status.success(), "{call:?}");
    let lines: Vec<u64> = stdout(&call)
        .lines()
        .map(|line| line.parse().unwrap())
        .collect();
    assert_eq!(lines, (0..100).collect::<Vec<u64>>());
    // A plain method still prints its one answer.
    let call = mqrpc(url, &["call", "Calculator", "add", r#"{"a": 1, "b": 2}"#]).await;
    assert_eq!(stdout(&call), "3\n");
}

/// `list` returns once the answers stop, not at --wait-ms (one minute
/// here: the test's own deadline is half of it).
async fn list_returns_once_answers_stop(broker: mqrpc_tests::TestBroker) {
    let conn = broker.connect().await;
    let _server = CalculatorServer::new(Calc::default())
        .serve_with(&conn, ServerOptions::default().instance("calc-quiet"))
        .await
        .unwrap();
    let list = tokio::process::Command::new(env!("CARGO_BIN_EXE_mqrpc"))
        .args(["--broker", broker.url(), "--wait-ms", "60000", "list"])
        .output();
    let list = tokio::time::timeout(std::time::Duration::from_secs(30), list)
        .await
        .expect("list must return once the answers stop")
        .unwrap();
    assert!(list.status.success(), "{list:?}");
    assert!(
        stdout(&list).starts_with("Calculator\tcalc-quiet\t"),
        "{list:?}"
    );
}

/// No `--broker` and no `MQRPC_BROKER`: an error that says what to pass,
/// as the library's `Connection::from_env` has no default either.
#[tokio::test]
async fn without_a_broker_the_cli_says_what_to_pass() {
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_mqrpc"))
        .env_remove("MQRPC_BROKER")
        .args(["list"])
        .output()
        .await
        .unwrap();
    assert_eq!(output.status.code(), Some(2), "{output:?}");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("pass --broker mqtt://host:port or set MQRPC_BROKER"),
        "{stderr}"
    );
}
