//! The canonical isolation NetworkPolicy.
//!
//! The YAML files in `policies/manifests/` are the one definition: this crate
//! embeds them, the admission service applies them, and the Helm chart can
//! render them. See the comments in those files for the egress stance.

use k8s_openapi::api::networking::v1::{NetworkPolicy, NetworkPolicySpec};

/// Name of the isolation policy in every lab namespace.
pub const ISOLATION_POLICY_NAME: &str = "labgate-isolation";

/// The standard policy: same-namespace ingress; egress to the namespace, DNS
/// and public addresses only.
pub const STANDARD_YAML: &str = include_str!("../manifests/isolation-networkpolicy.yaml");
/// The strict policy: same-namespace ingress; egress to the namespace and DNS only.
pub const STRICT_YAML: &str = include_str!("../manifests/isolation-networkpolicy-strict.yaml");

/// Which egress rules the canonical policy carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum EgressMode {
    /// Namespace, cluster DNS and every address outside the private, shared
    /// and link-local ranges. It blocks by address only: other namespaces,
    /// cluster services and cloud metadata on those ranges are cut off, but an
    /// API server, node or load balancer with a public address stays reachable
    /// (only [`EgressMode::Strict`] blocks those).
    #[default]
    Standard,
    /// Namespace and cluster DNS only.
    Strict,
}

impl std::str::FromStr for EgressMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "standard" => Ok(EgressMode::Standard),
            "strict" => Ok(EgressMode::Strict),
            other => Err(format!(
                "unknown egress mode {other:?}: expected \"standard\" or \"strict\""
            )),
        }
    }
}

impl EgressMode {
    /// The embedded YAML for this mode.
    pub fn yaml(self) -> &'static str {
        match self {
            EgressMode::Standard => STANDARD_YAML,
            EgressMode::Strict => STRICT_YAML,
        }
    }

    /// The canonical policy for `namespace`.
    pub fn policy(self, namespace: &str) -> NetworkPolicy {
        // The YAML is part of this crate and checked by its tests; a parse
        // failure here is a build defect, not an input error.
        let mut policy: NetworkPolicy =
            serde_yaml::from_str(self.yaml()).expect("embedded isolation policy is valid");
        policy.metadata.namespace = Some(namespace.to_string());
        policy
    }

    /// The canonical spec.
    pub fn spec(self) -> NetworkPolicySpec {
        self.policy("").spec.unwrap_or_default()
    }

    /// Whether `spec` is exactly the canonical spec, compared as JSON values so
    /// that field order and absent-versus-empty defaults the API server adds do
    /// not matter.
    pub fn is_canonical(self, spec: Option<&NetworkPolicySpec>) -> bool {
        let Some(spec) = spec else { return false };
        normalise(serde_json::to_value(spec).unwrap_or_default())
            == normalise(serde_json::to_value(self.spec()).unwrap_or_default())
    }
}

/// Drops empty arrays/objects inside selectors and nulls, which the API
/// server may add or omit without changing meaning.
fn normalise(value: serde_json::Value) -> serde_json::Value {
    use serde_json::Value;
    match value {
        Value::Object(map) => Value::Object(
            map.into_iter()
                .filter(|(_, v)| !v.is_null())
                .filter(|(k, v)| {
                    // `matchLabels: {}` and `matchExpressions: []` mean nothing.
                    !((k == "matchLabels" || k == "matchExpressions")
                        && (v.as_object().is_some_and(|o| o.is_empty())
                            || v.as_array().is_some_and(|a| a.is_empty())))
                })
                .map(|(k, v)| (k, normalise(v)))
                .collect(),
        ),
        Value::Array(items) => Value::Array(items.into_iter().map(normalise).collect()),
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_policies_parse_and_isolate_ingress() {
        for mode in [EgressMode::Standard, EgressMode::Strict] {
            let policy = mode.policy("lab-1");
            assert_eq!(policy.metadata.name.as_deref(), Some(ISOLATION_POLICY_NAME));
            assert_eq!(policy.metadata.namespace.as_deref(), Some("lab-1"));
            let spec = policy.spec.clone().unwrap();
            assert_eq!(
                spec.policy_types,
                Some(vec!["Ingress".to_string(), "Egress".to_string()])
            );
            let ingress = spec.ingress.unwrap();
            assert_eq!(ingress.len(), 1);
            let from = ingress[0].from.as_ref().unwrap();
            assert_eq!(from.len(), 1);
            assert!(from[0].namespace_selector.is_none(), "same namespace only");
            assert!(mode.is_canonical(policy.spec.as_ref()));
        }
    }

    #[test]
    fn standard_egress_blocks_metadata_and_private_ranges() {
        let spec = EgressMode::Standard.spec();
        let blocks: Vec<_> = spec
            .egress
            .unwrap()
            .into_iter()
            .flat_map(|r| r.to.unwrap_or_default())
            .filter_map(|p| p.ip_block)
            .collect();
        let v4 = blocks.iter().find(|b| b.cidr == "0.0.0.0/0").unwrap();
        let except = v4.except.clone().unwrap();
        for cidr in [
            "0.0.0.0/8",
            "10.0.0.0/8",
            "100.64.0.0/10",
            "127.0.0.0/8",
            "169.254.0.0/16",
            "172.16.0.0/12",
            "192.0.0.0/24",
            "192.168.0.0/16",
            "198.18.0.0/15",
            "240.0.0.0/4",
            // Azure WireServer: a metadata endpoint with a public address.
            "168.63.129.16/32",
        ] {
            assert!(except.iter().any(|e| e == cidr), "{cidr} must be excluded");
        }
        // IPv6 needs its own block: an except must lie within its cidr.
        let v6 = blocks.iter().find(|b| b.cidr == "::/0").unwrap();
        let except6 = v6.except.clone().unwrap();
        for cidr in [
            "::/128",
            "::1/128",
            "fc00::/7", // ULA, includes AWS IMDS fd00:ec2::254
            "fe80::/10",
            "64:ff9b::/96", // NAT64 well-known prefix would reach the IPv4 ranges above
            "64:ff9b:1::/48", // local-use NAT64
            "2001:db8::/32",
        ] {
            assert!(except6.iter().any(|e| e == cidr), "{cidr} must be excluded");
        }
        assert!(
            EgressMode::Strict.spec().egress.unwrap().iter().all(|r| r
                .to
                .iter()
                .flatten()
                .all(|p| p.ip_block.is_none()))
        );
    }

    #[test]
    fn weakened_or_other_mode_specs_are_not_canonical() {
        let standard = EgressMode::Standard.spec();
        assert!(!EgressMode::Strict.is_canonical(Some(&standard)));
        let mut open = standard.clone();
        open.policy_types = Some(vec!["Ingress".into()]);
        open.egress = None;
        assert!(!EgressMode::Standard.is_canonical(Some(&open)));
        assert!(!EgressMode::Standard.is_canonical(None));
        // Field order and explicit empty selectors do not matter.
        let json = serde_json::to_value(&standard).unwrap();
        let reparsed: NetworkPolicySpec = serde_json::from_value(json).unwrap();
        assert!(EgressMode::Standard.is_canonical(Some(&reparsed)));
    }
}
