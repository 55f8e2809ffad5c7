//! The namespace watch that feeds the [`LabIndex`]: list, watch, re-watch.
//!
//! A hand-written list+watch loop rather than kube-runtime's `watcher`,
//! for three things the index needs:
//! - **No needless waiting.** A watch that ends (its timeout, a dropped
//!   connection) is re-opened at once from the last resourceVersion, and a
//!   410 Expired relists at once. kube-runtime's `default_backoff` waits
//!   0.8 s and more after each of these, and grows while the API server is
//!   down, which kept the index seconds behind.
//! - **Backoff only for real errors** (a refused or failed request): from
//!   100 ms doubling to [`MAX_BACKOFF`], so after an outage the index is
//!   current within about a second of the API server answering again.
//! - **Knowing when the watch is healthy.** An open watch stream, even a
//!   quiet one, keeps the index current; failing requests make it stale
//!   ([`LabIndex::staleness`]), which bounds readiness and new sessions.
//!
//! Every re-watch or relist is counted in
//! `labgate_gateway_index_watch_restarts_total`. A 401 re-reads the
//! gateway's token and retries at once ([`ApiClient::refresh`]).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::{Stream, StreamExt};
use k8s_openapi::api::core::v1::Namespace;
use kube::api::{ListParams, WatchEvent, WatchParams};
use labgate_policies::LAB_SELECTOR;

use crate::apiclient::ApiClient;
use crate::index::{LabIndex, entry_for};

/// Longest wait between failed requests.
pub const MAX_BACKOFF: Duration = Duration::from_millis(500);
pub(crate) const FIRST_BACKOFF: Duration = Duration::from_millis(100);
/// Items per list page.
pub(crate) const PAGE_SIZE: u32 = 500;
/// Extra time past the server-side timeout before a silent watch counts as dead.
pub(crate) const IDLE_GRACE: Duration = Duration::from_secs(5);
/// A watch that ends sooner than this is not re-opened at once (a server
/// that closes every watch straight away must not be hammered).
pub(crate) const SHORT_WATCH: Duration = Duration::from_secs(1);
/// While requests keep failing, one warning per this many failures.
pub(crate) const WARN_EVERY: u32 = 64;

/// Exponential backoff between failed requests, with jitter so that
/// replicas do not retry in step (shared with [`crate::vm_watch`]).
pub(crate) struct Backoff {
    next: Duration,
    /// Failed requests since the last success.
    pub(crate) failures: u32,
}

impl Backoff {
    pub(crate) fn new() -> Backoff {
        Backoff {
            next: FIRST_BACKOFF,
            failures: 0,
        }
    }

    /// A request succeeded; returns how many had failed before it.
    pub(crate) fn reset(&mut self) -> u32 {
        self.next = FIRST_BACKOFF;
        std::mem::take(&mut self.failures)
    }

    /// The delay before the next attempt: between half and all of the step.
    pub(crate) fn delay(&mut self) -> Duration {
        self.failures = self.failures.saturating_add(1);
        let step = self.next;
        self.next = (step * 2).min(MAX_BACKOFF);
        step.mul_f64(0.5 + rand::random::<f64>() / 2.0)
    }
}

/// How one watch stream ended.
enum End {
    /// The server closed it (its timeout) or the connection dropped:
    /// re-watch at once from the last resourceVersion.
    Closed,
    /// 410 Expired: the resourceVersion is too old, relist at once.
    Expired,
    /// An ERROR event other than 410, or silence past the timeout.
    Failed(String),
}

/// Keeps `index` in sync with lab namespaces until the task is dropped.
///
/// `watch_timeout` is the server-side timeout of each watch request.
pub async fn watch_namespaces(api: Arc<ApiClient>, index: Arc<LabIndex>, watch_timeout: Duration) {
    let timeout_secs = watch_timeout.as_secs().clamp(1, 290) as u32;
    let idle_limit = Duration::from_secs(timeout_secs.into()) + IDLE_GRACE;
    let mut backoff = Backoff::new();
    let mut resource_version: Option<String> = None;
    // Whether the last request got 401 and the token was re-read for it.
    let mut refreshed = false;
    loop {
        let (generation, client) = api.current();
        let namespaces: kube::Api<Namespace> = kube::Api::all(client);
        let rv = match resource_version.take() {
            Some(rv) => rv,
            None => match list(&namespaces, &index).await {
                Ok(rv) => {
                    let _ = backoff.reset();
                    refreshed = false;
                    rv
                }
                Err(e) => {
                    failed(
                        &api,
                        &index,
                        &mut backoff,
                        &mut refreshed,
                        generation,
                        "list",
                        e,
                    )
                    .await;
                    continue;
                }
            },
        };
        let params = WatchParams::default()
            .labels(LAB_SELECTOR)
            .timeout(timeout_secs);
        match namespaces.watch(&params, &rv).await {
            Ok(stream) => {
                index.watch_opened();
                let failures = backoff.reset();
                if failures > 0 {
                    tracing::info!(failures, "lab namespace watch open again");
                }
                refreshed = false;
                let opened = Instant::now();
                let mut rv = rv;
                let end = follow(stream, &index, &mut rv, idle_limit).await;
                index.watch_closed();
                index.metrics().index_watch_restarts.inc();
                // A 410 relists at once regardless: the fresh list's RV is current.
                if opened.elapsed() < SHORT_WATCH && matches!(end, End::Closed) {
                    tokio::time::sleep(FIRST_BACKOFF).await;
                }
                match end {
                    End::Closed => resource_version = Some(rv),
                    End::Expired => {
                        tracing::info!("lab namespace watch expired (410); relisting");
                    }
                    End::Failed(why) => {
                        tracing::warn!(error = %why, "lab namespace watch failed; retrying");
                        resource_version = Some(rv);
                        tokio::time::sleep(backoff.delay()).await;
                    }
                }
            }
            Err(kube::Error::Api(status)) if status.code == 410 => {
                // Some servers answer an old resourceVersion with 410 up front.
                index.metrics().index_watch_restarts.inc();
            }
            Err(e) => {
                resource_version = Some(rv);
                failed(
                    &api,
                    &index,
                    &mut backoff,
                    &mut refreshed,
                    generation,
                    "watch",
                    e,
                )
                .await;
            }
        }
    }
}

