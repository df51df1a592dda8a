#[mqrpc::service]
pub trait Calculator {
    async fn sum(&self, values: impl IntoIterator<Item = i64>) -> i64;
}

fn main() {}
