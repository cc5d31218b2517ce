//! The REST API (SPEC section 4): `/api/v1`, bearer API tokens of admins,
//! JSON in and out, RFC 7807 errors, a rate limit per token, an audit entry
//! for every change, and the OpenAPI document at `/api/v1/openapi.json`.
//! Every write goes through `audited::write`, which records the audit entry
//! and tells continuous evaluation once the change is committed.

pub mod account;
pub mod actors;
pub(crate) mod audited;
pub mod body;
pub mod clients;
pub mod config;
pub mod directories;
pub mod fields;
pub mod groups;
pub mod identity_providers;
pub mod logs;
pub mod openapi;
pub mod policies;
pub mod problem;
pub mod resources;
pub mod schemas;
pub mod sites;
mod strict;
pub mod tokens;

use std::sync::Arc;
use std::time::Instant;

use axum::Router;
use axum::extract::{FromRequestParts, State};
use axum::http::request::Parts;
use axum::http::{Method, StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::{delete, get, patch};
use jiff::Timestamp;
use serde::Serialize;
use utoipa::ToSchema;
use uuid::Uuid;

use crate::domain::{Role, TokenKind};
use crate::state::AppState;
use crate::store::actors as actor_store;
use crate::store::audit::Author;
use crate::store::{self, Conn, Scoped};
use problem::{ApiResult, Problem};

pub type Shared = State<Arc<AppState>>;

/// A list response: `{"data": [...]}`.
#[derive(Serialize, ToSchema)]
pub struct List<T> {
    pub data: Vec<T>,
}

/// A page of a log, newest first; pass `next_cursor` as `?cursor=` for more.
#[derive(Serialize, ToSchema)]
pub struct Page<T> {
    pub data: Vec<T>,
    /// Opaque: pass it back as it is; none on the last page.
    pub next_cursor: Option<String>,
}

impl<T> List<T> {
    pub fn of(data: Vec<T>) -> axum::Json<Self> {
        axum::Json(List { data })
    }
}

/// An authenticated admin calling the API.
#[derive(Clone, Copy, Debug)]
pub struct Admin {
    pub account_id: Uuid,
    pub actor_id: Uuid,
    pub token_id: Uuid,
}

impl Admin {
    pub fn author(&self) -> Author {
        Author {
            directory_id: None,
            actor_id: Some(self.actor_id),
            token_id: Some(self.token_id),
        }
    }
}

impl FromRequestParts<Arc<AppState>> for Admin {
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, state: &Arc<AppState>) -> ApiResult<Self> {
        let presented = parts
            .headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| {
                v.strip_prefix("Bearer ")
                    .or_else(|| v.strip_prefix("bearer "))
            })
            .ok_or_else(|| {
                Problem::unauthorized("send an admin API token as Authorization: Bearer <token>")
            })?;
        let invalid = || Problem::unauthorized("the token is invalid, expired or revoked");
        let record = crate::auth::authenticate(&state.store, presented, Timestamp::now())
            .await?
            .ok_or_else(invalid)?;
        let (TokenKind::Api, Some(account_id), Some(actor_id)) =
            (record.kind, record.account_id, record.actor_id)
        else {
            return Err(invalid());
        };
        let mut tx = state.store.read().await?;
        let actor = actor_store::get(&mut tx, account_id, actor_id).await?;
        tx.commit().await?;
        if !actor.is_some_and(|a| a.role == Role::Admin && !a.disabled) {
            return Err(invalid());
        }
        // A read token reads: every change is a method other than these.
        if record.read_only && !matches!(parts.method, Method::GET | Method::HEAD) {
            return Err(Problem::new(
                StatusCode::FORBIDDEN,
                "this API token has only the read scope: it may not change anything",
            ));
        }
        if let Err(wait) = state.api_limiter.check(record.id, Instant::now()) {
            let mut problem = Problem::new(
                StatusCode::TOO_MANY_REQUESTS,
                "too many requests with this token; retry later",
            );
            problem.retry_after = Some(wait.as_secs().max(1));
            return Err(problem);
        }
        Ok(Admin {
            account_id,
            actor_id,
            token_id: record.id,
        })
    }
}

/// Path ids that are not UUIDs name nothing: 404, like an id of another account.
pub fn parse_id(text: &str) -> ApiResult<Uuid> {
    Uuid::try_parse(text).map_err(|_| Problem::not_found())
}

