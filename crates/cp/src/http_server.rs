//! `holdfast cp serve`: the control plane as its own HTTP service (SPEC §9).
//!
//! Every `/cp/*` route needs `Authorization: Bearer <shared secret>` and
//! `X-Holdfast-Tenant-Token: <tenant token>`; missing or wrong is 401. A
//! workspace belongs to the tenant that first provisioned it; to any other
//! tenant it does not exist (404), for status, stop, prune and volumes alike.
//! The request body of a provision is validated again here, whatever the
//! platform checked: `data_persistence` that is not exactly `persist` or
//! `ephemeral` is a 400 naming the field.

use crate::sweep::SweepReport;
use crate::wire::{
    ActorBody, AuditAnswer, AuditEntry, AuditQuery, ErrorAnswer, HistoryAnswer, HoldAnswer,
    HoldBody, ImageAnswer, ImageQuery, LogsQuery, PAGE, StatusAnswer, StatusQuery, StopAnswer,
    StopQuery, SweepBody, VolumeAnswer, VolumesAnswer, VolumesQuery, route,
};
use crate::{ControlPlane, CpError, EmbeddedCp, ProvisionRequest};
use axum::body::Body;
use axum::extract::{FromRequestParts, Path, Query, State};
use axum::http::request::Parts;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use holdfast_domain::{
    DataPersistence, FieldError, Runtime, VolumeReason, VolumeState, now_millis,
};
use holdfast_store::Store;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::sync::Arc;
use subtle::ConstantTimeEq;
use uuid::Uuid;

/// The state of the control-plane service.
pub struct CpService {
    pub engine: Arc<EmbeddedCp>,
    pub store: Store,
    secret_hash: [u8; 32],
}

impl CpService {
    pub fn new(engine: Arc<EmbeddedCp>, store: Store, shared_secret: &str) -> Arc<Self> {
        Arc::new(CpService {
            engine,
            store,
            secret_hash: Sha256::digest(shared_secret.as_bytes()).into(),
        })
    }
}

/// The SHA-256 of a token, hex: how tenant tokens are stored.
pub fn token_hash(token: &str) -> String {
    holdfast_domain::hex::sha256_hex(token)
}

impl IntoResponse for CpError {
    fn into_response(self) -> Response {
        let (status, code) = self.wire();
        let error = match &self {
            CpError::ExportRefused(m) => {
                tracing::warn!(reason = %m, "export refused");
                self.to_string()
            }
            CpError::Unavailable(m) | CpError::Unreachable(m) => {
                tracing::warn!(reason = %m, "backend unavailable");
                "the control plane's backend is unavailable; try again shortly".to_owned()
            }
            CpError::Other(e) => {
                tracing::error!(error = %format!("{e:#}"), "control plane error");
                "internal error; see the control plane's log".to_owned()
            }
            CpError::DataErased => "the workspace's data has been erased".to_owned(),
            other => other.to_string(),
        };
        let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let mut response = (
            status,
            Json(ErrorAnswer {
                error,
                code: code.to_owned(),
            }),
        )
            .into_response();
        // An unreachable engine is a passing state: say when to come back.
        if status == StatusCode::SERVICE_UNAVAILABLE {
            response.headers_mut().insert(
                header::RETRY_AFTER,
                axum::http::HeaderValue::from_static("5"),
            );
        }
        response
    }
}

fn not_found() -> CpError {
    CpError::NotFound("no such workspace".to_owned())
}

fn bad(field_error: FieldError) -> CpError {
    CpError::BadRequest(field_error.to_string())
}

type CpResult<T> = Result<T, CpError>;

/// The authenticated tenant of a request.
pub struct TenantCtx {
    pub id: Uuid,
}

impl FromRequestParts<Arc<CpService>> for TenantCtx {
    type Rejection = CpError;

    async fn from_request_parts(parts: &mut Parts, svc: &Arc<CpService>) -> CpResult<Self> {
        let secret = parts
            .headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .ok_or(CpError::Unauthorized)?;
        let given: [u8; 32] = Sha256::digest(secret.trim().as_bytes()).into();
        if !bool::from(given.ct_eq(&svc.secret_hash)) {
            return Err(CpError::Unauthorized);
        }
        let tenant_token = parts
            .headers
            .get("x-holdfast-tenant-token")
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .ok_or(CpError::Unauthorized)?;
        let tenant = svc
            .store
            .tenant_by_token(&token_hash(tenant_token))
            .await?
            .ok_or(CpError::Unauthorized)?;
        Ok(TenantCtx { id: tenant.id })
    }
}

