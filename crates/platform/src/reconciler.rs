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
//! intent and then call [`App::reconcile`] for that workspace; the background
//! loop does the same for every workspace, so an intent whose handler (or
//! whose replica) died is still carried out.
//!
//! **Architecture Invariant:** the reconciler only ever calls
//! `ControlPlane::stop`. Finishing a removal goes through
//! `App::finish_removal_locked` in `delete.rs`.

use crate::App;
use crate::auth::{generate_token, hash_hex};
use crate::events::Event;
use holdfast_cp::{InstanceState, ProvisionRequest};
use holdfast_domain::failpoint;
use holdfast_domain::{DesiredState, Runtime, Status, now_millis};
use holdfast_store::WorkspaceRow;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};
use uuid::Uuid;

/// What this replica keeps of a workspace to pace its own actions. Not
/// persisted: a replica that takes over starts from the default.
#[derive(Debug, Clone, Default)]
pub struct Observed {
    /// Crashes since the last stable run; drives the backoff.
    pub crashes: u32,
    /// No automatic restart before this instant.
    pub next_attempt: Option<Instant>,
    /// Provisioning failed for this generation: wait for a new intent.
    pub failed_generation: Option<i64>,
    /// The generation of intent this replica last tried to start.
    pub attempted_generation: Option<i64>,
    /// The next start is the workspace's very first (set by create only).
    pub first_start: bool,
    /// The volume the last start attached, as the control plane reported it.
    pub attached: Option<holdfast_cp::VolumeInfo>,
    /// The instance this replica last started runs a command, which never
    /// registers (its configuration may have changed since, to apply at the
    /// next start).
    pub runs_command: bool,
}

/// What the control plane says of the workspace's recorded instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Seen {
    /// No instance is recorded.
    Nothing,
    Running,
    /// It exited on its own: a crash.
    Exited,
    /// The control plane does not know it (it was restarted, or the server
    /// was, and stopped what the previous run left): not a crash.
    Gone,
}

/// How long a replica's lease on a workspace lasts: longer than any single
/// start or stop (a stop waits at most its stop timeout). Another replica
/// waits at most this long for one that died holding it.
const LEASE: Duration = Duration::from_secs(30);

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
        }
    }
}

impl ReconcilerSettings {
    /// Exponential backoff after `crashes` consecutive crashes, capped.
    pub fn backoff(&self, crashes: u32) -> Duration {
        let factor = 1u32
            .checked_shl(crashes.saturating_sub(1).min(16))
            .unwrap_or(u32::MAX);
        self.backoff_base
            .saturating_mul(factor)
            .min(self.backoff_max)
    }
}

fn registers(runtime: &Runtime) -> bool {
    runtime.is_builtin()
}

fn desired_status(desired: DesiredState) -> Status {
    match desired {
        DesiredState::Running => Status::Online,
        DesiredState::Paused => Status::Paused,
        DesiredState::Hibernated => Status::Hibernated,
        DesiredState::Removed => Status::Removed,
    }
}

impl App {
    pub(crate) fn observed(&self, id: Uuid) -> Observed {
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
        status: Status,
    ) -> anyhow::Result<()> {
        if ws.status == status {
            return Ok(());
        }
        self.store.set_status(ws.id, status, now_millis()).await?;
        ws.status = status;
        self.events.publish(Event::status(status, ws.id, ws.org_id));
        Ok(())
    }

