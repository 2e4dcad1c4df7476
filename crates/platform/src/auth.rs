//! Who is calling: the admin, an org, or a workspace. Tokens are stored and
//! compared as SHA-256 hashes; the admin token's hash is compared in constant
//! time, other tokens are found by an index lookup on their hash.

use crate::App;
use crate::error::ApiError;
use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use rand::RngCore;
use sha2::{Digest, Sha256};
use std::fmt;
use std::sync::Arc;
use subtle::ConstantTimeEq;
use uuid::Uuid;

/// A secret that never prints.
#[derive(Clone)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Self {
        Secret(s.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

/// A fresh random token: 32 bytes, hex, with a prefix that says what it is.
pub fn generate_token(prefix: &str) -> Secret {
    let mut bytes = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    Secret(format!("{prefix}_{hex}"))
}

pub fn hash_token(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

pub fn hash_hex(token: &str) -> String {
    hash_token(token)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Caller {
    Admin,
    Org(Uuid),
    Workspace {
        workspace_id: Uuid,
        org_id: Option<Uuid>,
    },
}

impl Caller {
    /// The name recorded in audit events.
    pub fn actor(&self) -> String {
        match self {
            Caller::Admin => "admin".to_owned(),
            Caller::Org(org) => format!("org:{org}"),
            Caller::Workspace { workspace_id, .. } => format!("workspace:{workspace_id}"),
        }
    }

    /// Whether this caller may act on a workspace of `org_id`. Workspace
    /// tokens act on no workspace through the lifecycle API.
    pub fn manages_org(&self, org_id: Uuid) -> bool {
        match self {
            Caller::Admin => true,
            Caller::Org(org) => *org == org_id,
            Caller::Workspace { .. } => false,
        }
    }

    /// Whether this caller may read the workspace `id` of `org_id`.
    pub fn can_read(&self, id: Uuid, org_id: Uuid) -> bool {
        match self {
            Caller::Workspace { workspace_id, .. } => *workspace_id == id,
            other => other.manages_org(org_id),
        }
    }
}

impl FromRequestParts<Arc<App>> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, app: &Arc<App>) -> Result<Self, ApiError> {
        let bearer = parts
            .headers
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|h| h.strip_prefix("Bearer "))
            .map(str::trim)
            .filter(|t| !t.is_empty());
        let token = match bearer {
            Some(t) => t.to_owned(),
            None => {
                // The canvas's session cookie carries the token. A request
                // that changes state with it must come from our own pages.
                let token = session_cookie(&parts.headers).ok_or_else(ApiError::unauthorized)?;
                if !is_safe_method(&parts.method) && !same_origin(&parts.headers) {
                    return Err(ApiError::new(
                        axum::http::StatusCode::FORBIDDEN,
                        "cross_origin",
                        "a state-changing request with a session cookie must come from the same origin",
                    ));
                }
                token
            }
        };
        let token = token.as_str();
        let hash = hash_token(token);
        if bool::from(hash.ct_eq(&app.admin_token_hash)) {
            return Ok(Caller::Admin);
        }
        let hex: String = hash.iter().map(|b| format!("{b:02x}")).collect();
        if let Some((workspace_id, org_id)) = app.store.workspace_by_token(&hex).await? {
            return Ok(Caller::Workspace {
                workspace_id,
                org_id: Some(org_id),
            });
        }
        match app.store.org_of_token(&hex).await? {
            Some(org) => Ok(Caller::Org(org)),
            None => Err(ApiError::unauthorized()),
        }
    }
}

/// The name of the canvas's session cookie (its value is the API token).
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
