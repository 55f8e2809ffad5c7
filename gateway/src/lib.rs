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
//! - [`preauth`]: the caps on connections not yet authorised (in total, per client address).
//! - [`respond`]: the websocket handshake answer and small response bodies.
//! - [`route`]: `/labs/{namespace}/{vmi}/{kind}`, `/labs/{lab}` and `…/{vm}/screenshot` parsing and name validation.
//! - [`credentials`]: where the token comes from; subprotocol negotiation.
//! - [`token`]: JWT verification with pinned algorithms and a cache; the `kid` rule.
//!   [`token::keys`] (key files, algorithm binding), [`token::jwks`] (JWK sets, refetch),
//!   [`token::issuers`] (several issuers), [`token::claims`] (the user claim),
//!   [`token::mint`] (the `token` command).
//! - [`index`]: the lab-ownership index (exempt namespaces, malformed labs, staleness).
//! - [`namespace_watch`]: the list+watch loop feeding the index: re-watch and relist at once,
//!   backoff only for errors.
//! - [`apiclient`]: the API-server client, rebuilt (token re-read) after a 401.
//! - [`upstream_conn`]: the API-server connection each session opens (kube's TLS and auth
//!   settings on a connection of its own, a TLS ticket store sized for bursts).
//! - [`authz`]: the pure authorisation decision and its re-check.
//! - [`sessions`]: limits and which session holds which VM console.
//! - [`backend`]: the [`Backend`](backend::Backend) seam (`upstream` is its old name, still
//!   re-exported). [`backend::kubevirt`] opens KubeVirt subresources;
//!   [`backend::static_targets`] opens the `tcp:`/`unix:`/`pty:` targets of a YAML file
//!   ([`backend::targets_file`]), raw streams framed for the splice by [`backend::raw_stream`],
//!   and captures its screens with [`backend::rfb_capture`] (a one-frame RFB client, PNG).
//! - [`vm_index`]: each lab's VMs and their state, in memory (bounded per lab and in total).
//! - [`vm_watch`]: the VMI and VM list+watch loops feeding the VM index.
//! - [`lab_api`]: `GET /labs/{lab}` (the lab's VMs) and `GET /labs/{lab}/{vm}/screenshot`.
//! - [`screenshot`]: KubeVirt's screenshot subresource, the per-VM cache and single flight.
//! - [`splice`]: the two-way relay with backpressure, pings and close propagation.
//! - [`end_cork`]: a session's TCP connections send their close frame, close_notify and FIN
//!   as one segment.
//! - [`refusal`]: every reason a session is refused or ended, with close codes.
//! - [`tls`]: rustls with certificate reload; [`reload`]: file change detection.
//! - [`metrics`]: Prometheus metrics; [`demo`]: the no-cluster demo (static backend, Xvnc
//!   desktop, PTY shells).
//! - `fuzzing`: entry points of the fuzz targets (`gateway/fuzz/`) and of the corpus replay test.
//! - [`viewer`]: the viewer page `/view/{lab}` and its hashed `/assets/`, embedded from
//!   `web/dist/` by `build.rs` (the page's sources are in `gateway/web/`).
//!
//! # Embedding
//! [`Gateway::handle`] is an ordinary async request handler; mount it in any
//! hyper or axum server that enables HTTP/1.1 upgrades (see `examples/embed.rs`).

pub mod apiclient;
pub mod authz;
pub mod backend;
pub mod config;
pub mod credentials;
pub mod demo;
pub mod end_cork;
#[doc(hidden)]
pub mod fuzzing;
pub mod index;
pub mod lab_api;
pub mod listener;
pub mod metrics;
pub mod namespace_watch;
pub mod preauth;
pub mod refusal;
pub mod reload;
pub mod respond;
pub mod route;
pub mod screenshot;
pub mod server;
pub mod sessions;
pub mod splice;
pub mod tls;
pub mod token;
pub mod upstream_conn;
pub mod viewer;
pub mod vm_index;
pub mod vm_watch;

/// The old path of [`backend`], kept so `labgate_gateway::upstream::…` still works.
pub use backend as upstream;

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::net::TcpListener;

pub use backend::{Backend, KubeVirtBackend, StaticBackend};
pub use config::Config;
pub use index::LabIndex;
pub use metrics::Metrics;
pub use refusal::Refusal;
pub use server::{Gateway, Settings};
pub use token::TokenVerifier;

