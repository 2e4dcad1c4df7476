//! Snapshots, rollback, legal hold and snapshot schedules: the checks in
//! their order, and the sweeper's schedule step.
//!
//! The content lives with the control plane (its repository); the
//! controller decides who may do what: another org's snapshot is not
//! found, a held workspace's snapshot cannot be deleted (`legal_hold`), a
//! rollback takes its `before-rollback` snapshot first.

use crate::error::Confirmed;
use crate::{Caller, Controller, Error, Resource, Result};
use holdfast_cp::sweep::SweepItem;
use holdfast_cp::{CpError, SnapshotInfo, SnapshotRemoval, SnapshotRequest};
use holdfast_domain::{
    AuditAction, DataPersistence, DesiredState, SnapshotState, SweepAction, SweepOutcome,
    VolumeReason, failpoint, now_millis,
};
use holdfast_store::WorkspaceRow;
use uuid::Uuid;

pub const BEFORE_ROLLBACK: &str = "before-rollback";
/// The label of the snapshots a schedule takes (the only ones it prunes).
pub const SCHEDULED: &str = "scheduled";

fn legal_hold(ws: &WorkspaceRow) -> Error {
    Error::LegalHold {
        id: ws.id,
        name: ws.name.clone(),
        on_delete: false,
    }
}

/// A rollback's outcome: the workspace on its restored data, the snapshot
/// of the data it had before, and the snapshot it rolled back to.
#[derive(Debug, Clone)]
pub struct RolledBack {
    pub workspace: WorkspaceRow,
    pub before_rollback: SnapshotInfo,
    pub restored: SnapshotInfo,
}

impl Controller {
    /// A snapshot the caller may see; another org's is 404.
    /// A workspace's snapshots, newest last.
    pub async fn snapshots(&self, caller: &Caller, id: Uuid) -> Result<Vec<SnapshotInfo>> {
        let ws = self.load_managed(caller, id).await?;
        Ok(self.cp.snapshots(ws.id).await?)
    }

    /// A snapshot's content as a `.tar.gz` stream.
    pub async fn export_snapshot(
        &self,
        caller: &Caller,
        sid: Uuid,
    ) -> Result<holdfast_cp::export::ByteStream> {
        let snap = self.snapshot(caller, sid).await?;
        Ok(self.cp.export_snapshot(snap.id).await?)
    }

    /// A snapshot the caller may see; another org's (or one still being
    /// captured) is not found.
    pub async fn snapshot(&self, caller: &Caller, sid: Uuid) -> Result<SnapshotInfo> {
        match self.cp.snapshot(sid).await? {
            Some(s) if caller.manages_org(s.org_id) && s.state != SnapshotState::Capturing => Ok(s),
            _ => Err(Error::NotFound(Resource::Snapshot)),
        }
    }

    #[tracing::instrument(skip_all, fields(workspace_id = %id))]
    pub async fn take_snapshot(
        &self,
        caller: &Caller,
        id: Uuid,
        label: Option<String>,
    ) -> Result<SnapshotInfo> {
        let ws = self.load_managed(caller, id).await?;
        if ws.is_removed() {
            return Err(Error::WorkspaceRemoved);
        }
        self.snapshot_of(&ws, label, &caller.actor()).await
    }

    async fn snapshot_of(
        &self,
        ws: &WorkspaceRow,
        label: Option<String>,
        actor: &str,
    ) -> Result<SnapshotInfo> {
        if ws.resolved_mode.or(ws.compute.data_persistence) == Some(DataPersistence::Ephemeral) {
            return Err(Error::NoDurableData);
        }
        Ok(self
            .cp
            .create_snapshot(SnapshotRequest {
                org_id: ws.org_id,
                workspace_id: ws.id,
                label,
                actor: actor.to_owned(),
            })
            .await?)
    }

