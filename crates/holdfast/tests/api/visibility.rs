//! Visibility is decided in the queries (SPEC §10): an org token's pages of
//! `GET /audit` are full however busy other orgs are, and the lists of
//! workspaces and volumes show each record's data as its own read does.

use crate::helpers::{ADMIN_TOKEN, CpServer, TestApp, id_of, workspace_body};
use reqwest::Method;
use serde_json::{Value, json};

/// An org created by the admin, and a token of it.
async fn org_with_token(app: &TestApp, name: &str) -> (String, String) {
    let org = app
        .post_json("/orgs", &json!({ "name": name }))
        .await
        .expect_status(201);
    let org = id_of(&org);
    let minted = app
        .post_json(&format!("/orgs/{org}/tokens"), &json!({}))
        .await
        .expect_status(201);
    let token = minted["token"]
        .as_str()
        .unwrap_or_else(|| panic!("no token in {minted}"))
        .to_owned();
    (org, token)
}

/// `GET path` with `token`, asserting 200 and a JSON array.
async fn list_as(app: &TestApp, token: &str, path: &str) -> Vec<Value> {
    let answer = app
        .send(app.with_token(Method::GET, path, token))
        .await
        .expect_status(200);
    answer
        .as_array()
        .unwrap_or_else(|| panic!("GET {path}: not an array: {answer}"))
        .clone()
}

/// A workspace created with `token` (a command runtime: cheap and quiet).
async fn create_as(app: &TestApp, token: &str, name: &str) -> String {
    let ws = app
        .send(
            app.with_token(Method::POST, "/workspaces", token)
                .json(&workspace_body(name)),
        )
        .await
        .expect_status(201);
    id_of(&ws)
}

/// `n` PATCHes of `id`'s role with `token`: one `workspace.updated` each.
async fn patch_roles(app: &TestApp, token: &str, id: &str, n: usize, tag: &str) {
    for i in 0..n {
        app.send(
            app.with_token(Method::PATCH, &format!("/workspaces/{id}"), token)
                .json(&json!({ "role": format!("{tag}-{i}") })),
        )
        .await
        .expect_status(200);
    }
}

fn event_ids(events: &[Value]) -> Vec<String> {
    events
        .iter()
        .map(|e| e["id"].as_str().unwrap_or_default().to_owned())
        .collect()
}

#[tokio::test]
async fn an_orgs_audit_page_is_full_while_another_org_floods_the_log() {
    let app = TestApp::spawn_with(&["--sweep-interval", "1h"]).await;
    let (_, quiet_token) = org_with_token(&app, "quiet").await;
    let (_, busy_token) = org_with_token(&app, "busy").await;
    let quiet = create_as(&app, &quiet_token, "quiet-one").await;
    patch_roles(&app, &quiet_token, &quiet, 6, "quiet").await;
    // Then the busy org writes many more events than a page holds, so the
    // newest events of the whole log are all its own.
    let busy = create_as(&app, &busy_token, "busy-one").await;
    patch_roles(&app, &busy_token, &busy, 40, "busy").await;

    // Positive control: the newest events of the log are the busy org's, so
    // a page filtered after the LIMIT would have nothing of the quiet one.
    let newest = list_as(&app, ADMIN_TOKEN, "/audit?limit=5").await;
    assert_eq!(newest.len(), 5, "{newest:?}");
    assert!(
        newest.iter().all(|e| e["workspace_id"] == busy.as_str()),
        "the newest events are the busy org's: {newest:?}"
    );

    // Everything the quiet org may see, newest first (a page larger than
    // the whole log), and its page of 5: the 5 newest of those.
    let all_quiet = list_as(&app, &quiet_token, "/audit?limit=10000").await;
    assert!(all_quiet.len() >= 7, "created + 6 updates: {all_quiet:?}");
    assert!(
        all_quiet
            .iter()
            .all(|e| e["workspace_id"] == quiet.as_str()),
        "only its own events: {all_quiet:?}"
    );
    let page = list_as(&app, &quiet_token, "/audit?limit=5").await;
    assert_eq!(
        event_ids(&page),
        event_ids(&all_quiet[..5]),
        "a full page of the quiet org's newest events: {page:?}"
    );
    assert_eq!(page[0]["action"], "workspace.updated", "{page:?}");
    assert_eq!(
        page[0]["detail"], all_quiet[0]["detail"],
        "the same events, in the same order"
    );

    // The busy org's page is its own too, and full.
    let busy_page = list_as(&app, &busy_token, "/audit?limit=5").await;
    assert_eq!(event_ids(&busy_page), event_ids(&newest), "{busy_page:?}");

    // And a page of one workspace stays scoped: the quiet org asking for
    // the busy org's workspace is 404, for its own one a full page.
    app.send(app.with_token(
        Method::GET,
        &format!("/audit?workspace_id={busy}&limit=5"),
        &quiet_token,
    ))
    .await
    .expect_status(404);
    let own = list_as(
        &app,
        &quiet_token,
        &format!("/audit?workspace_id={quiet}&limit=5"),
    )
    .await;
    assert_eq!(event_ids(&own), event_ids(&page));
}

