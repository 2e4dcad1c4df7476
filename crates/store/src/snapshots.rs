//! Snapshot records, the per-org chunk keys, and legal holds.
//!
//! A snapshot's record is written `capturing` before the repository gets
//! any of its data, and `ready` (with its audit event, in one transaction)
//! once its manifest is durable. Deletes, prunes and erasures are
//! compare-and-sets to `erasing` before the manifest is removed, and to
//! `erased` with their one audit event after.

use crate::{Store, StoreError, StoreResult, parse_opt_text, parse_text, parse_uuid};
use holdfast_domain::{AuditAction, Consistency, Millis, SnapshotState, VolumeReason};
use sqlx::Row;
use sqlx::any::AnyRow;
use uuid::Uuid;

#[derive(Debug, Clone, PartialEq)]
pub struct SnapshotRow {
    pub id: Uuid,
    pub org_id: Uuid,
    pub workspace_id: Uuid,
    pub at: Millis,
    pub label: Option<String>,
    pub state: SnapshotState,
    pub consistency: Option<Consistency>,
    pub frozen_ms: Option<i64>,
    pub files: i64,
    pub bytes: i64,
    pub new_bytes: i64,
    pub created_by: String,
    pub erase_after: Option<Millis>,
    pub erased_at: Option<Millis>,
    pub updated_at: Millis,
}

const COLUMNS: &str = "id, org_id, workspace_id, at, label, state, consistency, frozen_ms, files, \
    bytes, new_bytes, created_by, erase_after, erased_at, updated_at";

impl SnapshotRow {
    fn from_row(row: &AnyRow) -> StoreResult<Self> {
        Ok(SnapshotRow {
            id: parse_uuid(row, "id")?,
            org_id: parse_uuid(row, "org_id")?,
            workspace_id: parse_uuid(row, "workspace_id")?,
            at: row.try_get("at")?,
            label: row.try_get("label")?,
            state: parse_text(row, "state")?,
            consistency: parse_opt_text(row, "consistency")?,
            frozen_ms: row.try_get("frozen_ms")?,
            files: row.try_get("files")?,
            bytes: row.try_get("bytes")?,
            new_bytes: row.try_get("new_bytes")?,
            created_by: row.try_get("created_by")?,
            erase_after: row.try_get("erase_after")?,
            erased_at: row.try_get("erased_at")?,
            updated_at: row.try_get("updated_at")?,
        })
    }
}

/// What a finished capture recorded.
#[derive(Debug, Clone, Copy)]
pub struct Captured {
    pub files: i64,
    pub bytes: i64,
    pub new_bytes: i64,
    pub consistency: Consistency,
    pub frozen_ms: i64,
}

/// A snapshot the sweeper may have to erase, with its workspace's standing.
#[derive(Debug, Clone)]
pub struct SnapshotEraseCandidate {
    pub snapshot: SnapshotRow,
    /// The workspace is removed (or its row is gone).
    pub workspace_removed: bool,
    pub held: bool,
}

impl Store {
    /// The org's chunk key: `candidate` becomes it when the org has none yet
    /// (the first writer wins; every caller gets the stored one).
    pub async fn snapshot_key(
        &self,
        org_id: Uuid,
        candidate: &str,
        now: Millis,
    ) -> StoreResult<String> {
        sqlx::query(
            "INSERT INTO snapshot_keys (org_id, chunk_key, created_at) VALUES ($1, $2, $3) \
             ON CONFLICT (org_id) DO NOTHING",
        )
        .bind(org_id.to_string())
        .bind(candidate.to_owned())
        .bind(now)
        .execute(&*self.write())
        .await?;
        let row = sqlx::query("SELECT chunk_key FROM snapshot_keys WHERE org_id = $1")
            .bind(org_id.to_string())
            .fetch_one(self.read())
            .await?;
        Ok(row.try_get("chunk_key")?)
    }

    /// Ordering: the record exists before any chunk of it is written.
    pub async fn insert_snapshot(
        &self,
        id: Uuid,
        org_id: Uuid,
        workspace_id: Uuid,
        label: Option<&str>,
        actor: &str,
        now: Millis,
    ) -> StoreResult<SnapshotRow> {
        sqlx::query(
            "INSERT INTO snapshots (id, org_id, workspace_id, at, label, state, created_by, updated_at) \
             VALUES ($1, $2, $3, $4, $5, 'capturing', $6, $4)",
        )
        .bind(id.to_string())
        .bind(org_id.to_string())
        .bind(workspace_id.to_string())
        .bind(now)
        .bind(label.map(str::to_owned))
        .bind(actor.to_owned())
        .execute(&*self.write())
        .await?;
        self.get_snapshot(id).await?.ok_or(StoreError::NotFound)
    }

