//! `mqtts://`: TCP (TCP_NODELAY), then TLS through rustls (ring provider,
//! configured from [`TlsSettings`]) with tokio-rustls.

use std::io;
use std::sync::Arc;

use rustls::pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

use super::connector::{socket_addr, tcp, Connector};
use crate::transport::tls::TlsSettings;
use crate::{ConnectOptions, Error};

/// TLS over TCP to `host:port`, verifying the broker's certificate against
/// `host` (a DNS name or an IP address). Handshake failures keep rustls'
/// text in the I/O error (e.g. `invalid peer certificate: UnknownIssuer`),
/// which the transport reports in
/// [`ConnectionState::Disconnected`](super::ConnectionState::Disconnected).
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
    /// A connector to `host:port` with this rustls configuration.
    pub fn new(host: &str, port: u16, config: Arc<rustls::ClientConfig>) -> Result<Self, Error> {
        let tls = Tls::new(host, config)?;
        Ok(TlsConnector {
            addr: socket_addr(host, port),
            tls,
        })
    }

    /// The connector for `mqtts://` options: their host, port and TLS
    /// settings (roots, client certificate). Files named there are read now.
    pub fn from_options(options: &ConnectOptions) -> Result<Self, Error> {
        let settings = options.tls_settings().ok_or_else(|| Error::Tls {
            reason: "these connection options do not ask for TLS".into(),
        })?;
        Self::from_settings(options.host(), options.port(), settings)
    }

    /// A connector to `host:port` configured from [`TlsSettings`].
    pub(crate) fn from_settings(
        host: &str,
        port: u16,
        settings: &TlsSettings,
    ) -> Result<Self, Error> {
        Self::new(host, port, client_config(settings)?)
    }
}

impl Connector for TlsConnector {
    type Stream = TlsStream<TcpStream>;

    async fn connect(&mut self) -> io::Result<TlsStream<TcpStream>> {
        let stream = tcp(&self.addr).await?;
        self.tls.handshake(stream).await
    }
}

/// The rustls client configuration of these settings, shareable between
/// connectors.
pub(crate) fn client_config(settings: &TlsSettings) -> Result<Arc<rustls::ClientConfig>, Error> {
    settings.client_config().map(Arc::new)
}

/// A rustls configuration and the name the broker's certificate must carry.
#[derive(Clone)]
pub(crate) struct Tls {
    connector: tokio_rustls::TlsConnector,
    server_name: ServerName<'static>,
}

impl Tls {
    pub(crate) fn new(host: &str, config: Arc<rustls::ClientConfig>) -> Result<Tls, Error> {
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let server_name = ServerName::try_from(host.to_string()).map_err(|e| Error::Tls {
            reason: format!("`{host}` is not a valid TLS server name: {e}"),
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
