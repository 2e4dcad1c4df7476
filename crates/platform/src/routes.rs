//! HTTP handlers. Each parses its input into domain types, calls the
//! lifecycle service, and renders the result.

use crate::App;
use crate::auth::{Auth, Caller};
use crate::body::JsonBody;
use crate::dto::{
    CreateWorkspaceRequest, DeleteResponse, ErrorBody, Health, PatchWorkspaceRequest, UsageView,
    VolumeView, WorkspaceView,
};
use crate::error::{ApiError, ApiResult};
use axum::Json;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use holdfast_controller::{CreateRequest, DeleteRequest, Known};
use holdfast_domain::{DesiredState, VolumeState};
use holdfast_store::{WorkspacePatch, WorkspaceRow};
use serde::Deserialize;
use std::sync::Arc;
use uuid::Uuid;

type AppState = State<Arc<App>>;

/// Parses a path id; a non-UUID is 400 before anything else is looked at.
pub(crate) fn parse_id(raw: &str) -> ApiResult<Uuid> {
    holdfast_domain::parse_uuid(raw).ok_or_else(|| {
        ApiError::bad_request(
            "invalid_id",
            format!("{raw:?} is not a workspace id (a UUID)"),
        )
    })
}

/// Query strings are parsed by hand so that a bad value is a 400 that names
/// the parameter, and an unknown parameter is refused rather than ignored.
/// Names and values are percent-decoded (`+` is a space, as in a form); a
/// broken escape, a value that is not UTF-8 once decoded, and a parameter
/// given twice are 400s too.
pub(crate) fn parse_query(raw: Option<&str>, allowed: &[&str]) -> ApiResult<Vec<(String, String)>> {
    let mut out: Vec<(String, String)> = Vec::new();
    for pair in raw.unwrap_or_default().split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let k = percent_decode(k).map_err(|why| {
            ApiError::bad_request(
                "invalid_query",
                format!("query parameter name {k:?}: {why}"),
            )
        })?;
        if !allowed.contains(&k.as_str()) {
            return Err(ApiError::bad_request(
                "unknown_field",
                format!(
                    "unknown query parameter {k:?}; allowed: {}",
                    allowed.join(", ")
                ),
            )
            .with("field", k));
        }
        let v = percent_decode(v).map_err(|why| {
            ApiError::bad_request("invalid_field", format!("{k}: {why}")).with("field", k.clone())
        })?;
        if out.iter().any(|(seen, _)| *seen == k) {
            return Err(ApiError::bad_request(
                "invalid_field",
                format!("{k}: given more than once"),
            )
            .with("field", k));
        }
        out.push((k, v));
    }
    Ok(out)
}

/// Decodes `%XX` escapes and `+`; the reason as a phrase on failure.
fn percent_decode(s: &str) -> Result<String, &'static str> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = bytes
                    .get(i + 1..i + 3)
                    .and_then(|h| std::str::from_utf8(h).ok())
                    .filter(|h| h.bytes().all(|b| b.is_ascii_hexdigit()))
                    .ok_or("a % must be followed by two hex digits")?;
                out.push(u8::from_str_radix(hex, 16).map_err(|_| "bad percent escape")?);
                i += 2;
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8(out).map_err(|_| "is not UTF-8 once percent-decoded")
}

pub(crate) fn parse_bool(name: &str, v: &str) -> ApiResult<bool> {
    match v {
        // A bare `?flag` (an empty value) is refused like any other value
        // that is not a boolean: the document says boolean, and a client
        // that means true says so.
        "true" | "1" => Ok(true),
        "false" | "0" => Ok(false),
        other => Err(ApiError::bad_request(
            "invalid_field",
            format!("{name}: must be true or false, got {other:?}"),
        )
        .with("field", name)),
    }
}

