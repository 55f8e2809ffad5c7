//! Entry point of the fuzz target (`admission/fuzz/`) and of the stable test
//! that replays its committed corpus (`admission/tests/fuzz_corpus.rs`):
//! arbitrary bytes as a `/validate` body, panicking only when an invariant
//! breaks. Not part of the service's API.

use std::sync::{Arc, OnceLock};

use kube::core::DynamicObject;
use kube::core::admission::AdmissionReview;
use labgate_policies::EgressMode;

use crate::decide::{ClusterView, NamespaceState, PolicyState, Rules};
use crate::metrics::Metrics;
use crate::webhook::{WebhookState, review_bytes};

/// The portal user of the fuzzing rules.
pub const FUZZ_PORTAL: &str = "system:serviceaccount:portal:portal";

/// A cluster where a namespace's name says what it is, so the fuzzer can
/// reach every state: `lab-gone*` is a terminating lab, `lab-drift*` a lab
/// with a drifted policy, `lab-new*` one without policy yet, other `lab-*`
/// labs are complete, `unknown*` is not in the cache, the rest are not labs.
struct NamedView;

impl ClusterView for NamedView {
    fn namespace(&self, name: &str) -> NamespaceState {
        if name.starts_with("lab-gone") {
            NamespaceState::Lab { terminating: true }
        } else if name.starts_with("lab-") {
            NamespaceState::Lab { terminating: false }
        } else if name.starts_with("unknown") {
            NamespaceState::Unknown
        } else {
            NamespaceState::NotLab
        }
    }

    fn policy(&self, namespace: &str) -> PolicyState {
        if namespace.starts_with("lab-drift") {
            PolicyState::Drifted
        } else if namespace.starts_with("lab-new") || !namespace.starts_with("lab-") {
            PolicyState::Missing
        } else {
            PolicyState::Canonical
        }
    }
}

fn state() -> &'static WebhookState {
    static STATE: OnceLock<WebhookState> = OnceLock::new();
    STATE.get_or_init(|| WebhookState {
        view: Arc::new(NamedView),
        rules: Rules {
            portal_users: vec![FUZZ_PORTAL.into()],
            portal_groups: vec!["portals".into()],
            namespace_controller_users: vec![crate::config::DEFAULT_NAMESPACE_CONTROLLER.into()],
            egress: EgressMode::Standard,
            exempt_namespaces: vec!["labgate-system".into()],
        },
        metrics: Metrics::new(),
        max_connections: 1,
    })
}

#[derive(serde::Deserialize)]
struct Sent {
    request: SentRequest,
}

#[derive(serde::Deserialize)]
struct SentRequest {
    uid: String,
}

/// AdmissionReview decoding and the decision. Whatever the body, the answer
/// is a 400 with a reason and a message, or a well-formed AdmissionReview
/// response echoing the request's uid: allowed, or denied with code 403, a
/// message and the rule that denied it.
pub fn review(data: &[u8]) {
    let state = state();
    match review_bytes(state, data) {
        Err((reason, message)) => {
            assert!(
                ["bad_json", "wrong_type", "no_request", "encode_error"].contains(&reason),
                "unknown 400 reason {reason}"
            );
            assert!(!message.is_empty(), "a 400 without a message");
        }
        Ok((json, verdict)) => {
            // The uid as sent, read the way the service reads the body: fields
            // it ignores may hold anything (even bytes that are not UTF-8).
            let sent: Sent =
                serde_json::from_slice(data).expect("an answered body has a request uid");
            let uid = sent.request.uid;
            assert!(!uid.is_empty());
            let answer: AdmissionReview<DynamicObject> =
                serde_json::from_slice(&json).expect("the answer decodes as an AdmissionReview");
            assert_eq!(answer.types.kind, "AdmissionReview");
            assert_eq!(answer.types.api_version, "admission.k8s.io/v1");
            assert!(answer.request.is_none(), "the answer echoes the request");
            let response = answer.response.expect("the answer has a response");
            assert_eq!(response.uid, uid, "the response uid is not the request's");
            assert_eq!(response.allowed, verdict == "allowed");
            if response.allowed {
                assert!(response.audit_annotations.is_empty());
            } else {
                assert_eq!(verdict, "denied");
                assert_eq!(response.result.code, 403);
                assert!(
                    !response.result.message.is_empty(),
                    "a denial without a message"
                );
                assert!(
                    response
                        .audit_annotations
                        .contains_key(crate::decide::DENIED_RULE_ANNOTATION),
                    "a denial without its rule"
                );
            }
        }
    }
}
