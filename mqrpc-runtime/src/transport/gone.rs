//! Notices that a server instance is gone (PROTOCOL.md, "Server gone"):
//! the connection's Last Will, and the notices it publishes itself when
//! its servers stop cleanly.

use std::collections::HashMap;
use std::sync::Mutex;

use rumqttc::v5::mqttbytes::v5::LastWillProperties;

use super::connection::{ack_outcome, Connection};
use super::link::{LastWill, OutgoingPublish};
use super::options::ConnectOptions;
use crate::error::{Failure, Refusal};
use crate::protocol::GONE_LEVEL;
use crate::{Error, QoS};
use tracing::warn;

/// The servers running on a connection, by instance id: the notices owed
/// when they stop.
pub(super) type Served = Mutex<HashMap<String, Instance>>;

/// One instance id served on a connection.
#[derive(Default)]
pub(super) struct Instance {
    /// How many servers use it.
    servers: usize,
    /// For an instance id other than the connection's own (its client id
    /// as a topic level): the connection whose Last Will is this
    /// instance's notice. Dropping it sends its DISCONNECT (no Will).
    will: Option<Connection>,
}

/// The last server of an instance stopped: holds the connection carrying
/// its Will (if any) until dropped.
#[must_use = "dropping it closes the connection that carries the Will"]
pub(crate) struct LastServer(#[allow(dead_code)] Option<Connection>);

impl Connection {
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

/// The instances with servers on a connection.
pub(super) fn served_instances(served: &Served) -> Vec<String> {
    served
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .keys()
        .cloned()
        .collect()
}

/// The notice that `instance` is gone: an empty QoS 1 message to
/// `<reply prefix>/_gone/<instance>`, not retained.
pub(super) fn notice(options: &ConnectOptions, instance: &str) -> OutgoingPublish {
    let topic = crate::protocol::topic::gone_topic(&options.reply_prefix, instance);
    OutgoingPublish::new(topic, QoS::AtLeastOnce.into(), bytes::Bytes::new())
}

/// The Last Will of a connection: the notice that `instance` is gone (its
/// default instance, its client id as a topic level, unless it carries the
/// Will of another one), published by the broker when the link ends
/// without a DISCONNECT. With a kept session it waits as long as the
/// session does (Will Delay Interval): a server back in time with the same
/// client id finds its requests and answers them.
pub(super) fn last_will(options: &ConnectOptions, instance: &str) -> LastWill {
    let notice = notice(options, instance);
    let delay = options
        .session_expiry
        .map(|expiry| u32::try_from(expiry.as_secs()).unwrap_or(u32::MAX).max(1));
    LastWill {
        topic: notice.topic,
        message: notice.payload,
        qos: notice.qos,
        retain: false,
        properties: delay.map(|delay| LastWillProperties {
            delay_interval: Some(delay),
            payload_format_indicator: None,
            message_expiry_interval: None,
            content_type: None,
            response_topic: None,
            correlation_data: None,
            user_properties: Vec::new(),
        }),
    }
}
