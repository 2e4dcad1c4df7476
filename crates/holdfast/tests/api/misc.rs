//! Routes outside the workspace lifecycle: health and the OpenAPI document.

use crate::helpers::TestApp;
use serde_json::json;

#[tokio::test]
async fn health_is_ok_without_auth() {
    let app = TestApp::spawn().await;
    let response = app.send(app.client.get(app.url("/health"))).await;
    assert_eq!(response.expect_status(200), json!({ "status": "ok" }));
}

#[tokio::test]
async fn openapi_document_is_3_1_and_lists_the_workspace_paths() {
    let app = TestApp::spawn().await;
    let doc = app.get("/openapi.json").await.expect_status(200);
    let version = doc["openapi"].as_str().unwrap_or_default();
    assert!(version.starts_with("3.1"), "openapi version {version:?}");
    let paths = doc["paths"]
        .as_object()
        .unwrap_or_else(|| panic!("`paths` must be an object"));
    for path in [
        "/workspaces",
        "/workspaces/{id}",
        "/workspaces/{id}/restart",
        "/workspaces/{id}/data",
    ] {
        assert!(
            paths.contains_key(path),
            "missing {path}; have {:?}",
            paths.keys()
        );
    }
}

#[tokio::test]
async fn the_openapi_document_needs_a_token_like_every_route_but_health() {
    let app = TestApp::spawn().await;
    let anonymous = app
        .client
        .get(app.url("/openapi.json"))
        .send()
        .await
        .unwrap();
    assert_eq!(anonymous.status().as_u16(), 401);
    app.get("/openapi.json").await.expect_status(200);
}

#[tokio::test]
async fn the_openapi_document_lists_every_answer_and_strict_request_schemas() {
    let app = TestApp::spawn().await;
    let doc = app.get("/openapi.json").await.expect_status(200);
    let mut checked = 0;
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            let responses = op["responses"].as_object().unwrap();
            let has = |status: &str| responses.contains_key(status);
            if op.get("security").is_some() {
                assert!(has("401"), "{method} {path} does not document 401");
            }
            if op.get("requestBody").is_some() {
                for status in ["400", "408", "413"] {
                    assert!(has(status), "{method} {path} does not document {status}");
                }
            }
            if path.contains('{') {
                assert!(has("400") && has("404"), "{method} {path}: 400 and 404");
            }
            checked += 1;
        }
    }
    assert!(checked > 20, "only {checked} operations");
    let schemas = &doc["components"]["schemas"];
    let create = &schemas["CreateWorkspaceRequest"];
    assert_eq!(create["additionalProperties"], json!(false));
    assert_eq!(create["required"], json!(["name"]));
    assert_eq!(create["properties"]["role"]["maxLength"], json!(256));
    assert_eq!(
        schemas["PatchWorkspaceRequest"]["properties"]["tier"],
        json!({"type": "integer", "minimum": 1, "maximum": 4})
    );
    assert_eq!(
        schemas["ComputeSchema"]["properties"]["volume"]["properties"]["size_gb"],
        json!({"type": "integer", "minimum": 1, "maximum": 500})
    );
    assert_eq!(create["properties"]["parent_id"]["format"], "uuid");
    // The name's pattern is the parser's rule: a bidirectional override is
    // outside it.
    let pattern = create["properties"]["name"]["pattern"].as_str().unwrap();
    assert!(pattern.contains("\\u202A-\\u202E"), "{pattern}");
    // Response objects are closed too; errors carry details, so they are not.
    assert_eq!(
        schemas["WorkspaceView"]["additionalProperties"],
        json!(false)
    );
    assert_eq!(schemas["ErrorBody"].get("additionalProperties"), None);
}
