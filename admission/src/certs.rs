//! Optional self-managed serving certificate (`--self-signed-certs`).
//!
//! The CA lives in a Secret so it survives restarts and is shared by replicas;
//! each process issues its own leaf, writes it to the TLS files (picked up by
//! the reloading resolver) and keeps the webhook's caBundle at "new CA + previous
//! CA", so a CA rotation never breaks admission.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use k8s_openapi::ByteString;
use k8s_openapi::api::admissionregistration::v1::ValidatingWebhookConfiguration;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{ObjectMeta, PostParams};
use kube::{Api, Client};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};
use time::OffsetDateTime;
use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;

/// CA lifetime.
pub const CA_VALIDITY: Duration = Duration::from_secs(365 * 24 * 3600);
/// A CA closer than this to expiry is replaced (the old one stays trusted).
pub const CA_RENEW_BEFORE: Duration = Duration::from_secs(60 * 24 * 3600);
/// Leaf lifetime.
pub const LEAF_VALIDITY: Duration = Duration::from_secs(90 * 24 * 3600);
/// A leaf closer than this to expiry is re-issued.
pub const LEAF_RENEW_BEFORE: Duration = Duration::from_secs(30 * 24 * 3600);
/// How often the CA, leaf and caBundle are re-checked.
pub const CHECK_INTERVAL: Duration = Duration::from_secs(60);

const CA_CERT_KEY: &str = "ca.crt";
const CA_KEY_KEY: &str = "ca.key";
const PREVIOUS_CA_KEY: &str = "ca-previous.crt";
const NOT_AFTER_ANNOTATION: &str = "labgate.io/ca-not-after";
const COMMON_NAME_ANNOTATION: &str = "labgate.io/ca-common-name";
const MANAGED_BY: (&str, &str) = ("app.kubernetes.io/managed-by", "labgate-admission");

/// Where the certificate material goes.
#[derive(Debug, Clone)]
pub struct CertSettings {
    /// Secret holding the CA.
    pub ca_secret: String,
    /// Namespace of the Secret and the Service.
    pub namespace: String,
    /// Service name (leaf SANs `<name>`, `<name>.<ns>`, `<name>.<ns>.svc`, ...).
    pub service_name: String,
    /// ValidatingWebhookConfiguration to keep the caBundle of.
    pub webhook_name: String,
    /// Extra DNS names or IPs for the leaf.
    pub extra_names: Vec<String>,
    /// Serving certificate file to write.
    pub cert_file: PathBuf,
    /// Serving key file to write.
    pub key_file: PathBuf,
}

/// Errors of the certificate manager.
#[derive(Debug, thiserror::Error)]
pub enum CertError {
    #[error("Kubernetes API: {0}")]
    Api(#[from] kube::Error),
    #[error("certificate generation: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("writing {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("Secret {0} exists but is not managed by labgate-admission; refusing to overwrite it")]
    Foreign(String),
    #[error("Secret {0} is incomplete: {1}")]
    Incomplete(String, &'static str),
}

/// The CA as stored in the Secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaMaterial {
    /// PEM of the current CA certificate.
    pub cert_pem: String,
    /// PEM of its private key.
    pub key_pem: String,
    /// Its subject common name (unique per generation).
    pub common_name: String,
    /// Expiry, unix seconds.
    pub not_after: i64,
    /// PEM of the CA it replaced, still trusted during the rotation.
    pub previous_pem: Option<String>,
}

impl CaMaterial {
    /// The caBundle: the current CA followed by the previous one.
    pub fn bundle(&self) -> String {
        let mut bundle = self.cert_pem.clone();
        if let Some(previous) = &self.previous_pem {
            if !bundle.ends_with('\n') {
                bundle.push('\n');
            }
            bundle.push_str(previous);
        }
        bundle
    }

