//! Verification keys: what a key is bound to (its `kid`, its algorithms) and
//! loading keys from files (HMAC secrets, PEM public keys).

use std::path::{Path, PathBuf};
use std::str::FromStr;

use jsonwebtoken::{Algorithm, AlgorithmFamily, DecodingKey};

/// A key file, optionally named by the `kid` tokens use to pick it
/// (`kid=path` on the command line, or just `path`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
#[serde(try_from = "String")]
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

impl TryFrom<String> for KeyFile {
    type Error = String;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

/// A key ready for verification, bound to the algorithms it may verify.
///
/// The binding is what makes the `kid` rule safe: whatever a token's header
/// says, a key only ever checks signatures of its own family (an HMAC secret
/// never checks an `RS256` token, an RSA key never an `HS256` one), and a
/// JWK that names its `alg` only that algorithm.
pub struct LoadedKey {
    /// The name tokens select it by; `None` for a key configured without one.
    pub kid: Option<String>,
    /// Pinned algorithms this key may verify (never empty for a loaded key).
    pub algorithms: Vec<Algorithm>,
    pub(crate) key: DecodingKey,
}

impl LoadedKey {
    /// A key of `family`, bound to the pinned algorithms of that family.
    pub(crate) fn new(
        kid: Option<String>,
        family: AlgorithmFamily,
        key: DecodingKey,
        pinned: &[Algorithm],
    ) -> LoadedKey {
        LoadedKey {
            kid,
            algorithms: family
                .algorithms()
                .iter()
                .copied()
                .filter(|a| pinned.contains(a))
                .collect(),
            key,
        }
    }

    /// Whether this key may verify a token signed with `alg`.
    pub fn allows(&self, alg: Algorithm) -> bool {
        self.algorithms.contains(&alg)
    }
}

impl std::fmt::Debug for LoadedKey {
    // Never the key material.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoadedKey")
            .field("kid", &self.kid)
            .field("algorithms", &self.algorithms)
            .finish_non_exhaustive()
    }
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
    #[error("key file {path} is not a private key for {alg:?} in PEM")]
    NotAPrivateKey { path: PathBuf, alg: Algorithm },
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
    #[error("JWKS file {path}: {reason}")]
    Jwks { path: PathBuf, reason: String },
    #[error("{0}")]
    Config(String),
}

/// The shortest HMAC secret accepted: as long as the SHA-256 output.
pub const MIN_HMAC_SECRET: usize = 32;

fn read(path: &Path) -> Result<Vec<u8>, KeyError> {
    std::fs::read(path).map_err(|source| KeyError::Read {
        path: path.to_path_buf(),
        source,
    })
}

/// Reads an HMAC secret file: the bytes minus one trailing newline, at least
/// [`MIN_HMAC_SECRET`] of them, and not a PEM file.
///
/// # Errors
/// [`KeyError`] when the file cannot be read, is too short or is PEM.
pub fn read_hmac_secret(path: &Path) -> Result<Vec<u8>, KeyError> {
    let mut secret = read(path)?;
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
            path: path.to_path_buf(),
        });
    }
    // An empty or short secret would let anyone guess it and sign tokens.
    if secret.len() < MIN_HMAC_SECRET {
        return Err(KeyError::WeakSecret {
            path: path.to_path_buf(),
            len: secret.len(),
        });
    }
    Ok(secret)
}

/// Loads HMAC secret and PEM public key files, each bound to the pinned
/// algorithms of its family.
///
/// # Errors
/// [`KeyError`] for the first file that cannot be read or parsed.
pub fn load_files(
    hmac_secret_files: &[KeyFile],
    public_key_files: &[KeyFile],
    pinned: &[Algorithm],
) -> Result<Vec<LoadedKey>, KeyError> {
    let mut keys = Vec::new();
    for file in hmac_secret_files {
        let secret = read_hmac_secret(&file.path)?;
        keys.push(LoadedKey::new(
            file.kid.clone(),
            AlgorithmFamily::Hmac,
            DecodingKey::from_secret(&secret),
            pinned,
        ));
    }
    for file in public_key_files {
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
        keys.push(LoadedKey::new(file.kid.clone(), family, key, pinned));
    }
    Ok(keys)
}

#[cfg(test)]
mod tests {
    use super::*;

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
        assert!(KeyFile::from_str("k=").is_err());
    }

    #[test]
    fn a_key_is_bound_to_the_pinned_algorithms_of_its_family() {
        let k = LoadedKey::new(
            None,
            AlgorithmFamily::Rsa,
            DecodingKey::from_secret(b"x"),
            &[Algorithm::HS256, Algorithm::RS256, Algorithm::ES256],
        );
        assert_eq!(k.algorithms, vec![Algorithm::RS256]);
        assert!(!k.allows(Algorithm::HS256));
        assert!(!k.allows(Algorithm::PS256), "not pinned");
    }
}
