//! A request as the server reads it off the wire: method, key, deadline,
//! codec, trace context.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use rumqttc::v5::mqttbytes::v5::{Publish, PublishProperties};

use crate::observe::TraceContext;
use crate::protocol::batch::{CallEntry, BATCH_METHOD};
use crate::protocol::chunk::{ChunkHeader, CHUNK_GRANT_PROPERTY, CHUNK_PROPERTY};
use crate::protocol::QoS;
use crate::protocol::{
    AGE_PROPERTY, ANY_SERVICE, ATTEMPT_PROPERTY, BROADCAST_LEVEL, CANCEL_RESPONSE_TOPIC_PROPERTY,
    CREDIT_PROPERTY, INSTANCE_LEVEL, TIMEOUT_PROPERTY,
};
use crate::server::duplicates::{call_key, CallId};
use crate::Metadata;

/// One request, as the server reads it off the wire.
#[derive(Debug, Clone)]
pub(crate) struct Request {
    pub method: String,
    pub response_topic: Option<String>,
    pub correlation: Option<Bytes>,
    pub content_type: Option<String>,
    pub deadline: Option<Instant>,
    pub qos: QoS,
    pub payload: Bytes,
    /// For cancel and credit messages: the Response Topic of the call.
    pub cancel_of: Option<String>,
    /// For credit messages: how many more items the caller takes.
    pub credit: Option<u32>,
    pub arrived: Instant,
    /// Sent to `<prefix>/<service>/_all/<method>`: every instance answers.
    pub broadcast: bool,
    /// Set on broadcasts: the answer names the instance.
    pub instance: Option<Arc<str>>,
    /// Sent to `<prefix>/_all/_all/<method>`: discovery, built-ins only.
    pub discovery: bool,
    /// Set on the answers of a stream: the item's position.
    pub seq: Option<u64>,
    /// The caller's W3C trace context (`traceparent`, `tracestate`).
    pub trace: Option<TraceContext>,
    /// Came in a batch request: its answer may go in a batch answer.
    pub batched: bool,
    /// How many user properties it carried, and their names' and values'
    /// bytes (for the server's limits; the properties themselves are not
    /// kept).
    pub user_properties: usize,
    pub user_property_bytes: usize,
    /// Which attempt of its call this request is (`mqrpc-attempt`; 1 when
    /// absent) and how long ago the first was sent (`mqrpc-age-ms`).
    pub attempt: u32,
    pub age_ms: Option<u64>,
    /// Sent to `<prefix>/<service>/_to/<instance>/<method>`: to this
    /// instance alone.
    pub direct: bool,
    /// The caller's metadata (`md-` user properties).
    pub metadata: Metadata,
    /// The metadata of the answer, set by the handler.
    pub reply_metadata: Metadata,
    /// The broker delivered it before (MQTT DUP flag).
    pub redelivered: bool,
    /// A chunk of a chunked request: its `mqrpc-chunk`, read (PROTOCOL.md,
    /// "Chunked transfer").
    pub chunk: Option<Result<ChunkHeader, String>>,
    /// On a credit message: the grant of a chunked answer.
    pub chunk_grant: Option<u32>,
}

impl Request {
    /// Reads a publish whose topic matched one of the server's filters.
    pub(crate) fn from_publish(mut publish: Publish, now: Instant) -> Request {
        let properties = publish.properties.take().unwrap_or_default();
        // Every subscription of a server ends in `/+`: the method is the
        // last level, whether the request came to the service or to this
        // instance.
        let method = std::str::from_utf8(&publish.topic)
            .ok()
            .and_then(|topic| topic.rsplit('/').next())
            .unwrap_or_default()
            .to_string();
        let mut levels = std::str::from_utf8(&publish.topic)
            .map(|topic| topic.rsplit('/').skip(1))
            .ok();
        let mut next = || levels.as_mut().and_then(|l| l.next());
        let second = next();
        let broadcast = second == Some(BROADCAST_LEVEL);
        let discovery = broadcast && next() == Some(ANY_SERVICE);
        let direct = !broadcast && second.is_some() && next() == Some(INSTANCE_LEVEL);
        let mut request =
            Request::from_parts(method, properties, publish.qos.into(), publish.payload, now);
        request.broadcast = broadcast;
        request.discovery = discovery;
        request.direct = direct;
        request.redelivered = publish.dup;
        request
    }

