//! Batch frames (PROTOCOL.md, "Batches"): several calls in one request
//! publish, several answers in one answer publish. A frame is a count, then
//! that many entries; numbers are unsigned LEB128 varints (postcard's), text
//! and bytes are a varint length and the bytes.

use bytes::{BufMut, Bytes, BytesMut};

/// Topic levels of batch requests, after the service (or after
/// `_to/<instance>`): `<prefix>/<service>/_batch/1`. Two levels, so that a
/// server's one-level `<prefix>/<service>/+` filter does not match them: a
/// server that does not know batches never receives one.
pub const BATCH_LEVELS: &str = "_batch/1";

/// The method name a batch request is reported under (logs, answers to an
/// undecodable batch).
pub(crate) const BATCH_METHOD: &str = "_batch";

/// How a batch request's topic ends.
pub(crate) const BATCH_SUFFIX: &str = "/_batch/1";

/// Content Type of batch requests and batch answers.
pub const BATCH_CONTENT_TYPE: &str = "application/x-mqrpc-batch";

/// One call of a batch request.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(crate) struct CallEntry {
    pub method: String,
    pub correlation: Bytes,
    /// The caller's budget in ms (`mqrpc-timeout-ms` of a single request).
    pub timeout_ms: Option<u64>,
    /// The single request's Content Type (codec and schema fingerprint).
    pub content_type: Option<String>,
    pub traceparent: Option<String>,
    pub tracestate: Option<String>,
    pub args: Bytes,
}

/// One answer of a batch answer.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(crate) struct AnswerEntry {
    pub correlation: Bytes,
    /// `mqrpc-status` of a single answer (`None`: ok).
    pub status: Option<String>,
    pub content_type: Option<String>,
    pub payload: Bytes,
}

/// Most entries a frame may announce (a bound for what a decoder allocates).
const MAX_ENTRIES: u64 = 65_536;

pub(crate) fn encode_calls<'a>(entries: impl ExactSizeIterator<Item = CallRef<'a>>) -> Bytes {
    let mut out = BytesMut::with_capacity(64 * entries.len());
    put_varint(&mut out, entries.len() as u64);
    for e in entries {
        put_bytes(&mut out, e.method.as_bytes());
        put_bytes(&mut out, e.correlation);
        // 0: no budget; n + 1: a budget of n ms.
        put_varint(&mut out, e.timeout_ms.map_or(0, |ms| ms.saturating_add(1)));
        put_bytes(&mut out, e.content_type.unwrap_or("").as_bytes());
        put_bytes(&mut out, e.traceparent.unwrap_or("").as_bytes());
        put_bytes(&mut out, e.tracestate.unwrap_or("").as_bytes());
        put_bytes(&mut out, e.args);
    }
    out.freeze()
}

/// The fields of a [`CallEntry`], borrowed from the single request publish.
#[derive(Debug, Clone, Copy)]
pub(crate) struct CallRef<'a> {
    pub method: &'a str,
    pub correlation: &'a [u8],
    pub timeout_ms: Option<u64>,
    pub content_type: Option<&'a str>,
    pub traceparent: Option<&'a str>,
    pub tracestate: Option<&'a str>,
    pub args: &'a [u8],
}

/// The fields of an [`AnswerEntry`], borrowed from the single answer publish.
#[derive(Debug, Clone, Copy)]
pub(crate) struct AnswerRef<'a> {
    pub correlation: &'a [u8],
    pub status: Option<&'a str>,
    pub content_type: Option<&'a str>,
    pub payload: &'a [u8],
}

pub(crate) fn encode_answers<'a>(entries: impl ExactSizeIterator<Item = AnswerRef<'a>>) -> Bytes {
    let mut out = BytesMut::with_capacity(32 * entries.len());
    put_varint(&mut out, entries.len() as u64);
    for e in entries {
        put_bytes(&mut out, e.correlation);
        put_bytes(&mut out, e.status.unwrap_or("").as_bytes());
        put_bytes(&mut out, e.content_type.unwrap_or("").as_bytes());
        put_bytes(&mut out, e.payload);
    }
    out.freeze()
}

