//! The snapshot, rollback and legal-hold routes. Who may do what, and in
//! which order it is checked, is the controller's
//! (`holdfast_controller::snapshots`): another org's snapshot is 404, a
//! held workspace's snapshot cannot be deleted (409 `legal_hold`), a
//! rollback takes its `before-rollback` snapshot first.

use crate::App;
use crate::auth::{Auth, admin_only};
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
use std::sync::Arc;
use uuid::Uuid;

/// The label of the snapshot a rollback takes first.
fn parse_sid(raw: &str) -> ApiResult<Uuid> {
    holdfast_domain::parse_uuid(raw).ok_or_else(|| {
        ApiError::bad_request(
            "invalid_id",
            format!("{raw:?} is not a snapshot id (a UUID)"),
        )
    })
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
    Auth(caller): Auth,
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
    let snap = app.ctl.take_snapshot(&caller, id, label).await?;
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
    Auth(caller): Auth,
    Path(raw): Path<String>,
) -> ApiResult<Json<Vec<SnapshotView>>> {
    let id = parse_id(&raw)?;
    let list = app.ctl.snapshots(&caller, id).await?;
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
    Auth(caller): Auth,
    Path(raw): Path<String>,
) -> ApiResult<Json<SnapshotView>> {
    let sid = parse_sid(&raw)?;
    Ok(Json(app.ctl.snapshot(&caller, sid).await?.into()))
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
    Auth(caller): Auth,
    Path(raw): Path<String>,
) -> ApiResult<Response> {
    let sid = parse_sid(&raw)?;
    let stream = app.ctl.export_snapshot(&caller, sid).await?;
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
    Auth(caller): Auth,
    Path(raw): Path<String>,
    headers: HeaderMap,
) -> ApiResult<Json<SnapshotDeleted>> {
    let sid = parse_sid(&raw)?;
    let confirm = headers
        .get("x-confirm-name")
        .and_then(|v| std::str::from_utf8(v.as_bytes()).ok());
    let snap = app.ctl.delete_snapshot(&caller, sid, confirm).await?;
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
    Auth(caller): Auth,
    Path(raw): Path<String>,
    JsonBody(body): JsonBody<RollbackRequest>,
) -> ApiResult<Json<RollbackResponse>> {
    let id = parse_id(&raw)?;
    let sid = crate::dto::parse_uuid_field("snapshot_id", &body.snapshot_id)?.ok_or_else(|| {
        ApiError::bad_request("invalid_field", "snapshot_id: is required")
            .with("field", "snapshot_id")
    })?;
    let done = app.ctl.rollback(&caller, id, sid).await?;
    Ok(Json(RollbackResponse {
        workspace: app.view(&done.workspace).await?,
        before_rollback: done.before_rollback.into(),
        restored: done.restored.into(),
    }))
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
    Auth(caller): Auth,
    Path(raw): Path<String>,
    JsonBody(body): JsonBody<HoldRequest>,
) -> ApiResult<Json<WorkspaceView>> {
    admin_only(&caller)?;
    let id = parse_id(&raw)?;
    let reason = parse_text_field("reason", &body.reason, 512, true)?.unwrap_or_default();
    let ws = app.ctl.place_hold(&caller, id, reason).await?;
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
    Auth(caller): Auth,
    Path(raw): Path<String>,
) -> ApiResult<Json<WorkspaceView>> {
    admin_only(&caller)?;
    let id = parse_id(&raw)?;
    let ws = app.ctl.release_hold(&caller, id).await?;
    Ok(Json(app.view(&ws).await?))
}
