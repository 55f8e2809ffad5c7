//! An identity provider's JWKS endpoint: HTTPS with its own test CA, an
//! answer the test changes at will (a key set, an error status, garbage), and
//! a count of the fetches it served, so tests can bound the gateway's refetches.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

use crate::certs::TestCa;

/// What the endpoint answers.
#[derive(Debug, Clone)]
pub enum Answer {
    /// 200 with this JSON document.
    Json(serde_json::Value),
    /// 200 with these bytes (garbage, oversized bodies).
    Body(Vec<u8>),
    /// An error status with an empty body (provider down behind its proxy).
    Status(u16),
}

/// A running JWKS endpoint; stops on drop.
pub struct JwksServer {
    pub addr: SocketAddr,
    ca: TestCa,
    answer: Arc<Mutex<Answer>>,
    fetches: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for JwksServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl JwksServer {
    /// Starts on a free loopback port with `answer`.
    pub async fn start(answer: Answer) -> anyhow::Result<JwksServer> {
        let ca = TestCa::new();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(ca.server_config(&["localhost"])?));
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let answer = Arc::new(Mutex::new(answer));
        let fetches = Arc::new(AtomicUsize::new(0));
        let (a, f) = (answer.clone(), fetches.clone());
        let task = tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let acceptor = acceptor.clone();
                let (answer, fetches) = (a.clone(), f.clone());
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let service = service_fn(move |req: http::Request<hyper::body::Incoming>| {
                        let answer = answer.lock().unwrap().clone();
                        let counted = req.uri().path() == "/jwks";
                        if counted {
                            fetches.fetch_add(1, Ordering::SeqCst);
                        }
                        async move {
                            let (status, body) = match (counted, answer) {
                                (false, _) => (404, Vec::new()),
                                (true, Answer::Json(v)) => (200, v.to_string().into_bytes()),
                                (true, Answer::Body(b)) => (200, b),
                                (true, Answer::Status(s)) => (s, Vec::new()),
                            };
                            http::Response::builder()
                                .status(status)
                                .header("content-type", "application/json")
                                .body(Full::new(Bytes::from(body)))
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tls), service)
                        .await;
                });
            }
        });
        Ok(JwksServer {
            addr,
            ca,
            answer,
            fetches,
            task,
        })
    }

    /// The key set's URL.
    pub fn url(&self) -> String {
        format!("https://localhost:{}/jwks", self.addr.port())
    }

    /// Changes the answer for the next fetches.
    pub fn set(&self, answer: Answer) {
        *self.answer.lock().unwrap() = answer;
    }

    /// Fetches of the key set served so far.
    pub fn fetches(&self) -> usize {
        self.fetches.load(Ordering::SeqCst)
    }

    /// Writes the endpoint's CA certificate into `dir`; returns its path.
    pub fn write_ca(&self, dir: &Path) -> PathBuf {
        let path = dir.join(format!("jwks-ca-{}.pem", self.addr.port()));
        std::fs::write(&path, self.ca.ca_pem()).expect("writing the JWKS CA");
        path
    }
}
