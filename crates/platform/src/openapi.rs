//! The OpenAPI 3.1 document, generated from the handlers' annotations and the
//! wire types.

use crate::dto;
use crate::routes;
use axum::Json;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

mod strict;

#[derive(OpenApi)]
#[openapi(
    info(title = "holdfast", description = "Control plane for long-lived AI-agent workspaces and their saved data."),
    paths(
        routes::health,
        routes::create_workspace,
        routes::list_workspaces,
        routes::get_workspace,
        routes::patch_workspace,
        routes::delete_workspace,
        routes::restart_workspace,
        routes::get_workspace_data,
        routes::get_workspace_usage,
        routes::list_volumes,
        openapi_json,
        routes::pause_workspace,
        routes::resume_workspace,
        routes::hibernate_workspace,
        routes::wake_workspace,
        crate::events::events,
        crate::registry::register,
        crate::registry::heartbeat,
        crate::messages::post_message,
        crate::messages::get_messages,
        crate::data::restore_workspace,
        crate::data::export_data,
        crate::logs::get_logs,
        crate::files::list_files,
        crate::files::get_file,
        crate::data::admin_sweep,
        crate::data::list_audit,
        crate::metrics::metrics,
        crate::orgs::create_org,
        crate::orgs::list_orgs,
        crate::orgs::create_org_token,
        crate::org::import_org,
        crate::org::export_org,
        crate::snapshots::create_snapshot,
        crate::snapshots::list_snapshots,
        crate::snapshots::get_snapshot,
        crate::snapshots::export_snapshot,
        crate::snapshots::delete_snapshot,
        crate::snapshots::rollback_workspace,
        crate::snapshots::put_hold,
        crate::snapshots::delete_hold,
    ),
    components(schemas(
        dto::WorkspaceView, dto::DataSummary, dto::CreateWorkspaceRequest, dto::PatchWorkspaceRequest,
        dto::DeleteResponse, dto::VolumeView, dto::HistoryView, dto::ErrorBody, dto::Health,
        dto::RuntimeSchema, dto::ComputeSchema, dto::VolumeSpecSchema,
        crate::events::EventView, crate::registry::RegisterRequest, crate::registry::RegisterResponse,
        crate::registry::HeartbeatRequest, crate::messages::MessageRequest,
        crate::data::SweepRequest, crate::data::AuditView, holdfast_cp::sweep::SweepReport,
        holdfast_cp::sweep::SweepItem, crate::orgs::CreateOrgRequest, crate::orgs::OrgView, crate::orgs::TokenView,
        crate::org::OrgDocumentSchema, crate::org::ImportResponse, crate::org::CreatedItem,
        crate::org::ImportMode,
        crate::org::UpdatedItem, crate::org::RemovedItem,
        dto::SnapshotView, dto::CreateSnapshotRequest, dto::RollbackRequest, dto::RollbackResponse,
        dto::SnapshotDeleted, dto::HoldRequest, dto::HoldView, dto::SnapshotScheduleSchema,
        dto::SnapshotKeepSchema, crate::files::FileListing, crate::files::FileEntry,
        dto::UsageView, dto::UsageSampleView,
    )),
    modifiers(&BearerAuth)
)]
pub struct ApiDoc;

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

/// The document as served: the generated one, made to say exactly what
/// the server does by [`strict::apply`] (the request schemas as strict as
/// the parsers behind them, every object closed, and on every operation
/// the answers the shared edge gives). That pass works on the JSON, since
/// utoipa's types cannot hold all of JSON Schema 2020-12 (`prefixItems`,
/// `propertyNames`, type lists with `null`).
pub fn document() -> serde_json::Value {
    let mut doc = serde_json::to_value(ApiDoc::openapi()).expect("the OpenAPI document serializes");
    strict::apply(&mut doc);
    tag_by_resource(&mut doc);
    doc
}

/// The resources the operations are grouped by (what SDK generators name
/// their modules after), with what each holds.
pub const TAGS: [(&str, &str); 7] = [
    (
        "workspaces",
        "Workspaces: create, read, change, run state, delete and restore, logs, messages",
    ),
    (
        "data",
        "A workspace's saved data: its volume record, export, files, and every volume",
    ),
    ("snapshots", "Snapshots, rollback and legal hold"),
    (
        "orgs",
        "Orgs, org tokens, and org trees as documents (import and export)",
    ),
    ("admin", "The sweeper, the audit log and metrics"),
    (
        "registry",
        "What a workspace's runtime calls (workspace token)",
    ),
    ("meta", "Health, this document and the live event stream"),
];

