//! Runtime of [mqrpc](https://docs.rs/mqrpc): typed RPC over MQTT v5.
//!
//! Users depend on the `mqrpc` facade, which re-exports this crate; the
//! `#[mqrpc::service]` macro generates code against it. The layers are
//! folders, and imports point down the list:
//!
//! - `asyncapi/`: AsyncAPI 3.0 documents of a service;
//! - `client/` ([`Client`]: calls waiting for answers, broadcasts, streams)
//!   and `server/` ([`serve`]: admission, duplicates, dispatch, built-ins);
//! - `observe/`: spans, trace context, metrics;
//! - `connection/` ([`Connection`]: connect, reconnect, TLS settings,
//!   routing of incoming publishes; the embedded broker), over the MQTT v5
//!   session loop of the `mqrpc-link` crate, which only this layer uses;
//! - `protocol/`: names, statuses, topics, [`QoS`], the payload [`Codec`];
//! - [`Error`], shared by all.

#![warn(missing_docs)]

pub mod asyncapi;
mod client;
mod connection;
mod error;
mod observe;
pub mod protocol;
mod server;

pub use client::{
    discover, Answers, Client, ClientOptions, Items, RawAnswers, Response, ResponseMetadata,
    RetryPolicy, DEFAULT_TIMEOUT,
};
#[cfg(feature = "embedded-broker")]
pub use connection::EmbeddedBroker;
pub use connection::{ConnectOptions, Connection, PublishCounts};
pub use error::Error;
/// Reads the [`Items`] of a streaming call and the [`Answers`] of a
/// broadcast (`while let Some(item) = items.next().await`); the trait of
/// `futures-util`, re-exported so that no other dependency is needed.
#[doc(no_inline)]
pub use futures_util::StreamExt;
pub use protocol::builtins::{MethodInfo, MethodStats, ServiceInfo, ServiceStats};
pub use protocol::codec::Codec;
pub use protocol::metadata::Metadata;
pub use protocol::Chunking;
pub use protocol::{QoS, Status, STREAM_WINDOW};
pub use server::context;
/// Middleware: [`tower::Layer`]s around a server's methods
/// ([`ServerOptions::layer`]: a [`Call`](layers::Call) in, a [`Reply`] out,
/// refused with a [`Rejection`](layers::Rejection)) and around a client's
/// calls ([`ClientOptions::layer`]: a [`ClientCall`](layers::ClientCall)
/// in, a [`Response`] out). PROTOCOL.md, "Server layers".
pub mod layers {
    pub use crate::client::layers::{ClientCall, ClientCallService};
    pub use crate::server::layers::*;
}
pub use server::{
    respond, serve, Call, ChunkedUsage, Reply, ServerHandle, ServerOptions, ServerUsage, Service,
    Stream,
};

/// Not a public API and not covered by semver: what the code
/// `#[mqrpc::service]` generates uses (through `mqrpc::__private`), and
/// internals exposed to mqrpc's own integration tests.
#[doc(hidden)]
pub mod __private {
    /// The AsyncAPI description helpers of generated `asyncapi()` methods.
    pub mod asyncapi {
        pub use crate::asyncapi::codegen::*;
    }

    /// Client streams (`mqrpc::Stream<T>` arguments) of generated servers
    /// and clients.
    pub mod upstream {
        pub use crate::server::upstream::{missing, take};
        pub use futures_util::Stream;
    }
    /// The hidden entry point of generated clients ([`Client::__private`](crate::Client::__private)).
    pub use crate::client::Generated;

    /// The schema fingerprint helpers of generated clients and servers.
    pub mod schema {
        pub use crate::protocol::schema::codegen::*;
    }
}
