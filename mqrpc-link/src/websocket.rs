//! `ws://` and `wss://`: MQTT over WebSocket (subprotocol `mqtt`, binary
//! messages) through async-tungstenite, seen as one byte stream by
//! ws_stream_tungstenite. With the `tls` feature, `wss://` runs the
//! WebSocket over rustls (see `crate::tls`).

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use async_tungstenite::tokio::TokioAdapter;
use async_tungstenite::tungstenite::client::IntoClientRequest;
use async_tungstenite::tungstenite::http::HeaderValue;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use crate::connector::{tcp, Connector};

/// The stream of a [`WsConnector`]: MQTT bytes in WebSocket binary messages.
pub type WsStream = ws_stream_tungstenite::WsStream<TokioAdapter<MaybeTlsStream>>;

/// MQTT over WebSocket to a URL (`ws://host[:port]/path`, or with the `tls`
/// feature `wss://`), asking for the `mqtt` subprotocol; the handshake fails
/// when the broker does not grant it. TCP_NODELAY is on.
#[derive(Clone)]
pub struct WsConnector {
    addr: String,
    url: String,
    #[cfg(feature = "tls")]
    tls: Option<crate::tls::Tls>,
}

impl std::fmt::Debug for WsConnector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WsConnector")
            .field("url", &self.url)
            .finish_non_exhaustive()
    }
}

impl WsConnector {
    /// A connector to a `ws://` URL (port 80 by default); an
    /// [`InvalidInput`](io::ErrorKind::InvalidInput) error for another
    /// scheme or a URL without a host.
    ///
    /// ```
    /// use mqrpc_link::WsConnector;
    /// assert!(WsConnector::new("ws://127.0.0.1:8080/mqtt").is_ok());
    /// assert!(WsConnector::new("mqtt://127.0.0.1/mqtt").is_err());
    /// ```
    pub fn new(url: &str) -> io::Result<Self> {
        let (addr, _host, secure) = parse(url)?;
        if secure {
            return Err(invalid(
                url,
                "wss:// needs a TLS configuration (WsConnector::new_secure)",
            ));
        }
        Ok(WsConnector {
            addr,
            url: url.to_string(),
            #[cfg(feature = "tls")]
            tls: None,
        })
    }

    /// A connector to a `wss://` URL (port 443 by default), verifying the
    /// broker's certificate against the URL's host with this configuration.
    #[cfg(feature = "tls")]
    pub fn new_secure(url: &str, config: std::sync::Arc<rustls::ClientConfig>) -> io::Result<Self> {
        let (addr, host, secure) = parse(url)?;
        if !secure {
            return Err(invalid(url, "WsConnector::new_secure takes a wss:// URL"));
        }
        Ok(WsConnector {
            addr,
            url: url.to_string(),
            tls: Some(crate::tls::Tls::new(&host, config)?),
        })
    }
}

impl Connector for WsConnector {
    type Stream = WsStream;

    async fn connect(&mut self) -> io::Result<WsStream> {
        let stream = tcp(&self.addr).await?;
        #[cfg(feature = "tls")]
        let stream = match &self.tls {
            Some(tls) => MaybeTlsStream::Tls(Box::new(tls.handshake(stream).await?)),
            None => MaybeTlsStream::Plain(stream),
        };
        #[cfg(not(feature = "tls"))]
        let stream = MaybeTlsStream::Plain(stream);
        let mut request = self.url.as_str().into_client_request().map_err(ws_error)?;
        request
            .headers_mut()
            .insert("Sec-WebSocket-Protocol", HeaderValue::from_static("mqtt"));
        // tungstenite refuses a response without the subprotocol asked for.
        let (socket, _response) = async_tungstenite::tokio::client_async(request, stream)
            .await
            .map_err(ws_error)?;
        Ok(ws_stream_tungstenite::WsStream::new(socket))
    }
}

fn ws_error(e: async_tungstenite::tungstenite::Error) -> io::Error {
    match e {
        async_tungstenite::tungstenite::Error::Io(e) => e,
        e => io::Error::other(format!("WebSocket handshake: {e}")),
    }
}

fn invalid(url: &str, reason: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, format!("`{url}`: {reason}"))
}

/// `(host:port, host, is wss)` of a `ws://` or `wss://` URL.
fn parse(url: &str) -> io::Result<(String, String, bool)> {
    let parsed = url::Url::parse(url).map_err(|e| invalid(url, &e.to_string()))?;
    let secure = match parsed.scheme() {
        "ws" => false,
        "wss" => true,
        _ => return Err(invalid(url, "the scheme must be ws:// or wss://")),
    };
    let host = parsed
        .host_str()
        .filter(|h| !h.is_empty())
        .ok_or_else(|| invalid(url, "no host"))?;
    let port = parsed.port().unwrap_or(if secure { 443 } else { 80 });
    // host_str() keeps an IPv6 address in brackets.
    Ok((format!("{host}:{port}"), host.to_string(), secure))
}

/// TCP, or TLS over TCP (`wss://`), under the WebSocket.
#[derive(Debug)]
pub enum MaybeTlsStream {
    /// `ws://`.
    Plain(TcpStream),
    /// `wss://`.
    #[cfg(feature = "tls")]
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

impl AsyncRead for MaybeTlsStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            MaybeTlsStream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            #[cfg(feature = "tls")]
            MaybeTlsStream::Tls(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for MaybeTlsStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            MaybeTlsStream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            #[cfg(feature = "tls")]
            MaybeTlsStream::Tls(s) => Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            MaybeTlsStream::Plain(s) => Pin::new(s).poll_flush(cx),
            #[cfg(feature = "tls")]
            MaybeTlsStream::Tls(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            MaybeTlsStream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            #[cfg(feature = "tls")]
            MaybeTlsStream::Tls(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}
