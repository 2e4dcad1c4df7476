//! Creating, reading, listing and patching workspaces (SPEC §2 and §7).

use crate::helpers::{
    TestApp, child_body, id_of, read_lines, recording_runtime, wait_for_pid, workspace_body,
};
use serde_json::json;

#[tokio::test]
async fn create_answers_201_with_the_whole_workspace() {
    let app = TestApp::spawn().await;
    let body = json!({
        "name": "ada",
        "role": "researcher",
        "tier": 3,
        "runtime": recording_runtime(),
        "env": { "MOOD": "curious" },
    });
    let created = app.create_workspace(&body).await.expect_status(201);
    let id = id_of(&created);
    let uuid = uuid::Uuid::parse_str(&id).expect("id is a UUID");
    assert_eq!(uuid.get_version_num(), 4, "id is a UUID v4");
    assert!(created["org_id"].is_string(), "{created}");
    assert_eq!(created["name"], "ada");
    assert_eq!(created["role"], "researcher");
    assert!(created["parent_id"].is_null(), "{created}");
    assert_eq!(created["tier"], 3);
    assert_eq!(created["runtime"], recording_runtime());
    assert_eq!(created["env"], json!({ "MOOD": "curious" }));
    assert_eq!(created["compute"], json!({}));
    assert!(created["created_at"].is_string(), "{created}");
    assert!(created["updated_at"].is_string(), "{created}");
    assert!(created["removed_at"].is_null(), "{created}");
    assert!(created["data"].is_object(), "{created}");

    let online = app.wait_online(&id).await;
    assert!(online["instance_id"].is_string(), "{online}");
    assert_eq!(online["data"]["mode"], "persist", "{online}");
    assert_eq!(online["data"]["state"], "active", "{online}");
    assert!(online["data"]["bytes"].is_u64(), "{online}");
    assert_eq!(online["name"], "ada");
    assert_eq!(online["created_at"], created["created_at"]);
}

#[tokio::test]
async fn create_with_defaults_uses_tier_2_and_the_builtin_runtime() {
    let app = TestApp::spawn().await;
    let created = app
        .create_workspace(&json!({ "name": "plain" }))
        .await
        .expect_status(201);
    assert_eq!(created["tier"], 2);
    assert_eq!(
        created["runtime"],
        json!({ "template": "holdfast-runtime" })
    );
    assert_eq!(created["env"], json!({}));
    assert_eq!(created["compute"], json!({}));
}

#[tokio::test]
async fn names_are_trimmed() {
    let app = TestApp::spawn().await;
    let ws = app
        .create_online_workspace(&workspace_body("  spaced out  "))
        .await;
    assert_eq!(ws["name"], "spaced out");
}

#[tokio::test]
async fn list_is_a_json_array_of_workspaces() {
    let app = TestApp::spawn().await;
    assert!(app.list_workspaces().await.is_empty());

    let first = app.create_online_workspace(&workspace_body("one")).await;
    let second = app
        .create_online_workspace(&child_body("two", &id_of(&first)))
        .await;
    let listed = app.list_workspaces().await;
    let mut ids: Vec<String> = listed.iter().map(id_of).collect();
    ids.sort();
    let mut expected = vec![id_of(&first), id_of(&second)];
    expected.sort();
    assert_eq!(ids, expected);
    for ws in &listed {
        assert_eq!(ws["status"], "online", "{ws}");
    }
}

#[tokio::test]
async fn get_answers_what_create_stored() {
    let app = TestApp::spawn().await;
    let ws = app.create_online_workspace(&workspace_body("mirror")).await;
    let got = app.workspace(&id_of(&ws)).await;
    for field in [
        "id",
        "org_id",
        "name",
        "tier",
        "runtime",
        "env",
        "compute",
        "created_at",
    ] {
        assert_eq!(got[field], ws[field], "field {field}");
    }
}

#[tokio::test]
async fn patch_changes_fields_and_restart_applies_them() {
    let app = TestApp::spawn().await;
    let ws = app.create_online_workspace(&workspace_body("before")).await;
    let id = id_of(&ws);
    let patched = app
        .patch_workspace(&id, &json!({ "name": "after", "role": "lead", "tier": 1 }))
        .await
        .expect_status(200);
    assert_eq!(patched["id"], id.as_str());
    assert_eq!(patched["name"], "after");
    assert_eq!(patched["role"], "lead");
    assert_eq!(patched["tier"], 1);
    assert_eq!(
        patched["runtime"],
        recording_runtime(),
        "untouched fields stay"
    );

    let restarted = app.restart_workspace(&id).await.expect_status(200);
    assert_ne!(restarted["instance_id"], ws["instance_id"]);
    let online = app.wait_online(&id).await;
    assert_eq!(online["name"], "after");
    assert_eq!(online["tier"], 1);
}

#[tokio::test]
async fn workspaces_created_right_after_startup_are_started_once() {
    // Whatever the server does at start (recovering workspaces of an earlier
    // run) must not start a workspace created meanwhile a second time.
    let app = TestApp::spawn().await;
    let mut created = Vec::new();
    for i in 0..4 {
        let body = workspace_body(&format!("early-{i}"));
        created.push(app.create_workspace(&body).await.expect_status(201));
    }
    for ws in &created {
        let id = id_of(ws);
        let online = app.wait_online(&id).await;
        wait_for_pid(&app.volume_dir(&id)).await;
        assert_eq!(
            online["instance_id"], ws["instance_id"],
            "{id} was started again after its create answered"
        );
    }
    for ws in &created {
        let id = id_of(ws);
        assert_eq!(
            read_lines(&app.volume_dir(&id).join("data.txt")),
            ["started"],
            "{id} must have been started exactly once"
        );
        assert_eq!(app.workspace(&id).await["instance_id"], ws["instance_id"]);
    }
}
