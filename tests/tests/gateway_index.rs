//! The gateway's lab index and its API-server credentials end to end:
//! exempt namespaces, staleness bounds, relist timing, malformed labs, the
//! service-account token rotating, and where the admin endpoints are served.

mod support;

use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::SinkExt;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use labgate_tests::standin::{GATEWAY_USER, UpstreamAddr, Vmi};
use support::*;
use tokio::net::TcpStream;

fn args(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

/// The sum of every sample of `metric` whose labels contain all of `labels`.
async fn metric(env: &Env, metric: &str, labels: &[&str]) -> f64 {
    let (_, text) = env.http("/metrics", &[]).await.unwrap();
    metric_in(&text, metric, labels)
}

fn metric_in(text: &str, metric: &str, labels: &[&str]) -> f64 {
    text.lines()
        .filter(|l| {
            l.strip_prefix(metric)
                .is_some_and(|rest| rest.starts_with(' ') || rest.starts_with('{'))
        })
        .filter(|l| labels.iter().all(|want| l.contains(want)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Whether `user` is let into `lab` now (426 "open this as a websocket").
async fn admitted(env: &Env, lab: &str, user: &str) -> (bool, String) {
    let path = format!("/labs/{lab}/vm1/console/{}", env.token(user));
    let (status, body) = env.http(&path, &[]).await.unwrap();
    (status == 426, format!("{status} {body}"))
}

/// Waits until `probe` holds; returns how long that took.
async fn wait_for<F, Fut>(within: Duration, what: &str, mut probe: F) -> Duration
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let t0 = Instant::now();
    loop {
        if probe().await {
            return t0.elapsed();
        }
        assert!(t0.elapsed() < within, "{what}: not within {within:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn readyz(env: &Env) -> u16 {
    env.http("/readyz", &[]).await.unwrap().0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn system_and_exempt_namespaces_never_become_labs() {
    let env = start(Options {
        extra_args: args(&["--exempt-namespaces", "labgate,tenant-ops"]),
        ..Options::default()
    })
    .await
    .unwrap();
    let xvnc = env.xvnc.as_ref().unwrap().socket();
    for ns in ["kube-system", "labgate", "tenant-ops"] {
        // Someone who may patch namespaces labels them as alice's labs.
        env.standin.lab_namespace(ns, ALICE, &[]);
        env.standin.add_vmi(
            ns,
            "vm1",
            Vmi::running(Some(UpstreamAddr::Unix(xvnc.clone())), None),
        );
    }
    // Events arrive in order: once this later lab is in, the others were seen.
    env.standin.lab_namespace("lab-probe", ALICE, &[]);
    wait_for(Duration::from_secs(10), "lab-probe indexed", || async {
        admitted(&env, "lab-probe", ALICE).await.0
    })
    .await;
    let before = env.standin.subresource_requests().len();
    for ns in ["kube-system", "labgate", "tenant-ops"] {
        let (ok, answer) = admitted(&env, ns, ALICE).await;
        assert!(!ok, "{ns} admitted alice: {answer}");
        let mut ws = env.open(ns, "vm1", "vnc", &env.token(ALICE)).await;
        assert_refused(&mut ws, 4003).await;
    }
    assert_eq!(
        env.standin.subresource_requests().len(),
        before,
        "a system namespace's VM was dialled"
    );
    // Counted for operators, not silently absent.
    assert_eq!(
        metric(&env, "labgate_gateway_index_malformed_labs", &["exempt"]).await,
        3.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_labs_are_counted_by_reason() {
    let env = start(Options {
        upstreams: false,
        ..Options::default()
    })
    .await
    .unwrap();
    let mut ns = k8s_openapi::api::core::v1::Namespace::default();
    ns.metadata.name = Some("lab-forged".into());
    ns.metadata.labels = Some(
        [
            ("labgate.io/lab".to_string(), "true".to_string()),
            ("labgate.io/owner-hash".to_string(), "0000".to_string()),
        ]
        .into(),
    );
    ns.metadata.annotations = Some([("labgate.io/owner".to_string(), ALICE.to_string())].into());
    env.standin.put_namespace(ns);
    let mut members = k8s_openapi::api::core::v1::Namespace::default();
    members.metadata.name = Some("lab-members".into());
    let lab = labgate_policies::Lab {
        namespace: "lab-members".into(),
        owner: ALICE.into(),
        members: vec![],
    };
    let (labels, mut annotations) = lab.metadata();
    annotations.insert("labgate.io/members".into(), "[\"unterminated".into());
    members.metadata.labels = Some(labels);
    members.metadata.annotations = Some(annotations);
    env.standin.put_namespace(members);
    let name = "labgate_gateway_index_malformed_labs";
    wait_for(
        Duration::from_secs(10),
        "malformed labs counted",
        || async {
            metric(&env, name, &["owner_hash_mismatch"]).await == 1.0
                && metric(&env, name, &["bad_members"]).await == 1.0
        },
    )
    .await;
    // Repairing a lab takes it out of the count.
    env.standin.lab_namespace("lab-forged", ALICE, &[]);
    wait_for(
        Duration::from_secs(10),
        "repaired lab uncounted",
        || async { metric(&env, name, &["owner_hash_mismatch"]).await == 0.0 },
    )
    .await;
    assert!(admitted(&env, "lab-forged", ALICE).await.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_rewatch_is_counted_including_normal_timeouts() {
    let env = start(Options {
        upstreams: false,
        extra_args: args(&["--watch-timeout", "1s"]),
        ..Options::default()
    })
    .await
    .unwrap();
    let name = "labgate_gateway_index_watch_restarts_total";
    let before = metric(&env, name, &[]).await;
    tokio::time::sleep(Duration::from_millis(3500)).await;
    let after = metric(&env, name, &[]).await;
    assert!(
        after - before >= 2.0,
        "watches of 1 s ended normally for 3.5 s, counted {before} -> {after}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_watch_turns_unready_then_refuses_new_sessions() {
    let env = start(Options {
        upstreams: false,
        extra_args: args(&["--index-unready-after", "1s", "--index-refuse-after", "2s"]),
        ..Options::default()
    })
    .await
    .unwrap();
    // A quiet, open watch is healthy: nothing changes for longer than both bounds.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(readyz(&env).await, 200, "an open, quiet watch is not stale");
    assert!(admitted(&env, "lab-alice", ALICE).await.0);

    // RBAC loses `watch`; the open watch is cut, every re-watch gets 403.
    env.standin.deny_verb(GATEWAY_USER, "watch", true);
    env.standin.drop_watches();
    let cut = Instant::now();
    wait_for(Duration::from_secs(5), "unready", || async {
        readyz(&env).await == 503
    })
    .await;
    let unready = cut.elapsed();
    let (ok, answer) = admitted(&env, "lab-alice", ALICE).await;
    assert!(ok, "still granting between the bounds: {answer}");
    let (_, body) = env.http("/readyz", &[]).await.unwrap();
    assert!(body.contains("stale"), "{body}");
    wait_for(Duration::from_secs(5), "refusing", || async {
        !admitted(&env, "lab-alice", ALICE).await.0
    })
    .await;
    let refusing = cut.elapsed();
    let mut ws = env.open("lab-alice", "vm1", "vnc", &env.token(ALICE)).await;
    let reason = assert_refused(&mut ws, 4015).await;
    assert!(reason.contains("retry"), "{reason}");
    println!("watch forbidden: unready after {unready:?}, refusing after {refusing:?}");
    assert!(unready >= Duration::from_millis(900), "{unready:?}");
    assert!(refusing >= Duration::from_millis(1900), "{refusing:?}");
    assert!(refusing < Duration::from_secs(3), "{refusing:?}");
    assert!(
        metric(&env, "labgate_gateway_index_stale_seconds", &[]).await >= 1.0,
        "staleness is exported"
    );

    // RBAC restored: ready and granting again within a second.
    env.standin.deny_verb(GATEWAY_USER, "watch", false);
    let restored = Instant::now();
    wait_for(Duration::from_secs(1), "ready again", || async {
        readyz(&env).await == 200 && admitted(&env, "lab-alice", ALICE).await.0
    })
    .await;
    println!("watch allowed again: ready after {:?}", restored.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_index_catches_up_within_a_second_after_410_and_after_an_outage() {
    let env = start(Options {
        upstreams: false,
        ..Options::default()
    })
    .await
    .unwrap();
    // 410: the watch is cut and its history forgotten; a lab appears meanwhile.
    env.standin.compact_history();
    env.standin.drop_watches();
    let t0 = Instant::now();
    env.standin.lab_namespace("lab-after-410", ALICE, &[]);
    let took = wait_for(Duration::from_secs(10), "lab-after-410", || async {
        admitted(&env, "lab-after-410", ALICE).await.0
    })
    .await;
    println!("after a 410 relist the index had the new lab in {took:?}");
    assert!(took < Duration::from_secs(1), "{took:?} after a 410");
    let _ = t0;

    // An outage: watches forbidden for 3 s while labs come and go.
    env.standin.deny_verb(GATEWAY_USER, "watch", true);
    env.standin.drop_watches();
    tokio::time::sleep(Duration::from_millis(300)).await;
    env.standin.lab_namespace("lab-during-outage", ALICE, &[]);
    env.standin.delete_json("/api/v1/namespaces/lab-bob");
    env.standin.compact_history();
    tokio::time::sleep(Duration::from_millis(2700)).await;
    env.standin.deny_verb(GATEWAY_USER, "watch", false);
    let took = wait_for(Duration::from_secs(10), "lab-during-outage", || async {
        admitted(&env, "lab-during-outage", ALICE).await.0
            && !admitted(&env, "lab-bob", BOB).await.0
    })
    .await;
    println!("after a 3 s watch outage the index caught up in {took:?}");
    assert!(took < Duration::from_secs(1), "{took:?} after the outage");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_service_account_token_is_used_at_once() {
    let env = start(Options::default()).await.unwrap();
    let mut ws = env
        .open("lab-alice", "vm1", "console", &env.token(ALICE))
        .await;
    ws.close(None).await.unwrap();
    // The kubelet writes a new token; the old one is revoked.
    let fresh = "rotated-gateway-token";
    env.standin.add_token(
        fresh,
        labgate_tests::standin::UserInfo::service_account("labgate", "labgate-gateway"),
    );
    std::fs::write(env.dir.path().join("kubeconfig-token"), fresh).unwrap();
    env.standin.revoke_token(&env.standin.gateway_token());
    let mut ws = env
        .open("lab-alice", "vm1", "console", &env.token(ALICE))
        .await;
    ws.send(tokio_tungstenite::tungstenite::Message::Binary(
        Bytes::from_static(b"echo rotated-$((40+2))\r"),
    ))
    .await
    .unwrap();
    ByteReader::new()
        .read_until(&mut ws, "rotated-42", Duration::from_secs(10))
        .await;
    // The index watch moved to the new token as well.
    env.standin.lab_namespace("lab-after-rotation", ALICE, &[]);
    wait_for(Duration::from_secs(2), "lab-after-rotation", || async {
        admitted(&env, "lab-after-rotation", ALICE).await.0
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_server_refusing_the_gateway_is_not_blamed_on_the_vm() {
    let env = start(Options::default()).await.unwrap();
    // Revoked with no replacement: the API server answers 401 to the gateway.
    env.standin.revoke_token(&env.standin.gateway_token());
    let mut ws = env.open("lab-alice", "vm1", "vnc", &env.token(ALICE)).await;
    let reason = assert_refused(&mut ws, 4020).await;
    assert!(reason.contains("gateway"), "{reason}");
    // Once more: the token file is re-read once per 401, and still refused.
    let mut ws = env
        .open("lab-alice", "vm1", "console", &env.token(ALICE))
        .await;
    assert_refused(&mut ws, 4020).await;
    assert_eq!(
        metric(
            &env,
            "labgate_gateway_sessions_total",
            &["outcome=\"gateway_unauthorized\""]
        )
        .await,
        2.0
    );
}

/// A plain-HTTP GET on `addr`.
async fn plain_get(addr: std::net::SocketAddr, path: &str) -> u16 {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .unwrap();
    tokio::spawn(conn);
    let req = http::Request::get(path)
        .header("host", "localhost")
        .body(Empty::<Bytes>::new())
        .unwrap();
    let res = sender.send_request(req).await.unwrap();
    let status = res.status().as_u16();
    let _ = res.into_body().collect().await;
    status
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_endpoints_leave_the_public_listener_when_an_admin_listener_is_set() {
    // Without --admin-listen the public listener serves them.
    let env = start(Options {
        upstreams: false,
        ..Options::default()
    })
    .await
    .unwrap();
    for path in ["/metrics", "/readyz", "/healthz"] {
        assert_eq!(env.http(path, &[]).await.unwrap().0, 200, "{path}");
    }
    drop(env);

    let admin = {
        let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        probe.local_addr().unwrap()
    };
    let env = start(Options {
        upstreams: false,
        wait_ready: false,
        extra_args: args(&["--admin-listen", &admin.to_string()]),
        ..Options::default()
    })
    .await
    .unwrap();
    wait_for(Duration::from_secs(15), "admin /readyz", || async {
        TcpStream::connect(admin).await.is_ok() && plain_get(admin, "/readyz").await == 200
    })
    .await;
    for path in ["/metrics", "/readyz", "/healthz"] {
        assert_eq!(plain_get(admin, path).await, 200, "admin {path}");
        let (status, body) = env.http(path, &[]).await.unwrap();
        assert_eq!(status, 404, "public {path}: {body}");
    }
    // Sessions still work on the public listener.
    assert!(admitted(&env, "lab-alice", ALICE).await.0);
}
