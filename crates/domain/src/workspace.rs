//! The parsed parts of a workspace's configuration: name, role, tier, runtime,
//! environment and compute (with its data persistence mode).
//!
//! Each type has a `parse` that takes untrusted input (a string, a number or a
//! `serde_json::Value`) and returns a [`FieldError`] naming the field on
//! failure. Once built, a value is valid by construction.

use crate::FieldError;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::BTreeMap;
use std::fmt;

/// The template name of the built-in runtime (`holdfast runtime`).
pub const BUILTIN_TEMPLATE: &str = "holdfast-runtime";

fn has_control(s: &str) -> bool {
    s.chars().any(char::is_control)
}

/// Characters that change how text around them is shown: bidirectional
/// marks, embeddings, overrides and isolates (a name that reads `gpj.exe`
/// can be `exe.jpg` backwards). Inclusive ranges.
pub const BIDI_CONTROLS: &[(char, char)] = &[
    ('\u{061C}', '\u{061C}'),
    ('\u{200E}', '\u{200F}'),
    ('\u{202A}', '\u{202E}'),
    ('\u{2066}', '\u{2069}'),
];

/// Characters a reader cannot see, besides [`BIDI_CONTROLS`] and control
/// characters: zero-width and other format characters (Unicode's category
/// Cf, listed here in full since std has no table of it), and the line and
/// paragraph separators. Two names that differ only by them look the same,
/// and the confirmation of a delete is typed by reading a name. Inclusive
/// ranges; the API's schema is built from this table too.
pub const INVISIBLE: &[(char, char)] = &[
    ('\u{00AD}', '\u{00AD}'),
    ('\u{0600}', '\u{0605}'),
    ('\u{06DD}', '\u{06DD}'),
    ('\u{070F}', '\u{070F}'),
    ('\u{0890}', '\u{0891}'),
    ('\u{08E2}', '\u{08E2}'),
    ('\u{180E}', '\u{180E}'),
    ('\u{200B}', '\u{200D}'),
    ('\u{2028}', '\u{2029}'),
    ('\u{2060}', '\u{2064}'),
    ('\u{206A}', '\u{206F}'),
    ('\u{FEFF}', '\u{FEFF}'),
    ('\u{FFF9}', '\u{FFFB}'),
    ('\u{110BD}', '\u{110BD}'),
    ('\u{110CD}', '\u{110CD}'),
    ('\u{13430}', '\u{1343F}'),
    ('\u{1BCA0}', '\u{1BCA3}'),
    ('\u{1D173}', '\u{1D17A}'),
    ('\u{E0001}', '\u{E0001}'),
    ('\u{E0020}', '\u{E007F}'),
];

fn in_table(table: &[(char, char)], c: char) -> bool {
    table.iter().any(|(lo, hi)| (*lo..=*hi).contains(&c))
}

fn is_bidi_control(c: char) -> bool {
    in_table(BIDI_CONTROLS, c)
}

fn is_invisible(c: char) -> bool {
    is_bidi_control(c) || in_table(INVISIBLE, c)
}

/// The first character of `s` a name may not hold, for the error message.
fn first_invisible(s: &str) -> Option<char> {
    s.chars().find(|c| is_invisible(*c))
}

/// A workspace name: 1–64 characters after trimming, no control characters.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct WorkspaceName(String);

impl WorkspaceName {
    pub const MAX_CHARS: usize = 64;

