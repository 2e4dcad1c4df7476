//! Snapshots, rollback, legal hold and snapshot schedules (SPEC §15): the
//! handlers, the checks in their order, and the sweeper's schedule step.
//!
//! The content lives with the control plane (its repository); the
//! platform decides who may do what: another org's snapshot is 404, a
//! held workspace's snapshot cannot be deleted (409 `legal_hold`), a
//! rollback takes its `before-rollback` snapshot first.

use crate::App;
use crate::auth::Caller;
use crate::body::JsonBody;
use crate::dto::{
    CreateSnapshotRequest, ErrorBody, HoldRequest, RollbackRequest, RollbackResponse,
    SnapshotDeleted, SnapshotView, WorkspaceView, parse_text_field,
};
use crate::error::{ApiError, ApiResult};
use crate::routes::parse_id;
use axum::Json;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use holdfast_cp::sweep::SweepItem;
use holdfast_cp::{CpError, SnapshotInfo, SnapshotRemoval, SnapshotRequest};
use holdfast_domain::{
    AuditAction, DataPersistence, DesiredState, SnapshotState, SweepAction, SweepOutcome,
    VolumeReason, failpoint, now_millis,
};
use holdfast_store::WorkspaceRow;
use std::sync::Arc;
use uuid::Uuid;

/// The label of the snapshot a rollback takes first.
pub const BEFORE_ROLLBACK: &str = "before-rollback";
/// The label of the snapshots a schedule takes (the only ones it prunes).
pub const SCHEDULED: &str = "scheduled";

fn parse_sid(raw: &str) -> ApiResult<Uuid> {
    holdfast_domain::parse_uuid(raw).ok_or_else(|| {
        ApiError::bad_request(
            "invalid_id",
            format!("{raw:?} is not a snapshot id (a UUID)"),
        )
    })
}

fn legal_hold(ws: &WorkspaceRow) -> ApiError {
    ApiError::conflict(
        "legal_hold",
        format!(
            "workspace {:?} is under a legal hold: nothing of it can be erased until an admin \
             releases the hold",
            ws.name
        ),
    )
    .with("workspace_id", ws.id.to_string())
}

fn removed(_: &WorkspaceRow) -> ApiError {
    ApiError::new(
        StatusCode::GONE,
        "workspace_removed",
        "workspace is removed; restore it first",
    )
}

impl App {
    /// A snapshot the caller may see; another org's is 404.
    async fn load_snapshot(&self, caller: &Caller, sid: Uuid) -> ApiResult<SnapshotInfo> {
        match self.cp.snapshot(sid).await? {
            Some(s) if caller.manages_org(s.org_id) && s.state != SnapshotState::Capturing => Ok(s),
            _ => Err(ApiError::not_found("snapshot")),
        }
    }

    #[tracing::instrument(skip_all, fields(workspace_id = %id))]
    pub async fn take_snapshot(
        &self,
        caller: &Caller,
        id: Uuid,
        label: Option<String>,
    ) -> ApiResult<SnapshotInfo> {
        let ws = self.load_managed(caller, id).await?;
        if ws.is_removed() {
            return Err(removed(&ws));
        }
        self.snapshot_of(&ws, label, &caller.actor()).await
    }

