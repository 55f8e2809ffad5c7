//! Verifying the JWTs that portals and identity providers hand to students.
//!
//! Algorithms are pinned by configuration: the token header may only pick
//! among them, never widen them, and `none` cannot be configured at all.
//! Keys come from files (HMAC secrets or RSA/EC/Ed25519 public keys in PEM,
//! [`keys`]) and JWK sets (a file or an HTTPS URL, [`jwks`]), for one or
//! several issuers ([`issuers`]); which claim names the user is configurable
//! ([`claims`]). Verified tokens are cached (bounded, each entry dropped no
//! later than the token's `exp`), so a reconnecting noVNC does not pay for
//! RSA again. The cache is keyed by the token's SHA-256, so no token is kept
//! in memory. [`mint`] makes tokens for operators and scripts.
//!
//! # The `kid` rule
//! A token's header is untrusted; it may *select* a key, never *widen* the
//! set of keys tried:
//! - The token's `iss` picks one issuer; only that issuer's keys are tried.
//! - Every key is bound to algorithms: its family's pinned algorithms (a PEM
//!   key, an HMAC secret) or, for a JWK naming its `alg`, exactly that one.
//!   A key is only tried for a token whose `alg` it is bound to.
//! - A token **with** `kid` K is checked only against the keys named K. If the
//!   issuer has no key named K, its remote JWKS (if any) is refetched once
//!   (rate-limited); still none, and the token is refused. Keys configured
//!   **without** a `kid` are never tried for it, nor are keys named otherwise:
//!   no fallback to "every key".
//! - A token **without** `kid` is checked against the issuer's keys bound to
//!   its `alg`, named or not (the portal does not know names; trying the keys
//!   the operator trusts for that algorithm gives a forger nothing).

pub mod claims;
pub mod issuers;
pub mod jwks;
pub mod keys;
pub mod mint;

use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, Header, Validation};

pub use claims::{ClaimPath, Claims};
pub use issuers::IssuerSettings;
pub use jwks::{JwksSettings, Refresh, RemoteJwks};
pub use keys::{KeyError, KeyFile, LoadedKey, MIN_HMAC_SECRET};

use crate::metrics::Metrics;
use crate::reload::FileStamps;

/// How tokens are checked.
#[derive(Debug, Clone)]
pub struct TokenSettings {
    /// Accepted algorithms; a token whose header names another is refused.
    pub algorithms: Vec<Algorithm>,
    /// HMAC secret files (the whole file, minus one trailing newline, is the secret).
    pub hmac_secret_files: Vec<KeyFile>,
    /// RSA, EC or Ed25519 public keys in PEM.
    pub public_key_files: Vec<KeyFile>,
    /// A JWK set on disk, reloaded when it changes.
    pub jwks_file: Option<PathBuf>,
    /// A JWK set at an HTTPS URL, cached and refetched.
    pub jwks_url: Option<http::Uri>,
    /// CA bundle for `jwks_url`; the system's roots without it.
    pub jwks_ca_file: Option<PathBuf>,
    /// Accepted `iss` values; when set, `iss` is required.
    pub issuers: Vec<String>,
    /// Accepted `aud` values; when set, `aud` is required.
    pub audiences: Vec<String>,
    /// Further issuers, each with its own keys and audiences.
    pub more_issuers: Vec<IssuerSettings>,
    /// The claim naming the user (issuers may override it).
    pub user_claim: ClaimPath,
    /// Clock-skew allowance for `nbf` only (`exp` gets none: a session must be able to live).
    pub leeway: Duration,
    /// Maximum number of verified tokens kept in the cache.
    pub cache_capacity: u64,
    /// Remote JWKS fetching.
    pub jwks: JwksSettings,
}

