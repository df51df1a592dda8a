//! Names and values that appear on the wire. `PROTOCOL.md` is the
//! human-readable version of this file; keep them in step.

pub(crate) mod batch;
pub use batch::{BATCH_CONTENT_TYPE, BATCH_LEVELS};
pub(crate) mod builtins;
pub(crate) mod chunk;
pub(crate) mod codec;
pub mod metadata;
mod qos;
pub use chunk::{Chunking, CHUNK_GRANT_PROPERTY, CHUNK_PROPERTY};
pub mod schema;
pub(crate) mod topic;

pub use qos::QoS;

/// Items the server of a streaming call may send beyond what the caller
/// has consumed (the credit window; PROTOCOL.md, "Streaming").
///
/// ```
/// # use mqrpc_runtime as mqrpc;
/// assert_eq!(mqrpc::STREAM_WINDOW, 32);
/// ```
pub const STREAM_WINDOW: u32 = 32;

/// User property carrying the outcome of a call on every response.
pub const STATUS_PROPERTY: &str = "mqrpc-status";

/// User property on requests: the caller's remaining time budget in
/// milliseconds when it sent the request (decimal ASCII). The server's
/// deadline is its arrival time plus this, capped by the Message Expiry
/// Interval the broker forwarded.
pub const TIMEOUT_PROPERTY: &str = "mqrpc-timeout-ms";

/// User property on a retried request: which attempt this is (decimal
/// ASCII, 2 or more; absent on the first). A retry keeps the first
/// attempt's Correlation Data, so the server's duplicate table answers a
/// call that already ran (PROTOCOL.md, "Retries").
pub const ATTEMPT_PROPERTY: &str = "mqrpc-attempt";

/// User property on a retried request: milliseconds since the call's first
/// attempt was sent (decimal ASCII). The server refuses the retry of a
/// method not marked idempotent (status `retry-refused`) when it may have
/// forgotten a call that arrived that long ago.
pub const AGE_PROPERTY: &str = "mqrpc-age-ms";

/// Method level of cancel messages: `<prefix>/<service>/_cancel`. Method
/// names starting with `_` are reserved, so it cannot collide with one.
pub const CANCEL_METHOD: &str = "_cancel";

/// User property on cancel messages: the Response Topic of the call to
/// cancel (its Correlation Data is the cancel message's own).
pub const CANCEL_RESPONSE_TOPIC_PROPERTY: &str = "mqrpc-response-topic";

/// Topic prefix used when none is configured: requests go to
/// `mqrpc/<service>/<method>`, responses to `mqrpc/_reply/<client id>`.
pub const DEFAULT_PREFIX: &str = "mqrpc";

/// Topic level, after the service, of requests addressed to one instance:
/// `<prefix>/<service>/_to/<instance>/<method>`.
pub const INSTANCE_LEVEL: &str = "_to";

/// Topic level, after the service, of broadcast requests:
/// `<prefix>/<service>/_all/<method>` reaches every server of the service.
pub const BROADCAST_LEVEL: &str = "_all";

/// User property on answers to broadcasts: the answering server's instance id.
pub const INSTANCE_PROPERTY: &str = "mqrpc-instance";

/// Content Type parameter carrying a method's schema fingerprint:
/// `application/postcard; schema=bb364c15d84acd2c` (PROTOCOL.md, "Schema
/// fingerprints", and [`schema`]).
pub const SCHEMA_PARAMETER: &str = "schema";

/// Built-in method every server answers: `()` → `()`.
pub const PING_METHOD: &str = "_ping";
/// Built-in method every server answers: `()` → `ServiceInfo`.
pub const INFO_METHOD: &str = "_info";
/// Built-in method every server answers: `()` → `ServiceStats`.
pub const STATS_METHOD: &str = "_stats";
/// Service level meaning "every service", for discovery:
/// `<prefix>/_all/_all/_info` reaches every server of every service.
///
/// The same text as [`BROADCAST_LEVEL`], under a name of its own because it
/// stands in another place: it is a *service* name (one no trait can have,
/// names starting with `_` being reserved), where `BROADCAST_LEVEL` is the
/// level *after* a service. Discovery is then the broadcast of this
/// service, built and matched like any other broadcast.
pub const ANY_SERVICE: &str = "_all";

