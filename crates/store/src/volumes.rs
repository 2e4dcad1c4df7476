//! Control-plane records: data volumes (with their state machine history) and
//! running instances.

use crate::{Store, StoreError, StoreResult, parse_opt_text, parse_text, parse_uuid};
use holdfast_domain::{AuditAction, Millis, VolumeReason, VolumeState};
use sqlx::Row;
use sqlx::any::AnyRow;
use uuid::Uuid;

#[derive(Debug, Clone, PartialEq)]
pub struct VolumeRow {
    pub id: Uuid,
    pub workspace_id: Uuid,
    pub state: VolumeState,
    pub bytes: i64,
    pub size_gb: Option<i64>,
    pub retain_until: Option<Millis>,
    pub erase_after: Option<Millis>,
    pub erased_at: Option<Millis>,
    pub bytes_erased: Option<i64>,
    pub erased_by: Option<String>,
    pub reason: Option<VolumeReason>,
    pub created_at: Millis,
    pub updated_at: Millis,
}

impl VolumeRow {
    fn from_row(row: &AnyRow) -> StoreResult<Self> {
        Ok(VolumeRow {
            id: parse_uuid(row, "id")?,
            workspace_id: parse_uuid(row, "workspace_id")?,
            state: parse_text(row, "state")?,
            bytes: row.try_get("bytes")?,
            size_gb: row.try_get("size_gb")?,
            retain_until: row.try_get("retain_until")?,
            erase_after: row.try_get("erase_after")?,
            erased_at: row.try_get("erased_at")?,
            bytes_erased: row.try_get("bytes_erased")?,
            erased_by: row.try_get("erased_by")?,
            reason: parse_opt_text(row, "reason")?,
            created_at: row.try_get("created_at")?,
            updated_at: row.try_get("updated_at")?,
        })
    }
}

/// What a usage pass needs of an attached volume: four columns, not a
/// whole row (the pass reads every attached volume every interval).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VolumeUsage {
    pub id: Uuid,
    pub workspace_id: Uuid,
    pub bytes: i64,
    pub size_gb: Option<i64>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct VolumeHistoryRow {
    pub at: Millis,
    pub from_state: Option<VolumeState>,
    pub to_state: VolumeState,
    pub actor: String,
    pub reason: Option<VolumeReason>,
}

/// A compare-and-set on a volume's state: it applies only if the volume is in
/// one of `from`. `retain_until` and `erase_after` are written as given (so a
/// transition back to `active` clears them). A transition to `erase_pending`
/// records its actor as `erased_by` (who asked for the erasure, reported
/// when it happens); a transition back to `active` clears it.
#[derive(Debug, Clone)]
pub struct VolumeTransition<'a> {
    pub volume_id: Uuid,
    pub from: &'a [VolumeState],
    pub to: VolumeState,
    pub retain_until: Option<Millis>,
    pub erase_after: Option<Millis>,
    pub actor: &'a str,
    pub reason: Option<VolumeReason>,
}

const VOLUME_COLUMNS: &str = "id, workspace_id, state, bytes, size_gb, retain_until, erase_after, \
    erased_at, bytes_erased, erased_by, reason, created_at, updated_at";

impl Store {
    /// The workspace's volume that still holds data (any state but `erased`),
    /// if there is one. There is at most one: a workspace has one volume
    /// directory.
    #[tracing::instrument(skip_all, name = "store.current_volume", fields(workspace_id = %workspace_id))]
    pub async fn current_volume(&self, workspace_id: Uuid) -> StoreResult<Option<VolumeRow>> {
        let row = sqlx::query(&format!(
            "SELECT {VOLUME_COLUMNS} FROM volumes WHERE workspace_id = $1 AND state <> 'erased' \
             ORDER BY created_at DESC LIMIT 1"
        ))
        .bind(workspace_id.to_string())
        .fetch_optional(self.read())
        .await?;
        row.as_ref().map(VolumeRow::from_row).transpose()
    }

