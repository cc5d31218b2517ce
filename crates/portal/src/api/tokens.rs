//! `/actors/{id}/tokens` and `/tokens/{id}`: client tokens for service
//! accounts, API tokens for admins; revocation closes channels at once.

use axum::extract::Path;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use jiff::{SignedDuration, Timestamp};
use serde::Deserialize;
use utoipa::ToSchema;

use super::audited::{self, Entry, Notices, Outcome};
use super::problem::{ApiResult, Problem};
use super::sites::NewSecret;
use super::{Admin, Shared, now_ms, parse_id};
use crate::auth::token;
use crate::domain::{Actor, Role, TokenKind};
use crate::state::Change;
use crate::store::tokens::{self, NewToken};
use axum::body::Bytes;

/// Service-account tokens live a year unless told otherwise (SPEC F4).
const SERVICE_ACCOUNT_LIFETIME: SignedDuration = SignedDuration::from_hours(365 * 24);
/// API tokens live 90 days unless told otherwise.
const API_TOKEN_LIFETIME: SignedDuration = SignedDuration::from_hours(90 * 24);
const MAX_LIFETIME: SignedDuration = SignedDuration::from_hours(10 * 365 * 24);
/// Live tokens one actor may hold: each API token has its own rate bucket,
/// so unlimited tokens would be an unlimited rate (issue 15, L12).
pub const MAX_TOKENS_PER_ACTOR: i64 = 25;

#[derive(Deserialize, ToSchema, Default)]
#[serde(deny_unknown_fields)]
pub struct TokenInput {
    #[schema(value_type = Option<String>, format = DateTime)]
    pub expires_at: Option<Timestamp>,
    /// An admin's API token: `["read"]` may only read (403 on any change),
    /// `["read", "write"]` (the default) may also change. Not for client
    /// tokens.
    #[schema(schema_with = scopes_schema)]
    pub scopes: Option<Vec<Scope>>,
}

/// What an API token may do.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    Read,
    Write,
}

fn scopes_schema() -> utoipa::openapi::schema::Schema {
    super::fields::json_schema(serde_json::json!({
        "type": ["array", "null"],
        "items": {"type": "string", "enum": ["read", "write"]},
        "minItems": 1,
        "uniqueItems": true,
        "contains": {"enum": ["read"]},
        "example": ["read"],
    }))
}

/// Whether the scopes asked for make a read-only token; 422 unless they
/// are `["read"]` or `["read", "write"]` (in any order).
fn read_only(scopes: Option<&[Scope]>) -> ApiResult<bool> {
    let Some(scopes) = scopes else {
        return Ok(false);
    };
    let has = |scope| scopes.iter().filter(|s| **s == scope).count();
    match (has(Scope::Read), has(Scope::Write)) {
        (1, 0) if scopes.len() == 1 => Ok(true),
        (1, 1) if scopes.len() == 2 => Ok(false),
        _ => Err(Problem::invalid(
            "scopes",
            "must be [\"read\"] or [\"read\", \"write\"]",
        )),
    }
}

#[utoipa::path(post, path = "/actors/{id}/tokens", tag = "tokens", params(("id" = String, Path, description = "The object's id (a UUID)")), request_body(content = Option<TokenInput>, description = "Optional: none means the default lifetime."),
    description = "A service account gets a client token, an admin an API token. Shown once.",
    responses((status = 201, body = NewSecret), (status = 404), (status = 422)))]
pub async fn create(
    state: Shared,
    admin: Admin,
    Path(id): Path<String>,
    body: Bytes,
) -> ApiResult<impl IntoResponse> {
    // The body is optional: none means the default lifetime.
    let input: TokenInput =
        if body.iter().all(u8::is_ascii_whitespace) || body.trim_ascii() == b"null" {
            TokenInput::default()
        } else {
            super::body::parse(&body)?
        };
    let read_only = read_only(input.scopes.as_deref())?;
    let now = Timestamp::now();
    audited::write_scoped(&state, &admin, &id, async |tx, actor: Actor| {
        let (kind, default_lifetime) = match actor.role {
            Role::ServiceAccount => (TokenKind::Client, SERVICE_ACCOUNT_LIFETIME),
            Role::Admin => (TokenKind::Api, API_TOKEN_LIFETIME),
            Role::User => {
                return Err(Problem::conflict(
                    "users get client tokens by signing in with `postern client sign-in`",
                ));
            }
        };
        if input.scopes.is_some() && kind != TokenKind::Api {
            return Err(Problem::conflict_at(
                "scopes",
                "only an admin's API tokens have scopes (this actor is a service account)",
            ));
        }
        if actor.disabled {
            return Err(Problem::conflict("the actor is disabled"));
        }
        let expires_at = input.expires_at.unwrap_or(now + default_lifetime);
        if expires_at <= now {
            return Err(Problem::conflict_at("expires_at", "must be in the future"));
        }
        if expires_at > now + MAX_LIFETIME {
            return Err(Problem::conflict_at(
                "expires_at",
                "must be within ten years from now",
            ));
        }
        let live = tokens::count_live(tx, actor.id, now.as_millisecond()).await?;
        if live >= MAX_TOKENS_PER_ACTOR {
            return Err(Problem::conflict(format!(
                "the actor holds {live} live tokens, the most allowed: revoke unused ones \
                 (DELETE /api/v1/tokens/ID) first"
            )));
        }
        let minted = token::mint()
            .map_err(|e| Problem::new(StatusCode::SERVICE_UNAVAILABLE, e.to_string()))?;
        let new = NewToken {
            account_id: Some(admin.account_id),
            kind,
            actor_id: Some(actor.id),
            site_id: None,
            identity_provider_id: None,
            expires_at_ms: Some(expires_at.as_millisecond()),
            read_only,
        };
        tokens::insert(tx, &minted, &new, now_ms()).await?;
        let scopes: &[&str] = match (kind, read_only) {
            (TokenKind::Api, true) => &["read"],
            (TokenKind::Api, false) => &["read", "write"],
            _ => &[],
        };
        let shown = serde_json::json!({"kind": kind, "actor_id": actor.id,
            "expires_at": expires_at, "scopes": scopes});
        Ok(Outcome::new(
            (
                StatusCode::CREATED,
                axum::Json(NewSecret {
                    id: minted.id,
                    token: minted.token,
                    expires_at: Some(expires_at),
                }),
            ),
            Entry::created("token.create", minted.id, &shown),
            Notices::Quiet("a new token changes nothing until a client connects with it"),
        ))
    })
    .await
}

#[utoipa::path(delete, path = "/tokens/{id}", tag = "tokens", params(("id" = String, Path, description = "The object's id (a UUID)")),
    description = "Revokes at once: every channel using the token is closed with `token_revoked`.",
    responses((status = 204), (status = 404)))]
pub async fn revoke(
    state: Shared,
    admin: Admin,
    Path(id): Path<String>,
) -> ApiResult<impl IntoResponse> {
    let id = parse_id(&id)?;
    audited::write(&state, &admin, async |tx| {
        let revoked = tokens::delete(tx, admin.account_id, id)
            .await?
            .ok_or_else(Problem::not_found)?;
        let before = serde_json::json!({
            "kind": revoked.kind,
            "actor_id": revoked.actor_id,
            "site_id": revoked.site_id,
        });
        Ok(Outcome::deleted(
            "token.revoke",
            id,
            &before,
            Change::TokenRevoked(id),
        ))
    })
    .await
}
