//! Wire types: request bodies (parsed into domain types before any SQL runs)
//! and response bodies. They carry the OpenAPI schemas.

use crate::error::{ApiError, ApiResult};
use holdfast_controller::{CreateRequest, Deleted};
use holdfast_cp::process::Confinement;
use holdfast_cp::{VolumeHistoryEntry, VolumeInfo};
use holdfast_domain::{
    Compute, DataPersistence, Env, FieldError, Role, Runtime, Status, StatusReason, Tier,
    VolumeReason, VolumeState, WorkspaceName, format_millis,
};
use holdfast_store::{WorkspacePatch, WorkspaceRow};
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::Value;
use std::collections::BTreeMap;
use utoipa::ToSchema;
use uuid::Uuid;

/// Deserializes a present field (even `null`) as `Some`, so that "absent" and
/// "null" can be told apart in a PATCH.
fn present<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Value>, D::Error> {
    Value::deserialize(d).map(Some)
}

/// `runtime`: exactly one of `template` or `command`, and optionally the
/// container image to run it in.
#[derive(Debug, Serialize, ToSchema)]
pub struct RuntimeSchema {
    /// The built-in runtime: `holdfast-runtime`.
    #[schema(example = "holdfast-runtime")]
    pub template: Option<String>,
    /// An argv to run instead.
    pub command: Option<Vec<String>>,
    /// The container image (container backend; default
    /// `--container-image`): 1–255 characters of an image reference.
    #[schema(
        example = "localhost/holdfast-runtime:latest",
        min_length = 1,
        max_length = 255,
        pattern = "^[A-Za-z0-9][A-Za-z0-9._/:@-]*$"
    )]
    pub image: Option<String>,
}

/// `compute`: all fields optional; an absent `data_persistence` is auto.
#[derive(Debug, Serialize, ToSchema)]
pub struct ComputeSchema {
    /// `persist` or `ephemeral`, exactly; absent or `""` for auto.
    #[schema(example = "persist")]
    pub data_persistence: Option<String>,
    pub volume: Option<VolumeSpecSchema>,
    pub snapshots: Option<SnapshotScheduleSchema>,
}

/// `compute.snapshots`: a snapshot every `every`, pruned by `keep` (at
/// least one count above zero).
#[derive(Debug, Serialize, ToSchema)]
pub struct SnapshotScheduleSchema {
    /// A duration of at least 1s: `30m`, `1h`, `1d`.
    #[schema(example = "1h")]
    pub every: String,
    pub keep: SnapshotKeepSchema,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct SnapshotKeepSchema {
    #[schema(minimum = 0, maximum = 10000)]
    pub last: Option<u32>,
    #[schema(minimum = 0, maximum = 10000)]
    pub hourly: Option<u32>,
    #[schema(minimum = 0, maximum = 10000)]
    pub daily: Option<u32>,
    #[schema(minimum = 0, maximum = 10000)]
    pub weekly: Option<u32>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct VolumeSpecSchema {
    #[schema(minimum = 1, maximum = 500)]
    pub size_gb: u16,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateWorkspaceRequest {
    #[schema(value_type = String, example = "researcher")]
    pub name: Value,
    #[serde(default)]
    #[schema(value_type = Option<String>)]
    pub role: Option<Value>,
    #[serde(default)]
    #[schema(value_type = Option<Uuid>)]
    pub parent_id: Option<Value>,
    #[serde(default)]
    #[schema(value_type = Option<u8>, minimum = 1, maximum = 4)]
    pub tier: Option<Value>,
    #[serde(default)]
    #[schema(value_type = Option<RuntimeSchema>)]
    pub runtime: Option<Value>,
    #[serde(default)]
    #[schema(value_type = Option<BTreeMap<String, String>>)]
    pub env: Option<Value>,
    #[serde(default)]
    #[schema(value_type = Option<ComputeSchema>)]
    pub compute: Option<Value>,
    /// Admin only: the org to create in (default: the default org).
    #[serde(default)]
    #[schema(value_type = Option<Uuid>)]
    pub org_id: Option<Value>,
    /// A clone: the new workspace's data starts as this snapshot's (of a
    /// workspace of the same org); it is always `persist`.
    #[serde(default)]
    #[schema(value_type = Option<Uuid>)]
    pub from_snapshot: Option<Value>,
}

#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PatchWorkspaceRequest {
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<String>)]
    pub name: Option<Value>,
    /// `null` or `""` clears the role.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<String>)]
    pub role: Option<Value>,
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<u8>, minimum = 1, maximum = 4)]
    pub tier: Option<Value>,
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<RuntimeSchema>)]
    pub runtime: Option<Value>,
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<BTreeMap<String, String>>)]
    pub env: Option<Value>,
    /// Replaces the whole compute object; `{}` means auto.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<ComputeSchema>)]
    pub compute: Option<Value>,
}

