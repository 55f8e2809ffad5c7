//! List and watch semantics: selector filtering, `limit`/`continue` pages, and watch streams with
//! history replay, `410 Expired` as an ERROR event, selector transitions and bookmarks.
//!
//! Watch bodies are chunked streams of one JSON event per line, as kube's `LinesCodec` expects.

use std::io;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use bytes::Bytes;
use http_body_util::{BodyExt as _, StreamBody};
use hyper::Response;
use hyper::body::Frame;
use serde_json::{Value, json};
use tokio::sync::broadcast::{self, error::RecvError};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::path::ResourceType;
use super::selector::{FieldSelector, LabelSelector};
use super::status::ApiError;
use super::store::{Change, ObjectKey};
use super::{Body, Shared};

/// Which objects a list or watch is about.
#[derive(Debug, Clone)]
pub struct Scope {
    pub rt: ResourceType,
    pub namespace: Option<String>,
    pub labels: LabelSelector,
    pub fields: FieldSelector,
}

impl Scope {
    fn in_scope(&self, key: &ObjectKey) -> bool {
        key.group == self.rt.group
            && key.resource == self.rt.resource
            && self
                .namespace
                .as_ref()
                .is_none_or(|ns| *ns == key.namespace)
    }

    fn matches(&self, obj: &Value) -> bool {
        self.labels.matches(obj) && self.fields.matches(obj)
    }

    /// No label or field selector: every object of the resource (and namespace) is in.
    fn unselected(&self) -> bool {
        self.labels.is_empty() && self.fields.is_empty()
    }

    /// The watch event a change produces for this scope (apiserver `convertToWatchEvent`):
    /// starts matching → ADDED, still matches → MODIFIED, stops matching or deleted → DELETED with
    /// the previous content and the new RV.
    fn event_for(&self, change: &Change) -> Option<(&'static str, Value)> {
        if !self.in_scope(&change.key) {
            return None;
        }
        let was = change.old.as_ref().filter(|o| self.matches(o));
        let is = change.new.as_ref().filter(|o| self.matches(o));
        match (was, is) {
            (None, Some(new)) => Some(("ADDED", new.clone())),
            (Some(_), Some(new)) => Some(("MODIFIED", new.clone())),
            (Some(old), None) => {
                let mut old = old.clone();
                old["metadata"]["resourceVersion"] = json!(change.rv.to_string());
                Some(("DELETED", old))
            }
            (None, None) => None,
        }
    }
}

/// The position a `continue` token encodes: the list's RV and the last key returned.
#[derive(serde::Serialize, serde::Deserialize)]
struct ContinueToken {
    rv: u64,
    namespace: String,
    name: String,
}

/// Answers a list request (`limit` and `continue` included).
pub fn list(
    shared: &Shared,
    scope: &Scope,
    limit: Option<usize>,
    continue_token: Option<&str>,
) -> Result<Value, ApiError> {
    let store = shared.store.lock().expect("store lock");
    let (list_rv, after) = match continue_token {
        Some(raw) => {
            let token: ContinueToken = URL_SAFE_NO_PAD
                .decode(raw)
                .ok()
                .and_then(|b| serde_json::from_slice(&b).ok())
                .ok_or_else(|| {
                    ApiError::bad_request(
                        "continue key is not valid: incorrect encoded start resourceVersion",
                    )
                })?;
            if token.rv < store.oldest_resumable() {
                return Err(ApiError::expired(
                    "The provided continue parameter is too old to display a consistent list result. \
                     You can start a new list without the continue parameter, or use the continue value \
                     from the response to request a result with a consistent view.",
                ));
            }
            let key = ObjectKey {
                group: scope.rt.group.clone(),
                resource: scope.rt.resource.clone(),
                namespace: token.namespace,
                name: token.name,
            };
            (token.rv, Some(key))
        }
        None => (store.resource_version(), None),
    };
    let mut matching = store
        .list(
            &scope.rt.group,
            &scope.rt.resource,
            scope.namespace.as_deref(),
            after.as_ref(),
        )
        .filter(|(_, obj)| scope.matches(obj));
    let mut items = Vec::new();
    let mut last_key = None;
    for (key, obj) in matching.by_ref() {
        if limit.is_some_and(|l| l > 0 && items.len() >= l) {
            // One more match exists: this page ends at the previous key. Like the API server
            // (apiserver `storage/etcd3/store.go`: "Only set remainingItemCount if the
            // predicate is empty"), the count is given only for a list without selectors, so
            // a selected page costs its own items, not a count of everything after it.
            let remaining = scope.unselected().then(|| 1 + matching.count());
            let last: &ObjectKey = last_key.expect("a full page has a last key");
            let token = ContinueToken {
                rv: list_rv,
                namespace: last.namespace.clone(),
                name: last.name.clone(),
            };
            let token =
                URL_SAFE_NO_PAD.encode(serde_json::to_vec(&token).expect("token serializes"));
            return Ok(list_body(scope, list_rv, items, Some((token, remaining))));
        }
        items.push(obj.clone());
        last_key = Some(key);
    }
    Ok(list_body(scope, list_rv, items, None))
}