/// User property on stream items and the end marker: the item's position.
pub const SEQ_PROPERTY: &str = "mqrpc-seq";
/// Method level of stream credits: `<prefix>/<service>/_to/<instance>/_credit`.
pub const CREDIT_METHOD: &str = "_credit";
/// User property on stream credits: how many more items the caller takes
/// (on a client stream's grants: how many more the caller may send).
pub const CREDIT_PROPERTY: &str = "mqrpc-credit";
/// Method level of a client stream's items and its end marker, sent to the
/// instance that accepted the call:
/// `<prefix>/<service>/_to/<instance>/_item` (PROTOCOL.md, "Client
/// streaming and bidirectional streaming").
pub const ITEM_METHOD: &str = "_item";

/// User property on requests: the caller's W3C Trace Context
/// `traceparent` (`00-<trace id>-<span id>-<flags>`); the server's span
/// is its child.
pub const TRACEPARENT_PROPERTY: &str = "traceparent";
/// User property on requests: the W3C Trace Context `tracestate`, when
/// the caller's trace has one.
pub const TRACESTATE_PROPERTY: &str = "tracestate";

/// Share group servers join by default: `$share/mqrpc/<prefix>/<service>/+`.
pub const DEFAULT_SHARE_GROUP: &str = "mqrpc";

/// Topic level, under the prefix, that holds the clients' response topics.
/// Service names may not start with `_`, so it cannot collide with one.
pub const REPLY_LEVEL: &str = "_reply";

/// Topic level, under the connection's reply prefix, of the notices that
/// an instance is gone: `<reply prefix>/_gone/<instance>`. Every
/// connection sets it as its Last Will (with its client id as the
/// instance, the default instance id of its servers; a server with another
/// instance id has a connection of its own carrying that instance's Will),
/// and a server that stops cleanly publishes it itself. Clients subscribe
/// `<reply prefix>/_gone/+` and end the calls bound to that instance with
/// [`Error::ServerGone`](crate::Error::ServerGone). The payload is empty.
pub const GONE_LEVEL: &str = "_gone";

/// Environment variable naming the broker, e.g. `mqtt://127.0.0.1:1883`.
pub const BROKER_ENV: &str = "MQRPC_BROKER";

/// Content Type of postcard payloads (the default).
pub const POSTCARD_CONTENT_TYPE: &str = "application/postcard";
/// Content Type of JSON payloads.
pub const JSON_CONTENT_TYPE: &str = "application/json";
/// Content Type of framework error messages (UTF-8 text).
pub const TEXT_CONTENT_TYPE: &str = "text/plain; charset=utf-8";

/// Outcome of a call, sent as the [`STATUS_PROPERTY`] user property.
///
/// ```
/// # use mqrpc_runtime as mqrpc;
/// use mqrpc::Status;
/// assert_eq!(Status::parse("unknown-method"), Some(Status::UnknownMethod));
/// assert_eq!(Status::Ok.as_str(), "ok");
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Status {
    /// The payload is the method's return value (for `Result<T, E>` methods: the `T`).
    Ok,
    /// The method returned `Err(E)`; the payload is the `E`, in the request's codec.
    Error,
    /// No method of that name; the payload is a UTF-8 message.
    UnknownMethod,
    /// The arguments could not be decoded; the payload is a UTF-8 message.
    BadRequest,
    /// The request's Content Type is not supported; the payload is a UTF-8 message.
    UnsupportedContentType,
    /// The handler panicked or its result could not be encoded; UTF-8 message.
    Internal,
    /// The request's deadline passed before or while the handler ran; the
    /// handler was not started or was stopped. UTF-8 message.
    DeadlineExceeded,
    /// The server's queue of waiting requests is full; UTF-8 message.
    Overloaded,
    /// The request's payload is larger than the server accepts; UTF-8 message.
    TooLarge,
    /// Client and server were built from different versions of the
    /// method's signature; UTF-8 message `client <fingerprint>, server
    /// <fingerprint>`. The method did not run.
    SchemaMismatch,
    /// The end of a stream: no more items follow. Empty payload.
    End,
    /// A server layer refused the call: it carries no credentials, or
    /// none the server accepts (e.g. an auth layer found no token). The
    /// method did not run. UTF-8 message.
    Unauthenticated,
    /// A server layer refused the call: the caller is known but may not
    /// call this method. The method did not run. UTF-8 message.
    PermissionDenied,
    /// A server layer refused the call for a quota (a rate limit, a load
    /// shedder): try again later. The method did not run. UTF-8 message.
    ResourceExhausted,
    /// The request is a retry (`mqrpc-attempt` 2 or more) of a call this
    /// server does not remember, of a method not marked idempotent: the
    /// first attempt may have run (here before the server forgot it, or on
    /// another instance), so the server did not run it again
    /// (PROTOCOL.md, "Retries"). UTF-8 message.
    RetryRefused,
    /// Not an answer: a grant of credit to a caller streaming items to the
    /// server (a method taking `mqrpc::Stream<T>`), its count in
    /// `mqrpc-credit`, the granting instance in `mqrpc-instance`. Empty
    /// payload.
    Credit,
}

