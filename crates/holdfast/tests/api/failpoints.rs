//! Crash windows: the server is made to abort at each named failpoint
//! (`HOLDFAST_FAILPOINTS`), started again without it, and must then have
//! lost nothing and run nothing twice.

use crate::helpers::{
    TestApp, dir_entries, id_of, read_lines, skip_in_remote_mode, wait_for_pid,
    wait_for_pid_other_than, wait_process_gone, wait_workspace_process_count, workspace_body,
    workspace_processes,
};
use reqwest::Method;

/// What makes the server reach the failpoint.
#[derive(Debug, Clone, Copy)]
enum Trigger {
    /// Starting the workspace while the server boots.
    Boot,
    /// `POST /workspaces/:id/restart`.
    RestartRequest,
}

/// One crash window of a restart.
struct Case {
    failpoint: &'static str,
    trigger: Trigger,
    /// Whether the aborted run had already started a process (which it leaves
    /// behind, in its own process group, for the next server to deal with).
    leaves_a_started_process: bool,
}

/// Creates a recording workspace on a server without failpoints, crashes the
/// server and starts it with `case.failpoint`, makes it reach that point and
/// abort, starts it again without the failpoint, and checks that the
/// workspace runs exactly once, online, with every earlier start's line
/// still in its volume.
async fn check_restart_window(case: Case) {
    if let Trigger::Boot = case.trigger
        && skip_in_remote_mode(
            "a platform restarted on a remote control plane adopts the workspaces it still runs, \
             so its boot provisions nothing and never reaches this window",
        )
    {
        return;
    }
    let mut app = TestApp::spawn().await;
    let ws = app.create_online_workspace(&workspace_body("crashy")).await;
    let id = id_of(&ws);
    let volume = app.volume_dir(&id);
    let mut pid = wait_for_pid(&volume).await;
    // Lines each run has written to the volume so far.
    let mut starts = 1;

    app.crash_and_restart_server_with_env(&[("HOLDFAST_FAILPOINTS", case.failpoint)])
        .await;
    if let Trigger::RestartRequest = case.trigger {
        // This boot gets past starting the workspace (no stop happens at
        // boot), so the restart request is what reaches the stop path. (On a
        // remote control plane the boot adopts the running process instead.)
        app.wait_online(&id).await;
        if !app.is_remote() {
            pid = wait_for_pid_other_than(&volume, pid).await;
            starts += 1;
        }
        let answer = app
            .try_send(app.authed(Method::POST, &format!("/workspaces/{id}/restart")))
            .await;
        assert!(
            answer.is_err(),
            "the server must abort before answering the restart at {}: {answer:?}",
            case.failpoint
        );
    }
    app.expect_server_abort(case.failpoint).await;
    if case.leaves_a_started_process {
        // The aborted server's process survives it; let it finish writing so
        // that the count of starts is exact.
        pid = wait_for_pid_other_than(&volume, pid).await;
        starts += 1;
        assert_eq!(
            workspace_processes(&id).len(),
            1,
            "{}: the crash leaves the process it started behind",
            case.failpoint
        );
    }

    app.start_server_again_without_env().await;
    let online = app.wait_online(&id).await;
    let final_pid = wait_for_pid_other_than(&volume, pid).await;
    starts += 1;
    wait_process_gone(pid).await;
    assert_eq!(
        wait_workspace_process_count(&id, 1).await,
        [final_pid],
        "{}: exactly one process after recovery",
        case.failpoint
    );
    assert_eq!(
        read_lines(&volume.join("data.txt")),
        vec!["started"; starts],
        "{}: every start's line is kept and no extra start happened",
        case.failpoint
    );
    assert_eq!(online["data"]["mode"], "persist", "{online}");
    assert_eq!(online["data"]["state"], "active", "{online}");
    // A workspace that recovered is fully usable: a normal restart works.
    app.restart_workspace(&id).await.expect_status(200);
    app.wait_online(&id).await;
    wait_for_pid_other_than(&volume, final_pid).await;
    assert_eq!(wait_workspace_process_count(&id, 1).await.len(), 1);
}

#[tokio::test]
async fn crash_before_provision_at_boot() {
    check_restart_window(Case {
        failpoint: "start.before_provision",
        trigger: Trigger::Boot,
        leaves_a_started_process: false,
    })
    .await;
}

#[tokio::test]
async fn crash_after_provision_at_boot() {
    check_restart_window(Case {
        failpoint: "start.after_provision",
        trigger: Trigger::Boot,
        leaves_a_started_process: true,
    })
    .await;
}

#[tokio::test]
async fn crash_before_the_cp_stop_of_a_restart() {
    check_restart_window(Case {
        failpoint: "stop.before_cp_stop",
        trigger: Trigger::RestartRequest,
        leaves_a_started_process: false,
    })
    .await;
}

#[tokio::test]
async fn crash_after_the_cp_stop_of_a_restart() {
    check_restart_window(Case {
        failpoint: "stop.after_cp_stop",
        trigger: Trigger::RestartRequest,
        leaves_a_started_process: false,
    })
    .await;
}

#[tokio::test]
async fn crash_between_the_stop_and_the_start_of_a_restart() {
    check_restart_window(Case {
        failpoint: "restart.after_stop",
        trigger: Trigger::RestartRequest,
        leaves_a_started_process: false,
    })
    .await;
}

