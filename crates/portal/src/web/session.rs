//! The end of every sign-in: a client token handed to the client's loopback
//! listener, or an admin web session cookie; the signed-in page; sign-out.

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use jiff::{SignedDuration, Timestamp};

use super::html::{escape, hidden, page};
use super::{
    RequestMeta, Shared, WebError, WebResult, account, cookies, csrf_token, jar, see_other,
    with_csrf,
};
use crate::auth::token;
use crate::domain::{Account, Actor, IdentityProvider, Role, TokenKind};
use crate::state::{AppState, Change};
use crate::store::actors;
use crate::store::logs::{self, NewSession};
use crate::store::sign_in::ClientRequest;
use crate::store::tokens::{self, NewToken};

/// A client token from a sign-in lives this long unless its provider says
/// otherwise.
pub const CLIENT_SESSION: SignedDuration = SignedDuration::from_hours(7 * 24);
/// An admin's web session.
pub const WEB_SESSION: SignedDuration = SignedDuration::from_hours(8);

/// Mints what the sign-in was for and answers with the redirect.
pub async fn finish(
    state: &AppState,
    account: &Account,
    actor: &Actor,
    provider: Option<&IdentityProvider>,
    client: Option<ClientRequest>,
    meta: &RequestMeta,
) -> WebResult<Response> {
    if actor.disabled {
        return Err(WebError::forbidden("This user is disabled."));
    }
    if actor.role == Role::ServiceAccount {
        return Err(WebError::forbidden("Service accounts cannot sign in."));
    }
    if client.is_none() && actor.role != Role::Admin {
        return Err(WebError::forbidden(
            "Only admins can use the web portal. To connect a device, run \
             `postern client sign-in` on it.",
        ));
    }
    let now = Timestamp::now();
    let (kind, lifetime, prefix) = match &client {
        Some(request) => (
            TokenKind::Client,
            provider
                .and_then(|p| p.client_session_lifetime_secs)
                .map_or(CLIENT_SESSION, SignedDuration::from_secs),
            request.nonce.as_str(),
        ),
        None => (TokenKind::Browser, WEB_SESSION, ""),
    };
    let expires_at = now.checked_add(lifetime).map_err(WebError::internal)?;
    let minted = token::mint(prefix).map_err(WebError::internal)?;
    let mut tx = state.store.write().await?;
    tokens::insert(
        &mut tx,
        &minted,
        &NewToken {
            account_id: Some(account.id),
            kind,
            actor_id: Some(actor.id),
            site_id: None,
            identity_provider_id: provider.map(|p| p.id),
            expires_at_ms: Some(expires_at.as_millisecond()),
        },
        now.as_millisecond(),
    )
    .await?;
    logs::record_session(
        &mut tx,
        account.id,
        &NewSession {
            actor_id: Some(actor.id),
            device_id: None,
            kind: if client.is_some() {
                "client_sign_in"
            } else {
                "web_sign_in"
            },
            remote_ip: Some(meta.ip.to_string()),
            user_agent: meta.user_agent.as_deref(),
        },
        now.as_millisecond(),
    )
    .await?;
    tx.commit().await?;
    tracing::info!(
        account = %account.slug,
        actor = %actor.id,
        provider = ?provider.map(|p| p.id),
        client = client.is_some(),
        "signed in"
    );
    match client {
        Some(request) => {
            // The client's token is nonce + fragment; only the fragment
            // travels in the redirect.
            let fragment = minted
                .token
                .strip_prefix(request.nonce.as_str())
                .ok_or_else(|| WebError::internal("minted token lost its prefix"))?;
            let mut url = url::Url::parse(&request.redirect_uri).map_err(WebError::internal)?;
            url.query_pairs_mut()
                .append_pair("state", &request.state)
                .append_pair("fragment", fragment)
                .append_pair("actor_name", &actor.name);
            Ok(see_other(url.as_str()))
        }
        None => {
            let mut response = see_other(&format!("/{}/", account.slug));
            jar(state, &account.slug).set(
                &mut response,
                cookies::SESSION,
                &minted.token,
                lifetime.as_secs(),
                true,
            );
            Ok(response)
        }
    }
}

