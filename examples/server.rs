//! `MQRPC_BROKER=mqtt://127.0.0.1:1883 cargo run --example server`:
//! serves the calculator until Ctrl-C.

use mqrpc_examples::{Calc, CalculatorServer};

#[tokio::main]
async fn main() {
    // mqrpc logs through `tracing`: nothing shows without a subscriber.
    // RUST_LOG=mqrpc_runtime=debug shows every call (sent, acknowledged,
    // answered); the default shows warnings.
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
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
