//! `cargo run --example quickstart`: serves the calculator and calls it,
//! through the embedded broker (or the broker in MQRPC_BROKER, if set).

#[path = "support/logs.rs"]
mod logs;

use std::time::{Duration, Instant};

use mqrpc_examples::{Calc, CalculatorClient, CalculatorServer};

#[tokio::main]
async fn main() -> Result<(), mqrpc::Error> {
    // mqrpc logs through `tracing`: RUST_LOG=mqrpc_runtime=debug shows
    // every call (sent, acknowledged, answered).
    logs::init();
    let conn = mqrpc::Connection::from_env_or_embedded().await?;
    println!("broker: {}", conn.broker_url());

    let server = CalculatorServer::new(Calc).serve(&conn).await?;
    println!("serving Calculator on {}", server.topic_filter());

    let calc = CalculatorClient::new(&conn).await?;
    println!("add(2, 3)          = {}", calc.add(2, 3).await?);
    println!("sum([1, 2, 3, 4])  = {}", calc.sum(vec![1, 2, 3, 4]).await?);
    println!("divide(1.0, 4.0)   = {:?}", calc.divide(1.0, 4.0).await?);
    // A typed error: Ok(Err(MathError::DivideByZero)), not a string.
    match calc.divide(1.0, 0.0).await? {
        Ok(value) => println!("divide(1.0, 0.0)   = {value}"),
        Err(error) => println!("divide(1.0, 0.0)   = Err({error:?}): {error}"),
    }
    // A framework error: nobody serves `Weather`. Brokers that report "no
    // matching subscribers" (Mosquitto) fail it at once, others time out.
    let untyped = mqrpc::Client::new(&conn, "Weather", mqrpc::ClientOptions::default()).await?;
    let err = untyped
        .with_timeout(Duration::from_millis(200))
        .call::<_, f64>("temperature", &())
        .await
        .unwrap_err();
    println!("Weather/temperature: {err}");

    let mut samples = Vec::with_capacity(1000);
    for i in 0..1000 {
        let start = Instant::now();
        calc.add(i, 1).await?;
        samples.push(start.elapsed());
    }
    samples.sort();
    println!(
        "1000 sequential calls: p50 {:?}, p99 {:?}",
        samples[500], samples[990]
    );

    server.stop().await?;
    conn.close().await;
    Ok(())
}
