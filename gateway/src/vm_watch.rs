//! The VMI and VM watches that feed the [`VmIndex`]: list, watch, re-watch.
//!
//! The same loop as [`crate::namespace_watch`], once per kind and across all
//! namespaces: a watch that ends is re-opened at once from the last
//! resourceVersion, a 410 Expired relists at once, failed requests back off
//! (100 ms doubling to 500 ms, with jitter). Two more reasons to relist:
//! a namespace became a lab (its VMs' events may have been ignored before),
//! at most once per [`MIN_RELIST_INTERVAL`] so a portal creating a class's
//! labs at once costs a few lists, not one per lab.
//!
//! The API-server load is two open watches per replica plus a list after
//! each 410, lab creation burst or failure: it does not grow with the
//! number of listing or screenshot requests, which only read the index.
//! Every re-watch or relist is counted in
//! `labgate_gateway_vm_watch_restarts_total{resource}`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::{Stream, StreamExt};
use kube::api::{
    ApiResource, DynamicObject, GroupVersionKind, ListParams, WatchEvent, WatchParams,
};
use tokio::sync::watch;

use crate::apiclient::ApiClient;
use crate::namespace_watch::{
    Backoff, FIRST_BACKOFF, IDLE_GRACE, PAGE_SIZE, SHORT_WATCH, WARN_EVERY,
};
use crate::vm_index::{Observed, Source, VmIndex};

/// Shortest time between two relists caused by new labs.
pub const MIN_RELIST_INTERVAL: Duration = Duration::from_millis(500);

/// How one watch stream ended.
enum End {
    /// Closed by the server or a dropped connection: re-watch at once.
    Closed,
    /// 410 Expired, or a new lab: relist.
    Relist,
    /// An ERROR event other than 410, or silence past the timeout.
    Failed(String),
}

fn api_resource(source: Source) -> ApiResource {
    let kind = match source {
        Source::Vmi => "VirtualMachineInstance",
        Source::Vm => "VirtualMachine",
    };
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("kubevirt.io", "v1", kind),
        source.resource(),
    )
}

/// Keeps `index`'s view of `source` objects in sync until the task is dropped.
/// Waits for the lab index's first list first, so the first VM list keeps
/// the labs' VMs.
pub async fn watch_vms(
    api: Arc<ApiClient>,
    index: Arc<VmIndex>,
    source: Source,
    watch_timeout: Duration,
) {
    let timeout_secs = watch_timeout.as_secs().clamp(1, 290) as u32;
    let idle_limit = Duration::from_secs(timeout_secs.into()) + IDLE_GRACE;
    let resource = source.resource();
    let restarts = index
        .metrics()
        .vm_watch_restarts
        .with_label_values(&[resource]);
    let ar = api_resource(source);
    let mut relists = index.relist_requests();
    index.lab_index().wait_ready().await;
    let mut backoff = Backoff::new();
    let mut resource_version: Option<String> = None;
    let mut refreshed = false;
    let mut last_list: Option<Instant> = None;
    loop {
        let (generation, client) = api.current();
        let objects: kube::Api<DynamicObject> = kube::Api::all_with(client, &ar);
        let rv = match resource_version.take() {
            Some(rv) => rv,
            None => {
                if let Some(at) = last_list {
                    tokio::time::sleep(MIN_RELIST_INTERVAL.saturating_sub(at.elapsed())).await;
                }
                // Requests for a relist made before this list are answered by it.
                relists.borrow_and_update();
                last_list = Some(Instant::now());
                match list(&objects, &index, source).await {
                    Ok(rv) => {
                        let _ = backoff.reset();
                        refreshed = false;
                        rv
                    }
                    Err(e) => {
                        restarts.inc();
                        failed(&api, &mut backoff, &mut refreshed, generation, resource, e).await;
                        continue;
                    }
                }
            }
        };
        let params = WatchParams::default().timeout(timeout_secs);
        match objects.watch(&params, &rv).await {
            Ok(stream) => {
                let failures = backoff.reset();
                if failures > 0 {
                    tracing::info!(resource, failures, "VM watch open again");
                }
                refreshed = false;
                let opened = Instant::now();
                let mut rv = rv;
                let end = follow(stream, &index, source, &mut rv, idle_limit, &mut relists).await;
                restarts.inc();
                if opened.elapsed() < SHORT_WATCH && matches!(end, End::Closed) {
                    tokio::time::sleep(FIRST_BACKOFF).await;
                }
                match end {
                    End::Closed => resource_version = Some(rv),
                    End::Relist => tracing::debug!(resource, "VM watch relisting"),
                    End::Failed(why) => {
                        tracing::warn!(resource, error = %why, "VM watch failed; retrying");
                        resource_version = Some(rv);
                        tokio::time::sleep(backoff.delay()).await;
                    }
                }
            }
            Err(kube::Error::Api(status)) if status.code == 410 => restarts.inc(),
            Err(e) => {
                restarts.inc();
                resource_version = Some(rv);
                failed(&api, &mut backoff, &mut refreshed, generation, resource, e).await;
            }
        }
    }
}