    async fn snapshot_of(
        &self,
        ws: &WorkspaceRow,
        label: Option<String>,
        actor: &str,
    ) -> ApiResult<SnapshotInfo> {
        if ws.resolved_mode.or(ws.compute.data_persistence) == Some(DataPersistence::Ephemeral) {
            return Err(ApiError::conflict(
                "no_durable_data",
                "an ephemeral workspace keeps no data to snapshot",
            ));
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
    pub async fn rollback(
        &self,
        caller: &Caller,
        id: Uuid,
        sid: Uuid,
    ) -> ApiResult<RollbackResponse> {
        // Serialised with deletes and restores of the workspace.
        let _serial = self.destructive.lock(id).await;
        let ws = self.load_managed(caller, id).await?;
        if ws.is_removed() {
            return Err(removed(&ws));
        }
        let target = match self.cp.snapshot(sid).await? {
            Some(s) if caller.manages_org(s.org_id) => s,
            _ => return Err(ApiError::not_found("snapshot")),
        };
        if target.workspace_id != id {
            return Err(ApiError::bad_request(
                "invalid_field",
                "snapshot_id: a snapshot of another workspace; a workspace rolls back only to its own \
                 snapshots (clone the other one with from_snapshot instead)",
            )
            .with("field", "snapshot_id"));
        }
        if target.state != SnapshotState::Ready {
            return Err(ApiError::conflict(
                "snapshot_unavailable",
                format!(
                    "the snapshot is {}; only a ready one can be rolled back to",
                    target.state
                ),
            ));
        }
        self.cp.check_restore().await?;
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
                .ok_or_else(|| ApiError::not_found("workspace"))?;
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
                    .map_err(ApiError::from),
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
            .ok_or_else(|| ApiError::not_found("workspace"))?;
        Ok(RollbackResponse {
            workspace: self.view(&ws).await?,
            before_rollback: before.into(),
            restored: target.into(),
        })
    }

    pub async fn delete_snapshot(
        &self,
        caller: &Caller,
        sid: Uuid,
        confirm_name: Option<&str>,
    ) -> ApiResult<SnapshotInfo> {
        let snap = self.load_snapshot(caller, sid).await?;
        let _serial = self.destructive.lock(snap.workspace_id).await;
        let ws = self.store.get_workspace(snap.workspace_id).await?;
        let name = ws.as_ref().map(|w| w.name.clone()).unwrap_or_default();
        if confirm_name != Some(name.as_str()) {
            return Err(ApiError::bad_request(
                "destructive_action_requires_confirmation",
                format!(
                    "deleting a snapshot needs the header X-Confirm-Name with its workspace's exact \
                     name ({name:?})"
                ),
            )
            .with("workspace_name", name));
        }
        if snap.state == SnapshotState::Erased {
            return Err(ApiError::new(
                StatusCode::GONE,
                "snapshot_deleted",
                "the snapshot is already deleted",
            ));
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
    ) -> ApiResult<WorkspaceRow> {
        let ws = self.load_managed(caller, id).await?;
        // Ordering: the control plane that keeps the volumes holds them
        // before the hold shows here (a failure leaves more held, never less).
        self.cp
            .set_hold(ws.id, Some(&reason), &caller.actor())
            .await?;
        self.store
            .place_hold(ws.id, &reason, &caller.actor(), now_millis())
            .await?;
        self.store
            .get_workspace(id)
            .await?
            .ok_or_else(|| ApiError::not_found("workspace"))
    }

    pub async fn release_hold(&self, caller: &Caller, id: Uuid) -> ApiResult<WorkspaceRow> {
        let ws = self.load_managed(caller, id).await?;
        if ws.hold_at.is_some() {
            self.cp.set_hold(ws.id, None, &caller.actor()).await?;
        }
        let released = match self
            .store
            .release_hold(ws.id, &caller.actor(), now_millis())
            .await
        {
            Ok(r) => r,
            Err(e) => {
                // Held here still: held there again (best effort).
                let reason = ws.hold_reason.as_deref().unwrap_or("held");
                let _ = self.cp.set_hold(ws.id, Some(reason), &caller.actor()).await;
                return Err(e.into());
            }
        };
        if !released {
            return Err(ApiError::conflict(
                "not_held",
                "the workspace is not under a legal hold",
            ));
        }
        self.store
            .get_workspace(id)
            .await?
            .ok_or_else(|| ApiError::not_found("workspace"))
    }

    /// The sweeper's schedule step: for every live workspace with
    /// `compute.snapshots`, a `scheduled` snapshot when one is due, then
    /// the scheduled snapshots its keep policy no longer keeps deleted
    /// (never while it is held). Hand-made and `before-rollback`
    /// snapshots are never pruned.
    pub(crate) async fn run_schedules(
        &self,
        dry_run: bool,
        actor: &str,
    ) -> ApiResult<Vec<SweepItem>> {
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
                            tracing::warn!(workspace_id = %ws.id, error = %e.message, "scheduled snapshot failed");
                            items.push(item(
                                SweepAction::Snapshot,
                                None,
                                SweepOutcome::Failed,
                                Some(e.message),
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

#[utoipa::path(
    post, path = "/workspaces/{id}/snapshots", request_body = CreateSnapshotRequest,
    params(("id" = Uuid, Path, description = "workspace id")),
    responses(
        (status = 201, body = SnapshotView),
        (status = 404, body = ErrorBody), (status = 410, body = ErrorBody, description = "workspace_removed"),
        (status = 409, body = ErrorBody, description = "no_durable_data, snapshot_refused (an entry a snapshot cannot hold safely), snapshots_unavailable (this backend), conflict (no data yet)"),
        (status = 507, body = ErrorBody, description = "insufficient_storage: the repository's disk is full; the workspace kept running"),
    ),
    security(("bearer" = []))
)]
pub async fn create_snapshot(
    State(app): State<Arc<App>>,
    caller: Caller,
    Path(raw): Path<String>,
    JsonBody(body): JsonBody<CreateSnapshotRequest>,
) -> ApiResult<(StatusCode, Json<SnapshotView>)> {
    let id = parse_id(&raw)?;
    let label = parse_text_field(
        "label",
        &body.label.unwrap_or(serde_json::Value::Null),
        64,
        false,
    )?;
    let snap = app.take_snapshot(&caller, id, label).await?;
    Ok((StatusCode::CREATED, Json(snap.into())))
}

#[utoipa::path(
    get, path = "/workspaces/{id}/snapshots",
    params(("id" = Uuid, Path, description = "workspace id")),
    responses(
        (status = 200, body = [SnapshotView], description = "its snapshots that hold data, newest first"),
        (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody, description = "snapshots_unavailable"),
    ),
    security(("bearer" = []))
)]
pub async fn list_snapshots(
    State(app): State<Arc<App>>,
    caller: Caller,
    Path(raw): Path<String>,
) -> ApiResult<Json<Vec<SnapshotView>>> {
    let id = parse_id(&raw)?;
    let ws = app.load_managed(&caller, id).await?;
    let list = app.cp.snapshots(ws.id).await?;
    Ok(Json(list.into_iter().map(Into::into).collect()))
}

#[utoipa::path(
    get, path = "/snapshots/{sid}",
    params(("sid" = Uuid, Path, description = "snapshot id")),
    responses(
        (status = 200, body = SnapshotView),
        (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody, description = "snapshots_unavailable"),
    ),
    security(("bearer" = []))
)]
pub async fn get_snapshot(
    State(app): State<Arc<App>>,
    caller: Caller,
    Path(raw): Path<String>,
) -> ApiResult<Json<SnapshotView>> {
    let sid = parse_sid(&raw)?;
    Ok(Json(app.load_snapshot(&caller, sid).await?.into()))
}

#[utoipa::path(
    get, path = "/snapshots/{sid}/export",
    params(("sid" = Uuid, Path, description = "snapshot id")),
    responses(
        (status = 200, description = "the snapshot's content as a .tar.gz stream", content_type = "application/gzip"),
        (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody, description = "conflict (the snapshot is deleted), snapshots_unavailable"),
    ),
    security(("bearer" = []))
)]
pub async fn export_snapshot(
    State(app): State<Arc<App>>,
    caller: Caller,
    Path(raw): Path<String>,
) -> ApiResult<Response> {
    let sid = parse_sid(&raw)?;
    let snap = app.load_snapshot(&caller, sid).await?;
    let stream = app.cp.export_snapshot(snap.id).await?;
    Ok((
        StatusCode::OK,
        [
            (header::CONTENT_TYPE, "application/gzip".to_owned()),
            (
                header::CONTENT_DISPOSITION,
                format!("attachment; filename=\"holdfast-snapshot-{sid}.tar.gz\""),
            ),
        ],
        Body::from_stream(stream),
    )
        .into_response())
}

