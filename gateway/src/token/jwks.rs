//! Keys from a JSON Web Key Set (RFC 7517): a file, or an identity
//! provider's HTTPS endpoint (`jwks_uri` in its OpenID configuration).
//!
//! Only keys fit for the pinned algorithms are used: `use` must be `sig` (or
//! absent), `key_ops` must include `verify` (or be absent), the key type and
//! curve must belong to a pinned algorithm, and a key that names its `alg` is
//! bound to exactly that algorithm. Symmetric (`oct`) keys are never taken
//! from a key set: a published secret is no secret.
//!
//! A remote set is fetched on a schedule and when a token names a `kid` the
//! set does not have, at most once per `min_refetch_interval` whatever the
//! cause, one fetch at a time (callers wait for the fetch in flight), so a
//! flood of tokens with random `kid`s costs the provider at most one request
//! per interval. A failed fetch, a non-200 answer, an oversized or unparsable
//! body, or a set with no usable key keeps the last good set.

use std::path::Path;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Limited};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, KeyOperations, PublicKeyUse};
use jsonwebtoken::{Algorithm, AlgorithmFamily, DecodingKey};

use super::keys::{KeyError, LoadedKey};
use crate::metrics::Metrics;

/// How remote key sets are fetched.
#[derive(Debug, Clone)]
pub struct JwksSettings {
    /// Scheduled refetch interval.
    pub refresh_interval: Duration,
    /// No two fetches of one set start closer together than this.
    pub min_refetch_interval: Duration,
    /// Whole-request deadline (connect, TLS, headers, body).
    pub timeout: Duration,
    /// Largest body accepted.
    pub max_bytes: usize,
}

impl Default for JwksSettings {
    fn default() -> Self {
        JwksSettings {
            refresh_interval: Duration::from_secs(300),
            min_refetch_interval: Duration::from_secs(30),
            timeout: Duration::from_secs(10),
            max_bytes: 1024 * 1024,
        }
    }
}

/// The pinned algorithms a JWK may verify, or `None` when it is unfit.
fn binding(jwk: &Jwk, pinned: &[Algorithm]) -> Option<Vec<Algorithm>> {
    match &jwk.common.public_key_use {
        None | Some(PublicKeyUse::Signature) => {}
        Some(_) => return None,
    }
    if let Some(ops) = &jwk.common.key_operations
        && !ops.contains(&KeyOperations::Verify)
    {
        return None;
    }
    let by_type: &[Algorithm] = match &jwk.algorithm {
        AlgorithmParameters::RSA(_) => AlgorithmFamily::Rsa.algorithms(),
        AlgorithmParameters::EllipticCurve(p) => match p.curve {
            EllipticCurve::P256 => &[Algorithm::ES256],
            EllipticCurve::P384 => &[Algorithm::ES384],
            _ => return None,
        },
        AlgorithmParameters::OctetKeyPair(p) if p.curve == EllipticCurve::Ed25519 => {
            &[Algorithm::EdDSA]
        }
        // `oct` (a secret in a published set) and anything unknown.
        _ => return None,
    };
    let allowed: Vec<Algorithm> = match jwk.common.key_algorithm {
        Some(named) => {
            let named = Algorithm::try_from(named).ok()?;
            by_type.contains(&named).then(|| vec![named])?
        }
        None => by_type.to_vec(),
    };
    let allowed: Vec<Algorithm> = allowed.into_iter().filter(|a| pinned.contains(a)).collect();
    (!allowed.is_empty()).then_some(allowed)
}

/// Parses a key set, keeping the keys fit for `pinned` (see the module
/// documentation). Unfit or unparsable keys are skipped, not fatal: a
/// provider may publish encryption keys or algorithms labgate does not use.
///
/// # Errors
/// When the document is not a JSON object with a `keys` array.
pub fn parse(body: &[u8], pinned: &[Algorithm]) -> Result<Vec<LoadedKey>, String> {
    #[derive(serde::Deserialize)]
    struct RawSet {
        keys: Vec<serde_json::Value>,
    }
    let set: RawSet = serde_json::from_slice(body).map_err(|e| format!("not a JWK set: {e}"))?;
    let mut keys = Vec::new();
    for raw in set.keys {
        let kid = raw.get("kid").and_then(|k| k.as_str()).map(str::to_string);
        let Ok(jwk) = serde_json::from_value::<Jwk>(raw) else {
            tracing::debug!(?kid, "JWK skipped: not a key labgate can read");
            continue;
        };
        let Some(algorithms) = binding(&jwk, pinned) else {
            tracing::debug!(
                ?kid,
                "JWK skipped: its kty/crv/alg/use fit no pinned algorithm"
            );
            continue;
        };
        match DecodingKey::from_jwk(&jwk) {
            Ok(key) => keys.push(LoadedKey {
                kid: jwk.common.key_id.clone(),
                algorithms,
                key,
            }),
            Err(e) => tracing::debug!(?kid, error = %e, "JWK skipped: unusable key"),
        }
    }
    Ok(keys)
}