/// Installs the process-wide rustls crypto provider ([`tls::crypto_provider`]).
/// Harmless if one is already installed.
pub fn install_crypto_provider() {
    let _ = tls::crypto_provider().install_default();
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
    let started = Instant::now();
    let demo = if config.demo {
        let files = demo::write_files()?;
        let desktop = match demo::start_desktop(files.dir.path()).await {
            Ok(Some(desktop)) => Some(desktop),
            Ok(None) => {
                demo::print_no_desktop();
                None
            }
            // The shells still work: offer them rather than nothing.
            Err(e) => {
                tracing::error!(error = %format!("{e:#}"), "the demo desktop did not start; continuing with the shells only");
                None
            }
        };
        demo::write_targets(&files, desktop.as_ref().map(|d| d.socket.as_path()))?;
        config.jwt_hmac_secret_file = vec![token::KeyFile {
            kid: None,
            path: files.secret_file.clone(),
        }];
        config.jwt_algorithms = vec![jsonwebtoken::Algorithm::HS256];
        config.jwt_audience = vec![demo::DEMO_AUDIENCE.to_string()];
        config.jwt_allow_any_audience = false;
        config.static_targets_file = Some(files.targets_file.clone());
        config.labs_file = None;
        config.insecure_plain_http = true;
        // Ctrl-C should not wait half a minute for open browser tabs.
        config.shutdown_grace = config.shutdown_grace.min(Duration::from_secs(2));
        Some((files, desktop))
    } else {
        None
    };
    // The desktop's processes stop however this function returns.
    let result = serve(config, listener, shutdown, started, demo.as_ref()).await;
    if let Some((_files, Some(desktop))) = demo {
        desktop.stop().await;
    }
    result
}

async fn serve(
    config: Config,
    listener: TcpListener,
    shutdown: impl Future<Output = ()>,
    started: Instant,
    demo: Option<&(demo::DemoFiles, Option<demo::Desktop>)>,
) -> anyhow::Result<()> {
    config.validate().map_err(anyhow::Error::msg)?;

    let metrics = Arc::new(Metrics::new());
    let verifier = Arc::new(TokenVerifier::new(
        config.token_settings()?,
        metrics.clone(),
    )?);
    // Background tasks end when this set is dropped (when `run` returns).
    let mut background = tokio::task::JoinSet::new();
    // Key file reload and JWKS refetches.
    for task in verifier.background_tasks(config.reload_interval) {
        background.spawn(task);
    }

    let index = LabIndex::with_policy(metrics.clone(), config.index_policy());
    let backend: Arc<dyn Backend> = if let Some(path) = &config.static_targets_file {
        // The file names the labs too: no namespace watch, no API server.
        let stamps = reload::FileStamps::new([path]);
        let targets = backend::targets_file::load(path)?;
        index.replace_all(targets.index_entries());
        let statics = Arc::new(
            StaticBackend::new(targets, config.max_message_bytes)
                .screenshot_max_bytes(config.screenshot_max_bytes),
        );
        background.spawn(backend::static_targets::watch_file(
            path.clone(),
            stamps,
            statics.clone(),
            index.clone(),
            config.reload_interval,
        ));
        statics
    } else {
        let api = Arc::new(apiclient::ApiClient::new(config.kube_config().await?)?);
        if config.labs_file.is_none() {
            background.spawn(index::watch_namespaces(
                api.clone(),
                index.clone(),
                config.watch_timeout,
            ));
        }
        // The VM index follows VMIs and VMs of labs only, so it needs the namespace watch.
        let vms = vm_index::VmIndex::new(index.clone(), config.vm_index_limits(), metrics.clone());
        background.spawn(vms.clone().follow_labs());
        for source in [vm_index::Source::Vmi, vm_index::Source::Vm] {
            background.spawn(vm_watch::watch_vms(
                api.clone(),
                vms.clone(),
                source,
                config.watch_timeout,
            ));
        }
        Arc::new(
            KubeVirtBackend::with_api(api)
                .preserve_vnc_session(config.vnc_preserve_session)
                .with_vm_index(vms)
                .screenshot_max_bytes(config.screenshot_max_bytes),
        )
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
    if let Some((files, desktop)) = demo {
        demo::print_instructions(
            local,
            &demo::token(&files.secret, Duration::from_secs(8 * 3600)),
            &files.secret_file,
            desktop.is_some(),
            started.elapsed(),
        );
    }
    gateway.serve(listener, tls, shutdown).await;
    Ok(())
}
