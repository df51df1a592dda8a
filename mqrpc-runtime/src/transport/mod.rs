//! The broker link: [`Connection`] (connect, reconnect, publish, subscribe,
//! route incoming publishes to the clients and servers on it), its TLS
//! settings, and the embedded broker.

pub(crate) mod connection;
#[cfg(feature = "embedded-broker")]
mod embedded_broker;
/// The session loop that will carry [`Connection`] (issue 13): exact
/// acknowledgements by packet id, Receive Maximum, resume.
pub(crate) mod link;
pub(crate) mod tls;

pub(crate) use connection::{host_and_port, publish_size, random_u64, Scheme, Sink};
pub use connection::{ConnectOptions, Connection};
#[cfg(feature = "embedded-broker")]
pub use embedded_broker::EmbeddedBroker;
