//! The request schemas written out in full, and the shared answers added to
//! every operation, as a pass over the generated document (JSON).
//!
//! The request DTOs take `serde_json::Value`s so that the parsers in
//! `holdfast-domain` can name the field of any mistake; their schemas are
//! therefore written here, from the same constants the parsers use.

use holdfast_domain::{
    BIDI_CONTROLS, BUILTIN_TEMPLATE, Env, INVISIBLE, Role, Runtime, WorkspaceName,
};
use serde_json::{Map, Value, json};

/// Whitespace that `str::trim` removes and that is not a control character
/// (control characters are refused anywhere in a name).
const SPACES: &[(char, char)] = &[
    (' ', ' '),
    ('\u{00A0}', '\u{00A0}'),
    ('\u{1680}', '\u{1680}'),
    ('\u{2000}', '\u{200A}'),
    ('\u{202F}', '\u{202F}'),
    ('\u{205F}', '\u{205F}'),
    ('\u{3000}', '\u{3000}'),
];

/// What `char::is_control` is true of.
const CONTROLS: &[(char, char)] = &[('\u{0000}', '\u{001F}'), ('\u{007F}', '\u{009F}')];

/// Every character `str::trim` removes, controls included.
const ALL_SPACES: &[(char, char)] = &[
    ('\t', '\r'),
    (' ', ' '),
    ('\u{0085}', '\u{0085}'),
    ('\u{00A0}', '\u{00A0}'),
    ('\u{1680}', '\u{1680}'),
    ('\u{2000}', '\u{200A}'),
    ('\u{2028}', '\u{2029}'),
    ('\u{202F}', '\u{202F}'),
    ('\u{205F}', '\u{205F}'),
    ('\u{3000}', '\u{3000}'),
];

/// The inside of a regex character class for `tables`. Characters are
/// written as `\uXXXX` escapes in the BMP and as themselves beyond it, which
/// both ECMAScript (with the `u` flag) and Python read the same way.
fn class(tables: &[&[(char, char)]]) -> String {
    let one = |c: char| {
        if u32::from(c) <= 0xFFFF {
            format!("\\u{:04X}", u32::from(c))
        } else {
            c.to_string()
        }
    };
    let mut out = String::new();
    for table in tables {
        for (lo, hi) in *table {
            out.push_str(&one(*lo));
            if lo != hi {
                out.push('-');
                out.push_str(&one(*hi));
            }
        }
    }
    out
}

/// A workspace (or org) name: no control, invisible or bidirectional
/// character anywhere, and 1 to 64 characters once surrounding spaces are
/// trimmed. The length is in the pattern rather than a `maxLength`, which
/// would count the spaces that trimming removes.
fn name_schema() -> Value {
    let bad = class(&[CONTROLS, INVISIBLE, BIDI_CONTROLS]);
    let space = class(&[SPACES]);
    let inner = WorkspaceName::MAX_CHARS - 2;
    json!({
        "type": "string",
        "minLength": 1,
        "pattern": format!(
            "^[{space}]*[^{space}{bad}](?:[^{bad}]{{0,{inner}}}[^{space}{bad}])?[{space}]*$"
        ),
        "description": format!(
            "1 to {} characters after trimming surrounding spaces; no control, zero-width or \
             bidirectional-control characters",
            WorkspaceName::MAX_CHARS
        ),
    })
}

fn role_schema() -> Value {
    json!({
        "type": ["string", "null"],
        "maxLength": Role::MAX_CHARS,
        "pattern": format!("^[^{}]*$", class(&[CONTROLS, BIDI_CONTROLS])),
        "description": "`null` or `\"\"` means no role",
    })
}

