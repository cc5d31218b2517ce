//! The end of every sign-in: a web session cookie (an admin's console, or a
//! user's own page at `/{account}/me`), or for a client sign-in a "connect
//! this device?" page whose yes hands a client token to the client's
//! loopback listener; sign-out.
//!
//! The question (review L3): a link that starts a client sign-in, opened by
//! someone with a live session at the identity provider, would otherwise
//! complete without a click and hand a token for them to whatever listens on
//! the link's loopback port. The page's form carries a `confirmation`: what
//! the sign-in established (account, actor, provider, the client's request,
//! an expiry), MACed with the portal's secret key together with this
//! browser's CSRF token, so only the browser that signed in can say yes, and
//! only to that. Nothing is stored meanwhile; a yes sent twice from that
//! browser mints a second token for the same challenge, which, like the
//! first, only the holder of the client's nonce can use.

use axum::Form;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jiff::{SignedDuration, Timestamp};
use serde::{Deserialize, Serialize};
use subtle::ConstantTimeEq as _;
use uuid::Uuid;

use super::html::{escape, hidden, page};
use super::{
    Peer, RequestMeta, Shared, WebError, WebResult, account, cookies, csrf_token, jar, secret_key,
    see_other, valid_redirect_uri, with_csrf,
};
use crate::auth::token;
use crate::domain::{Account, Actor, IdentityProvider, MintedToken, Role, TokenKind};
use crate::secrets::SecretKey;
use crate::state::{AppState, Change};
use crate::store::logs::{self, NewSession};
use crate::store::sign_in::ClientRequest;
use crate::store::tokens::{self, NewToken};
use crate::store::{actors, identity_providers};

/// A client token from a sign-in lives this long unless its provider says
/// otherwise.
pub const CLIENT_SESSION: SignedDuration = SignedDuration::from_hours(7 * 24);
/// A web session (an admin's or a user's).
pub const WEB_SESSION: SignedDuration = SignedDuration::from_hours(8);
/// How long the "connect this device?" page can be answered.
const CONFIRMATION_MS: i64 = 10 * 60 * 1000;
/// The MAC label of a confirmation.
const CONFIRMATION_LABEL: &str = "client sign-in confirmation";

/// Who may sign in at all: enabled users and admins. On the web an admin
/// gets the console, a user only their own page (`web_user`, `web_admin`).
fn may_sign_in(actor: &Actor) -> WebResult<()> {
    if actor.disabled {
        return Err(WebError::forbidden("This user is disabled."));
    }
    if actor.role == Role::ServiceAccount {
        return Err(WebError::forbidden("Service accounts cannot sign in."));
    }
    Ok(())
}

/// Where a web sign-in lands: the console for an admin, their own page for
/// a user.
fn home(account: &Account, actor: &Actor) -> String {
    if actor.role == Role::Admin {
        format!("/{}/", account.slug)
    } else {
        format!("/{}/me", account.slug)
    }
}

/// Ends a sign-in: a web session (landing on `home`); a client sign-in gets
/// the "connect this device?" page.
pub async fn finish(
    state: &AppState,
    account: &Account,
    actor: &Actor,
    provider: Option<&IdentityProvider>,
    client: Option<ClientRequest>,
    meta: &RequestMeta,
    headers: &HeaderMap,
) -> WebResult<Response> {
    may_sign_in(actor)?;
    if let Some(request) = client {
        return ask(state, account, actor, provider, request, headers);
    }
    let minted = issue(state, account, actor, provider, None, WEB_SESSION, meta).await?;
    let mut response = see_other(&home(account, actor));
    jar(state, &account.slug).set(
        &mut response,
        cookies::SESSION,
        &minted.token,
        WEB_SESSION.as_secs(),
        true,
    );
    Ok(response)
}