impl Status {
    /// The value sent on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Ok => "ok",
            Status::Error => "error",
            Status::UnknownMethod => "unknown-method",
            Status::BadRequest => "bad-request",
            Status::UnsupportedContentType => "unsupported-content-type",
            Status::Internal => "internal",
            Status::DeadlineExceeded => "deadline-exceeded",
            Status::Overloaded => "overloaded",
            Status::TooLarge => "too-large",
            Status::SchemaMismatch => "schema-mismatch",
            Status::End => "end",
            Status::Unauthenticated => "unauthenticated",
            Status::PermissionDenied => "permission-denied",
            Status::ResourceExhausted => "resource-exhausted",
            Status::RetryRefused => "retry-refused",
            Status::Credit => "credit",
        }
    }

    /// Parses a wire value; `None` for anything unknown.
    pub fn parse(value: &str) -> Option<Status> {
        Some(match value {
            "ok" => Status::Ok,
            "error" => Status::Error,
            "unknown-method" => Status::UnknownMethod,
            "bad-request" => Status::BadRequest,
            "unsupported-content-type" => Status::UnsupportedContentType,
            "internal" => Status::Internal,
            "deadline-exceeded" => Status::DeadlineExceeded,
            "overloaded" => Status::Overloaded,
            "too-large" => Status::TooLarge,
            "schema-mismatch" => Status::SchemaMismatch,
            "end" => Status::End,
            "unauthenticated" => Status::Unauthenticated,
            "permission-denied" => Status::PermissionDenied,
            "resource-exhausted" => Status::ResourceExhausted,
            "retry-refused" => Status::RetryRefused,
            "credit" => Status::Credit,
            _ => return None,
        })
    }

    /// True when the payload is encoded with the call's codec rather than
    /// being a UTF-8 message.
    pub fn has_encoded_payload(self) -> bool {
        matches!(self, Status::Ok | Status::Error)
    }
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::Status;

    /// Every status reads back from its wire value and has its row in
    /// PROTOCOL.md's status table, so a foreign peer can read it.
    #[test]
    fn every_status_is_in_the_protocol_document() {
        let document = include_str!("../../../PROTOCOL.md");
        let all = [
            Status::Ok,
            Status::Error,
            Status::UnknownMethod,
            Status::BadRequest,
            Status::UnsupportedContentType,
            Status::Internal,
            Status::DeadlineExceeded,
            Status::Overloaded,
            Status::TooLarge,
            Status::SchemaMismatch,
            Status::End,
            Status::Unauthenticated,
            Status::PermissionDenied,
            Status::ResourceExhausted,
            Status::RetryRefused,
        ];
        for status in all {
            assert_eq!(Status::parse(status.as_str()), Some(status));
            if status != Status::End {
                let row = format!("\n| `{status}` |");
                assert!(document.contains(&row), "PROTOCOL.md has no row {row:?}");
            }
        }
    }
}
