//! PROTOCOL.md's byte-level example of a chunked request, checked against
//! the encoders of the client (chunks) and of the server (grant).

use bytes::Bytes;
use rumqttc::v5::mqttbytes::v5::{Publish, PublishProperties};
use rumqttc::v5::mqttbytes::QoS as WireQoS;

use super::chunked::{later_properties, with_header};
use super::{request_properties, DEFAULT_TIMEOUT};
use crate::protocol::chunk::ChunkHeader;
use crate::Codec;

fn bytes_of(topic: &str, pkid: u16, payload: &[u8], properties: PublishProperties) -> Vec<u8> {
    let mut publish = Publish::new(
        topic,
        WireQoS::AtLeastOnce,
        payload.to_vec(),
        Some(properties),
    );
    publish.pkid = pkid;
    let mut buffer = bytes::BytesMut::new();
    publish.write(&mut buffer).unwrap();
    buffer.to_vec()
}

/// The bytes of the block between two `marker`s of PROTOCOL.md: per line,
/// hex pairs and "quoted" strings, up to the comment.
fn documented(marker: &str) -> Vec<u8> {
    let document = include_str!("../../../PROTOCOL.md");
    let example = document
        .split(marker)
        .nth(1)
        .unwrap_or_else(|| panic!("PROTOCOL.md marks {marker}"));
    let mut bytes = Vec::new();
    for line in example.lines().filter(|l| !l.starts_with("```")) {
        for token in line.split_whitespace() {
            if let Some(text) = token.strip_prefix('"').and_then(|t| t.strip_suffix('"')) {
                bytes.extend_from_slice(text.as_bytes());
            } else if token.len() == 2 && u8::from_str_radix(token, 16).is_ok() {
                bytes.push(u8::from_str_radix(token, 16).unwrap());
            } else {
                break;
            }
        }
    }
    bytes
}

fn hex(bytes: &[u8]) -> String {
    bytes
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(" ")
}

#[test]
fn chunk_bytes_match_the_protocol_document() {
    let data: Vec<u8> = (1..=9).collect();
    let payload = Codec::Postcard.encode(&data).unwrap();
    assert_eq!(payload.len(), 10);
    let first = request_properties("mqrpc/_reply/c1", 7, Codec::Postcard, None, DEFAULT_TIMEOUT);
    let header = |index| ChunkHeader {
        index,
        count: crate::protocol::chunk::cut(payload.len(), 4),
        total: payload.len() as u64,
    };
    let mut chunk0 = first.clone();
    with_header(&mut chunk0, &header(0));
    let chunk0 = bytes_of("mqrpc/Files/put", 1, &payload[..4], chunk0);
    let grant = crate::protocol::chunk::grant_properties(
        Some(Bytes::copy_from_slice(&7u64.to_be_bytes())),
        3,
        "files-1",
    );
    let grant = bytes_of("mqrpc/_reply/c1", 1, &[], grant);
    let mut chunk1 = later_properties(&first);
    with_header(&mut chunk1, &header(1));
    let chunk1 = bytes_of("mqrpc/Files/_to/files-1/put", 2, &payload[4..8], chunk1);
    assert_eq!(hex(&documented("<!-- chunk 0 bytes -->")), hex(&chunk0));
    assert_eq!(hex(&documented("<!-- grant bytes -->")), hex(&grant));
    assert_eq!(hex(&documented("<!-- chunk 1 bytes -->")), hex(&chunk1));
}
