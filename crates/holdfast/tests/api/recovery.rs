//! Recovery (SPEC §3, §7): a workspace process that dies is restarted with
//! its data, and after a `kill -9` of the server every workspace that should
//! run runs again exactly once, while paused and hibernated ones stay down.

use crate::helpers::{
    TestApp, builtin_body, eventually, id_of, kill_9, process_is_running, read_lines,
    wait_for_lines, wait_for_pid, wait_for_pid_other_than, wait_process_gone,
    wait_workspace_process_count, workspace_body, workspace_body_with_persistence,
    workspace_processes,
};

/// Short enough that an automatic restart comes quickly in a test.
const FAST_RESTART: [&str; 2] = ["--restart-backoff", "200ms"];

#[tokio::test]
async fn a_killed_workspace_process_goes_offline_and_is_restarted_with_its_data() {
    let app = TestApp::spawn_with(&FAST_RESTART).await;
    let ws = app
        .create_online_workspace(&workspace_body("phoenix"))
        .await;
    let id = id_of(&ws);
    let volume = app.volume_dir(&id);
    let pid = wait_for_pid(&volume).await;
    let mut events = app.subscribe_events().await;

    kill_9(pid);

    assert_eq!(
        events.types_for_until(&id, "WORKSPACE_ONLINE").await,
        [
            "WORKSPACE_OFFLINE",
            "WORKSPACE_PROVISIONING",
            "WORKSPACE_ONLINE"
        ],
        "a crash is seen (offline) and healed (online) without anyone asking"
    );
    let new_pid = wait_for_pid_other_than(&volume, pid).await;
    app.wait_online(&id).await;
    assert_eq!(wait_workspace_process_count(&id, 1).await, [new_pid]);
    assert_eq!(
        wait_for_lines(&volume.join("data.txt"), 2).await,
        ["started", "started"],
        "the automatic restart runs on the same volume"
    );
    let after = app.workspace(&id).await;
    assert_eq!(after["data"]["state"], "active", "{after}");
}

#[tokio::test]
async fn a_workspace_that_keeps_crashing_keeps_being_restarted() {
    let app = TestApp::spawn_with(&FAST_RESTART).await;
    let ws = app
        .create_online_workspace(&workspace_body("stubborn"))
        .await;
    let id = id_of(&ws);
    let volume = app.volume_dir(&id);
    let mut pid = wait_for_pid(&volume).await;

    // Three crashes in a row: the backoff grows (200 ms, 400 ms, 800 ms) but
    // the workspace is never given up on.
    for _ in 0..3 {
        kill_9(pid);
        pid = wait_for_pid_other_than(&volume, pid).await;
    }
    app.wait_online(&id).await;
    assert_eq!(wait_workspace_process_count(&id, 1).await, [pid]);
    assert_eq!(read_lines(&volume.join("data.txt")).len(), 4);
}

#[tokio::test]
async fn a_killed_builtin_runtime_comes_back_with_its_memory() {
    let app = TestApp::spawn_with(&[
        "--restart-backoff",
        "200ms",
        "--heartbeat-interval",
        "300ms",
    ])
    .await;
    let ws = app.create_workspace(&builtin_body("amnesia-proof")).await;
    let id = id_of(&ws.expect_status(201));
    app.wait_online(&id).await;
    app.say(&id, "first").await;
    app.say(&id, "second").await;
    let pids = wait_workspace_process_count(&id, 1).await;

    kill_9(pids[0]);
    wait_process_gone(pids[0]).await;
    // A message sent before the platform has noticed the crash would go to
    // the dead runtime's address; wait for the replacement process.
    eventually("a new runtime process", || async {
        let now = workspace_processes(&id);
        (now.len() == 1 && now != pids).then_some(())
    })
    .await;

    // The message waits for the restarted runtime to register.
    let reply = app.say(&id, "third").await;
    assert!(
        reply.contains("I remember 2 earlier message(s)."),
        "the restarted runtime must read the memory the killed one wrote: {reply}"
    );
    app.wait_online(&id).await;
    let now = wait_workspace_process_count(&id, 1).await;
    assert_ne!(now, pids, "a new process runs");
}

#[tokio::test]
async fn a_paused_workspace_is_not_restarted_by_the_crash_handling() {
    let app = TestApp::spawn_with(&FAST_RESTART).await;
    let ws = app
        .create_online_workspace(&workspace_body("resting"))
        .await;
    let id = id_of(&ws);
    let volume = app.volume_dir(&id);
    let pid = wait_for_pid(&volume).await;

    app.pause_workspace(&id).await.expect_status(200);
    wait_process_gone(pid).await;
    // Give the reconciler (which runs every 500 ms) several passes and many
    // backoff periods to (wrongly) bring it back; this is a wait before
    // checking, not a limit on how fast anything must be.
    tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    assert_eq!(workspace_processes(&id), Vec::<u32>::new());
    assert_eq!(app.workspace(&id).await["status"], "paused");
    assert_eq!(read_lines(&volume.join("data.txt")), ["started"]);
}

