//! The backend port: what the embedded control plane needs from whatever runs
//! workspaces and holds their data, so that the same volume records, sweeper
//! and contract sit over a child process ([`ProcessBackend`]) or a container
//! ([`crate::container::ContainerBackend`]).
//!
//! **Architecture Invariant:** no method here erases a persist volume but
//! [`Backend::erase_volume`], and only [`crate::sweep::erase`] calls it, after
//! its compare-and-set to `erasing`. `stop` never touches a durable volume.

use crate::export::ByteStream;
use crate::process::{Confinement, Layout, ProcessBackend, ProcessState, Spawn};
use crate::{CpError, CpResult, tree};
use async_trait::async_trait;
use holdfast_domain::{DataPersistence, ImageRef, StatusReason, failpoint};
use holdfast_store::VolumeRow;
use std::path::PathBuf;
use std::sync::Arc;
use uuid::Uuid;

/// Which data of a workspace an operation is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DataKind {
    /// Its durable (persist) volume.
    Volume,
    /// The scratch data of an ephemeral workspace while it runs.
    Scratch,
}

impl From<DataPersistence> for DataKind {
    fn from(mode: DataPersistence) -> Self {
        match mode {
            DataPersistence::Persist => DataKind::Volume,
            DataPersistence::Ephemeral => DataKind::Scratch,
        }
    }
}

