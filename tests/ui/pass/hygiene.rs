//! Argument names and types a user may choose: the generated code neither
//! captures nor shadows any of them.
#![allow(non_camel_case_types, dead_code)]

// Shadows the serde crate at the crate root: generated code names its own.
mod serde {}

#[derive(Debug, PartialEq, ::serde::Serialize, ::serde::Deserialize)]
pub struct S(pub u8);
#[derive(Debug, PartialEq, ::serde::Serialize, ::serde::Deserialize)]
pub struct T(pub u8);
#[derive(Debug, PartialEq, ::serde::Serialize, ::serde::Deserialize)]
pub struct E(pub u8);
#[derive(Debug, PartialEq, ::serde::Serialize, ::serde::Deserialize)]
pub struct Result;
#[derive(Debug, PartialEq, ::serde::Serialize, ::serde::Deserialize)]
pub struct Option;
#[derive(Debug, PartialEq, ::serde::Serialize, ::serde::Deserialize)]
pub struct Error;
#[derive(Debug, PartialEq, ::serde::Serialize, ::serde::Deserialize)]
pub struct Vec;
#[derive(Debug, PartialEq, ::serde::Serialize, ::serde::Deserialize)]
pub struct Stream;

#[mqrpc::service]
pub trait Names {
    async fn codec(&self, codec: u32) -> u32;
    async fn payload(&self, payload: u32, method: u32) -> u32;
    async fn request(&self, request: u32, reply: u32) -> u32;
    async fn clients(&self, client: u32, conn: u32, connection: u32) -> u32;
    async fn services(&self, service: u32, ctx: u32, options: u32) -> u32;
    async fn locals(&self, value: u32, error: u32, serializer: u32, state: u32) -> u32;
    async fn self_like(&self, r#type: u32, r#match: u32) -> u32;
    async fn fallible(&self, error: u32, value: u32) -> ::std::result::Result<u32, E>;
    async fn types(&self, s: S, t: T, e: E) -> S;
    async fn prelude_names(&self, r: Result, o: Option, e: Error, v: Vec) -> Result;
    async fn named_stream(&self, s: Stream) -> Stream;
    async fn items(&self, n: u32) -> mqrpc::Stream<T>;
    #[mqrpc(oneway)]
    async fn oneway(&self, codec: u32, payload: S);
    #[mqrpc(qos = 0)]
    async fn quick(&self, codec: u32, client: T) -> T;
    #[mqrpc(qos = 2)]
    async fn sure(&self, service: u32) -> u32;
}

struct Impl;

impl Names for Impl {
    async fn codec(&self, codec: u32) -> u32 {
        codec
    }
    async fn payload(&self, payload: u32, method: u32) -> u32 {
        payload + method
    }
    async fn request(&self, request: u32, reply: u32) -> u32 {
        request + reply
    }
    async fn clients(&self, client: u32, conn: u32, connection: u32) -> u32 {
        client + conn + connection
    }
    async fn services(&self, service: u32, ctx: u32, options: u32) -> u32 {
        service + ctx + options
    }
    async fn locals(&self, value: u32, error: u32, serializer: u32, state: u32) -> u32 {
        value + error + serializer + state
    }
    async fn self_like(&self, r#type: u32, r#match: u32) -> u32 {
        r#type + r#match
    }
    async fn fallible(&self, error: u32, value: u32) -> ::std::result::Result<u32, E> {
        if error == 0 {
            Ok(value)
        } else {
            Err(E(error as u8))
        }
    }
    async fn types(&self, s: S, t: T, e: E) -> S {
        S(s.0 + t.0 + e.0)
    }
    async fn prelude_names(&self, r: Result, _o: Option, _e: Error, _v: Vec) -> Result {
        r
    }
    async fn named_stream(&self, s: Stream) -> Stream {
        s
    }
    async fn items(&self, n: u32) -> mqrpc::Stream<T> {
        mqrpc::Stream::new(futures_util::stream::iter((0..n).map(|i| T(i as u8))))
    }
    async fn oneway(&self, _codec: u32, _payload: S) {}
    async fn quick(&self, _codec: u32, client: T) -> T {
        client
    }
    async fn sure(&self, service: u32) -> u32 {
        service
    }
}

/// The server answers each method with the user's own values: decoding
/// did not mix an argument up with a generated local.
async fn answers() {
    use mqrpc::{Codec, Service, Status};
    let server = NamesServer::new(Impl);
    let codec = Codec::Json;
    let reply = server.call("codec", codec, br#"{"codec": 7}"#).await;
    assert_eq!(reply.status(), Status::Ok);
    assert_eq!(reply.payload(), b"7");
    let reply = server
        .call("locals", codec, br#"{"value": 1, "error": 2, "serializer": 3, "state": 4}"#)
        .await;
    assert_eq!(reply.payload(), b"10");
    let reply = server.call("self_like", codec, br#"{"type": 1, "match": 2}"#).await;
    assert_eq!(reply.payload(), b"3");
    let reply = server.call("fallible", codec, br#"{"error": 0, "value": 5}"#).await;
    assert_eq!(reply.payload(), b"5");
    let reply = server.call("types", codec, br#"{"s": 1, "t": 2, "e": 3}"#).await;
    assert_eq!(reply.payload(), b"6");
}

fn main() {
    tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap()
        .block_on(answers());
    let _ = NamesClient::codec;
    let _ = NamesBroadcast::types;
}

// A trait written by a `macro_rules!`: its types come from the invocation,
// its `&self` from the macro.
macro_rules! service_of {
    ($name:ident, $ty:ty) => {
        #[mqrpc::service]
        pub trait $name {
            async fn take(&self, value: $ty, codec: $ty) -> $ty;
        }
    };
}
service_of!(FromMacro, u32);