impl Default for TokenSettings {
    fn default() -> Self {
        TokenSettings {
            algorithms: vec![Algorithm::HS256],
            hmac_secret_files: vec![],
            public_key_files: vec![],
            jwks_file: None,
            jwks_url: None,
            jwks_ca_file: None,
            issuers: vec![],
            audiences: vec![],
            more_issuers: vec![],
            user_claim: ClaimPath::default(),
            leeway: Duration::from_secs(30),
            cache_capacity: 10_000,
            jwks: JwksSettings::default(),
        }
    }
}

impl TokenSettings {
    /// The issuer the plain flags describe (if they configure keys), then
    /// the further issuers.
    fn all_issuers(&self) -> Vec<IssuerSettings> {
        let plain = IssuerSettings {
            issuers: self.issuers.clone(),
            audiences: self.audiences.clone(),
            hmac_secret_files: self.hmac_secret_files.clone(),
            public_key_files: self.public_key_files.clone(),
            jwks_file: self.jwks_file.clone(),
            jwks_url: self.jwks_url.clone(),
            jwks_ca_file: self.jwks_ca_file.clone(),
            user_claim: None,
        };
        plain
            .has_keys()
            .then_some(plain)
            .into_iter()
            .chain(self.more_issuers.iter().cloned())
            .collect()
    }
}

/// Why a token was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("token is malformed, not yet valid, or not signed by a trusted key")]
    Invalid,
    #[error("token has expired")]
    Expired,
}

/// One issuer at run time: its settings, file keys and remote set.
struct Issuer {
    settings: IssuerSettings,
    user_claim: ClaimPath,
    label: String,
    file_keys: RwLock<Arc<Vec<LoadedKey>>>,
    remote: Option<Arc<RemoteJwks>>,
}

impl Issuer {
    fn key_sets(&self) -> Vec<Arc<Vec<LoadedKey>>> {
        let mut sets = vec![self.file_keys.read().map(|k| k.clone()).unwrap_or_default()];
        if let Some(remote) = &self.remote {
            sets.push(remote.keys());
        }
        sets
    }

    fn validation(&self, alg: Algorithm, leeway: Duration) -> Validation {
        let mut validation = Validation::new(alg);
        validation.leeway = leeway.as_secs();
        validation.validate_nbf = true;
        // `exp` is checked by `alive`, without leeway: the session ends at
        // `exp`, so a token admitted past it could only kick the current
        // viewer off the VM and die (see `verify`).
        validation.validate_exp = false;
        // The user claim is checked by `Claims::from_payload`.
        validation.set_required_spec_claims(&["exp"]);
        if self.settings.issuers.is_empty() {
            validation.iss = None;
        } else {
            validation.set_issuer(&self.settings.issuers);
            validation.required_spec_claims.insert("iss".into());
        }
        if self.settings.audiences.is_empty() {
            validation.validate_aud = false;
        } else {
            validation.set_audience(&self.settings.audiences);
            validation.required_spec_claims.insert("aud".into());
        }
        validation
    }
}

/// The keys a token may be checked against, by the `kid` rule (module docs).
enum Selection<'k> {
    Keys(Vec<&'k LoadedKey>),
    /// The token names a `kid` no key of the issuer has.
    UnknownKid,
}

fn select<'k>(sets: &'k [Arc<Vec<LoadedKey>>], header: &Header) -> Selection<'k> {
    let all = sets.iter().flat_map(|s| s.iter());
    match header.kid.as_deref() {
        Some(kid) => {
            let named: Vec<&LoadedKey> = all.filter(|k| k.kid.as_deref() == Some(kid)).collect();
            if named.is_empty() {
                return Selection::UnknownKid;
            }
            Selection::Keys(named.into_iter().filter(|k| k.allows(header.alg)).collect())
        }
        None => Selection::Keys(all.filter(|k| k.allows(header.alg)).collect()),
    }
}

/// Verifies tokens; cheap to share behind an `Arc`.
pub struct TokenVerifier {
    settings: TokenSettings,
    issuers: Vec<Issuer>,
    cache: moka::future::Cache<TokenDigest, Arc<Claims>>,
    /// Bumped whenever keys change, so a verification that raced a key
    /// removal does not leave its result in the cache.
    key_generation: std::sync::atomic::AtomicU64,
    metrics: Arc<Metrics>,
}

