//! Bad input (SPEC §3 and §11): rejected requests answer 400/413 with a code
//! naming the problem, and change nothing.

use crate::helpers::{
    TestApp, dir_entries, id_of, recording_runtime, workspace_body, workspace_body_with_persistence,
};
use serde_json::{Value, json};

/// Every near miss of `persist`/`ephemeral` the contract names.
fn bad_persistence_values() -> Vec<Value> {
    vec![
        json!("Persist"),
        json!("persistent"),
        json!("off"),
        json!("none"),
        json!("true"),
        json!(true),
        json!(1),
        json!("EPHEMERAL"),
        json!("ephemeral "),
    ]
}

/// Asserts that the server holds no workspace and no volume directory.
async fn assert_nothing_created(app: &TestApp) {
    assert_eq!(app.list_workspaces().await, Vec::<Value>::new());
    assert_eq!(
        app.list_workspaces_including_removed().await,
        Vec::<Value>::new()
    );
    assert_eq!(dir_entries(&app.volumes_root()), Vec::<String>::new());
}

#[tokio::test]
async fn bad_data_persistence_on_create_is_400_and_creates_nothing() {
    let app = TestApp::spawn().await;
    for value in bad_persistence_values() {
        let body = json!({
            "name": "bad-mode",
            "runtime": recording_runtime(),
            "compute": { "data_persistence": value },
        });
        let err = app.create_workspace(&body).await.expect_error_mentioning(
            400,
            "invalid_field",
            "data_persistence",
        );
        let error = err["error"].as_str().unwrap();
        assert!(
            error.contains("persist") && error.contains("ephemeral"),
            "the error for {value} should name the allowed values: {error}"
        );
    }
    assert_nothing_created(&app).await;
}

#[tokio::test]
async fn bad_data_persistence_on_patch_is_400_and_changes_nothing() {
    let app = TestApp::spawn().await;
    let ws = app
        .create_online_workspace(&workspace_body_with_persistence("stable", "persist"))
        .await;
    let id = id_of(&ws);
    for value in bad_persistence_values() {
        app.patch_workspace(&id, &json!({ "compute": { "data_persistence": value } }))
            .await
            .expect_error_mentioning(400, "invalid_field", "data_persistence");
        // A valid field beside the bad one must not be half-applied either.
        app.patch_workspace(
            &id,
            &json!({ "name": "renamed", "compute": { "data_persistence": value } }),
        )
        .await
        .expect_error_mentioning(400, "invalid_field", "data_persistence");
    }
    let after = app.workspace(&id).await;
    assert_eq!(after["compute"], json!({ "data_persistence": "persist" }));
    assert_eq!(after["name"], "stable");
    assert_eq!(after["data"]["mode"], "persist");
    assert_eq!(
        after["updated_at"], ws["updated_at"],
        "a rejected PATCH changes nothing"
    );
    assert_eq!(
        after["instance_id"], ws["instance_id"],
        "a rejected PATCH restarts nothing"
    );
}

#[tokio::test]
async fn patch_compute_replaces_the_whole_object_and_empty_means_auto() {
    let app = TestApp::spawn().await;
    let ws = app
        .create_online_workspace(&json!({
            "name": "sized",
            "runtime": recording_runtime(),
            "compute": { "data_persistence": "persist", "volume": { "size_gb": 5 } },
        }))
        .await;
    let id = id_of(&ws);
    assert_eq!(
        ws["compute"],
        json!({ "data_persistence": "persist", "volume": { "size_gb": 5 } })
    );

    let patched = app
        .patch_workspace(&id, &json!({ "compute": { "volume": { "size_gb": 3 } } }))
        .await
        .expect_status(200);
    assert_eq!(
        patched["compute"],
        json!({ "volume": { "size_gb": 3 } }),
        "compute is replaced as a whole, not merged"
    );

    let patched = app
        .patch_workspace(&id, &json!({ "compute": {} }))
        .await
        .expect_status(200);
    assert_eq!(patched["compute"], json!({}));
    assert_eq!(app.workspace(&id).await["compute"], json!({}));
}

