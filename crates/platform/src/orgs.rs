//! `POST/GET /orgs` and `POST /orgs/:id/tokens`: the admin manages orgs and
//! mints org tokens (shown once, stored hashed).

use crate::App;
use crate::auth::{Caller, generate_token, hash_hex};
use crate::body::JsonBody;
use crate::dto::ErrorBody;
use crate::error::{ApiError, ApiResult};
use crate::routes::parse_id;
use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use holdfast_domain::{WorkspaceName, format_millis, now_millis};
use holdfast_store::{Org, StoreError};
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use utoipa::ToSchema;
use uuid::Uuid;

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateOrgRequest {
    /// 1–64 characters, no control characters.
    pub name: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct OrgView {
    pub id: Uuid,
    pub name: String,
    pub is_default: bool,
    pub created_at: String,
}

impl From<Org> for OrgView {
    fn from(o: Org) -> Self {
        OrgView {
            id: o.id,
            name: o.name,
            is_default: o.is_default,
            created_at: format_millis(o.created_at),
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct TokenView {
    /// The token: shown this once, stored only as a hash.
    pub token: String,
    pub org_id: Uuid,
}

fn admin_only(caller: &Caller) -> ApiResult<()> {
    // Not 403: to anyone but the admin these routes do not exist.
    if *caller == Caller::Admin {
        Ok(())
    } else {
        Err(ApiError::not_found("route"))
    }
}

#[utoipa::path(
    post, path = "/orgs", request_body = CreateOrgRequest,
    responses((status = 201, body = OrgView), (status = 400, body = ErrorBody), (status = 409, body = ErrorBody)),
    security(("bearer" = []))
)]
pub async fn create_org(
    State(app): State<Arc<App>>,
    caller: Caller,
    JsonBody(body): JsonBody<CreateOrgRequest>,
) -> ApiResult<(StatusCode, Json<OrgView>)> {
    admin_only(&caller)?;
    // Same rules as a workspace name, reported under this field.
    let name = WorkspaceName::parse(&body.name)
        .map_err(|e| ApiError::bad_request("invalid_field", format!("name: {}", e.message)))?;
    let org = app
        .store
        .insert_org(name.as_str(), now_millis())
        .await
        .map_err(|e| match e {
            e @ StoreError::NameTaken { .. } => ApiError::conflict("org_exists", e.to_string()),
            other => other.into(),
        })?;
    Ok((StatusCode::CREATED, Json(org.into())))
}

#[utoipa::path(
    get, path = "/orgs",
    responses((status = 200, body = Vec<OrgView>)),
    security(("bearer" = []))
)]
pub async fn list_orgs(
    State(app): State<Arc<App>>,
    caller: Caller,
) -> ApiResult<Json<Vec<OrgView>>> {
    admin_only(&caller)?;
    Ok(Json(
        app.store
            .list_orgs()
            .await?
            .into_iter()
            .map(Into::into)
            .collect(),
    ))
}

#[utoipa::path(
    post, path = "/orgs/{id}/tokens",
    params(("id" = Uuid, Path, description = "org id")),
    responses((status = 201, body = TokenView), (status = 404, body = ErrorBody)),
    security(("bearer" = []))
)]
pub async fn create_org_token(
    State(app): State<Arc<App>>,
    caller: Caller,
    Path(raw): Path<String>,
) -> ApiResult<(StatusCode, Json<TokenView>)> {
    admin_only(&caller)?;
    let id = parse_id(&raw)?;
    let org = app
        .store
        .get_org(id)
        .await?
        .ok_or_else(|| ApiError::not_found("org"))?;
    let token = generate_token("hfo");
    app.store
        .insert_org_token(&hash_hex(token.expose()), org.id, now_millis())
        .await?;
    Ok((
        StatusCode::CREATED,
        Json(TokenView {
            token: token.expose().to_owned(),
            org_id: org.id,
        }),
    ))
}
