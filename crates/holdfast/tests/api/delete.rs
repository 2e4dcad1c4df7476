//! `DELETE /workspaces/:id` (SPEC §5): the order of its checks, the name
//! confirmation, cascades, and what happens to processes and data.

use crate::helpers::{
    TestApp, child_body, id_of, process_is_running, read_lines, wait_for_pid, wait_process_gone,
    workspace_body,
};
use serde_json::Value;

/// Creates a workspace from `body`, waits for it to be online and for its
/// process to have written its pid; returns the workspace and that pid.
async fn running_workspace(app: &TestApp, body: &Value) -> (Value, u32) {
    let ws = app.create_online_workspace(body).await;
    let pid = wait_for_pid(&app.volume_dir(&id_of(&ws))).await;
    assert!(
        process_is_running(pid),
        "workspace process {pid} should be running"
    );
    (ws, pid)
}

#[tokio::test]
async fn delete_with_a_non_uuid_id_is_400_before_anything_else() {
    let app = TestApp::spawn().await;
    app.delete_workspace("not-a-uuid")
        .send()
        .await
        .expect_error(400, "invalid_id");
    app.delete_workspace("not-a-uuid")
        .confirm_name("not-a-uuid")
        .confirm_children()
        .send()
        .await
        .expect_error(400, "invalid_id");
}

#[tokio::test]
async fn delete_of_an_unknown_workspace_is_404_even_without_confirmation() {
    let app = TestApp::spawn().await;
    let unknown = uuid::Uuid::new_v4().to_string();
    app.delete_workspace(&unknown)
        .send()
        .await
        .expect_error(404, "not_found");
    app.delete_workspace(&unknown)
        .confirm_name("anything")
        .send()
        .await
        .expect_error(404, "not_found");
}

#[tokio::test]
async fn delete_of_a_removed_workspace_is_410_even_with_a_wrong_name() {
    let app = TestApp::spawn().await;
    let (ws, _) = running_workspace(&app, &workspace_body("gone")).await;
    let id = id_of(&ws);
    app.delete_workspace(&id)
        .confirm_name("gone")
        .send()
        .await
        .expect_status(200);

    app.delete_workspace(&id)
        .confirm_name("gone")
        .send()
        .await
        .expect_error(410, "workspace_removed");
    app.delete_workspace(&id)
        .confirm_name("Gone")
        .send()
        .await
        .expect_error(410, "workspace_removed");
    app.delete_workspace(&id)
        .send()
        .await
        .expect_error(410, "workspace_removed");
}

#[tokio::test]
async fn delete_without_the_exact_name_is_400_and_removes_nothing() {
    let app = TestApp::spawn().await;
    let (ws, pid) = running_workspace(&app, &workspace_body("Precious")).await;
    let id = id_of(&ws);

    let missing = app
        .delete_workspace(&id)
        .send()
        .await
        .expect_error(400, "destructive_action_requires_confirmation");
    assert_eq!(missing["workspace_name"], "Precious", "{missing}");
    assert_eq!(missing["child_count"], 0, "{missing}");

    // HTTP parsers strip a plain trailing space from header values, so the
    // "trailing space" near miss is sent as a trailing no-break space, which
    // survives the wire (and which a careless `trim()` would also strip).
    let near_misses: [&[u8]; 6] = [
        b"precious",
        b"PRECIOUS",
        b"Preciou",
        b"Precious.",
        b"Precious\xc2\xa0",
        b"",
    ];
    for name in near_misses {
        let body = app
            .delete_workspace(&id)
            .confirm_name_bytes(name)
            .send()
            .await
            .expect_error(400, "destructive_action_requires_confirmation");
        assert_eq!(body["workspace_name"], "Precious", "{body}");
    }

    let after = app.workspace(&id).await;
    assert_eq!(after["status"], "online", "{after}");
    assert_eq!(after["instance_id"], ws["instance_id"]);
    assert!(
        process_is_running(pid),
        "a refused delete must not stop the process"
    );
}