    /// `capturing` → `ready` with its counts and its `snapshot.created`
    /// audit event, in one transaction.
    pub async fn finish_snapshot(
        &self,
        id: Uuid,
        c: Captured,
        now: Millis,
    ) -> StoreResult<SnapshotRow> {
        let written = self.write();
        let mut tx = written.begin().await?;
        let done = sqlx::query(
            "UPDATE snapshots SET state = 'ready', files = $2, bytes = $3, new_bytes = $4, \
             consistency = $5, frozen_ms = $6, updated_at = $7 WHERE id = $1 AND state = 'capturing'",
        )
        .bind(id.to_string())
        .bind(c.files)
        .bind(c.bytes)
        .bind(c.new_bytes)
        .bind(c.consistency.as_str())
        .bind(c.frozen_ms)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        if done.rows_affected() != 1 {
            return Err(StoreError::NotFound);
        }
        let row = sqlx::query(&format!("SELECT {COLUMNS} FROM snapshots WHERE id = $1"))
            .bind(id.to_string())
            .fetch_one(&mut *tx)
            .await?;
        let snap = SnapshotRow::from_row(&row)?;
        crate::audit::insert_audit(
            &mut tx,
            &crate::NewAuditEvent {
                actor: snap.created_by.clone(),
                action: AuditAction::SnapshotCreated,
                workspace_id: Some(snap.workspace_id),
                volume_id: None,
                reason: None,
                detail: Some(serde_json::json!({
                    "snapshot_id": id, "label": snap.label, "new_bytes": c.new_bytes,
                    "consistency": c.consistency,
                })),
            },
            now,
        )
        .await?;
        tx.commit().await?;
        Ok(snap)
    }

    /// Forgets a capture that failed (its manifest was never written).
    pub async fn forget_capture(&self, id: Uuid) -> StoreResult<()> {
        sqlx::query("DELETE FROM snapshots WHERE id = $1 AND state = 'capturing'")
            .bind(id.to_string())
            .execute(&*self.write())
            .await?;
        Ok(())
    }

    pub async fn get_snapshot(&self, id: Uuid) -> StoreResult<Option<SnapshotRow>> {
        let row = sqlx::query(&format!("SELECT {COLUMNS} FROM snapshots WHERE id = $1"))
            .bind(id.to_string())
            .fetch_optional(self.read())
            .await?;
        row.as_ref().map(SnapshotRow::from_row).transpose()
    }

    /// A workspace's snapshots that still hold data, newest first.
    pub async fn list_snapshots(&self, workspace_id: Uuid) -> StoreResult<Vec<SnapshotRow>> {
        let rows = sqlx::query(&format!(
            "SELECT {COLUMNS} FROM snapshots WHERE workspace_id = $1 AND state <> 'erased' \
             ORDER BY at DESC, id DESC"
        ))
        .bind(workspace_id.to_string())
        .fetch_all(self.read())
        .await?;
        rows.iter().map(SnapshotRow::from_row).collect()
    }

    /// Every record that may still have a manifest in the repository (any
    /// state but `erased`), of every org: what the repository is checked
    /// against.
    pub async fn live_snapshots(&self) -> StoreResult<Vec<SnapshotRow>> {
        let rows = sqlx::query(&format!(
            "SELECT {COLUMNS} FROM snapshots WHERE state <> 'erased'"
        ))
        .fetch_all(self.read())
        .await?;
        rows.iter().map(SnapshotRow::from_row).collect()
    }

    /// Captures a crash interrupted.
    pub async fn capturing_snapshots(&self) -> StoreResult<Vec<SnapshotRow>> {
        let rows = sqlx::query(&format!(
            "SELECT {COLUMNS} FROM snapshots WHERE state = 'capturing'"
        ))
        .fetch_all(self.read())
        .await?;
        rows.iter().map(SnapshotRow::from_row).collect()
    }

    /// Step one of removing a snapshot's content: a compare-and-set to
    /// `erasing` from one of `from`, before the manifest is touched.
    pub async fn begin_snapshot_erase(
        &self,
        id: Uuid,
        from: &[SnapshotState],
        now: Millis,
    ) -> StoreResult<()> {
        let list = from
            .iter()
            .map(|s| format!("'{}'", s.as_str()))
            .collect::<Vec<_>>()
            .join(", ");
        let done = sqlx::query(&format!(
            "UPDATE snapshots SET state = 'erasing', updated_at = $2 WHERE id = $1 AND state IN ({list})"
        ))
        .bind(id.to_string())
        .bind(now)
        .execute(&*self.write())
        .await?;
        if done.rows_affected() != 1 {
            return Err(StoreError::NotFound);
        }
        Ok(())
    }

