//! Verifying the JWTs that portals hand to students.
//!
//! Algorithms are pinned by configuration: the token header may only pick
//! among them, never widen them, and `none` cannot be configured at all.
//! Keys come from files (HMAC secrets or RSA/EC/Ed25519 public keys in PEM),
//! optionally named by `kid`, and are reloaded when the files change.
//! Verified tokens are cached (bounded, each entry dropped no later than the
//! token's `exp`), so a reconnecting noVNC does not pay for RSA again. The
//! cache is keyed by the token's SHA-256, so no token is kept in memory.

use std::path::PathBuf;
use std::str::FromStr;
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, AlgorithmFamily, DecodingKey, Validation};
use serde::Deserialize;

use crate::metrics::Metrics;
use crate::reload::FileStamps;

/// A key file, optionally named by the `kid` tokens use to pick it
/// (`kid=path` on the command line, or just `path`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyFile {
    /// The `kid` header value that selects this key, if any.
    pub kid: Option<String>,
    /// PEM file (public keys) or raw secret file (HMAC).
    pub path: PathBuf,
}

impl FromStr for KeyFile {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.split_once('=') {
            Some((kid, path)) if !kid.is_empty() && !path.is_empty() => Ok(KeyFile {
                kid: Some(kid.to_string()),
                path: path.into(),
            }),
            Some(_) => Err(format!("expected kid=path or path, got {s:?}")),
            None if s.is_empty() => Err("empty key file path".into()),
            None => Ok(KeyFile {
                kid: None,
                path: s.into(),
            }),
        }
    }
}

/// How tokens are checked.
#[derive(Debug, Clone)]
pub struct TokenSettings {
    /// Accepted algorithms; a token whose header names another is refused.
    pub algorithms: Vec<Algorithm>,
    /// HMAC secret files (the whole file, minus one trailing newline, is the secret).
    pub hmac_secret_files: Vec<KeyFile>,
    /// RSA, EC or Ed25519 public keys in PEM.
    pub public_key_files: Vec<KeyFile>,
    /// Accepted `iss` values; when set, `iss` is required.
    pub issuers: Vec<String>,
    /// Accepted `aud` values; when set, `aud` is required.
    pub audiences: Vec<String>,
    /// Clock-skew allowance for `nbf` only (`exp` gets none: a session must be able to live).
    pub leeway: Duration,
    /// Maximum number of verified tokens kept in the cache.
    pub cache_capacity: u64,
}

/// The claims labgate reads. Unknown claims are ignored.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Claims {
    /// The user id; must match the lab's owner or a member.
    pub sub: String,
    /// Expiry, seconds since the epoch.
    pub exp: u64,
    /// Optional scope: the only lab namespace this token opens.
    #[serde(default)]
    pub lab: Option<String>,
    /// Optional scope: the only VMI this token opens.
    #[serde(default)]
    pub vmi: Option<String>,
    /// Optional scope: `vnc` or `console` only.
    #[serde(default)]
    pub kind: Option<String>,
}

/// Why a token was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("token is malformed, not yet valid, or not signed by a trusted key")]
    Invalid,
    #[error("token has expired")]
    Expired,
}

/// Errors loading keys (at start-up or reload).
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("reading key file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("key file {path} is not an RSA, EC or Ed25519 public key in PEM")]
    NotAPublicKey { path: PathBuf },
    #[error("algorithm {0:?} is configured but no key of its family is")]
    NoKeyFor(Algorithm),
    #[error("no token algorithms configured")]
    NoAlgorithms,
    #[error(
        "HMAC secret in {path} is {len} bytes; at least {MIN_HMAC_SECRET} are needed (RFC 7518 3.2), \
         e.g. `head -c 32 /dev/urandom > {path}`",
        path = path.display()
    )]
    WeakSecret { path: PathBuf, len: usize },
    #[error(
        "{path} looks like a PEM file, not an HMAC secret; public keys go in --jwt-public-key-file",
        path = path.display()
    )]
    PemAsSecret { path: PathBuf },
}