    /// Generates a new CA valid from `now`.
    ///
    /// # Errors
    /// [`CertError::Generate`] if rcgen fails.
    pub fn generate(
        now: OffsetDateTime,
        previous_pem: Option<String>,
    ) -> Result<CaMaterial, CertError> {
        let common_name = format!("labgate-admission-ca-{}", now.unix_timestamp());
        let key = KeyPair::generate()?;
        let mut params = ca_params(&common_name);
        params.not_before = now - Duration::from_secs(300);
        params.not_after = now + CA_VALIDITY;
        let cert = params.self_signed(&key)?;
        Ok(CaMaterial {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            common_name,
            not_after: params.not_after.unix_timestamp(),
            previous_pem,
        })
    }

    fn needs_rotation(&self, now: OffsetDateTime) -> bool {
        now + CA_RENEW_BEFORE >= unix(self.not_after)
    }

    fn to_secret(&self, name: &str, namespace: &str) -> Secret {
        let mut data = BTreeMap::from([
            (
                CA_CERT_KEY.to_string(),
                ByteString(self.cert_pem.clone().into_bytes()),
            ),
            (
                CA_KEY_KEY.to_string(),
                ByteString(self.key_pem.clone().into_bytes()),
            ),
        ]);
        if let Some(previous) = &self.previous_pem {
            data.insert(
                PREVIOUS_CA_KEY.to_string(),
                ByteString(previous.clone().into_bytes()),
            );
        }
        Secret {
            metadata: ObjectMeta {
                name: Some(name.to_string()),
                namespace: Some(namespace.to_string()),
                labels: Some(BTreeMap::from([(
                    MANAGED_BY.0.to_string(),
                    MANAGED_BY.1.to_string(),
                )])),
                annotations: Some(BTreeMap::from([
                    (NOT_AFTER_ANNOTATION.to_string(), self.not_after.to_string()),
                    (COMMON_NAME_ANNOTATION.to_string(), self.common_name.clone()),
                ])),
                ..Default::default()
            },
            data: Some(data),
            type_: Some("Opaque".to_string()),
            ..Default::default()
        }
    }

    fn from_secret(secret: &Secret) -> Result<CaMaterial, CertError> {
        let name = secret.metadata.name.clone().unwrap_or_default();
        let managed = secret
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(MANAGED_BY.0))
            .is_some_and(|v| v == MANAGED_BY.1);
        if !managed {
            return Err(CertError::Foreign(name));
        }
        let data = secret.data.clone().unwrap_or_default();
        let text = |k: &str| {
            data.get(k)
                .and_then(|b| String::from_utf8(b.0.clone()).ok())
        };
        let annotation = |k: &str| {
            secret
                .metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get(k))
                .cloned()
        };
        Ok(CaMaterial {
            cert_pem: text(CA_CERT_KEY)
                .ok_or_else(|| CertError::Incomplete(name.clone(), "no ca.crt"))?,
            key_pem: text(CA_KEY_KEY)
                .ok_or_else(|| CertError::Incomplete(name.clone(), "no ca.key"))?,
            common_name: annotation(COMMON_NAME_ANNOTATION)
                .ok_or_else(|| CertError::Incomplete(name.clone(), "no common-name annotation"))?,
            not_after: annotation(NOT_AFTER_ANNOTATION)
                .and_then(|v| v.parse().ok())
                .ok_or_else(|| CertError::Incomplete(name.clone(), "no not-after annotation"))?,
            previous_pem: text(PREVIOUS_CA_KEY),
        })
    }
}

fn unix(secs: i64) -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp(secs).unwrap_or(OffsetDateTime::UNIX_EPOCH)
}

/// CA parameters; also used to rebuild the issuer from the stored key (same
/// subject and key identifier method, so issued leaves chain to the stored cert).
fn ca_params(common_name: &str) -> CertificateParams {
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, common_name);
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params
}

