//! The one mapping from error kinds to HTTP statuses and `{"error","code"}`
//! bodies.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use holdfast_domain::FieldError;
use serde_json::{Map, Value, json};

/// An error answered to a client. Its message is a human sentence; its code is
/// stable snake_case that scripts branch on.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    /// Extra fields merged into the JSON body (e.g. `children_count`).
    pub extra: Map<String, Value>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
            extra: Map::new(),
        }
    }

    pub fn with(mut self, key: &str, value: impl Into<Value>) -> Self {
        self.extra.insert(key.to_owned(), value.into());
        self
    }

    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        ApiError::new(StatusCode::BAD_REQUEST, code, message)
    }

    pub fn not_found(what: &str) -> Self {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("{what} not found"),
        )
    }

    pub fn unauthorized() -> Self {
        ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "a valid token is required: send Authorization: Bearer <token>",
        )
    }

    pub fn conflict(code: &'static str, message: impl Into<String>) -> Self {
        ApiError::new(StatusCode::CONFLICT, code, message)
    }

    /// 503: another replica is acting on the workspace (or held it and
    /// died, until its lease runs out). What was asked is recorded and the
    /// reconciler carries it out; repeating the request is safe.
    pub fn busy() -> Self {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "workspace_busy",
            "another server replica is acting on this workspace; the change asked for is \
             recorded and will be carried out, or repeat the request shortly",
        )
    }

    /// An internal failure. The detail is logged here, where it is handled,
    /// and the client gets a sentence without internals.
    pub fn internal(err: impl std::fmt::Display) -> Self {
        tracing::error!(error = %err, "internal error");
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "internal error; see the server log",
        )
    }
}

impl From<FieldError> for ApiError {
    fn from(e: FieldError) -> Self {
        ApiError::bad_request("invalid_field", e.to_string()).with("field", e.field)
    }
}

impl From<holdfast_store::StoreError> for ApiError {
    fn from(e: holdfast_store::StoreError) -> Self {
        match e {
            holdfast_store::StoreError::NotFound => ApiError::not_found("resource"),
            e @ holdfast_store::StoreError::VolumeMoved { .. } => {
                ApiError::conflict("volume_changed", e.to_string())
            }
            holdfast_store::StoreError::WorkspaceRemoved(_) => ApiError::new(
                StatusCode::GONE,
                "workspace_removed",
                "workspace is removed; restore it first",
            ),
            holdfast_store::StoreError::WorkspaceNotRemoved(_) => ApiError::conflict(
                "not_removed",
                "workspace is not removed; nothing to restore",
            ),
            e @ holdfast_store::StoreError::NameTaken { .. } => {
                ApiError::conflict("name_taken", e.to_string())
            }
            holdfast_store::StoreError::ImportRaced(m) => ApiError::conflict("import_raced", m),
            holdfast_store::StoreError::Fenced(_) => ApiError::busy(),
            holdfast_store::StoreError::Other(e) => ApiError::internal(format!("{e:#}")),
        }
    }
}

impl From<holdfast_cp::CpError> for ApiError {
    fn from(e: holdfast_cp::CpError) -> Self {
        match e {
            holdfast_cp::CpError::BadRequest(m) => ApiError::bad_request("invalid_field", m),
            holdfast_cp::CpError::Conflict(m) => ApiError::conflict("conflict", m),
            holdfast_cp::CpError::DataErased => ApiError::conflict(
                "data_erased",
                "the workspace's data has been erased (or its erasure has begun); it cannot be restored",
            ),
            holdfast_cp::CpError::NotFound(m) => {
                ApiError::new(StatusCode::NOT_FOUND, "not_found", m)
            }
            holdfast_cp::CpError::ExportRefused(m) => ApiError::conflict(
                "export_refused",
                format!("the data cannot be exported: {m}"),
            ),
            holdfast_cp::CpError::Unavailable(m) => {
                // The engine's own words (a socket path, an address) stay
                // in the log.
                tracing::warn!(reason = %m, "the container engine is unreachable");
                ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "engine_unreachable",
                    "the engine that runs the workspaces (the container engine, or the Kubernetes API server) is unreachable; try again after Retry-After seconds",
                )
            }
            holdfast_cp::CpError::Unreachable(m) => {
                tracing::warn!(reason = %m, "control plane unreachable");
                ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "control_plane_unreachable",
                    "the control plane does not answer; what was asked is recorded and \
                     carried out when it is back, or repeat the request shortly",
                )
            }
            holdfast_cp::CpError::ImageMissing(m) => ApiError::conflict("image_not_found", m),
            holdfast_cp::CpError::SnapshotsUnavailable(m) => {
                ApiError::conflict("snapshots_unavailable", m)
            }
            holdfast_cp::CpError::SnapshotRefused(m) => ApiError::conflict(
                "snapshot_refused",
                format!("the data cannot be snapshotted: {m}"),
            ),
            holdfast_cp::CpError::StorageFull(m) => {
                tracing::error!(reason = %m, "storage full");
                ApiError::new(StatusCode::INSUFFICIENT_STORAGE, "insufficient_storage", m)
            }
            e @ (holdfast_cp::CpError::Unauthorized | holdfast_cp::CpError::TooLarge) => {
                // This server's own request or credentials, not the client's.
                ApiError::internal(format!("control plane refused: {e}"))
            }
            holdfast_cp::CpError::Other(e) => ApiError::internal(format!("control plane: {e:#}")),
        }
    }
}

