//! What goes in and out: publishes, the broker's reason codes, the limits
//! it announced, and why an operation got no reason code.

use bytes::Bytes;

use crate::{AckToken, PublishProperties, QoS};
#[cfg(doc)]
use crate::{Transport, TransportConfig};

/// A reason code from the broker: PUBACK / PUBREC (0x00 success, 0x10 no
/// matching subscribers, 0x87 not authorized, 0x97 quota exceeded…), or one
/// SUBACK / UNSUBACK entry (0x00–0x02 granted QoS, ≥ 0x80 refused).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ReasonCode(pub u8);

impl ReasonCode {
    /// Codes below 0x80 are successes (0x10 included).
    pub fn is_success(self) -> bool {
        self.0 < 0x80
    }
}

/// Why an operation of the transport did not get a reason code.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TransportError {
    /// The transport has stopped (disconnected, or no reconnect configured).
    #[error("transport closed")]
    Closed,
    /// A QoS 2 publish was in flight (no PUBREC yet) and the broker reconnected
    /// us without our session: sending it again could deliver it twice, so it
    /// is not resent.
    #[error("session lost before the QoS 2 publish was received")]
    SessionLost,
    /// Larger than the server's Maximum Packet Size: not sent.
    #[error("packet of {size} bytes exceeds the server's Maximum Packet Size {max}")]
    PacketTooLarge {
        /// Encoded size of the packet.
        size: u32,
        /// The server's limit (from CONNACK).
        max: u32,
    },
    /// QoS above the server's Maximum QoS: not sent.
    #[error("QoS above the server's Maximum QoS")]
    QosNotSupported,
    /// A QoS 2 publish refused by its PUBREC (code ≥ 0x80).
    #[error("publish refused with reason code {0:#04x}")]
    Refused(u8),
    /// The link dropped before this QoS 0 publish was written.
    #[error("connection lost before the QoS 0 publish was written")]
    ConnectionLost,
    /// Every packet id is in flight.
    #[error("no packet identifier available")]
    NoPacketId,
}

/// A publish to send.
#[derive(Debug, Clone)]
pub struct OutgoingPublish {
    /// Topic name.
    pub topic: Bytes,
    /// Delivery guarantee.
    pub qos: QoS,
    /// Retain flag.
    pub retain: bool,
    /// Payload.
    pub payload: Bytes,
    /// Response Topic, Correlation Data, user properties, Content Type,
    /// Message Expiry…
    pub properties: Option<PublishProperties>,
    /// May be merged with other publishes queued at the same time (see
    /// [`TransportConfig::coalescer`]).
    pub coalesce: bool,
}

impl OutgoingPublish {
    /// A publish without properties.
    pub fn new(topic: impl Into<Bytes>, qos: QoS, payload: impl Into<Bytes>) -> Self {
        OutgoingPublish {
            topic: topic.into(),
            qos,
            retain: false,
            payload: payload.into(),
            properties: None,
            coalesce: false,
        }
    }
}

/// A publish received from the broker.
#[derive(Debug)]
pub struct IncomingPublish {
    /// Topic name.
    pub topic: Bytes,
    /// QoS it was delivered with.
    pub qos: QoS,
    /// DUP flag (a redelivery).
    pub dup: bool,
    /// Retain flag.
    pub retain: bool,
    /// Payload.
    pub payload: Bytes,
    /// Its properties.
    pub properties: Option<PublishProperties>,
    /// For QoS 1 and 2: acknowledges it (PUBACK or PUBREC). `None` for QoS 0.
    pub ack: Option<AckToken>,
}

/// What the server told us in CONNACK.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerLimits {
    /// Receive Maximum: QoS 1/2 publishes we may have unacked.
    pub receive_maximum: u16,
    /// Maximum Packet Size (`None`: no limit beyond the protocol's).
    pub max_packet_size: Option<u32>,
    /// Maximum QoS.
    pub max_qos: QoS,
    /// Retain Available.
    pub retain_available: bool,
    /// Topic Alias Maximum (the transport itself never uses aliases).
    pub topic_alias_maximum: u16,
    /// Response Information (MQTT v5 §3.2.2.3.15), if asked for with
    /// [`TransportConfig::request_response_information`] and granted.
    pub response_information: Option<String>,
}
