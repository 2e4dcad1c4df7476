//! The sweeper (SPEC §3, §6): retention expiry, orphan adoption, dry runs,
//! the switch to ephemeral, the pass at start, and the metrics it feeds. It
//! must never erase data of a live workspace nor anything before its grace.

use crate::helpers::{
    RECORDING_SCRIPT, TestApp, assert_files_intact, count_action, eventually, id_of, items_for,
    metric_value, parse_time, plant_files, planted_bytes, process_is_running, read_lines,
    skip_in_remote_mode, skip_on_container_backend, wait_for_lines, wait_for_pid,
    wait_for_pid_other_than, wait_process_gone,
};
use reqwest::Method;
use serde_json::{Value, json};
use std::time::{Duration, SystemTime};

/// The one item of `report` about workspace `id`, failing when there is not
/// exactly one.
#[track_caller]
fn only_item_for(report: &Value, id: &str) -> Value {
    let items = items_for(report, id);
    assert_eq!(items.len(), 1, "one item for {id} expected: {report}");
    items[0].clone()
}

/// The volume records (any state) of workspace `id` in `GET /volumes`.
async fn volume_records_of(app: &TestApp, id: &str) -> Vec<Value> {
    app.volumes()
        .await
        .into_iter()
        .filter(|v| v["workspace_id"] == id)
        .collect()
}

/// Creates `<volumes>/<name>/` holding a few files, as a directory left
/// behind by an earlier install or a lost record would.
fn plant_directory(app: &TestApp, name: &str) -> std::collections::BTreeMap<String, Vec<u8>> {
    let dir = app.volumes_root().join(name);
    std::fs::create_dir_all(&dir).expect("create a directory under volumes/");
    plant_files(&dir, name)
}

#[tokio::test]
async fn retention_expiry_erases_a_deleted_workspace_volume() {
    let app = TestApp::spawn_with_short_graces().await;
    let (id, pid) = app.running_persist_workspace("retired").await;
    let volume = app.volume_dir(&id);
    let planted = plant_files(&volume, "retired");
    app.delete_workspace(&id)
        .confirm_name("retired")
        .send()
        .await
        .expect_status(200);
    wait_process_gone(pid).await;
    // The size is measured after the stop, in the background (through the
    // engine on the container backend): the record shows it soon after.
    let want = planted_bytes(&planted);
    let retained = eventually("a retained volume to show how much it holds", || async {
        let v = app.volume(&id).await;
        (v["bytes"].as_u64().unwrap_or(0) >= want).then_some(v)
    })
    .await;
    assert_eq!(retained["state"], "retained", "{retained}");
    assert_eq!(retained["reason"], "workspace_deleted", "{retained}");
    assert!(retained["erase_after"].is_null(), "{retained}");

    // Within the retention grace a sweep keeps it.
    let report = app.sweep().await;
    assert!(items_for(&report, &id).is_empty(), "{report}");
    assert_files_intact(&volume, &planted);

    let planned = app.wait_sweep_plans(&id, "erase").await;
    assert_eq!(planned["reason"], "retention_expired", "{planned}");
    let report = app.sweep().await;
    let item = only_item_for(&report, &id);
    assert_eq!(item["action"], "erase", "{report}");
    assert_eq!(item["reason"], "retention_expired", "{report}");
    assert_eq!(item["outcome"], "done", "{report}");

    assert!(
        !volume.exists(),
        "the expired volume must be gone from disk"
    );
    let record = app.volume(&id).await;
    assert_eq!(record["state"], "erased", "{record}");
    assert_eq!(record["reason"], "retention_expired", "{record}");
    assert!(record["erased_at"].is_string(), "{record}");
    assert!(record["erased_by"].is_string(), "{record}");
    assert!(
        record["bytes_erased"].as_u64().unwrap_or(0) >= planted_bytes(&planted),
        "{record}"
    );
    let events = app.audit_of(&id).await;
    assert_eq!(count_action(&events, "volume.erased"), 1, "{events:?}");
    let erased = crate::helpers::events_with_action(&events, "volume.erased");
    assert_eq!(erased[0]["reason"], "retention_expired", "{events:?}");
}

