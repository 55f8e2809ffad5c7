//! KubeVirt `vnc`/`console` subresources through the stand-in to REAL upstreams (TigerVNC Xvnc and
//! a socat PTY shell), with real websocket clients over real TLS.

use std::sync::Arc;
use std::time::Duration;

use futures::{SinkExt as _, StreamExt as _};
use serde_json::Value;
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
use tokio_tungstenite::tungstenite::error::{ProtocolError, SubProtocolError};
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::{WebSocketStream, client_async};

use labgate_tests::standin::{StandIn, UpstreamAddr, UserInfo, Vmi};
use labgate_tests::upstreams::{SerialConsole, Xvnc};

const DEADLINE: Duration = Duration::from_secs(10);

type Ws = WebSocketStream<TlsStream<TcpStream>>;

fn subresource(ns: &str, vmi: &str, kind: &str) -> String {
    format!(
        "/apis/subresources.kubevirt.io/v1/namespaces/{ns}/virtualmachineinstances/{vmi}/{kind}"
    )
}

/// Opens a websocket through real TLS; `token` goes into the Authorization header when given.
async fn open(
    standin: &StandIn,
    path: &str,
    token: Option<&str>,
    protocols: Option<&str>,
) -> Result<(Ws, tungstenite::handshake::client::Response), tungstenite::Error> {
    let url = format!("{}{path}", standin.url()).replacen("https://", "wss://", 1);
    let mut request = url.into_client_request()?;
    if let Some(token) = token {
        request
            .headers_mut()
            .insert("authorization", format!("Bearer {token}").parse().unwrap());
    }
    if let Some(protocols) = protocols {
        request
            .headers_mut()
            .insert("sec-websocket-protocol", protocols.parse().unwrap());
    }
    let addr = standin.url().trim_start_matches("https://").to_string();
    let tcp = TcpStream::connect(addr).await.unwrap();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(standin.ca().client_config()));
    let tls = connector
        .connect("127.0.0.1".try_into().unwrap(), tcp)
        .await
        .unwrap();
    client_async(request, tls).await
}

/// The `Status` of a refused upgrade.
async fn refused(standin: &StandIn, path: &str, token: Option<&str>) -> (u16, Value) {
    match open(standin, path, token, Some("plain.kubevirt.io")).await {
        Err(tungstenite::Error::Http(response)) => {
            let body = response.body().clone().unwrap_or_default();
            let status: Value = serde_json::from_slice(&body).expect("a Status body");
            assert_eq!(status["kind"], "Status");
            assert_eq!(status["status"], "Failure");
            (response.status().as_u16(), status)
        }
        Err(e) => panic!("expected an HTTP error, got {e}"),
        Ok(_) => panic!("expected the upgrade to be refused"),
    }
}

/// Reads Binary messages until `want` bytes arrived (all payload must be Binary).
async fn read_bytes(ws: &mut Ws, want: usize) -> Vec<u8> {
    let mut got = Vec::new();
    while got.len() < want {
        let message = tokio::time::timeout(DEADLINE, ws.next())
            .await
            .expect("upstream data in time")
            .expect("the socket stays open")
            .expect("no websocket error");
        match message {
            Message::Binary(data) => got.extend_from_slice(&data),
            other => panic!("expected Binary, got {other:?}"),
        }
    }
    got
}

/// Reads console output until it contains `needle`.
async fn read_until(ws: &mut Ws, needle: &str) -> String {
    let mut output = String::new();
    let deadline = tokio::time::Instant::now() + DEADLINE;
    while !output.contains(needle) {
        let message = tokio::time::timeout_at(deadline, ws.next())
            .await
            .unwrap_or_else(|_| panic!("{needle:?} did not arrive; got {output:?}"))
            .expect("the socket stays open")
            .expect("no websocket error");
        match message {
            Message::Binary(data) => output.push_str(&String::from_utf8_lossy(&data)),
            other => panic!("expected Binary, got {other:?}"),
        }
    }
    output
}

