//! The REST verbs on stored resources: get, list/watch, create, replace, the four patch flavours,
//! delete and delete-collection, with NamespaceLifecycle, admission and `dryRun=All`.
//!
//! Order of checks follows the API server: path and body validation, NamespaceLifecycle,
//! admission webhooks, then the storage preconditions (exists / resourceVersion).

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use hyper::{Method, Response};
use serde_json::{Value, json};

use super::admission::{self, Attributes, Operation};
use super::path::{ApiPath, ResourceType, default_version};
use super::selector::{FieldSelector, LabelSelector};
use super::status::{ApiError, delete_success};
use super::store::{ObjectKey, now_rfc3339};
use super::watch::{self, Scope, WatchOptions};
use super::{Body, Query, Shared, UserInfo, json_response};

/// Label every namespace carries automatically.
pub const NAMESPACE_NAME_LABEL: &str = "kubernetes.io/metadata.name";
/// Who deletes a terminating namespace's content.
pub const NAMESPACE_CONTROLLER: &str = "system:serviceaccount:kube-system:namespace-controller";
/// How long a deleted namespace stays Terminating before its content goes.
pub const NAMESPACE_FINALIZE_AFTER: Duration = Duration::from_millis(50);

/// One request against a stored resource.
pub struct Call<'a> {
    pub shared: &'a Arc<Shared>,
    pub user: &'a UserInfo,
    pub path: ApiPath,
    pub query: &'a Query,
    pub content_type: String,
    pub body: Bytes,
}

impl Call<'_> {
    fn rt(&self) -> &ResourceType {
        &self.path.rt
    }

    fn dry_run(&self) -> bool {
        self.query.get("dryRun") == Some("All")
    }

    fn key(&self, name: &str) -> ObjectKey {
        object_key(self.rt(), self.path.namespace.as_deref(), name)
    }

    fn body_json(&self) -> Result<Value, ApiError> {
        let value: Value = serde_json::from_slice(&self.body).map_err(|e| {
            ApiError::bad_request(format!("the request body is not valid JSON: {e}"))
        })?;
        if value.is_object() {
            Ok(value)
        } else {
            Err(ApiError::bad_request(
                "the request body must be a JSON object",
            ))
        }
    }

    /// The namespace as an admission request reports it.
    fn admission_namespace<'a>(&'a self, name: &'a str) -> Option<&'a str> {
        match self.path.namespace.as_deref() {
            Some(ns) => Some(ns),
            None if self.rt().resource == "namespaces" && self.path.name.is_some() => Some(name),
            None => None,
        }
    }
}

pub fn object_key(rt: &ResourceType, namespace: Option<&str>, name: &str) -> ObjectKey {
    ObjectKey {
        group: rt.group.clone(),
        resource: rt.resource.clone(),
        namespace: if rt.namespaced {
            namespace.unwrap_or_default().to_string()
        } else {
            String::new()
        },
        name: name.to_string(),
    }
}

/// Dispatches on method and path shape.
pub async fn handle(call: Call<'_>, method: &Method) -> Result<Response<Body>, ApiError> {
    if let Some(sub) = call.path.subresource.as_deref() {
        // Only reading `status` is served; other subresources do not exist here.
        return if sub == "status" && method == Method::GET {
            get(&call)
        } else {
            Err(ApiError::no_such_path())
        };
    }
    let is_collection = call.path.name.is_none();
    match (method.clone(), is_collection) {
        (Method::GET, true) => list_or_watch(&call),
        (Method::GET, false) => get(&call),
        (Method::POST, true) => create(&call).await,
        (Method::PUT, false) => replace(&call).await,
        (Method::PATCH, false) => patch(&call).await,
        (Method::DELETE, false) => delete(&call).await,
        (Method::DELETE, true) => delete_collection(&call).await,
        _ => Err(ApiError::method_not_allowed()),
    }
}

