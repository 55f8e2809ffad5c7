//! Command-line and environment configuration of `labgate-admission`.
//!
//! Every flag can also be set through the `LABGATE_ADMISSION_*` variable named in its help.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::Parser;
use labgate_policies::EgressMode;

/// Username of the namespace controller when kube-controller-manager runs with
/// `--use-service-account-credentials` (kubeadm and most distributions).
pub const DEFAULT_NAMESPACE_CONTROLLER: &str =
    "system:serviceaccount:kube-system:namespace-controller";

/// labgate-admission: keeps every lab namespace isolated and its lab labels authentic.
///
/// Runs a validating admission webhook (HTTPS, /validate) and a reconciler that
/// server-side applies the canonical isolation NetworkPolicy in every namespace
/// labelled labgate.io/lab=true.
#[derive(Debug, Clone, Parser)]
#[command(name = "labgate-admission", version, about, long_about)]
pub struct Config {
    /// Address the HTTPS webhook server listens on (serves /validate, /healthz, /readyz, /metrics).
    #[arg(long, env = "LABGATE_ADMISSION_LISTEN", default_value = "0.0.0.0:8443")]
    pub listen: SocketAddr,

    /// PEM file with the serving certificate chain. Re-read when it changes on disk
    /// (checked every second); a broken new pair is ignored and the old one kept.
    #[arg(
        long,
        env = "LABGATE_ADMISSION_TLS_CERT_FILE",
        default_value = "/etc/labgate-admission/tls/tls.crt"
    )]
    pub tls_cert_file: PathBuf,

    /// PEM file with the private key (PKCS#8, PKCS#1 or SEC1) of --tls-cert-file.
    #[arg(
        long,
        env = "LABGATE_ADMISSION_TLS_KEY_FILE",
        default_value = "/etc/labgate-admission/tls/tls.key"
    )]
    pub tls_key_file: PathBuf,

    /// User allowed to create lab namespaces and change their owner, members or lab
    /// marking, e.g. system:serviceaccount:portal:portal. Repeatable; the env variable
    /// takes a comma-separated list.
    #[arg(
        long = "portal-user",
        env = "LABGATE_ADMISSION_PORTAL_USERS",
        value_delimiter = ','
    )]
    pub portal_users: Vec<String>,

    /// Group whose members are portal principals (same rights as --portal-user).
    /// Repeatable; the env variable takes a comma-separated list.
    #[arg(
        long = "portal-group",
        env = "LABGATE_ADMISSION_PORTAL_GROUPS",
        value_delimiter = ','
    )]
    pub portal_groups: Vec<String>,

    /// Egress stance of the canonical isolation policy: "standard" (same namespace,
    /// cluster DNS and public addresses; no private, link-local or metadata ranges) or
    /// "strict" (same namespace and cluster DNS only).
    #[arg(long, env = "LABGATE_ADMISSION_EGRESS", default_value = "standard", value_parser = parse_egress)]
    pub egress: EgressMode,

    /// Username that may delete the isolation policy even if the namespace is not (yet)
    /// seen as terminating. Namespace deletion is recognised by the namespace's phase
    /// first; this is a second signal. Repeatable.
    #[arg(
        long = "namespace-controller-user",
        env = "LABGATE_ADMISSION_NAMESPACE_CONTROLLER_USERS",
        value_delimiter = ',',
        default_value = DEFAULT_NAMESPACE_CONTROLLER
    )]
    pub namespace_controller_users: Vec<String>,

    /// Kubeconfig file to reach the API server. Without it the in-cluster service
    /// account (or $KUBECONFIG / ~/.kube/config) is used.
    #[arg(long, env = "LABGATE_ADMISSION_KUBECONFIG")]
    pub kubeconfig: Option<PathBuf>,

    /// Connections the HTTPS listener holds at once. Past it a new connection is closed
    /// at accept, before TLS, and counted in labgate_admission_connections_rejected_total:
    /// a flood cannot use up the process's descriptors or memory. The API server needs
    /// about as many as it has reviews in flight.
    #[arg(long, env = "LABGATE_ADMISSION_MAX_CONNECTIONS", default_value_t = 1024, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_connections: u32,

    /// Optional plain-HTTP listener for /metrics, /healthz and /readyz (for scrapers
    /// that cannot speak the webhook's TLS). The HTTPS listener serves them too.
    #[arg(long, env = "LABGATE_ADMISSION_METRICS_LISTEN")]
    pub metrics_listen: Option<SocketAddr>,

    /// Manage the serving certificate in-process: keep a CA in a Secret (stable across
    /// restarts), issue a leaf for the webhook service, write both PEM files to
    /// --tls-cert-file/--tls-key-file and publish the CA (old and new during a
    /// rotation) in the webhook configuration's caBundle.
    #[arg(long, env = "LABGATE_ADMISSION_SELF_SIGNED_CERTS")]
    pub self_signed_certs: bool,

    /// Secret holding the self-managed CA (with --self-signed-certs).
    #[arg(
        long,
        env = "LABGATE_ADMISSION_CA_SECRET",
        default_value = "labgate-admission-ca"
    )]
    pub ca_secret: String,

    /// Namespace of the service and of --ca-secret (with --self-signed-certs).
    #[arg(
        long,
        env = "LABGATE_ADMISSION_SERVICE_NAMESPACE",
        default_value = "labgate-system"
    )]
    pub service_namespace: String,

    /// Name of the webhook's Service; the leaf certificate is issued for
    /// <name>.<namespace>.svc (with --self-signed-certs).
    #[arg(
        long,
        env = "LABGATE_ADMISSION_SERVICE_NAME",
        default_value = "labgate-admission"
    )]
    pub service_name: String,

    /// ValidatingWebhookConfiguration whose caBundle is kept current (with --self-signed-certs).
    #[arg(
        long,
        env = "LABGATE_ADMISSION_WEBHOOK_NAME",
        default_value = "labgate-admission"
    )]
    pub webhook_name: String,

    /// Extra DNS names or IP addresses for the self-issued leaf certificate. Repeatable.
    #[arg(
        long = "extra-cert-name",
        env = "LABGATE_ADMISSION_EXTRA_CERT_NAMES",
        value_delimiter = ','
    )]
    pub extra_cert_names: Vec<String>,

    /// Further namespaces that must never be treated as labs (besides `default`,
    /// `kube-*` and --service-namespace): marking them is denied and the
    /// reconciler never isolates them. Repeatable.
    #[arg(
        long = "exempt-namespace",
        env = "LABGATE_ADMISSION_EXEMPT_NAMESPACES",
        value_delimiter = ','
    )]
    pub extra_exempt_namespaces: Vec<String>,

    /// Run only the webhook, not the reconciler (e.g. for extra webhook replicas; exactly
    /// one reconciler is enough, and concurrent ones are harmless).
    #[arg(long, env = "LABGATE_ADMISSION_NO_RECONCILER")]
    pub no_reconciler: bool,
}

