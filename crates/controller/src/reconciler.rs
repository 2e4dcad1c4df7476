//! The reconciler: drives each workspace's compute toward its intent.
//!
//! Intent (desired state and generation) lives in the store, and so does
//! what was observed of the compute that matters to every replica: which
//! instance runs, for which generation it was started, when, where its
//! runtime registered and when it last heartbeated. The control plane's
//! `status` says whether that instance still runs. What only paces this
//! replica's own retries (crash count, backoff, a failed generation) lives
//! in memory in [`Observed`].
//!
//! Every action on one workspace runs under its local lock and, on a shared
//! database, under a lease on its row, so a start and a stop of the same
//! workspace never overlap, whichever replica acts. API handlers write
//! intent and then call [`Controller::reconcile`] for that workspace; the background
//! loop does the same for every workspace, so an intent whose handler (or
//! whose replica) died is still carried out.
//!
//! **Architecture Invariant:** the reconciler only ever calls
//! `ControlPlane::stop`. Finishing a removal goes through
//! `Controller::finish_removal_locked` in `delete.rs`.

use crate::Controller;
use crate::events::Event;
use crate::identity::{generate_token, hash_hex};
use holdfast_cp::{InstanceState, ProvisionRequest};
use holdfast_domain::failpoint;
use holdfast_domain::{DesiredState, Runtime, Status, StatusReason, now_millis};
use holdfast_store::{Fence, WorkspaceRow};
use plan::{Action, Facts, Pacing, Seen, Timing};

pub mod plan;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};
use uuid::Uuid;

/// What this replica keeps of a workspace. Not persisted: a replica that
/// takes over starts from the default.
#[derive(Debug, Clone, Default)]
pub struct Observed {
    /// Crash count, backoff and failed starts: see [`plan::Pacing`].
    pub pacing: Pacing,
    /// The next start is the workspace's very first (set by create only).
    pub first_start: bool,
    /// The volume the last start attached, as the control plane reported it.
    pub attached: Option<holdfast_cp::VolumeInfo>,
    /// The instance this replica last started runs a command, which never
    /// registers (its configuration may have changed since, to apply at the
    /// next start).
    pub runs_command: bool,
}

/// How long a replica's lease on a workspace lasts unless renewed. An
/// operation renews it every [`LEASE_RENEW`] while it runs, however long a
/// stop takes; a replica that died holds it up for at most this long.
const LEASE: Duration = Duration::from_secs(10);
const LEASE_RENEW: Duration = Duration::from_secs(3);

/// Workspaces checked back to back in a resync before a pause.
const RESYNC_CHUNK: usize = 256;

/// When each workspace is due a look, earliest first.
#[derive(Debug, Default)]
pub(crate) struct Wakes {
    by_time: std::collections::BTreeSet<(holdfast_domain::Millis, Uuid)>,
    by_id: std::collections::HashMap<Uuid, holdfast_domain::Millis>,
}

impl Wakes {
    fn set(&mut self, id: Uuid, at: Option<holdfast_domain::Millis>) {
        if let Some(old) = self.by_id.remove(&id) {
            self.by_time.remove(&(old, id));
        }
        if let Some(at) = at {
            self.by_id.insert(id, at);
            self.by_time.insert((at, id));
        }
    }

    fn earliest(&self) -> Option<holdfast_domain::Millis> {
        self.by_time.first().map(|(at, _)| *at)
    }

    fn take_due(&mut self, now: holdfast_domain::Millis) -> Vec<Uuid> {
        let mut due = Vec::new();
        while let Some(&(at, id)) = self.by_time.first() {
            if at > now {
                break;
            }
            self.by_time.pop_first();
            self.by_id.remove(&id);
            due.push(id);
        }
        due
    }
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

async fn recv_exit(
    exits: &mut Option<tokio::sync::broadcast::Receiver<Uuid>>,
) -> Option<Result<Uuid, tokio::sync::broadcast::error::RecvError>> {
    match exits {
        Some(rx) => Some(rx.recv().await),
        None => std::future::pending().await,
    }
}

async fn sleep_opt(d: Option<Duration>) {
    match d {
        Some(d) => tokio::time::sleep(d).await,
        None => std::future::pending().await,
    }
}

/// How long a request waits for a lease another replica holds before it
/// answers 503 (its intent is written; the reconciler carries it out).
pub(crate) const REQUEST_LEASE_WAIT: Duration = Duration::from_secs(3);

/// A replica's hold on one workspace: on a shared database, a lease on its
/// row, renewed in the background while held, whose fence every write of
/// observed state carries. On SQLite (one replica) there is nothing to
/// fence and the local lock suffices.
pub(crate) struct Lease {
    id: Uuid,
    fence: Option<Fence>,
    renewer: Option<tokio::task::JoinHandle<()>>,
}

impl Lease {
    pub(crate) fn fence(&self) -> Option<Fence> {
        self.fence
    }

