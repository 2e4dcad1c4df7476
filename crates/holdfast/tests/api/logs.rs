//! `GET /workspaces/{id}/logs`: a workspace's stdout and stderr, its tail,
//! followed live as server-sent events, and through `holdfast ws logs`.

use crate::helpers::{ADMIN_TOKEN, TestApp, eventually, id_of, skip_on_container_backend};
use reqwest::Method;
use serde_json::json;

fn chatty(name: &str) -> serde_json::Value {
    json!({
        "name": name,
        "runtime": {"command": ["sh", "-c", "echo hello from $0; echo to stderr >&2; i=0; while true; do i=$((i+1)); echo tick $i; sleep 0.2; done"]},
    })
}

#[tokio::test]
async fn the_log_has_what_the_workspace_wrote_and_follow_streams_new_lines() {
    if skip_on_container_backend("the container backend keeps its logs in the engine") {
        return;
    }
    let app = TestApp::spawn().await;
    let t0 = std::time::Instant::now();
    let id = id_of(&app.create_online_workspace(&chatty("talker")).await);

    let text = eventually("the log to have a tick", || async {
        let t = app
            .authed(Method::GET, &format!("/workspaces/{id}/logs"))
            .send()
            .await
            .ok()?
            .text()
            .await
            .ok()?;
        t.contains("tick 1").then_some(t)
    })
    .await;
    assert!(text.contains("hello from sh"), "{text}");
    assert!(text.contains("to stderr"), "stderr is in the log: {text}");
    // The tail is the end of the log.
    let tail = app
        .authed(Method::GET, &format!("/workspaces/{id}/logs?tail=8"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(tail.len() <= 8, "{tail:?}");
    assert!(!tail.contains("hello"), "{tail:?}");

    // Follow: new lines arrive as `log` events while the response is open.
    let mut resp = app
        .authed(
            Method::GET,
            &format!("/workspaces/{id}/logs?follow=true&tail=1"),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    assert!(
        resp.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/event-stream")
    );
    let mut seen = String::new();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while seen.matches("event: log").count() < 3 {
        assert!(
            std::time::Instant::now() < deadline,
            "no live lines: {seen}"
        );
        let chunk = tokio::time::timeout(std::time::Duration::from_secs(5), resp.chunk())
            .await
            .expect("a chunk within 5 s")
            .unwrap()
            .expect("the stream stays open");
        seen.push_str(&String::from_utf8_lossy(&chunk));
    }
    assert!(seen.contains("data: tick "), "{seen}");
    drop(resp);
    println!("TIMING followed at {:?}", t0.elapsed());

    // The CLI, by name.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_holdfast"))
        .args([
            "ws",
            "logs",
            "talker",
            "--url",
            &app.base_url,
            "--token",
            ADMIN_TOKEN,
        ])
        .env_remove("HOLDFAST_TOKEN")
        .env_remove("HOLDFAST_URL")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("hello from sh"));
    println!("TIMING cli at {:?}", t0.elapsed());
}

#[tokio::test]
async fn bad_log_requests_are_4xx_and_another_orgs_log_is_404() {
    let app = TestApp::spawn().await;
    let id = id_of(
        &app.create_online_workspace(&crate::helpers::workspace_body("quiet"))
            .await,
    );
    for bad in [
        "tail=0",
        "tail=-1",
        "tail=abc",
        "tail=99999999999",
        "follow=maybe",
        "lines=3",
    ] {
        let r = app.get(&format!("/workspaces/{id}/logs?{bad}")).await;
        assert_eq!(r.status.as_u16(), 400, "{bad}: {}", r.text);
    }
    app.get(&format!("/workspaces/{}/logs", uuid::Uuid::new_v4()))
        .await
        .expect_error(404, "not_found");
    let token = app.other_org_token("elsewhere").await;
    let r = app
        .send(app.with_token(Method::GET, &format!("/workspaces/{id}/logs"), &token))
        .await;
    assert_eq!(r.status.as_u16(), 404, "{}", r.text);
}
