//! The running side of a workspace (SPEC §2, §7, §10): the built-in runtime
//! and its memory, messages, pause/resume/hibernate/wake, workspace tokens
//! and the `GET /events` stream.

use crate::helpers::{
    ADMIN_TOKEN, TestApp, builtin_body, builtin_body_with_persistence, child_body, id_of,
    read_lines, wait_for_lines, wait_for_pid, wait_for_pid_other_than, wait_process_gone,
    wait_workspace_process_count, workspace_body, workspace_processes,
};
use reqwest::Method;
use serde_json::{Value, json};

/// The reply of the built-in runtime names how many earlier user messages it
/// remembers; this is the part of it the tests pin.
fn remembers(n: usize) -> String {
    format!("I remember {n} earlier message(s).")
}

/// Creates a workspace on the built-in runtime, checks that the 201 comes
/// back while it is still registering, and waits for it to be online.
async fn online_builtin(app: &TestApp, body: &Value) -> Value {
    let created = app.create_workspace(body).await.expect_status(201);
    assert_eq!(
        created["runtime"],
        json!({ "template": "holdfast-runtime" }),
        "no runtime means the built-in one: {created}"
    );
    assert!(
        created["status"] == "provisioning" || created["status"] == "online",
        "a new workspace is provisioning until its runtime registers: {created}"
    );
    app.wait_online(&id_of(&created)).await
}

#[tokio::test]
async fn builtin_runtime_registers_answers_and_remembers() {
    let app = TestApp::spawn().await;
    let ws = online_builtin(&app, &builtin_body("talker")).await;
    let id = id_of(&ws);
    assert!(ws["instance_id"].is_string(), "{ws}");

    let first = app.send_message(&id, "hello").await.expect_status(200);
    assert_eq!(first["reply"]["role"], "agent", "{first}");
    assert!(first["reply"]["at"].is_string(), "{first}");
    let text = first["reply"]["text"].as_str().unwrap_or_default();
    assert!(text.contains(&remembers(0)), "{first}");
    let history = first["history"].as_array().expect("history is an array");
    assert_eq!(history.len(), 2, "{first}");
    assert_eq!(history[0]["role"], "user");
    assert_eq!(history[0]["text"], "hello");
    assert_eq!(history[1]["role"], "agent");

    assert!(app.say(&id, "again").await.contains(&remembers(1)));

    let messages = app.messages(&id).await;
    let roles_and_texts: Vec<_> = messages
        .iter()
        .map(|m| {
            (
                m["role"].as_str().unwrap_or(""),
                m["text"].as_str().unwrap_or(""),
            )
        })
        .collect();
    assert_eq!(roles_and_texts[0], ("user", "hello"), "{messages:?}");
    assert_eq!(roles_and_texts[1].0, "agent", "{messages:?}");
    assert_eq!(roles_and_texts[2], ("user", "again"), "{messages:?}");
    assert_eq!(roles_and_texts[3].0, "agent", "{messages:?}");
    assert_eq!(messages.len(), 4, "{messages:?}");

    // The memory lives in the workspace's data dir, where it can be kept.
    let memory = app.volume_dir(&id).join("memory").join("messages.jsonl");
    assert_eq!(read_lines(&memory).len(), 4, "{}", memory.display());
}

#[tokio::test]
async fn builtin_runtime_memory_survives_a_workspace_restart() {
    let app = TestApp::spawn().await;
    let ws = online_builtin(&app, &builtin_body("rememberer")).await;
    let id = id_of(&ws);
    app.say(&id, "one").await;
    app.say(&id, "two").await;
    let old_pids = wait_workspace_process_count(&id, 1).await;

    let restarted = app.restart_workspace(&id).await.expect_status(200);
    assert_ne!(restarted["instance_id"], ws["instance_id"], "{restarted}");
    app.wait_online(&id).await;
    wait_process_gone(old_pids[0]).await;
    wait_workspace_process_count(&id, 1).await;

    assert_eq!(app.messages(&id).await.len(), 4);
    assert!(app.say(&id, "three").await.contains(&remembers(2)));
}

#[tokio::test]
async fn ephemeral_builtin_runtime_forgets_at_restart() {
    let app = TestApp::spawn().await;
    let ws = online_builtin(
        &app,
        &builtin_body_with_persistence("goldfish", "ephemeral"),
    )
    .await;
    let id = id_of(&ws);
    assert_eq!(ws["data"]["mode"], "ephemeral", "{ws}");
    assert!(app.say(&id, "remember me").await.contains(&remembers(0)));
    assert!(
        app.scratch_dir(&id)
            .join("memory")
            .join("messages.jsonl")
            .exists()
    );

    app.restart_workspace(&id).await.expect_status(200);
    app.wait_online(&id).await;
    assert_eq!(app.messages(&id).await, Vec::<Value>::new());
    assert!(app.say(&id, "who am I").await.contains(&remembers(0)));
}

