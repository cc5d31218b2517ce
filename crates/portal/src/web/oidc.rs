//! OpenID Connect in the browser (SPEC F2): the redirect to the provider and
//! its callback. The pending sign-in (nonce, PKCE verifier, the client's
//! request with its challenge, never its nonce) is kept in the store under a keyed hash of `state`, so any portal
//! node can take the callback, and only once; a cookie binds it to the
//! browser that started it.

use std::sync::OnceLock;

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use jiff::Timestamp;
use serde::Deserialize;
use uuid::Uuid;

use super::{
    ClientParams, Peer, RequestMeta, Shared, WebError, WebResult, account, cookies, jar, see_other,
};
use crate::api::identity_providers::callback_url;
use crate::auth::identity::{self, MappingError};
use crate::auth::oidc::{self, OidcError, ProviderConfig, ProviderHttp, Reach};
use crate::auth::token::{random_bytes, random_secret};
use crate::domain::{Account, IdentityProvider};
use crate::secrets::SecretKey;
use crate::state::{AppState, Change};
use crate::store::identity_providers;
use crate::store::sign_in::{self, PendingOidc};

/// How long a user has at the provider.
const PENDING_MS: i64 = 10 * 60 * 1000;

fn key(state: &AppState) -> WebResult<&SecretKey> {
    super::secret_key(state)
}

/// The client for provider calls, one per reach (made once).
fn http(state: &AppState) -> WebResult<&'static ProviderHttp> {
    static PUBLIC: OnceLock<ProviderHttp> = OnceLock::new();
    static DEVELOPMENT: OnceLock<ProviderHttp> = OnceLock::new();
    let reach = Reach::of_portal(state.external_url.as_deref());
    let cell = match reach {
        Reach::Public => &PUBLIC,
        Reach::Development => &DEVELOPMENT,
    };
    if let Some(client) = cell.get() {
        return Ok(client);
    }
    let client = ProviderHttp::new(reach).map_err(WebError::internal)?;
    Ok(cell.get_or_init(|| client))
}

/// The base URL browsers use: `--external-url`, never the request's Host
/// header (a forged Host would otherwise pick the redirect URI).
fn base_url(state: &AppState) -> WebResult<String> {
    match &state.external_url {
        Some(url) => Ok(url.trim_end_matches('/').to_string()),
        None => {
            tracing::error!(
                "OpenID Connect sign-in needs --external-url (the redirect URI is built from it)"
            );
            Err(WebError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "Sign-in with an identity provider needs the portal's external URL \
                 (--external-url), which is not set; tell an admin.",
            ))
        }
    }
}

async fn provider(state: &AppState, account: &Account, id: &str) -> WebResult<IdentityProvider> {
    let not_found = || WebError::new(StatusCode::NOT_FOUND, "There is no such identity provider.");
    let id = Uuid::try_parse(id).map_err(|_| not_found())?;
    let mut tx = state.store.read().await?;
    let provider = identity_providers::get(&mut tx, account.id, id).await?;
    tx.commit().await?;
    provider.ok_or_else(not_found)
}

fn config(
    state: &AppState,
    account: &Account,
    provider: &IdentityProvider,
    base: &str,
) -> WebResult<ProviderConfig> {
    let secret = key(state)?
        .open(&provider.sealed_client_secret, &provider.id.to_string())
        .map_err(WebError::internal)?;
    let mut wanted_claims = Vec::new();
    wanted_claims.extend(provider.groups_claim.clone());
    wanted_claims.extend(provider.admin_claim.clone());
    Ok(ProviderConfig {
        issuer: provider.issuer.clone(),
        client_id: provider.client_id.clone(),
        client_secret: secret,
        redirect_uri: callback_url(base, &account.slug, provider.id),
        wanted_claims,
    })
}

/// A generic page for a failed provider exchange: what went wrong in our
/// words, never the provider's or the HTTP client's (they can carry internal
/// addresses, ports and answers); the details go to the log under a
/// reference the page shows.
fn provider_failed(error: OidcError) -> WebError {
    let mut bytes = [0u8; 4];
    let reference = match random_bytes(&mut bytes) {
        Ok(()) => bytes.iter().map(|b| format!("{b:02x}")).collect::<String>(),
        Err(_) => "none".to_string(),
    };
    tracing::warn!(%error, %reference, "OpenID Connect sign-in refused");
    let (status, what) = match error {
        OidcError::Discovery(_) | OidcError::Config(_) => (
            StatusCode::BAD_GATEWAY,
            "The identity provider cannot be reached or is not set up right.",
        ),
        OidcError::UserInfo(_) => (
            StatusCode::BAD_GATEWAY,
            "The identity provider's user information could not be read.",
        ),
        OidcError::Exchange(_) => (
            StatusCode::UNAUTHORIZED,
            "The identity provider did not accept this sign-in.",
        ),
        OidcError::NoIdToken | OidcError::InvalidIdToken(_) => (
            StatusCode::UNAUTHORIZED,
            "The identity provider's answer (its ID token) is not valid.",
        ),
    };
    WebError::new(
        status,
        format!("{what} Start again, and tell an admin if it persists (reference {reference})."),
    )
}

