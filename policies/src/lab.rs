//! Which namespaces are labs and who owns them.
//!
//! User ids such as `alice@example.com` are not valid label values (no `@`,
//! at most 63 characters), so the owner is recorded twice:
//!
//! | key | kind | value |
//! |---|---|---|
//! | `labgate.io/lab` | label | `"true"`: the namespace is a lab |
//! | `labgate.io/owner-hash` | label | [`owner_hash`] of the owner id: lets portals select a user's labs |
//! | `labgate.io/owner` | annotation | the owner id in clear, exactly as the token's `sub` claim |
//! | `labgate.io/members` | annotation | optional further user ids allowed in: a JSON list of strings (`["bob@example.com","o'brien, pat"]`); the older comma-separated form is still read |
//!
//! A namespace whose hash label does not match its owner annotation is not a
//! valid lab: the gateway indexes it as *malformed* and admits nobody, so a
//! half-edited namespace never grants access.
//!
//! Kubernetes' own namespaces (`default`, and every name starting with
//! `kube-`, a prefix Kubernetes reserves) are never labs, whatever their
//! labels say ([`is_system_namespace`]): labelling `kube-system` must not open
//! its VMs' consoles to a named owner, nor make the reconciler isolate it.
//! Services add their own namespace to that set through their configuration.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Namespace;
use sha2::{Digest, Sha256};

/// Label that marks a namespace as a lab; its value must be `"true"`.
pub const LAB_LABEL: &str = "labgate.io/lab";
/// Label selector for lab namespaces, as sent in list/watch requests.
pub const LAB_SELECTOR: &str = "labgate.io/lab=true";
/// Label holding [`owner_hash`] of the owner id.
pub const OWNER_HASH_LABEL: &str = "labgate.io/owner-hash";
/// Annotation holding the owner id in clear.
pub const OWNER_ANNOTATION: &str = "labgate.io/owner";
/// Annotation holding further members, comma-separated.
pub const MEMBERS_ANNOTATION: &str = "labgate.io/members";

/// Length of the owner hash in hex digits (128 bits: collision-free for any
/// realistic user base, and well inside the 63-character label limit).
const OWNER_HASH_HEX_LEN: usize = 32;

/// The label value recorded for an owner id: the first 32 lowercase hex digits
/// of SHA-256 over the id's UTF-8 bytes.
///
/// ```
/// assert_eq!(labgate_policies::owner_hash("alice@example.com").len(), 32);
/// ```
pub fn owner_hash(user: &str) -> String {
    let digest = Sha256::digest(user.as_bytes());
    let mut hex = String::with_capacity(OWNER_HASH_HEX_LEN);
    for byte in digest.iter().take(OWNER_HASH_HEX_LEN / 2) {
        hex.push_str(&format!("{byte:02x}"));
    }
    hex
}

/// The parsed lab view of a namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lab {
    /// Namespace name.
    pub namespace: String,
    /// Owner user id (token `sub`).
    pub owner: String,
    /// Further user ids allowed to open the lab's VMs.
    pub members: Vec<String>,
}

/// Why a namespace is not a usable lab.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LabError {
    #[error("namespace is not marked as a lab ({LAB_LABEL}=true)")]
    NotALab,
    #[error("lab has no owner: annotation {OWNER_ANNOTATION} is missing or empty")]
    MissingOwner,
    #[error("label {OWNER_HASH_LABEL} does not match the hash of annotation {OWNER_ANNOTATION}")]
    OwnerHashMismatch,
    #[error("annotation {MEMBERS_ANNOTATION} starts with '[' but is not a JSON list of strings")]
    BadMembers,
    #[error("a Kubernetes system namespace is never a lab")]
    SystemNamespace,
}

/// Namespaces Kubernetes creates for itself. Together with every name
/// starting with `kube-` (reserved by Kubernetes) they are never labs.
pub const SYSTEM_NAMESPACES: &[&str] =
    &["default", "kube-system", "kube-public", "kube-node-lease"];

/// Whether `namespace` is one of Kubernetes' own namespaces, which are never
/// labs (see the module documentation).
pub fn is_system_namespace(namespace: &str) -> bool {
    SYSTEM_NAMESPACES.contains(&namespace) || namespace.starts_with("kube-")
}

