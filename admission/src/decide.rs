//! The admission decision: a pure function of the review, a cluster view and the rules.
//!
//! No I/O happens here, so every decision takes microseconds and is table-tested.

use std::collections::BTreeMap;

use k8s_openapi::api::networking::v1::NetworkPolicySpec;
use kube::core::DynamicObject;
use kube::core::admission::{AdmissionRequest, AdmissionResponse, Operation};
use kube::core::response::StatusSummary;
use labgate_policies::workloads::is_gated;
use labgate_policies::{
    EgressMode, ISOLATION_POLICY_NAME, LAB_LABEL, Lab, MEMBERS_ANNOTATION, OWNER_ANNOTATION,
    OWNER_HASH_LABEL,
};

/// Audit annotation key set on every denial. The API server prefixes it with
/// the webhook's name (`<webhook>/denied-rule`); a key with its own `/` would
/// be rejected there, so it has none.
pub const DENIED_RULE_ANNOTATION: &str = "denied-rule";

/// What the cache knows about a namespace.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NamespaceState {
    /// Labelled `labgate.io/lab=true`.
    Lab {
        /// Phase `Terminating` or a deletion timestamp is set.
        terminating: bool,
    },
    /// Exists and is not a lab.
    NotLab,
    /// Not (yet) in the cache: either brand new or the cache is not synced.
    Unknown,
}

/// What the cache knows about the isolation policy of one namespace.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PolicyState {
    /// No policy named `labgate-isolation`.
    Missing,
    /// Present with exactly the canonical spec.
    Canonical,
    /// Present with another spec (forced through or from an older mode).
    Drifted,
}

/// Read-only view of the cluster the decision needs (fed by watches).
pub trait ClusterView {
    /// State of namespace `name`.
    fn namespace(&self, name: &str) -> NamespaceState;
    /// State of the isolation policy in namespace `name`.
    fn policy(&self, namespace: &str) -> PolicyState;
    /// Whether the view has synced (drives `/readyz`).
    fn ready(&self) -> bool {
        true
    }
}

/// The configured part of the rules.
#[derive(Debug, Clone, Default)]
pub struct Rules {
    /// Usernames allowed to create labs and change their owner, members or marking.
    pub portal_users: Vec<String>,
    /// Groups whose members have the same rights.
    pub portal_groups: Vec<String>,
    /// Usernames that may delete the isolation policy (namespace cleanup).
    pub namespace_controller_users: Vec<String>,
    /// The canonical policy's egress mode.
    pub egress: EgressMode,
    /// Namespaces besides `default` and `kube-*` that are never labs: the
    /// service's own (`--service-namespace`) and `--exempt-namespace`.
    pub exempt_namespaces: Vec<String>,
}

impl Rules {
    /// True for namespaces that must never be treated as labs.
    pub fn is_exempt(&self, namespace: &str) -> bool {
        labgate_policies::lab::is_system_namespace(namespace)
            || self.exempt_namespaces.iter().any(|n| n == namespace)
    }
}

/// Each rule has a stable name used in messages, audit annotations and docs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rule {
    /// Workload created in a lab before its isolation policy is in place.
    PolicyMissing,
    /// Workload created in a namespace the service has not seen yet.
    NamespaceNotSynced,
    /// DELETE of the isolation policy while the lab exists.
    PolicyProtected,
    /// UPDATE leaving the isolation policy with a non-canonical spec.
    PolicyImmutable,
    /// CREATE of `labgate-isolation` with a non-canonical spec.
    PolicyNameReserved,
    /// Non-portal principal writes a NetworkPolicy other than `labgate-isolation` in a lab.
    PolicyWritesRestricted,
    /// Non-portal principal marks a namespace as a lab.
    LabCreateRestricted,
    /// Non-portal principal changes `labgate.io/owner` or `labgate.io/owner-hash`.
    OwnerImmutable,
    /// Non-portal principal changes `labgate.io/members`.
    MembersImmutable,
    /// Non-portal principal removes or changes `labgate.io/lab`.
    LabMarkingImmutable,
    /// A portal writes a lab whose owner record is incomplete or inconsistent.
    LabMalformed,
    /// A lab workload uses host networking/ports or a network outside the lab.
    WorkloadNetworkRestricted,
    /// Anyone marks a system or exempt namespace as a lab.
    LabNamespaceExempt,
    /// The review lacks the object the rule needs.
    MalformedRequest,
}

impl Rule {
    /// Every rule, for metrics registered at 0.
    pub const ALL: [Rule; 14] = [
        Rule::WorkloadNetworkRestricted,
        Rule::PolicyMissing,
        Rule::NamespaceNotSynced,
        Rule::PolicyProtected,
        Rule::PolicyImmutable,
        Rule::PolicyNameReserved,
        Rule::PolicyWritesRestricted,
        Rule::LabCreateRestricted,
        Rule::OwnerImmutable,
        Rule::MembersImmutable,
        Rule::LabMarkingImmutable,
        Rule::LabMalformed,
        Rule::LabNamespaceExempt,
        Rule::MalformedRequest,
    ];

    /// Stable kebab-case name.
    pub fn name(self) -> &'static str {
        match self {
            Rule::PolicyMissing => "policy-missing",
            Rule::NamespaceNotSynced => "namespace-not-synced",
            Rule::PolicyProtected => "policy-protected",
            Rule::PolicyImmutable => "policy-immutable",
            Rule::PolicyNameReserved => "policy-name-reserved",
            Rule::PolicyWritesRestricted => "policy-writes-restricted",
            Rule::LabCreateRestricted => "lab-create-restricted",
            Rule::OwnerImmutable => "owner-immutable",
            Rule::MembersImmutable => "members-immutable",
            Rule::LabMarkingImmutable => "lab-marking-immutable",
            Rule::LabMalformed => "lab-malformed",
            Rule::LabNamespaceExempt => "lab-namespace-exempt",
            Rule::WorkloadNetworkRestricted => "workload-network-restricted",
            Rule::MalformedRequest => "malformed-request",
        }
    }
}

/// The outcome of one review.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// Whether the request may proceed.
    pub allowed: bool,
    /// The rule that denied it.
    pub rule: Option<Rule>,
    /// Human-readable reason (always set on denials).
    pub message: String,
}

impl Decision {
    fn allow() -> Decision {
        Decision {
            allowed: true,
            rule: None,
            message: String::new(),
        }
    }

    fn deny(rule: Rule, detail: impl std::fmt::Display) -> Decision {
        Decision {
            allowed: false,
            rule: Some(rule),
            message: format!("labgate: rule {}: {detail}", rule.name()),
        }
    }

    /// The AdmissionResponse for `req`: uid echoed; denials carry code 403, the
    /// message and the `denied-rule` audit annotation.
    pub fn into_response(self, req: &AdmissionRequest<DynamicObject>) -> AdmissionResponse {
        let response = AdmissionResponse::from(req);
        if self.allowed {
            return response;
        }
        let mut response = response.deny(&self.message);
        response.result.code = 403;
        response.result.reason = "Forbidden".to_string();
        response.result.status = Some(StatusSummary::Failure);
        if let Some(rule) = self.rule {
            response
                .audit_annotations
                .insert(DENIED_RULE_ANNOTATION.to_string(), rule.name().to_string());
        }
        response
    }
}

