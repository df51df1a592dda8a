//! The topic scheme, the one place topics and filters are built (PROTOCOL.md,
//! "Topics"): a service's topics all start with its **base**
//! `<prefix>/<service>/`, those of one instance with
//! `<prefix>/<service>/_to/<instance>/`; a request goes to `<base><method>`,
//! a broadcast to `<service base>_all/<method>`, a batch to
//! `<base>_batch/1`, a cancel to `<base>_cancel`; answers to
//! `<prefix>/_reply/<client id>`, notices to `<reply prefix>/_gone/<instance>`.
//! Discovery is the broadcast of the service named [`ANY_SERVICE`]:
//! `<prefix>/_all/_all/<method>`. Plus MQTT filter matching, used to route
//! incoming publishes to the client or to a server.

use crate::protocol::{
    ANY_SERVICE, BATCH_LEVELS, BROADCAST_LEVEL, CANCEL_METHOD, GONE_LEVEL, INSTANCE_LEVEL,
    REPLY_LEVEL,
};
use crate::Error;

/// `<prefix>/<service>/`: how every topic of a service starts.
pub(crate) fn service_base(prefix: &str, service: &str) -> String {
    format!("{prefix}/{service}/")
}

/// `<service base>_to/<instance>/`: how the topics of one instance start.
pub(crate) fn instance_base(service_base: &str, instance: &str) -> String {
    format!("{service_base}{INSTANCE_LEVEL}/{instance}/")
}

/// A request (or cancel, or credit) to a target: `<base><method>`, the base
/// a service's or an instance's.
pub(crate) fn method_topic(base: &str, method: &str) -> String {
    [base, method].concat()
}

/// A broadcast request: `<service base>_all/<method>`, reaching every
/// instance of the service (of every service, under [`ANY_SERVICE`]).
pub(crate) fn broadcast_topic(service_base: &str, method: &str) -> String {
    format!("{service_base}{BROADCAST_LEVEL}/{method}")
}

/// A batch request to a target: `<base>_batch/1`.
pub(crate) fn batch_topic(base: &str) -> String {
    [base, BATCH_LEVELS].concat()
}

/// Filter a server subscribes to: every method of the service, so it can
/// answer unknown methods too instead of leaving the caller to time out.
pub(crate) fn service_filter(prefix: &str, service: &str) -> String {
    method_topic(&service_base(prefix, service), "+")
}

/// Topic of a request: `<prefix>/<service>/<method>`, which
/// [`service_filter`] matches.
pub(crate) fn request_topic(prefix: &str, service: &str, method: &str) -> String {
    method_topic(&service_base(prefix, service), method)
}

/// `filter` as the shared subscription of `group`
/// (`$share/<group>/<filter>`), or alone without a group.
pub(crate) fn shared(group: Option<&str>, filter: &str) -> String {
    match group {
        Some(group) => format!("$share/{group}/{filter}"),
        None => filter.to_string(),
    }
}

/// Every filter a server of `service` subscribes (PROTOCOL.md, "Topics"):
/// first those taking requests, at the server's QoS — the service's
/// methods (in `group`), this instance's, broadcasts, discovery, and the
/// batch topics of the service (in `group`) and of the instance — then,
/// for a server in a group, the cancel filter (QoS 0), so that every
/// instance hears every cancel.
pub(crate) fn server_filters(
    prefix: &str,
    service: &str,
    instance: &str,
    group: Option<&str>,
) -> (Vec<String>, Option<String>) {
    let base = service_base(prefix, service);
    let mine = instance_base(&base, instance);
    let requests = vec![
        shared(group, &service_filter(prefix, service)),
        method_topic(&mine, "+"),
        broadcast_topic(&base, "+"),
        broadcast_topic(&service_base(prefix, ANY_SERVICE), "+"),
        shared(group, &batch_topic(&base)),
        batch_topic(&mine),
    ];
    let cancels = group.map(|_| method_topic(&base, CANCEL_METHOD));
    (requests, cancels)
}

/// The one stable response topic of a client.
pub(crate) fn reply_topic(prefix: &str, client_id: &str) -> String {
    format!("{prefix}/{REPLY_LEVEL}/{}", as_level(client_id))
}

/// Where the notice that `instance` is gone goes:
/// `<reply prefix>/_gone/<instance>`.
pub(crate) fn gone_topic(reply_prefix: &str, instance: &str) -> String {
    format!("{reply_prefix}/{GONE_LEVEL}/{instance}")
}

/// `name` made usable as one topic level (`/`, `+`, `#` become `_`).
pub(crate) fn as_level(name: &str) -> String {
    name.chars()
        .map(|c| {
            if matches!(c, '/' | '+' | '#' | '\0') {
                '_'
            } else {
                c
            }
        })
        .collect()
}