    /// No lease: for what a runtime reports of itself (its registration),
    /// which whichever replica it reaches records.
    fn unfenced(id: Uuid) -> Lease {
        Lease {
            id,
            fence: None,
            renewer: None,
        }
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        if let Some(renewer) = self.renewer.take() {
            renewer.abort();
        }
    }
}

/// Why the reconciler could not act, typed for the callers that branch on it
/// (the API turns each into its status, through [`crate::Error`]).
#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    /// Another replica holds the workspace's lease.
    #[error("another replica is acting on this workspace; try again shortly")]
    Busy,
    /// A restore asked for while the parent is (again) removed.
    #[error("the workspace's parent {0} is removed; restore the parent first")]
    ParentRemoved(Uuid),
    #[error(transparent)]
    Store(#[from] holdfast_store::StoreError),
    #[error(transparent)]
    Cp(#[from] holdfast_cp::CpError),
}

pub type ReconcileResult<T> = Result<T, ReconcileError>;

/// Timing knobs of the reconciler.
#[derive(Debug, Clone)]
pub struct ReconcilerSettings {
    pub interval: Duration,
    pub heartbeat_interval: Duration,
    /// Heartbeats may be missed for this long before a workspace is offline.
    pub heartbeat_window: Duration,
    pub provision_timeout: Duration,
    pub backoff_base: Duration,
    pub backoff_max: Duration,
    /// A run this long resets the crash count.
    pub stable_after: Duration,
    /// How often volume quotas are checked (the control plane measures
    /// sizes at its own interval).
    pub usage_interval: Duration,
    /// The safety-net pass over every workspace when the control plane
    /// reports exits as events (otherwise `interval` polls).
    pub resync: Duration,
}

impl Default for ReconcilerSettings {
    fn default() -> Self {
        ReconcilerSettings {
            interval: Duration::from_millis(500),
            heartbeat_interval: Duration::from_secs(5),
            heartbeat_window: Duration::from_secs(15),
            provision_timeout: Duration::from_secs(120),
            backoff_base: Duration::from_millis(500),
            backoff_max: Duration::from_secs(60),
            stable_after: Duration::from_secs(60),
            usage_interval: Duration::from_secs(30),
            resync: Duration::from_secs(60),
        }
    }
}

impl ReconcilerSettings {
    /// The timing rules of [`plan::plan`], in milliseconds.
    pub fn timing(&self) -> Timing {
        let ms = |d: Duration| i64::try_from(d.as_millis()).unwrap_or(i64::MAX);
        Timing {
            heartbeat_window: ms(self.heartbeat_window),
            provision_timeout: ms(self.provision_timeout),
            backoff_base: ms(self.backoff_base),
            backoff_max: ms(self.backoff_max),
            stable_after: ms(self.stable_after),
        }
    }
}

fn registers(runtime: &Runtime) -> bool {
    runtime.is_builtin()
}

impl Controller {
    pub fn observed(&self, id: Uuid) -> Observed {
        self.observed
            .lock()
            .expect("observed")
            .get(&id)
            .cloned()
            .unwrap_or_default()
    }

    fn put_observed(&self, id: Uuid, obs: Observed) {
        self.observed.lock().expect("observed").insert(id, obs);
    }

    pub(crate) fn forget(&self, id: Uuid) {
        self.observed.lock().expect("observed").remove(&id);
    }

    /// Records a status change and publishes its event (only when it changes).
    pub(crate) async fn set_status(
        &self,
        ws: &mut WorkspaceRow,
        lease: &Lease,
        status: Status,
    ) -> ReconcileResult<()> {
        if ws.status == status {
            return Ok(());
        }
        self.store
            .set_status(ws.id, lease.fence(), status, now_millis())
            .await?;
        ws.status = status;
        self.events.publish(Event::status(status, ws.id, ws.org_id));
        Ok(())
    }

    /// Status `failed`, and why (shown on the workspace as `failure`).
    async fn record_failure(
        &self,
        ws: &mut WorkspaceRow,
        lease: &Lease,
        why: &str,
    ) -> ReconcileResult<()> {
        self.store
            .record_failure(ws.id, lease.fence(), why, now_millis())
            .await?;
        ws.failure = Some(why.to_owned());
        if ws.status != Status::Failed {
            ws.status = Status::Failed;
            self.events
                .publish(Event::status(Status::Failed, ws.id, ws.org_id));
        }
        Ok(())
    }

    /// What a running, healthy workspace's status is: `degraded` while its
    /// volume is over its quota (its data is never touched for it),
    /// `online` otherwise.
    pub(crate) fn running_status(&self, id: Uuid) -> Status {
        if self.over_quota.lock().expect("quota lock").contains(&id) {
            Status::Degraded
        } else {
            Status::Online
        }
    }

    /// Re-reads which attached volumes are over their quota, raises an
    /// event for each change, and lets the reconciler move the workspace
    /// between `online` and `degraded`.
    pub async fn check_quotas(&self) -> anyhow::Result<()> {
        let now: std::collections::HashSet<Uuid> =
            self.cp.over_quota().await?.into_iter().collect();
        let before = std::mem::replace(
            &mut *self.over_quota.lock().expect("quota lock"),
            now.clone(),
        );
        let changed: Vec<(Uuid, &str)> = now
            .difference(&before)
            .map(|id| (*id, "VOLUME_OVER_QUOTA"))
            .chain(
                before
                    .difference(&now)
                    .map(|id| (*id, "VOLUME_WITHIN_QUOTA")),
            )
            .collect();
        for (id, kind) in &changed {
            if let Some(ws) = self.store.get_workspace(*id).await? {
                self.events
                    .publish(crate::events::Event::new(kind, ws.id, ws.org_id));
            }
        }
        if !changed.is_empty() {
            self.reconcile_soon.notify_one();
        }
        Ok(())
    }

    /// Adds the sizes the control plane measured to the usage history
    /// (what a workspace's usage chart draws), from one listing of the
    /// attached volumes. Only a size that changed within its bucket is
    /// written, so an idle fleet writes nothing (and keeps the read cache).
    /// History is not intent: a failed write is logged and the next pass
    /// tries again.
    pub async fn record_usage(&self) -> anyhow::Result<()> {
        let volumes = self.cp.volume_sizes().await?;
        self.record_usage_of(&volumes).await;
        Ok(())
    }

    async fn record_usage_of(&self, volumes: &[(Uuid, i64)]) {
        let now = now_millis();
        let bucket = holdfast_store::usage_bucket(now);
        let changed: Vec<(Uuid, i64)> = {
            let recorded = self.usage_recorded.lock().expect("usage lock");
            volumes
                .iter()
                .filter(|(id, bytes)| recorded.get(id) != Some(&(bucket, *bytes)))
                .copied()
                .collect()
        };
        if changed.is_empty() {
            return;
        }
        match self.store.record_usage_bytes(&changed, now).await {
            Ok(()) => {
                let mut recorded = self.usage_recorded.lock().expect("usage lock");
                // Workspaces whose volume went away are forgotten.
                let live: std::collections::HashSet<Uuid> =
                    volumes.iter().map(|(id, _)| *id).collect();
                recorded.retain(|id, _| live.contains(id));
                for (id, bytes) in changed {
                    recorded.insert(id, (bucket, bytes));
                }
            }
            Err(e) => tracing::warn!(error = %e, "recording usage history failed"),
        }
    }

    /// Counts a restart in the workspace's usage history. History is not
    /// intent: a failed write is logged, never fails the reconcile.
    async fn record_restart(&self, id: Uuid) {
        if let Err(e) = self.store.record_restart(id, now_millis()).await {
            tracing::warn!(workspace_id = %id, error = %e, "recording a restart failed");
        }
    }

    pub(crate) async fn instance_runs(&self, id: Uuid, instance: &str) -> bool {
        self.seen(id, Some(instance)).await.0 == Seen::Running
    }

    /// What the control plane says of the instance, and why it does not
    /// run as asked when the backend can tell (a Pod Pending unschedulable,
    /// waiting on its volume or image): `Some(None)` when it gave no
    /// reason, `None` when its answer could not be read.
    async fn seen(&self, id: Uuid, instance: Option<&str>) -> (Seen, Option<Option<StatusReason>>) {
        let Some(instance) = instance else {
            return (Seen::Nothing, Some(None));
        };
        match self.cp.status(id, instance).await {
            Ok(s) => {
                let seen = match s.state {
                    InstanceState::Running => Seen::Running,
                    InstanceState::Exited => Seen::Exited,
                    InstanceState::Unknown => Seen::Gone,
                };
                (seen, Some(s.reason))
            }
            // Data safety: a status we cannot read means "still running";
            // restarting on a guess could run it twice. What was last
            // recorded of its reason stays (`None` here is "unknown").
            Err(e) => {
                tracing::debug!(workspace_id = %id, error = %e, "status unknown; assuming running");
                (Seen::Running, None)
            }
        }
    }

    /// Records the reason the control plane gave when it differs from the
    /// row's (an observation, written under the lease like a status).
    async fn record_reason(
        &self,
        ws: &mut WorkspaceRow,
        lease: &Lease,
        reason: Option<StatusReason>,
    ) -> ReconcileResult<()> {
        if ws.status_reason == reason {
            return Ok(());
        }
        if let Some(r) = &reason {
            tracing::info!(kind = %r.kind, reason = %r, "the workspace's compute does not run as asked");
        }
        self.store
            .record_status_reason(ws.id, lease.fence(), reason.as_ref(), now_millis())
            .await?;
        ws.status_reason = reason;
        Ok(())
    }

    /// Whether this replica must hold a lease on a workspace's row to act on
    /// it: only on a database that several replicas can share.
    fn shared_store(&self) -> bool {
        self.store.dialect() == holdfast_store::Dialect::Postgres
    }

    /// Takes the workspace's lease, waiting up to `wait` for another replica
    /// to finish; `None` if it could not be had. Held, it is renewed in the
    /// background until [`Controller::release`] (or until it is dropped).
    pub(crate) async fn lease(&self, id: Uuid, wait: Duration) -> ReconcileResult<Option<Lease>> {
        if !self.shared_store() {
            return Ok(Some(Lease {
                id,
                fence: None,
                renewer: None,
            }));
        }
        let ms = |d: Duration| i64::try_from(d.as_millis()).unwrap_or(60_000);
        let deadline = Instant::now() + wait;
        loop {
            let now = now_millis();
            if let Some(fence) = self
                .store
                .try_lease_workspace(id, &self.replica_id, now + ms(LEASE), now)
                .await?
            {
                let store = self.store.clone();
                let holder = self.replica_id.clone();
                let renewer = tokio::spawn(async move {
                    loop {
                        tokio::time::sleep(LEASE_RENEW).await;
                        match store
                            .renew_workspace_lease(id, &holder, fence, now_millis() + ms(LEASE))
                            .await
                        {
                            Ok(true) => {}
                            Ok(false) => {
                                // Its writes are refused from now on.
                                tracing::warn!(workspace_id = %id, "workspace lease lost to another replica");
                                return;
                            }
                            Err(e) => {
                                tracing::warn!(workspace_id = %id, error = %e, "renewing a workspace lease failed");
                            }
                        }
                    }
                });
                return Ok(Some(Lease {
                    id,
                    fence: Some(fence),
                    renewer: Some(renewer),
                }));
            }
            if Instant::now() >= deadline {
                return Ok(None);
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// [`Controller::lease`] for a request: a lease another replica holds past
    /// [`REQUEST_LEASE_WAIT`] is [`ReconcileError::Busy`], a 503.
    pub(crate) async fn lease_or_busy(&self, id: Uuid) -> ReconcileResult<Lease> {
        self.lease(id, REQUEST_LEASE_WAIT)
            .await?
            .ok_or(ReconcileError::Busy)
    }

    pub(crate) async fn release(&self, mut lease: Lease) {
        if let Some(renewer) = lease.renewer.take() {
            renewer.abort();
        }
        if let Some(fence) = lease.fence
            && let Err(e) = self
                .store
                .release_workspace_lease(lease.id, &self.replica_id, fence)
                .await
        {
            // It runs out on its own; another replica waits at most LEASE.
            tracing::warn!(workspace_id = %lease.id, error = %e, "releasing a workspace lease failed");
        }
    }

    /// Brings one workspace to its intent, waiting a little for another
    /// replica that is acting on it ([`ReconcileError::Busy`] after that).
    /// Returns the workspace as it now is (`None` if it does not exist).
    #[tracing::instrument(skip_all, fields(workspace_id = %id))]
    pub async fn reconcile(&self, id: Uuid) -> ReconcileResult<Option<WorkspaceRow>> {
        self.reconcile_waiting(id, REQUEST_LEASE_WAIT).await
    }

    async fn reconcile_waiting(
        &self,
        id: Uuid,
        wait: Duration,
    ) -> ReconcileResult<Option<WorkspaceRow>> {
        let _guard = self.locks.lock(id).await;
        let Some(lease) = self.lease(id, wait).await? else {
            return Err(ReconcileError::Busy);
        };
        let result = self.reconcile_locked(id, &lease).await;
        self.release(lease).await;
        result
    }

    async fn reconcile_locked(
        &self,
        id: Uuid,
        lease: &Lease,
    ) -> ReconcileResult<Option<WorkspaceRow>> {
        let Some(ws) = self.store.get_workspace(id).await? else {
            self.forget(id);
            return Ok(None);
        };
        self.reconcile_loaded(ws, lease).await.map(Some)
    }

    /// The first start of a workspace just inserted: its row is already in
    /// hand, which saves a read on the create → online path.
    pub(crate) async fn reconcile_new(&self, ws: WorkspaceRow) -> ReconcileResult<WorkspaceRow> {
        let id = ws.id;
        let _guard = self.locks.lock(id).await;
        let Some(lease) = self.lease(ws.id, REQUEST_LEASE_WAIT).await? else {
            return Err(ReconcileError::Busy);
        };
        let result = if self.observed.lock().expect("observed").contains_key(&ws.id)
            || self.shared_store()
        {
            // The background loop (here or on another replica) may have
            // seen the new row first and acted on it: the row in hand may be
            // stale, so read it again.
            self.reconcile_locked(ws.id, &lease)
                .await
                .and_then(|w| w.ok_or(holdfast_store::StoreError::NotFound.into()))
        } else {
            self.put_observed(
                ws.id,
                Observed {
                    first_start: true,
                    ..Observed::default()
                },
            );
            self.reconcile_loaded(ws, &lease).await
        };
        self.release(lease).await;
        result
    }

    async fn reconcile_loaded(
        &self,
        mut ws: WorkspaceRow,
        lease: &Lease,
    ) -> ReconcileResult<WorkspaceRow> {
        let id = ws.id;
        if ws.is_removed() && ws.restore_requested_at.is_some() {
            // A restore a crash (or a dead control plane) interrupted.
            match self.complete_restore_locked(id, lease).await {
                Ok(()) => {}
                Err(ReconcileError::Cp(holdfast_cp::CpError::DataErased))
                | Err(ReconcileError::ParentRemoved(_)) => {
                    tracing::warn!("a restore asked for cannot be carried out; withdrawn");
                }
                Err(e) => return Err(e),
            }
            match self.store.get_workspace(id).await? {
                Some(now) => ws = now,
                None => return Ok(ws),
            }
        }
        if ws.is_removed() {
            if !ws.compute_released {
                // Finished on behalf of whoever asked for the removal.
                let actor = ws
                    .removed_by
                    .clone()
                    .unwrap_or_else(|| "reconciler".to_owned());
                self.finish_removal_locked(&ws, &actor, lease).await?;
            }
            self.forget(id);
            return Ok(ws);
        }
        let mut obs = self.observed(id);
        let (seen, reason) = self.seen(id, ws.instance_id.as_deref()).await;
        // A reason belongs to the instance that runs now: none is recorded
        // of an instance that exited or is gone (the action below restarts
        // or forgets it, which clears the row's).
        if seen == Seen::Running
            && let Some(reason) = reason
        {
            self.record_reason(&mut ws, lease, reason).await?;
        }
        let held = ws.status_reason.is_some();
        let p = plan::plan(
            &self.facts(&ws, seen, held),
            obs.pacing,
            &self.reconciler.timing(),
            now_millis(),
        );
        obs.pacing = p.pacing;
        match p.action {
            // Handled above, before the row was live.
            Action::Nothing | Action::CompleteRestore | Action::FinishRemoval => {}
            // Only the provision deadline fails a running instance: say
            // why, with what the backend says holds it (a Pod that no node
            // can take, a claim attached elsewhere, an image it cannot pull).
            Action::SetStatus(Status::Failed) => {
                let why =
                    timeout_sentence(self.reconciler.provision_timeout, ws.status_reason.as_ref());
                self.record_failure(&mut ws, lease, &why).await?
            }
            Action::SetStatus(status) => self.set_status(&mut ws, lease, status).await?,
            Action::Start => self.start_instance(&mut ws, &mut obs, lease).await?,
            Action::Restart => {
                self.record_restart(id).await;
                self.stop_instance(&mut ws, lease, Status::Offline).await?;
                failpoint::hit("restart.after_stop");
                self.start_instance(&mut ws, &mut obs, lease).await?;
            }
            Action::Stop(then) => self.stop_instance(&mut ws, lease, then).await?,
            Action::CleanUpCrash { start } => {
                tracing::warn!("workspace process exited; restarting with backoff");
                self.record_restart(id).await;
                // What is left of it (an ephemeral workspace's scratch data).
                self.stop_instance(&mut ws, lease, Status::Offline).await?;
                if start {
                    self.start_instance(&mut ws, &mut obs, lease).await?;
                }
            }
            Action::Forget { start } => {
                // Nothing to stop: the control plane no longer knows it.
                self.forget_instance(&mut ws, lease, Status::Offline)
                    .await?;
                if start {
                    self.start_instance(&mut ws, &mut obs, lease).await?;
                }
            }
            Action::HeartbeatLost => {
                tracing::warn!("missed the heartbeat window; stopping and restarting");
                self.record_restart(id).await;
                self.stop_instance(&mut ws, lease, Status::Offline).await?;
            }
        }
        // An action changed what is observed: look again at once, which
        // plans the deadlines of the new state (a provision timeout, a
        // backoff).
        let wake = match p.action {
            Action::Nothing => p.wake_at,
            _ => Some(now_millis()),
        };
        self.schedule(id, wake);
        self.put_observed(id, obs);
        Ok(ws)
    }

    /// What [`plan::plan`] decides on, from the row and the control plane's
    /// answer.
    /// `held`: the control plane gave a reason the instance does not run
    /// as asked.
    fn facts(&self, ws: &WorkspaceRow, seen: Seen, held: bool) -> Facts {
        Facts {
            removed: ws.is_removed(),
            restore_requested: ws.restore_requested_at.is_some(),
            compute_released: ws.compute_released,
            desired: ws.desired,
            generation: ws.generation,
            instance_generation: ws.instance_generation,
            seen,
            status: ws.status,
            registers: registers(&ws.runtime),
            registered: ws.url.is_some(),
            started_at: ws.started_at,
            last_heartbeat: ws.last_heartbeat,
            healthy: self.running_status(ws.id),
            held,
        }
    }

    async fn start_instance(
        &self,
        ws: &mut WorkspaceRow,
        obs: &mut Observed,
        lease: &Lease,
    ) -> ReconcileResult<()> {
        failpoint::hit("start.before_provision");
        let now = now_millis();
        // A workspace token per start; it replaces the previous instance's,
        // which stops working at once (and makes a stray old runtime exit).
        let token = generate_token("hfw");
        self.store
            .begin_start(
                ws.id,
                lease.fence(),
                &hash_hex(token.expose()),
                Status::Provisioning,
                now,
            )
            .await?;
        ws.url = None;
        if ws.status != Status::Provisioning {
            ws.status = Status::Provisioning;
            self.events
                .publish(Event::status(Status::Provisioning, ws.id, ws.org_id));
        }
        let mut env: BTreeMap<String, String> =
            ws.env.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        env.insert("HOLDFAST_PLATFORM_URL".into(), self.public_url.clone());
        env.insert("HOLDFAST_TOKEN".into(), token.expose().to_owned());
        let req = ProvisionRequest {
            org_id: ws.org_id,
            workspace_id: ws.id,
            runtime: ws.runtime.clone(),
            tier: ws.tier.get(),
            env,
            data_persistence: ws.compute.data_persistence,
            volume_size_gb: ws.compute.volume.map(|v| v.size_gb),
            // Only ever for one attempt: a retry looks its volume up.
            first_start: std::mem::take(&mut obs.first_start),
            seed_snapshot: ws.seed_snapshot_id,
        };
        obs.pacing.attempted_generation = Some(ws.generation);
        match self.cp.provision(req).await {
            Ok(p) => {
                failpoint::hit("start.after_provision");
                obs.attached = p.volume.clone();
                obs.pacing.failed_generation = None;
                obs.runs_command = !registers(&ws.runtime);
                let status = if registers(&ws.runtime) {
                    Status::Provisioning
                } else {
                    self.running_status(ws.id)
                };
                let now = now_millis();
                self.store
                    .record_started(
                        ws.id,
                        lease.fence(),
                        status,
                        holdfast_store::Started {
                            instance_id: &p.instance_id,
                            generation: ws.generation,
                            resolved_mode: p.data_mode,
                            isolation: p.isolation.map(|i| i.as_str()),
                            limits: p.limits.map(|l| l.as_str()),
                        },
                        now,
                    )
                    .await?;
                if let Some(i) = p.isolation {
                    ws.isolation = Some(i.as_str().to_owned());
                }
                if let Some(l) = p.limits {
                    ws.limits = Some(l.as_str().to_owned());
                }
                ws.instance_id = Some(p.instance_id);
                ws.instance_generation = Some(ws.generation);
                ws.started_at = Some(now);
                ws.last_heartbeat = None;
                ws.resolved_mode = Some(p.data_mode);
                if ws.status != status {
                    ws.status = status;
                    self.events.publish(Event::status(status, ws.id, ws.org_id));
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "provisioning failed");
                if matches!(e, holdfast_cp::CpError::Unavailable(_)) {
                    // A passing state: tried again with the crash backoff,
                    // not only at the next change of intent.
                    obs.pacing.crashes += 1;
                    obs.pacing.next_attempt =
                        Some(now_millis() + self.reconciler.timing().backoff(obs.pacing.crashes));
                } else {
                    obs.pacing.failed_generation = Some(ws.generation);
                }
                self.record_failure(ws, lease, &failure_sentence(&e))
                    .await?;
            }
        }
        Ok(())
    }

    /// Stops the current instance (never prunes) and records `then`.
    async fn stop_instance(
        &self,
        ws: &mut WorkspaceRow,
        lease: &Lease,
        then: Status,
    ) -> ReconcileResult<()> {
        failpoint::hit("stop.before_cp_stop");
        self.cp.stop(ws.id, ws.instance_id.as_deref()).await?;
        failpoint::hit("stop.after_cp_stop");
        self.forget_instance(ws, lease, then).await
    }

    /// Records that the workspace has no instance any more, and `then`.
    async fn forget_instance(
        &self,
        ws: &mut WorkspaceRow,
        lease: &Lease,
        then: Status,
    ) -> ReconcileResult<()> {
        self.store
            .record_stopped(ws.id, lease.fence(), then, now_millis())
            .await?;
        ws.instance_id = None;
        ws.instance_generation = None;
        ws.url = None;
        ws.started_at = None;
        ws.last_heartbeat = None;
        if ws.status != then {
            ws.status = then;
            self.events.publish(Event::status(then, ws.id, ws.org_id));
        }
        Ok(())
    }

    /// Whether a workspace needs action now: the plan, judged from its row,
    /// this replica's pacing and the control plane's status. Its next look
    /// is scheduled either way.
    async fn needs_action(&self, ws: &WorkspaceRow) -> bool {
        let (seen, reason) = self.seen(ws.id, ws.instance_id.as_deref()).await;
        // A reason that changed is recorded by a reconcile (under the
        // lease), whatever the plan says.
        let reason_changed =
            seen == Seen::Running && reason.as_ref().is_some_and(|r| *r != ws.status_reason);
        // The reason just read, else the one recorded (an unreadable
        // answer changes nothing).
        let held = match &reason {
            Some(r) => seen == Seen::Running && r.is_some(),
            None => ws.status_reason.is_some(),
        };
        let p = plan::plan(
            &self.facts(ws, seen, held),
            self.observed(ws.id).pacing,
            &self.reconciler.timing(),
            now_millis(),
        );
        self.schedule(ws.id, p.wake_at);
        p.action != Action::Nothing || reason_changed
    }

    /// One pass over every workspace. A workspace another replica is acting
    /// on is left to it. With `spread`, the status checks are spread over
    /// that long rather than made in one burst.
    pub async fn reconcile_all(&self, spread: Duration) -> anyhow::Result<()> {
        for ws in self.store.unreleased_removed().await? {
            if let Err(e) = self.reconcile_waiting(ws.id, Duration::ZERO).await {
                tracing::warn!(workspace_id = %ws.id, error = %e, "finishing a removal failed; will retry");
            }
        }
        let candidates = self.store.reconcile_candidates().await?;
        let chunks = candidates.len().div_ceil(RESYNC_CHUNK).max(1);
        let pause = spread / u32::try_from(chunks).unwrap_or(u32::MAX);
        for (n, chunk) in candidates.chunks(RESYNC_CHUNK).enumerate() {
            if n > 0 && !pause.is_zero() {
                tokio::time::sleep(pause).await;
            }
            for ws in chunk {
                self.check_one(ws).await;
            }
        }
        Ok(())
    }

    async fn check_one(&self, ws: &WorkspaceRow) {
        if self.needs_action(ws).await
            && let Err(e) = self.reconcile_waiting(ws.id, Duration::ZERO).await
        {
            tracing::debug!(workspace_id = %ws.id, error = %e, "reconcile failed; will retry");
        }
    }

    /// Looks at one workspace again after an event or a wake.
    async fn recheck(&self, id: Uuid) {
        match self.store.get_workspace(id).await {
            Ok(Some(ws)) if ws.is_removed() => {
                if let Err(e) = self.reconcile_waiting(id, Duration::ZERO).await {
                    tracing::debug!(workspace_id = %id, error = %e, "reconcile failed; will retry");
                }
            }
            Ok(Some(ws)) => self.check_one(&ws).await,
            Ok(None) => self.forget(id),
            Err(e) => tracing::debug!(workspace_id = %id, error = %e, "reading a workspace failed"),
        }
    }

    /// Records when to look at a workspace again (`None`: only on an event
    /// or at the resync), and tells the loop when that is its earliest.
    pub(crate) fn schedule(&self, id: Uuid, at: Option<holdfast_domain::Millis>) {
        let earlier = {
            let mut wakes = self.wakes.lock().expect("wakes");
            let before = wakes.earliest();
            wakes.set(id, at);
            at.is_some_and(|at| before.is_none_or(|b| at < b))
        };
        if earlier {
            self.wakes_changed.notify_one();
        }
    }

    /// The reconciler loop. A first pass at start restarts every workspace
    /// that should run. After that it acts on events: a process that
    /// exited (where the control plane reports exits), intent written here
    /// (each handler reconciles its own workspace, an import nudges), and
    /// the wakes that the plan asked for. A resync over every workspace
    /// remains as a safety net (and finds what other replicas wrote),
    /// spread over its period; a control plane that reports no exits is
    /// polled at the short interval instead.
    pub(crate) async fn run_reconciler(self: std::sync::Arc<Self>) {
        let mut exits = self.cp.exits();
        let period = if exits.is_some() {
            self.reconciler.resync
        } else {
            self.reconciler.interval
        };
        let spread = if exits.is_some() {
            period / 2
        } else {
            Duration::ZERO
        };
        let resync = {
            let app = self.clone();
            tokio::spawn(async move {
                // The first pass (at start) and a nudged one act at once.
                let mut this_spread = Duration::ZERO;
                loop {
                    if let Err(e) = app.reconcile_all(this_spread).await {
                        tracing::warn!(error = %e, "reconcile pass failed");
                    }
                    this_spread = tokio::select! {
                        () = tokio::time::sleep(period) => spread,
                        () = app.reconcile_soon.notified() => Duration::ZERO,
                    };
                }
            })
        };
        let _resync = AbortOnDrop(resync);
        loop {
            let next = self.wakes.lock().expect("wakes").earliest();
            let sleep_for =
                next.map(|at| Duration::from_millis(u64::try_from(at - now_millis()).unwrap_or(0)));
            tokio::select! {
                exited = recv_exit(&mut exits) => match exited {
                    Some(Ok(id)) => self.recheck(id).await,
                    Some(Err(tokio::sync::broadcast::error::RecvError::Lagged(_))) => {
                        // Events were lost: a whole pass finds what they said.
                        self.reconcile_soon.notify_one();
                    }
                    Some(Err(tokio::sync::broadcast::error::RecvError::Closed)) | None => {
                        exits = None;
                    }
                },
                () = sleep_opt(sleep_for) => {
                    let due = self.wakes.lock().expect("wakes").take_due(now_millis());
                    for id in due {
                        self.recheck(id).await;
                    }
                }
                () = self.wakes_changed.notified() => {}
            }
        }
    }

    /// Registration of a runtime: it is online from now on.
    pub async fn register(&self, id: Uuid, url: &str) -> anyhow::Result<()> {
        let _guard = self.locks.lock(id).await;
        let Some(mut ws) = self.store.get_workspace(id).await? else {
            return Ok(());
        };
        if ws.is_removed() {
            return Ok(());
        }
        self.store.record_registered(id, url, now_millis()).await?;
        if ws.desired == DesiredState::Running {
            let healthy = self.running_status(id);
            self.set_status(&mut ws, &Lease::unfenced(id), healthy)
                .await?;
        }
        Ok(())
    }

    pub async fn heartbeat(&self, id: Uuid) -> anyhow::Result<()> {
        Ok(self.store.record_heartbeat(id, now_millis()).await?)
    }
}

/// Why a workspace that never came online failed: the deadline, and what
/// the backend said holds it, when it said anything.
fn timeout_sentence(timeout: Duration, reason: Option<&StatusReason>) -> String {
    let within = humantime_secs(timeout);
    match reason {
        Some(r) => format!("it did not come online within {within}: {r}"),
        None => format!(
            "it did not come online within {within}: its runtime never registered \
             (its log may say why)"
        ),
    }
}

/// `120s`, `1500ms`: a deadline as the flags write it.
fn humantime_secs(d: Duration) -> String {
    if d.subsec_millis() == 0 {
        format!("{}s", d.as_secs())
    } else {
        format!("{}ms", d.as_millis())
    }
}

/// Why a start failed, for the workspace's owner: what they can act on is
/// said (the image to provide, an engine to wait for); the engine's and the
/// host's own words stay in the server log.
fn failure_sentence(e: &holdfast_cp::CpError) -> String {
    use holdfast_cp::CpError;
    match e {
        // Written by holdfast for the user: a missing image, a refused start
        // (a Kubernetes quota, a missing permission, a persist workspace on a
        // Delete StorageClass).
        CpError::ImageMissing(m) | CpError::BadRequest(m) | CpError::Conflict(m) => m.clone(),
        CpError::Unavailable(_) => {
            "the container engine is unreachable; the start is tried again".to_owned()
        }
        CpError::DataErased => "its data has been erased".to_owned(),
        _ => "the start failed; the server log says why".to_owned(),
    }
}
