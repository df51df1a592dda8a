//! The broker link: [`Connection`] (connect, reconnect, publish, subscribe,
//! route incoming publishes to the clients and servers on it), its TLS
//! settings, and the embedded broker.

pub(crate) mod connection;
#[cfg(feature = "embedded-broker")]
mod embedded_broker;
/// The session loop that will carry [`Connection`] (issue 13): exact
/// acknowledgements by packet id, Receive Maximum, resume.
pub(crate) mod link;
mod options;
mod order_acks;
mod routing;
pub(crate) mod tls;

pub use connection::Connection;
pub(crate) use connection::{publish_size, random_u64};
#[cfg(feature = "embedded-broker")]
pub use embedded_broker::EmbeddedBroker;
pub use options::ConnectOptions;
pub(crate) use options::{host_and_port, Scheme};
pub(crate) use routing::Sink;
