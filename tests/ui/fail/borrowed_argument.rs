#[mqrpc::service]
pub trait Calculator {
    async fn greet(&self, name: &str) -> String;
}

fn main() {}