#[tokio::test]
async fn after_a_server_crash_each_workspace_runs_exactly_once() {
    if crate::helpers::skip_in_remote_mode(
        "a platform restarted on a remote control plane adopts the workspaces it still runs \
         (restart over adopt belongs to the embedded control plane); tenancy.rs checks adoption",
    ) {
        return;
    }
    let mut app = TestApp::spawn().await;
    let running = app.create_online_workspace(&workspace_body("runner")).await;
    let running_id = id_of(&running);
    let scratch = app
        .create_online_workspace(&workspace_body_with_persistence("scratcher", "ephemeral"))
        .await;
    let scratch_id = id_of(&scratch);
    let paused = app.create_online_workspace(&workspace_body("paused")).await;
    let paused_id = id_of(&paused);
    let hibernated = app
        .create_online_workspace(&workspace_body("dormant"))
        .await;
    let hibernated_id = id_of(&hibernated);

    let running_pid = wait_for_pid(&app.volume_dir(&running_id)).await;
    let scratch_pid = wait_for_pid(&app.scratch_dir(&scratch_id)).await;
    let paused_pid = wait_for_pid(&app.volume_dir(&paused_id)).await;
    let hibernated_pid = wait_for_pid(&app.volume_dir(&hibernated_id)).await;
    app.pause_workspace(&paused_id).await.expect_status(200);
    app.hibernate_workspace(&hibernated_id)
        .await
        .expect_status(200);
    wait_process_gone(paused_pid).await;
    wait_process_gone(hibernated_pid).await;

    // The workspaces live in their own process groups, so they outlive the
    // server's `kill -9`, exactly as in production.
    app.crash_and_restart_server().await;

    app.wait_online(&running_id).await;
    app.wait_online(&scratch_id).await;
    let running_new = wait_for_pid_other_than(&app.volume_dir(&running_id), running_pid).await;
    let scratch_new = wait_for_pid_other_than(&app.scratch_dir(&scratch_id), scratch_pid).await;
    wait_process_gone(running_pid).await;
    wait_process_gone(scratch_pid).await;
    assert_eq!(
        wait_workspace_process_count(&running_id, 1).await,
        [running_new]
    );
    assert_eq!(
        wait_workspace_process_count(&scratch_id, 1).await,
        [scratch_new]
    );
    assert_eq!(workspace_processes(&paused_id), Vec::<u32>::new());
    assert_eq!(workspace_processes(&hibernated_id), Vec::<u32>::new());
    assert_eq!(app.workspace(&paused_id).await["status"], "paused");
    assert_eq!(app.workspace(&hibernated_id).await["status"], "hibernated");

    assert_eq!(
        wait_for_lines(&app.volume_dir(&running_id).join("data.txt"), 2).await,
        ["started", "started"],
        "one start before the crash and exactly one after"
    );
    assert_eq!(
        read_lines(&app.scratch_dir(&scratch_id).join("data.txt")),
        ["started"]
    );
    assert_eq!(
        read_lines(&app.volume_dir(&paused_id).join("data.txt")),
        ["started"]
    );

    // Resuming after the crash still works and finds the data.
    app.resume_workspace(&paused_id).await.expect_status(200);
    app.wait_online(&paused_id).await;
    wait_workspace_process_count(&paused_id, 1).await;
    // The process found may still be about to write its line.
    let data = app.volume_dir(&paused_id).join("data.txt");
    eventually("the resumed start's line", || {
        let data = data.clone();
        async move { (read_lines(&data).len() >= 2).then_some(()) }
    })
    .await;
    assert_eq!(read_lines(&data), ["started", "started"]);
}

#[tokio::test]
async fn two_server_crashes_in_a_row_still_leave_one_process() {
    if crate::helpers::skip_in_remote_mode(
        "a platform restarted on a remote control plane adopts the workspaces it still runs \
         (restart over adopt belongs to the embedded control plane); tenancy.rs checks adoption",
    ) {
        return;
    }
    let mut app = TestApp::spawn().await;
    let ws = app.create_online_workspace(&workspace_body("twice")).await;
    let id = id_of(&ws);
    let volume = app.volume_dir(&id);
    let mut pid = wait_for_pid(&volume).await;

    for _ in 0..2 {
        app.crash_and_restart_server().await;
        let next = wait_for_pid_other_than(&volume, pid).await;
        wait_process_gone(pid).await;
        pid = next;
    }
    app.wait_online(&id).await;
    assert_eq!(wait_workspace_process_count(&id, 1).await, [pid]);
    assert!(process_is_running(pid));
    assert_eq!(read_lines(&volume.join("data.txt")).len(), 3);
}

#[tokio::test]
async fn builtin_runtime_memory_survives_a_server_crash() {
    let mut app = TestApp::spawn_with(&["--heartbeat-interval", "300ms"]).await;
    let ws = app.create_workspace(&builtin_body("survivor")).await;
    let id = id_of(&ws.expect_status(201));
    app.wait_online(&id).await;
    app.say(&id, "remember the crash").await;
    let old = wait_workspace_process_count(&id, 1).await;

    app.crash_and_restart_server().await;
    wait_process_gone(old[0]).await;
    app.wait_online(&id).await;

    let messages = app.messages(&id).await;
    assert_eq!(messages.len(), 2, "{messages:?}");
    assert_eq!(messages[0]["text"], "remember the crash");
    let reply = app.say(&id, "still there?").await;
    assert!(
        reply.contains("I remember 1 earlier message(s)."),
        "{reply}"
    );
    let now = wait_workspace_process_count(&id, 1).await;
    assert_ne!(now, old);
}