#[tokio::test]
async fn an_orphan_directory_is_adopted_and_erased_only_after_the_retention_grace() {
    if skip_on_container_backend(
        "directories under volumes/ are the process backend's; containers.rs adopts an \
         unknown labelled named volume",
    ) {
        return;
    }
    if skip_in_remote_mode(
        "a directory nobody knows on a remote control plane's disk belongs to no tenant, so no \
         platform reports its adoption; tenancy.rs checks it on the control plane itself",
    ) {
        return;
    }
    let app = TestApp::spawn_with_short_graces().await;
    let orphan = uuid::Uuid::new_v4().to_string();
    let orphan_files = plant_directory(&app, &orphan);
    let stranger_files = plant_directory(&app, "not-a-volume");
    let orphan_dir = app.volume_dir(&orphan);
    let stranger_dir = app.volumes_root().join("not-a-volume");

    let report = app.sweep().await;
    let item = only_item_for(&report, &orphan);
    assert_eq!(item["action"], "adopt", "{report}");
    assert_eq!(item["reason"], "orphaned_on_disk", "{report}");
    assert_eq!(item["outcome"], "done", "{report}");
    assert!(item["volume_id"].is_string(), "{report}");
    assert!(
        item["bytes"].as_u64().unwrap_or(0) >= planted_bytes(&orphan_files),
        "{report}"
    );
    assert_files_intact(&orphan_dir, &orphan_files);

    let records = volume_records_of(&app, &orphan).await;
    assert_eq!(records.len(), 1, "{records:?}");
    assert_eq!(records[0]["id"], item["volume_id"], "{records:?}");
    assert_eq!(records[0]["state"], "retained", "{records:?}");
    assert_eq!(records[0]["reason"], "orphaned_on_disk", "{records:?}");
    assert!(records[0]["retain_until"].is_string(), "{records:?}");
    let retained = app.volumes_in_state("retained").await;
    assert!(
        retained
            .iter()
            .any(|v| v["workspace_id"] == orphan.as_str()),
        "?state=retained lists the adopted volume: {retained:?}"
    );
    let adopted: Vec<Value> = app
        .audit()
        .await
        .into_iter()
        .filter(|e| e["action"] == "volume.adopted")
        .collect();
    assert_eq!(adopted.len(), 1, "{adopted:?}");
    assert_eq!(adopted[0]["workspace_id"], orphan.as_str(), "{adopted:?}");
    assert_eq!(adopted[0]["volume_id"], item["volume_id"], "{adopted:?}");

    // Never erased on first sight, and not adopted twice.
    let report = app.sweep().await;
    assert!(items_for(&report, &orphan).is_empty(), "{report}");
    assert_files_intact(&orphan_dir, &orphan_files);
    assert_eq!(volume_records_of(&app, &orphan).await.len(), 1);

    let planned = app.wait_sweep_plans(&orphan, "erase").await;
    assert_eq!(planned["reason"], "retention_expired", "{planned}");
    let report = app.sweep().await;
    let item = only_item_for(&report, &orphan);
    assert_eq!(item["outcome"], "done", "{report}");
    assert!(!orphan_dir.exists(), "the expired orphan must be gone");
    let records = volume_records_of(&app, &orphan).await;
    assert_eq!(records.len(), 1, "{records:?}");
    assert_eq!(records[0]["state"], "erased", "{records:?}");

    // A name that is not a volume id is not the sweeper's to touch.
    assert_files_intact(&stranger_dir, &stranger_files);
    assert!(
        app.volumes()
            .await
            .iter()
            .all(|v| !v.to_string().contains("not-a-volume")),
        "no record for a directory that is not named by an id"
    );
}

