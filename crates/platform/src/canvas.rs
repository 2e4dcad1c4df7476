//! The canvas: the web UI at `/canvas`, server-rendered with askama and a
//! little plain JavaScript that calls the JSON API with the session cookie.
//!
//! Login checks an API token and opens a session: the `HttpOnly;
//! SameSite=Strict` cookie (`holdfast_session`) holds a random session id,
//! never the token; the store keeps its hash, who signed in and when it
//! expires, and Sign out revokes it. `auth::Caller` accepts the cookie,
//! with its same-origin check for state-changing requests. The pages here only read;
//! every change goes through the API's own handlers, so the canvas can never
//! do what the API would refuse.

mod view;

use crate::App;
use crate::auth::{self, Caller, SESSION_COOKIE};
use crate::error::ApiError;
use crate::routes;
use askama::Template;
use axum::Router;
use axum::body::Body;
use axum::extract::{FromRequestParts, Path, State};
use axum::http::header::{CACHE_CONTROL, CONTENT_TYPE, LOCATION, SET_COOKIE};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode, Uri};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::get;
use std::collections::HashMap;
use std::sync::Arc;
use uuid::Uuid;
use view::{BoardFragment, BoardPage, LoginPage, PanelFragment};

type AppState = State<Arc<App>>;

/// The canvas's routes, merged into the API router.
pub(crate) fn router() -> Router<Arc<App>> {
    Router::new()
        .route("/canvas", get(board_page))
        .route("/canvas/", get(root_redirect))
        .route("/canvas/login", get(login_page).post(login))
        .route("/canvas/logout", axum::routing::post(logout))
        .route("/canvas/board", get(board_fragment))
        .route("/canvas/panel/{id}", get(panel_fragment))
        .route("/canvas/static/canvas.css", get(stylesheet))
        .route("/canvas/static/canvas.js", get(script))
        .route("/canvas/static/logo.svg", get(logo))
        .route("/favicon.ico", get(logo))
}

/// The retention and erase graces, for the delete dialog's dates.
#[derive(Debug, Clone, Copy)]
pub struct Graces {
    pub retention: std::time::Duration,
    pub erase: std::time::Duration,
}

impl App {
    /// Tells the canvas the graces the control plane applies (an embedded
    /// one's settings), so that the delete dialog can say the exact date a
    /// delete keeps data until. Without it the dialog names the grace
    /// without a date. Only the first call counts.
    pub fn set_graces(&self, graces: Graces) {
        let _ = self.graces.set(graces);
    }
}

/// `/` (and `/canvas/`) lead to the canvas.
pub(crate) async fn root_redirect() -> Redirect {
    Redirect::to("/canvas")
}

/// Who is signed in to the canvas. Workspace tokens cannot sign in: they
/// manage nothing. A request without a valid session is sent to the login
/// page rather than answered with a JSON error.
pub(crate) struct CanvasCaller(Caller);

impl FromRequestParts<Arc<App>> for CanvasCaller {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, app: &Arc<App>) -> Result<Self, Response> {
        match session_caller(app, &parts.headers).await {
            Some(c) => Ok(CanvasCaller(c)),
            None => Err(Redirect::to("/canvas/login").into_response()),
        }
    }
}

/// Who the request's session cookie stands for, if anyone may use the
/// canvas with it. A store failure reads as signed out (and is logged).
async fn session_caller(app: &Arc<App>, headers: &HeaderMap) -> Option<Caller> {
    let session = auth::session_cookie(headers)?;
    match app.ctl.session_caller(&session).await {
        Ok(Some(c @ (Caller::Admin | Caller::Org(_)))) => Some(c),
        Ok(_) => None,
        Err(e) => {
            tracing::warn!(error = %e, "reading a canvas session failed");
            None
        }
    }
}

/// The caller a token stands for, found exactly as the API finds a bearer,
/// if it may use the canvas.
async fn caller_for_token(app: &Arc<App>, token: &str) -> Option<Caller> {
    match app.ctl.caller_for_bearer(token).await {
        Ok(Some(c @ (Caller::Admin | Caller::Org(_)))) => Some(c),
        Ok(_) => None,
        Err(e) => {
            tracing::warn!(error = %e, "checking a sign-in token failed");
            None
        }
    }
}

fn html(status: StatusCode, body: Result<String, askama::Error>) -> Response {
    match body {
        Ok(b) => {
            let mut r = (status, Html(b)).into_response();
            r.headers_mut()
                .insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
            r
        }
        Err(e) => {
            tracing::error!(error = %e, "rendering a canvas template failed");
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                "the page could not be rendered",
            )
                .into_response()
        }
    }
}

