//! The `labgate-admission` binary: documented flags, a clear failure without a
//! certificate, and a full run against the stand-in ending on SIGTERM.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use k8s_openapi::api::core::v1::Namespace;
use kube::Api;
use kube::api::PostParams;
use labgate_tests::certs::TestCa;
use labgate_tests::standin::{StandIn, UserInfo};

const BIN: &str = env!("CARGO_BIN_EXE_labgate-admission");

/// Kills the child if the test fails before it exits.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

#[test]
fn help_documents_every_flag_and_its_environment_variable() {
    let out = Command::new(BIN).arg("--help").output().unwrap();
    assert!(out.status.success());
    let help = String::from_utf8(out.stdout).unwrap();
    for flag in [
        "--listen",
        "--tls-cert-file",
        "--tls-key-file",
        "--portal-user",
        "--portal-group",
        "--egress",
        "--namespace-controller-user",
        "--kubeconfig",
        "--max-connections",
        "--metrics-listen",
        "--self-signed-certs",
        "--ca-secret",
        "--service-namespace",
        "--service-name",
        "--webhook-name",
        "--extra-cert-name",
        "--no-reconciler",
        "--exempt-namespace",
    ] {
        assert!(help.contains(flag), "{flag} missing from --help");
    }
    assert_eq!(
        help.matches("[env: LABGATE_ADMISSION_").count(),
        18,
        "every flag has an env variable"
    );
}

#[test]
fn bad_flags_fail_with_a_message() {
    let out = Command::new(BIN)
        .args(["--egress", "wide-open"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown egress mode"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runs_against_the_stand_in_and_stops_on_sigterm() {
    init();
    let standin = StandIn::start().await.unwrap();
    standin.add_token(
        ADMISSION_TOKEN,
        UserInfo::service_account("labgate-system", "labgate-admission"),
    );
    standin.add_token(PORTAL_TOKEN, UserInfo::service_account("portal", "portal"));
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = standin.write_kubeconfig(dir.path(), ADMISSION_TOKEN);

    // Without certificate files it refuses to start, saying why.
    let out = Command::new(BIN)
        .args(["--listen", "127.0.0.1:0", "--kubeconfig"])
        .arg(&kubeconfig)
        .args([
            "--tls-cert-file",
            "/nonexistent/tls.crt",
            "--tls-key-file",
            "/nonexistent/tls.key",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(text.contains("/nonexistent/tls.crt"), "{text}");
    assert!(!text.contains("panicked"), "{text}");

    let ca = TestCa::new();
    let (cert, key) = ca.write_leaf(dir.path(), &["localhost"]);
    let mut child = KillOnDrop(
        Command::new(BIN)
            .env("RUST_LOG", "info")
            .env("LABGATE_ADMISSION_PORTAL_USERS", PORTAL_USER)
            .args(["--listen", "127.0.0.1:0", "--kubeconfig"])
            .arg(&kubeconfig)
            .arg("--tls-cert-file")
            .arg(&cert)
            .arg("--tls-key-file")
            .arg(&key)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap(),
    );
    // The listening address is in the startup log line.
    let stdout = child.0.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let mut addr = None;
    while let Ok(line) = rx.recv_timeout(Duration::from_secs(20)) {
        if let Some(rest) = line.split("addr=").nth(1) {
            addr = rest
                .split_whitespace()
                .next()
                .and_then(|a| a.parse::<std::net::SocketAddr>().ok());
            if addr.is_some() {
                break;
            }
        }
    }
    let addr = addr.expect("startup line with the address");
    let client = Arc::new(ca.client_config());
    let (status, _) = https_request(addr, "localhost", client, "GET", "/healthz", vec![])
        .await
        .unwrap();
    assert_eq!(status, 200);

    // Its reconciler works from a separate process too.
    Api::<Namespace>::all(standin.client(PORTAL_TOKEN))
        .create(&PostParams::default(), &lab_namespace("lab-bin", STUDENT))
        .await
        .unwrap();
    let policy = eventually(Duration::from_secs(5), || {
        standin.get_json(&policy_path("lab-bin"))
    })
    .await;
    assert!(
        policy.is_some(),
        "the binary's reconciler created the policy"
    );

    let pid = child.0.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    let mut exited = None;
    for _ in 0..100 {
        if let Some(status) = child.0.try_wait().unwrap() {
            exited = Some(status);
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let status = exited.expect("exits within 5 s of SIGTERM");
    assert!(status.success(), "{status}");
}
