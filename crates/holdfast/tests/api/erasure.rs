//! Erasure and restore (SPEC §4, §5): a delete with `erase_data=true` keeps
//! the data for the erase grace, a restore within it brings everything back,
//! the erasure after it is recorded and final, and a crash at any point of an
//! erasure finishes it exactly once without touching other workspaces.

use crate::helpers::{
    RECORDING_SCRIPT, SHORT_GRACES, TestApp, assert_files_intact, count_action, events_with_action,
    id_of, items_for, parse_time, plant_files, planted_bytes, process_is_running, wait_for_lines,
    wait_for_pid_other_than, wait_process_gone, wait_workspace_process_count,
};
use serde_json::{Value, json};

/// The history entries of a volume record.
fn history(record: &Value) -> Vec<Value> {
    record["history"]
        .as_array()
        .unwrap_or_else(|| panic!("a volume record without a `history` array: {record}"))
        .clone()
}

/// Whether the history holds a transition `from` → `to`.
fn has_transition(record: &Value, from: &str, to: &str) -> bool {
    history(record)
        .iter()
        .any(|h| h["from"] == from && h["to"] == to)
}

#[tokio::test]
async fn restore_within_the_erase_grace_cancels_the_erasure_and_runs_again() {
    // An erase grace far longer than the test, so that "within the grace" is
    // certain whatever the machine's speed.
    let app = TestApp::spawn_with(&["--erase-grace", "1h", "--sweep-interval", "1h"]).await;
    let (id, pid) = app.running_persist_workspace("undo-me").await;
    let volume = app.volume_dir(&id);
    let planted = plant_files(&volume, "undo-me");
    let volume_id = id_of(&app.volume(&id).await);

    let deleted = app
        .delete_workspace(&id)
        .confirm_name("undo-me")
        .erase_data()
        .send()
        .await
        .expect_status(200);
    assert_eq!(deleted["data"], "erase_pending", "{deleted}");
    wait_process_gone(pid).await;

    // A sweep within the grace must leave the data alone.
    let report = app.sweep().await;
    assert!(
        items_for(&report, &id).is_empty(),
        "nothing is due within the erase grace: {report}"
    );
    assert_files_intact(&volume, &planted);
    assert_eq!(app.volume(&id).await["state"], "erase_pending");

    let restored = app.restore_workspace(&id).await.expect_status(200);
    assert_eq!(restored["id"], id.as_str(), "{restored}");
    assert_ne!(restored["status"], "removed", "{restored}");
    assert_eq!(restored["data"]["state"], "active", "{restored}");
    let online = app.wait_online(&id).await;
    assert!(online["removed_at"].is_null(), "{online}");
    assert_eq!(online["data"]["state"], "active", "{online}");

    let new_pid = wait_for_pid_other_than(&volume, pid).await;
    assert!(process_is_running(new_pid));
    assert_files_intact(&volume, &planted);
    assert_eq!(
        wait_for_lines(&volume.join("data.txt"), 2).await,
        ["started", "started"],
        "the restored workspace must start on the same data"
    );

    let record = app.volume(&id).await;
    assert_eq!(
        record["id"],
        volume_id.as_str(),
        "the same volume: {record}"
    );
    assert_eq!(record["state"], "active", "{record}");
    assert!(record["erase_after"].is_null(), "{record}");
    assert!(record["erased_at"].is_null(), "{record}");
    assert!(
        has_transition(&record, "erase_pending", "active"),
        "{record}"
    );

    let events = app.audit_of(&id).await;
    assert_eq!(
        count_action(&events, "volume.erase_cancelled"),
        1,
        "{events:?}"
    );
    assert_eq!(count_action(&events, "workspace.restored"), 1, "{events:?}");
    assert_eq!(count_action(&events, "volume.erased"), 0, "{events:?}");

    // The erasure is cancelled for good: a later sweep has nothing to do.
    let report = app.sweep().await;
    assert!(items_for(&report, &id).is_empty(), "{report}");
    assert_files_intact(&volume, &planted);
    app.restore_workspace(&id)
        .await
        .expect_error(409, "not_removed");
}

