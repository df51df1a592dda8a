//! An MQTT v5 client session loop over rumqttc's public codec
//! (`rumqttc::v5::mqttbytes::v5`, `Packet::read` / `Packet::write` only):
//! the link under every [mqrpc](https://docs.rs/mqrpc) connection.
//!
//! Contract: every [`Transport::publish`] returns a future resolving to the
//! broker's reason code for *that* publish, every [`Transport::subscribe`]
//! to the SUBACK's codes, incoming publishes come with a manual
//! [`AckToken`], and connection changes arrive as [`Event::State`]. Nothing
//! above this crate sees a packet id.
//!
//! ```no_run
//! use mqrpc_link::{Filter, OutgoingPublish, QoS, TcpConnector, Transport, TransportConfig};
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let (transport, mut incoming) =
//!     Transport::start(TransportConfig::new("link-example"), TcpConnector::new("127.0.0.1:1883"));
//! let granted = transport.subscribe(vec![Filter::new("demo/#", QoS::AtLeastOnce)], None).await;
//! let acked = transport.publish(OutgoingPublish::new("demo/x", QoS::AtLeastOnce, "hi")).await;
//! if let Some(publish) = incoming.next_publish().await {
//!     publish.ack.map(|token| token.ack());
//! }
//! # let _ = (granted, acked);
//! # }
//! ```
//!
//! Files: [`config`] ([`TransportConfig`]), `packets` (what goes in and
//! out, reason codes, errors), `acks` (ack tokens and the answer futures),
//! `events` (link states and the incoming stream), `transport` (the
//! sending handle), [`connector`] opens streams (TCP; feature `tls`:
//! `TlsConnector`; feature `websocket`: `WsConnector`), `session` holds the
//! protocol state free of I/O (ids, in-flight, Receive Maximum, incoming ack
//! order), `event_loop` owns the socket, reconnects and keep-alive, `codes`
//! maps the codec's reason enums to numbers, `packet_ids` allocates ids,
//! `coalesce` merges publishes queued together.
//!
//! Subscriptions: the transport does not remember granted subscriptions. A
//! SUBSCRIBE or UNSUBSCRIBE still waiting for its ack when the link drops is
//! sent again after the reconnect (same packet id) so its future resolves with
//! the real answer. When a reconnect reports `session_present: false`, the
//! layer above re-subscribes what it needs.

#![warn(missing_docs)]

mod acks;
mod coalesce;
mod codes;
mod commands;
pub mod config;
pub mod connector;
mod event_loop;
mod events;
mod packet_ids;
mod packets;
mod session;
#[cfg(feature = "tls")]
mod tls;
mod transport;
#[cfg(feature = "websocket")]
mod websocket;

pub use rumqttc::v5::mqttbytes::v5::{
    Filter, LastWill, LastWillProperties, Publish, PublishProperties, SubscribeProperties,
};
pub use rumqttc::v5::mqttbytes::QoS;

pub use acks::{AckListener, AckTo, AckToken, PublishAck, SubAck, UnsubAck};
pub use coalesce::{Coalesce, CoalesceLimits};
pub use config::{Backoff, TransportConfig};
pub use connector::{Connector, TcpConnector};
pub use events::{ConnectionState, Event, Incoming};
pub use packets::{IncomingPublish, OutgoingPublish, ReasonCode, ServerLimits, TransportError};
#[cfg(feature = "tls")]
pub use tls::TlsConnector;
pub use transport::{PublishCounts, Transport};
#[cfg(feature = "websocket")]
pub use websocket::{MaybeTlsStream, WsConnector, WsStream};
