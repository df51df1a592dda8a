//! Packet identifiers for outgoing QoS 1/2 PUBLISH, SUBSCRIBE and UNSUBSCRIBE.
//!
//! An id is taken when a packet goes on the wire and given back only when its
//! exchange is complete (PUBACK, PUBCOMP, refusing PUBREC, SUBACK, UNSUBACK).
//! The set is kept across reconnects, so an id still awaiting its ack is never
//! handed out again, whatever the connection.

/// Bitset of the 65 535 ids (0 is never used) with a rotating cursor, so ids
/// are reused as late as possible.
pub(crate) struct PacketIds {
    used: Box<[u64; 1024]>,
    next: u16,
    in_use: usize,
}

impl PacketIds {
    pub(crate) fn new() -> Self {
        PacketIds {
            used: Box::new([0; 1024]),
            next: 0,
            in_use: 0,
        }
    }

    /// A free id, or `None` when all 65 535 are in flight.
    pub(crate) fn take(&mut self) -> Option<u16> {
        if self.in_use >= u16::MAX as usize {
            return None;
        }
        loop {
            self.next = self.next.wrapping_add(1);
            let id = self.next;
            if id != 0 && !self.is_used(id) {
                self.used[id as usize / 64] |= 1 << (id % 64);
                self.in_use += 1;
                return Some(id);
            }
        }
    }

    /// Gives `id` back.
    pub(crate) fn release(&mut self, id: u16) {
        if self.is_used(id) {
            self.used[id as usize / 64] &= !(1 << (id % 64));
            self.in_use -= 1;
        }
    }

    pub(crate) fn is_used(&self, id: u16) -> bool {
        self.used[id as usize / 64] & (1 << (id % 64)) != 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn never_hands_out_an_id_in_use() {
        let mut ids = PacketIds::new();
        let first = ids.take().unwrap();
        // Wrap around the whole space: `first` stays taken.
        for _ in 0..70_000 {
            let id = ids.take().unwrap();
            assert_ne!(id, first);
            assert_ne!(id, 0);
            ids.release(id);
        }
        ids.release(first);
        assert!(!ids.is_used(first));
    }

    #[test]
    fn exhausted_then_freed() {
        let mut ids = PacketIds::new();
        for _ in 0..u16::MAX {
            ids.take().unwrap();
        }
        assert_eq!(ids.take(), None);
        ids.release(77);
        assert_eq!(ids.take(), Some(77));
    }
}