#[tokio::test]
async fn erasure_after_the_grace_removes_the_files_and_records_who_asked() {
    let app = TestApp::spawn_with_short_graces().await;
    let (id, pid) = app.running_persist_workspace("doomed").await;
    let (bystander, bystander_pid) = app.running_persist_workspace("bystander").await;
    let volume = app.volume_dir(&id);
    let planted = plant_files(&volume, "doomed");
    let kept = plant_files(&app.volume_dir(&bystander), "bystander");
    let volume_id = id_of(&app.volume(&id).await);

    app.delete_workspace(&id)
        .confirm_name("doomed")
        .erase_data()
        .send()
        .await
        .expect_status(200);
    wait_process_gone(pid).await;
    let pending = app.volume(&id).await;
    assert_eq!(pending["state"], "erase_pending", "{pending}");
    assert!(
        parse_time(&pending["erase_after"]) > parse_time(&pending["updated_at"]),
        "erase_after lies after the delete: {pending}"
    );

    let planned = app.wait_sweep_plans(&id, "erase").await;
    assert_eq!(planned["reason"], "erase_requested", "{planned}");
    assert_files_intact(&volume, &planted);

    let report = app.sweep().await;
    let items = items_for(&report, &id);
    assert_eq!(items.len(), 1, "{report}");
    assert_eq!(items[0]["action"], "erase", "{report}");
    assert_eq!(items[0]["outcome"], "done", "{report}");
    assert_eq!(items[0]["volume_id"], volume_id.as_str(), "{report}");
    assert!(
        items[0]["bytes"].as_u64().unwrap_or(0) >= planted_bytes(&planted),
        "{report}"
    );

    assert!(!volume.exists(), "the erased volume must be gone from disk");
    assert!(
        !app.trash_dir(&volume_id).exists(),
        "nothing may be left in the trash"
    );
    let record = app.volume(&id).await;
    assert_eq!(record["id"], volume_id.as_str(), "{record}");
    assert_eq!(record["state"], "erased", "{record}");
    assert!(record["erased_at"].is_string(), "{record}");
    parse_time(&record["erased_at"]);
    assert!(
        record["bytes_erased"].as_u64().unwrap_or(0) >= planted_bytes(&planted),
        "bytes_erased counts at least what was written: {record}"
    );
    assert_eq!(record["erased_by"], "admin", "who asked: {record}");
    assert_eq!(record["reason"], "erase_requested", "{record}");
    assert!(has_transition(&record, "erasing", "erased"), "{record}");
    assert!(
        history(&record)
            .iter()
            .any(|h| h["to"] == "erase_pending" && h["actor"] == "admin" && h["at"].is_string()),
        "the history says who asked for the erasure: {record}"
    );
    assert_eq!(
        app.workspace(&id).await["data"]["state"],
        "erased",
        "the workspace's data summary follows the record"
    );
    let erased = app.volumes_in_state("erased").await;
    assert_eq!(erased.len(), 1, "{erased:?}");
    assert_eq!(erased[0]["workspace_id"], id.as_str());

    let events = app.audit_of(&id).await;
    let erasures = events_with_action(&events, "volume.erased");
    assert_eq!(erasures.len(), 1, "exactly one erasure event: {events:?}");
    assert_eq!(erasures[0]["actor"], "admin", "{events:?}");
    assert_eq!(erasures[0]["volume_id"], volume_id.as_str(), "{events:?}");
    assert!(
        erasures[0]["detail"]["bytes_erased"].as_u64().unwrap_or(0) >= planted_bytes(&planted),
        "{events:?}"
    );

    // The other workspace is untouched by the erasure.
    assert_files_intact(&app.volume_dir(&bystander), &kept);
    assert!(process_is_running(bystander_pid));
    assert_eq!(app.workspace(&bystander).await["status"], "online");
    assert_eq!(app.volume(&bystander).await["state"], "active");
}

#[tokio::test]
async fn restore_after_erasure_is_409_data_erased() {
    let app = TestApp::spawn_with_short_graces().await;
    let (id, pid) = app.running_persist_workspace("too-late").await;
    app.delete_workspace(&id)
        .confirm_name("too-late")
        .erase_data()
        .send()
        .await
        .expect_status(200);
    wait_process_gone(pid).await;
    app.wait_sweep_plans(&id, "erase").await;
    app.sweep().await;
    assert_eq!(app.volume(&id).await["state"], "erased");

    app.restore_workspace(&id)
        .await
        .expect_error(409, "data_erased");
    let after = app.workspace(&id).await;
    assert_eq!(
        after["status"], "removed",
        "a refused restore changes nothing: {after}"
    );
    assert_eq!(after["data"]["state"], "erased", "{after}");
    assert!(!app.volume_dir(&id).exists());
    assert_eq!(wait_workspace_process_count(&id, 0).await.len(), 0);
}