#[tokio::test]
async fn message_to_a_hibernated_workspace_wakes_it_with_its_memory() {
    let app = TestApp::spawn().await;
    let ws = online_builtin(&app, &builtin_body("sleeper")).await;
    let id = id_of(&ws);
    app.say(&id, "before sleep").await;
    let pids = wait_workspace_process_count(&id, 1).await;

    let hibernated = app.hibernate_workspace(&id).await.expect_status(200);
    assert_eq!(hibernated["id"], id.as_str());
    app.wait_status(&id, "hibernated").await;
    wait_process_gone(pids[0]).await;
    assert_eq!(
        wait_workspace_process_count(&id, 0).await.len(),
        0,
        "a hibernated workspace runs nothing"
    );

    // The message itself is the wake-up call, and waits for the runtime.
    assert!(app.say(&id, "wake up").await.contains(&remembers(1)));
    app.wait_online(&id).await;
    wait_workspace_process_count(&id, 1).await;
}

#[tokio::test]
async fn hibernate_then_wake_keeps_memory() {
    let app = TestApp::spawn().await;
    let ws = online_builtin(&app, &builtin_body("bear")).await;
    let id = id_of(&ws);
    app.say(&id, "autumn").await;

    app.hibernate_workspace(&id).await.expect_status(200);
    app.wait_status(&id, "hibernated").await;
    wait_workspace_process_count(&id, 0).await;

    let woken = app.wake_workspace(&id).await.expect_status(200);
    assert!(
        woken["status"] == "provisioning" || woken["status"] == "online",
        "{woken}"
    );
    app.wait_online(&id).await;
    assert!(app.say(&id, "spring").await.contains(&remembers(1)));
}

#[tokio::test]
async fn pause_stops_the_process_and_resume_restarts_it_on_the_same_data() {
    let app = TestApp::spawn().await;
    let ws = app.create_online_workspace(&workspace_body("napper")).await;
    let id = id_of(&ws);
    let volume = app.volume_dir(&id);
    let pid = wait_for_pid(&volume).await;

    let paused = app.pause_workspace(&id).await.expect_status(200);
    assert_eq!(paused["status"], "paused", "{paused}");
    wait_process_gone(pid).await;
    wait_workspace_process_count(&id, 0).await;
    assert_eq!(app.workspace(&id).await["status"], "paused");
    assert_eq!(read_lines(&volume.join("data.txt")), ["started"]);

    let resumed = app.resume_workspace(&id).await.expect_status(200);
    // A command runtime does not register: it is online once it runs.
    assert_eq!(resumed["status"], "online", "{resumed}");
    assert_ne!(resumed["instance_id"], ws["instance_id"], "{resumed}");
    wait_for_pid_other_than(&volume, pid).await;
    wait_workspace_process_count(&id, 1).await;
    assert_eq!(
        wait_for_lines(&volume.join("data.txt"), 2).await,
        ["started", "started"],
        "resume must start on the data the paused run left"
    );
}

