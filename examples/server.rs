//! `MQRPC_BROKER=mqtt://127.0.0.1:1883 cargo run --example server`:
//! serves the calculator until Ctrl-C.

#[path = "support/logs.rs"]
mod logs;

use mqrpc_examples::{Calc, CalculatorServer};

#[tokio::main]
async fn main() {
    // mqrpc logs through `tracing`: RUST_LOG=mqrpc_runtime=debug shows
    // every call (sent, acknowledged, answered).
    logs::init();
    let conn = match mqrpc::Connection::from_env().await {
        Ok(conn) => conn,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(2);
        }
    };
    let server = match CalculatorServer::new(Calc).serve(&conn).await {
        Ok(server) => server,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(1);
        }
    };
    println!(
        "serving Calculator on {} via {} (Ctrl-C to stop)",
        server.topic_filter(),
        conn.broker_url()
    );
    let _ = tokio::signal::ctrl_c().await;
    let _ = server.stop().await;
    conn.close().await;
}
