//! The systems under test, each behind one [`Target`] interface: a call of
//! a scenario that checks its own answer.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use rumqttc::v5::mqttbytes::v5::{Packet, PublishProperties};
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::{AsyncClient, Event, MqttOptions};
use tokio::sync::{mpsc, oneshot};

pub type CallFuture<'a> = Pin<Box<dyn Future<Output = Result<(), String>> + Send + 'a>>;

/// The two request/response shapes measured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scenario {
    /// `add(i64, i64) -> i64`
    Add,
    /// `echo(Vec<u8>) -> Vec<u8>` with 1 KiB
    Echo1k,
}

impl Scenario {
    pub fn name(self) -> &'static str {
        match self {
            Scenario::Add => "add",
            Scenario::Echo1k => "echo_1k",
        }
    }
}

pub const ECHO_LEN: usize = 1024;
pub const CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// A tag unique to each system instance of this process: instances on one
/// broker (QoS 0 and QoS 1) need their own client ids (a second CONNECT
/// with the same id takes over the first one's session) and their own
/// topics (otherwise both servers answer every request).
pub(crate) fn instance_tag() -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    format!(
        "{:x}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

pub fn echo_payload() -> Vec<u8> {
    (0..ECHO_LEN).map(|i| i as u8).collect()
}

/// One system under test.
pub trait Target: Send + Sync + 'static {
    /// Makes call number `i` of `scenario` and checks the answer.
    fn call(&self, scenario: Scenario, i: i64) -> CallFuture<'_>;

    /// PUBLISH packets the client and server have sent so far (MQTT
    /// systems; `None` for the others).
    fn publishes(&self) -> Option<u64> {
        None
    }

    /// PUBLISH packets per call when they are not counted (raw rumqttc:
    /// one request and one answer).
    fn fixed_publishes_per_call(&self) -> Option<f64> {
        None
    }
}

fn check_add(i: i64, got: i64) -> Result<(), String> {
    if got == i + 1 {
        Ok(())
    } else {
        Err(format!("add({i}, 1) answered {got}"))
    }
}

fn check_echo(got: &[u8]) -> Result<(), String> {
    if got.len() == ECHO_LEN && got[ECHO_LEN - 1] == ((ECHO_LEN - 1) as u8) {
        Ok(())
    } else {
        Err("echo answered something else".into())
    }
}

// ---------------------------------------------------------------- mqrpc

#[mqrpc::service]
pub trait Bench {
    async fn add(&self, a: i64, b: i64) -> i64;
    async fn echo(&self, data: Vec<u8>) -> Vec<u8>;
}

pub struct BenchImpl;

impl Bench for BenchImpl {
    async fn add(&self, a: i64, b: i64) -> i64 {
        a + b
    }
    async fn echo(&self, data: Vec<u8>) -> Vec<u8> {
        data
    }
}

pub struct Mqrpc {
    client: BenchClient,
    payload: Vec<u8>,
    _server: mqrpc::Connection,
    _client_conn: mqrpc::Connection,
}

impl Mqrpc {
    /// Server and client on separate connections, as two services would be.
    pub async fn start(url: &str, qos: mqrpc::QoS) -> Result<Mqrpc, String> {
        let prefix = format!("bench-{}", instance_tag());
        let server = mqrpc::Connection::connect_url(url)
            .await
            .map_err(|e| e.to_string())?;
        let _ = BenchServer::new(BenchImpl)
            .serve_with(
                &server,
                mqrpc::ServerOptions::default()
                    .prefix(prefix.clone())
                    .qos(qos),
            )
            .await
            .map_err(|e| e.to_string())?;
        let conn = mqrpc::Connection::connect_url(url)
            .await
            .map_err(|e| e.to_string())?;
        let client = BenchClient::with_options(
            &conn,
            mqrpc::ClientOptions::default()
                .prefix(prefix)
                .qos(qos)
                .timeout(CALL_TIMEOUT),
        )
        .await
        .map_err(|e| e.to_string())?;
        Ok(Mqrpc {
            client,
            payload: echo_payload(),
            _server: server,
            _client_conn: conn,
        })
    }
}

