//! labgate-admission: keeps the lab contract of `labgate-policies` true whatever a portal or user does.
//!
//! A validating webhook refuses workloads in labs that lack their isolation
//! NetworkPolicy, edits or deletion of that policy, any other NetworkPolicy
//! write by a non-portal principal, and forged or stripped lab
//! labels; a reconciler server-side applies the policy in every lab namespace.
//!
//! # Layout
//! - [`config`]: command-line flags and `LABGATE_ADMISSION_*` environment variables.
//! - [`decide`]: the pure decision function and its rules (table-tested).
//! - [`cache`]: watch-fed namespaces and policies, the decision's view of the cluster.
//! - [`webhook`]: HTTPS server, `/validate`, `/healthz`, `/readyz`, `/metrics`.
//! - [`tls`]: serving certificate reloaded from disk on change.
//! - [`reconcile`]: kube-runtime controller that creates and repairs the policy.
//! - [`watch_backoff`]: retry at once after a 410 or a lost watch, back off only on a run of errors.
//! - [`certs`]: optional self-managed CA, leaf and caBundle.
//! - [`metrics`]: Prometheus registry.
//! - [`fuzzing`]: entry point of the fuzz target (`admission/fuzz/`) and of its corpus replay test.
//! - [`run`] / [`start`]: wiring of the above.

pub mod cache;
pub mod certs;
pub mod config;
pub mod decide;
pub mod fuzzing;
pub mod metrics;
pub mod reconcile;
pub mod tls;
pub mod watch_backoff;
pub mod webhook;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub use config::Config;
pub use decide::{ClusterView, Decision, Rule, Rules, decide};
pub use metrics::Metrics;

/// The ValidatingWebhookConfiguration this service needs (one file for the chart and tests).
pub const WEBHOOK_CONFIGURATION_YAML: &str = labgate_policies::manifests::VALIDATING_WEBHOOK_YAML;

/// Handles of a started service.
pub struct Running {
    /// Address of the HTTPS webhook listener.
    pub addr: SocketAddr,
    /// Address of the plain metrics listener, if configured.
    pub metrics_addr: Option<SocketAddr>,
    /// Metrics registry.
    pub metrics: Metrics,
    /// The decision cache.
    pub cache: cache::Cache,
    /// The serving certificate resolver.
    pub cert: Arc<tls::ReloadingCert>,
}

/// Starts the HTTPS webhook (and optionally the plain metrics listener) with
/// any cluster view; used by [`start`] and by transport tests.
///
/// # Errors
/// When the certificate files are unusable or a listener cannot bind.
pub async fn start_webhook(
    listen: SocketAddr,
    metrics_listen: Option<SocketAddr>,
    cert: Arc<tls::ReloadingCert>,
    state: Arc<webhook::WebhookState>,
    shutdown: CancellationToken,
) -> anyhow::Result<(SocketAddr, Option<SocketAddr>)> {
    cert.spawn_reloader(state.metrics.clone(), shutdown.clone());
    let tls = Arc::new(tls::server_config(cert));
    let listener = TcpListener::bind(listen)
        .await
        .with_context(|| format!("binding {listen}"))?;
    let addr = listener.local_addr()?;
    tokio::spawn(webhook::serve_tls(
        listener,
        tls,
        state.clone(),
        shutdown.clone(),
    ));
    let metrics_addr = match metrics_listen {
        Some(at) => {
            let l = TcpListener::bind(at)
                .await
                .with_context(|| format!("binding {at}"))?;
            let a = l.local_addr()?;
            tokio::spawn(webhook::serve_plain(l, state, shutdown));
            Some(a)
        }
        None => None,
    };
    Ok((addr, metrics_addr))
}