/// Checks a prefix (may span several levels, e.g. `acme/prod/rpc`).
pub(crate) fn validate_prefix(prefix: &str) -> Result<(), Error> {
    let invalid = |reason: &str| Error::InvalidName {
        name: prefix.to_string(),
        reason: reason.to_string(),
    };
    if prefix.is_empty() {
        return Err(invalid("the prefix must not be empty"));
    }
    if prefix.starts_with('$') {
        return Err(invalid(
            "topics starting with `$` are reserved for the broker",
        ));
    }
    for level in prefix.split('/') {
        validate_chars(level).map_err(|reason| invalid(&reason))?;
        if level.is_empty() {
            return Err(invalid("the prefix must not contain empty levels"));
        }
    }
    Ok(())
}

/// Checks a service or method name: exactly one topic level.
pub(crate) fn validate_level(name: &str) -> Result<(), Error> {
    let invalid = |reason: String| Error::InvalidName {
        name: name.to_string(),
        reason,
    };
    if name.is_empty() {
        return Err(invalid("the name must not be empty".into()));
    }
    if name.contains('/') {
        return Err(invalid(
            "the name must be a single topic level (no `/`)".into(),
        ));
    }
    validate_chars(name).map_err(invalid)
}

fn validate_chars(level: &str) -> Result<(), String> {
    if level.contains(['+', '#', '\0']) {
        return Err("`+`, `#` and NUL are not allowed in topic names".into());
    }
    Ok(())
}

/// True when a response may be published to `topic`: a Response Topic with
/// wildcards would make the broker drop our connection (MQTT v5 §3.3.2.3.5).
pub(crate) fn is_publishable(topic: &str) -> bool {
    !topic.is_empty()
        && topic.len() <= u16::MAX as usize
        && !topic.bytes().any(|b| matches!(b, b'+' | b'#' | 0))
}

/// A filter prepared for the two shapes mqrpc subscribes to, so routing an
/// incoming publish is a string comparison: an exact topic (the response
/// topic) or `<levels>/+` (a service); anything else uses [`matches`].
#[derive(Debug, Clone)]
pub(crate) enum Filter {
    Exact(String),
    /// `<levels>/+`, stored as `<levels>/`.
    LastLevel(String),
    General(String),
}

impl Filter {
    pub(crate) fn new(filter: &str) -> Filter {
        // A shared subscription delivers topics of the filter after the group.
        if let Some((_group, shared)) = filter
            .strip_prefix("$share/")
            .and_then(|r| r.split_once('/'))
        {
            return Filter::new(shared);
        }
        let wild = |s: &str| s.contains(['+', '#']) || s.starts_with("$share/");
        match filter.strip_suffix('+') {
            Some(base) if base.ends_with('/') && !wild(base) => Filter::LastLevel(base.to_string()),
            _ if !wild(filter) => Filter::Exact(filter.to_string()),
            _ => Filter::General(filter.to_string()),
        }
    }

    pub(crate) fn matches(&self, topic: &str) -> bool {
        match self {
            Filter::Exact(exact) => exact == topic,
            Filter::LastLevel(base) => topic
                .strip_prefix(base.as_str())
                .is_some_and(|level| !level.contains('/')),
            Filter::General(filter) => matches(filter, topic),
        }
    }
}