    pub fn parse(raw: &str) -> Result<Self, FieldError> {
        if has_control(raw) {
            return Err(FieldError::new(
                "name",
                "must not contain control characters",
            ));
        }
        if let Some(c) = first_invisible(raw) {
            return Err(FieldError::new(
                "name",
                format!(
                    "must not contain invisible, zero-width or bidirectional-control characters (found U+{:04X})",
                    u32::from(c)
                ),
            ));
        }
        let trimmed = raw.trim();
        let n = trimmed.chars().count();
        if n == 0 {
            return Err(FieldError::new("name", "must not be empty"));
        }
        if n > Self::MAX_CHARS {
            return Err(FieldError::new(
                "name",
                format!("must be at most {} characters, got {n}", Self::MAX_CHARS),
            ));
        }
        Ok(WorkspaceName(trimmed.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for WorkspaceName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A role: at most 256 characters, no control characters.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct Role(String);

impl Role {
    pub const MAX_CHARS: usize = 256;

    pub fn parse(raw: &str) -> Result<Self, FieldError> {
        if has_control(raw) {
            return Err(FieldError::new(
                "role",
                "must not contain control characters",
            ));
        }
        // Zero-width joiners are allowed here (emoji sequences need them);
        // what reorders the text around it is not.
        if let Some(c) = raw.chars().find(|c| is_bidi_control(*c)) {
            return Err(FieldError::new(
                "role",
                format!(
                    "must not contain bidirectional-control characters (found U+{:04X})",
                    u32::from(c)
                ),
            ));
        }
        let n = raw.chars().count();
        if n > Self::MAX_CHARS {
            return Err(FieldError::new(
                "role",
                format!("must be at most {} characters, got {n}", Self::MAX_CHARS),
            ));
        }
        Ok(Role(raw.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A JSON number that is an integer: `2`, and also `2.0`, which JSON Schema
/// (and so the API's schema) counts as the integer 2.
fn json_integer(v: &Value) -> Option<i64> {
    v.as_i64().or_else(|| {
        v.as_f64()
            .filter(|f| f.fract() == 0.0 && f.abs() < 1e15)
            .map(|f| f as i64)
    })
}

/// A compute tier, 1 to 4.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct Tier(u8);

impl Tier {
    pub const DEFAULT: Tier = Tier(2);

    pub fn parse(v: &Value) -> Result<Self, FieldError> {
        let err = || FieldError::new("tier", format!("must be an integer from 1 to 4, got {v}"));
        let n = json_integer(v).ok_or_else(err)?;
        if !(1..=4).contains(&n) {
            return Err(err());
        }
        Ok(Tier(n as u8))
    }

    pub fn from_stored(n: i64) -> Self {
        Tier(n.clamp(1, 4) as u8)
    }

    pub fn get(self) -> u8 {
        self.0
    }
}

/// Whether a workspace's data outlives its process. Auto is the absence of a
/// value (`Option<DataPersistence>::None`) and is resolved at provision time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DataPersistence {
    Persist,
    Ephemeral,
}

impl DataPersistence {
    pub const FIELD: &'static str = "data_persistence";
    const ALLOWED: &'static str =
        "must be exactly \"persist\" or \"ephemeral\" (omit it, or send \"\", for auto)";

    pub fn as_str(self) -> &'static str {
        match self {
            DataPersistence::Persist => "persist",
            DataPersistence::Ephemeral => "ephemeral",
        }
    }

    /// Parses the exact, case-sensitive text. `""` is auto (`None`).
    pub fn parse_str(s: &str) -> Result<Option<Self>, FieldError> {
        match s {
            "" => Ok(None),
            "persist" => Ok(Some(DataPersistence::Persist)),
            "ephemeral" => Ok(Some(DataPersistence::Ephemeral)),
            other => Err(FieldError::new(
                Self::FIELD,
                format!("{}; got {other:?}", Self::ALLOWED),
            )),
        }
    }

    /// Parses a JSON value: a string as [`Self::parse_str`], `null` as auto,
    /// anything else (booleans, numbers, objects) is rejected.
    pub fn parse(v: &Value) -> Result<Option<Self>, FieldError> {
        match v {
            Value::Null => Ok(None),
            Value::String(s) => Self::parse_str(s),
            other => Err(FieldError::new(
                Self::FIELD,
                format!("{}; got {other}", Self::ALLOWED),
            )),
        }
    }
}

impl fmt::Display for DataPersistence {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for DataPersistence {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match DataPersistence::parse_str(s) {
            Ok(Some(m)) => Ok(m),
            Ok(None) => Err("expected \"persist\" or \"ephemeral\"".to_owned()),
            Err(e) => Err(e.message),
        }
    }
}

/// The volume size request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VolumeSpec {
    pub size_gb: u16,
}

/// `compute`: all fields optional; empty fields are omitted when stored and
/// returned.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Compute {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_persistence: Option<DataPersistence>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volume: Option<VolumeSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshots: Option<SnapshotSchedule>,
}

/// `compute.snapshots`: take a snapshot every `every`, keep what `keep`
/// says (SPEC §15). Applies to a persist workspace; the sweeper acts on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SnapshotSchedule {
    #[serde(with = "every_text")]
    pub every: std::time::Duration,
    pub keep: crate::snapshot::Keep,
}

/// The shortest schedule: a snapshot more often than this is a mistake
/// (and a load on the repository), not a policy.
pub const SNAPSHOT_EVERY_MIN: std::time::Duration = std::time::Duration::from_secs(1);
/// The most any `keep` count may be.
pub const SNAPSHOT_KEEP_MAX: u32 = 10_000;

mod every_text {
    use serde::{Deserialize, Deserializer, Serializer};
    pub fn serialize<S: Serializer>(d: &std::time::Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&super::format_every(*d))
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<std::time::Duration, D::Error> {
        let text = String::deserialize(d)?;
        crate::parse_duration(&text).map_err(serde::de::Error::custom)
    }
}

/// A schedule's period in the form its input takes (`1d`, `16d22h47m49s`):
/// at most four groups of a count (1 to 999999) and a unit (`w`, `d`, `h`,
/// `m`, `s`), split greedily from the largest unit (then without weeks,
/// then with other units left out) until a split says it exactly in that
/// form. Whole seconds: the parser's minimum is one second.
pub fn format_every(d: std::time::Duration) -> String {
    const UNITS: [(u64, char); 5] = [
        (604_800, 'w'),
        (86_400, 'd'),
        (3_600, 'h'),
        (60, 'm'),
        (1, 's'),
    ];
    const MAX: u64 = 999_999;
    let total = d.as_secs().max(1);
    // Sets of units as bits (16 = w … 1 = s): all of them, then all but
    // weeks, then every other set.
    let masks = [31u32, 15]
        .into_iter()
        .chain((1..31).rev().filter(|m| *m != 15));
    for mask in masks {
        let mut rest = total;
        let mut groups = Vec::new();
        for (i, (size, unit)) in UNITS.iter().enumerate() {
            if mask & (1 << (4 - i)) != 0 {
                let n = rest / size;
                rest -= n * size;
                if n > 0 {
                    groups.push((n, *unit));
                }
            }
        }
        if rest == 0 && groups.len() <= 4 && groups.iter().all(|(n, _)| *n <= MAX) {
            return groups.iter().map(|(n, u)| format!("{n}{u}")).collect();
        }
    }
    // Past what four six-digit groups can say (beyond any period the input
    // can give): seconds, exact.
    format!("{total}s")
}

impl SnapshotSchedule {
    /// Parses `compute.snapshots`: `{"every": "1h", "keep": {"last": n,
    /// "hourly": n, "daily": n, "weekly": n}}`, every count optional but at
    /// least one above zero (a schedule that keeps nothing is a mistake).
    pub fn parse(v: &Value) -> Result<Option<Self>, FieldError> {
        const F: &str = "compute.snapshots";
        let obj = match v {
            Value::Null => return Ok(None),
            Value::Object(obj) => obj,
            other => {
                return Err(FieldError::new(
                    F,
                    format!("must be an object, got {other}"),
                ));
            }
        };
        let mut every = None;
        let mut keep = None;
        for (key, value) in obj {
            match key.as_str() {
                "every" => {
                    let field = format!("{F}.every");
                    let text = value.as_str().ok_or_else(|| {
                        FieldError::new(
                            &field,
                            format!("must be a duration such as \"1h\", got {value}"),
                        )
                    })?;
                    let d = crate::parse_duration(text).map_err(|e| FieldError::new(&field, e))?;
                    if d < SNAPSHOT_EVERY_MIN {
                        return Err(FieldError::new(field, "must be at least 1s"));
                    }
                    every = Some(d);
                }
                "keep" => keep = Some(parse_keep(value)?),
                other => {
                    return Err(FieldError::new(
                        format!("{F}.{other}"),
                        "unknown field; allowed: every, keep",
                    ));
                }
            }
        }
        let every = every.ok_or_else(|| FieldError::new(format!("{F}.every"), "is required"))?;
        let keep = keep.ok_or_else(|| FieldError::new(format!("{F}.keep"), "is required"))?;
        Ok(Some(SnapshotSchedule { every, keep }))
    }
}

fn parse_keep(v: &Value) -> Result<crate::snapshot::Keep, FieldError> {
    const F: &str = "compute.snapshots.keep";
    let Value::Object(obj) = v else {
        return Err(FieldError::new(F, format!("must be an object, got {v}")));
    };
    let mut keep = crate::snapshot::Keep::default();
    for (key, value) in obj {
        let slot = match key.as_str() {
            "last" => &mut keep.last,
            "hourly" => &mut keep.hourly,
            "daily" => &mut keep.daily,
            "weekly" => &mut keep.weekly,
            other => {
                return Err(FieldError::new(
                    format!("{F}.{other}"),
                    "unknown field; allowed: last, hourly, daily, weekly",
                ));
            }
        };
        let n = json_integer(value)
            .filter(|n| (0..=i64::from(SNAPSHOT_KEEP_MAX)).contains(n))
            .ok_or_else(|| {
                FieldError::new(
                    format!("{F}.{key}"),
                    format!("must be an integer from 0 to {SNAPSHOT_KEEP_MAX}, got {value}"),
                )
            })?;
        *slot = n as u32;
    }
    if keep.total() == 0 {
        return Err(FieldError::new(F, "must keep at least one snapshot"));
    }
    Ok(keep)
}

impl Compute {
    /// Parses the `compute` object of a request. `null` is an empty compute.
    pub fn parse(v: &Value) -> Result<Self, FieldError> {
        let obj = match v {
            Value::Null => return Ok(Compute::default()),
            Value::Object(obj) => obj,
            other => {
                return Err(FieldError::new(
                    "compute",
                    format!("must be an object, got {other}"),
                ));
            }
        };
        let mut compute = Compute::default();
        for (key, value) in obj {
            match key.as_str() {
                "data_persistence" => {
                    compute.data_persistence =
                        DataPersistence::parse(value).map_err(|e| e.under("compute"))?;
                }
                "volume" => compute.volume = parse_volume(value)?,
                "snapshots" => compute.snapshots = SnapshotSchedule::parse(value)?,
                other => {
                    return Err(FieldError::new(
                        format!("compute.{other}"),
                        "unknown field; allowed: data_persistence, volume, snapshots",
                    ));
                }
            }
        }
        Ok(compute)
    }
}

fn parse_volume(v: &Value) -> Result<Option<VolumeSpec>, FieldError> {
    let obj = match v {
        Value::Null => return Ok(None),
        Value::Object(obj) => obj,
        other => {
            return Err(FieldError::new(
                "compute.volume",
                format!("must be an object, got {other}"),
            ));
        }
    };
    let mut size = None;
    for (key, value) in obj {
        match key.as_str() {
            "size_gb" => {
                let err = || {
                    FieldError::new(
                        "compute.volume.size_gb",
                        format!("must be an integer from 1 to 500, got {value}"),
                    )
                };
                let n = json_integer(value).ok_or_else(err)?;
                if !(1..=500).contains(&n) {
                    return Err(err());
                }
                size = Some(n as u16);
            }
            other => {
                return Err(FieldError::new(
                    format!("compute.volume.{other}"),
                    "unknown field; allowed: size_gb",
                ));
            }
        }
    }
    Ok(size.map(|size_gb| VolumeSpec { size_gb }))
}

/// What a workspace runs: a program (the built-in runtime by template name,
/// or an argv) and, for the container backend, the image to run it in.
///
/// On the wire and in the store it is one object: `{"template":…}` or
/// `{"command":[…]}`, with an optional `"image"` beside either.
#[derive(Clone, PartialEq, Eq, Default)]
pub struct Runtime {
    pub program: Program,
    /// The container image (`runtime.image`); `None` means the backend's
    /// default (`--container-image`). Ignored by the process backend.
    pub image: Option<ImageRef>,
}

/// Reads as its program (`Template("holdfast-runtime")`), with the image
/// after it when one is set.
impl fmt::Debug for Runtime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.program.fmt(f)?;
        match &self.image {
            Some(image) => write!(f, " in {image:?}"),
            None => Ok(()),
        }
    }
}

/// The program a workspace runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Program {
    Template(String),
    Command(Vec<String>),
}

