//! `labgate-gateway token`: mints a token for a user, for operators and
//! scripts (portals do the same with their own JWT library; the README shows
//! Python and JavaScript).

use std::path::PathBuf;
use std::time::Duration;

use clap::{ArgGroup, Args, ValueEnum};
use jsonwebtoken::{Algorithm, AlgorithmFamily, EncodingKey, Header};
use serde_json::{Map, Value, json};

use super::keys::{KeyError, read_hmac_secret};

/// Which console a token is scoped to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Kind {
    /// The VM's screen.
    Vnc,
    /// The VM's serial console.
    Console,
}

/// Prints a signed token for a user to stdout.
#[derive(Debug, Clone, Args)]
#[command(group(ArgGroup::new("key").required(true).args(["hmac_secret_file", "private_key_file"])))]
pub struct MintArgs {
    /// The user the token is for (the lab's owner or a member).
    #[arg(long)]
    pub user: String,
    /// Claim carrying the user, as the gateway's --jwt-user-claim (a dotted
    /// path makes nested objects).
    #[arg(long, default_value = "sub")]
    pub user_claim: String,
    /// Scope: only this lab namespace.
    #[arg(long)]
    pub lab: Option<String>,
    /// Scope: only this VM (claim `vmi`).
    #[arg(long)]
    pub vm: Option<String>,
    /// Scope: only the screen or only the console.
    #[arg(long, value_enum)]
    pub kind: Option<Kind>,
    /// Lifetime (humantime: 30m, 1h, 8h).
    #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
    pub ttl: Duration,
    /// `aud` claim: what the gateway's --jwt-audience expects.
    #[arg(long)]
    pub audience: Option<String>,
    /// `iss` claim.
    #[arg(long)]
    pub issuer: Option<String>,
    /// HMAC secret file (HS256 unless --alg says HS384/HS512).
    #[arg(long)]
    pub hmac_secret_file: Option<PathBuf>,
    /// Private key in PEM (RSA, EC P-256/P-384 or Ed25519); needs --alg.
    #[arg(long, requires = "alg")]
    pub private_key_file: Option<PathBuf>,
    /// Signing algorithm: HS256/384/512, RS256/384/512, PS256/384/512, ES256, ES384, EdDSA.
    #[arg(long, value_parser = |s: &str| s.parse::<Algorithm>().map_err(|_| format!("unknown JWT algorithm {s:?}")))]
    pub alg: Option<Algorithm>,
    /// `kid` header naming the key (as configured on the gateway).
    #[arg(long)]
    pub kid: Option<String>,
}

