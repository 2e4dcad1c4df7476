//! The data-safety API: restore, export, the sweeper's trigger and the audit
//! log (the operations are the controller's, `holdfast_controller::data`).

use crate::App;
use crate::auth::Auth;
use crate::body::JsonBody;
use crate::dto::{ErrorBody, WorkspaceView};
use crate::error::{ApiError, ApiResult};
use crate::routes::{parse_id, parse_query};
use axum::Json;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use holdfast_cp::sweep::SweepReport;
use holdfast_domain::{AuditAction, VolumeReason, format_millis};
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::time::Instant;
use utoipa::ToSchema;
use uuid::Uuid;

#[utoipa::path(
    post, path = "/workspaces/{id}/restore",
    params(("id" = Uuid, Path, description = "workspace id")),
    responses(
        (status = 200, body = WorkspaceView),
        (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody, description = "data_erased, parent_removed or not_removed"),
    ),
    security(("bearer" = []))
)]
pub async fn restore_workspace(
    State(app): State<Arc<App>>,
    Auth(caller): Auth,
    Path(raw): Path<String>,
) -> ApiResult<Json<WorkspaceView>> {
    let started = Instant::now();
    let id = parse_id(&raw)?;
    let ws = app.ctl.restore(&caller, id).await?;
    app.ctl.metrics().observe_op("restore", started.elapsed());
    Ok(Json(app.view(&ws).await?))
}

#[utoipa::path(
    get, path = "/workspaces/{id}/data/export",
    params(("id" = Uuid, Path, description = "workspace id")),
    responses(
        (status = 200, description = "the data dir as a .tar.gz stream", content_type = "application/gzip"),
        (status = 404, body = ErrorBody), (status = 409, body = ErrorBody, description = "data_erased"),
    ),
    security(("bearer" = []))
)]
pub async fn export_data(
    State(app): State<Arc<App>>,
    Auth(caller): Auth,
    Path(raw): Path<String>,
) -> ApiResult<Response> {
    let id = parse_id(&raw)?;
    let (ws, stream) = app.ctl.export(&caller, id).await?;
    let filename = format!("holdfast-{}-{}.tar.gz", sanitize(&ws.name), id);
    Ok((
        StatusCode::OK,
        [
            (header::CONTENT_TYPE, "application/gzip".to_owned()),
            (
                header::CONTENT_DISPOSITION,
                format!("attachment; filename=\"{filename}\""),
            ),
        ],
        Body::from_stream(stream),
    )
        .into_response())
}

/// A file-name-safe form of a workspace name.
fn sanitize(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SweepRequest {
    /// Report the plan without acting.
    #[serde(default)]
    pub dry_run: bool,
}

#[utoipa::path(
    post, path = "/admin/sweep", request_body = SweepRequest,
    responses((status = 200, body = SweepReport), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)),
    security(("bearer" = []))
)]
pub async fn admin_sweep(
    State(app): State<Arc<App>>,
    Auth(caller): Auth,
    JsonBody(body): JsonBody<SweepRequest>,
) -> ApiResult<Json<SweepReport>> {
    Ok(Json(app.ctl.sweep(&caller, body.dry_run).await?))
}

/// An audit event as the API shows it.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct AuditView {
    pub id: Uuid,
    pub at: String,
    pub actor: String,
    /// `workspace.created`, `volume.erased`, … (see the audit actions in
    /// the docs).
    #[schema(value_type = String)]
    pub action: AuditAction,
    pub workspace_id: Option<Uuid>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub volume_id: Option<Uuid>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<VolumeReason>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<serde_json::Value>,
}

impl From<holdfast_store::AuditEvent> for AuditView {
    fn from(e: holdfast_store::AuditEvent) -> Self {
        AuditView {
            id: e.id,
            at: format_millis(e.at),
            actor: e.actor,
            action: e.action,
            workspace_id: e.workspace_id,
            volume_id: e.volume_id,
            reason: e.reason,
            detail: e.detail,
        }
    }
}

#[utoipa::path(
    get, path = "/audit",
    params(
        ("workspace_id" = Option<Uuid>, Query, description = "only this workspace's events"),
        ("limit" = Option<u32>, Query, description = "at most this many (default 500, at most 10000)"),
    ),
    responses((status = 200, body = Vec<AuditView>), (status = 400, body = ErrorBody)),
    security(("bearer" = []))
)]
pub async fn list_audit(
    State(app): State<Arc<App>>,
    Auth(caller): Auth,
    uri: axum::http::Uri,
) -> ApiResult<Json<Vec<AuditView>>> {
    if matches!(caller, holdfast_controller::Caller::Workspace { .. }) {
        return Err(ApiError::not_found("route"));
    }
    let mut workspace = None;
    let mut limit = 500i64;
    for (k, v) in parse_query(uri.query(), &["workspace_id", "limit"])? {
        if k == "workspace_id" {
            workspace = Some(crate::routes::parse_uuid_param("workspace_id", &v)?);
        } else {
            limit = v
                .parse::<i64>()
                .ok()
                .filter(|n| (1..=10_000).contains(n))
                .ok_or_else(|| {
                    ApiError::bad_request(
                        "invalid_field",
                        "limit: must be an integer from 1 to 10000",
                    )
                    .with("field", "limit")
                })?;
        }
    }
    let events = app.ctl.audit(&caller, workspace, limit).await?;
    let out = events.into_iter().map(AuditView::from).collect();
    Ok(Json(out))
}