#[utoipa::path(
    delete, path = "/snapshots/{sid}",
    params(
        ("sid" = Uuid, Path, description = "snapshot id"),
        ("X-Confirm-Name" = Option<String>, Header, description = "its workspace's exact name (400 destructive_action_requires_confirmation without it)"),
    ),
    responses(
        (status = 200, body = SnapshotDeleted),
        (status = 400, body = ErrorBody, description = "not a UUID, or destructive_action_requires_confirmation"),
        (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody, description = "legal_hold, snapshots_unavailable"),
        (status = 410, body = ErrorBody, description = "snapshot_deleted"),
    ),
    security(("bearer" = []))
)]
pub async fn delete_snapshot(
    State(app): State<Arc<App>>,
    caller: Caller,
    Path(raw): Path<String>,
    headers: HeaderMap,
) -> ApiResult<Json<SnapshotDeleted>> {
    let sid = parse_sid(&raw)?;
    let confirm = headers
        .get("x-confirm-name")
        .and_then(|v| std::str::from_utf8(v.as_bytes()).ok());
    let snap = app.delete_snapshot(&caller, sid, confirm).await?;
    Ok(Json(SnapshotDeleted {
        status: "deleted".to_owned(),
        snapshot: snap.into(),
    }))
}

#[utoipa::path(
    post, path = "/workspaces/{id}/rollback", request_body = RollbackRequest,
    params(("id" = Uuid, Path, description = "workspace id")),
    responses(
        (status = 200, body = RollbackResponse),
        (status = 400, body = ErrorBody, description = "not a UUID, or a snapshot of another workspace"),
        (status = 404, body = ErrorBody, description = "no such workspace or snapshot (or another org's)"),
        (status = 409, body = ErrorBody, description = "snapshot_unavailable, no_durable_data, snapshots_unavailable"),
        (status = 410, body = ErrorBody, description = "workspace_removed"),
        (status = 503, body = ErrorBody, description = "workspace_busy"),
        (status = 507, body = ErrorBody, description = "insufficient_storage"),
    ),
    security(("bearer" = []))
)]
pub async fn rollback_workspace(
    State(app): State<Arc<App>>,
    caller: Caller,
    Path(raw): Path<String>,
    JsonBody(body): JsonBody<RollbackRequest>,
) -> ApiResult<Json<RollbackResponse>> {
    let id = parse_id(&raw)?;
    let sid = crate::dto::parse_uuid_field("snapshot_id", &body.snapshot_id)?.ok_or_else(|| {
        ApiError::bad_request("invalid_field", "snapshot_id: is required")
            .with("field", "snapshot_id")
    })?;
    Ok(Json(app.rollback(&caller, id, sid).await?))
}

