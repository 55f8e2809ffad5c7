//! Building responses: the websocket handshake answer and small text/JSON bodies.

use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::header::{
    CONNECTION, CONTENT_TYPE, SEC_WEBSOCKET_ACCEPT, SEC_WEBSOCKET_KEY, SEC_WEBSOCKET_PROTOCOL,
    SEC_WEBSOCKET_VERSION, UPGRADE,
};
use http::{HeaderMap, Method, Request, Response, StatusCode};
use http_body_util::Full;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;

use crate::credentials;
use crate::server::GatewayResponse;

/// Why a websocket upgrade attempt cannot be answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BadUpgrade {
    /// Not `Sec-WebSocket-Version: 13`: RFC 6455 4.2.2 wants 426 and the
    /// versions the server speaks.
    Version,
    /// Not a GET, no `Connection: upgrade`, or a key that is not the base64
    /// of 16 bytes (RFC 6455 4.2.1).
    Malformed,
}

/// `Ok(Some(key))` for a well-formed websocket upgrade, `Ok(None)` for a
/// plain request, `Err(_)` for a broken upgrade attempt.
pub(crate) fn websocket_key<B>(req: &Request<B>) -> Result<Option<String>, BadUpgrade> {
    let headers = req.headers();
    let wants_upgrade = headers
        .get(UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket"));
    if !wants_upgrade {
        return Ok(None);
    }
    let connection_upgrade = headers
        .get_all(CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case("upgrade"));
    let mut versions = headers.get_all(SEC_WEBSOCKET_VERSION).iter();
    let version_ok =
        versions.next().is_some_and(|v| v.as_bytes() == b"13") && versions.next().is_none();
    let mut keys = headers.get_all(SEC_WEBSOCKET_KEY).iter();
    let key = keys
        .next()
        .and_then(|v| v.to_str().ok())
        .filter(|k| is_websocket_key(k))
        .filter(|_| keys.next().is_none());
    if req.method() != Method::GET || !connection_upgrade {
        return Err(BadUpgrade::Malformed);
    }
    if !version_ok {
        return Err(BadUpgrade::Version);
    }
    key.map(|k| Some(k.to_string()))
        .ok_or(BadUpgrade::Malformed)
}

/// RFC 6455 4.1: the key is a random 16-byte value, base64-encoded (24 characters).
fn is_websocket_key(key: &str) -> bool {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD
        .decode(key)
        .is_ok_and(|nonce| nonce.len() == 16)
}

/// The answer to a broken upgrade attempt, given before any token is read.
pub(crate) fn bad_upgrade(why: BadUpgrade) -> GatewayResponse {
    match why {
        BadUpgrade::Version => Response::builder()
            .status(StatusCode::UPGRADE_REQUIRED)
            .header(SEC_WEBSOCKET_VERSION, "13")
            .header(CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from_static(
                br#"{"error":"bad_request","reason":"unsupported websocket version: use 13"}"#,
            )))
            .unwrap_or_default(),
        BadUpgrade::Malformed => json(
            StatusCode::BAD_REQUEST,
            r#"{"error":"bad_request","reason":"malformed websocket upgrade"}"#.into(),
        ),
    }
}

pub(crate) fn switching_protocols(ws_key: &str, headers: &HeaderMap) -> GatewayResponse {
    let mut response = Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header(UPGRADE, "websocket")
        .header(CONNECTION, "Upgrade")
        .header(SEC_WEBSOCKET_ACCEPT, derive_accept_key(ws_key.as_bytes()));
    if let Some(protocol) = credentials::negotiate_protocol(headers) {
        response = response.header(SEC_WEBSOCKET_PROTOCOL, protocol);
    }
    response.body(Full::default()).unwrap_or_default()
}

pub(crate) fn text(status: StatusCode, body: &'static str) -> GatewayResponse {
    Response::builder()
        .status(status)
        .header(CONTENT_TYPE, "text/plain; charset=utf-8")
        .body(Full::new(Bytes::from_static(body.as_bytes())))
        .unwrap_or_default()
}

pub(crate) fn json(status: StatusCode, body: String) -> GatewayResponse {
    Response::builder()
        .status(status)
        .header(CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(body)))
        .unwrap_or_default()
}

pub(crate) fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}
