//! Command-line flags and environment variables of `labgate-gateway`.
//!
//! Every flag can also be set by the environment variable named in `--help`
//! (`LABGATE_GATEWAY_...`). Durations take humantime syntax: `30s`, `5m`, `2h`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, ValueEnum};
use jsonwebtoken::Algorithm;

use crate::server::Settings;
use crate::sessions::Limits;
use crate::splice::SpliceSettings;
use crate::token::{ClaimPath, JwksSettings, KeyFile, TokenSettings};

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// labgate-gateway: token-checked websocket gateway from noVNC and xterm.js to
/// KubeVirt VNC screens and serial consoles.
#[derive(Debug, Clone, Parser)]
#[command(name = "labgate-gateway", version, about, long_about = None)]
pub struct Config {
    /// Run the self-contained demo: no cluster needed. Serves plain HTTP on
    /// --listen (default 127.0.0.1:8080 in demo mode) with the static backend
    /// and one demo lab: a real Xvnc desktop (if installed) and PTY shells.
    /// Prints a token and the viewer URL; stops what it started on exit.
    #[arg(long, env = "LABGATE_GATEWAY_DEMO")]
    pub demo: bool,

    // --- listening -------------------------------------------------------
    /// Address for client connections (websockets and, unless --admin-listen
    /// is set, /healthz /readyz /metrics too).
    #[arg(long, env = "LABGATE_GATEWAY_LISTEN", default_value = "0.0.0.0:8443")]
    pub listen: SocketAddr,

    /// Optional plain-HTTP address serving only /healthz, /readyz and /metrics,
    /// which then leave --listen (404 there). It stays up while the gateway
    /// drains, so probes see it turn unready.
    #[arg(long, env = "LABGATE_GATEWAY_ADMIN_LISTEN")]
    pub admin_listen: Option<SocketAddr>,

    /// PEM certificate chain for TLS; reloaded when the file changes.
    #[arg(long, env = "LABGATE_GATEWAY_TLS_CERT_FILE", requires = "tls_key_file")]
    pub tls_cert_file: Option<PathBuf>,

    /// PEM private key for TLS; reloaded when the file changes.
    #[arg(long, env = "LABGATE_GATEWAY_TLS_KEY_FILE", requires = "tls_cert_file")]
    pub tls_key_file: Option<PathBuf>,