    /// The workspace's newest volume record, erased or not.
    pub async fn latest_volume(&self, workspace_id: Uuid) -> StoreResult<Option<VolumeRow>> {
        if let Some(hit) = self.cache.get::<Option<VolumeRow>>(&workspace_id) {
            return Ok(hit);
        }
        let epoch = self.cache.begin_read();
        let row = sqlx::query(&format!(
            "SELECT {VOLUME_COLUMNS} FROM volumes WHERE workspace_id = $1 \
             ORDER BY created_at DESC, updated_at DESC LIMIT 1"
        ))
        .bind(workspace_id.to_string())
        .fetch_optional(self.read())
        .await?;
        let v = row.as_ref().map(VolumeRow::from_row).transpose()?;
        self.cache.put(epoch, workspace_id, v.clone());
        Ok(v)
    }

    pub async fn get_volume(&self, id: Uuid) -> StoreResult<Option<VolumeRow>> {
        let row = sqlx::query(&format!(
            "SELECT {VOLUME_COLUMNS} FROM volumes WHERE id = $1"
        ))
        .bind(id.to_string())
        .fetch_optional(self.read())
        .await?;
        row.as_ref().map(VolumeRow::from_row).transpose()
    }

    /// Records a new `active` volume for a workspace.
    #[tracing::instrument(skip_all, name = "store.insert_volume", fields(workspace_id = %workspace_id))]
    pub async fn insert_volume(
        &self,
        workspace_id: Uuid,
        size_gb: Option<i64>,
        actor: &str,
        now: Millis,
    ) -> StoreResult<VolumeRow> {
        let id = Uuid::new_v4();
        // No transaction: the history row is a record of the creation, and a
        // crash between the two statements loses only that line. This is on
        // the path measured by the create → online benchmark.
        sqlx::query(
            "INSERT INTO volumes (id, workspace_id, state, bytes, size_gb, created_at, updated_at) \
             VALUES ($1, $2, $5, 0, $3, $4, $4)",
        )
        .bind(id.to_string())
        .bind(workspace_id.to_string())
        .bind(size_gb)
        .bind(now)
        .bind(VolumeState::Active.as_str())
        .execute(&*self.write())
        .await?;
        sqlx::query(
            "INSERT INTO volume_history (volume_id, at, from_state, to_state, actor, reason) \
             VALUES ($1, $2, NULL, $3, $4, $5)",
        )
        .bind(id.to_string())
        .bind(now)
        .bind(VolumeState::Active.as_str())
        .bind(actor.to_owned())
        .bind(VolumeReason::Created.as_str())
        .execute(&*self.write())
        .await?;
        Ok(VolumeRow {
            id,
            workspace_id,
            state: VolumeState::Active,
            bytes: 0,
            size_gb,
            retain_until: None,
            erase_after: None,
            erased_at: None,
            bytes_erased: None,
            erased_by: None,
            reason: None,
            created_at: now,
            updated_at: now,
        })
    }

