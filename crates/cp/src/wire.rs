//! The control plane's HTTP protocol in one place: the request and answer
//! types that `cp serve` ([`crate::http_server`]) writes and [`HttpCp`]
//! ([`crate::http_client`]) reads, the routes, and the one table between a
//! [`CpError`] and its status and code on the wire.
//!
//! [`HttpCp`]: crate::HttpCp

use crate::{CpError, InstanceState, VolumeHistoryEntry, VolumeInfo};
use holdfast_domain::{AuditAction, Millis, VolumeReason};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// The routes, relative to the control plane's base URL.
pub mod route {
    use uuid::Uuid;

    pub const INFO: &str = "/cp/info";
    /// `GET ?image=REF`: whether the engine has the image (the default
    /// one without `image`).
    pub const IMAGE_CHECK: &str = "/cp/images/check";
    pub const PROVISION: &str = "/cp/workspaces/provision";
    pub const VOLUMES: &str = "/cp/volumes";
    pub const SWEEP: &str = "/cp/sweep";
    pub const AUDIT: &str = "/cp/audit";

    /// `DELETE`: stop (and with `prune`, mark the data erase_pending).
    pub fn workspace(id: Uuid) -> String {
        format!("/cp/workspaces/{id}")
    }

    pub fn status(id: Uuid) -> String {
        format!("/cp/workspaces/{id}/status")
    }

    pub fn volume(id: Uuid) -> String {
        format!("/cp/workspaces/{id}/volume")
    }

    /// `PUT` `{reason, actor}` / `DELETE` `{actor}`: a legal hold placed on
    /// or released from the workspace's volumes.
    pub fn hold(id: Uuid) -> String {
        format!("/cp/workspaces/{id}/hold")
    }

    pub fn retain(id: Uuid) -> String {
        format!("/cp/workspaces/{id}/volume/retain")
    }

    pub fn restore(id: Uuid) -> String {
        format!("/cp/workspaces/{id}/volume/restore")
    }

    pub fn export(id: Uuid) -> String {
        format!("/cp/workspaces/{id}/volume/export")
    }

    pub fn logs(id: Uuid) -> String {
        format!("/cp/workspaces/{id}/logs")
    }

    pub fn history(volume_id: Uuid) -> String {
        format!("/cp/volumes/{volume_id}/history")
    }
}

/// Items per page of a listing: small enough that a page stays under the
/// client's 64 KiB cap on an answer.
pub const PAGE: usize = 100;

/// The query of a stop.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct StopQuery {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance_id: Option<String>,
    #[serde(default)]
    pub prune: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub actor: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StopAnswer {
    pub stopped: bool,
    /// With `prune`: the volume as it now is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volume: Option<VolumeInfo>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct StatusQuery {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance_id: Option<String>,
}

/// `GET /cp/workspaces/:id/status`: `{state}`, and `reason`
/// (`{kind, message}`) when the backend says why the instance does not run
/// as asked. A client that knows no reason ignores it; one that reads an
/// older control plane's answer finds none.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StatusAnswer {
    pub state: InstanceState,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<holdfast_domain::StatusReason>,
}

/// The body of a retain or a restore.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ActorBody {
    pub actor: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<VolumeReason>,
}

