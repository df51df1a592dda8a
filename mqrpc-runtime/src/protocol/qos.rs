//! The MQTT delivery guarantee of requests and responses, and its
//! conversions to and from the codec's.

/// MQTT delivery guarantee of requests and responses.
///
/// ```
/// # use mqrpc_runtime as mqrpc;
/// assert_eq!(mqrpc::QoS::default(), mqrpc::QoS::AtLeastOnce);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum QoS {
    /// QoS 0: fastest; a request or response lost on the way ends in a timeout.
    AtMostOnce,
    /// QoS 1: acknowledged by the broker (the default).
    #[default]
    AtLeastOnce,
    /// QoS 2: exactly once between each client and the broker.
    ExactlyOnce,
}

impl From<QoS> for rumqttc::v5::mqttbytes::QoS {
    fn from(qos: QoS) -> Self {
        match qos {
            QoS::AtMostOnce => rumqttc::v5::mqttbytes::QoS::AtMostOnce,
            QoS::AtLeastOnce => rumqttc::v5::mqttbytes::QoS::AtLeastOnce,
            QoS::ExactlyOnce => rumqttc::v5::mqttbytes::QoS::ExactlyOnce,
        }
    }
}

impl From<rumqttc::v5::mqttbytes::QoS> for QoS {
    fn from(qos: rumqttc::v5::mqttbytes::QoS) -> Self {
        match qos {
            rumqttc::v5::mqttbytes::QoS::AtMostOnce => QoS::AtMostOnce,
            rumqttc::v5::mqttbytes::QoS::AtLeastOnce => QoS::AtLeastOnce,
            rumqttc::v5::mqttbytes::QoS::ExactlyOnce => QoS::ExactlyOnce,
        }
    }
}
