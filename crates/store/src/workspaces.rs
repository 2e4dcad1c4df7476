//! Workspace rows: configuration, intent (`desired`, `generation`) and the last
//! observed status.

use crate::{Store, StoreError, StoreResult, parse_json, parse_opt_uuid, parse_text, parse_uuid};
use holdfast_domain::{
    Compute, DataPersistence, DesiredState, Env, Millis, Runtime, Status, StatusReason,
    StatusReasonKind, Tier,
};
use sqlx::Row;
use sqlx::any::AnyRow;
use uuid::Uuid;

#[derive(Debug, Clone, PartialEq)]
pub struct WorkspaceRow {
    pub id: Uuid,
    pub org_id: Uuid,
    pub name: String,
    pub role: Option<String>,
    pub parent_id: Option<Uuid>,
    pub tier: Tier,
    pub runtime: Runtime,
    pub env: Env,
    pub compute: Compute,
    /// The mode auto resolved to at the last provision (None before that).
    pub resolved_mode: Option<DataPersistence>,
    pub desired: DesiredState,
    pub generation: i64,
    pub status: Status,
    pub instance_id: Option<String>,
    pub url: Option<String>,
    /// Set when removed: whether the delete asked to erase the data.
    pub delete_erase: Option<bool>,
    /// False while a removed workspace's compute has not been stopped yet.
    pub compute_released: bool,
    /// The generation of intent the current instance was started for.
    pub instance_generation: Option<i64>,
    /// When the current instance was started.
    pub started_at: Option<Millis>,
    /// When its runtime last registered or heartbeated.
    pub last_heartbeat: Option<Millis>,
    /// Who asked for its removal.
    pub removed_by: Option<String>,
    /// How its last start was isolated and whether its limits applied, as
    /// the control plane reported (`bwrap`…, `enforced`/`none`).
    pub isolation: Option<String>,
    pub limits: Option<String>,
    /// Why its latest start failed, for its owner; `None` when it did not.
    pub failure: Option<String>,
    /// Why its compute does not run as asked, as the control plane last
    /// observed it; `None` when there is nothing to say.
    pub status_reason: Option<StatusReason>,
    /// A restore was asked for (by `restore_by`) and is not finished yet:
    /// the reconciler carries it out.
    pub restore_requested_at: Option<Millis>,
    pub restore_by: Option<String>,
    /// A legal hold (SPEC §15): why, by whom, since when.
    pub hold_reason: Option<String>,
    pub hold_by: Option<String>,
    pub hold_at: Option<Millis>,
    /// A clone's snapshot: its volume starts as that snapshot's content.
    pub seed_snapshot_id: Option<Uuid>,
    pub created_at: Millis,
    pub updated_at: Millis,
    pub removed_at: Option<Millis>,
}

impl WorkspaceRow {
    pub fn is_removed(&self) -> bool {
        self.removed_at.is_some()
    }

    pub(crate) fn from_row(row: &AnyRow) -> StoreResult<Self> {
        let delete_erase: Option<i64> = row.try_get("delete_erase")?;
        let compute_released: i64 = row.try_get("compute_released")?;
        let resolved: Option<String> = row.try_get("resolved_mode")?;
        Ok(WorkspaceRow {
            id: parse_uuid(row, "id")?,
            org_id: parse_uuid(row, "org_id")?,
            name: row.try_get("name")?,
            role: row.try_get("role")?,
            parent_id: parse_opt_uuid(row, "parent_id")?,
            tier: Tier::from_stored(row.try_get("tier")?),
            runtime: parse_json(row, "runtime")?,
            env: parse_json(row, "env")?,
            compute: parse_json(row, "compute")?,
            resolved_mode: resolved.and_then(|s| s.parse().ok()),
            desired: parse_text(row, "desired")?,
            generation: row.try_get("generation")?,
            status: parse_text(row, "status")?,
            instance_id: row.try_get("instance_id")?,
            url: row.try_get("url")?,
            delete_erase: delete_erase.map(|v| v != 0),
            compute_released: compute_released != 0,
            instance_generation: row.try_get("instance_generation")?,
            started_at: row.try_get("started_at")?,
            last_heartbeat: row.try_get("last_heartbeat")?,
            removed_by: row.try_get("removed_by")?,
            isolation: row.try_get("isolation")?,
            limits: row.try_get("limits")?,
            failure: row.try_get("failure")?,
            status_reason: {
                let kind: Option<StatusReasonKind> = crate::parse_opt_text(row, "status_reason")?;
                let message: Option<String> = row.try_get("status_reason_message")?;
                kind.map(|kind| StatusReason::new(kind, message.unwrap_or_default()))
            },
            restore_requested_at: row.try_get("restore_requested_at")?,
            restore_by: row.try_get("restore_by")?,
            hold_reason: row.try_get("hold_reason")?,
            hold_by: row.try_get("hold_by")?,
            hold_at: row.try_get("hold_at")?,
            seed_snapshot_id: parse_opt_uuid(row, "seed_snapshot_id")?,
            created_at: row.try_get("created_at")?,
            updated_at: row.try_get("updated_at")?,
            removed_at: row.try_get("removed_at")?,
        })
    }
}

