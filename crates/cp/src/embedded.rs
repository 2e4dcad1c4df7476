//! The in-process control plane: a backend (processes or containers, see
//! [`crate::backend`]) plus volume records in the store, and the snapshot
//! repository (`embedded/snapshots.rs`).

mod snapshots;

use crate::backend::{Backend, DataKind};
use crate::cgroup::Cgroups;
use crate::process::{Confinement, Layout, ProcessBackend, ProcessState, Spawn};
use crate::{
    Actor, ControlPlane, CpError, CpResult, InstanceState, InstanceStatus, ProvisionRequest,
    Provisioned, VolumeHistoryEntry, VolumeInfo,
};
use async_trait::async_trait;
use holdfast_domain::{
    AuditAction, DataPersistence, Program, Runtime, VolumeReason, VolumeState, now_millis,
};
use holdfast_store::{NewAuditEvent, Store, VolumeRow, VolumeTransition};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use uuid::Uuid;

/// Volumes a usage pass measures per trip to the backend: large enough that
/// a fleet's pass costs few hops, small enough that one trip stays short.
const USAGE_BATCH: usize = 256;

/// The control plane's policy knobs.
#[derive(Debug, Clone)]
pub struct CpPolicy {
    /// What auto resolves to.
    pub default_persistence: DataPersistence,
    /// How long `retained` data is kept.
    pub retention_grace: Duration,
    /// How long `erase_pending` data can still be restored.
    pub erase_grace: Duration,
    /// The binary that runs the built-in runtime (`<exe> runtime`).
    pub runtime_exe: PathBuf,
    /// How long a process gets between SIGTERM and SIGKILL.
    pub stop_timeout: Duration,
    /// Whether the store also holds the platform's workspaces (embedded in
    /// `serve`), which lets the sweeper find records without a workspace.
    pub with_workspaces: bool,
    /// How workspace processes are confined (the process backend).
    pub sandbox: crate::process::Sandbox,
    /// What runs workspaces (`--backend`).
    pub backend: BackendChoice,
    /// How often the size of every attached volume is measured.
    pub usage_interval: Duration,
    /// The longest a workspace stays frozen for a snapshot.
    pub snapshot_freeze_max: Duration,
}

/// The backend a control plane runs workspaces on.
#[derive(Debug, Clone)]
pub enum BackendChoice {
    /// Child processes, volumes as directories under the data dir.
    Process,
    /// Containers of a Docker Engine API server (Docker or Podman), volumes
    /// as its named volumes.
    Container(crate::container::ContainerSettings),
    /// Pods in a Kubernetes namespace, volumes as PersistentVolumeClaims.
    Kubernetes(crate::kubernetes::KubernetesSettings),
}

pub struct EmbeddedCp {
    store: Store,
    backend: Arc<dyn Backend>,
    policy: CpPolicy,
    /// One sweeper pass at a time in this process, and when it last
    /// listed the volumes on disk.
    sweeping: tokio::sync::Mutex<crate::sweep::OrphanScan>,
    /// The snapshot repository under `<data-dir>/snapshots/`.
    repo: crate::snapshot::Repo,
    /// Per org: captures and exports share it, garbage collection takes it
    /// alone (so that no chunk a capture just found is collected).
    org_locks: std::sync::Mutex<std::collections::HashMap<Uuid, Arc<tokio::sync::RwLock<()>>>>,
}

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// The most of one core the usage passes may take, averaged over their
/// period: 0.2 %.
pub const USAGE_CPU_SHARE: f64 = 0.002;

/// From the start of one usage pass to the start of the next: the
/// configured interval, or longer when a pass took `took`, so that the
/// passes' share of the time stays under [`USAGE_CPU_SHARE`]. A pass's wall
/// time bounds its CPU time (it runs on one thread), and also paces the
/// disk reads of a cold cache. Never more than [`USAGE_MAX_PAUSE`] (or
/// the interval, if longer): a size is never older than that plus a pass,
/// whatever the fleet holds.
/// A pass shorter than [`USAGE_FREE`] is never spaced out: a small fleet
/// (or a test) keeps the interval it asked for.
pub fn usage_pause(interval: Duration, took: Duration) -> Duration {
    let over = took.saturating_sub(USAGE_FREE);
    let paced = over.div_f64(USAGE_CPU_SHARE).min(USAGE_MAX_PAUSE);
    interval.max(paced)
}

