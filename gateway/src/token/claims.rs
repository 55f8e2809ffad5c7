//! The claims labgate reads from a verified token, and which claim names the
//! user (`--jwt-user-claim`).

use std::str::FromStr;

use serde_json::Value;

/// The claims labgate reads. Unknown claims are ignored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claims {
    /// The user id: the value of the configured user claim (`sub` unless
    /// `--jwt-user-claim` names another); must match the lab's owner or a member.
    pub sub: String,
    /// Expiry, seconds since the epoch.
    pub exp: u64,
    /// Optional scope: the only lab namespace this token opens.
    pub lab: Option<String>,
    /// Optional scope: the only VMI this token opens.
    pub vmi: Option<String>,
    /// Optional scope: `vnc` or `console` only.
    pub kind: Option<String>,
}

impl Claims {
    /// Reads the claims from a verified token's payload; `None` (a bad
    /// token) when `exp` is not a whole number, a scope claim is not a
    /// string, or the user claim is missing, not a string, or empty.
    pub fn from_payload(payload: &Value, user_claim: &ClaimPath) -> Option<Claims> {
        let exp = payload.get("exp")?.as_u64()?;
        let scope = |name: &str| match payload.get(name) {
            None | Some(Value::Null) => Some(None),
            Some(Value::String(s)) => Some(Some(s.clone())),
            Some(_) => None,
        };
        let user = user_claim.lookup(payload)?.as_str()?;
        if user.is_empty() {
            return None;
        }
        Some(Claims {
            sub: user.to_string(),
            exp,
            lab: scope("lab")?,
            vmi: scope("vmi")?,
            kind: scope("kind")?,
        })
    }
}

/// Where the user id is in a token: a claim name (`sub`, `email`,
/// `preferred_username`, `https://portal.example/user`) or a dotted path into
/// nested objects (`realm.user`). A top-level claim whose name is the whole
/// string wins over the nested reading, so namespaced claims containing dots
/// work as they are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimPath {
    raw: String,
    segments: Vec<String>,
}

impl ClaimPath {
    /// The claim as written.
    pub fn as_str(&self) -> &str {
        &self.raw
    }

    /// The value at this path in `payload`.
    pub fn lookup<'v>(&self, payload: &'v Value) -> Option<&'v Value> {
        if let Some(v) = payload.get(&self.raw) {
            return Some(v);
        }
        if self.segments.len() < 2 {
            return None;
        }
        self.segments
            .iter()
            .try_fold(payload, |value, segment| value.get(segment))
    }
}

impl Default for ClaimPath {
    fn default() -> Self {
        ClaimPath {
            raw: "sub".into(),
            segments: vec!["sub".into()],
        }
    }
}

impl FromStr for ClaimPath {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let segments: Vec<String> = s.split('.').map(str::to_string).collect();
        if s.is_empty() || (segments.len() > 1 && segments.iter().any(String::is_empty)) {
            return Err(format!(
                "user claim {s:?}: expected a claim name or a dotted path like realm.user"
            ));
        }
        Ok(ClaimPath {
            raw: s.to_string(),
            segments,
        })
    }
}

impl<'de> serde::Deserialize<'de> for ClaimPath {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

impl std::fmt::Display for ClaimPath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.raw)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn user(claim: &str, payload: Value) -> Option<String> {
        let mut payload = payload;
        payload["exp"] = json!(4_000_000_000u64);
        Claims::from_payload(&payload, &claim.parse().unwrap()).map(|c| c.sub)
    }

    #[test]
    fn the_user_claim_is_read_where_configured() {
        let p = json!({"sub": "u-123", "email": "a@example.com", "preferred_username": "alice",
                       "realm": {"user": "r-alice", "n": 3}, "https://portal.example/user": "ns-alice",
                       "id": 42});
        assert_eq!(user("sub", p.clone()).as_deref(), Some("u-123"));
        assert_eq!(user("email", p.clone()).as_deref(), Some("a@example.com"));
        assert_eq!(
            user("preferred_username", p.clone()).as_deref(),
            Some("alice")
        );
        assert_eq!(user("realm.user", p.clone()).as_deref(), Some("r-alice"));
        assert_eq!(
            user("https://portal.example/user", p.clone()).as_deref(),
            Some("ns-alice")
        );
        // Not a string, an object, missing, or empty: a bad token, never a default.
        for claim in [
            "id",
            "realm",
            "realm.n",
            "realm.missing",
            "missing",
            "sub.x",
        ] {
            assert_eq!(user(claim, p.clone()), None, "{claim}");
        }
        assert_eq!(user("sub", json!({"sub": ""})), None);
        assert_eq!(user("sub", json!({"sub": null})), None);
        assert_eq!(user("sub", json!({"sub": ["a"]})), None);
    }

    #[test]
    fn scope_claims_must_be_strings() {
        let base = json!({"sub": "a", "exp": 4_000_000_000u64});
        let c = Claims::from_payload(&base, &ClaimPath::default()).unwrap();
        assert_eq!((c.lab, c.vmi, c.kind), (None, None, None));
        let mut bad = base.clone();
        bad["lab"] = json!(7);
        assert!(Claims::from_payload(&bad, &ClaimPath::default()).is_none());
        let mut no_exp = base.clone();
        no_exp["exp"] = json!("soon");
        assert!(Claims::from_payload(&no_exp, &ClaimPath::default()).is_none());
    }

    #[test]
    fn claim_path_syntax() {
        assert!("".parse::<ClaimPath>().is_err());
        assert!("a..b".parse::<ClaimPath>().is_err());
        assert!(".a".parse::<ClaimPath>().is_err());
        assert_eq!(
            "realm.user".parse::<ClaimPath>().unwrap().as_str(),
            "realm.user"
        );
    }
}
