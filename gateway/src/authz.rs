//! The authorisation decision: may this token's user open this VM?
//!
//! Pure and synchronous: it reads the verified claims and the in-memory lab
//! index, so it runs before any upstream connection and costs a hash lookup.

use crate::index::{LabEntry, LabIndex};
use crate::refusal::Refusal;
use crate::route::Route;
use crate::token::Claims;

/// Permission to open one VM's screen or console, as decided at connect time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    /// The token's user (`sub`).
    pub user: String,
    /// The lab namespace.
    pub namespace: String,
    /// The lab's owner when the session was granted: a lab handed to
    /// someone else ends every session into it, members' included.
    pub owner: String,
    /// Token expiry (seconds since the epoch): the session ends then.
    pub token_exp: u64,
}

/// Decides whether `claims` may open `route`.
///
/// # Errors
/// The [`Refusal`] to report: not ready (the index has not loaded yet), or
/// not yours. "Not yours" covers a missing or malformed lab, someone else's
/// lab and a scope claim that excludes this lab, VM or kind alike: lab names
/// often embed user ids, and a non-member must not learn which exist.
pub fn authorize(route: &Route, claims: &Claims, index: &LabIndex) -> Result<Grant, Refusal> {
    let in_scope = claims.lab.as_deref().is_none_or(|l| l == route.namespace)
        && claims.vmi.as_deref().is_none_or(|v| v == route.vmi)
        && claims
            .kind
            .as_deref()
            .is_none_or(|k| k == route.kind.as_str());
    if !in_scope {
        return Err(Refusal::NotYours);
    }
    // Before the first full list, "no such lab" could be wrong: say "retry".
    if !index.is_ready() {
        return Err(Refusal::NotReady);
    }
    let owner = check_membership(&route.namespace, &claims.sub, index).ok_or(Refusal::NotYours)?;
    Ok(Grant {
        user: claims.sub.clone(),
        namespace: route.namespace.clone(),
        owner,
        token_exp: claims.exp,
    })
}

/// Decides whether `claims` may list the lab `namespace` (`GET /labs/{lab}`):
/// the same answers as [`authorize`], with the VM and kind scope claims
/// left to [`vm_in_scope`] and [`kind_in_scope`] per VM. Returns the user.
///
/// # Errors
/// As [`authorize`]: not ready, or one "not yours" for every other case.
pub fn authorize_lab(
    namespace: &str,
    claims: &Claims,
    index: &LabIndex,
) -> Result<String, Refusal> {
    if claims.lab.as_deref().is_some_and(|l| l != namespace) {
        return Err(Refusal::NotYours);
    }
    if !index.is_ready() {
        return Err(Refusal::NotReady);
    }
    check_membership(namespace, &claims.sub, index).ok_or(Refusal::NotYours)?;
    Ok(claims.sub.clone())
}

/// Whether the token's `vmi` scope claim (if any) allows the VM `vmi`.
pub fn vm_in_scope(claims: &Claims, vmi: &str) -> bool {
    claims.vmi.as_deref().is_none_or(|v| v == vmi)
}

/// Whether the token's `kind` scope claim (if any) allows `kind`.
pub fn kind_in_scope(claims: &Claims, kind: crate::route::ConsoleKind) -> bool {
    claims.kind.as_deref().is_none_or(|k| k == kind.as_str())
}

/// Re-checks a live session's grant after its lab changed.
///
/// # Errors
/// [`Refusal::Revoked`] when the lab is gone, has another owner now, or no
/// longer admits the user.
pub fn recheck(grant: &Grant, index: &LabIndex) -> Result<(), Refusal> {
    match check_membership(&grant.namespace, &grant.user, index) {
        Some(owner) if owner == grant.owner => Ok(()),
        _ => Err(Refusal::Revoked),
    }
}

