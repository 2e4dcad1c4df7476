//! Usage over time (`GET /workspaces/:id/usage`): the data size the control
//! plane measured and the restarts the reconciler made, per 15-minute
//! bucket of the last 24 hours, scoped to the caller's org.

use crate::helpers::{TestApp, eventually, id_of};
use reqwest::Method;
use serde_json::{Value, json};

/// A workspace that writes 50,000 bytes into its data, then waits.
fn writer(name: &str) -> Value {
    json!({
        "name": name,
        "runtime": {"command": ["sh", "-c", "head -c 50000 /dev/zero > blob; exec sleep 600"]},
        "compute": {"data_persistence": "persist"},
    })
}

#[tokio::test]
async fn usage_shows_the_measured_size_and_each_restart() {
    let app = TestApp::spawn_with(&["--usage-interval", "200ms"]).await;
    let ws = app.create_online_workspace(&writer("meter")).await;
    let id = id_of(&ws);
    let usage = eventually("a measured size in the usage history", || async {
        let u = app
            .get(&format!("/workspaces/{id}/usage"))
            .await
            .expect_status(200);
        let measured = u["samples"].as_array()?.last()?["bytes"]
            .as_i64()
            .is_some_and(|b| b >= 50_000);
        measured.then_some(u)
    })
    .await;
    assert_eq!(usage["workspace_id"], id.as_str(), "{usage}");
    assert_eq!(usage["bucket_seconds"], 900, "{usage}");
    let restarts = |u: &Value| -> i64 {
        u["samples"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["restarts"].as_i64().unwrap())
            .sum()
    };
    assert_eq!(restarts(&usage), 0, "nothing restarted yet: {usage}");
    let since = usage["since"].as_str().unwrap();
    let at = usage["samples"][0]["at"].as_str().unwrap();
    assert!(since <= at, "every sample is inside the window: {usage}");

    app.restart_workspace(&id).await.expect_status(200);
    app.wait_online(&id).await;
    let usage = eventually("the restart in the usage history", || async {
        let u = app
            .get(&format!("/workspaces/{id}/usage"))
            .await
            .expect_status(200);
        (restarts(&u) == 1).then_some(u)
    })
    .await;
    // At most one sample per bucket: a short test stays in one or two.
    let samples = usage["samples"].as_array().unwrap();
    assert!(!samples.is_empty() && samples.len() <= 2, "{usage}");
}

#[tokio::test]
async fn usage_is_scoped_to_the_org_and_refuses_a_bad_id() {
    let app = TestApp::spawn().await;
    let ws = app
        .create_workspace(&json!({"name": "private", "runtime": {"command": ["sleep", "600"]}}))
        .await
        .expect_status(201);
    let id = id_of(&ws);
    let token = app.other_org_token("other").await;
    let path = format!("/workspaces/{id}/usage");
    app.send(app.with_token(Method::GET, &path, &token))
        .await
        .expect_error(404, "not_found");
    let bad = app
        .get("/workspaces/not-a-uuid/usage")
        .await
        .expect_error(400, "invalid_id");
    assert!(
        bad["error"].as_str().unwrap().contains("not-a-uuid"),
        "the answer names what was wrong: {bad}"
    );
    app.get(&format!("/workspaces/{}/usage", uuid::Uuid::new_v4()))
        .await
        .expect_error(404, "not_found");
    // Its own org reads it: an empty history is an empty list, not an error.
    let own = app.get(&path).await.expect_status(200);
    assert!(own["samples"].is_array(), "{own}");
}