/// A workspace to insert, already validated.
#[derive(Debug, Clone)]
pub struct NewWorkspace {
    pub id: Uuid,
    pub org_id: Uuid,
    pub name: String,
    pub role: Option<String>,
    pub parent_id: Option<Uuid>,
    pub tier: Tier,
    pub runtime: Runtime,
    pub env: Env,
    pub compute: Compute,
    /// A clone's snapshot (already checked to be of the same org).
    pub seed_snapshot_id: Option<Uuid>,
}

/// A validated change of configuration; `None` leaves a field as it is.
#[derive(Debug, Clone, Default)]
pub struct WorkspacePatch {
    pub name: Option<String>,
    /// `Some(None)` clears the role.
    pub role: Option<Option<String>>,
    pub tier: Option<Tier>,
    pub runtime: Option<Runtime>,
    pub env: Option<Env>,
    pub compute: Option<Compute>,
}

impl WorkspacePatch {
    pub fn is_empty(&self) -> bool {
        self.name.is_none()
            && self.role.is_none()
            && self.tier.is_none()
            && self.runtime.is_none()
            && self.env.is_none()
            && self.compute.is_none()
    }
}

/// What a start recorded on the row: the instance, the generation of intent
/// it was started for, the mode auto resolved to, and what the control
/// plane says the instance got (kept as before when it says nothing).
#[derive(Debug, Clone, Copy)]
pub struct Started<'a> {
    pub instance_id: &'a str,
    pub generation: i64,
    pub resolved_mode: DataPersistence,
    pub isolation: Option<&'a str>,
    pub limits: Option<&'a str>,
}

impl WorkspacePatch {
    /// Sets the fields this patch names on `ws`.
    pub(crate) fn apply_to(&self, ws: &mut WorkspaceRow) {
        if let Some(name) = &self.name {
            ws.name = name.clone();
        }
        if let Some(role) = &self.role {
            ws.role = role.clone();
        }
        if let Some(tier) = self.tier {
            ws.tier = tier;
        }
        if let Some(runtime) = &self.runtime {
            ws.runtime = runtime.clone();
        }
        if let Some(env) = &self.env {
            ws.env = env.clone();
        }
        if let Some(compute) = self.compute {
            ws.compute = compute;
        }
    }
}

/// Writes a row's configuration columns inside a transaction.
pub(crate) async fn write_config(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    ws: &WorkspaceRow,
    now: Millis,
) -> StoreResult<()> {
    sqlx::query(
        "UPDATE workspaces SET name = $2, role = $3, tier = $4, runtime = $5, env = $6, \
         compute = $7, updated_at = $8 WHERE id = $1",
    )
    .bind(ws.id.to_string())
    .bind(&ws.name)
    .bind(ws.role.clone())
    .bind(i64::from(ws.tier.get()))
    .bind(json(&ws.runtime))
    .bind(json(&ws.env))
    .bind(json(&ws.compute))
    .bind(now)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// The insert of a new workspace: intent `running`, status `provisioning`.
pub(crate) fn insert_query(
    ws: &NewWorkspace,
    now: Millis,
) -> sqlx::query::Query<'static, sqlx::Any, sqlx::any::AnyArguments<'static>> {
    sqlx::query(
        "INSERT INTO workspaces (id, org_id, name, role, parent_id, tier, runtime, env, compute, \
         desired, generation, status, compute_released, created_at, updated_at, seed_snapshot_id) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, 0, $11, 1, $12, $12, $13)",
    )
    .bind(ws.id.to_string())
    .bind(ws.org_id.to_string())
    .bind(ws.name.clone())
    .bind(ws.role.clone())
    .bind(ws.parent_id.map(|p| p.to_string()))
    .bind(i64::from(ws.tier.get()))
    .bind(json(&ws.runtime))
    .bind(json(&ws.env))
    .bind(json(&ws.compute))
    .bind(DesiredState::Running.as_str())
    .bind(Status::Provisioning.as_str())
    .bind(now)
    .bind(ws.seed_snapshot_id.map(|s| s.to_string()))
}

pub(crate) const COLUMNS: &str = "id, org_id, name, role, parent_id, tier, runtime, env, compute, \
    resolved_mode, desired, generation, status, instance_id, url, delete_erase, \
    compute_released, instance_generation, started_at, last_heartbeat, removed_by, isolation, limits, failure, status_reason, status_reason_message, restore_requested_at, restore_by, \
    hold_reason, hold_by, hold_at, seed_snapshot_id, created_at, updated_at, removed_at";

/// The fence of a workspace lease grant: see [`Store::try_lease_workspace`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fence(pub i64);

/// `sql` with the fence checked as parameter `$n` when there is one (bound
/// by [`bind_fence`]).
fn fenced(sql: &str, fence: Option<Fence>, n: usize) -> String {
    match fence {
        Some(_) => format!("{sql} AND lease_fence = ${n}"),
        None => sql.to_owned(),
    }
}

fn bind_fence<'q>(
    q: sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments<'q>>,
    fence: Option<Fence>,
) -> sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments<'q>> {
    match fence {
        Some(f) => q.bind(f.0),
        None => q,
    }
}