/// Loads a JWKS file; a file without one usable key is an error.
///
/// # Errors
/// [`KeyError`] when it cannot be read, parsed, or has no usable key.
pub fn load_file(path: &Path, pinned: &[Algorithm]) -> Result<Vec<LoadedKey>, KeyError> {
    let body = std::fs::read(path).map_err(|source| KeyError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let keys = parse(&body, pinned).map_err(|reason| KeyError::Jwks {
        path: path.to_path_buf(),
        reason,
    })?;
    if keys.is_empty() {
        return Err(KeyError::Jwks {
            path: path.to_path_buf(),
            reason: "no key fits the pinned algorithms (--jwt-algorithms)".into(),
        });
    }
    Ok(keys)
}

/// A remote key set: the last good keys and the fetcher.
pub struct RemoteJwks {
    url: http::Uri,
    /// The issuer it belongs to, for logs and the keys gauge.
    label: String,
    client: Client<HttpsConnector<HttpConnector>, Empty<Bytes>>,
    settings: JwksSettings,
    pinned: Vec<Algorithm>,
    keys: RwLock<Arc<Vec<LoadedKey>>>,
    /// Digest of the last good body: an unchanged set keeps the token cache.
    last_body: std::sync::Mutex<Option<[u8; 32]>>,
    /// When the last fetch started; held across the fetch (single flight).
    last_attempt: tokio::sync::Mutex<Option<Instant>>,
    metrics: Arc<Metrics>,
}

/// Outcome of [`RemoteJwks::refresh`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refresh {
    /// A new, different key set is in place.
    Changed,
    /// Fetched; the same set as before.
    Unchanged,
    /// Fetch failed or the answer was unusable; the last good set stays.
    Failed,
    /// Too soon after the previous fetch; nothing asked.
    RateLimited,
}

impl RemoteJwks {
    /// A fetcher for `url` (HTTPS only), trusting `ca_file` (PEM) or, without
    /// it, the system's roots. Nothing is fetched yet.
    ///
    /// # Errors
    /// [`KeyError::Config`] for a non-HTTPS URL or an unusable CA file.
    pub fn new(
        url: http::Uri,
        ca_file: Option<&Path>,
        label: String,
        settings: JwksSettings,
        pinned: Vec<Algorithm>,
        metrics: Arc<Metrics>,
    ) -> Result<RemoteJwks, KeyError> {
        if url.scheme() != Some(&http::uri::Scheme::HTTPS) || url.host().is_none() {
            return Err(KeyError::Config(format!(
                "JWKS URL {url} must be an https:// URL: keys fetched in the clear could be replaced"
            )));
        }
        let provider = Arc::new(crate::tls::crypto_provider());
        let builder = hyper_rustls::HttpsConnectorBuilder::new();
        let builder = match ca_file {
            Some(path) => builder.with_tls_config(client_config_with_ca(path, provider)?),
            None => builder
                .with_provider_and_native_roots(provider)
                .map_err(|e| KeyError::Config(format!("no system CA roots for {url}: {e}")))?,
        };
        let connector = builder.https_only().enable_http1().build();
        let client = Client::builder(hyper_util::rt::TokioExecutor::new()).build(connector);
        metrics.jwks_keys.with_label_values(&[&label]).set(0);
        Ok(RemoteJwks {
            url,
            label,
            client,
            settings,
            pinned,
            keys: RwLock::new(Arc::new(Vec::new())),
            last_body: std::sync::Mutex::new(None),
            last_attempt: tokio::sync::Mutex::new(None),
            metrics,
        })
    }

    /// The current keys (the last good set; empty before the first success).
    pub fn keys(&self) -> Arc<Vec<LoadedKey>> {
        self.keys.read().map(|k| k.clone()).unwrap_or_default()
    }

