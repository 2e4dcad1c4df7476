//! The control plane: provisions compute and data volumes on a backend.
//!
//! [`ControlPlane`] is the interface the platform talks to. [`EmbeddedCp`]
//! implements it in-process over a [`backend::Backend`] (the [`process`]
//! backend, the [`container`] backend or the [`kubernetes`] backend) and the
//! store's volume records.
//!
//! **Architecture Invariant:** routine operations call [`ControlPlane::stop`];
//! only the user's delete with `erase_data=true` calls
//! [`ControlPlane::stop_and_prune`]. The two are separate functions, never one
//! function with a flag, and a test pins the prune path's single caller.

pub mod backend;
pub mod body;
pub mod cgroup;
pub mod container;
mod embedded;
pub mod export;
pub mod http_client;
pub mod http_server;
pub mod kubernetes;
pub mod logs;
pub mod process;
mod reaper;
pub mod snapshot;
pub mod sweep;
pub mod tree;
pub mod wire;

pub use embedded::{BackendChoice, CpPolicy, EmbeddedCp};
pub use http_client::HttpCp;

use async_trait::async_trait;
use holdfast_domain::{
    AuditAction, Consistency, DataPersistence, ImageRef, Millis, Runtime, SnapshotState,
    StatusReason, Tier, VolumeReason, VolumeState,
};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use uuid::Uuid;

/// What the platform asks the control plane to run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ProvisionRequest {
    pub org_id: Uuid,
    pub workspace_id: Uuid,
    pub runtime: Runtime,
    pub tier: u8,
    /// The workspace's env plus the `HOLDFAST_*` variables the platform owns
    /// (platform URL, workspace token).
    pub env: BTreeMap<String, String>,
    /// Omitted for auto: the control plane resolves it by its policy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_persistence: Option<DataPersistence>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volume_size_gb: Option<u16>,
    /// The workspace has never been started, so it has no volume record yet
    /// and none is looked up (a fresh id cannot have one).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub first_start: bool,
    /// A clone: while the volume has no directory yet, it is made from
    /// this snapshot's content.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seed_snapshot: Option<Uuid>,
}

fn snapshots_unavailable() -> CpError {
    CpError::SnapshotsUnavailable(
        "snapshots need the embedded control plane on the process backend; this one cannot take them"
            .to_owned(),
    )
}

