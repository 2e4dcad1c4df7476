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
        crate::events::Event, crate::registry::RegisterRequest, crate::registry::RegisterResponse,
        crate::registry::HeartbeatRequest, crate::messages::MessageRequest,
        crate::data::SweepRequest, crate::data::AuditView, holdfast_cp::sweep::SweepReport,
        holdfast_cp::sweep::SweepItem, crate::orgs::CreateOrgRequest, crate::orgs::OrgView, crate::orgs::TokenView,
        crate::org::OrgDocumentSchema, crate::org::ImportResponse, crate::org::CreatedItem,
        crate::org::ImportMode,
        crate::org::UpdatedItem, crate::org::RemovedItem,
        dto::SnapshotView, dto::CreateSnapshotRequest, dto::RollbackRequest, dto::RollbackResponse,
        dto::SnapshotDeleted, dto::HoldRequest, dto::HoldView, dto::SnapshotScheduleSchema,
        dto::SnapshotKeepSchema, crate::files::FileListing, crate::files::FileEntry,
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
    doc
}

/// Every route but `/health` and the canvas login needs a token (SPEC §10),
/// this document included.
#[utoipa::path(
    get, path = "/openapi.json",
    responses((status = 200, description = "this document"), (status = 401, body = crate::dto::ErrorBody)),
    security(("bearer" = []))
)]
pub async fn openapi_json(_caller: crate::auth::Caller) -> Json<serde_json::Value> {
    Json(document())
}

#[cfg(test)]
mod tests {
    use super::*;

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
