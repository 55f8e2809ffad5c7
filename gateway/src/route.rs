//! Routes: which VM and which console a request is for, and where its token is.
//!
//! `/labs/{namespace}/{vmi}/{vnc|console}[/{token}][?token=...]`. The token may
//! be a final path segment because noVNC can only set a path. Names must be
//! DNS labels (RFC 1123, at most 63 characters), which also rules out `..`,
//! encoded slashes and any other way to smuggle a different upstream path.

use std::fmt;

/// Which KubeVirt subresource a session opens.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ConsoleKind {
    /// The VM's screen (`vnc` subresource, RFB bytes).
    Vnc,
    /// The VM's first serial console (`console` subresource).
    Console,
}

impl ConsoleKind {
    /// The subresource name and metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            ConsoleKind::Vnc => "vnc",
            ConsoleKind::Console => "console",
        }
    }

    fn parse(s: &str) -> Option<ConsoleKind> {
        match s {
            "vnc" => Some(ConsoleKind::Vnc),
            "console" => Some(ConsoleKind::Console),
            _ => None,
        }
    }
}

impl fmt::Display for ConsoleKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A parsed session route. Its `Debug` output never shows the token.
#[derive(Clone, PartialEq, Eq)]
pub struct Route {
    /// Lab namespace.
    pub namespace: String,
    /// VirtualMachineInstance name.
    pub vmi: String,
    /// Screen or serial console.
    pub kind: ConsoleKind,
    /// Token found in the path or the `token` query parameter.
    pub token: Option<String>,
}

impl fmt::Debug for Route {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Route")
            .field("namespace", &self.namespace)
            .field("vmi", &self.vmi)
            .field("kind", &self.kind)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

/// `GET /labs/{lab}`: the lab's VMs. Its `Debug` output never shows the token.
#[derive(Clone, PartialEq, Eq)]
pub struct LabRequest {
    /// Lab namespace.
    pub namespace: String,
    /// Token found in the `token` query parameter (never in the path here).
    pub token: Option<String>,
}

impl fmt::Debug for LabRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LabRequest")
            .field("namespace", &self.namespace)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

/// What a request path is for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// A lab session.
    Session(Route),
    /// `GET /labs/{lab}`: the VMs of a lab.
    LabListing(LabRequest),
    /// `GET /labs/{lab}/{vm}/screenshot`: a PNG of the VM's screen (a [`Route`]
    /// of kind [`ConsoleKind::Vnc`], authorised like a screen session).
    Screenshot(Route),
    /// `/healthz`.
    Health,
    /// `/readyz`.
    Ready,
    /// `/metrics`.
    Metrics,
    /// `/view/{lab}`: the viewer page.
    Viewer(String),
    /// `/view/{lab}/`: redirected to the page without the slash (its URLs are relative).
    ViewerSlash(String),
    /// `/assets/{name}`: a file of the viewer bundle (the name is a plain file name).
    Asset(String),
    /// `/labs/...` that does not parse: refused as a bad request.
    BadSession,
    /// Anything else.
    NotFound,
}

impl Target {
    /// The request path as it may be logged: what was understood of it, never a token (a
    /// session's token may be in its path, and an unmatched path may be anything).
    pub fn log_path(&self) -> String {
        match self {
            Target::Session(r) => format!(
                "/labs/{}/{}/{}{}",
                r.namespace,
                r.vmi,
                r.kind,
                if r.token.is_some() {
                    " (token redacted)"
                } else {
                    ""
                }
            ),
            Target::LabListing(lab) => format!("/labs/{}", lab.namespace),
            Target::Screenshot(r) => format!("/labs/{}/{}/screenshot", r.namespace, r.vmi),
            Target::Health => "/healthz".into(),
            Target::Ready => "/readyz".into(),
            Target::Metrics => "/metrics".into(),
            Target::Viewer(lab) => format!("/view/{lab}"),
            Target::ViewerSlash(lab) => format!("/view/{lab}/"),
            Target::Asset(name) if crate::viewer::has_asset(name) => format!("/assets/{name}"),
            Target::Asset(_) => "/assets/(unknown name)".into(),
            Target::BadSession => "/labs/(unparsed)".into(),
            Target::NotFound => "(unmatched path)".into(),
        }
    }
}

/// Maps a request path and query to a [`Target`].
pub fn parse(path: &str, query: Option<&str>) -> Target {
    match path {
        "/healthz" | "/livez" => return Target::Health,
        "/readyz" => return Target::Ready,
        "/metrics" => return Target::Metrics,
        _ => {}
    }
    if let Some(lab) = path.strip_prefix("/view/") {
        return match lab.strip_suffix('/') {
            Some(lab) if is_dns_label(lab) => Target::ViewerSlash(lab.to_string()),
            None if is_dns_label(lab) => Target::Viewer(lab.to_string()),
            _ => Target::NotFound,
        };
    }
    if let Some(name) = path.strip_prefix("/assets/") {
        return if crate::viewer::is_asset_name(name) {
            Target::Asset(name.to_string())
        } else {
            Target::NotFound
        };
    }
    let Some(rest) = path.strip_prefix("/labs/") else {
        return Target::NotFound;
    };
    if let Some(target) = parse_lab_request(rest, query) {
        return target;
    }
    match parse_session(rest, query) {
        Some(route) => Target::Session(route),
        None => Target::BadSession,
    }
}

