//! `cargo run -p mqrpc-examples --features metrics --example metrics`:
//! serves the calculator, calls it now and then, and serves the per-method
//! metrics in Prometheus' text format on http://127.0.0.1:9464/metrics
//! (`METRICS_ADDR` to change it). Scrape it with Prometheus or `curl`.

use std::time::Duration;

use metrics_exporter_prometheus::PrometheusBuilder;
use mqrpc_examples::{Calc, CalculatorClient, CalculatorServer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    // Any `metrics` recorder works; this one renders Prometheus text.
    let prometheus = PrometheusBuilder::new().install_recorder()?;

    let conn = mqrpc::Connection::from_env_or_embedded().await?;
    let _server = CalculatorServer::new(Calc).serve(&conn).await?;
    let calc = CalculatorClient::new(&conn).await?;

    // Some traffic: additions and, now and then, a typed error.
    tokio::spawn(async move {
        for i in 0i64.. {
            let _ = calc.add(i, 1).await;
            if i % 10 == 0 {
                let _ = calc.divide(1.0, 0.0).await;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });

    let addr = std::env::var("METRICS_ADDR").unwrap_or_else(|_| "127.0.0.1:9464".into());
    let listener = tokio::net::TcpListener::bind(&addr).await?;
    println!("metrics on http://{}/metrics", listener.local_addr()?);
    loop {
        let (mut socket, _) = listener.accept().await?;
        let body = prometheus.render();
        tokio::spawn(async move {
            // Enough HTTP for a scraper: read the request head, answer, close.
            let mut head = [0u8; 1024];
            let _ = socket.read(&mut head).await;
            let response = format!(
                "HTTP/1.1 200 OK\r\ncontent-type: text/plain; version=0.0.4\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = socket.write_all(response.as_bytes()).await;
        });
    }
}