    /// Serve plain HTTP instead of TLS. Only for deployments where an ingress
    /// or service mesh terminates TLS in front of the gateway.
    #[arg(
        long,
        env = "LABGATE_GATEWAY_INSECURE_PLAIN_HTTP",
        conflicts_with = "tls_cert_file"
    )]
    pub insecure_plain_http: bool,

    // --- tokens ------------------------------------------------------------
    /// Accepted JWT algorithms (comma-separated: HS256, HS384, HS512, RS256,
    /// RS384, RS512, PS256, PS384, PS512, ES256, ES384, EdDSA). A token whose
    /// header names another algorithm is refused; `none` is never accepted.
    #[arg(long, env = "LABGATE_GATEWAY_JWT_ALGORITHMS", value_delimiter = ',', default_value = "HS256", value_parser = parse_algorithm)]
    pub jwt_algorithms: Vec<Algorithm>,

    /// HMAC secret file, as `path` or `kid=path` (repeatable). The file's bytes
    /// are the secret (one trailing newline is ignored).
    #[arg(
        long,
        env = "LABGATE_GATEWAY_JWT_HMAC_SECRET_FILE",
        value_delimiter = ','
    )]
    pub jwt_hmac_secret_file: Vec<KeyFile>,

    /// RSA, EC or Ed25519 public key in PEM, as `path` or `kid=path` (repeatable).
    #[arg(
        long,
        env = "LABGATE_GATEWAY_JWT_PUBLIC_KEY_FILE",
        value_delimiter = ','
    )]
    pub jwt_public_key_file: Vec<KeyFile>,

    /// Accepted `iss` values (comma-separated); when set, tokens must carry `iss`.
    #[arg(long, env = "LABGATE_GATEWAY_JWT_ISSUER", value_delimiter = ',')]
    pub jwt_issuer: Vec<String>,

    /// Accepted `aud` values (comma-separated); tokens must carry one of them.
    /// Required unless --jwt-allow-any-audience.
    #[arg(long, env = "LABGATE_GATEWAY_JWT_AUDIENCE", value_delimiter = ',')]
    pub jwt_audience: Vec<String>,

    /// Accept tokens whatever their `aud`. Only for a key that signs tokens
    /// for the gateway alone: otherwise a token the same issuer made for any
    /// other application opens the user's labs.
    #[arg(
        long,
        env = "LABGATE_GATEWAY_JWT_ALLOW_ANY_AUDIENCE",
        conflicts_with = "jwt_audience"
    )]
    pub jwt_allow_any_audience: bool,

    /// Clock-skew allowance for `nbf` (`exp` gets none).
    #[arg(long, env = "LABGATE_GATEWAY_JWT_LEEWAY", default_value = "30s", value_parser = humantime::parse_duration)]
    pub jwt_leeway: Duration,

    /// JWK set of the token issuer at an HTTPS URL (an OIDC provider's
    /// `jwks_uri`), cached and refetched; only keys fitting --jwt-algorithms
    /// are used.
    #[arg(long, env = "LABGATE_GATEWAY_JWT_JWKS_URL")]
    pub jwt_jwks_url: Option<http::Uri>,

    /// CA bundle (PEM) trusted for --jwt-jwks-url instead of the system's roots.
    #[arg(
        long,
        env = "LABGATE_GATEWAY_JWT_JWKS_CA_FILE",
        requires = "jwt_jwks_url"
    )]
    pub jwt_jwks_ca_file: Option<PathBuf>,

    /// JWK set in a file (reloaded when it changes).
    #[arg(long, env = "LABGATE_GATEWAY_JWT_JWKS_FILE")]
    pub jwt_jwks_file: Option<PathBuf>,

    /// How often remote JWK sets are refetched.
    #[arg(long, env = "LABGATE_GATEWAY_JWT_JWKS_REFRESH_INTERVAL", default_value = "5m", value_parser = humantime::parse_duration)]
    pub jwt_jwks_refresh_interval: Duration,

    /// Least time between two fetches of one JWK set, whatever asks (the
    /// schedule, or a token naming an unknown `kid`).
    #[arg(long, env = "LABGATE_GATEWAY_JWT_JWKS_MIN_REFETCH_INTERVAL", default_value = "30s", value_parser = humantime::parse_duration)]
    pub jwt_jwks_min_refetch_interval: Duration,

    /// Deadline of one JWK set fetch (connect, TLS, answer, body).
    #[arg(long, env = "LABGATE_GATEWAY_JWT_JWKS_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    pub jwt_jwks_timeout: Duration,

    /// YAML file of further issuers, each with its own keys, audiences and
    /// user claim (see README, Tokens). Read at start-up.
    #[arg(long, env = "LABGATE_GATEWAY_JWT_ISSUERS_FILE")]
    pub jwt_issuers_file: Option<PathBuf>,

    /// The claim naming the user: `sub`, `email`, `preferred_username`, or a
    /// dotted path into nested claims (`realm.user`). Must be a non-empty
    /// string in the token.
    #[arg(long, env = "LABGATE_GATEWAY_JWT_USER_CLAIM", default_value = "sub")]
    pub jwt_user_claim: ClaimPath,

    /// Verified tokens kept in memory.
    #[arg(
        long,
        env = "LABGATE_GATEWAY_TOKEN_CACHE_SIZE",
        default_value_t = 10_000
    )]
    pub token_cache_size: u64,

    // --- Kubernetes ----------------------------------------------------------
    /// Kubeconfig file for running outside the cluster. Without it (and
    /// without --kube-api-url) $KUBECONFIG or ~/.kube/config is used if
    /// present, else the in-cluster service account.
    #[arg(long, env = "LABGATE_GATEWAY_KUBECONFIG")]
    pub kubeconfig: Option<PathBuf>,

    /// API server URL, overriding kubeconfig and in-cluster discovery.
    #[arg(long, env = "LABGATE_GATEWAY_KUBE_API_URL")]
    pub kube_api_url: Option<http::Uri>,

    /// Bearer-token file for --kube-api-url (re-read when it rotates).
    #[arg(
        long,
        env = "LABGATE_GATEWAY_KUBE_TOKEN_FILE",
        requires = "kube_api_url"
    )]
    pub kube_token_file: Option<PathBuf>,

    /// CA bundle (PEM) for --kube-api-url.
    #[arg(long, env = "LABGATE_GATEWAY_KUBE_CA_FILE", requires = "kube_api_url")]
    pub kube_ca_file: Option<PathBuf>,

    /// Server-side timeout of each namespace watch request; the watch resumes
    /// from the last resourceVersion when it ends.
    #[arg(long, env = "LABGATE_GATEWAY_WATCH_TIMEOUT", default_value = "290s", value_parser = humantime::parse_duration)]
    pub watch_timeout: Duration,

    /// Namespaces that are never labs whatever their labels (comma-separated),
    /// besides Kubernetes' own (`default`, `kube-*`) and the gateway's own
    /// namespace (POD_NAMESPACE or the service-account namespace file).
    #[arg(long, env = "LABGATE_GATEWAY_EXEMPT_NAMESPACES", value_delimiter = ',')]
    pub exempt_namespaces: Vec<String>,

    /// `/readyz` fails once the namespace watch has been failing this long
    /// (an open watch, even a quiet one, is healthy).
    #[arg(long, env = "LABGATE_GATEWAY_INDEX_UNREADY_AFTER", default_value = "60s", value_parser = humantime::parse_duration)]
    pub index_unready_after: Duration,

    /// New sessions are refused (4015) once the namespace watch has been
    /// failing this long: grants are not decided on data that old.
    #[arg(long, env = "LABGATE_GATEWAY_INDEX_REFUSE_AFTER", default_value = "300s", value_parser = humantime::parse_duration)]
    pub index_refuse_after: Duration,

    /// Refuse a second viewer of a VM screen (close code 4013) instead of
    /// letting it take the screen over. Needs KubeVirt >= 1.6.3
    /// (`preserveSession`); the serial console always takes over. Also says
    /// KubeVirt's screenshots cannot drop a viewer, so screens in use are captured.
    #[arg(long, env = "LABGATE_GATEWAY_VNC_PRESERVE_SESSION")]
    pub vnc_preserve_session: bool,

    /// Read the lab index from this YAML file instead of watching namespaces
    /// (for VMs outside Kubernetes, tests and benchmarks). Reloaded on change.
    #[arg(long, env = "LABGATE_GATEWAY_LABS_FILE")]
    pub labs_file: Option<PathBuf>,

    // --- static backend ------------------------------------------------------
    /// Serve the VMs listed in this YAML file (labs, owners, members, and per
    /// VM a `tcp:`/`unix:` RFB screen and a `tcp:`/`unix:`/`pty:` console)
    /// instead of KubeVirt; it is the lab index too. Reloaded on change.
    #[arg(
        long,
        env = "LABGATE_GATEWAY_STATIC_TARGETS_FILE",
        conflicts_with = "labs_file"
    )]
    pub static_targets_file: Option<PathBuf>,

    // --- limits and timeouts -----------------------------------------------
    /// Sessions open at once, all users together.
    #[arg(long, env = "LABGATE_GATEWAY_MAX_SESSIONS", default_value_t = 10_000)]
    pub max_sessions: usize,

    /// Sessions open at once per user.
    #[arg(
        long,
        env = "LABGATE_GATEWAY_MAX_SESSIONS_PER_USER",
        default_value_t = 8
    )]
    pub max_sessions_per_user: usize,

    /// Time allowed for the TLS handshake and the HTTP request head together,
    /// counted from the accept (a client trickling bytes gets no more); also
    /// how long a connection may idle between requests.
    #[arg(long, env = "LABGATE_GATEWAY_HANDSHAKE_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    pub handshake_timeout: Duration,

    // --- connections not yet authorised (issue 12) ---------------------------
    /// Connections accepted but not yet authorised (TLS handshake, request
    /// head, refusal), all clients together. Beyond it new connections are
    /// closed at once, before TLS.
    #[arg(
        long,
        env = "LABGATE_GATEWAY_MAX_PREAUTH_CONNECTIONS",
        default_value_t = 1024
    )]
    pub max_preauth_connections: usize,

    /// Connections not yet authorised from one client address (IPv6: one
    /// /64). 0 turns the per-address cap off: do that behind a proxy, where
    /// every connection comes from the proxy's address.
    #[arg(
        long,
        env = "LABGATE_GATEWAY_MAX_PREAUTH_CONNECTIONS_PER_ADDRESS",
        default_value_t = 32
    )]
    pub max_preauth_connections_per_address: usize,

    /// Time allowed to open the upstream websocket to the VM.
    #[arg(long, env = "LABGATE_GATEWAY_UPSTREAM_CONNECT_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    pub upstream_connect_timeout: Duration,

    /// Largest HTTP request head accepted, in bytes (minimum 8192).
    #[arg(long, env = "LABGATE_GATEWAY_MAX_HEADER_BYTES", default_value_t = 16 * 1024)]
    pub max_header_bytes: usize,

    /// Largest websocket message accepted from either side, in bytes.
    #[arg(long, env = "LABGATE_GATEWAY_MAX_MESSAGE_BYTES", default_value_t = 4 * 1024 * 1024)]
    pub max_message_bytes: usize,

    /// End a session after this long without data either way (0 disables).
    #[arg(long, env = "LABGATE_GATEWAY_IDLE_TIMEOUT", default_value = "30m", value_parser = humantime::parse_duration)]
    pub idle_timeout: Duration,

    /// End a session after this long whatever the token says (0 disables).
    #[arg(long, env = "LABGATE_GATEWAY_MAX_SESSION_DURATION", default_value = "12h", value_parser = humantime::parse_duration)]
    pub max_session_duration: Duration,

    /// Ping interval towards both the client and the VM side. A client that
    /// sends nothing, not even a pong, for three intervals is disconnected.
    #[arg(long, env = "LABGATE_GATEWAY_PING_INTERVAL", default_value = "30s", value_parser = humantime::parse_duration)]
    pub ping_interval: Duration,

    /// On SIGTERM, how long open sessions may continue before they are closed
    /// with "going away".
    #[arg(long, env = "LABGATE_GATEWAY_SHUTDOWN_GRACE", default_value = "30s", value_parser = humantime::parse_duration)]
    pub shutdown_grace: Duration,

    /// How often certificate, key and labs files are checked for changes.
    #[arg(long, env = "LABGATE_GATEWAY_RELOAD_INTERVAL", default_value = "1s", value_parser = humantime::parse_duration)]
    pub reload_interval: Duration,

    // --- lab listings and screenshots -----------------------------------------
    /// VMs kept per lab in the VM index behind `GET /labs/{lab}` and screenshots;
    /// more are left out (counted in labgate_gateway_vm_index_dropped_total, logged).
    #[arg(
        long,
        env = "LABGATE_GATEWAY_VM_INDEX_MAX_PER_LAB",
        default_value_t = 500
    )]
    pub vm_index_max_per_lab: usize,

    /// VMs kept in the VM index over all labs.
    #[arg(
        long,
        env = "LABGATE_GATEWAY_VM_INDEX_MAX_TOTAL",
        default_value_t = 50_000
    )]
    pub vm_index_max_total: usize,

    /// How long a VM's screenshot is served from the cache; requests for one VM
    /// in that time (and while a capture runs) share one capture.
    #[arg(long, env = "LABGATE_GATEWAY_SCREENSHOT_CACHE_TTL", default_value = "2s", value_parser = humantime::parse_duration)]
    pub screenshot_cache_ttl: Duration,

    /// Time allowed for one screenshot capture.
    #[arg(long, env = "LABGATE_GATEWAY_SCREENSHOT_TIMEOUT", default_value = "5s", value_parser = humantime::parse_duration)]
    pub screenshot_timeout: Duration,

    /// Largest screenshot accepted from KubeVirt, in bytes; on the static
    /// backend, the largest screen captured (width × height × 4).
    #[arg(long, env = "LABGATE_GATEWAY_SCREENSHOT_MAX_BYTES", default_value_t = crate::screenshot::DEFAULT_MAX_BYTES)]
    pub screenshot_max_bytes: usize,

    // --- viewer page -----------------------------------------------------------
    /// Path prefix the gateway is mounted under when the proxy or portal in
    /// front does not strip it, e.g. `/labgate` (then the page is
    /// `/labgate/view/{lab}`). A stripping ingress needs nothing: the page's
    /// URLs are relative.
    #[arg(long, env = "LABGATE_GATEWAY_BASE_PATH", value_parser = parse_base_path)]
    pub base_path: Option<String>,

    /// Who may show the viewer page in a frame: CSP `frame-ancestors`
    /// sources, e.g. `'self' https://portal.example.org`.
    #[arg(long, env = "LABGATE_GATEWAY_FRAME_ANCESTORS", default_value = "'none'", value_parser = parse_frame_ancestors)]
    pub frame_ancestors: String,

    // --- logging -------------------------------------------------------------
    /// Log format.
    #[arg(
        long,
        env = "LABGATE_GATEWAY_LOG_FORMAT",
        value_enum,
        default_value = "text"
    )]
    pub log_format: LogFormat,

    /// Log filter (tracing EnvFilter syntax), e.g. `info,labgate::audit=info`.
    #[arg(long, env = "LABGATE_GATEWAY_LOG", default_value = "info")]
    pub log: String,
}

