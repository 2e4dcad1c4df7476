//! Snapshots on the embedded control plane: capture (frozen, bounded),
//! export, removal, rollback, clone seeding, their recovery after a crash,
//! and their part of the sweeper pass.

use super::EmbeddedCp;
use crate::backend::DataKind;
use crate::snapshot::{self, OrgRepo, RepoError};
use crate::sweep::SweepItem;
use crate::{CpError, CpResult, SnapshotInfo, SnapshotRemoval, SnapshotRequest};
use holdfast_domain::{
    AuditAction, Consistency, SnapshotState, SweepAction, SweepOutcome, VolumeReason, failpoint,
    now_millis,
};
use holdfast_store::Captured;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;
use uuid::Uuid;

/// What a rollback wrote before it swapped: which directory holds the
/// snapshot's content (by device and inode, which a rename keeps), so that
/// after a crash the next start can tell whether the swap happened.
#[derive(Debug, Serialize, Deserialize)]
struct RollbackState {
    snapshot: Uuid,
    staged: (u64, u64),
}

fn inode(path: &Path) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    std::fs::symlink_metadata(path)
        .ok()
        .filter(|m| m.is_dir())
        .map(|m| (m.dev(), m.ino()))
}

fn repo_error(e: RepoError) -> CpError {
    match e {
        RepoError::Full => CpError::StorageFull(
            "the disk that holds the snapshot repository is full; the snapshot was not taken, \
             the workspace kept running, and nothing of this snapshot was kept"
                .to_owned(),
        ),
        RepoError::Refused(m) => CpError::SnapshotRefused(m),
        RepoError::Io(e) => CpError::Other(anyhow::Error::new(e).context("snapshot repository")),
    }
}

fn io_error(e: std::io::Error) -> CpError {
    repo_error(RepoError::from(e))
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> std::io::Result<T> + Send + 'static,
) -> CpResult<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(anyhow::Error::new)?
        .map_err(io_error)
}

impl EmbeddedCp {
    fn org_lock(&self, org: Uuid) -> Arc<tokio::sync::RwLock<()>> {
        self.org_locks
            .lock()
            .expect("org locks")
            .entry(org)
            .or_default()
            .clone()
    }

    async fn org_repo(&self, org: Uuid) -> CpResult<Arc<OrgRepo>> {
        let key = self
            .store
            .snapshot_key(org, &snapshot::new_key(), now_millis())
            .await?;
        Ok(Arc::new(self.repo.org(org, &key).map_err(io_error)?))
    }

    pub(super) fn volume_path(&self, workspace_id: Uuid) -> CpResult<PathBuf> {
        self.backend.volume_path(workspace_id).ok_or_else(|| {
            CpError::SnapshotsUnavailable(
                "this backend's volumes are not directories of this host: snapshots of them can \
                 be taken, listed, exported and deleted, but rolling back to one or cloning from \
                 one needs the process backend"
                    .to_owned(),
            )
        })
    }