fn get(call: &Call<'_>) -> Result<Response<Body>, ApiError> {
    let name = call.path.name.as_deref().unwrap_or_default();
    let store = call.shared.store.lock().expect("store lock");
    match store.get(&call.key(name)) {
        Some(obj) => Ok(json_response(200, obj)),
        None => Err(ApiError::not_found(call.rt(), name)),
    }
}

fn scope(call: &Call<'_>) -> Result<Scope, ApiError> {
    Ok(Scope {
        rt: call.rt().clone(),
        namespace: call.path.namespace.clone(),
        labels: LabelSelector::parse(call.query.get("labelSelector").unwrap_or_default())
            .map_err(ApiError::bad_request)?,
        fields: FieldSelector::parse(call.query.get("fieldSelector").unwrap_or_default())
            .map_err(ApiError::bad_request)?,
    })
}

fn list_or_watch(call: &Call<'_>) -> Result<Response<Body>, ApiError> {
    let scope = scope(call)?;
    if matches!(call.query.get("watch"), Some("true" | "1")) {
        let timeout = match call.query.get("timeoutSeconds") {
            Some(raw) => Some(Duration::from_secs(raw.parse().map_err(|_| {
                ApiError::bad_request(format!("invalid timeoutSeconds {raw:?}"))
            })?)),
            None => None,
        };
        let opts = WatchOptions {
            resource_version: call.query.get("resourceVersion").map(str::to_string),
            bookmarks: call.query.get("allowWatchBookmarks") == Some("true"),
            send_initial_events: call.query.get("sendInitialEvents") == Some("true"),
            timeout,
        };
        return watch::watch(call.shared, scope, opts);
    }
    let limit = match call.query.get("limit") {
        Some(raw) => Some(
            raw.parse()
                .map_err(|_| ApiError::bad_request(format!("invalid limit {raw:?}")))?,
        ),
        None => None,
    };
    let list = watch::list(
        call.shared,
        &scope,
        limit,
        call.query.get("continue").filter(|c| !c.is_empty()),
    )?;
    Ok(json_response(200, &list))
}

/// Fills `apiVersion`/`kind` and rejects a body of another kind.
fn check_type(rt: &ResourceType, obj: &mut Value) -> Result<(), ApiError> {
    match obj.get("kind").and_then(Value::as_str) {
        Some(kind) if kind != rt.kind => {
            return Err(ApiError::bad_request(format!(
                "the kind in the request body ({kind}) does not match the resource ({})",
                rt.kind
            )));
        }
        _ => obj["kind"] = json!(rt.kind),
    }
    if obj.get("apiVersion").and_then(Value::as_str).is_none() {
        obj["apiVersion"] = json!(rt.api_version());
    }
    if !obj.get("metadata").is_some_and(Value::is_object) {
        obj["metadata"] = json!({});
    }
    Ok(())
}

/// Puts the path's namespace into the object, or rejects a different one.
fn check_namespace(call: &Call<'_>, obj: &mut Value) -> Result<(), ApiError> {
    if !call.rt().namespaced {
        if let Some(m) = obj["metadata"].as_object_mut() {
            m.remove("namespace");
        }
        return Ok(());
    }
    let Some(ns) = call.path.namespace.as_deref() else {
        return Err(ApiError::method_not_allowed());
    };
    match obj["metadata"].get("namespace").and_then(Value::as_str) {
        Some(body_ns) if !body_ns.is_empty() && body_ns != ns => Err(ApiError::bad_request(
            "the namespace of the provided object does not match the namespace sent on the request",
        )),
        _ => {
            obj["metadata"]["namespace"] = json!(ns);
            Ok(())
        }
    }
}

