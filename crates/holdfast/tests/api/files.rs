//! `GET /workspaces/{id}/data/files` and `…/data/file`: read-only browsing
//! of a workspace's saved data through the handle-based walk. Listings and
//! downloads match what the workspace wrote, links are shown and never
//! followed, bad paths are 400 naming `path`, another org's workspace is
//! 404, and a workspace racing its own tree cannot get outside bytes out.

use crate::helpers::{TestApp, eventually, id_of};
use reqwest::Method;
use serde_json::{Value, json};

async fn list(app: &TestApp, id: &str, path: &str) -> (u16, Value) {
    let r = app
        .get(&format!(
            "/workspaces/{id}/data/files?path={}",
            urlencode(path)
        ))
        .await;
    (
        r.status.as_u16(),
        serde_json::from_str(&r.text).unwrap_or(Value::Null),
    )
}

async fn fetch(app: &TestApp, id: &str, path: &str) -> (u16, Vec<u8>) {
    let r = app
        .authed(
            Method::GET,
            &format!("/workspaces/{id}/data/file?path={}", urlencode(path)),
        )
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    // A body cut short by a failing walk reads as an error, not as bytes.
    let body = r.bytes().await.map(|b| b.to_vec()).unwrap_or_default();
    (status, body)
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'/' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn names(listing: &Value) -> Vec<(String, String)> {
    listing["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["name"].as_str().unwrap().to_owned(),
                e["kind"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

#[tokio::test]
async fn listings_and_downloads_match_the_data_and_links_are_never_followed() {
    let app = TestApp::spawn().await;
    let script = "mkdir -p notes/deep && printf 'dear diary' > notes/diary.txt && echo x > notes/deep/x \
                  && ln -sf /etc/passwd escape && ln notes/diary.txt same.txt && touch ready && exec sleep infinity";
    let ws = app
        .create_online_workspace(&json!({
            "name": "librarian",
            "runtime": {"command": ["sh", "-c", script]},
            "compute": {"data_persistence": "persist"},
        }))
        .await;
    let id = id_of(&ws);
    let root = eventually("the files to be written", || async {
        let (status, l) = list(&app, &id, "").await;
        (status == 200 && names(&l).iter().any(|(n, _)| n == "ready")).then_some(l)
    })
    .await;
    let root_names = names(&root);
    assert!(
        root_names.contains(&("notes".into(), "dir".into())),
        "{root_names:?}"
    );
    assert!(
        root_names.contains(&("escape".into(), "symlink".into())),
        "{root_names:?}"
    );
    // Directories come first.
    assert_eq!(root_names[0].1, "dir", "{root_names:?}");
    let escape = root["entries"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["name"] == "escape")
        .unwrap();
    assert_eq!(escape["target"], "/etc/passwd");
    assert_eq!(root["truncated"], false);

    let (status, notes) = list(&app, &id, "notes").await;
    assert_eq!(status, 200, "{notes}");
    assert_eq!(notes["path"], "notes");
    let diary = notes["entries"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["name"] == "diary.txt")
        .unwrap();
    // One of the two names is archived as the file, the other as a hard
    // link to it: both show the size.
    assert!(
        diary["kind"] == "file" || diary["kind"] == "hardlink",
        "{diary}"
    );
    assert_eq!(diary["size"], 10, "{diary}");
    assert_eq!(diary["path"], "notes/diary.txt");

    let (status, body) = fetch(&app, &id, "notes/diary.txt").await;
    assert_eq!(status, 200);
    assert_eq!(body, b"dear diary");
    // A hard link downloads as the file it shares content with.
    let (status, body) = fetch(&app, &id, "same.txt").await;
    assert_eq!(status, 200);
    assert_eq!(body, b"dear diary");
    // The link is refused, never followed: no byte of /etc/passwd.
    let r = app
        .get(&format!("/workspaces/{id}/data/file?path=escape"))
        .await;
    r.expect_error_mentioning(400, "not_a_file", "never follows links");
    app.get(&format!("/workspaces/{id}/data/files?path=escape"))
        .await
        .expect_error(400, "not_a_directory");
    app.get(&format!("/workspaces/{id}/data/file?path=notes"))
        .await
        .expect_error(400, "not_a_file");
    app.get(&format!("/workspaces/{id}/data/files?path=nope"))
        .await
        .expect_error(404, "path_not_found");
    app.get(&format!("/workspaces/{id}/data/file?path=notes/nope.txt"))
        .await
        .expect_error(404, "path_not_found");
}

#[tokio::test]
async fn bad_paths_are_400_naming_path_and_another_orgs_workspace_is_404() {
    let app = TestApp::spawn().await;
    let ws = app
        .create_online_workspace(&json!({
            "name": "guarded",
            "runtime": {"command": ["sh", "-c", "echo hi > a.txt; exec sleep infinity"]},
            "compute": {"data_persistence": "persist"},
        }))
        .await;
    let id = id_of(&ws);
    for bad in [
        "/etc/passwd",
        "../admin-token",
        "a/../../x",
        "./a.txt",
        "a//b",
        "a%00b",
    ] {
        for route in ["files", "file"] {
            let r = app
                .get(&format!("/workspaces/{id}/data/{route}?path={bad}"))
                .await;
            assert_eq!(r.status.as_u16(), 400, "{route} {bad}: {}", r.text);
            let body: Value = serde_json::from_str(&r.text).unwrap();
            assert_eq!(body["field"], "path", "{route} {bad}: {}", r.text);
        }
    }
    app.get(&format!("/workspaces/{id}/data/file"))
        .await
        .expect_error(400, "invalid_field");
    app.get(&format!("/workspaces/{id}/data/files?dir=x"))
        .await
        .expect_status(400);
    app.get("/workspaces/not-a-uuid/data/files")
        .await
        .expect_status(400);
    app.get(&format!("/workspaces/{}/data/files", uuid::Uuid::new_v4()))
        .await
        .expect_error(404, "not_found");

    let token = app.other_org_token("elsewhere").await;
    for route in ["files", "file?path=a.txt"] {
        let r = app
            .send(app.with_token(
                Method::GET,
                &format!("/workspaces/{id}/data/{route}"),
                &token,
            ))
            .await;
        assert_eq!(r.status.as_u16(), 404, "{route}: {}", r.text);
    }
    // Positive control: the owner reads it (once the workspace wrote it).
    eventually("the owner to read a.txt", || async {
        let (status, body) = fetch(&app, &id, "a.txt").await;
        (status == 200 && body == b"hi\n").then_some(())
    })
    .await;
}

/// A workspace swaps a directory for a link to a host directory as fast as
/// it can while it is browsed. Whatever the timing, no listing names the
/// outside file's sibling and no download has its bytes. The control: the
/// same requests do read the inside file whenever they catch the
/// directory, and the server itself could read the outside file.
#[tokio::test]
async fn a_workspace_racing_its_tree_cannot_get_outside_bytes_out() {
    let outside = tempfile_dir();
    std::fs::write(outside.join("secret.txt"), b"OUTSIDE-SECRET").unwrap();
    std::fs::write(outside.join("only-outside.txt"), b"x").unwrap();
    assert_eq!(
        std::fs::read(outside.join("secret.txt")).unwrap(),
        b"OUTSIDE-SECRET",
        "the server's user can read the outside file"
    );
    let app = TestApp::spawn().await;
    let script = format!(
        "while true; do rm -rf d; mkdir d; echo inside > d/secret.txt; sleep 0.01; rm -rf d; ln -s {} d; sleep 0.01; done",
        outside.display()
    );
    let ws = app
        .create_online_workspace(&json!({
            "name": "racer",
            "runtime": {"command": ["sh", "-c", script]},
            "compute": {"data_persistence": "persist"},
        }))
        .await;
    let id = id_of(&ws);
    let mut inside_reads = 0;
    let mut inside_lists = 0;
    for _ in 0..60 {
        let (status, body) = fetch(&app, &id, "d/secret.txt").await;
        assert!(
            !body.windows(14).any(|w| w == b"OUTSIDE-SECRET"),
            "outside bytes came out ({status})"
        );
        if status == 200 && body == b"inside\n" {
            inside_reads += 1;
        }
        let (status, l) = list(&app, &id, "d").await;
        if status == 200 {
            let n = names(&l);
            assert!(
                !n.iter().any(|(name, _)| name == "only-outside.txt"),
                "an outside name was listed: {n:?}"
            );
            if n.iter().any(|(name, _)| name == "secret.txt") {
                inside_lists += 1;
            }
        }
        if inside_reads > 2 && inside_lists > 2 {
            break;
        }
    }
    assert!(
        inside_reads > 0 && inside_lists > 0,
        "the race was caught with the directory in place ({inside_reads} reads, {inside_lists} listings)"
    );
    let _ = std::fs::remove_dir_all(&outside);
}

fn tempfile_dir() -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("holdfast-files-outside-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}