    /// Status `failed`, and why (shown on the workspace as `failure`).
    async fn record_failure(&self, ws: &mut WorkspaceRow, why: &str) -> anyhow::Result<()> {
        self.store.record_failure(ws.id, why, now_millis()).await?;
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
        let volumes = self
            .cp
            .list_volumes(Some(holdfast_domain::VolumeState::Active))
            .await?;
        let now: std::collections::HashSet<Uuid> = volumes
            .iter()
            .filter(|v| v.over_quota)
            .map(|v| v.workspace_id)
            .collect();
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

    pub(crate) async fn instance_runs(&self, id: Uuid, instance: &str) -> bool {
        self.seen(id, Some(instance)).await == Seen::Running
    }

    async fn seen(&self, id: Uuid, instance: Option<&str>) -> Seen {
        let Some(instance) = instance else {
            return Seen::Nothing;
        };
        match self.cp.status(id, instance).await {
            Ok(InstanceState::Running) => Seen::Running,
            Ok(InstanceState::Exited) => Seen::Exited,
            Ok(InstanceState::Unknown) => Seen::Gone,
            // Data safety: a status we cannot read means "still running";
            // restarting on a guess could run it twice.
            Err(e) => {
                tracing::debug!(workspace_id = %id, error = %e, "status unknown; assuming running");
                Seen::Running
            }
        }
    }

    /// Whether this replica must hold a lease on a workspace's row to act on
    /// it: only on a database that several replicas can share.
    fn shared_store(&self) -> bool {
        self.store.dialect() == holdfast_store::Dialect::Postgres
    }

    /// Takes the workspace's lease, waiting up to `wait` for another replica
    /// to finish. False if it could not be had.
    pub(crate) async fn lease(&self, id: Uuid, wait: Duration) -> anyhow::Result<bool> {
        if !self.shared_store() {
            return Ok(true);
        }
        let deadline = Instant::now() + wait;
        loop {
            let now = now_millis();
            let until = now + i64::try_from(LEASE.as_millis()).unwrap_or(60_000);
            if self
                .store
                .try_lease_workspace(id, &self.replica_id, until, now)
                .await?
            {
                return Ok(true);
            }
            if Instant::now() >= deadline {
                return Ok(false);
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    pub(crate) async fn release(&self, id: Uuid) {
        if self.shared_store()
            && let Err(e) = self
                .store
                .release_workspace_lease(id, &self.replica_id)
                .await
        {
            // It runs out on its own; another replica waits at most LEASE.
            tracing::warn!(workspace_id = %id, error = %e, "releasing a workspace lease failed");
        }
    }

    /// Brings one workspace to its intent, waiting for another replica that
    /// is acting on it. Returns the workspace as it now is (`None` if it does
    /// not exist).
    #[tracing::instrument(skip_all, fields(workspace_id = %id))]
    pub async fn reconcile(&self, id: Uuid) -> anyhow::Result<Option<WorkspaceRow>> {
        self.reconcile_waiting(id, Duration::from_secs(30)).await
    }

    async fn reconcile_waiting(
        &self,
        id: Uuid,
        wait: Duration,
    ) -> anyhow::Result<Option<WorkspaceRow>> {
        let _guard = self.locks.lock(id).await;
        if !self.lease(id, wait).await? {
            anyhow::bail!("another replica is acting on this workspace; try again shortly");
        }
        let result = self.reconcile_locked(id).await;
        self.release(id).await;
        result
    }

    async fn reconcile_locked(&self, id: Uuid) -> anyhow::Result<Option<WorkspaceRow>> {
        let Some(ws) = self.store.get_workspace(id).await? else {
            self.forget(id);
            return Ok(None);
        };
        self.reconcile_loaded(ws).await.map(Some)
    }

    /// The first start of a workspace just inserted: its row is already in
    /// hand, which saves a read on the create → online path.
    pub(crate) async fn reconcile_new(&self, ws: WorkspaceRow) -> anyhow::Result<WorkspaceRow> {
        let id = ws.id;
        let _guard = self.locks.lock(id).await;
        if !self.lease(ws.id, Duration::from_secs(30)).await? {
            anyhow::bail!("another replica is acting on this workspace");
        }
        let result = if self.observed.lock().expect("observed").contains_key(&ws.id)
            || self.shared_store()
        {
            // The background loop (here or on another replica) may have
            // seen the new row first and acted on it: the row in hand may be
            // stale, so read it again.
            self.reconcile_locked(ws.id)
                .await
                .and_then(|w| w.ok_or_else(|| anyhow::anyhow!("workspace vanished")))
        } else {
            self.put_observed(
                ws.id,
                Observed {
                    first_start: true,
                    ..Observed::default()
                },
            );
            self.reconcile_loaded(ws).await
        };
        self.release(id).await;
        result
    }

    async fn reconcile_loaded(&self, mut ws: WorkspaceRow) -> anyhow::Result<WorkspaceRow> {
        let id = ws.id;
        if ws.is_removed() {
            if !ws.compute_released {
                // Finished on behalf of whoever asked for the removal.
                let actor = ws
                    .removed_by
                    .clone()
                    .unwrap_or_else(|| "reconciler".to_owned());
                self.finish_removal_locked(&ws, &actor)
                    .await
                    .map_err(|e| anyhow::anyhow!(e.message))?;
            }
            self.forget(id);
            return Ok(ws);
        }
        let mut obs = self.observed(id);
        let seen = self.seen(id, ws.instance_id.as_deref()).await;
        let s = &self.reconciler;
        match ws.desired {
            DesiredState::Running => {
                let current = ws.instance_generation == Some(ws.generation);
                if seen == Seen::Running && current {
                    self.check_health(&mut ws, &mut obs).await?;
                } else if seen == Seen::Running {
                    // A restart was asked for (the generation moved on).
                    self.stop_instance(&mut ws, Status::Offline).await?;
                    failpoint::hit("restart.after_stop");
                    obs.crashes = 0;
                    obs.next_attempt = None;
                    self.start_instance(&mut ws, &mut obs).await?;
                } else {
                    if seen == Seen::Exited {
                        tracing::warn!("workspace process exited; restarting with backoff");
                        obs.crashes += 1;
                        obs.next_attempt = Some(Instant::now() + s.backoff(obs.crashes));
                    }
                    match seen {
                        // Clean up what is left of it (an ephemeral
                        // workspace's scratch data) and record it gone.
                        Seen::Exited => self.stop_instance(&mut ws, Status::Offline).await?,
                        // Nothing to stop: the control plane no longer knows
                        // it. Only the record goes.
                        Seen::Gone => self.forget_instance(&mut ws, Status::Offline).await?,
                        Seen::Nothing | Seen::Running => {}
                    }
                    if obs.attempted_generation.is_some_and(|g| g != ws.generation) {
                        // New intent: no waiting on an old backoff or failure.
                        obs.next_attempt = None;
                        obs.crashes = 0;
                        obs.failed_generation = None;
                    }
                    let failed = obs.failed_generation == Some(ws.generation);
                    let waiting = obs.next_attempt.is_some_and(|t| Instant::now() < t);
                    if !failed && !waiting {
                        self.start_instance(&mut ws, &mut obs).await?;
                    }
                }
            }
            DesiredState::Paused | DesiredState::Hibernated | DesiredState::Removed => {
                let target = desired_status(ws.desired);
                if ws.instance_id.is_some() {
                    self.stop_instance(&mut ws, target).await?;
                } else {
                    self.set_status(&mut ws, target).await?;
                }
            }
        }
        self.put_observed(id, obs);
        Ok(ws)
    }

    /// A running instance of the current generation: watch its heartbeats and
    /// its registration deadline.
    async fn check_health(&self, ws: &mut WorkspaceRow, obs: &mut Observed) -> anyhow::Result<()> {
        let s = &self.reconciler;
        let now = now_millis();
        let started = ws.started_at.unwrap_or(now);
        let ms = |d: Duration| i64::try_from(d.as_millis()).unwrap_or(i64::MAX);
        if now - started >= ms(s.stable_after) {
            obs.crashes = 0;
        }
        let healthy = self.running_status(ws.id);
        if !registers(&ws.runtime) {
            return self.set_status(ws, healthy).await;
        }
        if ws.url.is_some() {
            let last = ws.last_heartbeat.unwrap_or(started);
            if now - last > ms(s.heartbeat_window) {
                tracing::warn!("missed the heartbeat window; stopping and restarting");
                self.stop_instance(ws, Status::Offline).await?;
                obs.crashes += 1;
                obs.next_attempt = Some(Instant::now() + s.backoff(obs.crashes));
            } else {
                self.set_status(ws, healthy).await?;
            }
        } else if now - started > ms(s.provision_timeout) && ws.status == Status::Provisioning {
            // Compute and data are left alone: an operator may want to look.
            tracing::warn!("not registered within the provision timeout; failed");
            self.record_failure(
                ws,
                "its runtime did not register within the provision timeout; its log may say why",
            )
            .await?;
        }
        Ok(())
    }

    async fn start_instance(
        &self,
        ws: &mut WorkspaceRow,
        obs: &mut Observed,
    ) -> anyhow::Result<()> {
        failpoint::hit("start.before_provision");
        let now = now_millis();
        // A workspace token per start; it replaces the previous instance's,
        // which stops working at once (and makes a stray old runtime exit).
        let token = generate_token("hfw");
        self.store
            .begin_start(ws.id, &hash_hex(token.expose()), Status::Provisioning, now)
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
        };
        obs.attempted_generation = Some(ws.generation);
        match self.cp.provision(req).await {
            Ok(p) => {
                failpoint::hit("start.after_provision");
                obs.attached = p.volume.clone();
                obs.failed_generation = None;
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
                    obs.crashes += 1;
                    obs.next_attempt = Some(Instant::now() + self.reconciler.backoff(obs.crashes));
                } else {
                    obs.failed_generation = Some(ws.generation);
                }
                self.record_failure(ws, &failure_sentence(&e)).await?;
            }
        }
        Ok(())
    }

    /// Stops the current instance (never prunes) and records `then`.
    async fn stop_instance(&self, ws: &mut WorkspaceRow, then: Status) -> anyhow::Result<()> {
        failpoint::hit("stop.before_cp_stop");
        self.cp.stop(ws.id, ws.instance_id.as_deref()).await?;
        failpoint::hit("stop.after_cp_stop");
        self.forget_instance(ws, then).await
    }

    /// Records that the workspace has no instance any more, and `then`.
    async fn forget_instance(&self, ws: &mut WorkspaceRow, then: Status) -> anyhow::Result<()> {
        self.store.record_stopped(ws.id, then, now_millis()).await?;
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

    /// Whether a workspace may need action, judged from its row, this
    /// replica's pacing and the control plane's status.
    async fn needs_action(&self, ws: &WorkspaceRow) -> bool {
        let obs = self.observed(ws.id);
        match ws.desired {
            DesiredState::Running => {
                let Some(inst) = ws.instance_id.as_deref() else {
                    return obs.failed_generation != Some(ws.generation);
                };
                if ws.instance_generation != Some(ws.generation)
                    || !self.instance_runs(ws.id, inst).await
                {
                    return true;
                }
                let healthy = self.running_status(ws.id);
                if !registers(&ws.runtime) {
                    return ws.status != healthy;
                }
                let now = now_millis();
                let started = ws.started_at.unwrap_or(now);
                let ms = |d: Duration| i64::try_from(d.as_millis()).unwrap_or(i64::MAX);
                if ws.url.is_some() {
                    now - ws.last_heartbeat.unwrap_or(started)
                        > ms(self.reconciler.heartbeat_window)
                        || ws.status != healthy
                } else {
                    now - started > ms(self.reconciler.provision_timeout)
                        && ws.status == Status::Provisioning
                }
            }
            other => ws.instance_id.is_some() || ws.status != desired_status(other),
        }
    }

    /// One pass over every workspace. A workspace another replica is acting
    /// on is left to it.
    pub async fn reconcile_all(&self) -> anyhow::Result<()> {
        for ws in self.store.unreleased_removed().await? {
            if let Err(e) = self.reconcile_waiting(ws.id, Duration::ZERO).await {
                tracing::warn!(workspace_id = %ws.id, error = %e, "finishing a removal failed; will retry");
            }
        }
        for ws in self.store.reconcile_candidates().await? {
            if self.needs_action(&ws).await
                && let Err(e) = self.reconcile_waiting(ws.id, Duration::ZERO).await
            {
                tracing::debug!(workspace_id = %ws.id, error = %e, "reconcile failed; will retry");
            }
        }
        Ok(())
    }

    /// Registration of a runtime: it is online from now on.
    pub(crate) async fn register(&self, id: Uuid, url: &str) -> anyhow::Result<()> {
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
            self.set_status(&mut ws, healthy).await?;
        }
        Ok(())
    }

    pub(crate) async fn heartbeat(&self, id: Uuid) -> anyhow::Result<()> {
        Ok(self.store.record_heartbeat(id, now_millis()).await?)
    }
}

/// Why a start failed, for the workspace's owner: what they can act on is
/// said (the image to provide, an engine to wait for); the engine's and the
/// host's own words stay in the server log.
fn failure_sentence(e: &holdfast_cp::CpError) -> String {
    use holdfast_cp::CpError;
    match e {
        CpError::ImageMissing(m) | CpError::BadRequest(m) => m.clone(),
        CpError::Unavailable(_) => {
            "the container engine is unreachable; the start is tried again".to_owned()
        }
        CpError::DataErased => "its data has been erased".to_owned(),
        _ => "the start failed; the server log says why".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_and_caps() {
        let s = ReconcilerSettings {
            backoff_base: Duration::from_millis(100),
            backoff_max: Duration::from_secs(1),
            ..Default::default()
        };
        let got: Vec<u128> = (1..=6).map(|n| s.backoff(n).as_millis()).collect();
        assert_eq!(got, vec![100, 200, 400, 800, 1000, 1000]);
        assert_eq!(s.backoff(1000).as_millis(), 1000);
    }
}