/// The signed-in admin of this account, from the session cookie.
async fn web_admin(
    state: &AppState,
    account: &Account,
    headers: &HeaderMap,
) -> WebResult<Option<(Actor, uuid::Uuid)>> {
    let Some(presented) = cookies::get(headers, cookies::SESSION) else {
        return Ok(None);
    };
    let Some(record) =
        crate::auth::authenticate(&state.store, &presented, Timestamp::now()).await?
    else {
        return Ok(None);
    };
    if record.kind != TokenKind::Browser || record.account_id != Some(account.id) {
        return Ok(None);
    }
    let Some(actor_id) = record.actor_id else {
        return Ok(None);
    };
    let mut tx = state.store.read().await?;
    let actor = actors::get(&mut tx, account.id, actor_id).await?;
    tx.commit().await?;
    Ok(actor
        .filter(|a| a.role == Role::Admin && !a.disabled)
        .map(|a| (a, record.id)))
}

/// `GET /{account}/`: who is signed in (the full admin UI comes later).
pub async fn home(
    State(state): Shared,
    Path(slug): Path<String>,
    headers: HeaderMap,
) -> WebResult<Response> {
    let account = account(&state, &slug).await?;
    let Some((actor, _)) = web_admin(&state, &account, &headers).await? else {
        return Ok(see_other(&format!("/{}/sign_in", account.slug)));
    };
    let (csrf, fresh) = csrf_token(&headers)?;
    let body = format!(
        "<p>Signed in to <b>{}</b> as {} ({}).</p>\
         <p>The REST API is at <code>/api/v1</code>.</p>\
         <form method=\"post\" action=\"/{}/sign_out\">{}<button type=\"submit\">Sign out</button></form>",
        escape(&account.name),
        escape(&actor.name),
        escape(actor.email.as_deref().unwrap_or("no email")),
        escape(&account.slug),
        hidden("csrf", &csrf),
    );
    Ok(with_csrf(
        &state,
        &account.slug,
        &csrf,
        fresh,
        page(StatusCode::OK, "Postern", &body),
    ))
}

/// `POST /{account}/sign_out`: with `Authorization: Bearer <client token>`
/// revokes that token (what `postern client sign-out` does); from the web
/// page (CSRF-checked) ends the admin's session.
pub async fn sign_out(
    State(state): Shared,
    Path(slug): Path<String>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> WebResult<Response> {
    let account = account(&state, &slug).await?;
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    if let Some(presented) = bearer {
        let record = crate::auth::authenticate(&state.store, presented, Timestamp::now())
            .await?
            .filter(|r| r.kind == TokenKind::Client && r.account_id == Some(account.id))
            .ok_or_else(|| {
                WebError::new(
                    StatusCode::UNAUTHORIZED,
                    "The token is invalid, expired or revoked.",
                )
            })?;
        revoke(&state, &account, record.id).await?;
        return Ok(StatusCode::NO_CONTENT.into_response());
    }
    let csrf = url::form_urlencoded::parse(&body)
        .find(|(key, _)| key == "csrf")
        .map(|(_, value)| value.into_owned())
        .unwrap_or_default();
    if !cookies::csrf_ok(&headers, &csrf) {
        return Err(WebError::forbidden(
            "The form expired; reload the page and try again.",
        ));
    }
    if let Some((_, token_id)) = web_admin(&state, &account, &headers).await? {
        revoke(&state, &account, token_id).await?;
    }
    let mut response = see_other(&format!("/{}/sign_in", account.slug));
    jar(&state, &account.slug).set(&mut response, cookies::SESSION, "", 0, true);
    Ok(response)
}

async fn revoke(state: &AppState, account: &Account, token: uuid::Uuid) -> WebResult<()> {
    let mut tx = state.store.write().await?;
    tokens::delete(&mut tx, account.id, token).await?;
    tx.commit().await?;
    state.changed(account.id, Change::TokenRevoked(token));
    Ok(())
}