/// SHA-256 of a token: the cache key.
type TokenDigest = [u8; 32];

fn digest(token: &str) -> TokenDigest {
    use sha2::Digest;
    sha2::Sha256::digest(token.as_bytes()).into()
}

/// Cache entries live until the token's `exp`, never longer.
struct UntilExpiry;

impl moka::Expiry<TokenDigest, Arc<Claims>> for UntilExpiry {
    fn expire_after_create(
        &self,
        _key: &TokenDigest,
        claims: &Arc<Claims>,
        _created_at: std::time::Instant,
    ) -> Option<Duration> {
        Some(Duration::from_secs(claims.exp.saturating_sub(now_secs())))
    }
}

/// The one expiry rule, at connect and during the session: a token lives
/// while `now < exp`. No leeway: a session admitted after `exp` would be
/// ended at once, after its upstream had already taken the VM over.
fn alive(exp: u64) -> bool {
    now_secs() < exp
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// A header value shortened for a log line (it is attacker-chosen).
fn loggable(s: &str) -> &str {
    match s.char_indices().nth(64) {
        Some((at, _)) => &s[..at],
        None => s,
    }
}

fn load_file_keys(
    issuer: &IssuerSettings,
    pinned: &[Algorithm],
) -> Result<Vec<LoadedKey>, KeyError> {
    let mut keys = keys::load_files(&issuer.hmac_secret_files, &issuer.public_key_files, pinned)?;
    if let Some(path) = &issuer.jwks_file {
        keys.extend(jwks::load_file(path, pinned)?);
    }
    Ok(keys)
}

impl TokenVerifier {
    /// Loads the keys and builds the verifier. Remote key sets are not
    /// fetched yet: [`TokenVerifier::background_tasks`] does that (and a
    /// token naming an unknown `kid` triggers a fetch too).
    ///
    /// # Errors
    /// [`KeyError`] when a key file cannot be read or parsed, an algorithm
    /// has no key of its family, a JWKS URL is not HTTPS, or two issuers
    /// share a name.
    pub fn new(settings: TokenSettings, metrics: Arc<Metrics>) -> Result<TokenVerifier, KeyError> {
        if settings.algorithms.is_empty() {
            return Err(KeyError::NoAlgorithms);
        }
        let all = settings.all_issuers();
        if all.is_empty() {
            return Err(KeyError::Config(
                "no token keys: pass --jwt-hmac-secret-file, --jwt-public-key-file, \
                 --jwt-jwks-url, --jwt-jwks-file or --jwt-issuers-file"
                    .into(),
            ));
        }
        let mut seen = std::collections::HashSet::new();
        for name in all.iter().flat_map(|i| &i.issuers) {
            if !seen.insert(name) {
                return Err(KeyError::Config(format!(
                    "issuer {name:?} is configured twice; each issuer has one set of keys"
                )));
            }
        }
        if all.iter().filter(|i| i.issuers.is_empty()).count() > 1 {
            return Err(KeyError::Config(
                "only one issuer may accept any `iss`".into(),
            ));
        }
        let mut issuers = Vec::new();
        for s in all {
            let label = s.label();
            let remote = match &s.jwks_url {
                Some(url) => Some(Arc::new(RemoteJwks::new(
                    url.clone(),
                    s.jwks_ca_file.as_deref(),
                    label.clone(),
                    settings.jwks.clone(),
                    settings.algorithms.clone(),
                    metrics.clone(),
                )?)),
                None => None,
            };
            issuers.push(Issuer {
                file_keys: RwLock::new(Arc::new(load_file_keys(&s, &settings.algorithms)?)),
                user_claim: s
                    .user_claim
                    .clone()
                    .unwrap_or_else(|| settings.user_claim.clone()),
                label,
                remote,
                settings: s,
            });
        }
        // A pinned algorithm without any key is a configuration mistake,
        // unless a remote set (not fetched yet) may bring one.
        if !issuers.iter().any(|i| i.remote.is_some()) {
            for alg in &settings.algorithms {
                let has_key = issuers.iter().any(|i| {
                    i.file_keys
                        .read()
                        .map(|k| k.iter().any(|k| k.allows(*alg)))
                        .unwrap_or(false)
                });
                if !has_key {
                    return Err(KeyError::NoKeyFor(*alg));
                }
            }
        }
        let cache = moka::future::Cache::builder()
            .max_capacity(settings.cache_capacity)
            .expire_after(UntilExpiry)
            .build();
        Ok(TokenVerifier {
            settings,
            issuers,
            cache,
            key_generation: std::sync::atomic::AtomicU64::new(0),
            metrics,
        })
    }

    /// Checks a token and returns its claims.
    ///
    /// # Errors
    /// [`TokenError::Expired`] for an expired token, [`TokenError::Invalid`]
    /// for anything else wrong with it.
    pub async fn verify(&self, token: &str) -> Result<Arc<Claims>, TokenError> {
        let key = digest(token);
        if let Some(claims) = self.cache.get(&key).await {
            self.metrics.token_cache_hits.inc();
            // The cache drops entries at `exp`; this guards the last second.
            if !alive(claims.exp) {
                return Err(TokenError::Expired);
            }
            return Ok(claims);
        }
        self.metrics.token_cache_misses.inc();
        let generation = self.key_generation.load(Ordering::SeqCst);
        let claims = Arc::new(self.verify_uncached(token).await?);
        if !alive(claims.exp) {
            return Err(TokenError::Expired);
        }
        self.cache.insert(key, claims.clone()).await;
        // Keys changed meanwhile: the next use checks the token again.
        if self.key_generation.load(Ordering::SeqCst) != generation {
            self.cache.invalidate(&key).await;
        }
        Ok(claims)
    }

    /// After any change of keys: tokens verified with a removed key must be
    /// checked again.
    fn keys_changed(&self) {
        self.key_generation.fetch_add(1, Ordering::SeqCst);
        self.cache.invalidate_all();
    }

    /// The issuer a token claims to come from: the one naming its `iss`,
    /// else the one accepting any `iss`.
    fn issuer_for(&self, iss: Option<&str>) -> Option<&Issuer> {
        iss.and_then(|iss| {
            self.issuers
                .iter()
                .find(|i| i.settings.issuers.iter().any(|n| n == iss))
        })
        .or_else(|| self.issuers.iter().find(|i| i.settings.issuers.is_empty()))
    }

    async fn verify_uncached(&self, token: &str) -> Result<Claims, TokenError> {
        // The header is untrusted: it may only choose among pinned algorithms.
        let header = jsonwebtoken::decode_header(token).map_err(|_| TokenError::Invalid)?;
        if !self.settings.algorithms.contains(&header.alg) {
            tracing::debug!(alg = ?header.alg, "token refused: algorithm not pinned");
            return Err(TokenError::Invalid);
        }
        // Routing only: the chosen issuer's validation checks `iss` again.
        #[derive(serde::Deserialize)]
        struct Iss {
            iss: Option<serde_json::Value>,
        }
        let iss = jsonwebtoken::dangerous::insecure_decode_claims::<Iss>(token)
            .map_err(|_| TokenError::Invalid)?
            .iss;
        let Some(issuer) = self.issuer_for(iss.as_ref().and_then(|v| v.as_str())) else {
            tracing::debug!("token refused: no configured issuer has its `iss`");
            return Err(TokenError::Invalid);
        };

        let mut sets = issuer.key_sets();
        // Nothing fetched yet (the provider was down at start-up).
        let remote_empty = issuer.remote.as_ref().is_some_and(|r| r.keys().is_empty());
        let needs_fetch = match select(&sets, &header) {
            Selection::UnknownKid => true,
            Selection::Keys(keys) => keys.is_empty() && remote_empty,
        };
        if needs_fetch && let Some(remote) = &issuer.remote {
            if remote.refresh().await == Refresh::Changed {
                self.keys_changed();
            }
            sets = issuer.key_sets();
        }
        let candidates = match select(&sets, &header) {
            Selection::Keys(keys) => keys,
            Selection::UnknownKid => {
                tracing::debug!(
                    issuer = %issuer.label,
                    kid = loggable(header.kid.as_deref().unwrap_or_default()),
                    "token refused: no key of its issuer has its kid (keys without a kid only check tokens without one)"
                );
                return Err(TokenError::Invalid);
            }
        };
        if candidates.is_empty() {
            tracing::debug!(issuer = %issuer.label, alg = ?header.alg, "token refused: no key of its issuer is bound to its algorithm");
            return Err(TokenError::Invalid);
        }
        let validation = issuer.validation(header.alg, self.settings.leeway);
        // Another key may still verify the signature (same kid twice during a
        // rotation, or a token without kid).
        let payload = candidates
            .iter()
            .find_map(|key| {
                jsonwebtoken::decode::<serde_json::Value>(token, &key.key, &validation).ok()
            })
            .ok_or(TokenError::Invalid)?
            .claims;
        Claims::from_payload(&payload, &issuer.user_claim).ok_or_else(|| {
            tracing::debug!(issuer = %issuer.label, claim = %issuer.user_claim, "token refused: its user claim is missing, empty or not a string, or a scope claim is not a string");
            TokenError::Invalid
        })
    }

    /// Reloads key files (HMAC, PEM, JWKS files) if they changed. Keeps the
    /// old keys on error.
    pub async fn reload_if_changed(&self, stamps: &mut FileStamps) {
        if !stamps.changed() {
            return;
        }
        let loaded: Result<Vec<_>, KeyError> = self
            .issuers
            .iter()
            .map(|i| load_file_keys(&i.settings, &self.settings.algorithms))
            .collect();
        match loaded {
            Ok(all) => {
                for (issuer, keys) in self.issuers.iter().zip(all) {
                    if let Ok(mut slot) = issuer.file_keys.write() {
                        *slot = Arc::new(keys);
                    }
                }
                self.keys_changed();
                tracing::info!("token keys reloaded");
            }
            Err(e) => {
                tracing::error!(error = %e, "token key reload failed; keeping the previous keys")
            }
        }
    }

    /// Stamps of every key file, for [`TokenVerifier::reload_if_changed`].
    pub fn key_file_stamps(&self) -> FileStamps {
        FileStamps::new(self.issuers.iter().flat_map(|i| {
            i.settings
                .hmac_secret_files
                .iter()
                .chain(&i.settings.public_key_files)
                .map(|k| k.path.clone())
                .chain(i.settings.jwks_file.clone())
        }))
    }

    /// The loops keeping keys current, to spawn for the verifier's lifetime:
    /// key file reload every `reload_interval`, and each remote JWKS fetched
    /// now and then every `--jwt-jwks-refresh-interval`.
    pub fn background_tasks(
        self: &Arc<Self>,
        reload_interval: Duration,
    ) -> Vec<futures::future::BoxFuture<'static, ()>> {
        let mut tasks: Vec<futures::future::BoxFuture<'static, ()>> = Vec::new();
        let verifier = self.clone();
        tasks.push(Box::pin(async move {
            let mut stamps = verifier.key_file_stamps();
            loop {
                tokio::time::sleep(reload_interval).await;
                verifier.reload_if_changed(&mut stamps).await;
            }
        }));
        for issuer in &self.issuers {
            if let Some(remote) = &issuer.remote {
                let verifier = Arc::downgrade(self);
                tasks.push(Box::pin(remote.clone().run_schedule(move || {
                    if let Some(v) = verifier.upgrade() {
                        v.keys_changed();
                    }
                })));
            }
        }
        tasks
    }
}

