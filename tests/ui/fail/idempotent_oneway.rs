#[mqrpc::service]
pub trait Ledger {
    #[mqrpc(oneway, idempotent)]
    async fn touch(&self);
}

fn main() {}
