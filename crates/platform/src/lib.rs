//! The platform: the REST API (routes, auth, OpenAPI) and the lifecycle
//! service behind it, over a store and a control plane.
//!
//! Handlers parse input into domain types, then call methods of [`App`]
//! (`lifecycle`, `delete`), which write the store before they act on the
//! control plane.

pub mod auth;
mod body;
mod canvas;
mod data;
mod delete;
pub mod dto;
pub mod error;
mod events;
mod files;
mod lifecycle;
mod logs;
mod messages;
mod metrics;
mod openapi;
mod org;
mod orgs;
mod reconciler;
mod registry;
mod routes;
pub mod server;
mod snapshots;

pub use auth::{Secret, generate_token, hash_token};
pub use canvas::Graces;
pub use openapi::ApiDoc;
pub use reconciler::ReconcilerSettings;

use axum::Router;
use axum::http::{StatusCode, Uri};
use axum::routing::{get, post};
use holdfast_cp::ControlPlane;
use holdfast_store::Store;
use lifecycle::WorkspaceLocks;
use reconciler::Observed;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use uuid::Uuid;

/// The platform's shared state.
pub struct App {
    pub store: Store,
    pub cp: Arc<dyn ControlPlane>,
    admin_token_hash: [u8; 32],
    default_org: Uuid,
    /// The URL workspaces reach the platform at (`HOLDFAST_PLATFORM_URL`).
    public_url: String,
    locks: WorkspaceLocks,
    /// Per-workspace locks held across a whole delete or restore, so that
    /// of several at once on this server one acts and the others see its
    /// outcome (across replicas the store's compare-and-sets decide).
    destructive: WorkspaceLocks,
    /// What this server observes of each workspace's compute (not durable).
    observed: Mutex<HashMap<Uuid, Observed>>,
    events: events::EventBus,
    reconciler: ReconcilerSettings,
    /// For relaying messages to runtimes.
    http: reqwest::Client,
    metrics: metrics::Metrics,
    /// This replica, as a lease holder on a shared database. Stable across
    /// restarts (kept in its data dir), so that a replica restarted after a
    /// crash takes back its own leases at once instead of waiting them out.
    replica_id: String,
    /// What the control plane gives a workspace started now (shown for one
    /// that has not started yet).
    pub(crate) confinement: holdfast_cp::process::Confinement,
    /// Workspaces whose attached volume was over its quota at the last
    /// check: they are `degraded`.
    over_quota: Mutex<std::collections::HashSet<Uuid>>,
    /// Wakes the reconciler loop before its next tick, for intent written
    /// without a reconcile of its own (an org import).
    reconcile_soon: tokio::sync::Notify,
    /// How long a canvas session lasts after sign-in.
    session_ttl: std::time::Duration,
    /// The volume this server last read of each workspace, and when: what a
    /// read answers (marked stale) while the control plane is unreachable.
    last_known: Mutex<HashMap<Uuid, (holdfast_cp::VolumeInfo, holdfast_domain::Millis)>>,
    /// When the reconciler looks at a workspace again without an event: a
    /// backoff, a heartbeat window or a provision deadline that runs out.
    wakes: Mutex<reconciler::Wakes>,
    /// Tells the reconciler loop that the earliest wake moved.
    wakes_changed: tokio::sync::Notify,
    /// The graces the canvas's delete dialog dates its outcome by, when
    /// known (an embedded control plane's; see `App::set_graces`).
    pub(crate) graces: std::sync::OnceLock<canvas::Graces>,
}

impl App {
    pub async fn new(
        store: Store,
        cp: Arc<dyn ControlPlane>,
        admin_token: &Secret,
        public_url: String,
        reconciler: ReconcilerSettings,
        replica_id: String,
        session_ttl: std::time::Duration,
    ) -> anyhow::Result<Arc<App>> {
        let default_org = store.default_org(holdfast_domain::now_millis()).await?.id;
        let confinement = match cp.confinement().await {
            Ok(c) => c,
            Err(e) => {
                // An older or unreachable control plane: claim nothing.
                tracing::warn!(error = %e, "the control plane did not say how it isolates workspaces");
                holdfast_cp::process::Confinement {
                    isolation: holdfast_cp::process::Isolation::None,
                    limits: holdfast_cp::process::Limits::None,
                }
            }
        };
        Ok(Arc::new(App {
            store,
            cp,
            admin_token_hash: hash_token(admin_token.expose()),
            default_org,
            public_url,
            locks: WorkspaceLocks::default(),
            destructive: WorkspaceLocks::default(),
            observed: Mutex::new(HashMap::new()),
            events: events::EventBus::default(),
            reconciler,
            http: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .build()?,
            metrics: metrics::Metrics::default(),
            replica_id,
            confinement,
            over_quota: Mutex::new(Default::default()),
            reconcile_soon: tokio::sync::Notify::new(),
            session_ttl,
            last_known: Mutex::new(HashMap::new()),
            wakes: Mutex::new(reconciler::Wakes::default()),
            wakes_changed: tokio::sync::Notify::new(),
            graces: std::sync::OnceLock::new(),
        }))
    }

    /// Begins a graceful shutdown: ends the event streams, which would
    /// otherwise keep their connections (and so the server) open.
    pub fn begin_shutdown(&self) {
        self.events.close();
    }

    /// Asks the reconciler loop for a pass now rather than at its next tick.
    pub(crate) fn nudge_reconciler(&self) {
        self.reconcile_soon.notify_one();
    }

    /// Checks volume quotas every `usage_interval`.
    pub fn spawn_quota_watch(self: &Arc<Self>) -> tokio::task::JoinHandle<()> {
        let app = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(app.reconciler.usage_interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                if let Err(e) = app.check_quotas().await {
                    tracing::debug!(error = %e, "checking quotas failed; will retry");
                }
            }
        })
    }

    /// Runs the reconciler: see [`App::run_reconciler`].
    pub fn spawn_background(self: &Arc<Self>) -> tokio::task::JoinHandle<()> {
        let app = self.clone();
        tokio::spawn(async move { app.run_reconciler().await })
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
