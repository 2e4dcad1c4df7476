//! Org import and export: a tree of workspaces as one YAML (or JSON)
//! document. An import creates what is missing and changes what differs; a
//! reconcile also removes what the document no longer names, always keeping
//! the data; a bad document is 400 naming the path (and the YAML line) and
//! changes nothing; the export imports back as a no-op.

use crate::helpers::{
    RECORDING_SCRIPT, TestApp, count_action, events_with_action, id_of, read_lines,
};
use reqwest::Method;
use serde_json::{Value, json};

const YAML: &str = "application/yaml";

/// A document line for the recording runtime (see `RECORDING_SCRIPT`).
fn runtime_line() -> String {
    format!(
        "runtime: {{command: [sh, -c, {}]}}",
        json!(RECORDING_SCRIPT)
    )
}

/// root, root/research (persist), root/research/scraper (ephemeral) and
/// root/writer, all running the recording runtime.
fn team_doc() -> String {
    let rt = runtime_line();
    format!(
        "name: root\n{rt}\nrole: the team\nchildren:\n  - name: research\n    {rt}\n    compute: {{data_persistence: persist}}\n    children:\n      - name: scraper\n        {rt}\n        compute: {{data_persistence: ephemeral}}\n  - name: writer\n    {rt}\n    compute: {{data_persistence: persist}}\n"
    )
}

/// `POST /org/import` with `query` (`""`, `"?mode=reconcile"`, …), a body
/// and its content type, as the admin.
async fn import_raw(
    app: &TestApp,
    query: &str,
    content_type: &str,
    body: impl Into<reqwest::Body>,
) -> crate::helpers::ApiResponse {
    let request = app
        .authed(Method::POST, &format!("/org/import{query}"))
        .header(reqwest::header::CONTENT_TYPE, content_type)
        .body(body);
    app.send(request).await
}

/// A YAML import, asserting 200 and the answer's shape.
async fn import(app: &TestApp, query: &str, doc: &str) -> Value {
    let answer = import_raw(app, query, YAML, doc.to_owned())
        .await
        .expect_status(200);
    for key in ["created", "updated", "removed"] {
        assert!(answer[key].is_array(), "{answer}");
    }
    assert!(answer["unchanged"].is_u64(), "{answer}");
    assert_eq!(
        answer["dry_run"],
        query.contains("dry_run=true"),
        "{answer}"
    );
    answer
}

fn paths(items: &Value) -> Vec<String> {
    let mut out: Vec<String> = items
        .as_array()
        .unwrap_or_else(|| panic!("not an array: {items}"))
        .iter()
        .map(|i| i["path"].as_str().unwrap_or_default().to_owned())
        .collect();
    out.sort();
    out
}

/// The id of the item of `items` at `path`.
fn id_at(items: &Value, path: &str) -> String {
    let item = items
        .as_array()
        .and_then(|a| a.iter().find(|i| i["path"] == path))
        .unwrap_or_else(|| panic!("no {path} in {items}"));
    id_of(item)
}

/// Every workspace (removed ones too) as the API shows it, without what
/// changes on its own (status, instance, timestamps of observation).
async fn config_snapshot(app: &TestApp) -> Vec<Value> {
    let mut out: Vec<Value> = app
        .list_workspaces_including_removed()
        .await
        .into_iter()
        .map(|w| {
            json!({
                "id": w["id"], "org_id": w["org_id"], "name": w["name"], "role": w["role"],
                "parent_id": w["parent_id"], "tier": w["tier"], "runtime": w["runtime"],
                "env": w["env"], "compute": w["compute"], "removed_at": w["removed_at"],
            })
        })
        .collect();
    out.sort_by_key(|w| w["id"].as_str().unwrap_or_default().to_owned());
    out
}