/// Starts everything with an existing client: certificates (if self-managed),
/// cache, reconciler and listeners. Tasks stop when `shutdown` is cancelled.
///
/// # Errors
/// When the serving certificate cannot be obtained or a listener cannot bind.
pub async fn start(
    config: &Config,
    client: kube::Client,
    shutdown: CancellationToken,
) -> anyhow::Result<Running> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let metrics = Metrics::new();
    if config.self_signed_certs {
        let settings = certs::CertSettings {
            ca_secret: config.ca_secret.clone(),
            namespace: config.service_namespace.clone(),
            service_name: config.service_name.clone(),
            webhook_name: config.webhook_name.clone(),
            extra_names: config.extra_cert_names.clone(),
            cert_file: config.tls_cert_file.clone(),
            key_file: config.tls_key_file.clone(),
        };
        let mut manager = certs::CertManager::new(client.clone(), settings, metrics.clone());
        // The server cannot start without a certificate: retry until it works.
        let mut delay = Duration::from_millis(500);
        loop {
            match manager.tick(time::OffsetDateTime::now_utc()).await {
                Ok(()) => break,
                Err(e) => {
                    tracing::warn!(error = %e, retry_in = ?delay, "cannot set up the serving certificate");
                    tokio::select! {
                        _ = shutdown.cancelled() => anyhow::bail!("shut down before a certificate was available"),
                        _ = tokio::time::sleep(delay) => {}
                    }
                    delay = (delay * 2).min(Duration::from_secs(30));
                }
            }
        }
        tokio::spawn(manager.run(shutdown.clone()));
    }
    let cert = Arc::new(
        tls::ReloadingCert::new(&config.tls_cert_file, &config.tls_key_file)
            .context("loading the serving certificate")?,
    );
    let cache = cache::Cache::start(
        client.clone(),
        config.egress,
        metrics.clone(),
        shutdown.clone(),
    );
    if !config.no_reconciler {
        tokio::spawn(reconcile::run(
            client,
            config.egress,
            metrics.clone(),
            config.exempt_namespaces(),
            shutdown.clone(),
        ));
    }
    let state = Arc::new(webhook::WebhookState {
        view: Arc::new(cache.clone()),
        rules: config.rules(),
        metrics: metrics.clone(),
        max_connections: config.max_connections as usize,
    });
    let (addr, metrics_addr) = start_webhook(
        config.listen,
        config.metrics_listen,
        cert.clone(),
        state,
        shutdown,
    )
    .await?;
    tracing::info!(%addr, ?metrics_addr, egress = ?config.egress, "labgate-admission listening");
    Ok(Running {
        addr,
        metrics_addr,
        metrics,
        cache,
        cert,
    })
}

/// Builds a Kubernetes client from `--kubeconfig` or the environment.
///
/// # Errors
/// When no usable configuration is found.
pub async fn client(config: &Config) -> anyhow::Result<kube::Client> {
    let kube_config = match &config.kubeconfig {
        Some(path) => {
            let kubeconfig = kube::config::Kubeconfig::read_from(path)
                .with_context(|| format!("reading kubeconfig {}", path.display()))?;
            kube::Config::from_custom_kubeconfig(
                kubeconfig,
                &kube::config::KubeConfigOptions::default(),
            )
            .await
            .with_context(|| format!("using kubeconfig {}", path.display()))?
        }
        None => kube::Config::infer()
            .await
            .context("finding the in-cluster or default kubeconfig")?,
    };
    kube::Client::try_from(kube_config).context("building the Kubernetes client")
}

/// Runs the service until SIGINT or SIGTERM.
///
/// # Errors
/// Startup failures (client, certificate, listener).
pub async fn run(config: Config) -> anyhow::Result<()> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let shutdown = CancellationToken::new();
    let client = client(&config).await?;
    start(&config, client, shutdown.clone()).await?;
    wait_for_signal().await;
    tracing::info!("shutting down");
    shutdown.cancel();
    // Give in-flight reviews a moment to finish.
    tokio::time::sleep(Duration::from_millis(200)).await;
    Ok(())
}

async fn wait_for_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}