#[tokio::test]
async fn restore_of_a_retained_workspace_brings_its_data_back() {
    let app = TestApp::spawn_with_short_graces().await;
    let (id, pid) = app.running_persist_workspace("kept").await;
    let volume = app.volume_dir(&id);
    let planted = plant_files(&volume, "kept");
    app.delete_workspace(&id)
        .confirm_name("kept")
        .send()
        .await
        .expect_status(200);
    wait_process_gone(pid).await;
    let retained = app.volume(&id).await;
    assert_eq!(retained["state"], "retained", "{retained}");
    assert_eq!(retained["reason"], "workspace_deleted", "{retained}");

    let old_deadline = parse_time(&retained["retain_until"]);

    app.restore_workspace(&id).await.expect_status(200);
    let online = app.wait_online(&id).await;
    assert_eq!(online["data"]["state"], "active", "{online}");
    wait_for_pid_other_than(&volume, pid).await;
    assert_files_intact(&volume, &planted);
    let record = app.volume(&id).await;
    assert!(record["retain_until"].is_null(), "{record}");

    let events = app.audit_of(&id).await;
    assert_eq!(count_action(&events, "volume.restored"), 1, "{events:?}");
    assert_eq!(count_action(&events, "workspace.restored"), 1, "{events:?}");
    assert_eq!(
        count_action(&events, "volume.erase_cancelled"),
        0,
        "{events:?}"
    );

    // Restored means live: even past the old retention deadline the sweeper
    // leaves it alone. There is nothing to poll for (nothing must happen), so
    // wait out the old deadline itself.
    let left = old_deadline
        .duration_since(std::time::SystemTime::now())
        .unwrap_or_default();
    tokio::time::sleep(left + std::time::Duration::from_millis(500)).await;
    let report = app.sweep().await;
    assert!(items_for(&report, &id).is_empty(), "{report}");
    assert_files_intact(&volume, &planted);
}

#[tokio::test]
async fn restore_of_a_child_needs_its_parent_restored_first() {
    let app = TestApp::spawn_with_short_graces().await;
    let (parent, parent_pid) = app.running_persist_workspace("parent").await;
    let child = id_of(
        &app.create_online_workspace(&crate::helpers::child_body("child", &parent))
            .await,
    );
    let child_pid = crate::helpers::wait_for_pid(&app.volume_dir(&child)).await;
    let child_files = plant_files(&app.volume_dir(&child), "child");
    let deleted = app
        .delete_workspace(&parent)
        .confirm_name("parent")
        .confirm_children()
        .send()
        .await
        .expect_status(200);
    assert_eq!(deleted["cascade_deleted"], 2, "{deleted}");
    wait_process_gone(parent_pid).await;
    wait_process_gone(child_pid).await;

    let refused = app
        .restore_workspace(&child)
        .await
        .expect_error(409, "parent_removed");
    assert_eq!(refused["parent_id"], parent.as_str(), "{refused}");
    let still = app.workspace(&child).await;
    assert_eq!(
        still["status"], "removed",
        "a refused restore changes nothing"
    );
    assert_eq!(still["data"]["state"], "retained", "{still}");

    app.restore_workspace(&parent).await.expect_status(200);
    app.wait_online(&parent).await;
    assert_eq!(
        app.workspace(&child).await["status"],
        "removed",
        "restoring a parent does not bring its children back by itself"
    );
    app.restore_workspace(&child).await.expect_status(200);
    let online = app.wait_online(&child).await;
    assert_eq!(online["parent_id"], parent.as_str(), "{online}");
    assert_eq!(online["data"]["state"], "active", "{online}");
    wait_for_pid_other_than(&app.volume_dir(&child), child_pid).await;
    assert_files_intact(&app.volume_dir(&child), &child_files);
}

#[tokio::test]
async fn restore_answers_not_removed_not_found_and_invalid_id() {
    let app = TestApp::spawn_with_short_graces().await;
    let (id, pid) = app.running_persist_workspace("alive").await;
    app.restore_workspace(&id)
        .await
        .expect_error(409, "not_removed");
    assert!(
        process_is_running(pid),
        "a refused restore must not restart"
    );
    app.restore_workspace(&uuid::Uuid::new_v4().to_string())
        .await
        .expect_error(404, "not_found");
    let bad = app.restore_workspace("not-a-uuid").await;
    assert_eq!(bad.status.as_u16(), 400, "{}", bad.text);
    assert!(bad.body["code"].is_string(), "{}", bad.text);
}

/// Where an erasure crashes, and what the disk must look like right after.
#[derive(Debug, Clone, Copy)]
enum Window {
    /// Marked `erasing`, no file touched yet.
    AfterMark,
    /// The volume moved into the trash, not yet deleted.
    Mid,
    /// Files gone, the record not yet `erased`.
    BeforeRecord,
}

