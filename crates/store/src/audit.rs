//! The audit log: who did what to which workspace and volume, newest first.

use crate::{Store, StoreResult, parse_opt_uuid, parse_uuid};
use holdfast_domain::{AuditAction, Millis, VolumeReason};
use sqlx::Row;
use sqlx::any::AnyRow;
use uuid::Uuid;

#[derive(Debug, Clone, PartialEq)]
pub struct NewAuditEvent {
    pub actor: String,
    pub action: AuditAction,
    pub workspace_id: Option<Uuid>,
    pub volume_id: Option<Uuid>,
    pub reason: Option<VolumeReason>,
    pub detail: Option<serde_json::Value>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct AuditEvent {
    pub id: Uuid,
    pub at: Millis,
    pub actor: String,
    pub action: AuditAction,
    pub workspace_id: Option<Uuid>,
    pub volume_id: Option<Uuid>,
    pub reason: Option<VolumeReason>,
    pub detail: Option<serde_json::Value>,
}

impl AuditEvent {
    fn from_row(row: &AnyRow) -> StoreResult<Self> {
        let detail: Option<String> = row.try_get("detail")?;
        Ok(AuditEvent {
            id: parse_uuid(row, "id")?,
            at: row.try_get("at")?,
            actor: row.try_get("actor")?,
            action: crate::parse_text(row, "action")?,
            workspace_id: parse_opt_uuid(row, "workspace_id")?,
            volume_id: parse_opt_uuid(row, "volume_id")?,
            reason: crate::parse_opt_text(row, "reason")?,
            detail: detail.and_then(|d| serde_json::from_str(&d).ok()),
        })
    }
}

impl Store {
    #[tracing::instrument(skip_all, name = "store.audit", fields(action = %ev.action))]
    pub async fn audit(&self, ev: NewAuditEvent, now: Millis) -> StoreResult<Uuid> {
        let mut conn = self.pool().acquire().await?;
        insert_audit(&mut conn, &ev, now).await
    }

    /// Audit events, newest first.
    pub async fn list_audit(
        &self,
        workspace_id: Option<Uuid>,
        limit: i64,
    ) -> StoreResult<Vec<AuditEvent>> {
        let cols = "id, at, actor, action, workspace_id, volume_id, reason, detail";
        let rows =
            match workspace_id {
                Some(ws) => sqlx::query(&format!(
                    "SELECT {cols} FROM audit WHERE workspace_id = $1 ORDER BY seq DESC LIMIT $2"
                ))
                .bind(ws.to_string())
                .bind(limit)
                .fetch_all(self.pool())
                .await?,
                None => {
                    sqlx::query(&format!(
                        "SELECT {cols} FROM audit ORDER BY seq DESC LIMIT $1"
                    ))
                    .bind(limit)
                    .fetch_all(self.pool())
                    .await?
                }
            };
        rows.iter().map(AuditEvent::from_row).collect()
    }
}

/// Writes one audit event on `conn`, which may be a transaction: an
/// operation's intent and its audit event commit together.
pub(crate) async fn insert_audit(
    conn: &mut sqlx::AnyConnection,
    ev: &NewAuditEvent,
    now: Millis,
) -> StoreResult<Uuid> {
    let id = Uuid::new_v4();
    sqlx::query(
        "INSERT INTO audit (id, at, actor, action, workspace_id, volume_id, reason, detail) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
    )
    .bind(id.to_string())
    .bind(now)
    .bind(ev.actor.clone())
    .bind(ev.action.as_str())
    .bind(ev.workspace_id.map(|w| w.to_string()))
    .bind(ev.volume_id.map(|v| v.to_string()))
    .bind(ev.reason.map(|r| r.as_str()))
    .bind(ev.detail.as_ref().map(|d| d.to_string()))
    .execute(&mut *conn)
    .await?;
    Ok(id)
}