pub(crate) fn json(v: &impl serde::Serialize) -> String {
    serde_json::to_string(v).expect("domain types serialize")
}

impl Store {
    #[tracing::instrument(skip_all, name = "store.insert_workspace", fields(workspace_id = %ws.id))]
    pub async fn insert_workspace(
        &self,
        ws: &NewWorkspace,
        now: Millis,
    ) -> StoreResult<WorkspaceRow> {
        insert_query(ws, now).execute(&*self.write()).await?;
        // Built from what was written rather than read back: create is on
        // the path measured by the create → online benchmark.
        Ok(WorkspaceRow {
            id: ws.id,
            org_id: ws.org_id,
            name: ws.name.clone(),
            role: ws.role.clone(),
            parent_id: ws.parent_id,
            tier: ws.tier,
            runtime: ws.runtime.clone(),
            env: ws.env.clone(),
            compute: ws.compute,
            resolved_mode: None,
            desired: DesiredState::Running,
            generation: 0,
            status: Status::Provisioning,
            instance_id: None,
            url: None,
            delete_erase: None,
            compute_released: true,
            instance_generation: None,
            started_at: None,
            last_heartbeat: None,
            removed_by: None,
            isolation: None,
            limits: None,
            failure: None,
            status_reason: None,
            restore_requested_at: None,
            restore_by: None,
            hold_reason: None,
            hold_by: None,
            hold_at: None,
            seed_snapshot_id: ws.seed_snapshot_id,
            created_at: now,
            updated_at: now,
            removed_at: None,
        })
    }

    #[tracing::instrument(skip_all, name = "store.get_workspace", fields(workspace_id = %id))]
    pub async fn get_workspace(&self, id: Uuid) -> StoreResult<Option<WorkspaceRow>> {
        if let Some(hit) = self.cache.get::<Option<WorkspaceRow>>(&id) {
            return Ok(hit);
        }
        let epoch = self.cache.begin_read();
        let row = sqlx::query(&format!("SELECT {COLUMNS} FROM workspaces WHERE id = $1"))
            .bind(id.to_string())
            .fetch_optional(self.read())
            .await?;
        let ws = row.as_ref().map(WorkspaceRow::from_row).transpose()?;
        self.cache.put(epoch, id, ws.clone());
        Ok(ws)
    }

    /// Workspaces, oldest first; `org` narrows to one org.
    #[tracing::instrument(skip_all, name = "store.list_workspaces")]
    pub async fn list_workspaces(
        &self,
        org: Option<Uuid>,
        include_removed: bool,
    ) -> StoreResult<Vec<WorkspaceRow>> {
        let mut sql = format!("SELECT {COLUMNS} FROM workspaces WHERE 1 = 1");
        if org.is_some() {
            sql.push_str(" AND org_id = $1");
        }
        if !include_removed {
            sql.push_str(" AND removed_at IS NULL");
        }
        sql.push_str(" ORDER BY created_at, id");
        let mut q = sqlx::query(&sql);
        if let Some(org) = org {
            q = q.bind(org.to_string());
        }
        let rows = q.fetch_all(self.read()).await?;
        rows.iter().map(WorkspaceRow::from_row).collect()
    }

    /// The ids of an org's workspaces, removed ones too.
    pub async fn workspace_ids_of_org(
        &self,
        org: Uuid,
    ) -> StoreResult<std::collections::HashSet<Uuid>> {
        let rows = sqlx::query("SELECT id FROM workspaces WHERE org_id = $1")
            .bind(org.to_string())
            .fetch_all(self.read())
            .await?;
        rows.iter().map(|r| parse_uuid(r, "id")).collect()
    }

    /// Live (not removed) descendants of `id`, nearest first.
    #[tracing::instrument(skip_all, name = "store.live_descendants", fields(workspace_id = %id))]
    pub async fn live_descendants(&self, id: Uuid) -> StoreResult<Vec<WorkspaceRow>> {
        let cols = COLUMNS
            .split(", ")
            .map(|c| format!("w.{c}"))
            .collect::<Vec<_>>()
            .join(", ");
        let sql = format!(
            "WITH RECURSIVE tree(id, depth) AS ( \
                 SELECT id, 1 FROM workspaces WHERE parent_id = $1 AND removed_at IS NULL \
                 UNION \
                 SELECT w.id, tree.depth + 1 FROM workspaces w JOIN tree ON w.parent_id = tree.id \
                 WHERE w.removed_at IS NULL AND tree.depth < 1000 \
             ) \
             SELECT {cols} FROM workspaces w JOIN tree ON w.id = tree.id \
             ORDER BY tree.depth, w.created_at"
        );
        let rows = sqlx::query(&sql)
            .bind(id.to_string())
            .fetch_all(self.read())
            .await?;
        rows.iter().map(WorkspaceRow::from_row).collect()
    }