fn parse_algorithm(s: &str) -> Result<Algorithm, String> {
    s.trim()
        .parse::<Algorithm>()
        .map_err(|_| format!("unknown JWT algorithm {s:?}"))
}

fn parse_base_path(s: &str) -> Result<String, String> {
    let trimmed = s.trim_end_matches('/');
    let ok = trimmed.starts_with('/')
        && trimmed[1..].split('/').all(|seg| {
            !seg.is_empty()
                && seg != ".."
                && seg != "."
                && seg
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        });
    if ok {
        Ok(trimmed.to_string())
    } else {
        Err(format!(
            "{s:?}: expected a path like /labgate (letters, digits, - _ . between slashes)"
        ))
    }
}

fn parse_frame_ancestors(s: &str) -> Result<String, String> {
    crate::viewer::validate_frame_ancestors(s).map(|()| s.trim().to_string())
}

fn non_zero(d: Duration) -> Option<Duration> {
    (!d.is_zero()).then_some(d)
}

impl Config {
    /// Checks combinations clap cannot express.
    ///
    /// # Errors
    /// A message naming the flags at fault.
    pub fn validate(&self) -> Result<(), String> {
        if self.demo {
            return Ok(());
        }
        if self.tls_cert_file.is_none() && !self.insecure_plain_http {
            return Err(
                "TLS is required: pass --tls-cert-file and --tls-key-file, or \
                 --insecure-plain-http when TLS ends in front of the gateway"
                    .into(),
            );
        }
        let plain_keys = !self.jwt_hmac_secret_file.is_empty()
            || !self.jwt_public_key_file.is_empty()
            || self.jwt_jwks_url.is_some()
            || self.jwt_jwks_file.is_some();
        if !plain_keys && self.jwt_issuers_file.is_none() {
            return Err(
                "no token keys: pass --jwt-hmac-secret-file, --jwt-public-key-file, \
                 --jwt-jwks-url, --jwt-jwks-file and/or --jwt-issuers-file"
                    .into(),
            );
        }
        if let Some(url) = &self.jwt_jwks_url
            && url.scheme() != Some(&http::uri::Scheme::HTTPS)
        {
            return Err("--jwt-jwks-url must be an https:// URL".into());
        }
        if self.jwt_jwks_min_refetch_interval.is_zero()
            || self.jwt_jwks_refresh_interval < self.jwt_jwks_min_refetch_interval
            || self.jwt_jwks_timeout.is_zero()
        {
            return Err(
                "--jwt-jwks-min-refetch-interval and --jwt-jwks-timeout must be positive and \
                 --jwt-jwks-refresh-interval at least --jwt-jwks-min-refetch-interval"
                    .into(),
            );
        }
        if plain_keys && self.jwt_audience.is_empty() && !self.jwt_allow_any_audience {
            return Err(
                "no token audience: pass --jwt-audience (the `aud` your portal signs for the \
                 gateway), or --jwt-allow-any-audience if the key signs tokens for nothing else"
                    .into(),
            );
        }
        if self.max_sessions == 0 || self.max_sessions_per_user == 0 {
            return Err("--max-sessions and --max-sessions-per-user must be at least 1".into());
        }
        if self.index_unready_after.is_zero() || self.index_refuse_after < self.index_unready_after
        {
            return Err(
                "--index-unready-after must be positive and --index-refuse-after at least as long"
                    .into(),
            );
        }
        if self.vm_index_max_per_lab == 0
            || self.vm_index_max_total == 0
            || self.screenshot_cache_ttl.is_zero()
            || self.screenshot_timeout.is_zero()
            || self.screenshot_max_bytes == 0
        {
            return Err(
                "--vm-index-max-per-lab, --vm-index-max-total, --screenshot-cache-ttl, \
                 --screenshot-timeout and --screenshot-max-bytes must be positive"
                    .into(),
            );
        }
        if self.ping_interval.is_zero() {
            return Err("--ping-interval must be positive".into());
        }
        if self.max_preauth_connections == 0 {
            return Err("--max-preauth-connections must be at least 1".into());
        }
        Ok(())
    }

