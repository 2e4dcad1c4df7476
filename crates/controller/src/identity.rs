//! Who is calling: the admin, an org, or a workspace, by a token or by a
//! canvas session. Tokens and session ids are stored and compared as SHA-256
//! hashes; the admin token's hash is compared in constant time, other tokens
//! and sessions are found by an index lookup on their hash.

use crate::{Controller, Error, Result};
use holdfast_store::SessionIdentity;
use rand::RngCore;
use sha2::{Digest, Sha256};
use std::fmt;
use subtle::ConstantTimeEq;
use uuid::Uuid;

/// A secret that never prints.
#[derive(Clone)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Self {
        Secret(s.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

/// A fresh random token: 32 bytes, hex, with a prefix that says what it is.
pub fn generate_token(prefix: &str) -> Secret {
    let mut bytes = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    Secret(format!("{prefix}_{}", holdfast_domain::hex::hex(&bytes)))
}

pub fn hash_token(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

pub fn hash_hex(token: &str) -> String {
    holdfast_domain::hex::sha256_hex(token)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Caller {
    Admin,
    Org(Uuid),
    Workspace {
        workspace_id: Uuid,
        org_id: Option<Uuid>,
    },
}

impl Caller {
    /// The name recorded in audit events.
    pub fn actor(&self) -> String {
        match self {
            Caller::Admin => "admin".to_owned(),
            Caller::Org(org) => format!("org:{org}"),
            Caller::Workspace { workspace_id, .. } => format!("workspace:{workspace_id}"),
        }
    }

    /// Whether this caller may act on a workspace of `org_id`. Workspace
    /// tokens act on no workspace through the lifecycle API.
    pub fn manages_org(&self, org_id: Uuid) -> bool {
        match self {
            Caller::Admin => true,
            Caller::Org(org) => *org == org_id,
            Caller::Workspace { .. } => false,
        }
    }

    /// Whether this caller may read the workspace `id` of `org_id`.
    pub fn can_read(&self, id: Uuid, org_id: Uuid) -> bool {
        match self {
            Caller::Workspace { workspace_id, .. } => *workspace_id == id,
            other => other.manages_org(org_id),
        }
    }
}

impl Controller {
    /// The caller a bearer token stands for, or none. The admin's is
    /// compared in constant time. Org and workspace tokens are only ever
    /// minted by [`generate_token`]: a bearer of any other shape is refused
    /// without a store lookup (the shape is public, so checking it first
    /// tells a caller nothing about any secret).
    pub async fn caller_for_bearer(&self, token: &str) -> Result<Option<Caller>> {
        let hash = hash_token(token);
        if bool::from(hash[..].ct_eq(&self.admin_token_hash[..])) {
            return Ok(Some(Caller::Admin));
        }
        let Some(kind) = minted_kind(token) else {
            return Ok(None);
        };
        self.caller_for_minted(kind, &holdfast_domain::hex::hex(&hash))
            .await
    }

    /// The caller whose token hashes to `hash` (hex): the admin (compared
    /// in constant time), a running workspace, or an org.
    async fn caller_for_token_hash(&self, hash: &str) -> Result<Option<Caller>> {
        let admin = holdfast_domain::hex::hex(&self.admin_token_hash);
        if bool::from(hash.as_bytes().ct_eq(admin.as_bytes())) {
            return Ok(Some(Caller::Admin));
        }
        if let Some((workspace_id, org_id)) = self.store.workspace_by_token(hash).await? {
            return Ok(Some(Caller::Workspace {
                workspace_id,
                org_id: Some(org_id),
            }));
        }
        Ok(self.store.org_of_token(hash).await?.map(Caller::Org))
    }

    /// The caller whose minted (org or workspace) token hashes to `hash`:
    /// one lookup, in the table its kind lives in.
    pub async fn caller_for_minted(&self, kind: Minted, hash: &str) -> Result<Option<Caller>> {
        Ok(match kind {
            Minted::Workspace => {
                self.store
                    .workspace_by_token(hash)
                    .await?
                    .map(|(workspace_id, org_id)| Caller::Workspace {
                        workspace_id,
                        org_id: Some(org_id),
                    })
            }
            Minted::Org => self.store.org_of_token(hash).await?.map(Caller::Org),
        })
    }

    /// The caller a canvas session id stands for: none when the session is
    /// unknown, expired or signed out, or when the token that signed in is
    /// no longer accepted for the same identity (an org token revoked, the
    /// admin token changed).
    pub async fn session_caller(&self, session_id: &str) -> Result<Option<Caller>> {
        let Some(session) = self
            .store
            .session(&hash_hex(session_id), holdfast_domain::now_millis())
            .await?
        else {
            return Ok(None);
        };
        let caller = self.caller_for_token_hash(&session.token_hash).await?;
        Ok(match (caller, session.identity) {
            (Some(Caller::Admin), SessionIdentity::Admin) => Some(Caller::Admin),
            (Some(Caller::Org(now)), SessionIdentity::Org(then)) if now == then => {
                Some(Caller::Org(now))
            }
            _ => None,
        })
    }

    /// Opens a canvas session for `caller`, who signed in with `token`.
    /// Returns the session id for the cookie; the store keeps only hashes.
    pub async fn open_session(&self, caller: Caller, token: &str) -> Result<Secret> {
        let identity = match caller {
            Caller::Admin => SessionIdentity::Admin,
            Caller::Org(org) => SessionIdentity::Org(org),
            Caller::Workspace { .. } => return Err(Error::NotFound(crate::Resource::Route)),
        };
        let id = generate_token("hfs");
        let now = holdfast_domain::now_millis();
        let ttl = i64::try_from(self.session_ttl.as_millis()).unwrap_or(i64::MAX);
        self.store
            .insert_session(
                &hash_hex(id.expose()),
                &hash_hex(token),
                identity,
                now,
                now.saturating_add(ttl),
            )
            .await?;
        Ok(id)
    }

    /// Signs a canvas session out.
    pub async fn close_session(&self, session_id: &str) -> Result<()> {
        self.store
            .revoke_session(&hash_hex(session_id), holdfast_domain::now_millis())
            .await?;
        Ok(())
    }
}

/// The two kinds of token `generate_token` mints for a bearer: an org's
/// (`hfo_`) and a workspace's (`hfw_`), each 64 lowercase hex digits after
/// the prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Minted {
    Org,
    Workspace,
}

pub fn minted_kind(token: &str) -> Option<Minted> {
    let (prefix, digits) = token.split_once('_')?;
    let kind = match prefix {
        "hfo" => Minted::Org,
        "hfw" => Minted::Workspace,
        _ => return None,
    };
    (digits.len() == 64
        && digits
            .bytes()
            .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')))
    .then_some(kind)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_shapes_we_mint_are_looked_up() {
        assert_eq!(
            minted_kind(generate_token("hfo").expose()),
            Some(Minted::Org)
        );
        assert_eq!(
            minted_kind(generate_token("hfw").expose()),
            Some(Minted::Workspace)
        );
        // Sessions and tenants are never bearers of the platform API, and
        // the admin token is compared before this.
        assert_eq!(minted_kind(generate_token("hfs").expose()), None);
        assert_eq!(minted_kind(generate_token("hft").expose()), None);
        let hex64 = "0".repeat(64);
        assert_eq!(minted_kind(&format!("hfo_{hex64}")), Some(Minted::Org));
        assert_eq!(minted_kind(&format!("hfo_{}", "0".repeat(63))), None);
        assert_eq!(minted_kind(&format!("hfo_{}", "A".repeat(64))), None);
        assert_eq!(minted_kind(&format!("hfo_{hex64}0")), None);
        assert_eq!(minted_kind("wrong"), None);
        assert_eq!(minted_kind(""), None);
    }

    #[test]
    fn hex_is_lowercase_two_digits_a_byte() {
        assert_eq!(
            holdfast_domain::hex::hex(&[0x00, 0x0f, 0xa0, 0xff]),
            "000fa0ff"
        );
        assert_eq!(hash_hex("x").len(), 64);
    }
}