impl Lab {
    /// Reads the lab contract from a namespace's labels and annotations.
    ///
    /// # Errors
    /// [`LabError`] when the namespace is not a lab or its owner record is
    /// incomplete or inconsistent.
    pub fn from_namespace(ns: &Namespace) -> Result<Lab, LabError> {
        let name = ns.metadata.name.clone().unwrap_or_default();
        let empty = BTreeMap::new();
        let labels = ns.metadata.labels.as_ref().unwrap_or(&empty);
        let annotations = ns.metadata.annotations.as_ref().unwrap_or(&empty);
        Lab::from_metadata(&name, labels, annotations)
    }

    /// Same as [`Lab::from_namespace`], from the raw maps (admission sees
    /// untyped objects).
    ///
    /// # Errors
    /// See [`Lab::from_namespace`].
    pub fn from_metadata(
        namespace: &str,
        labels: &BTreeMap<String, String>,
        annotations: &BTreeMap<String, String>,
    ) -> Result<Lab, LabError> {
        if !is_lab(labels) {
            return Err(LabError::NotALab);
        }
        if is_system_namespace(namespace) {
            return Err(LabError::SystemNamespace);
        }
        let owner = annotations
            .get(OWNER_ANNOTATION)
            .map(|o| o.trim())
            .filter(|o| !o.is_empty())
            .ok_or(LabError::MissingOwner)?;
        if labels.get(OWNER_HASH_LABEL).map(String::as_str) != Some(owner_hash(owner).as_str()) {
            return Err(LabError::OwnerHashMismatch);
        }
        let members = match annotations.get(MEMBERS_ANNOTATION) {
            Some(raw) => parse_members(raw)?,
            None => Vec::new(),
        };
        Ok(Lab {
            namespace: namespace.to_string(),
            owner: owner.to_string(),
            members,
        })
    }

    /// Whether `user` may open this lab's VMs (owner or member).
    pub fn admits(&self, user: &str) -> bool {
        self.owner == user || self.members.iter().any(|m| m == user)
    }

    /// The labels and annotations a portal sets to create this lab.
    pub fn metadata(&self) -> (BTreeMap<String, String>, BTreeMap<String, String>) {
        let labels = BTreeMap::from([
            (LAB_LABEL.to_string(), "true".to_string()),
            (OWNER_HASH_LABEL.to_string(), owner_hash(&self.owner)),
        ]);
        let mut annotations = BTreeMap::from([(OWNER_ANNOTATION.to_string(), self.owner.clone())]);
        if !self.members.is_empty() {
            annotations.insert(
                MEMBERS_ANNOTATION.to_string(),
                encode_members(&self.members),
            );
        }
        (labels, annotations)
    }
}

/// The `labgate.io/members` annotation value for `members`: a JSON list, so
/// ids may contain commas or any other character.
pub fn encode_members(members: &[String]) -> String {
    serde_json::to_string(members).expect("a list of strings always serialises")
}

/// Whether a label set marks a lab namespace.
pub fn is_lab(labels: &BTreeMap<String, String>) -> bool {
    labels.get(LAB_LABEL).map(String::as_str) == Some("true")
}