    /// Last step: `erasing` → `erased` with its one audit event.
    pub async fn finish_snapshot_erase(
        &self,
        id: Uuid,
        actor: &str,
        action: AuditAction,
        reason: VolumeReason,
        now: Millis,
    ) -> StoreResult<SnapshotRow> {
        let written = self.write();
        let mut tx = written.begin().await?;
        let done = sqlx::query(
            "UPDATE snapshots SET state = 'erased', erased_at = $2, erase_after = NULL, updated_at = $2 \
             WHERE id = $1 AND state = 'erasing'",
        )
        .bind(id.to_string())
        .bind(now)
        .execute(&mut *tx)
        .await?;
        if done.rows_affected() != 1 {
            return Err(StoreError::NotFound);
        }
        let row = sqlx::query(&format!("SELECT {COLUMNS} FROM snapshots WHERE id = $1"))
            .bind(id.to_string())
            .fetch_one(&mut *tx)
            .await?;
        let snap = SnapshotRow::from_row(&row)?;
        crate::audit::insert_audit(
            &mut tx,
            &crate::NewAuditEvent {
                actor: actor.to_owned(),
                action,
                workspace_id: Some(snap.workspace_id),
                volume_id: None,
                reason: Some(reason),
                detail: Some(serde_json::json!({
                    "snapshot_id": id, "label": snap.label, "bytes": snap.bytes,
                })),
            },
            now,
        )
        .await?;
        tx.commit().await?;
        Ok(snap)
    }

    /// A delete with erase: the workspace's snapshots go `erase_pending`
    /// with the volume's deadline.
    pub async fn mark_snapshots_erase_pending(
        &self,
        workspace_id: Uuid,
        erase_after: Millis,
        now: Millis,
    ) -> StoreResult<u64> {
        let done = sqlx::query(
            "UPDATE snapshots SET state = 'erase_pending', erase_after = $2, updated_at = $3 \
             WHERE workspace_id = $1 AND state = 'ready'",
        )
        .bind(workspace_id.to_string())
        .bind(erase_after)
        .bind(now)
        .execute(&*self.write())
        .await?;
        Ok(done.rows_affected())
    }

    /// A restore within the grace: the marked snapshots are kept again.
    pub async fn unmark_snapshots(&self, workspace_id: Uuid, now: Millis) -> StoreResult<u64> {
        let done = sqlx::query(
            "UPDATE snapshots SET state = 'ready', erase_after = NULL, updated_at = $2 \
             WHERE workspace_id = $1 AND state = 'erase_pending'",
        )
        .bind(workspace_id.to_string())
        .bind(now)
        .execute(&*self.write())
        .await?;
        Ok(done.rows_affected())
    }

    /// Snapshots whose erasure is due or was interrupted.
    pub async fn snapshot_erase_candidates(
        &self,
        now: Millis,
    ) -> StoreResult<Vec<SnapshotEraseCandidate>> {
        let cols = COLUMNS
            .split(", ")
            .map(|c| format!("s.{c}"))
            .collect::<Vec<_>>()
            .join(", ");
        let rows = sqlx::query(&format!(
            "SELECT {cols}, w.id AS ws_id, w.removed_at AS ws_removed_at, w.hold_at AS ws_hold_at \
             FROM snapshots s LEFT JOIN workspaces w ON w.id = s.workspace_id \
             WHERE s.state = 'erasing' OR (s.state = 'erase_pending' AND s.erase_after <= $1)"
        ))
        .bind(now)
        .fetch_all(self.read())
        .await?;
        rows.iter()
            .map(|r| {
                let ws: Option<String> = r.try_get("ws_id")?;
                let removed: Option<Millis> = r.try_get("ws_removed_at")?;
                let hold: Option<Millis> = r.try_get("ws_hold_at")?;
                Ok(SnapshotEraseCandidate {
                    snapshot: SnapshotRow::from_row(r)?,
                    workspace_removed: ws.is_none() || removed.is_some(),
                    held: hold.is_some(),
                })
            })
            .collect()
    }

