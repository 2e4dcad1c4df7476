//! Lifecycle operations on workspaces: create, patch, start, stop, restart.
//!
//! Every operation writes the store first, then acts on the control plane.
//! Starts and stops of one workspace are serialised by a per-workspace lock,
//! so two of them never run concurrently.
//!
//! **Architecture Invariant:** nothing in this module calls
//! `ControlPlane::stop_and_prune`; routine operations only ever `stop`.

use crate::App;
use crate::auth::{Caller, generate_token, hash_hex};
use crate::dto::ParsedCreate;
use crate::error::{ApiError, ApiResult};
use holdfast_cp::ProvisionRequest;
use holdfast_domain::{DesiredState, Status, now_millis};
use holdfast_store::{NewAuditEvent, TokenKind, WorkspacePatch, WorkspaceRow};
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use tokio::sync::OwnedMutexGuard;
use uuid::Uuid;

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

impl App {
    pub(crate) async fn audit_ws(
        &self,
        actor: &str,
        action: &'static str,
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
            tracing::error!(error = %e, action, "writing audit event failed");
        }
    }

    /// Loads a workspace the caller may manage; another org's is 404.
    pub(crate) async fn load_managed(&self, caller: &Caller, id: Uuid) -> ApiResult<WorkspaceRow> {
        match self.store.get_workspace(id).await? {
            Some(ws) if caller.manages_org(ws.org_id) => Ok(ws),
            _ => Err(ApiError::not_found("workspace")),
        }
    }

    /// Loads a live (not removed) workspace the caller may manage; removed or
    /// missing is 404.
    pub(crate) async fn load_live(&self, caller: &Caller, id: Uuid) -> ApiResult<WorkspaceRow> {
        let ws = self.load_managed(caller, id).await?;
        if ws.is_removed() {
            return Err(ApiError::not_found("workspace"));
        }
        Ok(ws)
    }

    #[tracing::instrument(skip_all, fields(name = %req.name))]
    pub async fn create(&self, caller: &Caller, req: ParsedCreate) -> ApiResult<WorkspaceRow> {
        let org_id = match (caller, req.org_id) {
            (Caller::Admin, Some(org)) => {
                self.store
                    .get_org(org)
                    .await?
                    .ok_or_else(|| {
                        ApiError::bad_request("invalid_field", format!("org_id: no org {org}"))
                    })?
                    .id
            }
            (Caller::Admin, None) => self.default_org,
            (Caller::Org(own), Some(org)) if *own == org => org,
            (Caller::Org(_), Some(org)) => {
                return Err(ApiError::bad_request(
                    "invalid_field",
                    format!("org_id: no org {org}"),
                ));
            }
            (Caller::Org(own), None) => *own,
            (Caller::Workspace { .. }, _) => return Err(ApiError::not_found("route")),
        };
        if let Some(parent) = req.parent_id {
            match self.store.get_workspace(parent).await? {
                Some(p) if p.org_id == org_id && !p.is_removed() => {}
                _ => {
                    return Err(ApiError::bad_request(
                        "invalid_field",
                        format!("parent_id: no live workspace {parent} in this org"),
                    )
                    .with("field", "parent_id"));
                }
            }
        }
        let id = Uuid::new_v4();
        let ws = self
            .store
            .insert_workspace(&req.into_new(id, org_id), now_millis())
            .await?;
        self.audit_ws(&caller.actor(), "workspace.created", id, None)
            .await;
        self.start(&ws).await;
        Ok(self.store.get_workspace(id).await?.unwrap_or(ws))
    }

    #[tracing::instrument(skip_all, fields(workspace_id = %id))]
    pub async fn patch(
        &self,
        caller: &Caller,
        id: Uuid,
        patch: WorkspacePatch,
    ) -> ApiResult<WorkspaceRow> {
        let ws = self.load_managed(caller, id).await?;
        if ws.is_removed() {
            return Err(ApiError::new(
                axum::http::StatusCode::GONE,
                "workspace_removed",
                "workspace is removed; restore it first",
            ));
        }
        if patch.is_empty() {
            return Ok(ws);
        }
        let ws = self.store.patch_workspace(id, &patch, now_millis()).await?;
        self.audit_ws(&caller.actor(), "workspace.updated", id, None)
            .await;
        Ok(ws)
    }

    /// Starts the workspace with its stored configuration. A failure is
    /// recorded as status `failed` (and logged); compute and data are left as
    /// they are.
    #[tracing::instrument(skip_all, fields(workspace_id = %ws.id))]
    pub async fn start(&self, ws: &WorkspaceRow) {
        let _guard = self.locks.lock(ws.id).await;
        self.start_locked(ws).await;
    }

    async fn start_locked(&self, ws: &WorkspaceRow) {
        let now = now_millis();
        // A workspace token per start; the previous ones stop working.
        let token = generate_token("hfw");
        let minted = async {
            self.store.revoke_workspace_tokens(ws.id, now).await?;
            self.store
                .insert_token(
                    &hash_hex(token.expose()),
                    TokenKind::Workspace,
                    Some(ws.org_id),
                    Some(ws.id),
                    now,
                )
                .await
        }
        .await;
        if let Err(e) = minted {
            tracing::error!(error = %e, "minting the workspace token failed");
            let _ = self
                .store
                .set_observed(ws.id, Status::Failed, None, None, now_millis())
                .await;
            return;
        }
        let mut env: BTreeMap<String, String> =
            ws.env.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        env.insert("HOLDFAST_PLATFORM_URL".into(), self.public_url.clone());
        env.insert("HOLDFAST_TOKEN".into(), token.expose().to_owned());
        let req = ProvisionRequest {
            org_id: ws.org_id,
            workspace_id: ws.id,
            runtime: ws.runtime.clone(),
            tier: ws.tier.get(),
            env,
            data_persistence: ws.compute.data_persistence,
            volume_size_gb: ws.compute.volume.map(|v| v.size_gb),
        };
        let _ = self
            .store
            .set_observed(ws.id, Status::Provisioning, None, None, now_millis())
            .await;
        match self.cp.provision(req).await {
            Ok(p) => {
                let _ = self
                    .store
                    .set_observed(
                        ws.id,
                        Status::Online,
                        Some(&p.instance_id),
                        Some(p.data_mode),
                        now_millis(),
                    )
                    .await;
            }
            Err(e) => {
                tracing::error!(error = %e, "provisioning failed");
                let _ = self
                    .store
                    .set_observed(ws.id, Status::Failed, None, None, now_millis())
                    .await;
            }
        }
    }

    /// Stops the workspace's compute (never prunes) and records it offline.
    async fn stop_locked(&self, ws: &WorkspaceRow) -> ApiResult<()> {
        self.cp.stop(ws.id, ws.instance_id.as_deref()).await?;
        self.store
            .set_observed(ws.id, Status::Offline, None, None, now_millis())
            .await?;
        Ok(())
    }

    /// Stop (never prune), then start with the stored configuration.
    #[tracing::instrument(skip_all, fields(workspace_id = %id))]
    pub async fn restart(&self, caller: &Caller, id: Uuid) -> ApiResult<WorkspaceRow> {
        self.load_live(caller, id).await?;
        self.store
            .set_desired(id, DesiredState::Running, now_millis())
            .await?;
        {
            let _guard = self.locks.lock(id).await;
            // Re-read under the lock: the instance to stop is the current one.
            let ws = self
                .store
                .get_workspace(id)
                .await?
                .ok_or_else(|| ApiError::not_found("workspace"))?;
            if ws.is_removed() {
                return Err(ApiError::not_found("workspace"));
            }
            self.stop_locked(&ws).await?;
            let ws = self
                .store
                .get_workspace(id)
                .await?
                .ok_or_else(|| ApiError::not_found("workspace"))?;
            self.start_locked(&ws).await;
        }
        self.audit_ws(&caller.actor(), "workspace.restarted", id, None)
            .await;
        self.store
            .get_workspace(id)
            .await?
            .ok_or_else(|| ApiError::not_found("workspace"))
    }

    /// At server start: start every workspace that should run, and finish the
    /// removals a previous run did not complete.
    pub async fn recover(&self) -> anyhow::Result<()> {
        for ws in self.store.unreleased_removed().await? {
            if let Err(e) = self.finish_removal(&ws, "reconciler").await {
                tracing::warn!(workspace_id = %ws.id, error = ?e.message, "finishing an interrupted removal failed");
            }
        }
        for ws in self.store.live_workspaces().await? {
            if ws.desired == DesiredState::Running {
                self.start(&ws).await;
            }
        }
        Ok(())
    }

    /// Marks workspaces whose process exited as `offline`.
    pub async fn observe(&self) -> anyhow::Result<()> {
        for ws in self.store.live_workspaces().await? {
            if ws.status != Status::Online {
                continue;
            }
            let Some(instance) = ws.instance_id.as_deref() else {
                continue;
            };
            match self.cp.status(ws.id, instance).await {
                Ok(holdfast_cp::InstanceState::Running) => {}
                Ok(_) => {
                    let _guard = self.locks.lock(ws.id).await;
                    let current = self.store.get_workspace(ws.id).await?;
                    if current.is_some_and(|c| c.instance_id.as_deref() == Some(instance)) {
                        self.store
                            .set_observed(ws.id, Status::Offline, None, None, now_millis())
                            .await?;
                    }
                }
                // Data safety: a status we cannot read is "still running".
                Err(e) => tracing::debug!(error = %e, "status unknown; assuming running"),
            }
        }
        Ok(())
    }
}
