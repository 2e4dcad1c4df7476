//! The sweeper: retention, erasure and orphan reclaim (SPEC §6).
//!
//! A pass reads the volumes whose grace has passed (and, next to the platform's
//! tables, the active ones whose workspace row is gone), decides with
//! [`decide`] — a pure function, tested case by case below — and acts.
//! Then it adopts volumes of the backend (directories under `volumes/`, or
//! labelled named volumes of a container engine) that no record knows.
//!
//! **Architecture Invariant:** an erasure is a compare-and-set to `erasing`
//! in the store before any file is touched, and `erased` plus its single
//! `volume.erased` audit event are written in one transaction after the
//! files are gone. A crash anywhere in between leaves `erasing`, which the
//! next pass (at start) resumes. A directory found on disk is never erased on
//! first sight: it is recorded `retained` for the whole retention grace.

use crate::backend::{Backend, DataKind};
use holdfast_domain::{
    AuditAction, Millis, SweepAction, SweepOutcome, VolumeReason, VolumeState, failpoint,
    now_millis,
};
use holdfast_store::{Presence, Store, StoreError, SweepCandidate, VolumeRow, VolumeTransition};
use serde::{Deserialize, Serialize};
use std::time::{Duration, Instant};
use uuid::Uuid;

/// What the sweeper does with one volume.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    Keep,
    /// Start an erasure, with this reason.
    Erase(VolumeReason),
    /// Finish an erasure a crash interrupted.
    ResumeErase,
    /// An active record whose workspace row is gone: keep it, `retained`.
    RetainOrphan,
}

/// Decides what to do with a volume at `now`. Never erases a volume attached
/// to a live workspace, nor anything before its deadline.
pub fn decide(c: &SweepCandidate, now: Millis) -> Decision {
    let v = &c.volume;
    match v.state {
        VolumeState::Erasing => Decision::ResumeErase,
        VolumeState::Erased => Decision::Keep,
        VolumeState::ErasePending => {
            let due = v.erase_after.is_some_and(|t| t <= now);
            // A live workspace means a restore is under way: hands off.
            if due && c.presence != Presence::Live {
                Decision::Erase(VolumeReason::EraseRequested)
            } else {
                Decision::Keep
            }
        }
        VolumeState::Retained => {
            let due = v.retain_until.is_some_and(|t| t <= now);
            let detached = match c.presence {
                Presence::Removed | Presence::Missing | Presence::Unknown => true,
                // A live workspace keeps a retained volume only when it was
                // detached by a switch to ephemeral and still runs ephemeral.
                Presence::Live => {
                    v.reason == Some(VolumeReason::SwitchedToEphemeral)
                        && c.workspace_mode == Some(holdfast_domain::DataPersistence::Ephemeral)
                }
            };
            if due && detached {
                Decision::Erase(VolumeReason::RetentionExpired)
            } else {
                Decision::Keep
            }
        }
        VolumeState::Active => {
            if c.presence == Presence::Missing {
                Decision::RetainOrphan
            } else {
                Decision::Keep
            }
        }
    }
}

/// One line of a sweep report.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct SweepItem {
    pub volume_id: Option<Uuid>,
    /// The snapshot acted on (snapshot actions only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot_id: Option<Uuid>,
    pub workspace_id: Uuid,
    pub action: SweepAction,
    pub reason: VolumeReason,
    /// `planned` (dry run), `done`, `skipped` (the volume changed under us),
    /// or `failed`.
    pub outcome: SweepOutcome,
    pub bytes: Option<i64>,
    pub error: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct SweepReport {
    pub dry_run: bool,
    pub duration_ms: u64,
    pub items: Vec<SweepItem>,
}

/// The sweeper's inputs.
pub struct Sweeper<'a> {
    pub store: &'a Store,
    pub backend: &'a dyn Backend,
    pub retention_grace: Duration,
    /// Whether the store also holds the platform's workspace table.
    pub with_workspaces: bool,
    /// Whether this pass lists the volumes on disk for orphans (see
    /// [`OrphanScan`]).
    pub scan_disk: bool,
}

/// When the periodic sweep last listed the volumes on disk. Listing them
/// and the store's records costs about 25 µs a volume (a quarter of a
/// second of CPU at 10,000), so a periodic pass lists them again only when
/// the volumes directory's modification time moved since a listing, or
/// after [`OrphanScan::FULL_EVERY`] passes without one: a record can
/// vanish while its directory stays (a store restored from an older
/// backup), which no timestamp shows.
#[derive(Debug, Default)]
pub struct OrphanScan {
    /// The stamp read before the last listing, when it can be trusted.
    stamp: Option<std::time::SystemTime>,
    /// Periodic passes since the last listing.
    skipped: u32,
}

