//! What the loop reports: link states and incoming publishes, through an
//! [`Incoming`] stream or a handler on the loop's task.

use std::time::Duration;

use tokio::sync::mpsc;

use crate::{IncomingPublish, ServerLimits};
#[cfg(doc)]
use crate::{Transport, TransportConfig};

/// State of the link.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConnectionState {
    /// Connecting (first time or after a loss).
    Connecting,
    /// CONNACK accepted.
    Connected {
        /// The broker kept our session (subscriptions and in-flight state).
        /// `false` after a reconnect: subscriptions must be made again.
        session_present: bool,
        /// The server's limits.
        server: ServerLimits,
    },
    /// The link is down.
    Disconnected {
        /// Why.
        error: String,
        /// When the next attempt starts; `None`: the transport has stopped.
        retry_in: Option<Duration>,
        /// The CONNACK's reason code when the server refused the connection
        /// (0x86 bad user name or password, 0x87 not authorized…).
        refused: Option<u8>,
    },
}

/// What [`Incoming`] yields: publishes and state changes, in the order the
/// transport saw them.
#[derive(Debug)]
pub enum Event {
    /// A publish from the broker.
    Publish(IncomingPublish),
    /// The link changed state.
    State(ConnectionState),
}

/// The receiving side of a [`Transport`].
#[derive(Debug)]
pub struct Incoming(pub(crate) mpsc::UnboundedReceiver<Event>);

impl Incoming {
    /// The next event; `None` once the transport has stopped.
    pub async fn recv(&mut self) -> Option<Event> {
        self.0.recv().await
    }

    /// The next publish, skipping state events.
    pub async fn next_publish(&mut self) -> Option<IncomingPublish> {
        loop {
            match self.0.recv().await? {
                Event::Publish(p) => return Some(p),
                Event::State(_) => {}
            }
        }
    }
}

/// Where the loop hands its events.
#[derive(Clone)]
pub(crate) enum EventSink {
    /// To an [`Incoming`].
    Channel(mpsc::UnboundedSender<Event>),
    /// To a function, on the loop's task.
    Call(std::sync::Arc<dyn Fn(Event) + Send + Sync>),
}

impl EventSink {
    pub(crate) fn send(&self, event: Event) {
        match self {
            EventSink::Channel(tx) => drop(tx.send(event)),
            EventSink::Call(handler) => handler(event),
        }
    }
}