#[tokio::test]
async fn pausing_a_parent_needs_cascade_and_then_pauses_the_subtree() {
    let app = TestApp::spawn().await;
    let parent = app.create_online_workspace(&workspace_body("team")).await;
    let parent_id = id_of(&parent);
    let child = app
        .create_online_workspace(&child_body("member", &parent_id))
        .await;
    let child_id = id_of(&child);
    let grandchild = app
        .create_online_workspace(&child_body("intern", &child_id))
        .await;
    let grandchild_id = id_of(&grandchild);
    for id in [&parent_id, &child_id, &grandchild_id] {
        wait_for_pid(&app.volume_dir(id)).await;
    }

    for refused in [
        app.pause_workspace(&parent_id).await,
        app.hibernate_workspace(&parent_id).await,
    ] {
        let body = refused.expect_error(409, "confirmation_required");
        assert_eq!(body["children_count"], 2, "{body}");
        let mut listed: Vec<_> = body["children"]
            .as_array()
            .expect("children is an array")
            .iter()
            .map(|c| c["id"].as_str().unwrap_or_default().to_owned())
            .collect();
        listed.sort();
        let mut expected = vec![child_id.clone(), grandchild_id.clone()];
        expected.sort();
        assert_eq!(listed, expected, "{body}");
    }
    // A refused pause changes nothing.
    for id in [&parent_id, &child_id, &grandchild_id] {
        assert_eq!(app.workspace(id).await["status"], "online");
        assert_eq!(wait_workspace_process_count(id, 1).await.len(), 1);
    }

    let paused = app
        .pause_workspace_cascade(&parent_id)
        .await
        .expect_status(200);
    assert_eq!(paused["status"], "paused", "{paused}");
    for id in [&parent_id, &child_id, &grandchild_id] {
        app.wait_status(id, "paused").await;
        wait_workspace_process_count(id, 0).await;
    }

    // A child may not run while its team is paused.
    app.resume_workspace(&child_id)
        .await
        .expect_error(409, "paused_ancestor");
    app.restart_workspace(&grandchild_id)
        .await
        .expect_error(409, "paused_ancestor");
    wait_workspace_process_count(&grandchild_id, 0).await;

    app.resume_workspace_cascade(&parent_id)
        .await
        .expect_status(200);
    for id in [&parent_id, &child_id, &grandchild_id] {
        app.wait_online(id).await;
        wait_workspace_process_count(id, 1).await;
        assert_eq!(
            wait_for_lines(&app.volume_dir(id).join("data.txt"), 2).await,
            ["started", "started"]
        );
    }
}

#[tokio::test]
async fn hibernating_a_parent_with_cascade_hibernates_the_subtree() {
    let app = TestApp::spawn().await;
    let parent = app.create_online_workspace(&workspace_body("night")).await;
    let parent_id = id_of(&parent);
    let child = app
        .create_online_workspace(&child_body("shift", &parent_id))
        .await;
    let child_id = id_of(&child);
    // A command is online as soon as it runs: wait for its first line, or
    // the hibernation below may stop it before it wrote one.
    wait_for_lines(&app.volume_dir(&child_id).join("data.txt"), 1).await;

    let body = app
        .hibernate_workspace(&parent_id)
        .await
        .expect_error(409, "confirmation_required");
    assert_eq!(body["children_count"], 1, "{body}");
    assert_eq!(body["children"][0]["id"], child_id.as_str(), "{body}");
    assert_eq!(app.workspace(&parent_id).await["status"], "online");

    let hibernated = app
        .hibernate_workspace_cascade(&parent_id)
        .await
        .expect_status(200);
    assert_eq!(hibernated["status"], "hibernated", "{hibernated}");
    for id in [&parent_id, &child_id] {
        app.wait_status(id, "hibernated").await;
        wait_workspace_process_count(id, 0).await;
    }

    // Hibernation is not a pause: the child may wake on its own.
    app.wake_workspace(&child_id).await.expect_status(200);
    app.wait_online(&child_id).await;
    wait_workspace_process_count(&child_id, 1).await;
    assert_eq!(app.workspace(&parent_id).await["status"], "hibernated");
    assert_eq!(
        wait_for_lines(&app.volume_dir(&child_id).join("data.txt"), 2).await,
        ["started", "started"]
    );
}

#[tokio::test]
async fn resuming_only_the_parent_leaves_the_children_paused() {
    let app = TestApp::spawn().await;
    let parent = app.create_online_workspace(&workspace_body("dept")).await;
    let parent_id = id_of(&parent);
    let child = app
        .create_online_workspace(&child_body("desk", &parent_id))
        .await;
    let child_id = id_of(&child);

    app.pause_workspace_cascade(&parent_id)
        .await
        .expect_status(200);
    app.wait_status(&child_id, "paused").await;

    app.resume_workspace(&parent_id).await.expect_status(200);
    app.wait_online(&parent_id).await;
    assert_eq!(app.workspace(&child_id).await["status"], "paused");
    wait_workspace_process_count(&child_id, 0).await;

    // With the ancestor running again, the child may resume.
    app.resume_workspace(&child_id).await.expect_status(200);
    app.wait_online(&child_id).await;
    wait_workspace_process_count(&child_id, 1).await;
}