/// An API error shown as a page fragment (the JavaScript shows its text).
fn error_fragment(e: ApiError) -> Response {
    let status = e.status;
    let page = view::ErrorFragment { message: e.message };
    html(status, page.render())
}

async fn login_page(State(app): AppState, headers: HeaderMap) -> Response {
    // Someone already signed in goes straight to the board.
    if session_caller(&app, &headers).await.is_some() {
        return Redirect::to("/canvas").into_response();
    }
    html(StatusCode::OK, LoginPage { error: None }.render())
}

fn login_error(status: StatusCode, message: &str) -> Response {
    html(
        status,
        LoginPage {
            error: Some(message.to_owned()),
        }
        .render(),
    )
}

async fn login(State(app): AppState, headers: HeaderMap, body: Body) -> Response {
    // Login CSRF: a foreign page must not sign a browser in to our canvas.
    if !auth::same_origin(&headers) {
        return login_error(
            StatusCode::FORBIDDEN,
            "This sign-in did not come from the holdfast login page. Open the login page and try again.",
        );
    }
    let body = match crate::body::read(body).await {
        Ok(b) => b,
        Err(e) => return login_error(e.status, &e.message),
    };
    let form = parse_form(&body);
    let token = form.get("token").map(|t| t.trim()).unwrap_or_default();
    if token.is_empty() {
        return login_error(StatusCode::BAD_REQUEST, "Enter a token to sign in.");
    }
    let Some(caller) = caller_for_token(&app, token).await else {
        return login_error(
            StatusCode::UNAUTHORIZED,
            "That token was not accepted. Use the admin token (in <data-dir>/admin-token) or an org token.",
        );
    };
    let session = match app.ctl.open_session(caller, token).await {
        Ok(s) => s,
        Err(e) => {
            let e = ApiError::from(e);
            return login_error(e.status, "Signing in failed; see the server log.");
        }
    };
    let cookie = format!(
        "{SESSION_COOKIE}={}; HttpOnly; SameSite=Strict; Path=/; Max-Age={}",
        session.expose(),
        app.ctl.session_ttl().as_secs()
    );
    let mut r = Redirect::to("/canvas").into_response();
    *r.status_mut() = StatusCode::SEE_OTHER;
    if let Ok(v) = HeaderValue::from_str(&cookie) {
        r.headers_mut().insert(SET_COOKIE, v);
    }
    r
}

async fn logout(State(app): AppState, headers: HeaderMap) -> Response {
    if !auth::same_origin(&headers) {
        return (StatusCode::FORBIDDEN, "sign out must come from the canvas").into_response();
    }
    // Revoked in the store, so that a copy of the cookie kept elsewhere
    // stops working too, not only the browser's.
    if let Some(session) = auth::session_cookie(&headers)
        && let Err(e) = app.ctl.close_session(&session).await
    {
        let e = ApiError::from(e);
        return login_error(e.status, "Signing out failed; see the server log.");
    }
    let mut r = StatusCode::SEE_OTHER.into_response();
    r.headers_mut()
        .insert(LOCATION, HeaderValue::from_static("/canvas/login"));
    r.headers_mut().insert(
        SET_COOKIE,
        HeaderValue::from_str(&format!(
            "{SESSION_COOKIE}=; HttpOnly; SameSite=Strict; Path=/; Max-Age=0"
        ))
        .unwrap_or(HeaderValue::from_static("")),
    );
    r
}

/// Parses an `application/x-www-form-urlencoded` body.
fn parse_form(body: &[u8]) -> HashMap<String, String> {
    let text = String::from_utf8_lossy(body);
    text.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect()
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).ok();
                match hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                    Some(b) => {
                        out.push(b);
                        i += 2;
                    }
                    None => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Everything the board shows, read through the controller as the API
/// reads it, so the canvas sees exactly what the caller may see.
async fn load_board(
    app: &Arc<App>,
    caller: Caller,
    query: view::BoardQuery,
) -> Result<view::Board, ApiError> {
    let rows = app.ctl.workspaces(&caller, None, true).await?;
    let all = app.views(&rows).await?;
    let orgs: HashMap<Uuid, String> = app
        .ctl
        .visible_orgs(&caller)
        .await?
        .into_iter()
        .map(|o| (o.id, o.name))
        .collect();
    Ok(view::Board::new(all, &orgs, query))
}

