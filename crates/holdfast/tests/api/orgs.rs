//! Orgs and their tokens (SPEC §10): the admin creates orgs and mints org
//! tokens; an org token sees and changes only its own org, and another org's
//! workspace is 404 (never 403) on every route, with nothing changed;
//! workspace tokens die with their instance.

use crate::helpers::{
    ADMIN_TOKEN, ApiResponse, TestApp, assert_files_intact, dir_entries, id_of, plant_files,
    read_lines, recording_runtime, wait_for_pid, wait_for_pid_other_than, workspace_body,
    workspace_processes,
};
use reqwest::Method;
use serde_json::{Value, json};

/// `POST /orgs`, asserting 201 and the shape of the answer.
async fn create_org(app: &TestApp, name: &str) -> Value {
    let org = app
        .post_json("/orgs", &json!({ "name": name }))
        .await
        .expect_status(201);
    assert!(
        org["id"]
            .as_str()
            .is_some_and(|id| uuid::Uuid::parse_str(id).is_ok()),
        "{org}"
    );
    assert_eq!(org["is_default"], false, "{org}");
    assert!(org["created_at"].is_string(), "{org}");
    org
}

/// `POST /orgs/:id/tokens`, asserting 201; the token.
async fn mint_token(app: &TestApp, org_id: &str) -> String {
    let minted = app
        .post_json(&format!("/orgs/{org_id}/tokens"), &json!({}))
        .await
        .expect_status(201);
    assert_eq!(minted["org_id"], org_id, "{minted}");
    minted["token"]
        .as_str()
        .unwrap_or_else(|| panic!("no string `token` in {minted}"))
        .to_owned()
}

/// `GET /orgs`, asserting 200 and a JSON array.
async fn orgs(app: &TestApp) -> Vec<Value> {
    app.list_at("/orgs").await
}

/// An org and a token of it.
async fn org_with_token(app: &TestApp, name: &str) -> (String, String) {
    let org = id_of(&create_org(app, name).await);
    let token = mint_token(app, &org).await;
    (org, token)
}

/// Sends `method path` with `token` and an optional JSON body.
async fn call(
    app: &TestApp,
    token: &str,
    method: Method,
    path: &str,
    body: Option<&Value>,
) -> ApiResponse {
    let mut request = app.with_token(method, path, token);
    if let Some(body) = body {
        request = request.json(body);
    }
    app.send(request).await
}

/// The ids of a JSON array of records by `key`.
fn ids(items: &[Value], key: &str) -> Vec<String> {
    let mut ids: Vec<String> = items
        .iter()
        .map(|item| item[key].as_str().unwrap_or_default().to_owned())
        .collect();
    ids.sort();
    ids
}

fn sorted(mut ids: Vec<String>) -> Vec<String> {
    ids.sort();
    ids
}

#[tokio::test]
async fn the_admin_creates_and_lists_orgs_beside_the_default_one() {
    let app = TestApp::spawn().await;
    let before = orgs(&app).await;
    assert_eq!(before.len(), 1, "a default org exists: {before:?}");
    assert_eq!(before[0]["is_default"], true, "{before:?}");

    let acme = create_org(&app, "  acme  ").await;
    assert_eq!(acme["name"], "acme", "names are trimmed: {acme}");
    let listed = orgs(&app).await;
    assert_eq!(listed.len(), 2, "{listed:?}");
    assert!(listed.contains(&acme), "{listed:?}");
    assert_eq!(
        listed.iter().filter(|o| o["is_default"] == true).count(),
        1,
        "{listed:?}"
    );

    for name in ["acme", " acme"] {
        app.post_json("/orgs", &json!({ "name": name }))
            .await
            .expect_error(409, "org_exists");
    }
    assert_eq!(orgs(&app).await, listed, "a conflict creates nothing");
}

