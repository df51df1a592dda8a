//! TLS settings of a connection (`mqtts://`): which roots to trust and an
//! optional client certificate, turned into a rustls configuration.

use std::path::PathBuf;

#[cfg(feature = "tls")]
use crate::Error;

/// Whom to trust and who to be, for an `mqtts://` connection.
///
/// Built through [`ConnectOptions::tls`](crate::ConnectOptions::tls) and
/// its `tls_*` siblings, or from the URL:
/// `mqtts://host:8883?ca=/etc/ca.pem&cert=/etc/me.pem&key=/etc/me.key`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct TlsSettings {
    pub(crate) roots: Roots,
    pub(crate) client_cert: Option<(Pem, Pem)>,
}

impl TlsSettings {
    /// For `Debug` output: file names, never inline PEM (a private key).
    pub(crate) fn redacted(&self) -> String {
        let pem = |pem: &Pem| match pem {
            Pem::File(path) => path.display().to_string(),
            Pem::Bytes(_) => "<inline PEM>".to_string(),
        };
        let roots = match &self.roots {
            Roots::System => "system roots".to_string(),
            Roots::Ca(ca) => format!("CA {}", pem(ca)),
        };
        match &self.client_cert {
            None => roots,
            Some((cert, key)) => format!("{roots}, client cert {}, key {}", pem(cert), pem(key)),
        }
    }
}

/// Certificates trusted to sign the broker's certificate.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) enum Roots {
    /// The operating system's store (rustls-native-certs).
    #[default]
    System,
    /// Only the CA certificates in this PEM.
    Ca(Pem),
}

/// PEM text, given inline or as a file read when connecting.
// Without the `tls` feature only URLs build these (and are refused).
#[cfg_attr(not(feature = "tls"), allow(dead_code))]
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Pem {
    File(PathBuf),
    Bytes(Vec<u8>),
}

#[cfg(feature = "tls")]
impl Pem {
    fn read(&self, what: &str) -> Result<Vec<u8>, Error> {
        match self {
            Pem::Bytes(bytes) => Ok(bytes.clone()),
            Pem::File(path) => std::fs::read(path).map_err(|e| {
                tls_error(format!("cannot read the {what} `{}`: {e}", path.display()))
            }),
        }
    }
}

#[cfg(feature = "tls")]
fn tls_error(reason: String) -> Error {
    Error::Tls { reason }
}

#[cfg(feature = "tls")]
impl TlsSettings {
    /// The rustls client configuration (ring provider, TLS 1.2 and 1.3).
    pub(crate) fn client_config(&self) -> Result<rustls::ClientConfig, Error> {
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::{CertificateDer, PrivateKeyDer};

        let mut roots = rustls::RootCertStore::empty();
        match &self.roots {
            Roots::System => {
                let found = rustls_native_certs::load_native_certs();
                let (added, _ignored) = roots.add_parsable_certificates(found.certs);
                if added == 0 {
                    return Err(tls_error(format!(
                        "no usable root certificates in the system store ({} errors); give a CA file (`?ca=` or `tls_ca_file`)",
                        found.errors.len()
                    )));
                }
            }
            Roots::Ca(pem) => {
                let bytes = pem.read("CA file")?;
                for cert in CertificateDer::pem_slice_iter(&bytes) {
                    let cert = cert.map_err(|e| tls_error(format!("bad CA PEM: {e}")))?;
                    roots
                        .add(cert)
                        .map_err(|e| tls_error(format!("bad CA certificate: {e}")))?;
                }
                if roots.is_empty() {
                    return Err(tls_error("the CA PEM holds no certificate".into()));
                }
            }
        }
        let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| tls_error(e.to_string()))?
            .with_root_certificates(roots);
        match &self.client_cert {
            None => Ok(builder.with_no_client_auth()),
            Some((cert, key)) => {
                let cert_bytes = cert.read("client certificate")?;
                let chain = CertificateDer::pem_slice_iter(&cert_bytes)
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|e| tls_error(format!("bad client certificate PEM: {e}")))?;
                if chain.is_empty() {
                    return Err(tls_error(
                        "the client certificate PEM holds no certificate".into(),
                    ));
                }
                let key_bytes = key.read("client key")?;
                let key = PrivateKeyDer::from_pem_slice(&key_bytes)
                    .map_err(|e| tls_error(format!("bad client key PEM: {e}")))?;
                builder
                    .with_client_auth_cert(chain, key)
                    .map_err(|e| tls_error(format!("client certificate rejected: {e}")))
            }
        }
    }
}