/// A failed request: re-read the token after a first 401, otherwise back off.
async fn failed(
    api: &ApiClient,
    backoff: &mut Backoff,
    refreshed: &mut bool,
    generation: u64,
    resource: &str,
    error: kube::Error,
) {
    let unauthorized = matches!(&error, kube::Error::Api(s) if s.code == 401);
    if unauthorized && !*refreshed && api.refresh(generation) {
        *refreshed = true;
        return;
    }
    let delay = backoff.delay();
    if backoff.failures % WARN_EVERY == 1 {
        tracing::warn!(resource, error = %error, failures = backoff.failures, "VM list/watch failed; retrying");
    } else {
        tracing::debug!(resource, error = %error, "VM list/watch failed; retrying");
    }
    tokio::time::sleep(delay).await;
}

fn key(object: &DynamicObject) -> Option<(&str, &str)> {
    Some((
        object.metadata.namespace.as_deref()?,
        object.metadata.name.as_deref()?,
    ))
}

/// Lists every object of the kind (page by page) into the index; returns
/// the list's resourceVersion to watch from.
async fn list(
    api: &kube::Api<DynamicObject>,
    index: &VmIndex,
    source: Source,
) -> Result<String, kube::Error> {
    index.begin_list(source);
    let mut fresh = Vec::new();
    let mut params = ListParams::default().limit(PAGE_SIZE);
    loop {
        let page = api.list(&params).await?;
        for object in &page.items {
            if let Some((ns, name)) = key(object) {
                // Objects outside labs are dropped here, before they take memory.
                if index.lab_index().get(ns).is_some() {
                    fresh.push((
                        ns.to_string(),
                        name.to_string(),
                        Observed::from_object(source, &object.data),
                    ));
                }
            }
        }
        match page.metadata.continue_.filter(|c| !c.is_empty()) {
            Some(token) => params = params.continue_token(&token),
            None => {
                tracing::debug!(
                    resource = source.resource(),
                    kept = fresh.len(),
                    "VM index listed"
                );
                index.replace_all(source, fresh);
                return Ok(page.metadata.resource_version.unwrap_or_default());
            }
        }
    }
}

/// Applies a watch stream's events to the index until it ends or a relist is asked for.
async fn follow(
    stream: impl Stream<Item = Result<WatchEvent<DynamicObject>, kube::Error>>,
    index: &VmIndex,
    source: Source,
    rv: &mut String,
    idle_limit: Duration,
    relists: &mut watch::Receiver<u64>,
) -> End {
    futures::pin_mut!(stream);
    loop {
        let next = tokio::select! {
            changed = relists.changed() => {
                if changed.is_ok() {
                    return End::Relist;
                }
                // The index is gone: nothing more to feed.
                std::future::pending::<()>().await;
                continue;
            }
            next = tokio::time::timeout(idle_limit, stream.next()) => next,
        };
        let event = match next {
            Err(_) => return End::Failed("no event or end within the watch timeout".into()),
            Ok(None) => return End::Closed,
            Ok(Some(Err(e))) => {
                tracing::debug!(error = %e, "VM watch connection ended");
                return End::Closed;
            }
            Ok(Some(Ok(event))) => event,
        };
        match event {
            WatchEvent::Added(object) | WatchEvent::Modified(object) => {
                remember(rv, &object);
                if let Some((ns, name)) = key(&object) {
                    index.apply(
                        source,
                        ns,
                        name,
                        Some(Observed::from_object(source, &object.data)),
                    );
                }
            }
            WatchEvent::Deleted(object) => {
                remember(rv, &object);
                if let Some((ns, name)) = key(&object) {
                    index.apply(source, ns, name, None);
                }
            }
            WatchEvent::Bookmark(bookmark) => *rv = bookmark.metadata.resource_version,
            WatchEvent::Error(status) if status.code == 410 => return End::Relist,
            WatchEvent::Error(status) => return End::Failed(status.message),
        }
    }
}

fn remember(rv: &mut String, object: &DynamicObject) {
    if let Some(v) = &object.metadata.resource_version {
        rv.clone_from(v);
    }
}