/// A UUID query value; 400 naming the parameter otherwise.
pub(crate) fn parse_uuid_param(name: &str, v: &str) -> ApiResult<Uuid> {
    holdfast_domain::parse_uuid(v).ok_or_else(|| {
        ApiError::bad_request(
            "invalid_field",
            format!("{name}: must be a UUID, got {v:?}"),
        )
        .with("field", name)
    })
}

impl App {
    /// A workspace as the API shows it, with its volume (or what was last
    /// known of it while the control plane does not answer).
    pub(crate) async fn view(&self, ws: &WorkspaceRow) -> ApiResult<WorkspaceView> {
        let known = self.ctl.volume_or_last_known(ws.id).await?;
        Ok(view_of(ws, known, self.ctl.confinement()))
    }

    /// [`App::view`] of many, with one read of the volumes.
    pub(crate) async fn views(&self, rows: &[WorkspaceRow]) -> ApiResult<Vec<WorkspaceView>> {
        let known = self.ctl.volumes_of(rows).await?;
        let confinement = self.ctl.confinement();
        Ok(rows
            .iter()
            .zip(known)
            .map(|(ws, known)| view_of(ws, known, confinement))
            .collect())
    }
}

fn view_of(
    ws: &WorkspaceRow,
    known: Known,
    confinement: &holdfast_cp::process::Confinement,
) -> WorkspaceView {
    match known {
        Known::Fresh(volume) => WorkspaceView::new(ws, volume.as_ref(), confinement),
        Known::LastKnown { volume, as_of } => {
            let mut view = WorkspaceView::new(ws, volume.as_ref(), confinement);
            view.data = view.data.stale(as_of);
            view
        }
    }
}

#[utoipa::path(get, path = "/health", responses((status = 200, body = Health)))]
pub async fn health() -> Json<Health> {
    Json(Health {
        status: "ok".to_owned(),
    })
}

#[utoipa::path(
    post, path = "/workspaces",
    request_body = CreateWorkspaceRequest,
    responses(
        (status = 201, body = WorkspaceView, description = "created and provisioned"),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 413, body = ErrorBody),
        (status = 409, body = ErrorBody, description = "image_not_found: the container engine does not have the workspace's image (named in `error`); nothing was created"),
    ),
    security(("bearer" = []))
)]
pub async fn create_workspace(
    State(app): AppState,
    Auth(caller): Auth,
    JsonBody(body): JsonBody<CreateWorkspaceRequest>,
) -> ApiResult<(StatusCode, Json<WorkspaceView>)> {
    let started = std::time::Instant::now();
    let parsed = CreateRequest::try_from(body)?;
    let ws = app.ctl.create(&caller, parsed).await?;
    // A first start reports the volume it attached; no need to read it back.
    let attached = app.ctl.observed(ws.id).attached;
    let view = match (&attached, ws.resolved_mode) {
        (Some(v), Some(holdfast_domain::DataPersistence::Persist)) => {
            WorkspaceView::new(&ws, Some(v), app.ctl.confinement())
        }
        (None, Some(holdfast_domain::DataPersistence::Ephemeral)) => {
            WorkspaceView::new(&ws, None, app.ctl.confinement())
        }
        _ => app.view(&ws).await?,
    };
    app.ctl.metrics().observe_op("create", started.elapsed());
    Ok((StatusCode::CREATED, Json(view)))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)] // Documents the query; parsed by `parse_query`.
pub struct ListParams {
    /// Admin only: one org.
    org_id: Option<Uuid>,
    /// Include removed workspaces.
    include_removed: Option<bool>,
}

#[utoipa::path(
    get, path = "/workspaces", params(ListParams),
    responses((status = 200, body = Vec<WorkspaceView>), (status = 401, body = ErrorBody)),
    security(("bearer" = []))
)]
pub async fn list_workspaces(
    State(app): AppState,
    Auth(caller): Auth,
    uri: axum::http::Uri,
) -> ApiResult<Json<Vec<WorkspaceView>>> {
    let mut org = None;
    let mut include_removed = false;
    for (k, v) in parse_query(uri.query(), &["org_id", "include_removed"])? {
        match k.as_str() {
            "org_id" => org = Some(parse_uuid_param("org_id", &v)?),
            _ => include_removed = parse_bool("include_removed", &v)?,
        }
    }
    let rows = app.ctl.workspaces(&caller, org, include_removed).await?;
    Ok(Json(app.views(&rows).await?))
}

