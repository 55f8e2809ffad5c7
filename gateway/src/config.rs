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
use crate::token::{KeyFile, TokenSettings};

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
    /// --listen (default 127.0.0.1:8080 in demo mode) with one demo lab whose
    /// VM has an in-process serial console, and prints a token and URLs.
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

    /// Clock-skew allowance for `exp` and `nbf`.
    #[arg(long, env = "LABGATE_GATEWAY_JWT_LEEWAY", default_value = "30s", value_parser = humantime::parse_duration)]
    pub jwt_leeway: Duration,

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
    /// (`preserveSession`); the serial console always takes over.
    #[arg(long, env = "LABGATE_GATEWAY_VNC_PRESERVE_SESSION")]
    pub vnc_preserve_session: bool,

    /// Read the lab index from this YAML file instead of watching namespaces
    /// (for VMs outside Kubernetes, tests and benchmarks). Reloaded on change.
    #[arg(long, env = "LABGATE_GATEWAY_LABS_FILE")]
    pub labs_file: Option<PathBuf>,

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

    /// Time allowed for the TLS handshake and for the HTTP request head.
    #[arg(long, env = "LABGATE_GATEWAY_HANDSHAKE_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    pub handshake_timeout: Duration,

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
        if self.jwt_hmac_secret_file.is_empty() && self.jwt_public_key_file.is_empty() {
            return Err(
                "no token keys: pass --jwt-hmac-secret-file and/or --jwt-public-key-file".into(),
            );
        }
        if self.jwt_audience.is_empty() && !self.jwt_allow_any_audience {
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
        if self.ping_interval.is_zero() {
            return Err("--ping-interval must be positive".into());
        }
        Ok(())
    }

    /// Token verification settings.
    pub fn token_settings(&self) -> TokenSettings {
        TokenSettings {
            algorithms: self.jwt_algorithms.clone(),
            hmac_secret_files: self.jwt_hmac_secret_file.clone(),
            public_key_files: self.jwt_public_key_file.clone(),
            issuers: self.jwt_issuer.clone(),
            audiences: self.jwt_audience.clone(),
            leeway: self.jwt_leeway,
            cache_capacity: self.token_cache_size,
        }
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
            upstream_connect_timeout: self.upstream_connect_timeout,
            max_header_bytes: self.max_header_bytes,
            max_message_bytes: self.max_message_bytes,
            max_session_duration: non_zero(self.max_session_duration),
            shutdown_grace: self.shutdown_grace,
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
