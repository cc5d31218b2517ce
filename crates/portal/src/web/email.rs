//! Email one-time codes in the browser (SPEC F1): ask for a code, type it.
//! The answer to "send me a code" is the same, and takes the same time,
//! whether or not the address belongs to a user: the work happens after
//! the response, in the background.

use std::time::Instant;

use axum::Form;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use jiff::Timestamp;
use serde::Deserialize;
use sha2::{Digest, Sha256};
use uuid::Uuid;

use super::html::{escape, hidden, page};
use super::{ClientParams, Peer, RequestMeta, Shared, WebError, WebResult, account, cookies};
use crate::auth::email::{
    ATTEMPTS, CODE_LIFETIME_MS, hash_code, new_code, normalize_code, verify_code,
};
use crate::domain::{Account, Role};
use crate::state::AppState;
use crate::store::{actors, sign_in};

/// The fields of both email forms (the code only in the second).
#[derive(Deserialize)]
pub struct EmailForm {
    #[serde(default)]
    email: String,
    #[serde(default)]
    code: String,
    #[serde(default)]
    csrf: String,
    #[serde(flatten)]
    client: ClientParams,
}

/// What both forms check first: the account, the CSRF token, the client
/// parameters and the address.
struct Checked {
    account: Account,
    client: Option<sign_in::ClientRequest>,
    email: String,
    meta: RequestMeta,
}

async fn check(
    state: &AppState,
    slug: &str,
    peer: Peer,
    headers: &HeaderMap,
    form: &EmailForm,
) -> WebResult<Checked> {
    let account = account(state, slug).await?;
    if !cookies::csrf_ok(headers, &form.csrf) {
        return Err(WebError::forbidden(
            "The form expired; reload the page and try again.",
        ));
    }
    Ok(Checked {
        client: form.client.request()?,
        email: normalize_email(&form.email)?,
        meta: RequestMeta::of(peer.0, headers),
        account,
    })
}

/// A rate-limit key for one address of one account, or one IP.
pub(super) fn limit_key(kind: &str, account: Uuid, value: &str) -> Uuid {
    let digest = Sha256::new()
        .chain_update(kind.as_bytes())
        .chain_update([0])
        .chain_update(account.as_bytes())
        .chain_update(value.as_bytes())
        .finalize();
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&digest[..16]);
    Uuid::from_bytes(bytes)
}

/// Checks the per-IP bucket and, when asking for a code, the per-address one.
pub(super) fn rate_limited(state: &AppState, ip: Uuid, address: Option<Uuid>) -> WebResult<()> {
    let now = Instant::now();
    let checks = [
        Some((&state.sign_in_ip_limiter, ip)),
        address.map(|key| (&state.sign_in_limiter, key)),
    ];
    for (limiter, key) in checks.into_iter().flatten() {
        if let Err(wait) = limiter.check(key, now) {
            return Err(WebError::new(
                StatusCode::TOO_MANY_REQUESTS,
                format!(
                    "Too many sign-in attempts; try again in {} seconds.",
                    wait.as_secs().max(1)
                ),
            ));
        }
    }
    Ok(())
}

fn normalize_email(email: &str) -> WebResult<String> {
    let email = email.trim().to_ascii_lowercase();
    if email.len() > 254 || !crate::setup::validate_email(&email) {
        return Err(WebError::bad_request("That is not an email address."));
    }
    Ok(email)
}

fn code_form(
    account: &Account,
    email: &str,
    csrf: &str,
    client: &Option<sign_in::ClientRequest>,
    note: &str,
) -> String {
    format!(
        "<p>{note}</p>\
         <form method=\"post\" action=\"/{}/sign_in/email/verify\">\
         <label>Code <input name=\"code\" inputmode=\"numeric\" autocomplete=\"one-time-code\" required autofocus></label> \
         {}{}{}<button type=\"submit\">Sign in</button></form>\
         <p><a href=\"/{}/sign_in{}\">Start again</a></p>",
        escape(&account.slug),
        hidden("email", email),
        hidden("csrf", csrf),
        ClientParams::hidden_fields(client.as_ref()),
        escape(&account.slug),
        escape(&ClientParams::query(client.as_ref())),
    )
}