impl Default for Program {
    fn default() -> Self {
        Program::Template(BUILTIN_TEMPLATE.to_owned())
    }
}

/// A container image reference (`localhost/holdfast-runtime:1`,
/// `docker.io/library/debian:bookworm-slim`, `name@sha256:…`): 1 to 255
/// characters of the reference grammar's alphabet, never starting with `-`
/// (so that it can never be read as a flag by an engine's CLI).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct ImageRef(String);

impl ImageRef {
    pub const MAX_LEN: usize = 255;

    pub fn parse(s: &str) -> Result<Self, FieldError> {
        let err = |why: &str| FieldError::new("runtime.image", why.to_owned());
        if s.is_empty() || s.len() > Self::MAX_LEN {
            return Err(err("must be 1 to 255 characters"));
        }
        if !s.chars().next().is_some_and(|c| c.is_ascii_alphanumeric()) {
            return Err(err("must start with a letter or a digit"));
        }
        if !s
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "._-/:@".contains(c))
        {
            return Err(err(
                "may only hold letters, digits and . _ - / : @ (an image reference)",
            ));
        }
        Ok(ImageRef(s.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for ImageRef {
    type Error = FieldError;
    fn try_from(s: String) -> Result<Self, FieldError> {
        ImageRef::parse(&s)
    }
}

impl From<ImageRef> for String {
    fn from(i: ImageRef) -> String {
        i.0
    }
}

impl fmt::Display for ImageRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl Runtime {
    pub const MAX_ARGS: usize = 256;
    /// In characters (as a schema's `maxLength` counts them).
    pub const MAX_ARG_CHARS: usize = 4096;

    /// A runtime that runs `argv` (in the backend's default image).
    pub fn command(argv: Vec<String>) -> Self {
        Runtime {
            program: Program::Command(argv),
            image: None,
        }
    }

    /// Whether it is the built-in runtime (which registers).
    pub fn is_builtin(&self) -> bool {
        matches!(self.program, Program::Template(_))
    }

    pub fn parse(v: &Value) -> Result<Self, FieldError> {
        let obj = match v {
            Value::Null => return Ok(Runtime::default()),
            Value::Object(obj) => obj,
            other => {
                return Err(FieldError::new(
                    "runtime",
                    format!("must be {{\"template\":…}} or {{\"command\":[…]}}, got {other}"),
                ));
            }
        };
        let image = match obj.get("image") {
            None => None,
            Some(Value::String(s)) => Some(ImageRef::parse(s)?),
            Some(_) => return Err(FieldError::new("runtime.image", "must be a string")),
        };
        let mut programs = obj.iter().filter(|(k, _)| k.as_str() != "image");
        let (Some((key, value)), None) = (programs.next(), programs.next()) else {
            return Err(FieldError::new(
                "runtime",
                "must have exactly one of \"template\" or \"command\"",
            ));
        };
        let program = match key.as_str() {
            "template" => match value.as_str() {
                Some(BUILTIN_TEMPLATE) => Program::default(),
                _ => {
                    return Err(FieldError::new(
                        "runtime.template",
                        format!("unknown template {value}; available: {BUILTIN_TEMPLATE:?}"),
                    ));
                }
            },
            "command" => {
                let items = value.as_array().ok_or_else(|| {
                    FieldError::new("runtime.command", "must be an array of strings")
                })?;
                if items.is_empty() || items.len() > Self::MAX_ARGS {
                    return Err(FieldError::new(
                        "runtime.command",
                        format!("must have 1 to {} elements", Self::MAX_ARGS),
                    ));
                }
                let mut argv = Vec::with_capacity(items.len());
                for (i, item) in items.iter().enumerate() {
                    let s = item.as_str().ok_or_else(|| {
                        FieldError::new(format!("runtime.command[{i}]"), "must be a string")
                    })?;
                    if s.contains('\0') || s.chars().count() > Self::MAX_ARG_CHARS {
                        return Err(FieldError::new(
                            format!("runtime.command[{i}]"),
                            format!(
                                "must have no NUL byte and at most {} characters",
                                Self::MAX_ARG_CHARS
                            ),
                        ));
                    }
                    argv.push(s.to_owned());
                }
                if argv[0].trim().is_empty() {
                    return Err(FieldError::new("runtime.command[0]", "must not be empty"));
                }
                Program::Command(argv)
            }
            other => {
                return Err(FieldError::new(
                    format!("runtime.{other}"),
                    "unknown field; allowed: template, command, image",
                ));
            }
        };
        Ok(Runtime { program, image })
    }

    /// The wire and stored form.
    pub fn to_value(&self) -> Value {
        let mut obj = serde_json::Map::new();
        match &self.program {
            Program::Template(t) => obj.insert("template".into(), Value::from(t.as_str())),
            Program::Command(argv) => obj.insert("command".into(), Value::from(argv.clone())),
        };
        if let Some(image) = &self.image {
            obj.insert("image".into(), Value::from(image.as_str()));
        }
        Value::Object(obj)
    }
}

impl Serialize for Runtime {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.to_value().serialize(s)
    }
}

/// Read back through [`Runtime::parse`], so that a stored or relayed runtime
/// meets the same rules as one from a client.
impl<'de> Deserialize<'de> for Runtime {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let v = Value::deserialize(d)?;
        Runtime::parse(&v).map_err(serde::de::Error::custom)
    }
}

/// The workspace's own environment variables: at most 64, names of the shell
/// form, none in the `HOLDFAST_` namespace (those are set by holdfast).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Env(BTreeMap<String, String>);

impl Env {
    pub const MAX_ENTRIES: usize = 64;
    /// In characters (as a schema's `maxLength` counts them).
    pub const MAX_VALUE_CHARS: usize = 32 * 1024;

