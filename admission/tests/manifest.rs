//! The shipped ValidatingWebhookConfiguration: parses, fails closed, cannot be
//! bypassed by stripping labels, covers every gated workload, and routes the
//! requests that matter (checked with the API server's matching rules).

mod common;

use common::*;
use labgate_policies::LAB_LABEL;
use labgate_policies::workloads::GATED_WORKLOADS;
use labgate_tests::standin::StandIn;
use serde_json::{Value, json};

#[test]
fn every_webhook_fails_closed_quickly_and_dry_run_safely() {
    let vwc = webhook_configuration();
    assert_eq!(vwc.metadata.name.as_deref(), Some("labgate-admission"));
    let webhooks = vwc.webhooks.clone().unwrap();
    assert_eq!(webhooks.len(), 3);
    for w in &webhooks {
        assert_eq!(w.failure_policy.as_deref(), Some("Fail"), "{}", w.name);
        assert_eq!(w.side_effects, "NoneOnDryRun", "{}", w.name);
        assert!(
            w.timeout_seconds.is_some_and(|t| (1..=5).contains(&t)),
            "{}",
            w.name
        );
        assert_eq!(
            w.admission_review_versions,
            vec!["v1".to_string()],
            "{}",
            w.name
        );
        let service = w.client_config.service.as_ref().expect("service reference");
        assert_eq!(service.path.as_deref(), Some("/validate"));
        // The namespaces webhook exempts nothing: marking kube-system or the
        // service's namespace as a lab must be seen (item 5).
        if w.name.starts_with("namespaces.") {
            assert!(w.namespace_selector.is_none(), "{}", w.name);
            continue;
        }
        // The others exempt kube-system and the service's own namespace.
        let exempt = w
            .namespace_selector
            .as_ref()
            .and_then(|s| s.match_expressions.as_ref())
            .and_then(|e| e.iter().find(|e| e.key == "kubernetes.io/metadata.name"))
            .unwrap_or_else(|| panic!("{} exempts namespaces by name", w.name));
        assert_eq!(exempt.operator, "NotIn");
        let values = exempt.values.clone().unwrap();
        assert!(values.contains(&"kube-system".to_string()));
        assert!(values.contains(&service.namespace));
        // A webhook may be named in an audit annotation key only once per "/".
        assert!(!w.name.contains('/'));
    }
}

#[test]
fn the_namespace_webhook_cannot_be_bypassed_by_stripping_the_label() {
    let vwc = webhook_configuration();
    let ns_hook = vwc
        .webhooks
        .unwrap()
        .into_iter()
        .find(|w| w.name.starts_with("namespaces."))
        .unwrap();
    // No namespaceSelector on the lab label (it is evaluated on the new object only).
    let ns_selector = ns_hook.namespace_selector.clone().unwrap_or_default();
    assert!(ns_selector.match_labels.unwrap_or_default().is_empty());
    assert!(
        ns_selector
            .match_expressions
            .unwrap_or_default()
            .iter()
            .all(|e| e.key != "labgate.io/lab")
    );
    // An objectSelector on the label's existence (old OR new object).
    let obj = ns_hook.object_selector.clone().unwrap();
    let expr = &obj.match_expressions.unwrap()[0];
    assert_eq!(
        (expr.key.as_str(), expr.operator.as_str()),
        ("labgate.io/lab", "Exists")
    );
    let ops = &ns_hook.rules.as_ref().unwrap()[0].operations;
    assert!(
        ops.iter().flatten().any(|o| o == "UPDATE") && ops.iter().flatten().any(|o| o == "CREATE")
    );
}

#[test]
fn the_workload_webhook_covers_every_gated_workload() {
    let vwc = webhook_configuration();
    let hook = vwc
        .webhooks
        .unwrap()
        .into_iter()
        .find(|w| w.name.starts_with("workloads."))
        .unwrap();
    for w in GATED_WORKLOADS {
        let covered = hook.rules.iter().flatten().any(|r| {
            r.operations.iter().flatten().any(|o| o == "CREATE")
                && r.api_groups.iter().flatten().any(|g| g == w.group)
                && r.resources.iter().flatten().any(|res| res == w.resource)
        });
        assert!(
            covered,
            "{}/{} is not matched by {}",
            w.group, w.resource, hook.name
        );
    }
}

#[test]
fn policy_and_workload_requests_come_only_from_lab_namespaces() {
    // The decision reads a cache answer of "not a lab" for these requests as
    // "the cache is behind" and denies (labgate_admission::decide): that is
    // only right while every webhook that sends them selects lab namespaces.
    let vwc = webhook_configuration();
    let mut checked = 0;
    for w in vwc.webhooks.unwrap() {
        let covers = |group: &str, resource: &str| {
            w.rules.iter().flatten().any(|r| {
                r.api_groups
                    .iter()
                    .flatten()
                    .any(|g| g == "*" || g == group)
                    && r.resources
                        .iter()
                        .flatten()
                        .any(|res| res == "*" || res == resource)
            })
        };
        let relevant = covers("networking.k8s.io", "networkpolicies")
            || GATED_WORKLOADS.iter().any(|g| covers(g.group, g.resource));
        if !relevant {
            continue;
        }
        checked += 1;
        let selector = w
            .namespace_selector
            .clone()
            .unwrap_or_else(|| panic!("{} has no namespaceSelector", w.name));
        let by_expression = selector.match_expressions.iter().flatten().any(|e| {
            e.key == LAB_LABEL
                && e.operator == "In"
                && e.values.as_deref() == Some(&["true".to_string()][..])
        });
        let by_label = selector
            .match_labels
            .as_ref()
            .and_then(|l| l.get(LAB_LABEL))
            .is_some_and(|v| v == "true");
        assert!(
            by_expression || by_label,
            "{} must select only namespaces labelled {LAB_LABEL}=true",
            w.name
        );
    }
    assert_eq!(checked, 2, "the policies and workloads webhooks");
}

