//! What the connection does with the session loop's events: routes
//! incoming publishes, follows the link's state (ready, lost, reconnected),
//! and re-subscribes when a reconnect lost the session.

use std::sync::atomic::Ordering;
use std::sync::{Mutex, Weak};

use rumqttc::v5::mqttbytes::v5::Publish;
use tokio::sync::oneshot;
use tracing::{debug, info, warn};

use mqrpc_link::{ConnectionState, Event, IncomingPublish};

use crate::protocol::QoS;
use crate::Error;

use super::shared::{Connection, Shared};

/// Handles the session loop's events on the loop's own task (one task
/// switch less per incoming publish than a task of its own). Holds only a
/// weak reference: the connection owns the transport, not the other way.
pub(super) struct Driver {
    shared: std::sync::OnceLock<Weak<Shared>>,
    /// Events that came before the connection existed (none in practice:
    /// the first CONNACK is a network round trip away).
    early: Mutex<Vec<Event>>,
    connected: Mutex<Option<oneshot::Sender<Result<(), Error>>>>,
}

impl Driver {
    pub(super) fn new(connected: oneshot::Sender<Result<(), Error>>) -> Driver {
        Driver {
            shared: std::sync::OnceLock::new(),
            early: Mutex::new(Vec::new()),
            connected: Mutex::new(Some(connected)),
        }
    }

    /// Called once the connection exists; handles what came before.
    pub(super) fn attach(&self, shared: Weak<Shared>) {
        let early = {
            let mut early = self.early.lock().unwrap_or_else(|e| e.into_inner());
            let _ = self.shared.set(shared);
            std::mem::take(&mut *early)
        };
        for event in early {
            self.handle(event);
        }
    }

    pub(super) fn handle(&self, event: Event) {
        let shared = {
            let mut early = self.early.lock().unwrap_or_else(|e| e.into_inner());
            match self.shared.get() {
                Some(shared) => shared.clone(),
                None => return early.push(event),
            }
        };
        let Some(shared) = shared.upgrade() else {
            return;
        };
        let conn = Connection { shared };
        match event {
            Event::Publish(mut publish) => {
                // Acked once routed (a sink only queues or spawns), unless
                // the sink kept the token (a server acking a request once
                // answered); acks leave in arrival order either way.
                let mut ack = publish.ack.take();
                conn.route(into_publish(publish), &mut ack);
                drop(ack);
            }
            Event::State(ConnectionState::Connected {
                session_present,
                server,
            }) => {
                conn.shared
                    .broker_max_packet
                    .store(server.max_packet_size.unwrap_or(0), Ordering::Relaxed);
                let first = self.first();
                if let Some(first) = first {
                    *conn
                        .shared
                        .response_information
                        .lock()
                        .unwrap_or_else(|e| e.into_inner()) = server.response_information;
                    conn.shared.ready.store(true, Ordering::Release);
                    let _ = first.send(Ok(()));
                } else if session_present {
                    conn.shared.ready.store(true, Ordering::Release);
                    info!(broker = %conn.shared.broker, "reconnected; the broker kept the session");
                } else {
                    tokio::spawn(conn.resubscribe_all());
                }
            }
            Event::State(ConnectionState::Disconnected {
                error,
                retry_in,
                refused,
            }) => {
                if let Some(first) = self.first() {
                    let _ = first.send(Err(connect_error(&conn.shared.broker, error, refused)));
                    return;
                }
                if conn.shared.closed.load(Ordering::Acquire) {
                    return;
                }
                let was_ready = conn.shared.ready.swap(false, Ordering::AcqRel);
                if retry_in.is_none() {
                    conn.shared.closed.store(true, Ordering::Release);
                    conn.link_lost(&Error::Closed);
                    return;
                }
                if conn.shared.options.session_expiry.is_none() {
                    // The session ends with the link: answers sent meanwhile
                    // are lost, so calls in flight fail now. A kept session
                    // delivers them after the reconnect, and the transport
                    // resends unacknowledged requests: those calls wait.
                    conn.link_lost(&Error::Disconnected);
                }
                if was_ready {
                    warn!(broker = %conn.shared.broker, %error, "lost the broker; reconnecting");
                } else {
                    debug!(broker = %conn.shared.broker, %error, "reconnect failed");
                }
            }
            Event::State(ConnectionState::Connecting) => {}
        }
    }

    /// The sender of the first connection's outcome, once.
    fn first(&self) -> Option<oneshot::Sender<Result<(), Error>>> {
        self.connected
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
    }
}

fn into_publish(p: IncomingPublish) -> Publish {
    Publish {
        dup: p.dup,
        qos: p.qos,
        retain: p.retain,
        topic: p.topic,
        pkid: 0,
        payload: p.payload,
        properties: p.properties,
    }
}

/// Why the first connection failed, as the caller should see it: refused
/// credentials apart from everything else.
fn connect_error(broker: &str, error: String, refused: Option<u8>) -> Error {
    let broker = broker.to_string();
    match refused {
        Some(0x86) => Error::AuthFailed {
            broker,
            reason: "bad user name or password (CONNACK reason 0x86)".into(),
        },
        Some(0x87) => Error::AuthFailed {
            broker,
            reason: "not authorized (CONNACK reason 0x87)".into(),
        },
        Some(code) => Error::Connect {
            broker,
            reason: format!("the broker refused the connection (CONNACK reason {code:#04x})"),
        },
        None => Error::Connect {
            broker,
            reason: error,
        },
    }
}

impl Connection {
    /// After a reconnect without the session: subscribe every route again
    /// (one SUBSCRIBE), then report ready.
    async fn resubscribe_all(self) {
        let filters: Vec<(String, QoS)> = {
            let routes = self.shared.routes.read().unwrap_or_else(|e| e.into_inner());
            let mut seen = std::collections::HashSet::new();
            routes
                .iter()
                .filter(|r| seen.insert(r.filter.clone()))
                .map(|r| (r.filter.clone(), r.qos))
                .collect()
        };
        if !filters.is_empty() {
            if let Err(e) = self.subscribe_filters(filters).await {
                // The link broke again (the next CONNACK retries) or the
                // broker refused a filter it granted before.
                warn!(error = %e, "re-subscription after reconnect failed");
                return;
            }
        }
        self.shared.ready.store(true, Ordering::Release);
        info!(broker = %self.shared.broker, "reconnected and re-subscribed");
    }
}
