//! Client streaming and bidirectional streaming (`mqrpc::Stream<T>`
//! arguments) on both brokers: items within the server's credit (counted,
//! never timed), an echo with credits both ways, either side ending early
//! with nothing left behind, and a server that dies mid-stream.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use mqrpc::{ClientOptions, ConnectOptions, Connection, Error, STREAM_WINDOW};
use mqrpc_tests::{eventually, TestBroker};

mqrpc_tests::on_both_brokers!(
    an_upload_of_100_000_items_is_held_to_the_window,
    an_upload_with_other_arguments_and_a_typed_error,
    a_bidirectional_echo_runs_on_both_credits,
    the_caller_dropping_a_client_stream_ends_both_sides,
    the_caller_dropping_a_bidirectional_stream_ends_both_sides,
    a_handler_returning_early_ends_both_sides,
    a_server_gone_mid_stream_ends_the_call,
);

/// Why an upload was refused.
#[derive(Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub enum UploadError {
    /// The name is empty.
    NoName,
}

/// Takes streams of items from its callers.
#[mqrpc::service]
pub trait Sink {
    /// Sums the items; with `stop_after`, returns after that many.
    async fn sum(&self, items: mqrpc::Stream<u64>, stop_after: Option<u64>) -> u64;
    /// Stores a file: its size in bytes.
    async fn put(&self, name: String, chunks: mqrpc::Stream<Vec<u8>>) -> Result<u64, UploadError>;
    /// Each item times two, as it comes; with `stop_after`, ends after
    /// that many.
    async fn double(
        &self,
        items: mqrpc::Stream<u64>,
        stop_after: Option<u64>,
    ) -> mqrpc::Stream<u64>;
}

/// What the server side saw.
#[derive(Clone, Default)]
struct Counts {
    /// Items the handlers took.
    taken: Arc<AtomicU64>,
    /// Handlers (and answer streams) dropped.
    dropped: Arc<AtomicU64>,
}

struct DropCount(Arc<AtomicU64>);

