//! The OpenAPI document: generated from the code, committed, valid, and served with its
//! pages offline.

#![allow(clippy::unwrap_used, clippy::expect_used)] // A failed step is a failed test.

mod common;

use std::process::Command;

use axum::http::StatusCode;
use common::TestApi;
use logpipeline_api::docs;

#[test]
fn the_document_is_valid_openapi() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("openapi.json");
    std::fs::write(&path, docs::openapi_json()).unwrap();
    let output = Command::new("python3")
        .args(["-m", "openapi_spec_validator"])
        .arg(&path)
        .output()
        .expect("python3 is needed to validate the OpenAPI document");
    let printed = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        !printed.contains("No module named"),
        "the validator is missing: pip install openapi-spec-validator (.ci/run does)\n{printed}"
    );
    assert!(output.status.success(), "{printed}");
}

#[test]
fn every_route_is_documented_with_its_errors() {
    let document: serde_json::Value = serde_json::from_str(&docs::openapi_json()).unwrap();
    let paths = document["paths"].as_object().unwrap();
    for path in [
        "/api/log",
        "/api/logs/batch",
        "/api/logs/{device_id}",
        "/api/stats",
        "/health",
        "/livez",
        "/readyz",
        "/metrics",
    ] {
        assert!(paths.contains_key(path), "{path} is not documented");
    }
    let post_log = &document["paths"]["/api/log"]["post"];
    for status in ["200", "400", "413", "415", "422", "503"] {
        assert!(
            post_log["responses"][status].is_object(),
            "POST /api/log lacks {status}"
        );
    }
    assert_eq!(
        post_log["requestBody"]["content"]["application/json"]["schema"]["$ref"],
        "#/components/schemas/LogRecord"
    );
}

#[tokio::test]
async fn the_pages_and_their_assets_are_served_without_internet() {
    let api = TestApi::start().await;
    let served = api.get("/openapi.json").await;
    assert_eq!(served.status, StatusCode::OK);
    assert_eq!(
        served.body,
        serde_json::from_str::<serde_json::Value>(&docs::openapi_json()).unwrap()
    );

    let swagger = api.get("/docs/").await;
    assert_eq!(swagger.status, StatusCode::OK);
    assert!(swagger.text.contains("swagger-ui"), "{}", swagger.text);
    for asset in [
        "/docs/swagger-ui.css",
        "/docs/swagger-ui-bundle.js",
        "/docs/swagger-initializer.js",
    ] {
        let answer = api.get(asset).await;
        assert_eq!(answer.status, StatusCode::OK, "{asset}");
        assert!(answer.text.len() > 100, "{asset} is empty");
    }
    assert!(
        api.get("/docs/swagger-initializer.js")
            .await
            .text
            .contains("/openapi.json")
    );

    let redoc = api.get("/redoc").await;
    assert_eq!(redoc.status, StatusCode::OK);
    assert!(redoc.text.contains(r#"<redoc spec-url="/openapi.json">"#));
    let script = api.get("/redoc/redoc.standalone.js").await;
    assert_eq!(script.status, StatusCode::OK);
    assert!(script.text.len() > 500_000, "the ReDoc bundle is missing");
    for page in [&swagger.text, &redoc.text] {
        assert!(
            !page.contains("https://"),
            "a page loads something from the internet:\n{page}"
        );
    }
}
