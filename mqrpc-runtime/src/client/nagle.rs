//! A warning for the most common slow setup: a broker on this machine
//! with Nagle's algorithm on its sockets (Mosquitto without
//! `set_tcp_nodelay true`), where every round trip waits for a delayed
//! ACK and costs ~40 ms instead of ~0.1 ms.

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering::Relaxed};
use std::time::Duration;

/// Round trips in a row in Nagle's band before the warning.
const STREAK: u32 = 5;

/// Whether a round trip looks like a delayed ACK (38–48 ms).
fn in_band(rtt: Duration) -> bool {
    (38..=48).contains(&rtt.as_millis())
}

/// Watches the round trips of one connection to a loopback broker and
/// warns once when [`STREAK`] in a row look like Nagle's delay; costs an
/// atomic load per call after that, or for a remote broker.
pub(crate) struct NagleWatch {
    streak: AtomicU32,
    done: AtomicBool,
}

impl NagleWatch {
    /// `loopback`: the broker is on this machine (elsewhere a 40 ms round
    /// trip may be the network's).
    pub(crate) fn new(loopback: bool) -> NagleWatch {
        NagleWatch {
            streak: AtomicU32::new(0),
            done: AtomicBool::new(!loopback),
        }
    }

    /// One answered call's round trip; true when this one warned.
    pub(crate) fn observe(&self, rtt: Duration, broker: impl FnOnce() -> String) -> bool {
        if self.done.load(Relaxed) {
            return false;
        }
        if !in_band(rtt) {
            self.streak.store(0, Relaxed);
            return false;
        }
        if self.streak.fetch_add(1, Relaxed) + 1 < STREAK || self.done.swap(true, Relaxed) {
            return false;
        }
        tracing::warn!(
            broker = %broker(),
            rtt = ?rtt,
            "{STREAK} round trips in a row took 38-48 ms on loopback: that is Nagle's \
             delay; set `set_tcp_nodelay true` in mosquitto.conf (or TCP_NODELAY on \
             the broker's sockets)"
        );
        true
    }
}

/// Whether `host` names this machine.
pub(crate) fn is_loopback(host: &str) -> bool {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

#[cfg(test)]
mod tests {
    use super::*;

    const NAGLE: Duration = Duration::from_millis(43);
    const FAST: Duration = Duration::from_micros(120);

    #[test]
    fn warns_once_after_a_streak_of_delayed_acks() {
        let watch = NagleWatch::new(true);
        let warned: Vec<bool> = (0..12).map(|_| watch.observe(NAGLE, String::new)).collect();
        assert_eq!(warned.iter().filter(|w| **w).count(), 1);
        assert!(warned[STREAK as usize - 1]);
    }

    #[test]
    fn a_fast_round_trip_breaks_the_streak() {
        let watch = NagleWatch::new(true);
        for _ in 0..3 {
            for _ in 0..STREAK - 1 {
                assert!(!watch.observe(NAGLE, String::new));
            }
            assert!(!watch.observe(FAST, String::new));
        }
        assert!(!watch.observe(Duration::from_millis(60), String::new));
    }

    #[test]
    fn a_remote_broker_is_never_suspected() {
        let watch = NagleWatch::new(false);
        assert!((0..20).all(|_| !watch.observe(NAGLE, String::new)));
        assert!(is_loopback("127.0.0.1") && is_loopback("localhost") && is_loopback("[::1]"));
        assert!(!is_loopback("broker.example.com") && !is_loopback("10.0.0.3"));
    }
}