    /// Applies a configuration change. Returns the updated row.
    #[tracing::instrument(skip_all, name = "store.patch_workspace", fields(workspace_id = %id))]
    pub async fn patch_workspace(
        &self,
        id: Uuid,
        patch: &WorkspacePatch,
        now: Millis,
    ) -> StoreResult<WorkspaceRow> {
        let written = self.write();
        let mut tx = written.begin().await?;
        let row = sqlx::query(&format!("SELECT {COLUMNS} FROM workspaces WHERE id = $1"))
            .bind(id.to_string())
            .fetch_optional(&mut *tx)
            .await?;
        let mut ws = row
            .as_ref()
            .map(WorkspaceRow::from_row)
            .transpose()?
            .ok_or(StoreError::NotFound)?;
        if ws.is_removed() {
            return Err(StoreError::WorkspaceRemoved(id));
        }
        patch.apply_to(&mut ws);
        write_config(&mut tx, &ws, now).await?;
        tx.commit().await?;
        ws.updated_at = now;
        Ok(ws)
    }

    /// Records a started instance: its id, the generation of intent it was
    /// started for, when, and the mode its data resolved to. What any replica
    /// needs to know that it runs.
    #[tracing::instrument(skip_all, name = "store.record_started", fields(workspace_id = %id, status = %status))]
    pub async fn record_started(
        &self,
        id: Uuid,
        fence: Option<Fence>,
        status: Status,
        started: Started<'_>,
        now: Millis,
    ) -> StoreResult<()> {
        let Started {
            instance_id,
            generation,
            resolved_mode,
            isolation,
            limits,
        } = started;
        let sql = fenced(
            "UPDATE workspaces SET status = $2, instance_id = $3, instance_generation = $4, \
             resolved_mode = $5, started_at = $6, last_heartbeat = NULL, updated_at = $6, \
             isolation = COALESCE($7, isolation), limits = COALESCE($8, limits) \
             WHERE id = $1 AND removed_at IS NULL",
            fence,
            9,
        );
        let done = bind_fence(
            sqlx::query(&sql)
                .bind(id.to_string())
                .bind(status.as_str())
                .bind(instance_id.to_owned())
                .bind(generation)
                .bind(resolved_mode.as_str())
                .bind(now)
                .bind(isolation.map(str::to_owned))
                .bind(limits.map(str::to_owned)),
            fence,
        )
        .execute(&*self.write())
        .await?;
        self.check_fence(id, fence, done.rows_affected()).await
    }

    /// Records that the workspace's instance is gone (stopped or exited).
    #[tracing::instrument(skip_all, name = "store.record_stopped", fields(workspace_id = %id, status = %status))]
    pub async fn record_stopped(
        &self,
        id: Uuid,
        fence: Option<Fence>,
        status: Status,
        now: Millis,
    ) -> StoreResult<()> {
        let sql = fenced(
            "UPDATE workspaces SET status = $2, instance_id = NULL, instance_generation = NULL, url = NULL, \
             started_at = NULL, last_heartbeat = NULL, status_reason = NULL, status_reason_message = NULL, \
             updated_at = $3 WHERE id = $1 AND removed_at IS NULL",
            fence,
            4,
        );
        let done = bind_fence(
            sqlx::query(&sql)
                .bind(id.to_string())
                .bind(status.as_str())
                .bind(now),
            fence,
        )
        .execute(&*self.write())
        .await?;
        self.check_fence(id, fence, done.rows_affected()).await
    }

    /// A fenced write that changed nothing: refused with
    /// [`StoreError::Fenced`] when the lease moved on, fine otherwise (the
    /// row is removed, or gone).
    async fn check_fence(&self, id: Uuid, fence: Option<Fence>, rows: u64) -> StoreResult<()> {
        let Some(fence) = fence.filter(|_| rows == 0) else {
            return Ok(());
        };
        let current: Option<i64> =
            sqlx::query_scalar("SELECT lease_fence FROM workspaces WHERE id = $1")
                .bind(id.to_string())
                .fetch_optional(self.read())
                .await?;
        match current {
            Some(c) if c != fence.0 => Err(StoreError::Fenced(id)),
            _ => Ok(()),
        }
    }

    /// A runtime registered: where it listens, and a first heartbeat.
    pub async fn record_registered(&self, id: Uuid, url: &str, now: Millis) -> StoreResult<()> {
        sqlx::query("UPDATE workspaces SET url = $2, last_heartbeat = $3 WHERE id = $1 AND removed_at IS NULL")
            .bind(id.to_string())
            .bind(url.to_owned())
            .bind(now)
            .execute(&*self.write())
            .await?;
        Ok(())
    }

