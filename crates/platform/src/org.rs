//! `POST /org/import` and `GET /org/export`: an org's tree of workspaces as
//! one YAML (or JSON) document.
//!
//! An import parses and checks the whole document first (`document.rs`),
//! computes a plan against the org's live tree (`plan.rs`, a pure function),
//! and has the controller write every intent of it in one store transaction
//! before compute acts (`holdfast_controller::org`): removals are finished
//! there, creations are started by the reconciler loop, which it wakes. Changes apply at each workspace's next
//! start, as a PATCH does.
//!
//! **Architecture Invariant:** nothing reachable from this module erases
//! data. A reconcile's removals are written without erase and finished
//! through `Controller::finish_retaining_removal` (stop, then keep the data
//! `retained`); neither `ControlPlane::stop_and_prune` nor
//! `Controller::finish_removal_locked` is named by this module or by
//! anything it calls. `crates/platform/tests/architecture.rs` walks the calls and fails
//! otherwise.

pub(crate) mod document;
pub(crate) mod plan;

use crate::App;
use crate::auth::{Auth, Caller};
use crate::dto::{ComputeSchema, ErrorBody, RuntimeSchema};
use crate::error::{ApiError, ApiResult};
use crate::routes::parse_query;
use axum::Json;
use axum::body::Body;
use axum::extract::State;
use axum::http::header::CONTENT_TYPE;
use axum::http::{HeaderMap, HeaderValue, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use document::{DocError, Format, OrgNode};
use holdfast_domain::{Role, WorkspaceName, format_millis};
use holdfast_store::{ImportUpdate, ImportWrite, NewWorkspace, WorkspaceRow};
use plan::{Mode, Parent, Plan};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use utoipa::ToSchema;
use uuid::Uuid;

/// One workspace of an org document and, in `children`, its descendants.
/// Every field but `name` is optional and means what `POST /workspaces`
/// takes it to mean when left out; the document says the whole workspace,
/// so an absent field is its default, not "leave as is".
#[derive(Debug, Serialize, ToSchema)]
pub struct OrgDocumentSchema {
    #[schema(example = "research")]
    pub name: String,
    pub role: Option<String>,
    #[schema(minimum = 1, maximum = 4)]
    pub tier: Option<u8>,
    pub runtime: Option<RuntimeSchema>,
    pub compute: Option<ComputeSchema>,
    pub env: Option<BTreeMap<String, String>>,
    /// Names are unique among siblings.
    #[schema(no_recursion)]
    pub children: Option<Vec<OrgDocumentSchema>>,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct CreatedItem {
    /// The new workspace's id; null in a dry run, which creates nothing.
    pub id: Option<Uuid>,
    /// Its path of names from the root: `root/research/scraper`.
    pub path: String,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct UpdatedItem {
    pub id: Uuid,
    pub path: String,
    /// The fields that change: `role`, `tier`, `runtime`, `env`, `compute`.
    pub fields: Vec<String>,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct RemovedItem {
    pub id: Uuid,
    pub path: String,
    /// `retained` (its saved data is kept for the retention grace and a
    /// restore brings it back) or `none` (it had no durable data).
    pub data: String,
    /// Until when the data is kept, once known (null in a dry run).
    pub restore_until: Option<String>,
}

/// What an import did, or in a dry run would do.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ImportResponse {
    pub created: Vec<CreatedItem>,
    pub updated: Vec<UpdatedItem>,
    pub removed: Vec<RemovedItem>,
    /// Workspaces of the document already as it says.
    pub unchanged: usize,
    pub dry_run: bool,
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)] // Documents the query; parsed by `parse_query`.
pub struct ImportParams {
    /// `reconcile` also removes the workspaces of the tree that the document
    /// no longer names (their data is kept). Left out: create and change only.
    mode: Option<ImportMode>,
    /// Compute and answer the plan; change nothing.
    dry_run: Option<bool>,
    /// Admin only: the org to import into (default: the default org).
    org_id: Option<Uuid>,
    // `erase_data` is not a parameter of this route: sent, it is a 400
    // (`erase_not_allowed`), which the 400 answer documents.
}

/// The one mode there is besides the default.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
#[allow(dead_code)] // Documents the query; parsed by `parse_query`.
pub enum ImportMode {
    Reconcile,
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)] // Documents the query; parsed by `parse_query`.
pub struct ExportParams {
    /// Admin only: the org to export (default: the default org).
    org_id: Option<Uuid>,
    /// The name of the top-level workspace whose tree to export; needed only
    /// when the org has several.
    root: Option<String>,
}

impl From<DocError> for ApiError {
    fn from(e: DocError) -> Self {
        let mut err = ApiError::bad_request(e.code, e.to_string());
        if let Some(path) = &e.path {
            err = err.with("path", path.clone());
        }
        if let Some(line) = e.line {
            err = err.with("line", line);
        }
        if let Some(field) = &e.field {
            err = err.with("field", field.clone());
        }
        err
    }
}

/// The document's format, from its `Content-Type`.
fn format_of(headers: &HeaderMap) -> ApiResult<Format> {
    let raw = headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    let essence = raw.split(';').next().unwrap_or_default().trim();
    match essence.to_ascii_lowercase().as_str() {
        "application/yaml" | "application/x-yaml" | "text/yaml" | "text/x-yaml" => Ok(Format::Yaml),
        "application/json" => Ok(Format::Json),
        _ => Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            format!(
                "send the document as Content-Type: application/yaml (or text/yaml) or \
                 application/json; got {:?}",
                if raw.is_empty() { "nothing" } else { raw }
            ),
        )),
    }
}

