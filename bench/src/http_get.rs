//! One plain HTTP/1.1 GET over a connection the caller opened (plain or TLS), for the
//! tools that poll `/readyz` or `GET /labs/{lab}`.

use std::time::Duration;

use anyhow::Context;
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};

/// How long the whole request may take.
const TIMEOUT: Duration = Duration::from_secs(10);

/// `GET path` on `io` with `Connection: close` (and a bearer token if given); the status and
/// body, once the server has closed the connection.
pub async fn get<S>(io: S, path: &str, bearer: Option<&str>) -> anyhow::Result<(u16, String)>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    tokio::time::timeout(TIMEOUT, async {
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io)).await?;
        let conn = tokio::spawn(conn);
        let mut request = http::Request::get(path)
            .header(http::header::HOST, "localhost")
            .header(http::header::CONNECTION, "close");
        if let Some(token) = bearer {
            request = request.header(http::header::AUTHORIZATION, format!("Bearer {token}"));
        }
        let response = sender
            .send_request(request.body(Empty::<Bytes>::new())?)
            .await?;
        let status = response.status().as_u16();
        let body = response.into_body().collect().await?.to_bytes();
        drop(sender);
        let _ = conn.await;
        Ok::<_, anyhow::Error>((status, String::from_utf8_lossy(&body).into_owned()))
    })
    .await
    .context("HTTP request timed out")?
}
