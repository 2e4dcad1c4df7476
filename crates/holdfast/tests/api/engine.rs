//! What the API answers when the container engine does not answer: `503`
//! `engine_unreachable` with `Retry-After` on every route that needs the
//! engine, each listed so in `/openapi.json` (per route: the routes that
//! never reach the engine list no 503), nothing created by a refused create,
//! and never another 5xx. Runs on every backend: the server is restarted on
//! the container backend with an engine that is not there.

use crate::helpers::{TestApp, id_of, skip_in_remote_mode, workspace_body};
use reqwest::Method;
use serde_json::{Value, json};

#[tokio::test]
async fn an_unreachable_engine_is_a_503_with_retry_after_on_each_route_that_needs_it() {
    if skip_in_remote_mode(
        "the server is restarted on a container backend of its own; a remote control plane keeps its backend",
    ) {
        return;
    }
    let mut app = TestApp::spawn().await;
    let ws = app
        .create_online_workspace(&workspace_body("stranded"))
        .await;
    let id = id_of(&ws);
    let doc = app.get("/openapi.json").await.expect_status(200);
    app.restart_server_on_unreachable_engine().await;

    // The workspace the store knows is still read without the engine.
    let seen = app
        .get(&format!("/workspaces/{id}"))
        .await
        .expect_status(200);
    assert_eq!(seen["name"], "stranded");

    let image_patch =
        json!({"runtime": {"command": ["sleep", "600"], "image": "localhost/other:1"}});
    let ws_path = |tail: &str| format!("/workspaces/{id}{tail}");
    let calls: Vec<(Method, String, &str, Value)> = vec![
        (
            Method::POST,
            "/workspaces".into(),
            "/workspaces",
            workspace_body("refused"),
        ),
        (Method::PATCH, ws_path(""), "/workspaces/{id}", image_patch),
        (
            Method::POST,
            ws_path("/restart"),
            "/workspaces/{id}/restart",
            json!({}),
        ),
        (
            Method::GET,
            ws_path("/data/export"),
            "/workspaces/{id}/data/export",
            Value::Null,
        ),
        (
            Method::POST,
            "/admin/sweep".into(),
            "/admin/sweep",
            json!({}),
        ),
        (
            Method::POST,
            ws_path("/pause"),
            "/workspaces/{id}/pause",
            json!({}),
        ),
        (
            Method::POST,
            ws_path("/resume"),
            "/workspaces/{id}/resume",
            json!({}),
        ),
        (
            Method::POST,
            ws_path("/hibernate"),
            "/workspaces/{id}/hibernate",
            json!({}),
        ),
        (
            Method::POST,
            ws_path("/wake"),
            "/workspaces/{id}/wake",
            json!({}),
        ),
    ];
    let mut unavailable = Vec::new();
    for (method, path, template, body) in calls {
        let mut request = app.authed(method.clone(), &path);
        if !body.is_null() {
            request = request.json(&body);
        }
        let response = request.send().await.expect("HTTP request to holdfast");
        let status = response.status().as_u16();
        let retry_after = response
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        let text = response.text().await.unwrap_or_default();
        assert!(
            status < 500 || status == 503,
            "{method} {path}: {status} {text}"
        );
        if status != 503 {
            continue;
        }
        let body: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
        assert_eq!(
            body["code"], "engine_unreachable",
            "{method} {path}: {text}"
        );
        assert!(
            retry_after.is_some_and(|s| s > 0),
            "{method} {path}: no Retry-After"
        );
        let listed = &doc["paths"][template][method.as_str().to_lowercase()]["responses"]["503"];
        assert!(
            listed.is_object(),
            "{method} {template} answered 503 but /openapi.json does not list it"
        );
        assert!(listed["headers"]["Retry-After"].is_object(), "{listed}");
        unavailable.push(format!("{method} {template}"));
    }
    // The control: the routes that must reach the engine did answer 503.
    for must in [
        "POST /workspaces",
        "PATCH /workspaces/{id}",
        "POST /workspaces/{id}/restart",
        "GET /workspaces/{id}/data/export",
        "POST /admin/sweep",
    ] {
        assert!(
            unavailable.iter().any(|u| u == must),
            "{must} did not answer 503: {unavailable:?}"
        );
    }
    // A refused create wrote nothing, a refused patch changed nothing.
    let list = app.get("/workspaces").await.expect_status(200);
    assert!(!list.to_string().contains("\"refused\""), "{list}");
    let after = app
        .get(&format!("/workspaces/{id}"))
        .await
        .expect_status(200);
    assert_eq!(
        after["runtime"], ws["runtime"],
        "the refused patch changed nothing"
    );
    // Per route: one that never reaches the engine lists no 503.
    for (path, method) in [
        ("/health", "get"),
        ("/openapi.json", "get"),
        ("/workspaces/{id}", "get"),
    ] {
        assert!(
            doc["paths"][path][method]["responses"].is_object()
                && doc["paths"][path][method]["responses"].get("503").is_none(),
            "{method} {path} lists a 503 it cannot give"
        );
    }
}
