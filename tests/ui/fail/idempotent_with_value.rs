#[mqrpc::service]
pub trait Ledger {
    #[mqrpc(idempotent = true)]
    async fn balance(&self) -> i64;
}

fn main() {}
