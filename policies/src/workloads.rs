//! Resources that run code in a lab and so must wait for its isolation policy.

/// A namespaced resource, by API group and plural resource name, as it
/// appears in an admission request's `resource` field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Workload {
    /// API group (`""` for the core group).
    pub group: &'static str,
    /// Plural resource name.
    pub resource: &'static str,
}

/// Everything the admission service refuses to create in a lab namespace until
/// the canonical isolation policy is there. Controllers (Deployments, VMs…)
/// are listed as well as Pods so the refusal reaches the portal that made the
/// request instead of surfacing later on a ReplicaSet.
pub const GATED_WORKLOADS: &[Workload] = &[
    Workload {
        group: "",
        resource: "pods",
    },
    Workload {
        group: "apps",
        resource: "deployments",
    },
    Workload {
        group: "apps",
        resource: "replicasets",
    },
    Workload {
        group: "apps",
        resource: "statefulsets",
    },
    Workload {
        group: "apps",
        resource: "daemonsets",
    },
    Workload {
        group: "batch",
        resource: "jobs",
    },
    Workload {
        group: "batch",
        resource: "cronjobs",
    },
    Workload {
        group: "kubevirt.io",
        resource: "virtualmachineinstances",
    },
    Workload {
        group: "kubevirt.io",
        resource: "virtualmachines",
    },
    Workload {
        group: "kubevirt.io",
        resource: "virtualmachineinstancereplicasets",
    },
    Workload {
        group: "pool.kubevirt.io",
        resource: "virtualmachinepools",
    },
];

/// Whether a group/resource pair is gated.
pub fn is_gated(group: &str, resource: &str) -> bool {
    GATED_WORKLOADS
        .iter()
        .any(|w| w.group == group && w.resource == resource)
}

#[cfg(test)]
mod tests {
    #[test]
    fn gates_pods_and_kubevirt_workloads_only() {
        assert!(super::is_gated("", "pods"));
        assert!(super::is_gated("kubevirt.io", "virtualmachineinstances"));
        assert!(!super::is_gated("", "configmaps"));
        assert!(!super::is_gated("networking.k8s.io", "networkpolicies"));
    }
}