    /// Fetches the set unless a fetch started less than
    /// `min_refetch_interval` ago. A caller arriving while a fetch is in
    /// flight waits for it and then, being too soon, asks nothing more.
    pub async fn refresh(&self) -> Refresh {
        let mut last = self.last_attempt.lock().await;
        if let Some(at) = *last
            && at.elapsed() < self.settings.min_refetch_interval
        {
            self.metrics
                .jwks_refetches
                .with_label_values(&["rate_limited"])
                .inc();
            return Refresh::RateLimited;
        }
        *last = Some(Instant::now());
        let outcome = match tokio::time::timeout(self.settings.timeout, self.fetch()).await {
            Ok(Ok(body)) => self.install(&body),
            Ok(Err(e)) => {
                tracing::warn!(issuer = %self.label, url = %self.url, error = %e, "JWKS fetch failed; keeping the last good keys");
                self.count("error");
                Refresh::Failed
            }
            Err(_) => {
                tracing::warn!(issuer = %self.label, url = %self.url, "JWKS fetch timed out; keeping the last good keys");
                self.count("error");
                Refresh::Failed
            }
        };
        drop(last);
        outcome
    }

    fn count(&self, result: &str) {
        self.metrics
            .jwks_refetches
            .with_label_values(&[result])
            .inc();
    }

    fn install(&self, body: &[u8]) -> Refresh {
        let keys = match parse(body, &self.pinned) {
            Ok(keys) if !keys.is_empty() => keys,
            Ok(_) => {
                tracing::warn!(issuer = %self.label, url = %self.url, "JWKS has no key fitting the pinned algorithms; keeping the last good keys");
                self.count("invalid");
                return Refresh::Failed;
            }
            Err(e) => {
                tracing::warn!(issuer = %self.label, url = %self.url, error = %e, "JWKS unusable; keeping the last good keys");
                self.count("invalid");
                return Refresh::Failed;
            }
        };
        self.count("ok");
        let digest: [u8; 32] = {
            use sha2::Digest;
            sha2::Sha256::digest(body).into()
        };
        let mut last_body = self.last_body.lock().unwrap_or_else(|e| e.into_inner());
        if *last_body == Some(digest) {
            return Refresh::Unchanged;
        }
        *last_body = Some(digest);
        let kids: Vec<&str> = keys.iter().filter_map(|k| k.kid.as_deref()).collect();
        tracing::info!(issuer = %self.label, keys = keys.len(), ?kids, "JWKS keys loaded");
        self.metrics
            .jwks_keys
            .with_label_values(&[&self.label])
            .set(i64::try_from(keys.len()).unwrap_or(i64::MAX));
        if let Ok(mut slot) = self.keys.write() {
            *slot = Arc::new(keys);
        }
        Refresh::Changed
    }

    async fn fetch(&self) -> Result<Bytes, String> {
        let req = http::Request::get(self.url.clone())
            .header(http::header::ACCEPT, "application/json")
            .body(Empty::<Bytes>::new())
            .map_err(|e| e.to_string())?;
        let res = self.client.request(req).await.map_err(|e| {
            // The connector's error chain names the TLS or DNS cause.
            let mut msg = e.to_string();
            let mut source = std::error::Error::source(&e);
            while let Some(s) = source {
                msg.push_str(": ");
                msg.push_str(&s.to_string());
                source = s.source();
            }
            msg
        })?;
        if res.status() != http::StatusCode::OK {
            return Err(format!("HTTP {}", res.status()));
        }
        Limited::new(res.into_body(), self.settings.max_bytes)
            .collect()
            .await
            .map(|b| b.to_bytes())
            .map_err(|e| {
                format!(
                    "reading the body (limit {} bytes): {e}",
                    self.settings.max_bytes
                )
            })
    }

    /// Scheduled refetches until the task is dropped; `on_change` runs after
    /// each change of the set.
    pub async fn run_schedule(self: Arc<Self>, on_change: impl Fn()) {
        loop {
            if self.refresh().await == Refresh::Changed {
                on_change();
            }
            tokio::time::sleep(self.settings.refresh_interval).await;
        }
    }
}