/// NamespaceLifecycle: no new content in a missing or terminating namespace.
fn namespace_lifecycle(call: &Call<'_>, name: &str) -> Result<(), ApiError> {
    let Some(ns) = call
        .path
        .namespace
        .as_deref()
        .filter(|_| call.rt().namespaced)
    else {
        return Ok(());
    };
    let store = call.shared.store.lock().expect("store lock");
    let ns_rt = ResourceType::lookup("", "v1", "namespaces").expect("namespaces served");
    match store.get(&object_key(&ns_rt, None, ns)) {
        None => Err(ApiError::namespace_not_found(ns)),
        Some(obj) if is_terminating(obj) => Err(ApiError::forbidden(
            call.rt(),
            name,
            &format!(
                "unable to create new content in namespace {ns} because it is being terminated"
            ),
        )),
        Some(_) => Ok(()),
    }
}

pub fn is_terminating(ns: &Value) -> bool {
    ns.pointer("/status/phase").and_then(Value::as_str) == Some("Terminating")
        || ns
            .pointer("/metadata/deletionTimestamp")
            .is_some_and(|t| !t.is_null())
}

/// What a fresh namespace always has: the name label, the `kubernetes` finalizer, phase Active.
pub fn namespace_defaults(obj: &mut Value, name: &str) {
    if !obj["metadata"].get("labels").is_some_and(Value::is_object) {
        obj["metadata"]["labels"] = json!({});
    }
    obj["metadata"]["labels"][NAMESPACE_NAME_LABEL] = json!(name);
    if obj.pointer("/spec/finalizers").is_none() {
        obj["spec"] = json!({ "finalizers": ["kubernetes"] });
    }
    if obj.pointer("/status/phase").is_none() {
        obj["status"] = json!({ "phase": "Active" });
    }
}

/// Drops the metadata only the server may set.
fn strip_server_fields(obj: &mut Value) {
    if let Some(m) = obj["metadata"].as_object_mut() {
        for field in [
            "resourceVersion",
            "uid",
            "creationTimestamp",
            "deletionTimestamp",
            "generation",
        ] {
            m.remove(field);
        }
    }
}

async fn create(call: &Call<'_>) -> Result<Response<Body>, ApiError> {
    let mut obj = call.body_json()?;
    check_type(call.rt(), &mut obj)?;
    check_namespace(call, &mut obj)?;
    strip_server_fields(&mut obj);
    let name = match obj["metadata"].get("name").and_then(Value::as_str) {
        Some(n) if !n.is_empty() => n.to_string(),
        _ => match obj["metadata"].get("generateName").and_then(Value::as_str) {
            Some(prefix) if !prefix.is_empty() => format!("{prefix}{}", random_suffix()),
            _ => {
                return Err(ApiError::invalid(
                    call.rt(),
                    "",
                    "metadata.name",
                    "Required value: name or generateName is required",
                ));
            }
        },
    };
    obj["metadata"]["name"] = json!(name);
    let field_manager = call.query.get("fieldManager");
    let created = create_object(
        call,
        &name,
        obj,
        admission::options("CreateOptions", field_manager),
    )
    .await?;
    Ok(json_response(201, &created))
}

/// The shared tail of POST and of server-side apply on a missing object.
async fn create_object(
    call: &Call<'_>,
    name: &str,
    mut obj: Value,
    options: Value,
) -> Result<Value, ApiError> {
    check_name(call.rt(), name)?;
    if call.rt().resource == "namespaces" {
        namespace_defaults(&mut obj, name);
    }
    namespace_lifecycle(call, name)?;
    admission::admit(
        call.shared,
        &Attributes {
            rt: call.rt(),
            namespace: call.path.namespace.as_deref(),
            name,
            operation: Operation::Create,
            object: Some(&obj),
            old_object: None,
            options,
            dry_run: call.dry_run(),
            user: call.user,
        },
    )
    .await?;
    let key = call.key(name);
    let mut store = call.shared.store.lock().expect("store lock");
    if store.get(&key).is_some() {
        return Err(ApiError::already_exists(call.rt(), name));
    }
    if call.dry_run() {
        return Ok(obj);
    }
    Ok(store
        .commit(key, Some(obj))
        .expect("a write returns the object"))
}

