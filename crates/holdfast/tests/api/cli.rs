//! The `holdfast ws` CLI against a real server: output formats, names
//! wherever ids are taken, shell completions, and a delete without a
//! terminal.

use crate::helpers::{ADMIN_TOKEN, TestApp, child_body, id_of, workspace_body};

/// Runs `holdfast ARGS --url … --token <admin>` with no terminal on stdin;
/// its exit status, stdout and stderr.
fn holdfast(app: &TestApp, args: &[&str]) -> (bool, String, String) {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_holdfast"));
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("HOLDFAST_") {
            cmd.env_remove(key);
        }
    }
    // The connection flags go before a `--` (after it, all is the command).
    let split = args.iter().position(|a| *a == "--").unwrap_or(args.len());
    let out = cmd
        .args(&args[..split])
        .args(["--url", &app.base_url, "--token", ADMIN_TOKEN])
        .args(&args[split..])
        .stdin(std::process::Stdio::null())
        .output()
        .expect("run holdfast");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[track_caller]
fn ok(app: &TestApp, args: &[&str]) -> String {
    let (success, stdout, stderr) = holdfast(app, args);
    assert!(success, "holdfast {args:?} failed: {stderr}");
    stdout
}

#[tokio::test]
async fn get_prints_json_yaml_and_wide_and_takes_a_name() {
    let app = TestApp::spawn().await;
    let ws = app
        .create_online_workspace(&workspace_body("analyst"))
        .await;
    let id = id_of(&ws);

    let json: serde_json::Value =
        serde_json::from_str(&ok(&app, &["ws", "get", "analyst", "-o", "json"]))
            .expect("-o json is JSON");
    assert_eq!(json["id"], id.as_str());
    assert_eq!(json["status"], "online");

    let yaml = ok(&app, &["ws", "get", &id, "-o", "yaml"]);
    assert!(yaml.contains("name: \"analyst\"\n"), "{yaml}");
    assert!(yaml.contains("\ndata:\n  "), "nested blocks: {yaml}");
    assert!(!yaml.trim_start().starts_with('{'), "not JSON: {yaml}");

    let wide = ok(&app, &["ws", "list", "-o", "wide"]);
    let header = wide.lines().next().unwrap_or_default();
    for column in ["ID", "NAME", "STATUS", "RUNTIME", "ISOLATION", "LIMITS"] {
        assert!(header.contains(column), "{column} in {header:?}");
    }
    assert!(wide.contains("sh -c"), "the command in RUNTIME: {wide}");

    let bare = ok(&app, &["ws", "list", "--no-headers"]);
    assert!(!bare.contains("NAME"), "{bare}");
    assert_eq!(bare.lines().count(), 1, "{bare}");
    // Columns are aligned: the header and the row start each column at
    // the same offset.
    let table = ok(&app, &["ws", "list"]);
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(lines[0].find("NAME"), lines[1].find("analyst"), "{table}");
}

#[tokio::test]
async fn names_work_wherever_ids_do_and_an_ambiguous_one_is_refused() {
    let app = TestApp::spawn().await;
    let lead = id_of(&app.create_online_workspace(&workspace_body("lead")).await);
    // A child made through the CLI with its parent given by name.
    ok(
        &app,
        &[
            "ws", "create", "helper", "--parent", "lead", "--", "sleep", "600",
        ],
    );
    let helper = app
        .list_workspaces()
        .await
        .into_iter()
        .find(|w| w["name"] == "helper")
        .expect("the child was created");
    assert_eq!(helper["parent_id"], lead.as_str());

    ok(&app, &["ws", "pause", "helper"]);
    assert_eq!(
        app.wait_status(&id_of(&helper), "paused").await["status"],
        "paused"
    );
    ok(&app, &["ws", "resume", "helper"]);
    app.wait_online(&id_of(&helper)).await;

    // Two workspaces of one name (under different parents): the CLI will
    // not guess.
    app.create_online_workspace(&child_body("helper", &id_of(&helper)))
        .await;
    let (success, _, stderr) = holdfast(&app, &["ws", "restart", "helper"]);
    assert!(!success, "an ambiguous name must fail");
    assert!(
        stderr.contains("2 workspaces are named \"helper\""),
        "{stderr}"
    );
    let (success, _, stderr) = holdfast(&app, &["ws", "get", "nobody"]);
    assert!(!success);
    assert!(stderr.contains("no workspace named \"nobody\""), "{stderr}");
}

