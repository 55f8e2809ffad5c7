//! Where a client's token comes from, and which subprotocol to answer with.
//!
//! Browsers cannot set headers on a WebSocket, so the token may come from the
//! path (noVNC), the `token` query parameter, an `Authorization: Bearer`
//! header (native clients), or the Kubernetes bearer-subprotocol idiom
//! `Sec-WebSocket-Protocol: base64url.bearer.authorization.k8s.io.<b64url(token)>`.

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

/// The token for a request: path or query first, then header, then subprotocol.
pub fn token(route: &Route, headers: &HeaderMap) -> Option<String> {
    if let Some(t) = &route.token {
        return Some(t.clone());
    }
    if let Some(t) = headers
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
        .filter(|t| !t.is_empty())
    {
        return Some(t.to_string());
    }
    offered_protocols(headers)
        .find_map(|p| p.strip_prefix(BEARER_PROTOCOL_PREFIX).map(str::to_string))
        .and_then(|encoded| {
            base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(encoded.trim_end_matches('='))
                .ok()
        })
        .and_then(|bytes| String::from_utf8(bytes).ok())
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
        assert_eq!(token(&route(None), &h), None);
        let encoded = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode("from.proto.col");
        h.insert(
            SEC_WEBSOCKET_PROTOCOL,
            format!("{BEARER_PROTOCOL_PREFIX}{encoded}, binary")
                .parse()
                .unwrap(),
        );
        assert_eq!(token(&route(None), &h).as_deref(), Some("from.proto.col"));
        h.insert(AUTHORIZATION, "Bearer from.head.er".parse().unwrap());
        assert_eq!(token(&route(None), &h).as_deref(), Some("from.head.er"));
        assert_eq!(
            token(&route(Some("from.pa.th")), &h).as_deref(),
            Some("from.pa.th")
        );
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
