//! Settings of a [`Transport`]: identity, keep-alive, session, limits,
//! reconnect delays and merging.

use std::time::Duration;

use crate::{Coalesce, CoalesceLimits, LastWill};
#[cfg(doc)]
use crate::{Transport, TransportError};

/// Settings of a [`Transport`].
#[derive(Debug, Clone)]
pub struct TransportConfig {
    /// MQTT client identifier.
    pub client_id: String,
    /// Keep-alive sent in CONNECT (zero disables PINGREQ). A server keep-alive
    /// in CONNACK replaces it. No PINGRESP within one more interval means the
    /// link is dead: the transport reconnects.
    pub keep_alive: Duration,
    /// How long one connection attempt may take, from opening the stream
    /// to the CONNACK; a peer that accepts but never answers fails the
    /// attempt once it has passed.
    pub connect_timeout: Duration,
    /// Clean Start on the first connection only; reconnects always ask to
    /// resume the session.
    pub clean_start: bool,
    /// Session Expiry Interval in seconds (0: the session ends with the link,
    /// so resume is impossible).
    pub session_expiry: u32,
    /// User name and password.
    pub credentials: Option<(String, String)>,
    /// Last Will.
    pub last_will: Option<LastWill>,
    /// Largest packet we accept (sent as Maximum Packet Size).
    pub max_packet_size: u32,
    /// How many unacked QoS 1/2 publishes the broker may send us (sent as
    /// Receive Maximum).
    pub receive_maximum: u16,
    /// Delays between reconnect attempts; `None`: no reconnect, the transport
    /// ends with the first lost link.
    pub reconnect: Option<Backoff>,
    /// Ask the server for Response Information in CONNECT.
    pub request_response_information: bool,
    /// Merges publishes queued together (see [`Coalesce`]); `None`: every
    /// publish goes alone.
    pub coalescer: Option<std::sync::Arc<dyn Coalesce>>,
    /// Bounds of a merged publish.
    pub coalesce_limits: CoalesceLimits,
    /// When a reconnect finds the session gone, send unacknowledged QoS 1
    /// publishes again as new ones (`true`), or end them with
    /// [`TransportError::SessionLost`] (`false`: for senders that have
    /// already given up on them, e.g. calls failed at the link loss).
    pub resend_after_session_loss: bool,
}

impl TransportConfig {
    /// Defaults: keep-alive 30 s, connect timeout 10 s, clean start,
    /// session expiry 0, 1 MiB
    /// packets, Receive Maximum 100, reconnect after 100 ms doubling up to 5 s,
    /// no Response Information asked, QoS 1 resent after a session loss.
    pub fn new(client_id: impl Into<String>) -> Self {
        TransportConfig {
            client_id: client_id.into(),
            keep_alive: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(10),
            clean_start: true,
            session_expiry: 0,
            credentials: None,
            last_will: None,
            max_packet_size: 1024 * 1024,
            receive_maximum: 100,
            reconnect: Some(Backoff {
                min: Duration::from_millis(100),
                max: Duration::from_secs(5),
            }),
            request_response_information: false,
            coalescer: None,
            coalesce_limits: CoalesceLimits {
                max_parts: 64,
                max_bytes: 64 * 1024,
            },
            resend_after_session_loss: true,
        }
    }
}

/// Reconnect delays: `min` after the first failure, doubled per further
/// failure up to `max`, back to `min` after a CONNACK.
#[derive(Debug, Clone, Copy)]
pub struct Backoff {
    /// First delay.
    pub min: Duration,
    /// Longest delay.
    pub max: Duration,
}
