//! Secrets at rest: the data dir and the store's files are private to the
//! server's user, and the canvas cookie is a revocable, expiring session id,
//! never a token.

use crate::helpers::{ADMIN_TOKEN, TestApp, eventually, postgres_mode, workspace_body};
use reqwest::header::{COOKIE, LOCATION, ORIGIN, SET_COOKIE};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path)
        .unwrap_or_else(|e| panic!("stat {}: {e}", path.display()))
        .permissions()
        .mode()
        & 0o777
}

fn chmod(path: &Path, mode: u32) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// The data dirs of the server (and of its control plane, when remote),
/// with whether each keeps a SQLite store.
fn data_dirs(app: &TestApp) -> Vec<(&Path, bool)> {
    let mut dirs = vec![(app.platform_data_dir(), !postgres_mode())];
    if app.is_remote() {
        dirs.push((app.cp_data_dir(), true));
    }
    dirs
}

fn assert_private(app: &TestApp) {
    for (dir, sqlite) in data_dirs(app) {
        assert_eq!(mode(dir), 0o700, "{}", dir.display());
        if sqlite {
            for file in ["holdfast.db", "holdfast.db-wal", "holdfast.db-shm"] {
                assert_eq!(mode(&dir.join(file)), 0o600, "{}", dir.join(file).display());
            }
        }
    }
}

#[tokio::test]
async fn the_data_dir_and_the_store_files_are_private_and_fixed_at_start() {
    let mut app = TestApp::spawn().await;
    // A write, so that the write-ahead log is in use.
    app.create_workspace(&workspace_body("private"))
        .await
        .expect_status(201);
    assert_private(&app);

    // Files an older version (or an operator) left readable by others are
    // tightened at the next start (of the server restarted here; a remote
    // control plane's files were checked above).
    let dir = app.platform_data_dir().to_path_buf();
    chmod(&dir, 0o755);
    if !postgres_mode() {
        chmod(&dir.join("holdfast.db"), 0o644);
        chmod(&dir.join("holdfast.db-wal"), 0o644);
    }
    // Positive control: the check above sees such modes.
    assert_eq!(mode(&dir), 0o755);
    app.restart_server().await;
    app.list_workspaces().await;
    assert_private(&app);
}

/// A client that does not follow redirects, so the login's answer (and its
/// cookie) is seen as sent.
pub(crate) fn browser() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

/// Signs in to the canvas with `token`; returns the session cookie's value.
pub(crate) async fn sign_in(app: &TestApp, token: &str) -> String {
    let response = browser()
        .post(app.url("/canvas/login"))
        .header(ORIGIN, &app.base_url)
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!("token={token}"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 303);
    let cookie = response
        .headers()
        .get(SET_COOKIE)
        .and_then(|v| v.to_str().ok())
        .expect("a session cookie")
        .to_owned();
    assert!(
        cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"),
        "{cookie}"
    );
    let value = cookie
        .strip_prefix("holdfast_session=")
        .and_then(|rest| rest.split(';').next())
        .expect("holdfast_session=…")
        .to_owned();
    assert!(!value.is_empty());
    value
}

/// `GET /workspaces` with the session cookie alone: its status.
async fn status_with_cookie(app: &TestApp, session: &str) -> u16 {
    browser()
        .get(app.url("/workspaces"))
        .header(COOKIE, format!("holdfast_session={session}"))
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

#[tokio::test]
async fn the_canvas_cookie_holds_a_session_id_not_the_token_and_sign_out_revokes_it() {
    let app = TestApp::spawn().await;
    let session = sign_in(&app, ADMIN_TOKEN).await;
    assert_ne!(session, ADMIN_TOKEN);
    assert!(!session.contains(ADMIN_TOKEN));
    // Positive control: the cookie signs requests in.
    assert_eq!(status_with_cookie(&app, &session).await, 200);
    // Another sign-in is another session.
    let other = sign_in(&app, ADMIN_TOKEN).await;
    assert_ne!(other, session);

    if !postgres_mode() {
        // The store keeps neither the session id nor the token.
        let dir = app.platform_data_dir();
        let mut stored = std::fs::read(dir.join("holdfast.db")).unwrap();
        stored.extend(std::fs::read(dir.join("holdfast.db-wal")).unwrap_or_default());
        let holds = |needle: &str| stored.windows(needle.len()).any(|w| w == needle.as_bytes());
        assert!(!holds(&session), "the session id is stored as is");
        assert!(!holds(ADMIN_TOKEN), "the token is stored as is");
    }

    let signed_out = browser()
        .post(app.url("/canvas/logout"))
        .header(ORIGIN, &app.base_url)
        .header(COOKIE, format!("holdfast_session={session}"))
        .send()
        .await
        .unwrap();
    assert_eq!(signed_out.status().as_u16(), 303);
    assert_eq!(status_with_cookie(&app, &session).await, 401);
    let page = browser()
        .get(app.url("/canvas"))
        .header(COOKIE, format!("holdfast_session={session}"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        page.headers().get(LOCATION).and_then(|v| v.to_str().ok()),
        Some("/canvas/login")
    );
    // The other session is not signed out by this one's sign-out.
    assert_eq!(status_with_cookie(&app, &other).await, 200);
    // A made-up session id is refused too.
    assert_eq!(status_with_cookie(&app, "hfs_not-a-session").await, 401);
}

#[tokio::test]
async fn an_expired_session_is_refused() {
    let app = TestApp::spawn_with(&["--session-ttl", "2s"]).await;
    let session = sign_in(&app, ADMIN_TOKEN).await;
    // Positive control: fresh, it signs requests in.
    assert_eq!(status_with_cookie(&app, &session).await, 200);
    eventually("the session to expire", || async {
        (status_with_cookie(&app, &session).await == 401).then_some(())
    })
    .await;
}

#[tokio::test]
async fn an_org_session_signs_in_as_that_org() {
    let app = TestApp::spawn().await;
    let org = app
        .post_json("/orgs", &serde_json::json!({ "name": "acme" }))
        .await
        .expect_status(201);
    let org_id = org["id"].as_str().unwrap();
    let token = app
        .post_json(&format!("/orgs/{org_id}/tokens"), &serde_json::json!({}))
        .await
        .expect_status(201)["token"]
        .as_str()
        .unwrap()
        .to_owned();
    app.create_workspace(&workspace_body("admins-own"))
        .await
        .expect_status(201);
    let session = sign_in(&app, &token).await;
    assert_ne!(session, token);
    // The org sees its own (empty) org, not the default org's workspace.
    let seen: serde_json::Value = browser()
        .get(app.url("/workspaces"))
        .header(COOKIE, format!("holdfast_session={session}"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(seen, serde_json::json!([]));
}