#[async_trait]
pub trait Backend: Send + Sync + 'static {
    /// What a workspace started now gets.
    fn confinement(&self) -> Confinement;

    /// The argv of the built-in runtime, as the started program sees it.
    fn builtin_argv(&self) -> Vec<String>;

    /// Whether a workspace of `image` (`None`: the default) could start:
    /// see [`crate::ControlPlane::check_image`]. Processes have no image.
    async fn check_image(&self, _image: Option<&ImageRef>) -> CpResult<()> {
        Ok(())
    }

    /// Prepares the data (a persist volume is created if missing, never
    /// emptied; scratch data starts empty) and starts the workspace.
    async fn spawn(&self, spec: Spawn, image: Option<&ImageRef>) -> CpResult<Confinement>;

    /// Stops the instance (any, with `None`). Scratch data goes with it; a
    /// durable volume is never touched. Stopping what is not running succeeds.
    async fn stop(&self, workspace_id: Uuid, instance_id: Option<&str>) -> CpResult<()>;

    /// Whether some instance of the workspace is known to run (or to have
    /// been left behind), so that a new start must stop it first.
    async fn has_instance(&self, workspace_id: Uuid) -> bool;

    async fn state(&self, workspace_id: Uuid, instance_id: &str) -> CpResult<ProcessState>;

    /// Why the instance does not run as asked, typed, where the backend can
    /// tell from what it observes (a Kubernetes Pod's status and Warning
    /// events); `None` when it runs, when nothing is known, and on the
    /// backends that have no such observation (processes, containers).
    async fn status_reason(&self, _workspace_id: Uuid, _instance_id: &str) -> Option<StatusReason> {
        None
    }

    /// Workspace ids whose instance exited, as they exit, where the backend
    /// can tell; `None` makes the reconciler poll `state` instead.
    fn exits(&self) -> Option<tokio::sync::broadcast::Receiver<Uuid>> {
        None
    }

    /// Stops whatever a previous run of this control plane left running
    /// (after `kill -9`). Returns how many it stopped.
    async fn reap_leftovers(&self) -> anyhow::Result<usize>;

    /// Stops every instance (a graceful shutdown). Data is kept.
    async fn stop_all(&self);

    /// Releases what the backend holds on the host (after [`Self::stop_all`]).
    fn release(&self) {}

    /// The bytes of the workspace's data, `None` when it has none.
    async fn data_bytes(&self, workspace_id: Uuid, kind: DataKind) -> anyhow::Result<Option<u64>>;

    /// [`Self::data_bytes`] of many workspaces' volumes, in their order: a
    /// usage pass asks for a batch at a time, which a backend on the host's
    /// files measures in one trip to the blocking pool.
    async fn volume_bytes(&self, workspace_ids: &[Uuid]) -> Vec<anyhow::Result<Option<u64>>> {
        let mut out = Vec::with_capacity(workspace_ids.len());
        for id in workspace_ids {
            out.push(self.data_bytes(*id, DataKind::Volume).await);
        }
        out
    }

    /// Whether the workspace has data of that kind right now.
    async fn has_data(&self, workspace_id: Uuid, kind: DataKind) -> bool;

    /// A `.tar.gz` of the data, entries relative to the data dir.
    /// `NotFound` when there is none.
    async fn export(&self, workspace_id: Uuid, kind: DataKind) -> CpResult<ByteStream>;

    /// The workspace's log (its processes' stdout and stderr): the last
    /// `tail` bytes, and with `follow` what is written after them. `None`
    /// when it has none.
    async fn logs(
        &self,
        _workspace_id: Uuid,
        _tail: u64,
        _follow: bool,
    ) -> CpResult<Option<ByteStream>> {
        Err(CpError::Conflict(
            "this backend keeps no workspace logs that holdfast can read".to_owned(),
        ))
    }

    /// Removes the workspace's durable volume (its compute is stopped first).
    /// Returns the bytes removed. Only [`crate::sweep::erase`] calls it.
    async fn erase_volume(&self, v: &VolumeRow) -> anyhow::Result<u64>;

    /// The workspaces that have a durable volume on this backend (known to
    /// the store or not): what the sweeper adopts from.
    async fn volume_workspaces(&self) -> anyhow::Result<Vec<Uuid>>;

    /// A stamp that changes whenever an entry of [`Self::volume_workspaces`]
    /// appears or goes (the modification time of the volumes directory),
    /// so that the periodic sweep can skip re-listing an unchanged set;
    /// `None` where there is none, and the set is listed every pass.
    async fn volumes_stamp(&self) -> Option<std::time::SystemTime> {
        None
    }

    /// What the sweeper must report about a workspace's data that it
    /// cannot act on (a Kubernetes PV whose claim was deleted outside
    /// holdfast): `(workspace, sentence)`, never silently dropped.
    async fn volume_notes(&self) -> anyhow::Result<Vec<(Uuid, String)>> {
        Ok(Vec::new())
    }

    /// The host directory of a workspace's durable volume, which snapshots
    /// read (through the handle walk) and rollbacks swap; `None` where a
    /// volume is not a directory of this host (a container engine's named
    /// volume), and snapshots answer 409 `snapshots_unavailable`.
    fn volume_path(&self, _workspace_id: Uuid) -> Option<PathBuf> {
        None
    }

    /// Whether snapshots of this backend's volumes, which are not
    /// directories of this host (a container engine's named volumes), are
    /// taken from [`Self::volume_archive`]: the volume as the engine's tar
    /// of it. `None` when the workspace has
    /// no volume; `Err(SnapshotsUnavailable)` where the backend cannot.
    fn snapshots_by_archive(&self) -> bool {
        false
    }

    /// See [`Self::snapshots_by_archive`].
    async fn volume_archive(&self, _workspace_id: Uuid) -> CpResult<Option<VolumeArchive>> {
        Err(CpError::SnapshotsUnavailable(
            "this backend cannot read its volumes for a snapshot".to_owned(),
        ))
    }

    /// Freezes the running instance's processes for a snapshot; dropping
    /// the guard thaws them. `None` when nothing runs.
    async fn freeze(&self, _workspace_id: Uuid) -> Option<Box<dyn Send>> {
        None
    }
}

/// A volume read through its engine: a tar of it (its first entry the
/// volume's root), to read on a blocking thread, how many entries a count
/// of the volume found, and what to undo once it has been read.
pub struct VolumeArchive {
    pub reader: Box<dyn std::io::Read + Send>,
    pub expected: u64,
    pub done: futures_util::future::BoxFuture<'static, ()>,
}

