//! `/audit_log`, `/sessions`, `/flows`: newest first, paged by `?cursor=`.

use std::collections::HashMap;

use axum::extract::{FromRequestParts, RawQuery};
use axum::http::request::Parts;
use axum::response::IntoResponse;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

use super::problem::{ApiResult, Problem};
use super::{Admin, Page, Shared};
use crate::domain::AuditEntry;
use crate::store::audit;
use crate::store::logs::{self, FlowEntry, SessionEntry};

const DEFAULT_LIMIT: i64 = 100;
const MAX_LIMIT: i64 = 1000;

/// What a cursor starts with: a version, so the encoding can change.
const CURSOR_TAG: &[u8] = b"pc1";

/// A log position as the caller sees it: opaque, so the store may page
/// differently later without breaking callers.
pub fn encode_cursor(position: i64) -> String {
    let mut bytes = CURSOR_TAG.to_vec();
    bytes.extend_from_slice(&position.to_be_bytes());
    URL_SAFE_NO_PAD.encode(bytes)
}

/// The position of a cursor the portal handed out, or none.
pub fn decode_cursor(text: &str) -> Option<i64> {
    let bytes = URL_SAFE_NO_PAD.decode(text).ok()?;
    let position = bytes.strip_prefix(CURSOR_TAG)?;
    let position = i64::from_be_bytes(position.try_into().ok()?);
    (position >= 1).then_some(position)
}

/// The query string of a log endpoint, each parameter checked strictly: a
/// value that is not what the document says is a 422 naming it (Axum's
/// own `Query` answers 400 in plain text). Unknown parameters are ignored.
pub struct LogQuery {
    /// Entries older than this position.
    pub before: Option<i64>,
    pub limit: i64,
    pub resource_id: Option<uuid::Uuid>,
    pub actor_id: Option<uuid::Uuid>,
    pub since_ms: Option<i64>,
    pub until_ms: Option<i64>,
}

impl<S: Send + Sync> FromRequestParts<S> for LogQuery {
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Problem> {
        let RawQuery(query) = RawQuery::from_request_parts(parts, state)
            .await
            .unwrap_or(RawQuery(None));
        let params: HashMap<String, String> =
            url::form_urlencoded::parse(query.as_deref().unwrap_or_default().as_bytes())
                .into_owned()
                .collect();
        let get = |name: &str| params.get(name).map(String::as_str);
        let limit = match get("limit") {
            None => DEFAULT_LIMIT,
            Some(text) => text
                .parse::<i64>()
                .ok()
                .filter(|n| (1..=MAX_LIMIT).contains(n))
                .ok_or_else(|| Problem::invalid("limit", format!("must be 1-{MAX_LIMIT}")))?,
        };
        let before = get("cursor")
            .map(|text| {
                decode_cursor(text).ok_or_else(|| {
                    Problem::invalid("cursor", "must be a next_cursor from an earlier page")
                })
            })
            .transpose()?;
        Ok(LogQuery {
            before,
            limit,
            resource_id: uuid_param("resource_id", get("resource_id"))?,
            actor_id: uuid_param("actor_id", get("actor_id"))?,
            since_ms: time_param("since", get("since"))?,
            until_ms: time_param("until", get("until"))?,
        })
    }
}

/// `?cursor=&limit=` of every log (documentation only: `LogQuery` reads them).
#[derive(utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)]
pub struct PageParams {
    /// The `next_cursor` of the page before (entries older than it).
    #[param(format = "page-cursor")]
    cursor: Option<String>,
    /// Entries per page (default 100).
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<i64>,
}

/// The filters of `GET /flows` (documentation only, as `PageParams`).
#[derive(utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)]
pub struct FlowParams {
    /// Only flows through this resource.
    resource_id: Option<uuid::Uuid>,
    /// Only flows of this actor's clients.
    actor_id: Option<uuid::Uuid>,
    /// Only flows that ended at or after this time (RFC 3339).
    #[param(value_type = Option<String>, format = DateTime)]
    since: Option<String>,
    /// Only flows that started at or before this time (RFC 3339).
    #[param(value_type = Option<String>, format = DateTime)]
    until: Option<String>,
}

fn page<T>(data: Vec<T>, limit: i64, cursor: impl Fn(&T) -> i64) -> Page<T> {
    let next_cursor = if data.len() as i64 == limit {
        data.last().map(|entry| encode_cursor(cursor(entry)))
    } else {
        None
    };
    Page { data, next_cursor }
}

fn uuid_param(name: &str, value: Option<&str>) -> ApiResult<Option<uuid::Uuid>> {
    value
        .map(|v| uuid::Uuid::try_parse(v).map_err(|_| Problem::invalid(name, "must be a UUID")))
        .transpose()
}

fn time_param(name: &str, value: Option<&str>) -> ApiResult<Option<i64>> {
    value
        .map(|v| {
            v.parse::<jiff::Timestamp>()
                .map(|t| t.as_millisecond())
                .map_err(|_| Problem::invalid(name, "must be an RFC 3339 time"))
        })
        .transpose()
}

#[utoipa::path(get, path = "/audit_log", tag = "logs", params(PageParams),
    responses((status = 200, body = Page<AuditEntry>)))]
pub async fn audit_log(
    state: Shared,
    admin: Admin,
    query: LogQuery,
) -> ApiResult<impl IntoResponse> {
    let limit = query.limit;
    let mut tx = state.store.read().await?;
    let entries = audit::list(&mut tx, admin.account_id, query.before, limit).await?;
    tx.commit().await?;
    Ok(axum::Json(page(entries, limit, |e| e.cursor)))
}

#[utoipa::path(get, path = "/sessions", tag = "logs", params(PageParams),
    responses((status = 200, body = Page<SessionEntry>)))]
pub async fn sessions(
    state: Shared,
    admin: Admin,
    query: LogQuery,
) -> ApiResult<impl IntoResponse> {
    let limit = query.limit;
    let mut tx = state.store.read().await?;
    let entries = logs::sessions(&mut tx, admin.account_id, query.before, limit).await?;
    tx.commit().await?;
    Ok(axum::Json(page(entries, limit, |e| e.cursor)))
}

#[utoipa::path(get, path = "/flows", tag = "logs", params(PageParams, FlowParams),
    responses((status = 200, body = Page<FlowEntry>)))]
pub async fn flows(state: Shared, admin: Admin, query: LogQuery) -> ApiResult<impl IntoResponse> {
    let limit = query.limit;
    let filter = logs::FlowFilter {
        resource_id: query.resource_id,
        actor_id: query.actor_id,
        since_ms: query.since_ms,
        until_ms: query.until_ms,
    };
    let mut tx = state.store.read().await?;
    let entries = logs::flows(&mut tx, admin.account_id, &filter, query.before, limit).await?;
    tx.commit().await?;
    Ok(axum::Json(page(entries, limit, |e| e.cursor)))
}