#[tokio::test]
async fn a_delete_of_a_tree_says_how_many_child_workspaces_went_with_it() {
    let app = TestApp::spawn().await;
    let lead = id_of(
        &app.create_workspace(&workspace_body("lead"))
            .await
            .expect_status(201),
    );
    let mid = id_of(
        &app.create_workspace(&child_body("mid", &lead))
            .await
            .expect_status(201),
    );
    app.create_workspace(&child_body("leaf", &mid))
        .await
        .expect_status(201);
    let said = ok(
        &app,
        &["ws", "delete", "lead", "--cascade", "--yes", "lead"],
    );
    let mut lines = said.lines();
    assert_eq!(
        lines.next(),
        Some("removed lead and 2 child workspaces"),
        "{said}"
    );
    assert!(
        lines.next().is_some_and(|l| l.starts_with("saved data ")),
        "then what became of the data: {said}"
    );
    // Scripts still get the contract's field.
    let other = id_of(
        &app.create_workspace(&workspace_body("other"))
            .await
            .expect_status(201),
    );
    let json: serde_json::Value = serde_json::from_str(&ok(
        &app,
        &["ws", "delete", &other, "--yes", "other", "--json"],
    ))
    .expect("--json is JSON");
    assert_eq!(json["cascade_deleted"], 1, "{json}");
}

#[tokio::test]
async fn a_delete_without_a_terminal_needs_yes_with_the_name() {
    let app = TestApp::spawn().await;
    let id = id_of(
        &app.create_online_workspace(&workspace_body("scratchpad"))
            .await,
    );

    let (success, _, stderr) = holdfast(&app, &["ws", "delete", "scratchpad"]);
    assert!(!success, "no terminal, no --yes: refused");
    assert!(stderr.contains("--yes \"scratchpad\""), "{stderr}");
    assert_eq!(
        app.workspace(&id).await["status"],
        "online",
        "nothing changed"
    );

    let (success, _, stderr) = holdfast(&app, &["ws", "delete", "scratchpad", "--yes", "scratch"]);
    assert!(!success, "a wrong name is refused by the server");
    assert!(
        stderr.contains("destructive_action_requires_confirmation"),
        "{stderr}"
    );

    let said = ok(&app, &["ws", "delete", "scratchpad", "--yes", "scratchpad"]);
    assert_eq!(app.workspace(&id).await["status"], "removed");
    assert_eq!(
        said.lines().next(),
        Some("removed scratchpad (no child workspaces)"),
        "a lone workspace's delete says so, not \"cascade_deleted 1\": {said}"
    );
    // And a removed workspace is still found by its name, to restore it.
    ok(&app, &["ws", "restore", "scratchpad"]);
    app.wait_online(&id).await;
}

#[test]
fn completions_are_printed_for_each_shell() {
    for (shell, marker) in [
        ("bash", "_holdfast()"),
        ("zsh", "#compdef holdfast"),
        ("fish", "complete -c holdfast"),
    ] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_holdfast"))
            .args(["completions", shell])
            .output()
            .expect("run holdfast completions");
        assert!(out.status.success(), "{shell}");
        let script = String::from_utf8_lossy(&out.stdout);
        assert!(script.contains(marker), "{shell}: {marker} missing");
        assert!(
            script.contains("restore"),
            "{shell}: subcommands are completed"
        );
    }
}