#[tokio::test]
async fn import_creates_the_tree_and_a_second_import_changes_nothing() {
    let app = TestApp::spawn().await;
    let first = import(&app, "", &team_doc()).await;
    assert_eq!(
        paths(&first["created"]),
        [
            "root",
            "root/research",
            "root/research/scraper",
            "root/writer"
        ],
        "{first}"
    );
    assert_eq!(first["unchanged"], 0, "{first}");
    let created = &first["created"];
    let root = id_at(created, "root");
    let research = id_at(created, "root/research");
    let scraper = id_at(created, "root/research/scraper");
    let writer = id_at(created, "root/writer");

    // The tree as the document says, and every workspace starts.
    let ws = app.wait_online(&root).await;
    assert_eq!(
        (ws["parent_id"].clone(), ws["role"].clone()),
        (Value::Null, json!("the team"))
    );
    let ws = app.wait_online(&research).await;
    assert_eq!(ws["parent_id"], root.as_str());
    assert_eq!(ws["compute"], json!({ "data_persistence": "persist" }));
    let ws = app.wait_online(&scraper).await;
    assert_eq!(ws["parent_id"], research.as_str());
    assert_eq!(ws["data"]["mode"], "ephemeral");
    assert_eq!(app.wait_online(&writer).await["parent_id"], root.as_str());
    for id in [&root, &research, &scraper, &writer] {
        assert_eq!(
            count_action(&app.audit_of(id).await, "workspace.created"),
            1,
            "{id}"
        );
    }

    let before = config_snapshot(&app).await;
    let again = import(&app, "", &team_doc()).await;
    assert_eq!(
        (
            again["created"].clone(),
            again["updated"].clone(),
            again["removed"].clone(),
            again["unchanged"].clone()
        ),
        (json!([]), json!([]), json!([]), json!(4)),
        "{again}"
    );
    assert_eq!(config_snapshot(&app).await, before);
}

#[tokio::test]
async fn an_import_changes_what_differs_at_the_next_start() {
    let app = TestApp::spawn().await;
    let created = import(&app, "", &team_doc()).await["created"].clone();
    let writer = id_at(&created, "root/writer");
    app.wait_online(&writer).await;
    let pid = crate::helpers::wait_for_pid(&app.volume_dir(&writer)).await;

    let changed = team_doc().replace(
        "  - name: writer\n",
        "  - name: writer\n    tier: 3\n    env: {STYLE: terse}\n",
    );
    let answer = import(&app, "", &changed).await;
    assert_eq!(
        answer["updated"],
        json!([{ "id": writer, "path": "root/writer", "fields": ["tier", "env"] }]),
        "{answer}"
    );
    assert_eq!(answer["unchanged"], 3, "{answer}");
    let ws = app.workspace(&writer).await;
    assert_eq!(
        (ws["tier"].clone(), ws["env"].clone()),
        (json!(3), json!({ "STYLE": "terse" }))
    );
    assert_eq!(ws["status"], "online", "no restart: {ws}");
    let updated = events_with_action(&app.audit_of(&writer).await, "workspace.updated");
    assert_eq!(updated.len(), 1, "{updated:?}");
    // Like a PATCH, the change waits for the next start.
    assert_eq!(
        crate::helpers::wait_for_pid(&app.volume_dir(&writer)).await,
        pid
    );
    app.restart_workspace(&writer).await.expect_status(200);
    crate::helpers::wait_for_pid_other_than(&app.volume_dir(&writer), pid).await;
    assert_eq!(import(&app, "", &changed).await["unchanged"], 4);
}

#[tokio::test]
async fn a_dry_run_answers_the_plan_and_changes_nothing() {
    let app = TestApp::spawn().await;
    let dry = import(&app, "?dry_run=true", &team_doc()).await;
    assert_eq!(paths(&dry["created"]).len(), 4, "{dry}");
    assert!(
        dry["created"]
            .as_array()
            .unwrap()
            .iter()
            .all(|c| c["id"].is_null()),
        "{dry}"
    );
    assert!(app.list_workspaces_including_removed().await.is_empty());

    let created = import(&app, "", &team_doc()).await["created"].clone();
    let writer = id_at(&created, "root/writer");
    app.wait_online(&writer).await;
    let before = config_snapshot(&app).await;
    let smaller = team_doc()
        .split("  - name: writer")
        .next()
        .unwrap()
        .to_owned();
    let dry = import(&app, "?mode=reconcile&dry_run=true", &smaller).await;
    assert_eq!(
        dry["removed"],
        json!([{ "id": writer, "path": "root/writer", "data": "retained", "restore_until": null }]),
        "{dry}"
    );
    assert_eq!(dry["unchanged"], 3, "{dry}");
    assert_eq!(config_snapshot(&app).await, before);
    assert_eq!(app.workspace(&writer).await["status"], "online");
    assert_eq!(
        count_action(&app.audit_of(&writer).await, "workspace.deleted"),
        0
    );
}

