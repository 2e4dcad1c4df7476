//! A remote control plane that is down: reads keep answering with what is
//! known, marked stale; writes that need it answer 503 with `Retry-After`
//! and a code naming what is unreachable; the intent they wrote stands, and
//! the reconciler carries it out once the control plane is back.

use crate::helpers::{CpServer, TestApp, id_of, wait_for_lines, wait_for_pid, workspace_body};
use reqwest::Method;

#[tokio::test]
async fn a_control_plane_that_is_down_is_503_for_writes_and_stale_for_reads() {
    let (mut cp, tokens) = CpServer::start_with_tenants(&["platform"], &[]);
    let app = TestApp::spawn_on_cp(&cp, &tokens[0], &[]).await;
    let steady = id_of(&app.create_online_workspace(&workspace_body("steady")).await);
    let gone = id_of(&app.create_online_workspace(&workspace_body("gone")).await);
    let steady_data = cp.volume_dir(&steady).join("data.txt");
    let gone_dir = cp.volume_dir(&gone);
    wait_for_lines(&steady_data, 1).await;
    wait_for_pid(&gone_dir).await;
    app.delete_workspace(&gone)
        .confirm_name("gone")
        .send()
        .await
        .expect_status(200);
    // The positive control: while it is up, nothing is stale.
    let fresh = app.workspace(&steady).await;
    assert_eq!(fresh["data"]["state"], "active", "{fresh}");
    assert!(fresh["data"].get("stale").is_none(), "{fresh}");

    cp.kill();

    // Reads answer from what is known, marked as such.
    let read = app.get_workspace(&steady).await.expect_status(200);
    assert_eq!(read["status"], "online", "{read}");
    assert_eq!(read["data"]["state"], "active", "{read}");
    assert_eq!(read["data"]["stale"], true, "{read}");
    assert!(read["data"]["as_of"].is_string(), "{read}");
    let data = app
        .get(&format!("/workspaces/{steady}/data"))
        .await
        .expect_status(200);
    assert_eq!(data["stale"], true, "{data}");
    assert_eq!(data["state"], "active", "{data}");

    // Writes that need it: 503, with when to come back and what is down.
    for (what, path) in [
        ("restart", format!("/workspaces/{steady}/restart")),
        ("restore", format!("/workspaces/{gone}/restore")),
    ] {
        let started = std::time::Instant::now();
        let answer = app
            .authed(Method::POST, &path)
            .send()
            .await
            .expect("the server answers");
        assert_eq!(answer.status().as_u16(), 503, "{what}");
        assert!(
            answer.headers().get("retry-after").is_some(),
            "{what} answers Retry-After"
        );
        let body: serde_json::Value = answer.json().await.expect("a JSON error");
        assert_eq!(body["code"], "control_plane_unreachable", "{what}: {body}");
        // Printed, not asserted: no request waits long on a dead peer.
        println!("{what} answered 503 after {:?}", started.elapsed());
    }
    // Nothing half-done: the removed workspace is still removed, its
    // restore asked for.
    assert_eq!(app.workspace(&gone).await["status"], "removed");

    cp.start_again_without_env();

    // The intent stood: the restart's new generation runs (a second start
    // on the same data) and the restore is carried out.
    let lines = wait_for_lines(&steady_data, 2).await;
    assert_eq!(lines, ["started", "started"]);
    let back = app.wait_online(&gone).await;
    assert_eq!(back["data"]["state"], "active", "{back}");
    // Online is as soon as the command runs; its line follows.
    assert_eq!(
        wait_for_lines(&gone_dir.join("data.txt"), 2).await,
        ["started", "started"]
    );
    let fresh = app.workspace(&steady).await;
    assert!(fresh["data"].get("stale").is_none(), "{fresh}");
}