#[tokio::test]
async fn a_removed_workspaces_events_stay_its_orgs_only() {
    // Events written before and after a removal are its org's, and nobody
    // else's.
    let app = TestApp::spawn_with(&["--sweep-interval", "1h"]).await;
    let (_, red_token) = org_with_token(&app, "red").await;
    let (_, blue_token) = org_with_token(&app, "blue").await;
    let red = create_as(&app, &red_token, "red-gone").await;
    app.wait_online(&red).await;
    app.send(
        app.with_token(Method::DELETE, &format!("/workspaces/{red}"), &red_token)
            .header("X-Confirm-Name", "red-gone"),
    )
    .await
    .expect_status(200);
    let red_events = list_as(&app, &red_token, "/audit").await;
    let actions: Vec<&str> = red_events
        .iter()
        .filter_map(|e| e["action"].as_str())
        .collect();
    assert!(actions.contains(&"workspace.created"), "{actions:?}");
    assert!(actions.contains(&"workspace.deleted"), "{actions:?}");
    assert!(
        list_as(&app, &blue_token, "/audit").await.is_empty(),
        "blue has no events"
    );
}

#[tokio::test]
async fn listed_workspaces_show_the_same_data_as_each_ones_own_read() {
    let app = TestApp::spawn_with(&["--sweep-interval", "1h"]).await;
    let (_, token) = org_with_token(&app, "lister").await;
    let persist = app
        .send(app.with_token(Method::POST, "/workspaces", &token).json(
            &json!({ "name": "keeps", "runtime": {"command": ["sleep", "600"]},
                               "compute": {"data_persistence": "persist"} }),
        ))
        .await
        .expect_status(201);
    let ephemeral = app
        .send(app.with_token(Method::POST, "/workspaces", &token).json(
            &json!({ "name": "forgets", "runtime": {"command": ["sleep", "600"]},
                               "compute": {"data_persistence": "ephemeral"} }),
        ))
        .await
        .expect_status(201);
    let removed = create_as(&app, &token, "gone").await;
    app.wait_online(&removed).await;
    app.send(
        app.with_token(Method::DELETE, &format!("/workspaces/{removed}"), &token)
            .header("X-Confirm-Name", "gone"),
    )
    .await
    .expect_status(200);
    // Another org's workspace, which the list must not show.
    let other = app.create_workspace(&workspace_body("other")).await;
    let other = id_of(&other.expect_status(201));

    let listed = list_as(&app, &token, "/workspaces?include_removed=true").await;
    let mut ids: Vec<String> = listed.iter().map(id_of).collect();
    ids.sort();
    let mut expected = vec![id_of(&persist), id_of(&ephemeral), removed.clone()];
    expected.sort();
    assert_eq!(ids, expected, "its own three, not {other}");
    for item in &listed {
        let id = id_of(item);
        let own = app
            .send(app.with_token(Method::GET, &format!("/workspaces/{id}"), &token))
            .await
            .expect_status(200);
        assert_eq!(item["data"], own["data"], "data of {id} in the list");
    }
    let by_id = |id: &str| {
        listed
            .iter()
            .find(|w| w["id"] == id)
            .unwrap_or_else(|| panic!("{id} listed"))
    };
    assert_eq!(by_id(&id_of(&persist))["data"]["state"], "active");
    assert_eq!(by_id(&id_of(&ephemeral))["data"]["state"], "none");
    assert_eq!(by_id(&removed)["data"]["state"], "retained");
}

#[tokio::test]
async fn only_a_live_token_is_accepted_whatever_its_shape() {
    // Wrong bearers of every shape are 401 (and never another answer), a
    // minted org token works before and after them, and an unknown token
    // of the minted shape stays refused after the cache has seen it.
    let app = TestApp::spawn_with(&["--sweep-interval", "1h"]).await;
    let (_, token) = org_with_token(&app, "shapes").await;
    let hex64 = "ab".repeat(32);
    let wrong = [
        "nonsense".to_owned(),
        format!("{ADMIN_TOKEN}x"),
        format!("hfo_{hex64}"),
        format!("hfw_{hex64}"),
        format!("hfo_{}", "AB".repeat(32)),
        format!("hfs_{hex64}"),
        format!("{token}0"),
    ];
    assert_eq!(list_as(&app, &token, "/workspaces").await.len(), 0);
    for bad in &wrong {
        for _ in 0..2 {
            app.send(app.with_token(Method::GET, "/workspaces", bad))
                .await
                .expect_error(401, "unauthorized");
        }
    }
    let id = create_as(&app, &token, "still-works").await;
    let listed = list_as(&app, &token, "/workspaces").await;
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(id_of(&listed[0]), id);
}

#[tokio::test]
async fn the_list_answers_the_last_known_data_while_the_control_plane_is_down() {
    // `GET /workspaces` reads every volume in one call to the control
    // plane; when that call cannot be made, it answers as a single read
    // does: what this server last saw, marked stale.
    let (mut cp, tokens) = CpServer::start_with_tenants(&["platform"], &[]);
    let app = TestApp::spawn_on_cp(&cp, &tokens[0], &[]).await;
    let id = id_of(&app.create_online_workspace(&workspace_body("listed")).await);
    let fresh = app.list_workspaces().await;
    assert_eq!(fresh.len(), 1, "{fresh:?}");
    assert_eq!(fresh[0]["data"]["state"], "active", "{fresh:?}");
    assert!(fresh[0]["data"].get("stale").is_none(), "{fresh:?}");

    cp.kill();

    let listed = app.list_workspaces().await;
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(id_of(&listed[0]), id);
    assert_eq!(listed[0]["data"]["state"], "active", "{listed:?}");
    assert_eq!(listed[0]["data"]["stale"], true, "{listed:?}");
    assert!(listed[0]["data"]["as_of"].is_string(), "{listed:?}");
}
