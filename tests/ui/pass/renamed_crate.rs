//! `#[mqrpc::service(crate = "...")]`: the generated code reaches mqrpc
//! through the given path (a renamed dependency, a re-export), and the
//! user's crate needs no `mqrpc` or `serde` at its root.

mod deps {
    pub use ::mqrpc as rpc;
}

mod api {
    #[::mqrpc::service(crate = "crate::deps::rpc")]
    pub trait Greeter {
        async fn greet(&self, name: String) -> String;
        async fn check(&self, n: u32) -> Result<u32, String>;
    }
}

// Would break generated code that named `::mqrpc` through the user's scope
// (it names `crate::deps::rpc`).
#[allow(dead_code)]
mod mqrpc {}

struct Impl;

impl api::Greeter for Impl {
    async fn greet(&self, name: String) -> String {
        format!("hello {name}")
    }
    async fn check(&self, n: u32) -> Result<u32, String> {
        Ok(n)
    }
}

fn main() {
    use deps::rpc::{Codec, Service, Status};
    let server = api::GreeterServer::new(Impl);
    let reply = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap()
        .block_on(server.call("greet", Codec::Json, br#"{"name": "mq"}"#));
    assert_eq!(reply.status(), Status::Ok);
    assert_eq!(reply.payload(), br#""hello mq""#);
    let _ = api::GreeterClient::greet;
}
