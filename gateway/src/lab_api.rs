//! The two plain-HTTP endpoints beside the sessions: `GET /labs/{lab}` (the
//! lab's VMs and their state) and `GET /labs/{lab}/{vm}/screenshot` (a PNG).
//!
//! Same pipeline and answers as a session: route → credentials (query or
//! `Authorization: Bearer`, never a path token; conflicting ones refused) →
//! token → authorisation → backend, and every refusal is the session's HTTP
//! status with its `{"error","reason","closeCode"}` body, decided before
//! anything goes upstream. A screenshot is authorised exactly like a screen
//! session of that VM; a listing like a session into the lab, with the VM
//! and kind scope claims applied to each VM.

use bytes::Bytes;
use http::header::{CACHE_CONTROL, CONTENT_TYPE};
use http::{HeaderMap, Method, Request, Response, StatusCode};
use http_body_util::Full;
use serde::Serialize;

use crate::authz;
use crate::credentials;
use crate::refusal::Refusal;
use crate::respond::json;
use crate::route::{ConsoleKind, LabRequest, Route};
use crate::server::{Gateway, GatewayResponse};
use crate::sessions::ConsoleKey;
use crate::token::{Claims, TokenError};
use crate::upstream::{UpstreamError, UpstreamTarget, VmSummary};

/// The body of `GET /labs/{lab}`.
#[derive(Serialize)]
struct Listing<'a> {
    lab: &'a str,
    vms: Vec<VmSummary>,
}

/// A refusal, with the token's user once it is known (for the audit line).
type Refused = (Option<String>, Refusal);

/// Why a listing or screenshot was not served.
enum Failure {
    Refused(Refused),
    /// The backend has no VM list or no screenshots at all.
    Unsupported,
}

impl From<Refused> for Failure {
    fn from(refused: Refused) -> Failure {
        Failure::Refused(refused)
    }
}

/// A backend error: "not supported" stays itself, the rest become refusals.
fn failure(user: &str, error: &UpstreamError) -> Failure {
    match error {
        UpstreamError::Unsupported => Failure::Unsupported,
        other => Failure::Refused((Some(user.to_string()), other.refusal())),
    }
}

impl Gateway {
    /// `GET /labs/{lab}`.
    pub(crate) async fn lab_listing<B>(&self, req: Request<B>, lab: LabRequest) -> GatewayResponse {
        if let Some(refused) = only_get(&req) {
            return refused;
        }
        let answer = async {
            let claims = self.lab_claims(lab.token.as_deref(), req.headers()).await?;
            let user = authz::authorize_lab(&lab.namespace, &claims, &self.shared.index)
                .map_err(|r| (Some(claims.sub.clone()), r))?;
            let vms = self
                .shared
                .backend
                .list_vms(&lab.namespace)
                .await
                .map_err(|e| failure(&user, &e))?;
            Ok::<_, Failure>((user, scoped(vms, &claims)))
        }
        .await;
        match answer {
            Ok((user, vms)) => {
                tracing::debug!(user, lab = %lab.namespace, vms = vms.len(), "lab listed");
                self.count("listing", "ok");
                let body = serde_json::to_string(&Listing {
                    lab: &lab.namespace,
                    vms,
                })
                .unwrap_or_default();
                Response::builder()
                    .header(CONTENT_TYPE, "application/json")
                    .header(CACHE_CONTROL, "no-store")
                    .body(Full::new(Bytes::from(body)))
                    .unwrap_or_default()
            }
            Err(Failure::Unsupported) => self.unsupported("listing"),
            Err(Failure::Refused((user, refusal))) => {
                self.lab_refusal("listing", user.as_deref(), &lab.namespace, "-", refusal)
            }
        }
    }