    pub(super) async fn take_snapshot(&self, req: SnapshotRequest) -> CpResult<SnapshotInfo> {
        let no_data = || {
            CpError::Conflict(
                "the workspace has no data yet (it has never started with a persist volume)"
                    .to_owned(),
            )
        };
        // A host directory, read through the handle walk; or else (a
        // container engine's volume) the engine's archive of it.
        let path = self.backend.volume_path(req.workspace_id);
        match &path {
            Some(p) if inode(p).is_none() => return Err(no_data()),
            Some(_) => {}
            None => {
                if !self.backend.snapshots_by_archive() {
                    return Err(CpError::SnapshotsUnavailable(
                        "this backend's volumes cannot be read for a snapshot (on Kubernetes, \
                         snapshots need a VolumeSnapshotClass, which holdfast does not use yet)"
                            .to_owned(),
                    ));
                }
                if !self
                    .backend
                    .has_data(req.workspace_id, DataKind::Volume)
                    .await
                {
                    return Err(no_data());
                }
            }
        }
        let repo = self.org_repo(req.org_id).await?;
        // The parent: the newest snapshot of the workspace that is still
        // kept, whose unchanged files the capture need not read again.
        let parent = self
            .store
            .list_snapshots(req.workspace_id)
            .await?
            .into_iter()
            .find(|s| matches!(s.state, SnapshotState::Ready | SnapshotState::ErasePending))
            .map(|s| s.id);
        let id = Uuid::new_v4();
        // Ordering: the record exists (`capturing`) before any chunk, so
        // repository data is always known or an orphan to report.
        self.store
            .insert_snapshot(
                id,
                req.org_id,
                req.workspace_id,
                req.label.as_deref(),
                &req.actor,
                now_millis(),
            )
            .await?;
        let guard = self.org_lock(req.org_id).read_owned().await;
        let frozen_at = Instant::now();
        let frozen = self.backend.freeze(req.workspace_id).await;
        let was_running = frozen.is_some();
        let thaw: Arc<Mutex<Option<Box<dyn Send>>>> = Arc::new(Mutex::new(frozen));
        let over = Arc::new(AtomicBool::new(false));
        let frozen_ms = Arc::new(Mutex::new(None::<i64>));
        // Drops the freeze once (whoever comes first: the bound, the end
        // of the read, the end of the capture) and notes how long it held.
        let thaw_now = {
            let thaw = thaw.clone();
            let frozen_ms = frozen_ms.clone();
            move || {
                if let Some(g) = thaw.lock().expect("thaw").take() {
                    drop(g);
                    *frozen_ms.lock().expect("frozen_ms") =
                        Some(frozen_at.elapsed().as_millis() as i64);
                    true
                } else {
                    false
                }
            }
        };
        // The bound: past it the workspace runs again and the capture goes
        // on, crash-consistent.
        let timer = {
            let thaw_now = thaw_now.clone();
            let over = over.clone();
            let max = self.policy.snapshot_freeze_max;
            tokio::spawn(async move {
                tokio::time::sleep(max).await;
                if thaw_now() {
                    over.store(true, Ordering::SeqCst);
                }
            })
        };
        // The capture runs to its end even if the client goes away: the
        // thaw below must happen, and the record must be settled. The
        // workspace is thawed as soon as its data has been read, before
        // the repository is synced.
        let archive = match path {
            Some(_) => Ok(None),
            None => self.backend.volume_archive(req.workspace_id).await,
        };
        let archive = match archive {
            Ok(a) => a,
            Err(e) => {
                thaw_now();
                timer.abort();
                self.store.forget_capture(id).await?;
                return Err(e);
            }
        };
        let (reader, done) = match archive {
            Some(a) => (Some((a.reader, a.expected)), Some(a.done)),
            None => (None, None),
        };
        let captured = {
            let repo = repo.clone();
            let thaw_now = thaw_now.clone();
            tokio::task::spawn_blocking(move || {
                let mut walked = || {
                    thaw_now();
                };
                let out = match (path, reader) {
                    (Some(path), _) => repo.capture(&path, id, parent, &mut walked),
                    (None, Some((reader, expected))) => {
                        repo.capture_tar(reader, id, expected, &mut walked)
                    }
                    (None, None) => Err(RepoError::Io(std::io::Error::other(
                        "the workspace's volume vanished before its snapshot",
                    ))),
                };
                drop(guard);
                out
            })
        };
        let captured = captured.await;
        if let Some(done) = done {
            done.await;
        }
        // Always thawed, whatever the capture's outcome.
        thaw_now();
        timer.abort();
        let stats = match captured {
            Ok(Ok(stats)) => stats,
            Ok(Err(e)) => {
                let _ = repo.remove_manifest(id);
                self.store.forget_capture(id).await?;
                tracing::warn!(workspace_id = %req.workspace_id, error = %e, "snapshot failed");
                return Err(repo_error(e));
            }
            Err(e) => {
                self.store.forget_capture(id).await?;
                return Err(CpError::Other(anyhow::Error::new(e)));
            }
        };
        let consistency = if !was_running {
            Consistency::Stopped
        } else if over.load(Ordering::SeqCst) {
            Consistency::CrashConsistent
        } else {
            Consistency::Frozen
        };
        let frozen_ms = if was_running {
            frozen_ms.lock().expect("frozen_ms").unwrap_or(0)
        } else {
            0
        };
        let row = self
            .store
            .finish_snapshot(
                id,
                Captured {
                    files: stats.files as i64,
                    bytes: stats.bytes as i64,
                    new_bytes: stats.new_bytes as i64,
                    consistency,
                    frozen_ms,
                },
                now_millis(),
            )
            .await?;
        Ok(row.into())
    }