    pub fn parse(v: &Value) -> Result<Self, FieldError> {
        let obj = match v {
            Value::Null => return Ok(Env::default()),
            Value::Object(obj) => obj,
            other => {
                return Err(FieldError::new(
                    "env",
                    format!("must be an object of strings, got {other}"),
                ));
            }
        };
        if obj.len() > Self::MAX_ENTRIES {
            return Err(FieldError::new(
                "env",
                format!(
                    "must have at most {} entries, got {}",
                    Self::MAX_ENTRIES,
                    obj.len()
                ),
            ));
        }
        let mut map = BTreeMap::new();
        for (key, value) in obj {
            let valid_name = !key.is_empty()
                && key.len() <= 128
                && !key.starts_with(|c: char| c.is_ascii_digit())
                && key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
            if !valid_name {
                return Err(FieldError::new(
                    format!("env.{key}"),
                    "names must match [A-Za-z_][A-Za-z0-9_]* (at most 128 bytes)",
                ));
            }
            if key.starts_with("HOLDFAST_") {
                return Err(FieldError::new(
                    format!("env.{key}"),
                    "names starting with HOLDFAST_ are reserved",
                ));
            }
            let s = value.as_str().ok_or_else(|| {
                FieldError::new(
                    format!("env.{key}"),
                    format!("must be a string, got {value}"),
                )
            })?;
            if s.contains('\0') || s.chars().count() > Self::MAX_VALUE_CHARS {
                return Err(FieldError::new(
                    format!("env.{key}"),
                    format!(
                        "must have no NUL byte and at most {} characters",
                        Self::MAX_VALUE_CHARS
                    ),
                ));
            }
            map.insert(key.clone(), s.to_owned());
        }
        Ok(Env(map))
    }