/// `POST /{account}/sign_in/email`.
pub async fn request_code(
    State(state): Shared,
    Path(slug): Path<String>,
    peer: Peer,
    headers: HeaderMap,
    Form(form): Form<EmailForm>,
) -> WebResult<Response> {
    let Checked {
        account,
        client,
        email,
        meta,
    } = check(&state, &slug, peer, &headers, &form).await?;
    rate_limited(
        &state,
        limit_key("ip", account.id, &meta.ip.to_string()),
        Some(limit_key("email", account.id, &email)),
    )?;
    let background = state.clone();
    let (account_id, account_slug, to) = (account.id, account.slug.clone(), email.clone());
    tokio::spawn(async move {
        if let Err(error) = send_code(&background, account_id, &account_slug, &to).await {
            tracing::warn!(%error, account = %account_slug, "cannot send a sign-in code");
        }
    });
    let note = format!(
        "If {} belongs to a user of {}, a sign-in code is on its way. It works once, for 15 minutes.",
        escape(&email),
        escape(&account.name)
    );
    let body = code_form(&account, &email, &form.csrf, &client, &note);
    Ok(page(StatusCode::OK, "Check your email", &body))
}

/// Stores a fresh code for a user with this address and mails it; does
/// nothing for unknown, disabled or service-account addresses.
async fn send_code(state: &AppState, account: Uuid, slug: &str, email: &str) -> anyhow::Result<()> {
    let mut tx = state.store.read().await?;
    let actor = actors::by_email(&mut tx, account, email).await?;
    tx.commit().await?;
    let Some(actor) = actor.filter(|a| !a.disabled && a.role != Role::ServiceAccount) else {
        tracing::info!(
            account = slug,
            "sign-in code asked for an address with no user"
        );
        return Ok(());
    };
    let code = new_code()?;
    let hashed = {
        let code = code.clone();
        tokio::task::spawn_blocking(move || hash_code(&code)).await??
    };
    let mut tx = state.store.write().await?;
    sign_in::put_email_code(
        &mut tx,
        account,
        email,
        &sign_in::EmailCode {
            actor_id: actor.id,
            hash: hashed,
            attempts_left: ATTEMPTS,
            expires_at_ms: Timestamp::now().as_millisecond() + CODE_LIFETIME_MS,
        },
    )
    .await?;
    tx.commit().await?;
    state.mailer.send_code(email, slug, &code).await?;
    Ok(())
}

/// `POST /{account}/sign_in/email/verify`.
pub async fn verify(
    State(state): Shared,
    Path(slug): Path<String>,
    peer: Peer,
    headers: HeaderMap,
    Form(form): Form<EmailForm>,
) -> WebResult<Response> {
    let Checked {
        account,
        client,
        email,
        meta,
    } = check(&state, &slug, peer, &headers, &form).await?;
    rate_limited(
        &state,
        limit_key("verify-ip", account.id, &meta.ip.to_string()),
        None,
    )?;
    let typed = normalize_code(&form.code);
    let wrong = || {
        let body = code_form(
            &account,
            &email,
            &form.csrf,
            &client,
            "<span class=\"error\">That code is wrong, used or expired.</span> \
             After 3 wrong tries a code stops working: ask for a new one.",
        );
        Ok(page(StatusCode::UNAUTHORIZED, "Check your email", &body))
    };
    let mut tx = state.store.read().await?;
    let pending = sign_in::email_code(&mut tx, account.id, &email).await?;
    tx.commit().await?;
    let now = Timestamp::now().as_millisecond();
    let Some(pending) = pending.filter(|p| p.expires_at_ms > now && p.attempts_left > 0) else {
        return wrong();
    };
    let matches = {
        let (typed, hash) = (typed.clone(), pending.hash.clone());
        tokio::task::spawn_blocking(move || typed.len() <= 64 && verify_code(&typed, &hash))
            .await
            .map_err(WebError::internal)?
    };
    let mut tx = state.store.write().await?;
    // Another request may have used or spent the code meanwhile.
    let current = sign_in::email_code(&mut tx, account.id, &email).await?;
    if !current.is_some_and(|c| c.hash == pending.hash && c.attempts_left > 0) {
        tx.commit().await?;
        return wrong();
    }
    if !matches {
        sign_in::spend_email_attempt(&mut tx, account.id, &email).await?;
        tx.commit().await?;
        return wrong();
    }
    sign_in::delete_email_code(&mut tx, account.id, &email).await?;
    let actor = actors::get(&mut tx, account.id, pending.actor_id).await?;
    tx.commit().await?;
    let actor = actor.ok_or_else(|| WebError::forbidden("This user no longer exists."))?;
    super::session::finish(&state, &account, &actor, None, client, &meta).await
}