/// The directory that holds a volume directory.
fn layout_volumes(dir: &std::path::Path) -> PathBuf {
    dir.parent()
        .expect("a volume dir has a parent")
        .to_path_buf()
}

/// The process backend behind the port, with the binary its built-in
/// runtime runs (`<exe> runtime`).
pub struct ProcessPort {
    pub process: Arc<ProcessBackend>,
    pub runtime_exe: PathBuf,
}

#[async_trait]
impl Backend for ProcessPort {
    fn confinement(&self) -> Confinement {
        ProcessBackend::confinement(&self.process)
    }

    fn builtin_argv(&self) -> Vec<String> {
        vec![
            self.runtime_exe.to_string_lossy().into_owned(),
            "runtime".to_owned(),
        ]
    }

    async fn spawn(&self, spec: Spawn, _image: Option<&ImageRef>) -> CpResult<Confinement> {
        Ok(ProcessBackend::spawn(&self.process, spec).await?)
    }

    async fn stop(&self, workspace_id: Uuid, instance_id: Option<&str>) -> CpResult<()> {
        Ok(ProcessBackend::stop(&self.process, workspace_id, instance_id).await?)
    }

    async fn has_instance(&self, workspace_id: Uuid) -> bool {
        self.process.current_instance(workspace_id).is_some()
    }

    fn exits(&self) -> Option<tokio::sync::broadcast::Receiver<Uuid>> {
        Some(self.process.exits())
    }

    async fn state(&self, workspace_id: Uuid, instance_id: &str) -> CpResult<ProcessState> {
        Ok(ProcessBackend::state(
            &self.process,
            workspace_id,
            instance_id,
        ))
    }

    async fn reap_leftovers(&self) -> anyhow::Result<usize> {
        // A scan of `/proc` and the run dir, once at start.
        Ok(ProcessBackend::reap_leftovers(&self.process))
    }

    async fn stop_all(&self) {
        ProcessBackend::stop_all(&self.process).await
    }

    fn release(&self) {
        ProcessBackend::release(&self.process)
    }

    async fn data_bytes(&self, workspace_id: Uuid, kind: DataKind) -> anyhow::Result<Option<u64>> {
        let dir = dir_of(self.process.layout(), workspace_id, kind);
        Ok(tokio::task::spawn_blocking(move || dir_bytes(&dir)).await??)
    }

    async fn volume_bytes(&self, workspace_ids: &[Uuid]) -> Vec<anyhow::Result<Option<u64>>> {
        let dirs: Vec<PathBuf> = workspace_ids
            .iter()
            .map(|id| self.process.layout().volume_dir(*id))
            .collect();
        let n = dirs.len();
        match tokio::task::spawn_blocking(move || {
            dirs.iter()
                .map(|d| dir_bytes(d).map_err(anyhow::Error::from))
                .collect::<Vec<_>>()
        })
        .await
        {
            Ok(sizes) => sizes,
            Err(e) => {
                let why = e.to_string();
                (0..n)
                    .map(|_| Err(anyhow::anyhow!("measuring volumes: {why}")))
                    .collect()
            }
        }
    }

    async fn has_data(&self, workspace_id: Uuid, kind: DataKind) -> bool {
        dir_of(self.process.layout(), workspace_id, kind).is_dir()
    }

    async fn logs(
        &self,
        workspace_id: Uuid,
        tail: u64,
        follow: bool,
    ) -> CpResult<Option<ByteStream>> {
        let path = self.process.layout().log_file(workspace_id);
        crate::logs::open(&path, tail, follow)
            .map_err(|e| CpError::Other(anyhow::anyhow!("reading the workspace's log: {e}")))
    }