/// The error codes of RFC 6749 section 4.1.2.1 and OpenID Connect; anything
/// else a callback carries is not shown.
const CALLBACK_ERRORS: &[&str] = &[
    "access_denied",
    "invalid_request",
    "unauthorized_client",
    "unsupported_response_type",
    "invalid_scope",
    "server_error",
    "temporarily_unavailable",
    "interaction_required",
    "login_required",
    "account_selection_required",
    "consent_required",
];

/// `GET /{account}/sign_in/oidc/{provider}`.
pub async fn start(
    State(state): Shared,
    Path((slug, provider_id)): Path<(String, String)>,
    Query(params): Query<ClientParams>,
    peer: Peer,
) -> WebResult<Response> {
    let account = account(&state, &slug).await?;
    let client = params.request()?;
    super::email::rate_limited(
        &state,
        super::email::limit_key("oidc-ip", account.id, &peer.0.to_string()),
        None,
    )?;
    let provider = provider(&state, &account, &provider_id).await?;
    let config = config(&state, &account, &provider, &base_url(&state)?)?;
    let random = || random_secret().map_err(WebError::internal);
    let (oidc_state, nonce) = (random()?, random()?);
    let (url, pkce_verifier) = oidc::authorization(http(&state)?, &config, &oidc_state, &nonce)
        .await
        .map_err(provider_failed)?;
    let mut tx = state.store.write().await?;
    sign_in::put_oidc(
        &mut tx,
        account.id,
        &key(&state)?.mac("oidc state", &oidc_state),
        &PendingOidc {
            provider_id: provider.id,
            nonce,
            pkce_verifier,
            client,
            expires_at_ms: Timestamp::now().as_millisecond() + PENDING_MS,
        },
        Timestamp::now().as_millisecond(),
    )
    .await?;
    tx.commit().await?;
    let mut response = see_other(&url);
    jar(&state, &account.slug).set(
        &mut response,
        cookies::OIDC_STATE,
        &oidc_state,
        PENDING_MS / 1000,
        true,
    );
    Ok(response)
}

#[derive(Deserialize)]
pub struct CallbackQuery {
    code: Option<String>,
    state: Option<String>,
    error: Option<String>,
    error_description: Option<String>,
}

/// `GET /{account}/sign_in/oidc/{provider}/callback`.
pub async fn callback(
    State(state): Shared,
    Path((slug, provider_id)): Path<(String, String)>,
    Query(query): Query<CallbackQuery>,
    peer: Peer,
    headers: HeaderMap,
) -> WebResult<Response> {
    let account = account(&state, &slug).await?;
    if let Some(error) = &query.error {
        let description: Option<String> = query
            .error_description
            .as_deref()
            .map(|d| d.chars().take(256).collect());
        tracing::info!(
            error = %error.chars().take(64).collect::<String>(),
            description = ?description,
            "the identity provider did not sign the user in"
        );
        let shown = CALLBACK_ERRORS
            .iter()
            .find(|known| **known == error)
            .unwrap_or(&"an error");
        return Err(WebError::new(
            StatusCode::UNAUTHORIZED,
            format!("The identity provider did not sign you in ({shown})."),
        ));
    }
    let (Some(code), Some(oidc_state)) = (&query.code, &query.state) else {
        return Err(WebError::bad_request("The callback lacks code or state."));
    };
    let bound = cookies::get(&headers, cookies::OIDC_STATE);
    if bound.as_deref() != Some(oidc_state.as_str()) {
        return Err(WebError::bad_request(
            "This sign-in was started in another browser (or its cookie expired); start again.",
        ));
    }
    let now = Timestamp::now().as_millisecond();
    let mut tx = state.store.write().await?;
    let pending = sign_in::take_oidc(
        &mut tx,
        account.id,
        &key(&state)?.mac("oidc state", oidc_state),
        now,
    )
    .await?;
    tx.commit().await?;
    let pending = pending.ok_or_else(|| {
        WebError::bad_request("This sign-in was already used or has expired; start again.")
    })?;
    let provider = provider(&state, &account, &provider_id).await?;
    if provider.id != pending.provider_id {
        return Err(WebError::bad_request(
            "This sign-in belongs to another identity provider.",
        ));
    }
    let config = config(&state, &account, &provider, &base_url(&state)?)?;
    let identity = oidc::complete(
        http(&state)?,
        &config,
        code,
        &pending.pkce_verifier,
        &pending.nonce,
    )
    .await
    .map_err(provider_failed)?;
    let mut tx = state.store.write().await?;
    let mapped = match identity::map(&mut tx, account.id, &provider, &identity, now).await {
        Ok(mapped) => mapped,
        Err(MappingError::Store(error)) => return Err(error.into()),
        Err(refused) => {
            return Err(WebError::forbidden(format!(
                "Signed in at the provider, but {refused}."
            )));
        }
    };
    tx.commit().await?;
    if mapped.changed {
        state.changed(account.id, Change::Actors(vec![mapped.actor.id]));
    }
    let meta = RequestMeta::of(peer.0, &headers);
    let mut response = super::session::finish(
        &state,
        &account,
        &mapped.actor,
        Some(&provider),
        pending.client,
        &meta,
        &headers,
    )
    .await?;
    jar(&state, &account.slug).set(&mut response, cookies::OIDC_STATE, "", 0, true);
    Ok(response)
}
