//! The examples' log output (shared by each of them through `#[path]`).

/// mqrpc logs through `tracing`: nothing shows without a subscriber. This
/// one writes to stderr; `RUST_LOG=mqrpc_runtime=debug` shows every call
/// (sent, acknowledged, answered), the default shows warnings.
pub fn init() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
}
