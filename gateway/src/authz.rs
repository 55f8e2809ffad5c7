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
    /// Token expiry (seconds since the epoch): the session ends then.
    pub token_exp: u64,
}

/// Decides whether `claims` may open `route`.
///
/// # Errors
/// The [`Refusal`] to report: no such lab, or not yours (owner/member check
/// failed or a scope claim excludes this lab, VM or kind).
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
    check_membership(&route.namespace, &claims.sub, index, Refusal::NoSuchLab)?;
    Ok(Grant {
        user: claims.sub.clone(),
        namespace: route.namespace.clone(),
        token_exp: claims.exp,
    })
}

/// Re-checks a live session's grant after its lab changed.
///
/// # Errors
/// [`Refusal::Revoked`] when the lab is gone or no longer admits the user.
pub fn recheck(grant: &Grant, index: &LabIndex) -> Result<(), Refusal> {
    check_membership(&grant.namespace, &grant.user, index, Refusal::Revoked)
        .map_err(|_| Refusal::Revoked)
}

fn check_membership(
    namespace: &str,
    user: &str,
    index: &LabIndex,
    missing: Refusal,
) -> Result<(), Refusal> {
    match index.get(namespace).as_deref() {
        None | Some(LabEntry::Malformed(_)) => Err(missing),
        Some(LabEntry::Lab(lab)) if lab.admits(user) => Ok(()),
        Some(LabEntry::Lab(_)) => Err(Refusal::NotYours),
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
            Err(Refusal::NoSuchLab)
        );
        assert_eq!(
            authorize(&route("broken", ConsoleKind::Vnc), &claims("alice"), &index),
            Err(Refusal::NoSuchLab)
        );
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
    fn recheck_revokes_on_removal_and_owner_change() {
        let index = setup();
        let grant = authorize(&route("lab-a", ConsoleKind::Vnc), &claims("alice"), &index).unwrap();
        assert_eq!(recheck(&grant, &index), Ok(()));
        index.upsert(
            "lab-a",
            LabEntry::Lab(Lab {
                namespace: "lab-a".into(),
                owner: "bob".into(),
                members: vec![],
            }),
        );
        assert_eq!(recheck(&grant, &index), Err(Refusal::Revoked));
        index.remove("lab-a");
        assert_eq!(recheck(&grant, &index), Err(Refusal::Revoked));
    }
}
