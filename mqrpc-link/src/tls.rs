//! `mqtts://`: TCP (TCP_NODELAY), then TLS through rustls (with the
//! configuration the caller gives) with tokio-rustls.

use std::io;
use std::sync::Arc;

use rustls::pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

use crate::connector::{socket_addr, tcp, Connector};

/// TLS over TCP to `host:port`, verifying the broker's certificate against
/// `host` (a DNS name or an IP address). Handshake failures keep rustls'
/// text in the I/O error (e.g. `invalid peer certificate: UnknownIssuer`),
/// which the transport reports in
/// [`ConnectionState::Disconnected`](crate::ConnectionState::Disconnected).
#[derive(Clone)]
pub struct TlsConnector {
    addr: String,
    tls: Tls,
}

impl std::fmt::Debug for TlsConnector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsConnector")
            .field("addr", &self.addr)
            .field("server_name", &self.tls.server_name)
            .finish_non_exhaustive()
    }
}

impl TlsConnector {
    /// A connector to `host:port` with this rustls configuration; an
    /// [`InvalidInput`](io::ErrorKind::InvalidInput) error when `host` is
    /// not a valid TLS server name.
    ///
    /// ```
    /// # use std::sync::Arc;
    /// use mqrpc_link::TlsConnector;
    /// let provider = Arc::new(rustls::crypto::ring::default_provider());
    /// let config = rustls::ClientConfig::builder_with_provider(provider)
    ///     .with_safe_default_protocol_versions()
    ///     .unwrap()
    ///     .with_root_certificates(rustls::RootCertStore::empty())
    ///     .with_no_client_auth();
    /// let config = Arc::new(config);
    /// assert!(TlsConnector::new("broker.example", 8883, config.clone()).is_ok());
    /// assert!(TlsConnector::new("not a name", 8883, config).is_err());
    /// ```
    pub fn new(host: &str, port: u16, config: Arc<rustls::ClientConfig>) -> io::Result<Self> {
        let tls = Tls::new(host, config)?;
        Ok(TlsConnector {
            addr: socket_addr(host, port),
            tls,
        })
    }
}

impl Connector for TlsConnector {
    type Stream = TlsStream<TcpStream>;

    async fn connect(&mut self) -> io::Result<TlsStream<TcpStream>> {
        let stream = tcp(&self.addr).await?;
        self.tls.handshake(stream).await
    }
}

/// A rustls configuration and the name the broker's certificate must carry.
#[derive(Clone)]
pub(crate) struct Tls {
    connector: tokio_rustls::TlsConnector,
    server_name: ServerName<'static>,
}

impl Tls {
    pub(crate) fn new(host: &str, config: Arc<rustls::ClientConfig>) -> io::Result<Tls> {
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let server_name = ServerName::try_from(host.to_string()).map_err(|e| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("`{host}` is not a valid TLS server name: {e}"),
            )
        })?;
        Ok(Tls {
            connector: tokio_rustls::TlsConnector::from(config),
            server_name,
        })
    }

    /// The TLS handshake over an open TCP stream.
    pub(crate) async fn handshake(&self, stream: TcpStream) -> io::Result<TlsStream<TcpStream>> {
        self.connector
            .connect(self.server_name.clone(), stream)
            .await
    }
}