/// Name validation: namespaces are RFC 1123 labels, everything else RFC 1123 subdomains.
fn check_name(rt: &ResourceType, name: &str) -> Result<(), ApiError> {
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && l.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && !l.starts_with('-')
            && !l.ends_with('-')
    };
    let (ok, rule) = if rt.resource == "namespaces" {
        (
            label_ok(name),
            "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character",
        )
    } else {
        (
            name.len() <= 253 && name.split('.').all(label_ok),
            "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character",
        )
    };
    if ok {
        return Ok(());
    }
    let mut error = ApiError::invalid(
        rt,
        name,
        "metadata.name",
        &format!("Invalid value: \"{name}\": {rule}"),
    );
    error.status["details"]["causes"][0]["reason"] = json!("FieldValueInvalid");
    Err(error)
}

/// Carries over what an update through the main resource cannot change.
fn keep_server_owned(rt: &ResourceType, old: &Value, new: &mut Value, name: &str) {
    if let Some(ts) = old.pointer("/metadata/deletionTimestamp") {
        new["metadata"]["deletionTimestamp"] = ts.clone();
    }
    if rt.resource == "namespaces" {
        if let Some(status) = old.get("status") {
            new["status"] = status.clone();
        }
        namespace_defaults(new, name);
    }
}

/// Compares a client-supplied resourceVersion with the stored one.
fn check_precondition(
    rt: &ResourceType,
    name: &str,
    stored: &Value,
    wanted: Option<&str>,
) -> Result<(), ApiError> {
    let current = stored
        .pointer("/metadata/resourceVersion")
        .and_then(Value::as_str);
    match wanted {
        Some(w) if !w.is_empty() && Some(w) != current => Err(ApiError::conflict(rt, name)),
        _ => Ok(()),
    }
}

async fn replace(call: &Call<'_>) -> Result<Response<Body>, ApiError> {
    let name = call.path.name.clone().unwrap_or_default();
    let mut obj = call.body_json()?;
    check_type(call.rt(), &mut obj)?;
    check_namespace(call, &mut obj)?;
    match obj["metadata"].get("name").and_then(Value::as_str) {
        Some(n) if n != name => {
            return Err(ApiError::bad_request(format!(
                "the name of the object ({n}) does not match the name on the URL ({name})"
            )));
        }
        _ => obj["metadata"]["name"] = json!(name),
    }
    let old = current(call, &name)?;
    let wanted = obj
        .pointer("/metadata/resourceVersion")
        .and_then(Value::as_str)
        .map(str::to_string);
    check_precondition(call.rt(), &name, &old, wanted.as_deref())?;
    keep_server_owned(call.rt(), &old, &mut obj, &name);
    let options = admission::options("UpdateOptions", call.query.get("fieldManager"));
    let updated = update_object(call, &name, &old, obj, options).await?;
    Ok(json_response(200, &updated))
}

fn current(call: &Call<'_>, name: &str) -> Result<Value, ApiError> {
    let store = call.shared.store.lock().expect("store lock");
    store
        .get(&call.key(name))
        .cloned()
        .ok_or_else(|| ApiError::not_found(call.rt(), name))
}

/// Admission then commit, failing with 409 if the object changed meanwhile.
async fn update_object(
    call: &Call<'_>,
    name: &str,
    old: &Value,
    new: Value,
    options: Value,
) -> Result<Value, ApiError> {
    admission::admit(
        call.shared,
        &Attributes {
            rt: call.rt(),
            namespace: call.admission_namespace(name),
            name,
            operation: Operation::Update,
            object: Some(&new),
            old_object: Some(old),
            options,
            dry_run: call.dry_run(),
            user: call.user,
        },
    )
    .await?;
    let key = call.key(name);
    let mut store = call.shared.store.lock().expect("store lock");
    let stored = store
        .get(&key)
        .ok_or_else(|| ApiError::not_found(call.rt(), name))?;
    if stored.pointer("/metadata/resourceVersion") != old.pointer("/metadata/resourceVersion") {
        return Err(ApiError::conflict(call.rt(), name));
    }
    if call.dry_run() {
        return Ok(new);
    }
    Ok(store
        .commit(key, Some(new))
        .expect("a write returns the object"))
}

