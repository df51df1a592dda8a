//! Server layers (`ServerOptions::layer`), on both brokers: tower's own
//! concurrency limit, load shedding and rate limit applied to a service
//! unchanged, observed through the `_stats` built-in (which passes the
//! layers by); an auth layer that refuses calls without a token, the
//! caller getting the typed status and the handler never running; client
//! layers around outgoing calls.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use mqrpc::{Error, MethodStats, ServerHandle, ServerOptions};
use mqrpc_tests::{eventually, on_both_brokers, TestBroker};
use tower::limit::{ConcurrencyLimitLayer, RateLimitLayer};
use tower::load_shed::LoadShedLayer;

#[mqrpc::service]
pub trait Gate {
    /// Waits for a pass from the test, then answers `id`.
    async fn hold(&self, id: u32) -> u32;
    /// Answers at once.
    async fn pass(&self, id: u32) -> u32;
}

/// Counts the runs of its methods and how many `hold`s run at once.
#[derive(Clone)]
struct Turnstile {
    passes: Arc<tokio::sync::Semaphore>,
    running: Arc<AtomicU32>,
    most: Arc<AtomicU32>,
    runs: Arc<AtomicU32>,
}

impl Turnstile {
    fn new() -> Turnstile {
        Turnstile {
            passes: Arc::new(tokio::sync::Semaphore::new(0)),
            running: Arc::default(),
            most: Arc::default(),
            runs: Arc::default(),
        }
    }
}

impl Gate for Turnstile {
    async fn hold(&self, id: u32) -> u32 {
        self.runs.fetch_add(1, Ordering::SeqCst);
        let now = self.running.fetch_add(1, Ordering::SeqCst) + 1;
        self.most.fetch_max(now, Ordering::SeqCst);
        self.passes.acquire().await.unwrap().forget();
        self.running.fetch_sub(1, Ordering::SeqCst);
        id
    }

    async fn pass(&self, id: u32) -> u32 {
        self.runs.fetch_add(1, Ordering::SeqCst);
        id
    }
}

async fn serve(broker: &TestBroker, gate: &Turnstile, options: ServerOptions) -> ServerHandle {
    let conn = broker.connect().await;
    GateServer::new(gate.clone())
        .serve_with(&conn, options)
        .await
        .unwrap()
}

/// `_stats` of `method`, asked of the one server.
async fn stats(client: &GateClient, server: &ServerHandle, method: &str) -> MethodStats {
    let one = client.client().to_instance(server.instance()).unwrap();
    let (_, stats) = one.stats().await.unwrap().next().await.unwrap();
    let stats = stats.unwrap();
    stats
        .methods
        .into_iter()
        .find(|m| m.name == method)
        .unwrap()
}

/// A concurrency limit of 1: three calls at once run one after the other;
/// `_stats` answers while they wait, and counts them once done.
async fn a_concurrency_limit_runs_calls_one_at_a_time(broker: TestBroker) {
    let gate = Turnstile::new();
    let options = ServerOptions::default().layer(ConcurrencyLimitLayer::new(1));
    let server = serve(&broker, &gate, options).await;
    let client = GateClient::new(&broker.connect().await).await.unwrap();
    let calls: Vec<_> = (0..3)
        .map(|id| {
            let client = client.clone();
            tokio::spawn(async move { client.hold(id).await })
        })
        .collect();
    assert!(eventually(|| gate.running.load(Ordering::SeqCst) == 1).await);
    // The others wait in the layer: not run, not answered.
    let held = stats(&client, &server, "hold").await;
    assert_eq!(held.calls, 0, "{held:?}");
    assert_eq!(gate.runs.load(Ordering::SeqCst), 1);
    gate.passes.add_permits(3);
    let mut answered: Vec<u32> = Vec::new();
    for call in calls {
        answered.push(call.await.unwrap().unwrap());
    }
    answered.sort();
    assert_eq!(answered, [0, 1, 2]);
    assert_eq!(gate.most.load(Ordering::SeqCst), 1, "never two at once");
    let done = stats(&client, &server, "hold").await;
    assert_eq!((done.calls, done.failures), (3, 0), "{done:?}");
}

/// Load shedding over a concurrency limit of 1: a call that comes while
/// one runs is refused with `resource-exhausted` and does not run.
async fn load_shedding_refuses_what_the_limit_cannot_take(broker: TestBroker) {
    let gate = Turnstile::new();
    let options = ServerOptions::default()
        .layer(LoadShedLayer::new())
        .layer(ConcurrencyLimitLayer::new(1));
    let server = serve(&broker, &gate, options).await;
    let client = GateClient::new(&broker.connect().await).await.unwrap();
    let first = {
        let client = client.clone();
        tokio::spawn(async move { client.hold(1).await })
    };
    assert!(eventually(|| gate.running.load(Ordering::SeqCst) == 1).await);
    let shed = client.pass(2).await.unwrap_err();
    assert!(matches!(shed, Error::ResourceExhausted { .. }), "{shed}");
    assert_eq!(
        gate.runs.load(Ordering::SeqCst),
        1,
        "the shed call did not run"
    );
    let refused = stats(&client, &server, "pass").await;
    assert_eq!((refused.calls, refused.failures), (1, 1), "{refused:?}");
    gate.passes.add_permits(1);
    assert_eq!(first.await.unwrap().unwrap(), 1);
    assert_eq!(client.pass(3).await.unwrap(), 3, "room again");
}