/// What a usage pass may take before it spaces out the next one.
pub const USAGE_FREE: Duration = Duration::from_millis(50);

/// The longest pause [`usage_pause`] makes for the CPU budget's sake.
pub const USAGE_MAX_PAUSE: Duration = Duration::from_secs(600);

impl EmbeddedCp {
    /// Builds the control plane over `data_dir` and stops whatever a previous
    /// run of the server left running (it is restarted by the platform).
    pub async fn start(
        store: Store,
        data_dir: PathBuf,
        policy: CpPolicy,
    ) -> anyhow::Result<Arc<Self>> {
        let backend: Arc<dyn Backend> = match &policy.backend {
            BackendChoice::Process => Arc::new(crate::backend::ProcessPort {
                process: Self::process_backend(data_dir.clone(), &policy).await?,
                runtime_exe: policy.runtime_exe.clone(),
            }),
            BackendChoice::Container(settings) => {
                crate::container::ContainerBackend::connect(settings.clone(), &data_dir).await?
            }
            BackendChoice::Kubernetes(settings) => {
                crate::kubernetes::KubernetesBackend::connect(settings.clone()).await?
            }
        };
        let cp = Arc::new(EmbeddedCp {
            store,
            backend,
            policy,
            sweeping: tokio::sync::Mutex::new(crate::sweep::OrphanScan::default()),
            repo: crate::snapshot::Repo::new(&data_dir),
            org_locks: Default::default(),
        });
        cp.reap_leftovers().await?;
        // Before any workspace starts: finish or undo what a crash left of
        // a rollback, and forget captures that never finished.
        cp.recover_snapshots().await?;
        Ok(cp)
    }

    async fn process_backend(
        data_dir: PathBuf,
        policy: &CpPolicy,
    ) -> anyhow::Result<Arc<ProcessBackend>> {
        let layout = Layout::new(data_dir);
        if let crate::process::Sandbox::Bwrap { etc, .. } = &policy.sandbox {
            crate::process::Sandbox::write_etc(etc)?;
        }
        let dir = layout.root().to_path_buf();
        let cgroups = tokio::task::spawn_blocking(move || Cgroups::detect(&dir)).await?;
        if !cgroups.contained() {
            tracing::warn!(
                "cgroups cannot be written here: workspace limits are not enforced, and a \
                 process that leaves its process group can outlive its workspace's stop"
            );
        } else if !cgroups.limits() {
            tracing::warn!("cgroup limits cannot be set here: workspace limits are not enforced");
        }
        Ok(ProcessBackend::new(
            layout,
            policy.stop_timeout,
            policy.sandbox.clone(),
            cgroups,
            policy.runtime_exe.clone(),
        ))
    }

    pub fn backend(&self) -> &Arc<dyn Backend> {
        &self.backend
    }

    /// Whatever a previous run left running cannot be waited on by this one.
    /// Stop it (persist data is kept; ephemeral data is wiped at the next
    /// start anyway) so that the platform's restart never makes a second
    /// instance of a workspace.
    async fn reap_leftovers(&self) -> anyhow::Result<()> {
        let killed = self.backend.reap_leftovers().await?;
        if killed > 0 {
            tracing::info!(killed, "stopped processes left by a previous run");
        }
        Ok(())
    }

    fn argv(&self, runtime: &Runtime) -> Vec<String> {
        match &runtime.program {
            Program::Template(_) => self.backend.builtin_argv(),
            Program::Command(argv) => argv.clone(),
        }
    }

    async fn audit(
        &self,
        actor: &str,
        action: AuditAction,
        vol: &VolumeRow,
        reason: Option<VolumeReason>,
    ) {
        let ev = NewAuditEvent {
            actor: actor.to_owned(),
            action,
            workspace_id: Some(vol.workspace_id),
            volume_id: Some(vol.id),
            reason,
            detail: None,
        };
        if let Err(e) = self.store.audit(ev, now_millis()).await {
            tracing::error!(error = %e, %action, "writing audit event failed");
        }
    }

