//! The KubeVirt backend: VM screens and consoles through the Kubernetes API server.
//!
//! kube's `Client::connect` cannot be used: it always offers the
//! `v4/v5.channel.k8s.io` subprotocols, which virt-api does not speak. So the
//! websocket handshake is made by hand, sent on a connection of its own
//! ([`crate::upstream_conn`]: kube's TLS settings, bearer-token rotation and CA
//! reload, without its general client's per-request costs) and upgraded with
//! hyper. A 401 re-reads the gateway's token and retries once
//! ([`ApiClient::refresh`]).

use http::header::{
    CONNECTION, SEC_WEBSOCKET_ACCEPT, SEC_WEBSOCKET_KEY, SEC_WEBSOCKET_PROTOCOL,
    SEC_WEBSOCKET_VERSION, UPGRADE,
};
use http::{Request, StatusCode};
use hyper_util::rt::TokioIo;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;

use super::{
    Backend, BoxFuture, ConnectFuture, UpstreamError, UpstreamIo, UpstreamTarget, VmSummary,
};
use crate::apiclient::ApiClient;
use crate::end_cork::EndCork;
use crate::route::ConsoleKind;
use crate::upstream_conn::UpstreamConnector;

/// KubeVirt's only websocket subprotocol: raw bytes in binary messages.
pub const KUBEVIRT_PROTOCOL: &str = "plain.kubevirt.io";

/// Largest error body read from an upstream refusal.
const MAX_ERROR_BODY: usize = 64 * 1024;

/// Opens KubeVirt subresources through the Kubernetes API server.
#[derive(Clone)]
pub struct KubeVirtBackend {
    api: std::sync::Arc<ApiClient>,
    preserve_vnc_session: bool,
    /// VM states for listings and the screenshot pre-check ([`crate::screenshot`]).
    pub(crate) vms: Option<std::sync::Arc<crate::vm_index::VmIndex>>,
    /// Largest screenshot accepted from virt-api.
    pub(crate) screenshot_max_bytes: usize,
}

impl KubeVirtBackend {
    /// A backend using `client`'s API server, credentials and CA.
    pub fn new(client: kube::Client) -> KubeVirtBackend {
        KubeVirtBackend::with_api(std::sync::Arc::new(ApiClient::fixed(client)))
    }

    /// A backend whose client is rebuilt (token re-read) after a 401.
    pub fn with_api(api: std::sync::Arc<ApiClient>) -> KubeVirtBackend {
        KubeVirtBackend {
            api,
            preserve_vnc_session: false,
            vms: None,
            screenshot_max_bytes: crate::screenshot::DEFAULT_MAX_BYTES,
        }
    }

    /// The API client (shared with the VM watches and screenshots).
    pub(crate) fn api(&self) -> &ApiClient {
        &self.api
    }

    /// Asks KubeVirt (>= 1.6.3) to refuse a second VNC viewer instead of
    /// dropping the first (`?preserveSession=true`).
    pub fn preserve_vnc_session(mut self, preserve: bool) -> KubeVirtBackend {
        self.preserve_vnc_session = preserve;
        self
    }

    /// The API path (and query) of a target's subresource.
    pub fn path(&self, target: UpstreamTarget<'_>) -> String {
        let query = if self.preserve_vnc_session && target.kind == ConsoleKind::Vnc {
            "?preserveSession=true"
        } else {
            ""
        };
        format!(
            "/apis/subresources.kubevirt.io/v1/namespaces/{}/virtualmachineinstances/{}/{}{query}",
            target.namespace,
            target.vmi,
            target.kind.as_str()
        )
    }

    async fn open(&self, target: UpstreamTarget<'_>) -> Result<UpstreamIo, UpstreamError> {
        let (generation, via) = self.api.for_sessions();
        match self.open_with(&via, target).await {
            // The token may have been rotated since kube last read it.
            Err(UpstreamError::Unauthorized(_)) if self.api.refresh(generation) => {
                self.open_with(&self.api.for_sessions().1, target).await
            }
            other => other,
        }
    }

    async fn open_with(
        &self,
        via: &Result<UpstreamConnector, kube::Client>,
        target: UpstreamTarget<'_>,
    ) -> Result<UpstreamIo, UpstreamError> {
        let key = tokio_tungstenite::tungstenite::handshake::client::generate_key();
        let request = Request::get(self.path(target))
            .header(CONNECTION, "Upgrade")
            .header(UPGRADE, "websocket")
            .header(SEC_WEBSOCKET_VERSION, "13")
            .header(SEC_WEBSOCKET_KEY, &key)
            .header(SEC_WEBSOCKET_PROTOCOL, KUBEVIRT_PROTOCOL)
            .body(kube::client::Body::empty())
            .map_err(|e| UpstreamError::Transport(e.to_string()))?;
        let transport = |e: &dyn std::fmt::Display| UpstreamError::Transport(e.to_string());
        let response = match via {
            Ok(connector) => {
                switched(connector.send(request).await.map_err(|e| transport(&e))?).await?
            }
            Err(client) => switched(client.send(request).await.map_err(|e| transport(&e))?).await?,
        };
        let accept_ok = response
            .headers()
            .get(SEC_WEBSOCKET_ACCEPT)
            .is_some_and(|v| v.as_bytes() == derive_accept_key(key.as_bytes()).as_bytes());
        if !accept_ok {
            return Err(UpstreamError::Transport(
                "upstream sent a wrong Sec-WebSocket-Accept".into(),
            ));
        }
        // Old virt-api versions answer without a subprotocol; anything else is wrong.
        if let Some(proto) = response.headers().get(SEC_WEBSOCKET_PROTOCOL)
            && proto.as_bytes() != KUBEVIRT_PROTOCOL.as_bytes()
        {
            return Err(UpstreamError::Transport(
                "upstream chose an unexpected subprotocol".into(),
            ));
        }
        // The session connector's connections can send their end in one segment.
        let end_cork = response.extensions().get::<EndCork>().cloned();
        let upgraded = hyper::upgrade::on(response)
            .await
            .map_err(|e| UpstreamError::Transport(e.to_string()))?;
        Ok(UpstreamIo::Upgraded(TokioIo::new(upgraded), end_cork))
    }
}