    /// `GET /labs/{lab}/{vm}/screenshot`.
    pub(crate) async fn screenshot<B>(&self, req: Request<B>, route: Route) -> GatewayResponse {
        if let Some(refused) = only_get(&req) {
            return refused;
        }
        let shared = &self.shared;
        let answer = async {
            let claims = self
                .lab_claims(route.token.as_deref(), req.headers())
                .await?;
            let grant = authz::authorize(&route, &claims, &shared.index)
                .map_err(|r| (Some(claims.sub.clone()), r))?;
            let user = Some(grant.user.clone());
            let key = ConsoleKey {
                namespace: route.namespace.clone(),
                vmi: route.vmi.clone(),
                kind: ConsoleKind::Vnc,
            };
            // On KubeVirt < 1.6.3 a capture drops the live viewer: never do that
            // to a screen relayed here unless the flags or the backend (the
            // static backend's shared RFB capture) say captures are harmless.
            let harmless = shared.settings.screenshots.captures_keep_viewers
                || shared.backend.captures_keep_viewers();
            if !harmless && shared.sessions.is_held(&key) {
                return Err(Failure::Refused((user, Refusal::VmBusy)));
            }
            let target = UpstreamTarget {
                namespace: &route.namespace,
                vmi: &route.vmi,
                kind: ConsoleKind::Vnc,
            };
            match shared.screenshots.get(shared.backend.as_ref(), target).await {
                Ok(png) => Ok((grant.user, png)),
                Err(e) => {
                    tracing::info!(lab = %route.namespace, vmi = %route.vmi, error = %e, "screenshot failed");
                    Err(failure(&grant.user, &e))
                }
            }
        }
        .await;
        match answer {
            Ok((user, png)) => {
                tracing::debug!(user, lab = %route.namespace, vmi = %route.vmi, bytes = png.len(), "screenshot served");
                self.count("screenshot", "ok");
                Response::builder()
                    .header(CONTENT_TYPE, "image/png")
                    .header(CACHE_CONTROL, "no-store")
                    .body(Full::new(png))
                    .unwrap_or_default()
            }
            Err(Failure::Unsupported) => self.unsupported("screenshot"),
            Err(Failure::Refused((user, refusal))) => self.lab_refusal(
                "screenshot",
                user.as_deref(),
                &route.namespace,
                &route.vmi,
                refusal,
            ),
        }
    }

    /// The backend cannot do this at all: not a refusal of this request.
    fn unsupported(&self, endpoint: &str) -> GatewayResponse {
        self.count(endpoint, "not_supported");
        json(
            StatusCode::NOT_IMPLEMENTED,
            r#"{"error":"not_supported","reason":"this gateway's backend does not offer this"}"#
                .into(),
        )
    }

    /// The verified claims of a listing or screenshot request.
    async fn lab_claims(
        &self,
        from_url: Option<&str>,
        headers: &HeaderMap,
    ) -> Result<std::sync::Arc<Claims>, Failure> {
        if self
            .shared
            .draining
            .load(std::sync::atomic::Ordering::Acquire)
        {
            return Err(Failure::Refused((None, Refusal::ShuttingDown)));
        }
        let token = match credentials::token_with(from_url, headers) {
            Ok(Some(token)) => token,
            Ok(None) => return Err(Failure::Refused((None, Refusal::BadToken))),
            Err(credentials::Conflict) => {
                return Err(Failure::Refused((None, Refusal::BadRequest)));
            }
        };
        self.shared.verifier.verify(&token).await.map_err(|e| {
            let refusal = match e {
                TokenError::Expired => Refusal::TokenExpired,
                TokenError::Invalid => Refusal::BadToken,
            };
            Failure::Refused((None, refusal))
        })
    }

    fn count(&self, endpoint: &str, outcome: &str) {
        self.shared
            .metrics
            .lab_requests
            .with_label_values(&[endpoint, outcome])
            .inc();
    }

    /// The audit line, the count and the session's HTTP answer for a refusal.
    fn lab_refusal(
        &self,
        endpoint: &str,
        user: Option<&str>,
        lab: &str,
        vmi: &str,
        refusal: Refusal,
    ) -> GatewayResponse {
        self.count(endpoint, refusal.outcome());
        tracing::info!(
            target: "labgate::audit",
            user = user.unwrap_or("-"),
            lab,
            vmi,
            endpoint,
            outcome = refusal.outcome(),
            close_reason = refusal.reason(),
            "lab request refused"
        );
        json(refusal.http_status(), refusal.json_body())
    }
}

/// Listings and screenshots are read-only: anything but GET (and HEAD) is 405.
fn only_get<B>(req: &Request<B>) -> Option<GatewayResponse> {
    (req.method() != Method::GET && req.method() != Method::HEAD).then(|| {
        let mut response = json(
            StatusCode::METHOD_NOT_ALLOWED,
            r#"{"error":"method_not_allowed","reason":"only GET"}"#.into(),
        );
        response.headers_mut().insert(
            http::header::ALLOW,
            http::HeaderValue::from_static("GET, HEAD"),
        );
        response
    })
}

/// The VMs a token may open: a `vmi` scope claim keeps that VM only; a `kind`
/// scope claim hides the other kind (it cannot be opened with this token).
fn scoped(vms: Vec<VmSummary>, claims: &Claims) -> Vec<VmSummary> {
    vms.into_iter()
        .filter(|vm| authz::vm_in_scope(claims, &vm.name))
        .map(|mut vm| {
            vm.screen &= authz::kind_in_scope(claims, ConsoleKind::Vnc);
            vm.console &= authz::kind_in_scope(claims, ConsoleKind::Console);
            vm
        })
        .collect()
}
