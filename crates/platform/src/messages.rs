//! `POST` and `GET /workspaces/:id/messages`: talk to the workspace's runtime,
//! proxied to the URL it registered. A message to a hibernated workspace
//! wakes it first.

use crate::App;
use crate::auth::Caller;
use crate::body::JsonBody;
use crate::dto::ErrorBody;
use crate::error::{ApiError, ApiResult};
use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use holdfast_domain::DesiredState;
use serde::Deserialize;
use serde_json::Value;
use std::sync::Arc;
use std::time::{Duration, Instant};
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
    /// The URL of a registered, running runtime; waits (bounded) for one that
    /// is starting, and wakes a hibernated workspace.
    async fn runtime_url(&self, caller: &Caller, raw: &str) -> ApiResult<String> {
        let id = crate::routes::parse_id(raw)?;
        let ws = self.load_live(caller, id).await?;
        // Only the built-in runtime registers an address to relay to; a
        // command never will, so there is nothing to wait for (nor to wake).
        // That holds of the command running now even when the configuration
        // has since changed to the built-in runtime, which only the next
        // start applies.
        if !ws.runtime.is_builtin() || self.observed(id).runs_command {
            return Err(ApiError::conflict(
                "runtime_has_no_messages",
                "the workspace runs a command, which does not register with the platform \
                 and so takes no messages; only the built-in runtime does",
            ));
        }
        if ws.desired == DesiredState::Hibernated {
            self.store
                .set_desired(
                    &[id],
                    DesiredState::Running,
                    &caller.actor(),
                    holdfast_domain::AuditAction::WorkspaceWoken,
                    Some(serde_json::json!({"by": "message"})),
                    holdfast_domain::now_millis(),
                )
                .await?;
            self.reconcile(id).await?;
        } else if ws.desired != DesiredState::Running {
            return Err(ApiError::conflict(
                "workspace_not_running",
                format!("workspace is {}; resume it first", ws.desired),
            ));
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let ws = self
                .store
                .get_workspace(id)
                .await?
                .ok_or_else(|| ApiError::not_found("workspace"))?;
            let alive = match ws.instance_id.as_deref() {
                Some(instance) => self.instance_runs(id, instance).await,
                None => false,
            };
            if !alive {
                // A runtime that just died: let the reconciler notice now
                // (and restart it after its backoff) rather than relay a
                // message to a dead address.
                if let Err(e) = self.reconcile(id).await {
                    tracing::warn!(workspace_id = %id, error = %e, "reconcile before relay failed");
                }
            } else if let Some(url) = ws.url {
                return Ok(url);
            }
            if Instant::now() > deadline {
                // The workspace's state, not a failure of this server: a
                // runtime still starting, or crashing and restarted.
                return Err(ApiError::conflict(
                    "runtime_not_ready",
                    "the workspace's runtime has not registered yet; try again shortly",
                ));
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

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
    caller: Caller,
    Path(raw): Path<String>,
    JsonBody(body): JsonBody<MessageRequest>,
) -> ApiResult<Json<Value>> {
    let url = app.runtime_url(&caller, &raw).await?;
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
    caller: Caller,
    Path(raw): Path<String>,
) -> ApiResult<Json<Value>> {
    let url = app.runtime_url(&caller, &raw).await?;
    app.relay(app.http.get(format!("{url}/messages"))).await
}
