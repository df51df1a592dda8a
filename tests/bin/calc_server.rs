//! The test service in a process of its own, so a test can kill it:
//! `MQRPC_BROKER=mqtt://127.0.0.1:PORT calc-server` serves until killed.

use mqrpc_tests::{Calc, CalculatorServer};

#[tokio::main]
async fn main() {
    let conn = mqrpc::Connection::from_env()
        .await
        .unwrap_or_else(|e| panic!("calc-server: {e}"));
    let _server = CalculatorServer::new(Calc::default())
        .serve(&conn)
        .await
        .unwrap_or_else(|e| panic!("calc-server: {e}"));
    println!("serving");
    std::future::pending::<()>().await;
}
