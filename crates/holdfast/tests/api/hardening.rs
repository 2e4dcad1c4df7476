//! Hostile clients at the HTTP edge: slow clients are cut off, parallel
//! destructive requests are serialised, duplicate keys and odd names are
//! refused, query values are percent-decoded.

use crate::helpers::{TestApp, id_of, workspace_body};
use reqwest::Method;
use serde_json::{Value, json};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// How long a test waits for the server to act before it fails: far above
/// the short timeouts the servers here are started with.
const GIVE_UP: Duration = Duration::from_secs(20);

async fn connect(app: &TestApp) -> TcpStream {
    let addr = app.base_url.trim_start_matches("http://").to_owned();
    TcpStream::connect(addr).await.expect("connect to holdfast")
}

/// Reads until the server closes the connection; returns what it sent.
/// Fails the test if the connection is still open after [`GIVE_UP`].
async fn read_until_closed(stream: &mut TcpStream) -> String {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout(GIVE_UP, stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return String::from_utf8_lossy(&got).into_owned(),
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
            Err(_) => panic!(
                "the server kept the connection open for {GIVE_UP:?}; it sent {:?}",
                String::from_utf8_lossy(&got)
            ),
        }
    }
}

/// Reads one response whose body ends with `tail`.
async fn read_response_ending(stream: &mut TcpStream, tail: &str) -> String {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(&got).ends_with(tail) {
        let n = tokio::time::timeout(GIVE_UP, stream.read(&mut buf))
            .await
            .expect("a response in time")
            .expect("read from holdfast");
        assert!(n > 0, "closed before the response ended: {got:?}");
        got.extend_from_slice(&buf[..n]);
    }
    String::from_utf8_lossy(&got).into_owned()
}