    /// Makes sure a persist workspace has an `active` volume record, then its
    /// directory. Ordering: the record is written before the directory exists,
    /// so a directory under `volumes/` is always known to the store (the
    /// sweeper adopts any that is not).
    async fn attach_volume(&self, req: &ProvisionRequest) -> CpResult<VolumeRow> {
        let now = now_millis();
        let current = if req.first_start {
            None
        } else {
            self.store.current_volume(req.workspace_id).await?
        };
        let attached = match current {
            None => {
                self.store
                    .insert_volume(
                        req.workspace_id,
                        req.volume_size_gb.map(i64::from),
                        "control-plane",
                        now,
                    )
                    .await?
            }
            Some(v) if v.state == VolumeState::Active => {
                // A changed `compute.volume.size_gb` applies from this start.
                let size = req.volume_size_gb.map(i64::from);
                if v.size_gb != size {
                    self.store.set_volume_size(v.id, size).await?;
                }
                VolumeRow { size_gb: size, ..v }
            }
            Some(v) if v.state == VolumeState::Retained => {
                // Switching back to persist within the retention grace brings
                // the same data back.
                let v = self
                    .store
                    .transition_volume(
                        VolumeTransition {
                            volume_id: v.id,
                            from: &[VolumeState::Retained],
                            to: VolumeState::Active,
                            retain_until: None,
                            erase_after: None,
                            actor: "control-plane",
                            reason: Some(VolumeReason::Reattached),
                        },
                        now,
                    )
                    .await?;
                self.audit(
                    "control-plane",
                    AuditAction::VolumeReattached,
                    &v,
                    Some(VolumeReason::Reattached),
                )
                .await;
                v
            }
            Some(v) => {
                return Err(CpError::Conflict(format!(
                    "the workspace's volume is {}; restore it before starting",
                    v.state
                )));
            }
        };
        Ok(attached)
    }

    /// An ephemeral start: a durable volume still attached is detached into
    /// `retained`, never erased.
    async fn detach_volume(&self, req: &ProvisionRequest) -> CpResult<()> {
        if req.first_start {
            return Ok(());
        }
        if let Some(v) = self.store.current_volume(req.workspace_id).await?
            && v.state == VolumeState::Active
        {
            let now = now_millis();
            let v = self
                .store
                .transition_volume(
                    VolumeTransition {
                        volume_id: v.id,
                        from: &[VolumeState::Active],
                        to: VolumeState::Retained,
                        retain_until: Some(now + millis(self.policy.retention_grace)),
                        erase_after: None,
                        actor: "control-plane",
                        reason: Some(VolumeReason::SwitchedToEphemeral),
                    },
                    now,
                )
                .await?;
            self.audit(
                "control-plane",
                AuditAction::VolumeRetained,
                &v,
                Some(VolumeReason::SwitchedToEphemeral),
            )
            .await;
        }
        Ok(())
    }

    /// Measures every attached volume through the handle walk, one after
    /// the other, every `usage_interval`, and a volume over its `size_gb`
    /// shows `over_quota`. Never touches the data. A pass costs about 40 µs
    /// a volume, so a large fleet's passes are spaced to keep their share
    /// of one core under [`USAGE_CPU_SHARE`]: with 10,000 volumes, `data.bytes`
    /// is up to about three minutes old instead of `usage_interval`.
    pub fn spawn_usage(self: &Arc<Self>) -> tokio::task::JoinHandle<()> {
        let cp = self.clone();
        tokio::spawn(async move {
            loop {
                let started = tokio::time::Instant::now();
                if let Err(e) = cp.measure_usage().await {
                    tracing::warn!(error = %e, "measuring volume usage failed");
                }
                let next = usage_pause(cp.policy.usage_interval, started.elapsed());
                tokio::time::sleep_until(started + next).await;
            }
        })
    }