fn review(
    resource: (&str, &str),
    sub: Option<&str>,
    op: &str,
    ns: Option<&str>,
    name: &str,
    object: Value,
    old: Value,
) -> Value {
    let mut r = json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": {
        "uid": "u", "resource": {"group": resource.0, "version": "v1", "resource": resource.1},
        "kind": {"group": resource.0, "version": "v1", "kind": "X"},
        "name": name, "operation": op, "userInfo": {"username": "x"},
        "object": object, "oldObject": old}});
    if let Some(ns) = ns {
        r["request"]["namespace"] = json!(ns);
    }
    if let Some(sub) = sub {
        r["request"]["subResource"] = json!(sub);
    }
    r
}

#[tokio::test]
async fn routing_follows_the_api_server_matching_rules() {
    init();
    let standin = StandIn::start().await.unwrap();
    standin.lab_namespace("lab-a", STUDENT, &[]);
    let mut plain = k8s_openapi::api::core::v1::Namespace::default();
    plain.metadata.name = Some("plain".into());
    standin.put_namespace(plain);
    let hooks = webhook_configuration().webhooks.unwrap();
    let routed = |r: &Value| -> Vec<String> {
        hooks
            .iter()
            .filter(|w| webhook_matches(w, r, &standin))
            .map(|w| w.name.clone())
            .collect()
    };
    let ns = ("", "namespaces");
    let lab = json!({"metadata": {"name": "lab-a", "labels": {"labgate.io/lab": "true", "kubernetes.io/metadata.name": "lab-a"}}});
    let stripped =
        json!({"metadata": {"name": "lab-a", "labels": {"kubernetes.io/metadata.name": "lab-a"}}});
    let kube_system = json!({"metadata": {"name": "kube-system", "labels": {"labgate.io/lab": "true", "kubernetes.io/metadata.name": "kube-system"}}});

    assert_eq!(
        routed(&review(
            ns,
            None,
            "UPDATE",
            None,
            "lab-a",
            stripped.clone(),
            lab.clone()
        )),
        ["namespaces.admission.labgate.io"],
        "strip is seen"
    );
    assert_eq!(
        routed(&review(
            ns,
            None,
            "CREATE",
            None,
            "lab-a",
            lab.clone(),
            Value::Null
        )),
        ["namespaces.admission.labgate.io"]
    );
    assert_eq!(
        routed(&review(
            ns,
            Some("finalize"),
            "UPDATE",
            None,
            "lab-a",
            lab.clone(),
            lab.clone()
        ))
        .len(),
        1
    );
    assert!(
        routed(&review(
            ns,
            None,
            "CREATE",
            None,
            "plain",
            stripped.clone(),
            Value::Null
        ))
        .is_empty(),
        "plain namespaces are not sent"
    );
    assert_eq!(
        routed(&review(
            ns,
            None,
            "UPDATE",
            None,
            "kube-system",
            kube_system.clone(),
            kube_system
        )),
        ["namespaces.admission.labgate.io"],
        "marking kube-system is seen"
    );

    let np = ("networking.k8s.io", "networkpolicies");
    assert_eq!(
        routed(&review(
            np,
            None,
            "DELETE",
            Some("lab-a"),
            "labgate-isolation",
            Value::Null,
            json!({})
        )),
        ["policies.admission.labgate.io"]
    );
    // A deletecollection's per-item review has an empty name: it must be sent.
    assert_eq!(
        routed(&review(
            np,
            None,
            "DELETE",
            Some("lab-a"),
            "",
            Value::Null,
            json!({"metadata": {"name": "labgate-isolation"}})
        )),
        ["policies.admission.labgate.io"],
        "deletecollection items are seen"
    );
    assert_eq!(
        routed(&review(
            np,
            None,
            "DELETE",
            Some("lab-a"),
            "allow-web",
            Value::Null,
            json!({})
        )),
        ["policies.admission.labgate.io"],
        "every NetworkPolicy write in a lab is seen"
    );
    assert!(
        routed(&review(
            np,
            None,
            "DELETE",
            Some("plain"),
            "labgate-isolation",
            Value::Null,
            json!({})
        ))
        .is_empty()
    );

    let pods = ("", "pods");
    assert_eq!(
        routed(&review(
            pods,
            None,
            "CREATE",
            Some("lab-a"),
            "p",
            json!({}),
            Value::Null
        )),
        ["workloads.admission.labgate.io"]
    );
    assert!(
        routed(&review(
            pods,
            None,
            "CREATE",
            Some("plain"),
            "p",
            json!({}),
            Value::Null
        ))
        .is_empty()
    );
    assert!(
        routed(&review(
            pods,
            Some("eviction"),
            "CREATE",
            Some("lab-a"),
            "p",
            json!({}),
            Value::Null
        ))
        .is_empty()
    );
    let vmis = ("kubevirt.io", "virtualmachineinstances");
    assert_eq!(
        routed(&review(
            vmis,
            None,
            "CREATE",
            Some("lab-a"),
            "vm",
            json!({}),
            Value::Null
        )),
        ["workloads.admission.labgate.io"]
    );
}
