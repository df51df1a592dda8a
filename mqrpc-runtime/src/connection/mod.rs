//! The connection layer: [`Connection`] (connect, reconnect, publish,
//! subscribe, route incoming publishes to the clients and servers on it)
//! over the session loop of the `mqrpc-link` crate, its options and TLS
//! settings, and the embedded broker. The one place of the runtime that
//! meets the link: the client and server get what they need of it from
//! here (`acks`).
//!
//! Files, from the bottom: `options` (and its TLS settings), `acks` (what
//! the broker's answers mean), `will` (the "gone" notices as publishes),
//! `batcher` (batch frames as the link's merging), `dial` (streams for
//! the link), `shared` (the state of a connection and its publish path),
//! `routing`, `subscribe`, `driver` (the link's events), `establish`
//! (opening a connection), `gone` (servers coming and going, closing).

mod acks;
mod batcher;
mod dial;
mod driver;
#[cfg(feature = "embedded-broker")]
mod embedded_broker;
mod establish;
mod gone;
mod options;
mod routing;
mod shared;
mod subscribe;
mod will;

pub(crate) use acks::{ack_outcome, publish_size, AckListener, AckTo, AckToken, BrokerAck};
#[cfg(feature = "embedded-broker")]
pub use embedded_broker::EmbeddedBroker;
pub(crate) use establish::random_u64;
pub use options::ConnectOptions;
pub(crate) use options::{host_and_port, Scheme};
pub(crate) use shared::Sink;
pub use shared::{Connection, PublishCounts};