    /// Applies a [`VolumeTransition`] as a compare-and-set, recording it in the
    /// volume's history in the same transaction. Returns the updated record,
    /// or `Conflict` when the volume was not in an expected state.
    #[tracing::instrument(skip_all, name = "store.transition_volume", fields(volume_id = %t.volume_id, to = %t.to))]
    pub async fn transition_volume(
        &self,
        t: VolumeTransition<'_>,
        now: Millis,
    ) -> StoreResult<VolumeRow> {
        let written = self.write();
        let mut tx = written.begin().await?;
        let row = sqlx::query(&format!(
            "SELECT {VOLUME_COLUMNS} FROM volumes WHERE id = $1"
        ))
        .bind(t.volume_id.to_string())
        .fetch_optional(&mut *tx)
        .await?;
        let vol = row
            .as_ref()
            .map(VolumeRow::from_row)
            .transpose()?
            .ok_or(StoreError::NotFound)?;
        if !t.from.contains(&vol.state) {
            return Err(StoreError::VolumeMoved {
                volume_id: vol.id,
                found: Some(vol.state),
            });
        }
        // The state is also checked in the UPDATE itself, so that the CAS holds
        // even on a database where the SELECT above is not a lock.
        let done = sqlx::query(
            "UPDATE volumes SET state = $2, retain_until = $3, erase_after = $4, reason = $5, \
             updated_at = $6 WHERE id = $1 AND state = $7",
        )
        .bind(t.volume_id.to_string())
        .bind(t.to.as_str())
        .bind(t.retain_until)
        .bind(t.erase_after)
        .bind(t.reason.map(|r| r.as_str()))
        .bind(now)
        .bind(vol.state.as_str())
        .execute(&mut *tx)
        .await?;
        if done.rows_affected() != 1 {
            return Err(StoreError::VolumeMoved {
                volume_id: vol.id,
                found: None,
            });
        }
        // Who asked for an erasure is reported when it happens; a volume
        // brought back forgets it.
        let requested_by = match t.to {
            VolumeState::ErasePending => Some(Some(t.actor.to_owned())),
            VolumeState::Active => Some(None),
            _ => None,
        };
        if let Some(by) = requested_by {
            sqlx::query("UPDATE volumes SET erased_by = $2 WHERE id = $1")
                .bind(t.volume_id.to_string())
                .bind(by)
                .execute(&mut *tx)
                .await?;
        }
        sqlx::query(
            "INSERT INTO volume_history (volume_id, at, from_state, to_state, actor, reason) \
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(t.volume_id.to_string())
        .bind(now)
        .bind(vol.state.as_str())
        .bind(t.to.as_str())
        .bind(t.actor.to_owned())
        .bind(t.reason.map(|r| r.as_str()))
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        self.get_volume(t.volume_id)
            .await?
            .ok_or(StoreError::NotFound)
    }

    /// The quota a volume is measured against (`compute.volume.size_gb`).
    pub async fn set_volume_size(&self, id: Uuid, size_gb: Option<i64>) -> StoreResult<()> {
        sqlx::query("UPDATE volumes SET size_gb = $2 WHERE id = $1")
            .bind(id.to_string())
            .bind(size_gb)
            .execute(&*self.write())
            .await?;
        Ok(())
    }

    pub async fn set_volume_bytes(&self, id: Uuid, bytes: i64) -> StoreResult<()> {
        sqlx::query("UPDATE volumes SET bytes = $2 WHERE id = $1")
            .bind(id.to_string())
            .bind(bytes)
            .execute(&*self.write())
            .await?;
        Ok(())
    }

    /// Volume records, newest first, optionally in one state.
    pub async fn list_volumes(&self, state: Option<VolumeState>) -> StoreResult<Vec<VolumeRow>> {
        let rows =
            match state {
                Some(s) => sqlx::query(&format!(
                    "SELECT {VOLUME_COLUMNS} FROM volumes WHERE state = $1 ORDER BY created_at DESC"
                ))
                .bind(s.as_str())
                .fetch_all(self.read())
                .await?,
                None => {
                    sqlx::query(&format!(
                        "SELECT {VOLUME_COLUMNS} FROM volumes ORDER BY created_at DESC"
                    ))
                    .fetch_all(self.read())
                    .await?
                }
            };
        rows.iter().map(VolumeRow::from_row).collect()
    }

    /// The size and quota of every `active` volume, in no order.
    pub async fn active_volume_usage(&self) -> StoreResult<Vec<VolumeUsage>> {
        let rows = sqlx::query(
            "SELECT id, workspace_id, bytes, size_gb FROM volumes WHERE state = 'active'",
        )
        .fetch_all(self.read())
        .await?;
        rows.iter()
            .map(|row| {
                Ok(VolumeUsage {
                    id: parse_uuid(row, "id")?,
                    workspace_id: parse_uuid(row, "workspace_id")?,
                    bytes: row.try_get("bytes")?,
                    size_gb: row.try_get("size_gb")?,
                })
            })
            .collect()
    }

    /// The workspaces whose `active` volume holds more than its `size_gb`
    /// (decimal gigabytes, as everywhere in holdfast).
    pub async fn over_quota_workspaces(&self) -> StoreResult<Vec<Uuid>> {
        let rows = sqlx::query(
            "SELECT workspace_id FROM volumes WHERE state = 'active' \
             AND size_gb IS NOT NULL AND bytes > size_gb * 1000000000",
        )
        .fetch_all(self.read())
        .await?;
        rows.iter()
            .map(|row| parse_uuid(row, "workspace_id"))
            .collect()
    }

    pub async fn volume_history(&self, volume_id: Uuid) -> StoreResult<Vec<VolumeHistoryRow>> {
        let rows = sqlx::query(
            "SELECT at, from_state, to_state, actor, reason FROM volume_history \
             WHERE volume_id = $1 ORDER BY seq",
        )
        .bind(volume_id.to_string())
        .fetch_all(self.read())
        .await?;
        rows.iter()
            .map(|r| {
                Ok(VolumeHistoryRow {
                    at: r.try_get("at")?,
                    from_state: parse_opt_text(r, "from_state")?,
                    to_state: parse_text(r, "to_state")?,
                    actor: r.try_get("actor")?,
                    reason: parse_opt_text(r, "reason")?,
                })
            })
            .collect()
    }
}

/// What the store knows of a volume's workspace, for the sweeper.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Presence {
    /// The workspace exists and is not removed.
    Live,
    Removed,
    /// No workspace row: the record is an orphan.
    Missing,
    /// This store has no workspace table to ask (a standalone control
    /// plane): never treated as missing.
    Unknown,
}

