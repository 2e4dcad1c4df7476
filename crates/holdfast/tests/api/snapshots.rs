//! Snapshots, rollback, clone and legal hold (SPEC §15), black-box: take,
//! change, roll back and compare; clone; schedules and pruning; erasure
//! with the volume's grace and its audit; a legal hold blocking erasure and
//! stopping the grace clock; rollback crashing at every step; a workspace
//! racing its own snapshot; a full disk; and bad input that changes
//! nothing.

use crate::helpers::{
    ApiResponse, Export, SHORT_GRACES, TestApp, builtin_body, eventually, id_of, plant_files,
    remote_mode, skip_in_remote_mode, skip_on_container_backend, snapshot_files, wait_for_pid,
};
use reqwest::Method;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::path::Path;

fn skip() -> bool {
    skip_in_remote_mode("snapshots need the embedded control plane")
        || skip_on_container_backend("snapshots need the process backend")
}

async fn snap(app: &TestApp, id: &str, label: Option<&str>) -> Value {
    let body = match label {
        Some(l) => json!({ "label": l }),
        None => json!({}),
    };
    let s = app
        .post_json(&format!("/workspaces/{id}/snapshots"), &body)
        .await
        .expect_status(201);
    for field in [
        "id",
        "workspace_id",
        "at",
        "label",
        "state",
        "files",
        "bytes",
        "new_bytes",
    ] {
        assert!(s.get(field).is_some(), "a snapshot has {field}: {s}");
    }
    assert_eq!(s["workspace_id"], id, "{s}");
    assert_eq!(s["state"], "ready", "{s}");
    s
}

async fn snapshots(app: &TestApp, id: &str) -> Vec<Value> {
    app.list_at(&format!("/workspaces/{id}/snapshots")).await
}

async fn rollback(app: &TestApp, id: &str, sid: &str) -> ApiResponse {
    app.post_json(
        &format!("/workspaces/{id}/rollback"),
        &json!({ "snapshot_id": sid }),
    )
    .await
}

async fn delete_snapshot(app: &TestApp, sid: &str, name: Option<&str>) -> ApiResponse {
    let mut req = app.authed(Method::DELETE, &format!("/snapshots/{sid}"));
    if let Some(n) = name {
        req = req.header("X-Confirm-Name", n);
    }
    app.send(req).await
}

async fn export(app: &TestApp, sid: &str) -> Export {
    let response = app
        .authed(Method::GET, &format!("/snapshots/{sid}/export"))
        .send()
        .await
        .expect("HTTP request to holdfast");
    let status = response.status();
    let content_type = response
        .headers()
        .get(reqwest::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let bytes = response.bytes().await.expect("read the export").to_vec();
    Export {
        status,
        content_type,
        bytes,
    }
}

/// The regular files of an exported snapshot, by path.
async fn exported_files(app: &TestApp, sid: &str) -> BTreeMap<String, Vec<u8>> {
    export(app, sid)
        .await
        .expect_archive()
        .into_iter()
        .filter(|e| e.kind == crate::helpers::EntryKind::File)
        .map(|e| (e.path, e.content))
        .collect()
}

fn texts(messages: &[Value]) -> Vec<String> {
    messages
        .iter()
        .filter(|m| m["role"] == "user")
        .map(|m| m["text"].as_str().unwrap_or_default().to_owned())
        .collect()
}

fn audit_actions(events: &[Value], action: &str) -> Vec<Value> {
    events
        .iter()
        .filter(|e| e["action"] == action)
        .cloned()
        .collect()
}

/// The planted files only (a workspace's own files, such as the runtime's
/// memory, change with every start), each as its length and a hash, so
/// that a failed comparison prints something readable.
fn planted_part(dir: &Path, planted: &BTreeMap<String, Vec<u8>>) -> BTreeMap<String, String> {
    digest(
        &snapshot_files(dir)
            .into_iter()
            .filter(|(k, _)| planted.contains_key(k) || k.starts_with("extra"))
            .collect(),
    )
}

/// Each file as `<length> bytes, <FNV-1a hash>`.
fn digest(files: &BTreeMap<String, Vec<u8>>) -> BTreeMap<String, String> {
    files
        .iter()
        .map(|(k, v)| {
            let h = v.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
                (h ^ u64::from(*b)).wrapping_mul(0x100_0000_01b3)
            });
            (k.clone(), format!("{} bytes, {h:016x}", v.len()))
        })
        .collect()
}

