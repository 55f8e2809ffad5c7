//! labgate-gateway: a token-checked websocket gateway from browsers to
//! KubeVirt VM screens (noVNC) and serial consoles (xterm.js).
//!
//! A student's browser opens `wss://gateway/labs/{lab}/{vm}/{vnc|console}/{token}`.
//! The gateway verifies the token, checks in its in-memory lab-ownership
//! index that the token's user owns (or is a member of) the lab, opens the
//! VM's KubeVirt subresource through the Kubernetes API server with its own
//! credentials, and splices the two websockets until either side closes or
//! the gateway ends the session (lab revoked, token expired, idle, shutdown).
//!
//! # Layout
//! - [`config`]: flags and environment variables; [`run`] turns them into a running gateway.
//! - [`server`]: [`Gateway`], the hyper service: the request pipeline of a session.
//! - [`listener`]: serving a gateway: accept loop, admin listener, drain on shutdown.
//! - [`respond`]: the websocket handshake answer and small response bodies.
//! - [`route`]: `/labs/{namespace}/{vmi}/{kind}` parsing and name validation.
//! - [`credentials`]: where the token comes from; subprotocol negotiation.
//! - [`token`]: JWT verification with pinned algorithms, key files and a cache.
//! - [`index`]: the lab-ownership index (exempt namespaces, malformed labs, staleness).
//! - [`namespace_watch`]: the list+watch loop feeding the index: re-watch and relist at once,
//!   backoff only for errors.
//! - [`apiclient`]: the API-server client, rebuilt (token re-read) after a 401.
//! - [`authz`]: the pure authorisation decision and its re-check.
//! - [`sessions`]: limits and which session holds which VM console.
//! - [`upstream`]: the [`Backend`](upstream::Backend) seam and the KubeVirt backend.
//! - [`splice`]: the two-way relay with backpressure, pings and close propagation.
//! - [`refusal`]: every reason a session is refused or ended, with close codes.
//! - [`tls`]: rustls with certificate reload; [`reload`]: file change detection.
//! - [`viewer`]: the viewer page `/view/{lab}` and its hashed `/assets/`, embedded from
//!   `web/dist/` by `build.rs` (the page's sources are in `gateway/web/`).
//! - [`metrics`]: Prometheus metrics; [`demo`]: the no-cluster demo.
//!
//! # Embedding
//! [`Gateway::handle`] is an ordinary async request handler; mount it in any
//! hyper or axum server that enables HTTP/1.1 upgrades (see `examples/embed.rs`).

pub mod apiclient;
pub mod authz;
pub mod config;
pub mod credentials;
pub mod demo;
pub mod index;
pub mod listener;
pub mod metrics;
pub mod namespace_watch;
pub mod refusal;
pub mod reload;
pub mod respond;
pub mod route;
pub mod server;
pub mod sessions;
pub mod splice;
pub mod tls;
pub mod token;
pub mod upstream;
pub mod viewer;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;

pub use config::Config;
pub use index::LabIndex;
pub use metrics::Metrics;
pub use refusal::Refusal;
pub use server::{Gateway, Settings};
pub use token::TokenVerifier;
pub use upstream::{Backend, KubeVirtBackend};

/// Installs the process-wide rustls crypto provider (ring). Harmless if one is
/// already installed.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// Binds `config.listen` and runs the gateway until `shutdown` resolves and
/// the sessions have drained.
///
/// # Errors
/// Invalid configuration, unreadable keys or certificates, no Kubernetes
/// configuration, or a listen address that cannot be bound.
pub async fn run(config: Config, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
    let mut config = config;
    if config.demo && config.listen == "0.0.0.0:8443".parse()? {
        config.listen = "127.0.0.1:8080".parse()?;
    }
    let listener = TcpListener::bind(config.listen)
        .await
        .map_err(|e| anyhow::anyhow!("binding {}: {e}", config.listen))?;
    run_with_listener(config, listener, shutdown).await
}

/// Like [`run`], on an already bound listener (tests bind port 0).
///
/// # Errors
/// See [`run`].
pub async fn run_with_listener(
    mut config: Config,
    listener: TcpListener,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    install_crypto_provider();
    let demo_files = if config.demo {
        let files = demo::write_files()?;
        config.jwt_hmac_secret_file = vec![token::KeyFile {
            kid: None,
            path: files.secret_file.clone(),
        }];
        config.jwt_algorithms = vec![jsonwebtoken::Algorithm::HS256];
        config.jwt_audience = vec![demo::DEMO_AUDIENCE.to_string()];
        config.jwt_allow_any_audience = false;
        config.labs_file = Some(files.labs_file.clone());
        config.insecure_plain_http = true;
        Some(files)
    } else {
        None
    };
    config.validate().map_err(anyhow::Error::msg)?;

    let metrics = Arc::new(Metrics::new());
    let verifier = Arc::new(TokenVerifier::new(
        config.token_settings(),
        metrics.clone(),
    )?);
    // Background tasks end when this set is dropped (when `run` returns).
    let mut background = tokio::task::JoinSet::new();
    {
        let verifier = verifier.clone();
        let interval = config.reload_interval;
        background.spawn(async move {
            let mut stamps = verifier.key_file_stamps();
            loop {
                tokio::time::sleep(interval).await;
                verifier.reload_if_changed(&mut stamps).await;
            }
        });
    }

    let index = LabIndex::with_policy(metrics.clone(), config.index_policy());
    let backend: Arc<dyn Backend> = if config.demo {
        demo::backend()
    } else {
        let api = Arc::new(apiclient::ApiClient::new(config.kube_config().await?)?);
        if config.labs_file.is_none() {
            background.spawn(index::watch_namespaces(
                api.clone(),
                index.clone(),
                config.watch_timeout,
            ));
        }
        Arc::new(KubeVirtBackend::with_api(api).preserve_vnc_session(config.vnc_preserve_session))
    };
    if let Some(path) = &config.labs_file {
        background.spawn(index::watch_labs_file(
            path.clone(),
            index.clone(),
            config.reload_interval,
        ));
    }

    let tls = match (&config.tls_cert_file, &config.tls_key_file) {
        (Some(cert), Some(key)) => {
            let cert = tls::ReloadingCert::load(cert, key)?;
            background.spawn(cert.clone().watch(config.reload_interval));
            Some(tokio_rustls::TlsAcceptor::from(cert.server_config()))
        }
        _ => None,
    };

    let gateway = Gateway::new(config.settings(), verifier, index, backend, metrics);
    if let Some(addr) = config.admin_listen {
        // The public listener answers 404 for /healthz, /readyz and /metrics.
        gateway.move_admin_endpoints();
        let admin = TcpListener::bind(addr)
            .await
            .map_err(|e| anyhow::anyhow!("binding admin address {addr}: {e}"))?;
        tracing::info!(addr = %admin.local_addr()?, "admin endpoints listening");
        let gateway = gateway.clone();
        background.spawn(async move { gateway.serve_admin(admin).await });
    }
    viewer::log_availability();
    let local = listener.local_addr()?;
    tracing::info!(
        addr = %local,
        tls = tls.is_some(),
        version = env!("CARGO_PKG_VERSION"),
        "labgate gateway listening"
    );
    if let Some(files) = &demo_files {
        demo::print_instructions(
            local,
            &demo::token(&files.secret, Duration::from_secs(8 * 3600)),
        );
    }
    gateway.serve(listener, tls, shutdown).await;
    Ok(())
}