#[tokio::test]
async fn vnc_reaches_a_real_xvnc_with_plain_kubevirt_io() {
    let xvnc = Xvnc::start().unwrap();
    let standin = StandIn::start().await.unwrap();
    standin.lab_namespace("lab-a", "alice@example.com", &[]);
    standin.add_vmi(
        "lab-a",
        "vm1",
        Vmi::running(Some(UpstreamAddr::Unix(xvnc.socket())), None),
    );

    let token = standin.gateway_token();
    let (mut ws, response) = open(
        &standin,
        &subresource("lab-a", "vm1", "vnc"),
        Some(&token),
        Some("plain.kubevirt.io"),
    )
    .await
    .unwrap();
    assert_eq!(
        response.headers()["sec-websocket-protocol"],
        "plain.kubevirt.io"
    );
    assert_eq!(read_bytes(&mut ws, 12).await, b"RFB 003.008\n");
    // Answer the version: Xvnc offers its security types (1 type: None).
    ws.send(Message::Binary(b"RFB 003.008\n".to_vec().into()))
        .await
        .unwrap();
    assert_eq!(read_bytes(&mut ws, 2).await, [1, 1]);

    let recorded = standin.subresource_requests();
    assert_eq!(recorded.len(), 1);
    assert_eq!(recorded[0].method, "GET");
    assert_eq!(
        recorded[0].user.as_deref(),
        Some("system:serviceaccount:labgate:labgate-gateway")
    );
}

