//! Retries that run a call once (`ClientOptions::retry`), on both brokers:
//! an answer lost on the way (the client's link cut by the fault proxy
//! while the handler runs) is retried with the same Correlation Data and
//! answered from the server's duplicate table, the handler having run
//! once; a retry that reaches a server which forgot the call (its
//! duplicate table's bounds dropped it early) is refused with
//! `retry-refused` for a method not marked idempotent, and runs again for
//! one marked `#[mqrpc(idempotent)]`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use mqrpc::{ClientOptions, Connection, Error, RetryPolicy, ServerOptions};
use mqrpc_tests::proxy::Proxy;
use mqrpc_tests::raw::RawPeer;
use mqrpc_tests::{eventually, on_both_brokers, TestBroker};

#[mqrpc::service]
pub trait Ledger {
    /// Not idempotent: each run books once more.
    async fn charge(&self, id: u64) -> u64;
    /// May run twice.
    #[mqrpc(idempotent)]
    async fn balance(&self, id: u64) -> u64;
}

type Hook = Box<dyn FnOnce() + Send>;

/// Counts the runs of each call (by its id) and runs a hook, once, inside
/// the first run of call 1, before it answers.
#[derive(Clone, Default)]
struct Book {
    runs: Arc<Mutex<HashMap<u64, u32>>>,
    hook: Arc<Mutex<Option<Hook>>>,
}

impl Book {
    fn run(&self, id: u64) -> u64 {
        *self.runs.lock().unwrap().entry(id).or_default() += 1;
        if id == 1 {
            if let Some(hook) = self.hook.lock().unwrap().take() {
                hook();
            }
        }
        id * 10
    }

    fn runs(&self, id: u64) -> u32 {
        self.runs.lock().unwrap().get(&id).copied().unwrap_or(0)
    }
}

impl Ledger for Book {
    async fn charge(&self, id: u64) -> u64 {
        self.run(id)
    }

    async fn balance(&self, id: u64) -> u64 {
        self.run(id)
    }
}

fn retrying() -> ClientOptions {
    let policy = RetryPolicy::new(5)
        .backoff(Duration::from_millis(5), Duration::from_millis(100))
        .attempt_timeout(Duration::from_secs(20));
    ClientOptions::default()
        .timeout(Duration::from_secs(30))
        .retry(policy)
}

async fn proxy_to(broker: &TestBroker) -> Arc<Proxy> {
    let upstream = format!("127.0.0.1:{}", broker.port()).parse().unwrap();
    Arc::new(Proxy::start(upstream).await.unwrap())
}

/// The `mqrpc-attempt` of each request of `method` a plain subscriber saw.
async fn attempts_seen(observer: &mut RawPeer, method: &str) -> Vec<String> {
    let mut attempts = Vec::new();
    while let Some(publish) = observer.next_publish(Duration::from_millis(500)).await {
        if !publish.topic.ends_with(method.as_bytes()) {
            continue;
        }
        let properties = publish.properties.unwrap_or_default();
        let attempt = properties
            .user_properties
            .iter()
            .find(|(key, _)| key == "mqrpc-attempt")
            .map_or("1".to_string(), |(_, value)| value.clone());
        attempts.push(attempt);
    }
    attempts
}

/// The answer of call 1 is lost (the client's link is cut while it runs):
/// the retry, with the same Correlation Data, is answered from the
/// duplicate table; the handler ran once.
async fn a_lost_answer_is_retried_and_answered_from_memory(broker: TestBroker) {
    let book = Book::default();
    let proxy = proxy_to(&broker).await;
    let cut = proxy.clone();
    *book.hook.lock().unwrap() = Some(Box::new(move || cut.cut()));
    let server_conn = broker.connect().await;
    let _server = LedgerServer::new(book.clone())
        .serve(&server_conn)
        .await
        .unwrap();
    let mut observer = RawPeer::connect(broker.port(), &["mqrpc/Ledger/+"]).await;
    let conn = Connection::connect_url(&proxy.url()).await.unwrap();
    let ledger = LedgerClient::with_options(&conn, retrying()).await.unwrap();

    assert_eq!(ledger.charge(1).await.unwrap(), 10);
    assert_eq!(book.runs(1), 1, "the retry must not run the handler again");
    let attempts = attempts_seen(&mut observer, "charge").await;
    assert!(
        attempts.len() >= 2 && attempts[0] == "1" && attempts[1] == "2",
        "the call was sent again as attempt 2: {attempts:?}"
    );
    // Later calls are not retried.
    assert_eq!(ledger.charge(2).await.unwrap(), 20);
    assert_eq!(attempts_seen(&mut observer, "charge").await, ["1"]);
}

/// Call 1's answer is lost and, before its retry arrives, the server's
/// duplicate table (one answered call remembered) forgets it: the retry
/// of `charge` is refused (`retry-refused`: the handler ran once), the
/// retry of the idempotent `balance` runs again and is answered.
async fn a_retry_the_server_cannot_vouch_for(broker: TestBroker, idempotent: bool) {
    let book = Book::default();
    let proxy = proxy_to(&broker).await;
    let cut = proxy.clone();
    // The client's link is cut and kept down until the table forgot.
    *book.hook.lock().unwrap() = Some(Box::new(move || {
        cut.update(|faults| faults.refuse = true);
        cut.cut();
    }));
    let server_conn = broker.connect().await;
    let options = ServerOptions::default()
        .no_share_group()
        .dedup(1, 0, Duration::from_secs(60));
    let _server = LedgerServer::new(book.clone())
        .serve_with(&server_conn, options)
        .await
        .unwrap();
    let conn = Connection::connect_url(&proxy.url()).await.unwrap();
    let ledger = LedgerClient::with_options(&conn, retrying()).await.unwrap();
    let first = tokio::spawn(async move {
        if idempotent {
            ledger.balance(1).await
        } else {
            ledger.charge(1).await
        }
    });
    assert!(eventually(|| book.runs(1) == 1).await, "call 1 never ran");
    // Two more answered calls: the table, which keeps one, forgets call 1.
    let direct = LedgerClient::new(&broker.connect().await).await.unwrap();
    assert_eq!(direct.charge(2).await.unwrap(), 20);
    assert_eq!(direct.charge(3).await.unwrap(), 30);
    proxy.heal();
    let outcome = first.await.unwrap();
    if idempotent {
        assert_eq!(outcome.unwrap(), 10);
        assert_eq!(book.runs(1), 2, "an idempotent method runs again");
    } else {
        let error = outcome.unwrap_err();
        assert!(
            matches!(&error, Error::RetryRefused { method, .. } if method == "charge"),
            "{error}"
        );
        assert_eq!(
            book.runs(1),
            1,
            "a non-idempotent method must not run twice"
        );
    }
}

async fn a_forgotten_call_is_not_run_twice(broker: TestBroker) {
    a_retry_the_server_cannot_vouch_for(broker, false).await
}

async fn a_forgotten_idempotent_call_runs_again(broker: TestBroker) {
    a_retry_the_server_cannot_vouch_for(broker, true).await
}

on_both_brokers!(
    a_lost_answer_is_retried_and_answered_from_memory,
    a_forgotten_call_is_not_run_twice,
    a_forgotten_idempotent_call_runs_again,
);
