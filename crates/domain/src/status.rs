//! Workspace statuses (observed), desired states (intent) and volume states.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

macro_rules! text_enum {
    ($(#[$meta:meta])* $name:ident { $($(#[$vmeta:meta])* $variant:ident = $text:literal),+ $(,)? }) => {
        $(#[$meta])*
        // serde takes each variant's text; utoipa's derive does not read a
        // rename given through a macro, so the schema's values come from
        // `rename_all`, which is the same text for every enum here but
        // AuditAction (whose fields say `value_type = String`).
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
        #[serde(rename_all = "snake_case")]
        pub enum $name { $($(#[$vmeta])* #[serde(rename = $text)] $variant),+ }

        impl $name {
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            pub fn as_str(self) -> &'static str {
                match self { $($name::$variant => $text),+ }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl FromStr for $name {
            type Err = String;
            fn from_str(s: &str) -> Result<Self, String> {
                match s {
                    $($text => Ok($name::$variant),)+
                    other => Err(format!(
                        "unknown {} {other:?}; expected one of: {}",
                        stringify!($name),
                        [$($text),+].join(", ")
                    )),
                }
            }
        }
    };
}

text_enum! {
    /// What the operator last saw of a workspace (SPEC §2).
    Status {
        Provisioning = "provisioning",
        Online = "online",
        Offline = "offline",
        Degraded = "degraded",
        Failed = "failed",
        Paused = "paused",
        Hibernated = "hibernated",
        Removed = "removed",
    }
}

text_enum! {
    /// What the operator asked for. The reconciler drives compute toward it.
    DesiredState {
        Running = "running",
        Paused = "paused",
        Hibernated = "hibernated",
        Removed = "removed",
    }
}

text_enum! {
    /// The life of a data volume (SPEC §4).
    VolumeState {
        Active = "active",
        Retained = "retained",
        ErasePending = "erase_pending",
        Erasing = "erasing",
        Erased = "erased",
    }
}

impl VolumeState {
    /// Whether the files of a volume in this state may still be brought back.
    pub fn is_recoverable(self) -> bool {
        matches!(
            self,
            VolumeState::Active | VolumeState::Retained | VolumeState::ErasePending
        )
    }
}

text_enum! {
    /// Why a volume is in its state: recorded with each transition, shown in
    /// its record and history, and what the sweeper's rules turn on.
    VolumeReason {
        /// The volume was made, at a workspace's first start.
        Created = "created",
        /// A delete without erase.
        WorkspaceDeleted = "workspace_deleted",
        /// A delete with erase.
        DeleteWithErase = "delete_with_erase",
        /// Detached by a switch of the workspace to ephemeral.
        SwitchedToEphemeral = "switched_to_ephemeral",
        /// Attached again by a start after such a switch back.
        Reattached = "reattached",
        /// Brought back by a restore.
        Restored = "restored",
        /// An active record whose workspace row is gone.
        OrphanedRecord = "orphaned_record",
        /// Data the store did not know, found by the sweeper.
        OrphanedOnDisk = "orphaned_on_disk",
        /// The retention grace ran out.
        RetentionExpired = "retention_expired",
        /// The erase grace of a delete with erase ran out.
        EraseRequested = "erase_requested",
        /// Left active by a restore an older version did not finish.
        RestoreInterrupted = "restore_interrupted",
        /// A snapshot deleted by its keep policy.
        Pruned = "pruned",
        /// A snapshot deleted by hand.
        Deleted = "deleted",
        /// Repository data with no snapshot record.
        OrphanedSnapshot = "orphaned_snapshot",
    }
}

text_enum! {
    /// What one audit event records (SPEC §6).
    AuditAction {
        WorkspaceCreated = "workspace.created",
        WorkspaceUpdated = "workspace.updated",
        WorkspaceDeleted = "workspace.deleted",
        WorkspaceRestored = "workspace.restored",
        WorkspaceRestarted = "workspace.restarted",
        WorkspacePaused = "workspace.paused",
        WorkspaceResumed = "workspace.resumed",
        WorkspaceHibernated = "workspace.hibernated",
        WorkspaceWoken = "workspace.woken",
        VolumeRetained = "volume.retained",
        VolumeEraseRequested = "volume.erase_requested",
        VolumeEraseCancelled = "volume.erase_cancelled",
        VolumeRestored = "volume.restored",
        VolumeReattached = "volume.reattached",
        VolumeErased = "volume.erased",
        VolumeAdopted = "volume.adopted",
        SnapshotCreated = "snapshot.created",
        SnapshotDeleted = "snapshot.deleted",
        SnapshotErased = "snapshot.erased",
        WorkspaceRolledBack = "workspace.rolled_back",
        HoldPlaced = "hold.placed",
        HoldReleased = "hold.released",
    }
}

text_enum! {
    /// What the sweeper does with one volume (or snapshot).
    SweepAction {
        Erase = "erase",
        ResumeErase = "resume_erase",
        Retain = "retain",
        Adopt = "adopt",
        /// A scheduled snapshot taken by the pass.
        Snapshot = "snapshot",
        /// A scheduled snapshot the keep policy no longer keeps.
        Prune = "prune",
        /// A snapshot erased with its volume, after the erase grace.
        EraseSnapshot = "erase_snapshot",
        /// Repository data no snapshot record knows: reported, never
        /// deleted on first sight.
        ReportOrphan = "report_orphan",
    }
}

text_enum! {
    /// The life of a snapshot.
    SnapshotState {
        /// Being captured: no manifest yet.
        Capturing = "capturing",
        Ready = "ready",
        /// Marked with its volume by a delete with erase.
        ErasePending = "erase_pending",
        Erasing = "erasing",
        /// Gone: deleted, pruned or erased (the record is kept).
        Erased = "erased",
    }
}

text_enum! {
    /// How consistent a snapshot's capture was.
    Consistency {
        /// The workspace's processes were frozen for the whole capture.
        Frozen = "frozen",
        /// The freeze ran past `--snapshot-freeze-max`: the workspace was
        /// thawed and the capture went on while it ran (best effort, as
        /// after a crash).
        CrashConsistent = "crash_consistent",
        /// Nothing was running: the data was at rest.
        Stopped = "stopped",
    }
}

text_enum! {
    /// How one sweeper action went.
    SweepOutcome {
        /// A dry run: what it would do.
        Planned = "planned",
        Done = "done",
        /// The volume changed under it (restored, reattached, or taken by
        /// another sweeper).
        Skipped = "skipped",
        Failed = "failed",
    }
}

text_enum! {
    /// Why a workspace's compute does not run as asked, as the backend
    /// observed it (a Kubernetes Pod's phase, conditions and Warning
    /// events): the kind an operator or a script branches on. The message
    /// beside it says it for a person.
    StatusReasonKind {
        /// No node can take the Pod (FailedScheduling: resources, taints,
        /// selectors, quota).
        Unschedulable = "unschedulable",
        /// Its claim's volume is bound to a node or zone no schedulable
        /// node is in (volume node affinity conflict).
        VolumeNodeAffinity = "volume_node_affinity",
        /// Its claim is not bound to a volume yet.
        ClaimUnbound = "claim_unbound",
        /// Its claim is still attached to another node (Multi-Attach).
        VolumeMultiAttach = "volume_multi_attach",
        /// Its volume cannot be attached (FailedAttachVolume).
        VolumeAttachFailed = "volume_attach_failed",
        /// Its volume cannot be mounted (FailedMount).
        VolumeMountFailed = "volume_mount_failed",
        /// Its image cannot be pulled (ErrImagePull, ImagePullBackOff).
        ImagePull = "image_pull",
        /// Its program keeps exiting and is restarted with a back-off
        /// (CrashLoopBackOff).
        CrashLoop = "crash_loop",
        /// Another reason the backend gave, named in the sentence.
        Other = "other",
    }
}

/// Why a workspace's compute does not run as asked: a typed kind and a
/// sentence naming the cause, for its owner. Backends that cannot tell
/// (processes, containers) give none.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct StatusReason {
    pub kind: StatusReasonKind,
    /// What holds it, in a sentence (the cluster's own words after a colon).
    pub message: String,
}

impl StatusReason {
    pub fn new(kind: StatusReasonKind, message: impl Into<String>) -> Self {
        StatusReason {
            kind,
            message: message.into(),
        }
    }
}

impl fmt::Display for StatusReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        for s in Status::ALL {
            assert_eq!(s.as_str().parse::<Status>(), Ok(*s));
        }
        for s in VolumeState::ALL {
            assert_eq!(s.as_str().parse::<VolumeState>(), Ok(*s));
        }
        for s in VolumeReason::ALL {
            assert_eq!(s.as_str().parse::<VolumeReason>(), Ok(*s));
        }
        for s in AuditAction::ALL {
            assert_eq!(s.as_str().parse::<AuditAction>(), Ok(*s));
        }
        for s in StatusReasonKind::ALL {
            assert_eq!(s.as_str().parse::<StatusReasonKind>(), Ok(*s));
        }
        assert!("Online".parse::<Status>().is_err());
        // The OpenAPI document lists the same values as the wire carries
        // (utoipa's derive reads `rename_all`, not the per-variant text).
        fn schema_values<T: utoipa::PartialSchema>() -> Vec<String> {
            let v = serde_json::to_value(T::schema()).unwrap();
            v["enum"]
                .as_array()
                .expect("an enum schema")
                .iter()
                .map(|x| x.as_str().unwrap().to_owned())
                .collect()
        }
        fn texts<T: Copy>(all: &[T], f: fn(T) -> &'static str) -> Vec<String> {
            all.iter().map(|x| f(*x).to_owned()).collect()
        }
        assert_eq!(
            schema_values::<Status>(),
            texts(Status::ALL, Status::as_str)
        );
        assert_eq!(
            schema_values::<DesiredState>(),
            texts(DesiredState::ALL, DesiredState::as_str)
        );
        assert_eq!(
            schema_values::<VolumeState>(),
            texts(VolumeState::ALL, VolumeState::as_str)
        );
        assert_eq!(
            schema_values::<StatusReasonKind>(),
            texts(StatusReasonKind::ALL, StatusReasonKind::as_str)
        );
        assert_eq!(
            schema_values::<VolumeReason>(),
            texts(VolumeReason::ALL, VolumeReason::as_str)
        );
        assert_eq!(
            schema_values::<SweepAction>(),
            texts(SweepAction::ALL, SweepAction::as_str)
        );
        assert_eq!(
            schema_values::<SweepOutcome>(),
            texts(SweepOutcome::ALL, SweepOutcome::as_str)
        );
        // The wire form is the text form.
        assert_eq!(
            serde_json::to_string(&AuditAction::VolumeErased).unwrap(),
            r#""volume.erased""#
        );
        assert_eq!(
            serde_json::to_string(&VolumeState::ErasePending).unwrap(),
            r#""erase_pending""#
        );
    }
}