/// A free-text field as `dto::parse_text_field` reads it: at most `max`
/// characters, no control, zero-width or bidirectional-control ones; a
/// required one holds something besides spaces.
fn text_schema(max: usize, required: bool) -> Value {
    let bad = class(&[CONTROLS, INVISIBLE, BIDI_CONTROLS]);
    let space = class(&[SPACES]);
    if required {
        json!({
            "type": "string",
            "minLength": 1,
            "maxLength": max,
            "pattern": format!("^[{space}]*[^{space}{bad}][^{bad}]*$"),
        })
    } else {
        json!({
            "type": ["string", "null"],
            "maxLength": max,
            "pattern": format!("^[^{bad}]*$"),
        })
    }
}

fn snapshots_schema() -> Value {
    let any_above_zero: Vec<Value> = ["last", "hourly", "daily", "weekly"]
        .iter()
        .map(|k| json!({ "required": [k], "properties": { *k: { "minimum": 1 } } }))
        .collect();
    let count =
        json!({ "type": "integer", "minimum": 0, "maximum": holdfast_domain::SNAPSHOT_KEEP_MAX });
    json!({
        "type": ["object", "null"],
        "required": ["every", "keep"],
        "properties": {
            "every": {
                "type": "string",
                "pattern": "^([1-9][0-9]{0,5}(s|m|h|d|w)){1,4}$",
                "description": "a duration of at least 1s: `30m`, `1h`, `1d`",
            },
            "keep": {
                "type": "object",
                "properties": { "last": count, "hourly": count, "daily": count, "weekly": count },
                "anyOf": any_above_zero,
                "additionalProperties": false,
                "description": "at least one count above 0",
            },
        },
        "additionalProperties": false,
    })
}

fn uuid_or_null() -> Value {
    json!({ "type": ["string", "null"], "format": "uuid" })
}

fn tier_schema() -> Value {
    json!({ "type": "integer", "minimum": 1, "maximum": 4 })
}

/// `runtime.image`, as `ImageRef::parse` reads it.
fn image_schema() -> Value {
    json!({
        "type": "string",
        "minLength": 1,
        "maxLength": holdfast_domain::ImageRef::MAX_LEN,
        "pattern": "^[A-Za-z0-9][A-Za-z0-9._/:@-]*$",
        "description": "the container image to run it in (container backend; default `--container-image`); ignored by the process backend",
    })
}

fn runtime_schema() -> Value {
    let no_nul = "^[^\\u0000]*$";
    json!({
        "description": "exactly one of `template` (the built-in runtime) or `command` (an argv), and optionally the `image` to run it in",
        "oneOf": [
            {
                "type": "object",
                "required": ["template"],
                "properties": {
                    "template": { "type": "string", "enum": [BUILTIN_TEMPLATE] },
                    "image": image_schema(),
                },
                "additionalProperties": false,
            },
            {
                "type": "object",
                "required": ["command"],
                "properties": {
                    "command": {
                        "type": "array",
                        "minItems": 1,
                        "maxItems": Runtime::MAX_ARGS,
                        "prefixItems": [{
                            "type": "string",
                            "maxLength": Runtime::MAX_ARG_CHARS,
                            "allOf": [
                                { "pattern": no_nul },
                                { "pattern": format!("[^{}]", class(&[ALL_SPACES])) },
                            ],
                        }],
                        "items": {
                            "type": "string",
                            "maxLength": Runtime::MAX_ARG_CHARS,
                            "pattern": no_nul,
                        },
                    },
                    "image": image_schema(),
                },
                "additionalProperties": false,
            },
        ],
    })
}

fn env_schema() -> Value {
    json!({
        "type": ["object", "null"],
        "maxProperties": Env::MAX_ENTRIES,
        "propertyNames": { "pattern": "^(?!HOLDFAST_)[A-Za-z_][A-Za-z0-9_]{0,127}$" },
        "additionalProperties": {
            "type": "string",
            "maxLength": Env::MAX_VALUE_CHARS,
            "pattern": "^[^\\u0000]*$",
        },
        "description": "the workspace's own environment; names starting with HOLDFAST_ are reserved",
    })
}

