//! `POST` and `GET /workspaces/:id/messages`: talk to the workspace's runtime,
//! proxied to the URL it registered. A message to a hibernated workspace
//! wakes it first.

use crate::App;
use crate::auth::Auth;
use crate::body::JsonBody;
use crate::dto::ErrorBody;
use crate::error::{ApiError, ApiResult};
use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use serde::Deserialize;
use serde_json::Value;
use std::sync::Arc;
use std::time::Duration;
use utoipa::ToSchema;

/// Answers from a runtime larger than this are refused, not relayed.
const MAX_RUNTIME_ANSWER: usize = 4 * 1024 * 1024;

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MessageRequest {
    /// What to say.
    pub text: String,
}

fn unavailable(msg: impl Into<String>) -> ApiError {
    ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "runtime_unavailable", msg)
}

impl App {
    async fn relay(&self, req: reqwest::RequestBuilder) -> ApiResult<Json<Value>> {
        let mut resp = req
            .timeout(Duration::from_secs(30))
            .send()
            .await
            .map_err(|_| unavailable("the workspace's runtime did not answer"))?;
        if !resp.status().is_success() {
            return Err(unavailable(format!(
                "the workspace's runtime answered {}",
                resp.status().as_u16()
            )));
        }
        let mut buf = Vec::new();
        while let Some(chunk) = resp
            .chunk()
            .await
            .map_err(|_| unavailable("the runtime's answer broke off"))?
        {
            if buf.len() + chunk.len() > MAX_RUNTIME_ANSWER {
                return Err(unavailable("the runtime's answer is too large"));
            }
            buf.extend_from_slice(&chunk);
        }
        serde_json::from_slice(&buf)
            .map(Json)
            .map_err(|_| unavailable("the runtime's answer is not JSON"))
    }
}

#[utoipa::path(
    post, path = "/workspaces/{id}/messages",
    params(("id" = uuid::Uuid, Path, description = "workspace id")),
    request_body = MessageRequest,
    responses((status = 200, description = "the runtime's reply and its remembered history"),
        (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody, description = "runtime_has_no_messages (a command runtime), runtime_not_ready or workspace_not_running"),
        (status = 503, body = ErrorBody)),
    security(("bearer" = []))
)]
pub async fn post_message(
    State(app): State<Arc<App>>,
    Auth(caller): Auth,
    Path(raw): Path<String>,
    JsonBody(body): JsonBody<MessageRequest>,
) -> ApiResult<Json<Value>> {
    let url = app
        .ctl
        .runtime_url(&caller, crate::routes::parse_id(&raw)?)
        .await?;
    app.relay(
        app.http
            .post(format!("{url}/messages"))
            .json(&serde_json::json!({"text": body.text})),
    )
    .await
}

#[utoipa::path(
    get, path = "/workspaces/{id}/messages",
    params(("id" = uuid::Uuid, Path, description = "workspace id")),
    responses((status = 200, description = "the runtime's remembered history"),
        (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody, description = "runtime_has_no_messages (a command runtime), runtime_not_ready or workspace_not_running"),
        (status = 503, body = ErrorBody)),
    security(("bearer" = []))
)]
pub async fn get_messages(
    State(app): State<Arc<App>>,
    Auth(caller): Auth,
    Path(raw): Path<String>,
) -> ApiResult<Json<Value>> {
    let url = app
        .ctl
        .runtime_url(&caller, crate::routes::parse_id(&raw)?)
        .await?;
    app.relay(app.http.get(format!("{url}/messages"))).await
}
