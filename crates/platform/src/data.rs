//! The data-safety API: restore, export, the sweeper's trigger and the audit
//! log.

use crate::App;
use crate::auth::Caller;
use crate::body::JsonBody;
use crate::dto::{ErrorBody, WorkspaceView};
use crate::error::{ApiError, ApiResult};
use crate::reconciler::{ReconcileError, ReconcileResult};
use crate::routes::{parse_id, parse_query};
use axum::Json;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use holdfast_cp::sweep::{SweepItem, SweepReport};
use holdfast_domain::{AuditAction, SweepAction, SweepOutcome, VolumeReason, VolumeState};
use holdfast_domain::{failpoint, format_millis, now_millis};
use holdfast_store::AuditScope;
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::time::Instant;
use utoipa::ToSchema;
use uuid::Uuid;

fn not_removed() -> ApiError {
    ApiError::conflict(
        "not_removed",
        "workspace is not removed; nothing to restore",
    )
}

impl App {
    /// Brings a removed workspace back with its data and starts it.
    #[tracing::instrument(skip_all, fields(workspace_id = %id))]
    pub async fn restore(
        &self,
        caller: &Caller,
        id: Uuid,
    ) -> ApiResult<holdfast_store::WorkspaceRow> {
        // Serialised per workspace: a restore that waited here sees the
        // one before it done, and answers 409 not_removed.
        let serial = self.destructive.lock(id).await;
        let ws = self.load_managed(caller, id).await?;
        if !ws.is_removed() {
            return Err(not_removed());
        }
        if let Some(parent) = self.removed_parent(&ws).await? {
            return Err(ReconcileError::ParentRemoved(parent).into());
        }
        let actor = caller.actor();
        // Ordering: intent first. The request is on the row before the
        // control plane touches the volume; from here on a crash, a dead
        // control plane or a lost lease leaves a request the reconciler
        // finishes (or cancels once the data is erased), never an active
        // volume of a removed workspace that nothing owns.
        self.store.request_restore(id, &actor, now_millis()).await?;
        failpoint::hit("restore.after_intent");
        {
            let _guard = self.locks.lock(id).await;
            let lease = self.lease_or_busy(id).await?;
            let done = self.complete_restore_locked(id, &lease).await;
            self.release(lease).await;
            done?;
        }
        drop(serial);
        self.reconcile(id).await?;
        self.store
            .get_workspace(id)
            .await?
            .ok_or_else(|| ApiError::not_found("workspace"))
    }

    /// The workspace's parent, when it is removed (or gone): a child comes
    /// back only under a live parent.
    async fn removed_parent(
        &self,
        ws: &holdfast_store::WorkspaceRow,
    ) -> holdfast_store::StoreResult<Option<Uuid>> {
        let Some(parent) = ws.parent_id else {
            return Ok(None);
        };
        let live = self
            .store
            .get_workspace(parent)
            .await?
            .is_some_and(|p| !p.is_removed());
        Ok((!live).then_some(parent))
    }

    /// Carries out a recorded restore request: the volume back to `active`
    /// (a compare-and-set that loses to an erasure already begun), then the
    /// row live again. Idempotent; the reconciler calls it for a request a
    /// crash interrupted. The caller holds the workspace's lock and lease.
    pub(crate) async fn complete_restore_locked(
        &self,
        id: Uuid,
        lease: &crate::reconciler::Lease,
    ) -> ReconcileResult<()> {
        let Some(ws) = self.store.get_workspace(id).await? else {
            return Ok(());
        };
        let Some(actor) = ws.restore_by.clone().filter(|_| ws.is_removed()) else {
            // Done already, or never asked.
            return Ok(());
        };
        if let Some(parent) = self.removed_parent(&ws).await? {
            self.store.cancel_restore(id, now_millis()).await?;
            return Err(ReconcileError::ParentRemoved(parent));
        }
        if !ws.compute_released {
            // The delete's stop has not finished: finish it first, so that
            // no instance of the removed workspace outlives its record.
            self.finish_removal_locked(&ws, &actor, lease).await?;
        }
        match self.cp.restore_volume(id, &actor).await {
            Ok(_) => {}
            Err(holdfast_cp::CpError::DataErased) => {
                self.store.cancel_restore(id, now_millis()).await?;
                return Err(holdfast_cp::CpError::DataErased.into());
            }
            // The request stands: it is finished when the control plane
            // answers again.
            Err(e) => return Err(e.into()),
        }
        failpoint::hit("restore.after_volume");
        // A compare-and-set: another replica's restore that won in between
        // makes this one a 409.
        self.store
            .unremove_workspace(id, &actor, now_millis())
            .await?;
        Ok(())
    }