#[tokio::test]
async fn reconcile_removes_what_the_document_drops_and_keeps_its_data() {
    let app = TestApp::spawn().await;
    let created = import(&app, "", &team_doc()).await["created"].clone();
    let research = id_at(&created, "root/research");
    let scraper = id_at(&created, "root/research/scraper");
    let writer = id_at(&created, "root/writer");
    for id in [&research, &scraper, &writer] {
        app.wait_online(id).await;
    }
    let pid = crate::helpers::wait_for_pid(&app.volume_dir(&research)).await;

    // Without reconcile, a smaller document removes nothing.
    let smaller = format!(
        "name: root\n{}\nrole: the team\nchildren:\n  - name: writer\n    {}\n    compute: {{data_persistence: persist}}\n",
        runtime_line(),
        runtime_line()
    );
    let merged = import(&app, "", &smaller).await;
    assert_eq!(merged["removed"], json!([]), "{merged}");
    assert_eq!(app.workspace(&research).await["status"], "online");

    let answer = import(&app, "?mode=reconcile", &smaller).await;
    assert_eq!(
        paths(&answer["removed"]),
        ["root/research", "root/research/scraper"],
        "{answer}"
    );
    let removed = answer["removed"].as_array().unwrap();
    let of = |id: &str| removed.iter().find(|r| r["id"] == id).unwrap().clone();
    assert_eq!(of(&research)["data"], "retained", "{answer}");
    assert!(of(&research)["restore_until"].is_string(), "{answer}");
    assert_eq!(
        of(&scraper)["data"],
        "none",
        "an ephemeral workspace keeps nothing: {answer}"
    );
    assert_eq!(answer["unchanged"], 2, "{answer}");

    assert_eq!(app.workspace(&research).await["status"], "removed");
    assert_eq!(app.workspace(&scraper).await["status"], "removed");
    assert_eq!(app.workspace(&writer).await["status"], "online");
    let volume = app.wait_volume_state(&research, "retained").await;
    assert!(volume["retain_until"].is_string(), "{volume}");
    let audit = app.audit_of(&research).await;
    let deleted = events_with_action(&audit, "workspace.deleted");
    assert_eq!(deleted.len(), 1, "{audit:?}");
    assert_eq!(deleted[0]["detail"]["erase_data"], false, "{audit:?}");
    assert_eq!(count_action(&audit, "volume.retained"), 1, "{audit:?}");
    assert_eq!(
        count_action(&audit, "volume.erase_requested"),
        0,
        "{audit:?}"
    );

    // The same reconcile again removes nothing more.
    let again = import(&app, "?mode=reconcile", &smaller).await;
    assert_eq!(again["removed"], json!([]), "{again}");

    // Restorable, with its data.
    app.restore_workspace(&research).await.expect_status(200);
    app.wait_online(&research).await;
    crate::helpers::wait_for_pid_other_than(&app.volume_dir(&research), pid).await;
    let starts = read_lines(&app.volume_dir(&research).join("data.txt"));
    assert_eq!(
        starts.len(),
        2,
        "the data of before the removal is still there: {starts:?}"
    );
}

#[tokio::test]
async fn erase_data_is_refused_and_changes_nothing() {
    let app = TestApp::spawn().await;
    import(&app, "", &team_doc()).await;
    let before = config_snapshot(&app).await;
    for query in [
        "?mode=reconcile&erase_data=true",
        "?erase_data=true",
        "?erase_data=false&mode=reconcile",
    ] {
        import_raw(&app, query, YAML, "name: root\n")
            .await
            .expect_error_mentioning(400, "erase_not_allowed", "never erases");
    }
    for query in [
        "?mode=prune",
        "?dry_run=maybe",
        "?org_id=nope",
        "?colour=red",
    ] {
        let answer = import_raw(&app, query, YAML, "name: root\n").await;
        assert_eq!(answer.status.as_u16(), 400, "{query}: {}", answer.text);
    }
    assert_eq!(config_snapshot(&app).await, before);
}