#[utoipa::path(
    get, path = "/workspaces/{id}",
    params(("id" = Uuid, Path, description = "workspace id")),
    responses((status = 200, body = WorkspaceView), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)),
    security(("bearer" = []))
)]
pub async fn get_workspace(
    State(app): AppState,
    Auth(caller): Auth,
    Path(raw): Path<String>,
) -> ApiResult<Json<WorkspaceView>> {
    let id = parse_id(&raw)?;
    let ws = app.ctl.workspace(&caller, id).await?;
    Ok(Json(app.view(&ws).await?))
}

#[utoipa::path(
    patch, path = "/workspaces/{id}",
    params(("id" = Uuid, Path, description = "workspace id")),
    request_body = PatchWorkspaceRequest,
    responses(
        (status = 200, body = WorkspaceView), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody), (status = 410, body = ErrorBody),
        (status = 409, body = ErrorBody, description = "image_not_found: the container engine does not have the new runtime's image (named in `error`); nothing was changed"),
    ),
    security(("bearer" = []))
)]
pub async fn patch_workspace(
    State(app): AppState,
    Auth(caller): Auth,
    Path(raw): Path<String>,
    JsonBody(body): JsonBody<PatchWorkspaceRequest>,
) -> ApiResult<Json<WorkspaceView>> {
    let id = parse_id(&raw)?;
    let patch = WorkspacePatch::try_from(body)?;
    let ws = app.ctl.patch(&caller, id, patch).await?;
    Ok(Json(app.view(&ws).await?))
}

#[utoipa::path(
    post, path = "/workspaces/{id}/restart",
    params(("id" = Uuid, Path, description = "workspace id")),
    responses(
        (status = 200, body = WorkspaceView),
        (status = 404, body = ErrorBody, description = "no such workspace, or removed"),
        (status = 409, body = ErrorBody, description = "paused_ancestor: an ancestor is paused"),
    ),
    security(("bearer" = []))
)]
pub async fn restart_workspace(
    State(app): AppState,
    Auth(caller): Auth,
    Path(raw): Path<String>,
) -> ApiResult<Json<WorkspaceView>> {
    let started = std::time::Instant::now();
    let id = parse_id(&raw)?;
    let ws = app.ctl.restart(&caller, id).await?;
    app.ctl.metrics().observe_op("restart", started.elapsed());
    Ok(Json(app.view(&ws).await?))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)] // Documents the query; parsed by `parse_query`.
pub struct DeleteParams {
    /// Also remove live descendants.
    confirm: Option<bool>,
    /// Erase the data after the erase grace (otherwise it is retained).
    erase_data: Option<bool>,
}

