//! `cargo run --example broker`: runs the embedded MQTT v5 broker on its
//! own, so the server/client pair can run with nothing installed.
//! Set `MQRPC_BROKER_PORT` to choose the port (default 1883).

#[path = "support/logs.rs"]
mod logs;

#[tokio::main]
async fn main() {
    // mqrpc logs through `tracing`: RUST_LOG=mqrpc_runtime=debug shows
    // every call (sent, acknowledged, answered).
    logs::init();
    let port = std::env::var("MQRPC_BROKER_PORT")
        .ok()
        .and_then(|p| p.parse().ok())
        .unwrap_or(1883);
    let broker = match mqrpc::EmbeddedBroker::start_on(port).await {
        Ok(broker) => broker,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(1);
        }
    };
    println!(
        "embedded broker listening: MQRPC_BROKER={} (Ctrl-C to stop)",
        broker.url()
    );
    let _ = tokio::signal::ctrl_c().await;
}
