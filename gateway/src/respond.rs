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

/// `Ok(Some(key))` for a well-formed websocket upgrade, `Ok(None)` for a
/// plain request, `Err(())` for a broken upgrade attempt.
pub(crate) fn websocket_key<B>(req: &Request<B>) -> Result<Option<String>, ()> {
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
    let version_ok = headers
        .get(SEC_WEBSOCKET_VERSION)
        .is_some_and(|v| v.as_bytes() == b"13");
    let key = headers
        .get(SEC_WEBSOCKET_KEY)
        .and_then(|v| v.to_str().ok())
        .filter(|k| !k.is_empty());
    match (
        req.method() == Method::GET,
        connection_upgrade,
        version_ok,
        key,
    ) {
        (true, true, true, Some(key)) => Ok(Some(key.to_string())),
        _ => Err(()),
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