    /// One measurement pass over the attached volumes.
    pub async fn measure_usage(&self) -> anyhow::Result<()> {
        let volumes = self.store.active_volume_usage().await?;
        for batch in volumes.chunks(USAGE_BATCH) {
            let ids: Vec<Uuid> = batch.iter().map(|v| v.workspace_id).collect();
            let sizes = self.backend.volume_bytes(&ids).await;
            for (v, measured) in batch.iter().zip(sizes) {
                let Some(bytes) = measured? else {
                    continue;
                };
                let bytes = i64::try_from(bytes).unwrap_or(i64::MAX);
                if bytes != v.bytes {
                    self.store.set_volume_bytes(v.id, bytes).await?;
                }
                if crate::over_quota(bytes, v.size_gb) && !crate::over_quota(v.bytes, v.size_gb) {
                    tracing::warn!(
                        workspace_id = %v.workspace_id,
                        bytes,
                        size_gb = v.size_gb,
                        "a volume is over its quota; its data is kept"
                    );
                }
            }
        }
        Ok(())
    }

    /// Re-measures a volume's size in the background (a walk of a large tree
    /// must not hold up a stop or a delete). The figure is what `data.bytes`
    /// shows and what an erasure reports when it was interrupted.
    fn refresh_bytes(&self, workspace_id: Uuid) {
        let store = self.store.clone();
        let backend = self.backend.clone();
        tokio::spawn(async move {
            let Ok(Some(v)) = store.current_volume(workspace_id).await else {
                return;
            };
            if let Ok(Some(bytes)) = backend.data_bytes(workspace_id, DataKind::Volume).await {
                let _ = store
                    .set_volume_bytes(v.id, i64::try_from(bytes).unwrap_or(i64::MAX))
                    .await;
            }
        });
    }
}

#[async_trait]
impl ControlPlane for EmbeddedCp {
    fn exits(&self) -> Option<tokio::sync::broadcast::Receiver<Uuid>> {
        self.backend.exits()
    }

    #[tracing::instrument(skip_all, fields(workspace_id = %req.workspace_id))]
    async fn provision(&self, req: ProvisionRequest) -> CpResult<Provisioned> {
        let mode = req
            .data_persistence
            .unwrap_or(self.policy.default_persistence);
        // One process per workspace: whatever still runs is stopped (never
        // pruned) before the new one starts. A first start has a fresh id,
        // which nothing can run under: no need to ask.
        if !req.first_start && self.backend.has_instance(req.workspace_id).await {
            tracing::warn!("provision while an instance runs; stopping it first");
            self.backend.stop(req.workspace_id, None).await?;
        }
        let volume = match mode {
            DataPersistence::Persist => {
                let v = self.attach_volume(&req).await?;
                if let Some(seed) = req.seed_snapshot {
                    self.seed_volume(req.workspace_id, seed).await?;
                }
                Some(v.into())
            }
            DataPersistence::Ephemeral => {
                self.detach_volume(&req).await?;
                None
            }
        };
        let instance_id = Uuid::new_v4().to_string();
        let Confinement { isolation, limits } = self
            .backend
            .spawn(
                Spawn {
                    workspace_id: req.workspace_id,
                    instance_id: instance_id.clone(),
                    argv: self.argv(&req.runtime),
                    env: req.env.clone(),
                    mode,
                    tier: req.tier(),
                    org_id: req.org_id,
                    volume_size_gb: req.volume_size_gb,
                },
                req.runtime.image.as_ref(),
            )
            .await?;
        Ok(Provisioned {
            instance_id,
            state: InstanceState::Running,
            data_mode: mode,
            volume,
            isolation: Some(isolation),
            limits: Some(limits),
        })
    }

    #[tracing::instrument(skip_all, fields(workspace_id = %workspace_id))]
    async fn stop(&self, workspace_id: Uuid, instance_id: Option<&str>) -> CpResult<()> {
        let Some(instance_id) = instance_id else {
            return Ok(());
        };
        self.backend.stop(workspace_id, Some(instance_id)).await?;
        self.refresh_bytes(workspace_id);
        Ok(())
    }