#[tokio::test]
async fn a_client_that_stalls_in_its_request_line_is_disconnected() {
    let app = TestApp::spawn_with(&["--header-timeout", "300ms", "--idle-timeout", "60s"]).await;
    // Positive control: a whole request on the same kind of connection is
    // answered.
    let mut ok = connect(&app).await;
    ok.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let answer = read_response_ending(&mut ok, r#"{"status":"ok"}"#).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");

    let mut slow = connect(&app).await;
    slow.write_all(b"GET /hea").await.unwrap();
    let sent = read_until_closed(&mut slow).await;
    assert!(
        !sent.contains("200 OK"),
        "a half request was answered: {sent}"
    );

    // On a kept-alive connection (which may idle for a minute) the header
    // budget starts with the next request's first byte.
    ok.write_all(b"GET /hea").await.unwrap();
    let sent = read_until_closed(&mut ok).await;
    assert!(
        !sent.contains("200 OK"),
        "a half request was answered: {sent}"
    );
}

#[tokio::test]
async fn a_client_that_sends_nothing_is_disconnected() {
    let app = TestApp::spawn_with(&["--header-timeout", "300ms"]).await;
    let mut silent = connect(&app).await;
    read_until_closed(&mut silent).await;
}

#[tokio::test]
async fn a_body_that_stalls_is_answered_408_and_creates_nothing() {
    let app = TestApp::spawn_with(&["--body-timeout", "300ms"]).await;
    let body = serde_json::to_string(&workspace_body("slow")).unwrap();
    let mut stream = connect(&app).await;
    let head = format!(
        "POST /workspaces HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        crate::helpers::ADMIN_TOKEN,
        body.len()
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    // Half the body, then nothing.
    stream
        .write_all(&body.as_bytes()[..body.len() / 2])
        .await
        .unwrap();
    let sent = read_until_closed(&mut stream).await;
    assert!(sent.starts_with("HTTP/1.1 408"), "{sent}");
    assert!(sent.contains("request_timeout"), "{sent}");
    assert_eq!(app.list_workspaces().await, Vec::<Value>::new());

    // Positive control: the same body sent whole is created.
    app.create_workspace(&workspace_body("slow"))
        .await
        .expect_status(201);
}

#[tokio::test]
async fn an_idle_kept_alive_connection_is_closed() {
    let app = TestApp::spawn_with(&["--idle-timeout", "300ms", "--header-timeout", "60s"]).await;
    let mut stream = connect(&app).await;
    stream
        .write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    read_response_ending(&mut stream, r#"{"status":"ok"}"#).await;
    // Kept alive: a second request on it is answered.
    stream
        .write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    read_response_ending(&mut stream, r#"{"status":"ok"}"#).await;
    // Then nothing: the server closes it.
    let rest = read_until_closed(&mut stream).await;
    assert_eq!(rest, "");
}

/// Sends `n` copies of a request at once; returns their statuses, sorted.
async fn statuses_of_parallel(
    app: &TestApp,
    n: usize,
    request: impl Fn() -> reqwest::RequestBuilder,
) -> Vec<u16> {
    let requests: Vec<_> = (0..n).map(|_| app.send(request())).collect();
    let mut statuses: Vec<u16> = futures_util::future::join_all(requests)
        .await
        .into_iter()
        .map(|r| r.status.as_u16())
        .collect();
    statuses.sort_unstable();
    statuses
}

#[tokio::test]
async fn parallel_identical_deletes_and_restores_act_once() {
    let app = TestApp::spawn().await;
    let ws = app
        .create_online_workspace(&workspace_body("contested"))
        .await;
    let id = id_of(&ws);
    let path = format!("/workspaces/{id}?erase_data=true");
    let statuses = statuses_of_parallel(&app, 20, || {
        app.authed(Method::DELETE, &path)
            .header("X-Confirm-Name", "contested")
    })
    .await;
    let mut expected = vec![200];
    expected.extend([410; 19]);
    assert_eq!(statuses, expected);
    let audit = app.audit_of(&id).await;
    assert_eq!(
        crate::helpers::count_action(&audit, "workspace.deleted"),
        1,
        "{audit:?}"
    );

    let restore = format!("/workspaces/{id}/restore");
    let statuses = statuses_of_parallel(&app, 20, || app.authed(Method::POST, &restore)).await;
    let mut expected = vec![200];
    expected.extend([409; 19]);
    assert_eq!(statuses, expected);
    let audit = app.audit_of(&id).await;
    assert_eq!(
        crate::helpers::count_action(&audit, "workspace.restored"),
        1,
        "{audit:?}"
    );
    assert_eq!(app.workspace(&id).await["removed_at"], Value::Null);
}

#[tokio::test]
async fn duplicate_keys_are_400_naming_the_key_and_change_nothing() {
    let app = TestApp::spawn().await;
    let runtime = r#"{"command":["sh","-c","exec sleep 600"]}"#;
    let err = app
        .create_workspace_raw(format!(
            r#"{{"name":"first","name":"second","runtime":{runtime}}}"#
        ))
        .await
        .expect_error_mentioning(400, "duplicate_key", "name");
    assert_eq!(err["field"], "name");
    let err = app
        .create_workspace_raw(format!(
            r#"{{"name":"n","runtime":{runtime},"compute":{{"data_persistence":"ephemeral","data_persistence":"persist"}}}}"#
        ))
        .await
        .expect_error(400, "duplicate_key");
    assert_eq!(err["field"], "compute.data_persistence");
    assert_eq!(
        app.list_workspaces_including_removed().await,
        Vec::<Value>::new()
    );
    // Positive control: the same body with each key once is created.
    app.create_workspace_raw(format!(r#"{{"name":"first","runtime":{runtime}}}"#))
        .await
        .expect_status(201);

    // And on PATCH: nothing of the body applies.
    let id = id_of(&app.list_workspaces().await[0]);
    app.send(
        app.authed(Method::PATCH, &format!("/workspaces/{id}"))
            .header("content-type", "application/json")
            .body(r#"{"role":"a","tier":3,"tier":1}"#),
    )
    .await
    .expect_error_mentioning(400, "duplicate_key", "tier");
    let after = app.workspace(&id).await;
    assert_eq!(
        (after["role"].clone(), after["tier"].clone()),
        (Value::Null, json!(2))
    );
}

#[tokio::test]
async fn names_with_invisible_or_reordering_characters_are_400() {
    let app = TestApp::spawn().await;
    for name in [
        "invoice\u{202E}fdp.exe",
        "a\u{2067}b",
        "ad\u{200B}min",
        "ad\u{200D}min",
        "\u{FEFF}admin",
        "a\u{2060}b",
    ] {
        let body = json!({"name": name, "runtime": {"command": ["sh", "-c", "exec sleep 600"]}});
        app.create_workspace(&body)
            .await
            .expect_error_mentioning(400, "invalid_field", "name");
        app.post_json("/orgs", &json!({ "name": name }))
            .await
            .expect_error_mentioning(400, "invalid_field", "name");
    }
    assert_eq!(
        app.list_workspaces_including_removed().await,
        Vec::<Value>::new()
    );
    // Positive control: another script, written plainly, is a fine name.
    let ws = app
        .create_workspace(
            &json!({"name": "مترجم", "runtime": {"command": ["sh", "-c", "exec sleep 600"]}}),
        )
        .await
        .expect_status(201);
    app.patch_workspace(&id_of(&ws), &json!({"name": "x\u{202D}y"}))
        .await
        .expect_error_mentioning(400, "invalid_field", "name");
    assert_eq!(app.workspace(&id_of(&ws)).await["name"], "مترجم");
}

#[tokio::test]
async fn query_values_are_percent_decoded() {
    let app = TestApp::spawn().await;
    let ws = app
        .create_online_workspace(&workspace_body("encoded"))
        .await;
    let id = id_of(&ws);
    let org = ws["org_id"].as_str().unwrap().to_owned();
    // `%2D` is `-`: the org id, written with encoded dashes.
    let encoded_org = org.replace('-', "%2D");
    assert_eq!(
        app.list_at(&format!("/workspaces?org_id={encoded_org}"))
            .await
            .len(),
        1
    );
    app.list_at("/workspaces?include_removed=%74rue").await;
    // `erase_data=%74rue` is `erase_data=true`.
    let deleted = app
        .send(
            app.authed(
                Method::DELETE,
                &format!("/workspaces/{id}?erase_data=%74rue"),
            )
            .header("X-Confirm-Name", "encoded"),
        )
        .await
        .expect_status(200);
    assert_eq!(deleted["data"], "erase_pending");
    let pending = app.list_at("/volumes?state=erase%5Fpending").await;
    assert_eq!(pending.len(), 1, "{pending:?}");
    assert_eq!(
        app.list_at(&format!("/audit?workspace%5Fid={id}&limit=%35"))
            .await
            .len(),
        app.list_at(&format!("/audit?workspace_id={id}&limit=5"))
            .await
            .len()
    );
}

#[tokio::test]
async fn bad_query_values_are_400_naming_the_parameter() {
    let app = TestApp::spawn().await;
    let ws = app
        .create_online_workspace(&workspace_body("queried"))
        .await;
    let id = id_of(&ws);
    for (path, field) in [
        ("/workspaces?org_id=%zz".to_owned(), "org_id"),
        ("/workspaces?org_id=%FF%FE".to_owned(), "org_id"),
        ("/workspaces?org_id=nope".to_owned(), "org_id"),
        (
            "/workspaces?include_removed=maybe".to_owned(),
            "include_removed",
        ),
        (
            "/workspaces?include_removed=true&include_removed=false".to_owned(),
            "include_removed",
        ),
        ("/volumes?state=gone".to_owned(), "state"),
        ("/volumes?state=%".to_owned(), "state"),
        ("/audit?limit=0".to_owned(), "limit"),
        ("/audit?workspace_id=%00".to_owned(), "workspace_id"),
    ] {
        let err = app.get(&path).await.expect_status(400);
        assert_eq!(err["field"], field, "{path}: {err}");
    }
    let err = app
        .send(
            app.authed(Method::DELETE, &format!("/workspaces/{id}?erase_data=%7"))
                .header("X-Confirm-Name", "queried"),
        )
        .await
        .expect_status(400);
    assert_eq!(err["field"], "erase_data");
    // The rejected delete changed nothing.
    assert_eq!(app.workspace(&id).await["status"], "online");
}

#[tokio::test]
async fn messages_to_a_command_runtime_are_409_at_once() {
    let app = TestApp::spawn().await;
    let ws = app
        .create_online_workspace(&workspace_body("no-inbox"))
        .await;
    let id = id_of(&ws);
    // Not the 503 a relay gives after waiting for a runtime to register.
    app.send_message(&id, "hello")
        .await
        .expect_error(409, "runtime_has_no_messages");
    app.get_messages(&id)
        .await
        .expect_error(409, "runtime_has_no_messages");
}