#[tokio::test]
async fn unknown_top_level_field_is_400_naming_it() {
    let app = TestApp::spawn().await;
    app.create_workspace(&json!({ "name": "a", "bogus": 1 }))
        .await
        .expect_error_mentioning(400, "unknown_field", "bogus");
    assert_nothing_created(&app).await;

    let ws = app.create_online_workspace(&workspace_body("known")).await;
    app.patch_workspace(&id_of(&ws), &json!({ "name": "b", "bogus": 1 }))
        .await
        .expect_error_mentioning(400, "unknown_field", "bogus");
    assert_eq!(app.workspace(&id_of(&ws)).await["name"], "known");
}

#[tokio::test]
async fn malformed_json_is_400() {
    let app = TestApp::spawn().await;
    for raw in [
        r#"{"name": "x","#,
        "not json",
        r#"{"name": "x"} trailing"#,
        "{'name': 'x'}",
    ] {
        app.create_workspace_raw(raw)
            .await
            .expect_error(400, "malformed_json");
    }
    // An empty body is rejected too (whether read as bad JSON or as a body
    // without the required `name`).
    let empty = app.create_workspace_raw("").await;
    assert_eq!(
        empty.status.as_u16(),
        400,
        "empty body got {}: {}",
        empty.status,
        empty.text
    );
    assert_nothing_created(&app).await;

    let ws = app.create_online_workspace(&workspace_body("solid")).await;
    let request = app
        .authed(
            reqwest::Method::PATCH,
            &format!("/workspaces/{}", id_of(&ws)),
        )
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .body(r#"{"name": "#);
    app.send(request).await.expect_error(400, "malformed_json");
    assert_eq!(app.workspace(&id_of(&ws)).await["name"], "solid");
}

#[tokio::test]
async fn wrong_json_types_are_400() {
    let app = TestApp::spawn().await;
    for body in [
        json!({ "name": 5 }),
        json!({ "name": "typed", "env": { "A": 1 } }),
        json!({ "name": "typed", "runtime": "sleep" }),
        json!({ "name": "typed", "compute": "persist" }),
        json!(["not", "an", "object"]),
    ] {
        let response = app.create_workspace(&body).await;
        assert_eq!(
            response.status.as_u16(),
            400,
            "{body} got {}: {}",
            response.status,
            response.text
        );
        assert!(
            response.body["code"].is_string(),
            "{body} got {}",
            response.text
        );
    }
    assert_nothing_created(&app).await;
}

#[tokio::test]
async fn empty_or_control_character_names_are_400() {
    let app = TestApp::spawn().await;
    for name in ["", "   ", "a\u{7}b", "line\nbreak", "tab\there", "nul\u{0}"] {
        app.create_workspace(&workspace_body(name))
            .await
            .expect_error_mentioning(400, "invalid_field", "name");
    }
    app.create_workspace(&workspace_body(&"x".repeat(65)))
        .await
        .expect_error_mentioning(400, "invalid_field", "name");
    assert_nothing_created(&app).await;

    let ws = app.create_online_workspace(&workspace_body("named")).await;
    app.patch_workspace(&id_of(&ws), &json!({ "name": "  " }))
        .await
        .expect_error_mentioning(400, "invalid_field", "name");
    assert_eq!(app.workspace(&id_of(&ws)).await["name"], "named");
}

#[tokio::test]
async fn tier_out_of_range_is_400() {
    let app = TestApp::spawn().await;
    for tier in [json!(0), json!(5), json!("2"), json!(-1), json!(2.5)] {
        let body = json!({ "name": "tiered", "tier": tier, "runtime": recording_runtime() });
        app.create_workspace(&body)
            .await
            .expect_error_mentioning(400, "invalid_field", "tier");
    }
    assert_nothing_created(&app).await;

    let ws = app
        .create_online_workspace(
            &json!({ "name": "tiered", "tier": 4, "runtime": recording_runtime() }),
        )
        .await;
    assert_eq!(ws["tier"], 4);
    let default = app
        .create_online_workspace(&workspace_body("default-tier"))
        .await;
    assert_eq!(default["tier"], 2, "tier defaults to 2");
    app.patch_workspace(&id_of(&ws), &json!({ "tier": 0 }))
        .await
        .expect_error_mentioning(400, "invalid_field", "tier");
    assert_eq!(app.workspace(&id_of(&ws)).await["tier"], 4);
}

#[tokio::test]
async fn body_over_one_mib_is_413() {
    let app = TestApp::spawn().await;
    let body = json!({ "name": "big", "role": "r".repeat(1024 * 1024 + 1024) });
    let response = app.create_workspace_raw(body.to_string()).await;
    assert_eq!(
        response.status.as_u16(),
        413,
        "got {}: {}",
        response.status,
        response.text
    );
    assert_nothing_created(&app).await;
}

#[tokio::test]
async fn requests_without_the_admin_token_are_401() {
    let app = TestApp::spawn().await;
    let ws = app
        .create_online_workspace(&workspace_body("guarded"))
        .await;
    let id = id_of(&ws);
    let paths = [
        ("GET", "/workspaces".to_owned()),
        ("POST", "/workspaces".to_owned()),
        ("GET", format!("/workspaces/{id}")),
        ("PATCH", format!("/workspaces/{id}")),
        ("DELETE", format!("/workspaces/{id}")),
        ("POST", format!("/workspaces/{id}/restart")),
        ("GET", format!("/workspaces/{id}/data")),
    ];
    for (method, path) in &paths {
        let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let url = app.url(path);
        let body = json!({ "name": "intruder" });
        let attempts = [
            app.client.request(method.clone(), &url).json(&body),
            app.client
                .request(method.clone(), &url)
                .bearer_auth("wrong-token")
                .json(&body),
            app.client
                .request(method.clone(), &url)
                .bearer_auth(format!("{}x", crate::helpers::ADMIN_TOKEN))
                .json(&body),
            app.client
                .request(method.clone(), &url)
                .basic_auth("admin", Some(crate::helpers::ADMIN_TOKEN))
                .json(&body),
        ];
        for attempt in attempts {
            app.send(attempt.header("X-Confirm-Name", "guarded"))
                .await
                .expect_error(401, "unauthorized");
        }
    }
    // Nothing the unauthenticated requests asked for happened.
    let after = app.workspace(&id).await;
    assert_eq!(after["status"], "online");
    assert_eq!(after["instance_id"], ws["instance_id"]);
    assert_eq!(app.list_workspaces().await.len(), 1);
}

#[tokio::test]
async fn bad_path_ids_are_400_and_unknown_ids_404() {
    let app = TestApp::spawn().await;
    app.get_workspace("not-a-uuid")
        .await
        .expect_error(400, "invalid_id");
    app.patch_workspace("12345", &json!({ "name": "x" }))
        .await
        .expect_error(400, "invalid_id");
    app.restart_workspace("not-a-uuid")
        .await
        .expect_error(400, "invalid_id");
    app.workspace_data("not-a-uuid")
        .await
        .expect_error(400, "invalid_id");

    let unknown = uuid::Uuid::new_v4().to_string();
    app.get_workspace(&unknown)
        .await
        .expect_error(404, "not_found");
    app.patch_workspace(&unknown, &json!({ "name": "x" }))
        .await
        .expect_error(404, "not_found");
    app.restart_workspace(&unknown)
        .await
        .expect_error(404, "not_found");
    app.workspace_data(&unknown)
        .await
        .expect_error(404, "not_found");
}