/// A rate limit of 2 calls an hour, shed when used up: the third call is
/// refused with `resource-exhausted`, as `_stats` shows.
async fn a_rate_limit_refuses_calls_over_its_rate(broker: TestBroker) {
    let gate = Turnstile::new();
    let options = ServerOptions::default()
        .layer(LoadShedLayer::new())
        .layer(RateLimitLayer::new(2, Duration::from_secs(3600)));
    let server = serve(&broker, &gate, options).await;
    let client = GateClient::new(&broker.connect().await).await.unwrap();
    assert_eq!(client.pass(1).await.unwrap(), 1);
    assert_eq!(client.pass(2).await.unwrap(), 2);
    let limited = client.pass(3).await.unwrap_err();
    assert!(
        matches!(limited, Error::ResourceExhausted { .. }),
        "{limited}"
    );
    assert_eq!(gate.runs.load(Ordering::SeqCst), 2);
    let counted = stats(&client, &server, "pass").await;
    assert_eq!((counted.calls, counted.failures), (3, 1), "{counted:?}");
}

/// Client layers: one that sees each call (and could change it), and a
/// concurrency limit with load shedding on the client, which refuses a
/// second call locally while one runs: it is never sent.
async fn client_layers_see_and_limit_calls(broker: TestBroker) {
    let gate = Turnstile::new();
    let _server = serve(&broker, &gate, ServerOptions::default()).await;
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let log = seen.clone();
    let options = mqrpc::ClientOptions::default()
        .layer(tower::util::MapRequestLayer::new(
            move |mut call: mqrpc::layers::ClientCall| {
                log.lock().unwrap().push(call.method().to_string());
                call.set_timeout(Duration::from_secs(20));
                call
            },
        ))
        .layer(LoadShedLayer::new())
        .layer(ConcurrencyLimitLayer::new(1));
    let client = GateClient::with_options(&broker.connect().await, options)
        .await
        .unwrap();
    assert_eq!(client.pass(1).await.unwrap(), 1);
    let first = {
        let client = client.clone();
        tokio::spawn(async move { client.hold(2).await })
    };
    assert!(eventually(|| gate.running.load(Ordering::SeqCst) == 1).await);
    let shed = client.pass(3).await.unwrap_err();
    assert!(matches!(shed, Error::ResourceExhausted { .. }), "{shed}");
    assert_eq!(
        gate.runs.load(Ordering::SeqCst),
        2,
        "the shed call was not sent"
    );
    gate.passes.add_permits(1);
    assert_eq!(first.await.unwrap().unwrap(), 2);
    assert_eq!(*seen.lock().unwrap(), ["pass", "hold", "pass"]);
}

/// An auth layer on the server refuses calls without the right token in
/// their metadata: the caller gets `Error::Unauthenticated`, the handler
/// never runs. A client layer that injects the token gets through.
async fn an_auth_layer_refuses_calls_without_a_token(broker: TestBroker) {
    use mqrpc::layers::{intercept, Rejection};
    let gate = Turnstile::new();
    let auth = intercept(|call| match call.metadata().get("token") {
        Some("s3cret") => Ok(()),
        Some(_) => Err(Rejection::permission_denied("wrong token")),
        None => Err(Rejection::unauthenticated("no token")),
    });
    let _server = serve(&broker, &gate, ServerOptions::default().layer(auth)).await;
    let conn = broker.connect().await;
    let anonymous = GateClient::new(&conn).await.unwrap();
    let refused = anonymous.pass(1).await.unwrap_err();
    assert!(
        matches!(&refused, Error::Unauthenticated { message } if message == "no token"),
        "{refused}"
    );
    let wrong = mqrpc::Metadata::from_pairs([("token", "guess")]).unwrap();
    let guessing = GateClient::with_options(&conn, mqrpc::ClientOptions::default().metadata(wrong))
        .await
        .unwrap();
    let denied = guessing.pass(2).await.unwrap_err();
    assert!(matches!(denied, Error::PermissionDenied { .. }), "{denied}");
    assert_eq!(
        gate.runs.load(Ordering::SeqCst),
        0,
        "refused calls never run"
    );
    let inject = tower::util::MapRequestLayer::new(|mut call: mqrpc::layers::ClientCall| {
        call.metadata_mut().insert("token", "s3cret").unwrap();
        call
    });
    let member = GateClient::with_options(&conn, mqrpc::ClientOptions::default().layer(inject))
        .await
        .unwrap();
    assert_eq!(member.pass(3).await.unwrap(), 3);
    assert_eq!(gate.runs.load(Ordering::SeqCst), 1);
}

on_both_brokers!(
    an_auth_layer_refuses_calls_without_a_token,
    client_layers_see_and_limit_calls,
    a_concurrency_limit_runs_calls_one_at_a_time,
    load_shedding_refuses_what_the_limit_cannot_take,
    a_rate_limit_refuses_calls_over_its_rate,
);
