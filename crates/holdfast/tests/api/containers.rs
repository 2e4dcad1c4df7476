//! The container backend's own guarantees, on a real engine
//! (`HOLDFAST_TEST_BACKEND=container`): one container per workspace after a
//! `kill -9` of the server, its data intact; an unknown labelled volume
//! adopted as `retained`, never erased on first sight; the container's
//! confinement; a missing image named in the workspace's failure. On any
//! other backend these tests say why they do not apply and return.

use crate::helpers::{
    TestApp, builtin_body, container_mode, containers_of, id_of, podman, read_lines, wait_for_pid,
    workspace_body,
};
use serde_json::json;

fn skip_unless_containers() -> bool {
    let skip = !container_mode();
    if skip {
        eprintln!(
            "skipping: these tests are the container backend's (HOLDFAST_TEST_BACKEND=container)"
        );
    }
    skip
}

#[tokio::test]
async fn after_kill_9_of_the_server_each_workspace_has_one_container_and_its_data() {
    if skip_unless_containers() {
        return;
    }
    let mut app = TestApp::spawn().await;
    let a = id_of(&app.create_online_workspace(&workspace_body("a")).await);
    let b = id_of(&app.create_online_workspace(&builtin_body("b")).await);
    wait_for_pid(&app.volume_dir(&a)).await;
    assert!(!app.say(&b, "remember me").await.is_empty());
    assert_eq!(containers_of(&a).len(), 1);
    assert_eq!(containers_of(&b).len(), 1);

    // SIGKILL to the server: its containers keep running on the engine.
    app.crash_and_restart_server().await;

    // The next start replaces them: never two at once, one in the end, and
    // it is the instance the store names.
    for id in [&a, &b] {
        crate::helpers::eventually(
            &format!("one container for {id}, the stored instance"),
            || async {
                let names = containers_of(id);
                assert!(names.len() <= 1, "two containers for {id}: {names:?}");
                let ws = app.workspace(id).await;
                if names.len() != 1 || ws["status"] != "online" {
                    return None;
                }
                let instance = podman(&[
                    "inspect",
                    "--format",
                    "{{index .Config.Labels \"holdfast.instance\"}}",
                    &format!("holdfast-{id}"),
                ]);
                (instance.trim() == ws["instance_id"].as_str().unwrap_or_default()).then_some(())
            },
        )
        .await;
    }
    // The data survived: a second start was recorded, the memory is there.
    let started = crate::helpers::eventually("a second start of a", || {
        let file = app.volume_dir(&a).join("data.txt");
        async move { (read_lines(&file).len() >= 2).then_some(()) }
    });
    started.await;
    let history = app.messages(&b).await;
    assert!(
        history.iter().any(|m| m["text"] == "remember me"),
        "the built-in runtime's memory survived: {history:?}"
    );
}

#[tokio::test]
async fn a_labelled_volume_nobody_knows_is_adopted_as_retained() {
    if skip_unless_containers() {
        return;
    }
    let app = TestApp::spawn_with_short_graces().await;
    // A volume of this control plane's scope whose record was lost.
    let scope = std::fs::read_to_string(app.cp_data_dir().join("cp-id")).expect("cp-id");
    let lost = uuid::Uuid::new_v4().to_string();
    podman(&[
        "volume",
        "create",
        "--label",
        &format!("holdfast.workspace={lost}"),
        "--label",
        &format!("holdfast.cp={}", scope.trim()),
        "--label",
        "holdfast.kind=persist",
        &format!("holdfast-{lost}"),
    ]);
    let report = app.sweep().await;
    let adopted: Vec<_> = crate::helpers::items_for(&report, &lost);
    assert_eq!(adopted.len(), 1, "{report}");
    assert_eq!(adopted[0]["action"], "adopt");
    let volumes = app.volumes_in_state("retained").await;
    assert!(
        volumes.iter().any(|v| v["workspace_id"] == lost.as_str()),
        "{volumes:?}"
    );
    // Not erased on first sight: the engine still has it.
    let names = podman(&["volume", "ls", "-q"]);
    assert!(names.contains(&format!("holdfast-{lost}")), "{names}");
}

