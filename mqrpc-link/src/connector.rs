//! Where the bytes go: one fresh stream per (re)connection. TCP is here; TLS
//! (`TlsConnector`, feature `tls`) and WebSocket (`WsConnector`, feature
//! `websocket`) implement the same trait over `tcp()`. Any
//! `AsyncRead + AsyncWrite` stream will do.

use std::future::Future;
use std::io;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

/// Opens one byte stream per (re)connection of a
/// [`Transport`](crate::Transport).
pub trait Connector: Send + 'static {
    /// The stream (TCP, TLS over TCP, WebSocket adapter…).
    type Stream: AsyncRead + AsyncWrite + Unpin + Send + 'static;

    /// Opens a new stream to the broker.
    fn connect(&mut self) -> impl Future<Output = io::Result<Self::Stream>> + Send;
}

/// Plain TCP to `addr` (`host:port`), with TCP_NODELAY set: the transport
/// already batches everything queued into one write, so Nagle's delay would
/// only add latency.
#[derive(Debug, Clone)]
pub struct TcpConnector {
    /// `host:port`.
    pub addr: String,
}

impl TcpConnector {
    /// A connector to `addr` (`host:port`).
    pub fn new(addr: impl Into<String>) -> Self {
        TcpConnector { addr: addr.into() }
    }
}

impl Connector for TcpConnector {
    type Stream = TcpStream;

    async fn connect(&mut self) -> io::Result<TcpStream> {
        tcp(&self.addr).await
    }
}

/// TCP to `addr` (`host:port`) with TCP_NODELAY: the first step of every
/// connector.
pub(crate) async fn tcp(addr: &str) -> io::Result<TcpStream> {
    let stream = TcpStream::connect(addr).await?;
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// `host:port`, IPv6 hosts in brackets (with or without them in `host`).
///
/// ```
/// use mqrpc_link::connector::socket_addr;
/// assert_eq!(socket_addr("::1", 1883), "[::1]:1883");
/// assert_eq!(socket_addr("[::1]", 1883), "[::1]:1883");
/// assert_eq!(socket_addr("broker", 1883), "broker:1883");
/// ```
pub fn socket_addr(host: &str, port: u16) -> String {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}
