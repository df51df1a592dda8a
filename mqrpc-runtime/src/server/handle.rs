//! Starting a server ([`serve`]) and the handle that stops it.

use super::dispatch::Dispatcher;
use super::{ServerOptions, Service};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Semaphore;

use crate::connection::{Connection, Sink};
use crate::protocol::topic;
use crate::protocol::QoS;
use crate::server::duplicates::{CallTable, Limits};
use crate::server::limits::{Held, RequestLimits, ServerUsage};
use crate::server::reassembly::Transfers;
use crate::Error;

/// A running server. Dropping it leaves the service running for as long as
/// the connection lives; call [`ServerHandle::shutdown`] to stop gracefully.
#[derive(Debug)]
#[must_use = "keep the handle to stop the server later; dropping it does not stop serving"]
pub struct ServerHandle {
    conn: Connection,
    /// The method subscription, and the cancel subscription of a shared one.
    route_ids: Vec<u64>,
    filter: String,
    instance: String,
    activity: Arc<Activity>,
    held: Arc<Held>,
}

/// Requests admitted and not yet answered, for a graceful shutdown.
#[derive(Debug, Default)]
pub(super) struct Activity {
    admitted: AtomicUsize,
    idle: tokio::sync::Notify,
}

impl Activity {
    pub(super) fn enter(self: &Arc<Self>) -> ActivityGuard {
        self.admitted.fetch_add(1, Ordering::AcqRel);
        ActivityGuard(self.clone())
    }
}

/// Counts one admitted request until it is answered (or dropped).
pub(super) struct ActivityGuard(pub(super) Arc<Activity>);

impl Drop for ActivityGuard {
    fn drop(&mut self) {
        if self.0.admitted.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.idle.notify_waiters();
        }
    }
}

impl ServerHandle {
    /// The topic filter the server subscribed to, e.g.
    /// `$share/mqrpc/mqrpc/Calculator/+` (or `mqrpc/Calculator/+` without a
    /// share group).
    pub fn topic_filter(&self) -> &str {
        &self.filter
    }

    /// The instance id: requests to `<prefix>/<service>/_to/<instance>/<method>`
    /// reach this server alone (`Client::to_instance`).
    pub fn instance(&self) -> &str {
        &self.instance
    }

    /// What the server holds for its callers now (duplicate table, waiting
    /// requests, streams) and how many requests it refused or dropped for
    /// being over a request limit; each figure within its bound in
    /// [`ServerOptions`] (see [`ServerUsage`]).
    ///
    /// ```
    /// # use mqrpc_runtime as mqrpc;
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), mqrpc::Error> {
    /// use mqrpc::{Codec, Connection, Reply, ServerOptions, Service};
    /// struct Echo;
    /// impl Service for Echo {
    ///     const NAME: &'static str = "Echo";
    ///     const METHODS: &'static [&'static str] = &["echo"];
    ///     async fn call(&self, _method: &str, codec: Codec, payload: &[u8]) -> Reply {
    ///         Reply::ok(codec, &payload.len())
    ///     }
    /// }
    /// let conn = Connection::from_env_or_embedded().await?;
    /// let opts = ServerOptions::default().dedup(1_000, 1 << 20, std::time::Duration::from_secs(60));
    /// let server = mqrpc::serve(&conn, Echo, opts).await?;
    /// let usage = server.usage();
    /// assert_eq!(usage.dedup_budget, 1 << 20);
    /// assert!(usage.dedup_bytes <= usage.dedup_budget);
    /// assert_eq!(usage.refused_over_limits, 0);
    /// # Ok(()) }
    /// ```
    pub fn usage(&self) -> ServerUsage {
        self.held.usage()
    }

    /// Unsubscribes; requests published afterwards are no longer served.
    /// Handlers already running still answer, later (see
    /// [`shutdown`](Self::shutdown) to wait for them). Publishes no notice
    /// that the instance is gone: its answers are still to come.
    pub async fn stop(self) -> Result<(), Error> {
        drop(self.conn.stopped_serving(&self.instance));
        self.unsubscribe().await
    }

    async fn unsubscribe(&self) -> Result<(), Error> {
        let mut result = Ok(());
        for id in &self.route_ids {
            if let Err(e) = self.conn.unsubscribe(*id).await {
                result = Err(e);
            }
        }
        result
    }

    /// Graceful shutdown: unsubscribes, then waits until every request
    /// already received (running or waiting for a slot) is answered.
    /// Bound the wait with `tokio::time::timeout` if you must.
    ///
    /// Then, if no other server on this connection has the same instance
    /// id, it publishes the notice that the instance is gone
    /// (`<reply prefix>/_gone/<instance>`, PROTOCOL.md "Server gone"):
    /// calls that clients still send to this instance end with
    /// [`Error::ServerGone`] instead of waiting for their deadline. A broker
    /// that answers it "no matching subscribers" (no client listens) is no
    /// failure: nobody had to be told. While
    /// the broker is away the notice cannot go out: the error is then
    /// [`Error::Disconnected`] (the server has stopped all the same).
    ///
    /// ```
    /// # use mqrpc_runtime as mqrpc;
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), mqrpc::Error> {
    /// use mqrpc::{Codec, Connection, Reply, ServerOptions, Service};
    /// struct Echo;
    /// impl Service for Echo {
    ///     const NAME: &'static str = "Echo";
    ///     const METHODS: &'static [&'static str] = &["echo"];
    ///     async fn call(&self, _method: &str, codec: Codec, payload: &[u8]) -> Reply {
    ///         Reply::ok(codec, &payload.len())
    ///     }
    /// }
    /// let conn = Connection::from_env_or_embedded().await?;
    /// let opts = ServerOptions::default().instance("echo-1");
    /// let server = mqrpc::serve(&conn, Echo, opts).await?;
    /// assert_eq!(server.instance(), "echo-1");
    /// server.shutdown().await?; // waits for running calls, then `mqrpc/_gone/echo-1`
    /// # Ok(()) }
    /// ```
    pub async fn shutdown(self) -> Result<(), Error> {
        let unsubscribed = self.unsubscribe().await;
        loop {
            let idle = self.activity.idle.notified();
            if self.activity.admitted.load(Ordering::Acquire) == 0 {
                break;
            }
            idle.await;
        }
        let announced = match self.conn.stopped_serving(&self.instance) {
            // Its Will (if it has one of its own) goes once the notice did.
            Some(_last) => self.conn.announce_gone(&self.instance).await,
            None => Ok(()),
        };
        unsubscribed.and(announced)
    }
}