pub fn parse_uuid_field(field: &str, v: &Value) -> Result<Option<Uuid>, FieldError> {
    match v {
        Value::Null => Ok(None),
        Value::String(s) => holdfast_domain::parse_uuid(s)
            .map(Some)
            .ok_or_else(|| FieldError::new(field, format!("must be a UUID, got {s:?}"))),
        other => Err(FieldError::new(
            field,
            format!("must be a UUID string, got {other}"),
        )),
    }
}

fn parse_role(v: &Value) -> Result<Option<Role>, FieldError> {
    match v {
        Value::Null => Ok(None),
        Value::String(s) if s.is_empty() => Ok(None),
        Value::String(s) => Role::parse(s).map(Some),
        other => Err(FieldError::new(
            "role",
            format!("must be a string, got {other}"),
        )),
    }
}

fn parse_name(v: &Value) -> Result<WorkspaceName, FieldError> {
    match v {
        Value::String(s) => WorkspaceName::parse(s),
        other => Err(FieldError::new(
            "name",
            format!("must be a string, got {other}"),
        )),
    }
}

impl TryFrom<CreateWorkspaceRequest> for CreateRequest {
    type Error = ApiError;

    fn try_from(r: CreateWorkspaceRequest) -> ApiResult<Self> {
        let opt = |v: &Option<Value>| v.clone().unwrap_or(Value::Null);
        Ok(CreateRequest {
            name: parse_name(&r.name)?,
            role: parse_role(&opt(&r.role))?,
            parent_id: parse_uuid_field("parent_id", &opt(&r.parent_id))?,
            tier: match &r.tier {
                None | Some(Value::Null) => Tier::DEFAULT,
                Some(v) => Tier::parse(v)?,
            },
            runtime: Runtime::parse(&opt(&r.runtime))?,
            env: Env::parse(&opt(&r.env))?,
            compute: Compute::parse(&opt(&r.compute))?,
            org_id: parse_uuid_field("org_id", &opt(&r.org_id))?,
            from_snapshot: parse_uuid_field("from_snapshot", &opt(&r.from_snapshot))?,
        })
    }
}

impl TryFrom<PatchWorkspaceRequest> for WorkspacePatch {
    type Error = ApiError;

    fn try_from(r: PatchWorkspaceRequest) -> ApiResult<Self> {
        Ok(WorkspacePatch {
            name: r
                .name
                .as_ref()
                .map(parse_name)
                .transpose()?
                .map(|n| n.as_str().to_owned()),
            role: r
                .role
                .as_ref()
                .map(parse_role)
                .transpose()?
                .map(|r| r.map(|r| r.as_str().to_owned())),
            tier: r.tier.as_ref().map(Tier::parse).transpose()?,
            runtime: r.runtime.as_ref().map(Runtime::parse).transpose()?,
            env: r.env.as_ref().map(Env::parse).transpose()?,
            compute: r.compute.as_ref().map(Compute::parse).transpose()?,
        })
    }
}

/// `data`: a read-only summary of the workspace's volume.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct DataSummary {
    /// The resolved mode: `persist` or `ephemeral` (null before the first start).
    pub mode: Option<String>,
    /// The volume's state, or `none` when the workspace has no durable data.
    pub state: String,
    pub bytes: i64,
    pub retain_until: Option<String>,
    pub erase_after: Option<String>,
    /// The measured size is over `compute.volume.size_gb`: the workspace is
    /// `degraded` until it is not; nothing is deleted for it.
    pub over_quota: bool,
    /// Present (and true) when the control plane could not be reached:
    /// this is what was last known of the data, as of `as_of` (state
    /// `unknown` when nothing is known yet).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub stale: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub as_of: Option<String>,
    /// A legal hold, while one is placed: nothing of the workspace is
    /// erased and its grace clocks stand still.
    pub hold: Option<HoldView>,
}

/// A legal hold (SPEC §15).
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct HoldView {
    pub reason: Option<String>,
    pub by: Option<String>,
    pub since: Option<String>,
}

