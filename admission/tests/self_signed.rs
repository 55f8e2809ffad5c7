//! `--self-signed-certs` against the stand-in: the CA lives in a Secret and
//! survives restarts, the caBundle is published, and a CA rotation keeps the old
//! CA trusted while the new leaf is served.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use labgate_admission::certs::{CertManager, CertSettings};
use labgate_admission::{Config, Metrics};
use labgate_tests::standin::{StandIn, UserInfo};
use serde_json::Value;
use tokio_util::sync::CancellationToken;

const VWC_PATH: &str =
    "/apis/admissionregistration.k8s.io/v1/validatingwebhookconfigurations/labgate-admission";
const SECRET_PATH: &str = "/api/v1/namespaces/labgate-system/secrets/labgate-admission-ca";
const SERVICE_NAME: &str = "labgate-admission.labgate-system.svc";

fn secret_text(secret: &Value, key: &str) -> Option<String> {
    use base64::Engine as _;
    let b64 = secret["data"][key].as_str()?;
    String::from_utf8(base64::engine::general_purpose::STANDARD.decode(b64).ok()?).ok()
}

fn ca_bundles(standin: &StandIn) -> Vec<String> {
    use base64::Engine as _;
    let vwc = standin.get_json(VWC_PATH).unwrap();
    vwc["webhooks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| {
            let b64 = w["clientConfig"]["caBundle"].as_str().unwrap_or("");
            String::from_utf8(
                base64::engine::general_purpose::STANDARD
                    .decode(b64)
                    .unwrap(),
            )
            .unwrap()
        })
        .collect()
}

fn trusting_pem(pem: &str) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pemfile::certs(&mut pem.as_bytes()) {
        roots.add(cert.unwrap()).unwrap();
    }
    Arc::new(
        rustls::ClientConfig::builder()
            .with_root_certificates(roots)
            .with_no_client_auth(),
    )
}

fn config(dir: &std::path::Path) -> Config {
    let args: Vec<String> = [
        "labgate-admission",
        "--listen",
        "127.0.0.1:0",
        "--self-signed-certs",
        "--service-namespace",
        "labgate-system",
        "--extra-cert-name",
        "localhost",
        "--no-reconciler",
    ]
    .iter()
    .map(|s| s.to_string())
    .chain([
        "--tls-cert-file".into(),
        dir.join("tls.crt").display().to_string(),
    ])
    .chain([
        "--tls-key-file".into(),
        dir.join("tls.key").display().to_string(),
    ])
    .collect();
    Config::try_parse_from_args(&args)
}

/// Whether the first certificate in `leaf_pem` verifies for the service name
/// with only the certificates in `ca_pem` trusted.
fn verifies(leaf_pem: &str, ca_pem: &str) -> bool {
    use rustls::client::danger::ServerCertVerifier;
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pemfile::certs(&mut ca_pem.as_bytes()) {
        roots.add(cert.unwrap()).unwrap();
    }
    let verifier = rustls::client::WebPkiServerVerifier::builder_with_provider(
        roots.into(),
        Arc::new(rustls::crypto::ring::default_provider()),
    )
    .build()
    .unwrap();
    let leaf = rustls_pemfile::certs(&mut leaf_pem.as_bytes())
        .next()
        .unwrap()
        .unwrap();
    let name = rustls::pki_types::ServerName::try_from(SERVICE_NAME).unwrap();
    verifier
        .verify_server_cert(&leaf, &[], &name, &[], rustls::pki_types::UnixTime::now())
        .is_ok()
}

