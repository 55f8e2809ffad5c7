//! Tokens from identity providers, end to end: a JWKS endpoint served by the
//! test over real TLS (its own CA), the gateway fetching, rotating, keeping
//! the last good set while the provider is down, bounding refetches under a
//! flood of unknown `kid`s, filtering keys by `alg`/`use`, several issuers
//! with their own audiences, and the user claim.
//!
//! "Accepted" is checked with a plain HTTPS GET of a session URL: a valid
//! token for an open lab gets 426 (authorised, open it as a websocket), a bad
//! token 401, a valid token for someone else's lab 403.

mod support;

use std::time::{Duration, Instant};

use jsonwebtoken::jwk::{Jwk, PublicKeyUse};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use labgate_tests::idp::{Answer, JwksServer};
use serde_json::{Value, json};
use support::*;

/// A P-256 signing key and its public JWK.
struct SigningKey {
    kid: String,
    private: EncodingKey,
    jwk: Value,
}

fn ec_key(kid: &str) -> SigningKey {
    let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let private = EncodingKey::from_ec_pem(pair.serialize_pem().as_bytes()).unwrap();
    let mut jwk = Jwk::from_encoding_key(&private, Algorithm::ES256).unwrap();
    jwk.common.key_id = Some(kid.into());
    jwk.common.public_key_use = Some(PublicKeyUse::Signature);
    SigningKey {
        kid: kid.into(),
        private,
        jwk: serde_json::to_value(jwk).unwrap(),
    }
}

fn set(keys: &[&SigningKey]) -> Answer {
    Answer::Json(json!({"keys": keys.iter().map(|k| k.jwk.clone()).collect::<Vec<_>>()}))
}

impl SigningKey {
    /// A token for `user`, valid 10 minutes; `nonce` makes each one distinct
    /// (so none is answered from the gateway's token cache).
    fn token(&self, claims: Value) -> String {
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some(self.kid.clone());
        let mut claims = claims;
        claims["exp"] = json!(now() + 600);
        claims["nonce"] = json!(rand::random::<u64>());
        jsonwebtoken::encode(&header, &claims, &self.private).unwrap()
    }

    fn alice(&self) -> String {
        self.token(json!({"sub": ALICE, "aud": AUDIENCE}))
    }
}

/// The status of an authorised-or-not GET of lab-alice's console.
async fn status(env: &Env, token: &str) -> u16 {
    status_for(env, "lab-alice", token).await
}

async fn status_for(env: &Env, lab: &str, token: &str) -> u16 {
    env.http(
        &format!("/labs/{lab}/vm1/console"),
        &[("authorization", &format!("Bearer {token}"))],
    )
    .await
    .unwrap()
    .0
}