impl Backend for KubeVirtBackend {
    fn connect<'a>(&'a self, target: UpstreamTarget<'a>) -> ConnectFuture<'a> {
        Box::pin(self.open(target))
    }

    fn list_vms<'a>(
        &'a self,
        namespace: &'a str,
    ) -> BoxFuture<'a, Result<Vec<VmSummary>, UpstreamError>> {
        Box::pin(async move { crate::vm_index::listing(self.vms.as_deref(), namespace) })
    }

    fn screenshot<'a>(
        &'a self,
        target: UpstreamTarget<'a>,
    ) -> BoxFuture<'a, Result<bytes::Bytes, UpstreamError>> {
        Box::pin(crate::screenshot::kubevirt_screenshot(self, target))
    }
}

/// The head of a 101 answer (its upgrade still attached), or the error a
/// refusal stands for, its body read up to [`MAX_ERROR_BODY`].
async fn switched<B>(response: http::Response<B>) -> Result<http::Response<()>, UpstreamError>
where
    B: hyper::body::Body,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    use http_body_util::BodyExt;
    let status = response.status();
    if status == StatusCode::SWITCHING_PROTOCOLS {
        return Ok(response.map(drop));
    }
    let limited = http_body_util::Limited::new(response.into_body(), MAX_ERROR_BODY);
    let body = match limited.collect().await {
        Ok(collected) => String::from_utf8_lossy(&collected.to_bytes()).into_owned(),
        Err(_) => String::new(),
    };
    Err(classify_refusal(status, &body))
}

/// Maps a non-101 answer (a Kubernetes `Status` body, usually) to an error.
pub fn classify_refusal(status: StatusCode, body: &str) -> UpstreamError {
    let message = serde_json::from_str::<serde_json::Value>(body)
        .ok()
        .and_then(|v| {
            v.get("message")
                .and_then(|m| m.as_str())
                .map(str::to_string)
        })
        .unwrap_or_else(|| body.chars().take(200).collect());
    match status.as_u16() {
        404 => UpstreamError::NotFound,
        400 | 409 => UpstreamError::NotRunning(message),
        // The API server itself refuses the gateway (virt-api answers neither about a VM).
        401 => UpstreamError::Unauthorized(message),
        403 => UpstreamError::Forbidden(message),
        // KubeVirt >= 1.6.3 with preserveSession=true wraps the handler's 503 in a 500.
        500 | 503 if message.contains("Active VNC connection") => UpstreamError::Busy,
        code => UpstreamError::Status {
            status: code,
            message,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::refusal::Refusal;

    #[test]
    fn classifies_kubevirt_refusals() {
        let status = |code: u16, msg: &str| {
            serde_json::json!({"kind":"Status","apiVersion":"v1","status":"Failure","message":msg,"code":code})
                .to_string()
        };
        assert!(matches!(
            classify_refusal(StatusCode::NOT_FOUND, &status(404, "not found")),
            UpstreamError::NotFound
        ));
        match classify_refusal(StatusCode::BAD_REQUEST, &status(400, "VMI is not running")) {
            UpstreamError::NotRunning(m) => assert_eq!(m, "VMI is not running"),
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            classify_refusal(
                StatusCode::INTERNAL_SERVER_ERROR,
                &status(500, "Active VNC connection. Request denied.")
            ),
            UpstreamError::Busy
        ));
        // Stopped, paused and display-less VMs each get their own sentence
        // (KubeVirt's messages, pkg/virt-api/rest/subresource.go).
        let causes = [
            classify_refusal(StatusCode::BAD_REQUEST, &status(400, "VMI is not running")).refusal(),
            classify_refusal(
                StatusCode::CONFLICT,
                &status(409, "Operation cannot be fulfilled on virtualmachineinstance.kubevirt.io \"vm1\": VMI is paused"),
            )
            .refusal(),
            classify_refusal(StatusCode::BAD_REQUEST, &status(400, "No graphics devices are present.")).refusal(),
            classify_refusal(StatusCode::BAD_REQUEST, &status(400, "No serial consoles are present.")).refusal(),
        ];
        let reasons: std::collections::HashSet<_> = causes.iter().map(|r| r.reason()).collect();
        assert_eq!(reasons.len(), causes.len(), "{causes:?}");
        assert!(matches!(
            classify_refusal(StatusCode::FORBIDDEN, "plain text"),
            UpstreamError::Forbidden(_)
        ));
        assert_eq!(
            classify_refusal(StatusCode::BAD_GATEWAY, "x").refusal(),
            Refusal::UpstreamError
        );
    }
}
