//! The audit log (SPEC §6): `GET /audit` lists what happened to workspaces
//! and their data, newest first, filtered by workspace, with one
//! `volume.erased` per erasure however many sweeps run.

use crate::helpers::{
    TestApp, count_action, events_with_action, id_of, items_for, parse_time, wait_process_gone,
};
use serde_json::{Value, json};

/// The actions of `events`, in the order given.
fn actions(events: &[Value]) -> Vec<String> {
    events
        .iter()
        .map(|e| {
            e["action"]
                .as_str()
                .unwrap_or_else(|| panic!("an audit event without an action: {e}"))
                .to_owned()
        })
        .collect()
}

/// The position of the only event with `action`.
#[track_caller]
fn position(events: &[Value], action: &str) -> usize {
    assert_eq!(
        count_action(events, action),
        1,
        "exactly one {action} expected: {:?}",
        actions(events)
    );
    events
        .iter()
        .position(|e| e["action"] == action)
        .expect("counted above")
}

/// Asserts the shape shared by every event and that `at` never increases
/// down the list.
#[track_caller]
fn assert_newest_first(events: &[Value]) {
    for event in events {
        assert!(event["id"].is_string(), "{event}");
        assert!(event["actor"].is_string(), "{event}");
        assert!(event["action"].is_string(), "{event}");
    }
    for pair in events.windows(2) {
        assert!(
            parse_time(&pair[0]["at"]) >= parse_time(&pair[1]["at"]),
            "audit events must be newest first: {} then {}",
            pair[0],
            pair[1]
        );
    }
    let mut ids: Vec<&Value> = events.iter().map(|e| &e["id"]).collect();
    ids.sort_by_key(|id| id.to_string());
    ids.dedup();
    assert_eq!(ids.len(), events.len(), "event ids are unique");
}

#[tokio::test]
async fn an_erased_workspace_has_its_whole_story_newest_first_with_one_erasure() {
    let app = TestApp::spawn_with_short_graces().await;
    let (id, pid) = app.running_persist_workspace("storied").await;
    let (other, _) = app.running_persist_workspace("other").await;
    app.delete_workspace(&id)
        .confirm_name("storied")
        .erase_data()
        .send()
        .await
        .expect_status(200);
    wait_process_gone(pid).await;
    app.wait_sweep_plans(&id, "erase").await;
    // Three passes, one erasure: the later ones find nothing to do.
    for pass in 0..3 {
        let report = app.sweep().await;
        assert_eq!(
            items_for(&report, &id).len(),
            usize::from(pass == 0),
            "pass {pass}: {report}"
        );
    }

    let events = app.audit_of(&id).await;
    assert_newest_first(&events);
    let volume_id = id_of(&app.volume(&id).await);
    let erased = position(&events, "volume.erased");
    let requested = position(&events, "volume.erase_requested");
    let deleted = position(&events, "workspace.deleted");
    let created = position(&events, "workspace.created");
    assert_eq!(
        erased,
        0,
        "the erasure is the newest: {:?}",
        actions(&events)
    );
    assert!(
        erased < requested && erased < deleted && deleted < created && requested < created,
        "newest first: {:?}",
        actions(&events)
    );
    assert_eq!(events[created]["actor"], "admin", "{}", events[created]);
    assert_eq!(events[deleted]["actor"], "admin", "{}", events[deleted]);
    assert_eq!(
        events[deleted]["detail"]["erase_data"], true,
        "{}",
        events[deleted]
    );
    assert_eq!(
        events[requested]["volume_id"],
        volume_id.as_str(),
        "{}",
        events[requested]
    );
    assert_eq!(events[erased]["actor"], "admin", "{}", events[erased]);
    assert_eq!(events[erased]["volume_id"], volume_id.as_str());
    assert_eq!(events[erased]["reason"], "erase_requested");
    assert!(
        events[erased]["detail"]["bytes_erased"].is_u64(),
        "{}",
        events[erased]
    );
    assert_eq!(count_action(&events, "volume.retained"), 0, "{events:?}");

    // The unfiltered log has both workspaces, still newest first.
    let all = app.audit().await;
    assert_newest_first(&all);
    assert!(all.iter().any(|e| e["workspace_id"] == other.as_str()));
    assert_eq!(
        all.iter()
            .filter(|e| e["action"] == "volume.erased")
            .count(),
        1,
        "{all:?}"
    );
    let others = app.audit_of(&other).await;
    assert_eq!(actions(&others), ["workspace.created"], "{others:?}");
}

