//! The test service in a process of its own, so a test can kill it:
//! `MQRPC_BROKER=mqtt://127.0.0.1:PORT calc-server` serves until killed.
//!
//! Optional settings, from the environment:
//! - `CALC_SESSION_EXPIRY_S`: keep the MQTT session this many seconds
//!   (`ConnectOptions::session_expiry`; give the client id in the URL,
//!   `?client_id=ID`, to come back to it);
//! - `CALC_ACK_AFTER_ANSWER=1`: `ServerOptions::ack_after_answer(true)`;
//! - `CALC_INSTANCE`: `ServerOptions::instance`;
//! - `CALC_META=1`: serve the `Meta` service of `harness/meta.rs` too;
//! - `CALC_ANNOUNCE_STARTS=1`: print `started` on stdout, a line for each
//!   `linger` handler that has started (so a test can kill the process
//!   while a call is running, not before its request arrived).

use std::time::Duration;

use mqrpc_tests::{Calc, CalculatorServer};

#[tokio::main]
async fn main() {
    let fail = |e: mqrpc::Error| -> ! { panic!("calc-server: {e}") };
    let mut options = mqrpc::ConnectOptions::from_env().unwrap_or_else(|e| fail(e));
    if let Ok(seconds) = std::env::var("CALC_SESSION_EXPIRY_S") {
        let seconds = seconds.parse().expect("CALC_SESSION_EXPIRY_S: seconds");
        options = options.session_expiry(Duration::from_secs(seconds));
    }
    let conn = mqrpc::Connection::connect(options)
        .await
        .unwrap_or_else(|e| fail(e));
    let mut server = mqrpc::ServerOptions::default()
        .ack_after_answer(std::env::var("CALC_ACK_AFTER_ANSWER").as_deref() == Ok("1"));
    if let Ok(instance) = std::env::var("CALC_INSTANCE") {
        server = server.instance(instance);
    }
    let _meta = match std::env::var("CALC_META").as_deref() {
        Ok("1") => Some(
            mqrpc_tests::meta::MetaServer::new(mqrpc_tests::meta::MetaImpl::default())
                .serve_with(&conn, server.clone())
                .await
                .unwrap_or_else(|e| fail(e)),
        ),
        _ => None,
    };
    let calc = Calc::default();
    if std::env::var("CALC_ANNOUNCE_STARTS").as_deref() == Ok("1") {
        let stats = calc.stats.clone();
        tokio::spawn(async move {
            use std::io::Write;
            use std::sync::atomic::Ordering;
            let mut announced = 0;
            loop {
                let started = stats.started.load(Ordering::SeqCst);
                while announced < started {
                    announced += 1;
                    let mut out = std::io::stdout().lock();
                    let _ = writeln!(out, "started");
                    let _ = out.flush();
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        });
    }
    let _server = CalculatorServer::new(calc)
        .serve_with(&conn, server)
        .await
        .unwrap_or_else(|e| fail(e));
    println!("serving");
    std::future::pending::<()>().await;
}
