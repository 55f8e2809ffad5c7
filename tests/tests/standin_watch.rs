//! The stand-in's list/watch semantics as kube-runtime's `watcher` experiences them: initial list,
//! live events, selector transitions, bookmarks, and the 410 relist path; plus raw watch streams.

use std::time::Duration;

use futures::{Stream, StreamExt as _};
use k8s_openapi::api::core::v1::Namespace;
use kube::api::{Api, ListParams, WatchEvent, WatchParams};
use kube::runtime::watcher::{self, Event};
use labgate_policies::{LAB_LABEL, LAB_SELECTOR};
use labgate_tests::standin::StandIn;

/// Generous functional deadline for "the next event arrives".
const NEXT: Duration = Duration::from_secs(10);

async fn next<S, T>(stream: &mut S) -> T
where
    S: Stream<Item = T> + Unpin,
{
    tokio::time::timeout(NEXT, stream.next())
        .await
        .expect("the next event arrives in time")
        .expect("the stream does not end")
}

fn name(ns: &Namespace) -> &str {
    ns.metadata.name.as_deref().unwrap_or_default()
}

fn unlabel(standin: &StandIn, ns: &str) {
    let path = format!("/api/v1/namespaces/{ns}");
    let mut obj = standin.get_json(&path).expect("namespace exists");
    obj["metadata"]["labels"]
        .as_object_mut()
        .expect("labels")
        .remove(LAB_LABEL);
    standin.put_json(&path, obj);
}

#[tokio::test]
async fn kube_watcher_follows_selector_transitions_and_relists_after_410() {
    let standin = StandIn::start().await.unwrap();
    standin.lab_namespace("lab-a", "alice@example.com", &[]);
    let mut plain = Namespace::default();
    plain.metadata.name = Some("not-a-lab".into());
    standin.put_namespace(plain);

    let api: Api<Namespace> = Api::all(standin.client(&standin.gateway_token()));
    let config = watcher::Config::default().labels(LAB_SELECTOR).timeout(5);
    let mut events = watcher::watcher(api, config).boxed();

    assert!(matches!(next(&mut events).await.unwrap(), Event::Init));
    match next(&mut events).await.unwrap() {
        Event::InitApply(ns) => {
            assert_eq!(name(&ns), "lab-a");
            let labels = ns.metadata.labels.unwrap();
            assert_eq!(labels["kubernetes.io/metadata.name"], "lab-a");
        }
        other => panic!("expected InitApply(lab-a), got {other:?}"),
    }
    assert!(matches!(next(&mut events).await.unwrap(), Event::InitDone));

    // A new lab appears: Apply. A non-lab namespace changing produces nothing.
    standin.lab_namespace("lab-b", "bob@example.com", &["carol@example.com"]);
    match next(&mut events).await.unwrap() {
        Event::Apply(ns) => assert_eq!(name(&ns), "lab-b"),
        other => panic!("expected Apply(lab-b), got {other:?}"),
    }

    // Removing the lab label is a DELETED event for a label-selected watch, with the old content.
    let rv_before = standin.resource_version();
    unlabel(&standin, "lab-a");
    match next(&mut events).await.unwrap() {
        Event::Delete(ns) => {
            assert_eq!(name(&ns), "lab-a");
            assert_eq!(
                ns.metadata.labels.unwrap()[LAB_LABEL],
                "true",
                "previous content"
            );
            let rv: u64 = ns.metadata.resource_version.unwrap().parse().unwrap();
            assert!(
                rv > rv_before,
                "the DELETED event carries the new resourceVersion"
            );
        }
        other => panic!("expected Delete(lab-a), got {other:?}"),
    }

    // History gone and the connection cut: the resumed watch gets ERROR 410 and the watcher relists.
    standin.compact_history();
    standin.drop_watches();
    let mut errors = Vec::new();
    loop {
        match next(&mut events).await {
            Ok(Event::Init) => break,
            Ok(other) => panic!("expected errors then Init, got {other:?}"),
            Err(e) => errors.push(e),
        }
    }
    let expired = errors
        .iter()
        .find_map(|e| match e {
            watcher::Error::WatchError(status) => Some(status.clone()),
            _ => None,
        })
        .expect("a WatchError from the 410 ERROR event");
    assert_eq!(expired.code, 410);
    assert_eq!(expired.reason, "Expired");
    assert!(
        expired.message.starts_with("too old resource version: "),
        "{}",
        expired.message
    );
    match next(&mut events).await.unwrap() {
        Event::InitApply(ns) => assert_eq!(name(&ns), "lab-b"),
        other => panic!("expected InitApply(lab-b), got {other:?}"),
    }
    assert!(matches!(next(&mut events).await.unwrap(), Event::InitDone));

    // The resumed watch really was answered 200 + ERROR (a resourceVersion watch, then a fresh list).
    let requests = standin.requests();
    let resumed = requests
        .iter()
        .rposition(|r| r.query.contains("watch=true") && r.query.contains("resourceVersion="))
        .expect("a resumed watch");
    assert!(
        requests[resumed..]
            .iter()
            .any(|r| !r.query.contains("watch=")),
        "a relist follows the expired watch"
    );
}

