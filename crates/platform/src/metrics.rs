//! `GET /metrics`: the controller's metrics as Prometheus text (the admin's
//! only).

use crate::App;
use crate::auth::Auth;
use crate::error::ApiResult;
use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;

#[utoipa::path(
    get, path = "/metrics",
    responses((status = 200, description = "Prometheus text exposition", content_type = "text/plain")),
    security(("bearer" = []))
)]
pub async fn metrics(
    State(app): State<std::sync::Arc<App>>,
    Auth(caller): Auth,
) -> ApiResult<impl IntoResponse> {
    let out = app.ctl.render_metrics(&caller).await?;
    Ok(([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], out))
}
