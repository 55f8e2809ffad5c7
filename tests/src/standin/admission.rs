//! The admission step of every write: builds the `AdmissionReview` v1 request the real API server
//! would send to a validating webhook and hands it to the hook a test installed.
//!
//! Like the real server, webhooks are never consulted for webhook configuration objects.

use std::sync::Arc;

use futures::future::BoxFuture;
use serde_json::{Value, json};

use super::path::ResourceType;
use super::status::ApiError;
use super::store::new_uid;
use super::{Shared, UserInfo};

/// The hook type of [`super::StandIn::set_admission_hook`].
pub type AdmissionHook = Arc<dyn Fn(Value) -> BoxFuture<'static, Result<(), Value>> + Send + Sync>;

/// `request.operation`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operation {
    Create,
    Update,
    Delete,
}

impl Operation {
    fn as_str(self) -> &'static str {
        match self {
            Operation::Create => "CREATE",
            Operation::Update => "UPDATE",
            Operation::Delete => "DELETE",
        }
    }
}

/// Everything an admission request describes.
pub struct Attributes<'a> {
    pub rt: &'a ResourceType,
    /// The object's namespace (for Namespace objects addressed by name: the name, as RequestInfo does).
    pub namespace: Option<&'a str>,
    pub name: &'a str,
    pub operation: Operation,
    pub object: Option<&'a Value>,
    pub old_object: Option<&'a Value>,
    /// CreateOptions / UpdateOptions / PatchOptions / DeleteOptions.
    pub options: Value,
    pub dry_run: bool,
    pub user: &'a UserInfo,
}

/// The `AdmissionReview` JSON for these attributes.
pub fn review(attrs: &Attributes<'_>) -> Value {
    let gvk =
        json!({ "group": attrs.rt.group, "version": attrs.rt.version, "kind": attrs.rt.kind });
    let gvr = json!({ "group": attrs.rt.group, "version": attrs.rt.version, "resource": attrs.rt.resource });
    let mut groups = attrs.user.groups.clone();
    if !groups.iter().any(|g| g == "system:authenticated") {
        groups.push("system:authenticated".to_string());
    }
    let mut request = json!({
        "uid": new_uid(),
        "kind": gvk,
        "resource": gvr,
        "requestKind": gvk,
        "requestResource": gvr,
        "name": attrs.name,
        "operation": attrs.operation.as_str(),
        "userInfo": { "username": attrs.user.username, "groups": groups },
        "object": attrs.object.cloned().unwrap_or(Value::Null),
        "oldObject": attrs.old_object.cloned().unwrap_or(Value::Null),
        "dryRun": attrs.dry_run,
        "options": attrs.options,
    });
    if let Some(ns) = attrs.namespace {
        request["namespace"] = json!(ns);
    }
    json!({
        "kind": "AdmissionReview",
        "apiVersion": "admission.k8s.io/v1",
        "request": request,
    })
}

/// Options object of the given kind (`CreateOptions`, …), as sent in `request.options`.
pub fn options(kind: &str, field_manager: Option<&str>) -> Value {
    let mut o = json!({ "kind": kind, "apiVersion": "meta.k8s.io/v1" });
    if let Some(fm) = field_manager {
        o["fieldManager"] = json!(fm);
    }
    o
}

/// Runs the installed hook (if any); a denial becomes the error the client sees.
pub async fn admit(shared: &Shared, attrs: &Attributes<'_>) -> Result<(), ApiError> {
    if attrs.rt.group == "admissionregistration.k8s.io" {
        return Ok(());
    }
    let hook = shared.admission_hook.lock().expect("hook lock").clone();
    let Some(hook) = hook else {
        return Ok(());
    };
    hook(review(attrs)).await.map_err(ApiError::from_status)
}
