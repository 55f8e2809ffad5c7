//! `labgate-gateway token` (the real binary) mints tokens that a running
//! gateway accepts: HMAC, ES256 with a `kid`, EdDSA and RS256, scope claims,
//! and a real console session opened with a minted token.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use labgate_tests::standin::{StandIn, UpstreamAddr, Vmi};
use labgate_tests::upstreams::SerialConsole;
use tokio_tungstenite::tungstenite::Message;

const ALICE: &str = "alice@example.com";

fn mint(args: &[&str]) -> Result<String, String> {
    let out = Command::new(env!("CARGO_BIN_EXE_labgate-gateway"))
        .arg("token")
        .args(args)
        .output()
        .unwrap();
    if out.status.success() {
        Ok(String::from_utf8(out.stdout).unwrap().trim().to_string())
    } else {
        Err(format!(
            "{:?}: {}",
            out.status.code(),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

/// Status code of a plain GET of `path` with `token` as bearer.
fn status(addr: SocketAddr, path: &str, token: &str) -> u16 {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out.split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("no status in {out:?}"))
}

fn openssl_rsa(dir: &Path) {
    let key = dir.join("rsa.key");
    assert!(
        Command::new("openssl")
            .args([
                "genpkey",
                "-algorithm",
                "RSA",
                "-pkeyopt",
                "rsa_keygen_bits:2048",
                "-out"
            ])
            .arg(&key)
            .stderr(std::process::Stdio::null())
            .status()
            .unwrap()
            .success()
    );
    assert!(
        Command::new("openssl")
            .args(["pkey", "-pubout", "-in"])
            .arg(&key)
            .arg("-out")
            .arg(dir.join("rsa.pub"))
            .status()
            .unwrap()
            .success()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn minted_tokens_are_accepted_by_a_running_gateway() {
    labgate_gateway::install_crypto_provider();
    let standin = StandIn::start().await.unwrap();
    let console = SerialConsole::start().unwrap();
    standin.lab_namespace("lab-1", ALICE, &[]);
    standin.lab_namespace("lab-2", "bob@example.com", &[]);
    standin.add_vmi(
        "lab-1",
        "vm1",
        Vmi::running(None, Some(UpstreamAddr::Unix(console.socket()))),
    );
    let dir = tempfile::tempdir().unwrap();
    let d = |name: &str| dir.path().join(name).to_str().unwrap().to_string();
    let kubeconfig = standin.write_kubeconfig(dir.path(), &standin.gateway_token());
    std::fs::write(d("secret"), "token-command-secret-0123456789abcdef\n").unwrap();
    let ec = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    std::fs::write(d("ec.key"), ec.serialize_pem()).unwrap();
    std::fs::write(d("ec.pub"), ec.public_key_pem()).unwrap();
    let ed = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
    std::fs::write(d("ed.key"), ed.serialize_pem()).unwrap();
    std::fs::write(d("ed.pub"), ed.public_key_pem()).unwrap();
    openssl_rsa(dir.path());

    let config = <labgate_gateway::Config as clap::Parser>::try_parse_from([
        "labgate-gateway",
        "--insecure-plain-http",
        "--jwt-algorithms",
        "HS256,ES256,EdDSA,RS256",
        "--jwt-hmac-secret-file",
        &d("secret"),
        "--jwt-public-key-file",
        &format!("ec-1={},{},{}", d("ec.pub"), d("ed.pub"), d("rsa.pub")),
        "--jwt-audience",
        "labgate",
        "--jwt-issuer",
        "portal",
        "--kubeconfig",
        kubeconfig.to_str().unwrap(),
    ])
    .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (_stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let gateway = tokio::spawn(labgate_gateway::run_with_listener(
        config,
        listener,
        async {
            let _ = stopped.await;
        },
    ));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while !matches!(
        tokio::task::spawn_blocking(move || status(addr, "/readyz", "")).await,
        Ok(200)
    ) {
        assert!(!gateway.is_finished(), "gateway stopped");
        assert!(tokio::time::Instant::now() < deadline, "never ready");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let base = [
        "--user",
        ALICE,
        "--audience",
        "labgate",
        "--issuer",
        "portal",
    ];
    let with = |extra: &[&str]| {
        let args: Vec<&str> = base.iter().chain(extra).copied().collect();
        mint(&args).unwrap()
    };
    let console_path = "/labs/lab-1/vm1/console";
    let hmac = with(&["--hmac-secret-file", &d("secret")]);
    let ec_kid = with(&[
        "--private-key-file",
        &d("ec.key"),
        "--alg",
        "ES256",
        "--kid",
        "ec-1",
    ]);
    let ed = with(&["--private-key-file", &d("ed.key"), "--alg", "EdDSA"]);
    let rsa = with(&[
        "--private-key-file",
        &d("rsa.key"),
        "--alg",
        "RS256",
        "--ttl",
        "5m",
    ]);
    for (what, token) in [
        ("HS256", &hmac),
        ("ES256 kid", &ec_kid),
        ("EdDSA", &ed),
        ("RS256", &rsa),
    ] {
        let t = token.clone();
        let code = tokio::task::spawn_blocking(move || status(addr, console_path, &t))
            .await
            .unwrap();
        assert_eq!(code, 426, "{what}: authorised, open as a websocket");
    }
    let checks: Vec<(&str, String, &str, u16)> = vec![
        // Scope claims.
        (
            "scoped to the console",
            with(&[
                "--hmac-secret-file",
                &d("secret"),
                "--lab",
                "lab-1",
                "--vm",
                "vm1",
                "--kind",
                "console",
            ]),
            console_path,
            426,
        ),
        (
            "scoped to the console, screen asked",
            with(&[
                "--hmac-secret-file",
                &d("secret"),
                "--lab",
                "lab-1",
                "--kind",
                "console",
            ]),
            "/labs/lab-1/vm1/vnc",
            403,
        ),
        (
            "someone else's lab",
            hmac.clone(),
            "/labs/lab-2/vm1/console",
            403,
        ),
        // The kid rule: the RSA key is configured without a kid.
        (
            "a kid the gateway does not know",
            with(&[
                "--private-key-file",
                &d("rsa.key"),
                "--alg",
                "RS256",
                "--kid",
                "rsa-1",
            ]),
            console_path,
            401,
        ),
        (
            "another audience",
            mint(&[
                "--user",
                ALICE,
                "--audience",
                "other",
                "--issuer",
                "portal",
                "--hmac-secret-file",
                &d("secret"),
            ])
            .unwrap(),
            console_path,
            401,
        ),
    ];
    for (what, token, path, expected) in checks {
        let code = tokio::task::spawn_blocking(move || status(addr, path, &token))
            .await
            .unwrap();
        assert_eq!(code, expected, "{what}");
    }

    // Bad invocations: a clear message and a non-zero exit, never a token.
    for (args, needle) in [
        (vec!["--user", ALICE], "--hmac-secret-file"),
        (
            vec![
                "--user",
                ALICE,
                "--private-key-file",
                "/nonexistent",
                "--alg",
                "ES256",
            ],
            "/nonexistent",
        ),
        (
            vec![
                "--user",
                ALICE,
                "--private-key-file",
                &d("ec.key"),
                "--alg",
                "RS256",
            ],
            "not a private key",
        ),
        (
            vec!["--user", ALICE, "--hmac-secret-file", &d("ec.pub")],
            "PEM",
        ),
    ] {
        let err = mint(&args).unwrap_err();
        assert!(err.contains(needle), "{args:?}: {err}");
    }

    // A real session with a minted token: the console answers.
    let url = format!("ws://{addr}/labs/lab-1/vm1/console/{ec_kid}");
    let (mut ws, _) = tokio_tungstenite::connect_async(&url).await.unwrap();
    ws.send(Message::Binary(Bytes::from_static(
        b"echo minted-$((6*7))\r",
    )))
    .await
    .unwrap();
    let mut seen = String::new();
    tokio::time::timeout(Duration::from_secs(10), async {
        while !seen.contains("minted-42") {
            match ws.next().await {
                Some(Ok(Message::Binary(b))) => seen.push_str(&String::from_utf8_lossy(&b)),
                Some(Ok(_)) => {}
                other => panic!("console ended: {other:?}"),
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("no console output; saw {seen:?}"));
    gateway.abort();
}
