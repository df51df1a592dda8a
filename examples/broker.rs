//! `cargo run --example broker`: runs the embedded MQTT v5 broker on its
//! own, so the server/client pair can run with nothing installed.
//! Set `MQRPC_BROKER_PORT` to choose the port (default 1883).

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