#[tokio::test]
async fn delete_of_a_parent_with_live_children_needs_confirm_true() {
    let app = TestApp::spawn().await;
    let (parent, parent_pid) = running_workspace(&app, &workspace_body("parent")).await;
    let parent_id = id_of(&parent);
    let (child, child_pid) = running_workspace(&app, &child_body("child", &parent_id)).await;
    let child_id = id_of(&child);
    assert_eq!(child["parent_id"], parent_id.as_str());

    let conflict = app
        .delete_workspace(&parent_id)
        .confirm_name("parent")
        .send()
        .await
        .expect_error(409, "confirmation_required");
    assert_eq!(conflict["children_count"], 1, "{conflict}");
    let children = conflict["children"]
        .as_array()
        .unwrap_or_else(|| panic!("`children` must be an array: {conflict}"));
    assert_eq!(children.len(), 1, "{conflict}");
    assert!(
        children[0].to_string().contains(&child_id),
        "the child {child_id} must be listed: {conflict}"
    );

    for id in [&parent_id, &child_id] {
        assert_eq!(app.workspace(id).await["status"], "online");
    }
    assert!(process_is_running(parent_pid));
    assert!(process_is_running(child_pid));
}

#[tokio::test]
async fn delete_of_a_parent_with_a_wrong_name_is_400_not_409() {
    let app = TestApp::spawn().await;
    let (parent, _) = running_workspace(&app, &workspace_body("parent")).await;
    let parent_id = id_of(&parent);
    running_workspace(&app, &child_body("child", &parent_id)).await;

    let body = app
        .delete_workspace(&parent_id)
        .confirm_name("child")
        .send()
        .await
        .expect_error(400, "destructive_action_requires_confirmation");
    assert_eq!(body["workspace_name"], "parent", "{body}");
    assert_eq!(body["child_count"], 1, "{body}");

    let body = app
        .delete_workspace(&parent_id)
        .confirm_name("Parent")
        .confirm_children()
        .send()
        .await
        .expect_error(400, "destructive_action_requires_confirmation");
    assert_eq!(body["child_count"], 1, "{body}");
    assert_eq!(app.list_workspaces().await.len(), 2);
}

#[tokio::test]
async fn delete_without_erase_keeps_the_files_and_stops_the_process() {
    let app = TestApp::spawn().await;
    let (ws, pid) = running_workspace(&app, &workspace_body("retiring")).await;
    let id = id_of(&ws);
    let volume = app.volume_dir(&id);
    std::fs::write(volume.join("memory.md"), "remember me").expect("plant a file");

    let deleted = app
        .delete_workspace(&id)
        .confirm_name("retiring")
        .send()
        .await
        .expect_status(200);
    assert_eq!(deleted["status"], "removed", "{deleted}");
    assert_eq!(deleted["cascade_deleted"], 1, "{deleted}");
    assert_eq!(deleted["data"], "retained", "{deleted}");
    assert!(deleted["restore_until"].is_string(), "{deleted}");

    wait_process_gone(pid).await;
    assert_eq!(read_lines(&volume.join("data.txt")), ["started"]);
    assert_eq!(
        std::fs::read_to_string(volume.join("memory.md")).expect("retained file"),
        "remember me"
    );

    let after = app.workspace(&id).await;
    assert_eq!(after["status"], "removed", "{after}");
    assert!(after["removed_at"].is_string(), "{after}");
    assert_eq!(after["data"]["state"], "retained", "{after}");
    assert!(after["data"]["retain_until"].is_string(), "{after}");

    assert!(
        app.list_workspaces().await.is_empty(),
        "removed workspaces are hidden by default"
    );
    let all = app.list_workspaces_including_removed().await;
    assert_eq!(all.len(), 1);
    assert_eq!(all[0]["id"], id.as_str());
    assert_eq!(all[0]["status"], "removed");

    app.restart_workspace(&id)
        .await
        .expect_error(404, "not_found");
}