    /// Places a legal hold, with its `hold.placed` event. Placing one on a
    /// held workspace changes the reason and keeps the original time.
    pub async fn place_hold(
        &self,
        workspace_id: Uuid,
        reason: &str,
        actor: &str,
        now: Millis,
    ) -> StoreResult<()> {
        let written = self.write();
        let mut tx = written.begin().await?;
        sqlx::query(
            "UPDATE workspaces SET hold_reason = $2, hold_by = $3, hold_at = COALESCE(hold_at, $4) \
             WHERE id = $1",
        )
        .bind(workspace_id.to_string())
        .bind(reason.to_owned())
        .bind(actor.to_owned())
        .bind(now)
        .execute(&mut *tx)
        .await?;
        crate::audit::insert_audit(
            &mut tx,
            &crate::NewAuditEvent {
                actor: actor.to_owned(),
                action: AuditAction::HoldPlaced,
                workspace_id: Some(workspace_id),
                volume_id: None,
                reason: None,
                detail: Some(serde_json::json!({ "reason": reason })),
            },
            now,
        )
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Releases a legal hold, with its `hold.released` event. The grace
    /// clocks stood still while it was held: every deadline of the
    /// workspace's volumes and snapshots moves on by the time held.
    /// Returns false when there was no hold.
    pub async fn release_hold(
        &self,
        workspace_id: Uuid,
        actor: &str,
        now: Millis,
    ) -> StoreResult<bool> {
        let written = self.write();
        let mut tx = written.begin().await?;
        let row = sqlx::query("SELECT hold_at, hold_reason FROM workspaces WHERE id = $1")
            .bind(workspace_id.to_string())
            .fetch_optional(&mut *tx)
            .await?;
        let Some(row) = row else {
            return Ok(false);
        };
        let Some(since): Option<Millis> = row.try_get("hold_at")? else {
            return Ok(false);
        };
        let reason: Option<String> = row.try_get("hold_reason")?;
        let held = now.saturating_sub(since).max(0);
        sqlx::query(
            "UPDATE workspaces SET hold_reason = NULL, hold_by = NULL, hold_at = NULL WHERE id = $1",
        )
        .bind(workspace_id.to_string())
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "UPDATE volumes SET retain_until = retain_until + $2, erase_after = erase_after + $2 \
             WHERE workspace_id = $1 AND state IN ('retained', 'erase_pending')",
        )
        .bind(workspace_id.to_string())
        .bind(held)
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "UPDATE snapshots SET erase_after = erase_after + $2 \
             WHERE workspace_id = $1 AND state = 'erase_pending'",
        )
        .bind(workspace_id.to_string())
        .bind(held)
        .execute(&mut *tx)
        .await?;
        crate::audit::insert_audit(
            &mut tx,
            &crate::NewAuditEvent {
                actor: actor.to_owned(),
                action: AuditAction::HoldReleased,
                workspace_id: Some(workspace_id),
                volume_id: None,
                reason: None,
                detail: Some(serde_json::json!({ "reason": reason, "held_ms": held })),
            },
            now,
        )
        .await?;
        tx.commit().await?;
        Ok(true)
    }

    /// Whether the workspace is under a legal hold.
    pub async fn is_held(&self, workspace_id: Uuid) -> StoreResult<bool> {
        let row = sqlx::query("SELECT hold_at FROM workspaces WHERE id = $1")
            .bind(workspace_id.to_string())
            .fetch_optional(self.read())
            .await?;
        Ok(match row {
            Some(r) => r.try_get::<Option<Millis>, _>("hold_at")?.is_some(),
            None => false,
        })
    }

    /// A control plane's record of a legal hold the platform placed
    /// (`cp_volume_holds`): while it exists no volume of the workspace is
    /// erased. Placing it again changes the reason and keeps the time.
    pub async fn place_volume_hold(
        &self,
        workspace_id: Uuid,
        reason: &str,
        actor: &str,
        now: Millis,
    ) -> StoreResult<()> {
        sqlx::query(
            "INSERT INTO cp_volume_holds (workspace_id, reason, held_by, held_at) \
             VALUES ($1, $2, $3, $4) \
             ON CONFLICT (workspace_id) DO UPDATE SET reason = excluded.reason, \
             held_by = excluded.held_by",
        )
        .bind(workspace_id.to_string())
        .bind(reason.to_owned())
        .bind(actor.to_owned())
        .bind(now)
        .execute(&*self.write())
        .await?;
        Ok(())
    }

    /// Removes a control plane's hold record, moving the grace deadlines of
    /// the workspace's volumes on by the time held (the clocks stood still).
    /// Returns false when there was none.
    pub async fn release_volume_hold(&self, workspace_id: Uuid, now: Millis) -> StoreResult<bool> {
        let written = self.write();
        let mut tx = written.begin().await?;
        let row = sqlx::query("SELECT held_at FROM cp_volume_holds WHERE workspace_id = $1")
            .bind(workspace_id.to_string())
            .fetch_optional(&mut *tx)
            .await?;
        let Some(row) = row else {
            return Ok(false);
        };
        let since: Millis = row.try_get("held_at")?;
        let held = now.saturating_sub(since).max(0);
        sqlx::query("DELETE FROM cp_volume_holds WHERE workspace_id = $1")
            .bind(workspace_id.to_string())
            .execute(&mut *tx)
            .await?;
        sqlx::query(
            "UPDATE volumes SET retain_until = retain_until + $2, erase_after = erase_after + $2 \
             WHERE workspace_id = $1 AND state IN ('retained', 'erase_pending')",
        )
        .bind(workspace_id.to_string())
        .bind(held)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(true)
    }
}