/// `{lab}` and `{lab}/{vm}/screenshot`, tokens from the query only; `None`
/// for any other shape (a session path, or nothing valid).
fn parse_lab_request(rest: &str, query: Option<&str>) -> Option<Target> {
    let segments: Vec<&str> = rest.split('/').collect();
    let bad = Some(Target::BadSession);
    match segments.as_slice() {
        [namespace] | [namespace, ""] => {
            if !is_dns_label(namespace) {
                return bad;
            }
            let Ok(token) = one_token(None, query) else {
                return bad;
            };
            Some(Target::LabListing(LabRequest {
                namespace: namespace.to_string(),
                token,
            }))
        }
        [namespace, vmi, "screenshot"] => {
            if !is_dns_label(namespace) || !is_dns_label(vmi) {
                return bad;
            }
            let Ok(token) = one_token(None, query) else {
                return bad;
            };
            Some(Target::Screenshot(Route {
                namespace: namespace.to_string(),
                vmi: vmi.to_string(),
                kind: ConsoleKind::Vnc,
                token,
            }))
        }
        _ => None,
    }
}

fn parse_session(rest: &str, query: Option<&str>) -> Option<Route> {
    let segments: Vec<&str> = rest.split('/').collect();
    let (namespace, vmi, kind, path_token) = match segments.as_slice() {
        [ns, vmi, kind] => (*ns, *vmi, *kind, None),
        [ns, vmi, kind, token] => (*ns, *vmi, *kind, Some(*token)),
        _ => return None,
    };
    if !is_dns_label(namespace) || !is_dns_label(vmi) {
        return None;
    }
    let kind = ConsoleKind::parse(kind)?;
    let path_token = match path_token {
        // A trailing slash is tolerated; an empty token is not a token.
        Some("") => None,
        Some(t) if !is_token_charset(t) => return None,
        Some(t) => Some(t.to_string()),
        None => None,
    };
    let token = one_token(path_token, query).ok()?;
    Some(Route {
        namespace: namespace.to_string(),
        vmi: vmi.to_string(),
        kind,
        token,
    })
}

/// The one token of a request's path and query. Two different tokens (path
/// and query, or the query twice): a proxy in front may check one and the
/// gateway the other, so neither is taken.
fn one_token(path_token: Option<String>, query: Option<&str>) -> Result<Option<String>, ()> {
    let mut tokens = path_token
        .into_iter()
        .chain(query.into_iter().flat_map(tokens_from_query));
    let token = tokens.next();
    if tokens.any(|other| Some(&other) != token.as_ref()) {
        return Err(());
    }
    Ok(token)
}

/// RFC 1123 label: lowercase alphanumerics and '-', 1-63 characters, starting
/// and ending alphanumeric. Namespaces and VMI names both satisfy it.
pub fn is_dns_label(s: &str) -> bool {
    let bytes = s.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= 63
        && bytes
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-')
        && bytes[0] != b'-'
        && bytes[bytes.len() - 1] != b'-'
}

/// A JWT is three base64url parts joined by dots; anything else (notably `%`
/// encodings) is refused before it reaches the verifier.
fn is_token_charset(s: &str) -> bool {
    s.bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'='))
}

