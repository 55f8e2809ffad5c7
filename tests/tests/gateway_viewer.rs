//! The viewer page and its assets as the gateway serves them: content types, caching, the
//! Content-Security-Policy, unknown names and path tricks refused, and a gateway mounted under
//! a prefix (`--base-path`). Needs the bundle (`scripts/build-viewer.sh`) built into the gateway.

mod support;

use bytes::Bytes;
use http::HeaderMap;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use support::*;

struct Answer {
    status: u16,
    headers: HeaderMap,
    body: Bytes,
}

impl Answer {
    fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
    }
}

/// One HTTPS request with `method` to `path` exactly as given (no normalisation).
async fn request(env: &Env, method: &str, path: &str) -> Answer {
    request_with(env, method, path, &[]).await
}

async fn request_with(env: &Env, method: &str, path: &str, headers: &[(&str, &str)]) -> Answer {
    let tls = env.tls_connect().await.expect("TLS connection");
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .expect("HTTP handshake");
    tokio::spawn(conn);
    let mut req = http::Request::builder()
        .method(method)
        .uri(path)
        .header("host", format!("localhost:{}", env.addr.port()));
    for (name, value) in headers {
        req = req.header(*name, *value);
    }
    let req = req.body(Empty::<Bytes>::new()).unwrap();
    let res = sender.send_request(req).await.expect("response");
    let status = res.status().as_u16();
    let headers = res.headers().clone();
    let body = res.into_body().collect().await.unwrap().to_bytes();
    Answer {
        status,
        headers,
        body,
    }
}

fn require_bundle() {
    assert!(
        labgate_gateway::viewer::is_built(),
        "the viewer page is not built into this gateway: run scripts/build-viewer.sh, then the tests"
    );
}

/// The `../assets/...` names the page refers to.
fn asset_names(html: &str) -> Vec<String> {
    html.split("../assets/")
        .skip(1)
        .filter_map(|rest| rest.split('"').next())
        .map(str::to_string)
        .collect()
}

#[tokio::test]
async fn page_and_assets_carry_types_caching_and_a_strict_policy() {
    require_bundle();
    let env = start(Options {
        upstreams: false,
        ..Options::default()
    })
    .await
    .unwrap();
    let page = request(&env, "GET", "/view/lab-alice").await;
    assert_eq!(page.status, 200);
    assert_eq!(page.header("content-type"), "text/html; charset=utf-8");
    assert_eq!(page.header("cache-control"), "no-store");
    assert_eq!(page.header("x-content-type-options"), "nosniff");
    assert_eq!(page.header("referrer-policy"), "no-referrer");
    let csp = page.header("content-security-policy").to_string();
    let port = env.addr.port();
    for directive in [
        "default-src 'none'",
        "script-src 'self'",
        "img-src 'self' data: blob:",
        "font-src 'self'",
        &format!("connect-src 'self' wss://localhost:{port} ws://localhost:{port}"),
        "frame-ancestors 'none'",
        "base-uri 'none'",
        "form-action 'none'",
    ] {
        assert!(
            csp.split(';').any(|d| d.trim() == directive),
            "CSP lacks `{directive}`: {csp}"
        );
    }
    assert!(!csp.contains("unsafe-eval"), "{csp}");
    // The style nonce is the page's own and new on every answer.
    let html = String::from_utf8_lossy(&page.body).into_owned();
    let nonce = csp
        .split("'nonce-")
        .nth(1)
        .and_then(|r| r.split('\'').next())
        .expect("a style nonce");
    assert!(
        html.contains(&format!("content=\"{nonce}\"")),
        "the page lacks its nonce"
    );
    let again = request(&env, "GET", "/view/lab-alice").await;
    assert_ne!(
        again.header("content-security-policy"),
        csp,
        "the nonce was reused"
    );

    let names = asset_names(&html);
    assert!(
        names.iter().any(|n| n.ends_with(".js")) && names.iter().any(|n| n.ends_with(".css")),
        "the page names no script and style: {names:?}"
    );
    for name in &names {
        let asset = request(&env, "GET", &format!("/assets/{name}")).await;
        assert_eq!(asset.status, 200, "{name}");
        let expected = if name.ends_with(".js") {
            "text/javascript; charset=utf-8"
        } else {
            "text/css; charset=utf-8"
        };
        assert_eq!(asset.header("content-type"), expected, "{name}");
        assert_eq!(
            asset.header("cache-control"),
            "public, max-age=31536000, immutable",
            "{name}"
        );
        assert_eq!(asset.header("x-content-type-options"), "nosniff", "{name}");
        assert!(!asset.body.is_empty(), "{name}");
        assert_eq!(asset.header("content-encoding"), "", "{name}");
        assert_eq!(asset.header("vary"), "accept-encoding", "{name}");
        // Gzipped for a browser that takes it: the gzip magic, and smaller.
        let gzipped = request_with(
            &env,
            "GET",
            &format!("/assets/{name}"),
            &[("accept-encoding", "gzip, deflate, br")],
        )
        .await;
        assert_eq!(gzipped.status, 200, "{name}");
        assert_eq!(gzipped.header("content-encoding"), "gzip", "{name}");
        assert_eq!(gzipped.header("content-type"), expected, "{name}");
        assert!(
            gzipped.body.starts_with(&[0x1f, 0x8b]) && gzipped.body.len() < asset.body.len(),
            "{name}: not gzip, or not smaller"
        );
        // HEAD answers the same headers.
        let head = request(&env, "HEAD", &format!("/assets/{name}")).await;
        assert_eq!(head.status, 200, "HEAD {name}");
        assert_eq!(head.header("content-type"), expected, "HEAD {name}");
    }

    // A trailing slash would break the page's relative URLs: redirected, relatively.
    let slash = request(&env, "GET", "/view/lab-alice/").await;
    assert_eq!(slash.status, 308);
    assert_eq!(slash.header("location"), "../lab-alice");

    let post = request(&env, "POST", "/view/lab-alice").await;
    assert_eq!(post.status, 405);
    assert_eq!(post.header("allow"), "GET, HEAD");
}