#[tokio::test]
async fn bad_documents_are_400_name_the_place_and_change_nothing() {
    let app = TestApp::spawn().await;
    import(&app, "", &team_doc()).await;
    let before = config_snapshot(&app).await;

    let deep = {
        let mut doc = String::new();
        for i in 0..32 {
            let pad = "  ".repeat(i * 2);
            let first = if i == 0 { pad.as_str() } else { "" };
            doc.push_str(&format!("{first}name: n{i}\n{pad}children:\n{pad}  - "));
        }
        doc.push_str("name: leaf\n");
        doc
    };
    let wide = {
        let mut doc = String::from("name: root\nchildren:\n");
        for i in 0..2000 {
            doc.push_str(&format!("  - name: c{i}\n"));
        }
        doc
    };
    let laughs = {
        let mut doc = String::from("name: root\nrole: &a lol\nenv:\n");
        let mut prev = "a".to_owned();
        for i in 0..9 {
            let next = format!("l{i}");
            doc.push_str(&format!("  K{i}: &{next} [*{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}]\n"));
            prev = next;
        }
        doc
    };
    let cases: Vec<(&str, String, &str, &str)> = vec![
        (
            "unknown field",
            "name: root\nchildren:\n  - name: a\n    colour: red\n".into(),
            "unknown_field",
            "root/children[0]",
        ),
        (
            "duplicate siblings",
            "name: root\nchildren:\n  - name: a\n  - name: a\n".into(),
            "duplicate_name",
            "root/a",
        ),
        ("33 levels", deep, "too_deep", "/n31/leaf"),
        (
            "2,001 workspaces",
            wide,
            "too_many_nodes",
            "root/children[1999]",
        ),
        ("billion laughs", laughs, "alias_not_allowed", "line 4"),
        (
            "not YAML",
            "name: [root\n".into(),
            "invalid_document",
            "line",
        ),
        (
            "a number for a name",
            "name: 7\n".into(),
            "invalid_field",
            "name",
        ),
        (
            "tier out of range",
            "name: root\nchildren: [{name: a, tier: 9}]\n".into(),
            "invalid_field",
            "root/a",
        ),
    ];
    for (what, doc, code, place) in cases {
        let body = import_raw(&app, "?mode=reconcile", YAML, doc)
            .await
            .expect_error(400, code);
        let error = body["error"].as_str().unwrap();
        assert!(
            error.contains(place),
            "{what}: expected {place:?} in {body}"
        );
    }

    // A bad persistence mode: the path of the node and the line.
    let doc = "name: root\nchildren:\n  - name: research\n    children:\n      - name: scraper\n        compute:\n          data_persistence: Persist\n";
    let body = import_raw(&app, "", YAML, doc)
        .await
        .expect_error(400, "invalid_field");
    assert_eq!(body["path"], "root/research/scraper", "{body}");
    assert_eq!(body["line"], 7, "{body}");
    assert_eq!(body["field"], "compute.data_persistence", "{body}");
    let error = body["error"].as_str().unwrap();
    assert!(
        error.contains("root/research/scraper (line 7)") && error.contains("ephemeral"),
        "{body}"
    );

    // JSON gets the same checks (no lines).
    let body = import_raw(
        &app,
        "",
        "application/json",
        r#"{"name":"root","children":[{"name":"a","compute":{"data_persistence":"off"}}]}"#,
    )
    .await
    .expect_error(400, "invalid_field");
    assert_eq!(body["path"], "root/a", "{body}");
    import_raw(
        &app,
        "",
        "application/json",
        r#"{"name":"root","name":"again"}"#,
    )
    .await
    .expect_error(400, "duplicate_key");
    import_raw(
        &app,
        "",
        "application/json",
        r#"{"name":"root","parent_id":null}"#,
    )
    .await
    .expect_error(400, "unknown_field");

    // Over 1 MiB is 413; neither YAML nor JSON is 415.
    let big = format!("name: root\nrole: x\n# {}\n", "x".repeat(1024 * 1024));
    import_raw(&app, "", YAML, big)
        .await
        .expect_error(413, "payload_too_large");
    import_raw(&app, "", "text/plain", "name: root\n")
        .await
        .expect_error(415, "unsupported_media_type");
    let bare = app
        .send(app.authed(Method::POST, "/org/import").body("name: root\n"))
        .await;
    assert_eq!(bare.status.as_u16(), 415, "{}", bare.text);

    assert_eq!(
        config_snapshot(&app).await,
        before,
        "a rejected document changes nothing"
    );
}

