//! Chunked transfers (PROTOCOL.md, "Chunked transfer"): the `mqrpc-chunk`
//! header of each chunk, the settings of a transfer ([`Chunking`]), and
//! the reassembly of a payload from its chunks with its grants
//! ([`Assembly`]), the same on both sides.

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::Bytes;

/// User property on every chunk of a chunked transfer:
/// `<index>/<count>/<total bytes>`, e.g. `0/3/10`.
pub const CHUNK_PROPERTY: &str = "mqrpc-chunk";

/// User property on grants: the sender may send the chunks with an index
/// below this number.
pub const CHUNK_GRANT_PROPERTY: &str = "mqrpc-chunk-grant";

/// Largest window a receiver grants (and a client's channel of incoming
/// chunks holds).
pub(crate) const MAX_WINDOW: u32 = 64;

/// How payloads too large for one message travel: the size of each chunk,
/// how many chunks a receiver lets the sender have unacknowledged (its
/// window), and how long a server keeps a transfer that has no deadline
/// and receives nothing (PROTOCOL.md, "Chunked transfer"). Set on
/// [`ClientOptions::chunking`](crate::ClientOptions::chunking) and
/// [`ServerOptions::chunking`](crate::ServerOptions::chunking).
///
/// A payload travels in chunks when it is over `size` or when its one
/// message would exceed the broker's Maximum Packet Size; each chunk is
/// within both. Smaller payloads travel as one message, as always.
///
/// ```
/// # use mqrpc_runtime as mqrpc;
/// use mqrpc::Chunking;
/// let chunking = Chunking::default().size(256 * 1024).window(16);
/// assert_eq!(chunking.get_size(), 256 * 1024);
/// assert_eq!(chunking.get_window(), 16);
/// assert_eq!(Chunking::default().get_size(), 1024 * 1024);
/// assert_eq!(Chunking::default().window(1_000).get_window(), 64, "at most 64");
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Chunking {
    size: usize,
    window: u32,
    idle: Duration,
}

impl Default for Chunking {
    fn default() -> Self {
        Chunking {
            size: 1024 * 1024,
            window: 8,
            idle: Duration::from_secs(30),
        }
    }
}

impl Chunking {
    /// Payload bytes per chunk, at most (default 1 MiB; at least 1 KiB).
    pub fn size(mut self, bytes: usize) -> Self {
        self.size = bytes.max(1024);
        self
    }

    /// Chunks the sender may have beyond those received in order (default
    /// 8, from 1 to 64): what a transfer can hold in the broker.
    pub fn window(mut self, chunks: u32) -> Self {
        self.window = chunks.clamp(1, MAX_WINDOW);
        self
    }

    /// How long a server keeps a transfer without deadline that receives
    /// no chunk (or, sending an answer, no grant): default 30 s.
    pub fn idle(mut self, idle: Duration) -> Self {
        self.idle = idle;
        self
    }

    /// The chunk size.
    pub fn get_size(&self) -> usize {
        self.size
    }

    /// The window, in chunks.
    pub fn get_window(&self) -> u32 {
        self.window
    }

    /// The idle timeout of a server's transfers.
    pub fn get_idle(&self) -> Duration {
        self.idle
    }

    /// The payload bytes of each chunk, given what a PUBLISH costs besides
    /// its payload (`overhead`) and the broker's Maximum Packet Size.
    pub(crate) fn slice_size(&self, overhead: usize, broker_max: Option<u32>) -> usize {
        let room = broker_max.map_or(usize::MAX, |max| (max as usize).saturating_sub(overhead));
        self.size.min(room)
    }
}

/// The `mqrpc-chunk` value of one chunk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ChunkHeader {
    pub index: u32,
    pub count: u32,
    pub total: u64,
}

impl ChunkHeader {
    /// Reads `<index>/<count>/<total>`: decimal digits only, index < count.
    pub fn parse(value: &str) -> Result<ChunkHeader, String> {
        let bad =
            || format!("malformed {CHUNK_PROPERTY} `{value}`: expected <index>/<count>/<total>");
        let mut parts = value.split('/');
        let mut number = |max: u64| -> Result<u64, String> {
            let part = parts.next().ok_or_else(bad)?;
            if part.is_empty() || part.len() > 20 || !part.bytes().all(|b| b.is_ascii_digit()) {
                return Err(bad());
            }
            part.parse::<u64>()
                .ok()
                .filter(|n| *n <= max)
                .ok_or_else(bad)
        };
        let index = number(u32::MAX.into())? as u32;
        let count = number(u32::MAX.into())? as u32;
        let total = number(u64::MAX)?;
        if parts.next().is_some() || count == 0 || index >= count {
            return Err(bad());
        }
        Ok(ChunkHeader {
            index,
            count,
            total,
        })
    }

