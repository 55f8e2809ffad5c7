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

use std::sync::RwLock;

/// A shared, refreshable kube client.
pub struct ApiClient {
    /// How to build a client again; `None` for a fixed client (embedding).
    config: Option<kube::Config>,
    /// The client in use and its generation (bumped on every refresh).
    current: RwLock<(u64, kube::Client)>,
}

impl ApiClient {
    /// A client built from `config`, rebuilt from it by [`ApiClient::refresh`].
    ///
    /// # Errors
    /// When the configuration cannot make a client (unreadable token or CA).
    pub fn new(config: kube::Config) -> Result<ApiClient, kube::Error> {
        let client = kube::Client::try_from(config.clone())?;
        Ok(ApiClient {
            config: Some(config),
            current: RwLock::new((0, client)),
        })
    }

    /// A client that is never rebuilt.
    pub fn fixed(client: kube::Client) -> ApiClient {
        ApiClient {
            config: None,
            current: RwLock::new((0, client)),
        }
    }

    /// The client in use, with its generation for [`ApiClient::refresh`].
    pub fn current(&self) -> (u64, kube::Client) {
        match self.current.read() {
            Ok(guard) => guard.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
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
        if current.0 != seen {
            return true;
        }
        match kube::Client::try_from(config.clone()) {
            Ok(client) => {
                *current = (seen + 1, client);
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