fn client_config_with_ca(
    path: &Path,
    provider: Arc<rustls::crypto::CryptoProvider>,
) -> Result<rustls::ClientConfig, KeyError> {
    let bad =
        |reason: String| KeyError::Config(format!("JWKS CA file {}: {reason}", path.display()));
    let pem = std::fs::read(path).map_err(|e| bad(e.to_string()))?;
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pemfile::certs(&mut pem.as_slice()) {
        roots
            .add(cert.map_err(|e| bad(e.to_string()))?)
            .map_err(|e| bad(e.to_string()))?;
    }
    if roots.is_empty() {
        return Err(bad("no PEM certificate in it".into()));
    }
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| bad(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn ec_jwk(extra: serde_json::Value) -> serde_json::Value {
        // A valid P-256 public point (the RFC 7517 A.1 example key).
        let mut k = json!({
            "kty": "EC", "crv": "P-256",
            "x": "MKBCTNIcKUSDii11ySs3526iDZ8AiTo7Tu6KPAqv7D4",
            "y": "4Etl6SRW2YiLUrN5vfvVHuhp7x8PxltmWWlbbM4IFyM",
        });
        for (key, value) in extra.as_object().unwrap() {
            k[key] = value.clone();
        }
        k
    }

    fn kids(body: serde_json::Value, pinned: &[Algorithm]) -> Vec<Option<String>> {
        parse(body.to_string().as_bytes(), pinned)
            .unwrap()
            .into_iter()
            .map(|k| k.kid)
            .collect()
    }

    #[test]
    fn only_keys_fit_for_the_pinned_algorithms_are_used() {
        let rsa = json!({"kty": "RSA", "kid": "rsa", "n": "sXchDaQebHnPiGvyDOAT4saGEUetSyo9MKLOoWFsueri23bOdgWp4Dy1WlUzewbgBHod5pcM9H95GQRV3JDXboIRROSBigeC5yjU1hGzHHyXss8UDprecbAYxknTcQkhslANGRUZmdTOQ5qTRsLAt6BTYuyvVRdhS8exSZEy_c4gs_7svlJJQ4H9_NxsiIoLwAEk7-Q3UXERGYw_75IDrGA84-lA_-Ct4eTlXHBIY2EaV7t7LjJaynVJCpkv4LKjTTAumiGUIuQhrNhZLuF_RJLqHpM2kgWFLU7-VTdL1VbC2tejvcI2BlMkEpk1BzBZI0KQB0GaDWFLN-aEAw3vRw", "e": "AQAB"});
        let set = json!({"keys": [
            ec_jwk(json!({"kid": "plain"})),
            ec_jwk(json!({"kid": "sig", "use": "sig", "alg": "ES256"})),
            ec_jwk(json!({"kid": "enc", "use": "enc"})),
            ec_jwk(json!({"kid": "wrap-only", "key_ops": ["wrapKey"]})),
            ec_jwk(json!({"kid": "verify", "key_ops": ["verify"]})),
            // Names an algorithm its key type cannot do.
            ec_jwk(json!({"kid": "ec-as-rs", "alg": "RS256"})),
            ec_jwk(json!({"kid": "es384-named", "alg": "ES384"})),
            {"kty": "oct", "kid": "secret", "k": "c2VjcmV0LXNlY3JldC1zZWNyZXQtc2VjcmV0LXNlY3JldA"},
            {"kty": "XYZ", "kid": "unknown-type"},
            rsa,
        ]});
        assert_eq!(
            kids(set.clone(), &[Algorithm::ES256]),
            ["plain", "sig", "verify"].map(|k| Some(k.to_string()))
        );
        assert_eq!(
            kids(set.clone(), &[Algorithm::RS256, Algorithm::HS256]),
            [Some("rsa".to_string())]
        );
        assert!(
            kids(set, &[Algorithm::HS256]).is_empty(),
            "no oct key is ever taken"
        );
        // A key naming its alg is bound to it alone.
        let keys = parse(
            json!({"keys": [ec_jwk(json!({"alg": "ES256"}))]})
                .to_string()
                .as_bytes(),
            &[Algorithm::ES256, Algorithm::ES384],
        )
        .unwrap();
        assert_eq!(keys[0].algorithms, vec![Algorithm::ES256]);
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        for body in ["", "null", "[]", "{}", r#"{"keys": 3}"#, "\u{0}"] {
            assert!(
                parse(body.as_bytes(), &[Algorithm::ES256]).is_err(),
                "{body:?}"
            );
        }
    }

    #[test]
    fn only_https_urls() {
        for url in ["http://idp.example/jwks", "ftp://idp.example/jwks", "/jwks"] {
            let err = RemoteJwks::new(
                url.parse().unwrap(),
                None,
                "t".into(),
                JwksSettings::default(),
                vec![Algorithm::RS256],
                Arc::new(Metrics::new()),
            )
            .err()
            .unwrap_or_else(|| panic!("{url} accepted"));
            assert!(err.to_string().contains("https://"), "{err}");
        }
    }
}
