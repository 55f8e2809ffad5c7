//! Where a client's token comes from, and which subprotocol to answer with.
//!
//! Browsers cannot set headers on a WebSocket, so the token may come from the
//! path (noVNC), the `token` query parameter, an `Authorization: Bearer`
//! header (native clients), or the Kubernetes bearer-subprotocol idiom
//! `Sec-WebSocket-Protocol: base64url.bearer.authorization.k8s.io.<b64url(token)>`.
//!
//! A request may carry its token in several of these places, but never two
//! different tokens: a proxy in front could check one while the gateway
//! authorises the other. The same token repeated is one credential.

use base64::Engine;
use http::HeaderMap;
use http::header::{AUTHORIZATION, SEC_WEBSOCKET_PROTOCOL};

use crate::route::Route;

/// Prefix of the bearer-token subprotocol, as used by the Kubernetes API server.
pub const BEARER_PROTOCOL_PREFIX: &str = "base64url.bearer.authorization.k8s.io.";

/// Subprotocols the gateway can speak, in order of preference. noVNC up to
/// 1.1 asks for `binary`; KubeVirt clients ask for `plain.kubevirt.io`. Both
/// mean "raw bytes in binary messages", which is what the gateway relays.
const SPOKEN_PROTOCOLS: [&str; 2] = ["binary", "plain.kubevirt.io"];

/// More than one distinct token in one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Conflict;

/// The request's token, wherever it is: path or query (already reconciled
/// by [`route`](crate::route)), `Authorization: Bearer` headers (scheme
/// case-insensitive, RFC 7235) and bearer subprotocols.
///
/// # Errors
/// [`Conflict`] when they carry different tokens.
pub fn token(route: &Route, headers: &HeaderMap) -> Result<Option<String>, Conflict> {
    token_with(route.token.as_deref(), headers)
}

/// Like [`token`], for a request whose path and query gave `from_url` (lab
/// listings and screenshots, which take no path token).
///
/// # Errors
/// [`Conflict`] when the URL and the headers carry different tokens.
pub fn token_with(from_url: Option<&str>, headers: &HeaderMap) -> Result<Option<String>, Conflict> {
    let from_headers = headers
        .get_all(AUTHORIZATION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .filter_map(bearer);
    let from_protocols = offered_protocols(headers)
        .filter_map(|p| p.strip_prefix(BEARER_PROTOCOL_PREFIX))
        .filter_map(|encoded| {
            base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(encoded.trim_end_matches('='))
                .ok()
        })
        .filter_map(|bytes| String::from_utf8(bytes).ok())
        // An empty token is no token, as in the path and the query.
        .filter(|t| !t.is_empty());
    let mut found: Option<String> = None;
    for candidate in from_url
        .map(str::to_string)
        .into_iter()
        .chain(from_headers)
        .chain(from_protocols)
    {
        match &found {
            Some(t) if *t != candidate => return Err(Conflict),
            Some(_) => {}
            None => found = Some(candidate),
        }
    }
    Ok(found)
}

/// The token of an `Authorization: Bearer <token>` value. Other schemes
/// (Basic for a proxy in front, …) are not the gateway's credentials.
fn bearer(value: &str) -> Option<String> {
    let (scheme, token) = value.trim().split_once([' ', '\t'])?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then(|| token.to_string())
}

/// The subprotocol to echo in the 101 response: the first one the client
/// offered that the gateway speaks, or none. Never the bearer protocol.
pub fn negotiate_protocol(headers: &HeaderMap) -> Option<&'static str> {
    let offered: Vec<&str> = offered_protocols(headers).collect();
    SPOKEN_PROTOCOLS
        .iter()
        .find(|spoken| offered.contains(spoken))
        .copied()
}