/// The resource family of a request, for metrics (bounded label values).
pub fn kind_label(req: &AdmissionRequest<DynamicObject>) -> &'static str {
    let (group, resource) = (req.resource.group.as_str(), req.resource.resource.as_str());
    match (group, resource) {
        ("", "namespaces") => "Namespace",
        ("networking.k8s.io", "networkpolicies") => "NetworkPolicy",
        ("", "pods") => "Pod",
        ("kubevirt.io", "virtualmachineinstances") => "VirtualMachineInstance",
        ("kubevirt.io", "virtualmachines") => "VirtualMachine",
        _ if is_gated(group, resource) => "OtherWorkload",
        _ => "Other",
    }
}

/// Decides one admission request.
///
/// Documented rule for reviews that parse but do not fit: kinds other than
/// namespaces, the isolation policy and gated workloads are allowed untouched
/// (so are CONNECT and subresources of workloads); a request that concerns a
/// lab but lacks the object the rule needs (e.g. a namespace UPDATE without
/// `oldObject`) is denied with rule `malformed-request`.
///
/// Isolation-policy and workload requests reach the webhook only from
/// namespaces the API server sees as labs (the `namespaceSelector`
/// `labgate.io/lab In [true]` of `policies.` and `workloads.` in
/// `policies/manifests/validating-webhook.yaml`, pinned by the manifest tests).
/// So for them a cache answer of "not a lab" means the cache is behind (the
/// namespace was just marked), and the request is decided as in a lab whose
/// state is not confirmed yet: fail closed, never open. (The reverse lag, the
/// API server still matching a namespace a portal has just unmarked, makes
/// that denial spurious but brief: a retry no longer reaches the webhook.)
pub fn decide(
    req: &AdmissionRequest<DynamicObject>,
    view: &(impl ClusterView + ?Sized),
    rules: &Rules,
) -> Decision {
    let group = req.resource.group.as_str();
    let resource = req.resource.resource.as_str();
    match (group, resource) {
        ("", "namespaces") => decide_namespace(req, rules),
        ("networking.k8s.io", "networkpolicies") => decide_policy(req, view, rules),
        _ if is_gated(group, resource) => decide_workload(req, view),
        _ => Decision::allow(),
    }
}

/// True when the requester is a configured portal principal.
fn is_portal(req: &AdmissionRequest<DynamicObject>, rules: &Rules) -> bool {
    let user = &req.user_info;
    let by_name = user
        .username
        .as_deref()
        .is_some_and(|u| rules.portal_users.iter().any(|p| p == u));
    let by_group = user
        .groups
        .iter()
        .flatten()
        .any(|g| rules.portal_groups.iter().any(|p| p == g));
    by_name || by_group
}

fn username(req: &AdmissionRequest<DynamicObject>) -> &str {
    req.user_info.username.as_deref().unwrap_or("<unknown>")
}

/// The contract fields of a namespace, as written (not validated).
#[derive(Debug, Default, PartialEq, Eq)]
struct LabRecord<'a> {
    lab: Option<&'a str>,
    owner_hash: Option<&'a str>,
    owner: Option<&'a str>,
    members: Option<&'a str>,
}

