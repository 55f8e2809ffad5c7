//! The viewer page (`/view/{lab}`) and its content-hashed assets (`/assets/{name}.{hash}.{ext}`),
//! embedded at build time from `gateway/web/dist/` (see `build.rs`; `scripts/build-viewer.sh`
//! builds the bundle). A gateway built without the bundle serves the API only and answers the
//! viewer's routes with a 503 saying how to build it.
//!
//! The page itself holds no secret: the token stays in the URL fragment, which browsers never
//! send. Its headers keep it that way: a strict Content-Security-Policy (scripts and styles only
//! from this origin, websockets only to this host), no referrer, no caching of the page.

use base64::Engine;
use bytes::Bytes;
use http::header::{
    ACCEPT_ENCODING, ALLOW, CACHE_CONTROL, CONTENT_ENCODING, CONTENT_SECURITY_POLICY, CONTENT_TYPE,
    HOST, LOCATION, REFERRER_POLICY, VARY, X_CONTENT_TYPE_OPTIONS,
};
use http::{HeaderMap, Method, Request, Response, StatusCode};
use http_body_util::Full;

use crate::server::GatewayResponse;

mod embedded {
    /// One bundled file.
    pub struct Asset {
        pub name: &'static str,
        pub content_type: &'static str,
        pub bytes: &'static [u8],
        /// The same, gzipped at build time.
        pub gzip: Option<&'static [u8]>,
    }
    include!(concat!(env!("OUT_DIR"), "/viewer_assets.rs"));
}

/// Hashed names never change content: cache for a year.
const IMMUTABLE: &str = "public, max-age=31536000, immutable";

/// How the page may be framed and where the gateway is mounted.
#[derive(Debug, Clone)]
pub struct ViewerSettings {
    /// CSP `frame-ancestors` sources (`'none'` forbids framing).
    pub frame_ancestors: String,
}

impl Default for ViewerSettings {
    fn default() -> Self {
        ViewerSettings {
            frame_ancestors: "'none'".into(),
        }
    }
}

/// Whether this binary carries the viewer bundle.
pub fn is_built() -> bool {
    embedded::INDEX.is_some()
}

/// Bytes of the embedded bundle (page and assets).
pub fn bundle_bytes() -> usize {
    embedded::INDEX.map_or(0, <[u8]>::len)
        + embedded::ASSETS
            .iter()
            .map(|a| a.bytes.len())
            .sum::<usize>()
}

/// Logs, once at start-up, whether the viewer is served.
pub fn log_availability() {
    if is_built() {
        tracing::info!(
            assets = embedded::ASSETS.len(),
            bytes = bundle_bytes(),
            "viewer page served at /view/{{lab}}"
        );
    } else {
        tracing::warn!(
            "viewer page not built into this binary: serving the API only; run \
             scripts/build-viewer.sh, then rebuild the gateway"
        );
    }
}

/// Whether `name` can be an asset file name: no path, no hidden files.
pub(crate) fn is_asset_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 128
        && !name.starts_with('.')
        && !name.contains("..")
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'))
}

/// Whether `name` is an embedded asset (for logging only known names).
pub(crate) fn has_asset(name: &str) -> bool {
    embedded::ASSETS.iter().any(|a| a.name == name)
}

/// `GET /view/{lab}`: the page, with a fresh style nonce.
pub(crate) fn page<B>(req: &Request<B>, settings: &ViewerSettings) -> GatewayResponse {
    if let Some(refused) = only_get(req) {
        return refused;
    }
    let Some(template) = embedded::INDEX else {
        return not_built();
    };
    let nonce = base64::engine::general_purpose::STANDARD.encode(rand::random::<[u8; 18]>());
    let html = String::from_utf8_lossy(template).replace("{{nonce}}", &nonce);
    let csp = content_security_policy(&nonce, req.headers(), &settings.frame_ancestors);
    Response::builder()
        .header(CONTENT_TYPE, "text/html; charset=utf-8")
        // The page is tiny and names the current hashed assets: always fetch it anew.
        .header(CACHE_CONTROL, "no-store")
        .header(CONTENT_SECURITY_POLICY, csp)
        .header(X_CONTENT_TYPE_OPTIONS, "nosniff")
        .header(REFERRER_POLICY, "no-referrer")
        .header("cross-origin-opener-policy", "same-origin")
        .body(Full::new(Bytes::from(html)))
        .unwrap_or_default()
}

/// `GET /view/{lab}/`: the page's relative URLs need it without the slash.
pub(crate) fn redirect_without_slash(lab: &str) -> GatewayResponse {
    // Relative, so it works under any prefix; the browser keeps the fragment.
    Response::builder()
        .status(StatusCode::PERMANENT_REDIRECT)
        .header(LOCATION, format!("../{lab}"))
        .header(CACHE_CONTROL, "no-store")
        .body(Full::default())
        .unwrap_or_default()
}

