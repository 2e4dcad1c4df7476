//! Control-plane tenants and which workspace belongs to which tenant.

use crate::{Store, StoreError, StoreResult, parse_uuid};
use holdfast_domain::Millis;
use sqlx::Row;
use std::collections::HashSet;
use uuid::Uuid;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tenant {
    pub id: Uuid,
    pub name: String,
}

impl Store {
    /// Creates a tenant with the given token hash. A name already taken is a
    /// `Conflict`.
    pub async fn insert_tenant(
        &self,
        name: &str,
        token_hash: &str,
        now: Millis,
    ) -> StoreResult<Tenant> {
        let id = Uuid::new_v4();
        let done = sqlx::query(
            "INSERT INTO tenants (id, name, token_hash, created_at) VALUES ($1, $2, $3, $4) \
             ON CONFLICT DO NOTHING",
        )
        .bind(id.to_string())
        .bind(name.to_owned())
        .bind(token_hash.to_owned())
        .bind(now)
        .execute(&*self.write())
        .await?;
        if done.rows_affected() != 1 {
            return Err(StoreError::NameTaken {
                kind: "a tenant",
                name: name.to_owned(),
            });
        }
        Ok(Tenant {
            id,
            name: name.to_owned(),
        })
    }

    pub async fn tenant_by_token(&self, token_hash: &str) -> StoreResult<Option<Tenant>> {
        let row = sqlx::query("SELECT id, name FROM tenants WHERE token_hash = $1")
            .bind(token_hash.to_owned())
            .fetch_optional(self.read())
            .await?;
        row.map(|r| {
            Ok(Tenant {
                id: parse_uuid(&r, "id")?,
                name: r.try_get("name")?,
            })
        })
        .transpose()
    }

    /// The tenant that owns a workspace, if any.
    pub async fn workspace_tenant(&self, workspace_id: Uuid) -> StoreResult<Option<Uuid>> {
        let row = sqlx::query("SELECT tenant_id FROM cp_workspaces WHERE workspace_id = $1")
            .bind(workspace_id.to_string())
            .fetch_optional(self.read())
            .await?;
        row.map(|r| parse_uuid(&r, "tenant_id")).transpose()
    }

    /// Records that `tenant` owns `workspace_id`, unless someone already
    /// does. Returns the owner afterwards.
    pub async fn claim_workspace(
        &self,
        workspace_id: Uuid,
        tenant: Uuid,
        now: Millis,
    ) -> StoreResult<Uuid> {
        sqlx::query(
            "INSERT INTO cp_workspaces (workspace_id, tenant_id, created_at) VALUES ($1, $2, $3) \
             ON CONFLICT (workspace_id) DO NOTHING",
        )
        .bind(workspace_id.to_string())
        .bind(tenant.to_string())
        .bind(now)
        .execute(&*self.write())
        .await?;
        self.workspace_tenant(workspace_id)
            .await?
            .ok_or(StoreError::NotFound)
    }

    /// Every workspace a tenant owns.
    pub async fn tenant_workspaces(&self, tenant: Uuid) -> StoreResult<HashSet<Uuid>> {
        let rows = sqlx::query("SELECT workspace_id FROM cp_workspaces WHERE tenant_id = $1")
            .bind(tenant.to_string())
            .fetch_all(self.read())
            .await?;
        rows.iter().map(|r| parse_uuid(r, "workspace_id")).collect()
    }
}
