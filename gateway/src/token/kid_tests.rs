//! The `kid` rule (see the module documentation of `token`), every
//! combination: keys with and without `kid` × tokens with and without one,
//! known and unknown names, HMAC, RSA, EC and Ed25519 keys mixed, keys from
//! PEM files and from a JWKS file, and several issuers.

use std::sync::Arc;

use jsonwebtoken::jwk::{Jwk, JwkSet};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::json;

use super::*;

const H0: &[u8] = b"hmac-secret-without-kid-0123456789";
const H1: &[u8] = b"hmac-secret-named-h1-0123456789abc";

/// Private keys of the fixture, with their public halves on disk.
struct Fixture {
    dir: tempfile::TempDir,
    rsa: EncodingKey,
    rsa_pub_pem: Vec<u8>,
    rsa0: EncodingKey,
    ec: EncodingKey,
    ec_pub_pem: Vec<u8>,
    ed: EncodingKey,
}

/// An RSA key made by openssl: the private key, and the public PEM (also
/// written to `{name}.pub` in `dir`).
pub(super) fn openssl_rsa(dir: &std::path::Path, name: &str) -> (EncodingKey, Vec<u8>) {
    let key = dir.join(format!("{name}.key"));
    let public = dir.join(format!("{name}.pub"));
    let ok = std::process::Command::new("openssl")
        .args([
            "genpkey",
            "-algorithm",
            "RSA",
            "-pkeyopt",
            "rsa_keygen_bits:2048",
            "-out",
        ])
        .arg(&key)
        .stderr(std::process::Stdio::null())
        .status()
        .expect("openssl is needed to make an RSA test key")
        .success()
        && std::process::Command::new("openssl")
            .args(["pkey", "-pubout", "-in"])
            .arg(&key)
            .arg("-out")
            .arg(&public)
            .status()
            .unwrap()
            .success();
    assert!(ok, "openssl failed");
    (
        EncodingKey::from_rsa_pem(&std::fs::read(&key).unwrap()).unwrap(),
        std::fs::read(&public).unwrap(),
    )
}

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let (rsa, rsa_pub_pem) = openssl_rsa(dir.path(), "rsa");
    let (rsa0, _) = openssl_rsa(dir.path(), "rsa0");
    let ec = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let ed = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
    std::fs::write(dir.path().join("ec.pub"), ec.public_key_pem()).unwrap();
    std::fs::write(dir.path().join("ed.pub"), ed.public_key_pem()).unwrap();
    std::fs::write(dir.path().join("h0"), H0).unwrap();
    std::fs::write(dir.path().join("h1"), H1).unwrap();
    Fixture {
        rsa,
        rsa_pub_pem,
        rsa0,
        ec: EncodingKey::from_ec_pem(ec.serialize_pem().as_bytes()).unwrap(),
        ec_pub_pem: ec.public_key_pem().into_bytes(),
        ed: EncodingKey::from_ed_pem(ed.serialize_pem().as_bytes()).unwrap(),
        dir,
    }
}

impl Fixture {
    fn file(&self, kid: Option<&str>, name: &str) -> KeyFile {
        KeyFile {
            kid: kid.map(str::to_string),
            path: self.dir.path().join(name),
        }
    }
}

fn claims() -> serde_json::Value {
    json!({"sub": "alice", "exp": now_secs() + 600, "aud": "labgate"})
}

fn sign(alg: Algorithm, kid: Option<&str>, key: &EncodingKey) -> String {
    let mut header = Header::new(alg);
    header.kid = kid.map(str::to_string);
    jsonwebtoken::encode(&header, &claims(), key).unwrap()
}

async fn accepted(v: &TokenVerifier, token: &str) -> bool {
    match v.verify(token).await {
        Ok(c) => {
            assert_eq!(c.sub, "alice");
            true
        }
        Err(TokenError::Invalid) => false,
        Err(e) => panic!("unexpected {e}"),
    }
}