#[utoipa::path(
    put, path = "/workspaces/{id}/hold", request_body = HoldRequest,
    params(("id" = Uuid, Path, description = "workspace id")),
    responses(
        (status = 200, body = WorkspaceView, description = "held: see data.hold"),
        (status = 404, body = ErrorBody, description = "no such workspace (or not the admin token)"),
    ),
    security(("bearer" = []))
)]
pub async fn put_hold(
    State(app): State<Arc<App>>,
    caller: Caller,
    Path(raw): Path<String>,
    JsonBody(body): JsonBody<HoldRequest>,
) -> ApiResult<Json<WorkspaceView>> {
    if caller != Caller::Admin {
        return Err(ApiError::not_found("route"));
    }
    let id = parse_id(&raw)?;
    let reason = parse_text_field("reason", &body.reason, 512, true)?.unwrap_or_default();
    let ws = app.place_hold(&caller, id, reason).await?;
    Ok(Json(app.view(&ws).await?))
}

#[utoipa::path(
    delete, path = "/workspaces/{id}/hold",
    params(("id" = Uuid, Path, description = "workspace id")),
    responses(
        (status = 200, body = WorkspaceView),
        (status = 404, body = ErrorBody, description = "no such workspace (or not the admin token)"),
        (status = 409, body = ErrorBody, description = "not_held"),
    ),
    security(("bearer" = []))
)]
pub async fn delete_hold(
    State(app): State<Arc<App>>,
    caller: Caller,
    Path(raw): Path<String>,
) -> ApiResult<Json<WorkspaceView>> {
    if caller != Caller::Admin {
        return Err(ApiError::not_found("route"));
    }
    let id = parse_id(&raw)?;
    let ws = app.release_hold(&caller, id).await?;
    Ok(Json(app.view(&ws).await?))
}