#[utoipa::path(
    delete, path = "/workspaces/{id}",
    params(
        ("id" = Uuid, Path, description = "workspace id"),
        ("X-Confirm-Name" = Option<String>, Header, description = "the workspace's exact name: a live workspace is not deleted without it (400 destructive_action_requires_confirmation)"),
        DeleteParams,
    ),
    responses(
        (status = 200, body = DeleteResponse),
        (status = 400, body = ErrorBody, description = "not a UUID, or destructive_action_requires_confirmation"),
        (status = 404, body = ErrorBody), (status = 409, body = ErrorBody, description = "confirmation_required"),
        (status = 410, body = ErrorBody), (status = 500, body = ErrorBody, description = "stop_failed"),
    ),
    security(("bearer" = []))
)]
pub async fn delete_workspace(
    State(app): AppState,
    Auth(caller): Auth,
    Path(raw): Path<String>,
    headers: HeaderMap,
    uri: axum::http::Uri,
) -> ApiResult<Json<DeleteResponse>> {
    // 1. Not a UUID.
    let id = parse_id(&raw)?;
    let mut req = DeleteRequest {
        confirm_name: headers
            .get("x-confirm-name")
            .and_then(|v| std::str::from_utf8(v.as_bytes()).ok())
            .map(str::to_owned),
        confirm_children: false,
        erase_data: false,
    };
    for (k, v) in parse_query(uri.query(), &["confirm", "erase_data"])? {
        match k.as_str() {
            "confirm" => req.confirm_children = parse_bool("confirm", &v)?,
            _ => req.erase_data = parse_bool("erase_data", &v)?,
        }
    }
    let started = std::time::Instant::now();
    let deleted = app.ctl.delete(&caller, id, req).await?;
    app.ctl.metrics().observe_op("delete", started.elapsed());
    Ok(Json(DeleteResponse::from(deleted)))
}

#[utoipa::path(
    get, path = "/workspaces/{id}/usage",
    params(("id" = Uuid, Path, description = "workspace id")),
    responses(
        (status = 200, body = UsageView, description = "data size and restarts per 15-minute bucket over the last 24 hours"),
        (status = 400, body = ErrorBody), (status = 404, body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn get_workspace_usage(
    State(app): AppState,
    Auth(caller): Auth,
    Path(raw): Path<String>,
) -> ApiResult<Json<UsageView>> {
    let id = parse_id(&raw)?;
    let samples = app.ctl.usage_history(&caller, id).await?;
    Ok(Json(UsageView::new(
        id,
        samples,
        holdfast_domain::now_millis(),
    )))
}

#[utoipa::path(
    get, path = "/workspaces/{id}/data",
    params(("id" = Uuid, Path, description = "workspace id")),
    responses(
        (status = 200, body = VolumeView), (status = 404, body = ErrorBody),
        (status = 503, body = ErrorBody, description = "control_plane_unreachable: the control plane does not answer and no record of the volume was seen yet"),
    ),
    security(("bearer" = []))
)]
pub async fn get_workspace_data(
    State(app): AppState,
    Auth(caller): Auth,
    Path(raw): Path<String>,
) -> ApiResult<Json<VolumeView>> {
    let id = parse_id(&raw)?;
    let (mode, known, history) = app.ctl.workspace_data(&caller, id).await?;
    let view = match known {
        Known::Fresh(Some(v)) => {
            let mut view = VolumeView::new(&v);
            view.mode = mode.map(|m| m.as_str().to_owned());
            view.history = history.map(|h| h.into_iter().map(Into::into).collect());
            view
        }
        Known::Fresh(None) => VolumeView::none(id, mode),
        // What was last seen, without its history; nothing seen yet is a
        // 503: there is no record to show.
        Known::LastKnown {
            volume: Some(v),
            as_of,
        } => {
            let mut view = VolumeView::new(&v);
            view.mode = mode.map(|m| m.as_str().to_owned());
            view.stale = true;
            view.as_of = as_of.map(holdfast_domain::format_millis);
            view
        }
        Known::LastKnown { volume: None, .. } => {
            return Err(holdfast_cp::CpError::Unreachable("volume".to_owned()).into());
        }
    };
    Ok(Json(view))
}