impl Target for Mqrpc {
    fn publishes(&self) -> Option<u64> {
        Some(self._server.publish_counts().publishes + self._client_conn.publish_counts().publishes)
    }

    fn call(&self, scenario: Scenario, i: i64) -> CallFuture<'_> {
        Box::pin(async move {
            match scenario {
                Scenario::Add => {
                    check_add(i, self.client.add(i, 1).await.map_err(|e| e.to_string())?)
                }
                Scenario::Echo1k => check_echo(
                    &self
                        .client
                        .echo(self.payload.clone())
                        .await
                        .map_err(|e| e.to_string())?,
                ),
            }
        })
    }
}

// ---------------------------------------------------------------- raw rumqttc

/// The floor: a hand-written rumqttc v5 request/response with Response
/// Topic and Correlation Data, no framework.
pub struct Raw {
    client: AsyncClient,
    qos: QoS,
    pending: Arc<Mutex<HashMap<u64, oneshot::Sender<Bytes>>>>,
    next: AtomicU64,
    reply_topic: String,
    add_topic: String,
    echo_topic: String,
    payload: Bytes,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for Raw {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

pub(crate) fn raw_options(id: &str, port: u16) -> MqttOptions {
    let mut options = MqttOptions::new(id, "127.0.0.1", port);
    options.set_max_packet_size(Some(1 << 20));
    let mut network = rumqttc::NetworkOptions::new();
    network.set_tcp_nodelay(true);
    options.set_network_options(network);
    options
}

/// Subscribes and drives the event loop until the SUBACK arrives.
pub(crate) async fn raw_subscribe(
    client: &AsyncClient,
    eventloop: &mut rumqttc::v5::EventLoop,
    filter: &str,
    qos: QoS,
) -> Result<(), String> {
    client
        .subscribe(filter, qos)
        .await
        .map_err(|e| e.to_string())?;
    loop {
        match eventloop.poll().await.map_err(|e| e.to_string())? {
            Event::Incoming(Packet::SubAck(_)) => return Ok(()),
            _ => continue,
        }
    }
}

impl Raw {
    pub async fn start(port: u16, qos: QoS) -> Result<Raw, String> {
        let tag = instance_tag();
        let request_filter = format!("bench/raw-{tag}/+");
        // Server: the event loop hands requests to one responder task.
        let (server, mut server_loop) =
            AsyncClient::new(raw_options(&format!("raw-srv-{tag}"), port), 1024);
        raw_subscribe(&server, &mut server_loop, &request_filter, qos).await?;
        let (requests_tx, mut requests_rx) = mpsc::unbounded_channel();
        let server_poll = tokio::spawn(async move {
            while let Ok(event) = server_loop.poll().await {
                if let Event::Incoming(Packet::Publish(publish)) = event {
                    let _ = requests_tx.send(publish);
                }
            }
        });
        let responder_client = server.clone();
        let responder = tokio::spawn(async move {
            while let Some(publish) = requests_rx.recv().await {
                let properties = publish.properties.unwrap_or_default();
                let Some(topic) = properties.response_topic else {
                    continue;
                };
                let body: Bytes = if publish.topic.ends_with(b"/add") {
                    let (a, b): (i64, i64) =
                        postcard::from_bytes(&publish.payload).unwrap_or_default();
                    postcard::to_stdvec(&(a + b)).unwrap().into()
                } else {
                    publish.payload
                };
                let reply = PublishProperties {
                    correlation_data: properties.correlation_data,
                    ..PublishProperties::default()
                };
                let _ = responder_client
                    .publish_with_properties(topic, qos, false, body, reply)
                    .await;
            }
        });
        // Client: responses matched by correlation id.
        let reply_topic = format!("bench/raw-reply/{tag}");
        let (client, mut client_loop) =
            AsyncClient::new(raw_options(&format!("raw-cli-{tag}"), port), 1024);
        raw_subscribe(&client, &mut client_loop, &reply_topic, qos).await?;
        let pending: Arc<Mutex<HashMap<u64, oneshot::Sender<Bytes>>>> = Arc::default();
        let deliver = pending.clone();
        let client_poll = tokio::spawn(async move {
            while let Ok(event) = client_loop.poll().await {
                if let Event::Incoming(Packet::Publish(publish)) = event {
                    let id = publish
                        .properties
                        .as_ref()
                        .and_then(|p| p.correlation_data.as_deref())
                        .and_then(|c| <[u8; 8]>::try_from(c).ok())
                        .map(u64::from_be_bytes);
                    if let Some(waiter) = id.and_then(|id| deliver.lock().unwrap().remove(&id)) {
                        let _ = waiter.send(publish.payload);
                    }
                }
            }
        });
        Ok(Raw {
            client,
            qos,
            pending,
            next: AtomicU64::new(0),
            reply_topic,
            add_topic: format!("bench/raw-{tag}/add"),
            echo_topic: format!("bench/raw-{tag}/echo"),
            payload: Bytes::from(postcard::to_stdvec(&echo_payload()).unwrap()),
            tasks: vec![server_poll, responder, client_poll],
        })
    }
}

impl Target for Raw {
    fn fixed_publishes_per_call(&self) -> Option<f64> {
        Some(2.0)
    }

    fn call(&self, scenario: Scenario, i: i64) -> CallFuture<'_> {
        Box::pin(async move {
            let id = self.next.fetch_add(1, Ordering::Relaxed);
            let (tx, rx) = oneshot::channel();
            self.pending.lock().unwrap().insert(id, tx);
            let (topic, body) = match scenario {
                Scenario::Add => (
                    self.add_topic.clone(),
                    Bytes::from(postcard::to_stdvec(&(i, 1i64)).unwrap()),
                ),
                Scenario::Echo1k => (self.echo_topic.clone(), self.payload.clone()),
            };
            let properties = PublishProperties {
                response_topic: Some(self.reply_topic.clone()),
                correlation_data: Some(Bytes::copy_from_slice(&id.to_be_bytes())),
                ..PublishProperties::default()
            };
            let result = tokio::time::timeout(CALL_TIMEOUT, async {
                self.client
                    .publish_with_properties(topic, self.qos, false, body, properties)
                    .await
                    .map_err(|e| e.to_string())?;
                rx.await.map_err(|e| e.to_string())
            })
            .await;
            let answer = match result {
                Ok(answer) => answer?,
                Err(_) => {
                    self.pending.lock().unwrap().remove(&id);
                    return Err("timeout".into());
                }
            };
            match scenario {
                Scenario::Add => {
                    check_add(i, postcard::from_bytes(&answer).map_err(|e| e.to_string())?)
                }
                Scenario::Echo1k => {
                    let data: Vec<u8> = postcard::from_bytes(&answer).map_err(|e| e.to_string())?;
                    check_echo(&data)
                }
            }
        })
    }
}

// ---------------------------------------------------------------- tarpc

#[tarpc::service]
pub trait BenchRpc {
    async fn add(a: i64, b: i64) -> i64;
    async fn echo(data: Vec<u8>) -> Vec<u8>;
}

#[derive(Clone)]
struct BenchRpcServer;

impl BenchRpc for BenchRpcServer {
    async fn add(self, _: tarpc::context::Context, a: i64, b: i64) -> i64 {
        a + b
    }
    async fn echo(self, _: tarpc::context::Context, data: Vec<u8>) -> Vec<u8> {
        data
    }
}

pub struct Tarpc {
    client: BenchRpcClient,
    payload: Vec<u8>,
    server: tokio::task::JoinHandle<()>,
}

impl Drop for Tarpc {
    fn drop(&mut self) {
        self.server.abort();
    }
}

impl Tarpc {
    pub async fn start() -> Result<Tarpc, String> {
        use tarpc::server::{BaseChannel, Channel};
        use tarpc::tokio_serde::formats::Bincode;
        let mut listener = tarpc::serde_transport::tcp::listen(("127.0.0.1", 0), Bincode::default)
            .await
            .map_err(|e| e.to_string())?;
        listener.config_mut().max_frame_length(16 << 20);
        let addr = listener.local_addr();
        let server = tokio::spawn(async move {
            while let Some(Ok(transport)) = listener.next().await {
                let _ = transport.get_ref().set_nodelay(true);
                let channel = BaseChannel::with_defaults(transport);
                tokio::spawn(channel.execute(BenchRpcServer.serve()).for_each_concurrent(
                    None,
                    |response| async move {
                        tokio::spawn(response);
                    },
                ));
            }
        });
        let transport = tarpc::serde_transport::tcp::connect(addr, Bincode::default)
            .await
            .map_err(|e| e.to_string())?;
        transport
            .get_ref()
            .set_nodelay(true)
            .map_err(|e| e.to_string())?;
        let mut config = tarpc::client::Config::default();
        config.max_in_flight_requests = 100_000;
        config.pending_request_buffer = 10_000;
        let client = BenchRpcClient::new(config, transport).spawn();
        Ok(Tarpc {
            client,
            payload: echo_payload(),
            server,
        })
    }
}

impl Target for Tarpc {
    fn call(&self, scenario: Scenario, i: i64) -> CallFuture<'_> {
        Box::pin(async move {
            let mut context = tarpc::context::current();
            context.deadline = std::time::Instant::now() + CALL_TIMEOUT;
            match scenario {
                Scenario::Add => check_add(
                    i,
                    self.client
                        .add(context, i, 1)
                        .await
                        .map_err(|e| e.to_string())?,
                ),
                Scenario::Echo1k => check_echo(
                    &self
                        .client
                        .echo(context, self.payload.clone())
                        .await
                        .map_err(|e| e.to_string())?,
                ),
            }
        })
    }
}

