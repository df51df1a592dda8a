//! Retries of calls the server does not remember (PROTOCOL.md, "Retries").
//!
//! A client retry ([`ClientOptions::retry`](crate::ClientOptions::retry))
//! keeps its call's Correlation Data, so a retry of a call that ran here is
//! a duplicate and the duplicate table answers it from memory. A retry the
//! table does *not* know is either a call whose first attempt never reached
//! a server (run it), or one whose first attempt ran and was forgotten:
//! dropped early by the table's bounds, before a restart of this server, or
//! run by another instance of the share group. Running that again is what
//! retries must not do silently, so for a method not marked
//! `#[mqrpc(idempotent)]` the server runs an unknown retry only when it can
//! vouch that it would remember the first attempt:
//!
//! - the request is addressed to this instance (`_to/<instance>/`), or the
//!   server has no share group (no other instance took the first attempt
//!   in its place), **and**
//! - the first attempt was sent (`mqrpc-age-ms` ago, with
//!   [`MARGIN`] for the time a request travels) after the table last
//!   forgot an answered call early, or after it was created.
//!
//! Otherwise it answers `retry-refused` and does not run the method.

use std::time::{Duration, Instant};

use super::dispatch::Dispatcher;
use super::{Request, Service};

impl<S: Service> Dispatcher<S> {
    /// Why the retry `request`, of a call the duplicate table does not
    /// know, must not run ([`refusal`]), if it must not.
    pub(super) fn unknown_retry(&self, request: &Request, now: Instant) -> Option<String> {
        let idempotent = S::IDEMPOTENT.contains(&request.method.as_str());
        let since = self.calls().remembers_since();
        refusal(request, idempotent, self.shared, since, now)
    }
}

/// Allowance for the difference between the travel times of the first
/// attempt and of the retry, which the age cannot see: a forgetting that
/// happened this close to the first attempt's send still counts.
pub(crate) const MARGIN: Duration = Duration::from_secs(1);

/// Why the retry `request` of a call the table does not know must not run,
/// or `None` when it may: the method is idempotent, or the server vouches
/// that it would remember the first attempt (see the module).
pub(crate) fn refusal(
    request: &Request,
    idempotent: bool,
    shared: bool,
    remembers_since: Instant,
    now: Instant,
) -> Option<String> {
    if request.attempt < 2 || idempotent {
        return None;
    }
    let method = &request.method;
    let attempt = request.attempt;
    if shared && !request.direct {
        return Some(format!(
            "`{method}` (attempt {attempt}) is a retry of a call this server does not know; \
             another instance of its share group may have run it, so it was not run again \
             (mark the method #[mqrpc(idempotent)] if it may run twice)"
        ));
    }
    let first_sent = request
        .age_ms
        .and_then(|ms| now.checked_sub(Duration::from_millis(ms) + MARGIN));
    match first_sent {
        Some(first_sent) if first_sent > remembers_since => None,
        _ => Some(format!(
            "`{method}` (attempt {attempt}, first sent {} ms ago) is a retry of a call this server \
             may have forgotten (it has forgotten answered calls early, or started, {} ms ago), \
             so it was not run again (mark the method #[mqrpc(idempotent)] if it may run twice)",
            request.age_ms.map_or("?".to_string(), |ms| ms.to_string()),
            now.saturating_duration_since(remembers_since).as_millis(),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use rumqttc::v5::mqttbytes::v5::{Publish, PublishProperties};

    fn retry(topic: &str, attempt: Option<&str>, age: Option<&str>, now: Instant) -> Request {
        let mut user = Vec::new();
        if let Some(attempt) = attempt {
            user.push(("mqrpc-attempt".to_string(), attempt.to_string()));
        }
        if let Some(age) = age {
            user.push(("mqrpc-age-ms".to_string(), age.to_string()));
        }
        let properties = PublishProperties {
            user_properties: user,
            ..PublishProperties::default()
        };
        let publish = Publish::new(
            topic,
            rumqttc::v5::mqttbytes::QoS::AtLeastOnce,
            Bytes::new(),
            Some(properties),
        );
        Request::from_publish(publish, now)
    }

    #[test]
    fn unknown_retries_run_only_when_the_server_can_vouch() {
        let now = Instant::now() + Duration::from_secs(3600);
        let long_ago = now - Duration::from_secs(600);
        let recently = now - Duration::from_millis(500);
        let any = "mqrpc/Svc/charge";
        let direct = "mqrpc/Svc/_to/i1/charge";
        assert!(retry(direct, Some("2"), Some("10"), now).direct);
        assert!(!retry(any, Some("2"), Some("10"), now).direct);
        // First attempts and idempotent methods always run.
        let first = retry(any, None, None, now);
        assert_eq!(first.attempt, 1);
        assert!(refusal(&first, false, true, recently, now).is_none());
        let second = retry(any, Some("2"), Some("10"), now);
        assert!(refusal(&second, true, true, recently, now).is_none());
        // A share group: another instance may have run it.
        let refused = refusal(&second, false, true, long_ago, now).unwrap();
        assert!(refused.contains("share group"), "{refused}");
        // Alone, or addressed to this instance: by the age.
        assert!(refusal(&second, false, false, long_ago, now).is_none());
        let direct_retry = retry(direct, Some("3"), Some("10"), now);
        assert!(refusal(&direct_retry, false, true, long_ago, now).is_none());
        let refused = refusal(&direct_retry, false, true, recently, now).unwrap();
        assert!(refused.contains("forgotten"), "{refused}");
        // Forgot within the margin of the first send: refused.
        let old = retry(direct, Some("2"), Some("599500"), now);
        assert!(refusal(&old, false, true, long_ago, now).is_some());
        // No or unreadable age: cannot vouch.
        for age in [None, Some("soon")] {
            let blind = retry(direct, Some("2"), age, now);
            assert!(refusal(&blind, false, true, long_ago, now).is_some());
        }
    }
}