    fn from_parts(
        method: String,
        properties: PublishProperties,
        qos: QoS,
        payload: Bytes,
        now: Instant,
    ) -> Request {
        let user = |name: &str| {
            properties
                .user_properties
                .iter()
                .find(|(key, _)| key == name)
                .map(|(_, value)| value.clone())
        };
        let budget = user(TIMEOUT_PROPERTY).and_then(|ms| ms.trim().parse::<u64>().ok());
        let attempt = user(ATTEMPT_PROPERTY)
            .and_then(|n| n.trim().parse::<u32>().ok())
            .unwrap_or(1);
        let age_ms = user(AGE_PROPERTY).and_then(|ms| ms.trim().parse::<u64>().ok());
        let (user_properties, user_property_bytes) = user_property_size(&properties);
        let deadline = deadline(budget, properties.message_expiry_interval, now);
        Request {
            trace: TraceContext::from_user_properties(&properties.user_properties),
            metadata: Metadata::read_from(&properties.user_properties),
            reply_metadata: Metadata::new(),
            redelivered: false,
            cancel_of: user(CANCEL_RESPONSE_TOPIC_PROPERTY),
            credit: user(CREDIT_PROPERTY).and_then(|n| n.trim().parse().ok()),
            chunk: user(CHUNK_PROPERTY).map(|value| ChunkHeader::parse(&value)),
            chunk_grant: user(CHUNK_GRANT_PROPERTY).and_then(|n| n.trim().parse().ok()),
            method,
            response_topic: properties.response_topic,
            correlation: properties.correlation_data,
            content_type: properties.content_type,
            deadline,
            qos,
            payload,
            arrived: now,
            broadcast: false,
            instance: None,
            discovery: false,
            seq: None,
            batched: false,
            user_properties,
            user_property_bytes,
            attempt,
            age_ms,
            direct: false,
        }
    }

    /// A batch request itself (method `_batch`), as the server answers it
    /// when it is a probe or cannot be read.
    pub(crate) fn from_batch(properties: &PublishProperties, qos: QoS, now: Instant) -> Request {
        let (user_properties, user_property_bytes) = user_property_size(properties);
        Request {
            method: BATCH_METHOD.to_string(),
            response_topic: properties.response_topic.clone(),
            correlation: properties.correlation_data.clone(),
            content_type: properties.content_type.clone(),
            deadline: deadline(None, properties.message_expiry_interval, now),
            qos,
            payload: Bytes::new(),
            cancel_of: None,
            credit: None,
            arrived: now,
            broadcast: false,
            instance: None,
            discovery: false,
            seq: None,
            trace: None,
            batched: false,
            user_properties,
            user_property_bytes,
            attempt: 1,
            age_ms: None,
            direct: false,
            metadata: Metadata::new(),
            reply_metadata: Metadata::new(),
            redelivered: false,
            chunk: None,
            chunk_grant: None,
        }
    }

    /// One call of this batch request, as if it had come alone.
    pub(crate) fn entry(&self, call: CallEntry) -> Request {
        let expiry = self
            .deadline
            .map(|d| d.saturating_duration_since(self.arrived));
        let budget = call.timeout_ms.map(Duration::from_millis);
        let deadline = match (budget, expiry) {
            (Some(b), Some(e)) => Some(b.min(e)),
            (b, e) => b.or(e),
        }
        .and_then(|d| self.arrived.checked_add(d));
        // The trace context of a call in a batch is its user properties.
        let trace = [&call.traceparent, &call.tracestate];
        let user_properties = trace.iter().filter(|p| p.is_some()).count();
        let user_property_bytes = trace
            .iter()
            .filter_map(|p| p.as_ref())
            .map(String::len)
            .sum();
        Request {
            method: call.method,
            response_topic: self.response_topic.clone(),
            correlation: Some(call.correlation),
            content_type: call.content_type,
            deadline,
            qos: self.qos,
            payload: call.args,
            cancel_of: None,
            credit: None,
            arrived: self.arrived,
            broadcast: false,
            instance: None,
            discovery: false,
            seq: None,
            trace: call.traceparent.map(|traceparent| TraceContext {
                traceparent: Some(traceparent),
                tracestate: call.tracestate,
            }),
            batched: true,
            user_properties,
            user_property_bytes,
            // Retries travel alone, never in a batch.
            attempt: 1,
            age_ms: None,
            direct: false,
            // Calls with metadata travel alone (PROTOCOL.md, "Batches").
            metadata: Metadata::new(),
            reply_metadata: Metadata::new(),
            redelivered: self.redelivered,
            chunk: None,
            chunk_grant: None,
        }
    }

    pub(super) fn key(&self) -> Option<CallId> {
        let key = call_key(
            self.response_topic.as_deref()?,
            self.correlation.as_deref()?,
        );
        let content_type = self.content_type.as_deref();
        Some(CallId::new(key, &self.method, content_type, &self.payload))
    }

    pub(super) fn expired(&self, now: Instant) -> bool {
        self.deadline.is_some_and(|d| d <= now)
    }