async fn patch(call: &Call<'_>) -> Result<Response<Body>, ApiError> {
    let name = call.path.name.clone().unwrap_or_default();
    let content_type = call
        .content_type
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_string();
    let is_apply = content_type == "application/apply-patch+yaml";
    let field_manager = call.query.get("fieldManager");
    if is_apply && field_manager.is_none_or(str::is_empty) {
        return Err(ApiError::bad_request(
            "PATCH request must include fieldManager for apply requests",
        ));
    }
    let existing = {
        let store = call.shared.store.lock().expect("store lock");
        store.get(&call.key(&name)).cloned()
    };
    let old = match existing {
        Some(old) => old,
        None if is_apply => {
            let mut obj = apply_body(&call.body)?;
            check_type(call.rt(), &mut obj)?;
            check_namespace(call, &mut obj)?;
            strip_server_fields(&mut obj);
            obj["metadata"]["name"] = json!(name);
            record_manager(
                &mut obj,
                field_manager.unwrap_or_default(),
                &call.rt().api_version(),
            );
            let options = admission::options("PatchOptions", field_manager);
            let created = create_object(call, &name, obj, options).await?;
            return Ok(json_response(201, &created));
        }
        None => return Err(ApiError::not_found(call.rt(), &name)),
    };
    let mut new = old.clone();
    match content_type.as_str() {
        "application/merge-patch+json" | "application/strategic-merge-patch+json" => {
            json_patch::merge(&mut new, &call.body_json()?);
        }
        "application/apply-patch+yaml" => {
            json_patch::merge(&mut new, &apply_body(&call.body)?);
            record_manager(
                &mut new,
                field_manager.unwrap_or_default(),
                &call.rt().api_version(),
            );
        }
        "application/json-patch+json" => {
            let ops: json_patch::Patch = serde_json::from_slice(&call.body)
                .map_err(|e| ApiError::bad_request(format!("invalid JSON patch: {e}")))?;
            json_patch::patch(&mut new, &ops).map_err(|e| {
                ApiError::new(422, "Invalid", format!("the JSON patch failed: {e}"), None)
            })?;
        }
        other => return Err(ApiError::unsupported_media_type(other)),
    }
    if new.pointer("/metadata/name").and_then(Value::as_str) != Some(name.as_str()) {
        return Err(ApiError::bad_request(
            "metadata.name cannot be changed by a patch",
        ));
    }
    let wanted = new
        .pointer("/metadata/resourceVersion")
        .and_then(Value::as_str)
        .map(str::to_string);
    check_precondition(call.rt(), &name, &old, wanted.as_deref())?;
    check_type(call.rt(), &mut new)?;
    for field in ["uid", "creationTimestamp"] {
        if let Some(v) = old.pointer(&format!("/metadata/{field}")) {
            new["metadata"][field] = v.clone();
        }
    }
    keep_server_owned(call.rt(), &old, &mut new, &name);
    let options = admission::options("PatchOptions", field_manager);
    let updated = update_object(call, &name, &old, new, options).await?;
    Ok(json_response(200, &updated))
}

/// Server-side apply bodies are YAML (JSON being a subset).
fn apply_body(body: &[u8]) -> Result<Value, ApiError> {
    let value: Value = serde_yaml::from_slice(body).map_err(|e| {
        ApiError::bad_request(format!("the apply body is not valid YAML or JSON: {e}"))
    })?;
    if value.is_object() {
        Ok(value)
    } else {
        Err(ApiError::bad_request("the apply body must be an object"))
    }
}