// ---------------------------------------------------------------- NATS

pub struct Nats {
    client: async_nats::Client,
    payload: Bytes,
    server: tokio::task::JoinHandle<()>,
}

impl Drop for Nats {
    fn drop(&mut self) {
        self.server.abort();
    }
}

impl Nats {
    pub async fn start(port: u16) -> Result<Nats, String> {
        let url = format!("nats://127.0.0.1:{port}");
        let server_client = async_nats::connect(&url).await.map_err(|e| e.to_string())?;
        let mut requests = server_client
            .subscribe("bench.>")
            .await
            .map_err(|e| e.to_string())?;
        server_client.flush().await.map_err(|e| e.to_string())?;
        let server = tokio::spawn(async move {
            while let Some(message) = requests.next().await {
                let Some(reply) = message.reply else { continue };
                let body: Bytes = if message.subject.as_str() == "bench.add" {
                    let (a, b): (i64, i64) =
                        postcard::from_bytes(&message.payload).unwrap_or_default();
                    postcard::to_stdvec(&(a + b)).unwrap().into()
                } else {
                    message.payload
                };
                let _ = server_client.publish(reply, body).await;
            }
        });
        let client = async_nats::ConnectOptions::new()
            .request_timeout(Some(CALL_TIMEOUT))
            .connect(&url)
            .await
            .map_err(|e| e.to_string())?;
        Ok(Nats {
            client,
            payload: Bytes::from(postcard::to_stdvec(&echo_payload()).unwrap()),
            server,
        })
    }
}

impl Target for Nats {
    fn call(&self, scenario: Scenario, i: i64) -> CallFuture<'_> {
        Box::pin(async move {
            let (subject, body) = match scenario {
                Scenario::Add => (
                    "bench.add",
                    Bytes::from(postcard::to_stdvec(&(i, 1i64)).unwrap()),
                ),
                Scenario::Echo1k => ("bench.echo", self.payload.clone()),
            };
            let answer = self
                .client
                .request(subject, body)
                .await
                .map_err(|e| e.to_string())?;
            match scenario {
                Scenario::Add => check_add(
                    i,
                    postcard::from_bytes(&answer.payload).map_err(|e| e.to_string())?,
                ),
                Scenario::Echo1k => {
                    let data: Vec<u8> =
                        postcard::from_bytes(&answer.payload).map_err(|e| e.to_string())?;
                    check_echo(&data)
                }
            }
        })
    }
}