#[tokio::test]
async fn every_kid_combination() {
    let f = fixture();
    let v = TokenVerifier::new(
        TokenSettings {
            algorithms: vec![
                Algorithm::HS256,
                Algorithm::RS256,
                Algorithm::ES256,
                Algorithm::EdDSA,
            ],
            hmac_secret_files: vec![f.file(None, "h0"), f.file(Some("h1"), "h1")],
            public_key_files: vec![
                f.file(Some("rsa"), "rsa.pub"),
                f.file(None, "rsa0.pub"),
                f.file(Some("ec"), "ec.pub"),
                f.file(None, "ed.pub"),
            ],
            audiences: vec!["labgate".into()],
            ..TokenSettings::default()
        },
        Arc::new(Metrics::new()),
    )
    .unwrap();
    let h0 = EncodingKey::from_secret(H0);
    let h1 = EncodingKey::from_secret(H1);
    // Public keys abused as HMAC secrets (algorithm confusion).
    let rsa_pub_as_secret = EncodingKey::from_secret(&f.rsa_pub_pem);
    let ec_pub_as_secret = EncodingKey::from_secret(&f.ec_pub_pem);
    use Algorithm::*;
    let cases: &[(&str, Algorithm, Option<&str>, &EncodingKey, bool)] = &[
        // Token without kid: any key bound to its algorithm, named or not.
        ("no kid, kid-less HMAC key", HS256, None, &h0, true),
        ("no kid, named HMAC key", HS256, None, &h1, true),
        ("no kid, named RSA key", RS256, None, &f.rsa, true),
        ("no kid, kid-less RSA key", RS256, None, &f.rsa0, true),
        ("no kid, named EC key", ES256, None, &f.ec, true),
        ("no kid, kid-less Ed25519 key", EdDSA, None, &f.ed, true),
        // Token with a known kid: that key only.
        ("kid h1, signed by h1", HS256, Some("h1"), &h1, true),
        (
            "kid h1, signed by the kid-less h0",
            HS256,
            Some("h1"),
            &h0,
            false,
        ),
        ("kid rsa, signed by rsa", RS256, Some("rsa"), &f.rsa, true),
        (
            "kid rsa, signed by the kid-less rsa0",
            RS256,
            Some("rsa"),
            &f.rsa0,
            false,
        ),
        ("kid ec, signed by ec", ES256, Some("ec"), &f.ec, true),
        // A known kid bound to another family: never tried.
        (
            "kid rsa, HS256 signed by the kid-less h0",
            HS256,
            Some("rsa"),
            &h0,
            false,
        ),
        (
            "kid rsa, HS256 signed with rsa's public PEM",
            HS256,
            Some("rsa"),
            &rsa_pub_as_secret,
            false,
        ),
        (
            "kid ec, HS256 signed with ec's public PEM",
            HS256,
            Some("ec"),
            &ec_pub_as_secret,
            false,
        ),
        (
            "kid h1, RS256 signed by rsa",
            RS256,
            Some("h1"),
            &f.rsa,
            false,
        ),
        (
            "kid ec, RS256 signed by rsa",
            RS256,
            Some("ec"),
            &f.rsa,
            false,
        ),
        (
            "kid rsa, ES256 signed by ec",
            ES256,
            Some("rsa"),
            &f.ec,
            false,
        ),
        // Key confusion without kid: HS256 never reaches a public key.
        (
            "no kid, HS256 signed with rsa's public PEM",
            HS256,
            None,
            &rsa_pub_as_secret,
            false,
        ),
        // Unknown kid: refused, never a fallback to kid-less or other keys.
        (
            "unknown kid, signed by the kid-less h0",
            HS256,
            Some("nope"),
            &h0,
            false,
        ),
        ("unknown kid, signed by h1", HS256, Some("nope"), &h1, false),
        (
            "unknown kid, signed by the kid-less rsa0",
            RS256,
            Some("nope"),
            &f.rsa0,
            false,
        ),
        (
            "unknown kid, signed by the kid-less ed",
            EdDSA,
            Some("nope"),
            &f.ed,
            false,
        ),
        (
            "empty kid, signed by the kid-less h0",
            HS256,
            Some(""),
            &h0,
            false,
        ),
    ];
    for (name, alg, kid, key, expected) in cases {
        let token = sign(*alg, *kid, key);
        assert_eq!(accepted(&v, &token).await, *expected, "{name}");
    }
}