/// Minimal managedFields: one `Apply` entry per field manager.
fn record_manager(obj: &mut Value, manager: &str, api_version: &str) {
    let entry = json!({
        "manager": manager,
        "operation": "Apply",
        "apiVersion": api_version,
        "time": now_rfc3339(),
        "fieldsType": "FieldsV1",
        "fieldsV1": {},
    });
    let mut fields: Vec<Value> = obj
        .pointer("/metadata/managedFields")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    fields.retain(|f| f.get("manager").and_then(Value::as_str) != Some(manager));
    fields.push(entry);
    obj["metadata"]["managedFields"] = Value::Array(fields);
}

async fn delete(call: &Call<'_>) -> Result<Response<Body>, ApiError> {
    let name = call.path.name.clone().unwrap_or_default();
    let options: Value = if call.body.is_empty() {
        json!({})
    } else {
        call.body_json()?
    };
    let old = current(call, &name)?;
    if let Some(uid) = options
        .pointer("/preconditions/uid")
        .and_then(Value::as_str)
        && old.pointer("/metadata/uid").and_then(Value::as_str) != Some(uid)
    {
        return Err(ApiError::conflict(call.rt(), &name));
    }
    let wanted = options
        .pointer("/preconditions/resourceVersion")
        .and_then(Value::as_str);
    check_precondition(call.rt(), &name, &old, wanted)?;
    let mut delete_options = options.clone();
    delete_options["kind"] = json!("DeleteOptions");
    delete_options["apiVersion"] = json!("meta.k8s.io/v1");
    let result = delete_object(
        call.shared,
        call.user,
        call.rt(),
        &old,
        delete_options,
        call.dry_run(),
        DeleteVia::Item,
    )
    .await?;
    Ok(json_response(200, &result))
}

/// How a delete was addressed: it decides the `name` admission sees.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeleteVia {
    /// `DELETE .../{name}`: admission gets the name from the URL.
    Item,
    /// `DELETE .../{resource}` (deletecollection): the real apiserver builds the
    /// attributes once with name `""` (endpoints/handlers/delete.go,
    /// DeleteCollection) and reuses them for every item
    /// (registry/rest/delete.go, AdmissionToValidateObjectDeleteFunc copies
    /// `staticAttributes.GetName()`), so each per-item review has an empty
    /// `name` and the item only in `oldObject`.
    Collection,
}

/// Deletes the stored object `old` (admission included). Namespaces only start terminating.
pub async fn delete_object(
    shared: &Arc<Shared>,
    user: &UserInfo,
    rt: &ResourceType,
    old: &Value,
    options: Value,
    dry_run: bool,
    via: DeleteVia,
) -> Result<Value, ApiError> {
    let name = old
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let namespace = old.pointer("/metadata/namespace").and_then(Value::as_str);
    let is_namespace = rt.resource == "namespaces";
    admission::admit(
        shared,
        &Attributes {
            rt,
            namespace: if is_namespace { Some(name) } else { namespace },
            name: match via {
                DeleteVia::Item => name,
                DeleteVia::Collection => "",
            },
            operation: Operation::Delete,
            object: None,
            old_object: Some(old),
            options,
            dry_run,
            user,
        },
    )
    .await?;
    let key = object_key(rt, namespace, name);
    let uid = old.pointer("/metadata/uid").and_then(Value::as_str);
    if dry_run {
        return Ok(if is_namespace {
            old.clone()
        } else {
            delete_success(rt, name, uid)
        });
    }
    if is_namespace {
        return Ok(begin_namespace_termination(shared, name).unwrap_or_else(|| old.clone()));
    }
    let mut store = shared.store.lock().expect("store lock");
    if store.get(&key).is_none() {
        return Err(ApiError::not_found(rt, name));
    }
    store.commit(key, None);
    Ok(delete_success(rt, name, uid))
}