    #[tracing::instrument(skip_all, fields(workspace_id = %workspace_id))]
    async fn stop_and_prune(
        &self,
        workspace_id: Uuid,
        instance_id: Option<&str>,
        actor: Actor<'_>,
    ) -> CpResult<Option<VolumeInfo>> {
        // Ordering: the erase intent is recorded before the process is stopped,
        // so that a crash in between still ends with the data erase_pending.
        let now = now_millis();
        let mut marked = None;
        if let Some(v) = self.store.current_volume(workspace_id).await? {
            if matches!(v.state, VolumeState::Active | VolumeState::Retained) {
                let v = self
                    .store
                    .transition_volume(
                        VolumeTransition {
                            volume_id: v.id,
                            from: &[VolumeState::Active, VolumeState::Retained],
                            to: VolumeState::ErasePending,
                            retain_until: None,
                            erase_after: Some(now + millis(self.policy.erase_grace)),
                            actor,
                            reason: Some(VolumeReason::DeleteWithErase),
                        },
                        now,
                    )
                    .await?;
                self.audit(
                    actor,
                    AuditAction::VolumeEraseRequested,
                    &v,
                    Some(VolumeReason::DeleteWithErase),
                )
                .await;
                // The snapshots go with the volume, after the same grace.
                if let Some(after) = v.erase_after {
                    self.store
                        .mark_snapshots_erase_pending(workspace_id, after, now)
                        .await?;
                }
                marked = Some(v);
            } else {
                marked = Some(v);
            }
        }
        if let Some(instance_id) = instance_id {
            self.backend.stop(workspace_id, Some(instance_id)).await?;
        }
        self.refresh_bytes(workspace_id);
        Ok(marked.map(Into::into))
    }

    async fn confinement(&self) -> CpResult<Confinement> {
        Ok(self.backend.confinement())
    }

    async fn check_image(&self, image: Option<&holdfast_domain::ImageRef>) -> CpResult<()> {
        self.backend.check_image(image).await
    }

    async fn status(&self, workspace_id: Uuid, instance_id: &str) -> CpResult<InstanceStatus> {
        let state = match self.backend.state(workspace_id, instance_id).await? {
            ProcessState::Running => InstanceState::Running,
            ProcessState::Exited(_) => InstanceState::Exited,
            ProcessState::Unknown => InstanceState::Unknown,
        };
        // Only an instance that should be running has a reason it does not:
        // one that exited or is unknown is the reconciler's to restart.
        let reason = match state {
            InstanceState::Running => self.backend.status_reason(workspace_id, instance_id).await,
            InstanceState::Exited | InstanceState::Unknown => None,
        };
        Ok(InstanceStatus { state, reason })
    }

    #[tracing::instrument(skip_all, fields(workspace_id = %workspace_id))]
    async fn retain_volume(
        &self,
        workspace_id: Uuid,
        actor: Actor<'_>,
        reason: VolumeReason,
    ) -> CpResult<Option<VolumeInfo>> {
        let Some(v) = self.store.current_volume(workspace_id).await? else {
            return Ok(None);
        };
        let now = now_millis();
        let until = now + millis(self.policy.retention_grace);
        match v.state {
            VolumeState::Active | VolumeState::Retained => {
                // Data safety: a volume already retained (by a switch) keeps
                // the later of the two deadlines.
                let until = v.retain_until.map_or(until, |old| old.max(until));
                let v = self
                    .store
                    .transition_volume(
                        VolumeTransition {
                            volume_id: v.id,
                            from: &[VolumeState::Active, VolumeState::Retained],
                            to: VolumeState::Retained,
                            retain_until: Some(until),
                            erase_after: None,
                            actor,
                            reason: Some(reason),
                        },
                        now,
                    )
                    .await?;
                self.audit(actor, AuditAction::VolumeRetained, &v, Some(reason))
                    .await;
                Ok(Some(v.into()))
            }
            _ => Ok(Some(v.into())),
        }
    }

    async fn volume(&self, workspace_id: Uuid) -> CpResult<Option<VolumeInfo>> {
        Ok(self
            .store
            .latest_volume(workspace_id)
            .await?
            .map(Into::into))
    }