/// The lab's owner, if the lab exists, is well-formed and admits `user`.
/// One answer for every other case, so callers cannot tell them apart.
fn check_membership(namespace: &str, user: &str, index: &LabIndex) -> Option<String> {
    match index.get(namespace).as_deref() {
        Some(LabEntry::Lab(lab)) if lab.admits(user) => Some(lab.owner.clone()),
        None | Some(LabEntry::Malformed(_)) | Some(LabEntry::Lab(_)) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::Metrics;
    use crate::route::ConsoleKind;
    use labgate_policies::{Lab, LabError};
    use std::collections::HashMap;
    use std::sync::Arc;

    fn setup() -> Arc<LabIndex> {
        let index = LabIndex::new(Arc::new(Metrics::new()));
        index.replace_all(HashMap::from([
            (
                "lab-a".to_string(),
                LabEntry::Lab(Lab {
                    namespace: "lab-a".into(),
                    owner: "alice".into(),
                    members: vec!["tutor".into()],
                }),
            ),
            (
                "broken".to_string(),
                LabEntry::Malformed(LabError::OwnerHashMismatch),
            ),
        ]));
        index
    }

    fn route(ns: &str, kind: ConsoleKind) -> Route {
        Route {
            namespace: ns.into(),
            vmi: "vm1".into(),
            kind,
            token: None,
        }
    }

    fn claims(sub: &str) -> Claims {
        Claims {
            sub: sub.into(),
            exp: u64::MAX,
            lab: None,
            vmi: None,
            kind: None,
        }
    }

    #[test]
    fn owner_and_members_only() {
        let index = setup();
        let r = route("lab-a", ConsoleKind::Vnc);
        assert!(authorize(&r, &claims("alice"), &index).is_ok());
        assert!(authorize(&r, &claims("tutor"), &index).is_ok());
        assert_eq!(
            authorize(&r, &claims("mallory"), &index),
            Err(Refusal::NotYours)
        );
        assert_eq!(
            authorize(&route("nope", ConsoleKind::Vnc), &claims("alice"), &index),
            Err(Refusal::NotYours)
        );
        assert_eq!(
            authorize(&route("broken", ConsoleKind::Vnc), &claims("alice"), &index),
            Err(Refusal::NotYours)
        );
    }

    /// Names often embed user ids: a non-member must not learn which labs
    /// exist. A missing lab, someone else's lab, a malformed lab and a token
    /// scoped elsewhere all get one answer.
    #[test]
    fn non_members_get_one_answer_for_missing_and_foreign_labs() {
        let index = setup();
        let foreign = authorize(
            &route("lab-a", ConsoleKind::Vnc),
            &claims("mallory"),
            &index,
        );
        let missing = authorize(&route("nope", ConsoleKind::Vnc), &claims("mallory"), &index);
        let broken = authorize(
            &route("broken", ConsoleKind::Vnc),
            &claims("mallory"),
            &index,
        );
        let mut scoped = claims("mallory");
        scoped.lab = Some("elsewhere".into());
        let scoped = authorize(&route("lab-a", ConsoleKind::Vnc), &scoped, &index);
        assert!(foreign.is_err());
        assert_eq!(foreign, missing);
        assert_eq!(foreign, broken);
        assert_eq!(foreign, scoped);
        let refusal = foreign.unwrap_err();
        let missing = missing.unwrap_err();
        assert_eq!(refusal.close_code(), missing.close_code());
        assert_eq!(refusal.reason(), missing.reason());
        assert_eq!(refusal.http_status(), missing.http_status());
    }

    #[test]
    fn scope_claims_narrow_the_token() {
        let index = setup();
        let mut c = claims("alice");
        c.kind = Some("console".into());
        assert_eq!(
            authorize(&route("lab-a", ConsoleKind::Vnc), &c, &index),
            Err(Refusal::NotYours)
        );
        assert!(authorize(&route("lab-a", ConsoleKind::Console), &c, &index).is_ok());
        c.vmi = Some("other-vm".into());
        assert_eq!(
            authorize(&route("lab-a", ConsoleKind::Console), &c, &index),
            Err(Refusal::NotYours)
        );
        let mut c = claims("alice");
        c.lab = Some("lab-b".into());
        assert_eq!(
            authorize(&route("lab-a", ConsoleKind::Vnc), &c, &index),
            Err(Refusal::NotYours)
        );
    }

    #[test]
    fn an_index_not_loaded_yet_says_retry_not_no_such_lab() {
        let index = LabIndex::new(Arc::new(Metrics::new()));
        let r = route("lab-a", ConsoleKind::Vnc);
        assert_eq!(
            authorize(&r, &claims("alice"), &index),
            Err(Refusal::NotReady)
        );
        index.replace_all(HashMap::new());
        assert_eq!(
            authorize(&r, &claims("alice"), &index),
            Err(Refusal::NotYours)
        );
    }

    #[test]
    fn recheck_revokes_on_removal_and_owner_change() {
        let lab = |owner: &str, members: &[&str]| {
            LabEntry::Lab(Lab {
                namespace: "lab-a".into(),
                owner: owner.into(),
                members: members.iter().map(|m| m.to_string()).collect(),
            })
        };
        let index = setup();
        let r = route("lab-a", ConsoleKind::Vnc);
        let alice = authorize(&r, &claims("alice"), &index).unwrap();
        let tutor = authorize(&r, &claims("tutor"), &index).unwrap();
        assert_eq!(recheck(&alice, &index), Ok(()));

        // Another member added: nobody loses access.
        index.upsert("lab-a", lab("alice", &["tutor", "bob"]));
        assert_eq!(recheck(&alice, &index), Ok(()));
        assert_eq!(recheck(&tutor, &index), Ok(()));

        // Given to bob, even with alice and the tutor kept as members: the
        // lab changed hands, so every session into it ends.
        index.upsert("lab-a", lab("bob", &["alice", "tutor"]));
        assert_eq!(recheck(&alice, &index), Err(Refusal::Revoked));
        assert_eq!(recheck(&tutor, &index), Err(Refusal::Revoked));

        let bobs = authorize(&r, &claims("bob"), &index).unwrap();
        assert_eq!(recheck(&bobs, &index), Ok(()));
        index.remove("lab-a");
        assert_eq!(recheck(&bobs, &index), Err(Refusal::Revoked));
    }
}
