//! Runtime of [mqrpc](https://docs.rs/mqrpc): typed RPC over MQTT v5.
//!
//! Users depend on the `mqrpc` facade, which re-exports this crate; the
//! `#[mqrpc::service]` macro generates code against it. One module per
//! concern: [`Connection`] (the broker link), [`Client`] (calls waiting for
//! answers), [`serve`] (dispatch), [`Codec`] and [`Error`].

#![warn(missing_docs)]

pub mod asyncapi;
#[cfg(feature = "embedded-broker")]
mod broker;
mod calls;
mod client;
mod codec;
mod connection;
pub mod context;
mod discovery;
mod error;
mod observe;
pub mod protocol;
mod server;
mod stream;
mod tls;
mod topic;
mod transport;

#[cfg(feature = "embedded-broker")]
pub use broker::EmbeddedBroker;
pub use client::{Answers, Client, ClientOptions, Response, DEFAULT_TIMEOUT};
pub use codec::Codec;
pub use connection::{ConnectOptions, Connection};
pub use discovery::{discover, MethodInfo, MethodStats, ServiceInfo, ServiceStats};
pub use error::Error;
pub use protocol::Status;
pub use server::{respond, serve, Reply, ServerHandle, ServerOptions, Service};
pub use stream::{Items, Stream, WINDOW as STREAM_WINDOW};

/// Not public API: internals exposed to mqrpc's own integration tests.
#[doc(hidden)]
pub mod __private {
    /// The MQTT v5 session transport (issue 13), not yet used by
    /// [`Connection`](crate::Connection).
    pub mod transport {
        pub use crate::transport::*;
    }
}

/// MQTT delivery guarantee of requests and responses.
///
/// ```
/// assert_eq!(mqrpc_runtime::QoS::default(), mqrpc_runtime::QoS::AtLeastOnce);
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