impl HoldView {
    pub fn of(ws: &WorkspaceRow) -> Option<HoldView> {
        ws.hold_at.map(|at| HoldView {
            reason: ws.hold_reason.clone(),
            by: ws.hold_by.clone(),
            since: Some(format_millis(at)),
        })
    }
}

/// `PUT /workspaces/:id/hold`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct HoldRequest {
    /// Why (a case number, a matter): 1–512 characters, no control
    /// characters.
    #[schema(value_type = String, min_length = 1, max_length = 512)]
    pub reason: Value,
}

/// `POST /workspaces/:id/snapshots`.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateSnapshotRequest {
    /// Up to 64 characters, no control characters.
    #[serde(default)]
    #[schema(value_type = Option<String>, max_length = 64)]
    pub label: Option<Value>,
}

/// `POST /workspaces/:id/rollback`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RollbackRequest {
    /// A snapshot of this workspace.
    #[schema(value_type = Uuid)]
    pub snapshot_id: Value,
}

/// Parses a free-text field: at most `max` characters, no control,
/// invisible or bidirectional-control characters.
pub fn parse_text_field(
    field: &str,
    v: &Value,
    max: usize,
    required: bool,
) -> Result<Option<String>, FieldError> {
    match v {
        Value::Null if !required => Ok(None),
        Value::String(raw) => {
            // Counted as sent (the schema's maxLength), stored trimmed.
            if raw.chars().count() > max {
                return Err(FieldError::new(field, format!("at most {max} characters")));
            }
            let s = raw.trim();
            if s.is_empty() {
                return if required {
                    Err(FieldError::new(field, "must not be empty"))
                } else {
                    Ok(None)
                };
            }
            if s.chars().any(|c| {
                c.is_control()
                    || holdfast_domain::BIDI_CONTROLS
                        .iter()
                        .chain(holdfast_domain::INVISIBLE)
                        .any(|(lo, hi)| (*lo..=*hi).contains(&c))
            }) {
                return Err(FieldError::new(
                    field,
                    "must not hold control, invisible or bidirectional-control characters",
                ));
            }
            Ok(Some(s.to_owned()))
        }
        other => Err(FieldError::new(
            field,
            format!("must be a string, got {other}"),
        )),
    }
}

/// A snapshot, as the API shows it.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct SnapshotView {
    pub id: Uuid,
    pub workspace_id: Uuid,
    pub at: String,
    pub label: Option<String>,
    /// `ready`, `erase_pending` (marked with its volume by a delete with
    /// erase), `erasing` or `erased`.
    pub state: holdfast_domain::SnapshotState,
    /// Regular files captured.
    pub files: i64,
    /// Their bytes.
    pub bytes: i64,
    /// What this snapshot added to the repository (unchanged data costs
    /// nothing).
    pub new_bytes: i64,
    /// `frozen` (the workspace was frozen for the whole capture),
    /// `crash_consistent` (the freeze ran past `--snapshot-freeze-max`, the
    /// capture went on while it ran) or `stopped` (nothing ran).
    pub consistency: Option<holdfast_domain::Consistency>,
    /// How long the workspace stayed frozen.
    pub frozen_ms: Option<i64>,
    pub erase_after: Option<String>,
}

impl From<holdfast_cp::SnapshotInfo> for SnapshotView {
    fn from(s: holdfast_cp::SnapshotInfo) -> Self {
        SnapshotView {
            id: s.id,
            workspace_id: s.workspace_id,
            at: format_millis(s.at),
            label: s.label,
            state: s.state,
            files: s.files,
            bytes: s.bytes,
            new_bytes: s.new_bytes,
            consistency: s.consistency,
            frozen_ms: s.frozen_ms,
            erase_after: s.erase_after.map(format_millis),
        }
    }
}

/// What a rollback did.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct RollbackResponse {
    pub workspace: WorkspaceView,
    /// The snapshot of the data as it was before (label
    /// `before-rollback`).
    pub before_rollback: SnapshotView,
    /// The snapshot the data now is.
    pub restored: SnapshotView,
}

/// What `DELETE /snapshots/:sid` did.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct SnapshotDeleted {
    /// Always `deleted`.
    pub status: String,
    pub snapshot: SnapshotView,
}