#[tokio::test]
async fn yaml_and_json_import_the_same_tree() {
    let app = TestApp::spawn().await;
    let json_doc = json!({
        "name": "root",
        "runtime": { "command": ["sh", "-c", RECORDING_SCRIPT] },
        "role": "the team",
        "children": [
            { "name": "research", "runtime": { "command": ["sh", "-c", RECORDING_SCRIPT] },
              "compute": { "data_persistence": "persist" },
              "children": [{ "name": "scraper", "runtime": { "command": ["sh", "-c", RECORDING_SCRIPT] },
                             "compute": { "data_persistence": "ephemeral" } }] },
            { "name": "writer", "runtime": { "command": ["sh", "-c", RECORDING_SCRIPT] },
              "compute": { "data_persistence": "persist" } },
        ],
    });
    let answer = import_raw(
        &app,
        "",
        "application/json; charset=utf-8",
        json_doc.to_string(),
    )
    .await
    .expect_status(200);
    assert_eq!(paths(&answer["created"]).len(), 4, "{answer}");
    let again = import_raw(&app, "", "text/yaml", team_doc())
        .await
        .expect_status(200);
    assert_eq!(again["unchanged"], 4, "{again}");
}

async fn org_with_token(app: &TestApp, name: &str) -> (String, String) {
    let org = id_of(
        &app.post_json("/orgs", &json!({ "name": name }))
            .await
            .expect_status(201),
    );
    let token = app
        .post_json(&format!("/orgs/{org}/tokens"), &json!({}))
        .await
        .expect_status(201)["token"]
        .as_str()
        .unwrap()
        .to_owned();
    (org, token)
}

