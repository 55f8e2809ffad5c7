//! Two gateway replicas in front of one API server, as the Helm chart runs
//! them: each has its own index and sessions. Both admit and revoke alike, a
//! draining replica leaves the other serving, and a viewer taken over through
//! the other replica is told, not left on a frozen screen.

mod support;

use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::SinkExt;
use support::*;
use tokio_tungstenite::tungstenite::Message;

/// Whether `env` would admit `user` to the lab's console right now (a plain
/// GET of an authorised session URL answers 426 Upgrade Required).
async fn admits(env: &Env, lab: &str, user: &str) -> bool {
    let (status, _) = env
        .http(&format!("/labs/{lab}/vm1/console/{}", env.token(user)), &[])
        .await
        .unwrap();
    status == 426
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_admit_and_revoke_alike() {
    let a = start(Options::default()).await.unwrap();
    let b = a.replica(&[]).await.unwrap().env;
    for env in [&a, &b] {
        assert!(admits(env, "lab-alice", ALICE).await);
        assert!(admits(env, "lab-alice", TUTOR).await);
        assert!(!admits(env, "lab-alice", BOB).await);
    }

    // alice's screen through one replica, her console through the other.
    let mut screen = a.open("lab-alice", "vm1", "vnc", &a.token(ALICE)).await;
    rfb_handshake(&mut screen).await;
    let mut console = b.open("lab-alice", "vm1", "console", &b.token(ALICE)).await;
    console
        .send(Message::Binary(Bytes::from_static(b"echo two-$((1+1))\r")))
        .await
        .unwrap();
    ByteReader::new()
        .read_until(&mut console, "two-2", Duration::from_secs(10))
        .await;

    // A member dropped from the lab is refused by both within a second.
    let t0 = Instant::now();
    a.standin.lab_namespace("lab-alice", ALICE, &[]);
    for env in [&a, &b] {
        while admits(env, "lab-alice", TUTOR).await {
            assert!(
                t0.elapsed() < Duration::from_secs(1),
                "tutor still admitted after 1 s"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    // Deleting the lab ends the sessions on both replicas within a second.
    let t0 = Instant::now();
    a.standin.delete_namespace("lab-alice");
    for ws in [&mut screen, &mut console] {
        let frame = expect_close(ws, Duration::from_secs(1))
            .await
            .expect("closed");
        assert_eq!(u16::from(frame.code), 4009, "{}", frame.reason);
    }
    let revoked = t0.elapsed();
    assert!(revoked < Duration::from_secs(1), "{revoked:?}");
    println!("both replicas revoked within {revoked:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_draining_replica_leaves_the_other_serving() {
    let mut a = start(Options::default()).await.unwrap();
    let b = a.replica(&[]).await.unwrap().env;
    let mut on_a = a.open("lab-alice", "vm1", "vnc", &a.token(ALICE)).await;
    rfb_handshake(&mut on_a).await;

    a.shutdown();
    // The draining replica's session ends with 1001 after its grace (2 s) ...
    let frame = expect_close(&mut on_a, Duration::from_secs(5))
        .await
        .expect("closed");
    assert_eq!(u16::from(frame.code), 1001, "{}", frame.reason);
    // ... while the other replica takes the reconnect.
    let mut on_b = b.open("lab-alice", "vm1", "vnc", &b.token(ALICE)).await;
    let (width, height) = rfb_handshake(&mut on_b).await;
    assert!(width > 0 && height > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_takeover_through_the_other_replica_is_reported() {
    let a = start(Options::default()).await.unwrap();
    let b = a.replica(&[]).await.unwrap().env;

    // Same replica: the gateway knows the VM's session and says "taken over".
    let mut first = a.open("lab-alice", "vm1", "vnc", &a.token(ALICE)).await;
    rfb_handshake(&mut first).await;
    let mut second = a.open("lab-alice", "vm1", "vnc", &a.token(ALICE)).await;
    rfb_handshake(&mut second).await;
    let frame = expect_close(&mut first, Duration::from_secs(2))
        .await
        .expect("closed");
    assert_eq!(u16::from(frame.code), 4007, "{}", frame.reason);

    // Other replica: KubeVirt drops the first viewer's connection without a
    // word (virt-handler closes the old stream). Replica A cannot tell that
    // from a VM that went away, so it reports the lost VM connection (4012)
    // at once: the README's "Several replicas" documents this, and the
    // chart's Ingress routes one VM's sessions to one replica to avoid it.
    let mut third = b.open("lab-alice", "vm1", "vnc", &b.token(ALICE)).await;
    rfb_handshake(&mut third).await;
    let t0 = Instant::now();
    let frame = expect_close(&mut second, Duration::from_secs(2))
        .await
        .expect("the first viewer is told, not left hanging");
    assert_eq!(u16::from(frame.code), 4012, "{}", frame.reason);
    println!(
        "cross-replica takeover reported in {:?}: {}",
        t0.elapsed(),
        frame.reason
    );
}
