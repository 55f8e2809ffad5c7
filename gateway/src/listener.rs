//! Serving a [`Gateway`] on its own listeners: the accept loop with TLS and
//! handshake timeouts, the admin listener, and the drain on shutdown.

use std::convert::Infallible;
use std::future::Future;
use std::sync::atomic::Ordering;
use std::time::Duration;

use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;

use tokio_util::sync::CancellationToken;

use crate::end_cork::{CorkableTcp, EndCork};
use crate::preauth::{PreAuth, PreAuthLimits, PreAuthSlot};
use crate::server::Gateway;

/// Connections the admin listener holds at once (probes and scrapes need a few).
pub const ADMIN_MAX_CONNECTIONS: usize = 64;
/// Connections the admin listener holds at once from one address (IPv6: one /64).
pub const ADMIN_MAX_CONNECTIONS_PER_ADDRESS: usize = 16;
/// Time an admin connection may take to send a request head, idle time included.
const ADMIN_HEADER_TIMEOUT: Duration = Duration::from_secs(10);

impl Gateway {
    /// Serves the gateway on `listener` (TLS when `tls` is given) until
    /// `shutdown` resolves, then drains: stops accepting, turns unready, lets
    /// sessions run for the grace period, and closes the rest with 1001.
    pub async fn serve(
        &self,
        listener: TcpListener,
        tls: Option<tokio_rustls::TlsAcceptor>,
        shutdown: impl Future<Output = ()>,
    ) {
        tokio::pin!(shutdown);
        loop {
            let (stream, peer) = tokio::select! {
                _ = &mut shutdown => break,
                accepted = listener.accept() => match accepted {
                    Ok(conn) => conn,
                    Err(e) => {
                        // Usually EMFILE: back off instead of spinning.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
            };
            // Over a cap: close before TLS or HTTP, the cheapest answer there is.
            let permit = match self.shared.preauth.try_acquire(peer.ip()) {
                Ok(permit) => permit,
                Err(cap) => {
                    tracing::debug!(peer = %peer.ip(), cap = cap.as_str(), "connection closed: too many not yet authorised");
                    drop(stream);
                    continue;
                }
            };
            let slot = PreAuthSlot::new(permit);
            let _ = stream.set_nodelay(true);
            let end_cork = EndCork::default();
            let stream = CorkableTcp::new(stream, end_cork.clone());
            let gateway = self.clone();
            let tls = tls.clone();
            tokio::spawn(async move {
                // One deadline for the TLS handshake and the first request
                // head together, so a client trickling bytes gets no more.
                let deadline =
                    tokio::time::Instant::now() + gateway.shared.settings.handshake_timeout;
                match tls {
                    Some(acceptor) => {
                        match tokio::time::timeout_at(deadline, acceptor.accept(stream)).await {
                            Ok(Ok(tls_stream)) => {
                                gateway
                                    .serve_connection(
                                        TokioIo::new(tls_stream),
                                        deadline,
                                        slot,
                                        end_cork,
                                    )
                                    .await
                            }
                            Ok(Err(e)) => tracing::debug!(error = %e, "TLS handshake failed"),
                            Err(_) => tracing::debug!("TLS handshake timed out"),
                        }
                    }
                    None => {
                        gateway
                            .serve_connection(TokioIo::new(stream), deadline, slot, end_cork)
                            .await
                    }
                }
            });
        }
        drop(listener);
        tracing::info!(
            sessions = self.open_sessions(),
            grace = ?self.shared.settings.shutdown_grace,
            "shutting down: no longer accepting, draining sessions"
        );
        self.shared.draining.store(true, Ordering::Release);
        self.shared.stop_accepting.cancel();
        self.drain().await;
    }

    /// Lets sessions run for the grace period, then closes them ("going away").
    pub async fn drain(&self) {
        let shared = &self.shared;
        shared.draining.store(true, Ordering::Release);
        shared.tracker.close();
        if tokio::time::timeout(shared.settings.shutdown_grace, shared.tracker.wait())
            .await
            .is_err()
        {
            shared.force_close.cancel();
            let _ = tokio::time::timeout(
                shared.settings.splice.close_timeout * 2,
                shared.tracker.wait(),
            )
            .await;
        }
        tracing::info!("drained");
    }

    /// Serves HTTP/1.1 (with upgrades) on one connection whose first request
    /// head must be complete by `first_head_by`; on shutdown, finishes the
    /// request in flight and closes idle keep-alive connections. Requests
    /// carry `slot`, the connection's place under the pre-authorisation caps,
    /// and `end_cork`, which a session on the connection engages at its end.
    async fn serve_connection<I>(
        &self,
        io: TokioIo<I>,
        first_head_by: tokio::time::Instant,
        slot: PreAuthSlot,
        end_cork: EndCork,
    ) where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let gateway = self.clone();
        let head_seen = CancellationToken::new();
        let service = {
            let head_seen = head_seen.clone();
            hyper::service::service_fn(move |mut req| {
                head_seen.cancel();
                req.extensions_mut().insert(slot.clone());
                req.extensions_mut().insert(end_cork.clone());
                let gateway = gateway.clone();
                async move { Ok::<_, Infallible>(gateway.handle(req).await) }
            })
        };
        let settings = &self.shared.settings;
        // Later heads (keep-alive) get the handshake timeout each, idle time included.
        let conn = http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(settings.handshake_timeout)
            .max_buf_size(settings.max_header_bytes.max(8192))
            .serve_connection(io, service)
            .with_upgrades();
        tokio::pin!(conn);
        let first_head_late = async {
            tokio::select! {
                _ = head_seen.cancelled() => std::future::pending::<()>().await,
                _ = tokio::time::sleep_until(first_head_by) => {}
            }
        };
        tokio::select! {
            _ = &mut conn => {}
            _ = first_head_late => {
                tracing::debug!("connection closed: no complete request head within the handshake timeout");
            }
            _ = self.shared.stop_accepting.cancelled() => {
                conn.as_mut().graceful_shutdown();
                let _ = tokio::time::timeout(settings.handshake_timeout, conn).await;
            }
        }
    }

    /// Serves only `/healthz`, `/readyz` and `/metrics` on a plain-HTTP
    /// listener until the task is dropped (kept up while draining, so probes
    /// see the gateway turn unready).
    ///
    /// Only probes and scrapers belong here, so the listener takes at most
    /// [`ADMIN_MAX_CONNECTIONS`] connections, [`ADMIN_MAX_CONNECTIONS_PER_ADDRESS`]
    /// from one address: a flood on this port cannot use up the descriptors
    /// that sessions need, nor crowd out the kubelet's probes from another address.
    pub async fn serve_admin(&self, listener: TcpListener) {
        let caps = PreAuth::new(
            PreAuthLimits {
                total: ADMIN_MAX_CONNECTIONS,
                per_address: ADMIN_MAX_CONNECTIONS_PER_ADDRESS,
            },
            self.shared.metrics.admin_connections.clone(),
            self.shared.metrics.admin_rejected.clone(),
        );
        loop {
            let Ok((stream, peer)) = listener.accept().await else {
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            };
            let Ok(permit) = caps.try_acquire(peer.ip()) else {
                tracing::debug!(peer = %peer.ip(), "admin connection closed: too many open");
                continue;
            };
            let gateway = self.clone();
            tokio::spawn(async move {
                let _permit = permit;
                let service = hyper::service::service_fn(move |req| {
                    let gateway = gateway.clone();
                    async move { Ok::<_, Infallible>(gateway.handle_admin(req).await) }
                });
                let _ = http1::Builder::new()
                    .timer(TokioTimer::new())
                    .header_read_timeout(ADMIN_HEADER_TIMEOUT)
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    }
}