#[derive(Debug, Default)]
struct PageQuery {
    ws: Option<Uuid>,
    tab: Option<String>,
    board: view::BoardQuery,
}

fn page_query(uri: &Uri) -> PageQuery {
    let form = parse_form(uri.query().unwrap_or_default().as_bytes());
    PageQuery {
        ws: form.get("ws").and_then(|v| Uuid::parse_str(v).ok()),
        tab: form.get("tab").cloned(),
        board: view::BoardQuery::from_form(&form),
    }
}

async fn load_panel(
    app: &Arc<App>,
    caller: Caller,
    board: &view::Board,
    id: Uuid,
    tab: Option<&str>,
) -> Result<PanelFragment, ApiError> {
    let row = app.ctl.workspace(&caller, id).await?;
    let ws = app.view(&row).await?;
    let audit = app
        .ctl
        .audit(&caller, Some(id), 200)
        .await?
        .into_iter()
        .map(crate::data::AuditView::from)
        .collect();
    let usage = app.ctl.usage_history(&caller, id).await?;
    Ok(view::PanelFragment::new(
        ws,
        board,
        audit,
        tab,
        app.graces.get().copied(),
        view::UsageChart::new(&usage, holdfast_domain::now_millis()),
    ))
}

async fn board_page(
    State(app): AppState,
    CanvasCaller(caller): CanvasCaller,
    uri: Uri,
) -> Response {
    let q = page_query(&uri);
    let (board, error) = match load_board(&app, caller, q.board.clone()).await {
        Ok(b) => (b, None),
        Err(e) => (view::Board::default(), Some(e.message)),
    };
    let panel = match q.ws {
        Some(id) => load_panel(&app, caller, &board, id, q.tab.as_deref())
            .await
            .ok(),
        None => None,
    };
    let page = BoardPage {
        who: match caller {
            Caller::Admin => "admin".to_owned(),
            Caller::Org(_) => board
                .org_options
                .first()
                .map(|(_, name)| format!("org {name}"))
                .unwrap_or_else(|| "org".to_owned()),
            Caller::Workspace { .. } => String::new(),
        },
        board: BoardFragment { board, error },
        panel,
    };
    html(StatusCode::OK, page.render())
}

async fn board_fragment(
    State(app): AppState,
    CanvasCaller(caller): CanvasCaller,
    uri: Uri,
) -> Response {
    match load_board(&app, caller, page_query(&uri).board).await {
        Ok(board) => html(
            StatusCode::OK,
            BoardFragment { board, error: None }.render(),
        ),
        Err(e) => error_fragment(e),
    }
}

async fn panel_fragment(
    State(app): AppState,
    CanvasCaller(caller): CanvasCaller,
    Path(raw): Path<String>,
    uri: Uri,
) -> Response {
    let id = match routes::parse_id(&raw) {
        Ok(id) => id,
        Err(e) => return error_fragment(e),
    };
    let q = page_query(&uri);
    let board = match load_board(&app, caller, view::BoardQuery::default()).await {
        Ok(b) => b,
        Err(e) => return error_fragment(e),
    };
    match load_panel(&app, caller, &board, id, q.tab.as_deref()).await {
        Ok(panel) => html(StatusCode::OK, panel.render()),
        Err(e) => error_fragment(e),
    }
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (CONTENT_TYPE, HeaderValue::from_static(content_type)),
            (CACHE_CONTROL, HeaderValue::from_static("no-cache")),
        ],
        body,
    )
        .into_response()
}

async fn stylesheet() -> Response {
    asset(
        "text/css; charset=utf-8",
        include_str!("../static/canvas.css"),
    )
}

/// The logo mark, also the favicon (so that no page load asks for a
/// missing `/favicon.ico`).
async fn logo() -> Response {
    (
        [
            (CONTENT_TYPE, HeaderValue::from_static("image/svg+xml")),
            (CACHE_CONTROL, HeaderValue::from_static("max-age=86400")),
        ],
        include_str!("../static/logo.svg"),
    )
        .into_response()
}

async fn script() -> Response {
    asset(
        "text/javascript; charset=utf-8",
        include_str!("../static/canvas.js"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn form_decoding() {
        let f = parse_form(b"token=adm%5Fabc+d&x=%zz&y=%4");
        assert_eq!(f["token"], "adm_abc d");
        assert_eq!(f["x"], "%zz");
        assert_eq!(f["y"], "%4");
    }
}