impl CpService {
    /// The workspace, if this tenant owns it; 404 otherwise.
    async fn owned(&self, tenant: &TenantCtx, raw: &str) -> CpResult<Uuid> {
        let id = Uuid::parse_str(raw).map_err(|_| not_found())?;
        match self.store.workspace_tenant(id).await? {
            Some(owner) if owner == tenant.id => Ok(id),
            _ => Err(not_found()),
        }
    }
}

/// Validates a provision body at this edge, field by field.
fn parse_provision(body: &Value) -> Result<ProvisionRequest, FieldError> {
    let obj = body
        .as_object()
        .ok_or_else(|| FieldError::new("body", "must be a JSON object"))?;
    const ALLOWED: &[&str] = &[
        "org_id",
        "workspace_id",
        "runtime",
        "tier",
        "env",
        "data_persistence",
        "volume_size_gb",
        "first_start",
        "seed_snapshot",
    ];
    if let Some(unknown) = obj.keys().find(|k| !ALLOWED.contains(&k.as_str())) {
        return Err(FieldError::new(
            unknown.clone(),
            format!("unknown field; allowed: {}", ALLOWED.join(", ")),
        ));
    }
    let uuid = |field: &str| -> Result<Uuid, FieldError> {
        obj.get(field)
            .and_then(Value::as_str)
            .and_then(|s| Uuid::parse_str(s).ok())
            .ok_or_else(|| FieldError::new(field, "must be a UUID"))
    };
    let tier = match obj.get("tier") {
        None | Some(Value::Null) => 2,
        Some(v) => holdfast_domain::Tier::parse(v)?.get(),
    };
    let env: BTreeMap<String, String> = match obj.get("env") {
        None | Some(Value::Null) => BTreeMap::new(),
        Some(Value::Object(m)) if m.len() <= 128 => m
            .iter()
            .map(|(k, v)| {
                v.as_str()
                    .filter(|s| !s.contains('\0') && !k.contains(['\0', '=']) && !k.is_empty())
                    .map(|s| (k.clone(), s.to_owned()))
                    .ok_or_else(|| {
                        FieldError::new(format!("env.{k}"), "must be a string without NUL")
                    })
            })
            .collect::<Result<_, _>>()?,
        Some(_) => {
            return Err(FieldError::new(
                "env",
                "must be an object of at most 128 strings",
            ));
        }
    };
    let volume_size_gb = match obj.get("volume_size_gb") {
        None | Some(Value::Null) => None,
        Some(v) => Some(
            v.as_u64()
                .filter(|n| (1..=500).contains(n))
                .ok_or_else(|| {
                    FieldError::new("volume_size_gb", "must be an integer from 1 to 500")
                })? as u16,
        ),
    };
    Ok(ProvisionRequest {
        org_id: uuid("org_id")?,
        workspace_id: uuid("workspace_id")?,
        runtime: Runtime::parse(obj.get("runtime").unwrap_or(&Value::Null))?,
        tier,
        env,
        data_persistence: match obj.get("data_persistence") {
            None => None,
            Some(v) => DataPersistence::parse(v)?,
        },
        volume_size_gb,
        first_start: obj
            .get("first_start")
            .and_then(Value::as_bool)
            .unwrap_or(false),
        seed_snapshot: match obj.get("seed_snapshot") {
            None | Some(Value::Null) => None,
            Some(v) => Some(
                v.as_str()
                    .and_then(holdfast_domain::parse_uuid)
                    .ok_or_else(|| FieldError::new("seed_snapshot", "must be a UUID"))?,
            ),
        },
    })
}

async fn json_body(body: Body) -> CpResult<Value> {
    let bytes = crate::body::read_limited(body, crate::body::MAX_BODY_BYTES)
        .await
        .map_err(|e| match e {
            crate::body::BodyError::TooLarge => CpError::TooLarge,
            crate::body::BodyError::TimedOut => {
                CpError::BadRequest("the request body did not arrive in time".to_owned())
            }
            crate::body::BodyError::Unreadable => {
                CpError::BadRequest("the request body could not be read".to_owned())
            }
        })?;
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(json!({}));
    }
    serde_json::from_slice(&bytes)
        .map_err(|e| CpError::BadRequest(format!("body is not valid JSON: {e}")))
}

