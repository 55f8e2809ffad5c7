//! The gateway's connection to the Kubernetes API server, with a token that
//! is re-read when the API server stops accepting it.
//!
//! kube's client re-reads a token file only once a minute, so for up to 60 s
//! after a service-account token is rotated and the old one revoked, every
//! request would get 401. client-go instead drops its cached token when a
//! request comes back 401 (`transport/token_source.go`,
//! `ResettableTokenSource`). [`ApiClient::refresh`] does the equivalent: it
//! builds a new client from the same configuration, which reads the token
//! file afresh, and callers retry their request once with it.
//!
//! Sessions open their upstream with an [`UpstreamConnector`] built from the
//! same configuration and refreshed with the client.

use std::sync::RwLock;

use crate::upstream_conn::UpstreamConnector;

/// A shared, refreshable kube client.
pub struct ApiClient {
    /// How to build a client again; `None` for a fixed client (embedding).
    config: Option<kube::Config>,
    /// The clients in use and their generation (bumped on every refresh).
    current: RwLock<Clients>,
}

/// One generation of clients built from the configuration.
#[derive(Clone)]
struct Clients {
    generation: u64,
    kube: kube::Client,
    /// `None` for a fixed client or behind a proxy: sessions then go through `kube`.
    sessions: Option<UpstreamConnector>,
}

impl Clients {
    fn build(generation: u64, config: &kube::Config) -> Result<Clients, kube::Error> {
        Ok(Clients {
            generation,
            kube: kube::Client::try_from(config.clone())?,
            sessions: UpstreamConnector::new(config)?,
        })
    }
}

impl ApiClient {
    /// A client built from `config`, rebuilt from it by [`ApiClient::refresh`].
    ///
    /// # Errors
    /// When the configuration cannot make a client (unreadable token or CA).
    pub fn new(config: kube::Config) -> Result<ApiClient, kube::Error> {
        let clients = Clients::build(0, &config)?;
        Ok(ApiClient {
            config: Some(config),
            current: RwLock::new(clients),
        })
    }

    /// A client that is never rebuilt.
    pub fn fixed(client: kube::Client) -> ApiClient {
        ApiClient {
            config: None,
            current: RwLock::new(Clients {
                generation: 0,
                kube: client,
                sessions: None,
            }),
        }
    }

    fn clients(&self) -> Clients {
        match self.current.read() {
            Ok(guard) => guard.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// The client in use, with its generation for [`ApiClient::refresh`].
    pub fn current(&self) -> (u64, kube::Client) {
        let clients = self.clients();
        (clients.generation, clients.kube)
    }

    /// What sessions open their upstream with: the connector if there is
    /// one, else the client; with the generation for [`ApiClient::refresh`].
    pub fn for_sessions(&self) -> (u64, Result<UpstreamConnector, kube::Client>) {
        let clients = self.clients();
        (clients.generation, clients.sessions.ok_or(clients.kube))
    }

    /// After a 401 seen with the client of generation `seen`: rebuilds the
    /// client (re-reading the token file) unless another caller already did.
    /// Returns whether a client newer than `seen` is now in place, i.e.
    /// whether retrying is worth it.
    pub fn refresh(&self, seen: u64) -> bool {
        let Some(config) = &self.config else {
            return false;
        };
        let Ok(mut current) = self.current.write() else {
            return false;
        };
        if current.generation != seen {
            return true;
        }
        match Clients::build(seen + 1, config) {
            Ok(clients) => {
                *current = clients;
                tracing::info!("API server refused the gateway's token; re-read its credentials");
                true
            }
            Err(e) => {
                tracing::warn!(error = %e, "re-reading the gateway's Kubernetes credentials failed");
                false
            }
        }
    }
}