#[tokio::test]
async fn cascade_delete_counts_every_workspace_removed() {
    let app = TestApp::spawn().await;
    let (root, root_pid) = running_workspace(&app, &workspace_body("root")).await;
    let root_id = id_of(&root);
    let (child, child_pid) = running_workspace(&app, &child_body("child", &root_id)).await;
    let child_id = id_of(&child);
    let (grandchild, grandchild_pid) =
        running_workspace(&app, &child_body("grandchild", &child_id)).await;
    let grandchild_id = id_of(&grandchild);
    let (bystander, bystander_pid) = running_workspace(&app, &workspace_body("bystander")).await;

    let deleted = app
        .delete_workspace(&root_id)
        .confirm_name("root")
        .confirm_children()
        .send()
        .await
        .expect_status(200);
    assert_eq!(deleted["status"], "removed", "{deleted}");
    assert_eq!(deleted["cascade_deleted"], 3, "{deleted}");
    assert_eq!(deleted["data"], "retained", "{deleted}");

    for pid in [root_pid, child_pid, grandchild_pid] {
        wait_process_gone(pid).await;
    }
    for id in [&root_id, &child_id, &grandchild_id] {
        let ws = app.workspace(id).await;
        assert_eq!(ws["status"], "removed", "{ws}");
        assert_eq!(ws["data"]["state"], "retained", "{ws}");
        assert_eq!(
            read_lines(&app.volume_dir(id).join("data.txt")),
            ["started"]
        );
    }

    let live = app.list_workspaces().await;
    assert_eq!(live.len(), 1, "only the bystander is left: {live:?}");
    assert_eq!(live[0]["id"], id_of(&bystander).as_str());
    assert_eq!(live[0]["status"], "online");
    assert!(process_is_running(bystander_pid));
}

#[tokio::test]
async fn delete_of_a_middle_workspace_removes_only_its_subtree() {
    let app = TestApp::spawn().await;
    let (root, root_pid) = running_workspace(&app, &workspace_body("root")).await;
    let root_id = id_of(&root);
    let (child, _) = running_workspace(&app, &child_body("child", &root_id)).await;
    let child_id = id_of(&child);
    let (grandchild, _) = running_workspace(&app, &child_body("grandchild", &child_id)).await;

    let conflict = app
        .delete_workspace(&child_id)
        .confirm_name("child")
        .send()
        .await
        .expect_error(409, "confirmation_required");
    assert_eq!(conflict["children_count"], 1, "{conflict}");

    let deleted = app
        .delete_workspace(&child_id)
        .confirm_name("child")
        .confirm_children()
        .send()
        .await
        .expect_status(200);
    assert_eq!(deleted["cascade_deleted"], 2, "{deleted}");
    assert_eq!(
        app.workspace(&id_of(&grandchild)).await["status"],
        "removed"
    );
    assert_eq!(app.workspace(&root_id).await["status"], "online");
    assert!(process_is_running(root_pid));

    // The root has no live children any more, so it needs no confirm=true.
    let deleted = app
        .delete_workspace(&root_id)
        .confirm_name("root")
        .send()
        .await
        .expect_status(200);
    assert_eq!(deleted["cascade_deleted"], 1, "{deleted}");
}

#[tokio::test]
async fn delete_with_erase_data_marks_the_whole_cascade_erase_pending() {
    let app = TestApp::spawn().await;
    let (parent, parent_pid) = running_workspace(&app, &workspace_body("doomed")).await;
    let parent_id = id_of(&parent);
    let (child, child_pid) = running_workspace(&app, &child_body("doomed-child", &parent_id)).await;
    let child_id = id_of(&child);

    let deleted = app
        .delete_workspace(&parent_id)
        .confirm_name("doomed")
        .confirm_children()
        .erase_data()
        .send()
        .await
        .expect_status(200);
    assert_eq!(deleted["status"], "removed", "{deleted}");
    assert_eq!(deleted["cascade_deleted"], 2, "{deleted}");
    assert_eq!(deleted["data"], "erase_pending", "{deleted}");
    assert!(deleted["restore_until"].is_string(), "{deleted}");

    wait_process_gone(parent_pid).await;
    wait_process_gone(child_pid).await;
    for id in [&parent_id, &child_id] {
        let ws = app.workspace(id).await;
        assert_eq!(ws["status"], "removed", "{ws}");
        assert_eq!(ws["data"]["state"], "erase_pending", "{ws}");
        assert!(ws["data"]["erase_after"].is_string(), "{ws}");
        // The files stay for the erase grace (default 5 minutes).
        assert_eq!(
            read_lines(&app.volume_dir(id).join("data.txt")),
            ["started"]
        );
    }
    let record = app.workspace_data(&parent_id).await.expect_status(200);
    assert_eq!(record["state"], "erase_pending", "{record}");
    assert!(record["erase_after"].is_string(), "{record}");
}