/// Starts the harness gateway trusting `idp` for ES256 (the harness's HMAC
/// secret stays configured, as a portal's would).
async fn start_with(idp: &JwksServer, extra: &[&str]) -> Env {
    let dir = tempfile::tempdir().unwrap().keep();
    let ca = idp.write_ca(&dir);
    let mut args: Vec<String> = [
        "--jwt-algorithms",
        "HS256,ES256",
        "--jwt-jwks-url",
        &idp.url(),
        "--jwt-jwks-ca-file",
        ca.to_str().unwrap(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    args.extend(extra.iter().map(|s| s.to_string()));
    start(Options {
        extra_args: args,
        upstreams: false,
        ..Options::default()
    })
    .await
    .unwrap()
}

/// Polls `check` every 50 ms until it holds or `within` passes.
async fn eventually<F: AsyncFnMut() -> bool>(within: Duration, mut check: F) -> bool {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if check().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

async fn metric(env: &Env, prefix: &str) -> f64 {
    let (_, text) = env.http("/metrics", &[]).await.unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(prefix)?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {prefix} in /metrics"))
}

#[tokio::test]
async fn a_new_kid_works_at_once_and_a_removed_one_stops_after_the_refresh() {
    let k1 = ec_key("k1");
    let k2 = ec_key("k2");
    let idp = JwksServer::start(set(&[&k1])).await.unwrap();
    let env = start_with(
        &idp,
        &[
            "--jwt-jwks-refresh-interval",
            "2s",
            "--jwt-jwks-min-refetch-interval",
            "500ms",
        ],
    )
    .await;
    assert_eq!(status(&env, &k1.alice()).await, 426);
    // Someone else's lab: the token is valid, the lab is not hers.
    assert_eq!(status_for(&env, "lab-bob", &k1.alice()).await, 403);

    // The provider adds k2; the first token naming it makes the gateway
    // refetch (once), without waiting for the schedule.
    idp.set(set(&[&k1, &k2]));
    tokio::time::sleep(Duration::from_millis(600)).await;
    let before = idp.fetches();
    assert_eq!(status(&env, &k2.alice()).await, 426, "new kid at once");
    assert_eq!(idp.fetches(), before + 1, "one refetch for the new kid");

    // k1 is withdrawn: after the next scheduled refresh its tokens fail,
    // even one the gateway had verified and cached before.
    let cached = k1.alice();
    assert_eq!(status(&env, &cached).await, 426);
    idp.set(set(&[&k2]));
    let gone = eventually(Duration::from_secs(6), async || {
        status(&env, &cached).await == 401
    })
    .await;
    assert!(gone, "a removed kid kept working");
    assert_eq!(status(&env, &k1.alice()).await, 401);
    assert_eq!(status(&env, &k2.alice()).await, 426);
    assert_eq!(
        metric(&env, "labgate_gateway_jwks_keys{issuer=\"(any issuer)\"}").await,
        1.0
    );
}

#[tokio::test]
async fn the_last_good_set_keeps_working_while_the_provider_is_down_or_broken() {
    let k1 = ec_key("k1");
    let idp = JwksServer::start(set(&[&k1])).await.unwrap();
    let env = start_with(
        &idp,
        &[
            "--jwt-jwks-refresh-interval",
            "300ms",
            "--jwt-jwks-min-refetch-interval",
            "300ms",
        ],
    )
    .await;
    assert_eq!(status(&env, &k1.alice()).await, 426);
    let mut encryption_only = k1.jwk.clone();
    encryption_only["use"] = json!("enc");
    for (what, answer, result) in [
        ("503", Answer::Status(503), "error"),
        (
            "garbage",
            Answer::Body(b"<html>oops</html>".to_vec()),
            "invalid",
        ),
        (
            "no usable key",
            Answer::Json(json!({"keys": [encryption_only]})),
            "invalid",
        ),
        // Over the 1 MiB limit.
        ("huge", Answer::Body(vec![b' '; 2 * 1024 * 1024]), "error"),
    ] {
        let prefix = format!("labgate_gateway_jwks_refetches_total{{result=\"{result}\"}}");
        let failures = metric(&env, &prefix).await;
        idp.set(answer);
        let seen = idp.fetches();
        // Two scheduled fetches of the broken answer.
        assert!(
            eventually(Duration::from_secs(5), async || idp.fetches() >= seen + 2).await,
            "{what}: no refetch"
        );
        assert!(
            metric(&env, &prefix).await > failures,
            "{what}: not counted as {result}"
        );
        // A fresh token (not cached) still verifies with the last good key.
        assert_eq!(status(&env, &k1.alice()).await, 426, "{what}");
        // An unknown kid meanwhile is refused, not a reason to drop the set.
        assert_eq!(status(&env, &ec_key("k9").alice()).await, 401, "{what}");
        assert_eq!(status(&env, &k1.alice()).await, 426, "{what}");
    }
    idp.set(set(&[&k1]));
}

/// A flood of tokens naming random `kid`s: each is refused, and the
/// provider sees at most one fetch per --jwt-jwks-min-refetch-interval.
#[tokio::test]
async fn an_unknown_kid_flood_makes_a_bounded_number_of_refetches() {
    let k1 = ec_key("k1");
    let idp = JwksServer::start(set(&[&k1])).await.unwrap();
    let env = start_with(
        &idp,
        &[
            "--jwt-jwks-refresh-interval",
            "1h",
            "--jwt-jwks-min-refetch-interval",
            "1s",
            // Every request of the flood comes from 127.0.0.1: without this the
            // per-address pre-auth cap would cut the flood short at accept.
            "--max-preauth-connections-per-address",
            "0",
        ],
    )
    .await;
    assert_eq!(status(&env, &k1.alice()).await, 426);
    let attacker = ec_key("attacker");
    let before = idp.fetches();
    let started = Instant::now();
    let flood = Duration::from_secs(3);
    let mut sent = 0usize;
    while started.elapsed() < flood {
        let batch: Vec<String> = (0..25)
            .map(|_| {
                let mut header = Header::new(Algorithm::ES256);
                header.kid = Some(format!("random-{}", rand::random::<u64>()));
                jsonwebtoken::encode(
                    &header,
                    &json!({"sub": ALICE, "aud": AUDIENCE, "exp": now() + 600}),
                    &attacker.private,
                )
                .unwrap()
            })
            .collect();
        let statuses = futures::future::join_all(batch.iter().map(|t| status(&env, t))).await;
        assert!(statuses.iter().all(|s| *s == 401), "{statuses:?}");
        sent += batch.len();
    }
    let elapsed = started.elapsed();
    let refetches = idp.fetches() - before;
    // One per started interval at most: ceil(elapsed / 1 s) (+1 for the
    // interval boundary the first request may straddle).
    let bound = elapsed.as_secs_f64().ceil() as usize + 1;
    eprintln!(
        "unknown-kid flood: {sent} tokens with random kids in {elapsed:.1?} -> {refetches} JWKS fetches \
         (bound {bound}, min refetch interval 1s)"
    );
    assert!(refetches >= 1, "an unknown kid never made the gateway look");
    assert!(refetches <= bound, "{refetches} fetches > {bound}");
    assert!(
        metric(
            &env,
            "labgate_gateway_jwks_refetches_total{result=\"rate_limited\"}"
        )
        .await
            > 0.0
    );
    // The real key still works.
    assert_eq!(status(&env, &k1.alice()).await, 426);
}

/// Only keys whose `use`, `key_ops`, `kty`/`crv` and `alg` fit the pinned
/// algorithms are used.
#[tokio::test]
async fn jwks_keys_are_filtered_by_alg_and_use() {
    let ok = ec_key("ok");
    let enc = ec_key("enc");
    let rs_named = ec_key("rs-named");
    let es384_named = ec_key("es384-named");
    let wrap_only = ec_key("wrap-only");
    let mut enc_jwk = enc.jwk.clone();
    enc_jwk["use"] = json!("enc");
    let mut rs_jwk = rs_named.jwk.clone();
    rs_jwk["alg"] = json!("RS256");
    let mut es384_jwk = es384_named.jwk.clone();
    es384_jwk["alg"] = json!("ES384");
    let mut wrap_jwk = wrap_only.jwk.clone();
    wrap_jwk.as_object_mut().unwrap().remove("use");
    wrap_jwk["key_ops"] = json!(["wrapKey"]);
    let idp = JwksServer::start(Answer::Json(json!({"keys": [
        ok.jwk, enc_jwk, rs_jwk, es384_jwk, wrap_jwk,
        {"kty": "oct", "kid": "oct", "k": "bGFiZ2F0ZS10ZXN0LXNlY3JldC0wMTIzNDU2Nzg5YWJjZGVm"},
    ]})))
    .await
    .unwrap();
    let env = start_with(&idp, &[]).await;
    assert_eq!(status(&env, &ok.alice()).await, 426);
    for key in [&enc, &rs_named, &es384_named, &wrap_only] {
        assert_eq!(status(&env, &key.alice()).await, 401, "{}", key.kid);
    }
    // The published `oct` key is the harness's own HMAC secret; still, a
    // token naming it is refused: symmetric keys never come from a key set.
    let mut header = Header::new(Algorithm::HS256);
    header.kid = Some("oct".into());
    let t = jsonwebtoken::encode(
        &header,
        &json!({"sub": ALICE, "aud": AUDIENCE, "exp": now() + 600}),
        &EncodingKey::from_secret(&env.secret),
    )
    .unwrap();
    assert_eq!(status(&env, &t).await, 401);
    assert_eq!(
        metric(&env, "labgate_gateway_jwks_keys{issuer=\"(any issuer)\"}").await,
        1.0
    );
}

/// A staff IdP (JWKS over HTTPS, its own audience, users by
/// `preferred_username`) and a student IdP (JWKS file, another audience),
/// beside the harness's HMAC portal: each token only by its own issuer.
#[tokio::test]
async fn several_issuers_each_with_their_own_audience() {
    let staff = ec_key("shared-kid");
    let student = ec_key("shared-kid");
    let idp = JwksServer::start(set(&[&staff])).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let ca = idp.write_ca(dir.path());
    let student_jwks = dir.path().join("students.json");
    std::fs::write(&student_jwks, json!({"keys": [student.jwk]}).to_string()).unwrap();
    let issuers = dir.path().join("issuers.yaml");
    std::fs::write(
        &issuers,
        format!(
            "issuers:\n\
             - issuer: https://staff.example\n  audiences: [labgate-staff]\n  jwksUrl: {url}\n  jwksCaFile: {ca}\n  userClaim: preferred_username\n\
             - issuer: https://students.example\n  audiences: [labgate-students]\n  jwksFile: {file}\n",
            url = idp.url(),
            ca = ca.display(),
            file = student_jwks.display()
        ),
    )
    .unwrap();
    let env = start(Options {
        extra_args: vec![
            "--jwt-algorithms".into(),
            "HS256,ES256".into(),
            "--jwt-issuers-file".into(),
            issuers.to_str().unwrap().into(),
        ],
        upstreams: false,
        ..Options::default()
    })
    .await
    .unwrap();
    let claims = |iss: &str, aud: &str| json!({"iss": iss, "aud": aud, "sub": "idp-internal-id", "preferred_username": TUTOR});
    let staff_ok = staff.token(claims("https://staff.example", "labgate-staff"));
    assert_eq!(
        status(&env, &staff_ok).await,
        426,
        "staff, by preferred_username"
    );
    let student_ok = student.token(json!({"iss": "https://students.example",
        "aud": "labgate-students", "sub": ALICE}));
    assert_eq!(status(&env, &student_ok).await, 426, "student, by sub");
    // The portal's HMAC tokens (no iss) keep working beside them.
    assert_eq!(status(&env, &env.token(ALICE)).await, 426, "portal");
    for (what, t) in [
        (
            "staff, student audience",
            staff.token(claims("https://staff.example", "labgate-students")),
        ),
        (
            "student key claiming staff",
            student.token(claims("https://staff.example", "labgate-staff")),
        ),
        (
            "staff key claiming students",
            staff.token(claims("https://students.example", "labgate-students")),
        ),
        (
            "students, staff audience",
            student.token(json!({"iss": "https://students.example",
            "aud": "labgate-staff", "sub": ALICE})),
        ),
        (
            "portal audience on the staff key",
            staff.token(json!({"iss": "https://staff.example",
            "aud": AUDIENCE, "preferred_username": TUTOR})),
        ),
    ] {
        assert_eq!(status(&env, &t).await, 401, "{what}");
    }
    // Staff users are read from preferred_username, not sub: a staff token
    // whose preferred_username is missing is refused, whatever its sub.
    let no_username = staff.token(
        json!({"iss": "https://staff.example", "aud": "labgate-staff",
        "sub": TUTOR}),
    );
    assert_eq!(status(&env, &no_username).await, 401);
}

/// `--jwt-user-claim email`: the lab is opened for the token's email, not
/// its sub; a token without a string email is a bad token (4001).
#[tokio::test]
async fn the_user_claim_decides_whose_labs_open() {
    let env = start(Options {
        extra_args: vec!["--jwt-user-claim".into(), "email".into()],
        upstreams: false,
        ..Options::default()
    })
    .await
    .unwrap();
    let token = |c: Value| {
        let mut c = c;
        c["aud"] = json!(AUDIENCE);
        c["exp"] = json!(now() + 600);
        env.sign(c)
    };
    assert_eq!(
        status(&env, &token(json!({"sub": "u-1", "email": ALICE}))).await,
        426
    );
    assert_eq!(
        status(&env, &token(json!({"sub": ALICE, "email": BOB}))).await,
        403
    );
    assert_eq!(status(&env, &token(json!({"sub": ALICE}))).await, 401);
    assert_eq!(
        status(&env, &token(json!({"sub": ALICE, "email": ""}))).await,
        401
    );
    assert_eq!(
        status(&env, &token(json!({"sub": ALICE, "email": [ALICE]}))).await,
        401
    );
    // The websocket answer for the same: close code 4001.
    let (mut ws, _) = env
        .ws(
            &format!(
                "/labs/lab-alice/vm1/console/{}",
                token(json!({"sub": ALICE}))
            ),
            None,
            &[],
        )
        .await
        .unwrap();
    assert_refused(&mut ws, 4001).await;
}

/// A provider down when the gateway starts does not stop it: HMAC tokens
/// work at once, and the provider's tokens as soon as it answers.
#[tokio::test]
async fn a_provider_down_at_start_up_is_fetched_once_it_answers() {
    let k1 = ec_key("k1");
    let idp = JwksServer::start(Answer::Status(503)).await.unwrap();
    let env = start_with(
        &idp,
        &[
            "--jwt-jwks-refresh-interval",
            "1h",
            "--jwt-jwks-min-refetch-interval",
            "300ms",
        ],
    )
    .await;
    assert_eq!(status(&env, &env.token(ALICE)).await, 426, "HMAC portal");
    assert_eq!(status(&env, &k1.alice()).await, 401, "provider still down");
    idp.set(set(&[&k1]));
    let up = eventually(Duration::from_secs(5), async || {
        status(&env, &k1.alice()).await == 426
    })
    .await;
    assert!(up, "the provider's keys were never fetched");
}