impl ProvisionRequest {
    pub fn tier(&self) -> Tier {
        Tier::from_stored(i64::from(self.tier))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum InstanceState {
    Running,
    Exited,
    /// No such instance (never started here, or already stopped).
    Unknown,
}

/// What the control plane says of an instance: its state, and why it does
/// not run as asked where the backend can tell (a Kubernetes Pod that is
/// Pending unschedulable, waiting on its volume or image, or in a crash
/// loop). Processes and containers give no reason.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstanceStatus {
    pub state: InstanceState,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<StatusReason>,
}

impl InstanceStatus {
    /// A state with no reason.
    pub fn plain(state: InstanceState) -> Self {
        InstanceStatus {
            state,
            reason: None,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Provisioned {
    pub instance_id: String,
    pub state: InstanceState,
    /// The mode the request resolved to (auto → the control plane's policy).
    pub data_mode: DataPersistence,
    /// The volume attached (a persist start), as it now is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volume: Option<VolumeInfo>,
    /// How the started workspace is isolated, and whether its tier's
    /// limits apply (absent from an older control plane).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub isolation: Option<process::Isolation>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limits: Option<process::Limits>,
}

/// A volume record as the control plane reports it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VolumeInfo {
    pub id: Uuid,
    pub workspace_id: Uuid,
    pub state: VolumeState,
    pub bytes: i64,
    pub size_gb: Option<i64>,
    pub retain_until: Option<Millis>,
    pub erase_after: Option<Millis>,
    pub erased_at: Option<Millis>,
    pub bytes_erased: Option<i64>,
    pub erased_by: Option<String>,
    pub reason: Option<VolumeReason>,
    pub created_at: Millis,
    pub updated_at: Millis,
    /// Its measured size is over `size_gb` (decimal gigabytes).
    #[serde(default)]
    pub over_quota: bool,
}

/// Whether `bytes` exceed a quota of `size_gb` decimal gigabytes.
pub fn over_quota(bytes: i64, size_gb: Option<i64>) -> bool {
    size_gb.is_some_and(|gb| bytes > gb.saturating_mul(1_000_000_000))
}

impl From<holdfast_store::VolumeRow> for VolumeInfo {
    fn from(v: holdfast_store::VolumeRow) -> Self {
        VolumeInfo {
            over_quota: over_quota(v.bytes, v.size_gb),
            id: v.id,
            workspace_id: v.workspace_id,
            state: v.state,
            bytes: v.bytes,
            size_gb: v.size_gb,
            retain_until: v.retain_until,
            erase_after: v.erase_after,
            erased_at: v.erased_at,
            bytes_erased: v.bytes_erased,
            erased_by: v.erased_by,
            reason: v.reason,
            created_at: v.created_at,
            updated_at: v.updated_at,
        }
    }
}

/// A snapshot record as the control plane reports it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SnapshotInfo {
    pub id: Uuid,
    pub org_id: Uuid,
    pub workspace_id: Uuid,
    pub at: Millis,
    pub label: Option<String>,
    pub state: SnapshotState,
    pub consistency: Option<Consistency>,
    pub frozen_ms: Option<i64>,
    pub files: i64,
    pub bytes: i64,
    pub new_bytes: i64,
    pub erase_after: Option<Millis>,
}

impl From<holdfast_store::SnapshotRow> for SnapshotInfo {
    fn from(s: holdfast_store::SnapshotRow) -> Self {
        SnapshotInfo {
            id: s.id,
            org_id: s.org_id,
            workspace_id: s.workspace_id,
            at: s.at,
            label: s.label,
            state: s.state,
            consistency: s.consistency,
            frozen_ms: s.frozen_ms,
            files: s.files,
            bytes: s.bytes,
            new_bytes: s.new_bytes,
            erase_after: s.erase_after,
        }
    }
}

/// What the platform asks a snapshot of.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SnapshotRequest {
    pub org_id: Uuid,
    pub workspace_id: Uuid,
    pub label: Option<String>,
    pub actor: String,
}

/// Why a snapshot's content is removed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum SnapshotRemoval {
    /// `DELETE /snapshots/:sid`.
    Deleted,
    /// The keep policy of its schedule no longer keeps it.
    Pruned,
}