impl OrphanScan {
    /// Passes (a minute apart by default) between listings, however
    /// quiet the directory.
    pub const FULL_EVERY: u32 = 10;
    /// A stamp this close to the listing that read it is not trusted: a
    /// directory made in the same filesystem tick leaves it unchanged.
    const TICK: Duration = Duration::from_secs(2);

    /// Whether this pass lists the volumes on disk; `periodic` is false for
    /// an operator's pass or a dry run, which always do.
    pub fn should_scan(&mut self, now: Option<std::time::SystemTime>, periodic: bool) -> bool {
        if !periodic || now.is_none() || self.stamp != now || self.skipped >= Self::FULL_EVERY {
            return true;
        }
        self.skipped += 1;
        false
    }

    /// Records a finished listing: `stamp` was read before it began, at
    /// `started`.
    pub fn scanned(
        &mut self,
        stamp: Option<std::time::SystemTime>,
        started: std::time::SystemTime,
    ) {
        self.skipped = 0;
        self.stamp = stamp.filter(|s| {
            started
                .duration_since(*s)
                .is_ok_and(|age| age >= Self::TICK)
        });
    }
}

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

impl Sweeper<'_> {
    /// One pass. With `dry_run`, reports what it would do and changes nothing.
    pub async fn run(&self, dry_run: bool, actor: &str) -> anyhow::Result<SweepReport> {
        let started = Instant::now();
        let now = now_millis();
        let mut items = Vec::new();
        for c in self
            .store
            .sweep_candidates(now, self.with_workspaces)
            .await?
        {
            let v = &c.volume;
            let (action, reason) = match decide(&c, now) {
                Decision::Keep => continue,
                Decision::Erase(reason) => (SweepAction::Erase, reason),
                Decision::ResumeErase => (
                    SweepAction::ResumeErase,
                    v.reason.unwrap_or(VolumeReason::EraseRequested),
                ),
                Decision::RetainOrphan => (SweepAction::Retain, VolumeReason::OrphanedRecord),
            };
            let mut item = SweepItem {
                snapshot_id: None,
                volume_id: Some(v.id),
                workspace_id: v.workspace_id,
                action,
                reason,
                outcome: SweepOutcome::Planned,
                bytes: None,
                error: None,
            };
            if !dry_run {
                let result = match action {
                    SweepAction::Retain => self.retain_orphan(v, now).await.map(|()| None),
                    SweepAction::Erase | SweepAction::ResumeErase | SweepAction::Adopt => {
                        erase(self.store, self.backend, v, actor, reason)
                            .await
                            .map(Some)
                    }
                    // Snapshot actions are the control plane's own pass
                    // (`embedded/snapshots.rs`), never a volume's decision.
                    SweepAction::Snapshot
                    | SweepAction::Prune
                    | SweepAction::EraseSnapshot
                    | SweepAction::ReportOrphan => Ok(None),
                };
                match result {
                    Ok(bytes) => {
                        item.outcome = SweepOutcome::Done;
                        item.bytes = bytes;
                    }
                    Err(EraseError::Lost) => item.outcome = SweepOutcome::Skipped,
                    Err(EraseError::Other(e)) => {
                        tracing::error!(volume_id = %v.id, error = %e, "sweeper action failed");
                        item.outcome = SweepOutcome::Failed;
                        item.error = Some(format!("{e:#}"));
                    }
                }
            }
            items.push(item);
        }
        if self.scan_disk {
            items.extend(self.adopt_orphans_on_disk(dry_run, now).await?);
        }
        // Reported, never acted on: data the backend keeps that its claim
        // (or whatever held it) lost outside holdfast.
        for (workspace_id, note) in self.backend.volume_notes().await? {
            tracing::warn!(%workspace_id, note, "the sweeper reports kept data");
            items.push(SweepItem {
                snapshot_id: None,
                volume_id: None,
                workspace_id,
                action: SweepAction::ReportOrphan,
                reason: VolumeReason::OrphanedOnDisk,
                outcome: SweepOutcome::Skipped,
                bytes: None,
                error: Some(note),
            });
        }
        Ok(SweepReport {
            dry_run,
            duration_ms: started.elapsed().as_millis() as u64,
            items,
        })
    }

    async fn retain_orphan(&self, v: &VolumeRow, now: Millis) -> Result<(), EraseError> {
        self.store
            .transition_volume(
                VolumeTransition {
                    volume_id: v.id,
                    from: &[VolumeState::Active],
                    to: VolumeState::Retained,
                    retain_until: Some(now + millis(self.retention_grace)),
                    erase_after: None,
                    actor: "sweeper",
                    reason: Some(VolumeReason::OrphanedRecord),
                },
                now,
            )
            .await?;
        let ev = holdfast_store::NewAuditEvent {
            actor: "sweeper".to_owned(),
            action: AuditAction::VolumeRetained,
            workspace_id: Some(v.workspace_id),
            volume_id: Some(v.id),
            reason: Some(VolumeReason::OrphanedRecord),
            detail: None,
        };
        self.store.audit(ev, now).await?;
        Ok(())
    }

    /// Directories under `volumes/` that no record knows are recorded as
    /// `retained` (reason `orphaned_on_disk`): kept for the whole grace, then
    /// erased by a later pass like any retained volume.
    async fn adopt_orphans_on_disk(
        &self,
        dry_run: bool,
        now: Millis,
    ) -> anyhow::Result<Vec<SweepItem>> {
        let names = self.backend.volume_workspaces().await?;
        if names.is_empty() {
            return Ok(Vec::new());
        }
        let known = self.store.known_volume_workspaces().await?;
        let mut items = Vec::new();
        for workspace_id in names {
            if known.contains(&workspace_id) {
                continue;
            }
            let bytes = self
                .backend
                .data_bytes(workspace_id, DataKind::Volume)
                .await?
                .unwrap_or(0);
            let bytes = i64::try_from(bytes).unwrap_or(i64::MAX);
            let mut item = SweepItem {
                snapshot_id: None,
                volume_id: None,
                workspace_id,
                action: SweepAction::Adopt,
                reason: VolumeReason::OrphanedOnDisk,
                outcome: SweepOutcome::Planned,
                bytes: Some(bytes),
                error: None,
            };
            if !dry_run {
                let v = self
                    .store
                    .adopt_volume(workspace_id, bytes, now + millis(self.retention_grace), now)
                    .await?;
                item.volume_id = Some(v.id);
                item.outcome = SweepOutcome::Done;
            }
            items.push(item);
        }
        Ok(items)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum EraseError {
    /// The compare-and-set lost: the volume was restored or taken meanwhile.
    #[error("the volume changed state; not erasing")]
    Lost,
    #[error(transparent)]
    Other(#[from] anyhow::Error),
}

impl From<StoreError> for EraseError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::VolumeMoved { .. } => EraseError::Lost,
            other => EraseError::Other(anyhow::Error::new(other)),
        }
    }
}

