#[mqrpc::service]
pub trait Store<T> {
    async fn get(&self, key: String) -> Option<T>;
}

fn main() {}