#[tokio::test]
async fn bad_org_input_is_400_and_creates_nothing() {
    let app = TestApp::spawn().await;
    let before = orgs(&app).await;
    for body in [
        json!({ "name": "" }),
        json!({ "name": "   " }),
        json!({ "name": "bell\u{7}name" }),
        json!({ "name": "x".repeat(65) }),
        json!({ "name": 5 }),
        json!({ "name": null }),
        json!({}),
        json!({ "name": "fine", "colour": "red" }),
        json!(["acme"]),
    ] {
        let answer = app.post_json("/orgs", &body).await;
        assert_eq!(answer.status.as_u16(), 400, "{body}: {}", answer.text);
        assert!(answer.body["code"].is_string(), "{body}: {}", answer.text);
    }
    let malformed = app
        .send(
            app.authed(Method::POST, "/orgs")
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .body("{\"name\":"),
        )
        .await;
    assert_eq!(malformed.status.as_u16(), 400, "{}", malformed.text);
    assert_eq!(orgs(&app).await, before);

    let org = id_of(&create_org(&app, "real").await);
    app.post_json("/orgs/not-a-uuid/tokens", &json!({}))
        .await
        .expect_status(400);
    let unknown = uuid::Uuid::new_v4();
    app.post_json(&format!("/orgs/{unknown}/tokens"), &json!({}))
        .await
        .expect_status(404);
    // A token minted for a real org after those works.
    let token = mint_token(&app, &org).await;
    call(&app, &token, Method::GET, "/workspaces", None)
        .await
        .expect_status(200);
}

#[tokio::test]
async fn org_tokens_are_shown_once_and_each_one_minted_works() {
    let app = TestApp::spawn().await;
    let org = id_of(&create_org(&app, "twice").await);
    let first = mint_token(&app, &org).await;
    let second = mint_token(&app, &org).await;
    assert_ne!(first, second, "each mint is a new token");
    assert_ne!(first, ADMIN_TOKEN);
    // Shown once: nothing the admin can read later holds it.
    let listed = app.get("/orgs").await.expect_status(200).to_string();
    assert!(
        !listed.contains(&first) && !listed.contains(&second),
        "{listed}"
    );

    for token in [&first, &second] {
        let ws = call(
            &app,
            token,
            Method::POST,
            "/workspaces",
            Some(&workspace_body("minted")),
        )
        .await
        .expect_status(201);
        assert_eq!(ws["org_id"], org.as_str(), "{ws}");
    }
    for token in [&first, &second] {
        let seen = call(&app, token, Method::GET, "/workspaces", None)
            .await
            .expect_status(200);
        assert_eq!(seen.as_array().map(Vec::len), Some(2), "{seen}");
    }
    call(&app, "hfo_not-a-token", Method::GET, "/workspaces", None)
        .await
        .expect_status(401);
}

#[tokio::test]
async fn admin_routes_are_404_to_an_org_token() {
    let app = TestApp::spawn().await;
    let (org, token) = org_with_token(&app, "plain").await;
    let before = orgs(&app).await;
    for (method, path, body) in [
        (Method::GET, "/orgs".to_owned(), None),
        (
            Method::POST,
            "/orgs".to_owned(),
            Some(json!({ "name": "mine" })),
        ),
        (Method::POST, format!("/orgs/{org}/tokens"), Some(json!({}))),
        (
            Method::POST,
            "/admin/sweep".to_owned(),
            Some(json!({ "dry_run": true })),
        ),
        (Method::GET, "/metrics".to_owned(), None),
    ] {
        let answer = call(&app, &token, method.clone(), &path, body.as_ref()).await;
        assert_eq!(
            answer.status.as_u16(),
            404,
            "{method} {path} with an org token: {}",
            answer.text
        );
    }
    assert_eq!(orgs(&app).await, before, "nothing was created");
}