/// The resource an operation belongs to, by its path.
fn resource_of(path: &str) -> &'static str {
    let p = path;
    if p.starts_with("/snapshots")
        || p.ends_with("/snapshots")
        || p.ends_with("/rollback")
        || p.ends_with("/hold")
    {
        "snapshots"
    } else if p.starts_with("/workspaces/{id}/data") || p.starts_with("/volumes") {
        "data"
    } else if p.starts_with("/workspaces") {
        "workspaces"
    } else if p.starts_with("/orgs") || p.starts_with("/org/") {
        "orgs"
    } else if p.starts_with("/admin") || p.starts_with("/audit") || p.starts_with("/metrics") {
        "admin"
    } else if p.starts_with("/registry") {
        "registry"
    } else {
        "meta"
    }
}

/// One component of a data path: not empty, `.` or `..`, no `/` or NUL.
const PATH_COMPONENT: &str = r"([^/\x00.][^/\x00]*|\.[^/\x00.][^/\x00]*|\.\.[^/\x00]+)";

/// The files routes' `path` as the parser takes it: relative, of
/// components (a directory may end in `/` or be empty for the root).
fn files_path_patterns(doc: &mut serde_json::Value) {
    let c = PATH_COMPONENT;
    for (route, pattern) in [
        ("/workspaces/{id}/data/files", format!("^({c}(/{c})*/?)?$")),
        ("/workspaces/{id}/data/file", format!("^{c}(/{c})*$")),
    ] {
        if let Some(params) = doc["paths"][route]["get"]["parameters"].as_array_mut() {
            for p in params.iter_mut().filter(|p| p["name"] == "path") {
                p["schema"]["pattern"] = serde_json::Value::String(pattern.clone());
            }
        }
    }
}

/// Tags every operation with its resource (instead of the Rust module
/// utoipa would name), keeps its `operationId` (the handler's name, stable:
/// a test pins them), and types the archive downloads as binary strings.
fn tag_by_resource(doc: &mut serde_json::Value) {
    use serde_json::json;
    if let Some(paths) = doc["paths"].as_object_mut() {
        for (path, item) in paths.iter_mut() {
            let Some(item) = item.as_object_mut() else {
                continue;
            };
            for (_, op) in item.iter_mut() {
                let Some(op) = op.as_object_mut() else {
                    continue;
                };
                op.insert("tags".to_owned(), json!([resource_of(path)]));
                if let Some(responses) = op.get_mut("responses").and_then(|r| r.as_object_mut())
                    && let Some(ok) = responses.get_mut("200")
                    && let Some(content) = ok.get_mut("content").and_then(|c| c.as_object_mut())
                {
                    for (kind, media) in content.iter_mut() {
                        let binary =
                            kind == "application/gzip" || kind == "application/octet-stream";
                        if binary && media.get("schema").is_none() {
                            media["schema"] = json!({"type": "string", "format": "binary"});
                        }
                    }
                }
            }
        }
    }
    files_path_patterns(doc);
    doc["tags"] = TAGS
        .iter()
        .map(|(name, description)| json!({"name": name, "description": description}))
        .collect();
}

