//! Certificates and passwords made at test time: a CA, a broker certificate
//! for 127.0.0.1, a client certificate, and Mosquitto password files.

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};

/// A fresh CA and the certificates it signed, as PEM files in a temp dir.
pub struct Pki {
    dir: tempfile::TempDir,
}

impl Pki {
    /// Makes a CA (`ca.pem`), a broker certificate for `127.0.0.1` and
    /// `localhost` (`server.pem`, `server.key`) and a client certificate
    /// (`client.pem`, `client.key`).
    pub fn generate(name: &str) -> Pki {
        Pki::generate_for(name, &["127.0.0.1", "localhost"])
    }

    /// [`generate`](Self::generate), with a broker certificate for these
    /// names (DNS names or IP addresses) only.
    pub fn generate_for(name: &str, server_names: &[&str]) -> Pki {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(DnType::CommonName, format!("{name} test CA"));
        ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
        std::fs::write(dir.path().join("ca.pem"), ca.pem()).unwrap();

        for (file, names, usage) in [
            (
                "server",
                server_names.iter().map(|n| n.to_string()).collect(),
                ExtendedKeyUsagePurpose::ServerAuth,
            ),
            (
                "client",
                vec!["mqrpc-client".to_string()],
                ExtendedKeyUsagePurpose::ClientAuth,
            ),
        ] {
            let key = KeyPair::generate().unwrap();
            let mut params = CertificateParams::new(names).unwrap();
            params
                .distinguished_name
                .push(DnType::CommonName, format!("{name} {file}"));
            params.extended_key_usages = vec![usage];
            let cert = params.signed_by(&key, &ca).unwrap();
            std::fs::write(dir.path().join(format!("{file}.pem")), cert.pem()).unwrap();
            std::fs::write(dir.path().join(format!("{file}.key")), key.serialize_pem()).unwrap();
        }
        Pki { dir }
    }

    /// Path of one of the files (`ca.pem`, `server.pem`, `client.key`, ...).
    pub fn file(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Mosquitto lines for a TLS listener on `port` with this PKI's broker
    /// certificate; `require_client_cert` makes clients present one signed
    /// by the CA.
    pub fn mosquitto_listener(&self, port: u16, require_client_cert: bool) -> Vec<String> {
        vec![
            format!("listener {port} 127.0.0.1"),
            format!("cafile {}", self.file("ca.pem").display()),
            format!("certfile {}", self.file("server.pem").display()),
            format!("keyfile {}", self.file("server.key").display()),
            format!("require_certificate {require_client_cert}"),
        ]
    }
}

/// Writes a Mosquitto password file with these users (via
/// `mosquitto_passwd`, from the mosquitto package).
pub fn write_password_file(path: &Path, users: &[(&str, &str)]) {
    for (i, (user, password)) in users.iter().enumerate() {
        let mut command = std::process::Command::new("mosquitto_passwd");
        if i == 0 {
            command.arg("-c");
        }
        let status = command
            .arg("-b")
            .arg(path)
            .args([user, password])
            .status()
            .expect("mosquitto_passwd (package mosquitto)");
        assert!(status.success(), "mosquitto_passwd failed");
    }
}

/// An mqtt5 broker on loopback with a TLS listener and a TLS WebSocket
/// endpoint at `/mqtt`, both with the certificate of `pki`; shut down when
/// dropped.
pub struct TlsMqtt5 {
    /// Port of the `wss://127.0.0.1:<port>/mqtt` endpoint.
    pub wss_port: u16,
    /// Address of the `mqtts://` listener.
    pub tls_addr: std::net::SocketAddr,
    shutdown: mqtt5::broker::BrokerShutdownHandle,
}

impl TlsMqtt5 {
    pub async fn start(pki: &Pki) -> TlsMqtt5 {
        use mqtt5::broker::config::{
            BrokerConfig, StorageBackend, StorageConfig, TlsConfig, WebSocketConfig,
        };
        let wss_port = crate::free_port().unwrap();
        let config = BrokerConfig::default()
            .with_bind_address(([127, 0, 0, 1], 0))
            .with_storage(
                StorageConfig::default()
                    .with_backend(StorageBackend::Memory)
                    .with_persistence(false),
            )
            .with_sys_topics_enabled(false)
            .with_tls(
                TlsConfig::new(pki.file("server.pem"), pki.file("server.key"))
                    .with_bind_address(([127, 0, 0, 1], 0)),
            )
            .with_websocket_tls(
                WebSocketConfig::new()
                    .with_bind_address(([127, 0, 0, 1], wss_port))
                    .with_path("/mqtt")
                    .with_tls(true),
            );
        let mut broker = mqtt5::broker::MqttBroker::with_config(config)
            .await
            .expect("mqtt5 broker with TLS");
        let tls_addr = broker.tls_local_addr().expect("a TLS listener");
        let shutdown = broker.shutdown_handle();
        tokio::spawn(async move { broker.run().await });
        TlsMqtt5 {
            wss_port,
            tls_addr,
            shutdown,
        }
    }
}

impl Drop for TlsMqtt5 {
    fn drop(&mut self) {
        self.shutdown.shutdown();
    }
}