#[tokio::test]
async fn snapshot_change_roll_back_and_the_data_matches() {
    if skip() {
        return;
    }
    let app = TestApp::spawn().await;
    let ws = app.create_online_workspace(&builtin_body("keeper")).await;
    let id = id_of(&ws);
    app.say(&id, "one").await;
    let volume = app.volume_dir(&id);
    let planted = plant_files(&volume, "first");
    let first = snap(&app, &id, Some("good")).await;
    assert_eq!(first["label"], "good");
    assert_eq!(
        first["consistency"], "frozen",
        "a running workspace is frozen: {first}"
    );
    let on_disk = snapshot_files(&volume);
    assert_eq!(first["files"], on_disk.len(), "{first}");
    let bytes: usize = on_disk.values().map(Vec::len).sum();
    assert_eq!(first["bytes"], bytes, "{first}");
    assert!(first["new_bytes"].as_i64().unwrap() > 0, "{first}");
    // Thawed: the workspace answers at once.
    app.say(&id, "two").await;
    // Unchanged data costs nothing: only the runtime's memory changed.
    let second = snap(&app, &id, None).await;
    assert!(
        second["new_bytes"].as_i64().unwrap() < first["new_bytes"].as_i64().unwrap(),
        "{second} vs {first}"
    );
    let third = snap(&app, &id, None).await;
    assert_eq!(
        third["new_bytes"], 0,
        "nothing changed since the last: {third}"
    );

    // What the snapshot holds is what was there.
    let exported = exported_files(&app, first["id"].as_str().unwrap()).await;
    for (path, content) in &planted {
        assert_eq!(exported.get(path), Some(content), "{path} in the export");
    }

    // Change everything, then roll back.
    std::fs::write(volume.join("memory.md"), b"overwritten").unwrap();
    std::fs::remove_file(volume.join("profile/cache/blob.bin")).unwrap();
    std::fs::write(volume.join("extra.txt"), b"added later").unwrap();
    let changed = planted_part(&volume, &planted);
    let done = rollback(&app, &id, first["id"].as_str().unwrap())
        .await
        .expect_status(200);
    assert_eq!(
        done["before_rollback"]["label"], "before-rollback",
        "{done}"
    );
    assert_eq!(done["restored"]["id"], first["id"], "{done}");
    app.wait_online(&id).await;
    assert_eq!(
        planted_part(&volume, &planted),
        digest(&planted),
        "the data is the snapshot's"
    );
    assert_eq!(
        texts(&app.messages(&id).await),
        vec!["one"],
        "memory as it was"
    );

    // Nothing was lost: the data before the rollback is a snapshot too.
    let listed = snapshots(&app, &id).await;
    let before = listed
        .iter()
        .find(|s| s["label"] == "before-rollback")
        .unwrap_or_else(|| panic!("a before-rollback snapshot in {listed:?}"))
        .clone();
    let before_files: BTreeMap<String, Vec<u8>> =
        exported_files(&app, before["id"].as_str().unwrap())
            .await
            .into_iter()
            .filter(|(k, _)| planted.contains_key(k) || k.starts_with("extra"))
            .collect();
    assert_eq!(digest(&before_files), changed);
    rollback(&app, &id, before["id"].as_str().unwrap())
        .await
        .expect_status(200);
    app.wait_online(&id).await;
    assert_eq!(planted_part(&volume, &planted), changed);
    assert_eq!(texts(&app.messages(&id).await), vec!["one", "two"]);

    let audit = app.audit_of(&id).await;
    assert_eq!(
        audit_actions(&audit, "workspace.rolled_back").len(),
        2,
        "{audit:?}"
    );
    assert!(
        audit_actions(&audit, "snapshot.created").len() >= 5,
        "{audit:?}"
    );
    let one = app
        .get(&format!("/snapshots/{}", first["id"].as_str().unwrap()))
        .await
        .expect_status(200);
    assert_eq!(one["id"], first["id"]);
    // Nothing is left beside the volume.
    let staging = app.cp_data_dir().join("snapshots/staging");
    let left: Vec<_> = std::fs::read_dir(&staging)
        .map(|d| d.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(
        left.is_empty(),
        "staging is empty after a rollback: {left:?}"
    );
}

#[tokio::test]
async fn past_the_freeze_bound_the_capture_goes_on_thawed_and_says_so() {
    if skip() {
        return;
    }
    let app = TestApp::spawn_with(&["--snapshot-freeze-max", "0s"]).await;
    let ws = app.create_online_workspace(&builtin_body("busy")).await;
    let id = id_of(&ws);
    plant_files(&app.volume_dir(&id), "busy");
    let s = snap(&app, &id, None).await;
    assert_eq!(s["consistency"], "crash_consistent", "{s}");
    app.say(&id, "still here").await;
    // A stopped workspace is captured at rest.
    app.pause_workspace(&id).await.expect_status(200);
    app.wait_status(&id, "paused").await;
    let s = snap(&app, &id, None).await;
    assert_eq!(s["consistency"], "stopped", "{s}");
}

#[tokio::test]
async fn a_clone_starts_as_the_snapshot_in_the_same_org() {
    if skip() {
        return;
    }
    let app = TestApp::spawn().await;
    let (id, _) = app.running_persist_workspace("origin").await;
    let volume = app.volume_dir(&id);
    let planted = plant_files(&volume, "origin");
    let s = snap(&app, &id, None).await;
    let sid = s["id"].as_str().unwrap();
    std::fs::write(volume.join("memory.md"), b"later").unwrap();

    let clone = app
        .create_workspace(&json!({
            "name": "copy",
            "runtime": crate::helpers::recording_runtime(),
            "from_snapshot": sid,
        }))
        .await
        .expect_status(201);
    let cid = id_of(&clone);
    app.wait_online(&cid).await;
    let cvol = app.volume_dir(&cid);
    wait_for_pid(&cvol).await;
    assert_eq!(planted_part(&cvol, &planted), digest(&planted));
    assert_eq!(app.workspace(&cid).await["data"]["mode"], "persist");
    // The origin is untouched.
    assert_eq!(std::fs::read(volume.join("memory.md")).unwrap(), b"later");

    // A clone is persist, and of a snapshot of this org.
    let before = app.list_workspaces().await.len();
    app.create_workspace(&json!({
        "name": "eph", "from_snapshot": sid,
        "compute": {"data_persistence": "ephemeral"},
    }))
    .await
    .expect_error(400, "invalid_field");
    app.create_workspace(&json!({"name": "nope", "from_snapshot": uuid::Uuid::new_v4()}))
        .await
        .expect_error(400, "invalid_field");
    app.create_workspace(&json!({"name": "bad", "from_snapshot": "not-a-uuid"}))
        .await
        .expect_error(400, "invalid_field");
    let token = app.other_org_token("other").await;
    let cross = app
        .send(
            app.with_token(Method::POST, "/workspaces", &token)
                .json(&json!({"name": "thief", "from_snapshot": sid})),
        )
        .await;
    cross.expect_error(400, "invalid_field");
    assert_eq!(
        app.list_workspaces().await.len(),
        before,
        "nothing was created"
    );
}

#[tokio::test]
async fn bad_input_is_refused_with_its_code_and_changes_nothing() {
    if skip() {
        return;
    }
    let app = TestApp::spawn().await;
    let (a, _) = app.running_persist_workspace("alpha").await;
    let (b, _) = app.running_persist_workspace("beta").await;
    let planted = plant_files(&app.volume_dir(&a), "alpha");
    let sa = snap(&app, &a, None).await;
    let sb = snap(&app, &b, None).await;
    let sa_id = sa["id"].as_str().unwrap();
    let sb_id = sb["id"].as_str().unwrap();

    // A rollback to another workspace's snapshot, to none, to a bad id.
    rollback(&app, &a, sb_id)
        .await
        .expect_error(400, "invalid_field");
    rollback(&app, &a, &uuid::Uuid::new_v4().to_string())
        .await
        .expect_error(404, "not_found");
    rollback(&app, &a, "nope")
        .await
        .expect_error(400, "invalid_field");
    app.post_json(&format!("/workspaces/{a}/rollback"), &json!({}))
        .await
        .expect_status(400);
    app.post_json(
        &format!("/workspaces/{a}/rollback"),
        &json!({"snapshot_id": sa_id, "x": 1}),
    )
    .await
    .expect_error(400, "unknown_field");
    // Labels and bodies.
    for body in [
        json!({"label": "x".repeat(65)}),
        json!({"label": "bad\u{7}bell"}),
        json!({"label": 5}),
        json!({"lable": "typo"}),
    ] {
        let r = app
            .post_json(&format!("/workspaces/{a}/snapshots"), &body)
            .await;
        assert_eq!(r.status.as_u16(), 400, "{body}: {}", r.text);
    }
    app.post_json("/workspaces/not-a-uuid/snapshots", &json!({}))
        .await
        .expect_error(400, "invalid_id");
    app.get("/snapshots/not-a-uuid")
        .await
        .expect_error(400, "invalid_id");
    app.get(&format!("/snapshots/{}", uuid::Uuid::new_v4()))
        .await
        .expect_error(404, "not_found");
    // A delete needs the workspace's exact name.
    delete_snapshot(&app, sa_id, None)
        .await
        .expect_error(400, "destructive_action_requires_confirmation");
    delete_snapshot(&app, sa_id, Some("beta"))
        .await
        .expect_error(400, "destructive_action_requires_confirmation");

    // Another org sees none of it: 404 everywhere.
    let token = app.other_org_token("eve").await;
    for (method, path) in [
        (Method::GET, format!("/snapshots/{sa_id}")),
        (Method::GET, format!("/snapshots/{sa_id}/export")),
        (Method::GET, format!("/workspaces/{a}/snapshots")),
        (Method::POST, format!("/workspaces/{a}/snapshots")),
    ] {
        let r = app
            .send(
                app.with_token(method.clone(), &path, &token)
                    .json(&json!({})),
            )
            .await;
        r.expect_error(404, "not_found");
    }
    app.send(
        app.with_token(Method::DELETE, &format!("/snapshots/{sa_id}"), &token)
            .header("X-Confirm-Name", "alpha"),
    )
    .await
    .expect_error(404, "not_found");
    app.send(
        app.with_token(Method::POST, &format!("/workspaces/{a}/rollback"), &token)
            .json(&json!({"snapshot_id": sa_id})),
    )
    .await
    .expect_error(404, "not_found");
    // Holds are the admin's: an org token gets 404 even for its own org.
    app.send(
        app.with_token(Method::PUT, &format!("/workspaces/{a}/hold"), &token)
            .json(&json!({"reason": "x"})),
    )
    .await
    .expect_status(404);

    // Malformed schedules: 400 naming the field, nothing stored.
    for (compute, field) in [
        (
            json!({"snapshots": {"every": "soon", "keep": {"last": 1}}}),
            "compute.snapshots.every",
        ),
        (
            json!({"snapshots": {"every": "10", "keep": {"last": 1}}}),
            "compute.snapshots.every",
        ),
        (
            json!({"snapshots": {"every": "100ms", "keep": {"last": 1}}}),
            "compute.snapshots.every",
        ),
        (
            json!({"snapshots": {"every": "1h"}}),
            "compute.snapshots.keep",
        ),
        (
            json!({"snapshots": {"every": "1h", "keep": {}}}),
            "compute.snapshots.keep",
        ),
        (
            json!({"snapshots": {"every": "1h", "keep": {"last": -1}}}),
            "compute.snapshots.keep.last",
        ),
        (
            json!({"snapshots": {"every": "1h", "keep": {"monthly": 1}}}),
            "compute.snapshots.keep.monthly",
        ),
        (
            json!({"snapshots": {"every": "1h", "keep": {"last": 1}, "at": 3}}),
            "compute.snapshots.at",
        ),
        (json!({"snapshots": "hourly"}), "compute.snapshots"),
    ] {
        let r = app
            .patch_workspace(&a, &json!({ "compute": compute }))
            .await
            .expect_error(400, "invalid_field");
        assert_eq!(r["field"], field, "{r}");
    }
    assert!(
        app.workspace(&a).await["compute"]
            .get("snapshots")
            .is_none()
    );

    // Nothing changed.
    assert_eq!(snapshots(&app, &a).await.len(), 1);
    assert_eq!(snapshots(&app, &b).await.len(), 1);
    assert_eq!(
        planted_part(&app.volume_dir(&a), &planted),
        digest(&planted)
    );
    // And the right request still works.
    delete_snapshot(&app, sa_id, Some("alpha"))
        .await
        .expect_status(200);
    assert_eq!(snapshots(&app, &a).await.len(), 0);
    delete_snapshot(&app, sa_id, Some("alpha"))
        .await
        .expect_error(410, "snapshot_deleted");
    let audit = app.audit_of(&a).await;
    assert_eq!(
        audit_actions(&audit, "snapshot.deleted").len(),
        1,
        "{audit:?}"
    );
}

#[tokio::test]
async fn a_schedule_takes_snapshots_and_prunes_by_its_keep_policy() {
    if skip() {
        return;
    }
    let app = TestApp::spawn_with(&["--sweep-interval", "1h"]).await;
    app.wait_for_a_sweeper_pass().await;
    let body = json!({
        "name": "scheduled",
        "runtime": crate::helpers::recording_runtime(),
        "compute": {"snapshots": {"every": "1s", "keep": {"last": 2}}},
    });
    let ws = app.create_online_workspace(&body).await;
    let id = id_of(&ws);
    assert_eq!(ws["compute"]["snapshots"]["keep"]["last"], 2, "{ws}");
    wait_for_pid(&app.volume_dir(&id)).await;
    let scheduled = |list: Vec<Value>| -> Vec<String> {
        list.into_iter()
            .filter(|s| s["label"] == "scheduled")
            .map(|s| s["id"].as_str().unwrap().to_owned())
            .collect()
    };
    let mut taken = Vec::new();
    for pass in 0..3 {
        let report = app.sweep().await;
        let took: Vec<&Value> = report["items"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|i| i["action"] == "snapshot" && i["workspace_id"] == id)
            .collect();
        assert_eq!(took.len(), 1, "pass {pass}: one snapshot is due: {report}");
        taken.push(took[0]["snapshot_id"].as_str().unwrap().to_owned());
        // A second pass at once takes nothing: the schedule is not due.
        let again = app.sweep().await;
        assert!(
            !again["items"]
                .as_array()
                .unwrap()
                .iter()
                .any(|i| i["action"] == "snapshot" && i["workspace_id"] == id),
            "{again}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    }
    let now = scheduled(snapshots(&app, &id).await);
    assert_eq!(now.len(), 2, "keep last 2: {now:?}");
    assert!(
        now.contains(&taken[1]) && now.contains(&taken[2]),
        "{now:?} vs {taken:?}"
    );
    let pruned = app
        .get(&format!("/snapshots/{}", taken[0]))
        .await
        .expect_status(200);
    assert_eq!(pruned["state"], "erased", "{pruned}");
    let audit = app.audit_of(&id).await;
    let deleted = audit_actions(&audit, "snapshot.deleted");
    assert_eq!(deleted.len(), 1, "{audit:?}");
    assert_eq!(deleted[0]["reason"], "pruned", "{deleted:?}");
    // A hand-made snapshot is never pruned.
    let manual = snap(&app, &id, Some("mine")).await;
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    app.sweep().await;
    let all = snapshots(&app, &id).await;
    assert!(all.iter().any(|s| s["id"] == manual["id"]), "{all:?}");
    assert_eq!(scheduled(all).len(), 2);
}

#[tokio::test]
async fn a_delete_with_erase_erases_the_snapshots_after_the_grace_and_audits_each() {
    if skip() {
        return;
    }
    let app = TestApp::spawn_with_short_graces().await;
    let (id, _) = app.running_persist_workspace("doomed").await;
    plant_files(&app.volume_dir(&id), "doomed");
    let s1 = snap(&app, &id, None).await;
    let s2 = snap(&app, &id, None).await;
    let org = app.workspace(&id).await["org_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let manifests = app
        .cp_data_dir()
        .join("snapshots")
        .join(&org)
        .join("manifests");
    assert_eq!(std::fs::read_dir(&manifests).unwrap().count(), 2);

    app.delete_workspace(&id)
        .confirm_name("doomed")
        .erase_data()
        .send()
        .await
        .expect_status(200);
    let marked = app
        .get(&format!("/snapshots/{}", s1["id"].as_str().unwrap()))
        .await
        .expect_status(200);
    assert_eq!(marked["state"], "erase_pending", "{marked}");
    assert!(marked["erase_after"].is_string(), "{marked}");
    // A restore within the grace keeps them.
    app.restore_workspace(&id).await.expect_status(200);
    let kept = app
        .get(&format!("/snapshots/{}", s1["id"].as_str().unwrap()))
        .await
        .expect_status(200);
    assert_eq!(kept["state"], "ready", "{kept}");
    app.wait_online(&id).await;

    app.delete_workspace(&id)
        .confirm_name("doomed")
        .erase_data()
        .send()
        .await
        .expect_status(200);
    eventually("the snapshots erased after the grace", || async {
        app.sweep().await;
        let one = app
            .get(&format!("/snapshots/{}", s2["id"].as_str().unwrap()))
            .await
            .expect_status(200);
        (one["state"] == "erased").then_some(())
    })
    .await;
    let audit = app.audit_of(&id).await;
    let erased = audit_actions(&audit, "snapshot.erased");
    assert_eq!(erased.len(), 2, "one snapshot.erased each: {audit:?}");
    assert_eq!(std::fs::read_dir(&manifests).unwrap().count(), 0);
    assert!(snapshots(&app, &id).await.is_empty());
    // More passes erase nothing twice.
    app.sweep().await;
    assert_eq!(
        audit_actions(&app.audit_of(&id).await, "snapshot.erased").len(),
        2
    );
}

#[tokio::test]
async fn snapshots_outlive_a_delete_without_erase() {
    if skip() {
        return;
    }
    let app = TestApp::spawn_with_short_graces().await;
    let (id, _) = app.running_persist_workspace("kept").await;
    let planted = plant_files(&app.volume_dir(&id), "kept");
    let s = snap(&app, &id, None).await;
    app.delete_workspace(&id)
        .confirm_name("kept")
        .send()
        .await
        .expect_status(200);
    // The volume goes after the retention grace; the snapshot stays.
    eventually("the retained volume erased", || async {
        app.sweep().await;
        (app.workspace_data(&id).await.expect_status(200)["state"] == "erased").then_some(())
    })
    .await;
    let sid = s["id"].as_str().unwrap();
    let still = app
        .get(&format!("/snapshots/{sid}"))
        .await
        .expect_status(200);
    assert_eq!(still["state"], "ready", "{still}");
    let exported = exported_files(&app, sid).await;
    for (path, content) in &planted {
        assert_eq!(exported.get(path), Some(content));
    }
}

#[tokio::test]
async fn a_legal_hold_blocks_erasure_and_stops_the_grace_clock() {
    if skip() {
        return;
    }
    let app = TestApp::spawn_with_short_graces().await;
    let (id, _) = app.running_persist_workspace("evidence").await;
    let planted = plant_files(&app.volume_dir(&id), "evidence");
    let s = snap(&app, &id, None).await;
    let sid = s["id"].as_str().unwrap();
    let hold = format!("/workspaces/{id}/hold");
    app.send(app.authed(Method::PUT, &hold).json(&json!({})))
        .await
        .expect_status(400);
    app.send(
        app.authed(Method::PUT, &hold)
            .json(&json!({"reason": "  "})),
    )
    .await
    .expect_error(400, "invalid_field");
    app.send(app.authed(Method::DELETE, &hold))
        .await
        .expect_error(409, "not_held");
    let held = app
        .send(
            app.authed(Method::PUT, &hold)
                .json(&json!({"reason": "case 42"})),
        )
        .await
        .expect_status(200);
    assert_eq!(held["data"]["hold"]["reason"], "case 42", "{held}");
    assert_eq!(held["data"]["hold"]["by"], "admin", "{held}");

    // While held: no erasing delete, no snapshot delete; nothing changes.
    app.delete_workspace(&id)
        .confirm_name("evidence")
        .erase_data()
        .send()
        .await
        .expect_error(409, "legal_hold");
    assert_eq!(app.workspace(&id).await["status"], "online");
    delete_snapshot(&app, sid, Some("evidence"))
        .await
        .expect_error(409, "legal_hold");
    // A delete without erase keeps the data, and is allowed.
    app.delete_workspace(&id)
        .confirm_name("evidence")
        .send()
        .await
        .expect_status(200);
    let retained = app.workspace_data(&id).await.expect_status(200);
    assert_eq!(retained["state"], "retained", "{retained}");
    let until = crate::helpers::parse_time(&retained["retain_until"]);
    // Past the retention grace, the sweeper erases nothing of it.
    while std::time::SystemTime::now() < until + std::time::Duration::from_millis(300) {
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let report = app.sweep().await;
    assert!(
        !report["items"]
            .as_array()
            .unwrap()
            .iter()
            .any(|i| i["workspace_id"] == id),
        "{report}"
    );
    assert_eq!(
        app.workspace_data(&id).await.expect_status(200)["state"],
        "retained"
    );
    assert_files_intact_here(&app, &id, &planted);
    assert_eq!(
        app.get(&format!("/snapshots/{sid}"))
            .await
            .expect_status(200)["state"],
        "ready"
    );

    // Released: the clock runs again from where it stood.
    let released = app
        .send(app.authed(Method::DELETE, &hold))
        .await
        .expect_status(200);
    assert!(released["data"]["hold"].is_null(), "{released}");
    let after = app.workspace_data(&id).await.expect_status(200);
    let new_until = crate::helpers::parse_time(&after["retain_until"]);
    assert!(
        new_until > until,
        "the deadline moved on by the time held: {after}"
    );
    assert!(new_until > std::time::SystemTime::now(), "{after}");
    let audit = app.audit_of(&id).await;
    assert_eq!(audit_actions(&audit, "hold.placed").len(), 1, "{audit:?}");
    assert_eq!(audit_actions(&audit, "hold.released").len(), 1, "{audit:?}");
    eventually("the volume erased once the moved grace passes", || async {
        app.sweep().await;
        (app.workspace_data(&id).await.expect_status(200)["state"] == "erased").then_some(())
    })
    .await;
}

fn assert_files_intact_here(app: &TestApp, id: &str, planted: &BTreeMap<String, Vec<u8>>) {
    crate::helpers::assert_files_intact(&app.volume_dir(id), planted);
}

/// Plants "old" files, snapshots them, changes them to "new" ones and
/// snapshots again, then rolls back to the first with the server aborting
/// at `failpoint`; after a restart the data is exactly `old` or `new`
/// (`expect_new`), never a mix, the workspace runs, and the before-rollback
/// snapshot exists.
async fn check_rollback_crash(failpoint: &str, expect_rolled_back: bool) {
    if skip() {
        return;
    }
    let mut app = TestApp::spawn().await;
    let (id, _) = app.running_persist_workspace("crashy").await;
    let volume = app.volume_dir(&id);
    let old = plant_files(&volume, "old-data");
    let target = snap(&app, &id, None).await;
    let new = plant_files(&volume, "new-data-and-more");
    std::fs::write(volume.join("extra-new.txt"), b"new only").unwrap();
    let mut new_all = new.clone();
    new_all.insert("extra-new.txt".to_owned(), b"new only".to_vec());

    app.crash_and_restart_server_with_env(&[("HOLDFAST_FAILPOINTS", failpoint)])
        .await;
    app.wait_online(&id).await;
    let answer = app
        .try_send(
            app.authed(Method::POST, &format!("/workspaces/{id}/rollback"))
                .json(&json!({"snapshot_id": target["id"]})),
        )
        .await;
    assert!(
        answer.is_err(),
        "the server aborts at {failpoint}: {answer:?}"
    );
    app.expect_server_abort(failpoint).await;
    app.start_server_again_without_env().await;
    app.wait_online(&id).await;
    wait_for_pid(&volume).await;
    let now = planted_part(&volume, &new_all);
    if expect_rolled_back {
        assert_eq!(
            now,
            digest(&old),
            "after a crash at {failpoint}: the snapshot's data"
        );
    } else {
        assert_eq!(
            now,
            digest(&new_all),
            "after a crash at {failpoint}: the data as it was"
        );
    }
    let listed = snapshots(&app, &id).await;
    assert!(
        listed.iter().any(|s| s["label"] == "before-rollback"),
        "the data before is kept: {listed:?}"
    );
    let staging = app.cp_data_dir().join("snapshots/staging");
    let left: Vec<_> = std::fs::read_dir(&staging)
        .map(|d| d.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "nothing half-done is left: {left:?}");
    // And a rollback works after it.
    rollback(&app, &id, target["id"].as_str().unwrap())
        .await
        .expect_status(200);
    app.wait_online(&id).await;
    assert_eq!(planted_part(&volume, &new_all), digest(&old));
}

#[tokio::test]
async fn a_rollback_crashing_after_its_snapshot_keeps_the_old_data() {
    check_rollback_crash("rollback.after_snapshot", false).await;
}

#[tokio::test]
async fn a_rollback_crashing_after_staging_finishes_at_the_next_start() {
    check_rollback_crash("rollback.after_stage", true).await;
}

#[tokio::test]
async fn a_rollback_crashing_before_the_swap_finishes_at_the_next_start() {
    check_rollback_crash("rollback.before_swap", true).await;
}

#[tokio::test]
async fn a_rollback_crashing_after_the_swap_keeps_the_new_data() {
    check_rollback_crash("rollback.after_swap", true).await;
}

/// The workspace swaps a directory of its data for a link to outside, over
/// and over, while it is snapshotted: no snapshot ever holds the outside
/// bytes. Positive control: a reader that follows paths does see them.
#[tokio::test]
async fn a_workspace_racing_its_own_snapshot_cannot_get_outside_bytes_in() {
    if skip() {
        return;
    }
    let app = TestApp::spawn().await;
    let (id, _) = app.running_persist_workspace("racer").await;
    let volume = app.volume_dir(&id);
    let outside = tempfile::tempdir().unwrap();
    std::fs::write(outside.path().join("secret"), b"OUTSIDE-SECRET-BYTES").unwrap();
    let dir_version = volume.join("d.dir");
    std::fs::create_dir(&dir_version).unwrap();
    std::fs::write(dir_version.join("secret"), b"inside bytes").unwrap();
    let link_version = volume.join("d.link");
    std::os::unix::fs::symlink(outside.path(), &link_version).unwrap();

    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let saw_outside = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let racer = {
        let (stop, saw) = (stop.clone(), saw_outside.clone());
        let d = volume.join("d");
        std::thread::spawn(move || {
            let mut swaps = 0u64;
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                for version in [&dir_version, &link_version] {
                    if std::fs::rename(version, &d).is_ok() {
                        // The naive reader: a path re-resolved follows the link.
                        if std::fs::read(d.join("secret")).is_ok_and(|b| b.starts_with(b"OUTSIDE"))
                        {
                            saw.store(true, std::sync::atomic::Ordering::SeqCst);
                        }
                        let _ = std::fs::rename(&d, version);
                        swaps += 1;
                    }
                }
            }
            swaps
        })
    };
    let mut taken = Vec::new();
    for _ in 0..15 {
        let s = snap(&app, &id, None).await;
        taken.push(s["id"].as_str().unwrap().to_owned());
    }
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let swaps = racer.join().unwrap();
    assert!(swaps > 0, "the race ran");
    assert!(
        saw_outside.load(std::sync::atomic::Ordering::SeqCst),
        "positive control: following the path reads the outside bytes"
    );
    for sid in &taken {
        let bytes = export(&app, sid).await.bytes;
        let entries = Export {
            status: reqwest::StatusCode::OK,
            content_type: "application/gzip".to_owned(),
            bytes,
        }
        .expect_archive();
        for e in &entries {
            assert!(
                !e.content.windows(7).any(|w| w == b"OUTSIDE"),
                "snapshot {sid} holds outside bytes at {}",
                e.path
            );
        }
    }
    // And the link itself is kept as a link, never followed.
    std::fs::rename(volume.join("d.link"), volume.join("d")).unwrap();
    let s = snap(&app, &id, None).await;
    let entries = export(&app, s["id"].as_str().unwrap())
        .await
        .expect_archive();
    let d = entries
        .iter()
        .find(|e| e.path == "d")
        .expect("d in the snapshot");
    assert_eq!(d.kind, crate::helpers::EntryKind::Symlink);
    assert!(!entries.iter().any(|e| e.path.starts_with("d/")));
}

/// Unmounts what it mounted, also when the test fails.
struct Mounted(std::path::PathBuf);

impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
    }
}

#[tokio::test]
async fn a_full_disk_fails_the_snapshot_clearly_and_the_workspace_runs_on() {
    if skip() || remote_mode() {
        return;
    }
    let app = TestApp::spawn().await;
    let ws = app.create_online_workspace(&builtin_body("filler")).await;
    let id = id_of(&ws);
    app.say(&id, "hello").await;
    let repo = app.cp_data_dir().join("snapshots");
    std::fs::create_dir_all(&repo).unwrap();
    let mounted = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=256k", "tmpfs"])
        .arg(&repo)
        .status()
        .is_ok_and(|s| s.success());
    if !mounted {
        eprintln!("skipping: cannot mount a small tmpfs here (needs root)");
        return;
    }
    let _guard = Mounted(repo.clone());
    // Incompressible data, far more than the repository's disk holds.
    let volume = app.volume_dir(&id);
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let noise: Vec<u8> = (0..2 * 1024 * 1024)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    std::fs::write(volume.join("big.bin"), &noise).unwrap();
    let answer = app
        .post_json(&format!("/workspaces/{id}/snapshots"), &json!({}))
        .await;
    let body = answer.expect_error(507, "insufficient_storage");
    assert!(body["error"].as_str().unwrap().contains("full"), "{body}");
    // Thawed and running, nothing recorded, the repository consistent.
    app.say(&id, "still answering").await;
    assert!(snapshots(&app, &id).await.is_empty());
    std::fs::remove_file(volume.join("big.bin")).unwrap();
    let ok = snap(&app, &id, None).await;
    assert_eq!(ok["state"], "ready");
    let sweep = app.sweep().await;
    assert!(
        !sweep["items"]
            .as_array()
            .unwrap()
            .iter()
            .any(|i| i["action"] == "report_orphan"),
        "no orphan is left by the failed capture: {sweep}"
    );
}

/// A full disk simulated where no small filesystem can be mounted: the
/// failpoints `snapshot.chunk_enospc` (every chunk write fails with
/// `ENOSPC`, as on a full disk) and `snapshot.manifest_enospc` (the chunks
/// are written, the manifest is not). Either way: a clear 507, the
/// workspace thawed and answering, no snapshot recorded, nothing of the
/// failed capture referenced; and once the disk has room again a snapshot
/// is taken as usual and the sweeper finds nothing orphaned.
#[tokio::test]
async fn a_capture_failing_for_a_full_disk_keeps_the_workspace_and_repository_sound() {
    if skip() {
        return;
    }
    for failpoint in ["snapshot.chunk_enospc", "snapshot.manifest_enospc"] {
        let mut app = TestApp::spawn().await;
        let ws = app.create_online_workspace(&builtin_body("filler")).await;
        let id = id_of(&ws);
        std::fs::write(app.volume_dir(&id).join("data.bin"), vec![5u8; 3 << 20]).unwrap();
        app.crash_and_restart_server_with_env(&[("HOLDFAST_FAILPOINTS", failpoint)])
            .await;
        app.wait_online(&id).await;
        app.say(&id, "before").await;
        let answer = app
            .post_json(&format!("/workspaces/{id}/snapshots"), &json!({}))
            .await;
        let body = answer.expect_error(507, "insufficient_storage");
        assert!(
            body["error"].as_str().unwrap().contains("full"),
            "{failpoint}: {body}"
        );
        // Thawed: it answers; nothing recorded; no manifest on disk.
        app.say(&id, "still answering").await;
        assert!(snapshots(&app, &id).await.is_empty(), "{failpoint}");
        let manifests = std::fs::read_dir(app.cp_data_dir().join("snapshots"))
            .unwrap()
            .flatten()
            .filter_map(|org| std::fs::read_dir(org.path().join("manifests")).ok())
            .flat_map(|d| d.flatten())
            .count();
        assert_eq!(
            manifests, 0,
            "{failpoint}: no manifest of the failed capture"
        );

        app.crash_and_restart_server_with_env(&[]).await;
        app.wait_online(&id).await;
        let ok = snap(&app, &id, None).await;
        assert_eq!(ok["state"], "ready", "{failpoint}: {ok}");
        let sweep = app.sweep().await;
        assert!(
            !sweep["items"]
                .as_array()
                .unwrap()
                .iter()
                .any(|i| i["action"] == "report_orphan"),
            "{failpoint}: no orphan is left by the failed capture: {sweep}"
        );
        let files = exported_files(&app, ok["id"].as_str().unwrap()).await;
        assert_eq!(files.get("data.bin").map(Vec::len), Some(3 << 20));
    }
}

/// What the sweeper reports of repository data no record knows, and does
/// not delete.
#[tokio::test]
async fn orphaned_repository_data_is_reported_never_deleted() {
    if skip() {
        return;
    }
    let app = TestApp::spawn_with(SHORT_GRACES).await;
    let (id, _) = app.running_persist_workspace("orphaner").await;
    let s = snap(&app, &id, None).await;
    let org = app.workspace(&id).await["org_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let manifests = app
        .cp_data_dir()
        .join("snapshots")
        .join(&org)
        .join("manifests");
    let stray = uuid::Uuid::new_v4().to_string();
    std::fs::copy(
        manifests.join(s["id"].as_str().unwrap()),
        manifests.join(&stray),
    )
    .unwrap();
    for _ in 0..2 {
        let report = app.sweep().await;
        let items: Vec<&Value> = report["items"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|i| i["action"] == "report_orphan")
            .collect();
        assert_eq!(items.len(), 1, "{report}");
        assert_eq!(items[0]["snapshot_id"], stray.as_str());
        assert!(manifests.join(&stray).exists(), "reported, never deleted");
    }
}

/// Waits until `deadline` (a grace's end) has passed by a margin.
async fn wait_past(deadline: std::time::SystemTime) {
    while std::time::SystemTime::now() < deadline + std::time::Duration::from_millis(300) {
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

/// A legal hold keeps a workspace's volume whichever control plane keeps
/// it (the embedded one, or a remote `holdfast cp serve`, which learns of
/// the hold from the platform): past its retention grace, and past the
/// erase grace of a delete with erase made before the hold, the sweeper
/// erases nothing; released, the clocks run on from where they stood and
/// the data goes once the moved grace passes (the positive control: the
/// same sweeper does erase it).
#[tokio::test]
async fn a_legal_hold_keeps_the_volume_on_either_control_plane() {
    if skip_on_container_backend("reads the volume's files on this host") {
        return;
    }
    let app = TestApp::spawn_with_short_graces().await;
    let hold = |id: &str| format!("/workspaces/{id}/hold");

    // Held, then deleted without erase: retained past its grace.
    let (kept, _) = app.running_persist_workspace("kept-for-court").await;
    let planted = plant_files(&app.volume_dir(&kept), "kept-for-court");
    app.send(
        app.authed(Method::PUT, &hold(&kept))
            .json(&json!({"reason": "case 9"})),
    )
    .await
    .expect_status(200);
    app.delete_workspace(&kept)
        .confirm_name("kept-for-court")
        .erase_data()
        .send()
        .await
        .expect_error(409, "legal_hold");
    app.delete_workspace(&kept)
        .confirm_name("kept-for-court")
        .send()
        .await
        .expect_status(200);
    let retained = app.workspace_data(&kept).await.expect_status(200);
    assert_eq!(retained["state"], "retained", "{retained}");
    let kept_until = crate::helpers::parse_time(&retained["retain_until"]);

    // Deleted with erase first, held during its erase grace.
    let (late, _) = app.running_persist_workspace("held-late").await;
    let late_planted = plant_files(&app.volume_dir(&late), "held-late");
    app.delete_workspace(&late)
        .confirm_name("held-late")
        .erase_data()
        .send()
        .await
        .expect_status(200);
    app.send(
        app.authed(Method::PUT, &hold(&late))
            .json(&json!({"reason": "case 10"})),
    )
    .await
    .expect_status(200);
    let pending = app.workspace_data(&late).await.expect_status(200);
    assert_eq!(pending["state"], "erase_pending", "{pending}");
    let late_after = crate::helpers::parse_time(&pending["erase_after"]);

    wait_past(kept_until.max(late_after)).await;
    let report = app.sweep().await;
    for id in [&kept, &late] {
        assert!(
            !report["items"]
                .as_array()
                .unwrap()
                .iter()
                .any(|i| i["workspace_id"] == id.as_str()),
            "nothing of a held workspace is in the pass: {report}"
        );
    }
    assert_eq!(
        app.workspace_data(&kept).await.expect_status(200)["state"],
        "retained"
    );
    assert_eq!(
        app.workspace_data(&late).await.expect_status(200)["state"],
        "erase_pending"
    );
    crate::helpers::assert_files_intact(&app.volume_dir(&kept), &planted);
    crate::helpers::assert_files_intact(&app.volume_dir(&late), &late_planted);

    // Released: the deadlines moved on by the time held, then the data goes.
    for (id, field, before) in [
        (&kept, "retain_until", kept_until),
        (&late, "erase_after", late_after),
    ] {
        let released = app
            .send(app.authed(Method::DELETE, &hold(id)))
            .await
            .expect_status(200);
        assert!(released["data"]["hold"].is_null(), "{released}");
        let after = app.workspace_data(id).await.expect_status(200);
        let moved = crate::helpers::parse_time(&after[field]);
        assert!(moved > before, "{field} moved on by the time held: {after}");
        assert!(moved > std::time::SystemTime::now(), "{after}");
    }
    for id in [&kept, &late] {
        eventually("the volume erased once the moved grace passes", || async {
            app.sweep().await;
            (app.workspace_data(id).await.expect_status(200)["state"] == "erased").then_some(())
        })
        .await;
    }
}

/// On the container backend a snapshot goes through the engine: the
/// container is paused (frozen), the volume read through the engine's
/// archive API by a helper container (holdfast never assumes the engine's
/// volume directory is on its host; the test reads it there only to plant
/// data), hard links kept as links. Listing, export and delete work as on
/// processes; a rollback answers 409 `snapshots_unavailable`, and says why.
#[tokio::test]
async fn on_the_container_backend_snapshots_are_taken_through_the_engine() {
    if !crate::helpers::container_mode() {
        eprintln!("skipping: needs the container backend (HOLDFAST_TEST_BACKEND=container)");
        return;
    }
    if skip_in_remote_mode("snapshots need the embedded control plane") {
        return;
    }
    let app = TestApp::spawn().await;
    let (id, _) = app.running_persist_workspace("boxed").await;
    let volume = app.volume_dir(&id);
    let planted = plant_files(&volume, "boxed");
    std::fs::create_dir_all(volume.join("sub")).unwrap();
    std::fs::write(volume.join("sub/a"), b"linked bytes").unwrap();
    std::fs::hard_link(volume.join("sub/a"), volume.join("b")).unwrap();
    let first = snap(&app, &id, Some("engine")).await;
    assert_eq!(first["consistency"], "frozen", "paused while read: {first}");
    assert_eq!(first["label"], "engine");
    let sid = first["id"].as_str().unwrap().to_owned();
    assert_eq!(app.workspace(&id).await["status"], "online");
    let files = exported_files(&app, &sid).await;
    for (path, content) in &planted {
        assert_eq!(files.get(path), Some(content), "{path} in the snapshot");
    }
    let entries = export(&app, &sid).await.expect_archive();
    let linked: Vec<_> = entries
        .iter()
        .filter(|e| e.path == "b" || e.path == "sub/a")
        .collect();
    assert_eq!(linked.len(), 2, "{entries:?}");
    assert!(
        linked
            .iter()
            .any(|e| e.kind == crate::helpers::EntryKind::File && e.content == b"linked bytes"),
        "{linked:?}"
    );

    std::fs::write(volume.join("new.txt"), b"new").unwrap();
    let second = snap(&app, &id, None).await;
    // Unpaused after the first: paused again for the second.
    assert_eq!(second["consistency"], "frozen", "{second}");
    assert_eq!(
        second["files"].as_i64().unwrap(),
        first["files"].as_i64().unwrap() + 1,
        "{first} {second}"
    );
    assert!(
        second["new_bytes"].as_i64().unwrap() < first["new_bytes"].as_i64().unwrap(),
        "unchanged data costs nothing: {first} {second}"
    );
    let listed = snapshots(&app, &id).await;
    assert_eq!(listed.len(), 2, "{listed:?}");

    let refused = rollback(&app, &id, &sid)
        .await
        .expect_error(409, "snapshots_unavailable");
    assert!(
        refused["error"]
            .as_str()
            .unwrap()
            .contains("process backend"),
        "{refused}"
    );
    assert_eq!(
        snapshots(&app, &id).await.len(),
        2,
        "refused before anything was written (no before-rollback snapshot)"
    );
    // A clone likewise: refused at create, nothing made.
    let mut body = crate::helpers::workspace_body_with_persistence("boxed-clone", "persist");
    body["from_snapshot"] = json!(sid);
    app.post_json("/workspaces", &body)
        .await
        .expect_error(409, "snapshots_unavailable");
    delete_snapshot(&app, &sid, Some("boxed"))
        .await
        .expect_status(200);
    assert_eq!(snapshots(&app, &id).await.len(), 1);
}

/// Through a remote control plane, snapshots answer 409
/// `snapshots_unavailable`, and nothing is made: no snapshot, no clone.
#[tokio::test]
async fn through_a_remote_control_plane_snapshots_are_unavailable_and_change_nothing() {
    if !remote_mode() {
        eprintln!("skipping: needs a remote control plane (HOLDFAST_TEST_CP=remote)");
        return;
    }
    let app = TestApp::spawn().await;
    let (id, _) = app.running_persist_workspace("far").await;
    app.post_json(&format!("/workspaces/{id}/snapshots"), &json!({}))
        .await
        .expect_error(409, "snapshots_unavailable");
    app.get(&format!("/workspaces/{id}/snapshots"))
        .await
        .expect_error(409, "snapshots_unavailable");
    let before = app.get("/workspaces").await.expect_status(200);
    let mut body = crate::helpers::workspace_body_with_persistence("far-clone", "persist");
    body["from_snapshot"] = json!(uuid::Uuid::new_v4().to_string());
    app.post_json("/workspaces", &body)
        .await
        .expect_error(409, "snapshots_unavailable");
    assert_eq!(app.get("/workspaces").await.expect_status(200), before);
    assert_eq!(app.workspace(&id).await["status"], "online");
}