#[tokio::test]
async fn a_dry_run_reports_every_planned_action_and_changes_nothing() {
    if skip_on_container_backend(
        "it plants an orphan directory under volumes/, the process backend's; containers.rs \
         adopts an unknown labelled volume",
    ) {
        return;
    }
    let app = TestApp::spawn_with_short_graces().await;
    let (erased, erased_pid) = app.running_persist_workspace("erase-me").await;
    let (retired, retired_pid) = app.running_persist_workspace("retire-me").await;
    let erased_files = plant_files(&app.volume_dir(&erased), "erase-me");
    let retired_files = plant_files(&app.volume_dir(&retired), "retire-me");
    app.delete_workspace(&erased)
        .confirm_name("erase-me")
        .erase_data()
        .send()
        .await
        .expect_status(200);
    app.delete_workspace(&retired)
        .confirm_name("retire-me")
        .send()
        .await
        .expect_status(200);
    wait_process_gone(erased_pid).await;
    wait_process_gone(retired_pid).await;
    let orphan = uuid::Uuid::new_v4().to_string();
    let orphan_files = plant_directory(&app, &orphan);
    // A directory nobody knows on a remote control plane's disk belongs to no
    // tenant, so no platform's report shows it (tenancy.rs checks its
    // adoption there); everything else is the same in both modes.
    let orphan_reported = !app.is_remote();
    // The retention grace is the longer one, so both deletes are due then.
    app.wait_sweep_plans(&retired, "erase").await;
    let audit_before = app.audit().await;
    let volumes_before = app.volumes().await;

    for _ in 0..2 {
        let report = app.sweep_dry_run().await;
        let item = only_item_for(&report, &erased);
        assert_eq!(
            (&item["action"], &item["reason"]),
            (&json!("erase"), &json!("erase_requested")),
            "{report}"
        );
        let item = only_item_for(&report, &retired);
        assert_eq!(
            (&item["action"], &item["reason"]),
            (&json!("erase"), &json!("retention_expired")),
            "{report}"
        );
        if orphan_reported {
            let item = only_item_for(&report, &orphan);
            assert_eq!(
                (&item["action"], &item["reason"]),
                (&json!("adopt"), &json!("orphaned_on_disk")),
                "{report}"
            );
        }
    }

    assert_files_intact(&app.volume_dir(&erased), &erased_files);
    assert_files_intact(&app.volume_dir(&retired), &retired_files);
    assert_files_intact(&app.volume_dir(&orphan), &orphan_files);
    assert_eq!(app.volume(&erased).await["state"], "erase_pending");
    assert_eq!(app.volume(&retired).await["state"], "retained");
    assert_eq!(
        app.volumes().await,
        volumes_before,
        "a dry run must not change any volume record"
    );
    assert!(volume_records_of(&app, &orphan).await.is_empty());
    assert_eq!(
        app.audit().await,
        audit_before,
        "a dry run must not write audit events"
    );

    // The same plan, carried out.
    let report = app.sweep().await;
    let mut acted_on = vec![&erased, &retired];
    if orphan_reported {
        acted_on.push(&orphan);
    }
    for id in acted_on {
        assert_eq!(only_item_for(&report, id)["outcome"], "done", "{report}");
    }
    assert!(!app.volume_dir(&erased).exists());
    assert!(!app.volume_dir(&retired).exists());
    assert_files_intact(&app.volume_dir(&orphan), &orphan_files);
}

#[tokio::test]
async fn a_restore_after_the_grace_but_before_a_sweep_keeps_the_data() {
    let app = TestApp::spawn_with_short_graces().await;
    let (id, pid) = app.running_persist_workspace("saved").await;
    let volume = app.volume_dir(&id);
    let planted = plant_files(&volume, "saved");
    app.delete_workspace(&id)
        .confirm_name("saved")
        .erase_data()
        .send()
        .await
        .expect_status(200);
    wait_process_gone(pid).await;
    app.wait_sweep_plans(&id, "erase").await;

    // The grace has passed but no erasure began, so the restore still wins.
    app.restore_workspace(&id).await.expect_status(200);
    app.wait_online(&id).await;
    let report = app.sweep().await;
    assert!(
        items_for(&report, &id).is_empty(),
        "a live workspace's volume is never erased: {report}"
    );
    let new_pid = wait_for_pid_other_than(&volume, pid).await;
    assert!(process_is_running(new_pid));
    assert_files_intact(&volume, &planted);
    assert_eq!(app.volume(&id).await["state"], "active");
}