    /// One sweeper pass, recorded in the metrics.
    ///
    /// Replicas on one database sweep one at a time: a pass holds the
    /// `sweeper` lease (waiting up to `wait` for another replica's pass).
    pub async fn sweep(&self, dry_run: bool, actor: &str) -> ApiResult<SweepReport> {
        self.sweep_waiting(dry_run, actor, std::time::Duration::from_secs(60))
            .await
    }

    async fn sweep_waiting(
        &self,
        dry_run: bool,
        actor: &str,
        wait: std::time::Duration,
    ) -> ApiResult<SweepReport> {
        // A short lease, renewed while the pass runs: a replica that dies
        // mid-pass holds up the others for at most SWEEP_LEASE.
        const SWEEP_LEASE: i64 = 30_000;
        let shared = self.store.dialect() == holdfast_store::Dialect::Postgres;
        let mut renew = None;
        if shared && !dry_run {
            let deadline = std::time::Instant::now() + wait;
            loop {
                let now = now_millis();
                if self
                    .store
                    .try_lease("sweeper", &self.replica_id, now + SWEEP_LEASE, now)
                    .await?
                {
                    break;
                }
                if std::time::Instant::now() >= deadline {
                    return Err(ApiError::conflict(
                        "sweep_in_progress",
                        "another replica is sweeping; try again shortly",
                    ));
                }
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
            let store = self.store.clone();
            let holder = self.replica_id.clone();
            renew = Some(tokio::spawn(async move {
                loop {
                    tokio::time::sleep(std::time::Duration::from_secs(10)).await;
                    let now = now_millis();
                    let _ = store
                        .try_lease("sweeper", &holder, now + SWEEP_LEASE, now)
                        .await;
                }
            }));
        }
        let settled = self.settle_interrupted_restores(dry_run).await;
        let report = self.cp.sweep(dry_run, actor).await;
        let scheduled = self.run_schedules(dry_run, actor).await;
        if let Some(renew) = renew {
            renew.abort();
            let _ = self.store.release_lease("sweeper", &self.replica_id).await;
        }
        let mut report = report?;
        report.items.extend(settled?);
        match scheduled {
            Ok(items) => report.items.extend(items),
            Err(e) => tracing::warn!(error = %e.message, "snapshot schedules failed this pass"),
        }
        if !dry_run {
            self.metrics.observe_sweep(&report);
        }
        Ok(report)
    }

    /// An `active` volume whose workspace is removed and settled, with no
    /// restore asked for, can only be what an older version's restore left
    /// when it crashed halfway (this one writes its intent first): nothing
    /// would ever reclaim it. It goes back to `retained`, so that its
    /// retention grace runs (and a restore still brings it back).
    async fn settle_interrupted_restores(&self, dry_run: bool) -> ApiResult<Vec<SweepItem>> {
        let settled = self.store.settled_removed_ids().await?;
        if settled.is_empty() {
            return Ok(Vec::new());
        }
        let mut items = Vec::new();
        for v in self.cp.list_volumes(Some(VolumeState::Active)).await? {
            if !settled.contains(&v.workspace_id) {
                continue;
            }
            let mut item = SweepItem {
                snapshot_id: None,
                volume_id: Some(v.id),
                workspace_id: v.workspace_id,
                action: SweepAction::Retain,
                reason: VolumeReason::RestoreInterrupted,
                outcome: SweepOutcome::Planned,
                bytes: Some(v.bytes),
                error: None,
            };
            if !dry_run {
                match self
                    .cp
                    .retain_volume(v.workspace_id, "sweeper", VolumeReason::RestoreInterrupted)
                    .await
                {
                    Ok(_) => item.outcome = SweepOutcome::Done,
                    Err(e) => {
                        item.outcome = SweepOutcome::Failed;
                        item.error = Some(e.to_string());
                    }
                }
            }
            items.push(item);
        }
        Ok(items)
    }

    /// Runs the sweeper at start and then every `every`.
    pub fn spawn_sweeper(
        self: &Arc<Self>,
        every: std::time::Duration,
    ) -> tokio::task::JoinHandle<()> {
        let app = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                match app
                    .sweep_waiting(false, "sweeper", std::time::Duration::ZERO)
                    .await
                {
                    Ok(r) if !r.items.is_empty() => {
                        tracing::info!(
                            actions = r.items.len(),
                            duration_ms = r.duration_ms,
                            "sweeper pass"
                        )
                    }
                    Ok(_) => {}
                    Err(e) => tracing::warn!(error = %e.message, "sweeper pass failed"),
                }
            }
        })
    }
}

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
    caller: Caller,
    Path(raw): Path<String>,
) -> ApiResult<Json<WorkspaceView>> {
    let started = Instant::now();
    let id = parse_id(&raw)?;
    let ws = app.restore(&caller, id).await?;
    app.metrics.observe_op("restore", started.elapsed());
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
    caller: Caller,
    Path(raw): Path<String>,
) -> ApiResult<Response> {
    let id = parse_id(&raw)?;
    let ws = app.load_managed(&caller, id).await?;
    let stream = app.cp.export(id).await?;
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
    caller: Caller,
    JsonBody(body): JsonBody<SweepRequest>,
) -> ApiResult<Json<SweepReport>> {
    if caller != Caller::Admin {
        return Err(ApiError::not_found("route"));
    }
    Ok(Json(app.sweep(body.dry_run, &caller.actor()).await?))
}

