//! The OpenAPI document, generated from the handlers, and the pages that show it:
//! Swagger UI at `/docs` and ReDoc at `/redoc`, with all their assets built in (no CDN).

use axum::Router;
use axum::http::header;
use axum::response::{Html, IntoResponse};
use axum::routing::get;
use utoipa::openapi::security::{ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};
use utoipa_swagger_ui::SwaggerUi;

use crate::error::ErrorBody;
use crate::{concurrent_test, health, ingest, metrics, routes, stats, v1};

/// The api's OpenAPI document.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "LogPipeline",
        description = "Log collection for device fleets: logs accepted onto a Redis Stream, \
                       stored in PostgreSQL exactly once, served back through a cache that is never stale.",
        license(name = "Apache-2.0", identifier = "Apache-2.0"),
    ),
    paths(
        ingest::create_log,
        ingest::create_batch,
        routes::search::search,
        routes::search::histogram,
        routes::tail::tail,
        routes::logs::get_logs,
        routes::logs::get_batch_device_logs,
        routes::logs::get_service_logs,
        routes::logs::get_trace_logs,
        stats::get_stats,
        v1::write,
        v1::batch,
        concurrent_test::run,
        v1::health,
        v1::about,
        health::health,
        health::livez,
        health::readyz,
        metrics::endpoint,
    ),
    components(schemas(ErrorBody)),
    modifiers(&SecuritySchemes),
    tags(
        (name = "ingest", description = "Sending logs"),
        (name = "query", description = "Reading them back"),
        (name = "system B", description = "The REST front of the seed's second system, with its shapes; \
                                           its gRPC service (`logpipeline.v1.LogService`) listens on the gRPC port"),
        (name = "operations", description = "Health, probes and metrics"),
    )
)]
pub struct ApiDoc;

/// The two ways to present an API key. Each operation that needs one lists the scope
/// (`write` or `read`) as the role its key must have; probes, metrics and these
/// documents need none.
struct SecuritySchemes;

impl Modify for SecuritySchemes {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(
                        "An API key, as `Authorization: Bearer <key>` (`logpipeline-api keys generate` makes one)",
                    ))
                    .build(),
            ),
        );
        components.add_security_scheme(
            "api_key",
            SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::with_description(
                "X-API-Key",
                "An API key, as `X-API-Key: <key>`",
            ))),
        );
    }
}

/// The document as pretty JSON, as served at `/openapi.json`.
pub fn openapi_json() -> String {
    ApiDoc::openapi().to_pretty_json().unwrap_or_default()
}

/// ReDoc 2.5.2, vendored (see `assets/redoc/README.md`).
const REDOC_JS: &[u8] = include_bytes!("../assets/redoc/redoc.standalone.js");

const REDOC_PAGE: &str = r#"<!DOCTYPE html>
<html lang="en">
  <head>
    <meta charset="utf-8">
    <meta name="viewport" content="width=device-width, initial-scale=1">
    <title>LogPipeline API</title>
    <style>body { margin: 0; padding: 0; }</style>
  </head>
  <body>
    <redoc spec-url="/openapi.json"></redoc>
    <script src="/redoc/redoc.standalone.js"></script>
  </body>
</html>
"#;

/// `/docs` (Swagger UI), `/redoc` (ReDoc) and `/openapi.json`.
pub fn router<S: Clone + Send + Sync + 'static>() -> Router<S> {
    Router::new()
        .merge(SwaggerUi::new("/docs").url("/openapi.json", ApiDoc::openapi()))
        .route("/redoc", get(|| async { Html(REDOC_PAGE) }))
        .route(
            "/redoc/redoc.standalone.js",
            get(|| async {
                (
                    [
                        (header::CONTENT_TYPE, "application/javascript"),
                        (header::CACHE_CONTROL, "public, max-age=86400"),
                    ],
                    REDOC_JS,
                )
                    .into_response()
            }),
        )
}
