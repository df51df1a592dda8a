#[mqrpc::service]
pub trait Files {
    async fn many(&self, files: Vec<mqrpc::Stream<Vec<u8>>>) -> u64;
}

fn main() {}