impl App {
    /// Plans an import of `doc` into `org` and, unless `dry_run`, applies it.
    #[tracing::instrument(skip_all, fields(org_id = %org, mode = ?mode, dry_run))]
    async fn import_tree(
        &self,
        caller: &Caller,
        org: Uuid,
        doc: &OrgNode,
        mode: Mode,
        dry_run: bool,
    ) -> ApiResult<ImportResponse> {
        let rows = self.ctl.org_tree(caller, org).await?;
        let live: Vec<plan::Live> = rows.iter().map(plan::Live::from).collect();
        let plan = plan::plan(doc, &live, mode).map_err(|a| {
            ApiError::conflict(
                "ambiguous_path",
                format!(
                    "{} names {} live workspaces of this org (siblings that share a name); \
                     rename or delete all but one, then import again",
                    a.path,
                    a.ids.len()
                ),
            )
            .with("path", a.path)
            .with(
                "ids",
                a.ids.iter().map(ToString::to_string).collect::<Vec<_>>(),
            )
        })?;
        let mut removed = Vec::with_capacity(plan.removes.len());
        for r in &plan.removes {
            removed.push(RemovedItem {
                id: r.id,
                path: r.path.clone(),
                data: self.ctl.data_kept(r.id).await?.as_str().to_owned(),
                restore_until: None,
            });
        }
        let updated = plan
            .updates
            .iter()
            .map(|u| UpdatedItem {
                id: u.id,
                path: u.path.clone(),
                fields: u.fields.iter().map(|f| (*f).to_owned()).collect(),
            })
            .collect();
        let mut answer = ImportResponse {
            created: plan
                .creates
                .iter()
                .map(|c| CreatedItem {
                    id: None,
                    path: c.path.clone(),
                })
                .collect(),
            updated,
            removed,
            unchanged: plan.unchanged,
            dry_run,
        };
        if dry_run {
            return Ok(answer);
        }
        let ids = self.apply(caller, org, &plan).await?;
        for (item, id) in answer.created.iter_mut().zip(ids) {
            item.id = Some(id);
        }
        for item in &mut answer.removed {
            item.restore_until = self.ctl.retained_until(item.id).await?.map(format_millis);
        }
        Ok(answer)
    }

