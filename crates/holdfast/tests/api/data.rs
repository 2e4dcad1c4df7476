//! `GET /workspaces/:id/data`: the volume record behind a workspace.

use crate::helpers::{
    TestApp, id_of, wait_for_pid, workspace_body, workspace_body_with_persistence,
};

#[tokio::test]
async fn data_of_a_persist_workspace_is_its_active_volume() {
    let app = TestApp::spawn().await;
    let ws = app.create_online_workspace(&workspace_body("vol")).await;
    let id = id_of(&ws);
    wait_for_pid(&app.volume_dir(&id)).await;

    let record = app.workspace_data(&id).await.expect_status(200);
    assert!(record["id"].is_string(), "{record}");
    assert_eq!(record["workspace_id"], id.as_str(), "{record}");
    assert_eq!(record["state"], "active", "{record}");
    assert!(record["bytes"].is_u64(), "{record}");
    assert!(record["retain_until"].is_null(), "{record}");
    assert!(record["erase_after"].is_null(), "{record}");
    assert!(record["history"].is_array(), "{record}");
}

#[tokio::test]
async fn data_after_a_delete_without_erase_is_retained_with_history() {
    let app = TestApp::spawn().await;
    let ws = app.create_online_workspace(&workspace_body("kept")).await;
    let id = id_of(&ws);
    let before = app.workspace_data(&id).await.expect_status(200);
    let history_before = before["history"].as_array().map_or(0, Vec::len);

    app.delete_workspace(&id)
        .confirm_name("kept")
        .send()
        .await
        .expect_status(200);

    let record = app.workspace_data(&id).await.expect_status(200);
    assert_eq!(
        record["id"], before["id"],
        "the same volume, kept: {record}"
    );
    assert_eq!(record["state"], "retained", "{record}");
    assert!(record["retain_until"].is_string(), "{record}");
    let history = record["history"].as_array().expect("history is an array");
    assert!(
        history.len() > history_before,
        "the retention must be recorded in the history: {record}"
    );
}

#[tokio::test]
async fn data_of_an_ephemeral_workspace_is_none() {
    let app = TestApp::spawn().await;
    let ws = app
        .create_online_workspace(&workspace_body_with_persistence("fleeting", "ephemeral"))
        .await;
    let record = app.workspace_data(&id_of(&ws)).await.expect_status(200);
    assert_eq!(record["state"], "none", "{record}");
    assert_eq!(ws["data"]["state"], "none", "{ws}");
}