#[tokio::test]
async fn a_workspace_container_is_confined_and_works_in_its_data_volume() {
    if skip_unless_containers() {
        return;
    }
    let app = TestApp::spawn().await;
    let body = json!({
        "name": "inside",
        "tier": 1,
        "runtime": {"command": ["sh", "-c", "pwd > cwd; echo $HOLDFAST_DATA_DIR > env; touch /rootfs-probe 2> ro || true; exec sleep 600"]},
    });
    let ws = app.create_online_workspace(&body).await;
    let id = id_of(&ws);
    assert_eq!(ws["isolation"], "container");
    assert_eq!(ws["limits"], "enforced");
    let dir = app.volume_dir(&id);
    let cwd = crate::helpers::eventually("the probe's answers", || {
        let dir = dir.clone();
        async move {
            std::fs::read_to_string(dir.join("cwd"))
                .ok()
                .filter(|s| !s.is_empty())
        }
    })
    .await;
    assert_eq!(cwd.trim(), "/data");
    let inspect = podman(&[
        "inspect",
        "--format",
        "{{.HostConfig.Memory}} {{.HostConfig.PidsLimit}} {{.HostConfig.CpuShares}} {{.HostConfig.Privileged}} {{.HostConfig.ReadonlyRootfs}} {{.HostConfig.CapDrop}}",
        &format!("holdfast-{id}"),
    ]);
    let fields: Vec<&str> = inspect.split_whitespace().collect();
    assert_eq!(
        &fields[..5],
        &["268435456", "64", "512", "false", "true"],
        "{inspect}"
    );
    assert!(
        inspect.contains("CAP_"),
        "capabilities are dropped: {inspect}"
    );
}

#[tokio::test]
async fn a_missing_image_is_refused_at_create_and_fails_a_later_start_saying_which() {
    if skip_unless_containers() {
        return;
    }
    let app = TestApp::spawn().await;
    // At create: 409 naming the image, and nothing is created.
    let body = json!({
        "name": "imageless",
        "runtime": {"command": ["sleep", "600"], "image": "localhost/holdfast-no-such-image:0"},
    });
    app.create_workspace(&body).await.expect_error_mentioning(
        409,
        "image_not_found",
        "localhost/holdfast-no-such-image:0",
    );
    let list = app.get("/workspaces").await.expect_status(200);
    assert!(!list.to_string().contains("imageless"), "{list}");
    // A bad reference is the client's mistake: 400 before anything runs.
    let bad = json!({"name": "x", "runtime": {"command": ["sh"], "image": "-rm"}});
    app.create_workspace(&bad)
        .await
        .expect_error(400, "invalid_field");

    // An image that goes away after create: the next start fails, and the
    // workspace says which image it needs.
    let image = crate::helpers::container_image();
    let tag = format!(
        "localhost/holdfast-brief-{}:1",
        uuid::Uuid::new_v4().simple()
    );
    podman(&["tag", &image, &tag]);
    let ws = app
        .create_online_workspace(&json!({
            "name": "fleeting",
            "runtime": {"command": ["sh", "-c", "echo $$ > pid; exec sleep 600"], "image": tag},
        }))
        .await;
    let id = id_of(&ws);
    assert_eq!(ws["failure"], serde_json::Value::Null);
    app.post_json(&format!("/workspaces/{id}/hibernate"), &json!({}))
        .await
        .expect_status(200);
    podman(&["rmi", &tag]);
    app.post_json(&format!("/workspaces/{id}/wake"), &json!({}))
        .await
        .expect_status(200);
    let failed = app.wait_status(&id, "failed").await;
    let failure = failed["failure"].as_str().unwrap_or_default();
    assert!(
        failure.contains(&tag),
        "the failure names the image: {failed}"
    );
    assert!(containers_of(&id).is_empty());
}
