//! `Status` error bodies shaped exactly like the API server's (`k8s.io/apimachinery` `errors.New*`).
//!
//! Every failure the stand-in answers with goes through [`ApiError`], so clients see the same JSON,
//! HTTP code and `reason` they would get from a real cluster.

use serde_json::{Value, json};

use super::path::ResourceType;

/// A failed request: HTTP code plus the `Status` object sent as the body.
#[derive(Debug, Clone)]
pub struct ApiError {
    pub code: u16,
    pub status: Value,
}

impl ApiError {
    /// A `Status` with `status: Failure`; `details` is omitted when `None`.
    pub fn new(
        code: u16,
        reason: &str,
        message: impl Into<String>,
        details: Option<Value>,
    ) -> ApiError {
        let mut status = json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": message.into(),
            "reason": reason,
            "code": code,
        });
        if let Some(details) = details {
            status["details"] = details;
        }
        ApiError { code, status }
    }

    /// Wraps a `Status` produced elsewhere (an admission hook), filling the fields it left out.
    pub fn from_status(mut status: Value) -> ApiError {
        if !status.is_object() {
            status = json!({ "message": status.to_string() });
        }
        let code = status
            .get("code")
            .and_then(Value::as_u64)
            .and_then(|c| u16::try_from(c).ok())
            .filter(|c| (400..600).contains(c))
            .unwrap_or(400);
        let obj = status.as_object_mut().expect("status is an object");
        obj.insert("kind".into(), json!("Status"));
        obj.insert("apiVersion".into(), json!("v1"));
        obj.entry("metadata").or_insert_with(|| json!({}));
        obj.insert("status".into(), json!("Failure"));
        obj.insert("code".into(), json!(code));
        ApiError { code, status }
    }

    pub fn unauthorized() -> ApiError {
        ApiError::new(401, "Unauthorized", "Unauthorized", None)
    }

    pub fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(400, "BadRequest", message, None)
    }

    /// The plain 404 the API server gives for paths it does not serve.
    pub fn no_such_path() -> ApiError {
        ApiError::new(
            404,
            "NotFound",
            "the server could not find the requested resource",
            Some(json!({})),
        )
    }

    pub fn not_found(rt: &ResourceType, name: &str) -> ApiError {
        ApiError::new(
            404,
            "NotFound",
            format!("{} \"{name}\" not found", rt.qualified()),
            Some(details(rt, name)),
        )
    }

    /// NamespaceLifecycle's answer for content in a namespace that does not exist.
    pub fn namespace_not_found(namespace: &str) -> ApiError {
        ApiError::new(
            404,
            "NotFound",
            format!("namespaces \"{namespace}\" not found"),
            Some(json!({ "name": namespace, "kind": "namespaces" })),
        )
    }

    pub fn already_exists(rt: &ResourceType, name: &str) -> ApiError {
        ApiError::new(
            409,
            "AlreadyExists",
            format!("{} \"{name}\" already exists", rt.qualified()),
            Some(details(rt, name)),
        )
    }

    pub fn conflict(rt: &ResourceType, name: &str) -> ApiError {
        ApiError::new(
            409,
            "Conflict",
            format!(
                "Operation cannot be fulfilled on {} \"{name}\": the object has been modified; \
                 please apply your changes to the latest version and try again",
                rt.qualified()
            ),
            Some(details(rt, name)),
        )
    }

    /// `errors.NewForbidden`: `<resource> "<name>" is forbidden: <why>`.
    pub fn forbidden(rt: &ResourceType, name: &str, why: &str) -> ApiError {
        ApiError::new(
            403,
            "Forbidden",
            format!("{} \"{name}\" is forbidden: {why}", rt.qualified()),
            Some(details(rt, name)),
        )
    }

    /// `errors.NewInvalid` with a single field cause.
    pub fn invalid(rt: &ResourceType, name: &str, field: &str, why: &str) -> ApiError {
        let mut d = details(rt, name);
        d["kind"] = json!(rt.kind);
        d["causes"] = json!([{ "reason": "FieldValueRequired", "message": why, "field": field }]);
        ApiError::new(
            422,
            "Invalid",
            format!("{} \"{name}\" is invalid: {field}: {why}", rt.kind),
            Some(d),
        )
    }

    /// `errors.NewResourceExpired`: what an over-old watch or continue token gets.
    pub fn expired(message: impl Into<String>) -> ApiError {
        ApiError::new(410, "Expired", message, None)
    }

    pub fn internal(message: impl Into<String>) -> ApiError {
        ApiError::new(500, "InternalError", message, None)
    }

    pub fn unsupported_media_type(content_type: &str) -> ApiError {
        ApiError::new(
            415,
            "UnsupportedMediaType",
            format!(
                "the body of the request was in an unknown format - accepted media types include: application/json-patch+json, application/merge-patch+json, application/apply-patch+yaml (got {content_type:?})"
            ),
            None,
        )
    }

    pub fn method_not_allowed() -> ApiError {
        ApiError::new(
            405,
            "MethodNotAllowed",
            "the server does not allow this method on the requested resource",
            Some(json!({})),
        )
    }
}

/// `StatusDetails` as the API server fills it: `kind` is the plural resource, `group` only if non-core.
fn details(rt: &ResourceType, name: &str) -> Value {
    let mut d = json!({ "name": name, "kind": rt.resource });
    if !rt.group.is_empty() {
        d["group"] = json!(rt.group);
    }
    d
}

/// The `Status` a successful delete of a plain resource returns.
pub fn delete_success(rt: &ResourceType, name: &str, uid: Option<&str>) -> Value {
    let mut d = details(rt, name);
    if let Some(uid) = uid {
        d["uid"] = json!(uid);
    }
    json!({
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Success",
        "details": d,
    })
}