#[tokio::test]
async fn lifecycle_actions_on_removed_or_unknown_workspaces_are_404() {
    let app = TestApp::spawn().await;
    let ws = app.create_online_workspace(&workspace_body("leaver")).await;
    let id = id_of(&ws);
    app.delete_workspace(&id)
        .confirm_name("leaver")
        .send()
        .await
        .expect_status(200);
    let unknown = uuid::Uuid::new_v4().to_string();

    for target in [&id, &unknown] {
        app.restart_workspace(target)
            .await
            .expect_error(404, "not_found");
        app.pause_workspace(target)
            .await
            .expect_error(404, "not_found");
        app.resume_workspace(target)
            .await
            .expect_error(404, "not_found");
        app.hibernate_workspace(target)
            .await
            .expect_error(404, "not_found");
        app.wake_workspace(target)
            .await
            .expect_error(404, "not_found");
        app.send_message(target, "anyone?")
            .await
            .expect_error(404, "not_found");
    }
    assert_eq!(app.workspace(&id).await["status"], "removed");
    wait_workspace_process_count(&id, 0).await;
}

#[tokio::test]
async fn message_with_an_unknown_field_is_400_naming_it() {
    let app = TestApp::spawn().await;
    let ws = online_builtin(&app, &builtin_body("strict")).await;
    let id = id_of(&ws);
    let answer = app
        .post_json(
            &format!("/workspaces/{id}/messages"),
            &json!({ "text": "hi", "mood": "cheerful" }),
        )
        .await;
    assert_eq!(answer.status.as_u16(), 400, "{}", answer.text);
    assert!(answer.text.contains("mood"), "{}", answer.text);
    // Nothing was said.
    assert_eq!(app.messages(&id).await, Vec::<Value>::new());
}

/// A command runtime that writes its token and platform URL into its data
/// dir, then its pid (last, so a fresh pid means the others are written).
fn token_recording_body(name: &str) -> Value {
    json!({
        "name": name,
        "runtime": { "command": ["sh", "-c",
            "echo \"$HOLDFAST_TOKEN\" > token; echo \"$HOLDFAST_PLATFORM_URL\" > url; \
             echo $$ > pid; exec sleep 600"] },
    })
}

/// The single line of `<dir>/<file>`.
fn read_one_line(dir: &std::path::Path, file: &str) -> String {
    let lines = read_lines(&dir.join(file));
    assert_eq!(lines.len(), 1, "{file}: {lines:?}");
    lines[0].clone()
}

#[tokio::test]
async fn workspace_token_can_register_heartbeat_and_read_only_its_own_record() {
    let app = TestApp::spawn().await;
    let ws = app
        .create_online_workspace(&token_recording_body("holder"))
        .await;
    let id = id_of(&ws);
    let other = app.create_online_workspace(&workspace_body("other")).await;
    let volume = app.volume_dir(&id);
    wait_for_pid(&volume).await;
    let token = read_one_line(&volume, "token");
    assert!(!token.is_empty());
    assert_ne!(token, ADMIN_TOKEN);
    assert_eq!(read_one_line(&volume, "url"), app.base_url);

    let own = app
        .send(app.with_token(Method::GET, &format!("/workspaces/{id}"), &token))
        .await
        .expect_status(200);
    assert_eq!(own["id"], id.as_str());
    app.send(app.with_token(
        Method::GET,
        &format!("/workspaces/{}", id_of(&other)),
        &token,
    ))
    .await
    .expect_status(404);
    app.send(app.with_token(Method::GET, "/workspaces", &token))
        .await
        .expect_status(404);

    app.send(
        app.with_token(Method::POST, "/registry/heartbeat", &token)
            .json(&json!({})),
    )
    .await
    .expect_status(200);
    let registered = app
        .send(
            app.with_token(Method::POST, "/registry/register", &token)
                .json(&json!({ "url": "http://127.0.0.1:1" })),
        )
        .await
        .expect_status(200);
    assert_eq!(registered["workspace_id"], id.as_str(), "{registered}");

    // Registering is for workspaces; the admin is no workspace.
    app.post_json(
        "/registry/register",
        &json!({ "url": "http://127.0.0.1:1" }),
    )
    .await
    .expect_status(403);
}

#[tokio::test]
async fn workspace_token_is_revoked_at_restart_and_at_delete() {
    let app = TestApp::spawn().await;
    let ws = app
        .create_online_workspace(&token_recording_body("rotator"))
        .await;
    let id = id_of(&ws);
    let volume = app.volume_dir(&id);
    let first_pid = wait_for_pid(&volume).await;
    let first_token = read_one_line(&volume, "token");
    let heartbeat = |token: &str| {
        app.with_token(Method::POST, "/registry/heartbeat", token)
            .json(&json!({}))
    };
    app.send(heartbeat(&first_token)).await.expect_status(200);

    app.restart_workspace(&id).await.expect_status(200);
    app.wait_online(&id).await;
    wait_for_pid_other_than(&volume, first_pid).await;
    let second_token = read_one_line(&volume, "token");
    assert_ne!(second_token, first_token, "each start gets a new token");
    app.send(heartbeat(&first_token)).await.expect_status(401);
    app.send(heartbeat(&second_token)).await.expect_status(200);

    app.delete_workspace(&id)
        .confirm_name("rotator")
        .send()
        .await
        .expect_status(200);
    app.send(heartbeat(&second_token)).await.expect_status(401);
    app.send(app.with_token(Method::GET, &format!("/workspaces/{id}"), &second_token))
        .await
        .expect_status(401);
}

