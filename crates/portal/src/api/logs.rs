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

fn limit(query: &PageQuery) -> ApiResult<i64> {
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

#[utoipa::path(get, path = "/flows", tag = "logs", params(PageQuery),
    responses((status = 200, body = Page<FlowEntry>)))]
pub async fn flows(
    state: Shared,
    admin: Admin,
    Query(query): Query<PageQuery>,
) -> ApiResult<impl IntoResponse> {
    let limit = limit(&query)?;
    let mut tx = state.store.read().await?;
    let entries = logs::flows(&mut tx, admin.account_id, query.cursor, limit).await?;
    tx.commit().await?;
    Ok(axum::Json(page(entries, limit, |e| e.cursor)))
}
