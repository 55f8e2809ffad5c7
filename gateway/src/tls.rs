//! TLS for the client side: rustls with a certificate that follows its files.
//!
//! The certificate and key are re-read when either file changes (cert-manager
//! and Secret rotation), and each new handshake gets the newest pair. Live
//! sessions keep the connection they have. A half-written or broken pair is
//! logged and ignored: the previous certificate stays in service.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use rustls::ServerConfig;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

use crate::reload::FileStamps;

/// The gateway's rustls crypto provider: ring's, but with aws-lc-rs's X25519.
///
/// Every session makes two X25519 key exchanges (the browser's TLS and the
/// API server's), and they were a quarter of the gateway's CPU per session:
/// aws-lc-rs computes one in half ring's time (37 against 70 µs for key
/// generation and agreement on the benchmark machine). ring keeps the rest:
/// its AES-GCM is twice as fast as aws-lc-rs's there (7.9 against 4.1 GB/s),
/// and that is what a session spends its bytes on. The groups and their
/// order are ring's (X25519, then P-256 and P-384).
pub fn crypto_provider() -> rustls::crypto::CryptoProvider {
    let ring = rustls::crypto::ring::default_provider();
    let kx_groups = ring
        .kx_groups
        .iter()
        .map(|&group| {
            if group.name() == rustls::NamedGroup::X25519 {
                rustls::crypto::aws_lc_rs::kx_group::X25519
            } else {
                group
            }
        })
        .collect();
    rustls::crypto::CryptoProvider { kx_groups, ..ring }
}

/// Errors loading a certificate pair.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("reading {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} holds no PEM certificate")]
    NoCertificate { path: PathBuf },
    #[error("{path} holds no PEM private key")]
    NoKey { path: PathBuf },
    #[error("private key in {path} is not usable: {source}")]
    BadKey {
        path: PathBuf,
        source: rustls::Error,
    },
    #[error("certificate and key do not match: {0}")]
    Mismatch(rustls::Error),
}

/// Serves the newest valid certificate pair from two PEM files.
#[derive(Debug)]
pub struct ReloadingCert {
    cert_path: PathBuf,
    key_path: PathBuf,
    current: RwLock<Arc<CertifiedKey>>,
}

impl ReloadingCert {
    /// Loads the pair once.
    ///
    /// # Errors
    /// [`TlsError`] when the files are missing, unreadable or do not match.
    pub fn load(cert_path: &Path, key_path: &Path) -> Result<Arc<ReloadingCert>, TlsError> {
        let key = load_certified_key(cert_path, key_path)?;
        Ok(Arc::new(ReloadingCert {
            cert_path: cert_path.to_path_buf(),
            key_path: key_path.to_path_buf(),
            current: RwLock::new(Arc::new(key)),
        }))
    }

    /// Re-reads the pair; keeps the old one if the new one is broken.
    pub fn reload(&self) -> Result<(), TlsError> {
        let key = load_certified_key(&self.cert_path, &self.key_path)?;
        if let Ok(mut slot) = self.current.write() {
            *slot = Arc::new(key);
        }
        Ok(())
    }

    /// Polls the files every `interval` and reloads on change. Runs forever.
    pub async fn watch(self: Arc<Self>, interval: Duration) {
        let mut stamps = FileStamps::new([&self.cert_path, &self.key_path]);
        loop {
            tokio::time::sleep(interval).await;
            if stamps.changed() {
                match self.reload() {
                    Ok(()) => tracing::info!("TLS certificate reloaded"),
                    Err(e) => {
                        tracing::warn!(error = %e, "TLS certificate reload failed; keeping the previous one")
                    }
                }
            }
        }
    }

    /// A rustls server configuration (TLS 1.2 and 1.3, HTTP/1.1) using this pair.
    pub fn server_config(self: &Arc<Self>) -> Arc<ServerConfig> {
        let mut config = ServerConfig::builder_with_provider(Arc::new(crypto_provider()))
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .expect("ring's cipher suites cover TLS 1.2 and 1.3")
            .with_no_client_auth()
            .with_cert_resolver(self.clone());
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        // Browsers reconnecting (a viewer's reconnect, a second tab) resume with a
        // stateless ticket instead of a full handshake: no server-side cache to
        // outgrow (rustls keeps 256 sessions by default), and one ticket per
        // handshake rather than two, as Go's crypto/tls does. Without a ticketer
        // (no randomness) the stateful cache stays.
        if let Ok(ticketer) = rustls::crypto::ring::Ticketer::new() {
            config.ticketer = ticketer;
            config.send_tls13_tickets = 1;
        }
        Arc::new(config)
    }
}

