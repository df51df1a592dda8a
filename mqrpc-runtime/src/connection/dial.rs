//! Opens the byte stream to the broker that [`ConnectOptions`] names: TCP,
//! TLS or WebSocket, within the connect timeout, moving on to the next
//! broker address after a failed attempt.

use std::io;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};

use mqrpc_link::connector::socket_addr;
use mqrpc_link::Connector;

use super::options::ConnectOptions;
use crate::Error;

/// Any stream the session loop can run over.
pub(crate) trait Stream: AsyncRead + AsyncWrite + Unpin + Send + 'static {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send + 'static> Stream for T {}

/// How to reach one broker address.
enum Way {
    Tcp {
        addr: String,
        nodelay: bool,
    },
    #[cfg(feature = "tls")]
    Tls(mqrpc_link::TlsConnector),
    #[cfg(feature = "websocket")]
    Ws(mqrpc_link::WsConnector),
}

impl Way {
    async fn open(&mut self) -> io::Result<Box<dyn Stream>> {
        Ok(match self {
            Way::Tcp { addr, nodelay } => {
                let stream = tokio::net::TcpStream::connect(addr.as_str()).await?;
                stream.set_nodelay(*nodelay)?;
                Box::new(stream)
            }
            #[cfg(feature = "tls")]
            Way::Tls(tls) => Box::new(tls.connect().await?),
            #[cfg(feature = "websocket")]
            Way::Ws(ws) => Box::new(ws.connect().await?),
        })
    }
}

/// The [`Connector`] of a [`Connection`](crate::Connection).
pub(crate) struct Dialer {
    ways: Vec<Way>,
    next: usize,
    timeout: Duration,
}

impl Dialer {
    /// Reads TLS files now, so a bad path fails `connect` at once.
    pub(crate) fn new(options: &ConnectOptions) -> Result<Dialer, Error> {
        let ways = options
            .brokers()
            .into_iter()
            .map(|(host, port)| way(options, host, port))
            .collect::<Result<Vec<Way>, Error>>()?;
        Ok(Dialer {
            ways,
            next: 0,
            timeout: options.connect_timeout.max(Duration::from_millis(100)),
        })
    }
}

impl Connector for Dialer {
    type Stream = Box<dyn Stream>;

    async fn connect(&mut self) -> io::Result<Box<dyn Stream>> {
        let index = self.next % self.ways.len();
        let opened = match tokio::time::timeout(self.timeout, self.ways[index].open()).await {
            Ok(opened) => opened,
            Err(_) => Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("no connection within {:?}", self.timeout),
            )),
        };
        if opened.is_err() {
            // The next attempt (after the backoff) tries the next address.
            self.next = index + 1;
        }
        opened
    }
}

fn way(options: &ConnectOptions, host: String, port: u16) -> Result<Way, Error> {
    #[cfg(feature = "websocket")]
    if let Some(path) = &options.websocket_path {
        let scheme = if options.tls.is_some() { "wss" } else { "ws" };
        let url = format!("{scheme}://{}{path}", socket_addr(&host, port));
        let invalid = |e: io::Error| Error::InvalidUrl {
            url: url.clone(),
            reason: e.to_string(),
        };
        #[cfg(feature = "tls")]
        if let Some(settings) = &options.tls {
            let config = std::sync::Arc::new(settings.client_config()?);
            let ws = mqrpc_link::WsConnector::new_secure(&url, config).map_err(invalid)?;
            return Ok(Way::Ws(ws));
        }
        return Ok(Way::Ws(
            mqrpc_link::WsConnector::new(&url).map_err(invalid)?,
        ));
    }
    #[cfg(feature = "tls")]
    if let Some(settings) = &options.tls {
        let config = std::sync::Arc::new(settings.client_config()?);
        let tls = mqrpc_link::TlsConnector::new(&host, port, config).map_err(|e| Error::Tls {
            reason: e.to_string(),
        })?;
        return Ok(Way::Tls(tls));
    }
    if options.tls.is_some() || options.websocket_path.is_some() {
        return Err(Error::Unsupported {
            what: "TLS or WebSocket without the `tls` / `websocket` feature".into(),
        });
    }
    Ok(Way::Tcp {
        addr: socket_addr(&host, port),
        nodelay: options.tcp_nodelay,
    })
}