    async fn ready(&self, id: Uuid) -> CpResult<holdfast_store::SnapshotRow> {
        match self.store.get_snapshot(id).await? {
            Some(s) if matches!(s.state, SnapshotState::Ready | SnapshotState::ErasePending) => {
                Ok(s)
            }
            Some(_) => Err(CpError::Conflict(
                "the snapshot has been deleted (or is being captured)".to_owned(),
            )),
            None => Err(CpError::NotFound("no such snapshot".to_owned())),
        }
    }

    pub(super) async fn stream_snapshot(&self, id: Uuid) -> CpResult<crate::export::ByteStream> {
        let snap = self.ready(id).await?;
        let repo = self.org_repo(snap.org_id).await?;
        let guard = self.org_lock(snap.org_id).read_owned().await;
        let (stream, done) = crate::export::stream_with(move |out| {
            let r = repo.write_tar(id, out);
            drop(guard);
            r
        });
        drop(done);
        Ok(stream)
    }

    pub(super) async fn remove_snapshot(
        &self,
        id: Uuid,
        actor: &str,
        why: SnapshotRemoval,
    ) -> CpResult<SnapshotInfo> {
        let Some(snap) = self.store.get_snapshot(id).await? else {
            return Err(CpError::NotFound("no such snapshot".to_owned()));
        };
        let (action, reason) = why.audit();
        self.erase_snapshot(&snap, actor, action, reason).await
    }

    /// A compare-and-set to `erasing`, the manifest removed, `erased` with
    /// its audit event, then the chunks nothing refers to any more.
    async fn erase_snapshot(
        &self,
        snap: &holdfast_store::SnapshotRow,
        actor: &str,
        action: AuditAction,
        reason: VolumeReason,
    ) -> CpResult<SnapshotInfo> {
        if snap.state != SnapshotState::Erasing {
            self.store
                .begin_snapshot_erase(
                    snap.id,
                    &[SnapshotState::Ready, SnapshotState::ErasePending],
                    now_millis(),
                )
                .await
                .map_err(|e| match e {
                    holdfast_store::StoreError::NotFound => CpError::Conflict(
                        "the snapshot is already deleted (or still being captured)".to_owned(),
                    ),
                    other => other.into(),
                })?;
        }
        let repo = self.org_repo(snap.org_id).await?;
        let lock = self.org_lock(snap.org_id);
        let _alone = lock.write().await;
        let id = snap.id;
        {
            let repo = repo.clone();
            blocking(move || repo.remove_manifest(id)).await?;
        }
        let row = self
            .store
            .finish_snapshot_erase(id, actor, action, reason, now_millis())
            .await?;
        let freed = blocking(move || repo.collect_garbage()).await?;
        tracing::info!(snapshot_id = %id, freed, "snapshot removed");
        Ok(row.into())
    }

