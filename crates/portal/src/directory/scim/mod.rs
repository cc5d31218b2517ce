//! The SCIM 2.0 server (RFC 7643, RFC 7644) each SCIM directory pushes to:
//! `{external_url}/{account}/scim/v2`, authenticated by the directory's
//! bearer token, for that directory's users and groups alone.

pub mod document;
pub mod error;
pub mod filter;
pub mod patch;
mod resources;
pub mod schema;

use std::collections::HashMap;
use std::sync::Arc;

use axum::Router;
use axum::extract::{FromRequestParts, Path};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodRouter, any, get, post};
use jiff::Timestamp;
use serde_json::{Value, json};
use uuid::Uuid;

use crate::domain::{Directory, DirectoryKind};
use crate::state::AppState;
use crate::store::{accounts, directories};
use error::{MEDIA_TYPE, ScimError};
use schema::{Kind, SCHEMAS};

/// Largest request body: a group of some ten thousand members.
const MAX_BODY: usize = 4 << 20;

/// The SCIM routes, under `/{account}/scim/v2`. Spelled out in full
/// rather than nested: axum cannot nest a router with its own fallback
/// under a path with a parameter.
pub fn router() -> Router<Arc<AppState>> {
    let at = |path: &str| format!("/{{account}}/scim/v2{path}");
    Router::new()
        .route(
            &at("/ServiceProviderConfig"),
            only_get(get(service_provider_config)),
        )
        .route(&at("/ResourceTypes"), only_get(get(resource_types)))
        .route(&at("/ResourceTypes/{id}"), only_get(get(resource_type)))
        .route(&at("/Schemas"), only_get(get(schemas)))
        .route(&at("/Schemas/{id}"), only_get(get(schema_by_id)))
        .route(
            &at("/Users"),
            get(resources::list_users)
                .post(resources::create_user)
                .fallback(method_not_allowed),
        )
        .route(&at("/Users/.search"), post(resources::search_users))
        .route(
            &at("/Users/{id}"),
            get(resources::get_user)
                .put(resources::replace_user)
                .patch(resources::patch_user)
                .delete(resources::delete_user)
                .fallback(method_not_allowed),
        )
        .route(
            &at("/Groups"),
            get(resources::list_groups)
                .post(resources::create_group)
                .fallback(method_not_allowed),
        )
        .route(&at("/Groups/.search"), post(resources::search_groups))
        .route(
            &at("/Groups/{id}"),
            get(resources::get_group)
                .put(resources::replace_group)
                .patch(resources::patch_group)
                .delete(resources::delete_group)
                .fallback(method_not_allowed),
        )
        .route(&at("/.search"), post(resources::search_all))
        .route(&at(""), any(not_found))
        .route(&at("/"), any(not_found))
        .route(&at("/{*rest}"), any(not_found))
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY))
}

fn only_get(route: MethodRouter<Arc<AppState>>) -> MethodRouter<Arc<AppState>> {
    route.fallback(method_not_allowed)
}

async fn method_not_allowed() -> ScimError {
    ScimError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        None,
        "this endpoint does not take that method",
    )
}

async fn not_found() -> ScimError {
    ScimError::not_found("no such SCIM endpoint")
}

/// An authenticated SCIM request: the directory whose token it carries, in
/// the account the path names.
#[derive(Clone, Debug)]
pub struct Scim {
    pub account_id: Uuid,
    pub directory: Directory,
    /// `{external_url}/{account}/scim/v2`, for `meta.location`.
    pub base_url: String,
}