impl From<holdfast_controller::Error> for ApiError {
    fn from(e: holdfast_controller::Error) -> Self {
        use holdfast_controller::Error as E;
        let message = e.to_string();
        match e {
            E::NotFound(what) => ApiError::not_found(what.as_str()),
            E::InvalidField { field, .. } => {
                ApiError::bad_request("invalid_field", message).with("field", field)
            }
            E::WorkspaceRemoved | E::AlreadyRemoved => {
                ApiError::new(StatusCode::GONE, "workspace_removed", message)
            }
            E::NotRemoved => ApiError::conflict("not_removed", message),
            E::NameNotConfirmed {
                name, child_count, ..
            } => {
                let mut err =
                    ApiError::bad_request("destructive_action_requires_confirmation", message)
                        .with("workspace_name", name);
                if let Some(n) = child_count {
                    err = err.with("child_count", n);
                }
                err
            }
            E::ChildrenNotConfirmed { children, .. } => {
                let count = children.len();
                let list: Vec<Value> = children
                    .into_iter()
                    .map(|(id, name)| json!({"id": id, "name": name}))
                    .collect();
                ApiError::conflict("confirmation_required", message)
                    .with("children", list)
                    .with("children_count", count)
            }
            E::PausedAncestor { id, .. } => {
                ApiError::conflict("paused_ancestor", message).with("ancestor_id", id.to_string())
            }
            E::LegalHold { id, .. } => {
                ApiError::conflict("legal_hold", message).with("workspace_id", id.to_string())
            }
            E::ParentRemoved(parent) => {
                ApiError::conflict("parent_removed", message).with("parent_id", parent.to_string())
            }
            E::StopFailed {
                removed,
                failures,
                unavailable,
            } => {
                // A control plane that does not answer (or another replica
                // that holds a workspace) is a passing state: 503 with
                // Retry-After.
                let status = if unavailable {
                    StatusCode::SERVICE_UNAVAILABLE
                } else {
                    StatusCode::INTERNAL_SERVER_ERROR
                };
                ApiError::new(status, "stop_failed", message)
                    .with("removed_count", removed)
                    .with(
                        "stop_failures",
                        serde_json::to_value(&failures).unwrap_or_default(),
                    )
            }
            E::SweepInProgress => ApiError::conflict("sweep_in_progress", message),
            E::NoDurableData => ApiError::conflict("no_durable_data", message),
            E::SnapshotNotReady { .. } => ApiError::conflict("snapshot_unavailable", message),
            E::SnapshotDeleted => ApiError::new(StatusCode::GONE, "snapshot_deleted", message),
            E::NotHeld => ApiError::conflict("not_held", message),
            E::RuntimeHasNoMessages => ApiError::conflict("runtime_has_no_messages", message),
            E::WorkspaceNotRunning(_) => ApiError::conflict("workspace_not_running", message),
            E::RuntimeNotReady => ApiError::conflict("runtime_not_ready", message),
            E::OrgChanged(_) => ApiError::conflict("org_changed", message),
            E::OrgExists(_) => ApiError::conflict("org_exists", message),
            E::Busy => ApiError::busy(),
            E::Store(e) => e.into(),
            E::ControlPlane(e) => e.into(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut body = Map::new();
        body.insert("error".into(), json!(self.message));
        body.insert("code".into(), json!(self.code));
        body.extend(self.extra);
        let mut response = (self.status, axum::Json(Value::Object(body))).into_response();
        // An unavailable backend is a passing state: say when to come back.
        if self.status == StatusCode::SERVICE_UNAVAILABLE {
            response.headers_mut().insert(
                axum::http::header::RETRY_AFTER,
                axum::http::HeaderValue::from_static("5"),
            );
        }
        response
    }
}

pub type ApiResult<T> = Result<T, ApiError>;