/// Mints and stores the token of a finished sign-in, with its session log
/// entry. A client token is bound to `challenge`.
async fn issue(
    state: &AppState,
    account: &Account,
    actor: &Actor,
    provider: Option<&IdentityProvider>,
    client_challenge: Option<&str>,
    lifetime: SignedDuration,
    meta: &RequestMeta,
) -> WebResult<MintedToken> {
    let now = Timestamp::now();
    let expires_at = now.checked_add(lifetime).map_err(WebError::internal)?;
    let (kind, minted) = match client_challenge {
        Some(challenge) => (TokenKind::Client, token::mint_client(challenge)),
        None => (TokenKind::Browser, token::mint()),
    };
    let minted = minted.map_err(WebError::internal)?;
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
            read_only: false,
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
            kind: if client_challenge.is_some() {
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
        client = client_challenge.is_some(),
        "signed in"
    );
    Ok(minted)
}

/// What a "connect this device?" form carries, MACed.
#[derive(Debug, PartialEq, Serialize, Deserialize)]
struct Confirmation {
    account: Uuid,
    actor: Uuid,
    provider: Option<Uuid>,
    state: String,
    challenge: String,
    redirect_uri: String,
    expires_at_ms: i64,
}

impl Confirmation {
    /// `<base64url(JSON)>.<MAC over this browser's CSRF token and it>`.
    fn seal(&self, key: &SecretKey, csrf: &str) -> WebResult<String> {
        let json = serde_json::to_vec(self).map_err(WebError::internal)?;
        let payload = URL_SAFE_NO_PAD.encode(json);
        let mac = key.mac(CONFIRMATION_LABEL, &format!("{csrf}\n{payload}"));
        Ok(format!("{payload}.{mac}"))
    }

    /// The confirmation `sealed` for this browser (`csrf`) and account, if
    /// genuine and not expired.
    fn open(
        key: &SecretKey,
        csrf: &str,
        sealed: &str,
        account: Uuid,
        now_ms: i64,
    ) -> WebResult<Confirmation> {
        let refused = || {
            WebError::bad_request(
                "This confirmation is not valid here or has expired; run \
                 `postern client sign-in` again.",
            )
        };
        if sealed.len() > 4096 {
            return Err(refused());
        }
        let (payload, mac) = sealed.rsplit_once('.').ok_or_else(refused)?;
        let expected = key.mac(CONFIRMATION_LABEL, &format!("{csrf}\n{payload}"));
        if !bool::from(expected.as_bytes().ct_eq(mac.as_bytes())) {
            return Err(refused());
        }
        let json = URL_SAFE_NO_PAD.decode(payload).map_err(|_| refused())?;
        let confirmation: Confirmation = serde_json::from_slice(&json).map_err(|_| refused())?;
        if confirmation.account != account || confirmation.expires_at_ms <= now_ms {
            return Err(refused());
        }
        Ok(confirmation)
    }
}

/// The "connect this device?" page.
fn ask(
    state: &AppState,
    account: &Account,
    actor: &Actor,
    provider: Option<&IdentityProvider>,
    request: ClientRequest,
    headers: &HeaderMap,
) -> WebResult<Response> {
    let (csrf, fresh) = csrf_token(headers)?;
    let listener = url::Url::parse(&request.redirect_uri)
        .ok()
        .and_then(|url| Some(format!("{}:{}", url.host_str()?, url.port()?)))
        .unwrap_or_default();
    let confirmation = Confirmation {
        account: account.id,
        actor: actor.id,
        provider: provider.map(|p| p.id),
        state: request.state,
        challenge: request.challenge,
        redirect_uri: request.redirect_uri,
        expires_at_ms: Timestamp::now().as_millisecond() + CONFIRMATION_MS,
    }
    .seal(secret_key(state)?, &csrf)?;
    tracing::info!(
        account = %account.slug,
        actor = %actor.id,
        "client sign-in waits for the user's confirmation"
    );
    let body = format!(
        "<p>Connect this device to <b>{}</b> as {} ({})?</p>\
         <p>This was asked by <code>postern client sign-in</code>, which waits on this \
         computer at <code>{}</code>. Connect only if you started it just now; \
         otherwise close this page.</p>\
         <form method=\"post\" action=\"/{}/sign_in/confirm\">{}{}\
         <button type=\"submit\">Connect this device</button></form>",
        escape(&account.name),
        escape(&actor.name),
        escape(actor.email.as_deref().unwrap_or("no email")),
        escape(&listener),
        escape(&account.slug),
        hidden("csrf", &csrf),
        hidden("confirmation", &confirmation),
    );
    Ok(with_csrf(
        state,
        &account.slug,
        &csrf,
        fresh,
        page(StatusCode::OK, "Connect this device?", &body),
    ))
}

