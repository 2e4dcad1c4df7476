//! `GET /workspaces/:id/data/export` (SPEC §7, §11): the data dir as a
//! tar.gz, which stores links as links, skips special files, never reads
//! outside the data dir, and is refused once the data is erased.

use crate::helpers::{
    ArchiveEntry, EntryKind, RECORDING_SCRIPT, TestApp, id_of, plant_files, wait_for_pid,
    wait_process_gone, workspace_body_with_persistence,
};
use serde_json::json;

/// The entry at `path`, failing with the list of entries when missing.
#[track_caller]
fn entry<'a>(entries: &'a [ArchiveEntry], path: &str) -> &'a ArchiveEntry {
    entries.iter().find(|e| e.path == path).unwrap_or_else(|| {
        panic!(
            "no {path:?} in the archive; have {:?}",
            entries.iter().map(|e| &e.path).collect::<Vec<_>>()
        )
    })
}

/// Whether any entry's bytes contain `needle`.
fn any_content_contains(entries: &[ArchiveEntry], needle: &[u8]) -> bool {
    entries
        .iter()
        .any(|e| e.content.windows(needle.len()).any(|w| w == needle))
}

/// Creates a persist workspace whose process runs `setup` in its data dir
/// before the recording script, waits until it has written its pid, and
/// returns its id and that pid.
async fn workspace_running(
    app: &TestApp,
    name: &str,
    setup: &str,
    env: serde_json::Value,
) -> (String, u32) {
    let script = format!("{setup}; {RECORDING_SCRIPT}");
    let ws = app
        .create_online_workspace(&json!({
            "name": name,
            "runtime": { "command": ["sh", "-c", script] },
            "compute": { "data_persistence": "persist" },
            "env": env,
        }))
        .await;
    let id = id_of(&ws);
    let pid = wait_for_pid(&app.volume_dir(&id)).await;
    (id, pid)
}

/// Names an engine's archive API may leave out (Podman 4.3 drops a
/// top-level `dev`, `proc` and `sys` of the directory it archives): such an
/// export holds them, or the download fails. It never ends as a complete
/// archive without them.
#[tokio::test]
async fn an_export_holds_every_entry_or_fails_never_a_complete_looking_archive_without_some() {
    let app = TestApp::spawn_with_short_graces().await;
    let (id, _) = workspace_running(
        &app,
        "systemish",
        "mkdir -p dev/x proc sys; echo kept > dev/x/f; echo here > proc/p",
        json!({}),
    )
    .await;
    match app.try_export_data(&id).await {
        Ok(export) => {
            let entries = export.expect_archive();
            assert_eq!(entry(&entries, "dev/x/f").content, b"kept\n");
            assert_eq!(entry(&entries, "proc/p").content, b"here\n");
            assert!(entries.iter().any(|e| e.path == "sys"), "sys is exported");
        }
        Err(broken) => {
            // Only where the engine's archive API left entries out; on the
            // process backend every export is whole.
            assert!(
                crate::helpers::container_mode(),
                "a broken export on the process backend: {broken}"
            );
            assert!(
                app.server_logged("the export is incomplete and is aborted")
                    .await,
                "the server says why the download broke off"
            );
        }
    }
}

#[tokio::test]
async fn export_holds_the_files_and_nested_directories() {
    let app = TestApp::spawn_with_short_graces().await;
    let (id, _) = workspace_running(
        &app,
        "exported",
        "echo 'hello from the agent' > notes.txt; mkdir -p sub/deeper; \
         printf 'deep down' > sub/deep.txt; printf '' > sub/deeper/empty.txt",
        json!({}),
    )
    .await;
    let planted = plant_files(&app.volume_dir(&id), "exported");

    let entries = app.export_data(&id).await.expect_archive();
    let notes = entry(&entries, "notes.txt");
    assert_eq!(notes.kind, EntryKind::File);
    assert_eq!(notes.content, b"hello from the agent\n");
    assert_eq!(entry(&entries, "sub/deep.txt").content, b"deep down");
    assert_eq!(entry(&entries, "sub/deeper/empty.txt").content, b"");
    assert_eq!(entry(&entries, "data.txt").content, b"started\n");
    for (path, content) in &planted {
        let found = entry(&entries, path);
        assert_eq!(found.kind, EntryKind::File, "{path}");
        assert!(found.content == *content, "{path} differs in the archive");
    }
    assert!(
        entries
            .iter()
            .all(|e| !e.path.is_empty() || e.kind == EntryKind::Dir),
        "only the root itself may have an empty path: {entries:?}"
    );
}