    /// Token verification settings.
    ///
    /// # Errors
    /// When the issuers file cannot be read or is invalid.
    pub fn token_settings(&self) -> Result<TokenSettings, crate::token::KeyError> {
        let more_issuers = match &self.jwt_issuers_file {
            Some(path) => crate::token::issuers::load_file(path)?,
            None => vec![],
        };
        Ok(TokenSettings {
            algorithms: self.jwt_algorithms.clone(),
            hmac_secret_files: self.jwt_hmac_secret_file.clone(),
            public_key_files: self.jwt_public_key_file.clone(),
            jwks_file: self.jwt_jwks_file.clone(),
            jwks_url: self.jwt_jwks_url.clone(),
            jwks_ca_file: self.jwt_jwks_ca_file.clone(),
            issuers: self.jwt_issuer.clone(),
            audiences: self.jwt_audience.clone(),
            more_issuers,
            user_claim: self.jwt_user_claim.clone(),
            leeway: self.jwt_leeway,
            cache_capacity: self.token_cache_size,
            jwks: JwksSettings {
                refresh_interval: self.jwt_jwks_refresh_interval,
                min_refetch_interval: self.jwt_jwks_min_refetch_interval,
                timeout: self.jwt_jwks_timeout,
                ..JwksSettings::default()
            },
        })
    }