/// `GET /assets/{name}`: an embedded file, cached for good (its name changes with its content).
pub(crate) fn asset<B>(req: &Request<B>, name: &str) -> GatewayResponse {
    if let Some(refused) = only_get(req) {
        return refused;
    }
    if !is_built() {
        return not_built();
    }
    let Some(asset) = embedded::ASSETS.iter().find(|a| a.name == name) else {
        return plain(StatusCode::NOT_FOUND, "no such asset\n");
    };
    let (bytes, encoding) = match asset.gzip {
        Some(gzipped) if accepts_gzip(req.headers()) => (gzipped, Some("gzip")),
        _ => (asset.bytes, None),
    };
    let mut response = Response::builder()
        .header(CONTENT_TYPE, asset.content_type)
        .header(VARY, "accept-encoding");
    if let Some(encoding) = encoding {
        response = response.header(CONTENT_ENCODING, encoding);
    }
    response
        .header(CACHE_CONTROL, IMMUTABLE)
        .header(X_CONTENT_TYPE_OPTIONS, "nosniff")
        .header("cross-origin-resource-policy", "same-origin")
        .body(Full::new(Bytes::from_static(bytes)))
        .unwrap_or_default()
}

/// Whether `Accept-Encoding` lists gzip (or `*`) without refusing it with `q=0`.
fn accepts_gzip(headers: &HeaderMap) -> bool {
    headers
        .get_all(ACCEPT_ENCODING)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|item| {
            let mut parts = item.split(';').map(str::trim);
            let coding = parts.next().unwrap_or_default();
            let refused = parts.any(|p| {
                p.strip_prefix("q=")
                    .and_then(|q| q.parse::<f32>().ok())
                    .is_some_and(|q| q <= 0.0)
            });
            (coding.eq_ignore_ascii_case("gzip") || coding == "*") && !refused
        })
}

/// The answer for the viewer's routes in a binary built without the bundle.
pub(crate) fn not_built() -> GatewayResponse {
    plain(
        StatusCode::SERVICE_UNAVAILABLE,
        "The viewer page was not built into this labgate-gateway binary; it serves the \
         websocket API under /labs/ only.\nTo include the page, run scripts/build-viewer.sh \
         (needs Node.js 20+ and npm), then build the gateway again.\n",
    )
}

fn only_get<B>(req: &Request<B>) -> Option<GatewayResponse> {
    if req.method() == Method::GET || req.method() == Method::HEAD {
        return None;
    }
    let mut response = plain(StatusCode::METHOD_NOT_ALLOWED, "only GET\n");
    response
        .headers_mut()
        .insert(ALLOW, http::HeaderValue::from_static("GET, HEAD"));
    Some(response)
}

fn plain(status: StatusCode, body: &'static str) -> GatewayResponse {
    Response::builder()
        .status(status)
        .header(CONTENT_TYPE, "text/plain; charset=utf-8")
        .header(CACHE_CONTROL, "no-store")
        .header(X_CONTENT_TYPE_OPTIONS, "nosniff")
        .body(Full::new(Bytes::from_static(body.as_bytes())))
        .unwrap_or_default()
}

/// The page's policy. `connect-src 'self'` covers same-host ws:/wss: in CSP Level 3 browsers
/// (Chromium, Firefox) but not in older ones (Safari before 15.4), so the request's own host is
/// also named with ws:/wss: when it is a plain host[:port]. Inline `style` attributes are
/// allowed (xterm.js colours cells with them; they cannot run code); `<style>` elements need the
/// page's nonce (xterm.js's theme and cell sizes, see web/src/csp.js).
pub(crate) fn content_security_policy(
    nonce: &str,
    headers: &HeaderMap,
    frame_ancestors: &str,
) -> String {
    let host = headers
        .get(HOST)
        .and_then(|h| h.to_str().ok())
        .filter(|h| is_authority(h));
    let sockets = host.map_or(String::new(), |h| format!(" wss://{h} ws://{h}"));
    format!(
        "default-src 'none'; script-src 'self'; style-src 'self' 'nonce-{nonce}'; \
         style-src-attr 'unsafe-inline'; img-src 'self' data: blob:; font-src 'self'; \
         connect-src 'self'{sockets}; frame-ancestors {frame_ancestors}; base-uri 'none'; \
         form-action 'none'"
    )
}