    pub(super) async fn roll_back(
        &self,
        workspace_id: Uuid,
        snapshot_id: Uuid,
        instance_id: Option<&str>,
    ) -> CpResult<()> {
        let snap = self.ready(snapshot_id).await?;
        if snap.workspace_id != workspace_id {
            return Err(CpError::BadRequest(
                "snapshot_id: a snapshot of another workspace".to_owned(),
            ));
        }
        let volume = self.volume_path(workspace_id)?;
        if inode(&volume).is_none() {
            return Err(CpError::Conflict(
                "the workspace has no data to replace".to_owned(),
            ));
        }
        let repo = self.org_repo(snap.org_id).await?;
        let staging = self.repo.staging();
        let name = format!("{workspace_id}.new");
        let state_file = staging.join(format!("{workspace_id}.rollback"));
        // The snapshot's content, whole and synced, in a directory no
        // workspace can see.
        let staged = {
            let guard = self.org_lock(snap.org_id).read_owned().await;
            let staging = staging.clone();
            let name = name.clone();
            blocking(move || {
                let r = snapshot::stage(&repo, &staging, snapshot_id, &name);
                drop(guard);
                r
            })
            .await?
        };
        let ino = inode(&staged).ok_or_else(|| anyhow::anyhow!("the staged restore vanished"))?;
        {
            let state = serde_json::to_vec(&RollbackState {
                snapshot: snapshot_id,
                staged: ino,
            })
            .map_err(anyhow::Error::new)?;
            let state_file = state_file.clone();
            let staging = staging.clone();
            blocking(move || write_synced(&state_file, &staging, &state)).await?;
        }
        failpoint::hit("rollback.after_stage");
        // Ordering: the instance is stopped before the swap, so nothing
        // writes into the old data once it is swapped out.
        if let Some(instance) = instance_id {
            self.backend.stop(workspace_id, Some(instance)).await?;
        }
        failpoint::hit("rollback.before_swap");
        let staging2 = staging.clone();
        blocking(move || finish_rollback(&volume, &staging2, workspace_id)).await?;
        Ok(())
    }

    /// A clone's first start: the volume directory is made from the
    /// snapshot (restored beside it, then renamed into place, never over
    /// anything), unless it already exists.
    pub(super) async fn seed_volume(&self, workspace_id: Uuid, snapshot_id: Uuid) -> CpResult<()> {
        let volume = self.volume_path(workspace_id)?;
        if inode(&volume).is_some() {
            return Ok(());
        }
        let snap = self.ready(snapshot_id).await?;
        let repo = self.org_repo(snap.org_id).await?;
        let guard = self.org_lock(snap.org_id).read_owned().await;
        let staging = self.repo.staging();
        blocking(move || {
            let name = format!("{workspace_id}.seed");
            let staged = snapshot::stage(&repo, &staging, snapshot_id, &name)?;
            drop(guard);
            std::fs::create_dir_all(volume.parent().expect("a parent"))?;
            rustix::fs::renameat_with(
                rustix::fs::CWD,
                &staged,
                rustix::fs::CWD,
                &volume,
                rustix::fs::RenameFlags::NOREPLACE,
            )?;
            sync_parent(&volume)
        })
        .await
    }

    /// At start, before any workspace runs: a rollback a crash interrupted
    /// is finished (the snapshot's content was staged whole, so the data
    /// ends as the new, never a mix) or, if it had not staged yet, left as
    /// the old; captures that never finished are forgotten.
    pub(super) async fn recover_snapshots(&self) -> CpResult<()> {
        for snap in self.store.capturing_snapshots().await? {
            if let Ok(repo) = self.org_repo(snap.org_id).await {
                let _ = repo.remove_manifest(snap.id);
            }
            self.store.forget_capture(snap.id).await?;
        }
        let staging = self.repo.staging();
        let entries: Vec<String> = match std::fs::read_dir(&staging) {
            Ok(e) => e
                .flatten()
                .filter_map(|e| e.file_name().into_string().ok())
                .collect(),
            Err(_) => return Ok(()),
        };
        for name in &entries {
            if let Some(ws) = name
                .strip_suffix(".rollback")
                .and_then(|w| Uuid::parse_str(w).ok())
                && let Ok(volume) = self.volume_path(ws)
            {
                let staging = staging.clone();
                blocking(move || finish_rollback(&volume, &staging, ws)).await?;
                tracing::info!(workspace_id = %ws, "finished a rollback a crash interrupted");
            }
        }
        // Whatever else is there is a restore that never finished staging.
        for name in entries {
            if !name.ends_with(".rollback")
                && std::fs::symlink_metadata(staging.join(&name)).is_ok()
            {
                let staging = staging.clone();
                blocking(move || crate::tree::erase_tree(&staging, &name).map(|_| ())).await?;
            }
        }
        Ok(())
    }