/// A legal hold placed (`reason`) or released (none) on a remote control
/// plane.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HoldBody {
    pub actor: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HoldAnswer {
    /// Whether the workspace is held after the call.
    pub held: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct VolumeAnswer {
    pub volume: Option<VolumeInfo>,
}

/// The query of a log read; the answer is the log's bytes (404 when there
/// is none).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct LogsQuery {
    pub tail: u64,
    #[serde(default)]
    pub follow: bool,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct VolumesQuery {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<String>,
    #[serde(default)]
    pub offset: usize,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<usize>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct VolumesAnswer {
    pub volumes: Vec<VolumeInfo>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HistoryAnswer {
    pub history: Vec<VolumeHistoryEntry>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SweepBody {
    #[serde(default)]
    pub dry_run: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub actor: Option<String>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct AuditQuery {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workspace_id: Option<Uuid>,
    #[serde(default)]
    pub offset: usize,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<usize>,
}

/// One audit event of the control plane's own log.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AuditEntry {
    pub id: Uuid,
    pub at: Millis,
    pub actor: String,
    pub action: AuditAction,
    pub workspace_id: Option<Uuid>,
    pub volume_id: Option<Uuid>,
    pub reason: Option<VolumeReason>,
    pub detail: Option<serde_json::Value>,
}

impl From<holdfast_store::AuditEvent> for AuditEntry {
    fn from(e: holdfast_store::AuditEvent) -> Self {
        AuditEntry {
            id: e.id,
            at: e.at,
            actor: e.actor,
            action: e.action,
            workspace_id: e.workspace_id,
            volume_id: e.volume_id,
            reason: e.reason,
            detail: e.detail,
        }
    }
}

impl From<AuditEntry> for holdfast_store::AuditEvent {
    fn from(e: AuditEntry) -> Self {
        holdfast_store::AuditEvent {
            id: e.id,
            at: e.at,
            actor: e.actor,
            action: e.action,
            workspace_id: e.workspace_id,
            volume_id: e.volume_id,
            reason: e.reason,
            detail: e.detail.filter(|d| !d.is_null()),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AuditAnswer {
    pub events: Vec<AuditEntry>,
}

/// The query of an image check: the image (none: the default one).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImageQuery {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
}

/// An image check's answer: the engine has it (otherwise 409
/// `image_not_found`, or 503).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ImageAnswer {
    pub present: bool,
}

/// Every error answer: `{"error": sentence, "code": snake_case}`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ErrorAnswer {
    pub error: String,
    pub code: String,
}

impl CpError {
    /// The status and code this error is answered with. [`CpError::from_wire`]
    /// reads them back.
    pub fn wire(&self) -> (u16, &'static str) {
        match self {
            CpError::BadRequest(_) => (400, "invalid_field"),
            CpError::Unauthorized => (401, "unauthorized"),
            CpError::NotFound(_) => (404, "not_found"),
            CpError::Conflict(_) => (409, "conflict"),
            CpError::DataErased => (409, "data_erased"),
            CpError::ExportRefused(_) => (409, "export_refused"),
            CpError::ImageMissing(_) => (409, "image_not_found"),
            CpError::SnapshotsUnavailable(_) => (409, "snapshots_unavailable"),
            CpError::SnapshotRefused(_) => (409, "snapshot_refused"),
            CpError::StorageFull(_) => (507, "insufficient_storage"),
            CpError::TooLarge => (413, "payload_too_large"),
            CpError::Unavailable(_) | CpError::Unreachable(_) => (503, "backend_unavailable"),
            CpError::Other(_) => (500, "internal"),
        }
    }

    /// The error an answer of `status` with `code` stands for, in `op`.
    /// The control plane's sentence is never echoed (it is untrusted input):
    /// the error says what the code means.
    pub fn from_wire(op: &str, status: u16, code: Option<&str>) -> CpError {
        match (status, code) {
            (409, Some("data_erased")) => CpError::DataErased,
            (409, Some("export_refused")) => CpError::ExportRefused(
                "the workspace's data holds an entry an archive cannot include safely \
                 (a socket, a file hard-linked from outside its data, or an unreadable \
                 entry); the control plane's log names it"
                    .to_owned(),
            ),
            (409, Some("image_not_found")) => CpError::ImageMissing(format!(
                "{op}: the workspace's container image is not on the engine"
            )),
            (409, Some("snapshots_unavailable")) => CpError::SnapshotsUnavailable(format!(
                "{op}: the control plane cannot take snapshots"
            )),
            (409, Some("snapshot_refused")) => CpError::SnapshotRefused(
                "the workspace's data holds an entry a snapshot cannot include safely; the \
                 control plane's log names it"
                    .to_owned(),
            ),
            (507, _) => CpError::StorageFull(format!("{op}: the control plane's disk is full")),
            (409, _) => CpError::Conflict(format!("{op}: the control plane refused (409)")),
            (503, _) => {
                CpError::Unavailable(format!("{op}: the control plane's backend is unavailable"))
            }
            (404, _) => CpError::NotFound(format!("{op}: not found on the control plane")),
            (400, _) => CpError::BadRequest(format!(
                "{op}: the control plane rejected the request (400)"
            )),
            (s, _) => CpError::Other(anyhow::anyhow!("{op}: the control plane answered {s}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A status answer carries the backend's reason as `{kind, message}`,
    /// omitted when there is none; an older control plane's answer (no
    /// `reason`) reads as none.
    #[test]
    fn a_status_reason_survives_the_wire() {
        use holdfast_domain::{StatusReason, StatusReasonKind};
        let held = StatusAnswer {
            state: InstanceState::Running,
            reason: Some(StatusReason::new(
                StatusReasonKind::Unschedulable,
                "not scheduled: no node can take it: 0/3 nodes are available",
            )),
        };
        let text = serde_json::to_string(&held).unwrap();
        assert_eq!(
            text,
            r#"{"state":"running","reason":{"kind":"unschedulable","message":"not scheduled: no node can take it: 0/3 nodes are available"}}"#
        );
        let back: StatusAnswer = serde_json::from_str(&text).unwrap();
        assert_eq!(back.reason, held.reason);
        let plain = StatusAnswer {
            state: InstanceState::Running,
            reason: None,
        };
        assert_eq!(
            serde_json::to_string(&plain).unwrap(),
            r#"{"state":"running"}"#
        );
        let old: StatusAnswer = serde_json::from_str(r#"{"state":"exited"}"#).unwrap();
        assert_eq!((old.state, old.reason), (InstanceState::Exited, None));
        // A kind this side does not know is an error, not a guess.
        assert!(
            serde_json::from_str::<StatusAnswer>(
                r#"{"state":"running","reason":{"kind":"cosmic_rays","message":"x"}}"#
            )
            .is_err()
        );
    }

    /// Every error read back from its wire form is the same kind (the
    /// messages differ: the control plane's are not echoed).
    #[test]
    fn errors_survive_the_wire() {
        let all = [
            CpError::BadRequest("x".into()),
            CpError::NotFound("x".into()),
            CpError::Conflict("x".into()),
            CpError::DataErased,
            CpError::ExportRefused("x".into()),
            CpError::ImageMissing("x".into()),
            CpError::Unavailable("x".into()),
        ];
        for e in all {
            let (status, code) = e.wire();
            let back = CpError::from_wire("op", status, Some(code));
            assert_eq!(
                std::mem::discriminant(&back),
                std::mem::discriminant(&e),
                "{e:?} came back as {back:?}"
            );
        }
    }
}
