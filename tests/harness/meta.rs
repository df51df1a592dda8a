//! A service whose handlers report what they see of their calls: the
//! caller's metadata, the answer's metadata they set, and the rest of
//! `mqrpc::context` (tests/metadata.rs).

use std::sync::{Arc, Mutex};

use mqrpc::context::{self, Context};

/// What a handler saw of its call.
#[derive(Debug, Clone, PartialEq, Default, serde::Serialize, serde::Deserialize)]
pub struct Seen {
    pub service: String,
    pub method: String,
    pub metadata: Vec<(String, String)>,
    pub reply_topic: Option<String>,
    pub caller_id: Option<String>,
    pub deadline_ms: Option<u64>,
    pub traceparent: Option<String>,
    pub redelivered: bool,
    /// Whether a task the handler spawned plainly had a context.
    pub spawned_plain: bool,
    /// The method a task spawned with the handler's context carried over
    /// (`Context::scope`) saw.
    pub spawned_scoped: Option<String>,
}

/// The service of the metadata and context tests.
#[mqrpc::service]
pub trait Meta {
    /// What the handler sees. The answer's metadata: `echo-<key>` for each
    /// of the caller's entries, `served-by` (the server's name) and
    /// `from-task` (set by a task the handler spawned with its context).
    async fn seen(&self) -> Seen;
    /// Records its tag and the caller's metadata in `MetaImpl::notes`.
    #[mqrpc(oneway)]
    async fn note(&self, tag: String);
    /// `0..n`; the answer's metadata: `items` = n and `tenant-seen`.
    async fn items(&self, n: u64) -> mqrpc::Stream<u64>;
    /// Never answers a first delivery; a redelivery answers what it sees.
    async fn once_redelivered(&self) -> Seen;
}

/// What `note` calls recorded: each one's tag and the caller's metadata.
pub type Notes = Arc<Mutex<Vec<(String, Vec<(String, String)>)>>>;

/// The implementation: `name` goes in `served-by`.
#[derive(Clone, Default)]
pub struct MetaImpl {
    pub name: String,
    pub notes: Notes,
}

fn pairs(md: &mqrpc::Metadata) -> Vec<(String, String)> {
    md.iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn seen_by(cx: &Context) -> Seen {
    Seen {
        service: cx.service().to_string(),
        method: cx.method().to_string(),
        metadata: pairs(cx.metadata()),
        reply_topic: cx.reply_topic().map(str::to_string),
        caller_id: cx.caller_id().map(str::to_string),
        deadline_ms: cx.remaining().map(|left| left.as_millis() as u64),
        traceparent: cx.traceparent().map(str::to_string),
        redelivered: cx.is_redelivery(),
        ..Seen::default()
    }
}

impl Meta for MetaImpl {
    async fn seen(&self) -> Seen {
        let cx = Context::current().expect("a handler runs in its context");
        let mut seen = seen_by(&cx);
        for (key, value) in &seen.metadata {
            cx.append_response_metadata(&format!("echo-{key}"), value.clone())
                .unwrap();
        }
        context::set_response_metadata("served-by", self.name.clone()).unwrap();
        seen.spawned_plain = tokio::spawn(async { Context::current().is_some() })
            .await
            .unwrap();
        let carried = cx.clone();
        seen.spawned_scoped = tokio::spawn(carried.scope(async {
            context::set_response_metadata("from-task", "yes").unwrap();
            Context::current().map(|cx| cx.method().to_string())
        }))
        .await
        .unwrap();
        seen
    }

    async fn note(&self, tag: String) {
        let md = context::metadata().expect("a handler runs in its context");
        self.notes.lock().unwrap().push((tag, pairs(&md)));
    }

    async fn items(&self, n: u64) -> mqrpc::Stream<u64> {
        let md = context::metadata().unwrap_or_default();
        context::set_response_metadata("items", n.to_string()).unwrap();
        let tenant = md.get("tenant").unwrap_or("none").to_string();
        context::set_response_metadata("tenant-seen", tenant).unwrap();
        mqrpc::Stream::iter(0..n)
    }

    async fn once_redelivered(&self) -> Seen {
        let cx = Context::current().expect("a handler runs in its context");
        if !cx.is_redelivery() {
            std::future::pending::<()>().await;
        }
        seen_by(&cx)
    }
}