    /// Which namespaces may be labs and how stale the index may grow.
    pub fn index_policy(&self) -> crate::index::IndexPolicy {
        let mut exempt: std::collections::HashSet<String> = self
            .exempt_namespaces
            .iter()
            .map(|ns| ns.trim().to_string())
            .filter(|ns| !ns.is_empty())
            .collect();
        exempt.extend(crate::index::own_namespace());
        crate::index::IndexPolicy {
            exempt,
            unready_after: Some(self.index_unready_after),
            refuse_after: Some(self.index_refuse_after),
        }
    }

    /// The VM index's caps.
    pub fn vm_index_limits(&self) -> crate::vm_index::VmIndexLimits {
        crate::vm_index::VmIndexLimits {
            per_lab: self.vm_index_max_per_lab,
            total: self.vm_index_max_total,
        }
    }

    /// Runtime settings of the gateway service.
    pub fn settings(&self) -> Settings {
        Settings {
            limits: Limits {
                max_sessions: self.max_sessions,
                max_sessions_per_user: self.max_sessions_per_user,
            },
            splice: SpliceSettings {
                ping_interval: self.ping_interval,
                idle_timeout: non_zero(self.idle_timeout),
                close_timeout: Duration::from_secs(2),
                max_message_bytes: self.max_message_bytes,
            },
            handshake_timeout: self.handshake_timeout,
            preauth: crate::preauth::PreAuthLimits {
                total: self.max_preauth_connections,
                per_address: self.max_preauth_connections_per_address,
            },
            upstream_connect_timeout: self.upstream_connect_timeout,
            max_header_bytes: self.max_header_bytes,
            max_message_bytes: self.max_message_bytes,
            max_session_duration: non_zero(self.max_session_duration),
            shutdown_grace: self.shutdown_grace,
            screenshots: crate::screenshot::ScreenshotSettings {
                cache_ttl: self.screenshot_cache_ttl,
                timeout: self.screenshot_timeout,
                captures_keep_viewers: self.vnc_preserve_session,
            },
            base_path: self.base_path.clone(),
            viewer: crate::viewer::ViewerSettings {
                frame_ancestors: self.frame_ancestors.clone(),
            },
        }
    }

