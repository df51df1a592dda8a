//! `MQRPC_BROKER=mqtt://127.0.0.1:1883 cargo run --example client`:
//! calls the calculator served by `--example server`.

#[path = "support/logs.rs"]
mod logs;

use mqrpc_examples::CalculatorClient;

#[tokio::main]
async fn main() {
    // mqrpc logs through `tracing`: RUST_LOG=mqrpc_runtime=debug shows
    // every call (sent, acknowledged, answered).
    logs::init();
    if let Err(e) = run().await {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}

async fn run() -> Result<(), mqrpc::Error> {
    let conn = mqrpc::Connection::from_env().await?;
    let calc = CalculatorClient::new(&conn).await?;
    println!("add(40, 2)       = {}", calc.add(40, 2).await?);
    println!("sum([1, 2, 3])   = {}", calc.sum(vec![1, 2, 3]).await?);
    println!("divide(9.0, 3.0) = {:?}", calc.divide(9.0, 3.0).await?);
    println!("divide(1.0, 0.0) = {:?}", calc.divide(1.0, 0.0).await?);
    conn.close().await;
    Ok(())
}