/// Serves `service` on `conn`: subscribes to `<prefix>/<name>/+` — as the
/// shared subscription `$share/<group>/<prefix>/<name>/+` unless
/// [`ServerOptions::no_share_group`] — and to the service's other filters
/// (its instance, broadcasts, discovery, batches, cancels: PROTOCOL.md,
/// "Topics"), all in one SUBSCRIBE, and returns once the broker
/// acknowledged it. If the broker refuses any filter, none stays
/// subscribed and the error names the refused filter.
pub async fn serve<S: Service>(
    conn: &Connection,
    service: S,
    options: ServerOptions,
) -> Result<ServerHandle, Error> {
    topic::validate_prefix(&options.prefix)?;
    topic::validate_level(S::NAME)?;
    if S::NAME.starts_with('_') {
        return Err(Error::InvalidName {
            name: S::NAME.to_string(),
            reason: "service names starting with `_` are reserved".into(),
        });
    }
    if let Some(group) = &options.share_group {
        topic::validate_level(group)?;
    }
    let instance = match &options.instance {
        Some(instance) => instance.clone(),
        None => topic::as_level(conn.client_id()),
    };
    topic::validate_level(&instance)?;
    let activity = Arc::new(Activity::default());
    let calls = CallTable::new(Limits {
        max_entries: options.dedup_entries,
        max_bytes: options.dedup_bytes,
        grace: Duration::from_secs(5),
        window: options.dedup_window,
    });
    let service_base = topic::service_base(&options.prefix, S::NAME);
    let transfers = Transfers::new(&options, &service_base, &instance);
    let held = Arc::new(Held::new(calls, options.max_answer_backlog, transfers));
    sweep(Arc::downgrade(&held));
    let service = Arc::new(service);
    let dispatcher = Arc::new(Dispatcher {
        layered: options.layers.build(&service),
        service,
        instance: Arc::from(instance.as_str()),
        held: held.clone(),
        limits: RequestLimits {
            correlation_data: options.max_correlation_data,
            response_topic: options.max_response_topic,
            user_properties: options.max_user_properties,
            user_property_bytes: options.max_user_property_bytes,
            metadata_entries: options.max_metadata_entries,
            metadata_bytes: options.max_metadata_bytes,
        },
        counters: S::METHODS.iter().map(|_| Default::default()).collect(),
        activity: activity.clone(),
        permits: Arc::new(Semaphore::new(options.max_concurrent)),
        max_queued: options.max_queued,
        max_queued_bytes: options.max_queued_bytes,
        max_request_size: options.max_request_size,
        ack_after_answer: options.ack_after_answer,
        shared: options.share_group.is_some(),
    });
    let sink: Sink =
        Arc::new(move |conn, publish, ack| dispatcher.clone().admit(conn, publish, ack));
    let (requests, cancels) = topic::server_filters(
        &options.prefix,
        S::NAME,
        &instance,
        options.share_group.as_deref(),
    );
    let filter = requests[0].clone();
    let mut routes: Vec<_> = requests
        .into_iter()
        .map(|filter| (filter, options.qos, sink.clone()))
        .collect();
    // In a group each request reaches one instance, and the client does not
    // know which: every instance hears every cancel (and ignores the ones
    // of calls it does not run).
    routes.extend(cancels.map(|filter| (filter, QoS::AtMostOnce, sink.clone())));
    // Before the first request can come: its Will is in place (PROTOCOL.md,
    // "Server gone").
    conn.serving(&instance).await;
    // All filters in one SUBSCRIBE, one SUBACK.
    let outcomes = match conn.subscribe_routes(routes).await {
        Ok(outcomes) => outcomes,
        Err(e) => {
            drop(conn.stopped_serving(&instance));
            return Err(e);
        }
    };
    let (granted, refused): (Vec<_>, Vec<_>) = outcomes.into_iter().partition(Result::is_ok);
    let route_ids: Vec<u64> = granted.into_iter().flatten().collect();
    if let Some(Err(e)) = refused.into_iter().next() {
        // Refused in part: nothing of the server stays subscribed.
        for id in &route_ids {
            let _ = conn.unsubscribe(*id).await;
        }
        drop(conn.stopped_serving(&instance));
        return Err(e);
    }
    Ok(ServerHandle {
        conn: conn.clone(),
        route_ids,
        filter,
        instance,
        activity,
        held,
    })
}

/// How often the duplicate table forgets expired calls when no request
/// comes to do it.
const SWEEP: Duration = Duration::from_secs(5);

/// Forgets expired calls every [`SWEEP`], so that the table gives its
/// memory back once the traffic stops; ends with the server.
fn sweep(held: std::sync::Weak<Held>) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(SWEEP);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await; // the first tick is immediate
        loop {
            tick.tick().await;
            let Some(held) = held.upgrade() else {
                return;
            };
            held.calls().expire(std::time::Instant::now());
        }
    });
}
