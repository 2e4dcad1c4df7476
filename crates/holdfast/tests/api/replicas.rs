//! Several `holdfast serve` replicas on one PostgreSQL database and one
//! remote control plane: a workspace runs once whatever replica acts, and a
//! replica that dies mid-way leaves nothing undone that another does not
//! finish, with one erasure audited once.
//!
//! These need PostgreSQL (`HOLDFAST_TEST_DATABASE_URL`); under `CI=true` its
//! absence is a failure, elsewhere the tests say why they skip.

use crate::helpers::{
    CpServer, TestApp, fresh_database, id_of, read_lines, wait_for_pid, wait_for_pid_other_than,
    wait_workspace_process_count, workspace_body, workspace_processes,
};
use reqwest::Method;

/// The test PostgreSQL's admin URL, or `None` (with a printed reason) when
/// there is none outside CI.
fn postgres() -> Option<String> {
    match std::env::var("HOLDFAST_TEST_DATABASE_URL") {
        Ok(url) => Some(url),
        Err(_) if std::env::var("CI").is_ok_and(|v| v == "true") => {
            panic!(
                "CI=true but HOLDFAST_TEST_DATABASE_URL is not set: the replica tests cannot run"
            )
        }
        Err(_) => {
            eprintln!("skipping: replica tests need PostgreSQL (HOLDFAST_TEST_DATABASE_URL)");
            None
        }
    }
}

/// A control plane and two replicas on one fresh database. The control
/// plane comes first so that it is dropped last.
async fn replicas(admin_url: &str, cp_args: &[&str]) -> (CpServer, TestApp, TestApp) {
    let (cp, tokens) = CpServer::start_with_tenants(&["platform"], cp_args);
    let database = fresh_database(admin_url);
    let flags = [
        "--database-url",
        database.as_str(),
        "--restart-backoff",
        "200ms",
    ];
    let a = TestApp::spawn_on_cp(&cp, &tokens[0], &flags).await;
    let b = TestApp::spawn_on_cp(&cp, &tokens[0], &flags).await;
    (cp, a, b)
}

#[tokio::test]
async fn created_on_one_replica_read_and_restarted_on_the_other() {
    let Some(admin) = postgres() else { return };
    let (_cp, a, b) = replicas(&admin, &[]).await;
    let ws = a.create_online_workspace(&workspace_body("shared")).await;
    let id = id_of(&ws);
    let volume = a.volume_dir(&id);
    let first = wait_for_pid(&volume).await;

    let seen = b.workspace(&id).await;
    assert_eq!(seen["status"], "online", "{seen}");
    assert_eq!(
        seen["instance_id"], ws["instance_id"],
        "both replicas see the one instance"
    );

    b.restart_workspace(&id).await.expect_status(200);
    let second = wait_for_pid_other_than(&volume, first).await;
    assert_eq!(wait_workspace_process_count(&id, 1).await, vec![second]);
    assert_eq!(
        read_lines(&volume.join("data.txt")).len(),
        2,
        "one start, one restart"
    );
    let after = a.wait_online(&id).await;
    assert_ne!(after["instance_id"], ws["instance_id"]);
    // The other replica's reconcile loop leaves the running instance alone.
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    assert_eq!(workspace_processes(&id), vec![second]);
    assert_eq!(read_lines(&volume.join("data.txt")).len(), 2);
}

#[tokio::test]
async fn concurrent_restarts_from_two_replicas_leave_one_new_process() {
    let Some(admin) = postgres() else { return };
    let (_cp, a, b) = replicas(&admin, &[]).await;
    let ws = a.create_online_workspace(&workspace_body("raced")).await;
    let id = id_of(&ws);
    let first = wait_for_pid(&a.volume_dir(&id)).await;

    let (ra, rb) = tokio::join!(a.restart_workspace(&id), b.restart_workspace(&id));
    ra.expect_status(200);
    rb.expect_status(200);
    let survivors = wait_workspace_process_count(&id, 1).await;
    assert_ne!(survivors, vec![first], "the process is a new one");
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    assert_eq!(
        workspace_processes(&id),
        survivors,
        "and it stays the only one"
    );
    let starts = read_lines(&a.volume_dir(&id).join("data.txt")).len();
    assert!(
        (2..=3).contains(&starts),
        "one start, then one or two restarts: {starts}"
    );
    assert_eq!(b.workspace(&id).await["status"], "online");
}