fn list_body(
    scope: &Scope,
    rv: u64,
    items: Vec<Value>,
    more: Option<(String, Option<usize>)>,
) -> Value {
    let mut metadata = json!({ "resourceVersion": rv.to_string() });
    if let Some((token, remaining)) = more {
        metadata["continue"] = json!(token);
        if let Some(remaining) = remaining {
            metadata["remainingItemCount"] = json!(remaining);
        }
    }
    json!({
        "kind": format!("{}List", scope.rt.kind),
        "apiVersion": scope.rt.api_version(),
        "metadata": metadata,
        "items": items,
    })
}

/// Options of a watch request beyond its scope.
#[derive(Debug, Clone, Default)]
pub struct WatchOptions {
    /// `resourceVersion`; `None` or `"0"` start with synthetic ADDED events for current objects.
    pub resource_version: Option<String>,
    pub bookmarks: bool,
    pub send_initial_events: bool,
    pub timeout: Option<Duration>,
}

type Chunk = Result<Frame<Bytes>, io::Error>;

/// Starts a watch: returns the 200 response whose body streams the events.
pub fn watch(
    shared: &Arc<Shared>,
    scope: Scope,
    opts: WatchOptions,
) -> Result<Response<Body>, ApiError> {
    let start_rv = match opts.resource_version.as_deref() {
        None | Some("") | Some("0") => None,
        Some(raw) => Some(
            raw.parse::<u64>()
                .map_err(|_| ApiError::bad_request(format!("invalid resource version: {raw:?}")))?,
        ),
    };
    let (tx, rx) = mpsc::channel::<Chunk>(64);
    let mut cut = shared.watch_cut.subscribe();
    cut.mark_unchanged();
    let interval = *shared.bookmark_interval.lock().expect("bookmark lock");

    let store = shared.store.lock().expect("store lock");
    let (initial, replay, live, seen) = match start_rv {
        None => {
            let initial: Vec<Value> = store
                .list(
                    &scope.rt.group,
                    &scope.rt.resource,
                    scope.namespace.as_deref(),
                    None,
                )
                .filter(|(_, o)| scope.matches(o))
                .map(|(_, o)| o.clone())
                .collect();
            (
                initial,
                Vec::new(),
                store.subscribe_now(),
                store.resource_version(),
            )
        }
        Some(rv) => match store.subscribe_from(rv) {
            Ok(sub) => (Vec::new(), sub.replay, sub.live, rv),
            Err(oldest) => {
                drop(store);
                // The real API server answers 200 and reports the expiry as an ERROR event.
                let error = ApiError::expired(format!("too old resource version: {rv} ({oldest})"));
                let line = event_line("ERROR", &error.status);
                shared.runtime.spawn(async move {
                    let _ = tx.send(Ok(Frame::data(line))).await;
                });
                return Ok(stream_response(rx));
            }
        },
    };
    drop(store);

    let stream = WatchStream {
        scope,
        opts,
        tx,
        seen,
        live,
        cut_signal: cut,
        cancel: shared.cancel.clone(),
        interval,
    };
    shared.runtime.spawn(stream.run(initial, replay));
    Ok(stream_response(rx))
}