impl<'a> LabRecord<'a> {
    fn of(obj: &'a DynamicObject) -> LabRecord<'a> {
        let label = |k: &str| {
            obj.metadata
                .labels
                .as_ref()
                .and_then(|m| m.get(k))
                .map(String::as_str)
        };
        let annotation = |k: &str| {
            obj.metadata
                .annotations
                .as_ref()
                .and_then(|m| m.get(k))
                .map(String::as_str)
        };
        LabRecord {
            lab: label(LAB_LABEL),
            owner_hash: label(OWNER_HASH_LABEL),
            owner: annotation(OWNER_ANNOTATION),
            members: annotation(MEMBERS_ANNOTATION),
        }
    }

    fn is_lab(&self) -> bool {
        self.lab == Some("true")
    }
}

/// Rules 4: only portal principals create labs or change their record.
fn decide_namespace(req: &AdmissionRequest<DynamicObject>, rules: &Rules) -> Decision {
    let portal = is_portal(req, rules);
    match req.operation {
        Operation::Create => {
            let Some(new) = req.object.as_ref() else {
                return Decision::deny(Rule::MalformedRequest, "namespace CREATE without object");
            };
            let record = LabRecord::of(new);
            if !record.is_lab() {
                return Decision::allow();
            }
            if let Some(denial) = exempt_denial(req, new, rules) {
                return denial;
            }
            if !portal {
                return Decision::deny(
                    Rule::LabCreateRestricted,
                    format!(
                        "only portal principals may create a lab namespace ({LAB_LABEL}=true); \
                         user {:?} is not one",
                        username(req)
                    ),
                );
            }
            check_well_formed(req, new)
        }
        Operation::Update => {
            let (Some(new), Some(old)) = (req.object.as_ref(), req.old_object.as_ref()) else {
                return Decision::deny(
                    Rule::MalformedRequest,
                    "namespace UPDATE without object and oldObject",
                );
            };
            let (before, after) = (LabRecord::of(old), LabRecord::of(new));
            if before == after {
                return Decision::allow();
            }
            if after.is_lab()
                && let Some(denial) = exempt_denial(req, new, rules)
            {
                return denial;
            }
            if portal {
                return if after.is_lab() {
                    check_well_formed(req, new)
                } else {
                    Decision::allow()
                };
            }
            let who = username(req);
            if before.lab != after.lab && !after.is_lab() {
                Decision::deny(
                    Rule::LabMarkingImmutable,
                    format!(
                        "only portal principals may remove or change the lab marking {LAB_LABEL}; user {who:?} is not one"
                    ),
                )
            } else if !before.is_lab() && after.is_lab() {
                Decision::deny(
                    Rule::LabCreateRestricted,
                    format!(
                        "only portal principals may mark a namespace as a lab ({LAB_LABEL}=true); user {who:?} is not one"
                    ),
                )
            } else if before.owner != after.owner || before.owner_hash != after.owner_hash {
                Decision::deny(
                    Rule::OwnerImmutable,
                    format!(
                        "only portal principals may change {OWNER_ANNOTATION} or {OWNER_HASH_LABEL}; user {who:?} is not one"
                    ),
                )
            } else {
                Decision::deny(
                    Rule::MembersImmutable,
                    format!(
                        "only portal principals may change {MEMBERS_ANNOTATION}; user {who:?} is not one"
                    ),
                )
            }
        }
        Operation::Delete | Operation::Connect => Decision::allow(),
    }
}

/// System and exempt namespaces are never labs, for anyone: the reconciler
/// would isolate them (cluster DNS, or this webhook's own reachability).
fn exempt_denial(
    req: &AdmissionRequest<DynamicObject>,
    obj: &DynamicObject,
    rules: &Rules,
) -> Option<Decision> {
    let name = obj.metadata.name.as_deref().unwrap_or(req.name.as_str());
    rules.is_exempt(name).then(|| {
        Decision::deny(
            Rule::LabNamespaceExempt,
            format!(
                "namespace {name:?} is a system or labgate-exempt namespace and can never be a lab \
                 ({LAB_LABEL}=true)"
            ),
        )
    })
}

/// A portal's lab must carry a consistent owner record, or the gateway
/// would treat it as malformed and admit nobody.
fn check_well_formed(req: &AdmissionRequest<DynamicObject>, obj: &DynamicObject) -> Decision {
    let empty = BTreeMap::new();
    let name = obj.metadata.name.as_deref().unwrap_or(req.name.as_str());
    let labels = obj.metadata.labels.as_ref().unwrap_or(&empty);
    let annotations = obj.metadata.annotations.as_ref().unwrap_or(&empty);
    match Lab::from_metadata(name, labels, annotations) {
        Ok(_) => Decision::allow(),
        Err(e) => Decision::deny(Rule::LabMalformed, e),
    }
}

/// Rules 3: the isolation policy cannot be removed or weakened in a lab.
fn decide_policy(
    req: &AdmissionRequest<DynamicObject>,
    view: &(impl ClusterView + ?Sized),
    rules: &Rules,
) -> Decision {
    if req.sub_resource.is_some() {
        return Decision::allow();
    }
    let name = match (&req.object, &req.old_object) {
        _ if !req.name.is_empty() => req.name.as_str(),
        (Some(o), _) | (None, Some(o)) => o.metadata.name.as_deref().unwrap_or(""),
        (None, None) => "",
    };
    let Some(namespace) = req.namespace.as_deref().filter(|n| !n.is_empty()) else {
        return Decision::deny(
            Rule::MalformedRequest,
            "NetworkPolicy request without namespace",
        );
    };
    // The webhook configuration only sends lab namespaces (see `decide`): a
    // namespace the cache has not seen yet, or still sees as not a lab, is
    // behind the API server and treated as a live lab so the policy stays put.
    let terminating = match view.namespace(namespace) {
        NamespaceState::Lab { terminating } => terminating,
        NamespaceState::NotLab | NamespaceState::Unknown => false,
    };
    let controller = rules
        .namespace_controller_users
        .iter()
        .any(|u| Some(u.as_str()) == req.user_info.username.as_deref());
    if name != ISOLATION_POLICY_NAME {
        return decide_other_policy(req, rules, namespace, terminating || controller);
    }
    match req.operation {
        Operation::Delete => {
            if terminating || controller {
                Decision::allow()
            } else {
                Decision::deny(
                    Rule::PolicyProtected,
                    format!(
                        "NetworkPolicy {ISOLATION_POLICY_NAME} isolates lab {namespace:?} and cannot be \
                         deleted while the lab exists (delete the namespace instead)"
                    ),
                )
            }
        }
        Operation::Create | Operation::Update => {
            let Some(obj) = req.object.as_ref() else {
                return Decision::deny(
                    Rule::MalformedRequest,
                    "NetworkPolicy write without object",
                );
            };
            let spec = obj
                .data
                .get("spec")
                .and_then(|s| serde_json::from_value::<NetworkPolicySpec>(s.clone()).ok());
            if rules.egress.is_canonical(spec.as_ref()) {
                return Decision::allow();
            }
            if req.operation == Operation::Create {
                Decision::deny(
                    Rule::PolicyNameReserved,
                    format!(
                        "the name {ISOLATION_POLICY_NAME} is reserved for lab {namespace:?}'s canonical \
                         isolation policy; only portal principals may add other NetworkPolicies"
                    ),
                )
            } else {
                Decision::deny(
                    Rule::PolicyImmutable,
                    format!(
                        "the spec of NetworkPolicy {ISOLATION_POLICY_NAME} in lab {namespace:?} is managed by \
                         labgate-admission and cannot be changed"
                    ),
                )
            }
        }
        Operation::Connect => Decision::allow(),
    }
}

/// Rule 3b: NetworkPolicies are additive allow-lists and `labgate-isolation`
/// already selects every pod in both directions, so any other policy in a lab
/// can only widen what the lab may reach. Only portal principals write them;
/// the namespace controller (or anyone while the lab terminates) may delete them.
fn decide_other_policy(
    req: &AdmissionRequest<DynamicObject>,
    rules: &Rules,
    namespace: &str,
    cleanup: bool,
) -> Decision {
    if req.operation == Operation::Connect || is_portal(req, rules) {
        return Decision::allow();
    }
    if req.operation == Operation::Delete && cleanup {
        return Decision::allow();
    }
    Decision::deny(
        Rule::PolicyWritesRestricted,
        format!(
            "in lab {namespace:?} only portal principals may create, change or delete \
             NetworkPolicies other than {ISOLATION_POLICY_NAME} (any extra NetworkPolicy \
             widens the lab's isolation); user {:?} is not one",
            username(req)
        ),
    )
}

/// Multus annotation on pods (and pod templates).
const MULTUS_ANNOTATION: &str = "k8s.v1.cni.cncf.io/networks";

/// Why a workload would bypass NetworkPolicy, if it does: host namespaces or
/// ports, Multus networks defined in another namespace, SR-IOV interfaces.
/// Secondary networks inside the lab's own namespace stay allowed (their
/// NetworkAttachmentDefinition is lab content, written by whoever may).
fn network_escape(resource: &str, obj: &serde_json::Value, ns: &str) -> Option<String> {
    let at = |p: &str| obj.pointer(p).cloned().unwrap_or(serde_json::Value::Null);
    // (pod template metadata+spec, VMI spec) locations per kind.
    let (pod, vmi) = match resource {
        "pods" => (Some(at("")), None),
        "deployments" | "replicasets" | "statefulsets" | "daemonsets" | "jobs" => {
            (Some(at("/spec/template")), None)
        }
        "cronjobs" => (Some(at("/spec/jobTemplate/spec/template")), None),
        "virtualmachineinstances" => (None, Some(at("/spec"))),
        "virtualmachines" | "virtualmachineinstancereplicasets" => {
            (None, Some(at("/spec/template/spec")))
        }
        "virtualmachinepools" => (
            None,
            Some(at("/spec/virtualMachineTemplate/spec/template/spec")),
        ),
        _ => (None, None),
    };
    if let Some(pod) = pod {
        let spec = &pod["spec"];
        for field in ["hostNetwork", "hostPID", "hostIPC"] {
            if spec[field] == serde_json::Value::Bool(true) {
                return Some(format!("{field} is not allowed in a lab"));
            }
        }
        let containers = ["containers", "initContainers", "ephemeralContainers"];
        for c in containers
            .iter()
            .flat_map(|k| spec[*k].as_array().into_iter().flatten())
        {
            for port in c["ports"].as_array().into_iter().flatten() {
                if port.get("hostPort").is_some_and(|p| !p.is_null() && p != 0) {
                    return Some("hostPort is not allowed in a lab".into());
                }
            }
        }
        if let Some(nets) = pod["metadata"]["annotations"][MULTUS_ANNOTATION].as_str()
            && let Some(other) = foreign_multus(nets, ns)
        {
            return Some(format!(
                "Multus network {other:?} is defined outside the lab"
            ));
        }
    }
    if let Some(spec) = vmi {
        for net in spec["networks"].as_array().into_iter().flatten() {
            if let Some(name) = net.pointer("/multus/networkName").and_then(|v| v.as_str())
                && name.split_once('/').is_some_and(|(n, _)| n != ns)
            {
                return Some(format!(
                    "Multus network {name:?} is defined outside the lab"
                ));
            }
        }
        for iface in spec
            .pointer("/domain/devices/interfaces")
            .and_then(|v| v.as_array())
            .into_iter()
            .flatten()
        {
            if iface.get("sriov").is_some() {
                return Some("SR-IOV interfaces are not allowed in a lab".into());
            }
        }
    }
    None
}

/// The first Multus network (comma list `ns/name@if` or JSON list) outside `ns`.
fn foreign_multus(value: &str, ns: &str) -> Option<String> {
    let value = value.trim();
    if value.starts_with('[') {
        let Ok(list) = serde_json::from_str::<Vec<serde_json::Value>>(value) else {
            return Some(value.to_string()); // unparsable: refuse rather than guess
        };
        return list.iter().find_map(|n| {
            let other = n["namespace"].as_str().filter(|x| *x != ns)?;
            Some(format!("{other}/{}", n["name"].as_str().unwrap_or("")))
        });
    }
    value.split(',').map(str::trim).find_map(|n| {
        let (other, _) = n.split_once('/')?;
        (other != ns).then(|| n.to_string())
    })
}

/// Rule 2: nothing runs in a lab before its isolation policy, and no
/// workload leaves the NetworkPolicy's reach (host networking, networks from
/// other namespaces, SR-IOV), neither when created nor by a later edit.
fn decide_workload(
    req: &AdmissionRequest<DynamicObject>,
    view: &(impl ClusterView + ?Sized),
) -> Decision {
    let creating = req.operation == Operation::Create;
    if !(creating || req.operation == Operation::Update) || req.sub_resource.is_some() {
        return Decision::allow();
    }
    let Some(namespace) = req.namespace.as_deref().filter(|n| !n.is_empty()) else {
        return Decision::deny(Rule::MalformedRequest, "workload request without namespace");
    };
    let verb = if creating { "create" } else { "update" };
    let what = format!("{} in namespace {namespace:?}", req.kind.kind);
    // DynamicObject keeps metadata apart from data; the pod checks need both.
    let full = |obj: &Option<DynamicObject>| {
        obj.as_ref().map(|obj| {
            let mut full = obj.data.clone();
            if let Ok(meta) = serde_json::to_value(&obj.metadata)
                && full.is_object()
            {
                full["metadata"] = meta;
            }
            full
        })
    };
    let escape = |obj: &Option<DynamicObject>| {
        full(obj).and_then(|o| network_escape(&req.resource.resource, &o, namespace))
    };
    if let Some(why) = escape(&req.object) {
        // An edit is refused only when it opens the escape: an object that
        // already had it (created before labgate, or by an exempt path) must
        // stay manageable by its controllers (KubeVirt updates its VMIs).
        if creating || escape(&req.old_object).is_none() {
            return Decision::deny(
                Rule::WorkloadNetworkRestricted,
                format!(
                    "cannot {verb} {what}: {why}; NetworkPolicy does not cover it, so it would \
                     leave the lab's isolation"
                ),
            );
        }
    }
    if !creating {
        // Existing workloads keep running; the policy gate is for new ones.
        return Decision::allow();
    }
    match view.namespace(namespace) {
        // Only lab namespaces are sent (see `decide`): the cache is behind.
        NamespaceState::NotLab => Decision::deny(
            Rule::NamespaceNotSynced,
            format!(
                "cannot create {what}: the API server sees this namespace as a lab but \
                 labgate-admission's view of it is not up to date yet, so its isolation \
                 NetworkPolicy {ISOLATION_POLICY_NAME} cannot be confirmed; retry shortly"
            ),
        ),
        NamespaceState::Unknown => Decision::deny(
            Rule::NamespaceNotSynced,
            format!(
                "cannot create {what}: labgate-admission has not seen this namespace yet, so its \
                 isolation NetworkPolicy {ISOLATION_POLICY_NAME} cannot be confirmed; retry shortly"
            ),
        ),
        NamespaceState::Lab { .. } => match view.policy(namespace) {
            PolicyState::Canonical => Decision::allow(),
            PolicyState::Missing => Decision::deny(
                Rule::PolicyMissing,
                format!(
                    "cannot create {what}: the lab does not hold its isolation NetworkPolicy \
                     {ISOLATION_POLICY_NAME} yet; labgate-admission creates it within moments, retry shortly"
                ),
            ),
            PolicyState::Drifted => Decision::deny(
                Rule::PolicyMissing,
                format!(
                    "cannot create {what}: the lab's isolation NetworkPolicy {ISOLATION_POLICY_NAME} does \
                     not have the canonical spec; labgate-admission is repairing it, retry shortly"
                ),
            ),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use labgate_policies::owner_hash;
    use serde_json::{Value, json};
    use std::collections::HashMap;

    const PORTAL: &str = "system:serviceaccount:portal:portal";

    /// A requester: username and groups.
    type User<'a> = (&'a str, &'a [&'a str]);
    /// Namespace case: what, operation, user, object, oldObject, expectation.
    type NsCase<'a> = (
        &'a str,
        &'a str,
        User<'a>,
        &'a Value,
        &'a Value,
        Result<(), Rule>,
    );
    /// Policy case: what, operation, namespace, name, user, object, oldObject, expectation.
    type NpCase<'a> = (
        &'a str,
        &'a str,
        &'a str,
        &'a str,
        User<'a>,
        &'a Value,
        &'a Value,
        Result<(), Rule>,
    );

    /// Workload case: what, resource, object, expectation.
    type WlCase<'a> = (
        &'a str,
        (&'a str, &'a str, &'a str, &'a str),
        Value,
        Result<(), Rule>,
    );

    #[derive(Default)]
    struct View {
        namespaces: HashMap<&'static str, NamespaceState>,
        policies: HashMap<&'static str, PolicyState>,
    }

    impl ClusterView for View {
        fn namespace(&self, name: &str) -> NamespaceState {
            self.namespaces
                .get(name)
                .copied()
                .unwrap_or(NamespaceState::Unknown)
        }
        fn policy(&self, namespace: &str) -> PolicyState {
            self.policies
                .get(namespace)
                .copied()
                .unwrap_or(PolicyState::Missing)
        }
    }

    fn view() -> View {
        let mut v = View::default();
        v.namespaces
            .insert("lab-ok", NamespaceState::Lab { terminating: false });
        v.policies.insert("lab-ok", PolicyState::Canonical);
        v.namespaces
            .insert("lab-new", NamespaceState::Lab { terminating: false });
        v.namespaces
            .insert("lab-drift", NamespaceState::Lab { terminating: false });
        v.policies.insert("lab-drift", PolicyState::Drifted);
        v.namespaces
            .insert("lab-gone", NamespaceState::Lab { terminating: true });
        v.policies.insert("lab-gone", PolicyState::Canonical);
        v.namespaces.insert("plain", NamespaceState::NotLab);
        v
    }

    fn rules() -> Rules {
        Rules {
            portal_users: vec![PORTAL.into()],
            portal_groups: vec!["portals".into()],
            namespace_controller_users: vec![crate::config::DEFAULT_NAMESPACE_CONTROLLER.into()],
            egress: EgressMode::Standard,
            exempt_namespaces: vec!["labgate-system".into(), "monitoring".into()],
        }
    }

    fn review(
        (group, version, resource, kind): (&str, &str, &str, &str),
        op: &str,
        ns: Option<&str>,
        name: &str,
        user: (&str, &[&str]),
        object: Value,
        old: Value,
    ) -> AdmissionRequest<DynamicObject> {
        let options = match op {
            "CREATE" => "CreateOptions",
            "UPDATE" => "UpdateOptions",
            _ => "DeleteOptions",
        };
        let v = json!({
            "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
            "request": {
                "uid": "3f5e7a0e-1111-4b4b-9c9c-000000000001",
                "kind": {"group": group, "version": version, "kind": kind},
                "resource": {"group": group, "version": version, "resource": resource},
                "requestKind": {"group": group, "version": version, "kind": kind},
                "requestResource": {"group": group, "version": version, "resource": resource},
                "name": name, "namespace": ns, "operation": op,
                "userInfo": {"username": user.0, "uid": "u-1", "groups": user.1},
                "object": object, "oldObject": old, "dryRun": false,
                "options": {"apiVersion": "meta.k8s.io/v1", "kind": options}
            }
        });
        let review: kube::core::admission::AdmissionReview<DynamicObject> =
            serde_json::from_value(v).unwrap();
        review.try_into().unwrap()
    }

    const NS: (&str, &str, &str, &str) = ("", "v1", "namespaces", "Namespace");
    const NP: (&str, &str, &str, &str) = (
        "networking.k8s.io",
        "v1",
        "networkpolicies",
        "NetworkPolicy",
    );
    const POD: (&str, &str, &str, &str) = ("", "v1", "pods", "Pod");
    const VMI: (&str, &str, &str, &str) = (
        "kubevirt.io",
        "v1",
        "virtualmachineinstances",
        "VirtualMachineInstance",
    );

    fn lab_ns(name: &str, owner: &str, members: Option<&str>) -> Value {
        let mut ns = json!({
            "apiVersion": "v1", "kind": "Namespace",
            "metadata": {
                "name": name,
                "labels": {"kubernetes.io/metadata.name": name, LAB_LABEL: "true", OWNER_HASH_LABEL: owner_hash(owner)},
                "annotations": {OWNER_ANNOTATION: owner}
            }
        });
        if let Some(m) = members {
            ns["metadata"]["annotations"][MEMBERS_ANNOTATION] = json!(m);
        }
        ns
    }

    fn policy(ns: &str, mode: EgressMode) -> Value {
        serde_json::to_value(mode.policy(ns)).unwrap()
    }

    fn check(req: &AdmissionRequest<DynamicObject>, expect: Result<(), Rule>) {
        let d = decide(req, &view(), &rules());
        match expect {
            Ok(()) => assert!(d.allowed, "expected allow, got {d:?}"),
            Err(rule) => {
                assert!(!d.allowed, "expected deny by {rule:?}, got allow");
                assert_eq!(d.rule, Some(rule));
                assert!(
                    d.message
                        .starts_with(&format!("labgate: rule {}: ", rule.name())),
                    "{}",
                    d.message
                );
            }
        }
    }

    const STUDENT: (&str, &[&str]) = ("alice@example.com", &["system:authenticated", "students"]);
    const PORTAL_SA: (&str, &[&str]) = (
        PORTAL,
        &[
            "system:serviceaccounts",
            "system:serviceaccounts:portal",
            "system:authenticated",
        ],
    );
    const PORTAL_GROUP_MEMBER: (&str, &[&str]) =
        ("portal-bot", &["portals", "system:authenticated"]);

    #[test]
    fn namespace_rules() {
        let lab = lab_ns("lab-a", "alice@example.com", None);
        let plain = json!({"metadata": {"name": "scratch", "labels": {"team": "x"}}});
        let null = Value::Null;
        let mut stripped = lab.clone();
        stripped["metadata"]["labels"]
            .as_object_mut()
            .unwrap()
            .remove(LAB_LABEL);
        let mut falsified = lab.clone();
        falsified["metadata"]["labels"][LAB_LABEL] = json!("false");
        let mut new_owner = lab.clone();
        new_owner["metadata"]["annotations"][OWNER_ANNOTATION] = json!("mallory@example.com");
        new_owner["metadata"]["labels"][OWNER_HASH_LABEL] =
            json!(owner_hash("mallory@example.com"));
        let mut half_owner = lab.clone();
        half_owner["metadata"]["annotations"][OWNER_ANNOTATION] = json!("mallory@example.com");
        let with_members = lab_ns("lab-a", "alice@example.com", Some("bob@example.com"));
        let mut other_label = lab.clone();
        other_label["metadata"]["labels"]["course"] = json!("net101");

        #[rustfmt::skip]
        let table: Vec<NsCase<'_>> = vec![
            ("plain create by anyone", "CREATE", STUDENT, &plain, &null, Ok(())),
            ("lab create by student", "CREATE", STUDENT, &lab, &null, Err(Rule::LabCreateRestricted)),
            ("lab create by portal SA", "CREATE", PORTAL_SA, &lab, &null, Ok(())),
            ("lab create by portal group", "CREATE", PORTAL_GROUP_MEMBER, &lab, &null, Ok(())),
            ("portal creates half-owned lab", "CREATE", PORTAL_SA, &half_owner, &null, Err(Rule::LabMalformed)),
            ("student strips label", "UPDATE", STUDENT, &stripped, &lab, Err(Rule::LabMarkingImmutable)),
            ("student sets label false", "UPDATE", STUDENT, &falsified, &lab, Err(Rule::LabMarkingImmutable)),
            ("student relabels owner", "UPDATE", STUDENT, &new_owner, &lab, Err(Rule::OwnerImmutable)),
            ("student edits owner annotation", "UPDATE", STUDENT, &half_owner, &lab, Err(Rule::OwnerImmutable)),
            ("student adds member", "UPDATE", STUDENT, &with_members, &lab, Err(Rule::MembersImmutable)),
            ("student marks plain ns as lab", "UPDATE", STUDENT, &lab, &stripped, Err(Rule::LabCreateRestricted)),
            ("student adds unrelated label", "UPDATE", STUDENT, &other_label, &lab, Ok(())),
            ("portal relabels owner", "UPDATE", PORTAL_SA, &new_owner, &lab, Ok(())),
            ("portal adds member", "UPDATE", PORTAL_SA, &with_members, &lab, Ok(())),
            ("portal strips label", "UPDATE", PORTAL_SA, &stripped, &lab, Ok(())),
            ("portal half-edits owner", "UPDATE", PORTAL_SA, &half_owner, &lab, Err(Rule::LabMalformed)),
            ("update without oldObject", "UPDATE", STUDENT, &lab, &null, Err(Rule::MalformedRequest)),
            ("create without object", "CREATE", PORTAL_SA, &null, &null, Err(Rule::MalformedRequest)),
            ("namespace delete", "DELETE", STUDENT, &null, &lab, Ok(())),
        ];
        for (what, op, user, obj, old, expect) in table {
            let req = review(NS, op, None, "lab-a", user, obj.clone(), old.clone());
            let d = decide(&req, &view(), &rules());
            assert_eq!(d.allowed, expect.is_ok(), "{what}: {d:?}");
            assert_eq!(d.rule, expect.err(), "{what}: {d:?}");
            if !d.allowed {
                assert!(
                    d.message.contains("labgate: rule "),
                    "{what}: {}",
                    d.message
                );
            }
        }
    }

    #[test]
    fn exempt_namespaces_never_become_labs() {
        // Item 5: system namespaces and the service's own (or configured)
        // namespaces are exempt from the policy webhooks; marking one as a lab
        // would make the reconciler isolate it, so nobody may, portals included.
        let null = Value::Null;
        for ns in [
            "kube-system",
            "default",
            "kube-public",
            "labgate-system",
            "monitoring",
        ] {
            let lab = lab_ns(ns, "alice@example.com", None);
            let plain =
                json!({"metadata": {"name": ns, "labels": {"kubernetes.io/metadata.name": ns}}});
            for user in [PORTAL_SA, STUDENT] {
                for (op, obj, old) in [("CREATE", &lab, &null), ("UPDATE", &lab, &plain)] {
                    let req = review(NS, op, None, ns, user, obj.clone(), old.clone());
                    let d = decide(&req, &view(), &rules());
                    assert_eq!(
                        d.rule,
                        Some(Rule::LabNamespaceExempt),
                        "{ns} {op} {user:?}: {d:?}"
                    );
                }
            }
            // Removing the marking stays possible (recovery).
            let req = review(
                NS,
                "UPDATE",
                None,
                ns,
                PORTAL_SA,
                plain.clone(),
                lab.clone(),
            );
            assert!(decide(&req, &view(), &rules()).allowed, "{ns}");
        }
    }

    #[test]
    fn isolation_policy_rules() {
        let canonical = policy("lab-ok", EgressMode::Standard);
        let strict = policy("lab-ok", EgressMode::Strict);
        let mut open = canonical.clone();
        open["spec"]["policyTypes"] = json!(["Ingress"]);
        open["spec"].as_object_mut().unwrap().remove("egress");
        let mut mine = open.clone();
        mine["metadata"]["name"] = json!("mine");
        let mut relabelled = canonical.clone();
        relabelled["metadata"]["labels"]["note"] = json!("hi");
        let null = Value::Null;
        let name = ISOLATION_POLICY_NAME;
        let controller: (&str, &[&str]) = (crate::config::DEFAULT_NAMESPACE_CONTROLLER, &[]);
        let kcm: (&str, &[&str]) = ("system:kube-controller-manager", &[]);
        #[rustfmt::skip]
        let table: Vec<NpCase<'_>> = vec![
            ("delete in live lab", "DELETE", "lab-ok", name, STUDENT, &null, &canonical, Err(Rule::PolicyProtected)),
            ("delete by portal in live lab", "DELETE", "lab-ok", name, PORTAL_SA, &null, &canonical, Err(Rule::PolicyProtected)),
            ("delete while terminating (any user)", "DELETE", "lab-gone", name, kcm, &null, &canonical, Ok(())),
            ("delete by namespace controller", "DELETE", "lab-ok", name, controller, &null, &canonical, Ok(())),
            ("delete in unknown ns", "DELETE", "lab-fresh", name, STUDENT, &null, &canonical, Err(Rule::PolicyProtected)),
            ("delete where the cache lags (not a lab yet)", "DELETE", "plain", name, STUDENT, &null, &canonical, Err(Rule::PolicyProtected)),
            ("weak create where the cache lags", "CREATE", "plain", name, STUDENT, &open, &null, Err(Rule::PolicyNameReserved)),
            ("deletecollection item (empty name)", "DELETE", "lab-ok", "", STUDENT, &null, &canonical, Err(Rule::PolicyProtected)),
            ("delete other policy in lab", "DELETE", "lab-ok", "mine", STUDENT, &null, &mine, Err(Rule::PolicyWritesRestricted)),
            ("deletecollection item of other policy", "DELETE", "lab-ok", "", STUDENT, &null, &mine, Err(Rule::PolicyWritesRestricted)),
            ("portal deletes other policy", "DELETE", "lab-ok", "mine", PORTAL_SA, &null, &mine, Ok(())),
            ("controller deletes other policy", "DELETE", "lab-ok", "mine", controller, &null, &mine, Ok(())),
            ("other policy goes with its namespace", "DELETE", "lab-gone", "mine", kcm, &null, &mine, Ok(())),
            ("update weakening", "UPDATE", "lab-ok", name, STUDENT, &open, &canonical, Err(Rule::PolicyImmutable)),
            ("update to other mode", "UPDATE", "lab-ok", name, STUDENT, &strict, &canonical, Err(Rule::PolicyImmutable)),
            ("update metadata only", "UPDATE", "lab-ok", name, STUDENT, &relabelled, &canonical, Ok(())),
            ("update repairing drift", "UPDATE", "lab-drift", name, STUDENT, &canonical, &open, Ok(())),
            ("create canonical", "CREATE", "lab-new", name, STUDENT, &canonical, &null, Ok(())),
            ("create weak under reserved name", "CREATE", "lab-new", name, STUDENT, &open, &null, Err(Rule::PolicyNameReserved)),
            ("create open policy under other name", "CREATE", "lab-new", "mine", STUDENT, &mine, &null, Err(Rule::PolicyWritesRestricted)),
            ("create other policy where the cache lags", "CREATE", "plain", "mine", STUDENT, &mine, &null, Err(Rule::PolicyWritesRestricted)),
            ("update other policy", "UPDATE", "lab-ok", "mine", STUDENT, &mine, &mine, Err(Rule::PolicyWritesRestricted)),
            ("portal creates other policy", "CREATE", "lab-ok", "mine", PORTAL_SA, &mine, &null, Ok(())),
            ("portal group updates other policy", "UPDATE", "lab-ok", "mine", PORTAL_GROUP_MEMBER, &mine, &mine, Ok(())),
            ("create without object", "CREATE", "lab-new", name, STUDENT, &null, &null, Err(Rule::MalformedRequest)),
        ];
        for (what, op, ns, n, user, obj, old, expect) in table {
            let req = review(NP, op, Some(ns), n, user, obj.clone(), old.clone());
            let d = decide(&req, &view(), &rules());
            assert_eq!(d.allowed, expect.is_ok(), "{what}: {d:?}");
            assert_eq!(d.rule, expect.err(), "{what}: {d:?}");
        }
        // Strict mode makes the strict spec the only canonical one.
        let strict_rules = Rules {
            egress: EgressMode::Strict,
            ..rules()
        };
        let req = review(
            NP,
            "UPDATE",
            Some("lab-ok"),
            name,
            STUDENT,
            strict.clone(),
            canonical.clone(),
        );
        assert!(decide(&req, &view(), &strict_rules).allowed);
        let req = review(
            NP,
            "CREATE",
            Some("lab-ok"),
            name,
            STUDENT,
            canonical.clone(),
            Value::Null,
        );
        assert!(!decide(&req, &view(), &strict_rules).allowed);
    }

    #[test]
    fn workload_gate() {
        let pod = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"}, "spec": {"containers": []}});
        let vmi = json!({"apiVersion": "kubevirt.io/v1", "kind": "VirtualMachineInstance", "metadata": {"name": "vm"}});
        check(
            &review(
                POD,
                "CREATE",
                Some("lab-ok"),
                "p",
                STUDENT,
                pod.clone(),
                Value::Null,
            ),
            Ok(()),
        );
        check(
            &review(
                POD,
                "CREATE",
                Some("lab-new"),
                "p",
                STUDENT,
                pod.clone(),
                Value::Null,
            ),
            Err(Rule::PolicyMissing),
        );
        check(
            &review(
                POD,
                "CREATE",
                Some("lab-drift"),
                "p",
                PORTAL_SA,
                pod.clone(),
                Value::Null,
            ),
            Err(Rule::PolicyMissing),
        );
        check(
            &review(
                POD,
                "CREATE",
                Some("lab-fresh"),
                "p",
                PORTAL_SA,
                pod.clone(),
                Value::Null,
            ),
            Err(Rule::NamespaceNotSynced),
        );
        // Only namespaces the API server sees as labs are sent: a cache that
        // says "not a lab" is behind, and the gate stays closed.
        check(
            &review(
                POD,
                "CREATE",
                Some("plain"),
                "p",
                STUDENT,
                pod.clone(),
                Value::Null,
            ),
            Err(Rule::NamespaceNotSynced),
        );
        check(
            &review(
                VMI,
                "CREATE",
                Some("lab-new"),
                "vm",
                PORTAL_SA,
                vmi.clone(),
                Value::Null,
            ),
            Err(Rule::PolicyMissing),
        );
        check(
            &review(
                VMI,
                "CREATE",
                Some("lab-ok"),
                "vm",
                PORTAL_SA,
                vmi.clone(),
                Value::Null,
            ),
            Ok(()),
        );
        // Updates, deletes and subresources (e.g. evictions) are not gated.
        check(
            &review(
                POD,
                "UPDATE",
                Some("lab-new"),
                "p",
                STUDENT,
                pod.clone(),
                pod.clone(),
            ),
            Ok(()),
        );
        check(
            &review(
                POD,
                "DELETE",
                Some("lab-new"),
                "p",
                STUDENT,
                Value::Null,
                pod.clone(),
            ),
            Ok(()),
        );
        let mut eviction = review(
            POD,
            "CREATE",
            Some("lab-new"),
            "p",
            STUDENT,
            Value::Null,
            Value::Null,
        );
        eviction.sub_resource = Some("eviction".into());
        check(&eviction, Ok(()));
        // Every gated workload kind is gated, not only pods and VMIs.
        for w in labgate_policies::workloads::GATED_WORKLOADS {
            let req = review(
                (w.group, "v1", w.resource, "X"),
                "CREATE",
                Some("lab-new"),
                "x",
                STUDENT,
                json!({}),
                Value::Null,
            );
            check(&req, Err(Rule::PolicyMissing));
        }
        // Unknown kinds are allowed untouched.
        let cm = review(
            ("", "v1", "configmaps", "ConfigMap"),
            "CREATE",
            Some("lab-new"),
            "c",
            STUDENT,
            json!({}),
            Value::Null,
        );
        check(&cm, Ok(()));
    }

    #[test]
    fn workloads_cannot_leave_the_network_policy() {
        let deny = Err(Rule::WorkloadNetworkRestricted);
        let pod = |spec: Value, ann: Value| json!({"metadata": {"name": "p", "annotations": ann}, "spec": spec});
        let c = json!([{"name": "c", "image": "x"}]);
        #[rustfmt::skip]
        let table: Vec<WlCase<'_>> = vec![
            ("plain pod", POD, pod(json!({"containers": c}), json!({})), Ok(())),
            ("hostNetwork", POD, pod(json!({"hostNetwork": true, "containers": c}), json!({})), deny),
            ("hostPID", POD, pod(json!({"hostPID": true, "containers": c}), json!({})), deny),
            ("hostIPC", POD, pod(json!({"hostIPC": true, "containers": c}), json!({})), deny),
            ("hostPort", POD, pod(json!({"containers": [{"name": "c", "ports": [{"containerPort": 80, "hostPort": 8080}]}]}), json!({})), deny),
            ("multus other ns", POD, pod(json!({"containers": c}), json!({MULTUS_ANNOTATION: "default/macvlan"})), deny),
            ("multus json other ns", POD, pod(json!({"containers": c}), json!({MULTUS_ANNOTATION: "[{\"name\":\"m\",\"namespace\":\"kube-system\"}]"})), deny),
            ("multus garbage", POD, pod(json!({"containers": c}), json!({MULTUS_ANNOTATION: "[oops"})), deny),
            ("multus own ns", POD, pod(json!({"containers": c}), json!({MULTUS_ANNOTATION: "lab-ok/m, m2"})), Ok(())),
            ("deployment hostNetwork", ("apps", "v1", "deployments", "Deployment"), json!({"spec": {"template": {"spec": {"hostNetwork": true}}}}), deny),
            ("cronjob hostNetwork", ("batch", "v1", "cronjobs", "CronJob"), json!({"spec": {"jobTemplate": {"spec": {"template": {"spec": {"hostNetwork": true}}}}}}), deny),
            ("vmi pod network", VMI, json!({"spec": {"networks": [{"name": "default", "pod": {}}]}}), Ok(())),
            ("vmi multus other ns", VMI, json!({"spec": {"networks": [{"name": "n", "multus": {"networkName": "default/br"}}]}}), deny),
            ("vmi multus own ns", VMI, json!({"spec": {"networks": [{"name": "n", "multus": {"networkName": "lab-ok/br"}}]}}), Ok(())),
            ("vmi sriov", VMI, json!({"spec": {"domain": {"devices": {"interfaces": [{"name": "n", "sriov": {}}]}}}}), deny),
            ("vm multus other ns", ("kubevirt.io", "v1", "virtualmachines", "VirtualMachine"), json!({"spec": {"template": {"spec": {"networks": [{"name": "n", "multus": {"networkName": "other/br"}}]}}}}), deny),
            ("pool sriov", ("pool.kubevirt.io", "v1alpha1", "virtualmachinepools", "VirtualMachinePool"), json!({"spec": {"virtualMachineTemplate": {"spec": {"template": {"spec": {"domain": {"devices": {"interfaces": [{"name": "n", "sriov": {}}]}}}}}}}}), deny),
        ];
        for (what, rt, obj, expect) in table {
            for user in [STUDENT, PORTAL_SA] {
                let req = review(
                    rt,
                    "CREATE",
                    Some("lab-ok"),
                    "x",
                    user,
                    obj.clone(),
                    Value::Null,
                );
                let d = decide(&req, &view(), &rules());
                assert_eq!(d.rule, expect.err(), "{what}: {d:?}");
            }
        }
    }

    /// An edit that opens the escape is refused like a create; an object that
    /// already had it stays manageable (KubeVirt keeps updating its VMIs).
    #[test]
    fn workload_updates_cannot_open_an_escape() {
        let deploy = ("apps", "v1", "deployments", "Deployment");
        let plain = json!({"spec": {"template": {"spec": {"containers": [{"name": "c"}]}}}});
        let host = json!({"spec": {"template": {"spec": {"hostNetwork": true, "containers": [{"name": "c"}]}}}});
        let vm = ("kubevirt.io", "v1", "virtualmachines", "VirtualMachine");
        let vm_pod =
            json!({"spec": {"template": {"spec": {"networks": [{"name": "default", "pod": {}}]}}}});
        let vm_multus = json!({"spec": {"template": {"spec": {"networks": [{"name": "n", "multus": {"networkName": "other/br"}}]}}}});
        #[rustfmt::skip]
        let table = [
            ("deployment gains hostNetwork", deploy, plain.clone(), host.clone(), Some(Rule::WorkloadNetworkRestricted)),
            ("deployment stays plain", deploy, plain.clone(), plain.clone(), None),
            ("deployment already had hostNetwork", deploy, host.clone(), host.clone(), None),
            ("vm gains a multus network of another namespace", vm, vm_pod.clone(), vm_multus.clone(), Some(Rule::WorkloadNetworkRestricted)),
            ("vm drops it", vm, vm_multus.clone(), vm_pod.clone(), None),
        ];
        for (what, rt, old, new, expect) in table {
            for user in [STUDENT, PORTAL_SA] {
                let req = review(
                    rt,
                    "UPDATE",
                    Some("lab-ok"),
                    "x",
                    user,
                    new.clone(),
                    old.clone(),
                );
                let d = decide(&req, &view(), &rules());
                assert_eq!(d.rule, expect, "{what}: {d:?}");
            }
        }
        // Updates are not gated on the policy: a lab whose policy is being
        // repaired keeps its running workloads manageable.
        let mut drifted = view();
        drifted.policies.insert("lab-ok", PolicyState::Drifted);
        let req = review(
            deploy,
            "UPDATE",
            Some("lab-ok"),
            "x",
            STUDENT,
            plain.clone(),
            plain,
        );
        assert!(decide(&req, &drifted, &rules()).allowed);
    }

    #[test]
    fn a_cache_behind_the_api_server_fails_closed() {
        // The namespace was just marked as a lab: the API server (whose
        // namespaceSelector matched) sees the label, the watch-fed cache not yet.
        let mut lagging = View::default();
        lagging.namespaces.insert("lab-new", NamespaceState::NotLab);
        let pod = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"}});
        for (resource, name) in [(POD, "p"), (VMI, "vm")] {
            let req = review(
                resource,
                "CREATE",
                Some("lab-new"),
                name,
                PORTAL_SA,
                pod.clone(),
                Value::Null,
            );
            let d = decide(&req, &lagging, &rules());
            assert!(!d.allowed, "{d:?}");
            assert_eq!(d.rule, Some(Rule::NamespaceNotSynced));
            assert!(
                d.message.contains("lab-new")
                    && d.message.contains("not up to date")
                    && d.message.contains(ISOLATION_POLICY_NAME)
                    && d.message.ends_with("retry shortly"),
                "{}",
                d.message
            );
        }
        // The isolation policy cannot be deleted or weakened through that lag.
        let canonical = policy("lab-new", EgressMode::Standard);
        let mut open = canonical.clone();
        open["spec"]["policyTypes"] = json!(["Ingress"]);
        open["spec"].as_object_mut().unwrap().remove("egress");
        let delete = review(
            NP,
            "DELETE",
            Some("lab-new"),
            ISOLATION_POLICY_NAME,
            STUDENT,
            Value::Null,
            canonical.clone(),
        );
        assert_eq!(
            decide(&delete, &lagging, &rules()).rule,
            Some(Rule::PolicyProtected)
        );
        let weaken = review(
            NP,
            "UPDATE",
            Some("lab-new"),
            ISOLATION_POLICY_NAME,
            STUDENT,
            open,
            canonical.clone(),
        );
        assert_eq!(
            decide(&weaken, &lagging, &rules()).rule,
            Some(Rule::PolicyImmutable)
        );
        // The canonical policy itself can still be written (the reconciler's apply).
        let apply = review(
            NP,
            "CREATE",
            Some("lab-new"),
            ISOLATION_POLICY_NAME,
            STUDENT,
            canonical,
            Value::Null,
        );
        assert!(decide(&apply, &lagging, &rules()).allowed);
    }

    #[test]
    fn denial_response_echoes_uid_and_annotates() {
        let req = review(
            POD,
            "CREATE",
            Some("lab-new"),
            "p",
            STUDENT,
            json!({}),
            Value::Null,
        );
        let d = decide(&req, &view(), &rules());
        let resp = serde_json::to_value(d.into_response(&req).into_review()).unwrap();
        assert_eq!(resp["apiVersion"], "admission.k8s.io/v1");
        assert_eq!(resp["kind"], "AdmissionReview");
        assert_eq!(
            resp["response"]["uid"],
            "3f5e7a0e-1111-4b4b-9c9c-000000000001"
        );
        assert_eq!(resp["response"]["allowed"], false);
        assert_eq!(resp["response"]["status"]["code"], 403);
        assert_eq!(
            resp["response"]["auditAnnotations"][DENIED_RULE_ANNOTATION],
            "policy-missing"
        );
        assert!(
            resp["response"]["status"]["message"]
                .as_str()
                .unwrap()
                .contains("labgate-isolation")
        );
    }
}