    /// The property's value.
    pub fn value(&self) -> String {
        format!("{}/{}/{}", self.index, self.count, self.total)
    }
}

/// What one more chunk did to a transfer.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Progress {
    /// Kept; nothing to tell the sender yet.
    Kept,
    /// Kept; the sender may now send the chunks below this index.
    Grant(u32),
    /// A chunk already held (a redelivered copy): dropped.
    Duplicate,
    /// The last missing chunk: the whole payload.
    Done(Bytes),
}

/// The reassembly of one payload: the chunks from index 0 without a gap
/// appended, those after a gap kept aside (at most a window of them), and
/// the grants the receiver owes the sender.
#[derive(Debug)]
pub(crate) struct Assembly {
    count: u32,
    total: u64,
    /// Chunks held from index 0 without a gap.
    next: u32,
    assembled: Vec<u8>,
    ahead: BTreeMap<u32, Bytes>,
    ahead_bytes: usize,
    window: u32,
    /// The latest grant sent: chunks below it may come.
    granted: u32,
    /// `next` when the latest grant was sent.
    granted_at: u32,
    /// The most chunks held after a gap at once, and the furthest a chunk
    /// came beyond those held in order: at most the window.
    pub peak_ahead: u32,
}

impl Assembly {
    /// A transfer opened by a chunk with `header` (any chunk of it: the
    /// sizes are the same on all). `total` must already be within the
    /// receiver's limit.
    pub fn new(header: &ChunkHeader, window: u32) -> Assembly {
        Assembly {
            count: header.count,
            total: header.total,
            next: 0,
            // Within the receiver's limit, checked before.
            assembled: Vec::with_capacity(usize::try_from(header.total).unwrap_or(0)),
            ahead: BTreeMap::new(),
            ahead_bytes: 0,
            window: window.clamp(1, MAX_WINDOW),
            granted: 1,
            granted_at: 0,
            peak_ahead: 0,
        }
    }

    /// The bytes this transfer holds now.
    pub fn held_bytes(&self) -> usize {
        self.assembled.len() + self.ahead_bytes
    }

    /// Takes one chunk.
    pub fn accept(&mut self, header: &ChunkHeader, bytes: Bytes) -> Result<Progress, String> {
        if header.count != self.count || header.total != self.total {
            return Err(format!(
                "chunk {} says {}/{}, the transfer is {} chunks of {} bytes",
                header.index, header.count, header.total, self.count, self.total
            ));
        }
        let index = header.index;
        if index < self.next || self.ahead.contains_key(&index) {
            return Ok(Progress::Duplicate);
        }
        if index >= self.granted {
            return Err(format!(
                "chunk {index} is beyond the window: only chunks below {} were granted",
                self.granted
            ));
        }
        let held = self.held_bytes() as u64;
        if held + bytes.len() as u64 > self.total {
            return Err(format!(
                "the chunks hold more than the {} bytes the transfer announced",
                self.total
            ));
        }
        self.peak_ahead = self.peak_ahead.max(index + 1 - self.next);
        if index == self.next {
            self.assembled.extend_from_slice(&bytes);
            self.next += 1;
            while let Some(bytes) = self.ahead.remove(&self.next) {
                self.ahead_bytes -= bytes.len();
                self.assembled.extend_from_slice(&bytes);
                self.next += 1;
            }
        } else {
            self.ahead_bytes += bytes.len();
            self.ahead.insert(index, bytes);
            self.peak_ahead = self.peak_ahead.max(self.ahead.len() as u32);
        }
        if self.next == self.count {
            if self.assembled.len() as u64 != self.total {
                return Err(format!(
                    "the {} chunks hold {} bytes, the transfer announced {}",
                    self.count,
                    self.assembled.len(),
                    self.total
                ));
            }
            return Ok(Progress::Done(Bytes::from(std::mem::take(
                &mut self.assembled,
            ))));
        }
        // The sender sent everything the latest grant allows, in order,
        // yet one before is missing: it is lost.
        let last_allowed = self.granted.min(self.count) - 1;
        if self.next < last_allowed && self.ahead.contains_key(&last_allowed) {
            return Err(format!(
                "chunk {} of {} was lost: chunk {last_allowed}, the last one granted, came without it",
                self.next, self.count
            ));
        }
        let step = (self.window / 2).max(1);
        let due = self.next - self.granted_at >= step || self.granted_at == 0;
        let grant = (self.next.saturating_add(self.window)).min(self.count);
        if due && grant > self.granted {
            self.granted = grant;
            self.granted_at = self.next;
            return Ok(Progress::Grant(grant));
        }
        Ok(Progress::Kept)
    }
}

