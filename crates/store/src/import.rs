//! An org import's writes: every workspace it creates, changes and removes,
//! with their audit events, in one transaction.
//!
//! **Architecture Invariant:** a removal written here is always without
//! erase (`delete_erase = 0` is in the SQL, and there is no parameter to
//! ask otherwise), so the reconciler and the delete flow finish it by
//! keeping the data `retained`, never by pruning it.

use crate::workspaces::{COLUMNS, insert_query, write_config};
use crate::{NewWorkspace, Store, StoreError, StoreResult, WorkspacePatch, WorkspaceRow};
use holdfast_domain::{AuditAction, DesiredState, Millis, Status};
use uuid::Uuid;

/// A configuration change of a live workspace, with the fields it changes
/// (for the audit event).
#[derive(Debug, Clone)]
pub struct ImportUpdate {
    pub id: Uuid,
    pub patch: WorkspacePatch,
    pub fields: Vec<String>,
}

/// Everything one import writes.
#[derive(Debug, Clone, Default)]
pub struct ImportWrite {
    /// In order: a parent before its children.
    pub creates: Vec<NewWorkspace>,
    pub updates: Vec<ImportUpdate>,
    /// Live workspaces to mark removed, without erase.
    pub removes: Vec<Uuid>,
}

async fn audit(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    actor: &str,
    action: AuditAction,
    workspace: Uuid,
    detail: serde_json::Value,
    now: Millis,
) -> StoreResult<()> {
    crate::audit::insert_audit(
        tx,
        &crate::NewAuditEvent {
            actor: actor.to_owned(),
            action,
            workspace_id: Some(workspace),
            volume_id: None,
            reason: None,
            detail: Some(detail),
        },
        now,
    )
    .await?;
    Ok(())
}

impl Store {
    /// Writes an import of `org` in one transaction. Every row it changes
    /// must still be live (and a parent it creates under, live in `org`);
    /// otherwise nothing is written and the answer is `Conflict`, so that a
    /// plan computed from a tree that changed meanwhile is never half
    /// applied.
    #[tracing::instrument(skip_all, name = "store.apply_import", fields(
        creates = w.creates.len(), updates = w.updates.len(), removes = w.removes.len()
    ))]
    pub async fn apply_import(
        &self,
        org: Uuid,
        w: &ImportWrite,
        actor: &str,
        now: Millis,
    ) -> StoreResult<()> {
        let via = "org.import";
        let written = self.write();
        let mut tx = written.begin().await?;
        if self.dialect() == crate::Dialect::Postgres {
            // Imports into one org take turns, so that the checks below see
            // what a concurrent import wrote (SQLite's single connection
            // already serialises every transaction).
            sqlx::query("SELECT id FROM orgs WHERE id = $1 FOR UPDATE")
                .bind(org.to_string())
                .fetch_optional(&mut *tx)
                .await?;
        }
        for ws in &w.creates {
            if let Some(parent) = ws.parent_id
                && !w.creates.iter().any(|c| c.id == parent)
            {
                let row = sqlx::query(
                    "SELECT id FROM workspaces WHERE id = $1 AND org_id = $2 AND removed_at IS NULL",
                )
                .bind(parent.to_string())
                .bind(org.to_string())
                .fetch_optional(&mut *tx)
                .await?;
                if row.is_none() {
                    return Err(StoreError::ImportRaced(format!(
                        "workspace {parent} was removed while the import ran"
                    )));
                }
            }
            // Two imports of one document at once would otherwise both
            // create the same tree: a live sibling of the same name that
            // appeared since the plan was made aborts this one.
            let twin = match ws.parent_id {
                Some(parent) => {
                    sqlx::query(
                        "SELECT id FROM workspaces WHERE org_id = $1 AND parent_id = $2 \
                         AND name = $3 AND removed_at IS NULL",
                    )
                    .bind(org.to_string())
                    .bind(parent.to_string())
                    .bind(ws.name.clone())
                    .fetch_optional(&mut *tx)
                    .await?
                }
                None => {
                    sqlx::query(
                        "SELECT id FROM workspaces WHERE org_id = $1 AND parent_id IS NULL \
                         AND name = $2 AND removed_at IS NULL",
                    )
                    .bind(org.to_string())
                    .bind(ws.name.clone())
                    .fetch_optional(&mut *tx)
                    .await?
                }
            };
            if twin.is_some() {
                return Err(StoreError::ImportRaced(format!(
                    "a workspace named {:?} appeared there while the import ran",
                    ws.name
                )));
            }
            insert_query(ws, now).execute(&mut *tx).await?;
            audit(
                &mut tx,
                actor,
                AuditAction::WorkspaceCreated,
                ws.id,
                serde_json::json!({ "via": via }),
                now,
            )
            .await?;
        }
        for u in &w.updates {
            let row = sqlx::query(&format!(
                "SELECT {COLUMNS} FROM workspaces WHERE id = $1 AND org_id = $2 AND removed_at IS NULL"
            ))
            .bind(u.id.to_string())
            .bind(org.to_string())
            .fetch_optional(&mut *tx)
            .await?;
            let Some(row) = row else {
                return Err(StoreError::ImportRaced(format!(
                    "workspace {} was removed while the import ran",
                    u.id
                )));
            };
            let mut ws = WorkspaceRow::from_row(&row)?;
            u.patch.apply_to(&mut ws);
            write_config(&mut tx, &ws, now).await?;
            audit(
                &mut tx,
                actor,
                AuditAction::WorkspaceUpdated,
                u.id,
                serde_json::json!({ "via": via, "fields": u.fields }),
                now,
            )
            .await?;
        }
        for id in &w.removes {
            // Ordering: like a delete, every removal is recorded (and the
            // tokens revoked) before any compute is stopped.
            let done = sqlx::query(
                "UPDATE workspaces SET removed_at = $2, status = $3, desired = $4, \
                 delete_erase = 0, compute_released = 0, token_hash = NULL, removed_by = $5, \
                 updated_at = $2 WHERE id = $1 AND org_id = $6 AND removed_at IS NULL",
            )
            .bind(id.to_string())
            .bind(now)
            .bind(Status::Removed.as_str())
            .bind(DesiredState::Removed.as_str())
            .bind(actor.to_owned())
            .bind(org.to_string())
            .execute(&mut *tx)
            .await?;
            if done.rows_affected() != 1 {
                return Err(StoreError::ImportRaced(format!(
                    "workspace {id} was removed while the import ran"
                )));
            }
            audit(
                &mut tx,
                actor,
                AuditAction::WorkspaceDeleted,
                *id,
                serde_json::json!({ "via": via, "erase_data": false }),
                now,
            )
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }
}
