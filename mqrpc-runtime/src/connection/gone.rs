//! Servers coming and going on a connection (PROTOCOL.md, "Server gone"):
//! the connections that carry other instances' Last Wills, the notices
//! published when servers stop cleanly, and closing (which announces every
//! instance still served).

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tracing::warn;

use crate::error::{Failure, Refusal};
use crate::protocol::GONE_LEVEL;
use crate::Error;

use super::acks::ack_outcome;
use super::shared::{served_instances, Connection, Instance};
use super::will::notice;

/// The last server of an instance stopped: holds the connection carrying
/// its Will (if any) until dropped.
#[must_use = "dropping it closes the connection that carries the Will"]
pub(crate) struct LastServer(#[allow(dead_code)] Option<Connection>);

impl Connection {
    /// Disconnects from the broker. Calls in flight fail with
    /// [`Error::Closed`]; later calls fail the same way. Before the
    /// DISCONNECT it announces every server instance still running on
    /// this connection as gone (PROTOCOL.md, "Server gone"), so that their
    /// callers' calls end at once: a clean DISCONNECT discards the Will.
    pub async fn close(&self) {
        if self.shared.closed.swap(true, Ordering::AcqRel) {
            return;
        }
        self.shared.ready.store(false, Ordering::Release);
        self.announce_all_gone();
        self.link_lost(&Error::Closed);
        // Writes what is queued, then DISCONNECT; pending acks end `Closed`.
        let _ =
            tokio::time::timeout(Duration::from_secs(1), self.shared.transport.disconnect()).await;
    }

    /// A server with this instance id starts on this connection. The first
    /// one of an instance id other than the connection's own opens the
    /// connection that carries its Last Will (the connection's own Will
    /// names its client id, and a Will is fixed at CONNECT): without it, a
    /// crash of this process would not be noticed for that instance.
    pub(crate) async fn serving(&self, instance: &str) {
        let first = {
            let mut served = self.served();
            let entry = served.entry(instance.to_string()).or_default();
            entry.servers += 1;
            entry.servers == 1
        };
        if !first || instance == crate::protocol::topic::as_level(&self.shared.client_id) {
            return;
        }
        match self.will_carrier(instance).await {
            Ok(carrier) => {
                if let Some(entry) = self.served().get_mut(instance) {
                    entry.will.get_or_insert(carrier);
                }
            }
            Err(error) => warn!(
                instance,
                %error,
                "no Last Will for this instance: if this process dies, its callers are not told (PROTOCOL.md, \"Server gone\")"
            ),
        }
    }

    /// A connection to the same broker with the same options, client id
    /// `<client id>-will-<instance>`, whose Will is the notice that
    /// `instance` is gone. It subscribes and publishes nothing.
    async fn will_carrier(&self, instance: &str) -> Result<Connection, Error> {
        let mut options = self.shared.options.clone();
        options.client_id = Some(format!("{}-will-{instance}", self.shared.client_id));
        Connection::establish(
            options,
            Some(instance),
            #[cfg(feature = "embedded-broker")]
            None,
        )
        .await
    }

    /// A server with this instance id stopped: `Some` when it was the last
    /// one on this connection (its instance is gone). Dropping what it
    /// returns closes the connection that carried the instance's Will, if
    /// any, without the Will: drop it once the notice went out.
    pub(crate) fn stopped_serving(&self, instance: &str) -> Option<LastServer> {
        let mut served = self.served();
        match served.get_mut(instance) {
            Some(entry) if entry.servers <= 1 => {
                let will = served.remove(instance).and_then(|entry| entry.will);
                Some(LastServer(will))
            }
            Some(entry) => {
                entry.servers -= 1;
                None
            }
            None => None,
        }
    }

    fn served(&self) -> std::sync::MutexGuard<'_, HashMap<String, Instance>> {
        self.shared.served.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// `<reply prefix>/_gone/<instance>` (`+` for the filter of all).
    pub(crate) fn gone_topic(&self, instance: &str) -> String {
        crate::protocol::topic::gone_topic(&self.shared.options.reply_prefix, instance)
    }

    /// Publishes the notice that `instance` is gone (QoS 1) and waits for
    /// the broker to take it: [`Error::Disconnected`] at once while the
    /// broker is away, [`Error::Timeout`] if it does not acknowledge it in
    /// time.
    pub(crate) async fn announce_gone(&self, instance: &str) -> Result<(), Error> {
        self.ensure_open()?;
        let acked = self
            .shared
            .transport
            .publish(notice(&self.shared.options, instance));
        let wait = self.ack_timeout();
        match tokio::time::timeout(wait, acked).await {
            // 0x10 "no matching subscribers": no client listens for
            // notices (none is connected), so nobody had to be told.
            Ok(acked) => match ack_outcome(acked) {
                Err(Failure::Refused(Refusal::NoMatchingSubscribers)) => Ok(()),
                outcome => outcome.map_err(|failure| failure.into_error(GONE_LEVEL)),
            },
            Err(_) => Err(Error::Timeout {
                method: GONE_LEVEL.to_string(),
                timeout: wait,
            }),
        }
    }

    /// Queues the notices of every instance still served here (before a
    /// DISCONNECT, which discards the Will).
    pub(super) fn announce_all_gone(&self) {
        for instance in served_instances(&self.shared.served) {
            drop(
                self.shared
                    .transport
                    .publish(notice(&self.shared.options, &instance)),
            );
        }
        // Their Wills are owed no more: DISCONNECT the connections that
        // carry them.
        let carriers: Vec<Connection> = self
            .served()
            .values_mut()
            .filter_map(|entry| entry.will.take())
            .collect();
        drop(carriers);
    }
}