/// A Host header that is safe to repeat in a header: a DNS name or IP literal, optional port.
fn is_authority(host: &str) -> bool {
    !host.is_empty()
        && host.len() <= 255
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b':' | b'[' | b']'))
}

/// Checks a `--frame-ancestors` value: CSP source expressions separated by spaces.
pub fn validate_frame_ancestors(value: &str) -> Result<(), String> {
    let ok = !value.trim().is_empty()
        && value.bytes().all(|b| {
            b.is_ascii_alphanumeric()
                || matches!(b, b' ' | b'\'' | b'.' | b'-' | b':' | b'/' | b'*')
        });
    if ok {
        Ok(())
    } else {
        Err(format!(
            "--frame-ancestors {value:?}: expected CSP sources separated by spaces, e.g. \
             'none', 'self' or https://portal.example.org"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn asset_names_refuse_paths_and_hidden_files() {
        for name in ["viewer.ABC123.js", "xterm-css.Z9.css", "a_b.1.woff2"] {
            assert!(is_asset_name(name), "{name}");
        }
        for name in [
            "",
            ".env",
            "../Cargo.toml",
            "a/b.js",
            "a%2Fb.js",
            "a..b.js",
            "a b.js",
        ] {
            assert!(!is_asset_name(name), "{name}");
        }
    }

    #[test]
    fn policy_names_only_a_plain_host() {
        let mut headers = HeaderMap::new();
        headers.insert(HOST, "labs.example.org:8443".parse().unwrap());
        let csp = content_security_policy("n0nce", &headers, "'none'");
        assert!(
            csp.contains(
                "connect-src 'self' wss://labs.example.org:8443 ws://labs.example.org:8443;"
            ),
            "{csp}"
        );
        assert!(csp.contains("style-src 'self' 'nonce-n0nce';"), "{csp}");
        assert!(csp.contains("frame-ancestors 'none';"), "{csp}");
        // A Host header trying to add its own directives is left out.
        headers.insert(HOST, "evil.example; script-src *".parse().unwrap());
        let csp = content_security_policy("n", &headers, "'none'");
        assert!(csp.contains("connect-src 'self';"), "{csp}");
        assert!(!csp.contains("evil"), "{csp}");
    }

    /// Every close code the README's refusal table lists (but the retired 4004) has a sentence
    /// in the page's table, and a row in the README's table of what the page does.
    #[test]
    fn every_close_code_has_a_sentence_for_students() {
        let readme = include_str!("../../README.md");
        let page_table = include_str!("../web/src/close-codes.js");
        let section = |title: &str| {
            let start = readme.find(title).expect(title);
            let rest = &readme[start + title.len()..];
            &rest[..rest.find("\n## ").unwrap_or(rest.len())]
        };
        let codes: Vec<&str> = section("## Refusals and close codes")
            .lines()
            .filter_map(|l| l.strip_prefix("| "))
            .filter_map(|l| l.split(' ').next())
            .filter(|c| c.len() == 4 && c.bytes().all(|b| b.is_ascii_digit()))
            .filter(|c| *c != "4004")
            .collect();
        assert!(codes.len() >= 20, "{codes:?}");
        let viewer = section("## The viewer page");
        for code in codes {
            assert!(
                page_table.contains(&format!("    {code}: {{")),
                "close-codes.js has no entry for {code}"
            );
            assert!(
                viewer.contains(&format!("| {code} |")),
                "the README's viewer table has no row for {code}"
            );
        }
    }

    /// A binary without the bundle says what is missing and how to build it.
    #[test]
    fn the_answer_without_a_bundle_says_how_to_build_it() {
        let response = not_built();
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        let body = format!("{:?}", response.body());
        assert!(
            body.contains("scripts/build-viewer.sh") && body.contains("/labs/"),
            "{body}"
        );
    }

    #[test]
    fn gzip_only_when_accepted() {
        let with = |value: &str| {
            let mut headers = HeaderMap::new();
            headers.insert(ACCEPT_ENCODING, value.parse().unwrap());
            accepts_gzip(&headers)
        };
        assert!(with("gzip, deflate, br"));
        assert!(with("br;q=1.0, GZIP;q=0.5"));
        assert!(with("*"));
        assert!(!with("br"));
        assert!(!with("gzip;q=0, br"));
        assert!(!with("identity"));
        assert!(!accepts_gzip(&HeaderMap::new()));
    }

    #[test]
    fn frame_ancestors_must_be_sources() {
        assert!(validate_frame_ancestors("'none'").is_ok());
        assert!(validate_frame_ancestors("'self' https://portal.example.org").is_ok());
        assert!(validate_frame_ancestors("'self'; script-src *").is_err());
        assert!(validate_frame_ancestors("").is_err());
    }
}
