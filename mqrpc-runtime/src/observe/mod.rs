//! What a call leaves behind for operators: a `tracing` span on each side,
//! W3C trace context carried in user properties (feature `opentelemetry`),
//! and per-method counters and latency histograms (feature `metrics`).
//!
//! Without a subscriber, exporter or feature, every function here costs a
//! disabled-callsite check or nothing at all.

#[cfg(feature = "metrics")]
use std::time::Duration;

use tracing::Span;

use crate::protocol::{Status, TRACEPARENT_PROPERTY, TRACESTATE_PROPERTY};
use crate::Error;

/// The W3C trace context of a request, as read off the wire.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct TraceContext {
    pub traceparent: Option<String>,
    pub tracestate: Option<String>,
}

impl TraceContext {
    /// Picks the two properties out of a request's user properties.
    pub(crate) fn from_user_properties(properties: &[(String, String)]) -> Option<TraceContext> {
        let mut trace = TraceContext::default();
        for (key, value) in properties {
            match key.as_str() {
                TRACEPARENT_PROPERTY => trace.traceparent = Some(value.clone()),
                TRACESTATE_PROPERTY => trace.tracestate = Some(value.clone()),
                _ => {}
            }
        }
        trace.traceparent.is_some().then_some(trace)
    }
}

/// The span of one outgoing call (`otel.kind = client`).
pub(crate) fn client_span(service: &str, method: &str, correlation: u64) -> Span {
    tracing::info_span!(
        "mqrpc.call",
        otel.name = %format_args!("{service}/{method}"),
        otel.kind = "client",
        rpc.system = "mqrpc",
        rpc.service = service,
        rpc.method = method,
        correlation_id = correlation,
        rpc.status = tracing::field::Empty,
        rpc.attempts = tracing::field::Empty,
    )
}

/// Records on a call's span how many attempts it took (calls with a retry
/// policy; the others take one).
pub(crate) fn record_attempts(span: &Span, attempts: u32) {
    span.record("rpc.attempts", attempts);
}

/// Counts one retry of a call, by what made it necessary.
#[cfg(feature = "metrics")]
pub(crate) fn client_retry(service: &str, method: &str, reason: &'static str) {
    describe();
    let labels = [
        ("service", service.to_string()),
        ("method", method.to_string()),
        ("reason", reason.to_string()),
    ];
    metrics::counter!(CLIENT_RETRIES, &labels).increment(1);
}

/// The method label and span name of requests for methods the service
/// does not have.
pub(crate) const UNKNOWN_METHOD: &str = "_unknown";

/// The span of one handled request (`otel.kind = server`), a child of the
/// caller's span when the request carries a trace context.
pub(crate) fn server_span(
    service: &str,
    method: &str,
    correlation: Option<&[u8]>,
    trace: Option<&TraceContext>,
) -> Span {
    let span = tracing::info_span!(
        "mqrpc.handle",
        otel.name = %format_args!("{service}/{method}"),
        otel.kind = "server",
        rpc.system = "mqrpc",
        rpc.service = service,
        rpc.method = method,
        correlation_id = tracing::field::Empty,
        traceparent = tracing::field::Empty,
        rpc.status = tracing::field::Empty,
    );
    if span.is_disabled() {
        return span;
    }
    if let Some(correlation) = correlation {
        span.record("correlation_id", hex(correlation).as_str());
    }
    if let Some(trace) = trace {
        // Version 00 is 55 characters; later versions may add fields, but
        // a caller must not fill the logs.
        if let Some(traceparent) = trace.traceparent.as_deref().filter(|t| t.len() <= 256) {
            span.record("traceparent", traceparent);
        }
        #[cfg(feature = "opentelemetry")]
        otel::set_remote_parent(&span, trace);
    }
    span
}

pin_project_lite::pin_project! {
    /// A future run inside a span it borrows: tracing's `Instrumented`
    /// owns a clone of the span (more memory per call in flight), and
    /// enters it on every poll even when it is disabled, which costs
    /// instructions (many more with tracing's `log` feature on, which asks
    /// the `log` crate for its level each time).
    pub(crate) struct InSpan<'a, F> {
        span: &'a Span,
        #[pin]
        future: F,
    }
}

impl<'a, F> InSpan<'a, F> {
    pub(crate) fn new(span: &'a Span, future: F) -> Self {
        InSpan { span, future }
    }
}

impl<F: std::future::Future> std::future::Future for InSpan<'_, F> {
    type Output = F::Output;

    fn poll(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<F::Output> {
        let this = self.project();
        if this.span.is_disabled() {
            return this.future.poll(cx);
        }
        let _entered = this.span.enter();
        this.future.poll(cx)
    }
}