/// A volume the sweeper may have to act on, with what it needs to decide.
#[derive(Debug, Clone, PartialEq)]
pub struct SweepCandidate {
    pub volume: VolumeRow,
    pub presence: Presence,
    /// The workspace's resolved mode, when known (`persist`/`ephemeral`).
    pub workspace_mode: Option<holdfast_domain::DataPersistence>,
}

impl Store {
    /// Volumes that may need the sweeper now: erasures to resume, graces
    /// that have passed, and (when `with_workspaces`) active volumes whose
    /// workspace row is gone. One indexed query, so a pass over a large
    /// store with little to do stays cheap.
    #[tracing::instrument(skip_all, name = "store.sweep_candidates")]
    pub async fn sweep_candidates(
        &self,
        now: Millis,
        with_workspaces: bool,
    ) -> StoreResult<Vec<SweepCandidate>> {
        let cols = VOLUME_COLUMNS
            .split(", ")
            .map(|c| format!("v.{c}"))
            .collect::<Vec<_>>()
            .join(", ");
        // A legal hold (a workspace row with `hold_at`) keeps every volume
        // of it out of the pass, but an erasure already begun finishes.
        // A control plane's own hold record (`cp_volume_holds`, what a
        // remote one has instead of workspace rows) counts the same.
        let due = "v.state = 'erasing' \
                   OR (NOT EXISTS (SELECT 1 FROM cp_volume_holds h WHERE h.workspace_id = v.workspace_id) \
                       AND ((v.state = 'erase_pending' AND v.erase_after <= $1) \
                            OR (v.state = 'retained' AND v.retain_until <= $1)))";
        let sql = if with_workspaces {
            format!(
                "SELECT {cols}, w.id AS ws_id, w.removed_at AS ws_removed_at, w.resolved_mode AS ws_mode \
                 FROM volumes v LEFT JOIN workspaces w ON w.id = v.workspace_id \
                 WHERE v.state = 'erasing' \
                    OR (w.hold_at IS NULL AND ({due} OR (v.state = 'active' AND w.id IS NULL \
                        AND NOT EXISTS (SELECT 1 FROM cp_volume_holds h WHERE h.workspace_id = v.workspace_id))))"
            )
        } else {
            format!(
                "SELECT {cols}, CAST(NULL AS TEXT) AS ws_id, CAST(NULL AS BIGINT) AS ws_removed_at, \
                 CAST(NULL AS TEXT) AS ws_mode \
                 FROM volumes v WHERE {due}"
            )
        };
        let rows = sqlx::query(&sql).bind(now).fetch_all(self.read()).await?;
        rows.iter()
            .map(|r| {
                let ws_id: Option<String> = r.try_get("ws_id")?;
                let removed: Option<Millis> = r.try_get("ws_removed_at")?;
                let presence = match (with_workspaces, ws_id, removed) {
                    (false, _, _) => Presence::Unknown,
                    (true, None, _) => Presence::Missing,
                    (true, Some(_), Some(_)) => Presence::Removed,
                    (true, Some(_), None) => Presence::Live,
                };
                Ok(SweepCandidate {
                    volume: VolumeRow::from_row(r)?,
                    presence,
                    workspace_mode: parse_opt_text(r, "ws_mode")?,
                })
            })
            .collect()
    }

