//! Data persistence (SPEC §3): persist volumes survive restart and config
//! changes, ephemeral data dirs start empty, and auto resolves to the server's
//! `--default-data-persistence`.

use crate::helpers::{
    RECORDING_SCRIPT, TestApp, id_of, read_lines, skip_on_container_backend, wait_for_lines,
    wait_for_pid, wait_for_pid_other_than, wait_path_gone, wait_process_gone, workspace_body,
    workspace_body_with_persistence,
};
use serde_json::json;

#[tokio::test]
async fn persist_data_survives_restart() {
    let app = TestApp::spawn().await;
    let ws = app
        .create_online_workspace(&workspace_body_with_persistence("keeper", "persist"))
        .await;
    let id = id_of(&ws);
    assert_eq!(ws["data"]["mode"], "persist", "{ws}");
    let volume = app.volume_dir(&id);
    let first_pid = wait_for_pid(&volume).await;
    assert_eq!(read_lines(&volume.join("data.txt")), ["started"]);

    let restarted = app.restart_workspace(&id).await.expect_status(200);
    assert_eq!(restarted["id"], id.as_str());
    assert_ne!(
        restarted["instance_id"], ws["instance_id"],
        "a restart must run a new instance"
    );
    app.wait_online(&id).await;
    let second_pid = wait_for_pid_other_than(&volume, first_pid).await;
    wait_process_gone(first_pid).await;

    assert_ne!(first_pid, second_pid);
    assert_eq!(
        wait_for_lines(&volume.join("data.txt"), 2).await,
        ["started", "started"],
        "the second start must see the file written by the first"
    );
    let after = app.workspace(&id).await;
    assert_eq!(after["data"]["mode"], "persist", "{after}");
    assert_eq!(after["data"]["state"], "active", "{after}");
}

#[tokio::test]
async fn persist_data_survives_patch_of_env_and_runtime_then_restart() {
    let app = TestApp::spawn().await;
    let ws = app
        .create_online_workspace(&workspace_body("patched"))
        .await;
    let id = id_of(&ws);
    let volume = app.volume_dir(&id);
    let first_pid = wait_for_pid(&volume).await;

    // A different runtime that records the env it was started with.
    let new_runtime = json!({
        "command": ["sh", "-c", "echo \"patched $GREETING\" >> data.txt; echo $$ > pid; exec sleep 600"]
    });
    let patched = app
        .patch_workspace(
            &id,
            &json!({ "env": { "GREETING": "hello" }, "runtime": new_runtime }),
        )
        .await
        .expect_status(200);
    assert_eq!(patched["env"], json!({ "GREETING": "hello" }));
    assert_eq!(patched["runtime"], new_runtime);

    // PATCH applies at the next start: the running process is untouched.
    assert_eq!(read_lines(&volume.join("data.txt")), ["started"]);

    app.restart_workspace(&id).await.expect_status(200);
    app.wait_online(&id).await;
    wait_for_pid_other_than(&volume, first_pid).await;
    assert_eq!(
        read_lines(&volume.join("data.txt")),
        ["started", "patched hello"],
        "the patched runtime must start on the same volume, with the new env"
    );
    let after = app.workspace(&id).await;
    assert_eq!(after["env"], json!({ "GREETING": "hello" }));
    assert_eq!(after["runtime"], new_runtime);
}

#[tokio::test]
async fn ephemeral_data_dir_is_empty_at_every_start_and_removed_at_delete() {
    let app = TestApp::spawn().await;
    let ws = app
        .create_online_workspace(&workspace_body_with_persistence("scratchy", "ephemeral"))
        .await;
    let id = id_of(&ws);
    assert_eq!(ws["data"]["mode"], "ephemeral", "{ws}");
    assert_eq!(ws["compute"], json!({ "data_persistence": "ephemeral" }));

    let scratch = app.scratch_dir(&id);
    let first_pid = wait_for_pid(&scratch).await;
    assert_eq!(read_lines(&scratch.join("data.txt")), ["started"]);
    assert!(
        !app.volume_dir(&id).exists(),
        "an ephemeral workspace must not get a durable volume"
    );

    app.restart_workspace(&id).await.expect_status(200);
    app.wait_online(&id).await;
    wait_for_pid_other_than(&scratch, first_pid).await;
    assert_eq!(
        read_lines(&scratch.join("data.txt")),
        ["started"],
        "an ephemeral start must begin with an empty data dir"
    );

    let deleted = app
        .delete_workspace(&id)
        .confirm_name("scratchy")
        .send()
        .await
        .expect_status(200);
    assert_eq!(deleted["status"], "removed");
    assert_eq!(deleted["data"], "none", "{deleted}");
    wait_path_gone(&scratch).await;
}