/// A body of one of the protocol's types; a field it does not have is a
/// 400 naming it.
async fn typed_body<T: serde::de::DeserializeOwned>(body: Body) -> CpResult<T> {
    serde_json::from_value(json_body(body).await?).map_err(|e| CpError::BadRequest(e.to_string()))
}

async fn provision(
    State(svc): State<Arc<CpService>>,
    tenant: TenantCtx,
    body: Body,
) -> CpResult<Response> {
    let req = parse_provision(&json_body(body).await?).map_err(bad)?;
    let owner = svc
        .store
        .claim_workspace(req.workspace_id, tenant.id, now_millis())
        .await?;
    if owner != tenant.id {
        return Err(not_found());
    }
    let p = svc.engine.provision(req).await?;
    Ok((StatusCode::CREATED, Json(p)).into_response())
}

/// Stop; with `prune=true`, also mark the data `erase_pending`. Without an
/// `instance_id` there is nothing to stop (a no-op success for compute), but
/// an erase request is still recorded: dropping it would leave the data of a
/// workspace deleted with erase active forever.
async fn stop(
    State(svc): State<Arc<CpService>>,
    tenant: TenantCtx,
    Path(raw): Path<String>,
    Query(q): Query<StopQuery>,
) -> CpResult<Json<StopAnswer>> {
    let Ok(id) = Uuid::parse_str(&raw) else {
        return Err(not_found());
    };
    match svc.store.workspace_tenant(id).await? {
        Some(owner) if owner == tenant.id => {}
        Some(_) => return Err(not_found()),
        None if q.instance_id.is_none() && !q.prune => {
            return Ok(Json(StopAnswer {
                stopped: false,
                volume: None,
            }));
        }
        None => return Err(not_found()),
    }
    let instance = q.instance_id.as_deref().filter(|s| !s.is_empty());
    if q.prune {
        let actor = q.actor.as_deref().unwrap_or("platform");
        let volume = svc.engine.stop_and_prune(id, instance, actor).await?;
        Ok(Json(StopAnswer {
            stopped: instance.is_some(),
            volume,
        }))
    } else {
        svc.engine.stop(id, instance).await?;
        Ok(Json(StopAnswer {
            stopped: instance.is_some(),
            volume: None,
        }))
    }
}

async fn status(
    State(svc): State<Arc<CpService>>,
    tenant: TenantCtx,
    Path(raw): Path<String>,
    Query(q): Query<StatusQuery>,
) -> CpResult<Json<StatusAnswer>> {
    let id = svc.owned(&tenant, &raw).await?;
    let status = match q.instance_id.as_deref() {
        Some(inst) => svc.engine.status(id, inst).await?,
        None => crate::InstanceStatus::plain(crate::InstanceState::Unknown),
    };
    Ok(Json(StatusAnswer {
        state: status.state,
        reason: status.reason,
    }))
}

/// What a workspace started now gets: `{isolation, limits}`.
async fn info(
    State(svc): State<Arc<CpService>>,
    _tenant: TenantCtx,
) -> CpResult<Json<crate::process::Confinement>> {
    Ok(Json(svc.engine.confinement().await?))
}

/// 200 when the engine has the image (`runtime.image`, or with none the
/// default); 409 `image_not_found`; 503 when the engine does not answer.
async fn check_image(
    State(svc): State<Arc<CpService>>,
    _tenant: TenantCtx,
    Query(q): Query<ImageQuery>,
) -> Result<Json<ImageAnswer>, CpError> {
    let image = q
        .image
        .as_deref()
        .map(holdfast_domain::ImageRef::parse)
        .transpose()
        .map_err(|e| CpError::BadRequest(e.to_string()))?;
    svc.engine.check_image(image.as_ref()).await?;
    Ok(Json(ImageAnswer { present: true }))
}

async fn volume(
    State(svc): State<Arc<CpService>>,
    tenant: TenantCtx,
    Path(raw): Path<String>,
) -> CpResult<Json<VolumeAnswer>> {
    let id = svc.owned(&tenant, &raw).await?;
    Ok(Json(VolumeAnswer {
        volume: svc.engine.volume(id).await?,
    }))
}