impl FromRequestParts<Arc<AppState>> for Scim {
    type Rejection = ScimError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &Arc<AppState>,
    ) -> Result<Self, ScimError> {
        let unauthorized = || {
            ScimError::new(
                StatusCode::UNAUTHORIZED,
                None,
                "send the directory's token as Authorization: Bearer <token>",
            )
        };
        let Path(params) = Path::<HashMap<String, String>>::from_request_parts(parts, state)
            .await
            .map_err(|_| ScimError::not_found("no such account"))?;
        let slug = params.get("account").cloned().unwrap_or_default();
        let presented = parts
            .headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| {
                v.strip_prefix("Bearer ")
                    .or_else(|| v.strip_prefix("bearer "))
            })
            .ok_or_else(unauthorized)?;
        let (secret, token_id) =
            crate::auth::token::parse(presented.trim()).ok_or_else(unauthorized)?;
        let mut tx = state.store.read().await?;
        let found = directories::by_token(&mut tx, token_id).await?;
        let account = accounts::by_slug(&mut tx, &slug).await?;
        tx.commit().await.map_err(crate::store::StoreError::from)?;
        let Some((account_id, directory, salt, hash)) = found else {
            return Err(unauthorized());
        };
        if !crate::auth::token::verify(&salt, &hash, secret)
            || directory.kind != DirectoryKind::Scim
            || account.as_ref().map(|a| a.id) != Some(account_id)
        {
            return Err(unauthorized());
        }
        let origin = state.external_url.clone().unwrap_or_else(|| {
            let host = parts
                .headers
                .get(header::HOST)
                .and_then(|h| h.to_str().ok())
                .unwrap_or("localhost");
            format!("http://{host}")
        });
        Ok(Scim {
            account_id,
            directory,
            base_url: format!("{}/{slug}/scim/v2", origin.trim_end_matches('/')),
        })
    }
}

/// A SCIM JSON answer.
pub fn respond(status: StatusCode, body: Value, headers: HeaderMap) -> Response {
    let mut response = (status, headers, axum::Json(body)).into_response();
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(MEDIA_TYPE));
    response
}

async fn service_provider_config(scim: Scim) -> Response {
    respond(
        StatusCode::OK,
        schema::service_provider_config(&scim.base_url),
        HeaderMap::new(),
    )
}

fn list_response(items: Vec<Value>) -> Value {
    json!({
        "schemas": [schema::LIST_RESPONSE],
        "totalResults": items.len(),
        "startIndex": 1,
        "itemsPerPage": items.len(),
        "Resources": items,
    })
}

async fn resource_types(scim: Scim) -> Response {
    let items = [Kind::User, Kind::Group]
        .iter()
        .map(|k| schema::resource_type(*k, &scim.base_url))
        .collect();
    respond(StatusCode::OK, list_response(items), HeaderMap::new())
}

async fn resource_type(scim: Scim, Path(params): Path<HashMap<String, String>>) -> Response {
    let id = params.get("id").map(String::as_str).unwrap_or_default();
    match [Kind::User, Kind::Group]
        .into_iter()
        .find(|k| k.name().eq_ignore_ascii_case(id))
    {
        Some(kind) => respond(
            StatusCode::OK,
            schema::resource_type(kind, &scim.base_url),
            HeaderMap::new(),
        ),
        None => ScimError::not_found("no such resource type").into_response(),
    }
}

async fn schemas(scim: Scim) -> Response {
    let items = SCHEMAS
        .all()
        .iter()
        .map(|s| s.to_json(&scim.base_url))
        .collect();
    respond(StatusCode::OK, list_response(items), HeaderMap::new())
}

async fn schema_by_id(scim: Scim, Path(params): Path<HashMap<String, String>>) -> Response {
    let id = params.get("id").map(String::as_str).unwrap_or_default();
    match SCHEMAS
        .all()
        .into_iter()
        .find(|s| s.id.eq_ignore_ascii_case(id))
    {
        Some(schema) => respond(
            StatusCode::OK,
            schema.to_json(&scim.base_url),
            HeaderMap::new(),
        ),
        None => ScimError::not_found("no such schema").into_response(),
    }
}

/// RFC 3339 with milliseconds, as SCIM's dateTime.
fn date_time(at: Timestamp) -> String {
    at.round(jiff::Unit::Millisecond).unwrap_or(at).to_string()
}
