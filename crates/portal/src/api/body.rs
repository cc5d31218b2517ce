//! The JSON body extractor: malformed JSON is a 400, a well-formed body with a
//! wrong type, a missing or unknown field, or an unknown enum value is a 422
//! naming the field's path (`filters[0].protocol`).

use axum::body::Bytes;
use axum::extract::{FromRequest, Request};
use axum::http::{StatusCode, header};
use serde::de::DeserializeOwned;

use super::problem::Problem;

/// Largest request body the API reads.
pub const MAX_BODY: usize = 256 * 1024;

pub struct Json<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for Json<T> {
    type Rejection = Problem;

    async fn from_request(request: Request, state: &S) -> Result<Self, Problem> {
        let is_json = request
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| {
                let media = v.split(';').next().unwrap_or("").trim();
                media.eq_ignore_ascii_case("application/json")
                    || media.to_ascii_lowercase().ends_with("+json")
            });
        if !is_json {
            return Err(Problem::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "send the body as Content-Type: application/json",
            ));
        }
        let bytes = Bytes::from_request(request, state).await.map_err(|_| {
            Problem::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("the body is unreadable or larger than {MAX_BODY} bytes"),
            )
        })?;
        parse(&bytes).map(Json)
    }
}

/// Deserializes with the failing field's path in the error.
pub fn parse<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, Problem> {
    let mut deserializer = serde_json::Deserializer::from_slice(bytes);
    let strict = super::strict::Strict(&mut deserializer);
    let value = serde_path_to_error::deserialize(strict).map_err(|error| {
        let path = error.path().to_string();
        let inner = error.into_inner();
        match inner.classify() {
            serde_json::error::Category::Data => {
                let field = if path == "." {
                    "body".to_string()
                } else {
                    path
                };
                Problem::invalid(field, strip_position(&inner.to_string()))
            }
            _ => Problem::new(StatusCode::BAD_REQUEST, format!("malformed JSON: {inner}")),
        }
    })?;
    deserializer
        .end()
        .map_err(|e| Problem::new(StatusCode::BAD_REQUEST, format!("malformed JSON: {e}")))?;
    Ok(value)
}

/// serde_json appends " at line 1 column 42", which means nothing to a caller
/// who was told the field.
fn strip_position(message: &str) -> &str {
    match message.rfind(" at line ") {
        Some(at) => &message[..at],
        None => message,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[allow(dead_code)]
    #[derive(Deserialize, Debug)]
    #[serde(deny_unknown_fields)]
    struct Inner {
        port: u16,
    }

    #[allow(dead_code)]
    #[derive(Deserialize, Debug)]
    #[serde(deny_unknown_fields)]
    struct Outer {
        name: String,
        items: Vec<Inner>,
    }

    #[test]
    fn errors_name_the_field() {
        let error =
            parse::<Outer>(br#"{"name": "x", "items": [{"port": 1}, {"port": "x"}]}"#).unwrap_err();
        assert_eq!(error.status, StatusCode::UNPROCESSABLE_ENTITY);
        assert_eq!(error.field.as_deref(), Some("items[1].port"));
        assert!(!error.detail.contains("line 1"), "{}", error.detail);
        let error = parse::<Outer>(br#"{"name": "x", "items": [], "extra": 1}"#).unwrap_err();
        assert!(
            error.detail.contains("unknown field `extra`"),
            "{}",
            error.detail
        );
        let error = parse::<Outer>(br#"{"items": []}"#).unwrap_err();
        assert!(
            error.detail.contains("missing field `name`"),
            "{}",
            error.detail
        );
        assert_eq!(
            parse::<Outer>(b"{").unwrap_err().status,
            StatusCode::BAD_REQUEST
        );
        assert_eq!(
            parse::<Outer>(br#"{"name": "x", "items": []} trailing"#)
                .unwrap_err()
                .status,
            StatusCode::BAD_REQUEST
        );
    }
}