#[tokio::test]
async fn unknown_assets_and_path_tricks_are_refused() {
    require_bundle();
    let env = start(Options {
        upstreams: false,
        ..Options::default()
    })
    .await
    .unwrap();
    for path in [
        "/assets/viewer.00000000.js",
        "/assets/",
        "/assets/../Cargo.toml",
        "/assets/..%2fCargo.toml",
        "/assets/%2e%2e/build.rs",
        "/assets/.gitignore",
        "/assets/sub/viewer.js",
        "/assets/index.html",
        "/assets/..",
        "/view/../assets/x.js",
        "/view/lab-alice/../../Cargo.toml",
        "/view/Lab-Alice",
        "/view/",
        "/view",
    ] {
        let answer = request(&env, "GET", path).await;
        assert_eq!(answer.status, 404, "{path}");
        let body = String::from_utf8_lossy(&answer.body);
        assert!(
            !body.contains("[package]") && !body.contains("<html"),
            "{path} answered {body}"
        );
    }
}

/// Mounted under `/labgate` with nothing in front stripping it: the page, its assets and the
/// sessions all answer below the prefix, and nothing answers outside it.
#[tokio::test]
async fn base_path_serves_everything_below_the_prefix() {
    require_bundle();
    let env = start(Options {
        extra_args: vec!["--base-path".into(), "/labgate/".into()],
        upstreams: false,
        ..Options::default()
    })
    .await
    .unwrap();
    // Probes address the process: /readyz answers at the root and below the prefix.
    env.wait_ready(std::time::Duration::from_secs(15))
        .await
        .unwrap();
    assert_eq!(request(&env, "GET", "/labgate/readyz").await.status, 200);
    let page = request(&env, "GET", "/labgate/view/lab-alice").await;
    assert_eq!(page.status, 200);
    let html = String::from_utf8_lossy(&page.body).into_owned();
    for name in asset_names(&html) {
        assert_eq!(
            request(&env, "GET", &format!("/labgate/assets/{name}"))
                .await
                .status,
            200,
            "{name}"
        );
        assert_eq!(
            request(&env, "GET", &format!("/assets/{name}"))
                .await
                .status,
            404,
            "{name} outside the prefix"
        );
    }
    for path in [
        "/view/lab-alice",
        "/labgateview/lab-alice",
        "/labs/lab-alice/vm1/vnc",
    ] {
        assert_eq!(request(&env, "GET", path).await.status, 404, "{path}");
    }
    // A session below the prefix reaches the gateway's pipeline (here: refused for its token).
    let (mut ws, _) = env
        .ws("/labgate/labs/lab-alice/vm1/console/not.a.token", None, &[])
        .await
        .expect("handshake");
    let reason = assert_refused(&mut ws, 4001).await;
    assert!(reason.starts_with("bad token"), "{reason}");
}
