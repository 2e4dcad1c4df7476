//! `DELETE /workspaces/:id`: the confirmation gates, the cascade, and the one
//! place that may erase data.
//!
//! **Architecture Invariant:** [`Controller::finish_removal_locked`] is the only caller of
//! `ControlPlane::stop_and_prune`, and only for a workspace whose removal was
//! asked with `erase_data=true`. A test reads the source tree and fails if any
//! other call site appears.

use crate::Caller;
use crate::Controller;
use crate::error::Confirmed;
use crate::events::Event;
use crate::reconciler::{Lease, ReconcileResult};
use crate::{Error, Result};
use holdfast_domain::failpoint;
use holdfast_domain::{DataPersistence, Millis, Status, VolumeState, now_millis};
use holdfast_store::WorkspaceRow;
use serde_json::json;
use uuid::Uuid;

/// What the caller asked for, already parsed from the query and headers.
#[derive(Debug, Clone)]
pub struct DeleteRequest {
    pub confirm_name: Option<String>,
    pub confirm_children: bool,
    pub erase_data: bool,
}

/// What became of the named workspace's data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DataAfterDelete {
    /// Kept for the retention grace; a restore brings it back.
    Retained,
    /// To be erased after the erase grace; a restore within it cancels that.
    ErasePending,
    /// It had no durable data (an ephemeral workspace).
    None,
}

impl DataAfterDelete {
    pub fn as_str(self) -> &'static str {
        match self {
            DataAfterDelete::Retained => "retained",
            DataAfterDelete::ErasePending => "erase_pending",
            DataAfterDelete::None => "none",
        }
    }
}

/// The outcome of a delete.
#[derive(Debug, Clone)]
pub struct Deleted {
    /// How many workspaces were removed: the named one and its descendants.
    pub cascade_deleted: u64,
    pub data: DataAfterDelete,
    /// Until when a restore brings the data back, once known.
    pub restore_until: Option<Millis>,
}

/// A failed stop during a delete: reported, and finished later.
#[derive(Debug, Clone, serde::Serialize)]
pub struct StopFailure {
    pub workspace_id: Uuid,
    pub error: String,
}

impl Controller {
    /// Runs the checks of SPEC §5 in order, marks the workspace and its live
    /// descendants removed in one transaction, then stops their compute.
    #[tracing::instrument(skip_all, fields(workspace_id = %id, erase = req.erase_data))]
    pub async fn delete(&self, caller: &Caller, id: Uuid, req: DeleteRequest) -> Result<Deleted> {
        // Serialised per workspace: a delete that waited here sees the one
        // before it done, and answers 410 below.
        let _serial = self.destructive.lock(id).await;
        // 2. Missing, or in another org.
        let ws = self.load_managed(caller, id).await?;
        // 3. Already removed.
        if ws.is_removed() {
            return Err(Error::AlreadyRemoved);
        }
        let descendants = self.store.live_descendants(id).await?;
        let children: Vec<&WorkspaceRow> = descendants
            .iter()
            .filter(|d| d.parent_id == Some(id))
            .collect();
        // 4. The exact name, typed by the caller.
        if req.confirm_name.as_deref() != Some(ws.name.as_str()) {
            return Err(Error::NameNotConfirmed {
                what: Confirmed::Workspace,
                name: ws.name.clone(),
                child_count: Some(children.len()),
            });
        }
        // 5. Live children need confirm=true.
        if !children.is_empty() && !req.confirm_children {
            return Err(Error::ChildrenNotConfirmed {
                children: children.iter().map(|c| (c.id, c.name.clone())).collect(),
                cascade: false,
            });
        }

        // 6. A legal hold blocks every erasure of the cascade.
        if req.erase_data {
            let held = std::iter::once(&ws)
                .chain(descendants.iter())
                .find(|w| w.hold_at.is_some());
            if let Some(held) = held {
                return Err(Error::LegalHold {
                    id: held.id,
                    name: held.name.clone(),
                    on_delete: true,
                });
            }
        }

        // Ordering: every row is marked removed (and its tokens revoked) in one
        // transaction before any compute is stopped; a crash after this point
        // leaves removed rows whose stop the next start finishes.
        let mut ids = vec![id];
        ids.extend(descendants.iter().map(|d| d.id));
        // A compare-and-set on the named workspace: another replica's
        // delete that won in between makes this one a 410 too.
        let removed = self
            .store
            .remove_tree(id, &ids[1..], req.erase_data, &caller.actor(), now_millis())
            .await
            .map_err(|e| match e {
                holdfast_store::StoreError::WorkspaceRemoved(_) => Error::AlreadyRemoved,
                other => other.into(),
            })?;
        failpoint::hit("delete.after_mark");
        let actor = caller.actor();
        for wid in &ids {
            self.audit_ws(
                &actor,
                holdfast_domain::AuditAction::WorkspaceDeleted,
                *wid,
                Some(json!({"erase_data": req.erase_data})),
            )
            .await;
        }

        // Deepest first, so that no child outlives its parent's stop.
        let mut failures = Vec::new();
        let mut unreachable = true;
        for wid in ids.iter().rev() {
            let Some(row) = self.store.get_workspace(*wid).await? else {
                continue;
            };
            self.events
                .publish(Event::status(Status::Removed, row.id, row.org_id));
            if let Err(e) = self.finish_removal(&row, &actor).await {
                let e = Error::from(e);
                unreachable &= e.is_unavailable();
                failures.push(StopFailure {
                    workspace_id: *wid,
                    error: e.to_string(),
                });
            }
        }
        if !failures.is_empty() {
            // A control plane that does not answer (or another replica that
            // holds a workspace) is a passing state.
            return Err(Error::StopFailed {
                removed,
                failures,
                unavailable: unreachable,
            });
        }

        let volume = self.cp.volume(id).await?;
        let (data, restore_until) = match volume {
            Some(v) if v.state == VolumeState::ErasePending => {
                (DataAfterDelete::ErasePending, v.erase_after)
            }
            Some(v) if v.state == VolumeState::Retained => {
                (DataAfterDelete::Retained, v.retain_until)
            }
            _ => {
                let ephemeral = ws.resolved_mode.or(ws.compute.data_persistence)
                    == Some(DataPersistence::Ephemeral);
                if ephemeral || volume.is_none() {
                    (DataAfterDelete::None, None)
                } else if req.erase_data {
                    (DataAfterDelete::ErasePending, None)
                } else {
                    (DataAfterDelete::Retained, None)
                }
            }
        };
        Ok(Deleted {
            cascade_deleted: removed,
            data,
            restore_until,
        })
    }

