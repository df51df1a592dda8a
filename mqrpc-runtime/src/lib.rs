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
//! - `transport/` ([`Connection`]: the broker link, TLS, routing of
//!   incoming publishes; the embedded broker);
//! - `protocol/`: names, statuses, topics, the payload [`Codec`];
//! - [`Error`], shared by all.

#![warn(missing_docs)]

pub mod asyncapi;
mod client;
mod error;
mod observe;
pub mod protocol;
mod server;
mod transport;

pub use client::{
    discover, Answers, Client, ClientOptions, Items, RawAnswers, Response, RetryPolicy,
    DEFAULT_TIMEOUT,
};
pub use error::Error;
/// Reads the [`Items`] of a streaming call and the [`Answers`] of a
/// broadcast (`while let Some(item) = items.next().await`); the trait of
/// `futures-util`, re-exported so that no other dependency is needed.
#[doc(no_inline)]
pub use futures_util::StreamExt;
pub use protocol::builtins::{MethodInfo, MethodStats, ServiceInfo, ServiceStats};
pub use protocol::codec::Codec;
pub use protocol::Status;
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
    respond, serve, Reply, ServerHandle, ServerOptions, ServerUsage, Service, Stream, STREAM_WINDOW,
};
#[cfg(feature = "embedded-broker")]
pub use transport::EmbeddedBroker;
pub use transport::{ConnectOptions, Connection, PublishCounts};

/// Not a public API and not covered by semver: what the code
/// `#[mqrpc::service]` generates uses (through `mqrpc::__private`), and
/// internals exposed to mqrpc's own integration tests.
#[doc(hidden)]
pub mod __private {
    /// The AsyncAPI description helpers of generated `asyncapi()` methods.
    pub mod asyncapi {
        pub use crate::asyncapi::codegen::*;
    }

    /// The schema fingerprint helpers of generated clients and servers.
    pub mod schema {
        pub use crate::protocol::schema::codegen::*;
    }

    /// The MQTT v5 session loop over rumqttc's codec that carries every
    /// [`Connection`](crate::Connection), for the transport's own tests.
    pub mod transport {
        pub use crate::transport::link::*;
    }
}

/// MQTT delivery guarantee of requests and responses.
///
/// ```
/// # use mqrpc_runtime as mqrpc;
/// assert_eq!(mqrpc::QoS::default(), mqrpc::QoS::AtLeastOnce);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum QoS {
    /// QoS 0: fastest; a request or response lost on the way ends in a timeout.
    AtMostOnce,
    /// QoS 1: acknowledged by the broker (the default).
    #[default]
    AtLeastOnce,
    /// QoS 2: exactly once between each client and the broker.
    ExactlyOnce,
}

impl From<QoS> for rumqttc::v5::mqttbytes::QoS {
    fn from(qos: QoS) -> Self {
        match qos {
            QoS::AtMostOnce => rumqttc::v5::mqttbytes::QoS::AtMostOnce,
            QoS::AtLeastOnce => rumqttc::v5::mqttbytes::QoS::AtLeastOnce,
            QoS::ExactlyOnce => rumqttc::v5::mqttbytes::QoS::ExactlyOnce,
        }
    }
}

impl From<rumqttc::v5::mqttbytes::QoS> for QoS {
    fn from(qos: rumqttc::v5::mqttbytes::QoS) -> Self {
        match qos {
            rumqttc::v5::mqttbytes::QoS::AtMostOnce => QoS::AtMostOnce,
            rumqttc::v5::mqttbytes::QoS::AtLeastOnce => QoS::AtLeastOnce,
            rumqttc::v5::mqttbytes::QoS::ExactlyOnce => QoS::ExactlyOnce,
        }
    }
}