/// Adds `traceparent` (and `tracestate`) of `span` to a request's user
/// properties. Only with the `opentelemetry` feature, and only when the
/// span belongs to a valid OpenTelemetry trace.
pub(crate) fn inject(span: &Span, user_properties: &mut Vec<(String, String)>) {
    // mqrpc's own spans are at INFO; where a filter turns them off, the
    // request still joins the trace the caller is in.
    if span.is_disabled() {
        inject_current(user_properties);
    } else {
        #[cfg(feature = "opentelemetry")]
        otel::inject(span, user_properties);
    }
}

/// Adds the trace context of the span the caller is in, for requests
/// without a call span of their own (broadcasts, streams, one-way).
/// Nothing at all without the `opentelemetry` feature.
pub(crate) fn inject_current(user_properties: &mut Vec<(String, String)>) {
    #[cfg(feature = "opentelemetry")]
    otel::inject(&Span::current(), user_properties);
    #[cfg(not(feature = "opentelemetry"))]
    let _ = user_properties;
}

/// Notes how a call ended on its span.
pub(crate) fn record_status(span: &Span, status: &str) {
    if !span.is_disabled() {
        span.record("rpc.status", status);
    }
}

/// A short, bounded label for how a call ended on the client: the wire
/// status of the answer, or what went wrong before one arrived.
pub(crate) fn outcome_label(outcome: Result<&Status, &Error>) -> &'static str {
    match outcome {
        Ok(status) => status.as_str(),
        Err(error) => error_label(error),
    }
}

/// [`outcome_label`] of a call that failed before or without an answer.
pub(crate) fn error_label(error: &Error) -> &'static str {
    match error {
        Error::Timeout { .. } => "timeout",
        Error::NoResponder { .. } => "no-responder",
        Error::NotAuthorized { .. } => "not-authorized",
        Error::Disconnected | Error::Closed => "disconnected",
        Error::TooLarge { .. } => "too-large",
        Error::TooManyPending { .. } => "too-many-pending",
        Error::Encode { .. } => "encode",
        Error::ServerGone { .. } => "server-gone",
        Error::Unauthenticated { .. } => "unauthenticated",
        Error::PermissionDenied { .. } => "permission-denied",
        Error::ResourceExhausted { .. } => "resource-exhausted",
        Error::RetryRefused { .. } => "retry-refused",
        Error::Overloaded { .. } => "overloaded",
        Error::Decode { .. } | Error::Protocol { .. } => "bad-response",
        _ => "failed",
    }
}

/// Counts one client call when it ends: with the status given to
/// [`finish`](Self::finish), or as `cancelled` when its future is dropped
/// first.
#[cfg(feature = "metrics")]
pub(crate) struct CallMeter<'a> {
    service: &'a str,
    method: &'a str,
    started: std::time::Instant,
    finished: bool,
}

#[cfg(feature = "metrics")]
impl<'a> CallMeter<'a> {
    pub(crate) fn start(service: &'a str, method: &'a str) -> Self {
        CallMeter {
            service,
            method,
            started: std::time::Instant::now(),
            finished: false,
        }
    }

    pub(crate) fn finish(mut self, status: &'static str) {
        self.finished = true;
        client_call(self.service, self.method, status, self.started.elapsed());
    }
}

#[cfg(feature = "metrics")]
impl Drop for CallMeter<'_> {
    fn drop(&mut self) {
        if !self.finished {
            client_call(
                self.service,
                self.method,
                "cancelled",
                self.started.elapsed(),
            );
        }
    }
}

/// Counts one finished client call and its latency.
#[cfg(feature = "metrics")]
fn client_call(service: &str, method: &str, status: &'static str, elapsed: Duration) {
    describe();
    {
        let labels = [
            ("service", service.to_string()),
            ("method", method.to_string()),
            ("status", status.to_string()),
        ];
        metrics::counter!(CLIENT_CALLS, &labels).increment(1);
        metrics::histogram!(CLIENT_DURATION, &labels[..2]).record(elapsed.as_secs_f64());
    }
}

/// Counts one request a server answered and how long its handler ran.
/// `method` is `None` for methods the service does not have (one label,
/// `_unknown`, so a caller cannot grow the label set without bound).
#[cfg(feature = "metrics")]
pub(crate) fn server_request(
    service: &'static str,
    method: Option<&'static str>,
    status: Status,
    elapsed: Duration,
) {
    describe();
    {
        let labels = [
            ("service", service),
            ("method", method.unwrap_or(UNKNOWN_METHOD)),
            ("status", status.as_str()),
        ];
        metrics::counter!(SERVER_REQUESTS, &labels).increment(1);
        metrics::histogram!(SERVER_DURATION, &labels[..2]).record(elapsed.as_secs_f64());
    }
}