#[tokio::test]
async fn switching_to_ephemeral_retains_the_volume_and_switching_back_reattaches_it() {
    let app = TestApp::spawn_with_short_graces().await;
    let (id, pid) = app.running_persist_workspace("switcher").await;
    let volume = app.volume_dir(&id);
    let planted = plant_files(&volume, "switcher");
    let volume_id = id_of(&app.volume(&id).await);

    app.patch_workspace(
        &id,
        &json!({ "compute": { "data_persistence": "ephemeral" } }),
    )
    .await
    .expect_status(200);
    app.restart_workspace(&id).await.expect_status(200);
    app.wait_online(&id).await;
    let ephemeral_pid = wait_for_pid(&app.scratch_dir(&id)).await;
    wait_process_gone(pid).await;
    let detached = volume_records_of(&app, &id).await;
    assert_eq!(detached.len(), 1, "{detached:?}");
    assert_eq!(detached[0]["id"], volume_id.as_str(), "{detached:?}");
    assert_eq!(detached[0]["state"], "retained", "{detached:?}");
    assert_eq!(
        detached[0]["reason"], "switched_to_ephemeral",
        "{detached:?}"
    );
    assert!(detached[0]["retain_until"].is_string(), "{detached:?}");
    assert_files_intact(&volume, &planted);
    let events = app.audit_of(&id).await;
    assert!(
        crate::helpers::events_with_action(&events, "volume.retained")
            .iter()
            .any(|e| e["reason"] == "switched_to_ephemeral"),
        "the detachment is audited: {events:?}"
    );
    // Within the grace a sweep keeps the detached volume.
    let report = app.sweep().await;
    assert!(items_for(&report, &id).is_empty(), "{report}");

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
    wait_for_pid_other_than(&volume, pid).await;
    wait_process_gone(ephemeral_pid).await;
    let record = app.volume(&id).await;
    assert_eq!(
        record["id"],
        volume_id.as_str(),
        "the same volume: {record}"
    );
    assert_eq!(record["state"], "active", "{record}");
    assert!(record["retain_until"].is_null(), "{record}");
    assert_files_intact(&volume, &planted);
    assert_eq!(
        wait_for_lines(&volume.join("data.txt"), 2).await,
        ["started", "started"]
    );
}

#[tokio::test]
async fn a_volume_detached_by_a_switch_is_erased_once_the_retention_grace_passes() {
    let app = TestApp::spawn_with_short_graces().await;
    let (id, pid) = app.running_persist_workspace("let-go").await;
    let volume = app.volume_dir(&id);
    plant_files(&volume, "let-go");
    app.patch_workspace(
        &id,
        &json!({ "compute": { "data_persistence": "ephemeral" } }),
    )
    .await
    .expect_status(200);
    app.restart_workspace(&id).await.expect_status(200);
    app.wait_online(&id).await;
    let scratch = app.scratch_dir(&id);
    let ephemeral_pid = wait_for_pid(&scratch).await;
    wait_process_gone(pid).await;

    let planned = app.wait_sweep_plans(&id, "erase").await;
    assert_eq!(planned["reason"], "retention_expired", "{planned}");
    let report = app.sweep().await;
    assert_eq!(only_item_for(&report, &id)["outcome"], "done", "{report}");
    assert!(!volume.exists(), "the detached volume must be gone");
    let records = volume_records_of(&app, &id).await;
    assert!(
        records.iter().any(|v| v["state"] == "erased"),
        "{records:?}"
    );

    // The workspace itself, running ephemeral, is untouched.
    let ws = app.workspace(&id).await;
    assert_eq!(ws["status"], "online", "{ws}");
    assert_eq!(ws["data"]["mode"], "ephemeral", "{ws}");
    assert!(process_is_running(ephemeral_pid));
    assert_eq!(read_lines(&scratch.join("data.txt")), ["started"]);
}

#[tokio::test]
async fn the_sweeper_runs_at_start() {
    let mut app = TestApp::spawn_with_short_graces().await;
    let (id, pid) = app.running_persist_workspace("at-boot").await;
    app.delete_workspace(&id)
        .confirm_name("at-boot")
        .erase_data()
        .send()
        .await
        .expect_status(200);
    wait_process_gone(pid).await;
    app.wait_sweep_plans(&id, "erase").await;

    // The interval is an hour: only the pass at start can do it.
    app.restart_server().await;
    let record = app.wait_volume_state(&id, "erased").await;
    assert_eq!(record["reason"], "erase_requested", "{record}");
    assert!(!app.volume_dir(&id).exists());
    assert_eq!(count_action(&app.audit_of(&id).await, "volume.erased"), 1);
}