    /// Workspace ids that have a volume record still holding data (any state
    /// but `erased`): the directories the store knows.
    pub async fn known_volume_workspaces(&self) -> StoreResult<std::collections::HashSet<Uuid>> {
        let rows = sqlx::query("SELECT workspace_id FROM volumes WHERE state <> 'erased'")
            .fetch_all(self.read())
            .await?;
        rows.iter().map(|r| parse_uuid(r, "workspace_id")).collect()
    }

    /// Step one of an erasure: a compare-and-set to `erasing`, before any file
    /// is touched. Fails with `Conflict` if the volume left `from` meanwhile
    /// (restored, reattached, or taken by another sweeper) or its workspace
    /// is under a legal hold (placed after the sweeper listed it).
    #[tracing::instrument(skip_all, name = "store.begin_erase", fields(volume_id = %volume_id))]
    pub async fn begin_erase(
        &self,
        volume_id: Uuid,
        from: VolumeState,
        actor: &str,
        reason: VolumeReason,
        now: Millis,
    ) -> StoreResult<VolumeRow> {
        let written = self.write();
        let mut tx = written.begin().await?;
        let done = sqlx::query(
            "UPDATE volumes SET state = 'erasing', erased_by = COALESCE(erased_by, $3), reason = $4, updated_at = $5 \
             WHERE id = $1 AND state = $2 \
             AND NOT EXISTS (SELECT 1 FROM cp_volume_holds h WHERE h.workspace_id = volumes.workspace_id) \
             AND NOT EXISTS (SELECT 1 FROM workspaces w WHERE w.id = volumes.workspace_id AND w.hold_at IS NOT NULL)",
        )
        .bind(volume_id.to_string())
        .bind(from.as_str())
        .bind(actor.to_owned())
        .bind(reason.as_str())
        .bind(now)
        .execute(&mut *tx)
        .await?;
        if done.rows_affected() != 1 {
            return Err(StoreError::VolumeMoved {
                volume_id,
                found: None,
            });
        }
        sqlx::query(
            "INSERT INTO volume_history (volume_id, at, from_state, to_state, actor, reason) \
             VALUES ($1, $2, $3, 'erasing', $4, $5)",
        )
        .bind(volume_id.to_string())
        .bind(now)
        .bind(from.as_str())
        .bind(actor.to_owned())
        .bind(reason.as_str())
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        self.get_volume(volume_id)
            .await?
            .ok_or(StoreError::NotFound)
    }