/// Reads a batch request. Entries share `frame`'s memory.
pub(crate) fn decode_calls(frame: &Bytes) -> Result<Vec<CallEntry>, String> {
    let mut r = Reader { frame, at: 0 };
    let count = r.count()?;
    let mut entries = Vec::with_capacity(count);
    for i in 0..count {
        let entry = (|| {
            Ok::<_, String>(CallEntry {
                method: r.text()?,
                correlation: r.bytes()?,
                timeout_ms: r.varint()?.checked_sub(1),
                content_type: Some(r.text()?).filter(|t| !t.is_empty()),
                traceparent: Some(r.text()?).filter(|t| !t.is_empty()),
                tracestate: Some(r.text()?).filter(|t| !t.is_empty()),
                args: r.bytes()?,
            })
        })()
        .map_err(|e| format!("batch entry {i}: {e}"))?;
        entries.push(entry);
    }
    r.end()?;
    Ok(entries)
}

/// Reads a batch answer. Entries share `frame`'s memory.
pub(crate) fn decode_answers(frame: &Bytes) -> Result<Vec<AnswerEntry>, String> {
    let mut r = Reader { frame, at: 0 };
    let count = r.count()?;
    let mut entries = Vec::with_capacity(count);
    for i in 0..count {
        let entry = (|| {
            Ok::<_, String>(AnswerEntry {
                correlation: r.bytes()?,
                status: Some(r.text()?).filter(|t| !t.is_empty()),
                content_type: Some(r.text()?).filter(|t| !t.is_empty()),
                payload: r.bytes()?,
            })
        })()
        .map_err(|e| format!("batch answer {i}: {e}"))?;
        entries.push(entry);
    }
    r.end()?;
    Ok(entries)
}

fn put_varint(out: &mut BytesMut, mut n: u64) {
    while n >= 0x80 {
        out.put_u8((n as u8) | 0x80);
        n >>= 7;
    }
    out.put_u8(n as u8);
}

fn put_bytes(out: &mut BytesMut, bytes: &[u8]) {
    put_varint(out, bytes.len() as u64);
    out.put_slice(bytes);
}

struct Reader<'a> {
    frame: &'a Bytes,
    at: usize,
}