fn compute_schema() -> Value {
    json!({
        "type": "object",
        "properties": {
            "data_persistence": {
                "type": ["string", "null"],
                "enum": ["persist", "ephemeral", "", null],
                "description": "`persist` or `ephemeral`, exactly; absent, `\"\"` or `null` for auto",
            },
            "volume": {
                "type": ["object", "null"],
                "properties": { "size_gb": { "type": "integer", "minimum": 1, "maximum": 500 } },
                "additionalProperties": false,
            },
            "snapshots": snapshots_schema(),
        },
        "additionalProperties": false,
    })
}

fn nullable_ref(name: &str) -> Value {
    json!({ "oneOf": [{ "$ref": format!("#/components/schemas/{name}") }, { "type": "null" }] })
}

fn request_schemas() -> Vec<(&'static str, Value)> {
    vec![
        ("RuntimeSchema", runtime_schema()),
        ("ComputeSchema", compute_schema()),
        (
            "VolumeSpecSchema",
            json!({
                "type": "object",
                "properties": { "size_gb": { "type": "integer", "minimum": 1, "maximum": 500 } },
                "additionalProperties": false,
            }),
        ),
        (
            "CreateWorkspaceRequest",
            json!({
                "type": "object",
                "required": ["name"],
                "properties": {
                    "name": name_schema(),
                    "role": role_schema(),
                    "parent_id": uuid_or_null(),
                    "tier": { "type": ["integer", "null"], "minimum": 1, "maximum": 4 },
                    "runtime": nullable_ref("RuntimeSchema"),
                    "env": env_schema(),
                    "compute": nullable_ref("ComputeSchema"),
                    "org_id": {
                        "type": ["string", "null"],
                        "format": "uuid",
                        "description": "admin only: the org to create in (default: the default org)",
                    },
                    "from_snapshot": {
                        "type": ["string", "null"],
                        "format": "uuid",
                        "description": "a clone: a snapshot of this org whose content the new (persist) workspace's data starts as",
                    },
                },
                "additionalProperties": false,
            }),
        ),
        (
            "CreateSnapshotRequest",
            json!({
                "type": "object",
                "properties": { "label": text_schema(64, false) },
                "additionalProperties": false,
            }),
        ),
        (
            "RollbackRequest",
            json!({
                "type": "object",
                "required": ["snapshot_id"],
                "properties": { "snapshot_id": { "type": "string", "format": "uuid" } },
                "additionalProperties": false,
            }),
        ),
        (
            "HoldRequest",
            json!({
                "type": "object",
                "required": ["reason"],
                "properties": { "reason": text_schema(512, true) },
                "additionalProperties": false,
            }),
        ),
        (
            "PatchWorkspaceRequest",
            json!({
                "type": "object",
                "description": "only the fields sent change; they apply at the next start",
                "properties": {
                    "name": name_schema(),
                    "role": role_schema(),
                    "tier": tier_schema(),
                    "runtime": nullable_ref("RuntimeSchema"),
                    "env": env_schema(),
                    "compute": nullable_ref("ComputeSchema"),
                },
                "additionalProperties": false,
            }),
        ),
        (
            // One node of an org document (`POST /org/import`): a workspace
            // as `POST /workspaces` takes it, without ids, and its children.
            "OrgDocumentSchema",
            json!({
                "type": "object",
                "required": ["name"],
                "properties": {
                    "name": name_schema(),
                    "role": role_schema(),
                    "tier": { "type": ["integer", "null"], "minimum": 1, "maximum": 4 },
                    "runtime": nullable_ref("RuntimeSchema"),
                    "env": env_schema(),
                    "compute": nullable_ref("ComputeSchema"),
                    "children": {
                        "type": ["array", "null"],
                        "maxItems": 2000,
                        "items": { "$ref": "#/components/schemas/OrgDocumentSchema" },
                        "description": "names are unique among siblings; at most 32 levels and 2,000 workspaces in all",
                    },
                },
                "additionalProperties": false,
            }),
        ),
        (
            "CreateOrgRequest",
            json!({
                "type": "object",
                "required": ["name"],
                "properties": { "name": name_schema() },
                "additionalProperties": false,
            }),
        ),
        (
            "RegisterRequest",
            json!({
                "type": "object",
                "required": ["url"],
                "properties": {
                    "url": {
                        "type": "string",
                        "maxLength": 2048,
                        "pattern": "^http://[^/@\\s\\u0000-\\u001F\\u007F-\\u009F]+(/[^\\s\\u0000-\\u001F\\u007F-\\u009F]*)?$",
                        "description": "where the runtime serves `/messages`: an http:// URL without credentials",
                    },
                },
                "additionalProperties": false,
            }),
        ),
        (
            "HeartbeatRequest",
            json!({ "type": "object", "additionalProperties": false }),
        ),
    ]
}