#[cfg(test)]
mod kid_tests;

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{EncodingKey, Header, encode};
    use serde_json::json;
    use std::str::FromStr;

    const SECRET: &[u8] = b"s3cret-s3cret-s3cret-s3cret-s3cret";
    const OTHER: &[u8] = b"other-secret-0123456789abcdef-0123";

    fn settings(dir: &std::path::Path) -> TokenSettings {
        std::fs::write(
            dir.join("secret"),
            format!("{}\n", str::from_utf8(SECRET).unwrap()),
        )
        .unwrap();
        std::fs::write(dir.join("other"), OTHER).unwrap();
        TokenSettings {
            algorithms: vec![Algorithm::HS256],
            hmac_secret_files: vec![
                KeyFile::from_str(dir.join("secret").to_str().unwrap()).unwrap(),
            ],
            public_key_files: vec![],
            issuers: vec!["portal".into()],
            audiences: vec!["labgate".into()],
            leeway: Duration::from_secs(5),
            cache_capacity: 100,
            ..TokenSettings::default()
        }
    }

    fn sign(claims: serde_json::Value, secret: &[u8], alg: Algorithm) -> String {
        encode(
            &Header::new(alg),
            &claims,
            &EncodingKey::from_secret(secret),
        )
        .unwrap()
    }

    fn good_claims() -> serde_json::Value {
        json!({"sub": "alice", "exp": now_secs() + 600, "iss": "portal", "aud": "labgate"})
    }

    #[tokio::test]
    async fn accepts_good_and_caches() {
        let dir = tempfile::tempdir().unwrap();
        let metrics = Arc::new(Metrics::new());
        let v = TokenVerifier::new(settings(dir.path()), metrics.clone()).unwrap();
        let t = sign(good_claims(), SECRET, Algorithm::HS256);
        assert_eq!(v.verify(&t).await.unwrap().sub, "alice");
        assert_eq!(v.verify(&t).await.unwrap().sub, "alice");
        assert_eq!(metrics.token_cache_hits.get(), 1);
        assert_eq!(metrics.token_cache_misses.get(), 1);
    }

    #[tokio::test]
    async fn refuses_bad_tokens() {
        let dir = tempfile::tempdir().unwrap();
        let v = TokenVerifier::new(settings(dir.path()), Arc::new(Metrics::new())).unwrap();
        let mut expired = good_claims();
        expired["exp"] = json!(now_secs() - 60);
        assert_eq!(
            v.verify(&sign(expired, SECRET, Algorithm::HS256)).await,
            Err(TokenError::Expired)
        );
        let mut future = good_claims();
        future["nbf"] = json!(now_secs() + 600);
        let mut wrong_aud = good_claims();
        wrong_aud["aud"] = json!("someone-else");
        let mut no_sub = good_claims();
        no_sub.as_object_mut().unwrap().remove("sub");
        let mut wrong_iss = good_claims();
        wrong_iss["iss"] = json!("elsewhere");
        let mut no_iss = good_claims();
        no_iss.as_object_mut().unwrap().remove("iss");
        let mut no_exp = good_claims();
        no_exp.as_object_mut().unwrap().remove("exp");
        let cases = [
            sign(wrong_iss, SECRET, Algorithm::HS256),
            sign(no_iss, SECRET, Algorithm::HS256),
            sign(no_exp, SECRET, Algorithm::HS256),
            sign(future, SECRET, Algorithm::HS256),
            sign(wrong_aud, SECRET, Algorithm::HS256),
            sign(no_sub, SECRET, Algorithm::HS256),
            sign(good_claims(), OTHER, Algorithm::HS256),
            // Right secret, algorithm not pinned.
            sign(good_claims(), SECRET, Algorithm::HS512),
            "not-a-jwt".to_string(),
        ];
        for t in cases {
            assert_eq!(v.verify(&t).await, Err(TokenError::Invalid), "{t}");
        }
        // alg=none: header {"alg":"none"}, empty signature.
        use base64::Engine;
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let none = format!(
            "{}.{}.",
            b64.encode(r#"{"alg":"none","typ":"JWT"}"#),
            b64.encode(good_claims().to_string())
        );
        assert_eq!(v.verify(&none).await, Err(TokenError::Invalid));
    }

    #[tokio::test]
    async fn kid_selects_the_key_and_reload_replaces_keys() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = settings(dir.path());
        s.hmac_secret_files.push(KeyFile {
            kid: Some("k2".into()),
            path: dir.path().join("other"),
        });
        let v = TokenVerifier::new(s, Arc::new(Metrics::new())).unwrap();
        let mut header = Header::new(Algorithm::HS256);
        header.kid = Some("k2".into());
        let t = encode(&header, &good_claims(), &EncodingKey::from_secret(OTHER)).unwrap();
        assert!(v.verify(&t).await.is_ok());
        header.kid = Some("unknown".into());
        let t2 = encode(&header, &good_claims(), &EncodingKey::from_secret(OTHER)).unwrap();
        assert_eq!(v.verify(&t2).await, Err(TokenError::Invalid));

        // Rotate k2: old tokens stop working even though they were cached.
        let mut stamps = v.key_file_stamps();
        std::thread::sleep(Duration::from_millis(20));
        std::fs::write(
            dir.path().join("other"),
            "rotated-secret-0123456789abcdef-0123",
        )
        .unwrap();
        v.reload_if_changed(&mut stamps).await;
        assert_eq!(v.verify(&t).await, Err(TokenError::Invalid));
    }

    #[tokio::test]
    async fn a_cached_token_stops_working_at_its_expiry() {
        let dir = tempfile::tempdir().unwrap();
        let s = TokenSettings {
            leeway: Duration::ZERO,
            ..settings(dir.path())
        };
        let metrics = Arc::new(Metrics::new());
        let v = TokenVerifier::new(s, metrics.clone()).unwrap();
        let mut claims = good_claims();
        claims["exp"] = json!(now_secs() + 1);
        let t = sign(claims, SECRET, Algorithm::HS256);
        assert!(v.verify(&t).await.is_ok());
        assert!(v.verify(&t).await.is_ok());
        assert_eq!(
            metrics.token_cache_hits.get(),
            1,
            "the second check was cached"
        );
        tokio::time::sleep(Duration::from_millis(2100)).await;
        assert_eq!(v.verify(&t).await, Err(TokenError::Expired));
    }

    #[test]
    fn short_or_empty_hmac_secrets_are_refused_at_startup() {
        let dir = tempfile::tempdir().unwrap();
        for secret in ["", "\n", "short-secret\n"] {
            let s = TokenSettings {
                hmac_secret_files: vec![KeyFile {
                    kid: None,
                    path: dir.path().join("secret"),
                }],
                ..settings(dir.path())
            };
            // After settings(), which writes a good secret there.
            std::fs::write(dir.path().join("secret"), secret).unwrap();
            match TokenVerifier::new(s, Arc::new(Metrics::new())) {
                Err(e @ KeyError::WeakSecret { .. }) => {
                    assert!(e.to_string().contains("at least 32"), "{e}")
                }
                Err(e) => panic!("{secret:?}: wrong error {e}"),
                Ok(_) => panic!("{secret:?} accepted as an HMAC secret"),
            }
        }
    }

    /// A PEM public key given as an HMAC secret is an operator mistake that
    /// would let anyone holding the (public) key sign tokens.
    #[test]
    fn a_pem_file_is_refused_as_an_hmac_secret() {
        let dir = tempfile::tempdir().unwrap();
        let ec = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let s = settings(dir.path());
        std::fs::write(dir.path().join("secret"), ec.public_key_pem()).unwrap();
        match TokenVerifier::new(s, Arc::new(Metrics::new())) {
            Err(e @ KeyError::PemAsSecret { .. }) => assert!(e.to_string().contains("PEM"), "{e}"),
            Err(e) => panic!("wrong error {e}"),
            Ok(_) => panic!("a PEM public key was accepted as an HMAC secret"),
        }
    }

    /// One rule at connect and during the session: a token is usable while
    /// `now < exp`. The leeway only forgives `nbf` (a portal clock ahead).
    #[tokio::test]
    async fn exp_gets_no_leeway() {
        let dir = tempfile::tempdir().unwrap();
        let s = TokenSettings {
            leeway: Duration::from_secs(60),
            ..settings(dir.path())
        };
        let v = TokenVerifier::new(s, Arc::new(Metrics::new())).unwrap();
        let mut claims = good_claims();
        claims["exp"] = json!(now_secs() - 5);
        let t = sign(claims, SECRET, Algorithm::HS256);
        assert_eq!(v.verify(&t).await, Err(TokenError::Expired));
        let mut claims = good_claims();
        claims["exp"] = json!(now_secs());
        let t = sign(claims, SECRET, Algorithm::HS256);
        assert_eq!(v.verify(&t).await, Err(TokenError::Expired));
        let mut claims = good_claims();
        claims["nbf"] = json!(now_secs() + 30);
        assert!(
            v.verify(&sign(claims, SECRET, Algorithm::HS256))
                .await
                .is_ok()
        );
    }

    /// Public-key tokens: EC and Ed25519 keys from rcgen, RSA from openssl.
    #[tokio::test]
    async fn public_key_algorithms_verify_by_kid() {
        let dir = tempfile::tempdir().unwrap();
        let ec = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let ed = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
        std::fs::write(dir.path().join("ec.pub"), ec.public_key_pem()).unwrap();
        std::fs::write(dir.path().join("ed.pub"), ed.public_key_pem()).unwrap();
        let (rsa_private, rsa_pub_pem) = kid_tests::openssl_rsa(dir.path(), "rsa");
        let key = |kid: &str, file: &str| KeyFile {
            kid: Some(kid.into()),
            path: dir.path().join(file),
        };
        let settings = TokenSettings {
            algorithms: vec![Algorithm::ES256, Algorithm::EdDSA, Algorithm::RS256],
            hmac_secret_files: vec![],
            public_key_files: vec![
                key("ec", "ec.pub"),
                key("ed", "ed.pub"),
                key("rsa", "rsa.pub"),
            ],
            issuers: vec![],
            audiences: vec![],
            leeway: Duration::from_secs(5),
            cache_capacity: 10,
            ..TokenSettings::default()
        };
        let v = TokenVerifier::new(settings, Arc::new(Metrics::new())).unwrap();
        let claims = json!({"sub": "alice", "exp": now_secs() + 600});
        let sign = |alg: Algorithm, kid: &str, key: EncodingKey| {
            let mut h = Header::new(alg);
            h.kid = Some(kid.into());
            encode(&h, &claims, &key).unwrap()
        };
        let ec_token = sign(
            Algorithm::ES256,
            "ec",
            EncodingKey::from_ec_pem(ec.serialize_pem().as_bytes()).unwrap(),
        );
        let ed_token = sign(
            Algorithm::EdDSA,
            "ed",
            EncodingKey::from_ed_pem(ed.serialize_pem().as_bytes()).unwrap(),
        );
        let rsa_token = sign(Algorithm::RS256, "rsa", rsa_private);
        for t in [&ec_token, &ed_token, &rsa_token] {
            assert_eq!(v.verify(t).await.unwrap().sub, "alice");
        }
        // A valid signature under the wrong kid is refused.
        let mislabelled = sign(
            Algorithm::ES256,
            "ed",
            EncodingKey::from_ec_pem(ec.serialize_pem().as_bytes()).unwrap(),
        );
        assert_eq!(v.verify(&mislabelled).await, Err(TokenError::Invalid));
        // HS256 signed with the RSA public key as secret (key confusion) fails:
        // HS256 is not pinned and there is no HMAC key.
        let confused = encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &EncodingKey::from_secret(&rsa_pub_pem),
        )
        .unwrap();
        assert_eq!(v.verify(&confused).await, Err(TokenError::Invalid));
    }
}
