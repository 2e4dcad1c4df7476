//! The data-safety operations: restore, the sweeper's pass, the audit log
//! and export.

use crate::reconciler::{ReconcileError, ReconcileResult};
use crate::{Caller, Controller, Error, Resource, Result};
use holdfast_cp::sweep::{SweepItem, SweepReport};
use holdfast_domain::{SweepAction, SweepOutcome, VolumeReason, VolumeState};
use holdfast_domain::{failpoint, now_millis};
use holdfast_store::{AuditEvent, AuditScope, WorkspaceRow};
use std::sync::Arc;
use uuid::Uuid;

impl Controller {
    /// Brings a removed workspace back with its data and starts it.
    #[tracing::instrument(skip_all, fields(workspace_id = %id))]
    pub async fn restore(&self, caller: &Caller, id: Uuid) -> Result<holdfast_store::WorkspaceRow> {
        // Serialised per workspace: a restore that waited here sees the
        // one before it done, and answers 409 not_removed.
        let serial = self.destructive.lock(id).await;
        let ws = self.load_managed(caller, id).await?;
        if !ws.is_removed() {
            return Err(Error::NotRemoved);
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
            .ok_or_else(|| Error::NotFound(Resource::Workspace))
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
    pub async fn sweep(&self, caller: &Caller, dry_run: bool) -> Result<SweepReport> {
        if *caller != Caller::Admin {
            return Err(Error::NotFound(Resource::Route));
        }
        self.sweep_waiting(dry_run, &caller.actor(), std::time::Duration::from_secs(60))
            .await
    }

    async fn sweep_waiting(
        &self,
        dry_run: bool,
        actor: &str,
        wait: std::time::Duration,
    ) -> Result<SweepReport> {
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
                    return Err(Error::SweepInProgress);
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
            Err(e) => tracing::warn!(error = %e, "snapshot schedules failed this pass"),
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
    async fn settle_interrupted_restores(&self, dry_run: bool) -> Result<Vec<SweepItem>> {
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
                    Err(e) => tracing::warn!(error = %e, "sweeper pass failed"),
                }
            }
        })
    }

    /// The newest `limit` audit events `caller` may see, of one workspace or
    /// of all it may see; scoped in the query, so that an org's page is
    /// full whenever it has that many events, however busy other orgs are.
    pub async fn audit(
        &self,
        caller: &Caller,
        workspace: Option<Uuid>,
        limit: i64,
    ) -> Result<Vec<AuditEvent>> {
        if let Some(ws) = workspace {
            // Another org's workspace is simply not found.
            self.load_managed(caller, ws).await?;
        }
        let scope = match caller {
            Caller::Admin => AuditScope::All,
            Caller::Org(org) => AuditScope::Org(*org),
            Caller::Workspace { .. } => return Err(Error::NotFound(Resource::Route)),
        };
        let mut events = self.store.list_audit(scope, workspace, 0, limit).await?;
        // A remote control plane audits its own acts (erasures above all) in
        // its own store; they are part of this log too.
        let remote = remote_audit(self, scope, workspace, limit).await?;
        if !remote.is_empty() {
            let seen: std::collections::HashSet<Uuid> = events.iter().map(|e| e.id).collect();
            events.extend(remote.into_iter().filter(|e| !seen.contains(&e.id)));
            events.sort_by_key(|e| std::cmp::Reverse(e.at));
            events.truncate(usize::try_from(limit).unwrap_or(usize::MAX));
        }
        Ok(events)
    }

    /// A workspace's data as a `.tar.gz` stream, with the workspace.
    pub async fn export(
        &self,
        caller: &Caller,
        id: Uuid,
    ) -> Result<(WorkspaceRow, holdfast_cp::export::ByteStream)> {
        let ws = self.load_managed(caller, id).await?;
        let stream = self.cp.export(id).await?;
        Ok((ws, stream))
    }

    /// The tail of a workspace's log, followed when asked.
    pub async fn logs(
        &self,
        caller: &Caller,
        id: Uuid,
        tail: u64,
        follow: bool,
    ) -> Result<Option<holdfast_cp::export::ByteStream>> {
        self.load_managed(caller, id).await?;
        Ok(self.cp.logs(id, tail, follow).await?)
    }
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
    app: &Controller,
    scope: AuditScope,
    workspace: Option<Uuid>,
    limit: i64,
) -> Result<Vec<holdfast_store::AuditEvent>> {
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
