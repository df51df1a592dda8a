//! Merging publishes that were queued together into one (mqrpc's batch
//! frames): the loop groups what one pass drained by the [`Coalesce`] key
//! and asks it to merge each group; the broker's answer to the merged
//! publish goes to every part. A merged publish the broker refuses is split
//! again and its parts sent one by one, each with its own answer, so merging
//! never changes what a sender learns.

use crate::{AckTo, OutgoingPublish, ReasonCode, TransportError};

/// Decides which publishes may travel together and builds the publish that
/// carries them. Only publishes with [`OutgoingPublish::coalesce`] set are
/// offered.
pub trait Coalesce: Send + Sync + std::fmt::Debug + 'static {
    /// Publishes with equal keys may be merged; `None`: send this one alone.
    fn key(&self, publish: &OutgoingPublish) -> Option<u64>;

    /// One publish carrying all `parts` (two or more, one key), or `None` to
    /// send them one by one.
    fn merge(&self, parts: &[&OutgoingPublish]) -> Option<OutgoingPublish>;

    /// Whether an incoming publish carries several parts (a merged one from
    /// the peer): handing it out wakes several tasks, whose publishes may
    /// then travel together, as after a read that brought several publishes.
    fn carries_several(&self, _incoming: &rumqttc::v5::mqttbytes::v5::Publish) -> bool {
        false
    }
}

/// Bounds of one merged publish.
#[derive(Debug, Clone, Copy)]
pub struct CoalesceLimits {
    /// Most parts in one merged publish.
    pub max_parts: usize,
    /// Most payload bytes (sum of the parts') in one merged publish.
    pub max_bytes: usize,
}

/// Who waits for a publish's answer: one sender, or the senders of the parts
/// of a merged publish (kept to be sent alone if the broker refuses it).
pub(crate) enum Replies {
    One(AckTo),
    Merged(Vec<(OutgoingPublish, AckTo)>),
}

impl Replies {
    /// Hands out the answer. A merged publish that was refused (or is too
    /// large for the server) gives back its parts instead, to be sent alone.
    pub(crate) fn resolve(
        self,
        answer: Result<ReasonCode, TransportError>,
    ) -> Option<Vec<(OutgoingPublish, AckTo)>> {
        match self {
            Replies::One(reply) => {
                reply.send(answer);
                None
            }
            Replies::Merged(parts) => {
                let refused = match &answer {
                    Ok(ReasonCode(code)) => *code == 0x10 || *code >= 0x80,
                    Err(TransportError::Refused(_) | TransportError::PacketTooLarge { .. }) => true,
                    Err(_) => false,
                };
                if refused {
                    return Some(parts);
                }
                for (_, reply) in parts {
                    reply.send(answer.clone());
                }
                None
            }
        }
    }
}

/// Publishes that go out together: their key, payload bytes, and parts.
type Group = (Option<u64>, usize, Vec<(OutgoingPublish, AckTo)>);

/// Groups `drained` (in queue order) by key and merges each group within
/// `limits`; everything else passes through alone. A group keeps the place
/// of its first part.
pub(crate) fn coalesce(
    coalescer: &dyn Coalesce,
    limits: CoalesceLimits,
    drained: Vec<(OutgoingPublish, AckTo)>,
) -> Vec<(OutgoingPublish, Replies)> {
    if drained.len() < 2 {
        return drained
            .into_iter()
            .map(|(p, r)| (p, Replies::One(r)))
            .collect();
    }
    // Groups in order of first appearance; `None` key: a group of one.
    let mut groups: Vec<Group> = Vec::new();
    for (publish, reply) in drained {
        let key = publish.coalesce.then(|| coalescer.key(&publish)).flatten();
        let size = publish.payload.len();
        let open = key.and_then(|key| {
            groups.iter().rposition(|(k, bytes, parts)| {
                *k == Some(key)
                    && parts.len() < limits.max_parts
                    && bytes + size <= limits.max_bytes
            })
        });
        match open {
            Some(i) => {
                groups[i].1 += size;
                groups[i].2.push((publish, reply));
            }
            None => groups.push((key, size, vec![(publish, reply)])),
        }
    }
    let mut out = Vec::with_capacity(groups.len());
    for (_, _, mut parts) in groups {
        if parts.len() == 1 {
            let (p, r) = parts.pop().expect("one part");
            out.push((p, Replies::One(r)));
            continue;
        }
        let publishes: Vec<&OutgoingPublish> = parts.iter().map(|(p, _)| p).collect();
        let merged = coalescer.merge(&publishes);
        match merged {
            Some(merged) => out.push((merged, Replies::Merged(parts))),
            None => out.extend(parts.into_iter().map(|(p, r)| (p, Replies::One(r)))),
        }
    }
    out
}