    /// The snapshot part of a sweeper pass: erasures that are due (marked
    /// with their volume by a delete with erase, the grace passed, the
    /// workspace still removed and not held) or interrupted, and
    /// repository data no record knows, reported.
    pub(super) async fn sweep_snapshots(
        &self,
        dry_run: bool,
        actor: &str,
    ) -> CpResult<Vec<SweepItem>> {
        let mut items = Vec::new();
        if self.policy.with_workspaces {
            for c in self.store.snapshot_erase_candidates(now_millis()).await? {
                let s = &c.snapshot;
                let resume = s.state == SnapshotState::Erasing;
                if !resume && (!c.workspace_removed || c.held) {
                    continue;
                }
                let mut item = SweepItem {
                    volume_id: None,
                    snapshot_id: Some(s.id),
                    workspace_id: s.workspace_id,
                    action: SweepAction::EraseSnapshot,
                    reason: VolumeReason::EraseRequested,
                    outcome: SweepOutcome::Planned,
                    bytes: Some(s.bytes),
                    error: None,
                };
                if !dry_run {
                    item.outcome = match self
                        .erase_snapshot(
                            s,
                            actor,
                            AuditAction::SnapshotErased,
                            VolumeReason::EraseRequested,
                        )
                        .await
                    {
                        Ok(_) => SweepOutcome::Done,
                        Err(CpError::Conflict(_)) => SweepOutcome::Skipped,
                        Err(e) => {
                            item.error = Some(e.to_string());
                            SweepOutcome::Failed
                        }
                    };
                }
                items.push(item);
            }
        }
        let known: std::collections::HashSet<Uuid> = self
            .store
            .live_snapshots()
            .await?
            .into_iter()
            .map(|s| s.id)
            .collect();
        for org in self.repo.org_dirs() {
            for id in self.repo.manifests_of(org) {
                if !known.contains(&id) {
                    tracing::warn!(org_id = %org, snapshot_id = %id, "a snapshot manifest no record knows; kept");
                    items.push(SweepItem {
                        volume_id: None,
                        snapshot_id: Some(id),
                        workspace_id: Uuid::nil(),
                        action: SweepAction::ReportOrphan,
                        reason: VolumeReason::OrphanedSnapshot,
                        outcome: SweepOutcome::Skipped,
                        bytes: None,
                        error: None,
                    });
                }
            }
        }
        Ok(items)
    }
}

fn write_synced(path: &Path, dir: &Path, data: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(data)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)?;
    rustix::fs::fsync(crate::tree::open_root(dir)?)?;
    Ok(())
}

fn sync_parent(path: &Path) -> std::io::Result<()> {
    rustix::fs::fsync(crate::tree::open_root(path.parent().expect("a parent"))?)?;
    Ok(())
}

/// The swap and its cleanup, idempotent: where the state file says the
/// staged content is tells whether the swap happened.
fn finish_rollback(volume: &Path, staging: &Path, workspace_id: Uuid) -> std::io::Result<()> {
    let state_file = staging.join(format!("{workspace_id}.rollback"));
    let name = format!("{workspace_id}.new");
    let staged = staging.join(&name);
    let state: Option<RollbackState> = std::fs::read(&state_file)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok());
    if let Some(state) = state {
        if inode(&staged) == Some(state.staged) && inode(volume).is_some() {
            // One atomic exchange: the volume's path now names the
            // snapshot's content, and the old data is where the new was.
            rustix::fs::renameat_with(
                rustix::fs::CWD,
                volume,
                rustix::fs::CWD,
                &staged,
                rustix::fs::RenameFlags::EXCHANGE,
            )?;
            sync_parent(volume)?;
            sync_parent(&staged)?;
            failpoint::hit("rollback.after_swap");
        } else if inode(&staged) == Some(state.staged) {
            // No volume directory at all (never the case for a workspace
            // that had data): put the content in place.
            std::fs::rename(&staged, volume)?;
            sync_parent(volume)?;
        }
    }
    // What is left at the staged name is the old data (kept as the
    // before-rollback snapshot) or a partial staging: removed.
    crate::tree::erase_tree(staging, &name)?;
    match std::fs::remove_file(&state_file) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    Ok(())
}