#[tokio::test]
async fn another_orgs_workspace_is_404_on_every_route_and_nothing_changes() {
    let app = TestApp::spawn_with(&["--sweep-interval", "1h"]).await;
    let (red, red_token) = org_with_token(&app, "red").await;
    let (_, blue_token) = org_with_token(&app, "blue").await;
    let mut body = workspace_body("red-ws");
    body["org_id"] = json!(red);
    let ws = app.create_online_workspace(&body).await;
    assert_eq!(
        ws["org_id"],
        red.as_str(),
        "the admin placed it in red: {ws}"
    );
    let id = id_of(&ws);
    let volume = app.volume_dir(&id);
    let pid = wait_for_pid(&volume).await;
    let files = plant_files(&volume, "red-ws");
    // A removed one of red's, for restore.
    let mut gone_body = workspace_body("red-gone");
    gone_body["org_id"] = json!(red);
    let gone = id_of(&app.create_online_workspace(&gone_body).await);
    app.delete_workspace(&gone)
        .confirm_name("red-gone")
        .send()
        .await
        .expect_status(200);
    let ws = app.workspace(&id).await;
    let gone_before = app.workspace(&gone).await;
    let audit_before = app.audit().await;

    let mut attempts: Vec<(Method, String, Option<Value>)> = vec![
        (Method::GET, format!("/workspaces/{id}"), None),
        (
            Method::PATCH,
            format!("/workspaces/{id}"),
            Some(json!({ "name": "hijacked", "compute": { "data_persistence": "ephemeral" } })),
        ),
        (Method::POST, format!("/workspaces/{id}/restart"), None),
        (Method::POST, format!("/workspaces/{id}/pause"), None),
        (
            Method::POST,
            format!("/workspaces/{id}/pause?cascade=true"),
            None,
        ),
        (Method::POST, format!("/workspaces/{id}/resume"), None),
        (Method::POST, format!("/workspaces/{id}/hibernate"), None),
        (Method::POST, format!("/workspaces/{id}/wake"), None),
        (Method::POST, format!("/workspaces/{id}/restore"), None),
        (Method::POST, format!("/workspaces/{gone}/restore"), None),
        (Method::GET, format!("/workspaces/{id}/data"), None),
        (Method::GET, format!("/workspaces/{gone}/data"), None),
        (Method::GET, format!("/workspaces/{id}/data/export"), None),
        (Method::GET, format!("/workspaces/{gone}/data/export"), None),
        (
            Method::POST,
            format!("/workspaces/{id}/messages"),
            Some(json!({ "text": "hello from blue" })),
        ),
        (Method::GET, format!("/workspaces/{id}/messages"), None),
        (Method::GET, format!("/audit?workspace_id={id}"), None),
        (
            Method::POST,
            "/workspaces".to_owned(),
            Some(json!({ "name": "blue-child", "parent_id": id, "runtime": recording_runtime() })),
        ),
    ];
    for query in ["", "?erase_data=true", "?confirm=true&erase_data=true"] {
        attempts.push((Method::DELETE, format!("/workspaces/{id}{query}"), None));
    }
    for (method, path, body) in attempts {
        let mut request = app.with_token(method.clone(), &path, &blue_token);
        if method == Method::DELETE {
            request = request.header("X-Confirm-Name", "red-ws");
        }
        if let Some(body) = &body {
            request = request.json(body);
        }
        let answer = app.send(request).await;
        let status = answer.status.as_u16();
        // A child under another org's workspace is refused as a bad
        // `parent_id` (400) or as not found; either way never 403.
        let expected: &[u16] = if path == "/workspaces" {
            &[400, 404]
        } else {
            &[404]
        };
        assert!(
            expected.contains(&status),
            "{method} {path} with another org's token: expected {expected:?}, got {status}: {}",
            answer.text
        );
    }

    // Nothing changed.
    assert_eq!(app.workspace(&id).await, ws, "the record is untouched");
    assert_eq!(workspace_processes(&id), [pid], "the same process runs");
    assert_files_intact(&volume, &files);
    assert_eq!(read_lines(&volume.join("data.txt")), ["started"]);
    assert_eq!(app.workspace(&gone).await, gone_before);
    assert_eq!(app.volume(&gone).await["state"], "retained");
    assert_eq!(app.audit().await, audit_before, "nothing was audited");
    assert!(
        app.list_workspaces()
            .await
            .iter()
            .all(|w| w["name"] != "blue-child"),
        "no child was created"
    );
    // The same requests with red's own token do work.
    call(
        &app,
        &red_token,
        Method::GET,
        &format!("/workspaces/{id}"),
        None,
    )
    .await
    .expect_status(200);
    call(
        &app,
        &red_token,
        Method::GET,
        &format!("/workspaces/{id}/data"),
        None,
    )
    .await
    .expect_status(200);
}

