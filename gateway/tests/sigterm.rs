//! The real binary under SIGTERM: it stops accepting, turns unready, lets a
//! live session run for the grace period, closes it with 1001 and exits 0.
//! Also checks that no token ever reaches its logs.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use labgate_tests::standin::{StandIn, UpstreamAddr, Vmi};
use labgate_tests::upstreams::SerialConsole;
use tokio_tungstenite::tungstenite::Message;

fn http_get(addr: SocketAddr, path: &str) -> std::io::Result<String> {
    let mut s = TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    Ok(out)
}

/// Waits for a JSON log line whose message is `msg` and returns its `addr` field.
fn wait_for_addr(lines: &Arc<Mutex<Vec<String>>>, msg: &str) -> SocketAddr {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        for line in lines.lock().unwrap().iter() {
            if let Ok(v) = serde_json::from_str::<serde_json::Value>(line)
                && v["fields"]["message"] == msg
            {
                return v["fields"]["addr"].as_str().unwrap().parse().unwrap();
            }
        }
        assert!(Instant::now() < deadline, "gateway never logged {msg:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_sessions_then_exits() {
    let standin = StandIn::start().await.unwrap();
    let console = SerialConsole::start().unwrap();
    standin.lab_namespace("lab-1", "alice@example.com", &[]);
    standin.add_vmi(
        "lab-1",
        "vm1",
        Vmi::running(None, Some(UpstreamAddr::Unix(console.socket()))),
    );
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = standin.write_kubeconfig(dir.path(), &standin.gateway_token());
    let secret = dir.path().join("secret");
    std::fs::write(&secret, "sigterm-test-secret-0123456789abcdef").unwrap();

    let mut child = Command::new(env!("CARGO_BIN_EXE_labgate-gateway"))
        .args(["--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"])
        .arg("--insecure-plain-http")
        .arg("--jwt-hmac-secret-file")
        .arg(&secret)
        .args(["--jwt-audience", "labgate"])
        .arg("--kubeconfig")
        .arg(&kubeconfig)
        .args(["--shutdown-grace", "2s", "--log-format", "json"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let lines = Arc::new(Mutex::new(Vec::new()));
    for stream in [
        Box::new(child.stdout.take().unwrap()) as Box<dyn Read + Send>,
        Box::new(child.stderr.take().unwrap()),
    ] {
        let lines = lines.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stream).lines().map_while(Result::ok) {
                lines.lock().unwrap().push(line);
            }
        });
    }
    let addr = wait_for_addr(&lines, "labgate gateway listening");
    let admin = wait_for_addr(&lines, "admin endpoints listening");
    let deadline = Instant::now() + Duration::from_secs(20);
    while !http_get(admin, "/readyz")
        .unwrap_or_default()
        .starts_with("HTTP/1.1 200")
    {
        assert!(Instant::now() < deadline, "never ready");
        std::thread::sleep(Duration::from_millis(50));
    }

    let exp = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 600;
    let token = jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &serde_json::json!({"sub": "alice@example.com", "aud": "labgate", "exp": exp}),
        &jsonwebtoken::EncodingKey::from_secret(b"sigterm-test-secret-0123456789abcdef"),
    )
    .unwrap();
    // A refusal after a valid token names the user who tried (never the token).
    let refused = http_get(addr, &format!("/labs/lab-2/vm1/console/{token}")).unwrap();
    assert!(refused.starts_with("HTTP/1.1 403"), "{refused}");
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let audit = lines.lock().unwrap().iter().find_map(|line| {
            let v = serde_json::from_str::<serde_json::Value>(line).ok()?;
            (v["fields"]["message"] == "session refused").then(|| v["fields"].clone())
        });
        if let Some(fields) = audit {
            assert_eq!(fields["user"], "alice@example.com", "{fields}");
            assert_eq!(fields["lab"], "lab-2", "{fields}");
            break;
        }
        assert!(Instant::now() < deadline, "no audit line for the refusal");
        std::thread::sleep(Duration::from_millis(20));
    }

    let url = format!("ws://{addr}/labs/lab-1/vm1/console/{token}");
    let (mut ws, _) = tokio_tungstenite::connect_async(&url).await.unwrap();
    let mut seen = String::new();
    let mut expect_output =
        async |ws: &mut tokio_tungstenite::WebSocketStream<_>, cmd: &'static [u8], needle: &str| {
            ws.send(Message::Binary(Bytes::from_static(cmd)))
                .await
                .unwrap();
            tokio::time::timeout(Duration::from_secs(10), async {
                while !seen.contains(needle) {
                    if let Some(Ok(Message::Binary(b))) = ws.next().await {
                        seen.push_str(&String::from_utf8_lossy(&b));
                    }
                }
            })
            .await
            .unwrap_or_else(|_| panic!("{needle} not echoed"));
        };
    expect_output(&mut ws, b"echo before-$((1+1))\r", "before-2").await;

    let terminated = Instant::now();
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    std::thread::sleep(Duration::from_millis(300));
    let ready = http_get(admin, "/readyz").unwrap();
    assert!(ready.starts_with("HTTP/1.1 503"), "{ready}");
    assert!(
        TcpStream::connect(addr).is_err(),
        "still accepting after SIGTERM"
    );

    // The live session keeps working during the grace period...
    expect_output(&mut ws, b"echo during-$((2+2))\r", "during-4").await;
    // ...and is then closed with "going away".
    let frame = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match ws.next().await {
                Some(Ok(Message::Close(f))) => return f,
                Some(Ok(_)) => {}
                other => panic!("no close frame: {other:?}"),
            }
        }
    })
    .await
    .unwrap()
    .unwrap();
    assert_eq!(u16::from(frame.code), 1001);
    assert!(
        terminated.elapsed() >= Duration::from_secs(2),
        "grace period honoured"
    );

    let exit = tokio::task::spawn_blocking(move || child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(exit.success(), "{exit:?}");
    std::thread::sleep(Duration::from_millis(100));
    let logs = lines.lock().unwrap().join("\n");
    assert!(logs.contains("session ended"), "audit line written: {logs}");
    assert!(!logs.contains(&token), "a token reached the logs");
    assert!(!logs.contains("sigterm-test-secret-0123456789abcdef"));
}
