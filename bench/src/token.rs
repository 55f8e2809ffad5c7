//! Minting the HS256 tokens the load generator presents, one fresh token per connection.
//!
//! The claims satisfy both labgate (`sub`, `exp`) and the prototype-style relay
//! (`lab_instance.namespace_name`, `allowed_vmi_names`), so every contender that checks a
//! token checks the same kind of token. A unique `jti` keeps a verifier cache from
//! turning the handshake benchmark into a cache benchmark.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde::Serialize;

/// The namespace of the one lab every benchmark session opens.
pub const LAB_NAMESPACE: &str = "lab-1";
/// The owner of that lab, the `sub` of every token.
pub const LAB_OWNER: &str = "alice@example.com";

#[derive(Serialize)]
struct LabInstance<'a> {
    namespace_name: &'a str,
    allowed_vmi_names: [&'a str; 1],
}

#[derive(Serialize)]
struct Claims<'a> {
    sub: &'a str,
    exp: u64,
    jti: u64,
    lab_instance: LabInstance<'a>,
}

/// Signs tokens with one HMAC secret.
pub struct TokenMinter {
    key: EncodingKey,
    next_id: AtomicU64,
}

impl TokenMinter {
    pub fn new(secret: &[u8]) -> Self {
        let seed = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        Self {
            key: EncodingKey::from_secret(secret),
            next_id: AtomicU64::new(seed),
        }
    }

    /// A new token for the lab owner, valid for an hour, allowing the VMI `vmi`.
    pub fn mint(&self, vmi: &str) -> anyhow::Result<String> {
        let now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs();
        let claims = Claims {
            sub: LAB_OWNER,
            exp: now + 3600,
            jti: self.next_id.fetch_add(1, Ordering::Relaxed),
            lab_instance: LabInstance {
                namespace_name: LAB_NAMESPACE,
                allowed_vmi_names: [vmi],
            },
        };
        Ok(jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &self.key,
        )?)
    }
}