/// Why no token was made.
#[derive(Debug, thiserror::Error)]
pub enum MintError {
    #[error(transparent)]
    Key(#[from] KeyError),
    #[error("{0}")]
    Usage(String),
    #[error("signing failed: {0}")]
    Sign(#[from] jsonwebtoken::errors::Error),
}

/// Makes the token `args` describe; `now` is seconds since the epoch.
///
/// # Errors
/// [`MintError`] for an unreadable or unfit key, or inconsistent arguments.
pub fn mint(args: &MintArgs, now: u64) -> Result<String, MintError> {
    if args.user.is_empty() {
        return Err(MintError::Usage("--user must not be empty".into()));
    }
    if args.ttl.is_zero() {
        return Err(MintError::Usage("--ttl must be positive".into()));
    }
    let user_claim: super::ClaimPath = args.user_claim.parse().map_err(MintError::Usage)?;
    let (alg, key) = match (&args.hmac_secret_file, &args.private_key_file) {
        (Some(path), None) => {
            let alg = args.alg.unwrap_or(Algorithm::HS256);
            if alg.family() != AlgorithmFamily::Hmac {
                return Err(MintError::Usage(format!(
                    "--alg {alg:?} needs --private-key-file, not an HMAC secret"
                )));
            }
            (alg, EncodingKey::from_secret(&read_hmac_secret(path)?))
        }
        (None, Some(path)) => {
            let alg = args
                .alg
                .ok_or_else(|| MintError::Usage("--private-key-file needs --alg".into()))?;
            let pem = std::fs::read(path).map_err(|source| KeyError::Read {
                path: path.clone(),
                source,
            })?;
            let key = match alg.family() {
                AlgorithmFamily::Rsa => EncodingKey::from_rsa_pem(&pem),
                AlgorithmFamily::Ec => EncodingKey::from_ec_pem(&pem),
                AlgorithmFamily::Ed => EncodingKey::from_ed_pem(&pem),
                AlgorithmFamily::Hmac => {
                    return Err(MintError::Usage(format!(
                        "--alg {alg:?} needs --hmac-secret-file"
                    )));
                }
            }
            .map_err(|_| KeyError::NotAPrivateKey {
                path: path.clone(),
                alg,
            })?;
            (alg, key)
        }
        _ => {
            return Err(MintError::Usage(
                "give exactly one of --hmac-secret-file and --private-key-file".into(),
            ));
        }
    };

    let mut claims = Map::new();
    claims.insert("exp".into(), json!(now + args.ttl.as_secs().max(1)));
    claims.insert("iat".into(), json!(now));
    for (name, value) in [
        ("aud", args.audience.as_deref()),
        ("iss", args.issuer.as_deref()),
        ("lab", args.lab.as_deref()),
        ("vmi", args.vm.as_deref()),
        (
            "kind",
            args.kind.map(|k| match k {
                Kind::Vnc => "vnc",
                Kind::Console => "console",
            }),
        ),
    ] {
        if let Some(v) = value {
            claims.insert(name.into(), json!(v));
        }
    }
    insert_at(&mut claims, &user_claim, &args.user)?;

    let mut header = Header::new(alg);
    header.kid = args.kid.clone();
    Ok(jsonwebtoken::encode(&header, &Value::Object(claims), &key)?)
}

/// Puts the user at the claim path: a plain name as it is (even with dots
/// when it is a URL-like namespaced claim), else nested objects.
fn insert_at(
    claims: &mut Map<String, Value>,
    path: &super::ClaimPath,
    user: &str,
) -> Result<(), MintError> {
    let raw = path.as_str();
    let segments: Vec<&str> = raw.split('.').collect();
    if segments.len() == 1 || raw.contains('/') {
        claims.insert(raw.into(), json!(user));
        return Ok(());
    }
    let (last, parents) = segments.split_last().expect("non-empty");
    let mut at = claims;
    for segment in parents {
        let next = at
            .entry(segment.to_string())
            .or_insert_with(|| Value::Object(Map::new()));
        at = next.as_object_mut().ok_or_else(|| {
            MintError::Usage(format!("--user-claim {raw}: {segment} is already a claim"))
        })?;
    }
    at.insert(last.to_string(), json!(user));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: MintArgs,
    }

    fn parse(args: &[&str]) -> Result<MintArgs, clap::Error> {
        Cli::try_parse_from(std::iter::once("token").chain(args.iter().copied())).map(|c| c.args)
    }

    fn payload(token: &str) -> Value {
        jsonwebtoken::dangerous::insecure_decode_claims(token).unwrap()
    }

    #[test]
    fn mints_the_claims_asked_for() {
        let dir = tempfile::tempdir().unwrap();
        let secret = dir.path().join("s");
        std::fs::write(&secret, "0123456789abcdef0123456789abcdef\n").unwrap();
        let s = secret.to_str().unwrap();
        let args = parse(&[
            "--user",
            "alice",
            "--lab",
            "lab-a",
            "--vm",
            "vm1",
            "--kind",
            "console",
            "--ttl",
            "2h",
            "--audience",
            "labgate",
            "--issuer",
            "portal",
            "--hmac-secret-file",
            s,
            "--kid",
            "k1",
        ])
        .unwrap();
        let t = mint(&args, 1000).unwrap();
        assert_eq!(
            payload(&t),
            json!({"sub": "alice", "exp": 8200, "iat": 1000, "aud": "labgate", "iss": "portal",
                   "lab": "lab-a", "vmi": "vm1", "kind": "console"})
        );
        let header = jsonwebtoken::decode_header(&t).unwrap();
        assert_eq!(
            (header.alg, header.kid.as_deref()),
            (Algorithm::HS256, Some("k1"))
        );

        let nested = parse(&[
            "--user",
            "bob",
            "--user-claim",
            "realm.user",
            "--hmac-secret-file",
            s,
        ])
        .unwrap();
        assert_eq!(
            payload(&mint(&nested, 0).unwrap())["realm"],
            json!({"user": "bob"})
        );
    }

    #[test]
    fn refuses_inconsistent_or_weak_keys() {
        let dir = tempfile::tempdir().unwrap();
        let weak = dir.path().join("weak");
        std::fs::write(&weak, "short").unwrap();
        let w = weak.to_str().unwrap();
        // Clap: no key at all, both keys, a private key without --alg.
        assert!(parse(&["--user", "a"]).is_err());
        assert!(
            parse(&[
                "--user",
                "a",
                "--hmac-secret-file",
                w,
                "--private-key-file",
                w,
                "--alg",
                "RS256"
            ])
            .is_err()
        );
        assert!(parse(&["--user", "a", "--private-key-file", w]).is_err());
        let err = |args: &[&str]| mint(&parse(args).unwrap(), 0).unwrap_err().to_string();
        assert!(err(&["--user", "a", "--hmac-secret-file", w]).contains("at least 32"));
        assert!(
            err(&["--user", "a", "--hmac-secret-file", w, "--alg", "RS256"])
                .contains("--private-key-file")
        );
        assert!(
            err(&["--user", "a", "--private-key-file", w, "--alg", "ES256"])
                .contains("not a private key")
        );
        assert!(err(&["--user", "", "--private-key-file", w, "--alg", "ES256"]).contains("--user"));
    }
}
