//! The broker link: [`Connection`] (connect, reconnect, publish, subscribe,
//! route incoming publishes to the clients and servers on it) over the
//! session loop in `link`, its TLS settings, and the embedded broker.

mod coalesce;
pub(crate) mod connection;
mod dial;
mod driver;
#[cfg(feature = "embedded-broker")]
mod embedded_broker;
/// The session loop under [`Connection`]: exact acknowledgements by packet
/// id, Receive Maximum, resume.
mod gone;
pub(crate) mod link;
mod options;
mod routing;
pub(crate) mod tls;

pub use connection::Connection;
pub(crate) use connection::{ack_outcome, publish_size, random_u64};
#[cfg(feature = "embedded-broker")]
pub use embedded_broker::EmbeddedBroker;
pub use link::PublishCounts;
pub(crate) use link::{AckListener, AckTo};
pub use options::ConnectOptions;
pub(crate) use options::{host_and_port, Scheme};
pub(crate) use routing::Sink;
