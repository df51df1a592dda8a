//! A `tracing` layer that keeps every event of mqrpc with its fields and
//! the fields of the spans around it, for tests to find.

use std::fmt::Write as _;
use std::sync::Mutex;
use std::time::Duration;

use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Subscriber};
use tracing_subscriber::layer::Context;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::Layer;

/// One event as seen.
#[derive(Debug, Clone)]
pub struct Captured {
    pub message: String,
    /// Each field but the message, its value formatted.
    pub fields: Vec<(String, String)>,
    /// `name=value` of each field of the spans around it, each followed
    /// by U+001F.
    pub scope: String,
}

impl Captured {
    /// The value of field `name` (empty when absent).
    pub fn field(&self, name: &str) -> String {
        self.fields
            .iter()
            .find(|(key, _)| key == name)
            .map(|(_, value)| value.clone())
            .unwrap_or_default()
    }
}

static EVENTS: Mutex<Vec<Captured>> = Mutex::new(Vec::new());

/// The layer (events of targets starting with `mqrpc`).
pub struct Capture;

struct Fields(String);

struct Visitor<'a> {
    out: &'a mut String,
    message: Option<&'a mut String>,
}

impl Visit for Visitor<'_> {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            if let Some(message) = self.message.as_deref_mut() {
                let _ = write!(message, "{value:?}");
                return;
            }
        }
        let _ = write!(self.out, "{}={value:?}\u{1f}", field.name());
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        // Without the quotes Debug would add.
        let _ = write!(self.out, "{}={value}\u{1f}", field.name());
    }
}

impl<S: Subscriber + for<'a> LookupSpan<'a>> Layer<S> for Capture {
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        let mut out = String::new();
        attrs.record(&mut Visitor {
            out: &mut out,
            message: None,
        });
        if let Some(span) = ctx.span(id) {
            span.extensions_mut().insert(Fields(out));
        }
    }

    fn on_record(&self, id: &Id, values: &Record<'_>, ctx: Context<'_, S>) {
        if let Some(span) = ctx.span(id) {
            let mut extensions = span.extensions_mut();
            if let Some(Fields(out)) = extensions.get_mut::<Fields>() {
                values.record(&mut Visitor { out, message: None });
            }
        }
    }

    fn on_event(&self, event: &Event<'_>, ctx: Context<'_, S>) {
        if !event.metadata().target().starts_with("mqrpc") {
            return;
        }
        let mut message = String::new();
        let mut formatted = String::new();
        event.record(&mut Visitor {
            out: &mut formatted,
            message: Some(&mut message),
        });
        let fields = formatted
            .split('\u{1f}')
            .filter_map(|pair| pair.split_once('='))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let mut scope = String::new();
        if let Some(spans) = ctx.event_scope(event) {
            for span in spans {
                if let Some(Fields(out)) = span.extensions().get::<Fields>() {
                    scope.push_str(out);
                }
            }
        }
        EVENTS
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(Captured {
                message,
                fields,
                scope,
            });
    }
}

/// The first event `matches` takes, waiting for it (events of other tasks
/// may come a little later).
pub async fn wait_for(matches: impl Fn(&Captured) -> bool) -> Captured {
    for _ in 0..500 {
        let found = EVENTS
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .find(|e| matches(e))
            .cloned();
        if let Some(found) = found {
            return found;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("no such event among those captured");
}