/// Gives the metrics their help text and unit, once per process (a
/// recorder installed later misses it, which only costs the help text).
#[cfg(feature = "metrics")]
fn describe() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        use metrics::{describe_counter, describe_histogram, Unit};
        describe_counter!(
            CLIENT_CALLS,
            "Calls made, by service, method and how they ended"
        );
        describe_histogram!(
            CLIENT_DURATION,
            Unit::Seconds,
            "Call latency seen by the caller"
        );
        describe_counter!(
            CLIENT_RETRIES,
            "Calls sent again (same Correlation Data), by service, method and why"
        );
        describe_counter!(
            SERVER_REQUESTS,
            "Requests handled, by service, method and status"
        );
        describe_histogram!(SERVER_DURATION, Unit::Seconds, "Time the handler ran");
    });
}

/// Metric names (README, "Metrics").
#[cfg(feature = "metrics")]
pub(crate) const CLIENT_CALLS: &str = "mqrpc_client_calls_total";
#[cfg(feature = "metrics")]
pub(crate) const CLIENT_DURATION: &str = "mqrpc_client_call_duration_seconds";
#[cfg(feature = "metrics")]
pub(crate) const CLIENT_RETRIES: &str = "mqrpc_client_retries_total";
#[cfg(feature = "metrics")]
pub(crate) const SERVER_REQUESTS: &str = "mqrpc_server_requests_total";
#[cfg(feature = "metrics")]
pub(crate) const SERVER_DURATION: &str = "mqrpc_server_request_duration_seconds";

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes.iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

/// W3C Trace Context (<https://www.w3.org/TR/trace-context/>) to and from
/// OpenTelemetry span contexts: `00-<trace id>-<parent id>-<flags>`.
#[cfg(feature = "opentelemetry")]
mod otel {
    use std::str::FromStr;

    use opentelemetry::trace::{
        SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState,
    };
    use tracing::Span;
    use tracing_opentelemetry::OpenTelemetrySpanExt;

    use super::{TraceContext, TRACEPARENT_PROPERTY, TRACESTATE_PROPERTY};

    pub(super) fn inject(span: &Span, user_properties: &mut Vec<(String, String)>) {
        let context = span.context();
        let otel_span = context.span();
        let span_context = otel_span.span_context();
        if !span_context.is_valid() {
            return;
        }
        user_properties.push((
            TRACEPARENT_PROPERTY.to_string(),
            format!(
                "00-{}-{}-{:02x}",
                span_context.trace_id(),
                span_context.span_id(),
                span_context.trace_flags().to_u8()
            ),
        ));
        let state = span_context.trace_state().header();
        if !state.is_empty() {
            user_properties.push((TRACESTATE_PROPERTY.to_string(), state));
        }
    }

    pub(super) fn set_remote_parent(span: &Span, trace: &TraceContext) {
        let Some(parent) = trace.traceparent.as_deref().and_then(parse_traceparent) else {
            return;
        };
        let (trace_id, span_id, flags) = parent;
        let state = trace
            .tracestate
            .as_deref()
            .and_then(|s| TraceState::from_str(s).ok())
            .unwrap_or_default();
        let remote = SpanContext::new(trace_id, span_id, flags, true, state);
        let context = opentelemetry::Context::new().with_remote_span_context(remote);
        let _ = span.set_parent(context);
    }

    /// Version 00 and any later version with the same first four fields
    /// (the spec's forward-compatibility rule); all-zero ids are invalid.
    pub(super) fn parse_traceparent(value: &str) -> Option<(TraceId, SpanId, TraceFlags)> {
        let mut parts = value.trim().split('-');
        let version = parts.next()?;
        let trace_id = parts.next()?;
        let span_id = parts.next()?;
        let flags = parts.next()?;
        let well_formed = version.len() == 2
            && version != "ff"
            && (version != "00" || parts.next().is_none())
            && trace_id.len() == 32
            && span_id.len() == 16
            && flags.len() == 2
            && [version, trace_id, span_id, flags].iter().all(|p| {
                p.bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
            });
        if !well_formed {
            return None;
        }
        let trace_id = TraceId::from_hex(trace_id).ok()?;
        let span_id = SpanId::from_hex(span_id).ok()?;
        let flags =
            TraceFlags::new(u8::from_str_radix(flags, 16).ok()? & TraceFlags::SAMPLED.to_u8());
        (trace_id != TraceId::INVALID && span_id != SpanId::INVALID)
            .then_some((trace_id, span_id, flags))
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn traceparent_parsing_follows_the_w3c_rules() {
            let good = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
            let (trace, span, flags) = parse_traceparent(good).unwrap();
            assert_eq!(trace.to_string(), "4bf92f3577b34da6a3ce929d0e0e4736");
            assert_eq!(span.to_string(), "00f067aa0ba902b7");
            assert!(flags.is_sampled());
            // A later version may append fields.
            assert!(parse_traceparent(&format!("01{}-extra", &good[2..])).is_some());
            for bad in [
                "",
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
                "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
                "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
                "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
                "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
                "00-4bf92f3577b34da6a3ce929d0e0e473-600f067aa0ba902b7-01",
            ] {
                assert!(parse_traceparent(bad).is_none(), "{bad}");
            }
        }
    }
}
