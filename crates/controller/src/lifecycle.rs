//! Lifecycle operations on workspaces: create, patch, restart, pause,
//! resume, hibernate, wake. Each writes intent to the store, then asks the
//! reconciler to carry it out for that workspace (see `reconciler.rs`).
//!
//! **Architecture Invariant:** nothing in this module calls
//! `ControlPlane::stop_and_prune`; routine operations only ever `stop`.

use crate::Caller;
use crate::Controller;
use crate::{Error, Resource, Result};
use holdfast_domain::{
    AuditAction, Compute, DesiredState, Env, Role, Runtime, Tier, WorkspaceName, now_millis,
};
use holdfast_store::{NewAuditEvent, NewWorkspace, WorkspacePatch, WorkspaceRow};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use tokio::sync::OwnedMutexGuard;
use uuid::Uuid;

/// A workspace to create, parsed and checked field by field.
#[derive(Debug, Clone)]
pub struct CreateRequest {
    pub name: WorkspaceName,
    pub role: Option<Role>,
    pub parent_id: Option<Uuid>,
    pub tier: Tier,
    pub runtime: Runtime,
    pub env: Env,
    pub compute: Compute,
    pub org_id: Option<Uuid>,
    pub from_snapshot: Option<Uuid>,
}

impl CreateRequest {
    pub fn into_new(self, id: Uuid, org_id: Uuid) -> NewWorkspace {
        NewWorkspace {
            id,
            org_id,
            name: self.name.as_str().to_owned(),
            role: self.role.map(|r| r.as_str().to_owned()),
            parent_id: self.parent_id,
            tier: self.tier,
            runtime: self.runtime,
            env: self.env,
            compute: self.compute,
            seed_snapshot_id: self.from_snapshot,
        }
    }
}

/// Per-workspace locks: held across a start or a stop.
#[derive(Default)]
pub struct WorkspaceLocks {
    inner: Mutex<HashMap<Uuid, Arc<tokio::sync::Mutex<()>>>>,
}

impl WorkspaceLocks {
    pub async fn lock(&self, id: Uuid) -> OwnedMutexGuard<()> {
        let m = {
            let mut map = self.inner.lock().expect("locks");
            map.entry(id).or_default().clone()
        };
        m.lock_owned().await
    }
}

impl Controller {
    pub(crate) async fn audit_ws(
        &self,
        actor: &str,
        action: AuditAction,
        ws: Uuid,
        detail: Option<serde_json::Value>,
    ) {
        let ev = NewAuditEvent {
            actor: actor.to_owned(),
            action,
            workspace_id: Some(ws),
            volume_id: None,
            reason: None,
            detail,
        };
        if let Err(e) = self.store.audit(ev, now_millis()).await {
            tracing::error!(error = %e, %action, "writing audit event failed");
        }
    }

    /// Loads a workspace the caller may manage; another org's is 404.
    pub async fn load_managed(&self, caller: &Caller, id: Uuid) -> Result<WorkspaceRow> {
        match self.store.get_workspace(id).await? {
            Some(ws) if caller.manages_org(ws.org_id) => Ok(ws),
            _ => Err(Error::NotFound(Resource::Workspace)),
        }
    }

    /// Loads a live (not removed) workspace the caller may manage; removed or
    /// missing is 404.
    pub async fn load_live(&self, caller: &Caller, id: Uuid) -> Result<WorkspaceRow> {
        let ws = self.load_managed(caller, id).await?;
        if ws.is_removed() {
            return Err(Error::NotFound(Resource::Workspace));
        }
        Ok(ws)
    }

    #[tracing::instrument(skip_all, fields(name = %req.name))]
    pub async fn create(&self, caller: &Caller, mut req: CreateRequest) -> Result<WorkspaceRow> {
        let org_id = match (caller, req.org_id) {
            (Caller::Admin, Some(org)) => {
                self.store
                    .get_org(org)
                    .await?
                    .ok_or_else(|| Error::InvalidField {
                        field: "org_id",
                        message: format!("no org {org}"),
                    })?
                    .id
            }
            (Caller::Admin, None) => self.default_org,
            (Caller::Org(own), Some(org)) if *own == org => org,
            (Caller::Org(_), Some(org)) => {
                return Err(Error::InvalidField {
                    field: "org_id",
                    message: format!("no org {org}"),
                });
            }
            (Caller::Org(own), None) => *own,
            (Caller::Workspace { .. }, _) => return Err(Error::NotFound(Resource::Route)),
        };
        if let Some(parent) = req.parent_id {
            match self.store.get_workspace(parent).await? {
                Some(p) if p.org_id == org_id && !p.is_removed() => {}
                _ => {
                    return Err(Error::InvalidField {
                        field: "parent_id",
                        message: format!("no live workspace {parent} in this org"),
                    });
                }
            }
        }
        if let Some(sid) = req.from_snapshot {
            // A clone: a persist workspace of the same org, whose volume
            // starts as the snapshot's content.
            let snap = match self.cp.snapshot(sid).await? {
                Some(s)
                    if s.org_id == org_id
                        && s.state != holdfast_domain::SnapshotState::Capturing =>
                {
                    s
                }
                _ => {
                    return Err(Error::InvalidField {
                        field: "from_snapshot",
                        message: format!("no snapshot {sid} in this org"),
                    });
                }
            };
            if snap.state != holdfast_domain::SnapshotState::Ready {
                return Err(Error::SnapshotNotReady {
                    state: snap.state,
                    use_: "cloned",
                });
            }
            match req.compute.data_persistence {
                Some(holdfast_domain::DataPersistence::Ephemeral) => {
                    return Err(Error::InvalidField {
                        field: "compute.data_persistence",
                        message: "a clone keeps its data (persist); leave it out or say persist"
                            .to_owned(),
                    });
                }
                _ => req.compute.data_persistence = Some(holdfast_domain::DataPersistence::Persist),
            }
        }
        // Ordering: asked before anything is written, so that a workspace
        // whose image the engine lacks (409 `image_not_found`, naming it), or
        // an engine that does not answer (503), leaves no row behind.
        self.cp.check_image(req.runtime.image.as_ref()).await?;
        let id = Uuid::new_v4();
        let ws = self
            .store
            .insert_workspace(&req.into_new(id, org_id), now_millis())
            .await?;
        self.audit_ws(&caller.actor(), AuditAction::WorkspaceCreated, id, None)
            .await;
        // Creation succeeded once the row is written; a failed first start
        // shows as status `failed`, and the loop retries a crashed one.
        match self.reconcile_new(ws.clone()).await {
            Ok(now) => Ok(now),
            Err(e) => {
                tracing::error!(workspace_id = %id, error = %e, "first start failed");
                Ok(self.store.get_workspace(id).await?.unwrap_or(ws))
            }
        }
    }