#[tokio::test]
async fn default_graces_are_seven_days_to_retain_and_five_minutes_to_erase() {
    let app = TestApp::spawn().await;
    let (kept, _) = app.running_persist_workspace("kept").await;
    let (erased, _) = app.running_persist_workspace("erased").await;

    let before = SystemTime::now();
    app.delete_workspace(&kept)
        .confirm_name("kept")
        .send()
        .await
        .expect_status(200);
    app.delete_workspace(&erased)
        .confirm_name("erased")
        .erase_data()
        .send()
        .await
        .expect_status(200);
    let after = SystemTime::now();
    // Timestamps are printed to the millisecond; allow for the rounding.
    let slack = Duration::from_secs(1);

    let retain_until = parse_time(&app.volume(&kept).await["retain_until"]);
    let week = Duration::from_secs(7 * 24 * 3600);
    assert!(
        retain_until + slack >= before + week && retain_until <= after + week + slack,
        "retain_until must be 7 days after the delete: {:?}",
        app.volume(&kept).await
    );
    let erase_after = parse_time(&app.volume(&erased).await["erase_after"]);
    let five_minutes = Duration::from_secs(5 * 60);
    assert!(
        erase_after + slack >= before + five_minutes && erase_after <= after + five_minutes + slack,
        "erase_after must be 5 minutes after the delete: {:?}",
        app.volume(&erased).await
    );
    let report = app.sweep_dry_run().await;
    assert!(items_for(&report, &kept).is_empty(), "{report}");
    assert!(items_for(&report, &erased).is_empty(), "{report}");
}

#[tokio::test]
async fn sweep_and_volumes_reject_bad_input() {
    let app = TestApp::spawn_with_short_graces().await;
    let unknown = app
        .sweep_with_body(&json!({ "dry_run": true, "force": true }))
        .await;
    assert_eq!(unknown.status.as_u16(), 400, "{}", unknown.text);
    assert!(
        unknown.text.contains("force"),
        "the error names the unknown field: {}",
        unknown.text
    );
    let wrong_type = app.sweep_with_body(&json!({ "dry_run": "yes" })).await;
    assert_eq!(wrong_type.status.as_u16(), 400, "{}", wrong_type.text);

    let bogus = app.list_volumes_at("?state=bogus").await;
    assert_eq!(bogus.status.as_u16(), 400, "{}", bogus.text);
    assert!(bogus.body["code"].is_string(), "{}", bogus.text);
    for state in ["active", "retained", "erase_pending", "erasing", "erased"] {
        app.volumes_in_state(state).await;
    }

    let anonymous = app
        .send(app.client.post(app.url("/admin/sweep")).json(&json!({})))
        .await;
    assert_eq!(anonymous.status.as_u16(), 401, "{}", anonymous.text);
}

