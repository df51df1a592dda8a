//! What the broker's answers mean for the layers above: a publish's reason
//! code as a call's outcome, reason codes by name, the size of a PUBLISH
//! before it is sent. The session loop's ack types the client and server
//! need come through here ([`AckTo`], [`AckListener`], [`AckToken`]).

use mqrpc_link::{ReasonCode, TransportError};
use rumqttc::v5::mqttbytes::v5::PublishProperties;

use crate::error::{Failure, Refusal};
use crate::Error;

pub(crate) use mqrpc_link::{AckListener, AckTo, AckToken};

/// The broker's answer to one publish, as the session loop reports it:
/// its reason code, or why there was none.
pub(crate) type BrokerAck = Result<ReasonCode, TransportError>;

/// What the broker's answer to a request means for its call: 0x10 and
/// codes of 0x80 and up refuse it, a lost link or closed connection fail it.
pub(crate) fn ack_outcome(ack: BrokerAck) -> Result<(), Failure> {
    let refused = |code: u8| {
        Failure::Refused(match code {
            0x10 => Refusal::NoMatchingSubscribers,
            0x87 => Refusal::NotAuthorized,
            code => Refusal::Other(describe(ReasonCode(code))),
        })
    };
    match ack {
        Ok(ReasonCode(code)) if code == 0x10 || code >= 0x80 => Err(refused(code)),
        Ok(_) => Ok(()),
        Err(TransportError::Refused(code)) => Err(refused(code)),
        Err(TransportError::Closed) => Err(Failure::Error(Error::Closed)),
        Err(TransportError::SessionLost | TransportError::ConnectionLost) => {
            Err(Failure::Error(Error::Disconnected))
        }
        Err(TransportError::PacketTooLarge { size, max }) => Err(Failure::Error(Error::TooLarge {
            message: format!(
                "a {size}-byte packet is over the broker's Maximum Packet Size of {max} bytes"
            ),
        })),
        Err(TransportError::QosNotSupported) => Err(Failure::Error(Error::Unsupported {
            what: "a QoS above the broker's Maximum QoS".into(),
        })),
        Err(TransportError::NoPacketId) => Err(Failure::Error(Error::PacketIdsExhausted)),
    }
}

/// A reason code with its name (MQTT v5 §2.4).
pub(super) fn describe(code: ReasonCode) -> String {
    let name = match code.0 {
        0x10 => "no matching subscribers",
        0x80 => "unspecified error",
        0x83 => "implementation specific error",
        0x87 => "not authorized",
        0x8F => "topic filter invalid",
        0x90 => "topic name invalid",
        0x91 => "packet identifier in use",
        0x97 => "quota exceeded",
        0x99 => "payload format invalid",
        0x9E => "shared subscriptions not supported",
        0xA1 => "subscription identifiers not supported",
        0xA2 => "wildcard subscriptions not supported",
        _ => "reason code",
    };
    format!("{name} ({:#04x})", code.0)
}

/// An upper bound of the encoded size of a PUBLISH packet (MQTT v5
/// §3.3): each property is an id byte and its value, strings and binary
/// data with 2 length bytes.
pub(crate) fn publish_size(
    topic: &str,
    payload_len: usize,
    properties: &PublishProperties,
) -> usize {
    let string = |s: &Option<String>| s.as_ref().map_or(0, |s| 3 + s.len());
    let user: usize = properties
        .user_properties
        .iter()
        .map(|(k, v)| 5 + k.len() + v.len())
        .sum();
    // Fixed header (≤ 5), topic length (2), packet id (2), properties
    // length (≤ 4), Payload Format, Message Expiry, Topic Alias (≤ 10).
    const FIXED: usize = 23;
    FIXED
        + topic.len()
        + payload_len
        + string(&properties.response_topic)
        + properties
            .correlation_data
            .as_ref()
            .map_or(0, |c| 3 + c.len())
        + string(&properties.content_type)
        + user
        + 5 * properties.subscription_identifiers.len()
}
