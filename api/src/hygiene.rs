//! Checks of every request before it is routed: request ids a client sets, and body
//! encodings.

use axum::extract::Request;
use axum::http::{HeaderValue, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::error::Error;

/// Longest `X-Request-Id` kept from a client.
const MAX_REQUEST_ID_BYTES: usize = 128;

/// Drops an `X-Request-Id` that is longer than 128 bytes or not visible ASCII, so that a
/// new one is made: request ids go into every log line and answer.
pub async fn request_id(mut request: Request, next: Next) -> Response {
    if request
        .headers()
        .get("x-request-id")
        .is_some_and(|id| !acceptable_request_id(id))
    {
        request.headers_mut().remove("x-request-id");
    }
    next.run(request).await
}

fn acceptable_request_id(id: &HeaderValue) -> bool {
    let bytes = id.as_bytes();
    (1..=MAX_REQUEST_ID_BYTES).contains(&bytes.len()) && bytes.iter().all(u8::is_ascii_graphic)
}

/// Refuses (415) a body encoded otherwise than with gzip (decoded further in) or not at
/// all, and spells the one accepted as the decoder expects.
pub async fn content_encoding(mut request: Request, next: Next) -> Response {
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
        _ => return Error::UnsupportedEncoding(codings.join(", ")).into_response(),
    };
    if let Some(accepted) = accepted {
        request
            .headers_mut()
            .insert(header::CONTENT_ENCODING, accepted);
    }
    next.run(request).await
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