#[tokio::test]
async fn an_org_token_imports_and_exports_its_own_org_only() {
    let app = TestApp::spawn().await;
    let (acme, token) = org_with_token(&app, "acme").await;
    let default_tree = import(&app, "", &team_doc()).await["created"].clone();
    let default_root = id_at(&default_tree, "root");
    app.wait_online(&default_root).await;

    let as_acme = |method: Method, path: &str| app.with_token(method, path, &token);
    let answer = app
        .send(
            as_acme(Method::POST, "/org/import?mode=reconcile")
                .header("content-type", YAML)
                .body("name: root\n"),
        )
        .await
        .expect_status(200);
    // Its own, new tree: the default org's "root" is not its to match or prune.
    assert_eq!(paths(&answer["created"]), ["root"], "{answer}");
    assert_eq!(answer["removed"], json!([]), "{answer}");
    let acme_root = id_at(&answer["created"], "root");
    assert_eq!(app.workspace(&acme_root).await["org_id"], acme.as_str());
    assert_eq!(
        app.workspace(&default_root).await["status"],
        "online",
        "untouched"
    );
    assert_eq!(
        app.list_at(&format!("/workspaces?org_id={acme}"))
            .await
            .len(),
        1
    );

    let default_org = app.workspace(&default_root).await["org_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let other = app
        .send(
            as_acme(Method::POST, &format!("/org/import?org_id={default_org}"))
                .header("content-type", YAML)
                .body("name: root\n"),
        )
        .await;
    assert_eq!(other.status.as_u16(), 404, "{}", other.text);
    let other = app
        .send(as_acme(
            Method::GET,
            &format!("/org/export?org_id={default_org}"),
        ))
        .await;
    assert_eq!(other.status.as_u16(), 404, "{}", other.text);

    let exported = app
        .send(as_acme(Method::GET, "/org/export"))
        .await
        .expect_status(200);
    assert_eq!(exported, Value::Null, "YAML, not JSON");
    let text = app.send(as_acme(Method::GET, "/org/export")).await.text;
    assert!(
        text.starts_with("name: root\n") && !text.contains("children"),
        "{text}"
    );

    // The admin picks the org with ?org_id=.
    let answer = import(
        &app,
        &format!("?org_id={acme}&dry_run=true"),
        "name: root\nchildren: [{name: extra}]\n",
    )
    .await;
    assert_eq!(paths(&answer["created"]), ["root/extra"], "{answer}");
    let missing = import_raw(
        &app,
        &format!("?org_id={}", uuid::Uuid::new_v4()),
        YAML,
        "name: root\n",
    )
    .await;
    assert_eq!(missing.status.as_u16(), 404, "{}", missing.text);

    let anonymous = app
        .send(
            app.client
                .request(Method::POST, app.url("/org/import"))
                .header("content-type", YAML)
                .body("name: root\n"),
        )
        .await;
    assert_eq!(anonymous.status.as_u16(), 401, "{}", anonymous.text);
}

#[tokio::test]
async fn the_export_imports_back_as_a_no_op() {
    let app = TestApp::spawn().await;
    let doc = format!(
        "{}  - name: \"odd: name #1\"\n    tier: 4\n    role: 'quotes \" and '' too'\n    runtime: {{command: [sleep, '600']}}\n    env: {{A: '007', B: 'two words'}}\n    compute: {{data_persistence: ephemeral, volume: {{size_gb: 3}}}}\n",
        team_doc()
    );
    let created = import(&app, "", &doc).await["created"].clone();
    // A workspace added through the API is part of the live tree too.
    let writer = id_at(&created, "root/writer");
    app.create_workspace(
        &json!({ "name": "late", "parent_id": writer, "runtime": { "command": ["sleep", "600"] } }),
    )
    .await
    .expect_status(201);

    let response = app.send(app.authed(Method::GET, "/org/export")).await;
    assert_eq!(response.status.as_u16(), 200, "{}", response.text);
    let exported = response.text;
    let again = import(&app, "?mode=reconcile", &exported).await;
    assert_eq!(
        (
            again["created"].clone(),
            again["updated"].clone(),
            again["removed"].clone(),
            again["unchanged"].clone()
        ),
        (json!([]), json!([]), json!([]), json!(6)),
        "{again}\n{exported}"
    );
    assert!(exported.contains("late"), "{exported}");

    // Several top-level workspaces: the export asks which.
    app.create_workspace(&json!({ "name": "second", "runtime": { "command": ["sleep", "600"] } }))
        .await
        .expect_status(201);
    app.get("/org/export")
        .await
        .expect_error(409, "several_roots");
    let root = app.get("/org/export?root=root").await;
    assert_eq!(root.text, exported);
    app.get("/org/export?root=nobody")
        .await
        .expect_error(404, "not_found");
}

/// Runs `holdfast org …` against the test server as the admin; its stdout,
/// asserting success.
fn cli(app: &TestApp, args: &[&str]) -> String {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_holdfast"));
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("HOLDFAST_") {
            cmd.env_remove(key);
        }
    }
    let out = cmd
        .arg("org")
        .args(args)
        .args([
            "--url",
            &app.base_url,
            "--token",
            crate::helpers::ADMIN_TOKEN,
        ])
        .stdin(std::process::Stdio::null())
        .output()
        .expect("run holdfast org");
    assert!(
        out.status.success(),
        "holdfast org {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("UTF-8 output")
}

#[tokio::test]
async fn the_cli_prints_the_plan_and_exports() {
    let app = TestApp::spawn().await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("org.yaml");
    std::fs::write(&file, team_doc()).unwrap();
    let file = file.to_str().unwrap();

    let dry = cli(&app, &["import", file, "--dry-run"]);
    assert_eq!(
        dry,
        "+ create root\n+ create root/research\n+ create root/research/scraper\n+ create root/writer\n\
         4 to create, 0 to update, 0 to remove, 0 unchanged (dry run: nothing was changed)\n"
    );
    assert!(app.list_workspaces().await.is_empty());

    cli(&app, &["import", file]);
    let writer = app
        .list_workspaces()
        .await
        .into_iter()
        .find(|w| w["name"] == "writer")
        .unwrap();
    app.wait_online(&id_of(&writer)).await;
    let smaller = team_doc()
        .split("  - name: writer")
        .next()
        .unwrap()
        .replace("role: the team", "role: the lab");
    std::fs::write(dir.path().join("org.yaml"), smaller).unwrap();
    let applied = cli(&app, &["import", file, "--reconcile"]);
    let lines: Vec<&str> = applied.lines().collect();
    assert_eq!(lines[0], "~ update root (role)", "{applied}");
    assert!(
        lines[1].starts_with("- remove root/writer (data kept until 20"),
        "{applied}"
    );
    assert_eq!(
        lines[2], "0 to create, 1 to update, 1 to remove, 2 unchanged",
        "{applied}"
    );
    assert_eq!(app.workspace(&id_of(&writer)).await["status"], "removed");

    let exported = cli(&app, &["export"]);
    assert_eq!(exported, app.get("/org/export").await.text);
    let again = dir.path().join("again.yaml");
    cli(&app, &["export", "-o", again.to_str().unwrap()]);
    assert_eq!(std::fs::read_to_string(&again).unwrap(), exported);
    assert_eq!(
        cli(
            &app,
            &[
                "import",
                again.to_str().unwrap(),
                "--reconcile",
                "--dry-run"
            ]
        ),
        "0 to create, 0 to update, 0 to remove, 3 unchanged (dry run: nothing was changed)\n"
    );
}

#[tokio::test]
async fn the_openapi_document_describes_both_routes_and_their_statuses() {
    let app = TestApp::spawn().await;
    let doc = app.get("/openapi.json").await.expect_status(200);
    let import = &doc["paths"]["/org/import"]["post"];
    let mut statuses: Vec<&str> = import["responses"]
        .as_object()
        .unwrap_or_else(|| panic!("no /org/import in {}", doc["paths"]))
        .keys()
        .map(String::as_str)
        .collect();
    statuses.sort();
    assert_eq!(
        statuses,
        ["200", "400", "401", "404", "408", "409", "413", "415"]
    );
    let content = import["requestBody"]["content"].as_object().unwrap();
    for media in ["application/yaml", "text/yaml", "application/json"] {
        assert!(content.contains_key(media), "{media} in {content:?}");
    }
    let params: Vec<&str> = import["parameters"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    // `erase_data` is not a parameter (sending it is the documented 400), so
    // a client generated from the document cannot offer it.
    assert_eq!(params, ["mode", "dry_run", "org_id"]);
    assert_eq!(
        import["parameters"][0]["schema"]["$ref"], "#/components/schemas/ImportMode",
        "{import}"
    );
    let export = &doc["paths"]["/org/export"]["get"];
    assert!(
        export["responses"]["200"]["content"]["application/yaml"].is_object(),
        "{export}"
    );
    for schema in [
        "ImportResponse",
        "OrgDocumentSchema",
        "RemovedItem",
        "ImportMode",
    ] {
        assert!(doc["components"]["schemas"][schema].is_object(), "{schema}");
    }
}

#[tokio::test]
async fn concurrent_imports_of_one_document_create_its_tree_once() {
    let app = TestApp::spawn().await;
    let doc = "name: root\nruntime: {command: [sleep, '600']}\nchildren: [{name: a, runtime: {command: [sleep, '600']}}]\n";
    let answers =
        futures_util::future::join_all((0..6).map(|_| import_raw(&app, "", YAML, doc.to_owned())))
            .await;
    let mut created = 0;
    for answer in answers {
        match answer.status.as_u16() {
            200 => created += answer.body["created"].as_array().unwrap().len(),
            409 => assert_eq!(answer.body["code"], "org_changed", "{}", answer.text),
            other => panic!("unexpected {other}: {}", answer.text),
        }
    }
    assert_eq!(created, 2, "root and root/a, once");
    let names: Vec<Value> = app
        .list_workspaces()
        .await
        .into_iter()
        .map(|w| w["name"].clone())
        .collect();
    assert_eq!(names.len(), 2, "{names:?}");
}
