#[mqrpc::service(name = "calc", qos = 2)]
pub trait Calculator {
    async fn add(&self, a: i64, b: i64) -> i64;
}

fn main() {}