    /// Last step of an erasure, once the files are gone: `erasing` →
    /// `erased` with the byte count, and the `volume.erased` audit event in
    /// the same transaction, so there is exactly one event per erasure.
    #[tracing::instrument(skip_all, name = "store.finish_erase", fields(volume_id = %volume_id))]
    pub async fn finish_erase(
        &self,
        volume_id: Uuid,
        bytes_erased: i64,
        now: Millis,
    ) -> StoreResult<VolumeRow> {
        let written = self.write();
        let mut tx = written.begin().await?;
        let done = sqlx::query(
            "UPDATE volumes SET state = 'erased', erased_at = $2, bytes_erased = $3, bytes = 0, \
             retain_until = NULL, erase_after = NULL, updated_at = $2 WHERE id = $1 AND state = 'erasing'",
        )
        .bind(volume_id.to_string())
        .bind(now)
        .bind(bytes_erased)
        .execute(&mut *tx)
        .await?;
        if done.rows_affected() != 1 {
            return Err(StoreError::VolumeMoved {
                volume_id,
                found: None,
            });
        }
        let row = sqlx::query(&format!(
            "SELECT {VOLUME_COLUMNS} FROM volumes WHERE id = $1"
        ))
        .bind(volume_id.to_string())
        .fetch_one(&mut *tx)
        .await?;
        let vol = VolumeRow::from_row(&row)?;
        let actor = vol
            .erased_by
            .clone()
            .unwrap_or_else(|| "sweeper".to_owned());
        sqlx::query(
            "INSERT INTO volume_history (volume_id, at, from_state, to_state, actor, reason) \
             VALUES ($1, $2, 'erasing', 'erased', $3, $4)",
        )
        .bind(volume_id.to_string())
        .bind(now)
        .bind(actor.clone())
        .bind(vol.reason.map(|r| r.as_str()))
        .execute(&mut *tx)
        .await?;
        crate::audit::insert_audit(
            &mut tx,
            &crate::NewAuditEvent {
                actor,
                action: AuditAction::VolumeErased,
                workspace_id: Some(vol.workspace_id),
                volume_id: Some(volume_id),
                reason: vol.reason,
                detail: Some(serde_json::json!({ "bytes_erased": bytes_erased })),
            },
            now,
        )
        .await?;
        tx.commit().await?;
        Ok(vol)
    }

    /// Records a directory found on disk that no record knows, as a
    /// `retained` volume, with its `volume.adopted` audit event.
    #[tracing::instrument(skip_all, name = "store.adopt_volume", fields(workspace_id = %workspace_id))]
    pub async fn adopt_volume(
        &self,
        workspace_id: Uuid,
        bytes: i64,
        retain_until: Millis,
        now: Millis,
    ) -> StoreResult<VolumeRow> {
        let id = Uuid::new_v4();
        let written = self.write();
        let mut tx = written.begin().await?;
        sqlx::query(
            "INSERT INTO volumes (id, workspace_id, state, bytes, retain_until, reason, created_at, updated_at) \
             VALUES ($1, $2, 'retained', $3, $4, $6, $5, $5)",
        )
        .bind(id.to_string())
        .bind(workspace_id.to_string())
        .bind(bytes)
        .bind(retain_until)
        .bind(now)
        .bind(VolumeReason::OrphanedOnDisk.as_str())
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "INSERT INTO volume_history (volume_id, at, from_state, to_state, actor, reason) \
             VALUES ($1, $2, NULL, $3, 'sweeper', $4)",
        )
        .bind(id.to_string())
        .bind(now)
        .bind(VolumeState::Retained.as_str())
        .bind(VolumeReason::OrphanedOnDisk.as_str())
        .execute(&mut *tx)
        .await?;
        crate::audit::insert_audit(
            &mut tx,
            &crate::NewAuditEvent {
                actor: "sweeper".to_owned(),
                action: AuditAction::VolumeAdopted,
                workspace_id: Some(workspace_id),
                volume_id: Some(id),
                reason: Some(VolumeReason::OrphanedOnDisk),
                detail: Some(serde_json::json!({ "bytes": bytes })),
            },
            now,
        )
        .await?;
        tx.commit().await?;
        self.get_volume(id).await?.ok_or(StoreError::NotFound)
    }
}

impl Store {
    /// Volumes per state with their summed bytes, for metrics.
    pub async fn volume_stats(&self) -> StoreResult<Vec<(String, i64, i64)>> {
        let rows = sqlx::query(
            "SELECT state, COUNT(*) AS n, CAST(COALESCE(SUM(bytes), 0) AS BIGINT) AS b FROM volumes GROUP BY state",
        )
        .fetch_all(self.read())
        .await?;
        rows.iter()
            .map(|r| Ok((r.try_get("state")?, r.try_get("n")?, r.try_get("b")?)))
            .collect()
    }
}
