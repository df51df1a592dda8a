#[mqrpc::service]
pub trait Log {
    #[mqrpc(oneway)]
    async fn write(&self, line: String) -> bool;
}

fn main() {}