impl SnapshotRemoval {
    pub fn audit(self) -> (AuditAction, VolumeReason) {
        match self {
            SnapshotRemoval::Deleted => (AuditAction::SnapshotDeleted, VolumeReason::Deleted),
            SnapshotRemoval::Pruned => (AuditAction::SnapshotDeleted, VolumeReason::Pruned),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VolumeHistoryEntry {
    pub at: Millis,
    pub from: Option<VolumeState>,
    pub to: VolumeState,
    pub actor: String,
    pub reason: Option<VolumeReason>,
}

#[derive(Debug, thiserror::Error)]
pub enum CpError {
    /// The request is invalid (the control plane validates at its own edge).
    #[error("{0}")]
    BadRequest(String),
    /// The volume is in a state that forbids the operation.
    #[error("{0}")]
    Conflict(String),
    /// Erasure has begun (or finished): the data cannot come back.
    #[error("the workspace's data has been erased")]
    DataErased,
    #[error("{0}")]
    NotFound(String),
    /// The data holds an entry an export cannot include safely (a socket, a
    /// file hard-linked from outside, an unreadable entry), named in the
    /// message.
    #[error("the data cannot be exported: {0}")]
    ExportRefused(String),
    /// The backend (a container engine) does not answer: try again later.
    #[error("{0}")]
    Unavailable(String),
    /// The control plane itself (a remote `cp serve`) does not answer.
    #[error("{0}")]
    Unreachable(String),
    /// Missing or wrong credentials (on the control plane's own edge).
    #[error(
        "the control plane needs Authorization: Bearer <shared secret> and X-Holdfast-Tenant-Token"
    )]
    Unauthorized,
    /// A request body over the limit.
    #[error("body over 1 MiB")]
    TooLarge,
    /// The workspace's container image is not on the engine.
    #[error("{0}")]
    ImageMissing(String),
    /// This control plane or backend cannot take snapshots.
    #[error("{0}")]
    SnapshotsUnavailable(String),
    /// The data holds what a snapshot cannot include safely, named.
    #[error("the data cannot be snapshotted: {0}")]
    SnapshotRefused(String),
    /// The disk that holds the snapshot repository (or the volumes) is full.
    #[error("{0}")]
    StorageFull(String),
    #[error(transparent)]
    Other(#[from] anyhow::Error),
}

impl From<holdfast_store::StoreError> for CpError {
    fn from(e: holdfast_store::StoreError) -> Self {
        match e {
            e @ holdfast_store::StoreError::VolumeMoved { .. } => CpError::Conflict(e.to_string()),
            other => CpError::Other(anyhow::Error::new(other)),
        }
    }
}

pub type CpResult<T> = Result<T, CpError>;

/// Who asked: recorded in volume history and audit.
pub type Actor<'a> = &'a str;

#[async_trait]
pub trait ControlPlane: Send + Sync + 'static {
    /// Prepares the data dir (volume or scratch) and starts the workspace.
    async fn provision(&self, req: ProvisionRequest) -> CpResult<Provisioned>;

    /// Stops the workspace's compute. Never erases or marks a durable volume.
    /// With no instance, a no-op success.
    async fn stop(&self, workspace_id: Uuid, instance_id: Option<&str>) -> CpResult<()>;

    /// Stops the workspace's compute and marks its data `erase_pending`. Only
    /// the user's delete with erase may call this.
    async fn stop_and_prune(
        &self,
        workspace_id: Uuid,
        instance_id: Option<&str>,
        actor: Actor<'_>,
    ) -> CpResult<Option<VolumeInfo>>;

    /// The instance's state, with the backend's reason when it does not run
    /// as asked.
    async fn status(&self, workspace_id: Uuid, instance_id: &str) -> CpResult<InstanceStatus>;

    /// What a workspace started now gets: its isolation, and whether its
    /// tier's limits apply.
    async fn confinement(&self) -> CpResult<process::Confinement>;

    /// Whether a workspace of this image (`runtime.image`; `None`: the
    /// default) can start here: `ImageMissing` naming it when the engine
    /// does not have it, `Unavailable` when the engine does not answer. A
    /// backend without images (processes) has nothing to check.
    async fn check_image(&self, image: Option<&ImageRef>) -> CpResult<()>;
    /// Workspace ids whose instance exited, as they exit, where this control
    /// plane can tell (the embedded one on the process backend); `None`
    /// makes the reconciler poll `status` at its interval instead.
    fn exits(&self) -> Option<tokio::sync::broadcast::Receiver<Uuid>> {
        None
    }

    /// Detaches the workspace's volume into `retained` for the retention grace
    /// (a delete without erase). No file is touched.
    async fn retain_volume(
        &self,
        workspace_id: Uuid,
        actor: Actor<'_>,
        reason: VolumeReason,
    ) -> CpResult<Option<VolumeInfo>>;

    /// The workspace's current volume (the newest record; erased ones too).
    async fn volume(&self, workspace_id: Uuid) -> CpResult<Option<VolumeInfo>>;

    async fn volume_history(&self, volume_id: Uuid) -> CpResult<Vec<VolumeHistoryEntry>>;

    async fn list_volumes(&self, state: Option<VolumeState>) -> CpResult<Vec<VolumeInfo>>;

    /// The workspaces whose attached volume is over its `size_gb`. From
    /// one listing by default; a control plane on a store answers it with
    /// one query that returns only those.
    async fn over_quota(&self) -> CpResult<Vec<Uuid>> {
        Ok(self
            .list_volumes(Some(VolumeState::Active))
            .await?
            .into_iter()
            .filter(|v| v.over_quota)
            .map(|v| v.workspace_id)
            .collect())
    }

    /// Each attached volume's workspace and measured bytes, for the usage
    /// history. From one listing by default; a control plane on a store
    /// reads the two columns only.
    async fn volume_sizes(&self) -> CpResult<Vec<(Uuid, i64)>> {
        Ok(self
            .list_volumes(Some(VolumeState::Active))
            .await?
            .into_iter()
            .map(|v| (v.workspace_id, v.bytes))
            .collect())
    }

    /// Brings a `retained` or `erase_pending` volume back to `active`
    /// (cancelling an erase). `DataErased` once erasure has begun; `None`
    /// when the workspace has no durable data.
    async fn restore_volume(
        &self,
        workspace_id: Uuid,
        actor: Actor<'_>,
    ) -> CpResult<Option<VolumeInfo>>;

    /// The workspace's log: its last `tail` bytes (at most
    /// [`logs::MAX_TAIL`]), and with `follow` what is written after them
    /// while the stream is read. `None` when it has none yet.
    async fn logs(
        &self,
        workspace_id: Uuid,
        tail: u64,
        follow: bool,
    ) -> CpResult<Option<export::ByteStream>>;

    /// A `.tar.gz` of the workspace's data dir (its volume, or its scratch
    /// data while an ephemeral workspace runs).
    async fn export(&self, workspace_id: Uuid) -> CpResult<export::ByteStream>;

    /// One sweeper pass (SPEC §6).
    async fn sweep(&self, dry_run: bool, actor: Actor<'_>) -> CpResult<sweep::SweepReport>;

    /// Volume records per state: `(state, count, bytes)`, for metrics. The
    /// default counts a full listing; the embedded control plane asks its
    /// store directly.
    async fn volume_stats(&self) -> CpResult<Vec<(String, i64, i64)>> {
        let mut stats: std::collections::BTreeMap<String, (i64, i64)> = Default::default();
        for v in self.list_volumes(None).await? {
            let e = stats.entry(v.state.as_str().to_owned()).or_default();
            e.0 += 1;
            e.1 += v.bytes;
        }
        Ok(stats.into_iter().map(|(s, (n, b))| (s, n, b)).collect())
    }

    /// Places (`Some(reason)`) or releases (`None`) a legal hold on the
    /// workspace's volumes where this control plane keeps them: while held
    /// none is erased and their grace clocks stand still. The embedded
    /// control plane shares the platform's store, whose workspace row holds
    /// the hold already; a remote one keeps its own record.
    async fn set_hold(
        &self,
        _workspace_id: Uuid,
        _reason: Option<&str>,
        _actor: Actor<'_>,
    ) -> CpResult<()> {
        Ok(())
    }

    /// Whether a snapshot can be restored here (a rollback, a clone):
    /// `SnapshotsUnavailable` saying why not, checked before anything is
    /// written (a rollback's `before-rollback` snapshot, a clone's record).
    async fn check_restore(&self) -> CpResult<()> {
        Ok(())
    }

    /// Takes a snapshot of the workspace's volume (frozen while it runs).
    async fn create_snapshot(&self, _req: SnapshotRequest) -> CpResult<SnapshotInfo> {
        Err(snapshots_unavailable())
    }

    /// The workspace's snapshots that hold data, newest first.
    async fn snapshots(&self, _workspace_id: Uuid) -> CpResult<Vec<SnapshotInfo>> {
        Err(snapshots_unavailable())
    }

    async fn snapshot(&self, _id: Uuid) -> CpResult<Option<SnapshotInfo>> {
        Err(snapshots_unavailable())
    }

    /// A snapshot's content as a `.tar.gz`.
    async fn export_snapshot(&self, _id: Uuid) -> CpResult<export::ByteStream> {
        Err(snapshots_unavailable())
    }

    /// Removes a snapshot's content (its record stays, `erased`), with its
    /// audit event. The platform has checked any legal hold.
    async fn delete_snapshot(
        &self,
        _id: Uuid,
        _actor: Actor<'_>,
        _why: SnapshotRemoval,
    ) -> CpResult<SnapshotInfo> {
        Err(snapshots_unavailable())
    }

    /// Replaces the workspace's volume with the snapshot's content: restored
    /// into a fresh directory beside it, the instance stopped, the two
    /// swapped by one rename. The caller has taken the `before-rollback`
    /// snapshot and starts the workspace again after.
    async fn rollback(
        &self,
        _workspace_id: Uuid,
        _snapshot_id: Uuid,
        _instance_id: Option<&str>,
    ) -> CpResult<()> {
        Err(snapshots_unavailable())
    }

    /// Audit events the control plane wrote in a store of its own (newest
    /// first). The embedded control plane writes into the platform's store,
    /// so it has none of its own.
    async fn audit_events(
        &self,
        _workspace_id: Option<Uuid>,
        _limit: i64,
    ) -> CpResult<Vec<holdfast_store::AuditEvent>> {
        Ok(Vec::new())
    }
}