#[tokio::test]
async fn events_need_auth() {
    let app = TestApp::spawn().await;
    let answer = app.send(app.client.get(app.url("/events"))).await;
    assert_eq!(answer.status.as_u16(), 401, "{}", answer.text);
}

#[tokio::test]
async fn events_report_restart_pause_and_delete_in_order() {
    let app = TestApp::spawn().await;
    let ws = app
        .create_online_workspace(&workspace_body("watched"))
        .await;
    let id = id_of(&ws);
    let bystander = app
        .create_online_workspace(&workspace_body("bystander"))
        .await;
    let mut events = app.subscribe_events().await;

    app.restart_workspace(&id).await.expect_status(200);
    assert_eq!(
        events.types_for_until(&id, "WORKSPACE_ONLINE").await,
        [
            "WORKSPACE_OFFLINE",
            "WORKSPACE_PROVISIONING",
            "WORKSPACE_ONLINE"
        ]
    );

    app.pause_workspace(&id).await.expect_status(200);
    assert_eq!(
        events.types_for_until(&id, "WORKSPACE_PAUSED").await,
        ["WORKSPACE_PAUSED"]
    );
    app.resume_workspace(&id).await.expect_status(200);
    assert_eq!(
        events.types_for_until(&id, "WORKSPACE_ONLINE").await,
        ["WORKSPACE_PROVISIONING", "WORKSPACE_ONLINE"]
    );

    app.delete_workspace(&id)
        .confirm_name("watched")
        .send()
        .await
        .expect_status(200);
    let removed = events.next_for(&id).await;
    assert_eq!(removed["type"], "WORKSPACE_REMOVED", "{removed}");
    assert_eq!(removed["workspace_id"], id.as_str());

    // The stream carries every workspace; the other one is still online and
    // its events come through too.
    app.pause_workspace(&id_of(&bystander))
        .await
        .expect_status(200);
    let paused = events.next_for(&id_of(&bystander)).await;
    assert_eq!(paused["type"], "WORKSPACE_PAUSED", "{paused}");
}

#[tokio::test]
async fn a_graceful_stop_is_not_held_up_by_an_events_subscriber() {
    // An open canvas keeps a `GET /events` stream open; SIGTERM must still
    // stop the server (and its workspaces) rather than wait for the browser.
    let mut app = TestApp::spawn().await;
    let ws = app.create_online_workspace(&workspace_body("steady")).await;
    let id = id_of(&ws);
    let pid = wait_for_pid(&app.volume_dir(&id)).await;
    let _events = app.subscribe_events().await;

    app.restart_server_expecting_graceful_exit().await;
    // A remote control plane keeps running the workspaces of a stopped
    // platform (and the next one adopts them); the embedded one stops them.
    if !app.is_remote() {
        wait_process_gone(pid).await;
    }
    app.wait_online(&id).await;
    wait_workspace_process_count(&id, 1).await;
}

#[tokio::test]
async fn a_runtime_that_never_registers_fails_after_the_provision_timeout() {
    let app = TestApp::spawn_with(&["--provision-timeout", "2s"]).await;
    // The built-in runtime honours the usual proxy variables; a proxy that
    // refuses connections keeps its registration from ever reaching the
    // platform, as a broken network would.
    let created = app
        .create_workspace(&json!({
            "name": "unreachable",
            "env": { "HTTP_PROXY": "http://127.0.0.1:1", "http_proxy": "http://127.0.0.1:1" },
        }))
        .await
        .expect_status(201);
    let id = id_of(&created);
    assert_eq!(created["status"], "provisioning", "{created}");
    let pids = wait_workspace_process_count(&id, 1).await;

    let failed = app.wait_status(&id, "failed").await;
    // Compute and data are left alone for an operator to look at.
    assert_eq!(workspace_processes(&id), pids, "{failed}");
    assert!(app.volume_dir(&id).join("memory").is_dir());
    assert_eq!(failed["data"]["state"], "active", "{failed}");
}
