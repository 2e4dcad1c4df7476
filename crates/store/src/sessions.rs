//! Canvas sessions, by the SHA-256 of their random id: who signed in (by
//! the hash of the token used), until when, and whether they signed out.

use crate::{Store, StoreResult, parse_opt_uuid};
use holdfast_domain::Millis;
use sqlx::Row;
use uuid::Uuid;

/// Who a session stands for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionIdentity {
    Admin,
    Org(Uuid),
}

/// A live session: not expired, not signed out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    /// SHA-256 (hex) of the token that signed in.
    pub token_hash: String,
    pub identity: SessionIdentity,
    pub expires_at: Millis,
}

impl Store {
    /// Records a new session. Sessions that expired a day ago or more are
    /// removed on the way, so the table stays small without a sweeper.
    #[tracing::instrument(skip_all, name = "store.insert_session")]
    pub async fn insert_session(
        &self,
        id_hash: &str,
        token_hash: &str,
        identity: SessionIdentity,
        now: Millis,
        expires_at: Millis,
    ) -> StoreResult<()> {
        sqlx::query("DELETE FROM sessions WHERE expires_at < $1")
            .bind(now - 86_400_000)
            .execute(&*self.write())
            .await?;
        let (kind, org) = match identity {
            SessionIdentity::Admin => ("admin", None),
            SessionIdentity::Org(org) => ("org", Some(org.to_string())),
        };
        sqlx::query(
            "INSERT INTO sessions (id_hash, token_hash, kind, org_id, created_at, expires_at) \
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(id_hash.to_owned())
        .bind(token_hash.to_owned())
        .bind(kind)
        .bind(org)
        .bind(now)
        .bind(expires_at)
        .execute(&*self.write())
        .await?;
        Ok(())
    }

    /// The live session whose id hashes to `id_hash`: none once it expired
    /// or was signed out.
    pub async fn session(&self, id_hash: &str, now: Millis) -> StoreResult<Option<Session>> {
        let row = sqlx::query(
            "SELECT token_hash, kind, org_id, expires_at FROM sessions \
             WHERE id_hash = $1 AND revoked_at IS NULL AND expires_at > $2",
        )
        .bind(id_hash.to_owned())
        .bind(now)
        .fetch_optional(self.read())
        .await?;
        let Some(row) = row else {
            return Ok(None);
        };
        let kind: String = row.try_get("kind")?;
        let identity = match (kind.as_str(), parse_opt_uuid(&row, "org_id")?) {
            ("admin", None) => SessionIdentity::Admin,
            ("org", Some(org)) => SessionIdentity::Org(org),
            // A row this code did not write: no session.
            _ => return Ok(None),
        };
        Ok(Some(Session {
            token_hash: row.try_get("token_hash")?,
            identity,
            expires_at: row.try_get("expires_at")?,
        }))
    }

    /// Signs a session out; later requests with its cookie are refused.
    pub async fn revoke_session(&self, id_hash: &str, now: Millis) -> StoreResult<()> {
        sqlx::query(
            "UPDATE sessions SET revoked_at = $2 WHERE id_hash = $1 AND revoked_at IS NULL",
        )
        .bind(id_hash.to_owned())
        .bind(now)
        .execute(&*self.write())
        .await?;
        Ok(())
    }
}