/// Marks a namespace Terminating (one MODIFIED event) and schedules the removal of its content and
/// then of itself. Returns the terminating namespace, or `None` if it does not exist.
pub fn begin_namespace_termination(shared: &Arc<Shared>, name: &str) -> Option<Value> {
    let ns_rt = ResourceType::lookup("", "v1", "namespaces").expect("namespaces served");
    let key = object_key(&ns_rt, None, name);
    let mut store = shared.store.lock().expect("store lock");
    let current = store.get(&key)?.clone();
    if is_terminating(&current) {
        return Some(current);
    }
    let mut terminating = current;
    terminating["metadata"]["deletionTimestamp"] = json!(now_rfc3339());
    terminating["status"] = json!({ "phase": "Terminating" });
    let stored = store.commit(key, Some(terminating));
    drop(store);
    let shared_task = shared.clone();
    let name = name.to_string();
    shared
        .runtime
        .spawn(async move { finalize_namespace(shared_task, name).await });
    stored
}

/// The namespace controller: deletes every object in the namespace through admission (as the
/// namespace-controller service account), then the namespace. Denied deletes are retried, leaving
/// the namespace Terminating meanwhile, as on a real cluster.
async fn finalize_namespace(shared: Arc<Shared>, name: String) {
    let controller = UserInfo {
        username: NAMESPACE_CONTROLLER.to_string(),
        groups: vec![
            "system:serviceaccounts".into(),
            "system:serviceaccounts:kube-system".into(),
        ],
    };
    tokio::time::sleep(NAMESPACE_FINALIZE_AFTER).await;
    loop {
        if shared.cancel.is_cancelled() {
            return;
        }
        let content = shared.store.lock().expect("store lock").in_namespace(&name);
        let mut remaining = 0;
        for (key, obj) in content {
            let Some(rt) =
                ResourceType::lookup(&key.group, default_version(&key.group), &key.resource)
            else {
                continue;
            };
            let options = json!({ "kind": "DeleteOptions", "apiVersion": "meta.k8s.io/v1", "propagationPolicy": "Background" });
            // The namespace controller deletes by collection where the resource
            // supports it (pkg/controller/namespace/deletion/
            // namespaced_resources_deleter.go, deleteCollection), so its
            // reviews carry an empty name too.
            if delete_object(
                &shared,
                &controller,
                &rt,
                &obj,
                options,
                false,
                DeleteVia::Collection,
            )
            .await
            .is_err()
            {
                remaining += 1;
            }
        }
        if remaining == 0 {
            let ns_rt = ResourceType::lookup("", "v1", "namespaces").expect("namespaces served");
            let mut store = shared.store.lock().expect("store lock");
            let key = object_key(&ns_rt, None, &name);
            if store.get(&key).is_some() {
                store.commit(key, None);
            }
            return;
        }
        tokio::select! {
            _ = shared.cancel.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_millis(200)) => {}
        }
    }
}

async fn delete_collection(call: &Call<'_>) -> Result<Response<Body>, ApiError> {
    let scope = scope(call)?;
    let listed = watch::list(call.shared, &scope, None, None)?;
    let mut deleted = Vec::new();
    let options = json!({ "kind": "DeleteOptions", "apiVersion": "meta.k8s.io/v1" });
    for obj in listed["items"].as_array().cloned().unwrap_or_default() {
        delete_object(
            call.shared,
            call.user,
            call.rt(),
            &obj,
            options.clone(),
            call.dry_run(),
            DeleteVia::Collection,
        )
        .await?;
        deleted.push(obj);
    }
    Ok(json_response(
        200,
        &json!({
            "kind": format!("{}List", call.rt().kind),
            "apiVersion": call.rt().api_version(),
            "metadata": { "resourceVersion": listed["metadata"]["resourceVersion"] },
            "items": deleted,
        }),
    ))
}

fn random_suffix() -> String {
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    (0..5)
        .map(|_| ALPHABET[rand::random_range(0..ALPHABET.len())] as char)
        .collect()
}
