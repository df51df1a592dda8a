//! Routing of incoming publishes to the clients and servers of a
//! connection, and holding those that arrive (with a persistent session)
//! before their route is back.

use std::sync::Arc;

use rumqttc::v5::mqttbytes::v5::Publish;
use tracing::{debug, warn};

use mqrpc_link::AckToken;

use super::shared::{Connection, Held, Route, Sink};

/// Publishes held for routes not (yet) registered, with a persistent
/// session: at most this many, and this many payload bytes.
pub(super) const MAX_HELD: usize = 10_000;
pub(super) const MAX_HELD_BYTES: usize = 16 * 1024 * 1024;

impl Connection {
    /// Adds a route, then hands it the held publishes it matches. The held
    /// queue's lock orders this against [`route`](Self::route).
    pub(super) fn add_route(&self, route: Route) {
        let filter = route.filter.clone();
        let sink = route.sink.clone();
        let mut held = self.held();
        self.shared
            .routes
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .push(route);
        if held.publishes.is_empty() {
            return;
        }
        let (mine, others): (Vec<_>, Vec<_>) = held.publishes.drain(..).partition(|(_, p)| {
            std::str::from_utf8(&p.topic).is_ok_and(|t| crate::protocol::topic::matches(&filter, t))
        });
        held.publishes = others.into();
        held.bytes -= mine.iter().map(|(_, p)| p.payload.len()).sum::<usize>();
        drop(held);
        for (arrived, mut publish) in mine {
            // Count the time held against the Message Expiry Interval, as
            // the broker would have.
            let waited = u32::try_from(arrived.elapsed().as_secs()).unwrap_or(u32::MAX);
            if let Some(expiry) = publish
                .properties
                .as_mut()
                .and_then(|p| p.message_expiry_interval.as_mut())
            {
                if waited >= *expiry {
                    debug!("dropping a held publish that expired while held");
                    continue;
                }
                *expiry -= waited;
            }
            // Acked when it was held.
            sink(self, publish, &mut None);
        }
    }

    pub(super) fn route(&self, publish: Publish, ack: &mut Option<AckToken>) {
        let Ok(topic) = std::str::from_utf8(&publish.topic) else {
            warn!("dropping a publish whose topic is not UTF-8");
            return;
        };
        // Every route that wants it, each sink once: servers of several
        // services on one connection share the discovery filter, while one
        // server's shared and cancel filters may both match a cancel.
        let find = || {
            let routes = self.shared.routes.read().unwrap_or_else(|e| e.into_inner());
            let mut matching = routes
                .iter()
                .filter(|r| r.matcher.matches(topic))
                .map(|r| &r.sink);
            let first = matching.next()?.clone();
            let mut more: Vec<Sink> = Vec::new(); // allocates only if needed
            for sink in matching {
                if !Arc::ptr_eq(sink, &first) && !more.iter().any(|s| Arc::ptr_eq(s, sink)) {
                    more.push(sink.clone());
                }
            }
            Some((first, more))
        };
        let mut deliver = |(first, more): (Sink, Vec<Sink>), publish: Publish| {
            for sink in &more {
                sink(self, publish.clone(), &mut None);
            }
            first(self, publish, ack);
        };
        if self.shared.options.session_expiry.is_none() {
            match find() {
                Some(sinks) => deliver(sinks, publish),
                None => debug!(topic, "dropping a publish no route wants"),
            }
            return;
        }
        // Persistent session: the broker may deliver what it kept for us
        // before the server has re-registered; hold it until it does.
        let mut held = self.held();
        match find() {
            Some(sinks) => {
                drop(held);
                deliver(sinks, publish)
            }
            None if held.publishes.len() < MAX_HELD
                && held.bytes + publish.payload.len() <= MAX_HELD_BYTES =>
            {
                held.bytes += publish.payload.len();
                held.publishes
                    .push_back((std::time::Instant::now(), publish));
            }
            None => warn!(topic, "dropping a publish no route wants (held queue full)"),
        }
    }

    pub(super) fn held(&self) -> std::sync::MutexGuard<'_, Held> {
        self.shared.held.lock().unwrap_or_else(|e| e.into_inner())
    }
}
