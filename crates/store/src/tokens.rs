//! Org tokens, stored as SHA-256 hashes. (A workspace's token lives on its
//! row, replaced at every start and cleared at delete; see `begin_start`.)

use crate::cache::{TokenKind, TokenOwner};
use crate::{Store, StoreResult, parse_uuid};
use holdfast_domain::Millis;
use uuid::Uuid;

impl Store {
    /// Stores a new org token by its hash.
    pub async fn insert_org_token(
        &self,
        hash: &str,
        org_id: Uuid,
        now: Millis,
    ) -> StoreResult<Uuid> {
        let id = Uuid::new_v4();
        sqlx::query(
            "INSERT INTO tokens (id, hash, kind, org_id, workspace_id, created_at) \
             VALUES ($1, $2, 'org', $3, NULL, $4)",
        )
        .bind(id.to_string())
        .bind(hash.to_owned())
        .bind(org_id.to_string())
        .bind(now)
        .execute(&*self.write())
        .await?;
        Ok(id)
    }

    /// The org of the live org token whose hash is `hash`. The lookup is by
    /// hash (an index seek), so no secret is compared byte by byte here.
    ///
    /// On SQLite the answer (known or unknown) is served from the read
    /// cache until the next write, so a revocation, which is a write, takes
    /// effect at once; see `cache.rs`.
    pub async fn org_of_token(&self, hash: &str) -> StoreResult<Option<Uuid>> {
        let key = (hash.to_owned(), TokenKind::Org);
        if let Some(hit) = self.cache.get::<TokenOwner>(&key) {
            return Ok(match hit {
                TokenOwner::Org(org) => Some(org),
                _ => None,
            });
        }
        let epoch = self.cache.begin_read();
        let row = sqlx::query(
            "SELECT org_id FROM tokens WHERE hash = $1 AND kind = 'org' AND revoked_at IS NULL",
        )
        .bind(hash.to_owned())
        .fetch_optional(self.read())
        .await?;
        let org = row.map(|r| parse_uuid(&r, "org_id")).transpose()?;
        self.cache
            .put(epoch, key, org.map_or(TokenOwner::Nobody, TokenOwner::Org));
        Ok(org)
    }
}
