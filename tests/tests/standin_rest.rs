//! The stand-in's REST verbs as kube's typed client sees them: authentication, create/replace/
//! patch/delete with the API server's status codes, NamespaceLifecycle, namespace deletion and
//! the admission hook's AdmissionReview requests.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::FutureExt as _;
use k8s_openapi::api::core::v1::{Namespace, Secret};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::core::DynamicObject;
use kube::core::admission::{AdmissionRequest, AdmissionReview, Operation};
use serde_json::{Value, json};

use labgate_tests::standin::{StandIn, UserInfo};

fn policy(name: &str) -> NetworkPolicy {
    serde_json::from_value(json!({
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": { "name": name },
        "spec": { "podSelector": {}, "policyTypes": ["Ingress"] },
    }))
    .unwrap()
}

fn api_error(err: kube::Error) -> kube::core::Status {
    match err {
        kube::Error::Api(status) => *status,
        other => panic!("expected an API error, got {other:?}"),
    }
}

#[tokio::test]
async fn requests_without_a_valid_token_get_401_status() {
    let standin = StandIn::start().await.unwrap();
    let api: Api<Namespace> = Api::all(standin.client("not-a-token"));
    let status = api_error(api.list(&Default::default()).await.unwrap_err());
    assert_eq!((status.code, status.reason.as_str()), (401, "Unauthorized"));

    // A raw request without any Authorization header.
    let tcp = tokio::net::TcpStream::connect(standin.url().trim_start_matches("https://"))
        .await
        .unwrap();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(standin.ca().client_config()));
    let tls = connector
        .connect("127.0.0.1".try_into().unwrap(), tcp)
        .await
        .unwrap();
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls))
            .await
            .unwrap();
    tokio::spawn(conn);
    let request = http::Request::get("/api/v1/namespaces")
        .header("host", "127.0.0.1")
        .body(http_body_util::Empty::<bytes::Bytes>::new())
        .unwrap();
    let response = sender.send_request(request).await.unwrap();
    assert_eq!(response.status(), 401);
    let body = http_body_util::BodyExt::collect(response.into_body())
        .await
        .unwrap()
        .to_bytes();
    let status: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(
        status,
        json!({"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure","message":"Unauthorized","reason":"Unauthorized","code":401})
    );
    let recorded = standin.requests();
    assert!(recorded.iter().all(|r| r.user.is_none()));
    assert_eq!(recorded.len(), 2);
}

