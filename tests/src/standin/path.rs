//! The resource table and the parsing of REST paths (`/api/v1/…`, `/apis/{group}/{version}/…`).
//!
//! The stand-in serves a fixed set of resources; which ones are cluster-scoped decides how a path
//! such as `/apis/g/v/x/y` is read, exactly like the API server's discovery-driven routing.

/// (group, plural resource, kind, namespaced)
const RESOURCES: &[(&str, &str, &str, bool)] = &[
    ("", "namespaces", "Namespace", false),
    ("", "nodes", "Node", false),
    ("", "pods", "Pod", true),
    ("", "secrets", "Secret", true),
    ("", "configmaps", "ConfigMap", true),
    ("", "services", "Service", true),
    ("", "serviceaccounts", "ServiceAccount", true),
    ("", "events", "Event", true),
    ("", "persistentvolumeclaims", "PersistentVolumeClaim", true),
    ("", "resourcequotas", "ResourceQuota", true),
    ("", "limitranges", "LimitRange", true),
    ("events.k8s.io", "events", "Event", true),
    (
        "networking.k8s.io",
        "networkpolicies",
        "NetworkPolicy",
        true,
    ),
    (
        "admissionregistration.k8s.io",
        "validatingwebhookconfigurations",
        "ValidatingWebhookConfiguration",
        false,
    ),
    (
        "admissionregistration.k8s.io",
        "mutatingwebhookconfigurations",
        "MutatingWebhookConfiguration",
        false,
    ),
    ("rbac.authorization.k8s.io", "roles", "Role", true),
    (
        "rbac.authorization.k8s.io",
        "rolebindings",
        "RoleBinding",
        true,
    ),
    (
        "rbac.authorization.k8s.io",
        "clusterroles",
        "ClusterRole",
        false,
    ),
    (
        "rbac.authorization.k8s.io",
        "clusterrolebindings",
        "ClusterRoleBinding",
        false,
    ),
    ("coordination.k8s.io", "leases", "Lease", true),
    ("apps", "deployments", "Deployment", true),
    ("apps", "replicasets", "ReplicaSet", true),
    ("apps", "statefulsets", "StatefulSet", true),
    ("apps", "daemonsets", "DaemonSet", true),
    ("batch", "jobs", "Job", true),
    ("batch", "cronjobs", "CronJob", true),
    (
        "kubevirt.io",
        "virtualmachineinstances",
        "VirtualMachineInstance",
        true,
    ),
    ("kubevirt.io", "virtualmachines", "VirtualMachine", true),
    (
        "kubevirt.io",
        "virtualmachineinstancereplicasets",
        "VirtualMachineInstanceReplicaSet",
        true,
    ),
    (
        "pool.kubevirt.io",
        "virtualmachinepools",
        "VirtualMachinePool",
        true,
    ),
    ("cdi.kubevirt.io", "datavolumes", "DataVolume", true),
];

/// A served resource in the version a request named.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResourceType {
    pub group: String,
    pub version: String,
    pub resource: String,
    pub kind: String,
    pub namespaced: bool,
}

impl ResourceType {
    /// Looks a resource up in the table.
    pub fn lookup(group: &str, version: &str, resource: &str) -> Option<ResourceType> {
        RESOURCES
            .iter()
            .find(|(g, r, _, _)| *g == group && *r == resource)
            .map(|(g, r, k, n)| ResourceType {
                group: g.to_string(),
                version: version.to_string(),
                resource: r.to_string(),
                kind: k.to_string(),
                namespaced: *n,
            })
    }

    /// `v1` or `group/version`, as in an object's `apiVersion`.
    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.clone()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    /// `pods` or `networkpolicies.networking.k8s.io`, as used in error messages.
    pub fn qualified(&self) -> String {
        if self.group.is_empty() {
            self.resource.clone()
        } else {
            format!("{}.{}", self.resource, self.group)
        }
    }
}

/// The version the stand-in uses when it has to name one itself.
pub fn default_version(group: &str) -> &'static str {
    match group {
        "pool.kubevirt.io" => "v1alpha1",
        "cdi.kubevirt.io" => "v1beta1",
        _ => "v1",
    }
}

/// A parsed resource path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiPath {
    pub rt: ResourceType,
    /// The namespace named in the path (`None` for cluster-scoped or all-namespaces requests).
    pub namespace: Option<String>,
    pub name: Option<String>,
    /// Anything after the name (`status`, `vnc`, …).
    pub subresource: Option<String>,
}

/// What a path names, or why the stand-in does not serve it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    Resource(ApiPath),
    /// `/apis/subresources.kubevirt.io/{v1,v1alpha3}/namespaces/{ns}/virtualmachineinstances/{name}/{kind}`
    /// (`kind` is `vnc`, `console`, or `vnc/screenshot`)
    KubeVirtSubresource {
        namespace: String,
        name: String,
        kind: String,
    },
    NotFound,
}

