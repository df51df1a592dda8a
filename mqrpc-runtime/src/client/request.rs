//! The one request builder of the client: unary calls, one-way calls,
//! broadcasts and streams all make their request here (topic, properties,
//! trace context, size check), and send it through
//! [`Outgoing::send`] (answered calls) or [`Outgoing::send_one_way`].

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use rumqttc::v5::mqttbytes::v5::PublishProperties;

use super::{Caller, Client};
use crate::connection::AckTo;
use crate::protocol::codec::Codec;
use crate::protocol::topic;
use crate::protocol::QoS;
use crate::protocol::{SCHEMA_PARAMETER, TIMEOUT_PROPERTY};
use crate::{observe, Error};

/// Where a request goes, after `<prefix>/<service>/`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Target {
    /// This client's target (the service, or its instance): `<base><method>`.
    Method,
    /// Every server of the service: `<prefix>/<service>/_all/<method>`.
    Broadcast,
}

/// Whether the request asks for an answer.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Answer {
    /// One-way (`#[mqrpc(oneway)]`): no Response Topic, no Correlation Data.
    None,
    /// One answer, to the connection's response topic, as call `id`,
    /// within `budget`: a unary call, whose request may go in chunks
    /// (PROTOCOL.md, "Chunked transfer").
    Once { id: u64, budget: Duration },
    /// Several answers (a stream, a broadcast), likewise; never chunked.
    Many { id: u64, budget: Duration },
}

/// A request ready to go out.
pub(crate) struct Outgoing {
    pub(crate) topic: String,
    pub(crate) qos: QoS,
    pub(crate) properties: PublishProperties,
    pub(crate) payload: Bytes,
    /// Sent in chunks ([`chunked::send_request`](super::chunked)).
    pub(crate) chunked: bool,
}

impl Client {
    /// Builds the request of `method`: its topic, properties (Content Type
    /// with the schema fingerprint, expiry, budget, Response Topic and
    /// Correlation Data when it is answered, trace context of `span` or
    /// of the current span, the client's metadata within its limits), checked against the broker's Maximum Packet
    /// Size.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn build_request(
        &self,
        target: Target,
        method: &str,
        qos: Option<QoS>,
        schema: Option<&'static str>,
        payload: Vec<u8>,
        answer: Answer,
        span: Option<&tracing::Span>,
    ) -> Result<Outgoing, Error> {
        let topic = match target {
            Target::Method => topic::method_topic(&self.topic_base, method),
            Target::Broadcast => {
                let service_base = topic::service_base(&self.options.prefix, &self.service);
                topic::broadcast_topic(&service_base, method)
            }
        };
        let mut properties = match answer {
            Answer::Once { id, budget } | Answer::Many { id, budget } => request_properties(
                &self.caller.reply_topic,
                id,
                self.options.codec,
                schema,
                budget,
            ),
            Answer::None => PublishProperties {
                content_type: content_type(self.options.codec, schema),
                message_expiry_interval: Some(expiry_seconds(self.options.timeout)),
                ..PublishProperties::default()
            },
        };
        match span {
            Some(span) => observe::inject(span, &mut properties.user_properties),
            None => observe::inject_current(&mut properties.user_properties),
        }
        if !self.metadata.is_empty() {
            self.metadata.check_limits()?;
            self.metadata.write_to(&mut properties.user_properties);
        }
        // Too big for one packet, or over the client's chunk size: a unary
        // request goes in chunks, any other is refused.
        let once = matches!(answer, Answer::Once { .. });
        let chunked =
            once && super::chunked::needs_chunks(self, &topic, payload.len(), &properties);
        if !chunked {
            self.check_size(&topic, payload.len(), &properties)?;
        }
        Ok(Outgoing {
            topic,
            qos: qos.unwrap_or(self.options.qos),
            properties,
            payload: Bytes::from(payload),
            chunked,
        })
    }

    /// Refuses a request over the broker's Maximum Packet Size before it
    /// is sent (the broker would drop the connection for it), with an error
    /// that names the payload.
    pub(super) fn check_size(
        &self,
        topic: &str,
        payload_len: usize,
        properties: &PublishProperties,
    ) -> Result<(), Error> {
        let Some(limit) = self.conn.broker_max_packet_size() else {
            return Ok(());
        };
        let size = crate::connection::publish_size(topic, payload_len, properties);
        if size > limit as usize {
            return Err(Error::TooLarge {
                message: format!(
                    "a {payload_len}-byte payload makes a packet over the broker's Maximum Packet Size of {limit} bytes"
                ),
            });
        }
        Ok(())
    }
}

impl Outgoing {
    /// Sends a request whose call is pending as `id`: the broker's refusal
    /// (no subscriber, not authorized) or a lost link ends the call through
    /// the caller ([`Caller::acked`](crate::connection::AckListener::acked)),
    /// on the session loop's task, so the usual PUBACK wakes no task.
    pub(crate) fn send(self, client: &Client, caller: &Arc<Caller>, id: u64, batch: bool) {
        let ack = AckTo::Listener(caller.clone(), id);
        client.conn.publish_to(
            self.topic,
            self.qos,
            self.payload,
            self.properties,
            batch,
            ack,
        );
    }

