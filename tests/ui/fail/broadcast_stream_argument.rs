// A stream in either direction is bound to one server: a broadcast has no
// such method.
#[mqrpc::service]
pub trait Files {
    async fn upload(&self, chunks: mqrpc::Stream<Vec<u8>>) -> u64;
}

async fn upload_everywhere(client: FilesClient) {
    let chunks = mqrpc::Stream::iter(vec![vec![1u8]]);
    let _ = client.broadcast(None).upload(chunks).await;
}

fn main() {}