#[tokio::test]
async fn export_stores_links_as_links_and_fifos_as_fifos() {
    let app = TestApp::spawn_with_short_graces().await;
    // A file outside the data dir that a hostile process points at.
    let outside = tempfile::tempdir().expect("a dir outside the data dir");
    let secret = format!("outside-secret-{}", uuid::Uuid::new_v4());
    let secret_file = outside.path().join("secret.txt");
    std::fs::write(&secret_file, &secret).expect("write the outside file");
    let (id, _) = workspace_running(
        &app,
        "hostile",
        "echo inside > inside.txt; \
         ln -sf /etc/passwd passwd_link; \
         ln -sf \"$OUTSIDE_FILE\" outside_link; \
         ln -sfn \"$OUTSIDE_DIR\" outside_dir_link; \
         ln -sfn /etc etc_link; \
         ln -sf inside.txt inside_link; \
         [ -p pipe ] || mkfifo pipe",
        json!({
            "OUTSIDE_FILE": secret_file.display().to_string(),
            "OUTSIDE_DIR": outside.path().display().to_string(),
        }),
    )
    .await;
    assert!(
        app.volume_dir(&id).join("pipe").exists(),
        "the workspace made its FIFO"
    );

    // A FIFO that were opened would block this request until the client's
    // timeout; getting an answer at all is part of the check.
    let entries = app.export_data(&id).await.expect_archive();
    assert_eq!(entry(&entries, "inside.txt").content, b"inside\n");
    for (link, target) in [
        ("passwd_link", "/etc/passwd".to_owned()),
        ("outside_link", secret_file.display().to_string()),
        ("outside_dir_link", outside.path().display().to_string()),
        ("etc_link", "/etc".to_owned()),
        ("inside_link", "inside.txt".to_owned()),
    ] {
        let found = entry(&entries, link);
        assert_eq!(found.kind, EntryKind::Symlink, "{link} must stay a link");
        assert_eq!(
            found.link_target.as_deref(),
            Some(target.as_str()),
            "{link}"
        );
        assert!(found.content.is_empty(), "{link} carries no content");
    }
    assert!(
        !any_content_contains(&entries, secret.as_bytes()),
        "a link to a file outside must not put its content in the archive"
    );
    assert!(
        !any_content_contains(&entries, b"root:"),
        "a link to /etc/passwd must not put its content in the archive"
    );
    assert!(
        entries
            .iter()
            .all(|e| !e.path.starts_with("etc_link/") && !e.path.starts_with("outside_dir_link/")),
        "a link to a directory must not be walked: {entries:?}"
    );
    // A FIFO is recorded as one (its name and mode), never opened.
    let pipe = entry(&entries, "pipe");
    assert!(
        matches!(&pipe.kind, EntryKind::Other(k) if k.contains("Fifo")),
        "{pipe:?}"
    );
    assert!(pipe.content.is_empty());
}

#[tokio::test]
async fn export_of_a_removed_workspace_with_retained_data_works() {
    let app = TestApp::spawn_with_short_graces().await;
    let (id, pid) = app.running_persist_workspace("gone-but-kept").await;
    let planted = plant_files(&app.volume_dir(&id), "gone-but-kept");
    app.delete_workspace(&id)
        .confirm_name("gone-but-kept")
        .send()
        .await
        .expect_status(200);
    wait_process_gone(pid).await;

    let entries = app.export_data(&id).await.expect_archive();
    for (path, content) in &planted {
        assert!(entry(&entries, path).content == *content, "{path}");
    }
    // Exporting reads; it must not change the volume's state.
    assert_eq!(app.volume(&id).await["state"], "retained");
}

#[tokio::test]
async fn export_after_erasure_is_409_data_erased() {
    let app = TestApp::spawn_with_short_graces().await;
    let (id, pid) = app.running_persist_workspace("erased").await;
    // Pending erasure: still exportable, the last chance to take a copy.
    app.delete_workspace(&id)
        .confirm_name("erased")
        .erase_data()
        .send()
        .await
        .expect_status(200);
    wait_process_gone(pid).await;
    let entries = app.export_data(&id).await.expect_archive();
    entry(&entries, "data.txt");

    app.wait_sweep_plans(&id, "erase").await;
    app.sweep().await;
    app.export_data(&id)
        .await
        .into_response()
        .expect_error(409, "data_erased");
}

#[tokio::test]
async fn export_without_data_is_404_and_bad_ids_are_400() {
    let app = TestApp::spawn_with_short_graces().await;
    // An ephemeral workspace keeps nothing once it is deleted.
    let ws = app
        .create_online_workspace(&workspace_body_with_persistence("fleeting", "ephemeral"))
        .await;
    let id = id_of(&ws);
    let pid = wait_for_pid(&app.scratch_dir(&id)).await;
    app.delete_workspace(&id)
        .confirm_name("fleeting")
        .send()
        .await
        .expect_status(200);
    wait_process_gone(pid).await;
    let none = app.export_data(&id).await.into_response();
    assert_eq!(none.status.as_u16(), 404, "{}", none.text);
    assert!(none.body["code"].is_string(), "{}", none.text);

    app.export_data(&uuid::Uuid::new_v4().to_string())
        .await
        .into_response()
        .expect_error(404, "not_found");
    let bad = app.export_data("not-a-uuid").await.into_response();
    assert_eq!(bad.status.as_u16(), 400, "{}", bad.text);
}
