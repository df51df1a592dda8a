//! The notices that a server instance is gone (PROTOCOL.md, "Server
//! gone"), as publishes: the one a connection sends itself and its Last
//! Will.

use mqrpc_link::{LastWill, LastWillProperties, OutgoingPublish};

use crate::protocol::QoS;

use super::options::ConnectOptions;

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
