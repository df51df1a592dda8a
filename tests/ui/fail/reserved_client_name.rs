#[mqrpc::service]
pub trait Calculator {
    async fn new(&self) -> u32;
}

fn main() {}