/// Issues a serving leaf for `names` from `ca`. Returns (cert PEM, key PEM, not-after).
///
/// # Errors
/// [`CertError::Generate`] if the CA key is unreadable or signing fails.
pub fn issue_leaf(
    ca: &CaMaterial,
    names: &[String],
    now: OffsetDateTime,
) -> Result<(String, String, OffsetDateTime), CertError> {
    let ca_key = KeyPair::from_pem(&ca.key_pem)?;
    let issuer = Issuer::new(ca_params(&ca.common_name), ca_key);
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::new(names.to_vec())?;
    let mut dn = DistinguishedName::new();
    dn.push(
        DnType::CommonName,
        names
            .first()
            .map(String::as_str)
            .unwrap_or("labgate-admission"),
    );
    params.distinguished_name = dn;
    params.not_before = now - Duration::from_secs(300);
    params.not_after = now + LEAF_VALIDITY;
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    let cert = params.signed_by(&key, &issuer)?;
    // The chain carries the leaf only; clients trust the CA from the caBundle.
    Ok((cert.pem(), key.serialize_pem(), params.not_after))
}

/// Who may read a file written by [`write_atomic`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Access {
    /// Default permissions (certificates are public).
    Public,
    /// Owner read/write only (`0600`): private keys.
    OwnerOnly,
}

/// Writes `contents` to `path` atomically (temp file + rename), so the
/// reloader never sees a half-written file. With [`Access::OwnerOnly`] the
/// temp file is created `0600` before anything is written to it, so the
/// content is never readable by others, not even briefly, and the rename
/// replaces any older file whatever its permissions were.
fn write_atomic(path: &Path, contents: &str, access: Access) -> Result<(), CertError> {
    use std::io::Write as _;
    let err = |source| CertError::Write {
        path: path.to_path_buf(),
        source,
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(err)?;
    }
    let tmp = path.with_extension("tmp");
    // A leftover temp file keeps its old mode when reopened; start afresh.
    match std::fs::remove_file(&tmp) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(err(e)),
        _ => {}
    }
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    if access == Access::OwnerOnly {
        use std::os::unix::fs::OpenOptionsExt as _;
        options.mode(0o600);
    }
    let mut file = options.open(&tmp).map_err(err)?;
    #[cfg(unix)]
    if access == Access::OwnerOnly {
        // The mode above is filtered by the umask; make it exact.
        use std::os::unix::fs::PermissionsExt as _;
        file.set_permissions(std::fs::Permissions::from_mode(0o600))
            .map_err(err)?;
    }
    file.write_all(contents.as_bytes()).map_err(err)?;
    file.sync_all().map_err(err)?;
    drop(file);
    std::fs::rename(&tmp, path).map_err(err)
}

/// Keeps the CA Secret, the serving files and the caBundle current.
pub struct CertManager {
    client: Client,
    settings: CertSettings,
    metrics: Metrics,
    leaf: Option<(String, OffsetDateTime)>,
}

impl CertManager {
    /// A manager; nothing happens until [`CertManager::tick`].
    pub fn new(client: Client, settings: CertSettings, metrics: Metrics) -> CertManager {
        CertManager {
            client,
            settings,
            metrics,
            leaf: None,
        }
    }

    /// Names the leaf is issued for.
    pub fn leaf_names(&self) -> Vec<String> {
        let s = &self.settings;
        let mut names = vec![
            format!("{}.{}.svc", s.service_name, s.namespace),
            s.service_name.clone(),
            format!("{}.{}", s.service_name, s.namespace),
            format!("{}.{}.svc.cluster.local", s.service_name, s.namespace),
        ];
        names.extend(s.extra_names.iter().cloned());
        names
    }

    fn count(&self, action: &str) {
        self.metrics.cert_actions.with_label_values(&[action]).inc();
    }