/// `holdfast snap` and `holdfast hold` exist with help text, and do what
/// the API does: create, list, export, delete a snapshot; clone from one
/// with `ws create --from-snapshot`; put and release a legal hold.
#[tokio::test]
async fn snap_and_hold_commands_work_against_the_api() {
    let app = TestApp::spawn().await;
    for (args, words) in [
        (
            &["snap", "--help"][..],
            &["create", "list", "rollback", "export", "rm"][..],
        ),
        (&["hold", "--help"][..], &["put", "rm"][..]),
        (&["ws", "create", "--help"][..], &["--from-snapshot"][..]),
    ] {
        let help = ok(&app, args);
        for w in words {
            assert!(help.contains(w), "{args:?} lists {w}: {help}");
        }
    }
    let (id, _) = app.running_persist_workspace("cli-held").await;

    // The hold works on every backend and either control plane.
    let held: serde_json::Value = serde_json::from_str(&ok(
        &app,
        &["hold", "put", "cli-held", "--reason", "case 7", "--json"],
    ))
    .expect("JSON");
    assert_eq!(held["data"]["hold"]["reason"], "case 7", "{held}");
    let shown = ok(&app, &["hold", "put", &id, "--reason", "case 8"]);
    assert!(
        shown.contains("under a legal hold") && shown.contains("case 8"),
        "{shown}"
    );
    let (success, _, stderr) = holdfast(&app, &["hold", "put", "cli-held"]);
    assert!(!success && stderr.contains("--reason"), "{stderr}");
    let released = ok(&app, &["hold", "rm", "cli-held"]);
    assert!(released.contains("not under a legal hold"), "{released}");
    let (success, _, stderr) = holdfast(&app, &["hold", "rm", "cli-held"]);
    assert!(!success && stderr.contains("not_held"), "{stderr}");
    let ws = app.workspace(&id).await;
    assert!(ws["data"]["hold"].is_null(), "{ws}");

    if crate::helpers::skip_in_remote_mode("snapshots need the embedded control plane")
        || crate::helpers::skip_on_container_backend("snapshots need the process backend")
    {
        return;
    }
    std::fs::write(app.volume_dir(&id).join("note.txt"), b"from the cli").unwrap();
    let created: serde_json::Value = serde_json::from_str(&ok(
        &app,
        &["snap", "create", "cli-held", "--label", "by-cli", "--json"],
    ))
    .expect("JSON");
    assert_eq!(created["label"], "by-cli", "{created}");
    assert_eq!(created["state"], "ready", "{created}");
    let sid = created["id"].as_str().unwrap().to_owned();
    let listed = ok(&app, &["snap", "list", "cli-held"]);
    assert!(
        listed.contains(&sid) && listed.contains("by-cli"),
        "{listed}"
    );

    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("s.tar.gz");
    ok(&app, &["snap", "export", &sid, "-O", out.to_str().unwrap()]);
    let mut found = false;
    let mut ar = tar::Archive::new(flate2::read::GzDecoder::new(
        std::fs::File::open(&out).unwrap(),
    ));
    for e in ar.entries().unwrap() {
        let mut e = e.unwrap();
        if e.path().unwrap().to_string_lossy().trim_start_matches("./") == "note.txt" {
            let mut s = String::new();
            std::io::Read::read_to_string(&mut e, &mut s).unwrap();
            assert_eq!(s, "from the cli");
            found = true;
        }
    }
    assert!(found, "the export holds the file");

    let clone: serde_json::Value = serde_json::from_str(&ok(
        &app,
        &[
            "ws",
            "create",
            "cli-clone",
            "--data",
            "persist",
            "--from-snapshot",
            &sid,
            "--json",
        ],
    ))
    .expect("JSON");
    let clone_id = id_of(&clone);
    app.wait_online(&clone_id).await;
    assert_eq!(
        std::fs::read(app.volume_dir(&clone_id).join("note.txt")).unwrap(),
        b"from the cli"
    );

    let (success, _, stderr) = holdfast(&app, &["snap", "rm", &sid]);
    assert!(
        !success && stderr.contains("--yes"),
        "no prompt without a terminal: {stderr}"
    );
    let removed = ok(&app, &["snap", "rm", &sid, "--yes", "cli-held", "--json"]);
    assert!(removed.contains("erased"), "{removed}");
    assert!(!ok(&app, &["snap", "list", "cli-held"]).contains(&sid));
}

#[tokio::test]
async fn top_without_a_terminal_prints_the_table_once_largest_data_first() {
    let app = TestApp::spawn_with(&["--usage-interval", "1s"]).await;
    let big = serde_json::json!({
        "name": "hoarder",
        "runtime": {"command": ["sh", "-c", "head -c 200000 /dev/zero > blob; exec sleep infinity"]},
        "compute": {"data_persistence": "persist"},
    });
    let hoarder = id_of(&app.create_online_workspace(&big).await);
    app.create_online_workspace(&workspace_body("light")).await;
    crate::helpers::eventually("the hoarder's data to be measured", || async {
        let w = app.get(&format!("/workspaces/{hoarder}")).await;
        let v: serde_json::Value = serde_json::from_str(&w.text).ok()?;
        (v["data"]["bytes"].as_i64()? >= 200_000).then_some(())
    })
    .await;
    // Without a terminal it prints once and exits (no screen clearing).
    let out = ok(&app, &["ws", "top"]);
    assert!(!out.contains('\u{1b}'), "no escape codes: {out:?}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 3, "{out}");
    for column in [
        "NAME",
        "STATUS",
        "UPTIME",
        "SIZE",
        "TIER",
        "ISOLATION",
        "LIMITS",
    ] {
        assert!(lines[0].contains(column), "{column} in {:?}", lines[0]);
    }
    assert!(lines[1].starts_with("hoarder"), "largest first: {out}");
    assert!(lines[1].contains("200.0 KB"), "{out}");
    assert!(lines[2].starts_with("light"), "{out}");
    assert!(lines[1].contains(" online "), "{out}");
    let bare = ok(&app, &["ws", "top", "--once", "--no-headers"]);
    assert_eq!(bare.lines().count(), 2, "{bare}");
}