    pub fn iter(&self) -> impl Iterator<Item = (&String, &String)> {
        self.0.iter()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_schedules_period_is_written_as_its_input_is() {
        let pattern = |t: &str| {
            let mut groups = 0;
            let mut digits = 0;
            for c in t.chars() {
                match c {
                    '0'..='9' if !(digits == 0 && c == '0') && digits < 6 => digits += 1,
                    'w' | 'd' | 'h' | 'm' | 's' if digits > 0 => {
                        groups += 1;
                        digits = 0;
                    }
                    _ => return false,
                }
            }
            digits == 0 && (1..=4).contains(&groups)
        };
        for (secs, text) in [
            (1u64, "1s"),
            (60, "1m"),
            (86_400, "1d"),
            (604_800, "1w"),
            (90_000, "1d1h"),
            // 2w2d22h47m49s would be five groups.
            (1_464_469, "16d22h47m49s"),
        ] {
            let got = format_every(std::time::Duration::from_secs(secs));
            assert!(pattern(&got), "{got} is not in the input's form");
            assert_eq!(got, text);
            // And it reads back as the same period.
            assert_eq!(crate::parse_duration(&got).unwrap().as_secs(), secs);
        }
        // Five units would be five groups: four that fit are found instead.
        let five = 604_800 + 86_400 + 3_600 + 60 + 1;
        let got = format_every(std::time::Duration::from_secs(five));
        assert!(pattern(&got), "{got}");
        assert_eq!(crate::parse_duration(&got).unwrap().as_secs(), five);
        // The positive control: the check refuses what humantime writes.
        assert!(!pattern("1day"));
        assert!(!pattern("16days 22h 47m 49s"));
    }
    use expect_test::{Expect, expect};
    use serde_json::json;

    fn check_persistence(input: Value, expect: Expect) {
        let got = match DataPersistence::parse(&input) {
            Ok(v) => format!("{v:?}"),
            Err(e) => e.to_string(),
        };
        expect.assert_eq(&got);
    }

    #[test]
    fn persistence_exact() {
        check_persistence(json!("persist"), expect![["Some(Persist)"]]);
        check_persistence(json!("ephemeral"), expect![["Some(Ephemeral)"]]);
        check_persistence(json!(""), expect![["None"]]);
        check_persistence(json!(null), expect![["None"]]);
    }

    #[test]
    fn persistence_near_misses() {
        check_persistence(
            json!("Persist"),
            expect![[
                r#"data_persistence: must be exactly "persist" or "ephemeral" (omit it, or send "", for auto); got "Persist""#
            ]],
        );
        check_persistence(
            json!("ephemeral "),
            expect![[
                r#"data_persistence: must be exactly "persist" or "ephemeral" (omit it, or send "", for auto); got "ephemeral ""#
            ]],
        );
        check_persistence(
            json!(true),
            expect![[
                r#"data_persistence: must be exactly "persist" or "ephemeral" (omit it, or send "", for auto); got true"#
            ]],
        );
        check_persistence(
            json!(1),
            expect![[
                r#"data_persistence: must be exactly "persist" or "ephemeral" (omit it, or send "", for auto); got 1"#
            ]],
        );
    }

    #[test]
    fn names() {
        assert_eq!(WorkspaceName::parse("  ada ").unwrap().as_str(), "ada");
        assert!(WorkspaceName::parse("   ").is_err());
        assert!(WorkspaceName::parse("a\u{7}b").is_err());
        assert!(WorkspaceName::parse(&"x".repeat(64)).is_ok());
        assert!(WorkspaceName::parse(&"x".repeat(65)).is_err());
        // Characters, not bytes.
        assert!(WorkspaceName::parse(&"é".repeat(64)).is_ok());
    }

    fn check_name(raw: &str, expect: Expect) {
        let got = match WorkspaceName::parse(raw) {
            Ok(n) => format!("ok {:?}", n.as_str()),
            Err(e) => e.to_string(),
        };
        expect.assert_eq(&got);
    }

    #[test]
    fn names_without_invisible_characters() {
        // Positive controls: letters of any script, and spaces inside.
        check_name("Übersetzer 翻訳", expect![[r#"ok "Übersetzer 翻訳""#]]);
        check_name("مترجم", expect![[r#"ok "مترجم""#]]);
        check_name(
            "gpj\u{202E}exe",
            expect![[
                "name: must not contain invisible, zero-width or bidirectional-control characters (found U+202E)"
            ]],
        );
        check_name(
            "a\u{2066}b\u{2069}",
            expect![[
                "name: must not contain invisible, zero-width or bidirectional-control characters (found U+2066)"
            ]],
        );
        check_name(
            "ad\u{200B}min",
            expect![[
                "name: must not contain invisible, zero-width or bidirectional-control characters (found U+200B)"
            ]],
        );
        check_name(
            "\u{FEFF}admin",
            expect![[
                "name: must not contain invisible, zero-width or bidirectional-control characters (found U+FEFF)"
            ]],
        );
        check_name(
            "a\u{2060}b",
            expect![[
                "name: must not contain invisible, zero-width or bidirectional-control characters (found U+2060)"
            ]],
        );
        check_name(
            "soft\u{00AD}hyphen",
            expect![[
                "name: must not contain invisible, zero-width or bidirectional-control characters (found U+00AD)"
            ]],
        );
        check_name(
            "tag\u{E0041}",
            expect![[
                "name: must not contain invisible, zero-width or bidirectional-control characters (found U+E0041)"
            ]],
        );
        check_name(
            "a\u{85}b",
            expect![["name: must not contain control characters"]],
        );
    }

    #[test]
    fn roles_refuse_bidi_controls_but_keep_emoji_joiners() {
        assert!(Role::parse("dev \u{1F469}\u{200D}\u{1F4BB}").is_ok());
        assert_eq!(
            Role::parse("x\u{202D}y").unwrap_err().to_string(),
            "role: must not contain bidirectional-control characters (found U+202D)"
        );
    }

    #[test]
    fn integers_may_be_written_as_whole_floats() {
        assert_eq!(Tier::parse(&json!(2.0)).map(Tier::get), Ok(2));
        assert!(Tier::parse(&json!(2.5)).is_err());
        assert!(Tier::parse(&json!(5.0)).is_err());
        let c = Compute::parse(&json!({"volume": {"size_gb": 10.0}})).unwrap();
        assert_eq!(c.volume.map(|v| v.size_gb), Some(10));
    }

    #[test]
    fn compute_nested_errors_name_the_path() {
        let e = Compute::parse(&json!({"data_persistence": "off"})).unwrap_err();
        assert_eq!(e.field, "compute.data_persistence");
        let e = Compute::parse(&json!({"volume": {"size_gb": 501}})).unwrap_err();
        assert_eq!(e.field, "compute.volume.size_gb");
        let e = Compute::parse(&json!({"nope": 1})).unwrap_err();
        assert_eq!(e.field, "compute.nope");
        let c = Compute::parse(&json!({"data_persistence": ""})).unwrap();
        assert_eq!(serde_json::to_string(&c).unwrap(), "{}");
    }

    #[test]
    fn runtimes() {
        assert_eq!(
            Runtime::parse(&json!({"template": "holdfast-runtime"})),
            Ok(Runtime::default())
        );
        assert!(Runtime::parse(&json!({"template": "other"})).is_err());
        assert!(Runtime::parse(&json!({"command": []})).is_err());
        assert!(Runtime::parse(&json!({"command": ["sleep", 1]})).is_err());
        assert!(
            Runtime::parse(&json!({"command": ["a"], "template": "holdfast-runtime"})).is_err()
        );
        let rt = Runtime::parse(&json!({"command": ["sleep", "1"]})).unwrap();
        assert_eq!(
            serde_json::to_value(&rt).unwrap(),
            json!({"command": ["sleep", "1"]})
        );
    }

    #[test]
    fn runtime_images() {
        let rt = Runtime::parse(&json!({"command": ["sh"], "image": "localhost/x:tag"})).unwrap();
        assert_eq!(
            rt.image.as_ref().map(ImageRef::as_str),
            Some("localhost/x:tag")
        );
        assert_eq!(
            serde_json::to_value(&rt).unwrap(),
            json!({"command": ["sh"], "image": "localhost/x:tag"})
        );
        let back: Runtime = serde_json::from_value(rt.to_value()).unwrap();
        assert_eq!(back, rt);
        let rt = Runtime::parse(&json!({"template": "holdfast-runtime", "image": "a@sha256:00"}));
        assert!(rt.is_ok_and(|r| r.is_builtin() && r.image.is_some()));
        for bad in [
            json!(""),
            json!("-rm"),
            json!("a b"),
            json!(7),
            json!("x".repeat(256)),
        ] {
            let e = Runtime::parse(&json!({"command": ["sh"], "image": bad})).unwrap_err();
            assert_eq!(e.field, "runtime.image");
        }
        // An image alone names no program.
        assert_eq!(
            Runtime::parse(&json!({"image": "a"})).unwrap_err().field,
            "runtime"
        );
    }

    #[test]
    fn env_rules() {
        assert!(Env::parse(&json!({"A": "1", "_b2": ""})).is_ok());
        assert_eq!(
            Env::parse(&json!({"HOLDFAST_TOKEN": "x"}))
                .unwrap_err()
                .field,
            "env.HOLDFAST_TOKEN"
        );
        assert!(Env::parse(&json!({"1A": "x"})).is_err());
        assert!(Env::parse(&json!({"A": 1})).is_err());
        let many: serde_json::Map<String, Value> =
            (0..65).map(|i| (format!("K{i}"), json!("v"))).collect();
        assert!(Env::parse(&Value::Object(many)).is_err());
    }
}