#[utoipa::path(
    get, path = "/volumes",
    params(("state" = Option<String>, Query, description = "active, retained, erase_pending, erasing or erased")),
    responses((status = 200, body = Vec<VolumeView>), (status = 400, body = ErrorBody)),
    security(("bearer" = []))
)]
pub async fn list_volumes(
    State(app): AppState,
    Auth(caller): Auth,
    uri: axum::http::Uri,
) -> ApiResult<Json<Vec<VolumeView>>> {
    let mut state = None;
    for (_, v) in parse_query(uri.query(), &["state"])? {
        state = Some(v.parse::<VolumeState>().map_err(|e| {
            ApiError::bad_request("invalid_field", format!("state: {e}")).with("field", "state")
        })?);
    }
    let out = app
        .ctl
        .volumes(&caller, state)
        .await?
        .into_iter()
        .map(|(v, mode)| {
            let mut view = VolumeView::new(&v);
            view.mode = mode.map(|m| m.as_str().to_owned());
            view
        })
        .collect();
    Ok(Json(out))
}

async fn run_state(
    app: Arc<App>,
    caller: Caller,
    raw: String,
    uri: axum::http::Uri,
    desired: DesiredState,
) -> ApiResult<Json<WorkspaceView>> {
    let id = parse_id(&raw)?;
    let mut cascade = false;
    for (_, v) in parse_query(uri.query(), &["cascade"])? {
        cascade = parse_bool("cascade", &v)?;
    }
    let started = std::time::Instant::now();
    let ws = app.ctl.set_run_state(&caller, id, desired, cascade).await?;
    app.ctl.metrics().observe_op(
        match desired {
            DesiredState::Paused => "pause",
            DesiredState::Hibernated => "hibernate",
            _ => "resume",
        },
        started.elapsed(),
    );
    Ok(Json(app.view(&ws).await?))
}

#[utoipa::path(
    post, path = "/workspaces/{id}/pause",
    params(("id" = Uuid, Path, description = "workspace id"), ("cascade" = Option<bool>, Query, description = "include live descendants")),
    responses((status = 200, body = WorkspaceView), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody, description = "has live descendants and no cascade=true")),
    security(("bearer" = []))
)]
pub async fn pause_workspace(
    State(app): AppState,
    Auth(caller): Auth,
    Path(raw): Path<String>,
    uri: axum::http::Uri,
) -> ApiResult<Json<WorkspaceView>> {
    run_state(app, caller, raw, uri, DesiredState::Paused).await
}

#[utoipa::path(
    post, path = "/workspaces/{id}/resume",
    params(("id" = Uuid, Path, description = "workspace id"), ("cascade" = Option<bool>, Query, description = "include live descendants")),
    responses((status = 200, body = WorkspaceView), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody, description = "an ancestor is paused")),
    security(("bearer" = []))
)]
pub async fn resume_workspace(
    State(app): AppState,
    Auth(caller): Auth,
    Path(raw): Path<String>,
    uri: axum::http::Uri,
) -> ApiResult<Json<WorkspaceView>> {
    run_state(app, caller, raw, uri, DesiredState::Running).await
}

#[utoipa::path(
    post, path = "/workspaces/{id}/hibernate",
    params(("id" = Uuid, Path, description = "workspace id"), ("cascade" = Option<bool>, Query, description = "include live descendants")),
    responses((status = 200, body = WorkspaceView), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody, description = "has live descendants and no cascade=true")),
    security(("bearer" = []))
)]
pub async fn hibernate_workspace(
    State(app): AppState,
    Auth(caller): Auth,
    Path(raw): Path<String>,
    uri: axum::http::Uri,
) -> ApiResult<Json<WorkspaceView>> {
    run_state(app, caller, raw, uri, DesiredState::Hibernated).await
}

#[utoipa::path(
    post, path = "/workspaces/{id}/wake",
    params(("id" = Uuid, Path, description = "workspace id"), ("cascade" = Option<bool>, Query, description = "include live descendants")),
    responses((status = 200, body = WorkspaceView), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody, description = "an ancestor is paused")),
    security(("bearer" = []))
)]
pub async fn wake_workspace(
    State(app): AppState,
    Auth(caller): Auth,
    Path(raw): Path<String>,
    uri: axum::http::Uri,
) -> ApiResult<Json<WorkspaceView>> {
    run_state(app, caller, raw, uri, DesiredState::Running).await
}
