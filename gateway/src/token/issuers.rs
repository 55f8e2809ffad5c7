//! Several token issuers at once (`--jwt-issuers-file`), e.g. a staff and a
//! student identity provider, each with its own keys, audience and user
//! claim.
//!
//! A token is routed by its (not yet verified) `iss` to the one issuer of
//! that name, and only that issuer's keys, audiences and user claim are used:
//! a key of the student IdP can never verify a token claiming to come from
//! the staff IdP. Tokens whose `iss` names no issuer of the file go to the
//! issuer described by the plain `--jwt-*` flags, if those configure keys.

use std::path::{Path, PathBuf};

use super::claims::ClaimPath;
use super::keys::{KeyError, KeyFile};

/// One issuer: who it is, what it signs for, and where its keys are.
#[derive(Debug, Clone, Default)]
pub struct IssuerSettings {
    /// Accepted `iss` values; empty accepts any (only for the issuer of the
    /// plain flags without `--jwt-issuer`).
    pub issuers: Vec<String>,
    /// Accepted `aud` values; empty accepts any.
    pub audiences: Vec<String>,
    /// HMAC secret files.
    pub hmac_secret_files: Vec<KeyFile>,
    /// PEM public key files.
    pub public_key_files: Vec<KeyFile>,
    /// A JWK set on disk (reloaded when it changes).
    pub jwks_file: Option<PathBuf>,
    /// A JWK set at an HTTPS URL.
    pub jwks_url: Option<http::Uri>,
    /// CA bundle for `jwks_url` (default: the system's roots).
    pub jwks_ca_file: Option<PathBuf>,
    /// The claim naming the user (default: `--jwt-user-claim`).
    pub user_claim: Option<ClaimPath>,
}

impl IssuerSettings {
    /// Whether any key source is configured.
    pub fn has_keys(&self) -> bool {
        !self.hmac_secret_files.is_empty()
            || !self.public_key_files.is_empty()
            || self.jwks_file.is_some()
            || self.jwks_url.is_some()
    }

    /// A short name for logs and the keys gauge.
    pub fn label(&self) -> String {
        self.issuers
            .first()
            .cloned()
            .unwrap_or_else(|| "(any issuer)".into())
    }
}

/// One entry of the issuers file, as written.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct Entry {
    issuer: String,
    #[serde(default)]
    audiences: Vec<String>,
    #[serde(default)]
    allow_any_audience: bool,
    #[serde(default)]
    hmac_secret_files: Vec<KeyFile>,
    #[serde(default)]
    public_key_files: Vec<KeyFile>,
    #[serde(default)]
    jwks_file: Option<PathBuf>,
    #[serde(default)]
    jwks_url: Option<String>,
    #[serde(default)]
    jwks_ca_file: Option<PathBuf>,
    #[serde(default)]
    user_claim: Option<ClaimPath>,
}

#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    issuers: Vec<Entry>,
}

/// Reads an issuers file (YAML):
///
/// ```yaml
/// issuers:
///   - issuer: https://staff-idp.example/realms/staff
///     audiences: [labgate]
///     jwksUrl: https://staff-idp.example/realms/staff/protocol/openid-connect/certs
///     userClaim: preferred_username
///   - issuer: https://students.example
///     audiences: [labgate-students]
///     jwksFile: /etc/labgate/students-jwks.json
/// ```
///
/// # Errors
/// [`KeyError::Config`] naming the entry at fault.
pub fn load_file(path: &Path) -> Result<Vec<IssuerSettings>, KeyError> {
    let bad =
        |reason: String| KeyError::Config(format!("issuers file {}: {reason}", path.display()));
    let text = std::fs::read_to_string(path).map_err(|e| bad(e.to_string()))?;
    let file: File = serde_yaml::from_str(&text).map_err(|e| bad(e.to_string()))?;
    let mut out = Vec::new();
    for entry in file.issuers {
        let name = entry.issuer.clone();
        if name.is_empty() {
            return Err(bad("an entry has an empty `issuer`".into()));
        }
        if entry.audiences.is_empty() != entry.allow_any_audience {
            return Err(bad(format!(
                "issuer {name:?}: give `audiences` (the `aud` it signs for the gateway), or \
                 `allowAnyAudience: true` if its keys sign for nothing else (not both)"
            )));
        }
        let jwks_url = entry
            .jwks_url
            .map(|u| {
                u.parse::<http::Uri>()
                    .map_err(|e| bad(format!("issuer {name:?}: jwksUrl: {e}")))
            })
            .transpose()?;
        let settings = IssuerSettings {
            issuers: vec![entry.issuer],
            audiences: entry.audiences,
            hmac_secret_files: entry.hmac_secret_files,
            public_key_files: entry.public_key_files,
            jwks_file: entry.jwks_file,
            jwks_url,
            jwks_ca_file: entry.jwks_ca_file,
            user_claim: entry.user_claim,
        };
        if !settings.has_keys() {
            return Err(bad(format!(
                "issuer {name:?} has no keys: give jwksUrl, jwksFile, publicKeyFiles or hmacSecretFiles"
            )));
        }
        out.push(settings);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(yaml: &str) -> Result<Vec<IssuerSettings>, String> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("issuers.yaml");
        std::fs::write(&path, yaml).unwrap();
        load_file(&path).map_err(|e| e.to_string())
    }

    #[test]
    fn issuers_file() {
        let ok = load(
            "issuers:\n\
             - issuer: https://staff\n  audiences: [labgate]\n  jwksUrl: https://staff/certs\n  userClaim: realm.user\n\
             - issuer: students\n  allowAnyAudience: true\n  publicKeyFiles: [k1=/etc/k.pem]\n",
        )
        .unwrap();
        assert_eq!(ok.len(), 2);
        assert_eq!(ok[0].user_claim.as_ref().unwrap().as_str(), "realm.user");
        assert_eq!(ok[1].public_key_files[0].kid.as_deref(), Some("k1"));
        assert!(ok[1].audiences.is_empty());

        for (yaml, needle) in [
            (
                "issuers:\n- issuer: a\n  jwksUrl: https://a/\n",
                "audiences",
            ),
            (
                "issuers:\n- issuer: a\n  audiences: [x]\n  allowAnyAudience: true\n  jwksUrl: https://a/\n",
                "not both",
            ),
            ("issuers:\n- issuer: a\n  audiences: [x]\n", "no keys"),
            (
                "issuers:\n- issuer: a\n  audiences: [x]\n  jwksURL: https://a/\n",
                "unknown field",
            ),
            (
                "issuers:\n- issuer: ''\n  audiences: [x]\n  jwksUrl: https://a/\n",
                "empty",
            ),
            (
                "issuers:\n- issuer: a\n  audiences: [x]\n  userClaim: ''\n  jwksUrl: https://a/\n",
                "user claim",
            ),
        ] {
            let err = load(yaml).unwrap_err();
            assert!(err.contains(needle), "{yaml}: {err}");
        }
    }
}
