//! End to end against the stand-in API server: reconciler, webhook over real HTTPS,
//! and users (portal service account, student) driving the API.

mod common;

use std::time::{Duration, Instant};

use common::*;
use k8s_openapi::api::core::v1::{Namespace, Pod};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::api::{DeleteParams, DynamicObject, Patch, PatchParams, PostParams};
use kube::core::{ApiResource, GroupVersionKind};
use kube::{Api, ResourceExt};
use labgate_policies::{
    EgressMode, ISOLATION_POLICY_NAME, LAB_LABEL, OWNER_ANNOTATION, OWNER_HASH_LABEL, owner_hash,
};
use serde_json::json;

fn pod(name: &str) -> Pod {
    serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name},
        "spec": {"containers": [{"name": "c", "image": "busybox"}]}
    }))
    .unwrap()
}

fn vmi_api(client: kube::Client, ns: &str) -> Api<DynamicObject> {
    let ar = ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("kubevirt.io", "v1", "VirtualMachineInstance"),
        "virtualmachineinstances",
    );
    Api::namespaced_with(client, ns, &ar)
}

fn vmi(name: &str) -> DynamicObject {
    serde_json::from_value(json!({
        "apiVersion": "kubevirt.io/v1", "kind": "VirtualMachineInstance",
        "metadata": {"name": name},
        "spec": {"domain": {"devices": {}}}
    }))
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn labelled_namespace_gets_the_policy_within_a_second() {
    let h = Harness::start(&[]).await;
    let namespaces = Api::<Namespace>::all(h.portal());
    let started = Instant::now();
    namespaces
        .create(&PostParams::default(), &lab_namespace("lab-a", STUDENT))
        .await
        .unwrap();
    assert!(
        h.wait_policy("lab-a", Duration::from_secs(1), EgressMode::Standard)
            .await,
        "policy not created within 1 s"
    );
    tracing::info!(elapsed = ?started.elapsed(), "policy created");

    // Written by server-side apply with our field manager.
    let policy = h.standin.get_json(&policy_path("lab-a")).unwrap();
    let managers: Vec<_> = policy["metadata"]["managedFields"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|m| m["manager"].as_str())
        .collect();
    assert!(
        managers.contains(&"labgate-admission"),
        "managed fields: {managers:?}"
    );
    let apply_requests = h
        .standin
        .requests()
        .into_iter()
        .filter(|r| r.method == "PATCH" && r.path.ends_with("/networkpolicies/labgate-isolation"))
        .collect::<Vec<_>>();
    assert!(
        apply_requests
            .iter()
            .all(|r| r.query.contains("fieldManager=labgate-admission")
                && r.query.contains("force=true"))
    );

    // Reported as a Kubernetes Event in the lab and in metrics.
    let events = Api::<k8s_openapi::api::events::v1::Event>::namespaced(h.portal(), "lab-a");
    let mut event_seen = None;
    for _ in 0..100 {
        let list = events.list(&Default::default()).await.unwrap();
        event_seen = list.items.into_iter().find(|e| {
            e.reason.as_deref() == Some("IsolationPolicyCreated")
                && e.regarding.as_ref().and_then(|r| r.name.as_deref())
                    == Some(ISOLATION_POLICY_NAME)
        });
        if event_seen.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        event_seen.is_some(),
        "an IsolationPolicyCreated event is published in the lab namespace"
    );
    h.wait_metric("labgate_admission_reconcile_actions_total{action=\"created\"} 1")
        .await;

    // A namespace that is not a lab gets nothing.
    let mut plain = Namespace::default();
    plain.metadata.name = Some("scratch".into());
    Api::<Namespace>::all(h.student())
        .create(&PostParams::default(), &plain)
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(h.standin.get_json(&policy_path("scratch")).is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policy_cannot_be_deleted_or_weakened_and_forced_changes_are_repaired() {
    let h = Harness::start(&[]).await;
    Api::<Namespace>::all(h.portal())
        .create(&PostParams::default(), &lab_namespace("lab-b", STUDENT))
        .await
        .unwrap();
    assert!(
        h.wait_policy("lab-b", Duration::from_secs(1), EgressMode::Standard)
            .await
    );
    h.wait_cached_policy("lab-b").await;

    for client in [h.student(), h.portal()] {
        let policies = Api::<NetworkPolicy>::namespaced(client, "lab-b");
        let err = policies
            .delete(ISOLATION_POLICY_NAME, &DeleteParams::default())
            .await
            .unwrap_err();
        let msg = api_message(&err);
        assert!(
            msg.contains("rule policy-protected") && msg.contains("(403)"),
            "{msg}"
        );

        // An edit that opens egress is denied.
        let mut weakened = policies.get(ISOLATION_POLICY_NAME).await.unwrap();
        let spec = weakened.spec.as_mut().unwrap();
        spec.policy_types = Some(vec!["Ingress".into()]);
        spec.egress = None;
        let err = policies
            .replace(ISOLATION_POLICY_NAME, &PostParams::default(), &weakened)
            .await
            .unwrap_err();
        assert!(
            api_message(&err).contains("rule policy-immutable"),
            "{}",
            api_message(&err)
        );

        // A merge patch to the ingress rule is denied the same way.
        let patch = json!({"spec": {"ingress": [{}]}});
        let err = policies
            .patch(
                ISOLATION_POLICY_NAME,
                &PatchParams::default(),
                &Patch::Merge(&patch),
            )
            .await
            .unwrap_err();
        assert!(
            api_message(&err).contains("rule policy-immutable"),
            "{}",
            api_message(&err)
        );
    }
    assert!(h.standin.get_json(&policy_path("lab-b")).is_some());

    // Item 1: any other NetworkPolicy widens the lab (they are additive), so
    // tenants may not write one; portals may.
    let mine: NetworkPolicy = serde_json::from_value(json!({
        "apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
        "metadata": {"name": "allow-all"},
        "spec": {"podSelector": {}, "policyTypes": ["Ingress", "Egress"], "ingress": [{}], "egress": [{}]}
    }))
    .unwrap();
    let student_policies = Api::<NetworkPolicy>::namespaced(h.student(), "lab-b");
    let err = student_policies
        .create(&PostParams::default(), &mine)
        .await
        .unwrap_err();
    assert!(
        api_message(&err).contains("rule policy-writes-restricted"),
        "{}",
        api_message(&err)
    );
    assert!(
        h.standin
            .get_json("/apis/networking.k8s.io/v1/namespaces/lab-b/networkpolicies/allow-all")
            .is_none()
    );
    let portal_policies = Api::<NetworkPolicy>::namespaced(h.portal(), "lab-b");
    portal_policies
        .create(&PostParams::default(), &mine)
        .await
        .unwrap();
    let err = student_policies
        .delete("allow-all", &DeleteParams::default())
        .await
        .unwrap_err();
    assert!(api_message(&err).contains("rule policy-writes-restricted"));
    portal_policies
        .delete("allow-all", &DeleteParams::default())
        .await
        .unwrap();

    // Forced deletion (bypassing admission) is repaired within a second.
    h.standin.delete_json(&policy_path("lab-b"));
    let t = Instant::now();
    assert!(
        h.wait_policy("lab-b", Duration::from_secs(1), EgressMode::Standard)
            .await,
        "deletion not repaired"
    );
    tracing::info!(elapsed = ?t.elapsed(), "deletion repaired");

    h.wait_metric("labgate_admission_reconcile_actions_total{action=\"created\"} 2")
        .await;

    // Forced weakening is repaired within a second.
    let mut forced = h.standin.get_json(&policy_path("lab-b")).unwrap();
    forced["spec"]["policyTypes"] = json!(["Ingress"]);
    forced["spec"].as_object_mut().unwrap().remove("egress");
    forced["metadata"]
        .as_object_mut()
        .unwrap()
        .remove("ownerReferences");
    h.standin.put_json(&policy_path("lab-b"), forced);
    assert!(
        !EgressMode::Standard.is_canonical(
            serde_json::from_value(
                h.standin.get_json(&policy_path("lab-b")).unwrap()["spec"].clone()
            )
            .ok()
            .as_ref()
        )
    );
    assert!(
        h.wait_policy("lab-b", Duration::from_secs(1), EgressMode::Standard)
            .await,
        "edit not repaired"
    );
    h.wait_metric("labgate_admission_reconcile_actions_total{action=\"repaired\"} 1")
        .await;

    // Denials carry the audit annotation naming the rule.
    let denials = h.denials();
    assert!(
        denials
            .iter()
            .all(|d| d.response["auditAnnotations"]["denied-rule"].is_string())
    );
    assert!(
        denials
            .iter()
            .any(|d| d.response["auditAnnotations"]["denied-rule"] == "policy-protected")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reserved_name_with_another_spec_cannot_be_created() {
    // Without the reconciler, the window before the policy exists stays open.
    let h = Harness::start(&["--no-reconciler"]).await;
    Api::<Namespace>::all(h.portal())
        .create(&PostParams::default(), &lab_namespace("lab-c", STUDENT))
        .await
        .unwrap();
    let mut weak = EgressMode::Standard.policy("lab-c");
    weak.spec.as_mut().unwrap().egress = None;
    weak.spec.as_mut().unwrap().policy_types = Some(vec!["Ingress".into()]);
    let policies = Api::<NetworkPolicy>::namespaced(h.student(), "lab-c");
    let err = policies
        .create(&PostParams::default(), &weak)
        .await
        .unwrap_err();
    assert!(
        api_message(&err).contains("rule policy-name-reserved"),
        "{}",
        api_message(&err)
    );
    // The canonical spec may be created by anyone (it is what the reconciler writes).
    policies
        .create(
            &PostParams::default(),
            &EgressMode::Standard.policy("lab-c"),
        )
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workloads_wait_for_the_policy() {
    let h = Harness::start(&["--no-reconciler"]).await;
    Api::<Namespace>::all(h.portal())
        .create(&PostParams::default(), &lab_namespace("lab-d", STUDENT))
        .await
        .unwrap();
    // Wait until the cache knows the namespace, so the denial is the policy one.
    let cache = h.running.cache.clone();
    eventually(Duration::from_secs(5), || {
        use labgate_admission::ClusterView;
        matches!(
            cache.namespace("lab-d"),
            labgate_admission::decide::NamespaceState::Lab { .. }
        )
        .then_some(())
    })
    .await
    .unwrap();

    let pods = Api::<Pod>::namespaced(h.portal(), "lab-d");
    let err = pods
        .create(&PostParams::default(), &pod("p1"))
        .await
        .unwrap_err();
    let msg = api_message(&err);
    assert!(
        msg.contains("rule policy-missing")
            && msg.contains("labgate-isolation")
            && msg.contains("retry"),
        "{msg}"
    );
    let vmis = vmi_api(h.portal(), "lab-d");
    let err = vmis
        .create(&PostParams::default(), &vmi("vm1"))
        .await
        .unwrap_err();
    assert!(
        api_message(&err).contains("rule policy-missing"),
        "{}",
        api_message(&err)
    );
    assert!(
        h.standin
            .get_json("/api/v1/namespaces/lab-d/pods/p1")
            .is_none()
    );

    // Start the reconciler now: the policy appears and the same requests pass.
    let shutdown = h.shutdown.child_token();
    tokio::spawn(labgate_admission::reconcile::run(
        h.standin.client(ADMISSION_TOKEN),
        EgressMode::Standard,
        labgate_admission::Metrics::new(),
        vec!["labgate-system".into()],
        shutdown,
    ));
    assert!(
        h.wait_policy("lab-d", Duration::from_secs(1), EgressMode::Standard)
            .await
    );
    h.wait_cached_policy("lab-d").await;
    pods.create(&PostParams::default(), &pod("p1"))
        .await
        .unwrap();
    vmis.create(&PostParams::default(), &vmi("vm1"))
        .await
        .unwrap();

    // Namespaces that are not labs are never gated.
    let mut plain = Namespace::default();
    plain.metadata.name = Some("plain".into());
    Api::<Namespace>::all(h.student())
        .create(&PostParams::default(), &plain)
        .await
        .unwrap();
    Api::<Pod>::namespaced(h.student(), "plain")
        .create(&PostParams::default(), &pod("p"))
        .await
        .unwrap();
}

/// A DELETE of the isolation policy in `ns`, by `user`, as the API server sends it
/// (the recorded fixture, moved to `ns`).
fn policy_delete_review(ns: &str, user: &str) -> serde_json::Value {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/networkpolicy-delete-during-namespace-termination.json");
    let mut review: serde_json::Value =
        serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
    review["request"]["namespace"] = json!(ns);
    review["request"]["oldObject"]["metadata"]["namespace"] = json!(ns);
    review["request"]["userInfo"]["username"] = json!(user);
    review
}

/// Sends `review` straight to the webhook and returns its response.
async fn validate(h: &Harness, review: &serde_json::Value) -> serde_json::Value {
    let (status, body) = https_request(
        h.running.addr,
        "localhost",
        std::sync::Arc::new(h.ca.client_config()),
        "POST",
        "/validate",
        serde_json::to_vec(review).unwrap(),
    )
    .await
    .unwrap();
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    let answer: serde_json::Value = serde_json::from_slice(&body).unwrap();
    answer["response"].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn namespace_termination_lets_the_policy_go() {
    use futures::FutureExt;
    use k8s_openapi::api::core::v1::ConfigMap;
    use labgate_admission::ClusterView;
    use labgate_admission::decide::NamespaceState;
    use labgate_tests::standin::NAMESPACE_CONTROLLER;

    // Only the namespace phase may explain the delete: the controller username
    // here is not the configured one (it differs between distributions).
    let h = Harness::start(&[
        "--namespace-controller-user",
        "system:kube-controller-manager",
    ])
    .await;
    Api::<Namespace>::all(h.portal())
        .create(&PostParams::default(), &lab_namespace("lab-e", STUDENT))
        .await
        .unwrap();
    assert!(
        h.wait_policy("lab-e", Duration::from_secs(1), EgressMode::Standard)
            .await
    );
    h.wait_cached_policy("lab-e").await;

    // While the lab lives, the same DELETE is refused (the probe below is meaningful).
    let probe = policy_delete_review("lab-e", STUDENT);
    let response = validate(&h, &probe).await;
    assert_eq!(response["allowed"], false, "{response}");
    assert_eq!(
        response["auditAnnotations"]["denied-rule"],
        "policy-protected"
    );

    // Hold the namespace in Terminating until released: the stand-in removes a
    // namespace only once all its content is deleted, and the namespace
    // controller's DELETE of this ConfigMap waits in admission until then. No
    // webhook matches ConfigMaps, so the hold says nothing about our rules.
    let hold: ConfigMap = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "hold-termination"}
    }))
    .unwrap();
    Api::<ConfigMap>::namespaced(h.portal(), "lab-e")
        .create(&PostParams::default(), &hold)
        .await
        .unwrap();
    let released = tokio_util::sync::CancellationToken::new();
    let (dispatcher, release) = (h.dispatcher.clone(), released.clone());
    h.standin.set_admission_hook(Some(std::sync::Arc::new(
        move |review: serde_json::Value| {
            let r = &review["request"];
            let held = r["operation"] == "DELETE"
                && r["resource"]["resource"] == "configmaps"
                && r["name"] == "hold-termination"
                && r["userInfo"]["username"] == NAMESPACE_CONTROLLER;
            let (dispatcher, release) = (dispatcher.clone(), release.clone());
            async move {
                if held {
                    // Bounded, so a failing test cannot wedge the stand-in.
                    let _ =
                        tokio::time::timeout(Duration::from_secs(10), release.cancelled()).await;
                }
                dispatcher(review).await
            }
            .boxed()
        },
    )));

    Api::<Namespace>::all(h.portal())
        .delete("lab-e", &DeleteParams::default())
        .await
        .unwrap();

    // The namespace cannot disappear yet, so the webhook's cache gets to see it Terminating...
    let cache = h.running.cache.clone();
    let terminating = eventually(Duration::from_secs(5), || {
        (cache.namespace("lab-e") == NamespaceState::Lab { terminating: true }).then_some(())
    })
    .await;
    assert!(
        terminating.is_some(),
        "cache: {:?}",
        cache.namespace("lab-e")
    );
    // ...and then a DELETE of the policy is allowed, whoever sends it.
    let response = validate(&h, &probe).await;
    assert_eq!(response["allowed"], true, "{response}");
    assert!(
        h.standin.get_json("/api/v1/namespaces/lab-e").is_some(),
        "the hold keeps the namespace until released"
    );

    // Let the namespace controller finish: the namespace is eventually gone.
    released.cancel();
    let gone = eventually(Duration::from_secs(5), || {
        (h.standin.get_json("/api/v1/namespaces/lab-e").is_none()).then_some(())
    })
    .await;
    assert!(
        gone.is_some(),
        "namespace deletion was blocked; denials: {:?}",
        h.denials()
    );
    assert!(h.standin.get_json(&policy_path("lab-e")).is_none());
    // The namespace controller's policy DELETE went through the webhook and the
    // last one was allowed. An earlier attempt may have been refused if it
    // reached the webhook before its cache saw Terminating (the stand-in, like
    // the real controller, retries); that is the only acceptable refusal.
    let policy_deletes: Vec<_> = h
        .dispatched
        .lock()
        .unwrap()
        .iter()
        .filter(|d| {
            d.review["request"]["operation"] == "DELETE" && d.webhook.starts_with("policies.")
        })
        .cloned()
        .collect();
    let last = policy_deletes
        .last()
        .expect("the policy DELETE went through the webhook");
    assert!(
        last.allowed,
        "final policy DELETE refused: {:?}",
        last.response
    );
    assert_eq!(
        last.review["request"]["userInfo"]["username"],
        NAMESPACE_CONTROLLER
    );
    for refused in policy_deletes.iter().filter(|d| !d.allowed) {
        assert_eq!(
            refused.response["auditAnnotations"]["denied-rule"], "policy-protected",
            "{:?}",
            refused.response
        );
    }
    // The reconciler does not bring it back.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(h.standin.get_json(&policy_path("lab-e")).is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_portal_principals_write_lab_labels() {
    let h = Harness::start(&["--no-reconciler"]).await;
    let student_ns = Api::<Namespace>::all(h.student());
    let portal_ns = Api::<Namespace>::all(h.portal());

    // A student cannot create a lab namespace.
    let err = student_ns
        .create(&PostParams::default(), &lab_namespace("lab-f", STUDENT))
        .await
        .unwrap_err();
    assert!(
        api_message(&err).contains("rule lab-create-restricted"),
        "{}",
        api_message(&err)
    );
    assert!(h.standin.get_json("/api/v1/namespaces/lab-f").is_none());

    // The portal can.
    portal_ns
        .create(&PostParams::default(), &lab_namespace("lab-f", STUDENT))
        .await
        .unwrap();

    // The student cannot relabel the owner (annotation + matching hash)...
    let mallory = "mallory@example.com";
    let relabel = json!({"metadata": {
        "annotations": {OWNER_ANNOTATION: mallory},
        "labels": {OWNER_HASH_LABEL: owner_hash(mallory)}}});
    let err = student_ns
        .patch("lab-f", &PatchParams::default(), &Patch::Merge(&relabel))
        .await
        .unwrap_err();
    assert!(
        api_message(&err).contains("rule owner-immutable"),
        "{}",
        api_message(&err)
    );
    // ...add members...
    let members = json!({"metadata": {"annotations": {"labgate.io/members": mallory}}});
    let err = student_ns
        .patch("lab-f", &PatchParams::default(), &Patch::Merge(&members))
        .await
        .unwrap_err();
    assert!(
        api_message(&err).contains("rule members-immutable"),
        "{}",
        api_message(&err)
    );
    // ...or strip the lab label (the objectSelector still matches the old object).
    let strip = json!({"metadata": {"labels": {LAB_LABEL: null}}});
    let err = student_ns
        .patch("lab-f", &PatchParams::default(), &Patch::Merge(&strip))
        .await
        .unwrap_err();
    assert!(
        api_message(&err).contains("rule lab-marking-immutable"),
        "{}",
        api_message(&err)
    );
    // An unrelated label is fine.
    let course = json!({"metadata": {"labels": {"course": "net101"}}});
    student_ns
        .patch("lab-f", &PatchParams::default(), &Patch::Merge(&course))
        .await
        .unwrap();
    let ns = h.standin.get_json("/api/v1/namespaces/lab-f").unwrap();
    assert_eq!(ns["metadata"]["annotations"][OWNER_ANNOTATION], STUDENT);
    assert_eq!(ns["metadata"]["labels"][LAB_LABEL], "true");

    // A student cannot turn an existing plain namespace into a lab either.
    let mut plain = Namespace::default();
    plain.metadata.name = Some("plain".into());
    student_ns
        .create(&PostParams::default(), &plain)
        .await
        .unwrap();
    let mark = json!({"metadata": {"labels": {LAB_LABEL: "true", OWNER_HASH_LABEL: owner_hash(STUDENT)},
                                   "annotations": {OWNER_ANNOTATION: STUDENT}}});
    let err = student_ns
        .patch("plain", &PatchParams::default(), &Patch::Merge(&mark))
        .await
        .unwrap_err();
    assert!(
        api_message(&err).contains("rule lab-create-restricted"),
        "{}",
        api_message(&err)
    );

    // The portal can change the owner, but only consistently, and can strip the label.
    let half = json!({"metadata": {"annotations": {OWNER_ANNOTATION: mallory}}});
    let err = portal_ns
        .patch("lab-f", &PatchParams::default(), &Patch::Merge(&half))
        .await
        .unwrap_err();
    assert!(
        api_message(&err).contains("rule lab-malformed"),
        "{}",
        api_message(&err)
    );
    portal_ns
        .patch("lab-f", &PatchParams::default(), &Patch::Merge(&relabel))
        .await
        .unwrap();
    portal_ns
        .patch("lab-f", &PatchParams::default(), &Patch::Merge(&strip))
        .await
        .unwrap();
    let ns = h.standin.get_json("/api/v1/namespaces/lab-f").unwrap();
    assert_eq!(ns["metadata"]["annotations"][OWNER_ANNOTATION], mallory);
    assert!(ns["metadata"]["labels"].get(LAB_LABEL).is_none());

    // Every denial names its rule in the message and the audit annotation.
    for d in h.denials() {
        let rule = d.response["auditAnnotations"]["denied-rule"]
            .as_str()
            .unwrap()
            .to_string();
        assert!(
            d.response["status"]["message"]
                .as_str()
                .unwrap()
                .contains(&format!("rule {rule}:"))
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dry_run_leaves_no_trace() {
    let h = Harness::start(&[]).await;
    let dry = PostParams {
        dry_run: true,
        ..Default::default()
    };
    // A portal's dry-run lab is validated and allowed, but nothing is stored or reconciled.
    let created = Api::<Namespace>::all(h.portal())
        .create(&dry, &lab_namespace("lab-g", STUDENT))
        .await
        .unwrap();
    assert_eq!(created.name_any(), "lab-g");
    // The student's dry run is validated (and denied) all the same.
    let err = Api::<Namespace>::all(h.student())
        .create(&dry, &lab_namespace("lab-h", STUDENT))
        .await
        .unwrap_err();
    assert!(api_message(&err).contains("rule lab-create-restricted"));
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(h.standin.get_json("/api/v1/namespaces/lab-g").is_none());
    assert!(h.standin.get_json(&policy_path("lab-g")).is_none());
    let dispatched = h.dispatched.lock().unwrap().clone();
    assert!(
        dispatched
            .iter()
            .all(|d| d.review["request"]["dryRun"] == true)
    );
    assert_eq!(dispatched.len(), 2);
    let metrics = h.running.metrics.render();
    // Registered at 0 from the start (item 15); a dry run must not count.
    assert!(
        metrics.contains("labgate_admission_reconcile_actions_total{action=\"created\"} 0"),
        "{metrics}"
    );
    // The webhook itself wrote nothing to the API during those reviews.
    let writes: Vec<_> = h
        .standin
        .requests()
        .into_iter()
        .filter(|r| {
            r.user.as_deref() == Some("system:serviceaccount:labgate-system:labgate-admission")
        })
        .filter(|r| r.method != "GET")
        .collect();
    assert!(writes.is_empty(), "{writes:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strict_egress_is_applied_when_configured() {
    let h = Harness::start(&["--egress", "strict"]).await;
    Api::<Namespace>::all(h.portal())
        .create(&PostParams::default(), &lab_namespace("lab-s", STUDENT))
        .await
        .unwrap();
    assert!(
        h.wait_policy("lab-s", Duration::from_secs(1), EgressMode::Strict)
            .await
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconciler_keeps_going_through_api_errors_and_watch_loss() {
    use futures::FutureExt;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};

    let h = Harness::start(&[]).await;
    let (status, _) = https_request(
        h.running.addr,
        "localhost",
        std::sync::Arc::new(h.ca.client_config()),
        "GET",
        "/readyz",
        vec![],
    )
    .await
    .unwrap();
    assert_eq!(status, 200, "ready once the caches synced");

    // The API server fails every NetworkPolicy write for a while (500).
    let failing = Arc::new(AtomicBool::new(true));
    let flag = failing.clone();
    h.standin
        .set_admission_hook(Some(Arc::new(move |review: serde_json::Value| {
            let fail = flag.load(Ordering::SeqCst)
                && review["request"]["resource"]["resource"] == "networkpolicies";
            async move {
            if fail {
                Err(json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": 500,
                           "reason": "InternalError", "message": "etcdserver: request timed out"}))
            } else {
                Ok(())
            }
        }
        .boxed()
        })));
    Api::<Namespace>::all(h.portal())
        .create(&PostParams::default(), &lab_namespace("lab-x", STUDENT))
        .await
        .unwrap();
    let errors = eventually(Duration::from_secs(5), || {
        let m = h.running.metrics.render();
        m.lines()
            .find(|l| l.starts_with("labgate_admission_reconcile_errors_total{error=\"server\"}"))
            .and_then(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
            .filter(|n| *n >= 2)
    })
    .await;
    assert!(
        errors.is_some(),
        "retried after errors: {}",
        h.running.metrics.render()
    );
    assert!(h.standin.get_json(&policy_path("lab-x")).is_none());
    let events = Api::<k8s_openapi::api::events::v1::Event>::namespaced(h.portal(), "lab-x")
        .list(&Default::default())
        .await
        .unwrap();
    assert!(
        events.items.iter().any(
            |e| e.reason.as_deref() == Some("IsolationPolicyApplyFailed")
                && e.type_.as_deref() == Some("Warning")
        ),
        "a Warning event reports the failure"
    );
    // The API recovers: the backoff (at most a few seconds here) brings the policy.
    failing.store(false, Ordering::SeqCst);
    assert!(
        h.wait_policy("lab-x", Duration::from_secs(10), EgressMode::Standard)
            .await
    );

    // Watches cut mid-stream and history compacted (410 on resume): still repaired.
    h.standin.drop_watches();
    h.standin.compact_history();
    tokio::time::sleep(Duration::from_millis(100)).await;
    h.standin.delete_json(&policy_path("lab-x"));
    assert!(
        h.wait_policy("lab-x", Duration::from_secs(5), EgressMode::Standard)
            .await,
        "repaired after the watches recovered"
    );
}

/// Item 2: DELETECOLLECTION sends one admission request per item with an empty
/// `name` (apiserver handlers/delete.go, rest/delete.go); the policy must still
/// be recognised by its oldObject and protected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_collection_cannot_remove_the_policy() {
    let h = Harness::start(&["--no-reconciler"]).await;
    Api::<Namespace>::all(h.portal())
        .create(&PostParams::default(), &lab_namespace("lab-dc", STUDENT))
        .await
        .unwrap();
    Api::<NetworkPolicy>::namespaced(h.portal(), "lab-dc")
        .create(
            &PostParams::default(),
            &EgressMode::Standard.policy("lab-dc"),
        )
        .await
        .unwrap();
    let policies = Api::<NetworkPolicy>::namespaced(h.student(), "lab-dc");
    let lp =
        kube::api::ListParams::default().fields(&format!("metadata.name={ISOLATION_POLICY_NAME}"));
    let err = policies
        .delete_collection(&DeleteParams::default(), &lp)
        .await
        .unwrap_err();
    let msg = api_message(&err);
    assert!(msg.contains("rule policy-protected"), "{msg}");
    assert!(
        h.standin.get_json(&policy_path("lab-dc")).is_some(),
        "deletecollection removed the isolation policy"
    );
    // The webhook saw the per-item request as the API server sends it.
    let seen = h.denials();
    let item = seen
        .iter()
        .find(|d| d.review["request"]["operation"] == "DELETE")
        .expect("the per-item DELETE reached the webhook");
    assert_eq!(item.review["request"]["name"], "");
    assert_eq!(
        item.review["request"]["oldObject"]["metadata"]["name"],
        ISOLATION_POLICY_NAME
    );
}

/// Item 5: labelling a system or exempt namespace as a lab is refused for
/// everyone (the namespaces webhook has no exempting namespaceSelector), and a
/// marking forced past admission is never acted on by the reconciler.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exempt_namespaces_never_become_labs() {
    let h = Harness::start(&[]).await;
    for ns in ["kube-system", "labgate-system"] {
        let mut plain = Namespace::default();
        plain.metadata.name = Some(ns.into());
        h.standin.put_namespace(plain);
        let marked = lab_namespace(ns, STUDENT);
        let patch = json!({"metadata": {"labels": marked.metadata.labels, "annotations": marked.metadata.annotations}});
        let err = Api::<Namespace>::all(h.portal())
            .patch(ns, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .unwrap_err();
        assert!(
            api_message(&err).contains("rule lab-namespace-exempt"),
            "{ns}: {}",
            api_message(&err)
        );
        // Forced past admission: the reconciler still leaves it alone.
        h.standin.put_namespace(marked);
    }
    h.wait_metric("labgate_admission_reconcile_actions_total{action=\"skipped-exempt\"} 2")
        .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    for ns in ["kube-system", "labgate-system"] {
        assert!(
            h.standin.get_json(&policy_path(ns)).is_none(),
            "the reconciler isolated {ns}"
        );
    }
}

/// Item 3: host networking escapes NetworkPolicy, so it is refused in labs
/// even where the isolation policy is in place, portals included.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_network_pods_are_refused_in_labs() {
    let h = Harness::start(&[]).await;
    Api::<Namespace>::all(h.portal())
        .create(&PostParams::default(), &lab_namespace("lab-hn", STUDENT))
        .await
        .unwrap();
    assert!(
        h.wait_policy("lab-hn", Duration::from_secs(1), EgressMode::Standard)
            .await
    );
    h.wait_cached_policy("lab-hn").await;
    let mut p = pod("hn");
    p.spec.as_mut().unwrap().host_network = Some(true);
    let err = Api::<Pod>::namespaced(h.portal(), "lab-hn")
        .create(&PostParams::default(), &p)
        .await
        .unwrap_err();
    assert!(
        api_message(&err).contains("rule workload-network-restricted"),
        "{}",
        api_message(&err)
    );
    Api::<Pod>::namespaced(h.portal(), "lab-hn")
        .create(&PostParams::default(), &pod("ok"))
        .await
        .unwrap();
}

/// Item 14: after a 410 (history compacted while the watches were cut) and
/// after an outage of the policy watch, the reconciler acts on a change made
/// meanwhile within a second: it relists at once instead of waiting out
/// kube-runtime's default backoff (0.8 s and growing).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_reconciler_catches_up_within_a_second_after_410_and_an_outage() {
    let h = Harness::start(&[]).await;
    Api::<Namespace>::all(h.portal())
        .create(&PostParams::default(), &lab_namespace("lab-r", STUDENT))
        .await
        .unwrap();
    assert!(
        h.wait_policy("lab-r", Duration::from_secs(5), EgressMode::Standard)
            .await
    );

    // 410: every resourceVersion seen so far is forgotten, the watches are
    // cut, and the policy is deleted behind the service's back.
    h.standin.compact_history();
    h.standin.drop_watches();
    let t0 = Instant::now();
    h.standin.delete_json(&policy_path("lab-r"));
    assert!(
        h.wait_policy("lab-r", Duration::from_secs(1), EgressMode::Standard)
            .await,
        "not repaired within 1 s of a 410"
    );
    println!("repaired {:?} after a 410", t0.elapsed());

    // Outage: the cluster-wide policy list/watch fails three times in a row
    // (503) before the API server answers again.
    h.standin
        .fail_requests("/apis/networking.k8s.io/v1/networkpolicies", 503, 3);
    h.standin.compact_history();
    h.standin.drop_watches();
    let t0 = Instant::now();
    h.standin.delete_json(&policy_path("lab-r"));
    assert!(
        h.wait_policy("lab-r", Duration::from_secs(1), EgressMode::Standard)
            .await,
        "not repaired within 1 s of a three-request outage"
    );
    println!("repaired {:?} after a three-request outage", t0.elapsed());
}