#[tokio::test]
async fn an_erase_left_by_a_killed_replica_is_finished_by_the_other_and_audited_once() {
    let Some(admin) = postgres() else { return };
    let (_cp, mut a, b) = replicas(&admin, &["--erase-grace", "1s"]).await;
    let ws = a.create_online_workspace(&workspace_body("doomed")).await;
    let id = id_of(&ws);
    let volume = a.volume_dir(&id);
    let pid = wait_for_pid(&volume).await;

    // Replica A dies right after marking the workspace removed, before it
    // stops anything or asks for the erase.
    a.crash_and_restart_server_with_env(&[("HOLDFAST_FAILPOINTS", "delete.after_mark")])
        .await;
    let answer = a
        .try_send(
            a.authed(Method::DELETE, &format!("/workspaces/{id}?erase_data=true"))
                .header("X-Confirm-Name", "doomed"),
        )
        .await;
    assert!(
        answer.is_err(),
        "replica A aborts before answering: {answer:?}"
    );
    a.expect_server_abort("delete.after_mark").await;

    // Replica B's reconciler finishes the removal: the process stops and the
    // data becomes erase_pending, then erased after the grace.
    crate::helpers::wait_process_gone(pid).await;
    let erased = crate::helpers::eventually("replica B to erase the volume", || async {
        let _ = b
            .send(
                b.authed(Method::POST, "/admin/sweep")
                    .json(&serde_json::json!({})),
            )
            .await;
        let record = b.workspace_data(&id).await.expect_status(200);
        (record["state"] == "erased").then_some(record)
    })
    .await;
    assert_eq!(erased["erased_by"], "admin", "{erased}");
    assert!(!volume.exists(), "the files are gone");
    // More passes change nothing: one erasure, audited once.
    for _ in 0..3 {
        b.send(
            b.authed(Method::POST, "/admin/sweep")
                .json(&serde_json::json!({})),
        )
        .await
        .expect_status(200);
    }
    let audit = b.audit_of(&id).await;
    let erasures = audit
        .iter()
        .filter(|e| e["action"] == "volume.erased")
        .count();
    assert_eq!(erasures, 1, "{audit:?}");
    assert_eq!(workspace_processes(&id), Vec::<u32>::new());
}

#[tokio::test]
async fn a_request_does_not_wait_long_on_a_dead_replicas_lease() {
    let Some(admin) = postgres() else { return };
    let (_cp, mut a, b) = replicas(&admin, &[]).await;
    let ws = a.create_online_workspace(&workspace_body("held")).await;
    let id = id_of(&ws);
    let volume = a.volume_dir(&id);
    let first = wait_for_pid(&volume).await;

    // Replica A dies in the middle of a restart, holding the workspace's
    // lease (and with its intent, the new generation, written).
    a.crash_and_restart_server_with_env(&[("HOLDFAST_FAILPOINTS", "stop.before_cp_stop")])
        .await;
    a.wait_online(&id).await;
    let answer = a
        .try_send(a.authed(Method::POST, &format!("/workspaces/{id}/restart")))
        .await;
    assert!(answer.is_err(), "A must abort mid-restart: {answer:?}");
    a.expect_server_abort("stop.before_cp_stop").await;

    // B does not wait out A's lease in silence: a 503 that says so, soon.
    let started = std::time::Instant::now();
    let answer = b
        .authed(Method::POST, &format!("/workspaces/{id}/restart"))
        .send()
        .await
        .expect("B answers");
    let waited = started.elapsed();
    assert_eq!(answer.status().as_u16(), 503);
    assert!(answer.headers().get("retry-after").is_some());
    let body: serde_json::Value = answer.json().await.expect("a JSON error");
    assert_eq!(body["code"], "workspace_busy", "{body}");
    println!("B answered 503 after {waited:?}");

    // The intent stands: once A's lease runs out (it is no longer
    // renewed), B's reconciler carries the restart out, once.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(40);
    loop {
        let pids = workspace_processes(&id);
        if pids.len() == 1 && pids != vec![first] {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "B never restarted the workspace: {pids:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    wait_workspace_process_count(&id, 1).await;
    assert_eq!(b.wait_online(&id).await["status"], "online");
}