/// Every route but `/health` and the canvas login needs a token (SPEC §10),
/// this document included.
#[utoipa::path(
    get, path = "/openapi.json",
    responses((status = 200, description = "this document"), (status = 401, body = crate::dto::ErrorBody)),
    security(("bearer" = []))
)]
pub async fn openapi_json(_caller: crate::auth::Auth) -> Json<serde_json::Value> {
    Json(document())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every operation has one resource tag and a unique snake_case
    /// operationId, and the ids do not change: clients generated from the
    /// document call them by these names.
    #[test]
    fn operations_are_tagged_by_resource_with_stable_ids() {
        let doc = document();
        let mut ids = Vec::new();
        for (path, item) in doc["paths"].as_object().unwrap() {
            for (method, op) in item.as_object().unwrap() {
                let tags = op["tags"].as_array().unwrap();
                assert_eq!(tags.len(), 1, "{method} {path}");
                let tag = tags[0].as_str().unwrap();
                assert!(
                    TAGS.iter().any(|(t, _)| *t == tag),
                    "{method} {path}: {tag}"
                );
                let id = op["operationId"]
                    .as_str()
                    .unwrap_or_else(|| panic!("{method} {path}"));
                assert!(
                    id.chars().all(|c| c.is_ascii_lowercase() || c == '_'),
                    "{method} {path}: {id}"
                );
                ids.push(format!("{tag} {method} {path} {id}"));
            }
        }
        ids.sort();
        let mut unique: Vec<&str> = ids.iter().map(|l| l.rsplit(' ').next().unwrap()).collect();
        unique.sort();
        unique.dedup();
        assert_eq!(unique.len(), ids.len(), "operationIds are unique");
        expect_test::expect![[r#"
            admin get /audit list_audit
            admin get /metrics metrics
            admin post /admin/sweep admin_sweep
            data get /volumes list_volumes
            data get /workspaces/{id}/data get_workspace_data
            data get /workspaces/{id}/data/export export_data
            data get /workspaces/{id}/data/file get_file
            data get /workspaces/{id}/data/files list_files
            meta get /events events
            meta get /health health
            meta get /openapi.json openapi_json
            orgs get /org/export export_org
            orgs get /orgs list_orgs
            orgs post /org/import import_org
            orgs post /orgs create_org
            orgs post /orgs/{id}/tokens create_org_token
            registry post /registry/heartbeat heartbeat
            registry post /registry/register register
            snapshots delete /snapshots/{sid} delete_snapshot
            snapshots delete /workspaces/{id}/hold delete_hold
            snapshots get /snapshots/{sid} get_snapshot
            snapshots get /snapshots/{sid}/export export_snapshot
            snapshots get /workspaces/{id}/snapshots list_snapshots
            snapshots post /workspaces/{id}/rollback rollback_workspace
            snapshots post /workspaces/{id}/snapshots create_snapshot
            snapshots put /workspaces/{id}/hold put_hold
            workspaces delete /workspaces/{id} delete_workspace
            workspaces get /workspaces list_workspaces
            workspaces get /workspaces/{id} get_workspace
            workspaces get /workspaces/{id}/logs get_logs
            workspaces get /workspaces/{id}/messages get_messages
            workspaces get /workspaces/{id}/usage get_workspace_usage
            workspaces patch /workspaces/{id} patch_workspace
            workspaces post /workspaces create_workspace
            workspaces post /workspaces/{id}/hibernate hibernate_workspace
            workspaces post /workspaces/{id}/messages post_message
            workspaces post /workspaces/{id}/pause pause_workspace
            workspaces post /workspaces/{id}/restart restart_workspace
            workspaces post /workspaces/{id}/restore restore_workspace
            workspaces post /workspaces/{id}/resume resume_workspace
            workspaces post /workspaces/{id}/wake wake_workspace"#]]
        .assert_eq(&ids.join("\n"));
    }

    /// A route named in `ENGINE_ROUTES` that the document does not have
    /// (a typo, a renamed path) would list its 503 nowhere: each is there,
    /// with its 503, and no other operation says `engine_unreachable`.
    #[test]
    fn engine_unreachable_is_listed_on_exactly_the_routes_that_reach_the_engine() {
        let doc = document();
        let mut listed = Vec::new();
        for (path, item) in doc["paths"].as_object().unwrap() {
            for (method, op) in item.as_object().unwrap() {
                let answer = &op["responses"]["503"];
                if answer["description"]
                    .as_str()
                    .is_some_and(|d| d.contains("engine_unreachable"))
                {
                    assert!(
                        answer["headers"]["Retry-After"].is_object(),
                        "{path} {method}"
                    );
                    listed.push((path.clone(), method.clone()));
                }
            }
        }
        listed.sort();
        let mut expected: Vec<(String, String)> = strict::ENGINE_ROUTES
            .iter()
            .map(|(p, m, _)| ((*p).to_owned(), (*m).to_owned()))
            .collect();
        expected.sort();
        assert_eq!(listed, expected);
    }
}
