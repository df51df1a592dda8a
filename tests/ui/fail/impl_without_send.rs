use std::rc::Rc;

#[mqrpc::service]
pub trait Calculator {
    async fn add(&self, a: i64, b: i64) -> i64;
}

struct Calc;

impl Calculator for Calc {
    // Holding an Rc across an await makes the future !Send: servers run
    // calls on a multi-threaded runtime, so this must not compile.
    async fn add(&self, a: i64, b: i64) -> i64 {
        let held = Rc::new(a);
        tokio::task::yield_now().await;
        *held + b
    }
}

fn main() {}
