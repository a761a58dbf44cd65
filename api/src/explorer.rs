//! The log explorer at `/ui`: a page to search, graph and follow logs in the browser,
//! built into the binary (no CDN, no build step). It reads the same API anyone can
//! (`GET /api/logs`, its histogram, the tail), with the key the user gives it, kept for
//! the browser tab only.
//!
//! Logs come from devices and are not trusted: the page only ever sets them as text, and
//! its Content-Security-Policy allows scripts, styles and connections from the api's own
//! origin alone, with no inline script or style, so markup in a log cannot run.

use axum::Router;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;

const PAGE: &str = include_str!("../assets/ui/index.html");
const SCRIPT: &str = include_str!("../assets/ui/explorer.js");
const STYLE: &str = include_str!("../assets/ui/explorer.css");

/// Only the api's own scripts, styles and API; nothing inline, no frames, no plugins.
const POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
     connect-src 'self'; img-src 'self'; base-uri 'none'; form-action 'self'; \
     frame-ancestors 'none'";

/// `/ui` and its assets. They need no key: the page asks for one.
pub fn router<S: Clone + Send + Sync + 'static>() -> Router<S> {
    Router::new()
        .route(
            "/ui",
            get(|| async { asset("text/html; charset=utf-8", PAGE) }),
        )
        .route("/ui/", get(|| async { Redirect::permanent("/ui") }))
        .route(
            "/ui/explorer.js",
            get(|| async { asset("text/javascript; charset=utf-8", SCRIPT) }),
        )
        .route(
            "/ui/explorer.css",
            get(|| async { asset("text/css; charset=utf-8", STYLE) }),
        )
}

/// `body` of `content_type`, with the page's policy. Revalidated each time, so that a new
/// version of the api serves its own page at once.
fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, HeaderValue::from_static(content_type)),
            (
                header::CONTENT_SECURITY_POLICY,
                HeaderValue::from_static(POLICY),
            ),
            (
                header::X_CONTENT_TYPE_OPTIONS,
                HeaderValue::from_static("nosniff"),
            ),
            (
                header::REFERRER_POLICY,
                HeaderValue::from_static("no-referrer"),
            ),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
        ],
        body,
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_assets_are_small_and_load_nothing_from_elsewhere() {
        // The bound: 150 KB gzipped for all of them; they are far below it even
        // uncompressed.
        assert!(PAGE.len() + SCRIPT.len() + STYLE.len() < 150 * 1024);
        for asset in [PAGE, SCRIPT, STYLE] {
            assert!(!asset.contains("http://") && !asset.contains("https://"));
        }
        // No inline script or style for the policy to refuse.
        assert!(!PAGE.contains("<script>") && !PAGE.contains("style="));
        assert!(!SCRIPT.contains("innerHTML") && !SCRIPT.contains("insertAdjacentHTML"));
    }
}
