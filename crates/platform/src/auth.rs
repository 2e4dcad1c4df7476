//! Who is calling, as an extractor: a bearer token or a canvas session
//! cookie, resolved by the controller (`holdfast_controller::identity`).
//! A state-changing request with a session cookie must come from our own
//! pages.

use crate::App;
use crate::error::ApiError;
use axum::extract::FromRequestParts;
use axum::http::request::Parts;
pub use holdfast_controller::{Caller, Secret, generate_token, hash_hex, hash_token};
use std::sync::Arc;

/// 404 to anyone but the admin, before any input is looked at: to them an
/// admin route does not exist (not 403). The controller checks again.
pub(crate) fn admin_only(caller: &Caller) -> crate::error::ApiResult<()> {
    if *caller == Caller::Admin {
        Ok(())
    } else {
        Err(ApiError::not_found("route"))
    }
}

/// The caller of a request. Handlers take `Auth(caller): Auth`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Auth(pub Caller);

impl FromRequestParts<Arc<App>> for Auth {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, app: &Arc<App>) -> Result<Self, ApiError> {
        let bearer = parts
            .headers
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|h| h.strip_prefix("Bearer "))
            .map(str::trim)
            .filter(|t| !t.is_empty());
        if let Some(token) = bearer {
            return app
                .ctl
                .caller_for_bearer(token)
                .await?
                .map(Auth)
                .ok_or_else(ApiError::unauthorized);
        }
        // The canvas's session cookie. A request that changes state with it
        // must come from our own pages.
        let session = session_cookie(&parts.headers).ok_or_else(ApiError::unauthorized)?;
        if !is_safe_method(&parts.method) && !same_origin(&parts.headers) {
            return Err(ApiError::new(
                axum::http::StatusCode::FORBIDDEN,
                "cross_origin",
                "a state-changing request with a session cookie must come from the same origin",
            ));
        }
        app.ctl
            .session_caller(&session)
            .await?
            .map(Auth)
            .ok_or_else(ApiError::unauthorized)
    }
}

/// The name of the canvas's session cookie (its value is a random session
/// id, never a token).
pub const SESSION_COOKIE: &str = "holdfast_session";

/// The session cookie's value, if the request carries one.
pub fn session_cookie(headers: &axum::http::HeaderMap) -> Option<String> {
    headers
        .get_all(axum::http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == SESSION_COOKIE)
        .map(|(_, v)| v.trim().to_owned())
        .filter(|v| !v.is_empty())
}

fn is_safe_method(m: &axum::http::Method) -> bool {
    matches!(
        *m,
        axum::http::Method::GET | axum::http::Method::HEAD | axum::http::Method::OPTIONS
    )
}

/// Whether a cookie-authenticated request comes from this server's own
/// pages: `Sec-Fetch-Site: same-origin` (set by browsers), or else an
/// `Origin` (or, failing that, `Referer`) whose host is the request's `Host`.
pub fn same_origin(headers: &axum::http::HeaderMap) -> bool {
    let get = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    if let Some(site) = get("sec-fetch-site") {
        return site == "same-origin";
    }
    let Some(host) = get("host") else {
        return false;
    };
    let origin = get("origin").or_else(|| get("referer"));
    origin.is_some_and(|o| {
        let rest = o
            .strip_prefix("http://")
            .or_else(|| o.strip_prefix("https://"))
            .unwrap_or("");
        rest.split('/').next() == Some(host)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderMap;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, v.parse().unwrap());
        }
        h
    }

    #[test]
    fn same_origin_checks() {
        assert!(same_origin(&headers(&[("sec-fetch-site", "same-origin")])));
        assert!(!same_origin(&headers(&[
            ("sec-fetch-site", "cross-site"),
            ("host", "a:1"),
            ("origin", "http://a:1")
        ])));
        assert!(same_origin(&headers(&[
            ("host", "127.0.0.1:7420"),
            ("origin", "http://127.0.0.1:7420")
        ])));
        assert!(!same_origin(&headers(&[
            ("host", "127.0.0.1:7420"),
            ("origin", "http://evil.example")
        ])));
        assert!(!same_origin(&headers(&[("host", "127.0.0.1:7420")])));
    }

    #[test]
    fn cookie_parsing() {
        let h = headers(&[("cookie", "a=1; holdfast_session=tok; b=2")]);
        assert_eq!(session_cookie(&h).as_deref(), Some("tok"));
        assert_eq!(
            session_cookie(&headers(&[("cookie", "holdfast_session=")])),
            None
        );
    }
}
