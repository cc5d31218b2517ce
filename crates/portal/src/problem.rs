//! RFC 7807 problem responses. Every error of the REST API and of the
//! channel handshakes goes through here, so a caller always gets
//! `application/problem+json` naming the bad field, and a store failure is
//! logged with its cause but shown without internals. A leaf under both.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use crate::store::StoreError;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub status: StatusCode,
    pub detail: String,
    /// The request field at fault (`name`, `filters[0].ports`, ...).
    pub field: Option<String>,
    /// Seconds, for 429.
    pub retry_after: Option<u64>,
}

#[derive(Serialize)]
struct Body<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    title: &'a str,
    status: u16,
    detail: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    field: Option<&'a str>,
}

impl Problem {
    pub fn new(status: StatusCode, detail: impl Into<String>) -> Self {
        Problem {
            status,
            detail: detail.into(),
            field: None,
            retry_after: None,
        }
    }

    /// 422 for a field that parsed but is not acceptable.
    pub fn invalid(field: impl Into<String>, detail: impl std::fmt::Display) -> Self {
        let field = field.into();
        Problem {
            status: StatusCode::UNPROCESSABLE_ENTITY,
            detail: format!("{field}: {detail}"),
            field: Some(field),
            retry_after: None,
        }
    }

    /// 409 for a field that is valid on its own but not with the account's
    /// current state: a reference to an object that does not exist, a time
    /// already past. (422 means the request alone is invalid.)
    pub fn conflict_at(field: impl Into<String>, detail: impl std::fmt::Display) -> Self {
        Problem {
            status: StatusCode::CONFLICT,
            ..Problem::invalid(field, detail)
        }
    }

    /// The same problem inside a part of a larger request: `address`
    /// becomes `resources[2].address` (a problem about the whole becomes
    /// one about the part).
    pub fn within(mut self, prefix: &str) -> Self {
        if !self.status.is_client_error() {
            return self;
        }
        let field = match &self.field {
            Some(field) => format!("{prefix}.{field}"),
            None => prefix.to_string(),
        };
        let reason = match &self.field {
            Some(old) => self
                .detail
                .strip_prefix(&format!("{old}: "))
                .unwrap_or(&self.detail),
            None => &self.detail,
        };
        self.detail = format!("{field}: {reason}");
        self.field = Some(field);
        self
    }

    pub fn not_found() -> Self {
        Problem::new(StatusCode::NOT_FOUND, "no such object")
    }

    pub fn unauthorized(detail: impl Into<String>) -> Self {
        Problem::new(StatusCode::UNAUTHORIZED, detail)
    }

    pub fn conflict(detail: impl Into<String>) -> Self {
        Problem::new(StatusCode::CONFLICT, detail)
    }
}

impl From<StoreError> for Problem {
    fn from(error: StoreError) -> Self {
        match error {
            StoreError::Conflict(detail) => {
                Problem::conflict(format!("conflicts with an existing object ({detail})"))
            }
            StoreError::MissingReference => {
                Problem::conflict("an object this one refers to no longer exists")
            }
            StoreError::LimitReached(detail) => Problem::new(StatusCode::FORBIDDEN, detail),
            other => {
                tracing::error!(error = %other, "store failure during an API request");
                Problem::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "the database is not available; try again",
                )
            }
        }
    }
}

impl From<sqlx::Error> for Problem {
    fn from(error: sqlx::Error) -> Self {
        Problem::from(StoreError::from(error))
    }
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let body = Body {
            kind: "about:blank",
            title: self.status.canonical_reason().unwrap_or("error"),
            status: self.status.as_u16(),
            detail: &self.detail,
            field: self.field.as_deref(),
        };
        let json = serde_json::to_vec(&body).unwrap_or_default();
        let mut response = (self.status, json).into_response();
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        if let Some(seconds) = self.retry_after {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        if self.status == StatusCode::UNAUTHORIZED {
            headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}