/// The "connect this device?" form.
#[derive(Deserialize)]
pub struct ConfirmForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    confirmation: String,
}

/// `POST /{account}/sign_in/confirm`: the user's yes. Mints the client token
/// and redirects to the client's loopback listener with its `state` and the
/// token's fragment; the client joins its nonce to it.
pub async fn confirm(
    State(state): Shared,
    Path(slug): Path<String>,
    peer: Peer,
    headers: HeaderMap,
    Form(form): Form<ConfirmForm>,
) -> WebResult<Response> {
    let account = account(&state, &slug).await?;
    if !cookies::csrf_ok(&headers, &form.csrf) {
        return Err(WebError::forbidden(
            "The form expired; reload the page and try again.",
        ));
    }
    let now = Timestamp::now();
    let confirmation = Confirmation::open(
        secret_key(&state)?,
        &form.csrf,
        &form.confirmation,
        account.id,
        now.as_millisecond(),
    )?;
    // Checked when the page was made; again, as the MAC only vouches for what
    // the portal wrote.
    let redirect_uri = valid_redirect_uri(&confirmation.redirect_uri)?;
    if !token::valid_challenge(&confirmation.challenge) {
        return Err(WebError::bad_request("The confirmation is not valid."));
    }
    let mut tx = state.store.read().await?;
    let actor = actors::get(&mut tx, account.id, confirmation.actor).await?;
    let provider = match confirmation.provider {
        Some(id) => Some(
            identity_providers::get(&mut tx, account.id, id)
                .await?
                .ok_or_else(|| {
                    WebError::bad_request(
                        "The identity provider of this sign-in was removed; start again.",
                    )
                })?,
        ),
        None => None,
    };
    tx.commit().await?;
    // Disabled, demoted or deleted since the page was shown: no token.
    let actor = actor.ok_or_else(|| WebError::forbidden("This user no longer exists."))?;
    may_sign_in(&actor)?;
    let lifetime = provider
        .as_ref()
        .and_then(|p| p.client_session_lifetime_secs)
        .map_or(CLIENT_SESSION, SignedDuration::from_secs);
    let meta = RequestMeta::of(peer.0, &headers);
    let minted = issue(
        &state,
        &account,
        &actor,
        provider.as_ref(),
        Some(&confirmation.challenge),
        lifetime,
        &meta,
    )
    .await?;
    // Only the fragment travels; the token is the client's nonce, `~` and it.
    let mut url = url::Url::parse(&redirect_uri).map_err(WebError::internal)?;
    url.query_pairs_mut()
        .append_pair("state", &confirmation.state)
        .append_pair("fragment", &minted.token)
        .append_pair("actor_name", &actor.name);
    Ok(see_other(url.as_str()))
}

/// The signed-in user or admin of this account, from the session cookie,
/// with the session token's id: a live browser token of this account whose
/// actor exists, is enabled and may sign in. No other kind of token (an API
/// token, a client's) is a web session, and a session of another account is
/// none here.
pub(crate) async fn web_user(
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
        .filter(|a| may_sign_in(a).is_ok())
        .map(|a| (a, record.id)))
}

/// The signed-in admin of this account: `web_user` when the actor is an
/// admin (now, not when they signed in: a demoted admin's session is a
/// user's).
pub(crate) async fn web_admin(
    state: &AppState,
    account: &Account,
    headers: &HeaderMap,
) -> WebResult<Option<(Actor, uuid::Uuid)>> {
    Ok(web_user(state, account, headers)
        .await?
        .filter(|(actor, _)| actor.role == Role::Admin))
}

/// `POST /{account}/sign_out`: with `Authorization: Bearer <client token>`
/// revokes that token (what `postern client sign-out` does); from the web
/// page (CSRF-checked) ends the browser's session, an admin's or a user's.
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
    if let Some((_, token_id)) = web_user(&state, &account, &headers).await? {
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