/// Every non-empty `token` query parameter, decoded.
fn tokens_from_query(query: &str) -> impl Iterator<Item = String> + '_ {
    query
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .filter(|(k, _)| *k == "token")
        .map(|(_, v)| {
            percent_encoding::percent_decode_str(v)
                .decode_utf8_lossy()
                .into_owned()
        })
        .filter(|t| !t.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn session(path: &str, query: Option<&str>) -> Option<Route> {
        match parse(path, query) {
            Target::Session(r) => Some(r),
            _ => None,
        }
    }

    #[test]
    fn parses_path_and_query_tokens() {
        let r = session("/labs/lab-1/vm-a/vnc/aaa.bbb.ccc", None).unwrap();
        assert_eq!(r.namespace, "lab-1");
        assert_eq!(r.vmi, "vm-a");
        assert_eq!(r.kind, ConsoleKind::Vnc);
        assert_eq!(r.token.as_deref(), Some("aaa.bbb.ccc"));

        let r = session("/labs/lab-1/vm-a/console", Some("x=1&token=t.o.k")).unwrap();
        assert_eq!(r.kind, ConsoleKind::Console);
        assert_eq!(r.token.as_deref(), Some("t.o.k"));

        let r = session("/labs/lab-1/vm-a/console/", None).unwrap();
        assert_eq!(r.token, None);
    }

    #[test]
    fn rejects_bad_names_and_traversal() {
        for path in [
            "/labs/Lab/vm/vnc",
            "/labs/../vm/vnc",
            "/labs/lab/../vnc",
            "/labs/lab/vm%2Fx/vnc",
            "/labs/lab/vm",
            "/labs/lab/vm/vnc/tok/extra",
            "/labs/-lab/vm/vnc",
            "/labs/lab/vm/vnc/a%2Fb",
            "/labs//vm/vnc",
        ] {
            assert_eq!(parse(path, None), Target::BadSession, "{path}");
        }
        let long = "a".repeat(64);
        assert_eq!(
            parse(&format!("/labs/{long}/vm/vnc"), None),
            Target::BadSession
        );
    }

    #[test]
    fn lab_listings_and_screenshots() {
        match parse("/labs/lab-1", Some("token=a.b.c")) {
            Target::LabListing(r) => {
                assert_eq!(r.namespace, "lab-1");
                assert_eq!(r.token.as_deref(), Some("a.b.c"));
                assert!(!format!("{r:?}").contains("a.b.c"));
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(parse("/labs/lab-1/", None), Target::LabListing(_)));
        match parse("/labs/lab-1/vm-a/screenshot", None) {
            Target::Screenshot(r) => {
                assert_eq!((r.vmi.as_str(), r.kind), ("vm-a", ConsoleKind::Vnc));
                assert_eq!(r.token, None);
            }
            other => panic!("{other:?}"),
        }
        for (path, query) in [
            ("/labs/Lab", None),
            ("/labs/lab-1", Some("token=a.b.c&token=x.y.z")),
            ("/labs/lab-1/vm%2Fa/screenshot", None),
            (
                "/labs/lab-1/vm-a/screenshot",
                Some("token=a.b.c&token=x.y.z"),
            ),
            // No path token for these: it would end up in access logs of every proxy.
            ("/labs/lab-1/vm-a/screenshot/a.b.c", None),
        ] {
            assert_eq!(parse(path, query), Target::BadSession, "{path}?{query:?}");
        }
    }

    /// A proxy in front may check one token and the gateway another: a
    /// request carrying two different ones is refused as a bad request.
    #[test]
    fn two_different_tokens_in_path_and_query_are_refused() {
        for (path, query) in [
            ("/labs/lab-1/vm-a/vnc", "token=good.t.k&token=bad.t.k"),
            ("/labs/lab-1/vm-a/vnc/good.t.k", "token=bad.t.k"),
        ] {
            assert_eq!(
                parse(path, Some(query)),
                Target::BadSession,
                "{path}?{query}"
            );
        }
        // The same token twice is one credential.
        let r = session("/labs/lab-1/vm-a/vnc/same.t.k", Some("token=same.t.k")).unwrap();
        assert_eq!(r.token.as_deref(), Some("same.t.k"));
    }

    #[test]
    fn admin_paths_and_unknown_paths() {
        assert_eq!(parse("/healthz", None), Target::Health);
        assert_eq!(parse("/readyz", None), Target::Ready);
        assert_eq!(parse("/metrics", None), Target::Metrics);
        assert_eq!(parse("/", None), Target::NotFound);
        assert_eq!(parse("/lab/x/y/vnc", None), Target::NotFound);
    }

    #[test]
    fn debug_output_hides_the_token() {
        let r = session("/labs/lab-1/vm-a/vnc/secret.token.value", None).unwrap();
        let shown = format!("{r:?}");
        assert!(!shown.contains("secret"), "{shown}");
    }

    #[test]
    fn viewer_and_asset_paths() {
        assert_eq!(parse("/view/lab-1", None), Target::Viewer("lab-1".into()));
        assert_eq!(
            parse("/view/lab-1/", None),
            Target::ViewerSlash("lab-1".into())
        );
        for path in [
            "/view/",
            "/view/Lab",
            "/view/lab/x",
            "/view/..",
            "/view/a%2Fb",
        ] {
            assert_eq!(parse(path, None), Target::NotFound, "{path}");
        }
        assert_eq!(
            parse("/assets/viewer.AB12.js", None),
            Target::Asset("viewer.AB12.js".into())
        );
        for path in [
            "/assets/",
            "/assets/../Cargo.toml",
            "/assets/a/b.js",
            "/assets/.hidden",
        ] {
            assert_eq!(parse(path, None), Target::NotFound, "{path}");
        }
    }

    /// What is logged of a request path never holds a token, whatever the path.
    #[test]
    fn logged_paths_never_show_tokens() {
        for path in [
            "/labs/lab-1/vm-a/vnc/secret.token.value",
            "/labs/lab-1/vm-a/vnc/secret.token.value/more",
            "/secret.token.value",
            "/view/lab-1/secret.token.value",
            "/assets/secret.token.value",
        ] {
            let logged = parse(path, Some("token=secret.token.value")).log_path();
            assert!(!logged.contains("secret"), "{path} logged as {logged}");
        }
    }
}