#[tokio::test]
async fn vnc_through_kube_client_send_and_manual_upgrade() {
    let xvnc = Xvnc::start().unwrap();
    let standin = StandIn::start().await.unwrap();
    standin.add_vmi(
        "lab-a",
        "vm1",
        Vmi::running(Some(UpstreamAddr::Unix(xvnc.socket())), None),
    );
    let client = standin.client(&standin.gateway_token());

    let key = tungstenite::handshake::client::generate_key();
    let request = http::Request::get(subresource("lab-a", "vm1", "vnc"))
        .header("connection", "Upgrade")
        .header("upgrade", "websocket")
        .header("sec-websocket-version", "13")
        .header("sec-websocket-key", &key)
        .header("sec-websocket-protocol", "plain.kubevirt.io")
        .body(kube::client::Body::from(Vec::new()))
        .unwrap();
    let response = client.send(request).await.unwrap();
    assert_eq!(response.status(), 101);
    assert_eq!(
        response.headers()["sec-websocket-accept"],
        tungstenite::handshake::derive_accept_key(key.as_bytes()).as_str()
    );
    let upgraded = hyper::upgrade::on(response).await.unwrap();
    let mut ws = WebSocketStream::from_raw_socket(
        hyper_util::rt::TokioIo::new(upgraded),
        tungstenite::protocol::Role::Client,
        None,
    )
    .await;
    let banner = tokio::time::timeout(DEADLINE, ws.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(banner, Message::Binary(b"RFB 003.008\n".to_vec().into()));
}

#[tokio::test]
async fn console_reaches_a_real_pty_and_drops_text_frames() {
    let console = SerialConsole::start().unwrap();
    let standin = StandIn::start().await.unwrap();
    standin.add_vmi(
        "lab-a",
        "vm1",
        Vmi::running(None, Some(UpstreamAddr::Unix(console.socket()))),
    );
    let token = standin.gateway_token();
    let (mut ws, _) = open(
        &standin,
        &subresource("lab-a", "vm1", "console"),
        Some(&token),
        Some("plain.kubevirt.io"),
    )
    .await
    .unwrap();

    // Text frames are dropped like virt-handler does: the shell never runs the command.
    ws.send(Message::Text("echo hello-$((40+2))\n".into()))
        .await
        .unwrap();
    let mut seen = String::new();
    let quiet = tokio::time::sleep(Duration::from_millis(700));
    tokio::pin!(quiet);
    loop {
        tokio::select! {
            _ = &mut quiet => break,
            message = ws.next() => match message.unwrap().unwrap() {
                Message::Binary(data) => seen.push_str(&String::from_utf8_lossy(&data)),
                other => panic!("expected Binary, got {other:?}"),
            },
        }
    }
    assert!(
        !seen.contains("hello-42"),
        "a Text frame reached the shell: {seen:?}"
    );
    assert!(
        !seen.contains("echo hello"),
        "a Text frame reached the PTY: {seen:?}"
    );

    // The same bytes as Binary reach the PTY; the shell computes the answer.
    ws.send(Message::Binary(b"echo hello-$((40+2))\n".to_vec().into()))
        .await
        .unwrap();
    let output = read_until(&mut ws, "hello-42").await;
    assert!(
        output.contains("echo hello-$((40+2))"),
        "PTY echo: {output:?}"
    );

    // A client Close ends the session cleanly (close handshake answered).
    ws.close(None).await.unwrap();
    let rest = tokio::time::timeout(DEADLINE, async {
        while let Some(message) = ws.next().await {
            if let Ok(Message::Close(_)) = message {
                return true;
            }
        }
        false
    })
    .await
    .unwrap();
    assert!(rest, "the stand-in answers the close frame");
}

#[tokio::test]
async fn a_second_vnc_session_kicks_the_first_without_a_close_frame() {
    let xvnc = Xvnc::start().unwrap();
    let standin = StandIn::start().await.unwrap();
    standin.add_vmi(
        "lab-a",
        "vm1",
        Vmi::running(Some(UpstreamAddr::Unix(xvnc.socket())), None),
    );
    let token = standin.gateway_token();
    let path = subresource("lab-a", "vm1", "vnc");

    let (mut first, _) = open(&standin, &path, Some(&token), Some("plain.kubevirt.io"))
        .await
        .unwrap();
    assert_eq!(read_bytes(&mut first, 12).await, b"RFB 003.008\n");

    // preserveSession=true refuses while a session is active (virt-api wraps the 503 as 500).
    let (code, status) = refused(
        &standin,
        &format!("{path}?preserveSession=true"),
        Some(&token),
    )
    .await;
    assert_eq!(code, 500);
    assert!(
        status["message"]
            .as_str()
            .unwrap()
            .contains("Active VNC connection. Request denied.")
    );

    let (mut second, _) = open(&standin, &path, Some(&token), Some("plain.kubevirt.io"))
        .await
        .unwrap();
    assert_eq!(read_bytes(&mut second, 12).await, b"RFB 003.008\n");

    let end = tokio::time::timeout(DEADLINE, first.next())
        .await
        .expect("the first session ends");
    match end {
        Some(Err(tungstenite::Error::Protocol(ProtocolError::ResetWithoutClosingHandshake)))
        | Some(Err(tungstenite::Error::Io(_)))
        | None => {}
        other => panic!("expected an abnormal end (1006, no close frame), got {other:?}"),
    }
}

#[tokio::test]
async fn browser_token_subprotocol_and_protocol_negotiation() {
    use base64::Engine as _;
    let xvnc = Xvnc::start().unwrap();
    let standin = StandIn::start().await.unwrap();
    standin.add_vmi(
        "lab-a",
        "vm1",
        Vmi::running(Some(UpstreamAddr::Unix(xvnc.socket())), None),
    );
    let path = subresource("lab-a", "vm1", "vnc");
    let encoded = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(standin.gateway_token());

    // The token as a subprotocol authenticates and is not echoed.
    let offer = format!("base64url.bearer.authorization.k8s.io.{encoded}, plain.kubevirt.io");
    let (mut ws, response) = open(&standin, &path, None, Some(&offer)).await.unwrap();
    assert_eq!(
        response.headers()["sec-websocket-protocol"],
        "plain.kubevirt.io"
    );
    assert_eq!(read_bytes(&mut ws, 12).await, b"RFB 003.008\n");
    drop(ws);

    // No subprotocol offered: upgraded anyway, none echoed (KubeVirt backward compatibility).
    let (mut ws, response) = open(&standin, &path, Some(&standin.gateway_token()), None)
        .await
        .unwrap();
    assert!(response.headers().get("sec-websocket-protocol").is_none());
    assert_eq!(read_bytes(&mut ws, 12).await, b"RFB 003.008\n");
    drop(ws);

    // Another protocol only: the server upgrades without echoing, which tungstenite rejects.
    match open(
        &standin,
        &path,
        Some(&standin.gateway_token()),
        Some("binary"),
    )
    .await
    {
        Err(tungstenite::Error::Protocol(ProtocolError::SecWebSocketSubProtocolError(
            SubProtocolError::NoSubProtocol,
        ))) => {}
        other => panic!(
            "expected a 101 without subprotocol, got {:?}",
            other.map(|(_, r)| r)
        ),
    }
}

#[tokio::test]
async fn refusals_come_before_the_upgrade_as_status() {
    let standin = StandIn::start().await.unwrap();
    let token = standin.gateway_token();
    let xvnc_socket = UpstreamAddr::Unix("/nonexistent/vnc.sock".into());
    standin.add_vmi(
        "lab-a",
        "scheduled",
        Vmi {
            phase: "Scheduled".into(),
            vnc: Some(xvnc_socket.clone()),
            console: Some(xvnc_socket.clone()),
        },
    );
    standin.add_vmi("lab-a", "headless", Vmi::running(None, None));
    standin.add_vmi(
        "lab-a",
        "failed",
        Vmi {
            phase: "Failed".into(),
            vnc: None,
            console: Some(xvnc_socket.clone()),
        },
    );

    let (code, status) = refused(
        &standin,
        &subresource("lab-a", "missing", "vnc"),
        Some(&token),
    )
    .await;
    assert_eq!((code, status["reason"].as_str()), (404, Some("NotFound")));
    assert_eq!(status["details"]["name"], "missing");

    let (code, status) = refused(
        &standin,
        &subresource("lab-a", "scheduled", "vnc"),
        Some(&token),
    )
    .await;
    assert_eq!(
        (code, status["message"].as_str()),
        (400, Some("VMI is not running"))
    );
    assert_eq!(status["reason"], "BadRequest");

    let (code, status) = refused(
        &standin,
        &subresource("lab-a", "headless", "vnc"),
        Some(&token),
    )
    .await;
    assert_eq!(
        (code, status["message"].as_str()),
        (400, Some("No graphics devices are present."))
    );
    let (code, status) = refused(
        &standin,
        &subresource("lab-a", "headless", "console"),
        Some(&token),
    )
    .await;
    assert_eq!(
        (code, status["message"].as_str()),
        (400, Some("No serial consoles are present."))
    );

    let (code, status) = refused(
        &standin,
        &subresource("lab-a", "failed", "console"),
        Some(&token),
    )
    .await;
    assert_eq!((code, status["reason"].as_str()), (409, Some("Conflict")));

    // Paused (the Paused condition, phase still Running): 409 "VMI is paused"
    // for both kinds, as virt-api's VNC and console validators answer.
    standin.add_vmi(
        "lab-a",
        "paused",
        Vmi::running(Some(xvnc_socket.clone()), Some(xvnc_socket.clone())),
    );
    standin.set_vmi_paused("lab-a", "paused", true);
    for kind in ["vnc", "console"] {
        let (code, status) = refused(
            &standin,
            &subresource("lab-a", "paused", kind),
            Some(&token),
        )
        .await;
        assert_eq!((code, status["reason"].as_str()), (409, Some("Conflict")));
        assert_eq!(
            status["message"],
            "Operation cannot be fulfilled on virtualmachineinstance.kubevirt.io \"paused\": VMI is paused"
        );
    }

    // The VMI turning Running is seen at once; the upstream being gone is a 500.
    standin.set_vmi_phase("lab-a", "scheduled", "Running");
    let (code, _) = refused(
        &standin,
        &subresource("lab-a", "scheduled", "vnc"),
        Some(&token),
    )
    .await;
    assert_eq!(code, 500);

    // RBAC: other identities are forbidden unless allowed.
    standin.add_token("alice-token", UserInfo::user("alice"));
    let (code, status) = refused(
        &standin,
        &subresource("lab-a", "headless", "vnc"),
        Some("alice-token"),
    )
    .await;
    assert_eq!(code, 403);
    assert_eq!(
        status["message"],
        "virtualmachineinstances.subresources.kubevirt.io \"headless\" is forbidden: User \"alice\" cannot get resource \"virtualmachineinstances/vnc\" in API group \"subresources.kubevirt.io\" in the namespace \"lab-a\""
    );
    standin.allow_subresources("alice");
    let (code, _) = refused(
        &standin,
        &subresource("lab-a", "headless", "vnc"),
        Some("alice-token"),
    )
    .await;
    assert_eq!(code, 400, "past RBAC now");

    // Bad or missing tokens: 401, recorded without a user.
    let (code, status) = refused(
        &standin,
        &subresource("lab-a", "headless", "vnc"),
        Some("wrong"),
    )
    .await;
    assert_eq!(
        (code, status["reason"].as_str()),
        (401, Some("Unauthorized"))
    );
    let (code, _) = refused(&standin, &subresource("lab-a", "headless", "vnc"), None).await;
    assert_eq!(code, 401);
    let unauthenticated = standin
        .subresource_requests()
        .into_iter()
        .filter(|r| r.user.is_none())
        .count();
    assert_eq!(unauthenticated, 2);
}

#[tokio::test]
async fn sessions_end_when_the_vmi_stops_or_goes_away() {
    let console = SerialConsole::start().unwrap();
    let standin = StandIn::start().await.unwrap();
    standin.lab_namespace("lab-a", "alice@example.com", &[]);
    let upstream = Some(UpstreamAddr::Unix(console.socket()));
    standin.add_vmi("lab-a", "vm1", Vmi::running(None, upstream.clone()));
    standin.add_vmi("lab-a", "vm2", Vmi::running(None, upstream));
    let token = standin.gateway_token();
    let (mut vm1, _) = open(
        &standin,
        &subresource("lab-a", "vm1", "console"),
        Some(&token),
        None,
    )
    .await
    .unwrap();
    let (mut vm2, _) = open(
        &standin,
        &subresource("lab-a", "vm2", "console"),
        Some(&token),
        None,
    )
    .await
    .unwrap();

    // Stopping vm1 drops its connection (no close frame); vm2 is untouched.
    standin.set_vmi_phase("lab-a", "vm1", "Succeeded");
    let end = tokio::time::timeout(DEADLINE, async {
        loop {
            match vm1.next().await {
                Some(Ok(Message::Binary(_))) => continue,
                other => return other,
            }
        }
    })
    .await
    .expect("the session ends");
    assert!(
        !matches!(end, Some(Ok(Message::Close(_)))),
        "no close frame: {end:?}"
    );
    vm2.send(Message::Binary(b"echo still-$((1+1))\n".to_vec().into()))
        .await
        .unwrap();
    read_until(&mut vm2, "still-2").await;

    // Deleting the namespace deletes the VMI, which ends the session.
    standin.delete_namespace("lab-a");
    let end = tokio::time::timeout(DEADLINE, async {
        loop {
            match vm2.next().await {
                Some(Ok(Message::Binary(_))) => continue,
                other => return other,
            }
        }
    })
    .await
    .expect("the session ends with the namespace");
    assert!(!matches!(end, Some(Ok(Message::Close(_)))));
}
