//! The embedded default broker: a real MQTT v5 broker (the `mqtt5` crate)
//! run in-process on a free loopback port, so the quickstart and tests need
//! nothing installed.

use std::net::SocketAddr;

use mqtt5::broker::config::{BrokerConfig, StorageBackend, StorageConfig};
use mqtt5::broker::{BrokerShutdownHandle, MqttBroker};
use tracing::warn;

use crate::Error;

/// The largest Maximum Packet Size MQTT v5 allows (a 4-byte variable integer).
const MQTT_MAX_PACKET_SIZE: usize = 268_435_455;

/// An MQTT v5 broker running inside this process, on `127.0.0.1` and a free
/// port, with memory storage (nothing written to disk) and no `$SYS` topics.
/// It stops when dropped.
///
/// It sets TCP_NODELAY on accepted sockets, forwards Response Topic,
/// Correlation Data, Content Type and user properties, and supports shared
/// subscriptions. It is meant for development, tests and single-process
/// deployments; use Mosquitto, EMQX, HiveMQ or VerneMQ across machines.
///
/// ```
/// # use mqrpc_runtime as mqrpc;
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), mqrpc::Error> {
/// let broker = mqrpc::EmbeddedBroker::start().await?;
/// let conn = mqrpc::Connection::connect_url(&broker.url()).await?;
/// assert!(conn.is_connected());
/// # Ok(()) }
/// ```
pub struct EmbeddedBroker {
    addr: SocketAddr,
    websocket: Option<SocketAddr>,
    shutdown: BrokerShutdownHandle,
}

impl std::fmt::Debug for EmbeddedBroker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmbeddedBroker")
            .field("addr", &self.addr)
            .finish()
    }
}

impl EmbeddedBroker {
    /// Starts the broker on `127.0.0.1` and a free port.
    pub async fn start() -> Result<EmbeddedBroker, Error> {
        Self::start_on(0).await
    }

    /// Starts the broker on `127.0.0.1:port` (0 picks a free port).
    pub async fn start_on(port: u16) -> Result<EmbeddedBroker, Error> {
        Self::launch(Self::config(port)).await
    }

    /// Starts the broker on `127.0.0.1` and a free port, plus an MQTT over
    /// WebSocket endpoint (`/mqtt`) on another free port: see
    /// [`websocket_url`](Self::websocket_url). Feature `websocket`.
    #[cfg(feature = "websocket")]
    pub async fn start_with_websocket() -> Result<EmbeddedBroker, Error> {
        use mqtt5::broker::config::WebSocketConfig;
        let websocket = WebSocketConfig::new()
            .with_bind_address(([127, 0, 0, 1], 0))
            .with_path("/mqtt");
        Self::launch(Self::config(0).with_websocket(websocket)).await
    }

    fn config(port: u16) -> BrokerConfig {
        let storage = StorageConfig::default()
            .with_backend(StorageBackend::Memory)
            .with_persistence(false);
        BrokerConfig::default()
            .with_bind_address(([127, 0, 0, 1], port))
            .with_storage(storage)
            .with_sys_topics_enabled(false)
            // mqtt5's default (268 435 456) is one over the MQTT v5 limit
            // (§3.2.2.3.6) and strict clients such as paho-mqtt drop the
            // connection on it.
            .with_max_packet_size(MQTT_MAX_PACKET_SIZE)
    }

    async fn launch(config: BrokerConfig) -> Result<EmbeddedBroker, Error> {
        let websocket_wanted = config.websocket_config.is_some();
        let mut broker = MqttBroker::with_config(config)
            .await
            .map_err(|e| Error::Broker(e.to_string()))?;
        let addr = broker
            .local_addr()
            .ok_or_else(|| Error::Broker("the broker has no listening address".into()))?;
        #[cfg(feature = "websocket")]
        let websocket = broker.ws_local_addr();
        #[cfg(not(feature = "websocket"))]
        let websocket = None;
        if websocket_wanted && websocket.is_none() {
            return Err(Error::Broker("the WebSocket endpoint did not start".into()));
        }
        let shutdown = broker.shutdown_handle();
        tokio::spawn(async move {
            if let Err(e) = broker.run().await {
                warn!(error = %e, "embedded broker stopped with an error");
            }
        });
        Ok(EmbeddedBroker {
            addr,
            websocket,
            shutdown,
        })
    }

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `ws://127.0.0.1:<port>/mqtt` when started with
    /// [`start_with_websocket`](Self::start_with_websocket).
    pub fn websocket_url(&self) -> Option<String> {
        self.websocket.map(|addr| format!("ws://{addr}/mqtt"))
    }

    /// `mqtt://127.0.0.1:<port>`, for [`Connection::connect_url`](crate::Connection::connect_url) or `MQRPC_BROKER`.
    pub fn url(&self) -> String {
        format!("mqtt://{}", self.addr)
    }
}

impl Drop for EmbeddedBroker {
    fn drop(&mut self) {
        self.shutdown.shutdown();
    }
}