#[tokio::test]
async fn raw_watch_replays_history_and_reports_too_old_versions_as_error_events() {
    let standin = StandIn::start().await.unwrap();
    let api: Api<Namespace> = Api::all(standin.client(&standin.gateway_token()));
    standin.lab_namespace("lab-a", "alice@example.com", &[]);
    let rv = standin.resource_version().to_string();
    standin.lab_namespace("lab-b", "bob@example.com", &[]);
    standin.delete_json("/api/v1/namespaces/lab-a");

    let params = WatchParams::default().labels(LAB_SELECTOR).timeout(2);
    let mut stream = api.watch(&params, &rv).await.unwrap().boxed();
    match next(&mut stream).await.unwrap() {
        WatchEvent::Added(ns) => assert_eq!(name(&ns), "lab-b"),
        other => panic!("expected ADDED lab-b, got {other:?}"),
    }
    match next(&mut stream).await.unwrap() {
        WatchEvent::Deleted(ns) => assert_eq!(name(&ns), "lab-a"),
        other => panic!("expected DELETED lab-a, got {other:?}"),
    }
    // timeoutSeconds=2 ends the stream cleanly (after a last bookmark: kube asks for bookmarks).
    loop {
        match tokio::time::timeout(NEXT, stream.next())
            .await
            .expect("the watch ends by itself")
        {
            None => break,
            Some(Ok(WatchEvent::Bookmark(_))) => {}
            Some(other) => panic!("no more events expected, got {other:?}"),
        }
    }

    standin.compact_history();
    let mut stream = api
        .watch(&params, &rv)
        .await
        .expect("HTTP 200, not 410")
        .boxed();
    match next(&mut stream).await.unwrap() {
        WatchEvent::Error(status) => {
            assert_eq!(status.code, 410);
            assert_eq!(status.reason, "Expired");
        }
        other => panic!("expected ERROR 410, got {other:?}"),
    }
    let end = tokio::time::timeout(NEXT, stream.next())
        .await
        .expect("the server closes");
    assert!(end.is_none());
}

#[tokio::test]
async fn bookmarks_and_streaming_lists() {
    let standin = StandIn::start().await.unwrap();
    standin.set_bookmark_interval(Duration::from_millis(100));
    standin.lab_namespace("lab-a", "alice@example.com", &[]);
    let api: Api<Namespace> = Api::all(standin.client(&standin.gateway_token()));

    // sendInitialEvents: ADDED for what exists, then the annotated BOOKMARK, as kube's streaming lists want.
    let config = watcher::Config::default()
        .labels(LAB_SELECTOR)
        .streaming_lists()
        .timeout(5);
    let mut events = watcher::watcher(api.clone(), config).boxed();
    assert!(matches!(next(&mut events).await.unwrap(), Event::Init));
    match next(&mut events).await.unwrap() {
        Event::InitApply(ns) => assert_eq!(name(&ns), "lab-a"),
        other => panic!("expected InitApply, got {other:?}"),
    }
    assert!(matches!(next(&mut events).await.unwrap(), Event::InitDone));
    assert!(
        standin
            .requests()
            .iter()
            .any(|r| r.query.contains("sendInitialEvents=true")),
        "the watcher used a streaming list"
    );

    // Periodic bookmarks carry only kind/apiVersion/resourceVersion.
    let rv = standin.resource_version().to_string();
    let mut params = WatchParams::default().labels(LAB_SELECTOR).timeout(5);
    params.bookmarks = true;
    let mut stream = api.watch(&params, &rv).await.unwrap().boxed();
    match next(&mut stream).await.unwrap() {
        WatchEvent::Bookmark(b) => {
            assert_eq!(b.types.kind, "Namespace");
            assert_eq!(b.metadata.resource_version, rv);
        }
        other => panic!("expected BOOKMARK, got {other:?}"),
    }
}

