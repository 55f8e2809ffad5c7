//! The connection each session opens to the Kubernetes API server.
//!
//! A websocket upgrade takes its connection over, so every session needs a
//! new one: TCP, TLS, one HTTP/1.1 request. kube's client can send that
//! request, but it pays on every session for being a general client: a
//! queue in front of a worker task (`tower::Buffer`), a connection pool an
//! upgraded connection never returns to, retry and tracing layers, timers
//! re-armed on every read and write of the spliced stream, and rustls'
//! default session cache, which keeps 8 TLS 1.3 tickets per server, so in a
//! burst of more than 8 sessions the rest pay full TLS handshakes (and so
//! does the API server).
//!
//! [`UpstreamConnector`] keeps what matters from kube's configuration: its
//! TLS client settings (the CA, re-read when it rotates; client
//! certificates; `tls-server-name`), the base URI, the auth layer (token
//! files re-read, exec plugins) and extra headers. It sends the request
//! with hyper's HTTP/1 client on a connection of its own, and keeps up to
//! [`UPSTREAM_TLS_TICKETS`] tickets. With a proxy configured, kube's own
//! client is used (it speaks to proxies).

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::{Request, Response};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use kube::client::{Body, ConfigExt};
use rustls::client::{
    ClientSessionMemoryCache, ClientSessionStore, Resumption, Tls12ClientSessionValue,
    Tls13ClientSessionValue,
};
use rustls::pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tower::util::BoxCloneSyncService;
use tower::{BoxError, ServiceBuilder, ServiceExt};

use crate::end_cork::{CorkableTcp, EndCork};

/// TLS 1.3 tickets kept for the API server: enough for a class opening its
/// screens at once to resume every handshake (each ticket is used once, and
/// the API server gives one per handshake). About 300 bytes each.
pub const UPSTREAM_TLS_TICKETS: usize = 256;

/// Time allowed to connect and finish the TLS handshake when kube's
/// configuration sets none.
const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(30);

/// Opens a new API-server connection per request and sends the request on it.
#[derive(Clone)]
pub struct UpstreamConnector {
    stack: BoxCloneSyncService<Request<Body>, Response<Incoming>, BoxError>,
}

impl UpstreamConnector {
    /// Built from kube's configuration; `None` when it names a proxy.
    ///
    /// # Errors
    /// When kube cannot make the TLS or auth settings (unreadable CA, token
    /// or client certificate).
    pub fn new(config: &kube::Config) -> Result<Option<UpstreamConnector>, kube::Error> {
        if config.proxy_url.is_some() {
            return Ok(None);
        }
        let uri = &config.cluster_url;
        let tls = if uri.scheme() == Some(&http::uri::Scheme::HTTPS) {
            let mut tls = config.rustls_client_config()?;
            tls.alpn_protocols = vec![b"http/1.1".to_vec()];
            tls.resumption = Resumption::store(Arc::new(TicketStore::new(UPSTREAM_TLS_TICKETS)));
            let name = config
                .tls_server_name
                .clone()
                .or_else(|| uri.host().map(|h| unbracket(h).to_string()))
                .unwrap_or_default();
            let name = ServerName::try_from(name).map_err(|e| {
                kube::Error::Service(format!("invalid TLS server name: {e}").into())
            })?;
            Some((TlsConnector::from(Arc::new(tls)), name))
        } else {
            None
        };
        let dial = Dial {
            tls: tls.map(Arc::new),
            connect_timeout: config.connect_timeout.unwrap_or(DEFAULT_CONNECT_TIMEOUT),
        };
        let stack = ServiceBuilder::new()
            .layer(config.base_uri_layer())
            .option_layer(config.auth_layer()?)
            .layer(config.extra_headers_layer()?)
            .service(tower::service_fn(move |request| dial.clone().send(request)))
            .map_err(Into::into);
        Ok(Some(UpstreamConnector {
            stack: BoxCloneSyncService::new(stack),
        }))
    }

    /// Sends `request` (a path; the base URI is added) on a new connection.
    ///
    /// # Errors
    /// Connecting, the TLS handshake, the auth layer or HTTP failed.
    pub async fn send(&self, request: Request<Body>) -> Result<Response<Incoming>, BoxError> {
        self.stack.clone().oneshot(request).await
    }
}