    /// Rollback: the current data is kept as a `before-rollback` snapshot,
    /// the snapshot's content swapped in by the control plane while the
    /// workspace is stopped, then a new generation of its intent starts it
    /// on that data.
    #[tracing::instrument(skip_all, fields(workspace_id = %id, snapshot_id = %sid))]
    pub async fn rollback(&self, caller: &Caller, id: Uuid, sid: Uuid) -> Result<RolledBack> {
        // Serialised with deletes and restores of the workspace.
        let _serial = self.destructive.lock(id).await;
        let ws = self.load_managed(caller, id).await?;
        if ws.is_removed() {
            return Err(Error::WorkspaceRemoved);
        }
        let target = match self.cp.snapshot(sid).await? {
            Some(s) if caller.manages_org(s.org_id) => s,
            _ => return Err(Error::NotFound(Resource::Snapshot)),
        };
        if target.workspace_id != id {
            return Err(Error::InvalidField {
                field: "snapshot_id",
                message: "a snapshot of another workspace; a workspace rolls back only to its own \
                          snapshots (clone the other one with from_snapshot instead)"
                    .to_owned(),
            });
        }
        if target.state != SnapshotState::Ready {
            return Err(Error::SnapshotNotReady {
                state: target.state,
                use_: "rolled back to",
            });
        }
        let actor = caller.actor();
        // Ordering: nothing is lost: the data as it is now is a snapshot
        // before anything replaces it.
        let before = self
            .snapshot_of(&ws, Some(BEFORE_ROLLBACK.to_owned()), &actor)
            .await?;
        failpoint::hit("rollback.after_snapshot");
        {
            let _guard = self.locks.lock(id).await;
            let lease = self.lease_or_busy(id).await?;
            let current = self
                .store
                .get_workspace(id)
                .await?
                .ok_or_else(|| Error::NotFound(Resource::Workspace))?;
            let done = self
                .cp
                .rollback(id, sid, current.instance_id.as_deref())
                .await;
            let desired = match current.desired {
                DesiredState::Removed => DesiredState::Running,
                d => d,
            };
            // A new generation of the same intent: the reconciler starts it
            // again on the new data (a paused workspace stays paused).
            let recorded = match &done {
                Ok(()) => self
                    .store
                    .set_desired(
                        &[id],
                        desired,
                        &actor,
                        AuditAction::WorkspaceRolledBack,
                        Some(serde_json::json!({
                            "snapshot_id": sid, "before_rollback": before.id,
                        })),
                        now_millis(),
                    )
                    .await
                    .map_err(Error::from),
                Err(_) => Ok(()),
            };
            self.release(lease).await;
            done?;
            recorded?;
        }
        self.reconcile(id).await?;
        let ws = self
            .store
            .get_workspace(id)
            .await?
            .ok_or_else(|| Error::NotFound(Resource::Workspace))?;
        Ok(RolledBack {
            workspace: ws,
            before_rollback: before,
            restored: target,
        })
    }

    pub async fn delete_snapshot(
        &self,
        caller: &Caller,
        sid: Uuid,
        confirm_name: Option<&str>,
    ) -> Result<SnapshotInfo> {
        let snap = self.snapshot(caller, sid).await?;
        let _serial = self.destructive.lock(snap.workspace_id).await;
        let ws = self.store.get_workspace(snap.workspace_id).await?;
        let name = ws.as_ref().map(|w| w.name.clone()).unwrap_or_default();
        if confirm_name != Some(name.as_str()) {
            return Err(Error::NameNotConfirmed {
                what: Confirmed::Snapshot,
                name,
                child_count: None,
            });
        }
        if snap.state == SnapshotState::Erased {
            return Err(Error::SnapshotDeleted);
        }
        if let Some(ws) = &ws
            && ws.hold_at.is_some()
        {
            return Err(legal_hold(ws));
        }
        Ok(self
            .cp
            .delete_snapshot(sid, &caller.actor(), SnapshotRemoval::Deleted)
            .await?)
    }

    pub async fn place_hold(
        &self,
        caller: &Caller,
        id: Uuid,
        reason: String,
    ) -> Result<WorkspaceRow> {
        if *caller != Caller::Admin {
            return Err(Error::NotFound(Resource::Route));
        }
        let ws = self.load_managed(caller, id).await?;
        self.store
            .place_hold(ws.id, &reason, &caller.actor(), now_millis())
            .await?;
        self.store
            .get_workspace(id)
            .await?
            .ok_or_else(|| Error::NotFound(Resource::Workspace))
    }