    /// Sends a one-way request and waits for the broker to take it (see
    /// [`Client::notify`]).
    pub(crate) async fn send_one_way(self, client: &Client, method: &str) -> Result<(), Error> {
        let ack = client
            .conn
            .publish(self.topic, self.qos, self.payload, self.properties, false);
        crate::connection::ack_outcome(ack.await).map_err(|failure| failure.into_error(method))
    }
}

/// The properties of a request (PROTOCOL.md, "Request"). Values that are
/// the protocol's defaults are left out: every property costs allocations
/// on both sides and in the broker.
pub(crate) fn request_properties(
    reply_topic: &str,
    id: u64,
    codec: Codec,
    schema: Option<&'static str>,
    timeout: Duration,
) -> PublishProperties {
    let millis = timeout.as_millis();
    let budget = if millis.is_multiple_of(1000) && millis > 0 {
        Vec::new() // the Message Expiry Interval says it exactly
    } else {
        vec![(TIMEOUT_PROPERTY.to_string(), millis.to_string())]
    };
    PublishProperties {
        response_topic: Some(reply_topic.to_string()),
        correlation_data: Some(Bytes::copy_from_slice(&id.to_be_bytes())),
        content_type: content_type(codec, schema),
        // The broker drops the request if nobody took it in time.
        message_expiry_interval: Some(expiry_seconds(timeout)),
        user_properties: budget,
        ..PublishProperties::default()
    }
}

/// The Content Type of a request: absent for postcard without schema
/// fingerprint, else the codec's with `; schema=<fingerprint>`.
fn content_type(codec: Codec, schema: Option<&'static str>) -> Option<String> {
    match schema {
        // One exact allocation (`format!` grows its buffer as it goes).
        Some(schema) => Some([codec.content_type(), "; ", SCHEMA_PARAMETER, "=", schema].concat()),
        None => (codec != Codec::Postcard).then(|| codec.content_type().to_string()),
    }
}

/// Message Expiry Interval for a timeout: whole seconds, rounded up, ≥ 1.
fn expiry_seconds(timeout: Duration) -> u32 {
    let millis = timeout.as_millis().max(1);
    u32::try_from(millis.div_ceil(1000)).unwrap_or(u32::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::DEFAULT_TIMEOUT;
    use rumqttc::v5::mqttbytes::v5::Publish;
    use rumqttc::v5::mqttbytes::QoS as WireQoS;

    fn hex(bytes: &[u8]) -> String {
        bytes
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<Vec<_>>()
            .join(" ")
    }

    /// The bytes between a pair of `marker` lines of PROTOCOL.md: hex pairs
    /// and "quoted" strings on each line, up to its comment.
    pub(crate) fn documented_bytes(marker: &str) -> Vec<u8> {
        let document = include_str!("../../../PROTOCOL.md");
        let example = document
            .split(marker)
            .nth(1)
            .unwrap_or_else(|| panic!("PROTOCOL.md marks {marker}"));
        let mut documented = Vec::new();
        for line in example.lines().filter(|l| !l.starts_with("```")) {
            for token in line.split_whitespace() {
                if let Some(text) = token.strip_prefix('"').and_then(|t| t.strip_suffix('"')) {
                    documented.extend_from_slice(text.as_bytes());
                } else if let Ok(byte) = u8::from_str_radix(token, 16)
                    .map_err(|_| ())
                    .and_then(|b| if token.len() == 2 { Ok(b) } else { Err(()) })
                {
                    documented.push(byte);
                } else {
                    break;
                }
            }
        }
        documented
    }

    pub(crate) fn encoded(topic: &str, payload: Vec<u8>, properties: PublishProperties) -> String {
        let mut publish = Publish::new(topic, WireQoS::AtLeastOnce, payload, Some(properties));
        publish.pkid = 1;
        let mut buffer = bytes::BytesMut::new();
        publish.write(&mut buffer).unwrap();
        hex(&buffer)
    }

    /// The request of PROTOCOL.md's byte-level example, byte for byte.
    #[test]
    fn request_bytes_match_the_protocol_document() {
        let properties =
            request_properties("mqrpc/_reply/c1", 7, Codec::Postcard, None, DEFAULT_TIMEOUT);
        let payload = Codec::Postcard.encode(&(2i64, 3i64)).unwrap();
        assert_eq!(
            hex(&documented_bytes("<!-- request bytes -->")),
            encoded("mqrpc/Calculator/add", payload, properties)
        );
        assert_eq!(expiry_seconds(Duration::from_millis(1)), 1);
        assert_eq!(expiry_seconds(Duration::from_millis(2_001)), 3);
    }

    /// The request of PROTOCOL.md's metadata example, byte for byte.
    #[test]
    fn metadata_request_bytes_match_the_protocol_document() {
        let mut properties =
            request_properties("mqrpc/_reply/c1", 7, Codec::Postcard, None, DEFAULT_TIMEOUT);
        let metadata = crate::Metadata::from_pairs([("tenant", "acme")]).unwrap();
        metadata.write_to(&mut properties.user_properties);
        let payload = Codec::Postcard.encode(&(2i64, 3i64)).unwrap();
        let documented = documented_bytes("<!-- metadata request bytes -->");
        assert_eq!(documented.len(), 81);
        assert_eq!(
            hex(&documented),
            encoded("mqrpc/Calculator/add", payload, properties)
        );
    }
}