struct LoadedKey {
    kid: Option<String>,
    family: AlgorithmFamily,
    key: DecodingKey,
}

/// Verifies tokens; cheap to share behind an `Arc`.
pub struct TokenVerifier {
    settings: TokenSettings,
    keys: RwLock<Arc<Vec<LoadedKey>>>,
    cache: moka::future::Cache<TokenDigest, Arc<Claims>>,
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

impl TokenVerifier {
    /// Loads the keys and builds the verifier.
    ///
    /// # Errors
    /// [`KeyError`] when a key file cannot be read or parsed, or an algorithm
    /// has no key of its family.
    pub fn new(settings: TokenSettings, metrics: Arc<Metrics>) -> Result<TokenVerifier, KeyError> {
        let keys = load_keys(&settings)?;
        let cache = moka::future::Cache::builder()
            .max_capacity(settings.cache_capacity)
            .expire_after(UntilExpiry)
            .build();
        Ok(TokenVerifier {
            settings,
            keys: RwLock::new(Arc::new(keys)),
            cache,
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
        let claims = Arc::new(self.verify_uncached(token)?);
        if !alive(claims.exp) {
            return Err(TokenError::Expired);
        }
        self.cache.insert(key, claims.clone()).await;
        Ok(claims)
    }

    fn verify_uncached(&self, token: &str) -> Result<Claims, TokenError> {
        // The header is untrusted: it may only choose among pinned algorithms.
        let header = jsonwebtoken::decode_header(token).map_err(|_| TokenError::Invalid)?;
        if !self.settings.algorithms.contains(&header.alg) {
            return Err(TokenError::Invalid);
        }
        let mut validation = Validation::new(header.alg);
        validation.leeway = self.settings.leeway.as_secs();
        validation.validate_nbf = true;
        // `exp` is checked by `alive`, without leeway: the session ends at
        // `exp`, so a token admitted past it could only kick the current
        // viewer off the VM and die (see `verify`).
        validation.validate_exp = false;
        validation.set_required_spec_claims(&["exp", "sub"]);
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

        let keys = self.keys.read().map(|k| k.clone()).unwrap_or_default();
        let family = header.alg.family();
        let candidates = keys.iter().filter(|k| {
            k.family == family
                && match (&header.kid, &k.kid) {
                    (Some(wanted), Some(have)) => wanted == have,
                    (Some(_), None) => false,
                    (None, _) => true,
                }
        });
        // Another key of the family may still verify the signature.
        candidates
            .filter_map(|key| jsonwebtoken::decode::<Claims>(token, &key.key, &validation).ok())
            .map(|data| data.claims)
            .next()
            // An empty `sub` names nobody: a malformed token, not a stranger.
            .filter(|claims| !claims.sub.is_empty())
            .ok_or(TokenError::Invalid)
    }

    /// Reloads keys if their files changed. Keeps the old keys on error.
    pub async fn reload_if_changed(&self, stamps: &mut FileStamps) {
        if !stamps.changed() {
            return;
        }
        match load_keys(&self.settings) {
            Ok(keys) => {
                if let Ok(mut slot) = self.keys.write() {
                    *slot = Arc::new(keys);
                }
                // Tokens verified with a removed key must be checked again.
                self.cache.invalidate_all();
                tracing::info!("token keys reloaded");
            }
            Err(e) => {
                tracing::error!(error = %e, "token key reload failed; keeping the previous keys")
            }
        }
    }

    /// Stamps of every key file, for [`TokenVerifier::reload_if_changed`].
    pub fn key_file_stamps(&self) -> FileStamps {
        FileStamps::new(
            self.settings
                .hmac_secret_files
                .iter()
                .chain(&self.settings.public_key_files)
                .map(|k| k.path.clone()),
        )
    }
}

/// The shortest HMAC secret accepted: as long as the SHA-256 output.
pub const MIN_HMAC_SECRET: usize = 32;

fn load_keys(settings: &TokenSettings) -> Result<Vec<LoadedKey>, KeyError> {
    if settings.algorithms.is_empty() {
        return Err(KeyError::NoAlgorithms);
    }
    let read = |path: &PathBuf| {
        std::fs::read(path).map_err(|source| KeyError::Read {
            path: path.clone(),
            source,
        })
    };
    let mut keys = Vec::new();
    for file in &settings.hmac_secret_files {
        let mut secret = read(&file.path)?;
        // `echo secret > file` adds a newline that is not part of the secret.
        if secret.ends_with(b"\n") {
            secret.pop();
            if secret.ends_with(b"\r") {
                secret.pop();
            }
        }
        // A public key is public: as an HMAC secret, anyone could sign tokens.
        if secret.trim_ascii_start().starts_with(b"-----BEGIN") {
            return Err(KeyError::PemAsSecret {
                path: file.path.clone(),
            });
        }
        // An empty or short secret would let anyone guess it and sign tokens.
        if secret.len() < MIN_HMAC_SECRET {
            return Err(KeyError::WeakSecret {
                path: file.path.clone(),
                len: secret.len(),
            });
        }
        keys.push(LoadedKey {
            kid: file.kid.clone(),
            family: AlgorithmFamily::Hmac,
            key: DecodingKey::from_secret(&secret),
        });
    }
    for file in &settings.public_key_files {
        let pem = read(&file.path)?;
        let (family, key) = if let Ok(k) = DecodingKey::from_rsa_pem(&pem) {
            (AlgorithmFamily::Rsa, k)
        } else if let Ok(k) = DecodingKey::from_ec_pem(&pem) {
            (AlgorithmFamily::Ec, k)
        } else if let Ok(k) = DecodingKey::from_ed_pem(&pem) {
            (AlgorithmFamily::Ed, k)
        } else {
            return Err(KeyError::NotAPublicKey {
                path: file.path.clone(),
            });
        };
        keys.push(LoadedKey {
            kid: file.kid.clone(),
            family,
            key,
        });
    }
    for alg in &settings.algorithms {
        if !keys.iter().any(|k| k.family == alg.family()) {
            return Err(KeyError::NoKeyFor(*alg));
        }
    }
    Ok(keys)
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{EncodingKey, Header, encode};
    use serde_json::json;

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
        let rsa_key = dir.path().join("rsa.pem");
        let rsa_pub = dir.path().join("rsa.pub");
        let ok = std::process::Command::new("openssl")
            .args([
                "genpkey",
                "-algorithm",
                "RSA",
                "-pkeyopt",
                "rsa_keygen_bits:2048",
                "-out",
            ])
            .arg(&rsa_key)
            .stderr(std::process::Stdio::null())
            .status()
            .expect("openssl is needed to make an RSA test key")
            .success()
            && std::process::Command::new("openssl")
                .args(["pkey", "-pubout", "-in"])
                .arg(&rsa_key)
                .arg("-out")
                .arg(&rsa_pub)
                .status()
                .unwrap()
                .success();
        assert!(ok, "openssl failed");
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
        let rsa_token = sign(
            Algorithm::RS256,
            "rsa",
            EncodingKey::from_rsa_pem(&std::fs::read(&rsa_key).unwrap()).unwrap(),
        );
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
            &EncodingKey::from_secret(&std::fs::read(&rsa_pub).unwrap()),
        )
        .unwrap();
        assert_eq!(v.verify(&confused).await, Err(TokenError::Invalid));
    }

    #[test]
    fn key_file_syntax() {
        assert_eq!(
            KeyFile::from_str("k1=/etc/key.pem").unwrap(),
            KeyFile {
                kid: Some("k1".into()),
                path: "/etc/key.pem".into()
            }
        );
        assert_eq!(KeyFile::from_str("/etc/key.pem").unwrap().kid, None);
        assert!(KeyFile::from_str("=x").is_err());
    }
}