    #[tracing::instrument(skip_all, fields(workspace_id = %id))]
    pub async fn patch(
        &self,
        caller: &Caller,
        id: Uuid,
        patch: WorkspacePatch,
    ) -> Result<WorkspaceRow> {
        let ws = self.load_managed(caller, id).await?;
        if ws.is_removed() {
            return Err(Error::WorkspaceRemoved);
        }
        if patch.is_empty() {
            return Ok(ws);
        }
        // A new runtime is checked as at create, before it is stored.
        if let Some(runtime) = &patch.runtime {
            self.cp.check_image(runtime.image.as_ref()).await?;
        }
        let ws = self.store.patch_workspace(id, &patch, now_millis()).await?;
        self.audit_ws(&caller.actor(), AuditAction::WorkspaceUpdated, id, None)
            .await;
        Ok(ws)
    }

    /// Stop (never prune), then start with the stored configuration: a new
    /// generation of the `running` intent.
    #[tracing::instrument(skip_all, fields(workspace_id = %id))]
    pub async fn restart(&self, caller: &Caller, id: Uuid) -> Result<WorkspaceRow> {
        let ws = self.load_live(caller, id).await?;
        self.refuse_paused_ancestor(&ws).await?;
        self.store
            .set_desired(
                &[id],
                DesiredState::Running,
                &caller.actor(),
                AuditAction::WorkspaceRestarted,
                None,
                now_millis(),
            )
            .await?;
        self.reconcile(id).await?;
        self.store
            .get_workspace(id)
            .await?
            .ok_or_else(|| Error::NotFound(Resource::Workspace))
    }

    /// 409 when an ancestor is paused: it would be odd for a child to run
    /// while the team it belongs to is paused.
    async fn refuse_paused_ancestor(&self, ws: &WorkspaceRow) -> Result<()> {
        let mut cursor = ws.parent_id;
        let mut hops = 0;
        while let Some(pid) = cursor {
            let Some(parent) = self.store.get_workspace(pid).await? else {
                break;
            };
            if parent.desired == DesiredState::Paused && !parent.is_removed() {
                return Err(Error::PausedAncestor {
                    id: parent.id,
                    name: parent.name,
                });
            }
            cursor = parent.parent_id;
            hops += 1;
            if hops > 10_000 {
                break;
            }
        }
        Ok(())
    }

    /// Pause or hibernate (stop without prune), or resume or wake (start
    /// again). With live descendants, pausing and hibernating need
    /// `cascade=true` and then apply to the whole subtree.
    #[tracing::instrument(skip_all, fields(workspace_id = %id, desired = %desired))]
    pub async fn set_run_state(
        &self,
        caller: &Caller,
        id: Uuid,
        desired: DesiredState,
        cascade: bool,
    ) -> Result<WorkspaceRow> {
        let ws = self.load_live(caller, id).await?;
        let descendants = self.store.live_descendants(id).await?;
        let stopping = matches!(desired, DesiredState::Paused | DesiredState::Hibernated);
        if stopping && !descendants.is_empty() && !cascade {
            return Err(Error::ChildrenNotConfirmed {
                children: descendants.iter().map(|d| (d.id, d.name.clone())).collect(),
                cascade: true,
            });
        }
        if !stopping {
            self.refuse_paused_ancestor(&ws).await?;
        }
        let mut ids = vec![id];
        if cascade {
            ids.extend(descendants.iter().map(|d| d.id));
        }
        if stopping {
            // Deepest first: children stop before their parent.
            ids.reverse();
        }
        let action = match desired {
            DesiredState::Paused => AuditAction::WorkspacePaused,
            DesiredState::Hibernated => AuditAction::WorkspaceHibernated,
            _ => AuditAction::WorkspaceResumed,
        };
        // Ordering: the whole cascade's intent (and its audit) in one
        // transaction before any compute acts; a crash or a busy replica
        // after it leaves intent that the reconciler carries out.
        self.store
            .set_desired(&ids, desired, &caller.actor(), action, None, now_millis())
            .await?;
        let mut first_error = None;
        for wid in &ids {
            if let Err(e) = self.reconcile(*wid).await {
                tracing::warn!(workspace_id = %wid, error = %e, "acting on the new intent failed; the reconciler retries");
                first_error.get_or_insert(e);
            }
        }
        if let Some(e) = first_error {
            return Err(e.into());
        }
        self.store
            .get_workspace(id)
            .await?
            .ok_or_else(|| Error::NotFound(Resource::Workspace))
    }
}
