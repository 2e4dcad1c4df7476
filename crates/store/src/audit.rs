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

/// Whose events a listing may show.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuditScope {
    /// Every event (the admin).
    All,
    /// Events of the org's workspaces (an org token).
    Org(Uuid),
    /// Events of a control-plane tenant's workspaces.
    Tenant(Uuid),
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
        let written = self.write();
        let mut conn = written.acquire().await?;
        insert_audit(&mut conn, &ev, now).await
    }

    /// Audit events, newest first: those `scope` may see, of one workspace
    /// or all, skipping the newest `offset`. The scope is part of the query,
    /// so a page is full whenever that many visible events exist, however
    /// many events of others are newer.
    #[tracing::instrument(skip_all, name = "store.list_audit")]
    pub async fn list_audit(
        &self,
        scope: AuditScope,
        workspace_id: Option<Uuid>,
        offset: i64,
        limit: i64,
    ) -> StoreResult<Vec<AuditEvent>> {
        // Binds `v` and names its parameter.
        fn next(v: String, binds: &mut Vec<String>) -> String {
            binds.push(v);
            format!("${}", binds.len())
        }
        let mut sql = String::from(
            "SELECT a.id, a.at, a.actor, a.action, a.workspace_id, a.volume_id, a.reason, a.detail \
             FROM audit a",
        );
        let mut binds: Vec<String> = Vec::new();
        match scope {
            AuditScope::All => sql.push_str(" WHERE 1 = 1"),
            AuditScope::Org(org) => {
                let p = next(org.to_string(), &mut binds);
                sql.push_str(&format!(" WHERE a.org_id = {p}"));
            }
            AuditScope::Tenant(tenant) => {
                let p = next(tenant.to_string(), &mut binds);
                sql.push_str(&format!(
                    " JOIN cp_workspaces c ON c.workspace_id = a.workspace_id WHERE c.tenant_id = {p}"
                ));
            }
        }
        if let Some(ws) = workspace_id {
            let p = next(ws.to_string(), &mut binds);
            sql.push_str(&format!(" AND a.workspace_id = {p}"));
        }
        let n = binds.len();
        sql.push_str(&format!(
            " ORDER BY a.seq DESC LIMIT ${} OFFSET ${}",
            n + 1,
            n + 2
        ));
        let mut q = sqlx::query(&sql);
        for b in binds {
            q = q.bind(b);
        }
        let rows = q
            .bind(limit)
            .bind(offset.max(0))
            .fetch_all(self.read())
            .await?;
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
        "INSERT INTO audit (id, at, actor, action, workspace_id, volume_id, reason, detail, org_id) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, (SELECT org_id FROM workspaces WHERE id = $5))",
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