    async fn volume_history(&self, volume_id: Uuid) -> CpResult<Vec<VolumeHistoryEntry>> {
        Ok(self
            .store
            .volume_history(volume_id)
            .await?
            .into_iter()
            .map(|h| VolumeHistoryEntry {
                at: h.at,
                from: h.from_state,
                to: h.to_state,
                actor: h.actor,
                reason: h.reason,
            })
            .collect())
    }

    async fn over_quota(&self) -> CpResult<Vec<Uuid>> {
        Ok(self.store.over_quota_workspaces().await?)
    }

    async fn volume_sizes(&self) -> CpResult<Vec<(Uuid, i64)>> {
        Ok(self
            .store
            .active_volume_usage()
            .await?
            .into_iter()
            .map(|v| (v.workspace_id, v.bytes))
            .collect())
    }

    async fn list_volumes(&self, state: Option<VolumeState>) -> CpResult<Vec<VolumeInfo>> {
        Ok(self
            .store
            .list_volumes(state)
            .await?
            .into_iter()
            .map(Into::into)
            .collect())
    }

    #[tracing::instrument(skip_all, fields(workspace_id = %workspace_id))]
    async fn restore_volume(
        &self,
        workspace_id: Uuid,
        actor: Actor<'_>,
    ) -> CpResult<Option<VolumeInfo>> {
        let Some(v) = self.store.current_volume(workspace_id).await? else {
            // No data left to bring back: erased, or never had any.
            return match self.store.latest_volume(workspace_id).await? {
                Some(v) if v.state == VolumeState::Erased => Err(CpError::DataErased),
                _ => Ok(None),
            };
        };
        let (action, from) = match v.state {
            VolumeState::Active => return Ok(Some(v.into())),
            VolumeState::Erasing | VolumeState::Erased => return Err(CpError::DataErased),
            VolumeState::ErasePending => {
                (AuditAction::VolumeEraseCancelled, VolumeState::ErasePending)
            }
            VolumeState::Retained => (AuditAction::VolumeRestored, VolumeState::Retained),
        };
        let now = now_millis();
        let moved = self
            .store
            .transition_volume(
                VolumeTransition {
                    volume_id: v.id,
                    from: &[from],
                    to: VolumeState::Active,
                    retain_until: None,
                    erase_after: None,
                    actor,
                    reason: Some(VolumeReason::Restored),
                },
                now,
            )
            .await;
        let v = match moved {
            Ok(v) => v,
            // The sweeper won the race: erasure has begun.
            Err(holdfast_store::StoreError::VolumeMoved {
                found: Some(VolumeState::Erasing | VolumeState::Erased),
                ..
            }) => return Err(CpError::DataErased),
            // Another restore brought it back first: so is this one.
            Err(holdfast_store::StoreError::VolumeMoved {
                found: Some(VolumeState::Active),
                ..
            }) => {
                return Ok(self
                    .store
                    .current_volume(workspace_id)
                    .await?
                    .map(Into::into));
            }
            Err(other) => return Err(other.into()),
        };
        self.audit(actor, action, &v, Some(VolumeReason::Restored))
            .await;
        // A restore within the grace keeps the snapshots too.
        self.store.unmark_snapshots(workspace_id, now).await?;
        Ok(Some(v.into()))
    }

    async fn logs(
        &self,
        workspace_id: Uuid,
        tail: u64,
        follow: bool,
    ) -> CpResult<Option<crate::export::ByteStream>> {
        self.backend.logs(workspace_id, tail, follow).await
    }

    async fn export(&self, workspace_id: Uuid) -> CpResult<crate::export::ByteStream> {
        let kind = match self.store.current_volume(workspace_id).await? {
            Some(v) if v.state != VolumeState::Erasing => DataKind::Volume,
            Some(_) => return Err(CpError::DataErased),
            None => match self.store.latest_volume(workspace_id).await? {
                // The durable data is gone; scratch data (if the workspace
                // runs ephemeral now) is all there is.
                Some(v)
                    if v.state == VolumeState::Erased
                        && !self.backend.has_data(workspace_id, DataKind::Scratch).await =>
                {
                    return Err(CpError::DataErased);
                }
                _ => DataKind::Scratch,
            },
        };
        self.backend.export(workspace_id, kind).await
    }

