//! Trace context propagation (feature `opentelemetry`): the client's span
//! travels as W3C `traceparent`/`tracestate` user properties and the
//! server's span is its child, exported through tracing-opentelemetry into
//! an in-memory exporter. And the debug events of one call, on both sides
//! (`captured`). Against Mosquitto and the embedded broker.

#[path = "tracing/captured.rs"]
mod captured;

use std::sync::OnceLock;
use std::time::Duration;

use bytes::Bytes;
use opentelemetry::trace::{SpanId, SpanKind, TraceContextExt, TraceId, TracerProvider as _};
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider, SpanData};
use tracing::Instrument;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

use mqrpc_tests::raw::{request_properties, status_of, RawPeer};
use mqrpc_tests::{Calc, CalculatorClient, CalculatorServer, TestBroker};

// The pipeline is installed before the harness installs its own subscriber.
mqrpc_tests::on_both_brokers!(
    setup = exporter;
    server_span_is_a_child_of_the_client_span,
    a_foreign_traceparent_is_continued,
    the_request_carries_the_call_span,
    a_stream_joins_the_callers_trace,
    a_call_logs_its_steps_at_debug,
);

/// One OpenTelemetry pipeline for the whole test binary.
fn exporter() -> &'static InMemorySpanExporter {
    static PIPELINE: OnceLock<(InMemorySpanExporter, SdkTracerProvider)> = OnceLock::new();
    &PIPELINE
        .get_or_init(|| {
            let exporter = InMemorySpanExporter::default();
            let provider = SdkTracerProvider::builder()
                .with_simple_exporter(exporter.clone())
                .build();
            let tracer = provider.tracer("mqrpc-tests");
            tracing_subscriber::registry()
                .with(tracing_opentelemetry::layer().with_tracer(tracer))
                .with(captured::Capture)
                .init();
            (exporter, provider)
        })
        .0
}

/// The finished spans of one trace, once `ready` holds for them (spans end
/// when their last handle drops, the server's after it answered).
async fn spans_of(trace: TraceId, ready: impl Fn(&[SpanData]) -> bool) -> Vec<SpanData> {
    for _ in 0..500 {
        let spans: Vec<SpanData> = exporter()
            .get_finished_spans()
            .unwrap()
            .into_iter()
            .filter(|s| s.span_context.trace_id() == trace)
            .collect();
        if ready(&spans) {
            return spans;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("the spans of trace {trace} never finished");
}

fn random_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos(),
    );
    hasher.finish()
}

fn find(spans: &[SpanData], kind: SpanKind, name: &str) -> SpanData {
    spans
        .iter()
        .find(|s| s.span_kind == kind && s.name == name)
        .unwrap_or_else(|| panic!("no {kind:?} span `{name}` among {spans:#?}"))
        .clone()
}

fn attribute(span: &SpanData, key: &str) -> Option<String> {
    span.attributes
        .iter()
        .find(|kv| kv.key.as_str() == key)
        .map(|kv| kv.value.to_string())
}

fn has(kind: SpanKind) -> impl Fn(&[SpanData]) -> bool {
    move |spans| spans.iter().any(|s| s.span_kind == kind)
}

async fn server_span_is_a_child_of_the_client_span(broker: TestBroker) {
    let (_server_conn, _) = broker.serve_calc().await;
    let client_conn = broker.connect().await;
    let calc = CalculatorClient::new(&client_conn).await.unwrap();

    let root = tracing::info_span!("test-root", broker = broker.kind());
    let trace = root.context().span().span_context().trace_id();
    let root_id = root.context().span().span_context().span_id();
    assert_ne!(
        trace,
        TraceId::INVALID,
        "the OpenTelemetry layer is installed"
    );
    let sum = calc.add(40, 2).instrument(root.clone()).await.unwrap();
    assert_eq!(sum, 42);
    drop(root);

    let spans = spans_of(trace, has(SpanKind::Server)).await;
    let client = find(&spans, SpanKind::Client, "Calculator/add");
    let server = find(&spans, SpanKind::Server, "Calculator/add");
    assert_eq!(
        client.parent_span_id, root_id,
        "the call span is a child of the caller's span"
    );
    assert_eq!(
        server.parent_span_id,
        client.span_context.span_id(),
        "the handler's span is a child of the call's span"
    );
    assert!(server.parent_span_is_remote, "the parent came over MQTT");
    for span in [&client, &server] {
        assert_eq!(attribute(span, "rpc.system").as_deref(), Some("mqrpc"));
        assert_eq!(
            attribute(span, "rpc.service").as_deref(),
            Some("Calculator")
        );
        assert_eq!(attribute(span, "rpc.method").as_deref(), Some("add"));
        assert_eq!(attribute(span, "rpc.status").as_deref(), Some("ok"));
    }
}