#[tokio::test]
async fn crash_after_a_delete_marked_the_workspace_removed() {
    let mut app = TestApp::spawn().await;
    let ws = app.create_online_workspace(&workspace_body("doomed")).await;
    let id = id_of(&ws);
    let volume = app.volume_dir(&id);
    let pid = wait_for_pid(&volume).await;

    app.crash_and_restart_server_with_env(&[("HOLDFAST_FAILPOINTS", "delete.after_mark")])
        .await;
    app.wait_online(&id).await;
    // The embedded control plane restarts the workspace at boot; a remote one
    // keeps it running and the platform adopts it.
    let pid = if app.is_remote() {
        pid
    } else {
        wait_for_pid_other_than(&volume, pid).await
    };
    let starts = if app.is_remote() { 1 } else { 2 };
    let answer = app
        .try_send(
            app.authed(Method::DELETE, &format!("/workspaces/{id}"))
                .header("X-Confirm-Name", "doomed"),
        )
        .await;
    assert!(
        answer.is_err(),
        "the server must abort before answering the delete: {answer:?}"
    );
    app.expect_server_abort("delete.after_mark").await;

    app.start_server_again_without_env().await;
    // The mark was committed before the crash, so the workspace is removed,
    // and the next server finishes what the delete had begun: stop the
    // process and retain (never erase) the data.
    let after = app.workspace(&id).await;
    assert_eq!(after["status"], "removed", "{after}");
    wait_process_gone(pid).await;
    wait_workspace_process_count(&id, 0).await;
    let record = crate::helpers::eventually("the volume to be retained", || async {
        let record = app.workspace_data(&id).await.expect_status(200);
        (record["state"] == "retained").then_some(record)
    })
    .await;
    assert!(record["retain_until"].is_string(), "{record}");
    assert_eq!(
        read_lines(&volume.join("data.txt")),
        vec!["started"; starts]
    );
    assert!(dir_entries(&volume).contains(&"pid".to_owned()));
    assert!(
        app.list_workspaces().await.iter().all(|w| id_of(w) != id),
        "a removed workspace is not listed"
    );
    // The delete can be neither repeated nor half-done: it is gone for good.
    app.delete_workspace(&id)
        .confirm_name("doomed")
        .send()
        .await
        .expect_error(410, "workspace_removed");
}

/// Deletes a recording workspace (with or without erase), crashes the server
/// and starts it with `failpoint`, asks for a restore that aborts there,
/// starts the server again, and checks that the restore is finished, not
/// lost: the workspace back and online on its data (the volume `active`,
/// every earlier line still there), one `workspace.restored` event, and
/// the record as reclaimable as any other (a repeated restore is 409, a
/// delete works).
async fn check_restore_window(failpoint: &str, erase: bool) {
    let mut app = TestApp::spawn().await;
    let ws = app
        .create_online_workspace(&workspace_body("phoenix"))
        .await;
    let id = id_of(&ws);
    let volume = app.volume_dir(&id);
    wait_for_pid(&volume).await;
    let delete = app.delete_workspace(&id).confirm_name("phoenix");
    let delete = if erase { delete.erase_data() } else { delete };
    delete.send().await.expect_status(200);
    wait_workspace_process_count(&id, 0).await;
    let before = app.workspace_data(&id).await.expect_status(200);
    let expected = if erase { "erase_pending" } else { "retained" };
    assert_eq!(before["state"], expected, "{before}");

    app.crash_and_restart_server_with_env(&[("HOLDFAST_FAILPOINTS", failpoint)])
        .await;
    let answer = app
        .try_send(app.authed(Method::POST, &format!("/workspaces/{id}/restore")))
        .await;
    assert!(
        answer.is_err(),
        "the server must abort before answering the restore at {failpoint}: {answer:?}"
    );
    app.expect_server_abort(failpoint).await;
    app.start_server_again_without_env().await;

    // The request was recorded before anything moved: the next server
    // carries it out.
    let back = app.wait_online(&id).await;
    assert_eq!(back["status"], "online", "{back}");
    let record = app.workspace_data(&id).await.expect_status(200);
    assert_eq!(record["state"], "active", "{record}");
    wait_for_pid(&volume).await;
    crate::helpers::eventually("the restored run to write its line", || async {
        (read_lines(&volume.join("data.txt")).len() == 2).then_some(())
    })
    .await;
    assert_eq!(read_lines(&volume.join("data.txt")), vec!["started"; 2]);
    let audit = app
        .get(&format!("/audit?workspace_id={id}"))
        .await
        .expect_status(200);
    let restored = audit
        .as_array()
        .expect("audit is an array")
        .iter()
        .filter(|e| e["action"] == "workspace.restored")
        .count();
    assert_eq!(restored, 1, "one workspace.restored event: {audit}");
    app.restore_workspace(&id)
        .await
        .expect_error(409, "not_removed");
    app.delete_workspace(&id)
        .confirm_name("phoenix")
        .send()
        .await
        .expect_status(200);
}

#[tokio::test]
async fn crash_after_a_restore_recorded_its_intent() {
    check_restore_window("restore.after_intent", true).await;
}

#[tokio::test]
async fn crash_after_a_restore_brought_the_volume_back() {
    // The window the first version left open: an active volume of a
    // removed workspace that nothing would ever reclaim.
    check_restore_window("restore.after_volume", true).await;
}

#[tokio::test]
async fn crash_in_a_restore_of_a_workspace_deleted_without_erase() {
    check_restore_window("restore.after_volume", false).await;
}