fn stream_response(rx: mpsc::Receiver<Chunk>) -> Response<Body> {
    let chunks =
        futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|c| (c, rx)) });
    Response::builder()
        .status(200)
        .header("content-type", "application/json")
        .body(StreamBody::new(chunks).boxed_unsync())
        .expect("static response parts")
}

fn event_line(kind: &str, object: &Value) -> Bytes {
    let mut line =
        serde_json::to_vec(&json!({ "type": kind, "object": object })).expect("event serializes");
    line.push(b'\n');
    Bytes::from(line)
}

/// The task behind one watch response.
struct WatchStream {
    scope: Scope,
    opts: WatchOptions,
    tx: mpsc::Sender<Chunk>,
    /// The RV of the last change this watch has processed (matching or not): what bookmarks report.
    seen: u64,
    live: broadcast::Receiver<Arc<Change>>,
    /// Fires when the test calls `drop_watches`.
    cut_signal: tokio::sync::watch::Receiver<u64>,
    cancel: CancellationToken,
    interval: Duration,
}

/// Why a watch stream stopped early.
struct Gone;

impl WatchStream {
    async fn send(&mut self, kind: &str, object: &Value) -> Result<(), Gone> {
        self.tx
            .send(Ok(Frame::data(event_line(kind, object))))
            .await
            .map_err(|_| Gone)
    }

    async fn bookmark(&mut self, initial_events_end: bool) -> Result<(), Gone> {
        let mut metadata = json!({ "resourceVersion": self.seen.to_string() });
        if initial_events_end {
            metadata["annotations"] = json!({ "k8s.io/initial-events-end": "true" });
        }
        let object = json!({
            "kind": self.scope.rt.kind,
            "apiVersion": self.scope.rt.api_version(),
            "metadata": metadata,
        });
        self.send("BOOKMARK", &object).await
    }

    async fn change(&mut self, change: &Change) -> Result<(), Gone> {
        if change.rv <= self.seen {
            return Ok(());
        }
        self.seen = change.rv;
        match self.scope.event_for(change) {
            Some((kind, object)) => self.send(kind, &object).await,
            None => Ok(()),
        }
    }

    /// Cuts the connection: a body error makes hyper drop it mid-stream.
    async fn cut(&mut self) {
        let _ = self
            .tx
            .send(Err(io::Error::new(
                io::ErrorKind::ConnectionAborted,
                "watch cut by the test",
            )))
            .await;
    }

    async fn run(mut self, initial: Vec<Value>, replay: Vec<Arc<Change>>) {
        let _ = self.stream(initial, replay).await;
    }

    async fn stream(&mut self, initial: Vec<Value>, replay: Vec<Arc<Change>>) -> Result<(), Gone> {
        let opts = self.opts.clone();
        let interval = self.interval;
        for object in &initial {
            self.send("ADDED", object).await?;
        }
        if opts.send_initial_events && opts.bookmarks {
            self.bookmark(true).await?;
        }
        for change in &replay {
            self.change(change).await?;
        }
        let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
        let deadline = tokio::time::sleep(opts.timeout.unwrap_or(Duration::from_secs(24 * 3600)));
        tokio::pin!(deadline);
        loop {
            tokio::select! {
                _ = self.cancel.cancelled() => return Ok(()),
                _ = self.cut_signal.changed() => {
                    self.cut().await;
                    return Ok(());
                }
                _ = &mut deadline => {
                    if opts.bookmarks {
                        self.bookmark(false).await?;
                    }
                    return Ok(());
                }
                _ = ticker.tick(), if opts.bookmarks => self.bookmark(false).await?,
                received = self.live.recv() => match received {
                    Ok(change) => self.change(&change).await?,
                    Err(RecvError::Lagged(_)) => {
                        // This watch missed changes; a real server would drop it too.
                        self.cut().await;
                        return Ok(());
                    }
                    Err(RecvError::Closed) => return Ok(()),
                },
                _ = self.tx.closed() => return Err(Gone),
            }
        }
    }
}
