//! Mounting the gateway inside your own hyper server, under a prefix.
//!
//! A portal serves its own routes and hands everything below `/labgate/` to
//! [`Gateway::handle`] without stripping the prefix: `--base-path /labgate`
//! tells the gateway where it lives. The viewer page is then
//! `/labgate/view/{lab}#token=...`, its assets `/labgate/assets/...` and the
//! sessions `/labgate/labs/{lab}/{vm}/{kind}` (the page's URLs are relative,
//! so it needs nothing else). Here the lab index comes from a labs file and
//! the VMs from the API server of the current kubeconfig; swap in any
//! [`Backend`](labgate_gateway::Backend).
//!
//! ```text
//! cargo run -p labgate-gateway --example embed -- labs.yaml hmac-secret-file
//! ```

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use labgate_gateway::token::{KeyFile, TokenSettings};
use labgate_gateway::{Gateway, KubeVirtBackend, LabIndex, Metrics, TokenVerifier, index};

/// Where the portal mounts the gateway.
const MOUNT: &str = "/labgate";

/// The link a portal gives a student: the token goes in the fragment, which
/// the browser never sends to any server (nor puts in a Referer).
fn viewer_link(lab: &str, vm: &str, token: &str) -> String {
    format!("{MOUNT}/view/{lab}#token={token}&vm={vm}&kind=vnc")
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    labgate_gateway::install_crypto_provider();
    let mut args = std::env::args().skip(1);
    let (Some(labs_file), Some(secret_file)) = (args.next(), args.next()) else {
        anyhow::bail!("usage: embed LABS_FILE HMAC_SECRET_FILE");
    };

    // The parts: metrics, token verifier, lab index, backend.
    let metrics = Arc::new(Metrics::new());
    let verifier = Arc::new(TokenVerifier::new(
        TokenSettings {
            algorithms: vec![jsonwebtoken::Algorithm::HS256],
            hmac_secret_files: vec![KeyFile {
                kid: None,
                path: secret_file.into(),
            }],
            public_key_files: vec![],
            issuers: vec![],
            // The `aud` the portal signs for the gateway: without one, any
            // token the same key signed for another application would do.
            audiences: vec!["labgate".into()],
            leeway: Duration::from_secs(30),
            cache_capacity: 1000,
            ..TokenSettings::default()
        },
        metrics.clone(),
    )?);
    let lab_index = LabIndex::new(metrics.clone());
    tokio::spawn(index::watch_labs_file(
        labs_file.into(),
        lab_index.clone(),
        Duration::from_secs(1),
    ));
    let backend = Arc::new(KubeVirtBackend::new(kube::Client::try_default().await?));

    // Default settings, as the binary's flags would give them, mounted under /labgate.
    let config =
        <labgate_gateway::Config as clap::Parser>::parse_from(["embed", "--base-path", MOUNT]);
    let gateway = Gateway::new(config.settings(), verifier, lab_index, backend, metrics);

    let listener = tokio::net::TcpListener::bind("127.0.0.1:8081").await?;
    println!("portal with embedded gateway on http://127.0.0.1:8081");
    loop {
        let (stream, _) = listener.accept().await?;
        let gateway = gateway.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req: Request<hyper::body::Incoming>| {
                let gateway = gateway.clone();
                async move {
                    if req.uri().path().starts_with(&format!("{MOUNT}/")) {
                        // The gateway sees the full path and strips MOUNT itself.
                        return Ok::<_, Infallible>(gateway.handle(req).await);
                    }
                    // The portal's own pages: here, how it links a student to a VM.
                    let page = format!(
                        "portal page\nviewer link for a student: {}\n",
                        viewer_link("lab-a", "vm1", "TOKEN-THE-PORTAL-SIGNED")
                    );
                    Ok(Response::new(Full::new(Bytes::from(page))))
                }
            });
            // Upgrades must be enabled for websocket sessions.
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .with_upgrades()
                .await;
        });
    }
}