/// A JWK naming its `alg` verifies that algorithm only, though its key type
/// could do others; one without `alg` any pinned algorithm of its type.
#[tokio::test]
async fn jwks_keys_are_bound_to_their_named_algorithm() {
    let f = fixture();
    let mut named = Jwk::from_encoding_key(&f.rsa, Algorithm::RS256).unwrap();
    named.common.key_id = Some("rs".into());
    let mut unnamed = Jwk::from_encoding_key(&f.rsa0, Algorithm::RS256).unwrap();
    unnamed.common.key_id = Some("any".into());
    unnamed.common.key_algorithm = None;
    let set = JwkSet {
        keys: vec![named, unnamed],
    };
    let path = f.dir.path().join("jwks.json");
    std::fs::write(&path, serde_json::to_vec(&set).unwrap()).unwrap();
    let v = TokenVerifier::new(
        TokenSettings {
            algorithms: vec![Algorithm::RS256, Algorithm::PS256],
            jwks_file: Some(path),
            audiences: vec!["labgate".into()],
            ..TokenSettings::default()
        },
        Arc::new(Metrics::new()),
    )
    .unwrap();
    assert!(accepted(&v, &sign(Algorithm::RS256, Some("rs"), &f.rsa)).await);
    assert!(!accepted(&v, &sign(Algorithm::PS256, Some("rs"), &f.rsa)).await);
    assert!(!accepted(&v, &sign(Algorithm::PS256, None, &f.rsa)).await);
    assert!(accepted(&v, &sign(Algorithm::PS256, Some("any"), &f.rsa0)).await);
    assert!(accepted(&v, &sign(Algorithm::RS256, None, &f.rsa0)).await);
}

/// Two issuers: each token is checked with its own issuer's keys, audience
/// and user claim only.
#[tokio::test]
async fn several_issuers_each_with_their_own_keys_and_audience() {
    let f = fixture();
    let staff = IssuerSettings {
        issuers: vec!["https://staff".into()],
        audiences: vec!["labgate-staff".into()],
        public_key_files: vec![f.file(Some("k"), "rsa.pub")],
        user_claim: Some("preferred_username".parse().unwrap()),
        ..IssuerSettings::default()
    };
    let students = IssuerSettings {
        issuers: vec!["https://students".into()],
        audiences: vec!["labgate-students".into()],
        // Same kid as the staff key, on purpose.
        public_key_files: vec![f.file(Some("k"), "ec.pub")],
        ..IssuerSettings::default()
    };
    let v = TokenVerifier::new(
        TokenSettings {
            algorithms: vec![Algorithm::RS256, Algorithm::ES256],
            more_issuers: vec![staff, students],
            ..TokenSettings::default()
        },
        Arc::new(Metrics::new()),
    )
    .unwrap();
    let token = |alg, key: &EncodingKey, iss: &str, aud: &str| {
        let mut header = Header::new(alg);
        header.kid = Some("k".into());
        let c = json!({"sub": "u-1", "preferred_username": "tutor", "exp": now_secs() + 600,
                       "iss": iss, "aud": aud});
        jsonwebtoken::encode(&header, &c, key).unwrap()
    };
    let user = |t: String| {
        let v = &v;
        async move { v.verify(&t).await.map(|c| c.sub.clone()) }
    };
    assert_eq!(
        user(token(
            Algorithm::RS256,
            &f.rsa,
            "https://staff",
            "labgate-staff"
        ))
        .await
        .as_deref(),
        Ok("tutor"),
        "staff: its user claim"
    );
    assert_eq!(
        user(token(
            Algorithm::ES256,
            &f.ec,
            "https://students",
            "labgate-students"
        ))
        .await
        .as_deref(),
        Ok("u-1"),
        "students: the default user claim"
    );
    for (what, t) in [
        (
            "student key, staff iss",
            token(Algorithm::ES256, &f.ec, "https://staff", "labgate-staff"),
        ),
        (
            "staff key, student iss",
            token(
                Algorithm::RS256,
                &f.rsa,
                "https://students",
                "labgate-students",
            ),
        ),
        (
            "staff, student audience",
            token(
                Algorithm::RS256,
                &f.rsa,
                "https://staff",
                "labgate-students",
            ),
        ),
        (
            "students, staff audience",
            token(Algorithm::ES256, &f.ec, "https://students", "labgate-staff"),
        ),
        (
            "unknown issuer",
            token(
                Algorithm::RS256,
                &f.rsa,
                "https://elsewhere",
                "labgate-staff",
            ),
        ),
    ] {
        assert_eq!(user(t).await, Err(TokenError::Invalid), "{what}");
    }
    // No `iss` and no issuer accepting any: refused.
    let mut header = Header::new(Algorithm::RS256);
    header.kid = Some("k".into());
    let no_iss = jsonwebtoken::encode(
        &header,
        &json!({"sub": "u", "exp": now_secs() + 600, "aud": "labgate-staff"}),
        &f.rsa,
    )
    .unwrap();
    assert_eq!(user(no_iss).await, Err(TokenError::Invalid));

    // The same issuer twice is a configuration error.
    let twice = IssuerSettings {
        issuers: vec!["https://staff".into()],
        public_key_files: vec![f.file(None, "rsa.pub")],
        ..IssuerSettings::default()
    };
    let err = TokenVerifier::new(
        TokenSettings {
            algorithms: vec![Algorithm::RS256],
            issuers: vec!["https://staff".into()],
            public_key_files: vec![f.file(None, "rsa.pub")],
            more_issuers: vec![twice],
            ..TokenSettings::default()
        },
        Arc::new(Metrics::new()),
    )
    .err()
    .expect("duplicate issuer refused");
    assert!(err.to_string().contains("twice"), "{err}");
}