/// Reads the members annotation. A value starting with `[` must be a JSON
/// list of strings (ids are taken exactly, so `"a,b"` is one id); anything
/// else is the older comma-separated form. A broken JSON list is an error
/// rather than a guess, so a typo never admits a different set of users.
fn parse_members(raw: &str) -> Result<Vec<String>, LabError> {
    let trimmed = raw.trim();
    if trimmed.starts_with('[') {
        let list: Vec<String> = serde_json::from_str(trimmed).map_err(|_| LabError::BadMembers)?;
        return Ok(list.into_iter().filter(|m| !m.is_empty()).collect());
    }
    Ok(trimmed
        .split(',')
        .map(str::trim)
        .filter(|m| !m.is_empty())
        .map(str::to_string)
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ns(labels: &[(&str, &str)], annotations: &[(&str, &str)]) -> Namespace {
        let mut ns = Namespace::default();
        ns.metadata.name = Some("lab-1".into());
        let to_map = |kv: &[(&str, &str)]| {
            kv.iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect::<BTreeMap<_, _>>()
        };
        ns.metadata.labels = Some(to_map(labels));
        ns.metadata.annotations = Some(to_map(annotations));
        ns
    }

    #[test]
    fn owner_hash_is_a_valid_label_value_and_stable() {
        let h = owner_hash("alice@example.com");
        assert_eq!(h.len(), 32);
        assert!(
            h.chars()
                .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase())
        );
        assert_eq!(h, owner_hash("alice@example.com"));
        assert_ne!(h, owner_hash("bob@example.com"));
        // SHA-256("abc") starts with ba7816bf8f01cfea414140de5dae2223.
        assert_eq!(owner_hash("abc"), "ba7816bf8f01cfea414140de5dae2223");
    }

    #[test]
    fn parses_a_complete_lab() {
        let hash = owner_hash("alice@example.com");
        let lab = Lab::from_namespace(&ns(
            &[(LAB_LABEL, "true"), (OWNER_HASH_LABEL, &hash)],
            &[
                (OWNER_ANNOTATION, "alice@example.com"),
                (MEMBERS_ANNOTATION, " bob@example.com, ,carol "),
            ],
        ))
        .unwrap();
        assert_eq!(lab.owner, "alice@example.com");
        assert_eq!(lab.members, vec!["bob@example.com", "carol"]);
        assert!(lab.admits("alice@example.com"));
        assert!(lab.admits("carol"));
        assert!(!lab.admits("mallory@example.com"));
    }

    #[test]
    fn rejects_incomplete_or_forged_records() {
        let hash = owner_hash("alice@example.com");
        assert_eq!(
            Lab::from_namespace(&ns(&[], &[(OWNER_ANNOTATION, "alice@example.com")])),
            Err(LabError::NotALab)
        );
        assert_eq!(
            Lab::from_namespace(&ns(&[(LAB_LABEL, "false")], &[])),
            Err(LabError::NotALab)
        );
        assert_eq!(
            Lab::from_namespace(&ns(&[(LAB_LABEL, "true"), (OWNER_HASH_LABEL, &hash)], &[])),
            Err(LabError::MissingOwner)
        );
        // The annotation was changed to another user without the label.
        assert_eq!(
            Lab::from_namespace(&ns(
                &[(LAB_LABEL, "true"), (OWNER_HASH_LABEL, &hash)],
                &[(OWNER_ANNOTATION, "mallory@example.com")]
            )),
            Err(LabError::OwnerHashMismatch)
        );
    }

    #[test]
    fn members_as_a_json_list_keep_commas_inside_ids() {
        let hash = owner_hash("alice@example.com");
        let lab = Lab::from_namespace(&ns(
            &[(LAB_LABEL, "true"), (OWNER_HASH_LABEL, &hash)],
            &[
                (OWNER_ANNOTATION, "alice@example.com"),
                (
                    MEMBERS_ANNOTATION,
                    r#" ["o'brien, pat", "bob@example.com"] "#,
                ),
            ],
        ))
        .unwrap();
        assert_eq!(lab.members, vec!["o'brien, pat", "bob@example.com"]);
        assert!(lab.admits("o'brien, pat"));
        assert!(!lab.admits("o'brien"));
        assert!(!lab.admits("pat"));
        // A list that does not parse is refused, not read as comma-separated.
        assert_eq!(
            Lab::from_namespace(&ns(
                &[(LAB_LABEL, "true"), (OWNER_HASH_LABEL, &hash)],
                &[
                    (OWNER_ANNOTATION, "alice@example.com"),
                    (MEMBERS_ANNOTATION, r#"["bob@example.com", 7]"#),
                ],
            )),
            Err(LabError::BadMembers)
        );
    }

    #[test]
    fn system_namespaces_are_never_labs() {
        let hash = owner_hash("alice@example.com");
        for name in [
            "kube-system",
            "kube-public",
            "kube-node-lease",
            "default",
            "kube-anything",
        ] {
            let mut labelled = ns(
                &[(LAB_LABEL, "true"), (OWNER_HASH_LABEL, &hash)],
                &[(OWNER_ANNOTATION, "alice@example.com")],
            );
            labelled.metadata.name = Some(name.into());
            assert_eq!(
                Lab::from_namespace(&labelled),
                Err(LabError::SystemNamespace),
                "{name}"
            );
        }
        assert!(!is_system_namespace("kubevirt"));
        assert!(!is_system_namespace("lab-kube-1"));
    }

    #[test]
    fn metadata_round_trips() {
        let lab = Lab {
            namespace: "lab-1".into(),
            owner: "alice@example.com".into(),
            members: vec!["bob@example.com".into(), "o'brien, pat".into()],
        };
        let (_, annotations) = lab.metadata();
        assert_eq!(
            annotations[MEMBERS_ANNOTATION],
            r#"["bob@example.com","o'brien, pat"]"#
        );
        let (labels, annotations) = lab.metadata();
        assert_eq!(Lab::from_metadata("lab-1", &labels, &annotations), Ok(lab));
    }
}
