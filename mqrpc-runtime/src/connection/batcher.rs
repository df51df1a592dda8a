//! mqrpc's [`Coalesce`]: requests to one service target from one response
//! topic become one batch request, answers to one response topic one batch
//! answer (PROTOCOL.md, "Batches"). Only publishes the client or server
//! marked (unary calls to a target that answered a batch probe; answers to
//! requests that came in a batch) are offered.

use std::hash::{Hash, Hasher};

use bytes::Bytes;
use rumqttc::v5::mqttbytes::v5::PublishProperties;

use crate::protocol::batch::{encode_answers, encode_calls, AnswerRef, CallRef};
use crate::protocol::metadata::METADATA_PREFIX;
use crate::protocol::{
    BATCH_CONTENT_TYPE, BATCH_LEVELS, STATUS_PROPERTY, TIMEOUT_PROPERTY, TRACEPARENT_PROPERTY,
    TRACESTATE_PROPERTY,
};

use mqrpc_link::{Coalesce, OutgoingPublish};

#[derive(Debug)]
pub(crate) struct Batcher;

/// The topic without its last level (the method), with the `/`.
fn base(topic: &[u8]) -> Option<&[u8]> {
    let slash = topic.iter().rposition(|b| *b == b'/')?;
    Some(&topic[..=slash])
}

fn is_request(p: &PublishProperties) -> bool {
    p.response_topic.is_some()
}

impl Coalesce for Batcher {
    fn key(&self, publish: &OutgoingPublish) -> Option<u64> {
        let properties = publish.properties.as_ref()?;
        properties.correlation_data.as_ref()?;
        // A batch entry has no field for metadata: such calls and answers
        // travel alone, the others still merge (PROTOCOL.md, "Batches").
        let metadata = |(name, _): &(String, String)| name.starts_with(METADATA_PREFIX);
        if properties.user_properties.iter().any(metadata) {
            return None;
        }
        let mut hasher = rustc_hash::FxHasher::default();
        (publish.qos as u8).hash(&mut hasher);
        if is_request(properties) {
            // Requests to one target from one response topic.
            b"call".hash(&mut hasher);
            base(&publish.topic)?.hash(&mut hasher);
            properties.response_topic.hash(&mut hasher);
        } else {
            b"answer".hash(&mut hasher);
            publish.topic.hash(&mut hasher);
        }
        Some(hasher.finish())
    }

    fn carries_several(&self, incoming: &rumqttc::v5::mqttbytes::v5::Publish) -> bool {
        incoming
            .properties
            .as_ref()
            .and_then(|p| p.content_type.as_deref())
            == Some(BATCH_CONTENT_TYPE)
    }

    fn merge(&self, parts: &[&OutgoingPublish]) -> Option<OutgoingPublish> {
        let first = *parts.first()?;
        let properties = first.properties.as_ref()?;
        if is_request(properties) {
            merge_calls(first, parts)
        } else {
            merge_answers(first, parts)
        }
    }
}

fn merge_calls(first: &OutgoingPublish, parts: &[&OutgoingPublish]) -> Option<OutgoingPublish> {
    let mut calls = Vec::with_capacity(parts.len());
    let mut expiry: Option<u32> = None;
    for part in parts {
        let p = part.properties.as_ref()?;
        let method = std::str::from_utf8(&part.topic[base(&part.topic)?.len()..]).ok()?;
        let (mut timeout_ms, mut traceparent, mut tracestate) = (None, None, None);
        for (key, value) in &p.user_properties {
            match key.as_str() {
                TIMEOUT_PROPERTY => timeout_ms = Some(value.trim().parse().ok()?),
                TRACEPARENT_PROPERTY => traceparent = Some(value.as_str()),
                TRACESTATE_PROPERTY => tracestate = Some(value.as_str()),
                // Something a batch entry cannot carry: send them alone.
                _ => return None,
            }
        }
        if let Some(e) = p.message_expiry_interval {
            expiry = Some(expiry.map_or(e, |max| max.max(e)));
        }
        calls.push(CallRef {
            method,
            correlation: p.correlation_data.as_deref()?,
            timeout_ms,
            content_type: p.content_type.as_deref(),
            traceparent,
            tracestate,
            args: &part.payload,
        });
    }
    let base = base(&first.topic)?;
    let mut topic = Vec::with_capacity(base.len() + BATCH_LEVELS.len());
    topic.extend_from_slice(base);
    topic.extend_from_slice(BATCH_LEVELS.as_bytes());
    Some(OutgoingPublish {
        topic: Bytes::from(topic),
        qos: first.qos,
        retain: false,
        payload: encode_calls(calls.into_iter()),
        properties: Some(PublishProperties {
            response_topic: first.properties.as_ref()?.response_topic.clone(),
            content_type: Some(BATCH_CONTENT_TYPE.to_string()),
            message_expiry_interval: expiry,
            ..PublishProperties::default()
        }),
        coalesce: false,
    })
}

fn merge_answers(first: &OutgoingPublish, parts: &[&OutgoingPublish]) -> Option<OutgoingPublish> {
    let mut answers = Vec::with_capacity(parts.len());
    for part in parts {
        let p = part.properties.as_ref()?;
        let mut status = None;
        for (key, value) in &p.user_properties {
            match key.as_str() {
                STATUS_PROPERTY => status = Some(value.as_str()),
                _ => return None,
            }
        }
        answers.push(AnswerRef {
            correlation: p.correlation_data.as_deref()?,
            status,
            content_type: p.content_type.as_deref(),
            payload: &part.payload,
        });
    }
    Some(OutgoingPublish {
        topic: first.topic.clone(),
        qos: first.qos,
        retain: false,
        payload: encode_answers(answers.into_iter()),
        properties: Some(PublishProperties {
            content_type: Some(BATCH_CONTENT_TYPE.to_string()),
            ..PublishProperties::default()
        }),
        coalesce: false,
    })
}