#[tokio::test]
async fn a_delete_without_erase_and_its_restore_are_audited() {
    let app = TestApp::spawn_with_short_graces().await;
    let (id, pid) = app.running_persist_workspace("back-again").await;
    app.delete_workspace(&id)
        .confirm_name("back-again")
        .send()
        .await
        .expect_status(200);
    wait_process_gone(pid).await;
    let events = app.audit_of(&id).await;
    let deleted = events_with_action(&events, "workspace.deleted");
    assert_eq!(deleted.len(), 1, "{events:?}");
    assert_eq!(deleted[0]["detail"]["erase_data"], false, "{events:?}");
    let retained = events_with_action(&events, "volume.retained");
    assert_eq!(retained.len(), 1, "{events:?}");
    assert_eq!(retained[0]["reason"], "workspace_deleted", "{events:?}");
    assert_eq!(count_action(&events, "volume.erase_requested"), 0);

    app.restore_workspace(&id).await.expect_status(200);
    app.wait_online(&id).await;
    let events = app.audit_of(&id).await;
    assert_newest_first(&events);
    let restored = position(&events, "workspace.restored");
    let volume_restored = position(&events, "volume.restored");
    assert!(
        restored < position(&events, "workspace.deleted")
            && volume_restored < position(&events, "volume.retained"),
        "the restore is newer than the delete: {:?}",
        actions(&events)
    );
    assert_eq!(events[restored]["actor"], "admin");
}

#[tokio::test]
async fn audit_limit_returns_the_newest_events() {
    let app = TestApp::spawn_with_short_graces().await;
    for name in ["one", "two", "three"] {
        app.running_persist_workspace(name).await;
    }
    let all = app.audit().await;
    assert!(all.len() >= 3, "{all:?}");
    let newest = app.audit_at("?limit=1").await.expect_status(200);
    assert_eq!(newest, json!([all[0]]), "limit=1 is the newest event");
    let two = app.audit_at("?limit=2").await.expect_status(200);
    assert_eq!(two, json!(all[..2]));
    let max = app.audit_at("?limit=10000").await.expect_status(200);
    assert_eq!(max, json!(all));
}

#[tokio::test]
async fn audit_rejects_bad_queries() {
    let app = TestApp::spawn_with_short_graces().await;
    app.running_persist_workspace("present").await;
    for query in [
        "?limit=0",
        "?limit=10001",
        "?limit=-1",
        "?limit=ten",
        "?workspace_id=not-a-uuid",
        "?workspace_id=",
    ] {
        let answer = app.audit_at(query).await;
        assert_eq!(
            answer.status.as_u16(),
            400,
            "GET /audit{query}: {}",
            answer.text
        );
        assert!(
            answer.body["code"].is_string() && answer.body["error"].is_string(),
            "GET /audit{query}: {}",
            answer.text
        );
    }
}

#[tokio::test]
async fn concurrent_sweeps_record_one_erasure() {
    let app = TestApp::spawn_with_short_graces().await;
    let (id, pid) = app.running_persist_workspace("raced").await;
    app.delete_workspace(&id)
        .confirm_name("raced")
        .erase_data()
        .send()
        .await
        .expect_status(200);
    wait_process_gone(pid).await;
    app.wait_sweep_plans(&id, "erase").await;

    let (a, b, c) = tokio::join!(app.sweep(), app.sweep(), app.sweep());
    let done: usize = [&a, &b, &c]
        .iter()
        .flat_map(|report| items_for(report, &id))
        .filter(|item| item["outcome"] == "done")
        .count();
    assert_eq!(
        done, 1,
        "one pass erases, the others find nothing: {a} {b} {c}"
    );
    assert_eq!(app.volume(&id).await["state"], "erased");
    let events = app.audit_of(&id).await;
    assert_eq!(count_action(&events, "volume.erased"), 1, "{events:?}");
}
