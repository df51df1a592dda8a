#[mqrpc::service]
pub trait Calculator {
    #[mqrpc(name = "_cancel")]
    async fn cancel(&self, id: u64);
}

fn main() {}