#[tokio::test]
async fn an_org_token_creates_and_lists_in_its_own_org_only() {
    let app = TestApp::spawn().await;
    let (red, red_token) = org_with_token(&app, "red").await;
    let (blue, blue_token) = org_with_token(&app, "blue").await;

    let mine = call(
        &app,
        &red_token,
        Method::POST,
        "/workspaces",
        Some(&workspace_body("red-made")),
    )
    .await
    .expect_status(201);
    assert_eq!(mine["org_id"], red.as_str(), "{mine}");
    let mut explicit = workspace_body("red-explicit");
    explicit["org_id"] = json!(red);
    let explicit = call(
        &app,
        &red_token,
        Method::POST,
        "/workspaces",
        Some(&explicit),
    )
    .await
    .expect_status(201);
    assert_eq!(explicit["org_id"], red.as_str(), "{explicit}");

    // Another org in the body is refused, and creates nothing.
    let all_before = app.list_workspaces().await;
    let volumes_before = dir_entries(&app.volumes_root());
    let mut elsewhere = workspace_body("red-into-blue");
    elsewhere["org_id"] = json!(blue);
    let refused = call(
        &app,
        &red_token,
        Method::POST,
        "/workspaces",
        Some(&elsewhere),
    )
    .await;
    assert_eq!(refused.status.as_u16(), 400, "{}", refused.text);
    assert!(refused.text.contains("org_id"), "{}", refused.text);
    assert_eq!(app.list_workspaces().await, all_before);
    assert_eq!(dir_entries(&app.volumes_root()), volumes_before);

    // The admin places workspaces where it says, the default org otherwise.
    let mut into_blue = workspace_body("admin-into-blue");
    into_blue["org_id"] = json!(blue);
    let blue_ws = app.create_workspace(&into_blue).await.expect_status(201);
    assert_eq!(blue_ws["org_id"], blue.as_str(), "{blue_ws}");
    let default_ws = app
        .create_workspace(&workspace_body("admin-default"))
        .await
        .expect_status(201);
    let default_org = orgs(&app)
        .await
        .into_iter()
        .find(|o| o["is_default"] == true)
        .map(|o| id_of(&o))
        .expect("a default org");
    assert_eq!(default_ws["org_id"], default_org.as_str(), "{default_ws}");
    let mut unknown = workspace_body("nowhere");
    unknown["org_id"] = json!(uuid::Uuid::new_v4().to_string());
    app.create_workspace(&unknown).await.expect_status(400);

    let red_ids = sorted(vec![id_of(&mine), id_of(&explicit)]);
    let list = |token: &str, query: &str| {
        let path = format!("/workspaces{query}");
        let token = token.to_owned();
        let app = &app;
        async move {
            let answer = call(app, &token, Method::GET, &path, None)
                .await
                .expect_status(200);
            ids(answer.as_array().expect("a JSON array"), "id")
        }
    };
    assert_eq!(list(&red_token, "").await, red_ids);
    assert_eq!(list(&red_token, &format!("?org_id={red}")).await, red_ids);
    assert_eq!(
        list(&red_token, &format!("?org_id={blue}")).await,
        Vec::<String>::new()
    );
    assert_eq!(list(&blue_token, "").await, [id_of(&blue_ws)]);
    assert_eq!(
        list(&blue_token, &format!("?org_id={red}")).await,
        Vec::<String>::new()
    );
    assert_eq!(list(ADMIN_TOKEN, &format!("?org_id={red}")).await, red_ids);
    assert_eq!(list(ADMIN_TOKEN, "").await.len(), 4);
}

#[tokio::test]
async fn volumes_and_audit_show_an_org_only_its_own() {
    let app = TestApp::spawn_with(&["--sweep-interval", "1h"]).await;
    let (_, red_token) = org_with_token(&app, "red").await;
    let (_, blue_token) = org_with_token(&app, "blue").await;
    let create = |token: String, name: &'static str| {
        let app = &app;
        async move {
            let ws = call(
                app,
                &token,
                Method::POST,
                "/workspaces",
                Some(&workspace_body(name)),
            )
            .await
            .expect_status(201);
            let id = id_of(&ws);
            app.wait_online(&id).await;
            id
        }
    };
    let red_live = create(red_token.clone(), "red-live").await;
    let red_gone = create(red_token.clone(), "red-gone").await;
    let blue_live = create(blue_token.clone(), "blue-live").await;
    app.send(
        app.with_token(
            Method::DELETE,
            &format!("/workspaces/{red_gone}?erase_data=true"),
            &red_token,
        )
        .header("X-Confirm-Name", "red-gone"),
    )
    .await
    .expect_status(200);

    let volumes_of = |token: &str| {
        let app = &app;
        let token = token.to_owned();
        async move {
            let answer = call(app, &token, Method::GET, "/volumes", None)
                .await
                .expect_status(200);
            ids(answer.as_array().expect("a JSON array"), "workspace_id")
        }
    };
    assert_eq!(
        volumes_of(&red_token).await,
        sorted(vec![red_live.clone(), red_gone.clone()])
    );
    assert_eq!(
        volumes_of(&blue_token).await,
        std::slice::from_ref(&blue_live)
    );
    assert_eq!(volumes_of(ADMIN_TOKEN).await.len(), 3);
    let pending = call(
        &app,
        &blue_token,
        Method::GET,
        "/volumes?state=erase_pending",
        None,
    )
    .await
    .expect_status(200);
    assert_eq!(
        pending,
        json!([]),
        "blue does not see red's pending erasure"
    );

    let audit_of = |token: &str| {
        let app = &app;
        let token = token.to_owned();
        async move {
            let answer = call(app, &token, Method::GET, "/audit", None)
                .await
                .expect_status(200);
            answer.as_array().expect("a JSON array").clone()
        }
    };
    let red_events = audit_of(&red_token).await;
    assert!(
        red_events
            .iter()
            .any(|e| e["workspace_id"] == red_gone.as_str() && e["action"] == "workspace.deleted"),
        "red sees its own delete: {red_events:?}"
    );
    assert!(
        red_events
            .iter()
            .all(|e| e["workspace_id"] == red_live.as_str()
                || e["workspace_id"] == red_gone.as_str()),
        "red sees only its own events: {red_events:?}"
    );
    let blue_events = audit_of(&blue_token).await;
    assert!(!blue_events.is_empty(), "blue sees its own creation");
    assert!(
        blue_events
            .iter()
            .all(|e| e["workspace_id"] == blue_live.as_str()),
        "blue sees only its own events: {blue_events:?}"
    );
    call(
        &app,
        &blue_token,
        Method::GET,
        &format!("/audit?workspace_id={red_gone}"),
        None,
    )
    .await
    .expect_status(404);
}