    /// The Kubernetes client configuration these flags describe.
    ///
    /// # Errors
    /// When the kubeconfig cannot be read or no configuration can be inferred.
    pub async fn kube_config(&self) -> anyhow::Result<kube::Config> {
        if let Some(url) = &self.kube_api_url {
            let mut config = kube::Config::new(url.clone());
            config.root_cert_file = self.kube_ca_file.clone();
            config.auth_info.token_file = self
                .kube_token_file
                .as_ref()
                .map(|p| p.to_string_lossy().into_owned());
            // Upgraded console streams are long-lived and may be silent.
            config.read_timeout = None;
            return Ok(config);
        }
        let mut config = match &self.kubeconfig {
            Some(path) => {
                let kubeconfig = kube::config::Kubeconfig::read_from(path)?;
                kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default()).await?
            }
            None => kube::Config::infer().await?,
        };
        config.read_timeout = None;
        Ok(config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_parse_and_validate() {
        let c = Config::try_parse_from([
            "labgate-gateway",
            "--insecure-plain-http",
            "--jwt-hmac-secret-file",
            "k1=/s1,/s2",
            "--jwt-algorithms",
            "HS256,RS256",
            "--idle-timeout",
            "0",
            "--jwt-audience",
            "labgate",
        ])
        .unwrap();
        assert_eq!(c.jwt_hmac_secret_file.len(), 2);
        assert_eq!(c.jwt_algorithms, vec![Algorithm::HS256, Algorithm::RS256]);
        assert!(c.validate().is_ok());
        assert_eq!(c.settings().splice.idle_timeout, None);

        let no_tls =
            Config::try_parse_from(["labgate-gateway", "--jwt-hmac-secret-file", "/s"]).unwrap();
        assert!(no_tls.validate().unwrap_err().contains("TLS is required"));
        assert!(Config::try_parse_from(["labgate-gateway", "--jwt-algorithms", "none"]).is_err());
    }

    /// Without an audience, any token the identity provider issued to any of
    /// its clients for the same `sub` would open that user's labs.
    #[test]
    fn an_audience_is_required_unless_any_audience_is_explicitly_allowed() {
        let base = [
            "labgate-gateway",
            "--insecure-plain-http",
            "--jwt-hmac-secret-file",
            "/s",
        ];
        let parse = |extra: &[&str]| {
            Config::try_parse_from(base.iter().chain(extra).copied()).map(|c| c.validate())
        };
        let err = parse(&[]).unwrap().unwrap_err();
        assert!(
            err.contains("--jwt-audience") && err.contains("--jwt-allow-any-audience"),
            "{err}"
        );
        assert_eq!(parse(&["--jwt-audience", "labgate"]).unwrap(), Ok(()));
        assert_eq!(parse(&["--jwt-allow-any-audience"]).unwrap(), Ok(()));
        // Both at once is a contradiction, refused by clap.
        assert!(parse(&["--jwt-audience", "labgate", "--jwt-allow-any-audience"]).is_err());
    }
}

#[cfg(test)]
mod readme_tests {
    use clap::CommandFactory;

    /// The README's flag table must name every flag and its variable.
    #[test]
    fn readme_documents_every_flag() {
        let readme = include_str!("../../README.md");
        for arg in super::Config::command().get_arguments() {
            let Some(long) = arg.get_long() else { continue };
            if long == "help" || long == "version" {
                continue;
            }
            // The flag's row of the README's flag table: | `--flag` | `ENV` | default | meaning |
            let row = readme
                .lines()
                .find(|l| l.starts_with(&format!("| `--{long}` |")))
                .unwrap_or_else(|| panic!("README's flag table lacks --{long}"));
            let cells: Vec<&str> = row.split('|').map(str::trim).collect();
            if let Some(env) = arg.get_env() {
                let env = env.to_string_lossy();
                assert_eq!(cells[2], format!("`{env}`"), "env of --{long}");
            }
            let takes_value = !matches!(arg.get_action(), clap::ArgAction::SetTrue);
            for default in arg.get_default_values() {
                if takes_value {
                    let default = default.to_string_lossy();
                    assert!(
                        cells[3].contains(&format!("`{default}`")),
                        "README's default for --{long} is {:?}, the code's is {default:?}",
                        cells[3]
                    );
                }
            }
        }
    }
}
