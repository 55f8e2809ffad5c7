//! Connecting the load generator to a contender: URL template, optional TLS with a test
//! CA, a fresh token per connection and, behind websockify, the TCP mode selector byte.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::{Context, anyhow, bail};
use bytes::Bytes;
use futures::SinkExt;
use rustls::pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_util::either::Either;

use crate::token::TokenMinter;
use crate::upstream_path::Mode;

/// A plain or TLS connection to a contender.
pub type Conn = Either<TcpStream, TlsStream<TcpStream>>;
/// A websocket session with a contender.
pub type Ws = WebSocketStream<Conn>;

/// Where and how to open sessions with one contender.
pub struct Target {
    /// `ws://` or `wss://` URL with placeholders `{vmi}`, `{sub}` (from the mode) and `{token}`.
    pub url_template: String,
    /// Set for `wss://` targets.
    pub tls: Option<TlsConnector>,
    /// Send the mode selector byte first (websockify bridges to the plain TCP upstream).
    pub tcp_mode_selector: bool,
    /// Signs a fresh token for each connection when the template has `{token}`.
    pub minter: Option<TokenMinter>,
    pub config: WebSocketConfig,
    /// `Authorization` header value for upstreams that check a bearer token (direct to the
    /// API-server stand-in, where a proxy would add it).
    pub authorization: Option<String>,
    /// Numbers the VMIs: every session opens its own VMI, because labgate (like KubeVirt)
    /// lets only one session use a VM's screen or console at a time.
    pub next_vmi: AtomicU64,
}

impl Target {
    /// The URL for one new session in `mode`, with its own VMI name (`stream-7`, `echo-12`)
    /// and, if the template needs one, a freshly minted token.
    pub fn url(&self, mode: Mode) -> anyhow::Result<String> {
        Ok(self.url_and_vmi(mode)?.0)
    }

    /// [`Target::url`] and the VMI name in it.
    fn url_and_vmi(&self, mode: Mode) -> anyhow::Result<(String, String)> {
        let vmi = format!(
            "{}-{}",
            mode.vmi(),
            self.next_vmi.fetch_add(1, Ordering::Relaxed)
        );
        let mut url = self
            .url_template
            .replace("{vmi}", &vmi)
            .replace("{sub}", mode.subresource());
        if url.contains("{token}") {
            let minter = self
                .minter
                .as_ref()
                .ok_or_else(|| anyhow!("the URL needs a token but no JWT secret was given"))?;
            url = url.replace("{token}", &minter.mint(&vmi)?);
        }
        Ok((url, vmi))
    }

    /// Opens a session: TCP, TLS if configured, websocket handshake, mode selector.
    pub async fn connect(&self, mode: Mode) -> anyhow::Result<Ws> {
        Ok(self.connect_named(mode).await?.0)
    }

    /// [`Target::connect`], also returning the session's VMI name (how the upstream knows it).
    pub async fn connect_named(&self, mode: Mode) -> anyhow::Result<(Ws, String)> {
        let (url, vmi) = self.url_and_vmi(mode)?;
        let mut request = url
            .as_str()
            .into_client_request()
            .context("bad target URL")?;
        if let Some(value) = &self.authorization {
            request
                .headers_mut()
                .insert("authorization", value.parse().context("bad bearer token")?);
        }
        let host = request
            .uri()
            .host()
            .ok_or_else(|| anyhow!("target URL has no host"))?
            .to_owned();
        let port = request
            .uri()
            .port_u16()
            .ok_or_else(|| anyhow!("target URL has no port"))?;
        let tcp = TcpStream::connect((host.as_str(), port))
            .await
            .context("TCP connect")?;
        tcp.set_nodelay(true)?;
        let conn = match &self.tls {
            Some(tls) => {
                let name = ServerName::try_from(host.clone()).context("bad TLS server name")?;
                Either::Right(tls.connect(name, tcp).await.context("TLS handshake")?)
            }
            None => Either::Left(tcp),
        };
        let (mut ws, _) =
            tokio_tungstenite::client_async_with_config(request, conn, Some(self.config))
                .await
                .context("websocket handshake")?;
        if self.tcp_mode_selector {
            ws.send(Message::Binary(Bytes::from(vec![mode.tcp_selector()])))
                .await?;
        }
        Ok((ws, vmi))
    }
}

/// A TLS client that trusts only the CA in `ca_pem` and never resumes sessions, so every
/// handshake in the benchmark is a full one for every TLS contender alike. It offers the
/// TLS 1.3 cipher suites in the order browsers do (Chrome, Firefox and Safari all list
/// AES-128-GCM first), so servers that follow the client's order pick what they would pick
/// for a browser.
pub fn tls_connector(ca_pem: &[u8]) -> anyhow::Result<TlsConnector> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut provider = rustls::crypto::ring::default_provider();
    provider.cipher_suites = browser_order(provider.cipher_suites);
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pemfile::certs(&mut &ca_pem[..]) {
        roots.add(cert.context("bad CA PEM")?)?;
    }
    if roots.is_empty() {
        bail!("no certificate in the CA file");
    }
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(provider))
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.resumption = rustls::client::Resumption::disabled();
    Ok(TlsConnector::from(Arc::new(config)))
}

/// `suites` with the TLS 1.3 ones first, in a browser's order: AES-128-GCM, AES-256-GCM,
/// ChaCha20-Poly1305 (TLS 1.2 suites keep their order behind them).
pub fn browser_order(
    mut suites: Vec<rustls::SupportedCipherSuite>,
) -> Vec<rustls::SupportedCipherSuite> {
    use rustls::CipherSuite::*;
    let rank = |s: &rustls::SupportedCipherSuite| match s.suite() {
        TLS13_AES_128_GCM_SHA256 => 0,
        TLS13_AES_256_GCM_SHA384 => 1,
        TLS13_CHACHA20_POLY1305_SHA256 => 2,
        _ => 3,
    };
    // A stable sort keeps the provider's order within each rank.
    suites.sort_by_key(rank);
    suites
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tls13_suites_come_first_in_browser_order() {
        let suites = browser_order(rustls::crypto::ring::default_provider().cipher_suites);
        let names: Vec<_> = suites.iter().take(3).map(|s| s.suite()).collect();
        assert_eq!(
            names,
            [
                rustls::CipherSuite::TLS13_AES_128_GCM_SHA256,
                rustls::CipherSuite::TLS13_AES_256_GCM_SHA384,
                rustls::CipherSuite::TLS13_CHACHA20_POLY1305_SHA256,
            ]
        );
        assert!(suites.len() > 3, "TLS 1.2 suites are kept");
    }
}
