//! Domain types of holdfast. Every type here is built by parsing untrusted
//! input, so that code past the API edge never sees an invalid name, tier,
//! persistence mode, runtime or environment.

mod duration;
pub mod failpoint;
pub mod hex;
pub mod snapshot;
mod status;
mod workspace;

pub use duration::{DurationArg, parse_duration};
pub use status::{
    AuditAction, Consistency, DesiredState, SnapshotState, Status, StatusReason, StatusReasonKind,
    SweepAction, SweepOutcome, VolumeReason, VolumeState,
};
pub use workspace::{
    BIDI_CONTROLS, BUILTIN_TEMPLATE, Compute, DataPersistence, Env, INVISIBLE, ImageRef, Program,
    Role, Runtime, SNAPSHOT_KEEP_MAX, SnapshotSchedule, Tier, VolumeSpec, WorkspaceName,
};

/// Parses a UUID in its one written form, `8-4-4-4-12` hex digits: what the
/// API returns and what its schema (`format: uuid`) describes. The other
/// forms `uuid` accepts (braced, URN, without dashes) are refused, so that
/// an id has one spelling.
pub fn parse_uuid(s: &str) -> Option<uuid::Uuid> {
    if s.len() != 36 {
        return None;
    }
    uuid::Uuid::try_parse(s).ok()
}

use std::fmt;

/// A rejected piece of client input: which field, and what was wrong with it.
///
/// The API turns this into a 400 whose message starts with the field name, so
/// that a client always learns what to fix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct FieldError {
    pub field: String,
    pub message: String,
}

impl FieldError {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        FieldError {
            field: field.into(),
            message: message.into(),
        }
    }

    /// The same error, with its field nested under `parent` (`compute` +
    /// `data_persistence` → `compute.data_persistence`).
    pub fn under(mut self, parent: &str) -> Self {
        self.field = format!("{parent}.{}", self.field);
        self
    }
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

/// Milliseconds since the Unix epoch: the one representation of time in the
/// store, so that comparisons (`retain_until < now`) are plain integer ones in
/// every SQL dialect.
pub type Millis = i64;

pub fn now_millis() -> Millis {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    i64::try_from(now.as_millis()).unwrap_or(i64::MAX)
}

/// RFC 3339 text of a store timestamp, as the API shows it.
pub fn format_millis(ms: Millis) -> String {
    let ms = u64::try_from(ms).unwrap_or(0);
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms);
    humantime::format_rfc3339_millis(t).to_string()
}