    pub async fn release_hold(&self, caller: &Caller, id: Uuid) -> Result<WorkspaceRow> {
        if *caller != Caller::Admin {
            return Err(Error::NotFound(Resource::Route));
        }
        let ws = self.load_managed(caller, id).await?;
        if !self
            .store
            .release_hold(ws.id, &caller.actor(), now_millis())
            .await?
        {
            return Err(Error::NotHeld);
        }
        self.store
            .get_workspace(id)
            .await?
            .ok_or_else(|| Error::NotFound(Resource::Workspace))
    }

    /// The sweeper's schedule step: for every live workspace with
    /// `compute.snapshots`, a `scheduled` snapshot when one is due, then
    /// the scheduled snapshots its keep policy no longer keeps deleted
    /// (never while it is held). Hand-made and `before-rollback`
    /// snapshots are never pruned.
    pub(crate) async fn run_schedules(&self, dry_run: bool, actor: &str) -> Result<Vec<SweepItem>> {
        let mut items = Vec::new();
        for ws in self.store.list_workspaces(None, false).await? {
            let Some(schedule) = ws.compute.snapshots else {
                continue;
            };
            if ws.resolved_mode.is_none()
                || ws.resolved_mode.or(ws.compute.data_persistence)
                    == Some(DataPersistence::Ephemeral)
            {
                continue;
            }
            let item = |action, snapshot_id, outcome, error: Option<String>| SweepItem {
                volume_id: None,
                snapshot_id,
                workspace_id: ws.id,
                action,
                reason: VolumeReason::Pruned,
                outcome,
                bytes: None,
                error,
            };
            let mut scheduled: Vec<SnapshotInfo> = match self.cp.snapshots(ws.id).await {
                Ok(list) => list
                    .into_iter()
                    .filter(|s| {
                        s.state == SnapshotState::Ready && s.label.as_deref() == Some(SCHEDULED)
                    })
                    .collect(),
                Err(CpError::SnapshotsUnavailable(_)) => return Ok(items),
                Err(e) => return Err(e.into()),
            };
            let newest = scheduled.iter().map(|s| s.at).max();
            let every = i64::try_from(schedule.every.as_millis()).unwrap_or(i64::MAX);
            if holdfast_domain::snapshot::due(newest, every, now_millis()) {
                if dry_run {
                    items.push(item(
                        SweepAction::Snapshot,
                        None,
                        SweepOutcome::Planned,
                        None,
                    ));
                } else {
                    match self
                        .snapshot_of(&ws, Some(SCHEDULED.to_owned()), actor)
                        .await
                    {
                        Ok(s) => {
                            items.push(item(
                                SweepAction::Snapshot,
                                Some(s.id),
                                SweepOutcome::Done,
                                None,
                            ));
                            scheduled.push(s);
                        }
                        Err(e) => {
                            tracing::warn!(workspace_id = %ws.id, error = %e, "scheduled snapshot failed");
                            items.push(item(
                                SweepAction::Snapshot,
                                None,
                                SweepOutcome::Failed,
                                Some(e.to_string()),
                            ));
                        }
                    }
                }
            }
            if ws.hold_at.is_some() {
                continue;
            }
            let times: Vec<(Uuid, i64)> = scheduled.iter().map(|s| (s.id, s.at)).collect();
            let kept = holdfast_domain::snapshot::kept(&times, &schedule.keep);
            for s in scheduled.iter().filter(|s| !kept.contains(&s.id)) {
                if dry_run {
                    items.push(item(
                        SweepAction::Prune,
                        Some(s.id),
                        SweepOutcome::Planned,
                        None,
                    ));
                    continue;
                }
                let outcome = match self
                    .cp
                    .delete_snapshot(s.id, actor, SnapshotRemoval::Pruned)
                    .await
                {
                    Ok(_) => (SweepOutcome::Done, None),
                    Err(CpError::Conflict(_)) => (SweepOutcome::Skipped, None),
                    Err(e) => (SweepOutcome::Failed, Some(e.to_string())),
                };
                items.push(item(SweepAction::Prune, Some(s.id), outcome.0, outcome.1));
            }
        }
        Ok(items)
    }
}
