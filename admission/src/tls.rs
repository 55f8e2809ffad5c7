//! Serving certificate that follows its files on disk, so rotation needs no restart.
//!
//! A poller checks the files' modification times every second; a new pair is
//! used only once it parses and the key matches the certificate.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime};

use rustls::crypto::ring::default_provider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;

/// How often the certificate files are checked for changes.
pub const RELOAD_INTERVAL: Duration = Duration::from_secs(1);

/// Why a certificate/key pair cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} holds no PEM certificate")]
    NoCertificate { path: PathBuf },
    #[error("{path} holds no PEM private key")]
    NoKey { path: PathBuf },
    #[error("invalid certificate/key pair: {0}")]
    Invalid(#[from] rustls::Error),
}

/// Loads and checks a PEM certificate chain and its key.
///
/// # Errors
/// [`TlsError`] when a file is unreadable, empty, or the key does not match.
pub fn load_pair(cert_path: &Path, key_path: &Path) -> Result<CertifiedKey, TlsError> {
    let read = |path: &Path| {
        std::fs::read(path).map_err(|source| TlsError::Read {
            path: path.to_path_buf(),
            source,
        })
    };
    let cert_pem = read(cert_path)?;
    let key_pem = read(key_path)?;
    let certs: Vec<CertificateDer<'static>> = rustls_pemfile::certs(&mut cert_pem.as_slice())
        .filter_map(Result::ok)
        .collect();
    if certs.is_empty() {
        return Err(TlsError::NoCertificate {
            path: cert_path.to_path_buf(),
        });
    }
    let key: PrivateKeyDer<'static> = rustls_pemfile::private_key(&mut key_pem.as_slice())
        .ok()
        .flatten()
        .ok_or_else(|| TlsError::NoKey {
            path: key_path.to_path_buf(),
        })?;
    Ok(CertifiedKey::from_der(certs, key, &default_provider())?)
}

/// Modification time and length of a file, `None` if unreadable.
type Stamp = Option<(SystemTime, u64)>;

/// Modification stamp of one file (time and length; length catches writers
/// that keep the mtime within the same second).
fn stamp(path: &Path) -> Stamp {
    let meta = std::fs::metadata(path).ok()?;
    Some((meta.modified().ok()?, meta.len()))
}

/// A [`ResolvesServerCert`] whose certificate is swapped when the files change.
#[derive(Debug)]
pub struct ReloadingCert {
    cert_path: PathBuf,
    key_path: PathBuf,
    current: RwLock<Arc<CertifiedKey>>,
    seen: Mutex<(Stamp, Stamp)>,
}

impl ReloadingCert {
    /// Loads the initial pair.
    ///
    /// # Errors
    /// [`TlsError`] when the initial pair is unusable (startup must fail loudly).
    pub fn new(
        cert_path: impl Into<PathBuf>,
        key_path: impl Into<PathBuf>,
    ) -> Result<Self, TlsError> {
        let (cert_path, key_path) = (cert_path.into(), key_path.into());
        let seen = (stamp(&cert_path), stamp(&key_path));
        let key = load_pair(&cert_path, &key_path)?;
        Ok(ReloadingCert {
            cert_path,
            key_path,
            current: RwLock::new(Arc::new(key)),
            seen: Mutex::new(seen),
        })
    }

    /// Checks the files once. Returns `Some(Ok)` after a reload, `Some(Err)` when
    /// changed files were rejected (the old pair stays), `None` when unchanged.
    pub fn check(&self) -> Option<Result<(), TlsError>> {
        let now = (stamp(&self.cert_path), stamp(&self.key_path));
        {
            let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
            if *seen == now {
                return None;
            }
            *seen = now;
        }
        Some(load_pair(&self.cert_path, &self.key_path).map(|key| {
            *self.current.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(key);
        }))
    }

    /// notAfter (Unix seconds) of the served leaf, if it parses.
    pub fn not_after(&self) -> Option<i64> {
        let current = self.current();
        let leaf = current.cert.first()?;
        let (_, cert) = x509_parser::parse_x509_certificate(leaf.as_ref()).ok()?;
        Some(cert.validity().not_after.timestamp())
    }