async fn healthz(addr: std::net::SocketAddr, client: Arc<rustls::ClientConfig>) -> bool {
    matches!(
        https_request(addr, SERVICE_NAME, client, "GET", "/healthz", vec![]).await,
        Ok((200, _))
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn self_managed_ca_is_stable_published_and_rotates_gracefully() {
    init();
    let standin = StandIn::start().await.unwrap();
    standin.add_token(
        ADMISSION_TOKEN,
        UserInfo::service_account("labgate-system", "labgate-admission"),
    );
    let mut system = k8s_openapi::api::core::v1::Namespace::default();
    system.metadata.name = Some("labgate-system".into());
    standin.put_namespace(system);
    let vwc: Value = serde_yaml::from_str(labgate_admission::WEBHOOK_CONFIGURATION_YAML).unwrap();
    standin.put_json(VWC_PATH, vwc);

    // First start: creates the CA Secret, the serving files and the caBundle.
    let shutdown = CancellationToken::new();
    let dir1 = tempfile::tempdir().unwrap();
    let cfg1 = config(dir1.path());
    let first = labgate_admission::start(&cfg1, standin.client(ADMISSION_TOKEN), shutdown.clone())
        .await
        .unwrap();
    let secret = standin.get_json(SECRET_PATH).expect("CA Secret created");
    let ca1 = secret_text(&secret, "ca.crt").unwrap();
    assert!(
        secret_text(&secret, "ca.key")
            .unwrap()
            .contains("PRIVATE KEY")
    );
    assert_eq!(
        secret["metadata"]["labels"]["app.kubernetes.io/managed-by"],
        "labgate-admission"
    );
    // The private key is readable by its owner only.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(dir1.path().join("tls.key"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "tls.key mode {mode:o}");
    }
    let bundles = ca_bundles(&standin);
    assert_eq!(bundles.len(), 3);
    assert!(
        bundles.iter().all(|b| *b == ca1),
        "every webhook trusts the CA"
    );
    assert!(
        healthz(first.addr, trusting_pem(&ca1)).await,
        "the leaf chains to the published CA"
    );

    // A restart (second process, fresh disk) keeps the same CA and caBundle.
    let dir2 = tempfile::tempdir().unwrap();
    let second = labgate_admission::start(
        &config(dir2.path()),
        standin.client(ADMISSION_TOKEN),
        shutdown.clone(),
    )
    .await
    .unwrap();
    assert_eq!(
        secret_text(&standin.get_json(SECRET_PATH).unwrap(), "ca.crt").unwrap(),
        ca1
    );
    assert!(ca_bundles(&standin).iter().all(|b| *b == ca1));
    assert!(healthz(second.addr, trusting_pem(&ca1)).await);
    let leaf2 = std::fs::read_to_string(dir2.path().join("tls.crt")).unwrap();
    assert_ne!(
        std::fs::read_to_string(dir1.path().join("tls.crt")).unwrap(),
        leaf2,
        "each process has its own leaf"
    );

    // Rotation: mark the CA as close to expiry; the next round makes a new CA
    // and publishes new+old, but keeps serving a leaf from the old CA; only a
    // later round (once API servers had time to load the new caBundle) serves
    // a leaf from the new CA.
    let mut aging = standin.get_json(SECRET_PATH).unwrap();
    let soon = time::OffsetDateTime::now_utc().unix_timestamp() + 24 * 3600;
    aging["metadata"]["annotations"]["labgate.io/ca-not-after"] = Value::String(soon.to_string());
    standin.put_json(SECRET_PATH, aging);
    let settings = CertSettings {
        ca_secret: cfg1.ca_secret.clone(),
        namespace: cfg1.service_namespace.clone(),
        service_name: cfg1.service_name.clone(),
        webhook_name: cfg1.webhook_name.clone(),
        extra_names: cfg1.extra_cert_names.clone(),
        cert_file: cfg1.tls_cert_file.clone(),
        key_file: cfg1.tls_key_file.clone(),
    };
    let metrics = Metrics::new();
    let mut manager = CertManager::new(
        standin.client(ADMISSION_TOKEN),
        settings.clone(),
        metrics.clone(),
    );
    let rotation_pass = time::OffsetDateTime::now_utc();
    manager.tick(rotation_pass).await.unwrap();
    let rotated = standin.get_json(SECRET_PATH).unwrap();
    let ca2 = secret_text(&rotated, "ca.crt").unwrap();
    assert_ne!(ca2, ca1);
    assert_eq!(secret_text(&rotated, "ca-previous.crt").unwrap(), ca1);
    let bundle = ca_bundles(&standin).remove(0);
    assert!(
        bundle.contains(ca2.trim()) && bundle.contains(ca1.trim()),
        "caBundle holds new and old CA"
    );
    assert!(
        metrics
            .render()
            .contains("labgate_admission_certificate_actions_total{action=\"ca-rotated\"} 1")
    );

    // Right after the bundle gained the new CA, an API server that has not
    // loaded it yet (it trusts only the old CA) still verifies the first
    // process: the leaf written in that pass comes from the old CA...
    let leaf = std::fs::read_to_string(dir1.path().join("tls.crt")).unwrap();
    assert!(
        verifies(&leaf, &ca1),
        "the leaf of the publishing pass chains to the old CA"
    );
    assert!(!verifies(&leaf, &ca2));
    assert!(
        metrics
            .render()
            .contains("labgate_admission_certificate_actions_total{action=\"leaf-issued\"} 1")
    );
    // ...and so does what it serves, across the reloader's 1 s poll.
    for _ in 0..30 {
        assert!(
            healthz(first.addr, trusting_pem(&ca1)).await,
            "a client trusting only the old CA is refused right after the rotation"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The same pass a little later (before the bundle had time to propagate)
    // changes nothing.
    manager
        .tick(rotation_pass + Duration::from_secs(1))
        .await
        .unwrap();
    let leaf = std::fs::read_to_string(dir1.path().join("tls.crt")).unwrap();
    assert!(verifies(&leaf, &ca1) && !verifies(&leaf, &ca2));

    // The next check (after CA_PROPAGATION_DELAY) switches to the new CA.
    let switch_pass = rotation_pass + labgate_admission::certs::CA_PROPAGATION_DELAY;
    manager.tick(switch_pass).await.unwrap();
    let leaf = std::fs::read_to_string(dir1.path().join("tls.crt")).unwrap();
    assert!(
        verifies(&leaf, &ca2) && !verifies(&leaf, &ca1),
        "the later pass issues the leaf from the new CA"
    );
    assert!(
        metrics
            .render()
            .contains("labgate_admission_certificate_actions_total{action=\"leaf-issued\"} 2")
    );
    // The first process reloads the new leaf from disk; clients with the
    // published bundle never notice, and only the new CA is needed from now on.
    let mut switched = false;
    for _ in 0..100 {
        if healthz(first.addr, trusting_pem(&ca2)).await {
            switched = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(switched, "the new leaf is served without a restart");
    assert!(healthz(first.addr, trusting_pem(&bundle)).await);
    // The second process still serves its old-CA leaf, which the bundle also trusts.
    assert!(healthz(second.addr, trusting_pem(&bundle)).await);

    // A drifted caBundle (e.g. reset by a chart upgrade) is put back.
    let mut vwc = standin.get_json(VWC_PATH).unwrap();
    vwc["webhooks"][0]["clientConfig"]["caBundle"] = Value::String(String::new());
    standin.put_json(VWC_PATH, vwc);
    manager
        .tick(switch_pass + Duration::from_secs(1))
        .await
        .unwrap();
    assert_eq!(ca_bundles(&standin)[0], bundle);

    // A Secret it did not create is never overwritten.
    let foreign =
        serde_json::json!({"metadata": {"name": "someone-else"}, "data": {"ca.crt": "eA=="}});
    standin.put_json(
        "/api/v1/namespaces/labgate-system/secrets/someone-else",
        foreign,
    );
    let foreign_settings = CertSettings {
        ca_secret: "someone-else".into(),
        ..settings
    };
    let mut intruder = CertManager::new(
        standin.client(ADMISSION_TOKEN),
        foreign_settings,
        Metrics::new(),
    );
    let err = intruder
        .tick(time::OffsetDateTime::now_utc())
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("not managed by labgate-admission"),
        "{err}"
    );
    shutdown.cancel();
}