/// Erases one volume: mark `erasing` (compare-and-set), have the backend
/// remove it (the process backend moves the directory aside and deletes it;
/// the container backend removes the container, then the named volume), then
/// record `erased` with its audit event. Resumes an erasure already
/// `erasing`. Returns the bytes erased.
pub async fn erase(
    store: &Store,
    backend: &dyn Backend,
    v: &VolumeRow,
    actor: &str,
    reason: VolumeReason,
) -> Result<i64, EraseError> {
    let v = if v.state == VolumeState::Erasing {
        v.clone()
    } else {
        // Ordering: the store says `erasing` before any file is touched.
        store
            .begin_erase(v.id, v.state, actor, reason, now_millis())
            .await?
    };
    failpoint::hit("erase.after_mark");
    let counted = backend.erase_volume(&v).await?;
    failpoint::hit("erase.before_record");
    // A resumed erasure counts only what was left; the size recorded at the
    // last stop is the better figure then.
    let bytes = i64::try_from(counted).unwrap_or(i64::MAX).max(v.bytes);
    store.finish_erase(v.id, bytes, now_millis()).await?;
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use expect_test::{Expect, expect};

    #[test]
    fn the_periodic_pass_lists_the_disk_again_only_once_it_may_have_changed() {
        use std::time::UNIX_EPOCH;
        let at = |s: u64| Some(UNIX_EPOCH + Duration::from_secs(s));
        let started = UNIX_EPOCH + Duration::from_secs(1_000);
        let mut scan = OrphanScan::default();
        // Nothing listed yet: list.
        assert!(scan.should_scan(at(900), true));
        scan.scanned(at(900), started);
        // Unchanged: skipped, FULL_EVERY times, then listed anyway.
        for _ in 0..OrphanScan::FULL_EVERY {
            assert!(!scan.should_scan(at(900), true));
        }
        assert!(scan.should_scan(at(900), true));
        scan.scanned(at(900), started);
        assert!(!scan.should_scan(at(900), true));
        // The directory changed: list.
        assert!(scan.should_scan(at(950), true));
        // An operator's pass or a dry run always lists.
        scan.scanned(at(950), started);
        assert!(scan.should_scan(at(950), false));
        // No stamp (a backend without one): every pass lists.
        assert!(scan.should_scan(None, true));
        scan.scanned(None, started);
        assert!(scan.should_scan(None, true));
        // A stamp from the listing's own tick is not trusted: the next
        // pass lists again, though the stamp reads the same.
        scan.scanned(at(999), started);
        assert!(scan.should_scan(at(999), true));
    }

    const NOW: Millis = 1_000_000;

    fn volume(
        state: VolumeState,
        retain_until: Option<Millis>,
        erase_after: Option<Millis>,
        reason: Option<&str>,
    ) -> VolumeRow {
        VolumeRow {
            id: Uuid::nil(),
            workspace_id: Uuid::nil(),
            state,
            bytes: 0,
            size_gb: None,
            retain_until,
            erase_after,
            erased_at: None,
            bytes_erased: None,
            erased_by: None,
            reason: reason.map(|r| r.parse().expect("a known reason")),
            created_at: 0,
            updated_at: 0,
        }
    }

    fn check(v: VolumeRow, presence: Presence, mode: Option<&str>, expect: Expect) {
        let c = SweepCandidate {
            volume: v,
            presence,
            workspace_mode: mode.map(|m| m.parse().expect("a known mode")),
        };
        expect.assert_eq(&format!("{:?}", decide(&c, NOW)));
    }

    use VolumeState::*;

    #[test]
    fn erase_pending_waits_for_its_deadline() {
        check(
            volume(ErasePending, None, Some(NOW + 1), None),
            Presence::Removed,
            None,
            expect![["Keep"]],
        );
        check(
            volume(ErasePending, None, Some(NOW), None),
            Presence::Removed,
            None,
            expect![[r#"Erase(EraseRequested)"#]],
        );
        check(
            volume(ErasePending, None, Some(NOW - 1), None),
            Presence::Missing,
            None,
            expect![[r#"Erase(EraseRequested)"#]],
        );
    }

    #[test]
    fn erase_pending_of_a_live_workspace_is_never_erased() {
        check(
            volume(ErasePending, None, Some(NOW - 1), None),
            Presence::Live,
            Some("persist"),
            expect![["Keep"]],
        );
    }

    #[test]
    fn retained_after_delete_expires() {
        check(
            volume(Retained, Some(NOW + 1), None, Some("workspace_deleted")),
            Presence::Removed,
            None,
            expect![["Keep"]],
        );
        check(
            volume(Retained, Some(NOW - 1), None, Some("workspace_deleted")),
            Presence::Removed,
            None,
            expect![[r#"Erase(RetentionExpired)"#]],
        );
    }

    #[test]
    fn retained_of_a_restored_workspace_is_kept() {
        check(
            volume(Retained, Some(NOW - 1), None, Some("workspace_deleted")),
            Presence::Live,
            Some("persist"),
            expect![["Keep"]],
        );
    }

    #[test]
    fn retained_by_a_switch_expires_only_while_still_ephemeral() {
        check(
            volume(Retained, Some(NOW - 1), None, Some("switched_to_ephemeral")),
            Presence::Live,
            Some("ephemeral"),
            expect![[r#"Erase(RetentionExpired)"#]],
        );
        check(
            volume(Retained, Some(NOW - 1), None, Some("switched_to_ephemeral")),
            Presence::Live,
            Some("persist"),
            expect![["Keep"]],
        );
    }

    #[test]
    fn orphans() {
        check(
            volume(Active, None, None, None),
            Presence::Missing,
            None,
            expect![["RetainOrphan"]],
        );
        check(
            volume(Active, None, None, None),
            Presence::Unknown,
            None,
            expect![["Keep"]],
        );
        check(
            volume(Active, None, None, None),
            Presence::Live,
            Some("persist"),
            expect![["Keep"]],
        );
        check(
            volume(Retained, Some(NOW - 1), None, Some("orphaned_on_disk")),
            Presence::Missing,
            None,
            expect![[r#"Erase(RetentionExpired)"#]],
        );
    }

    #[test]
    fn interrupted_erasures_resume_and_erased_stays() {
        check(
            volume(Erasing, None, None, Some("erase_requested")),
            Presence::Live,
            None,
            expect![["ResumeErase"]],
        );
        check(
            volume(Erased, None, None, None),
            Presence::Missing,
            None,
            expect![["Keep"]],
        );
    }

    #[test]
    fn a_standalone_control_plane_trusts_the_volume_state() {
        check(
            volume(Retained, Some(NOW - 1), None, Some("workspace_deleted")),
            Presence::Unknown,
            None,
            expect![[r#"Erase(RetentionExpired)"#]],
        );
        check(
            volume(ErasePending, None, Some(NOW - 1), None),
            Presence::Unknown,
            None,
            expect![[r#"Erase(EraseRequested)"#]],
        );
    }
}
