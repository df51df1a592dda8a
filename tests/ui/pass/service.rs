//! Everything a service trait may contain, and what the generated types promise.
use std::collections::HashMap;

#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub struct Order {
    pub id: u64,
    pub lines: Vec<(String, u32)>,
}

#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub enum ShopError {
    NotFound(u64),
}

/// A shop.
#[mqrpc::service(name = "shop")]
pub trait Shop: Send + Sync {
    /// No arguments, no return value.
    async fn ping(&self);
    async fn get(&self, id: u64) -> std::result::Result<Order, ShopError>;
    async fn put(&self, order: Order) -> Result<(), ShopError>;
    #[mqrpc(name = "stock-levels")]
    async fn stock(&self, skus: Vec<String>) -> HashMap<String, Option<u32>>;
    async fn label(&self, name: Cow) -> std::borrow::Cow<'static, str>;
    async fn with_mut_binding(&self, mut count: u32) -> u32;
}

type Cow = std::borrow::Cow<'static, str>;

struct Memory;

impl Shop for Memory {
    async fn ping(&self) {}
    async fn get(&self, id: u64) -> Result<Order, ShopError> {
        Err(ShopError::NotFound(id))
    }
    async fn put(&self, _order: Order) -> Result<(), ShopError> {
        Ok(())
    }
    async fn stock(&self, skus: Vec<String>) -> HashMap<String, Option<u32>> {
        skus.into_iter().map(|s| (s, None)).collect()
    }
    async fn label(&self, name: Cow) -> std::borrow::Cow<'static, str> {
        name
    }
    async fn with_mut_binding(&self, count: u32) -> u32 {
        count
    }
}

fn assert_send<T: Send>(_: &T) {}
fn assert_clone_send_sync<T: Clone + Send + Sync + 'static>() {}

async fn use_client(conn: mqrpc::Connection) -> Result<(), mqrpc::Error> {
    let shop = ShopClient::new(&conn).await?;
    let ping = shop.ping();
    assert_send(&ping);
    let () = ping.await?;
    let order: Result<Order, ShopError> = shop.get(7).await?;
    let _ = order;
    let levels: HashMap<String, Option<u32>> = shop.stock(vec!["a".into()]).await?;
    let _ = levels;
    let _ = shop.with_timeout(std::time::Duration::from_secs(1)).put(Order { id: 1, lines: vec![] }).await?;
    Ok(())
}

async fn use_server(conn: mqrpc::Connection) -> Result<(), mqrpc::Error> {
    let handle = ShopServer::new(Memory).serve(&conn).await?;
    handle.stop().await
}

fn main() {
    assert_clone_send_sync::<ShopClient>();
    assert_eq!(ShopClient::SERVICE_NAME, "shop");
    assert_eq!(<ShopServer<Memory> as mqrpc::Service>::METHODS, &["ping", "get", "put", "stock-levels", "label", "with_mut_binding"]);
    // The AsyncAPI document: every method, aliases and Cow included.
    let doc = ShopServer::asyncapi(&mqrpc::asyncapi::AsyncApiOptions::new());
    assert_eq!(doc["channels"]["stock-levels"]["address"], "mqrpc/shop/stock-levels");
    assert_eq!(doc["operations"].as_object().map(|ops| ops.len()), Some(7)); // 6 methods + cancel
    let _ = use_client;
    let _ = use_server;
}