#[tokio::test]
async fn auto_resolves_to_persist_on_a_default_server() {
    let app = TestApp::spawn().await;
    let ws = app.create_online_workspace(&workspace_body("auto")).await;
    let id = id_of(&ws);
    assert_eq!(
        ws["compute"],
        json!({}),
        "auto is stored as an absent field"
    );
    assert_eq!(ws["data"]["mode"], "persist", "{ws}");
    wait_for_pid(&app.volume_dir(&id)).await;
    assert!(!app.scratch_dir(&id).exists());
}

#[tokio::test]
async fn empty_string_and_null_data_persistence_mean_auto() {
    let app = TestApp::spawn_with_default_persistence("ephemeral").await;
    for (name, mode) in [("empty", json!("")), ("null", json!(null))] {
        let body = json!({
            "name": name,
            "runtime": crate::helpers::recording_runtime(),
            "compute": { "data_persistence": mode },
        });
        let ws = app.create_online_workspace(&body).await;
        assert_eq!(
            ws["compute"],
            json!({}),
            "{name}: auto is stored as absent: {ws}"
        );
        assert_eq!(ws["data"]["mode"], "ephemeral", "{name}: {ws}");
    }
}

#[tokio::test]
async fn auto_resolves_to_the_server_default_ephemeral() {
    let app = TestApp::spawn_with_default_persistence("ephemeral").await;
    let ws = app
        .create_online_workspace(&workspace_body("auto-eph"))
        .await;
    let id = id_of(&ws);
    assert_eq!(
        ws["compute"],
        json!({}),
        "auto is stored as an absent field"
    );
    assert_eq!(ws["data"]["mode"], "ephemeral", "{ws}");
    let scratch = app.scratch_dir(&id);
    let pid = wait_for_pid(&scratch).await;
    assert!(!app.volume_dir(&id).exists());

    // The policy applies at every start: still ephemeral after a restart.
    app.restart_workspace(&id).await.expect_status(200);
    app.wait_online(&id).await;
    wait_for_pid_other_than(&scratch, pid).await;
    assert_eq!(read_lines(&scratch.join("data.txt")), ["started"]);
    let after = app.workspace(&id).await;
    assert_eq!(after["compute"], json!({}));
    assert_eq!(after["data"]["mode"], "ephemeral", "{after}");
}

#[tokio::test]
async fn explicit_persist_wins_over_an_ephemeral_server_default() {
    let app = TestApp::spawn_with_default_persistence("ephemeral").await;
    let ws = app
        .create_online_workspace(&workspace_body_with_persistence("explicit", "persist"))
        .await;
    let id = id_of(&ws);
    assert_eq!(ws["compute"], json!({ "data_persistence": "persist" }));
    assert_eq!(ws["data"]["mode"], "persist", "{ws}");
    wait_for_pid(&app.volume_dir(&id)).await;
}

#[tokio::test]
async fn process_runs_in_its_data_dir_with_holdfast_env() {
    if skip_on_container_backend(
        "a container sees its data at /data, not at the host path this test compares with; \
         containers.rs checks the container's working directory and environment",
    ) {
        return;
    }
    let app = TestApp::spawn().await;
    let script = format!(
        "echo \"$HOLDFAST_WORKSPACE_ID\" > ws_id; echo \"$HOLDFAST_DATA_DIR\" > data_dir; pwd -P > cwd; {RECORDING_SCRIPT}"
    );
    let ws = app
        .create_online_workspace(&json!({
            "name": "env-check",
            "runtime": { "command": ["sh", "-c", script] },
        }))
        .await;
    let id = id_of(&ws);
    let volume = app.volume_dir(&id);
    wait_for_pid(&volume).await;

    assert_eq!(read_lines(&volume.join("ws_id")), [id.as_str()]);
    let canonical = std::fs::canonicalize(&volume).expect("canonical volume path");
    assert_eq!(
        read_lines(&volume.join("cwd")),
        [canonical.display().to_string()],
        "the working directory is the data dir"
    );
    let data_dir = read_lines(&volume.join("data_dir"));
    assert_eq!(data_dir.len(), 1);
    assert_eq!(
        std::fs::canonicalize(&data_dir[0]).expect("HOLDFAST_DATA_DIR exists"),
        canonical,
        "HOLDFAST_DATA_DIR is the volume"
    );
}