fn offered_protocols(headers: &HeaderMap) -> impl Iterator<Item = &str> {
    headers
        .get_all(SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|p| !p.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::route::ConsoleKind;

    fn route(token: Option<&str>) -> Route {
        Route {
            namespace: "lab".into(),
            vmi: "vm".into(),
            kind: ConsoleKind::Vnc,
            token: token.map(str::to_string),
        }
    }

    #[test]
    fn token_sources_in_order() {
        let mut h = HeaderMap::new();
        assert_eq!(token(&route(None), &h), Ok(None));
        let encoded = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode("from.proto.col");
        h.insert(
            SEC_WEBSOCKET_PROTOCOL,
            format!("{BEARER_PROTOCOL_PREFIX}{encoded}, binary")
                .parse()
                .unwrap(),
        );
        assert_eq!(
            token(&route(None), &h).unwrap().as_deref(),
            Some("from.proto.col")
        );
        let mut h = HeaderMap::new();
        h.insert(AUTHORIZATION, "Bearer from.head.er".parse().unwrap());
        assert_eq!(
            token(&route(None), &h).unwrap().as_deref(),
            Some("from.head.er")
        );
        let h = HeaderMap::new();
        assert_eq!(
            token(&route(Some("from.pa.th")), &h).unwrap().as_deref(),
            Some("from.pa.th")
        );
    }

    fn proto(token: &str) -> String {
        let encoded = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(token);
        format!("{BEARER_PROTOCOL_PREFIX}{encoded}, binary")
    }

    #[test]
    fn two_different_credentials_are_refused() {
        // Header plus subprotocol.
        let mut h = HeaderMap::new();
        h.insert(AUTHORIZATION, "Bearer good.to.ken".parse().unwrap());
        h.insert(SEC_WEBSOCKET_PROTOCOL, proto("bad.to.ken").parse().unwrap());
        assert_eq!(token(&route(None), &h), Err(Conflict));
        // Path (or query) plus header.
        let mut h = HeaderMap::new();
        h.insert(AUTHORIZATION, "Bearer bad.to.ken".parse().unwrap());
        assert_eq!(token(&route(Some("good.to.ken")), &h), Err(Conflict));
        // Two Authorization headers.
        let mut h = HeaderMap::new();
        h.append(AUTHORIZATION, "Bearer good.to.ken".parse().unwrap());
        h.append(AUTHORIZATION, "Bearer bad.to.ken".parse().unwrap());
        assert_eq!(token(&route(None), &h), Err(Conflict));
        // The same token twice is one credential.
        let mut h = HeaderMap::new();
        h.insert(AUTHORIZATION, "Bearer same.to.ken".parse().unwrap());
        h.insert(
            SEC_WEBSOCKET_PROTOCOL,
            proto("same.to.ken").parse().unwrap(),
        );
        assert_eq!(
            token(&route(Some("same.to.ken")), &h).unwrap().as_deref(),
            Some("same.to.ken")
        );
    }

    /// Found by the `route_credentials` fuzz target: an empty bearer
    /// subprotocol gave the empty string as a token (and, beside a path
    /// token, a conflict); like an empty `?token=`, it is no token.
    #[test]
    fn an_empty_bearer_subprotocol_is_no_token() {
        let mut h = HeaderMap::new();
        h.insert(
            SEC_WEBSOCKET_PROTOCOL,
            format!("{BEARER_PROTOCOL_PREFIX}, binary").parse().unwrap(),
        );
        assert_eq!(token(&route(None), &h), Ok(None));
        assert_eq!(
            token(&route(Some("a.b.c")), &h).unwrap().as_deref(),
            Some("a.b.c")
        );
    }

    #[test]
    fn the_bearer_scheme_is_case_insensitive() {
        for header in ["bearer a.b.c", "BEARER a.b.c", "Bearer   a.b.c"] {
            let mut h = HeaderMap::new();
            h.insert(AUTHORIZATION, header.parse().unwrap());
            assert_eq!(
                token(&route(None), &h).unwrap().as_deref(),
                Some("a.b.c"),
                "{header}"
            );
        }
    }

    #[test]
    fn echoes_one_offered_protocol_never_the_bearer_one() {
        let mut h = HeaderMap::new();
        assert_eq!(negotiate_protocol(&h), None);
        h.insert(SEC_WEBSOCKET_PROTOCOL, "binary".parse().unwrap());
        assert_eq!(negotiate_protocol(&h), Some("binary"));
        h.insert(
            SEC_WEBSOCKET_PROTOCOL,
            "base64url.bearer.authorization.k8s.io.eHl6, plain.kubevirt.io"
                .parse()
                .unwrap(),
        );
        assert_eq!(negotiate_protocol(&h), Some("plain.kubevirt.io"));
        h.insert(SEC_WEBSOCKET_PROTOCOL, "base64, chat".parse().unwrap());
        assert_eq!(negotiate_protocol(&h), None);
    }
}
