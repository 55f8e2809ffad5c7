//! Optional self-managed serving certificate (`--self-signed-certs`).
//!
//! The CA lives in a Secret so it survives restarts and is shared by replicas;
//! each process issues its own leaf, writes it to the TLS files (picked up by
//! the reloading resolver) and keeps the webhook's caBundle at "new CA + previous
//! CA", so a CA rotation never breaks admission.
//!
//! A rotation takes two passes: the pass that makes the new CA publishes it in
//! the caBundle (next to the old one) and keeps serving a leaf from the old CA
//! (whose key the Secret keeps for that purpose); a leaf from the new CA is
//! served only once this process has seen the new CA in the published caBundle
//! for [`CA_PROPAGATION_DELAY`], i.e. on the next check. API servers load the
//! changed webhook configuration in the meantime, so none of them is ever shown
//! a leaf from a CA it does not trust yet.

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
/// How long a new CA must have been in the published caBundle before leaves
/// are issued from it: time for every API server to load the changed webhook
/// configuration (they watch it; seconds at most). Shorter than
/// [`CHECK_INTERVAL`], so the switch happens on the pass after the publication.
pub const CA_PROPAGATION_DELAY: Duration = Duration::from_secs(30);
/// The previous CA signs the leaf during a rotation only while it stays valid
/// at least this long; past that, the new CA signs at once.
pub const PREVIOUS_CA_MIN_REMAINING: Duration = Duration::from_secs(3600);

const CA_CERT_KEY: &str = "ca.crt";
const CA_KEY_KEY: &str = "ca.key";
const PREVIOUS_CA_KEY: &str = "ca-previous.crt";
const PREVIOUS_CA_KEY_KEY: &str = "ca-previous.key";
const NOT_AFTER_ANNOTATION: &str = "labgate.io/ca-not-after";
const COMMON_NAME_ANNOTATION: &str = "labgate.io/ca-common-name";
const PREVIOUS_NOT_AFTER_ANNOTATION: &str = "labgate.io/ca-previous-not-after";
const PREVIOUS_COMMON_NAME_ANNOTATION: &str = "labgate.io/ca-previous-common-name";
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
    /// What it takes to keep issuing leaves from the CA it replaced until the
    /// new CA is trusted (absent in Secrets written before this was kept).
    pub previous_signer: Option<PreviousSigner>,
}

/// Key, common name and expiry of the previous CA.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PreviousSigner {
    /// PEM of its private key.
    pub key_pem: String,
    /// Its subject common name.
    pub common_name: String,
    /// Its expiry, unix seconds.
    pub not_after: i64,
}

