//! `POST /registry/register` and `/registry/heartbeat`: a running runtime,
//! authenticated by its workspace token, says where it listens and that it
//! is alive.

use crate::App;
use crate::auth::{Auth, Caller};
use crate::body::JsonBody;
use crate::dto::ErrorBody;
use crate::error::{ApiError, ApiResult};
use axum::Json;
use axum::extract::State;
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use utoipa::ToSchema;
use uuid::Uuid;

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RegisterRequest {
    /// Where the runtime serves `/messages`: an `http://` URL.
    pub url: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct RegisterResponse {
    pub workspace_id: Uuid,
    /// How often to heartbeat.
    pub heartbeat_interval_ms: u64,
}

fn workspace_of(caller: &Caller) -> ApiResult<Uuid> {
    match caller {
        Caller::Workspace { workspace_id, .. } => Ok(*workspace_id),
        _ => Err(ApiError::new(
            axum::http::StatusCode::FORBIDDEN,
            "workspace_token_required",
            "only a workspace token may register or heartbeat",
        )),
    }
}

/// A registered URL must be plain `http://host:port[/path]` with no
/// credentials: the platform proxies messages to it.
fn parse_url(raw: &str) -> ApiResult<String> {
    let bad = || {
        ApiError::bad_request(
            "invalid_field",
            format!("url: must be an http:// URL, got {raw:?}"),
        )
    };
    let rest = raw.strip_prefix("http://").ok_or_else(bad)?;
    let authority = rest.split('/').next().unwrap_or_default();
    if authority.is_empty()
        || authority.contains('@')
        || raw.len() > 2048
        || raw.chars().any(|c| c.is_control() || c.is_whitespace())
    {
        return Err(bad());
    }
    Ok(raw.trim_end_matches('/').to_owned())
}

#[utoipa::path(
    post, path = "/registry/register", request_body = RegisterRequest,
    responses((status = 200, body = RegisterResponse), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)),
    security(("bearer" = []))
)]
pub async fn register(
    State(app): State<Arc<App>>,
    Auth(caller): Auth,
    JsonBody(body): JsonBody<RegisterRequest>,
) -> ApiResult<Json<RegisterResponse>> {
    let id = workspace_of(&caller)?;
    let url = parse_url(&body.url)?;
    app.ctl
        .register(id, &url)
        .await
        .map_err(ApiError::internal)?;
    Ok(Json(RegisterResponse {
        workspace_id: id,
        heartbeat_interval_ms: u64::try_from(app.ctl.heartbeat_interval().as_millis())
            .unwrap_or(5000),
    }))
}

/// An empty object: the token says who is alive.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct HeartbeatRequest {}

#[utoipa::path(
    post, path = "/registry/heartbeat", request_body = HeartbeatRequest,
    responses((status = 200, body = crate::dto::Health), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)),
    security(("bearer" = []))
)]
pub async fn heartbeat(
    State(app): State<Arc<App>>,
    Auth(caller): Auth,
    JsonBody(_body): JsonBody<HeartbeatRequest>,
) -> ApiResult<Json<crate::dto::Health>> {
    let id = workspace_of(&caller)?;
    app.ctl.heartbeat(id).await.map_err(ApiError::internal)?;
    Ok(Json(crate::dto::Health {
        status: "ok".to_owned(),
    }))
}