/// A request from any MQTT client with a `traceparent` (and `tracestate`)
/// continues that trace on the server.
async fn a_foreign_traceparent_is_continued(broker: TestBroker) {
    let conn = broker.connect().await;
    let _server = CalculatorServer::new(Calc::default())
        .serve(&conn)
        .await
        .unwrap();
    let mut peer = RawPeer::connect(broker.port(), &["replies/traced"]).await;
    // Ids of this test alone: the tests of this binary share one exporter.
    let trace = TraceId::from(random_u64() as u128 | ((random_u64() as u128) << 64));
    let parent = SpanId::from(random_u64() | 1);
    let mut properties = request_properties("replies/traced", b"t1", Some("application/json"));
    properties.user_properties.extend([
        ("traceparent".to_string(), format!("00-{trace}-{parent}-01")),
        ("tracestate".to_string(), "vendor=opaque".to_string()),
    ]);
    peer.publish(
        "mqrpc/Calculator/echo",
        Bytes::from_static(b"[\"hi\"]"),
        properties,
    )
    .await;
    let answer = peer
        .next_publish(Duration::from_secs(5))
        .await
        .expect("an answer");
    assert_eq!(status_of(&answer).as_deref(), Some("ok"));

    let spans = spans_of(trace, has(SpanKind::Server)).await;
    let server = find(&spans, SpanKind::Server, "Calculator/echo");
    assert_eq!(server.parent_span_id, parent);
    assert!(server.span_context.is_sampled());
    assert_eq!(server.span_context.trace_state().header(), "vendor=opaque");
}

/// What the client puts on the wire: `traceparent` names the call's span.
async fn the_request_carries_the_call_span(broker: TestBroker) {
    // Nobody serves the calculator here: a raw peer takes the request.
    let mut peer = RawPeer::connect(broker.port(), &["mqrpc/Calculator/+"]).await;
    let conn = broker.connect().await;
    let calc = CalculatorClient::new(&conn)
        .await
        .unwrap()
        .with_timeout(Duration::from_millis(300));
    let root = tracing::info_span!("wire-root");
    let trace = root.context().span().span_context().trace_id();
    let call = tokio::spawn(async move { calc.add(1, 1).await }.instrument(root));
    let request = peer
        .next_publish(Duration::from_secs(5))
        .await
        .expect("the request");
    let user = request.properties.unwrap().user_properties;
    let traceparent = user
        .iter()
        .find(|(k, _)| k == "traceparent")
        .map(|(_, v)| v.clone())
        .expect("a traceparent user property");
    assert!(call.await.unwrap().unwrap_err().is_timeout());

    let spans = spans_of(trace, has(SpanKind::Client)).await;
    let client = find(&spans, SpanKind::Client, "Calculator/add");
    assert_eq!(
        traceparent,
        format!("00-{trace}-{}-01", client.span_context.span_id())
    );
    assert_eq!(attribute(&client, "rpc.status").as_deref(), Some("timeout"));
}

/// A stream request has no call span: the server joins the span it was
/// made in.
async fn a_stream_joins_the_callers_trace(broker: TestBroker) {
    use futures_util::StreamExt;
    let conn = broker.connect().await;
    let _server = CalculatorServer::new(Calc::default())
        .serve(&conn)
        .await
        .unwrap();
    let calc = CalculatorClient::new(&conn).await.unwrap();
    let root = tracing::info_span!("stream-root");
    let trace = root.context().span().span_context().trace_id();
    let root_id = root.context().span().span_context().span_id();
    let items: Vec<u64> = async {
        let items = calc.count_up(3).await.unwrap();
        items.map(Result::unwrap).collect().await
    }
    .instrument(root.clone())
    .await;
    assert_eq!(items, vec![0, 1, 2]);
    drop(root);
    let spans = spans_of(trace, has(SpanKind::Server)).await;
    let server = find(&spans, SpanKind::Server, "Calculator/count_up");
    assert_eq!(server.parent_span_id, root_id);
}

/// At debug level a call tells its steps: sent, acknowledged, received,
/// answering, answered; and a call nobody serves, how it failed.
async fn a_call_logs_its_steps_at_debug(broker: TestBroker) {
    let (_server_conn, _) = broker.serve_calc().await;
    let client_conn = broker.connect().await;
    let calc = CalculatorClient::new(&client_conn).await.unwrap();
    // The events of this test alone: the tests of this binary share them.
    let tag = format!("{:016x}", random_u64());
    let root = tracing::info_span!("debug-root", tag = %tag);
    let sum = calc.add(40, 2).instrument(root.clone()).await.unwrap();
    assert_eq!(sum, 42);

    let sent = captured::wait_for(|e| e.message == "request sent" && e.scope.contains(&tag)).await;
    let correlation: u64 = sent.field("correlation").parse().unwrap();
    assert_eq!(sent.field("qos"), "AtLeastOnce");
    let answered = captured::wait_for(|e| e.message == "answered" && e.scope.contains(&tag)).await;
    assert_eq!(answered.field("status"), "ok");
    let acked = captured::wait_for(|e| {
        e.message == "request acknowledged by the broker"
            && e.field("correlation") == correlation.to_string()
    })
    .await;
    assert_eq!(acked.field("reason"), "0");
    let on_server = format!("correlation_id={correlation:016x}\u{1f}");
    captured::wait_for(|e| e.message == "request received" && e.scope.contains(&on_server)).await;
    let answering =
        captured::wait_for(|e| e.message == "answering" && e.scope.contains(&on_server)).await;
    assert_eq!(answering.field("status"), "ok");

    // Nobody serves `to_instance("nobody")`: Mosquitto says so (0x10), the
    // embedded broker lets it time out.
    let nobody = calc
        .with_timeout(Duration::from_millis(300))
        .to_instance("nobody")
        .unwrap();
    let err = nobody.add(1, 1).instrument(root).await.unwrap_err();
    let failed = captured::wait_for(|e| e.message == "call failed" && e.scope.contains(&tag)).await;
    assert!(
        ["timeout", "no-responder"].contains(&failed.field("status").as_str()),
        "{failed:?}"
    );
    assert_eq!(failed.field("error"), err.to_string());
}
