//! Reading a JSON request body: the content type, the size limit, and parse errors that
//! name the offending field.

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Path, Request};
use axum::http::request::Parts;
use axum::http::{HeaderMap, header};
use serde::Deserialize;
use serde_json::error::Category;

use crate::error::{Error, Result};
use crate::state::AppState;

/// The one parameter of a route's path, percent-decoded; a path that does not decode to
/// UTF-8 gets the JSON error shape like every other mistake.
#[derive(Debug)]
pub struct PathParam(pub String);

impl<S: Send + Sync> FromRequestParts<S> for PathParam {
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self> {
        Path::<String>::from_request_parts(parts, state)
            .await
            .map(|Path(value)| Self(value))
            .map_err(|rejection| Error::InvalidPath(rejection.body_text()))
    }
}

/// A request body declared as JSON and no larger than the limit, not parsed yet.
#[derive(Debug)]
pub struct JsonBody(pub Bytes);

impl FromRequest<AppState> for JsonBody {
    type Rejection = Error;

    async fn from_request(request: Request, state: &AppState) -> Result<Self> {
        if !is_json(request.headers()) {
            return Err(Error::UnsupportedMediaType);
        }
        RawBody::from_request(request, state)
            .await
            .map(|RawBody(bytes)| Self(bytes))
    }
}

/// A request body of any content type, read within the body limits
/// ([`crate::body::BodyLimits`]).
#[derive(Debug)]
pub struct RawBody(pub Bytes);

impl FromRequest<AppState> for RawBody {
    type Rejection = Error;

    async fn from_request(request: Request, state: &AppState) -> Result<Self> {
        let declared = request
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.parse().ok());
        let compressed = request
            .extensions()
            .get::<CompressedLength>()
            .map(|CompressedLength(length)| *length);
        state
            .body
            .read(request.into_body(), declared, compressed)
            .await
            .map(Self)
    }
}

/// The length of a gzip body as sent, before decoding, when it was declared.
#[derive(Debug, Clone, Copy)]
pub struct CompressedLength(pub u64);

/// `application/json`, or an `application/*+json` type, with no charset or UTF-8 (the
/// only one JSON allows, RFC 8259).
pub fn is_json(headers: &HeaderMap) -> bool {
    let Some(content_type) = headers
        .get(header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
    else {
        return false;
    };
    let mut parts = content_type.split(';');
    let essence = parts.next().unwrap_or_default().trim().to_ascii_lowercase();
    let utf8 = parts.all(|parameter| match parameter.split_once('=') {
        Some((name, value)) if name.trim().eq_ignore_ascii_case("charset") => {
            let value = value.trim().trim_matches('"');
            value.eq_ignore_ascii_case("utf-8") || value.eq_ignore_ascii_case("utf8")
        }
        _ => true,
    });
    utf8 && (essence == "application/json"
        || (essence.starts_with("application/") && essence.ends_with("+json")))
}

/// Parses `bytes` as a `T`: 400 when it is not JSON, 422 with the field's path when it is
/// JSON that breaks a rule of `T`. Valid bodies take one plain pass; only a failed one is
/// parsed again, tracking the path, to say where it broke.
pub fn parse<'de, T: Deserialize<'de>>(bytes: &'de [u8]) -> Result<T> {
    serde_json::from_slice(bytes).or_else(|_| explain(bytes))
}

/// Parses `bytes` again, tracking the path, to turn its failure into an error that names
/// the field.
#[cold]
fn explain<'de, T: Deserialize<'de>>(bytes: &'de [u8]) -> Result<T> {
    let mut deserializer = serde_json::Deserializer::from_slice(bytes);
    let value = serde_path_to_error::deserialize(&mut deserializer).map_err(|error| {
        let path = error.path().to_string();
        let inner = error.into_inner();
        // A number that a free-form field (a map of JSON values) cannot hold is JSON
        // that breaks a rule, as on the paths that keep `log_data` as sent.
        let category = match inner.classify() {
            Category::Syntax if inner.to_string().starts_with("number out of range") => {
                Category::Data
            }
            category => category,
        };
        match category {
            Category::Data if path == "." => Error::InvalidLog(inner.to_string()),
            Category::Data => Error::InvalidLog(format!("{path}: {inner}")),
            Category::Syntax | Category::Eof | Category::Io => {
                Error::MalformedJson(inner.to_string())
            }
        }
    })?;
    deserializer
        .end()
        .map_err(|error| Error::MalformedJson(error.to_string()))?;
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;
    use logpipeline_core::record::LogRecord;

    fn with_content_type(value: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_str(value).unwrap());
        headers
    }

    #[test]
    fn json_content_types_are_recognised() {
        assert!(is_json(&with_content_type("application/json")));
        assert!(is_json(&with_content_type(
            "Application/JSON; charset=utf-8"
        )));
        assert!(is_json(&with_content_type("application/vnd.api+json")));
        assert!(!is_json(&with_content_type("text/plain")));
        assert!(!is_json(&with_content_type(
            "application/x-www-form-urlencoded"
        )));
        assert!(!is_json(&HeaderMap::new()));
        assert!(is_json(&with_content_type(
            "application/json; charset=\"UTF-8\""
        )));
        assert!(!is_json(&with_content_type(
            "application/json; charset=iso-8859-1"
        )));
        assert!(!is_json(&with_content_type(
            "application/json;charset=utf-16"
        )));
    }

    #[test]
    fn syntax_errors_are_malformed_and_rule_errors_are_invalid() {
        let malformed = parse::<LogRecord>(b"{\"device_id\": ").unwrap_err();
        assert!(
            matches!(malformed, Error::MalformedJson(_)),
            "{malformed:?}"
        );
        let trailing =
            parse::<LogRecord>(br#"{"device_id":"d","log_level":"INFO","message":"m"} x"#)
                .unwrap_err();
        assert!(matches!(trailing, Error::MalformedJson(_)), "{trailing:?}");
        let invalid = parse::<LogRecord>(br#"{"device_id":"d","log_level":"LOUD","message":"m"}"#)
            .unwrap_err();
        let Error::InvalidLog(detail) = invalid else {
            panic!("{invalid:?}")
        };
        assert!(
            detail.starts_with("log_level: unknown variant `LOUD`"),
            "{detail}"
        );
    }
}
