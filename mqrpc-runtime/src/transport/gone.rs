//! Notices that a server instance is gone (PROTOCOL.md, "Server gone"):
//! the connection's Last Will, and the notices it publishes itself when
//! its servers stop cleanly.

use std::collections::HashMap;
use std::sync::Mutex;

use rumqttc::v5::mqttbytes::v5::LastWillProperties;

use super::connection::{ack_outcome, Connection};
use super::link::{LastWill, OutgoingPublish};
use super::options::ConnectOptions;
use crate::protocol::GONE_LEVEL;
use crate::{Error, QoS};

/// Instance ids of the servers running on a connection, with how many
/// servers use each: the notices owed when they stop.
pub(super) type Served = Mutex<HashMap<String, usize>>;

impl Connection {
    /// A server with this instance id starts on this connection.
    pub(crate) fn serving(&self, instance: &str) {
        *self
            .shared
            .served
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(instance.to_string())
            .or_default() += 1;
    }

    /// A server with this instance id stopped: true when it was the last
    /// one on this connection (its instance is gone).
    pub(crate) fn stopped_serving(&self, instance: &str) -> bool {
        let mut served = self.shared.served.lock().unwrap_or_else(|e| e.into_inner());
        match served.get_mut(instance) {
            Some(1) => {
                served.remove(instance);
                true
            }
            Some(n) => {
                *n -= 1;
                false
            }
            None => false,
        }
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
            Ok(acked) => ack_outcome(acked).map_err(|failure| failure.into_error(GONE_LEVEL)),
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

/// The Last Will of a connection: the notice that its default instance
/// (its client id as a topic level) is gone, published by the broker when
/// the link ends without a DISCONNECT. With a kept session it waits as
/// long as the session does (Will Delay Interval): a server back in time
/// with the same client id finds its requests and answers them.
pub(super) fn last_will(options: &ConnectOptions, client_id: &str) -> LastWill {
    let notice = notice(options, &crate::protocol::topic::as_level(client_id));
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