    async fn export(&self, workspace_id: Uuid, kind: DataKind) -> CpResult<ByteStream> {
        let dir = dir_of(self.process.layout(), workspace_id, kind);
        if !std::fs::symlink_metadata(&dir)
            .map(|m| m.is_dir())
            .unwrap_or(false)
        {
            return Err(CpError::NotFound(
                "the workspace has no data to export".to_owned(),
            ));
        }
        let root = dir.clone();
        let plan = tokio::task::spawn_blocking(move || crate::export::check(&root))
            .await
            .map_err(anyhow::Error::new)?
            .map_err(|e| CpError::ExportRefused(e.to_string()))?;
        Ok(crate::export::stream_archive(dir, plan))
    }

    async fn erase_volume(&self, v: &VolumeRow) -> anyhow::Result<u64> {
        let layout = self.process.layout();
        let dir = layout.volume_dir(v.workspace_id);
        let trash = layout.trash_dir(v.id);
        let workspace = v.workspace_id.to_string();
        let volume = v.id.to_string();
        let counted = tokio::task::spawn_blocking(move || -> std::io::Result<u64> {
            let mut counted = 0;
            let trash_root = trash.parent().expect("trash has a parent").to_path_buf();
            if std::fs::symlink_metadata(&dir).is_ok() {
                std::fs::create_dir_all(&trash_root)?;
                if std::fs::symlink_metadata(&trash).is_ok() {
                    // A previous, interrupted pass already moved a volume of
                    // this id aside: erase both.
                    counted += tree::erase_tree(&layout_volumes(&dir), &workspace)?;
                } else {
                    // One rename makes the data vanish from its place at once;
                    // the slow part then runs on a path nothing else uses.
                    std::fs::rename(&dir, &trash)?;
                }
            }
            failpoint::hit("erase.mid");
            counted += tree::erase_tree(&trash_root, &volume)?;
            Ok(counted)
        })
        .await??;
        Ok(counted)
    }

    fn volume_path(&self, workspace_id: Uuid) -> Option<PathBuf> {
        Some(self.process.layout().volume_dir(workspace_id))
    }

    async fn freeze(&self, workspace_id: Uuid) -> Option<Box<dyn Send>> {
        let process = self.process.clone();
        let frozen = tokio::task::spawn_blocking(move || process.freeze(workspace_id))
            .await
            .ok()??;
        Some(Box::new(frozen))
    }

    async fn volumes_stamp(&self) -> Option<std::time::SystemTime> {
        let root = self.process.layout().volumes_root();
        tokio::task::spawn_blocking(move || std::fs::metadata(root).and_then(|m| m.modified()).ok())
            .await
            .ok()
            .flatten()
    }

    async fn volume_workspaces(&self) -> anyhow::Result<Vec<Uuid>> {
        let root = self.process.layout().volumes_root();
        let names = tokio::task::spawn_blocking(move || -> std::io::Result<Vec<String>> {
            match std::fs::read_dir(&root) {
                Ok(entries) => Ok(entries
                    .flatten()
                    .filter_map(|e| e.file_name().into_string().ok())
                    .collect()),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
                Err(e) => Err(e),
            }
        })
        .await??;
        Ok(names
            .into_iter()
            .filter_map(|name| match Uuid::parse_str(&name) {
                Ok(id) => Some(id),
                Err(_) => {
                    // Not ours to name, so not ours to erase: leave it and say so.
                    tracing::warn!(name, "unrecognised entry under volumes/; leaving it alone");
                    None
                }
            })
            .collect())
    }
}

/// The bytes under `dir` (through the handle walk), `None` when it is not
/// a directory.
fn dir_bytes(dir: &std::path::Path) -> std::io::Result<Option<u64>> {
    std::fs::symlink_metadata(dir)
        .is_ok_and(|m| m.is_dir())
        .then(|| tree::tree_size(dir))
        .transpose()
}

fn dir_of(layout: &Layout, workspace_id: Uuid, kind: DataKind) -> PathBuf {
    match kind {
        DataKind::Volume => layout.volume_dir(workspace_id),
        DataKind::Scratch => layout.scratch_dir(workspace_id),
    }
}

/// The backend a control plane runs on, chosen by `--backend`.
pub type SharedBackend = Arc<dyn Backend>;