impl Window {
    fn failpoint(self) -> &'static str {
        match self {
            Window::AfterMark => "erase.after_mark",
            Window::Mid => "erase.mid",
            Window::BeforeRecord => "erase.before_record",
        }
    }
}

/// Two persist workspaces with files; A is deleted with erase and its grace
/// waited out; the process running the control plane is crashed and started
/// with the window's failpoint, so the sweep at start aborts it there; then
/// it is started without it.
/// A's erasure must finish exactly once and B must have lost nothing.
async fn check_erase_crash_window(window: Window) {
    let failpoint = window.failpoint();
    let mut app = TestApp::spawn_with(SHORT_GRACES).await;
    let (a, a_pid) = app.running_persist_workspace("erase-me").await;
    let (b, b_pid) = app.running_persist_workspace("keep-me").await;
    let a_dir = app.volume_dir(&a);
    let b_dir = app.volume_dir(&b);
    let a_files = plant_files(&a_dir, "erase-me");
    let b_files = plant_files(&b_dir, "keep-me");
    let a_volume = id_of(&app.volume(&a).await);

    app.delete_workspace(&a)
        .confirm_name("erase-me")
        .erase_data()
        .send()
        .await
        .expect_status(200);
    wait_process_gone(a_pid).await;
    // A dry run acts on nothing, so the grace is waited out without the
    // erasure starting before the failpoint is armed.
    app.wait_sweep_plans(&a, "erase").await;
    assert_files_intact(&a_dir, &a_files);

    // The erase path runs in the control plane: the server itself, or with a
    // remote control plane, the `holdfast cp serve` (crashed and started with
    // the failpoint while the server keeps running).
    app.crash_and_restart_control_plane_with_env(&[("HOLDFAST_FAILPOINTS", failpoint)])
        .await;
    app.expect_control_plane_abort(failpoint).await;

    // The disk shows that the crash happened where the window says.
    let trash = app.trash_dir(&a_volume);
    match window {
        Window::AfterMark => {
            assert_files_intact(&a_dir, &a_files);
            assert!(!trash.exists(), "{failpoint}: nothing moved yet");
        }
        Window::Mid => {
            assert!(!a_dir.exists(), "{failpoint}: the volume was moved away");
            assert_files_intact(&trash, &a_files);
        }
        Window::BeforeRecord => {
            assert!(!a_dir.exists(), "{failpoint}: the files are gone");
            assert!(!trash.exists(), "{failpoint}: the trash is emptied");
        }
    }
    assert_files_intact(&b_dir, &b_files);

    app.start_control_plane_again_without_env().await;
    let record = app.wait_volume_state(&a, "erased").await;
    // More passes must not erase (or record) anything twice.
    let report = app.sweep().await;
    assert!(
        items_for(&report, &a).is_empty(),
        "{failpoint}: nothing is left to do for A: {report}"
    );
    app.sweep().await;

    assert_eq!(record["id"], a_volume.as_str(), "{record}");
    assert!(record["erased_at"].is_string(), "{failpoint}: {record}");
    assert_eq!(record["erased_by"], "admin", "{failpoint}: {record}");
    assert_eq!(record["reason"], "erase_requested", "{failpoint}: {record}");
    assert!(
        record["bytes_erased"].as_u64().unwrap_or(0) >= planted_bytes(&a_files),
        "{failpoint}: bytes_erased counts what was there even when resumed: {record}"
    );
    assert!(!a_dir.exists(), "{failpoint}: A's volume must be gone");
    assert!(!trash.exists(), "{failpoint}: A's trash must be gone");
    let events = app.audit_of(&a).await;
    assert_eq!(
        count_action(&events, "volume.erased"),
        1,
        "{failpoint}: exactly one erasure event: {events:?}"
    );
    assert_eq!(app.workspace(&a).await["status"], "removed");

    let b_online = app.wait_online(&b).await;
    assert_eq!(b_online["data"]["state"], "active", "{b_online}");
    wait_process_gone(b_pid).await;
    wait_workspace_process_count(&b, 1).await;
    assert_files_intact(&b_dir, &b_files);
    assert!(
        wait_for_lines(&b_dir.join("data.txt"), 2).await.len() >= 2,
        "{failpoint}: B started again on its own data"
    );
    assert_eq!(app.volume(&b).await["state"], "active");
    assert_eq!(app.volumes_in_state("erased").await.len(), 1);
}

