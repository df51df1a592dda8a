#[mqrpc::service]
pub trait Files {
    #[mqrpc(oneway)]
    async fn drop_all(&self, chunks: mqrpc::Stream<Vec<u8>>);
}

fn main() {}
