//! `/audit_log`, `/sessions`, `/flows`: newest first, paged by `?cursor=`.

use axum::extract::Query;
use axum::response::IntoResponse;

use super::problem::{ApiResult, Problem};
use super::{Admin, Page, PageQuery, Shared};
use crate::domain::AuditEntry;
use crate::store::audit;
use crate::store::logs::{self, FlowEntry, SessionEntry};

const DEFAULT_LIMIT: i64 = 100;
const MAX_LIMIT: i64 = 1000;

/// The page size, and the cursor checked (a log position is at least 1;
/// anything else is not one the portal handed out).
fn limit(query: &PageQuery) -> ApiResult<i64> {
    if query.cursor.is_some_and(|cursor| cursor < 1) {
        return Err(Problem::invalid(
            "cursor",
            "must be a next_cursor from an earlier page",
        ));
    }
    match query.limit {
        None => Ok(DEFAULT_LIMIT),
        Some(n) if (1..=MAX_LIMIT).contains(&n) => Ok(n),
        Some(_) => Err(Problem::invalid("limit", format!("must be 1-{MAX_LIMIT}"))),
    }
}

fn page<T>(data: Vec<T>, limit: i64, cursor: impl Fn(&T) -> i64) -> Page<T> {
    let next_cursor = if data.len() as i64 == limit {
        data.last().map(cursor)
    } else {
        None
    };
    Page { data, next_cursor }
}

#[utoipa::path(get, path = "/audit_log", tag = "logs", params(PageQuery),
    responses((status = 200, body = Page<AuditEntry>)))]
pub async fn audit_log(
    state: Shared,
    admin: Admin,
    Query(query): Query<PageQuery>,
) -> ApiResult<impl IntoResponse> {
    let limit = limit(&query)?;
    let mut tx = state.store.read().await?;
    let entries = audit::list(&mut tx, admin.account_id, query.cursor, limit).await?;
    tx.commit().await?;
    Ok(axum::Json(page(entries, limit, |e| e.cursor)))
}

#[utoipa::path(get, path = "/sessions", tag = "logs", params(PageQuery),
    responses((status = 200, body = Page<SessionEntry>)))]
pub async fn sessions(
    state: Shared,
    admin: Admin,
    Query(query): Query<PageQuery>,
) -> ApiResult<impl IntoResponse> {
    let limit = limit(&query)?;
    let mut tx = state.store.read().await?;
    let entries = logs::sessions(&mut tx, admin.account_id, query.cursor, limit).await?;
    tx.commit().await?;
    Ok(axum::Json(page(entries, limit, |e| e.cursor)))
}

/// `GET /flows`: paging as the other logs, and filters.
#[derive(serde::Deserialize, Debug, utoipa::IntoParams)]
pub struct FlowQuery {
    /// The `next_cursor` of the page before (entries older than it).
    #[param(minimum = 1)]
    pub cursor: Option<i64>,
    /// Entries per page (default 100).
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<i64>,
    /// Only flows through this resource.
    pub resource_id: Option<String>,
    /// Only flows of this actor's clients.
    pub actor_id: Option<String>,
    /// Only flows that ended at or after this time (RFC 3339).
    pub since: Option<String>,
    /// Only flows that started at or before this time (RFC 3339).
    pub until: Option<String>,
}

fn uuid_param(name: &str, value: Option<&str>) -> ApiResult<Option<uuid::Uuid>> {
    value
        .map(|v| {
            v.parse()
                .map_err(|_| Problem::invalid(name, "must be a UUID"))
        })
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

#[utoipa::path(get, path = "/flows", tag = "logs", params(FlowQuery),
    responses((status = 200, body = Page<FlowEntry>)))]
pub async fn flows(
    state: Shared,
    admin: Admin,
    Query(query): Query<FlowQuery>,
) -> ApiResult<impl IntoResponse> {
    let limit = limit(&PageQuery {
        cursor: query.cursor,
        limit: query.limit,
    })?;
    let filter = logs::FlowFilter {
        resource_id: uuid_param("resource_id", query.resource_id.as_deref())?,
        actor_id: uuid_param("actor_id", query.actor_id.as_deref())?,
        since_ms: time_param("since", query.since.as_deref())?,
        until_ms: time_param("until", query.until.as_deref())?,
    };
    let mut tx = state.store.read().await?;
    let entries = logs::flows(&mut tx, admin.account_id, &filter, query.cursor, limit).await?;
    tx.commit().await?;
    Ok(axum::Json(page(entries, limit, |e| e.cursor)))
}