/// A command runtime that writes its workspace token into its data dir, then
/// its pid (last, so a fresh pid means the token is written).
fn token_recording_body(name: &str) -> Value {
    json!({
        "name": name,
        "runtime": { "command": ["sh", "-c",
            "echo \"$HOLDFAST_TOKEN\" > token; echo $$ > pid; exec sleep 600"] },
    })
}

/// Extends `runtime::workspace_token_is_revoked_at_restart_and_at_delete`
/// (heartbeat after a restart, heartbeat and read after a delete) to a
/// workspace of an org created with an org token, and to every route a
/// workspace token has: register, heartbeat and reading its own record.
#[tokio::test]
async fn an_org_workspaces_old_tokens_stop_working_at_restart_and_delete() {
    let app = TestApp::spawn().await;
    let (_, org_token) = org_with_token(&app, "tokened").await;
    let created = call(
        &app,
        &org_token,
        Method::POST,
        "/workspaces",
        Some(&token_recording_body("rotating")),
    )
    .await
    .expect_status(201);
    let id = id_of(&created);
    app.wait_online(&id).await;
    let volume = app.volume_dir(&id);
    let first_pid = wait_for_pid(&volume).await;
    let first = read_lines(&volume.join("token")).join("");
    assert!(!first.is_empty() && first != org_token);

    // Every route a workspace token has.
    let own_routes: Vec<(Method, String, Option<Value>)> = vec![
        (Method::GET, format!("/workspaces/{id}"), None),
        (
            Method::POST,
            "/registry/heartbeat".to_owned(),
            Some(json!({})),
        ),
        (
            Method::POST,
            "/registry/register".to_owned(),
            Some(json!({ "url": "http://127.0.0.1:1" })),
        ),
    ];
    let expect_all = |token: String, status: u16| {
        let app = &app;
        let routes = own_routes.clone();
        async move {
            for (method, path, body) in routes {
                let answer = call(app, &token, method.clone(), &path, body.as_ref()).await;
                assert_eq!(
                    answer.status.as_u16(),
                    status,
                    "{method} {path}: {}",
                    answer.text
                );
            }
        }
    };
    expect_all(first.clone(), 200).await;
    // A workspace token is no org token: it lists no workspace, no org, and
    // sees no volume or audit event (an empty list there is no leak).
    for path in ["/workspaces", "/orgs", "/volumes", "/audit"] {
        let answer = call(&app, &first, Method::GET, path, None).await;
        assert!(
            matches!(answer.status.as_u16(), 403 | 404) || answer.body == json!([]),
            "GET {path} with a workspace token: {} {}",
            answer.status,
            answer.text
        );
    }

    call(
        &app,
        &org_token,
        Method::POST,
        &format!("/workspaces/{id}/restart"),
        None,
    )
    .await
    .expect_status(200);
    app.wait_online(&id).await;
    wait_for_pid_other_than(&volume, first_pid).await;
    let second = read_lines(&volume.join("token")).join("");
    assert_ne!(second, first, "each start gets a new token");
    expect_all(first.clone(), 401).await;
    expect_all(second.clone(), 200).await;

    let deleted = app
        .send(
            app.with_token(Method::DELETE, &format!("/workspaces/{id}"), &org_token)
                .header("X-Confirm-Name", "rotating"),
        )
        .await;
    deleted.expect_status(200);
    expect_all(second, 401).await;
    expect_all(first, 401).await;
}