impl Drop for DropCount {
    fn drop(&mut self) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

impl Sink for Counts {
    async fn sum(&self, mut items: mqrpc::Stream<u64>, stop_after: Option<u64>) -> u64 {
        let _guard = DropCount(self.dropped.clone());
        let (mut sum, mut n) = (0, 0);
        while let Some(item) = items.next().await {
            let taken = self.taken.fetch_add(1, Ordering::SeqCst) + 1;
            // A slow handler: the caller must wait for it.
            if taken.is_multiple_of(500) {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            sum += item;
            n += 1;
            if Some(n) == stop_after {
                break;
            }
        }
        sum
    }

    async fn put(
        &self,
        name: String,
        mut chunks: mqrpc::Stream<Vec<u8>>,
    ) -> Result<u64, UploadError> {
        if name.is_empty() {
            return Err(UploadError::NoName);
        }
        let mut size = 0;
        while let Some(chunk) = chunks.next().await {
            size += chunk.len() as u64;
        }
        Ok(size)
    }

    async fn double(
        &self,
        items: mqrpc::Stream<u64>,
        stop_after: Option<u64>,
    ) -> mqrpc::Stream<u64> {
        let guard = DropCount(self.dropped.clone());
        let taken = self.taken.clone();
        let items = items
            .map(move |item| {
                let _ = &guard;
                taken.fetch_add(1, Ordering::SeqCst);
                item * 2
            })
            .take(stop_after.unwrap_or(u64::MAX) as usize);
        mqrpc::Stream::new(items)
    }
}

/// A guard against a hang, far above what each case needs: a case that
/// reaches it fails (it is not a measure of speed).
const HANG_GUARD: Duration = Duration::from_secs(120);

async fn serve(broker: &TestBroker) -> (Connection, Counts, mqrpc::ServerHandle) {
    let conn = broker.connect().await;
    let counts = Counts::default();
    let handle = SinkServer::new(counts.clone()).serve(&conn).await.unwrap();
    (conn, counts, handle)
}

/// A client on a connection of its own that holds one call at a time, so
/// a call left in its pending table shows as the next one failing.
async fn client(broker: &TestBroker) -> SinkClient {
    let conn = Connection::connect(
        ConnectOptions::from_url(broker.url())
            .unwrap()
            .max_pending_calls(1),
    )
    .await
    .unwrap();
    let options = ClientOptions::default().timeout(Duration::from_secs(60));
    SinkClient::with_options(&conn, options).await.unwrap()
}

/// `0..n` (or without end), counting what the client pulled and the most
/// it had pulled beyond what the server's handler took.
fn counted(
    n: Option<u64>,
    counts: &Counts,
    pulled: &Arc<AtomicU64>,
    ahead: &Arc<AtomicU64>,
) -> impl futures_util::Stream<Item = u64> + Send + 'static {
    let (taken, pulled, ahead) = (counts.taken.clone(), pulled.clone(), ahead.clone());
    futures_util::stream::iter(0..n.unwrap_or(u64::MAX)).map(move |item| {
        let pulled = pulled.fetch_add(1, Ordering::SeqCst) + 1;
        let taken = taken.load(Ordering::SeqCst);
        ahead.fetch_max(pulled.saturating_sub(taken), Ordering::SeqCst);
        item
    })
}

/// Nothing of a call is left: no client stream on the server, no stream
/// sending, and the client's one pending slot is free again.
async fn nothing_left(handle: &mqrpc::ServerHandle, client: &SinkClient) {
    assert!(
        eventually(|| handle.usage().upstreams == 0).await,
        "{:?}",
        handle.usage()
    );
    assert!(
        eventually(|| handle.usage().streams == 0).await,
        "{:?}",
        handle.usage()
    );
    let sum = client.sum(mqrpc::Stream::iter([1, 2, 3]), None).await;
    assert_eq!(sum.unwrap(), 6, "the client's pending slot is still taken");
}

async fn an_upload_of_100_000_items_is_held_to_the_window(broker: TestBroker) {
    let (_conn, counts, handle) = serve(&broker).await;
    let client = client(&broker).await;
    let (pulled, ahead) = (Arc::default(), Arc::default());
    let n = 100_000;
    let items = counted(Some(n), &counts, &pulled, &ahead);
    let sum = tokio::time::timeout(HANG_GUARD, client.sum(items, None))
        .await
        .expect("hung")
        .unwrap();
    assert_eq!(sum, n * (n - 1) / 2);
    assert_eq!(pulled.load(Ordering::SeqCst), n);
    assert_eq!(counts.taken.load(Ordering::SeqCst), n);
    // Never more than the window on the way, and the window was used.
    let ahead = ahead.load(Ordering::SeqCst);
    println!(
        "{}: most items ahead of the handler: {ahead}",
        broker.kind()
    );
    assert!(ahead <= u64::from(STREAM_WINDOW), "{ahead} items ahead");
    assert!(ahead >= u64::from(STREAM_WINDOW / 2), "{ahead} items ahead");
    nothing_left(&handle, &client).await;
}

async fn an_upload_with_other_arguments_and_a_typed_error(broker: TestBroker) {
    let (_conn, _counts, handle) = serve(&broker).await;
    let client = client(&broker).await;
    let chunks = futures_util::stream::iter((0..100).map(|i| vec![i as u8; 1000]));
    assert_eq!(
        client.put("a.bin".into(), chunks).await.unwrap(),
        Ok(100_000)
    );
    // A sender half works as the input, as with tonic.
    let (tx, rx) = tokio::sync::mpsc::channel::<Vec<u8>>(4);
    let writer = tokio::spawn(async move {
        for _ in 0..50 {
            tx.send(vec![7; 10]).await.unwrap();
        }
    });
    let chunks = futures_util::stream::unfold(rx, |mut rx| async { Some((rx.recv().await?, rx)) });
    assert_eq!(client.put("b.bin".into(), chunks).await.unwrap(), Ok(500));
    writer.await.unwrap();
    // The typed error, without reading the stream.
    let none = futures_util::stream::iter(Vec::<Vec<u8>>::new());
    assert_eq!(
        client.put(String::new(), none).await.unwrap(),
        Err(UploadError::NoName)
    );
    nothing_left(&handle, &client).await;
}

async fn a_bidirectional_echo_runs_on_both_credits(broker: TestBroker) {
    let (_conn, counts, handle) = serve(&broker).await;
    let client = client(&broker).await;
    let (pulled, ahead) = (Arc::default(), Arc::default());
    let n = 2_000;
    let mut answers = client
        .double(counted(Some(n), &counts, &pulled, &ahead), None)
        .await
        .unwrap();
    // The caller takes 5 and waits: the server sends its window of answers
    // and takes no more items than it answered, and the client sends no
    // more than a window beyond those.
    for i in 0..5 {
        assert_eq!(answers.next().await.unwrap().unwrap(), i * 2);
    }
    let window = u64::from(STREAM_WINDOW);
    assert!(eventually(|| counts.taken.load(Ordering::SeqCst) == window).await);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        counts.taken.load(Ordering::SeqCst),
        window,
        "ran ahead of the answer window"
    );
    assert!(
        pulled.load(Ordering::SeqCst) <= 2 * window,
        "the client ran ahead of its credit"
    );
    // The rest, in order.
    let mut next = 5;
    while let Some(item) = tokio::time::timeout(HANG_GUARD, answers.next())
        .await
        .expect("hung")
    {
        assert_eq!(item.unwrap(), next * 2);
        next += 1;
    }
    assert_eq!(next, n);
    assert!(ahead.load(Ordering::SeqCst) <= window);
    drop(answers);
    nothing_left(&handle, &client).await;
}