impl Reader<'_> {
    fn varint(&mut self) -> Result<u64, String> {
        let mut n: u64 = 0;
        for shift in (0..64).step_by(7) {
            let byte = *self
                .frame
                .get(self.at)
                .ok_or("the frame ends inside a number")?;
            self.at += 1;
            let bits = u64::from(byte & 0x7f);
            if shift == 63 && bits > 1 {
                return Err("a number over 64 bits".into());
            }
            n |= bits << shift;
            if byte & 0x80 == 0 {
                return Ok(n);
            }
        }
        Err("a number over 64 bits".into())
    }

    fn count(&mut self) -> Result<usize, String> {
        let count = self.varint()?;
        if count > MAX_ENTRIES {
            return Err(format!("{count} entries (at most {MAX_ENTRIES})"));
        }
        // Each entry takes at least one byte per field.
        let left = (self.frame.len() - self.at) as u64;
        if count > left {
            return Err(format!("{count} entries announced in {left} bytes"));
        }
        Ok(count as usize)
    }

    fn bytes(&mut self) -> Result<Bytes, String> {
        let len = self.varint()?;
        let left = self.frame.len() - self.at;
        let len = usize::try_from(len)
            .ok()
            .filter(|len| *len <= left)
            .ok_or_else(|| format!("a field of {len} bytes with {left} bytes left"))?;
        let bytes = self.frame.slice(self.at..self.at + len);
        self.at += len;
        Ok(bytes)
    }

    fn text(&mut self) -> Result<String, String> {
        let bytes = self.bytes()?;
        String::from_utf8(bytes.to_vec()).map_err(|_| "a text field that is not UTF-8".into())
    }

    fn end(&self) -> Result<(), String> {
        match self.frame.len() - self.at {
            0 => Ok(()),
            extra => Err(format!("{extra} bytes after the last entry")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suffix_is_the_levels() {
        assert_eq!(BATCH_SUFFIX, format!("/{BATCH_LEVELS}"));
    }

    #[test]
    fn calls_round_trip() {
        let calls = [
            CallRef {
                method: "add",
                correlation: &[0, 0, 0, 0, 0, 0, 0, 7],
                timeout_ms: Some(10_000),
                content_type: None,
                traceparent: Some("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"),
                tracestate: None,
                args: &[4, 6],
            },
            CallRef {
                method: "divide",
                correlation: b"x",
                timeout_ms: Some(0),
                content_type: Some("application/json; schema=9f0c2a9e1b7d4c33"),
                traceparent: None,
                tracestate: None,
                args: b"{}",
            },
        ];
        let frame = encode_calls(calls.iter().copied());
        let decoded = decode_calls(&frame).unwrap();
        assert_eq!(decoded.len(), 2);
        assert_eq!(decoded[0].method, "add");
        assert_eq!(&decoded[0].correlation[..], &[0, 0, 0, 0, 0, 0, 0, 7]);
        assert_eq!(decoded[0].timeout_ms, Some(10_000));
        assert_eq!(decoded[0].content_type, None);
        assert!(decoded[0].traceparent.is_some());
        assert_eq!(&decoded[0].args[..], &[4, 6]);
        assert_eq!(decoded[1].timeout_ms, Some(0));
        assert_eq!(
            decoded[1].content_type.as_deref(),
            Some("application/json; schema=9f0c2a9e1b7d4c33")
        );
    }

    /// The bytes PROTOCOL.md shows for a batch of `add(2, 3)` and `add(4, 5)`.
    #[test]
    fn call_frame_matches_the_protocol_document() {
        let entry = |correlation: &'static [u8], args: &'static [u8]| CallRef {
            method: "add",
            correlation,
            timeout_ms: Some(10_000),
            content_type: None,
            traceparent: None,
            tracestate: None,
            args,
        };
        let frame = encode_calls(
            [
                entry(&[0, 0, 0, 0, 0, 0, 0, 7], &[4, 6]),
                entry(&[0, 0, 0, 0, 0, 0, 0, 8], &[8, 10]),
            ]
            .into_iter(),
        );
        let hex: Vec<String> = frame.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(
            hex.join(" "),
            "02 \
             03 61 64 64 08 00 00 00 00 00 00 00 07 91 4e 00 00 00 02 04 06 \
             03 61 64 64 08 00 00 00 00 00 00 00 08 91 4e 00 00 00 02 08 0a"
        );
        let answers = encode_answers(
            [
                AnswerRef {
                    correlation: &[0, 0, 0, 0, 0, 0, 0, 7],
                    status: None,
                    content_type: None,
                    payload: &[10],
                },
                AnswerRef {
                    correlation: &[0, 0, 0, 0, 0, 0, 0, 8],
                    status: Some("bad-request"),
                    content_type: Some("text/plain; charset=utf-8"),
                    payload: b"x",
                },
            ]
            .into_iter(),
        );
        let decoded = decode_answers(&answers).unwrap();
        assert_eq!(decoded[0].status, None);
        assert_eq!(&decoded[0].payload[..], &[10]);
        assert_eq!(decoded[1].status.as_deref(), Some("bad-request"));
        let hex: Vec<String> = answers.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(
            hex.join(" "),
            "02 08 00 00 00 00 00 00 00 07 00 00 01 0a \
             08 00 00 00 00 00 00 00 08 0b 62 61 64 2d 72 65 71 75 65 73 74 \
             19 74 65 78 74 2f 70 6c 61 69 6e 3b 20 63 68 61 72 73 65 74 3d 75 74 66 2d 38 01 78"
        );
    }

    /// The budgets PROTOCOL.md shows ("Batches"): each line's bytes are
    /// the varint of the budget its comment names, both ways; one more byte
    /// or bit than the document allows is an error.
    #[test]
    fn budget_varints_match_the_protocol_document() {
        let document = include_str!("../../../PROTOCOL.md");
        let block = document
            .split("<!-- budget varints -->")
            .nth(1)
            .expect("PROTOCOL.md marks the budget varints");
        let mut seen = 0;
        for line in block
            .lines()
            .filter(|l| !l.starts_with("```") && !l.is_empty())
        {
            let (hex, comment) = line.split_once("   ").expect("bytes, then a comment");
            let bytes: Vec<u8> = hex
                .split_whitespace()
                .map(|b| u8::from_str_radix(b, 16).unwrap())
                .collect();
            let budget = match comment.trim().split(" ms").next() {
                Some(none) if none.starts_with("none") => None,
                Some(ms) => Some(ms.replace(' ', "").parse::<u64>().unwrap()),
                None => unreachable!(),
            };
            let frame = Bytes::from(bytes.clone());
            let mut reader = Reader {
                frame: &frame,
                at: 0,
            };
            assert_eq!(reader.varint().unwrap().checked_sub(1), budget, "{line}");
            assert!(reader.end().is_ok(), "{line}");
            let mut encoded = BytesMut::new();
            put_varint(&mut encoded, budget.map_or(0, |ms| ms + 1));
            assert_eq!(&encoded[..], &bytes[..], "{line}");
            seen += 1;
        }
        assert_eq!(seen, 4);
        let read = |bytes: &[u8]| {
            let frame = Bytes::copy_from_slice(bytes);
            Reader {
                frame: &frame,
                at: 0,
            }
            .varint()
        };
        let over = [0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x02];
        assert!(read(&over).is_err(), "a tenth byte over 01");
        let long = [
            0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x00,
        ];
        assert!(read(&long).is_err(), "eleven bytes");
        assert_eq!(read(&[0x80, 0x00]), Ok(0), "more bytes than needed");
    }

    #[test]
    fn broken_frames_are_errors() {
        for frame in [
            &[][..],
            &[0x01],
            &[0x05, 0x00],
            &[
                0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01,
            ],
            &[0x01, 0x10, b'a'],
            &[0x00, 0x00],
        ] {
            assert!(
                decode_calls(&Bytes::copy_from_slice(frame)).is_err(),
                "{frame:?}"
            );
            assert!(
                decode_answers(&Bytes::copy_from_slice(frame)).is_err(),
                "{frame:?}"
            );
        }
        assert_eq!(decode_calls(&Bytes::from_static(&[0x00])).unwrap(), vec![]);
    }

    proptest::proptest! {
        /// Any bytes: an error or entries, never a panic.
        #[test]
        fn any_bytes_decode_without_panic(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..256)) {
            let frame = Bytes::from(bytes);
            let _ = decode_calls(&frame);
            let _ = decode_answers(&frame);
        }

        /// Frames a peer could send: valid ones round-trip; the same
        /// frames cut short or with one byte changed decode to an error
        /// or to entries, never a panic, and never to more entries than
        /// the frame has bytes (what a decoder allocates stays bounded by
        /// what arrived).
        #[test]
        fn valid_and_damaged_frames(
            calls in proptest::collection::vec(
                (
                    "[a-z_]{0,8}",
                    proptest::collection::vec(proptest::num::u8::ANY, 0..12),
                    proptest::option::of(0..u64::MAX),
                    proptest::option::of("[ -~]{1,24}"),
                    proptest::option::of("[ -~]{1,8}"),
                    proptest::collection::vec(proptest::num::u8::ANY, 0..24),
                ),
                0..12,
            ),
            cut in proptest::num::usize::ANY,
            flip in (proptest::num::usize::ANY, 1..=255u8),
        ) {
            let refs: Vec<CallRef<'_>> = calls
                .iter()
                .map(|(method, correlation, timeout_ms, content_type, traceparent, args)| CallRef {
                    method,
                    correlation,
                    timeout_ms: *timeout_ms,
                    content_type: content_type.as_deref(),
                    traceparent: traceparent.as_deref(),
                    tracestate: None,
                    args,
                })
                .collect();
            let frame = encode_calls(refs.iter().copied());
            let decoded = decode_calls(&frame).unwrap();
            proptest::prop_assert_eq!(decoded.len(), calls.len());
            for (entry, call) in decoded.iter().zip(&refs) {
                proptest::prop_assert_eq!(&entry.method, call.method);
                proptest::prop_assert_eq!(&entry.correlation[..], call.correlation);
                proptest::prop_assert_eq!(entry.timeout_ms, call.timeout_ms);
                proptest::prop_assert_eq!(entry.content_type.as_deref(), call.content_type);
                proptest::prop_assert_eq!(&entry.args[..], call.args);
            }
            let short = frame.slice(..cut % (frame.len() + 1));
            if let Ok(entries) = decode_calls(&short) {
                proptest::prop_assert!(entries.len() <= short.len());
            }
            let mut changed = frame.to_vec();
            let at = flip.0 % changed.len();
            changed[at] ^= flip.1;
            let changed = Bytes::from(changed);
            if let Ok(entries) = decode_calls(&changed) {
                proptest::prop_assert!(entries.len() <= changed.len());
            }
            if let Ok(entries) = decode_answers(&changed) {
                proptest::prop_assert!(entries.len() <= changed.len());
            }
        }
    }
}
