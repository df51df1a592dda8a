//! Batch frames written and read the way PROTOCOL.md ("Batches") describes
//! them, independently of the runtime's code: what a foreign peer would do.

use std::collections::HashMap;
use std::time::Duration;

use bytes::Bytes;
use rumqttc::v5::mqttbytes::v5::{Publish, PublishProperties};

use crate::raw::RawPeer;

/// Content Type of batch requests and answers.
pub const BATCH_CONTENT_TYPE: &str = "application/x-mqrpc-batch";

/// One call of a batch request.
#[derive(Debug, Clone, Default)]
pub struct Call {
    pub method: String,
    pub correlation: Vec<u8>,
    pub timeout_ms: Option<u64>,
    pub content_type: Option<String>,
    pub args: Vec<u8>,
}

impl Call {
    /// A postcard call without trace context, with a 10 s budget.
    pub fn new(method: &str, correlation: &[u8], args: Vec<u8>) -> Call {
        Call {
            method: method.into(),
            correlation: correlation.to_vec(),
            timeout_ms: Some(10_000),
            content_type: None,
            args,
        }
    }
}

/// One answer of a batch answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    pub correlation: Vec<u8>,
    /// `None`: ok.
    pub status: Option<String>,
    pub content_type: Option<String>,
    pub payload: Vec<u8>,
}

fn varint(out: &mut Vec<u8>, mut n: u64) {
    loop {
        let byte = (n & 0x7f) as u8;
        n >>= 7;
        if n == 0 {
            out.push(byte);
            return;
        }
        out.push(byte | 0x80);
    }
}

fn field(out: &mut Vec<u8>, bytes: &[u8]) {
    varint(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

/// The payload of a batch request.
pub fn call_frame(calls: &[Call]) -> Vec<u8> {
    let mut out = Vec::new();
    varint(&mut out, calls.len() as u64);
    for c in calls {
        field(&mut out, c.method.as_bytes());
        field(&mut out, &c.correlation);
        varint(&mut out, c.timeout_ms.map_or(0, |ms| ms + 1));
        field(&mut out, c.content_type.as_deref().unwrap_or("").as_bytes());
        field(&mut out, b""); // traceparent
        field(&mut out, b""); // tracestate
        field(&mut out, &c.args);
    }
    out
}

/// Properties of a batch request answered on `response_topic`.
pub fn batch_properties(response_topic: &str) -> PublishProperties {
    PublishProperties {
        response_topic: Some(response_topic.into()),
        content_type: Some(BATCH_CONTENT_TYPE.into()),
        message_expiry_interval: Some(30),
        ..PublishProperties::default()
    }
}

struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn varint(&mut self) -> u64 {
        let mut n = 0u64;
        let mut shift = 0;
        loop {
            let byte = self.0[0];
            self.0 = &self.0[1..];
            n |= u64::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                return n;
            }
            shift += 7;
        }
    }

    fn field(&mut self) -> Vec<u8> {
        let len = self.varint() as usize;
        let (field, rest) = self.0.split_at(len);
        self.0 = rest;
        field.to_vec()
    }

    fn text(&mut self) -> Option<String> {
        Some(String::from_utf8(self.field()).unwrap()).filter(|t| !t.is_empty())
    }
}

/// The answers in a publish on a response topic: a batch answer's entries,
/// or the single answer as one entry.
pub fn answers_of(publish: &Publish) -> Vec<Answer> {
    let properties = publish.properties.clone().unwrap_or_default();
    if properties.content_type.as_deref() != Some(BATCH_CONTENT_TYPE) {
        let status = properties
            .user_properties
            .iter()
            .find(|(k, _)| k == "mqrpc-status")
            .map(|(_, v)| v.clone());
        return vec![Answer {
            correlation: properties
                .correlation_data
                .map(|c| c.to_vec())
                .unwrap_or_default(),
            status,
            content_type: properties.content_type,
            payload: publish.payload.to_vec(),
        }];
    }
    let mut r = Reader(&publish.payload);
    let n = r.varint();
    let answers = (0..n)
        .map(|_| Answer {
            correlation: r.field(),
            status: r.text(),
            content_type: r.text(),
            payload: r.field(),
        })
        .collect();
    assert!(r.0.is_empty(), "bytes after the last answer");
    answers
}

/// `Bytes` of a frame.
pub fn bytes(frame: Vec<u8>) -> Bytes {
    Bytes::from(frame)
}

/// Collects answers (single or batched) on the peer's response topic until
/// every correlation in `expected` has `expected` answers (10 s hang guard).
pub async fn collect(
    peer: &mut RawPeer,
    expected: &[(&[u8], usize)],
) -> HashMap<Vec<u8>, Vec<Answer>> {
    let mut got: HashMap<Vec<u8>, Vec<Answer>> = HashMap::new();
    let done = |got: &HashMap<Vec<u8>, Vec<Answer>>| {
        expected
            .iter()
            .all(|(c, n)| got.get(*c).map_or(0, Vec::len) >= *n)
    };
    while !done(&got) {
        let publish = peer
            .next_publish(Duration::from_secs(10))
            .await
            .unwrap_or_else(|| panic!("hang guard: answers so far {got:?}"));
        for answer in answers_of(&publish) {
            got.entry(answer.correlation.clone())
                .or_default()
                .push(answer);
        }
    }
    got
}