    /// A runtime's heartbeat.
    pub async fn record_heartbeat(&self, id: Uuid, now: Millis) -> StoreResult<()> {
        sqlx::query(
            "UPDATE workspaces SET last_heartbeat = $2 WHERE id = $1 AND removed_at IS NULL",
        )
        .bind(id.to_string())
        .bind(now)
        .execute(&*self.write())
        .await?;
        Ok(())
    }

    /// Takes the lease on a workspace for `holder` until `until`: granted
    /// when nobody holds it, `holder` already does, or the previous
    /// holder's lease ran out (a replica that died). One replica at a time
    /// acts on a workspace's compute. Every grant moves the fence on and
    /// returns it: writes of observed state carry it, and a holder whose
    /// lease was taken over can no longer write.
    pub async fn try_lease_workspace(
        &self,
        id: Uuid,
        holder: &str,
        until: Millis,
        now: Millis,
    ) -> StoreResult<Option<Fence>> {
        let fence: Option<i64> = sqlx::query_scalar(
            "UPDATE workspaces SET lease_holder = $2, lease_until = $3, lease_fence = lease_fence + 1 \
             WHERE id = $1 AND (lease_holder IS NULL OR lease_holder = $2 OR lease_until IS NULL OR lease_until < $4) \
             RETURNING lease_fence",
        )
        .bind(id.to_string())
        .bind(holder.to_owned())
        .bind(until)
        .bind(now)
        .fetch_optional(&*self.write())
        .await?;
        Ok(fence.map(Fence))
    }