/// Pages of a selected list among many unselected objects: every lab once, in order, in
/// exactly as many pages as the limit needs, whatever lies between them.
#[tokio::test]
async fn selected_pages_skip_unselected_objects_and_lose_nothing() {
    let standin = StandIn::start().await.unwrap();
    let labs = 1_234;
    for i in 0..labs {
        standin.lab_namespace(&format!("ns-{i:05}-a"), "alice@example.com", &[]);
        // An unlabelled namespace right after each lab, in key order.
        let mut plain = Namespace::default();
        plain.metadata.name = Some(format!("ns-{i:05}-b"));
        standin.put_namespace(plain);
    }
    // Objects of another resource share the store.
    standin.add_vmi(
        "ns-00000-a",
        "vm1",
        labgate_tests::standin::Vmi {
            phase: "Running".into(),
            vnc: None,
            console: None,
        },
    );
    let api: Api<Namespace> = Api::all(standin.client(&standin.gateway_token()));
    let mut params = ListParams::default().labels(LAB_SELECTOR).limit(500);
    let (mut names, mut pages) = (Vec::new(), 0);
    loop {
        let page = api.list(&params).await.unwrap();
        pages += 1;
        names.extend(page.items.iter().map(|n| name(n).to_string()));
        match page.metadata.continue_ {
            Some(token) if !token.is_empty() => params = params.continue_token(&token),
            _ => break,
        }
    }
    assert_eq!(pages, 3);
    let expected: Vec<String> = (0..labs).map(|i| format!("ns-{i:05}-a")).collect();
    assert_eq!(names, expected);
}

#[tokio::test]
async fn list_pages_with_limit_and_continue_and_expires_old_tokens() {
    let standin = StandIn::start().await.unwrap();
    for i in 0..5 {
        standin.lab_namespace(&format!("lab-{i}"), "alice@example.com", &[]);
    }
    let mut plain = Namespace::default();
    plain.metadata.name = Some("default".into());
    standin.put_namespace(plain);
    let api: Api<Namespace> = Api::all(standin.client(&standin.gateway_token()));

    let mut names = Vec::new();
    let mut params = ListParams::default().labels(LAB_SELECTOR).limit(2);
    let mut pages = 0;
    loop {
        let page = api.list(&params).await.unwrap();
        pages += 1;
        assert!(page.items.len() <= 2);
        names.extend(page.items.iter().map(|n| name(n).to_string()));
        match page.metadata.continue_ {
            Some(token) if !token.is_empty() => params = params.continue_token(&token),
            _ => break,
        }
    }
    assert_eq!(pages, 3);
    assert_eq!(names, ["lab-0", "lab-1", "lab-2", "lab-3", "lab-4"]);
    // Like the API server, what is left is counted only for a list without selectors.
    let selected = api
        .list(&ListParams::default().labels(LAB_SELECTOR).limit(2))
        .await
        .unwrap();
    assert_eq!(selected.metadata.remaining_item_count, None);
    let everything = api.list(&ListParams::default().limit(2)).await.unwrap();
    assert_eq!(everything.metadata.remaining_item_count, Some(4));

    let first = api
        .list(&ListParams::default().labels(LAB_SELECTOR).limit(2))
        .await
        .unwrap();
    let token = first.metadata.continue_.unwrap();
    standin.compact_history();
    let err = api
        .list(
            &ListParams::default()
                .labels(LAB_SELECTOR)
                .limit(2)
                .continue_token(&token),
        )
        .await
        .unwrap_err();
    match err {
        kube::Error::Api(status) => {
            assert_eq!(status.code, 410);
            assert_eq!(status.reason, "Expired");
        }
        other => panic!("expected 410 Expired, got {other:?}"),
    }

    let fields = api
        .list(&ListParams::default().fields("metadata.name=lab-3"))
        .await
        .unwrap();
    assert_eq!(fields.items.len(), 1);
    let active = api
        .list(&ListParams::default().fields("status.phase=Active"))
        .await
        .unwrap();
    assert_eq!(active.items.len(), 6);
}