fn error_response(description: &str) -> Value {
    json!({
        "description": description,
        "content": { "application/json": { "schema": { "$ref": "#/components/schemas/ErrorBody" } } },
    })
}

/// Applies the pass to the document.
pub fn apply(doc: &mut Value) {
    if let Some(schemas) = doc
        .pointer_mut("/components/schemas")
        .and_then(Value::as_object_mut)
    {
        for (name, schema) in request_schemas() {
            schemas.insert(name.to_owned(), schema);
        }
        // Every object this server sends or takes is closed, but an error,
        // which may carry details (`field`, `children`, …).
        for (name, schema) in schemas.iter_mut() {
            if name != "ErrorBody" {
                close_objects(schema);
            }
        }
    }
    let Some(paths) = doc.get_mut("paths").and_then(Value::as_object_mut) else {
        return;
    };
    for (path, item) in paths.iter_mut() {
        let Some(item) = item.as_object_mut() else {
            continue;
        };
        for (method, op) in item.iter_mut() {
            let Some(op) = op.as_object_mut() else {
                continue;
            };
            add_shared_answers(path, op);
            if let Some((_, _, what)) = ENGINE_ROUTES
                .iter()
                .find(|(p, m, _)| p == path && m == method)
                && let Some(responses) = op.get_mut("responses").and_then(Value::as_object_mut)
            {
                let mut answer = engine_unreachable(what);
                // A route with a 503 of its own (a runtime that does not
                // answer) keeps it: one answer, both causes.
                if let Some(own) = responses
                    .get("503")
                    .and_then(|r| r["description"].as_str())
                    .filter(|d| !d.is_empty())
                {
                    answer["description"] = Value::from(format!(
                        "{own}; or {}",
                        answer["description"].as_str().unwrap_or_default()
                    ));
                }
                responses.insert("503".to_owned(), answer);
            }
            tighten_parameters(op);
            // Bodies the server reads as `{}` when none is sent.
            let optional = matches!(
                (path.as_str(), method.as_str()),
                (
                    "/admin/sweep" | "/registry/heartbeat" | "/workspaces/{id}/snapshots",
                    "post"
                ) | ("/workspaces/{id}", "patch")
            );
            if optional && let Some(body) = op.get_mut("requestBody").and_then(Value::as_object_mut)
            {
                body.insert("required".to_owned(), Value::Bool(false));
            }
        }
    }
}

/// Query parameters as strict as their parsers: `limit`'s range and
/// `state`'s values.
fn tighten_parameters(op: &mut Map<String, Value>) {
    let Some(params) = op.get_mut("parameters").and_then(Value::as_array_mut) else {
        return;
    };
    for param in params {
        let name = param
            .get("name")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let schema = match name {
            "limit" => json!({ "type": "integer", "minimum": 1, "maximum": 10000 }),
            "state" => json!({
                "type": "string",
                "enum": holdfast_domain::VolumeState::ALL.iter().map(|s| s.as_str()).collect::<Vec<_>>(),
            }),
            _ => continue,
        };
        param["schema"] = schema;
    }
}