impl DataSummary {
    pub fn new(mode: Option<DataPersistence>, volume: Option<&VolumeInfo>) -> Self {
        match volume {
            Some(v) => DataSummary {
                mode: mode.map(|m| m.as_str().to_owned()),
                state: v.state.as_str().to_owned(),
                bytes: v.bytes,
                retain_until: v.retain_until.map(format_millis),
                erase_after: v.erase_after.map(format_millis),
                over_quota: v.over_quota,
                stale: false,
                as_of: None,
                hold: None,
            },
            None => DataSummary {
                mode: mode.map(|m| m.as_str().to_owned()),
                state: "none".to_owned(),
                bytes: 0,
                retain_until: None,
                erase_after: None,
                over_quota: false,
                stale: false,
                as_of: None,
                hold: None,
            },
        }
    }

    /// What was last known, when the control plane cannot be reached.
    pub fn stale(mut self, as_of: Option<holdfast_domain::Millis>) -> Self {
        if as_of.is_none() {
            self.state = "unknown".to_owned();
        }
        self.stale = true;
        self.as_of = as_of.map(format_millis);
        self
    }
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct WorkspaceView {
    pub id: Uuid,
    pub org_id: Uuid,
    pub name: String,
    pub role: Option<String>,
    pub parent_id: Option<Uuid>,
    pub tier: u8,
    #[schema(value_type = RuntimeSchema)]
    pub runtime: Runtime,
    pub env: BTreeMap<String, String>,
    #[schema(value_type = ComputeSchema)]
    pub compute: Compute,
    pub status: Status,
    pub instance_id: Option<String>,
    pub url: Option<String>,
    pub created_at: String,
    pub updated_at: String,
    pub removed_at: Option<String>,
    pub data: DataSummary,
    /// How it is isolated from the host: `bwrap`, `container`, `pod` or
    /// `none` (as of its last start; before its first, what it would get).
    pub isolation: String,
    /// Whether its tier's memory, process and CPU limits apply: `enforced`
    /// or `none`.
    pub limits: String,
    /// Why its latest start failed (status `failed`), in a sentence: a
    /// container image the engine does not have, an engine that does not
    /// answer. `null` otherwise.
    pub failure: Option<String>,
    /// Why its compute does not run as asked, as the backend last observed
    /// it: `{kind, message}`, the kind one of `unschedulable`,
    /// `volume_node_affinity`, `claim_unbound`, `volume_multi_attach`,
    /// `volume_attach_failed`, `volume_mount_failed`, `image_pull`,
    /// `crash_loop`, `other`, and a sentence naming the cause (a Kubernetes
    /// Pod no node can take, a claim still attached to another node, an
    /// image it cannot pull). `null` when there is none (always on the
    /// process and container backends).
    pub status_reason: Option<StatusReason>,
    /// When its current instance started (its uptime runs from here);
    /// `null` while it is not running.
    pub started_at: Option<String>,
}

impl WorkspaceView {
    pub fn new(ws: &WorkspaceRow, volume: Option<&VolumeInfo>, default: &Confinement) -> Self {
        let mode = ws.resolved_mode.or(ws.compute.data_persistence);
        WorkspaceView {
            id: ws.id,
            org_id: ws.org_id,
            name: ws.name.clone(),
            role: ws.role.clone(),
            parent_id: ws.parent_id,
            tier: ws.tier.get(),
            runtime: ws.runtime.clone(),
            env: ws.env.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
            compute: ws.compute,
            status: ws.status,
            instance_id: ws.instance_id.clone(),
            url: ws.url.clone(),
            created_at: format_millis(ws.created_at),
            updated_at: format_millis(ws.updated_at),
            removed_at: ws.removed_at.map(format_millis),
            data: DataSummary {
                hold: HoldView::of(ws),
                ..DataSummary::new(mode, volume)
            },
            isolation: ws
                .isolation
                .clone()
                .unwrap_or_else(|| default.isolation.as_str().to_owned()),
            limits: ws
                .limits
                .clone()
                .unwrap_or_else(|| default.limits.as_str().to_owned()),
            failure: ws.failure.clone(),
            status_reason: ws.status_reason.clone(),
            started_at: ws.started_at.map(format_millis),
        }
    }
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct DeleteResponse {
    /// Always `removed`.
    pub status: String,
    /// Every workspace removed, the named one included.
    pub cascade_deleted: u64,
    /// `retained`, `erase_pending`, or `none` (an ephemeral workspace).
    pub data: String,
    /// Until when a restore brings the data back.
    pub restore_until: Option<String>,
}

impl From<Deleted> for DeleteResponse {
    fn from(d: Deleted) -> Self {
        DeleteResponse {
            status: "removed".to_owned(),
            cascade_deleted: d.cascade_deleted,
            data: d.data.as_str().to_owned(),
            restore_until: d.restore_until.map(format_millis),
        }
    }
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct HistoryView {
    pub at: String,
    pub from: Option<VolumeState>,
    pub to: VolumeState,
    pub actor: String,
    pub reason: Option<VolumeReason>,
}

impl From<VolumeHistoryEntry> for HistoryView {
    fn from(h: VolumeHistoryEntry) -> Self {
        HistoryView {
            at: format_millis(h.at),
            from: h.from,
            to: h.to,
            actor: h.actor,
            reason: h.reason,
        }
    }
}

/// A workspace's usage over the last 24 hours, as `GET
/// /workspaces/:id/usage` shows it: one sample per 15-minute bucket in which
/// something was recorded, oldest first.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct UsageView {
    pub workspace_id: Uuid,
    /// The length of one bucket, in seconds (900).
    pub bucket_seconds: i64,
    /// The start of the oldest bucket the window holds (RFC 3339): the
    /// history covers `since` to now, and nothing older is kept.
    pub since: String,
    pub samples: Vec<UsageSampleView>,
}

/// One 15-minute bucket of a workspace's usage.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct UsageSampleView {
    /// The bucket's start (RFC 3339).
    pub at: String,
    /// The saved data's size last measured in the bucket, in bytes; null
    /// when nothing was measured in it.
    pub bytes: Option<i64>,
    /// How many times the workspace was restarted in the bucket (a crash,
    /// a missed heartbeat, or a restart asked for).
    pub restarts: i64,
}

impl UsageView {
    pub fn new(workspace_id: Uuid, samples: Vec<holdfast_store::UsageSample>, now: i64) -> Self {
        use holdfast_store::{USAGE_BUCKET_MS, USAGE_BUCKETS, usage_bucket};
        UsageView {
            workspace_id,
            bucket_seconds: USAGE_BUCKET_MS / 1000,
            since: format_millis(usage_bucket(now) - (USAGE_BUCKETS - 1) * USAGE_BUCKET_MS),
            samples: samples
                .into_iter()
                .map(|s| UsageSampleView {
                    at: format_millis(s.bucket),
                    bytes: s.bytes,
                    restarts: s.restarts,
                })
                .collect(),
        }
    }
}

/// A volume record, as `GET /volumes` and `GET /workspaces/:id/data` show it.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct VolumeView {
    pub id: Option<Uuid>,
    pub workspace_id: Uuid,
    /// `active`, `retained`, `erase_pending`, `erasing`, `erased`, or `none`.
    pub state: String,
    pub mode: Option<String>,
    pub bytes: i64,
    pub size_gb: Option<i64>,
    pub retain_until: Option<String>,
    pub erase_after: Option<String>,
    pub erased_at: Option<String>,
    pub bytes_erased: Option<i64>,
    pub erased_by: Option<String>,
    pub reason: Option<VolumeReason>,
    pub created_at: Option<String>,
    pub updated_at: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub history: Option<Vec<HistoryView>>,
    /// Present (and true) when the control plane could not be reached:
    /// the record as this server last read it, as of `as_of`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub stale: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub as_of: Option<String>,
}