async fn the_caller_dropping_a_client_stream_ends_both_sides(broker: TestBroker) {
    let (_conn, counts, handle) = serve(&broker).await;
    let client = client(&broker).await;
    let (pulled, ahead) = (Arc::default(), Arc::default());
    let call = tokio::spawn({
        let client = client.clone();
        let items = counted(None, &counts, &pulled, &ahead);
        async move { client.sum(items, None).await }
    });
    assert!(eventually(|| counts.taken.load(Ordering::SeqCst) >= 100).await);
    assert_eq!(handle.usage().upstreams, 1);
    call.abort();
    // The cancel stops the handler; its stream leaves the table.
    assert!(eventually(|| counts.dropped.load(Ordering::SeqCst) == 1).await);
    nothing_left(&handle, &client).await;
}

async fn the_caller_dropping_a_bidirectional_stream_ends_both_sides(broker: TestBroker) {
    let (_conn, counts, handle) = serve(&broker).await;
    let client = client(&broker).await;
    let (pulled, ahead) = (Arc::default(), Arc::default());
    let items = counted(None, &counts, &pulled, &ahead);
    let mut answers = client.double(items, None).await.unwrap();
    for i in 0..100 {
        assert_eq!(answers.next().await.unwrap().unwrap(), i * 2);
    }
    drop(answers);
    assert!(eventually(|| counts.dropped.load(Ordering::SeqCst) == 1).await);
    // The client stops sending: what it pulled stays put.
    let before = pulled.load(Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(pulled.load(Ordering::SeqCst), before, "still sending");
    nothing_left(&handle, &client).await;
}

async fn a_handler_returning_early_ends_both_sides(broker: TestBroker) {
    let (_conn, counts, handle) = serve(&broker).await;
    let client = client(&broker).await;
    let (pulled, ahead) = (Arc::default(), Arc::default());
    // Client streaming: the answer comes after 10 of endless items.
    let items = counted(None, &counts, &pulled, &ahead);
    let sum = tokio::time::timeout(HANG_GUARD, client.sum(items, Some(10)))
        .await
        .expect("hung");
    assert_eq!(sum.unwrap(), 45);
    assert!(pulled.load(Ordering::SeqCst) <= 10 + u64::from(STREAM_WINDOW));
    nothing_left(&handle, &client).await;
    // Bidirectional: the answers end after 10.
    let items = counted(None, &counts, &pulled, &ahead);
    let answers: Vec<u64> = client
        .double(items, Some(10))
        .await
        .unwrap()
        .map(|item| item.unwrap())
        .collect()
        .await;
    assert_eq!(answers, (0..10).map(|i| i * 2).collect::<Vec<_>>());
    nothing_left(&handle, &client).await;
}

async fn a_server_gone_mid_stream_ends_the_call(broker: TestBroker) {
    // The server reaches the broker through a proxy that is then cut and
    // let nothing through again: to the broker, the server died (its Will
    // goes out); to the server, the broker is unreachable.
    let address = format!("127.0.0.1:{}", broker.port()).parse().unwrap();
    let proxy = mqrpc_tests::proxy::Proxy::start(address).await.unwrap();
    let server_conn = Connection::connect_url(&proxy.url()).await.unwrap();
    let counts = Counts::default();
    let _handle = SinkServer::new(counts.clone())
        .serve(&server_conn)
        .await
        .unwrap();
    let client = client(&broker).await;
    let (pulled, ahead) = (Arc::default(), Arc::default());
    let call = tokio::spawn({
        let client = client.clone();
        let items = counted(None, &counts, &pulled, &ahead);
        async move { client.sum(items, None).await }
    });
    assert!(eventually(|| counts.taken.load(Ordering::SeqCst) >= 100).await);
    proxy.half_open();
    proxy.cut();
    let outcome = tokio::time::timeout(HANG_GUARD, call)
        .await
        .expect("hung")
        .unwrap();
    match outcome {
        Err(Error::ServerGone { method, .. }) => assert_eq!(method, "sum"),
        Err(error) if error.is_timeout() => {}
        other => panic!("expected ServerGone or a timeout, got {other:?}"),
    }
    drop(server_conn);
}