/// How a payload of `len` bytes is cut: `count` chunks of `size` bytes,
/// the last one shorter.
pub(crate) fn cut(len: usize, size: usize) -> u32 {
    u32::try_from(len.div_ceil(size.max(1)).max(1)).unwrap_or(u32::MAX)
}

/// The properties of a grant to a client: the call's Correlation Data,
/// the grant, and the instance where the next chunks go.
pub(crate) fn grant_properties(
    correlation: Option<Bytes>,
    n: u32,
    instance: &str,
) -> rumqttc::v5::mqttbytes::v5::PublishProperties {
    rumqttc::v5::mqttbytes::v5::PublishProperties {
        correlation_data: correlation,
        user_properties: vec![
            (CHUNK_GRANT_PROPERTY.to_string(), n.to_string()),
            (super::INSTANCE_PROPERTY.to_string(), instance.to_string()),
        ],
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(index: u32, count: u32, total: u64) -> ChunkHeader {
        ChunkHeader {
            index,
            count,
            total,
        }
    }

    #[test]
    fn headers_parse_strictly() {
        assert_eq!(ChunkHeader::parse("0/3/10"), Ok(header(0, 3, 10)));
        assert_eq!(header(2, 3, 10).value(), "2/3/10");
        for bad in [
            "",
            "0/3",
            "0/3/10/1",
            "3/3/10",
            "0/0/0",
            "-1/3/10",
            "+0/3/10",
            " 0/3/10",
            "0/3/x",
            "0/4294967296/1",
            "0/3/99999999999999999999",
        ] {
            assert!(ChunkHeader::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn in_order_chunks_are_granted_and_assembled() {
        let payload: Vec<u8> = (0..100u8).collect();
        let count = cut(payload.len(), 10);
        let mut assembly = Assembly::new(&header(0, count, 100), 4);
        let mut grants = Vec::new();
        for (i, piece) in payload.chunks(10).enumerate() {
            match assembly
                .accept(&header(i as u32, count, 100), Bytes::copy_from_slice(piece))
                .unwrap()
            {
                Progress::Grant(n) => grants.push((i, n)),
                Progress::Done(bytes) => assert_eq!(&bytes[..], &payload[..]),
                Progress::Kept => {}
                Progress::Duplicate => panic!("no copies were sent"),
            }
        }
        // After chunk 0, then every window / 2 chunks.
        assert_eq!(grants, [(0, 5), (2, 7), (4, 9), (6, 10)]);
        assert!(assembly.peak_ahead <= 4);
    }

    #[test]
    fn a_lost_chunk_is_named_once_the_sender_sent_all_it_may() {
        let mut assembly = Assembly::new(&header(0, 5, 5), 8);
        let one = || Bytes::from_static(b"x");
        assert_eq!(
            assembly.accept(&header(0, 5, 5), one()),
            Ok(Progress::Grant(5))
        );
        assert_eq!(assembly.accept(&header(1, 5, 5), one()), Ok(Progress::Kept));
        assert_eq!(assembly.accept(&header(3, 5, 5), one()), Ok(Progress::Kept));
        let error = assembly.accept(&header(4, 5, 5), one()).unwrap_err();
        assert!(error.contains("chunk 2 of 5 was lost"), "{error}");
    }

    #[test]
    fn chunks_beyond_the_grant_or_the_total_are_refused() {
        let mut assembly = Assembly::new(&header(0, 3, 3), 8);
        let error = assembly
            .accept(&header(1, 3, 3), Bytes::from_static(b"x"))
            .unwrap_err();
        assert!(error.contains("beyond the window"), "{error}");
        let mut assembly = Assembly::new(&header(0, 2, 3), 8);
        let error = assembly
            .accept(&header(0, 2, 3), Bytes::from_static(b"abcd"))
            .unwrap_err();
        assert!(error.contains("more than the 3 bytes"), "{error}");
        let mut assembly = Assembly::new(&header(0, 1, 3), 8);
        let error = assembly
            .accept(&header(0, 1, 3), Bytes::from_static(b"ab"))
            .unwrap_err();
        assert!(error.contains("hold 2 bytes"), "{error}");
        let mut assembly = Assembly::new(&header(0, 2, 3), 8);
        let error = assembly
            .accept(&header(0, 3, 3), Bytes::from_static(b"ab"))
            .unwrap_err();
        assert!(error.contains("the transfer is 2 chunks"), "{error}");
    }

    proptest::proptest! {
        /// Any split of any payload, delivered in any order the grants
        /// allow, with copies: the reassembly never panics, never yields
        /// other bytes than the payload, and never holds more than a window
        /// of chunks after a gap.
        #[test]
        fn any_split_order_and_copies_reassemble_the_payload(
            payload in proptest::collection::vec(proptest::num::u8::ANY, 0..600),
            cuts in proptest::collection::vec(0usize..600, 0..12),
            window in 1u32..10,
            shuffle in proptest::collection::vec(proptest::num::u64::ANY, 0..64),
            copies in proptest::collection::vec(0usize..64, 0..8),
        ) {
            let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c.min(payload.len())).collect();
            cuts.sort_unstable();
            let mut pieces = Vec::new();
            let mut start = 0;
            for cut in cuts.into_iter().chain([payload.len()]) {
                pieces.push(Bytes::copy_from_slice(&payload[start..cut]));
                start = cut;
            }
            let count = pieces.len() as u32;
            let total = payload.len() as u64;
            let mut assembly = Assembly::new(&header(0, count, total), window);
            let mut granted = 1u32;
            let mut sent = 0u32;
            let mut in_flight: Vec<u32> = Vec::new();
            let mut draws = shuffle.into_iter();
            let mut done = None;
            let mut steps = 0;
            while done.is_none() && steps < 10_000 {
                steps += 1;
                while sent < granted.min(count) {
                    in_flight.push(sent);
                    sent += 1;
                }
                if in_flight.is_empty() {
                    break;
                }
                // Any order among the chunks in flight, and some copies.
                let pick = draws.next().unwrap_or(0) as usize % in_flight.len();
                let index = in_flight.remove(pick);
                if copies.contains(&(steps as usize)) {
                    in_flight.push(index);
                }
                let piece = pieces[index as usize].clone();
                match assembly.accept(&header(index, count, total), piece) {
                    Ok(Progress::Grant(n)) => {
                        proptest::prop_assert!(n > granted);
                        granted = n;
                    }
                    Ok(Progress::Done(bytes)) => done = Some(bytes),
                    Ok(Progress::Kept | Progress::Duplicate) => {}
                    // Reordering can look like a loss (the last granted
                    // chunk before an earlier one): a clean error, never
                    // wrong bytes.
                    Err(reason) => {
                        proptest::prop_assert!(reason.contains("lost"), "{}", reason);
                        return Ok(());
                    }
                }
                proptest::prop_assert!(assembly.peak_ahead <= window.max(1));
            }
            let bytes = done.expect("every chunk was delivered");
            proptest::prop_assert_eq!(&bytes[..], &payload[..]);
        }

        /// Chunks with arbitrary headers and sizes never panic a transfer
        /// and never make it hold more than it announced.
        #[test]
        fn arbitrary_chunks_never_panic(
            chunks in proptest::collection::vec((0u32..20, 1u32..20, 0u64..100, 0usize..40), 1..40),
        ) {
            let (_, count, total, _) = chunks[0];
            let mut assembly = Assembly::new(&header(0, count, total), 4);
            for (index, count, total, len) in chunks {
                let result = assembly.accept(&header(index, count, total), Bytes::from(vec![7u8; len]));
                proptest::prop_assert!(assembly.held_bytes() as u64 <= assembly.total);
                if let Ok(Progress::Done(bytes)) = result {
                    proptest::prop_assert_eq!(bytes.len() as u64, assembly.total);
                    break;
                }
            }
        }
    }
}