async fn retain(
    State(svc): State<Arc<CpService>>,
    tenant: TenantCtx,
    Path(raw): Path<String>,
    body: Body,
) -> CpResult<Json<VolumeAnswer>> {
    let id = svc.owned(&tenant, &raw).await?;
    let b: ActorBody = typed_body(body).await?;
    let reason = b.reason.unwrap_or(VolumeReason::WorkspaceDeleted);
    Ok(Json(VolumeAnswer {
        volume: svc.engine.retain_volume(id, &b.actor, reason).await?,
    }))
}

/// `PUT`: the platform placed a legal hold; kept here (the workspace is
/// claimed for the tenant if it never ran here yet, so that it is held
/// from its first start). `DELETE`: released, the grace deadlines moved on.
async fn hold(
    State(svc): State<Arc<CpService>>,
    tenant: TenantCtx,
    method: axum::http::Method,
    Path(raw): Path<String>,
    body: Body,
) -> CpResult<Json<HoldAnswer>> {
    let id = Uuid::parse_str(&raw).map_err(|_| not_found())?;
    let b: HoldBody = typed_body(body).await?;
    if method == axum::http::Method::PUT {
        let Some(reason) = b.reason.filter(|r| !r.trim().is_empty()) else {
            return Err(bad(FieldError::new(
                "reason",
                "is required to place a hold",
            )));
        };
        let owner = svc
            .store
            .claim_workspace(id, tenant.id, now_millis())
            .await?;
        if owner != tenant.id {
            return Err(not_found());
        }
        svc.store
            .place_volume_hold(id, &reason, &b.actor, now_millis())
            .await?;
        tracing::info!(workspace_id = %id, actor = %b.actor, "legal hold placed");
        Ok(Json(HoldAnswer { held: true }))
    } else {
        let id = svc.owned(&tenant, &raw).await?;
        svc.store.release_volume_hold(id, now_millis()).await?;
        tracing::info!(workspace_id = %id, actor = %b.actor, "legal hold released");
        Ok(Json(HoldAnswer { held: false }))
    }
}

async fn restore(
    State(svc): State<Arc<CpService>>,
    tenant: TenantCtx,
    Path(raw): Path<String>,
    body: Body,
) -> CpResult<Json<VolumeAnswer>> {
    let id = svc.owned(&tenant, &raw).await?;
    let b: ActorBody = typed_body(body).await?;
    Ok(Json(VolumeAnswer {
        volume: svc.engine.restore_volume(id, &b.actor).await?,
    }))
}

async fn logs(
    State(svc): State<Arc<CpService>>,
    tenant: TenantCtx,
    Path(raw): Path<String>,
    Query(q): Query<LogsQuery>,
) -> CpResult<Response> {
    let id = svc.owned(&tenant, &raw).await?;
    let Some(stream) = svc.engine.logs(id, q.tail, q.follow).await? else {
        return Err(CpError::NotFound("the workspace has no log".to_owned()));
    };
    Ok((
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        Body::from_stream(stream),
    )
        .into_response())
}

async fn export(
    State(svc): State<Arc<CpService>>,
    tenant: TenantCtx,
    Path(raw): Path<String>,
) -> CpResult<Response> {
    let id = svc.owned(&tenant, &raw).await?;
    let stream = svc.engine.export(id).await?;
    Ok((
        [(header::CONTENT_TYPE, "application/gzip")],
        Body::from_stream(stream),
    )
        .into_response())
}

async fn list_volumes(
    State(svc): State<Arc<CpService>>,
    tenant: TenantCtx,
    Query(q): Query<VolumesQuery>,
) -> CpResult<Json<VolumesAnswer>> {
    let state = q
        .state
        .map(|s| s.parse::<VolumeState>())
        .transpose()
        .map_err(|e| CpError::BadRequest(format!("state: {e}")))?;
    let mine = svc.store.tenant_workspaces(tenant.id).await?;
    let limit = q.limit.unwrap_or(PAGE).clamp(1, PAGE);
    let volumes: Vec<_> = svc
        .engine
        .list_volumes(state)
        .await?
        .into_iter()
        .filter(|v| mine.contains(&v.workspace_id))
        .skip(q.offset)
        .take(limit)
        .collect();
    Ok(Json(VolumesAnswer { volumes }))
}