#[tokio::test]
async fn metrics_count_erasures_sweeps_volumes_and_workspaces() {
    let app = TestApp::spawn_with_short_graces().await;
    // A workspace whose process hands its token over, to call the API as a
    // workspace would.
    let script = format!("echo \"$HOLDFAST_TOKEN\" > token; {RECORDING_SCRIPT}");
    let live = app
        .create_online_workspace(&json!({
            "name": "live",
            "runtime": { "command": ["sh", "-c", script] },
            "compute": { "data_persistence": "persist" },
        }))
        .await;
    let live_dir = app.volume_dir(&id_of(&live));
    wait_for_pid(&live_dir).await;
    let token = read_lines(&live_dir.join("token")).join("");
    assert!(!token.is_empty(), "the workspace got a token");

    let (doomed, pid) = app.running_persist_workspace("doomed").await;
    let planted = plant_files(&app.volume_dir(&doomed), "doomed");
    let before = app.metrics_text().await;
    assert_eq!(
        metric_value(&before, "holdfast_erasures_total"),
        Some(0.0),
        "{before}"
    );
    let runs_before = metric_value(&before, "holdfast_sweeper_runs_total")
        .unwrap_or_else(|| panic!("no holdfast_sweeper_runs_total in\n{before}"));

    app.delete_workspace(&doomed)
        .confirm_name("doomed")
        .erase_data()
        .send()
        .await
        .expect_status(200);
    wait_process_gone(pid).await;
    app.wait_sweep_plans(&doomed, "erase").await;
    app.sweep().await;

    let after = app.metrics_text().await;
    assert_eq!(
        metric_value(&after, "holdfast_erasures_total"),
        Some(1.0),
        "{after}"
    );
    assert!(
        metric_value(&after, "holdfast_sweeper_runs_total").unwrap_or(0.0) >= runs_before + 1.0,
        "{after}"
    );
    assert_eq!(
        metric_value(&after, "holdfast_volumes{state=\"erased\"}"),
        Some(1.0),
        "{after}"
    );
    assert_eq!(
        metric_value(&after, "holdfast_workspaces{status=\"online\"}"),
        Some(1.0),
        "{after}"
    );
    assert!(
        metric_value(&after, "holdfast_bytes_erased_total").unwrap_or(0.0)
            >= planted_bytes(&planted) as f64,
        "{after}"
    );

    let as_workspace = app
        .send(app.with_token(Method::GET, "/metrics", &token))
        .await;
    assert_eq!(as_workspace.status.as_u16(), 404, "{}", as_workspace.text);
    let anonymous = app.send(app.client.get(app.url("/metrics"))).await;
    assert_eq!(anonymous.status.as_u16(), 401, "{}", anonymous.text);
    let sweep_as_workspace = app
        .send(
            app.with_token(Method::POST, "/admin/sweep", &token)
                .json(&json!({})),
        )
        .await;
    assert_eq!(
        sweep_as_workspace.status.as_u16(),
        404,
        "{}",
        sweep_as_workspace.text
    );
}

#[tokio::test]
async fn volumes_filter_by_state() {
    let app = TestApp::spawn_with_short_graces().await;
    let (active, _) = app.running_persist_workspace("active").await;
    let (retained, _) = app.running_persist_workspace("retained").await;
    let (pending, _) = app.running_persist_workspace("pending").await;
    app.delete_workspace(&retained)
        .confirm_name("retained")
        .send()
        .await
        .expect_status(200);
    app.delete_workspace(&pending)
        .confirm_name("pending")
        .erase_data()
        .send()
        .await
        .expect_status(200);

    let all = app.volumes().await;
    assert_eq!(all.len(), 3, "{all:?}");
    for (state, id) in [
        ("active", &active),
        ("retained", &retained),
        ("erase_pending", &pending),
    ] {
        let listed = app.volumes_in_state(state).await;
        assert_eq!(listed.len(), 1, "?state={state}: {listed:?}");
        assert_eq!(listed[0]["workspace_id"], id.as_str(), "{listed:?}");
        assert_eq!(listed[0]["state"], state, "{listed:?}");
    }
    assert!(app.volumes_in_state("erased").await.is_empty());
    assert!(app.volumes_in_state("erasing").await.is_empty());
}

#[tokio::test]
async fn the_volume_listing_shows_the_same_record_as_the_workspace_data() {
    let app = TestApp::spawn_with_short_graces().await;
    let (live, _) = app.running_persist_workspace("live").await;
    let (gone, gone_pid) = app.running_persist_workspace("gone").await;
    app.delete_workspace(&gone)
        .confirm_name("gone")
        .send()
        .await
        .expect_status(200);
    wait_process_gone(gone_pid).await;

    for id in [&live, &gone] {
        let mut record = app.volume(id).await;
        assert_eq!(record["mode"], "persist", "{record}");
        record
            .as_object_mut()
            .expect("a record is an object")
            .remove("history");
        let listed = volume_records_of(&app, id).await;
        assert_eq!(
            listed,
            [record],
            "GET /volumes and GET /workspaces/:id/data disagree"
        );
    }
}