/// Parses a request path.
pub fn route(path: &str) -> Route {
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    let (group, version, rest) = match segments.as_slice() {
        ["api", version, rest @ ..] => ("", *version, rest),
        ["apis", group, version, rest @ ..] => (*group, *version, rest),
        _ => return Route::NotFound,
    };
    if group == "subresources.kubevirt.io" {
        return match rest {
            ["namespaces", ns, "virtualmachineinstances", name, kind]
                if matches!(version, "v1" | "v1alpha3") =>
            {
                Route::KubeVirtSubresource {
                    namespace: ns.to_string(),
                    name: name.to_string(),
                    kind: kind.to_string(),
                }
            }
            [
                "namespaces",
                ns,
                "virtualmachineinstances",
                name,
                "vnc",
                "screenshot",
            ] if matches!(version, "v1" | "v1alpha3") => Route::KubeVirtSubresource {
                namespace: ns.to_string(),
                name: name.to_string(),
                kind: "vnc/screenshot".to_string(),
            },
            _ => Route::NotFound,
        };
    }
    if rest.iter().any(|s| s.is_empty()) {
        return Route::NotFound;
    }
    let lookup = |resource: &str| ResourceType::lookup(group, version, resource);
    // `/namespaces/{ns}/{resource}…` when {resource} is a namespaced type; otherwise the segments
    // name a cluster-scoped object (possibly the namespace itself and one of its subresources).
    if let ["namespaces", ns, resource, tail @ ..] = rest
        && let Some(rt) = lookup(resource).filter(|rt| rt.namespaced)
    {
        return object_route(rt, Some(ns.to_string()), tail);
    }
    match rest {
        [resource, tail @ ..] => match lookup(resource) {
            Some(rt) if !rt.namespaced || tail.is_empty() => object_route(rt, None, tail),
            _ => Route::NotFound,
        },
        [] => Route::NotFound,
    }
}

fn object_route(rt: ResourceType, namespace: Option<String>, tail: &[&str]) -> Route {
    let (name, subresource) = match tail {
        [] => (None, None),
        [name] => (Some(name.to_string()), None),
        [name, sub @ ..] => (Some(name.to_string()), Some(sub.join("/"))),
    };
    Route::Resource(ApiPath {
        rt,
        namespace,
        name,
        subresource,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resource(path: &str) -> ApiPath {
        match route(path) {
            Route::Resource(p) => p,
            other => panic!("{path}: {other:?}"),
        }
    }

    #[test]
    fn path_shapes() {
        let p = resource("/api/v1/namespaces");
        assert_eq!(
            (p.rt.kind.as_str(), p.namespace, p.name),
            ("Namespace", None, None)
        );
        let p = resource("/api/v1/namespaces/lab-a");
        assert_eq!(p.name.as_deref(), Some("lab-a"));
        let p = resource("/api/v1/namespaces/lab-a/status");
        assert_eq!(
            (p.name.as_deref(), p.subresource.as_deref()),
            (Some("lab-a"), Some("status"))
        );
        let p = resource("/apis/networking.k8s.io/v1/namespaces/lab-a/networkpolicies/x");
        assert_eq!(p.rt.api_version(), "networking.k8s.io/v1");
        assert_eq!(
            (p.namespace.as_deref(), p.name.as_deref()),
            (Some("lab-a"), Some("x"))
        );
        let p = resource("/apis/kubevirt.io/v1/virtualmachineinstances");
        assert!(p.rt.namespaced && p.namespace.is_none() && p.name.is_none());
        let p = resource("/apis/admissionregistration.k8s.io/v1/validatingwebhookconfigurations/w");
        assert_eq!(p.name.as_deref(), Some("w"));
        assert_eq!(
            route(
                "/apis/subresources.kubevirt.io/v1alpha3/namespaces/n/virtualmachineinstances/v/vnc"
            ),
            Route::KubeVirtSubresource {
                namespace: "n".into(),
                name: "v".into(),
                kind: "vnc".into()
            }
        );
        assert_eq!(
            route(
                "/apis/subresources.kubevirt.io/v1/namespaces/n/virtualmachineinstances/v/vnc/screenshot"
            ),
            Route::KubeVirtSubresource {
                namespace: "n".into(),
                name: "v".into(),
                kind: "vnc/screenshot".into()
            }
        );
        assert_eq!(
            route(
                "/apis/subresources.kubevirt.io/v1/namespaces/n/virtualmachineinstances/v/console/screenshot"
            ),
            Route::NotFound
        );
        assert_eq!(route("/apis/kubevirt.io/v1/pods"), Route::NotFound);
        assert_eq!(route("/healthz"), Route::NotFound);
        assert_eq!(route("/api/v1/pods/x"), Route::NotFound);
    }
}