    /// Stops a removed workspace's compute and settles its data: `retained`
    /// after a delete without erase, `erase_pending` after a delete with
    /// erase. Idempotent; the reconciler calls it again after a crash.
    pub(crate) async fn finish_removal(
        &self,
        ws: &WorkspaceRow,
        actor: &str,
    ) -> ReconcileResult<()> {
        let _guard = self.locks.lock(ws.id).await;
        let lease = self.lease_or_busy(ws.id).await?;
        // Read again under the lease: another replica may have finished it.
        let current = self.store.get_workspace(ws.id).await;
        let result = match current {
            Ok(Some(ws)) if !ws.compute_released => {
                self.finish_removal_locked(&ws, actor, &lease).await
            }
            Ok(_) => Ok(()),
            Err(e) => Err(e.into()),
        };
        self.release(lease).await;
        result
    }

    /// [`Controller::finish_removal`] for a caller that holds the workspace's lock
    /// and lease.
    pub(crate) async fn finish_removal_locked(
        &self,
        ws: &WorkspaceRow,
        actor: &str,
        lease: &Lease,
    ) -> ReconcileResult<()> {
        let instance = ws.instance_id.clone();
        if ws.delete_erase == Some(true) {
            self.cp
                .stop_and_prune(ws.id, instance.as_deref(), actor)
                .await?;
            self.store
                .mark_compute_released(ws.id, lease.fence())
                .await?;
            self.forget(ws.id);
            Ok(())
        } else {
            self.stop_and_retain_locked(ws, actor, lease).await
        }
    }

    /// Finishes a removal that was recorded without erase, as the org
    /// import's reconcile records every removal: stop the compute and keep
    /// the data `retained` for the retention grace. A row whose removal asked
    /// for erase is left alone: that is the delete flow's, through
    /// [`Controller::finish_removal`]. Idempotent, like it.
    pub(crate) async fn finish_retaining_removal(
        &self,
        id: Uuid,
        actor: &str,
    ) -> ReconcileResult<()> {
        let _guard = self.locks.lock(id).await;
        let lease = self.lease_or_busy(id).await?;
        let current = self.store.get_workspace(id).await;
        let result = match current {
            Ok(Some(ws))
                if ws.is_removed() && !ws.compute_released && ws.delete_erase == Some(false) =>
            {
                self.stop_and_retain_locked(&ws, actor, &lease).await
            }
            Ok(_) => Ok(()),
            Err(e) => Err(e.into()),
        };
        self.release(lease).await;
        result
    }

    /// The end of every removal without erase: stop (never prune), then keep
    /// the volume `retained`. The caller holds the workspace's lock and lease.
    async fn stop_and_retain_locked(
        &self,
        ws: &WorkspaceRow,
        actor: &str,
        lease: &Lease,
    ) -> ReconcileResult<()> {
        self.cp.stop(ws.id, ws.instance_id.as_deref()).await?;
        self.cp
            .retain_volume(
                ws.id,
                actor,
                holdfast_domain::VolumeReason::WorkspaceDeleted,
            )
            .await?;
        self.store
            .mark_compute_released(ws.id, lease.fence())
            .await?;
        self.forget(ws.id);
        Ok(())
    }
}