impl VolumeView {
    pub fn new(v: &VolumeInfo) -> Self {
        VolumeView {
            id: Some(v.id),
            workspace_id: v.workspace_id,
            state: v.state.as_str().to_owned(),
            mode: None,
            bytes: v.bytes,
            size_gb: v.size_gb,
            retain_until: v.retain_until.map(format_millis),
            erase_after: v.erase_after.map(format_millis),
            erased_at: v.erased_at.map(format_millis),
            bytes_erased: v.bytes_erased,
            erased_by: v.erased_by.clone(),
            reason: v.reason,
            created_at: Some(format_millis(v.created_at)),
            updated_at: Some(format_millis(v.updated_at)),
            history: None,
            stale: false,
            as_of: None,
        }
    }

    pub fn none(workspace_id: Uuid, mode: Option<DataPersistence>) -> Self {
        VolumeView {
            id: None,
            workspace_id,
            state: "none".to_owned(),
            mode: mode.map(|m| m.as_str().to_owned()),
            bytes: 0,
            size_gb: None,
            retain_until: None,
            erase_after: None,
            erased_at: None,
            bytes_erased: None,
            erased_by: None,
            reason: None,
            created_at: None,
            updated_at: None,
            history: Some(Vec::new()),
            stale: false,
            as_of: None,
        }
    }
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Health {
    pub status: String,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ErrorBody {
    /// A human sentence.
    pub error: String,
    /// A stable snake_case code.
    pub code: String,
}