#[tokio::test]
async fn create_conflicts_replace_and_delete_like_the_api_server() {
    let standin = StandIn::start().await.unwrap();
    standin.lab_namespace("lab-a", "alice@example.com", &[]);
    let api: Api<NetworkPolicy> =
        Api::namespaced(standin.client(&standin.gateway_token()), "lab-a");

    let created = api
        .create(&PostParams::default(), &policy("p"))
        .await
        .unwrap();
    let meta = &created.metadata;
    assert_eq!(meta.namespace.as_deref(), Some("lab-a"));
    assert!(
        meta.uid.is_some() && meta.creation_timestamp.is_some() && meta.resource_version.is_some()
    );
    assert_eq!(meta.generation, Some(1));

    let status = api_error(
        api.create(&PostParams::default(), &policy("p"))
            .await
            .unwrap_err(),
    );
    assert_eq!(
        (status.code, status.reason.as_str()),
        (409, "AlreadyExists")
    );
    assert_eq!(
        status.message,
        "networkpolicies.networking.k8s.io \"p\" already exists"
    );
    let details = status.details.unwrap();
    assert_eq!(
        (
            details.name.as_str(),
            details.group.as_str(),
            details.kind.as_str()
        ),
        ("p", "networking.k8s.io", "networkpolicies")
    );

    // Replace with the current RV works and bumps generation; a stale RV is a Conflict.
    let mut changed = created.clone();
    changed.spec.as_mut().unwrap().policy_types = Some(vec!["Ingress".into(), "Egress".into()]);
    let replaced = api
        .replace("p", &PostParams::default(), &changed)
        .await
        .unwrap();
    assert_eq!(replaced.metadata.generation, Some(2));
    assert_eq!(replaced.metadata.uid, created.metadata.uid);
    let status = api_error(
        api.replace("p", &PostParams::default(), &changed)
            .await
            .unwrap_err(),
    );
    assert_eq!((status.code, status.reason.as_str()), (409, "Conflict"));

    let status = api_error(api.get("missing").await.unwrap_err());
    assert_eq!((status.code, status.reason.as_str()), (404, "NotFound"));
    assert_eq!(
        status.message,
        "networkpolicies.networking.k8s.io \"missing\" not found"
    );

    // dryRun changes nothing.
    let dry = PostParams {
        dry_run: true,
        ..Default::default()
    };
    api.create(&dry, &policy("dry")).await.unwrap();
    assert!(api.get_opt("dry").await.unwrap().is_none());

    api.delete("p", &DeleteParams::default()).await.unwrap();
    assert!(api.get_opt("p").await.unwrap().is_none());
    assert_eq!(
        api_error(api.delete("p", &DeleteParams::default()).await.unwrap_err()).code,
        404
    );

    // Namespaced content needs a live namespace.
    let elsewhere: Api<NetworkPolicy> =
        Api::namespaced(standin.client(&standin.gateway_token()), "nowhere");
    let status = api_error(
        elsewhere
            .create(&PostParams::default(), &policy("p"))
            .await
            .unwrap_err(),
    );
    assert_eq!(
        (status.code, status.message.as_str()),
        (404, "namespaces \"nowhere\" not found")
    );
}

#[tokio::test]
async fn patches_server_side_apply_merge_and_json_patch() {
    let standin = StandIn::start().await.unwrap();
    standin.lab_namespace("lab-a", "alice@example.com", &[]);
    let api: Api<NetworkPolicy> =
        Api::namespaced(standin.client(&standin.gateway_token()), "lab-a");

    // Server-side apply creates a missing object, then updates it.
    let apply = PatchParams::apply("labgate-admission").force();
    let first = api
        .patch("iso", &apply, &Patch::Apply(policy("iso")))
        .await
        .unwrap();
    assert!(first.metadata.uid.is_some());
    let managers: Vec<_> = first
        .metadata
        .managed_fields
        .unwrap()
        .into_iter()
        .map(|m| m.manager)
        .collect();
    assert_eq!(managers, [Some("labgate-admission".to_string())]);
    let mut labelled = policy("iso");
    labelled.metadata.labels = Some([("app".to_string(), "labgate".to_string())].into());
    let second = api
        .patch("iso", &apply, &Patch::Apply(labelled))
        .await
        .unwrap();
    assert_eq!(second.metadata.uid, first.metadata.uid);
    assert_eq!(second.metadata.labels.unwrap()["app"], "labgate");
    assert_ne!(
        second.metadata.resource_version,
        first.metadata.resource_version
    );

    let merge = api
        .patch(
            "iso",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"annotations": {"a": "1"}}})),
        )
        .await
        .unwrap();
    assert_eq!(merge.metadata.annotations.unwrap()["a"], "1");

    let ops: json_patch::Patch = serde_json::from_value(json!([
        {"op": "add", "path": "/metadata/annotations/b", "value": "2"},
        {"op": "replace", "path": "/metadata/annotations/a", "value": "one"},
        {"op": "remove", "path": "/metadata/labels/app"},
    ]))
    .unwrap();
    let patched = api
        .patch("iso", &PatchParams::default(), &Patch::Json::<()>(ops))
        .await
        .unwrap();
    let annotations = patched.metadata.annotations.unwrap();
    assert_eq!(
        (annotations["a"].as_str(), annotations["b"].as_str()),
        ("one", "2")
    );
    assert!(
        !patched
            .metadata
            .labels
            .unwrap_or_default()
            .contains_key("app")
    );

    let status = api_error(
        api.patch("absent", &PatchParams::default(), &Patch::Merge(json!({})))
            .await
            .unwrap_err(),
    );
    assert_eq!(status.code, 404);
}

