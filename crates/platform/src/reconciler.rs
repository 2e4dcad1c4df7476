//! The reconciler: drives each workspace's compute toward its intent.
//!
//! Intent (desired state and generation) lives in the store; what is observed
//! (which instance runs, whether it registered, when it last heartbeated, how
//! often it crashed) lives in memory in [`Observed`] and is rebuilt from
//! nothing at start: an empty observation means "nothing runs", and the
//! control plane has already stopped whatever a previous run left behind.
//!
//! Every action on one workspace runs under its lock, so a start and a stop
//! of the same workspace never overlap. API handlers write intent and then
//! call [`App::reconcile`] for that workspace; the background loop does the
//! same for every workspace, so an intent whose handler crashed is still
//! carried out.
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

/// What this server knows of a workspace's compute. Not persisted.
#[derive(Debug, Clone, Default)]
pub struct Observed {
    /// The instance this server started, if it is believed to run.
    pub instance_id: Option<String>,
    /// The generation of intent that instance was started for.
    pub generation: i64,
    pub started_at: Option<Instant>,
    pub registered: bool,
    pub last_heartbeat: Option<Instant>,
    /// Crashes since the last stable run; drives the backoff.
    pub crashes: u32,
    /// No automatic restart before this instant.
    pub next_attempt: Option<Instant>,
    /// Provisioning failed for this generation: wait for a new intent.
    pub failed_generation: Option<i64>,
    /// The next start is the workspace's very first (set by create only).
    pub first_start: bool,
    /// The volume the last start attached, as the control plane reported it.
    pub attached: Option<holdfast_cp::VolumeInfo>,
}

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
    matches!(runtime, Runtime::Template(_))
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

    pub(crate) async fn instance_runs(&self, id: Uuid, instance: &str) -> bool {
        match self.cp.status(id, instance).await {
            Ok(InstanceState::Running) => true,
            Ok(_) => false,
            // Data safety: a status we cannot read means "still running";
            // restarting on a guess could run it twice.
            Err(e) => {
                tracing::debug!(workspace_id = %id, error = %e, "status unknown; assuming running");
                true
            }
        }
    }

    /// Brings one workspace to its intent. Serialised per workspace. Returns
    /// the workspace as it now is (`None` if it does not exist).
    #[tracing::instrument(skip_all, fields(workspace_id = %id))]
    pub async fn reconcile(&self, id: Uuid) -> anyhow::Result<Option<WorkspaceRow>> {
        let _guard = self.locks.lock(id).await;
        self.reconcile_locked(id).await
    }

    async fn reconcile_locked(&self, id: Uuid) -> anyhow::Result<Option<WorkspaceRow>> {
        let Some(ws) = self.store.get_workspace(id).await? else {
            self.forget(id);
            return Ok(None);
        };
        self.reconcile_loaded(ws).await.map(Some)
    }

    /// The first start of a workspace just inserted: its row is already in
    /// hand (no other request can know its id yet), which saves a read on
    /// the create → online path.
    pub(crate) async fn reconcile_new(&self, ws: WorkspaceRow) -> anyhow::Result<WorkspaceRow> {
        let _guard = self.locks.lock(ws.id).await;
        if self.observed.lock().expect("observed").contains_key(&ws.id) {
            // The background loop saw the new row first and acted on it: the
            // row in hand is stale, so take the ordinary path.
            return self
                .reconcile_locked(ws.id)
                .await?
                .ok_or_else(|| anyhow::anyhow!("workspace vanished"));
        }
        self.put_observed(
            ws.id,
            Observed {
                first_start: true,
                ..Observed::default()
            },
        );
        self.reconcile_loaded(ws).await
    }

    async fn reconcile_loaded(&self, mut ws: WorkspaceRow) -> anyhow::Result<WorkspaceRow> {
        let id = ws.id;
        if ws.is_removed() {
            if !ws.compute_released {
                self.finish_removal_locked(&ws, "reconciler")
                    .await
                    .map_err(|e| anyhow::anyhow!(e.message))?;
            }
            self.forget(id);
            return Ok(ws);
        }
        let mut obs = self.observed(id);
        let runs = match obs.instance_id.clone() {
            Some(inst) => self.instance_runs(id, &inst).await,
            None => false,
        };
        let s = &self.reconciler;
        match ws.desired {
            DesiredState::Running => {
                if runs && obs.generation == ws.generation {
                    self.check_health(&mut ws, &mut obs).await?;
                } else if runs {
                    // A restart was asked for (the generation moved on).
                    self.stop_instance(&mut ws, &mut obs, Status::Offline)
                        .await?;
                    failpoint::hit("restart.after_stop");
                    obs.crashes = 0;
                    obs.next_attempt = None;
                    self.start_instance(&mut ws, &mut obs).await?;
                } else {
                    if obs.instance_id.is_some() {
                        // It exited on its own: a crash.
                        tracing::warn!("workspace process exited; restarting with backoff");
                        self.stop_instance(&mut ws, &mut obs, Status::Offline)
                            .await?;
                        obs.crashes += 1;
                        obs.next_attempt = Some(Instant::now() + s.backoff(obs.crashes));
                    }
                    if obs.generation != ws.generation {
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
                if obs.instance_id.is_some() || ws.instance_id.is_some() {
                    self.stop_instance(&mut ws, &mut obs, target).await?;
                } else {
                    self.set_status(&mut ws, target).await?;
                }
                obs.generation = ws.generation;
            }
        }
        self.put_observed(id, obs);
        Ok(ws)
    }

    /// A running instance of the current generation: watch its heartbeats and
    /// its registration deadline.
    async fn check_health(&self, ws: &mut WorkspaceRow, obs: &mut Observed) -> anyhow::Result<()> {
        let s = &self.reconciler;
        let started = obs.started_at.unwrap_or_else(Instant::now);
        if started.elapsed() >= s.stable_after {
            obs.crashes = 0;
        }
        if !registers(&ws.runtime) {
            return self.set_status(ws, Status::Online).await;
        }
        if obs.registered {
            let last = obs.last_heartbeat.unwrap_or(started);
            if last.elapsed() > s.heartbeat_window {
                tracing::warn!("missed the heartbeat window; stopping and restarting");
                self.stop_instance(ws, obs, Status::Offline).await?;
                obs.crashes += 1;
                obs.next_attempt = Some(Instant::now() + s.backoff(obs.crashes));
            } else {
                self.set_status(ws, Status::Online).await?;
            }
        } else if started.elapsed() > s.provision_timeout && ws.status == Status::Provisioning {
            // Compute and data are left alone: an operator may want to look.
            tracing::warn!("not registered within the provision timeout; failed");
            self.set_status(ws, Status::Failed).await?;
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
        obs.generation = ws.generation;
        obs.registered = false;
        obs.last_heartbeat = None;
        match self.cp.provision(req).await {
            Ok(p) => {
                failpoint::hit("start.after_provision");
                obs.instance_id = Some(p.instance_id.clone());
                obs.attached = p.volume.clone();
                obs.started_at = Some(Instant::now());
                obs.failed_generation = None;
                let status = if registers(&ws.runtime) {
                    Status::Provisioning
                } else {
                    Status::Online
                };
                self.store
                    .set_observed(
                        ws.id,
                        status,
                        Some(&p.instance_id),
                        Some(p.data_mode),
                        now_millis(),
                    )
                    .await?;
                ws.instance_id = Some(p.instance_id);
                ws.resolved_mode = Some(p.data_mode);
                if ws.status != status {
                    ws.status = status;
                    self.events.publish(Event::status(status, ws.id, ws.org_id));
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "provisioning failed");
                obs.instance_id = None;
                obs.failed_generation = Some(ws.generation);
                self.set_status(ws, Status::Failed).await?;
            }
        }
        Ok(())
    }

    /// Stops the current instance (never prunes) and records `then`.
    async fn stop_instance(
        &self,
        ws: &mut WorkspaceRow,
        obs: &mut Observed,
        then: Status,
    ) -> anyhow::Result<()> {
        let instance = obs.instance_id.clone().or_else(|| ws.instance_id.clone());
        failpoint::hit("stop.before_cp_stop");
        self.cp.stop(ws.id, instance.as_deref()).await?;
        failpoint::hit("stop.after_cp_stop");
        obs.instance_id = None;
        obs.registered = false;
        obs.last_heartbeat = None;
        self.store
            .set_observed(ws.id, ws.status, None, None, now_millis())
            .await?;
        self.store.set_url(ws.id, None).await?;
        ws.instance_id = None;
        ws.url = None;
        self.set_status(ws, then).await
    }

    /// Whether a workspace may need action, judged from its row and the
    /// in-memory observation alone (cheap; no store access).
    async fn needs_action(&self, ws: &WorkspaceRow) -> bool {
        let obs = self.observed(ws.id);
        match ws.desired {
            DesiredState::Running => {
                let Some(inst) = obs.instance_id.as_deref() else {
                    return obs.failed_generation != Some(ws.generation);
                };
                if obs.generation != ws.generation || !self.instance_runs(ws.id, inst).await {
                    return true;
                }
                if !registers(&ws.runtime) {
                    return ws.status != Status::Online;
                }
                let started = obs.started_at.unwrap_or_else(Instant::now);
                if obs.registered {
                    obs.last_heartbeat.unwrap_or(started).elapsed()
                        > self.reconciler.heartbeat_window
                        || ws.status != Status::Online
                } else {
                    started.elapsed() > self.reconciler.provision_timeout
                        && ws.status == Status::Provisioning
                }
            }
            other => {
                obs.instance_id.is_some()
                    || ws.instance_id.is_some()
                    || ws.status != desired_status(other)
            }
        }
    }

    /// One pass over every workspace.
    pub async fn reconcile_all(&self) -> anyhow::Result<()> {
        for ws in self.store.unreleased_removed().await? {
            if let Err(e) = self.reconcile(ws.id).await {
                tracing::warn!(workspace_id = %ws.id, error = %e, "finishing a removal failed; will retry");
            }
        }
        for ws in self.store.live_workspaces().await? {
            if self.needs_action(&ws).await
                && let Err(e) = self.reconcile(ws.id).await
            {
                tracing::warn!(workspace_id = %ws.id, error = %e, "reconcile failed; will retry");
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
        let mut obs = self.observed(id);
        obs.registered = true;
        obs.last_heartbeat = Some(Instant::now());
        self.put_observed(id, obs);
        self.store.set_url(id, Some(url)).await?;
        if ws.desired == DesiredState::Running {
            self.set_status(&mut ws, Status::Online).await?;
        }
        Ok(())
    }

    pub(crate) fn heartbeat(&self, id: Uuid) {
        let mut map = self.observed.lock().expect("observed");
        if let Some(obs) = map.get_mut(&id) {
            obs.last_heartbeat = Some(Instant::now());
        }
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