async fn history(
    State(svc): State<Arc<CpService>>,
    tenant: TenantCtx,
    Path(raw): Path<String>,
) -> CpResult<Json<HistoryAnswer>> {
    let volume_id = Uuid::parse_str(&raw).map_err(|_| not_found())?;
    let v = svc
        .store
        .get_volume(volume_id)
        .await?
        .ok_or_else(not_found)?;
    if svc.store.workspace_tenant(v.workspace_id).await? != Some(tenant.id) {
        return Err(not_found());
    }
    Ok(Json(HistoryAnswer {
        history: svc.engine.volume_history(volume_id).await?,
    }))
}

async fn sweep(
    State(svc): State<Arc<CpService>>,
    tenant: TenantCtx,
    body: Body,
) -> CpResult<Json<SweepReport>> {
    let b: SweepBody = typed_body(body).await?;
    let mut report = svc
        .engine
        .sweep(b.dry_run, b.actor.as_deref().unwrap_or("sweeper"))
        .await?;
    // A tenant sees its own part of the pass only.
    let mine = svc.store.tenant_workspaces(tenant.id).await?;
    report.items.retain(|i| mine.contains(&i.workspace_id));
    Ok(Json(report))
}

async fn audit(
    State(svc): State<Arc<CpService>>,
    tenant: TenantCtx,
    Query(q): Query<AuditQuery>,
) -> CpResult<Json<AuditAnswer>> {
    if let Some(ws) = q.workspace_id {
        svc.owned(&tenant, &ws.to_string()).await?;
    }
    let limit = q.limit.unwrap_or(PAGE).clamp(1, PAGE);
    // The tenant is part of the query, so a page is full however busy the
    // other tenants are.
    let events: Vec<AuditEntry> = svc
        .store
        .list_audit(
            holdfast_store::AuditScope::Tenant(tenant.id),
            q.workspace_id,
            i64::try_from(q.offset).unwrap_or(i64::MAX),
            i64::try_from(limit).unwrap_or(i64::MAX),
        )
        .await?
        .into_iter()
        .map(AuditEntry::from)
        .collect();
    Ok(Json(AuditAnswer { events }))
}

async fn health() -> Json<Value> {
    Json(json!({"status": "ok"}))
}

async fn fallback() -> CpError {
    CpError::NotFound("no such route".to_owned())
}

pub fn router(svc: Arc<CpService>) -> Router {
    Router::new()
        .route("/health", get(health))
        .route(route::INFO, get(info))
        .route(route::IMAGE_CHECK, get(check_image))
        .route(route::PROVISION, post(provision))
        .route("/cp/workspaces/{id}", axum::routing::delete(stop))
        .route("/cp/workspaces/{id}/status", get(status))
        .route("/cp/workspaces/{id}/volume", get(volume))
        .route("/cp/workspaces/{id}/volume/retain", post(retain))
        .route(
            "/cp/workspaces/{id}/hold",
            axum::routing::put(hold).delete(hold),
        )
        .route("/cp/workspaces/{id}/volume/restore", post(restore))
        .route("/cp/workspaces/{id}/volume/export", get(export))
        .route("/cp/workspaces/{id}/logs", get(logs))
        .route(route::VOLUMES, get(list_volumes))
        .route("/cp/volumes/{id}/history", get(history))
        .route(route::SWEEP, post(sweep))
        .route(route::AUDIT, get(audit))
        .fallback(fallback)
        .with_state(svc)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> Value {
        json!({"org_id": Uuid::nil(), "workspace_id": Uuid::nil(), "runtime": {"command": ["sleep", "1"]}, "tier": 2, "env": {}})
    }

    #[test]
    fn the_edge_rejects_bad_persistence_on_its_own() {
        for bad in [
            json!("Persist"),
            json!("persistent"),
            json!("off"),
            json!(true),
            json!(1),
            json!("ephemeral "),
        ] {
            let mut b = base();
            b["data_persistence"] = bad.clone();
            let e = parse_provision(&b).unwrap_err();
            assert_eq!(e.field, "data_persistence", "{bad}");
        }
        let mut b = base();
        b["data_persistence"] = json!("ephemeral");
        assert_eq!(
            parse_provision(&b).unwrap().data_persistence,
            Some(DataPersistence::Ephemeral)
        );
        assert_eq!(parse_provision(&base()).unwrap().data_persistence, None);
        let mut b = base();
        b["surprise"] = json!(1);
        assert_eq!(parse_provision(&b).unwrap_err().field, "surprise");
    }
}