    async fn volume_stats(&self) -> CpResult<Vec<(String, i64, i64)>> {
        Ok(self.store.volume_stats().await?)
    }

    async fn sweep(&self, dry_run: bool, actor: Actor<'_>) -> CpResult<crate::sweep::SweepReport> {
        let mut orphans = self.sweeping.lock().await;
        // The periodic pass lists the volumes on disk again only once their
        // directory changed (or every few passes); a pass asked for by an
        // operator, or a dry run, always lists them.
        let periodic = !dry_run && actor == "sweeper";
        let stamp = self.backend.volumes_stamp().await;
        let scan_disk = orphans.should_scan(stamp, periodic);
        let scan_started = std::time::SystemTime::now();
        let sweeper = crate::sweep::Sweeper {
            store: &self.store,
            backend: self.backend.as_ref(),
            retention_grace: self.policy.retention_grace,
            with_workspaces: self.policy.with_workspaces,
            scan_disk,
        };
        // An engine that does not answer keeps its kind (a 503), whatever
        // step of the pass met it.
        let mut report =
            sweeper
                .run(dry_run, actor)
                .await
                .map_err(|e| match e.downcast::<CpError>() {
                    Ok(cp) => cp,
                    Err(e) => CpError::Other(e),
                })?;
        if scan_disk && !dry_run {
            orphans.scanned(stamp, scan_started);
        }
        report
            .items
            .extend(self.sweep_snapshots(dry_run, actor).await?);
        Ok(report)
    }

    async fn check_restore(&self) -> CpResult<()> {
        // Restores go into a fresh directory swapped in by a rename: a
        // backend whose volumes are not directories here cannot.
        self.volume_path(Uuid::nil()).map(|_| ())
    }

    async fn create_snapshot(&self, req: crate::SnapshotRequest) -> CpResult<crate::SnapshotInfo> {
        self.take_snapshot(req).await
    }

    async fn snapshots(&self, workspace_id: Uuid) -> CpResult<Vec<crate::SnapshotInfo>> {
        Ok(self
            .store
            .list_snapshots(workspace_id)
            .await?
            .into_iter()
            .map(Into::into)
            .collect())
    }

    async fn snapshot(&self, id: Uuid) -> CpResult<Option<crate::SnapshotInfo>> {
        Ok(self.store.get_snapshot(id).await?.map(Into::into))
    }

    async fn export_snapshot(&self, id: Uuid) -> CpResult<crate::export::ByteStream> {
        self.stream_snapshot(id).await
    }

    async fn delete_snapshot(
        &self,
        id: Uuid,
        actor: Actor<'_>,
        why: crate::SnapshotRemoval,
    ) -> CpResult<crate::SnapshotInfo> {
        self.remove_snapshot(id, actor, why).await
    }

    async fn rollback(
        &self,
        workspace_id: Uuid,
        snapshot_id: Uuid,
        instance_id: Option<&str>,
    ) -> CpResult<()> {
        self.roll_back(workspace_id, snapshot_id, instance_id).await
    }
}

#[cfg(test)]
mod pacing_tests {
    use super::*;

    #[test]
    fn usage_passes_are_spaced_to_their_cpu_share_within_bounds() {
        let s = Duration::from_secs;
        let ms = Duration::from_millis;
        // A small fleet: the interval, however short.
        assert_eq!(usage_pause(s(30), ms(40)), s(30));
        assert_eq!(usage_pause(ms(200), ms(45)), ms(200));
        // 10,000 volumes at 40 µs: 0.4 s a pass, 175 s apart (0.35 s over
        // the free 50 ms, at 0.2 %).
        assert_eq!(usage_pause(s(30), ms(400)), s(175));
        // A pathological pass: capped, so sizes still refresh.
        assert_eq!(usage_pause(s(30), s(60)), USAGE_MAX_PAUSE);
        // An interval set longer than the cap is kept.
        assert_eq!(usage_pause(s(3600), s(60)), s(3600));
    }
}
