//! The platform: the REST API (routes, auth, OpenAPI) and the canvas, as
//! thin adapters over the controller (`holdfast-controller`).
//!
//! Handlers parse input into domain types, call one method of the
//! [`Controller`], and render its answer or map its typed error
//! (`error.rs`). Nothing here reads the store or the control plane.

pub mod auth;
mod body;
mod canvas;
mod data;
pub mod dto;
pub mod error;
mod events;
mod files;
mod logs;
mod messages;
mod metrics;
mod openapi;
mod org;
mod orgs;
mod registry;
mod routes;
pub mod server;
mod snapshots;

pub use auth::{Secret, generate_token, hash_token};
pub use canvas::Graces;
pub use holdfast_controller::{Controller, ReconcilerSettings, Settings};
pub use openapi::ApiDoc;

use axum::Router;
use axum::http::{StatusCode, Uri};
use axum::routing::{get, post};
use std::sync::Arc;

/// The platform's shared state: the controller, and what only HTTP needs.
pub struct App {
    pub ctl: Arc<Controller>,
    /// For relaying messages to runtimes.
    http: reqwest::Client,
    /// The graces the canvas's delete dialog dates its outcome by, when
    /// known (an embedded control plane's; see `App::set_graces`).
    pub(crate) graces: std::sync::OnceLock<canvas::Graces>,
}

impl App {
    pub fn new(ctl: Arc<Controller>) -> anyhow::Result<Arc<App>> {
        Ok(Arc::new(App {
            ctl,
            http: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .build()?,
            graces: std::sync::OnceLock::new(),
        }))
    }
}

async fn fallback(uri: Uri) -> error::ApiError {
    error::ApiError::new(
        StatusCode::NOT_FOUND,
        "not_found",
        format!("no route {}", uri.path()),
    )
}

async fn method_not_allowed() -> error::ApiError {
    error::ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "method not allowed on this path",
    )
}

/// The API router.
pub fn router(app: Arc<App>) -> Router {
    Router::new()
        .route("/", get(canvas::root_redirect))
        .route("/health", get(routes::health))
        .route("/openapi.json", get(openapi::openapi_json))
        .route(
            "/workspaces",
            get(routes::list_workspaces).post(routes::create_workspace),
        )
        .route(
            "/workspaces/{id}",
            get(routes::get_workspace)
                .patch(routes::patch_workspace)
                .delete(routes::delete_workspace),
        )
        .route("/workspaces/{id}/restart", post(routes::restart_workspace))
        .route("/workspaces/{id}/pause", post(routes::pause_workspace))
        .route("/workspaces/{id}/resume", post(routes::resume_workspace))
        .route(
            "/workspaces/{id}/hibernate",
            post(routes::hibernate_workspace),
        )
        .route("/workspaces/{id}/wake", post(routes::wake_workspace))
        .route(
            "/workspaces/{id}/snapshots",
            get(snapshots::list_snapshots).post(snapshots::create_snapshot),
        )
        .route(
            "/snapshots/{sid}",
            get(snapshots::get_snapshot).delete(snapshots::delete_snapshot),
        )
        .route("/snapshots/{sid}/export", get(snapshots::export_snapshot))
        .route(
            "/workspaces/{id}/rollback",
            post(snapshots::rollback_workspace),
        )
        .route(
            "/workspaces/{id}/hold",
            axum::routing::put(snapshots::put_hold).delete(snapshots::delete_hold),
        )
        .route(
            "/workspaces/{id}/messages",
            get(messages::get_messages).post(messages::post_message),
        )
        .route("/events", get(events::events))
        .route("/registry/register", post(registry::register))
        .route("/registry/heartbeat", post(registry::heartbeat))
        .route("/workspaces/{id}/data", get(routes::get_workspace_data))
        .route("/workspaces/{id}/usage", get(routes::get_workspace_usage))
        .route("/volumes", get(routes::list_volumes))
        .route("/workspaces/{id}/restore", post(data::restore_workspace))
        .route("/workspaces/{id}/data/export", get(data::export_data))
        .route("/workspaces/{id}/logs", get(logs::get_logs))
        .route("/workspaces/{id}/data/files", get(files::list_files))
        .route("/workspaces/{id}/data/file", get(files::get_file))
        .route("/admin/sweep", post(data::admin_sweep))
        .route("/audit", get(data::list_audit))
        .route("/metrics", get(metrics::metrics))
        .merge(canvas::router())
        .route("/orgs", get(orgs::list_orgs).post(orgs::create_org))
        .route("/orgs/{id}/tokens", post(orgs::create_org_token))
        .route("/org/import", post(org::import_org))
        .route("/org/export", get(org::export_org))
        .method_not_allowed_fallback(method_not_allowed)
        .fallback(fallback)
        .with_state(app)
}