/// What a new connection needs: TLS settings and server name (for https).
#[derive(Clone)]
struct Dial {
    tls: Option<Arc<(TlsConnector, ServerName<'static>)>>,
    connect_timeout: Duration,
}

impl Dial {
    async fn send(self, mut request: Request<Body>) -> Result<Response<Incoming>, BoxError> {
        let uri = request.uri().clone();
        let host = uri
            .host()
            .map(unbracket)
            .ok_or("API server URL has no host")?;
        let https = self.tls.is_some();
        let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
        let authority = uri.authority().ok_or("API server URL has no host")?.clone();
        let end_cork = EndCork::default();
        let io = tokio::time::timeout(self.connect_timeout, async {
            let tcp = TcpStream::connect((host, port)).await?;
            // Screens send small updates; Nagle would hold them back.
            tcp.set_nodelay(true)?;
            let tcp = CorkableTcp::new(tcp, end_cork.clone());
            Ok::<_, BoxError>(match &self.tls {
                Some(tls) => {
                    let (connector, name) = &**tls;
                    tokio_util::either::Either::Left(connector.connect(name.clone(), tcp).await?)
                }
                None => tokio_util::either::Either::Right(tcp),
            })
        })
        .await
        .map_err(|_| "timed out connecting to the API server")??;
        let (mut sender, connection) =
            hyper::client::conn::http1::handshake::<_, Body>(TokioIo::new(io)).await?;
        // HTTP/1.1 wants the origin form and a Host header.
        if let Some(path) = uri.path_and_query() {
            *request.uri_mut() = path.clone().into();
        }
        request
            .headers_mut()
            .insert(http::header::HOST, authority.as_str().parse()?);
        // The connection is driven here until the answer's head arrives, so a
        // session dropped while it waits (its client gone) closes it too.
        let mut connection = connection.with_upgrades();
        let send = sender.send_request(request);
        tokio::pin!(send);
        let (mut response, handed_over) = tokio::select! {
            biased;
            response = &mut send => (response?, false),
            ended = &mut connection => {
                // Done already: the connection was handed to the 101's upgrade,
                // or it closed and `send` says why.
                ended?;
                (send.await?, true)
            }
        };
        // The session's splice engages it when it closes the connection.
        response.extensions_mut().insert(end_cork);
        if handed_over {
            return Ok(response);
        }
        // Then it reads the body of a refusal, or hands the connection over to
        // `hyper::upgrade::on`; either ends when the response is dropped.
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(error = %e, "API server connection ended with an error");
            }
        });
        Ok(response)
    }
}

/// `[::1]` → `::1` (URIs bracket IPv6 addresses, sockets and TLS names do not).
fn unbracket(host: &str) -> &str {
    host.strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host)
}

/// A TLS session store that keeps up to `capacity` TLS 1.3 tickets (over
/// all servers; the gateway talks to one), newest used first, oldest
/// dropped. Key-exchange hints and TLS 1.2 sessions go to rustls' own cache.
struct TicketStore {
    tickets: Mutex<VecDeque<(ServerName<'static>, Tls13ClientSessionValue)>>,
    capacity: usize,
    rest: ClientSessionMemoryCache,
}

impl TicketStore {
    fn new(capacity: usize) -> TicketStore {
        TicketStore {
            tickets: Mutex::new(VecDeque::new()),
            capacity,
            rest: ClientSessionMemoryCache::new(8),
        }
    }
}

impl std::fmt::Debug for TicketStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let held = self.tickets.lock().map(|t| t.len()).unwrap_or(0);
        f.debug_struct("TicketStore")
            .field("tickets", &held)
            .field("capacity", &self.capacity)
            .finish()
    }
}

impl ClientSessionStore for TicketStore {
    fn set_kx_hint(&self, server_name: ServerName<'static>, group: rustls::NamedGroup) {
        self.rest.set_kx_hint(server_name, group);
    }

    fn kx_hint(&self, server_name: &ServerName<'_>) -> Option<rustls::NamedGroup> {
        self.rest.kx_hint(server_name)
    }

    fn set_tls12_session(&self, server_name: ServerName<'static>, value: Tls12ClientSessionValue) {
        self.rest.set_tls12_session(server_name, value);
    }

    fn tls12_session(&self, server_name: &ServerName<'_>) -> Option<Tls12ClientSessionValue> {
        self.rest.tls12_session(server_name)
    }

    fn remove_tls12_session(&self, server_name: &ServerName<'static>) {
        self.rest.remove_tls12_session(server_name);
    }

    fn insert_tls13_ticket(
        &self,
        server_name: ServerName<'static>,
        value: Tls13ClientSessionValue,
    ) {
        let Ok(mut tickets) = self.tickets.lock() else {
            return;
        };
        if tickets.len() >= self.capacity {
            tickets.pop_front();
        }
        tickets.push_back((server_name, value));
    }

    fn take_tls13_ticket(
        &self,
        server_name: &ServerName<'static>,
    ) -> Option<Tls13ClientSessionValue> {
        let mut tickets = self.tickets.lock().ok()?;
        // Newest first: the least likely to have expired.
        let at = tickets.iter().rposition(|(name, _)| name == server_name)?;
        tickets.remove(at).map(|(_, value)| value)
    }
}
