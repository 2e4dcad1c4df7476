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