/// A list or watch request failed: count it, re-read the token after a
/// first 401, otherwise wait out the backoff.
async fn failed(
    api: &ApiClient,
    index: &LabIndex,
    backoff: &mut Backoff,
    refreshed: &mut bool,
    generation: u64,
    what: &str,
    error: kube::Error,
) {
    index.watch_closed();
    index.metrics().index_watch_restarts.inc();
    let unauthorized = matches!(&error, kube::Error::Api(s) if s.code == 401);
    if unauthorized && !*refreshed && api.refresh(generation) {
        *refreshed = true;
        return;
    }
    let delay = backoff.delay();
    if backoff.failures % WARN_EVERY == 1 {
        tracing::warn!(error = %error, failures = backoff.failures, "lab namespace {what} failed; retrying");
    } else {
        tracing::debug!(error = %error, "lab namespace {what} failed; retrying");
    }
    tokio::time::sleep(delay).await;
}

/// Lists every lab namespace (page by page) into the index; returns the
/// list's resourceVersion to watch from.
async fn list(api: &kube::Api<Namespace>, index: &LabIndex) -> Result<String, kube::Error> {
    let mut fresh = HashMap::new();
    let mut params = ListParams::default().labels(LAB_SELECTOR).limit(PAGE_SIZE);
    loop {
        let page = api.list(&params).await?;
        for ns in &page.items {
            if let (Some(name), Some(entry)) = (ns.metadata.name.clone(), entry_for(ns)) {
                fresh.insert(name, entry);
            }
        }
        match page.metadata.continue_.filter(|c| !c.is_empty()) {
            Some(token) => params = params.continue_token(&token),
            None => {
                index.replace_all(fresh);
                index.listed();
                tracing::info!(labs = index.len(), "lab index synced");
                return Ok(page.metadata.resource_version.unwrap_or_default());
            }
        }
    }
}

/// Applies a watch stream's events to the index until it ends.
async fn follow(
    stream: impl Stream<Item = Result<WatchEvent<Namespace>, kube::Error>>,
    index: &LabIndex,
    rv: &mut String,
    idle_limit: Duration,
) -> End {
    futures::pin_mut!(stream);
    loop {
        let event = match tokio::time::timeout(idle_limit, stream.next()).await {
            Err(_) => return End::Failed("no event or end within the watch timeout".into()),
            Ok(None) => return End::Closed,
            // A dropped connection: the watch was healthy, so reconnect at once.
            Ok(Some(Err(e))) => {
                tracing::debug!(error = %e, "lab namespace watch connection ended");
                return End::Closed;
            }
            Ok(Some(Ok(event))) => event,
        };
        match event {
            WatchEvent::Added(ns) | WatchEvent::Modified(ns) => {
                remember(rv, &ns);
                if let Some(name) = ns.metadata.name.as_deref() {
                    match entry_for(&ns) {
                        Some(entry) => index.upsert(name, entry),
                        None => index.remove(name),
                    }
                }
            }
            WatchEvent::Deleted(ns) => {
                remember(rv, &ns);
                if let Some(name) = ns.metadata.name.as_deref() {
                    index.remove(name);
                }
            }
            WatchEvent::Bookmark(bookmark) => *rv = bookmark.metadata.resource_version,
            WatchEvent::Error(status) if status.code == 410 => return End::Expired,
            WatchEvent::Error(status) => return End::Failed(status.message),
        }
    }
}

fn remember(rv: &mut String, ns: &Namespace) {
    if let Some(v) = &ns.metadata.resource_version {
        rv.clone_from(v);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_to_its_cap_and_resets() {
        let mut b = Backoff::new();
        let delays: Vec<Duration> = (0..8).map(|_| b.delay()).collect();
        assert!(delays[0] <= FIRST_BACKOFF && delays[0] >= FIRST_BACKOFF / 2);
        assert!(delays.iter().all(|d| *d <= MAX_BACKOFF));
        assert!(delays[7] >= MAX_BACKOFF / 2);
        assert_eq!(b.reset(), 8);
        assert!(b.delay() <= FIRST_BACKOFF);
    }
}