/// `--jwt-user-claim`: the user comes from the configured claim; a token
/// without it as a non-empty string is a bad token, never `sub` instead.
#[tokio::test]
async fn the_user_claim_decides_the_user() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("h"), H1).unwrap();
    let verifier = |claim: &str| {
        TokenVerifier::new(
            TokenSettings {
                hmac_secret_files: vec![KeyFile {
                    kid: None,
                    path: dir.path().join("h"),
                }],
                user_claim: claim.parse().unwrap(),
                ..TokenSettings::default()
            },
            Arc::new(Metrics::new()),
        )
        .unwrap()
    };
    let key = EncodingKey::from_secret(H1);
    let token = |c: serde_json::Value| {
        let mut c = c;
        c["exp"] = json!(now_secs() + 600);
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), &c, &key).unwrap()
    };
    let full = json!({"sub": "u-1", "email": "alice@example.com", "realm": {"user": "r-alice"}});
    for (claim, expected) in [
        ("sub", "u-1"),
        ("email", "alice@example.com"),
        ("realm.user", "r-alice"),
    ] {
        let v = verifier(claim);
        assert_eq!(v.verify(&token(full.clone())).await.unwrap().sub, expected);
    }
    let by_email = verifier("email");
    for bad in [
        json!({"sub": "u-1"}),
        json!({"sub": "u-1", "email": ""}),
        json!({"sub": "u-1", "email": 7}),
        json!({"sub": "u-1", "email": {"a": "b"}}),
        json!({"sub": "u-1", "email": null}),
    ] {
        assert_eq!(
            by_email.verify(&token(bad.clone())).await,
            Err(TokenError::Invalid),
            "{bad}"
        );
    }
    // Without sub, with the configured claim: fine.
    assert!(
        by_email
            .verify(&token(json!({"email": "a@b"})))
            .await
            .is_ok()
    );
}

/// Keys a token brings along (`jwk`, `jku`, `x5u` headers) are never used:
/// an attacker's own key, embedded and named, verifies nothing.
#[tokio::test]
async fn keys_in_the_token_header_are_ignored() {
    let f = fixture();
    let v = TokenVerifier::new(
        TokenSettings {
            algorithms: vec![Algorithm::ES256],
            public_key_files: vec![f.file(Some("ec"), "ec.pub")],
            ..TokenSettings::default()
        },
        Arc::new(Metrics::new()),
    )
    .unwrap();
    let attacker = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let attacker = EncodingKey::from_ec_pem(attacker.serialize_pem().as_bytes()).unwrap();
    for kid in [None, Some("ec"), Some("attacker")] {
        let mut header = Header::new(Algorithm::ES256);
        header.kid = kid.map(str::to_string);
        let mut jwk = Jwk::from_encoding_key(&attacker, Algorithm::ES256).unwrap();
        jwk.common.key_id = kid.map(str::to_string);
        header.jwk = Some(jwk);
        header.jku = Some("https://attacker.example/jwks".into());
        header.x5u = Some("https://attacker.example/cert".into());
        let token = jsonwebtoken::encode(&header, &claims(), &attacker).unwrap();
        assert!(!accepted(&v, &token).await, "{kid:?}");
    }
    assert!(accepted(&v, &sign(Algorithm::ES256, Some("ec"), &f.ec)).await);
}
