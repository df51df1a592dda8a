// Client streaming and bidirectional streaming: the client takes any
// `futures::Stream` of the items.
use mqrpc::StreamExt;

#[mqrpc::service]
pub trait Files {
    async fn upload(&self, name: String, chunks: mqrpc::Stream<Vec<u8>>) -> Result<u64, String>;
    async fn echo(&self, lines: mqrpc::Stream<String>) -> mqrpc::Stream<String>;
}

struct Disk;

impl Files for Disk {
    async fn upload(&self, _name: String, mut chunks: mqrpc::Stream<Vec<u8>>) -> Result<u64, String> {
        let mut size = 0;
        while let Some(chunk) = chunks.next().await {
            size += chunk.len() as u64;
        }
        Ok(size)
    }

    async fn echo(&self, lines: mqrpc::Stream<String>) -> mqrpc::Stream<String> {
        lines
    }
}

async fn use_it(client: FilesClient) -> Result<(), mqrpc::Error> {
    let chunks = mqrpc::Stream::iter(vec![vec![1u8; 10]]);
    let _size: Result<u64, String> = client.upload("a".into(), chunks).await?;
    let (tx, rx) = tokio::sync::mpsc::channel::<String>(1);
    drop(tx);
    let lines = futures_util::stream::unfold(rx, |mut rx| async { Some((rx.recv().await?, rx)) });
    let mut echoed: mqrpc::Items<String> = client.echo(lines).await?;
    let _ = echoed.next().await;
    Ok(())
}

fn main() {
    let _ = FilesServer::new(Disk);
    let _ = use_it;
}