#[tokio::test]
async fn crash_after_an_erasure_is_marked_resumes_it_at_start() {
    check_erase_crash_window(Window::AfterMark).await;
}

#[tokio::test]
async fn crash_while_the_erased_volume_is_in_the_trash_resumes_it_at_start() {
    check_erase_crash_window(Window::Mid).await;
}

#[tokio::test]
async fn crash_before_an_erasure_is_recorded_finishes_it_once() {
    check_erase_crash_window(Window::BeforeRecord).await;
}

#[tokio::test]
async fn erasure_never_follows_links_out_of_the_data_dir_nor_blocks_on_a_fifo() {
    let app = TestApp::spawn_with_short_graces().await;
    // Files outside the data dir that a hostile process links to; the big
    // one would show in `bytes_erased` if the size count followed links.
    let outside = tempfile::tempdir().expect("a dir outside the data dir");
    let big = vec![7u8; 2 * 1024 * 1024];
    std::fs::write(outside.path().join("big.bin"), &big).expect("write outside");
    std::fs::write(outside.path().join("keep.txt"), "not yours").expect("write outside");
    let script = format!(
        "ln -sfn \"$OUTSIDE\" outside_dir; ln -sf \"$OUTSIDE/keep.txt\" outside_file; \
         [ -p pipe ] || mkfifo pipe; {RECORDING_SCRIPT}"
    );
    let ws = app
        .create_online_workspace(&json!({
            "name": "linker",
            "runtime": { "command": ["sh", "-c", script] },
            "compute": { "data_persistence": "persist" },
            "env": { "OUTSIDE": outside.path().display().to_string() },
        }))
        .await;
    let id = id_of(&ws);
    let volume = app.volume_dir(&id);
    let pid = crate::helpers::wait_for_pid(&volume).await;
    assert!(volume.join("pipe").exists(), "the workspace made its FIFO");

    app.delete_workspace(&id)
        .confirm_name("linker")
        .erase_data()
        .send()
        .await
        .expect_status(200);
    wait_process_gone(pid).await;
    app.wait_sweep_plans(&id, "erase").await;
    let report = app.sweep().await;
    let items = items_for(&report, &id);
    assert_eq!(items.len(), 1, "{report}");
    assert_eq!(items[0]["outcome"], "done", "{report}");

    assert!(
        !volume.exists(),
        "the volume, links and FIFO included, is gone"
    );
    assert_eq!(
        std::fs::read(outside.path().join("big.bin")).expect("outside file kept"),
        big
    );
    assert_eq!(
        std::fs::read_to_string(outside.path().join("keep.txt")).expect("outside file kept"),
        "not yours"
    );
    let record = app.volume(&id).await;
    assert_eq!(record["state"], "erased", "{record}");
    assert!(
        record["bytes_erased"].as_u64().unwrap_or(u64::MAX) < big.len() as u64,
        "a link's target is not counted as erased: {record}"
    );
}

#[tokio::test]
async fn restoring_a_parent_does_not_save_its_children_from_erasure() {
    let app = TestApp::spawn_with_short_graces().await;
    let (parent, parent_pid) = app.running_persist_workspace("parent").await;
    let child = id_of(
        &app.create_online_workspace(&crate::helpers::child_body("child", &parent))
            .await,
    );
    let child_pid = crate::helpers::wait_for_pid(&app.volume_dir(&child)).await;
    let parent_files = plant_files(&app.volume_dir(&parent), "parent");
    app.delete_workspace(&parent)
        .confirm_name("parent")
        .confirm_children()
        .erase_data()
        .send()
        .await
        .expect_status(200);
    wait_process_gone(parent_pid).await;
    wait_process_gone(child_pid).await;

    app.restore_workspace(&parent).await.expect_status(200);
    app.wait_online(&parent).await;
    assert_eq!(app.volume(&child).await["state"], "erase_pending");

    // The child's erasure still happens after its grace; the live parent's
    // volume is not touched by it.
    app.wait_sweep_plans(&child, "erase").await;
    let report = app.sweep().await;
    assert!(items_for(&report, &parent).is_empty(), "{report}");
    assert_eq!(items_for(&report, &child).len(), 1, "{report}");
    assert_eq!(app.volume(&child).await["state"], "erased");
    assert!(!app.volume_dir(&child).exists());
    assert_files_intact(&app.volume_dir(&parent), &parent_files);
    assert_eq!(app.volume(&parent).await["state"], "active");
    app.restore_workspace(&child)
        .await
        .expect_error(409, "data_erased");
}
