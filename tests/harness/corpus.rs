//! A corpus of real traffic for the fuzzers: MQTT v5 PUBLISH packets a
//! real client and server exchanged through a broker (requests, batch
//! requests, answers, batch answers, stream items, errors, refusals,
//! cancels, credits), as a peer subscribed to `#` received them, each
//! written with rumqttc's codec to `tests/corpus/<nn>-<kind>.mqtt`.
//! `tests/corpus.rs` records them (`MQRPC_RECORD_CORPUS=1`, ignored
//! otherwise) and checks that a server still answers every request of it;
//! `tests/fuzz_wire.rs` and `tests/fuzz_dispatch.rs` start from them.

use std::path::PathBuf;

use bytes::BytesMut;
use rumqttc::v5::mqttbytes::v5::{Packet, Publish};

/// `tests/corpus/`.
pub fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("corpus")
}

/// One recorded packet: its file name's kind (`request-add`,
/// `answer-error`, `batch-answer`...) and the packet.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub name: String,
    pub kind: String,
    pub publish: Publish,
}

impl Recorded {
    /// Sent by a client: a request (batch or not), a cancel or a credit.
    pub fn is_request(&self) -> bool {
        !self.kind.starts_with("answer") && !self.kind.starts_with("batch-answer")
    }

    /// The packet's bytes, as they travelled.
    pub fn bytes(&self) -> Vec<u8> {
        encode(&self.publish)
    }
}

/// The packet's bytes (rumqttc's codec).
pub fn encode(publish: &Publish) -> Vec<u8> {
    let mut buf = BytesMut::new();
    Packet::Publish(publish.clone())
        .write(&mut buf, None)
        .expect("encode a recorded publish");
    buf.to_vec()
}

/// Every packet of the corpus, by file name; panics on a file that is
/// not one MQTT v5 PUBLISH (the corpus is checked in, it must read).
pub fn load() -> Vec<Recorded> {
    let mut names: Vec<_> = std::fs::read_dir(dir())
        .expect("tests/corpus")
        .map(|entry| entry.unwrap().file_name().into_string().unwrap())
        .filter(|name| name.ends_with(".mqtt"))
        .collect();
    names.sort();
    names
        .into_iter()
        .map(|name| {
            let bytes = std::fs::read(dir().join(&name)).unwrap();
            let mut buf = BytesMut::from(&bytes[..]);
            let publish = match Packet::read(&mut buf, None) {
                Ok(Packet::Publish(publish)) => publish,
                other => panic!("{name}: not a PUBLISH: {other:?}"),
            };
            assert!(buf.is_empty(), "{name}: bytes after the packet");
            let kind = name
                .trim_end_matches(".mqtt")
                .split_once('-')
                .map_or(String::new(), |(_, kind)| kind.to_string());
            Recorded {
                name,
                kind,
                publish,
            }
        })
        .collect()
}

/// What a recorded publish is, from its topic and properties.
pub fn kind_of(publish: &Publish) -> String {
    let topic = String::from_utf8_lossy(&publish.topic).to_string();
    let properties = publish.properties.clone().unwrap_or_default();
    let user = |name: &str| {
        properties
            .user_properties
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
    };
    let batch = properties.content_type.as_deref() == Some(mqrpc::protocol::BATCH_CONTENT_TYPE)
        || topic.contains("/_batch/");
    if topic.contains("/_reply/") {
        if batch {
            return "batch-answer".into();
        }
        let status = user("mqrpc-status").unwrap_or_else(|| "ok".into());
        return match user("mqrpc-seq") {
            Some(_) => format!("answer-stream-{status}"),
            None => format!("answer-{status}"),
        };
    }
    if batch {
        return "batch-request".into();
    }
    let method = topic.rsplit('/').next().unwrap_or_default().to_string();
    format!("request-{}", method.trim_start_matches('_'))
}