    /// Has the controller write the plan in one transaction, then let
    /// compute act. Returns the ids of the created workspaces, in the plan's
    /// order.
    async fn apply(&self, caller: &Caller, org: Uuid, plan: &Plan) -> ApiResult<Vec<Uuid>> {
        let ids: Vec<Uuid> = plan.creates.iter().map(|_| Uuid::new_v4()).collect();
        let creates = plan
            .creates
            .iter()
            .zip(&ids)
            .map(|(c, id)| NewWorkspace {
                id: *id,
                org_id: org,
                name: c.node.name.as_str().to_owned(),
                role: c.node.role.as_ref().map(|r| r.as_str().to_owned()),
                parent_id: match c.parent {
                    Parent::Top => None,
                    Parent::Live(id) => Some(id),
                    Parent::New(i) => Some(ids[i]),
                },
                tier: c.node.tier,
                runtime: c.node.runtime.clone(),
                env: c.node.env.clone(),
                compute: c.node.compute,
                seed_snapshot_id: None,
            })
            .collect();
        let write = ImportWrite {
            creates,
            updates: plan
                .updates
                .iter()
                .map(|u| ImportUpdate {
                    id: u.id,
                    patch: u.patch.clone(),
                    fields: u.fields.iter().map(|f| (*f).to_owned()).collect(),
                })
                .collect(),
            removes: plan.removes.iter().map(|r| r.id).collect(),
        };
        self.ctl.apply_import(caller, org, &write).await?;
        Ok(ids)
    }

    /// The org's live tree under its top-level workspace `root` (or its only
    /// one) as a document.
    async fn export_tree(
        &self,
        caller: &Caller,
        org: Uuid,
        root: Option<&str>,
    ) -> ApiResult<OrgNode> {
        let rows = self.ctl.org_tree(caller, org).await?;
        let mut kids: HashMap<Option<Uuid>, Vec<&WorkspaceRow>> = HashMap::new();
        for w in &rows {
            kids.entry(w.parent_id).or_default().push(w);
        }
        let tops = kids.get(&None).cloned().unwrap_or_default();
        let chosen: Vec<&WorkspaceRow> = match root {
            Some(name) => tops.iter().copied().filter(|w| w.name == name).collect(),
            None => tops.clone(),
        };
        let top = match chosen.as_slice() {
            [one] => *one,
            [] if root.is_some() => return Err(ApiError::not_found("top-level workspace")),
            [] => {
                return Err(ApiError::new(
                    StatusCode::NOT_FOUND,
                    "not_found",
                    "the org has no live workspaces to export",
                ));
            }
            many => {
                let names: Vec<String> = many.iter().map(|w| w.name.clone()).collect();
                return Err(ApiError::conflict(
                    "several_roots",
                    format!(
                        "the org has {} top-level workspaces{}; name one with ?root=",
                        many.len(),
                        if root.is_some() { " of that name" } else { "" }
                    ),
                )
                .with("roots", names));
            }
        };
        let tree = node_of(top, &kids, 1)?;
        // The export must import as a no-op: check it reads back, which also
        // refuses a live tree no document can describe (siblings sharing a
        // name, more than the limits allow).
        let text = document::to_yaml(&tree);
        document::parse(Format::Yaml, text.as_bytes()).map_err(|e| {
            ApiError::conflict(
                "not_exportable",
                format!("the live tree cannot be written as an importable document: {e}"),
            )
        })?;
        Ok(tree)
    }
}

fn node_of(
    w: &WorkspaceRow,
    kids: &HashMap<Option<Uuid>, Vec<&WorkspaceRow>>,
    depth: usize,
) -> ApiResult<OrgNode> {
    let bad = |what: String| {
        ApiError::conflict(
            "not_exportable",
            format!("the live tree cannot be written as an importable document: {what}"),
        )
    };
    if depth > document::MAX_DEPTH {
        return Err(bad(format!(
            "it is deeper than {} levels",
            document::MAX_DEPTH
        )));
    }
    let mut children = Vec::new();
    for k in kids.get(&Some(w.id)).map_or(&[][..], Vec::as_slice) {
        children.push(node_of(k, kids, depth + 1)?);
    }
    Ok(OrgNode {
        name: WorkspaceName::parse(&w.name).map_err(|e| bad(e.to_string()))?,
        role: w
            .role
            .as_deref()
            .filter(|r| !r.is_empty())
            .map(Role::parse)
            .transpose()
            .map_err(|e| bad(e.to_string()))?,
        tier: w.tier,
        runtime: w.runtime.clone(),
        env: w.env.clone(),
        compute: w.compute,
        children,
        line: None,
    })
}

