#[mqrpc::service]
pub trait Calculator {
    async fn add<T: serde::Serialize>(&self, a: T, b: T) -> i64;
}

fn main() {}