/// MQTT topic filter matching (§4.7), including `$share/<group>/` filters.
pub(crate) fn matches(filter: &str, topic: &str) -> bool {
    let filter = match filter.strip_prefix("$share/") {
        Some(rest) => match rest.split_once('/') {
            Some((_group, filter)) => filter,
            None => return false,
        },
        None => filter,
    };
    // Wildcards at the first level never match `$` topics.
    if topic.starts_with('$') && (filter.starts_with('+') || filter.starts_with('#')) {
        return false;
    }
    let mut topic_levels = topic.split('/');
    for filter_level in filter.split('/') {
        match filter_level {
            "#" => return true,
            "+" => {
                if topic_levels.next().is_none() {
                    return false;
                }
            }
            exact => {
                if topic_levels.next() != Some(exact) {
                    return false;
                }
            }
        }
    }
    topic_levels.next().is_none()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prepared_filters_agree_with_the_general_matcher() {
        let filters = [
            "mqrpc/Calc/+",
            "mqrpc/_reply/c1",
            "a/+/c",
            "a/#",
            "$share/g/a/+",
            "+",
        ];
        let topics = [
            "mqrpc/Calc/add",
            "mqrpc/Calc/add/x",
            "mqrpc/Calc/",
            "mqrpc/_reply/c1",
            "mqrpc/_reply/c12",
            "a/b/c",
            "a",
            "a/+",
            "x",
            "mqrpc/Calcx/add",
        ];
        for filter in filters {
            let prepared = Filter::new(filter);
            for topic in topics {
                assert_eq!(
                    prepared.matches(topic),
                    matches(filter, topic),
                    "{filter} ~ {topic}: {prepared:?}"
                );
            }
        }
    }

    #[test]
    fn filter_matching() {
        assert!(matches("mqrpc/Calc/+", "mqrpc/Calc/add"));
        assert!(!matches("mqrpc/Calc/+", "mqrpc/Calc/add/x"));
        assert!(!matches("mqrpc/Calc/+", "mqrpc/Calc"));
        assert!(matches("mqrpc/Calc/+", "mqrpc/Calc/"));
        assert!(matches("a/#", "a/b/c"));
        assert!(matches("a/#", "a"));
        assert!(matches("$share/g/a/+", "a/b"));
        assert!(!matches("+/x", "$SYS/x"));
        assert!(matches("mqrpc/_reply/c1", "mqrpc/_reply/c1"));
        assert!(!matches("mqrpc/_reply/c1", "mqrpc/_reply/c12"));
    }

    #[test]
    fn names_are_validated() {
        assert!(validate_level("add").is_ok());
        assert!(validate_level("a/b").is_err());
        assert!(validate_level("a+").is_err());
        assert!(validate_level("").is_err());
        assert!(validate_prefix("acme/prod/rpc").is_ok());
        assert!(validate_prefix("acme//rpc").is_err());
        assert!(validate_prefix("$SYS").is_err());
        assert_eq!(reply_topic("p", "a/b+c"), "p/_reply/a_b_c");
        assert!(!is_publishable("a/#"));
        assert!(is_publishable("a/b"));
    }

    /// Every topic a client builds is matched by a filter of the server it
    /// is for, and by no other of a server of another service (PROTOCOL.md,
    /// "Topics").
    #[test]
    fn every_topic_a_client_builds_reaches_its_server() {
        let (requests, cancels) = server_filters("acme/rpc", "Calc", "calc-1", Some("g"));
        let mut filters: Vec<Filter> = requests.iter().map(|f| Filter::new(f)).collect();
        filters.extend(cancels.iter().map(|f| Filter::new(f)));
        let heard = |topic: &str| filters.iter().filter(|f| f.matches(topic)).count();
        let base = service_base("acme/rpc", "Calc");
        let mine = instance_base(&base, "calc-1");
        let everyone = service_base("acme/rpc", ANY_SERVICE);
        for topic in [
            method_topic(&base, "add"),
            method_topic(&mine, "add"),
            method_topic(&mine, crate::protocol::CREDIT_METHOD),
            broadcast_topic(&base, "add"),
            broadcast_topic(&everyone, "_info"),
            batch_topic(&base),
            batch_topic(&mine),
        ] {
            assert_eq!(heard(&topic), 1, "{topic}");
        }
        // A cancel: by the shared service filter and the cancel filter.
        assert_eq!(heard(&method_topic(&base, CANCEL_METHOD)), 2);
        for topic in [
            method_topic(&instance_base(&base, "calc-2"), "add"),
            method_topic(&service_base("acme/rpc", "Other"), "add"),
            batch_topic(&service_base("acme/rpc", "Other")),
        ] {
            assert_eq!(heard(&topic), 0, "{topic}");
        }
        assert_eq!(requests[0], "$share/g/acme/rpc/Calc/+");
        assert_eq!(requests[4], "$share/g/acme/rpc/Calc/_batch/1");
        assert_eq!(
            broadcast_topic(&everyone, "_info"),
            "acme/rpc/_all/_all/_info"
        );
        let (_, none) = server_filters("acme/rpc", "Calc", "calc-1", None);
        assert_eq!(none, None, "no cancel filter without a group");
    }

    #[test]
    fn request_topics_match_the_service_filter() {
        let filter = Filter::new(&shared(Some("g"), &service_filter("acme/rpc", "Calc")));
        assert!(filter.matches(&request_topic("acme/rpc", "Calc", "add")));
        assert!(filter.matches(&request_topic("acme/rpc", "Calc", "_cancel")));
        assert!(!filter.matches(&request_topic("acme/rpc", "Other", "add")));
    }

    proptest::proptest! {
        /// Whatever filter and topic a peer makes us see (levels of `a`,
        /// `b`, `$`, `+`, `#`, empty): the prepared filter agrees with the
        /// general matcher, and nothing panics.
        #[test]
        fn any_filter_and_topic_are_matched_consistently(
            filter in "(\\$share/g/)?(a|b|\\$a|\\+|#|)(/(a|b|\\+|#|)){0,4}",
            topic in "(a|b|\\$a|)(/(a|b|)){0,4}",
        ) {
            proptest::prop_assert_eq!(
                Filter::new(&filter).matches(&topic),
                matches(&filter, &topic),
                "filter {:?}, topic {:?}", filter, topic
            );
        }

        /// Names a foreign peer chooses (client ids, instance ids) become
        /// topics we may publish to, or a clear error: never a panic.
        #[test]
        fn any_name_becomes_a_level_or_an_error(name in "\\PC{0,12}", prefix in "\\PC{0,12}") {
            let level = as_level(&name);
            if !name.is_empty() {
                proptest::prop_assert!(validate_level(&level).is_ok(), "{:?} -> {:?}", name, level);
            }
            if validate_prefix(&prefix).is_ok() && !name.is_empty() {
                let reply = reply_topic(&prefix, &name);
                proptest::prop_assert!(is_publishable(&reply), "{:?}", reply);
                proptest::prop_assert!(Filter::new(&reply).matches(&reply));
            }
            let _ = validate_level(&name);
            let _ = is_publishable(&name);
        }
    }
}
