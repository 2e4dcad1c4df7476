//! `POST/GET /orgs` and `POST /orgs/:id/tokens`: the admin manages orgs and
//! mints org tokens (shown once, stored hashed).

use crate::App;
use crate::auth::{Auth, admin_only};
use crate::body::JsonBody;
use crate::dto::ErrorBody;
use crate::error::{ApiError, ApiResult};
use crate::routes::parse_id;
use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use holdfast_domain::{WorkspaceName, format_millis};
use holdfast_store::Org;
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

#[utoipa::path(
    post, path = "/orgs", request_body = CreateOrgRequest,
    responses((status = 201, body = OrgView), (status = 400, body = ErrorBody), (status = 409, body = ErrorBody)),
    security(("bearer" = []))
)]
pub async fn create_org(
    State(app): State<Arc<App>>,
    Auth(caller): Auth,
    JsonBody(body): JsonBody<CreateOrgRequest>,
) -> ApiResult<(StatusCode, Json<OrgView>)> {
    admin_only(&caller)?;
    // Same rules as a workspace name, reported under this field.
    let name = WorkspaceName::parse(&body.name)
        .map_err(|e| ApiError::bad_request("invalid_field", format!("name: {}", e.message)))?;
    let org = app.ctl.create_org(&caller, &name).await?;
    Ok((StatusCode::CREATED, Json(org.into())))
}

#[utoipa::path(
    get, path = "/orgs",
    responses((status = 200, body = Vec<OrgView>)),
    security(("bearer" = []))
)]
pub async fn list_orgs(
    State(app): State<Arc<App>>,
    Auth(caller): Auth,
) -> ApiResult<Json<Vec<OrgView>>> {
    Ok(Json(
        app.ctl
            .orgs(&caller)
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
    Auth(caller): Auth,
    Path(raw): Path<String>,
) -> ApiResult<(StatusCode, Json<TokenView>)> {
    admin_only(&caller)?;
    let id = parse_id(&raw)?;
    let (token, org) = app.ctl.mint_org_token(&caller, id).await?;
    Ok((
        StatusCode::CREATED,
        Json(TokenView {
            token: token.expose().to_owned(),
            org_id: org.id,
        }),
    ))
}