fn parse_egress(s: &str) -> Result<EgressMode, String> {
    s.parse()
}

impl Config {
    /// The subset of the configuration the decision logic needs.
    pub fn rules(&self) -> crate::decide::Rules {
        crate::decide::Rules {
            portal_users: self.portal_users.clone(),
            portal_groups: self.portal_groups.clone(),
            namespace_controller_users: self.namespace_controller_users.clone(),
            egress: self.egress,
            exempt_namespaces: self.exempt_namespaces(),
        }
    }

    /// The service's own namespace plus `--exempt-namespace` (never labs).
    pub fn exempt_namespaces(&self) -> Vec<String> {
        let mut v = vec![self.service_namespace.clone()];
        v.extend(self.extra_exempt_namespaces.iter().cloned());
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn help_is_consistent() {
        Config::command().debug_assert();
    }

    #[test]
    fn repeatable_principals_and_egress_parse() {
        let c = Config::try_parse_from([
            "labgate-admission",
            "--portal-user",
            "system:serviceaccount:portal:portal",
            "--portal-user",
            "admin",
            "--portal-group",
            "portals",
            "--egress",
            "strict",
        ])
        .unwrap();
        assert_eq!(
            c.portal_users,
            ["system:serviceaccount:portal:portal", "admin"]
        );
        assert_eq!(c.portal_groups, ["portals"]);
        assert_eq!(c.egress, EgressMode::Strict);
        assert_eq!(c.namespace_controller_users, [DEFAULT_NAMESPACE_CONTROLLER]);
        assert!(Config::try_parse_from(["labgate-admission", "--egress", "open"]).is_err());
    }
}