    /// Loads the CA from its Secret, creating or rotating it as needed.
    ///
    /// # Errors
    /// [`CertError`] on API errors or a Secret not managed by us.
    pub async fn ensure_ca(&self, now: OffsetDateTime) -> Result<CaMaterial, CertError> {
        let api = Api::<Secret>::namespaced(self.client.clone(), &self.settings.namespace);
        let name = &self.settings.ca_secret;
        match api.get_opt(name).await? {
            None => {
                let ca = CaMaterial::generate(now, None)?;
                match api
                    .create(
                        &PostParams::default(),
                        &ca.to_secret(name, &self.settings.namespace),
                    )
                    .await
                {
                    Ok(_) => {
                        self.count("ca-created");
                        tracing::info!(secret = %name, "created the webhook CA");
                        Ok(ca)
                    }
                    // Another replica won the race: use its CA.
                    Err(kube::Error::Api(s)) if s.is_already_exists() => {
                        CaMaterial::from_secret(&api.get(name).await?)
                    }
                    Err(e) => Err(e.into()),
                }
            }
            Some(secret) => {
                let ca = CaMaterial::from_secret(&secret)?;
                if !ca.needs_rotation(now) {
                    return Ok(ca);
                }
                let rotated = CaMaterial::generate(now, Some(ca.cert_pem.clone()))?;
                let mut replacement = rotated.to_secret(name, &self.settings.namespace);
                // Optimistic concurrency: a replica that rotated first wins.
                replacement.metadata.resource_version = secret.metadata.resource_version.clone();
                match api
                    .replace(name, &PostParams::default(), &replacement)
                    .await
                {
                    Ok(_) => {
                        self.count("ca-rotated");
                        tracing::info!(secret = %name, "rotated the webhook CA; the old CA stays in the caBundle");
                        Ok(rotated)
                    }
                    Err(kube::Error::Api(s)) if s.is_conflict() => {
                        CaMaterial::from_secret(&api.get(name).await?)
                    }
                    Err(e) => Err(e.into()),
                }
            }
        }
    }