/// Sets `additionalProperties: false` on every object schema that says
/// nothing of it, at any depth.
fn close_objects(schema: &mut Value) {
    match schema {
        Value::Object(map) => {
            let is_object = match map.get("type") {
                Some(Value::String(t)) => t == "object",
                Some(Value::Array(ts)) => ts.iter().any(|t| t == "object"),
                _ => false,
            };
            if is_object
                && map.contains_key("properties")
                && !map.contains_key("additionalProperties")
            {
                map.insert("additionalProperties".to_owned(), Value::Bool(false));
            }
            for (key, value) in map.iter_mut() {
                if key != "additionalProperties" {
                    close_objects(value);
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(close_objects),
        _ => {}
    }
}

/// The operations that reach the container engine and so answer `503`
/// (`engine_unreachable`, with `Retry-After`) while it does not answer, each
/// with what it asks of the engine. Only these: a route that never reaches
/// it does not list a 503 it cannot give. An API test asks every one of
/// them of a server whose engine is gone.
pub const ENGINE_ROUTES: &[(&str, &str, &str)] = &[
    ("/workspaces", "post", "whether it has the image"),
    (
        "/workspaces/{id}",
        "patch",
        "whether it has the new runtime's image",
    ),
    (
        "/workspaces/{id}",
        "delete",
        "to stop the workspace's container",
    ),
    (
        "/workspaces/{id}/restart",
        "post",
        "to replace the container",
    ),
    ("/workspaces/{id}/pause", "post", "to stop the container"),
    (
        "/workspaces/{id}/hibernate",
        "post",
        "to stop the container",
    ),
    ("/workspaces/{id}/resume", "post", "to start the container"),
    ("/workspaces/{id}/wake", "post", "to start the container"),
    (
        "/workspaces/{id}/restore",
        "post",
        "to start the container again",
    ),
    (
        "/workspaces/{id}/messages",
        "post",
        "to start a stopped workspace for the message",
    ),
    ("/workspaces/{id}/data/export", "get", "to read the volume"),
    ("/admin/sweep", "post", "to list, measure and erase volumes"),
];

fn engine_unreachable(what: &str) -> Value {
    json!({
        "description": format!(
            "`engine_unreachable`: the container engine does not answer (asked {what}); try again after `Retry-After` seconds. \
             The same status carries `control_plane_unreachable` (a remote control plane does not answer) and, on a \
             workspace's routes, `workspace_busy` (another replica is acting on it)"
        ),
        "headers": { "Retry-After": {
            "description": "seconds to wait before trying again",
            "schema": { "type": "integer", "minimum": 1 },
        } },
        "content": { "application/json": { "schema": { "$ref": "#/components/schemas/ErrorBody" } } },
    })
}

fn add_shared_answers(path: &str, op: &mut Map<String, Value>) {
    let secured = op.get("security").is_some();
    let has_params = op
        .get("parameters")
        .and_then(Value::as_array)
        .is_some_and(|p| !p.is_empty());
    let has_body = op.contains_key("requestBody");
    let Some(responses) = op.get_mut("responses").and_then(Value::as_object_mut) else {
        return;
    };
    let mut add = |status: &str, description: &str| {
        responses
            .entry(status.to_owned())
            .or_insert_with(|| error_response(description));
    };
    if secured {
        add("401", "no token, or one that is not accepted");
    }
    if has_params || has_body {
        add(
            "400",
            "a malformed id, an unknown or bad query parameter, or a bad body (the `field` names it)",
        );
    }
    // A path id that names nothing this token can see, and, to a token
    // that may not use a route at all (a workspace token on the lifecycle
    // routes, an org token on the admin's), the route itself: 404, never 403.
    if secured || path.contains('{') {
        add(
            "404",
            "no such resource visible to this token, or a route it may not use",
        );
    }
    if has_body {
        add("408", "the body did not arrive in time");
        add("413", "the body is larger than 1 MiB");
    }
}
