//! Deployment manifests that belong to the lab contract, embedded so the chart and tests use one file.

/// The ValidatingWebhookConfiguration `labgate-admission` needs. The chart
/// fills in `clientConfig` (service namespace) and the exempt namespace list.
pub const VALIDATING_WEBHOOK_YAML: &str = include_str!("../manifests/validating-webhook.yaml");

/// Optional BaselineAdminNetworkPolicy closing lab namespaces whenever their
/// isolation NetworkPolicy is missing (CNIs with network-policy-api support only).
pub const BASELINE_ADMIN_NETWORK_POLICY_YAML: &str =
    include_str!("../manifests/baseline-admin-network-policy.yaml");

#[cfg(test)]
mod tests {
    use super::*;
    use serde_yaml::Value;

    #[test]
    fn baseline_admin_network_policy_selects_labs_and_denies_by_default() {
        let v: Value = serde_yaml::from_str(BASELINE_ADMIN_NETWORK_POLICY_YAML).unwrap();
        assert_eq!(v["apiVersion"], "policy.networking.k8s.io/v1alpha1");
        assert_eq!(v["kind"], "BaselineAdminNetworkPolicy");
        // The API only accepts the singleton name "default".
        assert_eq!(v["metadata"]["name"], "default");
        let selector = &v["spec"]["subject"]["namespaces"]["matchLabels"];
        assert_eq!(selector[crate::LAB_LABEL], "true");
        // Last rule in each direction is a catch-all Deny.
        for dir in ["ingress", "egress"] {
            let rules = v["spec"][dir].as_sequence().unwrap();
            let last = rules.last().unwrap();
            assert_eq!(last["action"], "Deny", "{dir}");
            for r in rules {
                assert!(r["name"].as_str().is_some_and(|n| n.len() <= 100));
                assert!(matches!(r["action"].as_str(), Some("Allow" | "Deny")));
            }
        }
        let nets = v["spec"]["egress"].as_sequence().unwrap().last().unwrap()["to"][1]["networks"]
            .as_sequence()
            .unwrap()
            .clone();
        assert!(nets.contains(&Value::from("0.0.0.0/0")) && nets.contains(&Value::from("::/0")));
    }
}