    /// Sets `bundle` as the caBundle of every webhook in the configuration.
    /// Returns whether anything changed; a missing configuration is not an error
    /// (the chart may create it later; the next tick patches it).
    ///
    /// # Errors
    /// [`CertError::Api`] on API errors.
    pub async fn publish_ca_bundle(&self, bundle: &str) -> Result<bool, CertError> {
        let api = Api::<ValidatingWebhookConfiguration>::all(self.client.clone());
        for _attempt in 0..3 {
            let Some(mut vwc) = api.get_opt(&self.settings.webhook_name).await? else {
                tracing::debug!(name = %self.settings.webhook_name, "webhook configuration not found yet");
                return Ok(false);
            };
            let wanted = ByteString(bundle.as_bytes().to_vec());
            let mut changed = false;
            for webhook in vwc.webhooks.iter_mut().flatten() {
                if webhook.client_config.ca_bundle.as_ref() != Some(&wanted) {
                    webhook.client_config.ca_bundle = Some(wanted.clone());
                    changed = true;
                }
            }
            if !changed {
                return Ok(false);
            }
            match api
                .replace(&self.settings.webhook_name, &PostParams::default(), &vwc)
                .await
            {
                Ok(_) => {
                    self.count("cabundle-patched");
                    return Ok(true);
                }
                Err(kube::Error::Api(s)) if s.is_conflict() => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Ok(false)
    }

    /// One round: CA, caBundle (before the leaf, so the new CA is trusted first),
    /// then the leaf if it is missing, near expiry or from another CA.
    ///
    /// # Errors
    /// [`CertError`]; the caller retries on the next tick.
    pub async fn tick(&mut self, now: OffsetDateTime) -> Result<(), CertError> {
        let ca = self.ensure_ca(now).await?;
        self.publish_ca_bundle(&ca.bundle()).await?;
        let fresh = self.leaf.as_ref().is_some_and(|(cn, not_after)| {
            *cn == ca.common_name && now + LEAF_RENEW_BEFORE < *not_after
        });
        if !fresh {
            let (cert, key, not_after) = issue_leaf(&ca, &self.leaf_names(), now)?;
            // Key first: the reloader only accepts a matching pair, so the
            // order only decides which half-state it rejects.
            write_atomic(&self.settings.key_file, &key, Access::OwnerOnly)?;
            write_atomic(&self.settings.cert_file, &cert, Access::Public)?;
            self.leaf = Some((ca.common_name.clone(), not_after));
            self.count("leaf-issued");
            tracing::info!(file = %self.settings.cert_file.display(), "issued a serving certificate");
        }
        Ok(())
    }

    /// Repeats [`CertManager::tick`] every [`CHECK_INTERVAL`] until `shutdown`.
    pub async fn run(mut self, shutdown: CancellationToken) {
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(CHECK_INTERVAL) => {}
            }
            if let Err(e) = self.tick(OffsetDateTime::now_utc()).await {
                self.count("error");
                tracing::warn!(error = %e, "certificate maintenance failed; retrying");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leaf_chains_to_the_stored_ca_and_rotation_keeps_the_old_ca() {
        use rustls::client::danger::ServerCertVerifier;
        let now = OffsetDateTime::now_utc();
        let ca = CaMaterial::generate(now, None).unwrap();
        let secret = ca.to_secret("ca", "labgate-system");
        assert_eq!(CaMaterial::from_secret(&secret).unwrap(), ca);
        let (cert, key, _) = issue_leaf(
            &ca,
            &["svc.ns.svc".to_string(), "127.0.0.1".to_string()],
            now,
        )
        .unwrap();

        // A rustls client that trusts only the CA accepts the leaf.
        let mut roots = rustls::RootCertStore::empty();
        for c in rustls_pemfile::certs(&mut ca.cert_pem.as_bytes()) {
            roots.add(c.unwrap()).unwrap();
        }
        let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
        let verifier =
            rustls::client::WebPkiServerVerifier::builder_with_provider(roots.into(), provider)
                .build()
                .unwrap();
        let leaf = rustls_pemfile::certs(&mut cert.as_bytes())
            .next()
            .unwrap()
            .unwrap();
        let name = rustls::pki_types::ServerName::try_from("svc.ns.svc").unwrap();
        verifier
            .verify_server_cert(&leaf, &[], &name, &[], rustls::pki_types::UnixTime::now())
            .expect("leaf verifies against the stored CA");
        assert!(
            rustls_pemfile::private_key(&mut key.as_bytes())
                .unwrap()
                .is_some()
        );

        assert!(!ca.needs_rotation(now));
        assert!(ca.needs_rotation(now + CA_VALIDITY - CA_RENEW_BEFORE + Duration::from_secs(3600)));
        let rotated = CaMaterial::generate(now, Some(ca.cert_pem.clone())).unwrap();
        let bundle = rotated.bundle();
        assert_eq!(bundle.matches("BEGIN CERTIFICATE").count(), 2);
        assert!(bundle.starts_with(&rotated.cert_pem));

        let mut foreign = secret.clone();
        foreign.metadata.labels = None;
        assert!(matches!(
            CaMaterial::from_secret(&foreign),
            Err(CertError::Foreign(_))
        ));
    }

    #[cfg(unix)]
    #[test]
    fn private_keys_are_written_owner_only() {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("tls/tls.key");
        // An older key readable by everyone, and a leftover temp file likewise.
        std::fs::create_dir_all(key.parent().unwrap()).unwrap();
        for stale in [&key, &key.with_extension("tmp")] {
            std::fs::write(stale, "old").unwrap();
            std::fs::set_permissions(stale, std::fs::Permissions::from_mode(0o644)).unwrap();
        }
        write_atomic(&key, "-----BEGIN PRIVATE KEY-----\n", Access::OwnerOnly).unwrap();
        assert_eq!(mode(&key), 0o600);
        assert_eq!(
            std::fs::read_to_string(&key).unwrap(),
            "-----BEGIN PRIVATE KEY-----\n"
        );
        assert!(!key.with_extension("tmp").exists());
        // Certificates stay readable (the default mode, not forced to 0600).
        let cert = dir.path().join("tls/tls.crt");
        write_atomic(&cert, "cert", Access::Public).unwrap();
        assert_eq!(std::fs::read_to_string(&cert).unwrap(), "cert");
    }
}
