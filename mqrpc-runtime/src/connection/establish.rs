//! Opening a connection: from a URL, the environment (or an embedded
//! broker), or options; the session loop's settings for those options.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use mqrpc_link::{Transport, TransportConfig};
use tokio::sync::oneshot;

use crate::Error;

use super::dial::Dialer;
use super::driver::Driver;
use super::options::ConnectOptions;
use super::shared::{Connection, Held, Shared};
use super::will::last_will;

impl Connection {
    /// Connects to the broker at `url` (see [`ConnectOptions::from_url`]).
    pub async fn connect_url(url: &str) -> Result<Connection, Error> {
        Self::connect(ConnectOptions::from_url(url)?).await
    }
    /// Connects to the broker named by `MQRPC_BROKER`.
    pub async fn from_env() -> Result<Connection, Error> {
        Self::connect(ConnectOptions::from_env()?).await
    }
    /// Connects to the broker named by `MQRPC_BROKER`, or, when it is unset,
    /// starts an [`EmbeddedBroker`](crate::EmbeddedBroker) on a free
    /// loopback port and connects to it. The broker lives as long as the
    /// connection (get its URL from [`Connection::broker_url`] to connect
    /// other processes or connections to it).
    #[cfg(feature = "embedded-broker")]
    pub async fn from_env_or_embedded() -> Result<Connection, Error> {
        match ConnectOptions::from_env() {
            Ok(options) => Self::connect(options).await,
            Err(Error::BrokerNotConfigured) => {
                let broker = crate::EmbeddedBroker::start().await?;
                let options = ConnectOptions::from_url(&broker.url())?;
                Self::establish(options, None, Some(broker)).await
            }
            Err(e) => Err(e),
        }
    }

    /// Without the `embedded-broker` feature there is no broker to start:
    /// this stand-in connects to the broker `MQRPC_BROKER` names and, when
    /// it is unset, fails with [`Error::Unsupported`] naming the feature.
    /// It is deprecated so that the compiler says so where it is called:
    /// turn the feature on (`cargo add mqrpc -F embedded-broker`) for the
    /// quickstart, or call [`Connection::from_env`] in a service.
    ///
    /// ```
    /// # use mqrpc_runtime as mqrpc;
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// # std::env::remove_var("MQRPC_BROKER");
    /// #[allow(deprecated)]
    /// let err = mqrpc::Connection::from_env_or_embedded().await.unwrap_err();
    /// assert!(err.to_string().contains("`embedded-broker` feature"));
    /// # }
    /// ```
    #[cfg(not(feature = "embedded-broker"))]
    #[deprecated(
        note = "starting an embedded broker needs the `embedded-broker` feature of mqrpc \
                (cargo add mqrpc -F embedded-broker); without it, use Connection::from_env"
    )]
    pub async fn from_env_or_embedded() -> Result<Connection, Error> {
        match ConnectOptions::from_env() {
            Ok(options) => Self::connect(options).await,
            Err(Error::BrokerNotConfigured) => Err(Error::Unsupported {
                what: "an embedded broker without the `embedded-broker` feature of mqrpc: \
                       cargo add mqrpc -F embedded-broker, or set MQRPC_BROKER=mqtt://host:port"
                    .into(),
            }),
            Err(e) => Err(e),
        }
    }
    /// Connects with explicit options. Fails with [`Error::Connect`] when the
    /// broker is unreachable or refuses the connection, and with
    /// [`Error::AuthFailed`] when it refuses the credentials.
    pub async fn connect(options: ConnectOptions) -> Result<Connection, Error> {
        Self::establish(
            options,
            None,
            #[cfg(feature = "embedded-broker")]
            None,
        )
        .await
    }
    /// `will`: the instance its Last Will names (default: its client id).
    pub(super) async fn establish(
        options: ConnectOptions,
        will: Option<&str>,
        #[cfg(feature = "embedded-broker")] embedded: Option<crate::EmbeddedBroker>,
    ) -> Result<Connection, Error> {
        let client_id = options
            .client_id
            .clone()
            .unwrap_or_else(|| format!("mqrpc-{:016x}", random_u64()));
        let dialer = Dialer::new(&options)?;
        let (connected_tx, connected_rx) = oneshot::channel();
        let driver = Arc::new(Driver::new(connected_tx));
        let transport =
            Transport::start_with_handler(transport_config(&options, &client_id, will), dialer, {
                let driver = driver.clone();
                move |event| driver.handle(event)
            });
        let broker = options.broker_address();
        let shared = Arc::new(Shared {
            transport,
            client_id,
            broker: broker.clone(),
            options,
            routes: RwLock::new(Vec::new()),
            next_route_id: AtomicU64::new(1),
            ready: AtomicBool::new(false),
            closed: AtomicBool::new(false),
            held: Mutex::new(Held::default()),
            response_information: Mutex::new(None),
            broker_max_packet: AtomicU32::new(0),
            link_lost: Mutex::new(Vec::new()),
            served: Mutex::new(std::collections::HashMap::new()),
            client_state: tokio::sync::OnceCell::new(),
            #[cfg(feature = "embedded-broker")]
            _embedded: embedded,
        });
        driver.attach(Arc::downgrade(&shared));
        let outcome = match connected_rx.await {
            Ok(outcome) => outcome,
            Err(_) => Err(Error::Connect {
                broker,
                reason: "the connection task ended".into(),
            }),
        };
        match outcome {
            Ok(()) => Ok(Connection { shared }),
            Err(error) => {
                // No retries for a connection nobody got.
                shared.closed.store(true, Ordering::Release);
                shared.transport.disconnect().await;
                Err(error)
            }
        }
    }
}

/// The session loop's settings for these options.
fn transport_config(
    options: &ConnectOptions,
    client_id: &str,
    will: Option<&str>,
) -> TransportConfig {
    let mut config = TransportConfig::new(client_id);
    let will = will.map_or_else(
        || crate::protocol::topic::as_level(client_id),
        str::to_string,
    );
    config.last_will = Some(last_will(options, &will));
    config.keep_alive = options.keep_alive.max(Duration::from_secs(1));
    config.connect_timeout = options.connect_timeout.max(Duration::from_millis(100));
    config.credentials = options.credentials.clone();
    config.max_packet_size = options.max_packet_size;
    // Ask for Response Information (MQTT v5 §3.1.2.11.7): a broker may
    // grant a topic space for responses.
    config.request_response_information = true;
    config.coalescer = Some(Arc::new(super::batcher::Batcher));
    match options.session_expiry {
        Some(expiry) => {
            config.clean_start = false;
            config.session_expiry = u32::try_from(expiry.as_secs()).unwrap_or(u32::MAX).max(1);
        }
        None => {
            // Calls whose requests were in flight fail at the link loss:
            // sending those requests again would run calls nobody awaits.
            config.resend_after_session_loss = false;
        }
    }
    config
}

/// 64 random bits from the standard library's per-process hasher seed,
/// the time and a counter: unique client ids without a `rand` dependency.
pub(crate) fn random_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
    hasher.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default(),
    );
    hasher.write_u32(std::process::id());
    hasher.finish()
}