    /// Extends a lease its holder still has (same fence) to `until`; false
    /// when it was lost.
    pub async fn renew_workspace_lease(
        &self,
        id: Uuid,
        holder: &str,
        fence: Fence,
        until: Millis,
    ) -> StoreResult<bool> {
        let done = sqlx::query(
            "UPDATE workspaces SET lease_until = $3 \
             WHERE id = $1 AND lease_holder = $2 AND lease_fence = $4",
        )
        .bind(id.to_string())
        .bind(holder.to_owned())
        .bind(until)
        .bind(fence.0)
        .execute(&*self.write())
        .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Gives the lease up; the fence moves on, so a write that comes late
    /// with the old one is refused.
    pub async fn release_workspace_lease(
        &self,
        id: Uuid,
        holder: &str,
        fence: Fence,
    ) -> StoreResult<()> {
        sqlx::query(
            "UPDATE workspaces SET lease_holder = NULL, lease_until = NULL, lease_fence = lease_fence + 1 \
             WHERE id = $1 AND lease_holder = $2 AND lease_fence = $3",
        )
        .bind(id.to_string())
        .bind(holder.to_owned())
        .bind(fence.0)
        .execute(&*self.write())
        .await?;
        Ok(())
    }

    /// Takes (or renews) a named lease (for example `sweeper`).
    pub async fn try_lease(
        &self,
        name: &str,
        holder: &str,
        until: Millis,
        now: Millis,
    ) -> StoreResult<bool> {
        let done = sqlx::query(
            "INSERT INTO leases (name, holder, expires_at) VALUES ($1, $2, $3) \
             ON CONFLICT (name) DO UPDATE SET holder = $2, expires_at = $3 \
             WHERE leases.holder = $2 OR leases.expires_at < $4",
        )
        .bind(name.to_owned())
        .bind(holder.to_owned())
        .bind(until)
        .bind(now)
        .execute(&*self.write())
        .await?;
        Ok(done.rows_affected() == 1)
    }

    pub async fn release_lease(&self, name: &str, holder: &str) -> StoreResult<()> {
        sqlx::query("DELETE FROM leases WHERE name = $1 AND holder = $2")
            .bind(name.to_owned())
            .bind(holder.to_owned())
            .execute(&*self.write())
            .await?;
        Ok(())
    }

    /// Records a new desired state for every workspace of `ids` (one, or a
    /// cascade), bumping each generation so that the reconciler sees a
    /// restart even when the state itself is unchanged, with one audit event
    /// `action` per workspace: all in one transaction, so a crash leaves
    /// the whole intent or none of it. [`StoreError::WorkspaceRemoved`] (and
    /// nothing written) if one of them is removed.
    #[tracing::instrument(skip_all, name = "store.set_desired", fields(count = ids.len(), desired = %desired))]
    pub async fn set_desired(
        &self,
        ids: &[Uuid],
        desired: DesiredState,
        actor: &str,
        action: holdfast_domain::AuditAction,
        detail: Option<serde_json::Value>,
        now: Millis,
    ) -> StoreResult<()> {
        let written = self.write();
        let mut tx = written.begin().await?;
        for id in ids {
            let done = sqlx::query(
                "UPDATE workspaces SET desired = $2, generation = generation + 1, updated_at = $3 \
                 WHERE id = $1 AND removed_at IS NULL",
            )
            .bind(id.to_string())
            .bind(desired.as_str())
            .bind(now)
            .execute(&mut *tx)
            .await?;
            if done.rows_affected() != 1 {
                // Dropped without commit: rolled back.
                return Err(StoreError::WorkspaceRemoved(*id));
            }
            crate::audit::insert_audit(
                &mut tx,
                &crate::NewAuditEvent {
                    actor: actor.to_owned(),
                    action,
                    workspace_id: Some(*id),
                    volume_id: None,
                    reason: None,
                    detail: detail.clone(),
                },
                now,
            )
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Marks `ids` removed in one transaction, with the erase choice, and
    /// revokes their tokens (the token hash on the row is cleared). Rows already removed are left as they are.
    ///
    /// Ordering: this runs before any compute is stopped, so that a crash
    /// between the two leaves workspaces that are removed in intent and are
    /// stopped by the reconciler, never running workspaces that were asked to
    /// go away.
    #[tracing::instrument(skip_all, name = "store.mark_removed", fields(count = ids.len()))]
    pub async fn mark_removed(
        &self,
        ids: &[Uuid],
        erase: bool,
        actor: &str,
        now: Millis,
    ) -> StoreResult<u64> {
        let written = self.write();
        let mut tx = written.begin().await?;
        let mut n = 0;
        for id in ids {
            n += mark_one_removed(&mut tx, *id, erase, actor, now).await?;
        }
        tx.commit().await?;
        Ok(n)
    }

    /// [`Store::mark_removed`] for a delete of `root` and its live
    /// `descendants`, as a compare-and-set on `root`: when `root` is
    /// already removed nothing changes and the answer is
    /// [`StoreError::WorkspaceRemoved`]. Of several deletes of one workspace at once,
    /// on one server or on replicas sharing a database, exactly one wins.
    #[tracing::instrument(skip_all, name = "store.remove_tree", fields(workspace_id = %root))]
    pub async fn remove_tree(
        &self,
        root: Uuid,
        descendants: &[Uuid],
        erase: bool,
        actor: &str,
        now: Millis,
    ) -> StoreResult<u64> {
        let written = self.write();
        let mut tx = written.begin().await?;
        if mark_one_removed(&mut tx, root, erase, actor, now).await? == 0 {
            // Dropped without commit: rolled back.
            return Err(StoreError::WorkspaceRemoved(root));
        }
        let mut n = 1;
        for id in descendants {
            n += mark_one_removed(&mut tx, *id, erase, actor, now).await?;
        }
        tx.commit().await?;
        Ok(n)
    }

    /// Records that a removed workspace's compute has been stopped.
    pub async fn mark_compute_released(&self, id: Uuid, fence: Option<Fence>) -> StoreResult<()> {
        let sql = fenced(
            "UPDATE workspaces SET compute_released = 1, instance_id = NULL, instance_generation = NULL, \
             url = NULL, started_at = NULL, last_heartbeat = NULL, status_reason = NULL, \
             status_reason_message = NULL WHERE id = $1",
            fence,
            2,
        );
        let done = bind_fence(sqlx::query(&sql).bind(id.to_string()), fence)
            .execute(&*self.write())
            .await?;
        self.check_fence(id, fence, done.rows_affected()).await
    }

    /// Removed workspaces with nothing left to do: compute stopped, no
    /// restore asked for.
    pub async fn settled_removed_ids(&self) -> StoreResult<std::collections::HashSet<Uuid>> {
        let rows = sqlx::query(
            "SELECT id FROM workspaces WHERE removed_at IS NOT NULL AND compute_released = 1 \
             AND restore_requested_at IS NULL",
        )
        .fetch_all(self.read())
        .await?;
        rows.iter().map(|r| crate::parse_uuid(r, "id")).collect()
    }

    /// Removed workspaces with something left to do: a compute stop that
    /// has not completed, or a restore asked for and not finished.
    pub async fn unreleased_removed(&self) -> StoreResult<Vec<WorkspaceRow>> {
        let rows = sqlx::query(&format!(
            "SELECT {COLUMNS} FROM workspaces WHERE removed_at IS NOT NULL \
             AND (compute_released = 0 OR restore_requested_at IS NOT NULL)"
        ))
        .fetch_all(self.read())
        .await?;
        rows.iter().map(WorkspaceRow::from_row).collect()
    }
}

impl Store {
    /// Records a failed start: status `failed` and why, in a sentence for
    /// the workspace's owner.
    #[tracing::instrument(skip_all, name = "store.record_failure", fields(workspace_id = %id))]
    pub async fn record_failure(
        &self,
        id: Uuid,
        fence: Option<Fence>,
        why: &str,
        now: Millis,
    ) -> StoreResult<()> {
        let sql = fenced(
            "UPDATE workspaces SET status = $2, failure = $3, updated_at = $4 \
             WHERE id = $1 AND removed_at IS NULL",
            fence,
            5,
        );
        let done = bind_fence(
            sqlx::query(&sql)
                .bind(id.to_string())
                .bind(Status::Failed.as_str())
                .bind(why.to_owned())
                .bind(now),
            fence,
        )
        .execute(&*self.write())
        .await?;
        self.check_fence(id, fence, done.rows_affected()).await
    }

    /// Records why the workspace's compute does not run as asked (`None`:
    /// it does now, or nothing is known), as the control plane observed it.
    #[tracing::instrument(skip_all, name = "store.record_status_reason", fields(workspace_id = %id))]
    pub async fn record_status_reason(
        &self,
        id: Uuid,
        fence: Option<Fence>,
        reason: Option<&StatusReason>,
        now: Millis,
    ) -> StoreResult<()> {
        let sql = fenced(
            "UPDATE workspaces SET status_reason = $2, status_reason_message = $3, updated_at = $4 \
             WHERE id = $1 AND removed_at IS NULL",
            fence,
            5,
        );
        let done = bind_fence(
            sqlx::query(&sql)
                .bind(id.to_string())
                .bind(reason.map(|r| r.kind.as_str().to_owned()))
                .bind(reason.map(|r| r.message.clone()))
                .bind(now),
            fence,
        )
        .execute(&*self.write())
        .await?;
        self.check_fence(id, fence, done.rows_affected()).await
    }

    /// Records a status change alone (the instance and URL stay as they are).
    #[tracing::instrument(skip_all, name = "store.set_status", fields(workspace_id = %id, status = %status))]
    pub async fn set_status(
        &self,
        id: Uuid,
        fence: Option<Fence>,
        status: Status,
        now: Millis,
    ) -> StoreResult<()> {
        let sql = fenced(
            "UPDATE workspaces SET status = $2, updated_at = $3 WHERE id = $1 AND removed_at IS NULL",
            fence,
            4,
        );
        let done = bind_fence(
            sqlx::query(&sql)
                .bind(id.to_string())
                .bind(status.as_str())
                .bind(now),
            fence,
        )
        .execute(&*self.write())
        .await?;
        self.check_fence(id, fence, done.rows_affected()).await
    }
}

impl Store {
    /// Records that a restore of a removed workspace is asked for: the
    /// intent that [`Store::unremove_workspace`] completes. Asking again is
    /// harmless. [`StoreError::WorkspaceNotRemoved`] if it is live.
    #[tracing::instrument(skip_all, name = "store.request_restore", fields(workspace_id = %id))]
    pub async fn request_restore(&self, id: Uuid, actor: &str, now: Millis) -> StoreResult<()> {
        let done = sqlx::query(
            "UPDATE workspaces SET restore_requested_at = COALESCE(restore_requested_at, $2), \
             restore_by = $3, updated_at = $2 WHERE id = $1 AND removed_at IS NOT NULL",
        )
        .bind(id.to_string())
        .bind(now)
        .bind(actor.to_owned())
        .execute(&*self.write())
        .await?;
        if done.rows_affected() != 1 {
            return Err(StoreError::WorkspaceNotRemoved(id));
        }
        Ok(())
    }

    /// Withdraws a restore request that cannot be carried out (the data is
    /// erased, or the parent is removed again); the row stays removed.
    pub async fn cancel_restore(&self, id: Uuid, now: Millis) -> StoreResult<()> {
        sqlx::query(
            "UPDATE workspaces SET restore_requested_at = NULL, restore_by = NULL, updated_at = $2 \
             WHERE id = $1 AND removed_at IS NOT NULL",
        )
        .bind(id.to_string())
        .bind(now)
        .execute(&*self.write())
        .await?;
        Ok(())
    }

    /// Brings a removed workspace back: live again, intent `running`, a new
    /// generation, the restore request done, and its `workspace.restored`
    /// audit event, in one transaction. A compare-and-set on `removed`:
    /// [`StoreError::WorkspaceNotRemoved`] if another restore won.
    #[tracing::instrument(skip_all, name = "store.unremove_workspace", fields(workspace_id = %id))]
    pub async fn unremove_workspace(&self, id: Uuid, actor: &str, now: Millis) -> StoreResult<()> {
        let written = self.write();
        let mut tx = written.begin().await?;
        let done = sqlx::query(
            "UPDATE workspaces SET removed_at = NULL, status = $2, desired = $3, delete_erase = NULL, \
             compute_released = 1, instance_id = NULL, instance_generation = NULL, url = NULL, \
             started_at = NULL, last_heartbeat = NULL, generation = generation + 1, \
             restore_requested_at = NULL, restore_by = NULL, updated_at = $4 \
             WHERE id = $1 AND removed_at IS NOT NULL",
        )
        .bind(id.to_string())
        .bind(Status::Provisioning.as_str())
        .bind(DesiredState::Running.as_str())
        .bind(now)
        .execute(&mut *tx)
        .await?;
        if done.rows_affected() != 1 {
            return Err(StoreError::WorkspaceNotRemoved(id));
        }
        crate::audit::insert_audit(
            &mut tx,
            &crate::NewAuditEvent {
                actor: actor.to_owned(),
                action: holdfast_domain::AuditAction::WorkspaceRestored,
                workspace_id: Some(id),
                volume_id: None,
                reason: None,
                detail: None,
            },
            now,
        )
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Workspaces per status, for metrics.
    pub async fn count_workspaces_by_status(&self) -> StoreResult<Vec<(String, i64)>> {
        let rows = sqlx::query("SELECT status, COUNT(*) AS n FROM workspaces GROUP BY status")
            .fetch_all(self.read())
            .await?;
        rows.iter()
            .map(|r| Ok((r.try_get("status")?, r.try_get("n")?)))
            .collect()
    }
}

impl Store {
    /// Before a start: the new instance's token replaces the previous one
    /// (which stops working at once), the registered URL is cleared, and the
    /// status is recorded. One statement on the start path.
    #[tracing::instrument(skip_all, name = "store.begin_start", fields(workspace_id = %id))]
    pub async fn begin_start(
        &self,
        id: Uuid,
        fence: Option<Fence>,
        token_hash: &str,
        status: Status,
        now: Millis,
    ) -> StoreResult<()> {
        let sql = fenced(
            "UPDATE workspaces SET token_hash = $2, url = NULL, status = $3, failure = NULL, \
             status_reason = NULL, status_reason_message = NULL, updated_at = $4 \
             WHERE id = $1 AND removed_at IS NULL",
            fence,
            5,
        );
        let done = bind_fence(
            sqlx::query(&sql)
                .bind(id.to_string())
                .bind(token_hash.to_owned())
                .bind(status.as_str())
                .bind(now),
            fence,
        )
        .execute(&*self.write())
        .await?;
        self.check_fence(id, fence, done.rows_affected()).await
    }

    /// The live workspace whose current token hashes to `hash`.
    pub async fn workspace_by_token(&self, hash: &str) -> StoreResult<Option<(Uuid, Uuid)>> {
        use crate::cache::{TokenKind, TokenOwner};
        let key = (hash.to_owned(), TokenKind::Workspace);
        let owner = match self.cache.get::<TokenOwner>(&key) {
            Some(hit) => hit,
            None => {
                let epoch = self.cache.begin_read();
                let row = sqlx::query(
                    "SELECT id, org_id FROM workspaces WHERE token_hash = $1 AND removed_at IS NULL",
                )
                .bind(hash.to_owned())
                .fetch_optional(self.read())
                .await?;
                let owner = match row {
                    Some(r) => TokenOwner::Workspace {
                        id: crate::parse_uuid(&r, "id")?,
                        org: crate::parse_uuid(&r, "org_id")?,
                    },
                    None => TokenOwner::Nobody,
                };
                self.cache.put(epoch, key, owner);
                owner
            }
        };
        Ok(match owner {
            TokenOwner::Workspace { id, org } => Some((id, org)),
            _ => None,
        })
    }
}

impl Store {
    /// Live workspaces the reconciler may have to act on: all but those
    /// whose intent is a stop (paused, hibernated) that is already carried
    /// out. Those are the bulk of a large, mostly idle install, and skipping
    /// them in SQL keeps a pass cheap.
    #[tracing::instrument(skip_all, name = "store.reconcile_candidates")]
    pub async fn reconcile_candidates(&self) -> StoreResult<Vec<WorkspaceRow>> {
        let rows = sqlx::query(&format!(
            "SELECT {COLUMNS} FROM workspaces WHERE removed_at IS NULL \
             AND NOT (desired IN ('paused', 'hibernated') AND instance_id IS NULL AND status = desired)"
        ))
        .fetch_all(self.read())
        .await?;
        rows.iter().map(WorkspaceRow::from_row).collect()
    }
}

/// Marks one live row removed (see [`Store::mark_removed`]); 0 rows when it
/// already was.
async fn mark_one_removed(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    id: Uuid,
    erase: bool,
    actor: &str,
    now: Millis,
) -> StoreResult<u64> {
    let done = sqlx::query(
        "UPDATE workspaces SET removed_at = $2, status = $3, desired = $4, \
         delete_erase = $5, compute_released = 0, token_hash = NULL, removed_by = $6, \
         updated_at = $2 WHERE id = $1 AND removed_at IS NULL",
    )
    .bind(id.to_string())
    .bind(now)
    .bind(Status::Removed.as_str())
    .bind(DesiredState::Removed.as_str())
    .bind(i64::from(erase))
    .bind(actor.to_owned())
    .execute(&mut **tx)
    .await?;
    Ok(done.rows_affected())
}