    /// Copies the payload and the Correlation Data out of the packet they
    /// came in: a slice of it holds the whole buffer the packet was read
    /// into, for as long as the request waits.
    pub(super) fn unpin(&mut self) {
        self.payload = Bytes::copy_from_slice(&self.payload);
        if let Some(correlation) = &mut self.correlation {
            *correlation = Bytes::copy_from_slice(correlation);
        }
    }

    /// The heap bytes this request holds (once [`unpin`](Self::unpin)ned):
    /// its strings, Correlation Data and payload.
    pub(super) fn held_bytes(&self) -> usize {
        let text = |s: &Option<String>| s.as_ref().map_or(0, String::capacity);
        let trace = self
            .trace
            .as_ref()
            .map_or(0, |t| text(&t.traceparent) + text(&t.tracestate));
        self.method.capacity()
            + text(&self.response_topic)
            + text(&self.content_type)
            + text(&self.cancel_of)
            + self.correlation.as_ref().map_or(0, Bytes::len)
            + self.payload.len()
            + trace
            + self.metadata.wire_bytes()
    }
}

/// How many user properties `properties` carries, and the bytes of their
/// names and values.
fn user_property_size(properties: &PublishProperties) -> (usize, usize) {
    let user = &properties.user_properties;
    let bytes = user.iter().map(|(k, v)| k.len() + v.len()).sum();
    (user.len(), bytes)
}

/// The budget of a request, capped by what the broker left of its Message
/// Expiry Interval (which counts time spent queued at the broker).
fn deadline(budget_ms: Option<u64>, expiry_s: Option<u32>, now: Instant) -> Option<Instant> {
    match (budget_ms, expiry_s) {
        (Some(ms), Some(s)) => Some(Duration::from_millis(ms).min(Duration::from_secs(s.into()))),
        (Some(ms), None) => Some(Duration::from_millis(ms)),
        (None, Some(s)) => Some(Duration::from_secs(s.into())),
        (None, None) => None,
    }
    .and_then(|d| now.checked_add(d))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn properties(timeout_ms: Option<&str>, expiry: Option<u32>) -> PublishProperties {
        PublishProperties {
            message_expiry_interval: expiry,
            user_properties: timeout_ms
                .map(|ms| vec![(TIMEOUT_PROPERTY.to_string(), ms.to_string())])
                .unwrap_or_default(),
            ..PublishProperties::default()
        }
    }

    proptest::proptest! {
        /// Whatever properties a request carries, reading it never panics
        /// and its deadline is never before its arrival.
        #[test]
        fn any_request_properties_are_read_without_panic(
            method in ".{0,16}",
            user in proptest::collection::vec(("(mqrpc-timeout-ms|mqrpc-response-topic|.{0,8})", ".{0,24}"), 0..4),
            expiry in proptest::option::of(proptest::num::u32::ANY),
            response_topic in proptest::option::of(".{0,24}"),
            correlation in proptest::option::of(proptest::collection::vec(proptest::num::u8::ANY, 0..16)),
            content_type in proptest::option::of(".{0,24}"),
            payload in proptest::collection::vec(proptest::num::u8::ANY, 0..32),
        ) {
            let now = Instant::now();
            let properties = PublishProperties {
                message_expiry_interval: expiry,
                response_topic,
                correlation_data: correlation.map(Bytes::from),
                content_type,
                user_properties: user,
                ..PublishProperties::default()
            };
            let request = Request::from_parts(method, properties, QoS::AtLeastOnce, Bytes::from(payload), now);
            if let Some(deadline) = request.deadline {
                proptest::prop_assert!(deadline >= now);
            }
            let _ = request.key();
            let _ = request.expired(now);
        }
    }

    #[test]
    fn deadline_is_the_budget_capped_by_message_expiry() {
        let now = Instant::now();
        let read =
            |p| Request::from_parts("m".into(), p, QoS::AtLeastOnce, Bytes::new(), now).deadline;
        assert_eq!(
            read(properties(Some("1500"), None)),
            Some(now + Duration::from_millis(1500))
        );
        assert_eq!(
            read(properties(Some("9000"), Some(2))),
            Some(now + Duration::from_secs(2))
        );
        assert_eq!(
            read(properties(None, Some(3))),
            Some(now + Duration::from_secs(3))
        );
        assert_eq!(read(properties(Some("soon"), None)), None);
        assert_eq!(read(properties(None, None)), None);
        let expired = Request::from_parts(
            "m".into(),
            properties(Some("0"), None),
            QoS::AtMostOnce,
            Bytes::new(),
            now,
        );
        assert!(expired.expired(now));
    }
}