/// The CA a leaf is issued from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Signer<'a> {
    /// PEM of its private key.
    pub key_pem: &'a str,
    /// Its subject common name.
    pub common_name: &'a str,
    /// Its expiry, unix seconds (leaves never outlive it).
    pub not_after: i64,
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

    /// The current CA as a signer.
    pub fn signer(&self) -> Signer<'_> {
        Signer {
            key_pem: &self.key_pem,
            common_name: &self.common_name,
            not_after: self.not_after,
        }
    }

    /// The previous CA as a signer, if its key was kept.
    pub fn previous_signer(&self) -> Option<Signer<'_>> {
        self.previous_signer.as_ref().map(|p| Signer {
            key_pem: &p.key_pem,
            common_name: &p.common_name,
            not_after: p.not_after,
        })
    }

    /// Generates a new CA valid from `now`, replacing `previous` (which stays
    /// trusted in the bundle and may keep signing until the new CA is).
    ///
    /// # Errors
    /// [`CertError::Generate`] if rcgen fails.
    pub fn generate(
        now: OffsetDateTime,
        previous: Option<&CaMaterial>,
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
            previous_pem: previous.map(|p| p.cert_pem.clone()),
            previous_signer: previous.map(|p| PreviousSigner {
                key_pem: p.key_pem.clone(),
                common_name: p.common_name.clone(),
                not_after: p.not_after,
            }),
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
        let mut annotations = BTreeMap::from([
            (NOT_AFTER_ANNOTATION.to_string(), self.not_after.to_string()),
            (COMMON_NAME_ANNOTATION.to_string(), self.common_name.clone()),
        ]);
        if let Some(signer) = &self.previous_signer {
            data.insert(
                PREVIOUS_CA_KEY_KEY.to_string(),
                ByteString(signer.key_pem.clone().into_bytes()),
            );
            annotations.insert(
                PREVIOUS_NOT_AFTER_ANNOTATION.to_string(),
                signer.not_after.to_string(),
            );
            annotations.insert(
                PREVIOUS_COMMON_NAME_ANNOTATION.to_string(),
                signer.common_name.clone(),
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
                annotations: Some(annotations),
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
            // All three or nothing: without them the previous CA is only trusted.
            previous_signer: match (
                text(PREVIOUS_CA_KEY_KEY),
                annotation(PREVIOUS_COMMON_NAME_ANNOTATION),
                annotation(PREVIOUS_NOT_AFTER_ANNOTATION).and_then(|v| v.parse().ok()),
            ) {
                (Some(key_pem), Some(common_name), Some(not_after)) => Some(PreviousSigner {
                    key_pem,
                    common_name,
                    not_after,
                }),
                _ => None,
            },
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

/// Issues a serving leaf for `names` from `ca`. Returns (cert PEM, key PEM,
/// not-after); the leaf never outlives its CA.
///
/// # Errors
/// [`CertError::Generate`] if the CA key is unreadable or signing fails.
pub fn issue_leaf(
    ca: Signer<'_>,
    names: &[String],
    now: OffsetDateTime,
) -> Result<(String, String, OffsetDateTime), CertError> {
    let ca_key = KeyPair::from_pem(ca.key_pem)?;
    let issuer = Issuer::new(ca_params(ca.common_name), ca_key);
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
    params.not_after = (now + LEAF_VALIDITY).min(unix(ca.not_after));
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

/// What [`CertManager::publish_ca_bundle`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BundleStatus {
    /// Every webhook already carried the bundle.
    Unchanged,
    /// The configuration was updated to carry it.
    Patched,
    /// The configuration does not exist (yet): nobody relies on our caBundle.
    Missing,
    /// Concurrent writers kept conflicting; the next pass tries again.
    Contended,
}

impl BundleStatus {
    /// Whether the stored configuration is known to carry the bundle.
    pub fn confirmed(self) -> bool {
        matches!(self, BundleStatus::Unchanged | BundleStatus::Patched)
    }
}

/// The CA that signs the serving leaf on this pass.
///
/// `trusted_since` is when this process first found the current CA in the
/// published caBundle. The current CA signs once that is at least
/// [`CA_PROPAGATION_DELAY`] ago, when there is no webhook configuration to
/// wait for, or when there is no usable previous CA (none, its key not kept,
/// or expiring within [`PREVIOUS_CA_MIN_REMAINING`]); otherwise the previous
/// CA, which every API server already trusts, keeps signing.
pub fn choose_signer(
    ca: &CaMaterial,
    bundle: BundleStatus,
    trusted_since: Option<OffsetDateTime>,
    now: OffsetDateTime,
) -> Signer<'_> {
    let propagated = trusted_since.is_some_and(|since| now >= since + CA_PROPAGATION_DELAY);
    if propagated || bundle == BundleStatus::Missing {
        return ca.signer();
    }
    ca.previous_signer()
        .filter(|p| unix(p.not_after) > now + PREVIOUS_CA_MIN_REMAINING)
        .unwrap_or_else(|| ca.signer())
}

/// Keeps the CA Secret, the serving files and the caBundle current.
pub struct CertManager {
    client: Client,
    settings: CertSettings,
    metrics: Metrics,
    /// Issuing CA's common name and expiry of the leaf this process serves.
    leaf: Option<(String, OffsetDateTime)>,
    /// The current CA's common name and when this process first found it in
    /// the published caBundle.
    bundle_since: Option<(String, OffsetDateTime)>,
}

impl CertManager {
    /// A manager; nothing happens until [`CertManager::tick`].
    pub fn new(client: Client, settings: CertSettings, metrics: Metrics) -> CertManager {
        CertManager {
            client,
            settings,
            metrics,
            leaf: None,
            bundle_since: None,
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
                let rotated = CaMaterial::generate(now, Some(&ca))?;
                let mut replacement = rotated.to_secret(name, &self.settings.namespace);
                // Optimistic concurrency: a replica that rotated first wins.
                replacement.metadata.resource_version = secret.metadata.resource_version.clone();
                match api
                    .replace(name, &PostParams::default(), &replacement)
                    .await
                {
                    Ok(_) => {
                        self.count("ca-rotated");
                        tracing::info!(secret = %name, "rotated the webhook CA; the old CA stays in the caBundle and signs until the new one is published");
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
    /// A missing configuration is not an error (the chart may create it later;
    /// the next tick patches it).
    ///
    /// # Errors
    /// [`CertError::Api`] on API errors.
    pub async fn publish_ca_bundle(&self, bundle: &str) -> Result<BundleStatus, CertError> {
        let api = Api::<ValidatingWebhookConfiguration>::all(self.client.clone());
        for _attempt in 0..3 {
            let Some(mut vwc) = api.get_opt(&self.settings.webhook_name).await? else {
                tracing::debug!(name = %self.settings.webhook_name, "webhook configuration not found yet");
                return Ok(BundleStatus::Missing);
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
                return Ok(BundleStatus::Unchanged);
            }
            match api
                .replace(&self.settings.webhook_name, &PostParams::default(), &vwc)
                .await
            {
                Ok(_) => {
                    self.count("cabundle-patched");
                    return Ok(BundleStatus::Patched);
                }
                Err(kube::Error::Api(s)) if s.is_conflict() => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Ok(BundleStatus::Contended)
    }

    /// One round: CA, caBundle, then the leaf if it is missing, near expiry or
    /// not from the CA [`choose_signer`] picks. After a rotation the new CA is
    /// published on one pass and signs from a later one (see the module docs).
    ///
    /// # Errors
    /// [`CertError`]; the caller retries on the next tick.
    pub async fn tick(&mut self, now: OffsetDateTime) -> Result<(), CertError> {
        let ca = self.ensure_ca(now).await?;
        let bundle = self.publish_ca_bundle(&ca.bundle()).await?;
        let known = self
            .bundle_since
            .as_ref()
            .is_some_and(|(cn, _)| *cn == ca.common_name);
        if bundle.confirmed() && !known {
            self.bundle_since = Some((ca.common_name.clone(), now));
        }
        let trusted_since = self
            .bundle_since
            .as_ref()
            .filter(|(cn, _)| *cn == ca.common_name)
            .map(|(_, since)| *since);
        let signer = choose_signer(&ca, bundle, trusted_since, now);
        // Near expiry is renewed, unless the signer cannot give a longer-lived
        // leaf (leaves stop with their CA; e.g. an old CA during a rotation).
        let fresh = self.leaf.as_ref().is_some_and(|(cn, not_after)| {
            cn == signer.common_name
                && (now + LEAF_RENEW_BEFORE < *not_after || unix(signer.not_after) <= *not_after)
        });
        if !fresh {
            let (cert, key, not_after) = issue_leaf(signer, &self.leaf_names(), now)?;
            // Key first: the reloader only accepts a matching pair, so the
            // order only decides which half-state it rejects.
            write_atomic(&self.settings.key_file, &key, Access::OwnerOnly)?;
            write_atomic(&self.settings.cert_file, &cert, Access::Public)?;
            self.leaf = Some((signer.common_name.to_string(), not_after));
            self.count("leaf-issued");
            tracing::info!(
                file = %self.settings.cert_file.display(),
                ca = signer.common_name,
                "issued a serving certificate"
            );
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

    /// Whether `leaf_pem` verifies for `svc.ns.svc` with only `ca_pem` trusted.
    fn verifies(leaf_pem: &str, ca_pem: &str) -> bool {
        use rustls::client::danger::ServerCertVerifier;
        let mut roots = rustls::RootCertStore::empty();
        for c in rustls_pemfile::certs(&mut ca_pem.as_bytes()) {
            roots.add(c.unwrap()).unwrap();
        }
        let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
        let verifier =
            rustls::client::WebPkiServerVerifier::builder_with_provider(roots.into(), provider)
                .build()
                .unwrap();
        let leaf = rustls_pemfile::certs(&mut leaf_pem.as_bytes())
            .next()
            .unwrap()
            .unwrap();
        let name = rustls::pki_types::ServerName::try_from("svc.ns.svc").unwrap();
        verifier
            .verify_server_cert(&leaf, &[], &name, &[], rustls::pki_types::UnixTime::now())
            .is_ok()
    }

    fn names() -> Vec<String> {
        vec!["svc.ns.svc".to_string(), "127.0.0.1".to_string()]
    }

    #[test]
    fn leaf_chains_to_the_stored_ca_and_rotation_keeps_the_old_ca() {
        let now = OffsetDateTime::now_utc();
        let ca = CaMaterial::generate(now, None).unwrap();
        let secret = ca.to_secret("ca", "labgate-system");
        assert_eq!(CaMaterial::from_secret(&secret).unwrap(), ca);
        let (cert, key, _) = issue_leaf(ca.signer(), &names(), now).unwrap();

        // A rustls client that trusts only the CA accepts the leaf.
        assert!(
            verifies(&cert, &ca.cert_pem),
            "leaf verifies against the stored CA"
        );
        assert!(
            rustls_pemfile::private_key(&mut key.as_bytes())
                .unwrap()
                .is_some()
        );

        assert!(!ca.needs_rotation(now));
        assert!(ca.needs_rotation(now + CA_VALIDITY - CA_RENEW_BEFORE + Duration::from_secs(3600)));
        let rotated = CaMaterial::generate(now, Some(&ca)).unwrap();
        let bundle = rotated.bundle();
        assert_eq!(bundle.matches("BEGIN CERTIFICATE").count(), 2);
        assert!(bundle.starts_with(&rotated.cert_pem));
        // The previous CA's key survives the round trip through the Secret,
        // and leaves it issues still verify against the old CA alone.
        let stored = CaMaterial::from_secret(&rotated.to_secret("ca", "labgate-system")).unwrap();
        assert_eq!(stored, rotated);
        let previous = stored.previous_signer().expect("previous CA can sign");
        assert_eq!(previous.common_name, ca.common_name);
        let (old_leaf, _, _) = issue_leaf(previous, &names(), now).unwrap();
        assert!(verifies(&old_leaf, &ca.cert_pem));
        assert!(!verifies(&old_leaf, &rotated.cert_pem));
        assert!(verifies(&old_leaf, &bundle));
        let (new_leaf, _, _) = issue_leaf(stored.signer(), &names(), now).unwrap();
        assert!(!verifies(&new_leaf, &ca.cert_pem));
        assert!(verifies(&new_leaf, &bundle));
        // A leaf never outlives its CA.
        let short = Signer {
            not_after: (now + Duration::from_secs(7 * 24 * 3600)).unix_timestamp(),
            ..previous
        };
        let (_, _, not_after) = issue_leaf(short, &names(), now).unwrap();
        assert_eq!(not_after.unix_timestamp(), short.not_after);

        let mut foreign = secret.clone();
        foreign.metadata.labels = None;
        assert!(matches!(
            CaMaterial::from_secret(&foreign),
            Err(CertError::Foreign(_))
        ));
    }

    #[test]
    fn the_new_ca_signs_only_after_it_has_been_published_for_a_while() {
        let now = OffsetDateTime::now_utc();
        let old = CaMaterial::generate(now - Duration::from_secs(300 * 24 * 3600), None).unwrap();
        let new = CaMaterial::generate(now, Some(&old)).unwrap();
        let (old_cn, new_cn) = (old.common_name.as_str(), new.common_name.as_str());
        let later = now + CA_PROPAGATION_DELAY;
        let signer = |ca, bundle, since, at| choose_signer(ca, bundle, since, at).common_name;

        // The pass that published the new CA (or found it there for the first
        // time, e.g. after a restart) keeps the old CA signing...
        assert_eq!(signer(&new, BundleStatus::Patched, Some(now), now), old_cn);
        assert_eq!(
            signer(&new, BundleStatus::Unchanged, Some(now), now),
            old_cn
        );
        // ...and so does a pass that could not confirm the publication.
        assert_eq!(signer(&new, BundleStatus::Contended, None, later), old_cn);
        // A later pass, once the bundle has carried it long enough, switches.
        assert_eq!(
            signer(&new, BundleStatus::Unchanged, Some(now), later),
            new_cn
        );
        assert_eq!(
            signer(
                &new,
                BundleStatus::Unchanged,
                Some(now),
                later - Duration::from_secs(1)
            ),
            old_cn
        );
        // No webhook configuration to wait for: the new CA at once.
        assert_eq!(signer(&new, BundleStatus::Missing, None, now), new_cn);
        // No previous CA (first start), or none that can sign: the current one.
        assert_eq!(signer(&old, BundleStatus::Patched, Some(now), now), old_cn);
        let mut keyless = new.clone();
        keyless.previous_signer = None;
        assert_eq!(
            signer(&keyless, BundleStatus::Patched, Some(now), now),
            new_cn
        );
        // An old CA about to expire does not sign.
        let mut expiring = new.clone();
        expiring.previous_signer.as_mut().unwrap().not_after =
            (now + PREVIOUS_CA_MIN_REMAINING).unix_timestamp();
        assert_eq!(
            signer(&expiring, BundleStatus::Patched, Some(now), now),
            new_cn
        );
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