#[utoipa::path(
    post, path = "/org/import", params(ImportParams),
    request_body(
        description = "the tree: YAML (application/yaml or text/yaml) or JSON, at most 1 MiB, \
                       at most 32 levels and 2,000 workspaces; YAML aliases are refused",
        content(
            (OrgDocumentSchema = "application/yaml"),
            (OrgDocumentSchema = "text/yaml"),
            (OrgDocumentSchema = "application/json"),
        ),
    ),
    responses(
        (status = 200, body = ImportResponse, description = "the plan, applied unless dry_run=true"),
        (status = 400, body = ErrorBody, description = "a bad document (naming the path and, for YAML, the line), a bad query, or erase_data"),
        (status = 401, body = ErrorBody),
        (status = 404, body = ErrorBody, description = "no such org (or another org's)"),
        (status = 409, body = ErrorBody, description = "ambiguous_path (live siblings share a name), or org_changed (the tree changed during the import; nothing was written)"),
        (status = 413, body = ErrorBody, description = "the document is larger than 1 MiB"),
        (status = 415, body = ErrorBody, description = "not YAML or JSON"),
    ),
    security(("bearer" = []))
)]
pub async fn import_org(
    State(app): State<Arc<App>>,
    Auth(caller): Auth,
    uri: Uri,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Json<ImportResponse>> {
    if matches!(caller, Caller::Workspace { .. }) {
        return Err(ApiError::not_found("route"));
    }
    let mut mode = Mode::Merge;
    let mut dry_run = false;
    let mut org = None;
    for (k, v) in parse_query(uri.query(), &["mode", "dry_run", "org_id", "erase_data"])? {
        match k.as_str() {
            "mode" => {
                mode = match v.as_str() {
                    "reconcile" => Mode::Reconcile,
                    other => {
                        return Err(ApiError::bad_request(
                            "invalid_field",
                            format!(
                                "mode: the only mode is \"reconcile\" (leave it out to create and change only), got {other:?}"
                            ),
                        ));
                    }
                }
            }
            "dry_run" => dry_run = crate::routes::parse_bool("dry_run", &v)?,
            "org_id" => org = Some(crate::routes::parse_uuid_param("org_id", &v)?),
            _ => {
                return Err(ApiError::bad_request(
                    "erase_not_allowed",
                    "erase_data is not accepted here: an import never erases data; removed \
                     workspaces keep it for the retention grace (to erase, delete one with \
                     DELETE /workspaces/{id}?erase_data=true)",
                ));
            }
        }
    }
    let org = app.ctl.target_org(&caller, org).await?;
    let format = format_of(&headers)?;
    // The shared reader: 413 past the size limit, 408 past the body
    // deadline, like every other body.
    let bytes = crate::body::read(body).await?;
    let doc = document::parse(format, &bytes)?;
    Ok(Json(
        app.import_tree(&caller, org, &doc, mode, dry_run).await?,
    ))
}

#[utoipa::path(
    get, path = "/org/export", params(ExportParams),
    responses(
        (status = 200, content_type = "application/yaml", body = OrgDocumentSchema, description = "the live tree as YAML; importing it changes nothing"),
        (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody),
        (status = 404, body = ErrorBody, description = "no such org, no such root, or no live workspace"),
        (status = 409, body = ErrorBody, description = "several_roots (name one with ?root=), or not_exportable"),
    ),
    security(("bearer" = []))
)]
pub async fn export_org(
    State(app): State<Arc<App>>,
    Auth(caller): Auth,
    uri: Uri,
) -> ApiResult<Response> {
    if matches!(caller, Caller::Workspace { .. }) {
        return Err(ApiError::not_found("route"));
    }
    let mut org = None;
    let mut root = None;
    for (k, v) in parse_query(uri.query(), &["org_id", "root"])? {
        match k.as_str() {
            "org_id" => org = Some(crate::routes::parse_uuid_param("org_id", &v)?),
            // Already percent-decoded by `parse_query`.
            _ => root = Some(v),
        }
    }
    let org = app.ctl.target_org(&caller, org).await?;
    let tree = app.export_tree(&caller, org, root.as_deref()).await?;
    Ok((
        [(CONTENT_TYPE, HeaderValue::from_static("application/yaml"))],
        document::to_yaml(&tree),
    )
        .into_response())
}