    /// Sets `labgate_admission_certificate_expiry_timestamp_seconds`.
    pub fn publish_expiry(&self, metrics: &Metrics) {
        if let Some(t) = self.not_after() {
            metrics.cert_expiry.set(t);
        }
    }

    /// The pair currently served.
    pub fn current(&self) -> Arc<CertifiedKey> {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Polls the files every [`RELOAD_INTERVAL`] until `shutdown`.
    pub fn spawn_reloader(self: &Arc<Self>, metrics: Metrics, shutdown: CancellationToken) {
        let this = Arc::clone(self);
        this.publish_expiry(&metrics);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(RELOAD_INTERVAL);
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tick.tick() => {}
                }
                match this.check() {
                    None => {}
                    Some(Ok(())) => {
                        tracing::info!(cert = %this.cert_path.display(), "serving certificate reloaded");
                        metrics.tls_reloads.with_label_values(&["success"]).inc();
                        this.publish_expiry(&metrics);
                    }
                    Some(Err(e)) => {
                        tracing::warn!(error = %e, "new serving certificate rejected; keeping the old one");
                        metrics.tls_reloads.with_label_values(&["failure"]).inc();
                    }
                }
            }
        });
    }
}

impl ResolvesServerCert for ReloadingCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current())
    }
}

/// A rustls server configuration (HTTP/1.1 only) around `resolver`.
pub fn server_config(resolver: Arc<ReloadingCert>) -> rustls::ServerConfig {
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(default_provider()))
        .with_safe_default_protocol_versions()
        .expect("ring supports the default protocol versions")
        .with_no_client_auth()
        .with_cert_resolver(resolver);
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    config
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair(names: &[&str]) -> (String, String) {
        let key = rcgen::KeyPair::generate().unwrap();
        let params =
            rcgen::CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>())
                .unwrap();
        let cert = params.self_signed(&key).unwrap();
        (cert.pem(), key.serialize_pem())
    }

    #[test]
    fn reloads_valid_pairs_and_keeps_old_on_garbage() {
        let dir = tempfile::tempdir().unwrap();
        let (c, k) = (dir.path().join("tls.crt"), dir.path().join("tls.key"));
        let (c1, k1) = pair(&["one.example"]);
        std::fs::write(&c, &c1).unwrap();
        std::fs::write(&k, &k1).unwrap();
        let r = ReloadingCert::new(&c, &k).unwrap();
        let first = r.current().cert[0].clone();
        assert!(r.check().is_none(), "unchanged files do not reload");

        // A certificate with a key that does not belong to it is refused.
        let (c2, k2) = pair(&["two.example"]);
        std::fs::write(&c, &c2).unwrap();
        assert!(matches!(r.check(), Some(Err(_))));
        assert_eq!(r.current().cert[0], first);

        std::fs::write(&k, &k2).unwrap();
        assert!(matches!(r.check(), Some(Ok(()))));
        assert_ne!(r.current().cert[0], first);

        std::fs::write(&c, "garbage").unwrap();
        assert!(matches!(
            r.check(),
            Some(Err(TlsError::NoCertificate { .. }))
        ));
        std::fs::remove_file(&k).unwrap();
        assert!(matches!(r.check(), Some(Err(TlsError::Read { .. }))));
        assert_ne!(r.current().cert[0], first, "still serving pair two");
    }

    #[test]
    fn expiry_gauge_follows_the_served_leaf() {
        let dir = tempfile::tempdir().unwrap();
        let (c, k) = (dir.path().join("tls.crt"), dir.path().join("tls.key"));
        let (c1, k1) = pair(&["one.example"]);
        std::fs::write(&c, &c1).unwrap();
        std::fs::write(&k, &k1).unwrap();
        let r = ReloadingCert::new(&c, &k).unwrap();
        let t = r.not_after().expect("leaf notAfter parses");
        // rcgen's default validity ends in 4096.
        assert!(t > 2_000_000_000, "{t}");
        let m = Metrics::new();
        r.publish_expiry(&m);
        assert_eq!(m.cert_expiry.get(), t);
    }

    #[test]
    fn startup_fails_clearly_without_files() {
        let err = ReloadingCert::new("/nonexistent/tls.crt", "/nonexistent/tls.key").unwrap_err();
        assert!(err.to_string().contains("/nonexistent/tls.crt"));
    }
}