#[tokio::test]
async fn switching_to_ephemeral_keeps_the_volume_and_switching_back_reattaches_it() {
    let app = TestApp::spawn().await;
    let ws = app
        .create_online_workspace(&workspace_body_with_persistence("switcher", "persist"))
        .await;
    let id = id_of(&ws);
    let volume = app.volume_dir(&id);
    let scratch = app.scratch_dir(&id);
    let persist_pid = wait_for_pid(&volume).await;

    app.patch_workspace(
        &id,
        &json!({ "compute": { "data_persistence": "ephemeral" } }),
    )
    .await
    .expect_status(200);
    app.restart_workspace(&id).await.expect_status(200);
    let online = app.wait_online(&id).await;
    assert_eq!(online["data"]["mode"], "ephemeral", "{online}");
    let ephemeral_pid = wait_for_pid(&scratch).await;
    wait_process_gone(persist_pid).await;
    assert_eq!(read_lines(&scratch.join("data.txt")), ["started"]);
    assert_eq!(
        read_lines(&volume.join("data.txt")),
        ["started"],
        "switching to ephemeral must not erase the durable volume"
    );

    app.patch_workspace(
        &id,
        &json!({ "compute": { "data_persistence": "persist" } }),
    )
    .await
    .expect_status(200);
    app.restart_workspace(&id).await.expect_status(200);
    let online = app.wait_online(&id).await;
    assert_eq!(online["data"]["mode"], "persist", "{online}");
    assert_eq!(online["data"]["state"], "active", "{online}");
    wait_for_pid_other_than(&volume, persist_pid).await;
    wait_process_gone(ephemeral_pid).await;
    assert_eq!(
        wait_for_lines(&volume.join("data.txt"), 2).await,
        ["started", "started"],
        "switching back must re-attach the same data"
    );
    wait_path_gone(&scratch).await;
}

#[tokio::test]
async fn persist_data_survives_a_server_restart() {
    if crate::helpers::skip_in_remote_mode(
        "a graceful stop of the platform stops workspaces only with the embedded control plane; \
         tenancy.rs checks that a remote one keeps them and that its own stop stops them",
    ) {
        return;
    }
    let mut app = TestApp::spawn().await;
    let kept = app.create_online_workspace(&workspace_body("kept")).await;
    let kept_id = id_of(&kept);
    let scratchy = app
        .create_online_workspace(&workspace_body_with_persistence("scratchy", "ephemeral"))
        .await;
    let scratchy_id = id_of(&scratchy);
    let kept_pid = wait_for_pid(&app.volume_dir(&kept_id)).await;
    let scratchy_pid = wait_for_pid(&app.scratch_dir(&scratchy_id)).await;

    app.restart_server().await;
    // A graceful stop of the server stops its workspaces.
    wait_process_gone(kept_pid).await;
    wait_process_gone(scratchy_pid).await;

    app.wait_online(&kept_id).await;
    app.wait_online(&scratchy_id).await;
    wait_for_pid_other_than(&app.volume_dir(&kept_id), kept_pid).await;
    wait_for_pid(&app.scratch_dir(&scratchy_id)).await;
    assert_eq!(
        wait_for_lines(&app.volume_dir(&kept_id).join("data.txt"), 2).await,
        ["started", "started"]
    );
    assert_eq!(
        read_lines(&app.scratch_dir(&scratchy_id).join("data.txt")),
        ["started"]
    );
    assert_eq!(app.list_workspaces().await.len(), 2);
}

#[tokio::test]
async fn persist_data_survives_a_server_crash() {
    if crate::helpers::skip_in_remote_mode(
        "a platform restarted on a remote control plane adopts the workspaces it still runs \
         (restart over adopt belongs to the embedded control plane); tenancy.rs checks adoption",
    ) {
        return;
    }
    let mut app = TestApp::spawn().await;
    let ws = app.create_online_workspace(&workspace_body("crashy")).await;
    let id = id_of(&ws);
    let volume = app.volume_dir(&id);
    let pid = wait_for_pid(&volume).await;

    app.crash_and_restart_server().await;
    wait_process_gone(pid).await;

    app.wait_online(&id).await;
    wait_for_pid_other_than(&volume, pid).await;
    assert_eq!(
        wait_for_lines(&volume.join("data.txt"), 2).await,
        ["started", "started"]
    );
    let after = app.workspace(&id).await;
    assert_eq!(after["data"]["mode"], "persist", "{after}");
    assert_eq!(after["data"]["state"], "active", "{after}");
}

#[tokio::test]
async fn persist_data_survives_a_process_crash_and_auto_restart() {
    let app = TestApp::spawn().await;
    // The first start exits with an error; the automatic restart finds the
    // line the crashed run wrote and stays up.
    let script = "echo started >> data.txt; \
                  if [ \"$(wc -l < data.txt)\" -lt 2 ]; then exit 1; fi; \
                  echo $$ > pid; exec sleep 600";
    let created = app
        .create_workspace(&json!({
            "name": "crashes-once",
            "runtime": { "command": ["sh", "-c", script] },
        }))
        .await
        .expect_status(201);
    let id = id_of(&created);
    let volume = app.volume_dir(&id);
    let pid = wait_for_pid(&volume).await;
    let online = app.wait_online(&id).await;
    assert_eq!(
        wait_for_lines(&volume.join("data.txt"), 2).await,
        ["started", "started"],
        "the restarted process must see what the crashed one wrote"
    );
    assert!(crate::helpers::process_is_running(pid));
    assert_eq!(online["data"]["state"], "active", "{online}");
}