impl ResolvesServerCert for ReloadingCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.current.read().ok().map(|k| k.clone())
    }
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        path: path.to_path_buf(),
        source,
    })
}

/// Parses a PEM certificate chain and private key into a rustls signing pair.
///
/// # Errors
/// [`TlsError`] naming the file at fault.
pub fn load_certified_key(cert_path: &Path, key_path: &Path) -> Result<CertifiedKey, TlsError> {
    let cert_pem = read(cert_path)?;
    let chain: Vec<CertificateDer<'static>> = rustls_pemfile::certs(&mut cert_pem.as_slice())
        .filter_map(Result::ok)
        .collect();
    if chain.is_empty() {
        return Err(TlsError::NoCertificate {
            path: cert_path.to_path_buf(),
        });
    }
    let key_pem = read(key_path)?;
    let key: PrivateKeyDer<'static> = rustls_pemfile::private_key(&mut key_pem.as_slice())
        .ok()
        .flatten()
        .ok_or_else(|| TlsError::NoKey {
            path: key_path.to_path_buf(),
        })?;
    let provider = rustls::crypto::ring::default_provider();
    let signing_key = provider
        .key_provider
        .load_private_key(key)
        .map_err(|source| TlsError::BadKey {
            path: key_path.to_path_buf(),
            source,
        })?;
    let certified = CertifiedKey::new(chain, signing_key);
    certified.keys_match().map_err(TlsError::Mismatch)?;
    Ok(certified)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use labgate_tests::certs::TestCa;
    use rustls::pki_types::ServerName;
    use rustls::{ClientConfig, ClientConnection, HandshakeKind, RootCertStore, ServerConnection};

    use super::ReloadingCert;

    /// Moves TLS records between the two ends until neither has anything to send
    /// (so the server's session tickets reach the client too).
    fn exchange(client: &mut ClientConnection, server: &mut ServerConnection) {
        loop {
            let mut moved = false;
            let mut to_server = Vec::new();
            while client.wants_write() {
                client.write_tls(&mut to_server).unwrap();
            }
            let mut to_client = Vec::new();
            let mut input = &to_server[..];
            while !input.is_empty() {
                moved = true;
                server.read_tls(&mut input).unwrap();
                server.process_new_packets().unwrap();
            }
            while server.wants_write() {
                server.write_tls(&mut to_client).unwrap();
            }
            let mut input = &to_client[..];
            while !input.is_empty() {
                moved = true;
                client.read_tls(&mut input).unwrap();
                client.process_new_packets().unwrap();
            }
            if !moved {
                return;
            }
        }
    }

    #[test]
    fn clients_resume_even_after_many_others_connected() {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let ca = TestCa::new();
        let dir = std::env::temp_dir().join(format!("labgate-tls-resume-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (cert, key) = ca.write_leaf(&dir, &["gateway.test"]);
        let server_config = ReloadingCert::load(&cert, &key).unwrap().server_config();
        let mut roots = RootCertStore::empty();
        for c in rustls_pemfile::certs(&mut ca.ca_pem().as_bytes()) {
            roots.add(c.unwrap()).unwrap();
        }
        let client_config = || {
            Arc::new(
                ClientConfig::builder()
                    .with_root_certificates(roots.clone())
                    .with_no_client_auth(),
            )
        };
        let name = ServerName::try_from("gateway.test").unwrap();
        let connect = |config: &Arc<ClientConfig>| {
            let mut client = ClientConnection::new(config.clone(), name.clone()).unwrap();
            let mut server = ServerConnection::new(server_config.clone()).unwrap();
            exchange(&mut client, &mut server);
            assert!(!client.is_handshaking());
            client.handshake_kind()
        };
        let first = client_config();
        assert_eq!(connect(&first), Some(HandshakeKind::Full));
        // More clients than a stateful session cache holds (rustls keeps 256).
        for _ in 0..300 {
            connect(&client_config());
        }
        assert_eq!(connect(&first), Some(HandshakeKind::Resumed));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