/// The account's row named by a path `id`; 404 when it is malformed, missing
/// or another account's, so ids of other accounts cannot be probed.
pub(crate) async fn scoped<R: Scoped>(conn: &mut Conn, admin: &Admin, id: &str) -> ApiResult<R> {
    store::get_scoped(conn, admin.account_id, parse_id(id)?)
        .await?
        .ok_or_else(Problem::not_found)
}

/// `GET /things/{id}` of an account-scoped table: the row, or 404 as `scoped`.
pub(crate) async fn read_one<R: Scoped>(state: &AppState, admin: &Admin, id: &str) -> ApiResult<R> {
    let mut tx = state.store.read().await?;
    let row = scoped(&mut tx, admin, id).await?;
    tx.commit().await?;
    Ok(row)
}

/// `GET /things` of an account-scoped table, oldest first.
pub(crate) async fn read_all<R: Scoped>(state: &AppState, admin: &Admin) -> ApiResult<Vec<R>> {
    let mut tx = state.store.read().await?;
    let rows = store::list_scoped(&mut tx, admin.account_id).await?;
    tx.commit().await?;
    Ok(rows)
}

pub fn now_ms() -> i64 {
    Timestamp::now().as_millisecond()
}

/// The `/api/v1` routes.
pub fn router() -> Router<Arc<AppState>> {
    let v1 = Router::new()
        .route("/account", get(account::get).patch(account::update))
        .route("/sites", get(sites::list).post(sites::create))
        .route(
            "/sites/{id}",
            get(sites::get).patch(sites::update).delete(sites::remove),
        )
        .route(
            "/sites/{id}/gateway_tokens",
            axum::routing::post(sites::create_gateway_token),
        )
        .route("/sites/{id}/gateways", get(sites::gateways))
        .route("/resources", get(resources::list).post(resources::create))
        .route(
            "/resources/{id}",
            get(resources::get)
                .patch(resources::update)
                .delete(resources::remove),
        )
        .route("/groups", get(groups::list).post(groups::create))
        .route(
            "/groups/{id}",
            get(groups::get)
                .patch(groups::update)
                .delete(groups::remove),
        )
        .route(
            "/groups/{id}/members",
            get(groups::members).put(groups::set_members),
        )
        .route(
            "/identity_providers",
            get(identity_providers::list).post(identity_providers::create),
        )
        .route(
            "/identity_providers/{id}",
            get(identity_providers::get)
                .patch(identity_providers::update)
                .delete(identity_providers::remove),
        )
        .route(
            "/directories",
            get(directories::list).post(directories::create),
        )
        .route(
            "/directories/{id}",
            get(directories::get)
                .patch(directories::update)
                .delete(directories::remove),
        )
        .route(
            "/directories/{id}/token",
            axum::routing::post(directories::rotate_token),
        )
        .route(
            "/directories/{id}/sync",
            axum::routing::post(directories::sync),
        )
        .route("/actors", get(actors::list).post(actors::create))
        .route(
            "/actors/{id}",
            get(actors::get)
                .patch(actors::update)
                .delete(actors::remove),
        )
        .route("/actors/{id}/tokens", axum::routing::post(tokens::create))
        .route("/tokens/{id}", delete(tokens::revoke))
        .route("/policies", get(policies::list).post(policies::create))
        .route(
            "/policies/{id}",
            get(policies::get)
                .patch(policies::update)
                .delete(policies::remove),
        )
        .route("/clients", get(clients::list))
        .route(
            "/clients/{id}",
            patch(clients::update).delete(clients::remove),
        )
        .route("/audit_log", get(logs::audit_log))
        .route("/sessions", get(logs::sessions))
        .route("/flows", get(logs::flows))
        .route("/config", get(config::export).post(config::apply))
        .route("/openapi.json", get(openapi::document))
        .fallback(not_found)
        // Axum's own default is 2 MiB: bodies past `MAX_BODY` are refused
        // unread (issue 15, L12).
        .layer(axum::extract::DefaultBodyLimit::max(body::MAX_BODY));
    Router::new().nest("/api/v1", v1)
}

async fn not_found(_admin: Admin) -> impl IntoResponse {
    Problem::new(StatusCode::NOT_FOUND, "no such endpoint")
}