/// The most remote events looked through for an org's page: the control
/// plane keeps no org, so its events are matched to the org's workspaces
/// here.
const REMOTE_AUDIT_WINDOW: i64 = 20_000;

/// The newest `limit` events a remote control plane recorded that `scope`
/// may see (none from the embedded one, which writes into our store). The
/// control plane knows tenants, not orgs: for an org, its events are matched
/// against the org's workspaces (one query), widening the window until the
/// page is full or the log is exhausted, so that other orgs' events never
/// shorten the page.
async fn remote_audit(
    app: &App,
    scope: AuditScope,
    workspace: Option<Uuid>,
    limit: i64,
) -> ApiResult<Vec<holdfast_store::AuditEvent>> {
    let org = match (scope, workspace) {
        // One workspace's events, already checked as the caller's, or the
        // admin's: nothing to match.
        (AuditScope::Org(org), None) => org,
        _ => return Ok(app.cp.audit_events(workspace, limit).await?),
    };
    let mut window = limit;
    let mut mine: Option<std::collections::HashSet<Uuid>> = None;
    loop {
        let page = app.cp.audit_events(None, window).await?;
        let exhausted = (page.len() as i64) < window || window >= REMOTE_AUDIT_WINDOW;
        if page.is_empty() {
            return Ok(page);
        }
        if mine.is_none() {
            mine = Some(app.store.workspace_ids_of_org(org).await?);
        }
        let mine = mine.as_ref().expect("set above");
        let visible: Vec<_> = page
            .into_iter()
            .filter(|e| e.workspace_id.is_some_and(|w| mine.contains(&w)))
            .collect();
        if visible.len() as i64 >= limit || exhausted {
            return Ok(visible);
        }
        window = (window * 4).min(REMOTE_AUDIT_WINDOW);
    }
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
    caller: Caller,
    uri: axum::http::Uri,
) -> ApiResult<Json<Vec<AuditView>>> {
    if matches!(caller, Caller::Workspace { .. }) {
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
    if let Some(ws) = workspace {
        // Another org's workspace is simply not found.
        app.load_managed(&caller, ws).await?;
    }
    let scope = match caller {
        Caller::Admin => AuditScope::All,
        Caller::Org(org) => AuditScope::Org(org),
        Caller::Workspace { .. } => return Err(ApiError::not_found("route")),
    };
    // Scoped in the query: an org's page is full whenever it has that many
    // events, however busy the other orgs are.
    let mut events = app.store.list_audit(scope, workspace, 0, limit).await?;
    // A remote control plane audits its own acts (erasures above all) in
    // its own store; they are part of this log too.
    let remote = remote_audit(&app, scope, workspace, limit).await?;
    if !remote.is_empty() {
        let seen: std::collections::HashSet<Uuid> = events.iter().map(|e| e.id).collect();
        events.extend(remote.into_iter().filter(|e| !seen.contains(&e.id)));
        events.sort_by_key(|e| std::cmp::Reverse(e.at));
        events.truncate(usize::try_from(limit).unwrap_or(usize::MAX));
    }
    let out = events
        .into_iter()
        .map(|e| AuditView {
            id: e.id,
            at: format_millis(e.at),
            actor: e.actor,
            action: e.action,
            workspace_id: e.workspace_id,
            volume_id: e.volume_id,
            reason: e.reason,
            detail: e.detail,
        })
        .collect();
    Ok(Json(out))
}
