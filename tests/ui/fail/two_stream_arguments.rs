#[mqrpc::service]
pub trait Files {
    async fn zip(&self, left: mqrpc::Stream<u8>, right: mqrpc::Stream<u8>) -> u64;
}

fn main() {}
