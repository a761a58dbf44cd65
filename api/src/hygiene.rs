//! What happens around every request, in one middleware (one future and no box per
//! layer, which a stack of layers would cost each request): its request id, a span,
//! its metrics, and the checks of its query string and its body's encoding.

use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderName, HeaderValue, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use tracing::Instrument;

use crate::error::Error;
use crate::extract::CompressedLength;
use crate::metrics::Metrics;

/// Longest `X-Request-Id` kept from a client.
const MAX_REQUEST_ID_BYTES: usize = 128;

/// The header that carries a request's id, both ways.
static REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Around every request:
/// - its id: the client's `X-Request-Id` when it is 1 to 128 visible ASCII bytes (it goes
///   into log lines and answers), else a new UUID; the answer carries it back;
/// - a `request` span (method, matched route, request id) and an `answered` event (status,
///   time taken) at debug level, so that a busy api does not format them per request
///   unless asked (`RUST_LOG=info,logpipeline_api=debug`);
/// - the request's metrics: in flight, duration and answers by route, method and status;
/// - its query string: 400 unless it percent-decodes to UTF-8, as for a path;
/// - its body's encoding: 415 unless gzip (decoded further in) or none.
pub async fn around(State(metrics): State<Metrics>, mut request: Request, next: Next) -> Response {
    let started = Instant::now();
    let id = match request.headers().get(&REQUEST_ID) {
        Some(id) if acceptable_request_id(id) => id.clone(),
        _ => {
            let id = HeaderValue::from_str(&uuid::Uuid::new_v4().to_string())
                .unwrap_or(HeaderValue::from_static("unknown"));
            request.headers_mut().insert(REQUEST_ID.clone(), id.clone());
            id
        }
    };
    if let Some(length) = gzip_length(&request) {
        request.extensions_mut().insert(CompressedLength(length));
    }
    let matched = request.extensions().get::<MatchedPath>().cloned();
    let route = matched.as_ref().map_or("unmatched", MatchedPath::as_str);
    let span = tracing::debug_span!("request", method = %request.method(), route, request_id = id.to_str().unwrap_or_default());
    let tracked = metrics.request_started(route, request.method());
    let checked = query_string(&request).and_then(|()| content_encoding(&mut request));
    let mut response = match checked {
        Ok(()) => next.run(request).instrument(span.clone()).await,
        Err(error) => error.into_response(),
    };
    span.in_scope(|| {
        tracing::debug!(
            status = response.status().as_u16(),
            micros = started.elapsed().as_micros(),
            "answered"
        );
    });
    response.headers_mut().insert(REQUEST_ID.clone(), id);
    tracked.finish(&response, started);
    response
}

fn acceptable_request_id(id: &HeaderValue) -> bool {
    let bytes = id.as_bytes();
    (1..=MAX_REQUEST_ID_BYTES).contains(&bytes.len()) && bytes.iter().all(u8::is_ascii_graphic)
}

/// The declared length of a gzip-encoded body, before it is decoded further in.
fn gzip_length(request: &Request) -> Option<u64> {
    let encoding = request.headers().get(header::CONTENT_ENCODING)?;
    if !encoding.as_bytes().eq_ignore_ascii_case(b"gzip") {
        return None;
    }
    request
        .headers()
        .get(header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .parse()
        .ok()
}

/// Refuses (400) a query string that does not percent-decode to UTF-8, rather than let
/// the parameters' parser replace its bytes and search for something nobody sent. The
/// separators are ASCII, so no character spans two parameters and the whole string can
/// be decoded at once.
fn query_string(request: &Request) -> Result<(), Error> {
    match request.uri().query() {
        Some(query)
            if percent_encoding::percent_decode_str(query)
                .decode_utf8()
                .is_err() =>
        {
            Err(Error::MalformedQuery)
        }
        _ => Ok(()),
    }
}

/// Refuses (415) a body encoded otherwise than with gzip (decoded further in) or not at
/// all, and spells the one accepted as the decoder expects.
fn content_encoding(request: &mut Request) -> Result<(), Error> {
    let codings: Vec<String> = request
        .headers()
        .get_all(header::CONTENT_ENCODING)
        .iter()
        .flat_map(|value| {
            String::from_utf8_lossy(value.as_bytes())
                .split(',')
                .map(|coding| coding.trim().to_ascii_lowercase())
                .filter(|coding| !coding.is_empty())
                .collect::<Vec<_>>()
        })
        .collect();
    let accepted = match codings.as_slice() {
        [] => None,
        [one] if one == "gzip" => Some(HeaderValue::from_static("gzip")),
        [one] if one == "identity" => Some(HeaderValue::from_static("identity")),
        _ => return Err(Error::UnsupportedEncoding(codings.join(", "))),
    };
    if let Some(accepted) = accepted {
        request
            .headers_mut()
            .insert(header::CONTENT_ENCODING, accepted);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_ids_are_short_visible_ascii() {
        for good in [
            "a",
            "0f6c2a9e-5b8e-4c52-9d55-1d7a7c2d1e00",
            &"x".repeat(128),
        ] {
            assert!(
                acceptable_request_id(&HeaderValue::from_str(good).unwrap()),
                "{good}"
            );
        }
        for bad in [&"x".repeat(129), "with space", ""] {
            assert!(
                !acceptable_request_id(&HeaderValue::from_str(bad).unwrap()),
                "{bad}"
            );
        }
        assert!(!acceptable_request_id(
            &HeaderValue::from_bytes(b"caf\xc3\xa9").unwrap()
        ));
    }
}
