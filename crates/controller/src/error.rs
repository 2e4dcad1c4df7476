//! The controller's errors, one variant per case a caller branches on. Their
//! `Display` is the sentence a user reads; `holdfast-platform` maps each to
//! its status and stable code (`crates/platform/src/error.rs`).

use crate::delete::StopFailure;
use crate::reconciler::ReconcileError;
use holdfast_cp::CpError;
use holdfast_store::StoreError;
use uuid::Uuid;

/// What was looked for and not found (or not visible to the caller, which
/// reads the same: another org's workspace is simply not found).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resource {
    Workspace,
    Snapshot,
    Org,
    /// The route itself: a caller that may not use it at all (a workspace
    /// token on the lifecycle API, an org token on admin routes).
    Route,
}

impl Resource {
    pub fn as_str(self) -> &'static str {
        match self {
            Resource::Workspace => "workspace",
            Resource::Snapshot => "snapshot",
            Resource::Org => "org",
            Resource::Route => "route",
        }
    }
}

/// What a confirmation gate protects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Confirmed {
    /// Deleting a workspace: its exact name.
    Workspace,
    /// Deleting a snapshot: its workspace's exact name.
    Snapshot,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{} not found", .0.as_str())]
    NotFound(Resource),
    /// A field of the request names something that does not fit (a parent
    /// in another org, a snapshot of another workspace, …).
    #[error("{field}: {message}")]
    InvalidField {
        field: &'static str,
        message: String,
    },
    #[error("workspace is removed; restore it first")]
    WorkspaceRemoved,
    #[error("workspace is already removed")]
    AlreadyRemoved,
    #[error("workspace is not removed; nothing to restore")]
    NotRemoved,
    /// A destructive request without the exact name typed.
    #[error("{}", confirm_message(*.what, .name))]
    NameNotConfirmed {
        what: Confirmed,
        name: String,
        /// The workspace's live children (a workspace delete only).
        child_count: Option<usize>,
    },
    /// Live children (or descendants) that the request did not include.
    #[error(
        "workspace has {} live {}; repeat with {} to {}",
        .children.len(),
        if *.cascade { "descendants" } else { "children" },
        if *.cascade { "cascade=true" } else { "confirm=true" },
        if *.cascade { "include them" } else { "remove them all" }
    )]
    ChildrenNotConfirmed {
        children: Vec<(Uuid, String)>,
        /// `cascade=true` (pause, hibernate) rather than `confirm=true` (delete).
        cascade: bool,
    },
    #[error("ancestor {name:?} ({id}) is paused; resume it first")]
    PausedAncestor { id: Uuid, name: String },
    #[error("{}", hold_message(.name, *.on_delete))]
    LegalHold {
        id: Uuid,
        name: String,
        /// On a delete, which a delete without erase gets past.
        on_delete: bool,
    },
    #[error("the workspace's parent is removed; restore the parent first")]
    ParentRemoved(Uuid),
    #[error(
        "the workspaces are removed, but some could not be stopped yet; the reconciler retries, \
         and repeating the DELETE is safe"
    )]
    StopFailed {
        removed: u64,
        failures: Vec<StopFailure>,
        /// Every failure was an unreachable control plane or a busy
        /// workspace: a passing state.
        unavailable: bool,
    },
    #[error("another replica is sweeping; try again shortly")]
    SweepInProgress,
    #[error("an ephemeral workspace keeps no data to snapshot")]
    NoDurableData,
    #[error("the snapshot is {state}; only a ready one can be {use_}")]
    SnapshotNotReady {
        state: holdfast_domain::SnapshotState,
        /// `cloned`, `rolled back to`.
        use_: &'static str,
    },
    #[error("the snapshot is already deleted")]
    SnapshotDeleted,
    #[error("the workspace is not under a legal hold")]
    NotHeld,
    /// Another replica is acting on the workspace (or held it and died,
    /// until its lease runs out). What was asked is recorded.
    #[error(
        "another server replica is acting on this workspace; the change asked for is recorded \
         and will be carried out, or repeat the request shortly"
    )]
    Busy,
    #[error(
        "the workspace runs a command, which does not register with the platform and so takes \
         no messages; only the built-in runtime does"
    )]
    RuntimeHasNoMessages,
    #[error("workspace is {0}; resume it first")]
    WorkspaceNotRunning(holdfast_domain::DesiredState),
    #[error("the workspace's runtime has not registered yet; try again shortly")]
    RuntimeNotReady,
    /// The org's tree changed between an import's plan and its write;
    /// nothing was written.
    #[error("{0}; nothing was changed: import again")]
    OrgChanged(String),
    /// An org of that name exists (the store's words).
    #[error("{0}")]
    OrgExists(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    ControlPlane(#[from] CpError),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

fn confirm_message(what: Confirmed, name: &str) -> String {
    match what {
        Confirmed::Workspace => format!(
            "deleting a workspace needs the header X-Confirm-Name with its exact name ({name:?})"
        ),
        Confirmed::Snapshot => format!(
            "deleting a snapshot needs the header X-Confirm-Name with its workspace's exact name \
             ({name:?})"
        ),
    }
}

fn hold_message(name: &str, on_delete: bool) -> String {
    if on_delete {
        format!(
            "workspace {name:?} is under a legal hold: its data cannot be erased until an admin \
             releases the hold (a delete without erase keeps the data and is allowed)"
        )
    } else {
        format!(
            "workspace {name:?} is under a legal hold: nothing of it can be erased until an admin \
             releases the hold"
        )
    }
}

impl Error {
    /// A passing state: the control plane does not answer, or another
    /// replica holds the workspace. Repeating the request later is right.
    pub fn is_unavailable(&self) -> bool {
        match self {
            Error::Busy | Error::Store(StoreError::Fenced(_)) => true,
            Error::ControlPlane(CpError::Unreachable(_) | CpError::Unavailable(_)) => true,
            Error::StopFailed { unavailable, .. } => *unavailable,
            _ => false,
        }
    }
}

impl From<ReconcileError> for Error {
    fn from(e: ReconcileError) -> Self {
        match e {
            ReconcileError::Busy => Error::Busy,
            ReconcileError::ParentRemoved(parent) => Error::ParentRemoved(parent),
            ReconcileError::Store(e) => Error::Store(e),
            ReconcileError::Cp(e) => Error::ControlPlane(e),
        }
    }
}
