#[mqrpc::service]
pub trait Calculator {
    const VERSION: u32;
    type Output;
    async fn add(&self, a: i64, b: i64) -> i64;
}

fn main() {}
