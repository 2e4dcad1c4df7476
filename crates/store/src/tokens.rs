//! API tokens, stored as SHA-256 hashes. Workspace tokens are revoked with
//! their workspace (see `mark_removed`).

use crate::{Store, StoreResult, parse_opt_uuid, parse_uuid};
use holdfast_domain::Millis;
use sqlx::Row;
use uuid::Uuid;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenKind {
    Org,
    Workspace,
}

impl TokenKind {
    pub fn as_str(self) -> &'static str {
        match self {
            TokenKind::Org => "org",
            TokenKind::Workspace => "workspace",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenRow {
    pub id: Uuid,
    pub kind: TokenKind,
    pub org_id: Option<Uuid>,
    pub workspace_id: Option<Uuid>,
}

impl Store {
    pub async fn insert_token(
        &self,
        hash: &str,
        kind: TokenKind,
        org_id: Option<Uuid>,
        workspace_id: Option<Uuid>,
        now: Millis,
    ) -> StoreResult<Uuid> {
        let id = Uuid::new_v4();
        sqlx::query(
            "INSERT INTO tokens (id, hash, kind, org_id, workspace_id, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(id.to_string())
        .bind(hash.to_owned())
        .bind(kind.as_str())
        .bind(org_id.map(|o| o.to_string()))
        .bind(workspace_id.map(|w| w.to_string()))
        .bind(now)
        .execute(self.pool())
        .await?;
        Ok(id)
    }

    /// The live token whose hash is `hash`. The lookup is by hash (an index
    /// seek), so no secret is compared byte by byte here.
    pub async fn find_token(&self, hash: &str) -> StoreResult<Option<TokenRow>> {
        let row = sqlx::query(
            "SELECT id, kind, org_id, workspace_id FROM tokens WHERE hash = $1 AND revoked_at IS NULL",
        )
        .bind(hash.to_owned())
        .fetch_optional(self.pool())
        .await?;
        let Some(row) = row else { return Ok(None) };
        let kind: String = row.try_get("kind")?;
        let kind = if kind == "org" {
            TokenKind::Org
        } else {
            TokenKind::Workspace
        };
        Ok(Some(TokenRow {
            id: parse_uuid(&row, "id")?,
            kind,
            org_id: parse_opt_uuid(&row, "org_id")?,
            workspace_id: parse_opt_uuid(&row, "workspace_id")?,
        }))
    }
}