#[tokio::test]
async fn namespace_deletion_terminates_then_removes_content_and_itself() {
    let standin = StandIn::start().await.unwrap();
    standin.lab_namespace("lab-a", "alice@example.com", &[]);
    let client = standin.client(&standin.gateway_token());
    let policies: Api<NetworkPolicy> = Api::namespaced(client.clone(), "lab-a");
    policies
        .create(&PostParams::default(), &policy("iso"))
        .await
        .unwrap();
    let secrets: Api<Secret> = Api::namespaced(client.clone(), "lab-a");

    let namespaces: Api<Namespace> = Api::all(client);
    let terminating = namespaces
        .delete("lab-a", &DeleteParams::default())
        .await
        .unwrap();
    let ns = terminating
        .left()
        .expect("a namespace delete returns the namespace");
    assert_eq!(ns.status.unwrap().phase.as_deref(), Some("Terminating"));
    assert!(ns.metadata.deletion_timestamp.is_some());

    // NamespaceLifecycle while terminating.
    let mut secret = Secret::default();
    secret.metadata.name = Some("s".into());
    let status = api_error(
        secrets
            .create(&PostParams::default(), &secret)
            .await
            .unwrap_err(),
    );
    assert_eq!(status.code, 403);
    assert!(
        status.message.contains(
            "unable to create new content in namespace lab-a because it is being terminated"
        ),
        "{}",
        status.message
    );

    let gone = tokio::time::timeout(Duration::from_secs(5), async {
        while standin.get_json("/api/v1/namespaces/lab-a").is_some() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert!(gone.is_ok(), "the namespace is removed after its content");
    assert!(
        standin
            .get_json("/apis/networking.k8s.io/v1/namespaces/lab-a/networkpolicies/iso")
            .is_none()
    );
}

#[tokio::test]
async fn admission_hook_sees_review_requests_and_can_deny() {
    let standin = StandIn::start().await.unwrap();
    standin.lab_namespace("lab-a", "alice@example.com", &[]);
    let reviews: Arc<Mutex<Vec<Value>>> = Arc::default();
    let seen = reviews.clone();
    standin.set_admission_hook(Some(Arc::new(move |review: Value| {
        seen.lock().unwrap().push(review.clone());
        async move {
            let request = &review["request"];
            let deleting_policy = request["operation"] == "DELETE" && request["resource"]["resource"] == "networkpolicies";
            if deleting_policy && request["userInfo"]["username"] != "system:serviceaccount:kube-system:namespace-controller" {
                Err(json!({ "code": 403, "reason": "Forbidden", "message": "admission webhook \"labgate\" denied the request: protected" }))
            } else {
                Ok(())
            }
        }
        .boxed()
    })));
    standin.add_token(
        "portal-token",
        UserInfo::service_account("portal", "portal"),
    );
    let client = standin.client("portal-token");
    let policies: Api<NetworkPolicy> = Api::namespaced(client.clone(), "lab-a");
    policies
        .create(&PostParams::default(), &policy("iso"))
        .await
        .unwrap();

    let status = api_error(
        policies
            .delete("iso", &DeleteParams::default())
            .await
            .unwrap_err(),
    );
    assert_eq!((status.code, status.reason.as_str()), (403, "Forbidden"));
    assert!(status.message.contains("denied the request: protected"));
    assert!(
        policies.get_opt("iso").await.unwrap().is_some(),
        "denied deletes change nothing"
    );

    let recorded = reviews.lock().unwrap().clone();
    assert_eq!(recorded.len(), 2);
    // The CREATE review parses as kube's AdmissionReview and carries what the API server sends.
    let review: AdmissionReview<DynamicObject> =
        serde_json::from_value(recorded[0].clone()).unwrap();
    let request: AdmissionRequest<DynamicObject> = review.try_into().unwrap();
    assert_eq!(request.operation, Operation::Create);
    assert_eq!(request.name, "iso");
    assert_eq!(request.namespace.as_deref(), Some("lab-a"));
    assert_eq!(request.resource.group, "networking.k8s.io");
    assert_eq!(request.resource.resource, "networkpolicies");
    assert_eq!(request.kind.kind, "NetworkPolicy");
    assert_eq!(
        request.user_info.username.as_deref(),
        Some("system:serviceaccount:portal:portal")
    );
    assert!(
        request
            .user_info
            .groups
            .unwrap()
            .contains(&"system:authenticated".to_string())
    );
    assert!(request.object.is_some() && request.old_object.is_none());
    let delete = &recorded[1]["request"];
    assert_eq!(delete["operation"], "DELETE");
    assert!(delete["object"].is_null());
    assert_eq!(delete["oldObject"]["metadata"]["name"], "iso");
    assert_eq!(delete["options"]["kind"], "DeleteOptions");

    // Namespace deletion goes through admission as the namespace controller, which the hook allows.
    standin.delete_namespace("lab-a");
    let gone = tokio::time::timeout(Duration::from_secs(5), async {
        while standin.get_json("/api/v1/namespaces/lab-a").is_some() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert!(gone.is_ok());
    let last = reviews.lock().unwrap().last().cloned().unwrap();
    assert_eq!(
        last["request"]["userInfo"]["username"],
        "system:serviceaccount:kube-system:namespace-controller"
    );
}

#[tokio::test]
async fn written_kubeconfig_works_with_kube() {
    let standin = StandIn::start().await.unwrap();
    standin.lab_namespace("lab-a", "alice@example.com", &[]);
    let dir = tempfile::tempdir().unwrap();
    let path = standin.write_kubeconfig(dir.path(), &standin.gateway_token());
    let token = std::fs::read_to_string(dir.path().join("kubeconfig-token")).unwrap();
    assert!(!token.ends_with('\n'), "kube does not trim token files");

    let kubeconfig = kube::config::Kubeconfig::read_from(&path).unwrap();
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
        .await
        .unwrap();
    let client = kube::Client::try_from(config).unwrap();
    let namespaces: Api<Namespace> = Api::all(client);
    let names: Vec<_> = namespaces
        .list(&Default::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter_map(|n| n.metadata.name)
        .collect();
    assert_eq!(names, ["lab-a"]);
    let recorded = standin.requests();
    assert_eq!(
        recorded.last().unwrap().user.as_deref(),
        Some("system:serviceaccount:labgate:labgate-gateway")
    );
}

#[tokio::test]
async fn invalid_names_and_injected_failures() {
    let standin = StandIn::start().await.unwrap();
    let namespaces: Api<Namespace> = Api::all(standin.client(&standin.gateway_token()));
    let mut bad = Namespace::default();
    bad.metadata.name = Some("Not_A_Label".into());
    let status = api_error(
        namespaces
            .create(&PostParams::default(), &bad)
            .await
            .unwrap_err(),
    );
    assert_eq!((status.code, status.reason.as_str()), (422, "Invalid"));
    assert!(
        status
            .message
            .starts_with("Namespace \"Not_A_Label\" is invalid: metadata.name: Invalid value"),
        "{}",
        status.message
    );

    standin.fail_requests("/api/v1/namespaces", 500, 1);
    let status = api_error(namespaces.list(&Default::default()).await.unwrap_err());
    assert_eq!(
        (status.code, status.reason.as_str()),
        (500, "InternalError")
    );
    assert!(
        namespaces.list(&Default::default()).await.is_ok(),
        "only once"
    );

    // kube retries 429 by itself (Retry-After honoured), so a single injected 429 is invisible.
    standin.fail_requests("/api/v1/namespaces", 429, 1);
    assert!(namespaces.list(&Default::default()).await.is_ok());
    let lists = standin
        .requests()
        .iter()
        .filter(|r| r.method == "GET" && r.path == "/api/v1/namespaces")
        .count();
    assert_eq!(lists, 4, "500, ok, 429, retried ok");
}
