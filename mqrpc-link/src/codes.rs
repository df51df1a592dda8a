//! Numeric reason codes of the codec's reason enums (MQTT v5 §3.4.2.1,
//! §3.5.2.1, §3.9.3, §3.11.3). rumqttc keeps its own mappings private, so the
//! few we need are spelled out here.

use rumqttc::v5::mqttbytes::v5::{
    ConnectReturnCode, PubAckReason, PubRecReason, SubscribeReasonCode, UnsubAckReason,
};
use rumqttc::v5::mqttbytes::QoS;

/// Code of a PUBACK.
pub(crate) fn puback(r: &PubAckReason) -> u8 {
    use PubAckReason::*;
    match r {
        Success => 0x00,
        NoMatchingSubscribers => 0x10,
        UnspecifiedError => 0x80,
        ImplementationSpecificError => 0x83,
        NotAuthorized => 0x87,
        TopicNameInvalid => 0x90,
        PacketIdentifierInUse => 0x91,
        QuotaExceeded => 0x97,
        PayloadFormatInvalid => 0x99,
    }
}

/// Code of a PUBREC (same table as PUBACK).
pub(crate) fn pubrec(r: &PubRecReason) -> u8 {
    use PubRecReason::*;
    match r {
        Success => 0x00,
        NoMatchingSubscribers => 0x10,
        UnspecifiedError => 0x80,
        ImplementationSpecificError => 0x83,
        NotAuthorized => 0x87,
        TopicNameInvalid => 0x90,
        PacketIdentifierInUse => 0x91,
        QuotaExceeded => 0x97,
        PayloadFormatInvalid => 0x99,
    }
}

/// PUBACK reason for a code chosen by the application; codes the codec
/// cannot express become Unspecified error (0x80).
pub(crate) fn puback_reason(code: u8) -> PubAckReason {
    use PubAckReason::*;
    match code {
        0x00 => Success,
        0x10 => NoMatchingSubscribers,
        0x83 => ImplementationSpecificError,
        0x87 => NotAuthorized,
        0x90 => TopicNameInvalid,
        0x91 => PacketIdentifierInUse,
        0x97 => QuotaExceeded,
        0x99 => PayloadFormatInvalid,
        _ => UnspecifiedError,
    }
}

/// PUBREC reason for a code chosen by the application (see [`puback_reason`]).
pub(crate) fn pubrec_reason(code: u8) -> PubRecReason {
    use PubRecReason::*;
    match puback_reason(code) {
        PubAckReason::Success => Success,
        PubAckReason::NoMatchingSubscribers => NoMatchingSubscribers,
        PubAckReason::ImplementationSpecificError => ImplementationSpecificError,
        PubAckReason::NotAuthorized => NotAuthorized,
        PubAckReason::TopicNameInvalid => TopicNameInvalid,
        PubAckReason::PacketIdentifierInUse => PacketIdentifierInUse,
        PubAckReason::QuotaExceeded => QuotaExceeded,
        PubAckReason::PayloadFormatInvalid => PayloadFormatInvalid,
        PubAckReason::UnspecifiedError => UnspecifiedError,
    }
}

/// Code of one SUBACK entry (granted QoS 0/1/2 or a failure ≥ 0x80).
pub(crate) fn suback(r: &SubscribeReasonCode) -> u8 {
    use SubscribeReasonCode::*;
    match r {
        Success(QoS::AtMostOnce) => 0x00,
        Success(QoS::AtLeastOnce) => 0x01,
        Success(QoS::ExactlyOnce) => 0x02,
        Failure | Unspecified => 0x80,
        ImplementationSpecific => 0x83,
        NotAuthorized => 0x87,
        TopicFilterInvalid => 0x8F,
        PkidInUse => 0x91,
        QuotaExceeded => 0x97,
        SharedSubscriptionsNotSupported => 0x9E,
        SubscriptionIdNotSupported => 0xA1,
        WildcardSubscriptionsNotSupported => 0xA2,
    }
}

/// Code of one UNSUBACK entry.
pub(crate) fn unsuback(r: &UnsubAckReason) -> u8 {
    use UnsubAckReason::*;
    match r {
        Success => 0x00,
        NoSubscriptionExisted => 0x11,
        UnspecifiedError => 0x80,
        ImplementationSpecificError => 0x83,
        NotAuthorized => 0x87,
        TopicFilterInvalid => 0x8F,
        PacketIdentifierInUse => 0x91,
    }
}

/// Code of a refused CONNACK (MQTT v5 §3.2.2.2); the codec's MQTT 3 style
/// variants map to their v5 equivalents.
pub(crate) fn connack(r: &ConnectReturnCode) -> u8 {
    use ConnectReturnCode::*;
    match r {
        Success => 0x00,
        UnspecifiedError => 0x80,
        MalformedPacket => 0x81,
        ProtocolError => 0x82,
        ImplementationSpecificError => 0x83,
        RefusedProtocolVersion | UnsupportedProtocolVersion => 0x84,
        BadClientId | ClientIdentifierNotValid => 0x85,
        BadUserNamePassword => 0x86,
        NotAuthorized => 0x87,
        ServiceUnavailable | ServerUnavailable => 0x88,
        ServerBusy => 0x89,
        Banned => 0x8A,
        BadAuthenticationMethod => 0x8C,
        TopicNameInvalid => 0x90,
        PacketTooLarge => 0x95,
        QuotaExceeded => 0x97,
        PayloadFormatInvalid => 0x99,
        RetainNotSupported => 0x9A,
        QoSNotSupported => 0x9B,
        UseAnotherServer => 0x9C,
        ServerMoved => 0x9D,
        ConnectionRateExceeded => 0x9F,
    }
}
