//! Email one-time codes in the browser (SPEC F1): ask for a code, type it.
//! The answer to "send me a code" is the same, and takes the same time,
//! whether or not the address belongs to a user: the work happens after
//! the response, in the background.

use std::net::IpAddr;
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
use super::{
    ClientParams, Peer, RequestMeta, Shared, WebError, WebResult, account, cookies, secret_key,
};
use crate::auth::email::{
    ADDRESS_LIMIT, CODE_LIFETIME_MS, RESEND_MIN_LEFT_MS, SOURCE_LIMIT, hash_code, new_code,
    normalize_code, verify_or_pretend,
};
use crate::domain::{Account, Role};
use crate::secrets::SecretKey;
use crate::state::AppState;
use crate::store::actors;
use crate::store::sign_in::{self, Guess};

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
    // The API's rule (at most 254 characters, not bytes): an address the
    // API accepts can sign in.
    if !crate::setup::validate_email(&email) {
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
        None,
    )?;
    // Past the address's bucket no more mail goes out, but the answer is the
    // same: the code already sent still works (asking again resends it, never
    // replaces it), so someone asking for codes for another person's address
    // cannot keep them from signing in.
    let send = state
        .sign_in_limiter
        .check(limit_key("email", account.id, &email), Instant::now())
        .is_ok();
    if send {
        let background = state.clone();
        let (account_id, account_slug, to) = (account.id, account.slug.clone(), email.clone());
        tokio::spawn(async move {
            if let Err(error) = send_code(&background, account_id, &account_slug, &to).await {
                tracing::warn!(%error, account = %account_slug, "cannot send a sign-in code");
            }
        });
    } else {
        tracing::info!(
            account = %account.slug,
            "sign-in code not sent again: codes were asked for this address too often"
        );
    }
    let note = format!(
        "If {} belongs to a user of {}, a sign-in code is on its way. A code works once, \
         for 15 minutes from when it was first sent; asking again sends the same code.",
        escape(&email),
        escape(&account.name)
    );
    let body = code_form(&account, &email, &form.csrf, &client, &note);
    Ok(page(StatusCode::OK, "Check your email", &body))
}

/// What a code is sealed to: one address of one account.
fn code_context(account: Uuid, email: &str) -> String {
    format!("email code\n{account}\n{email}")
}

/// Mails the pending code of a user with this address, or a fresh one when
/// there is none (or it is about to expire); does nothing for unknown,
/// disabled or service-account addresses.
async fn send_code(state: &AppState, account: Uuid, slug: &str, email: &str) -> anyhow::Result<()> {
    let key = state
        .secret_key
        .as_ref()
        .ok_or_else(|| anyhow::anyhow!("the portal has no secret key"))?;
    let now = Timestamp::now().as_millisecond();
    let mut tx = state.store.write().await?;
    sign_in::prune_guesses(&mut tx, &SOURCE_LIMIT, now).await?;
    tx.commit().await?;
    let mut tx = state.store.read().await?;
    let actor = actors::by_email(&mut tx, account, email).await?;
    let pending = sign_in::email_code(&mut tx, account, email).await?;
    tx.commit().await?;
    let Some(actor) = actor.filter(|a| !a.disabled && a.role != Role::ServiceAccount) else {
        tracing::info!(
            account = slug,
            "sign-in code asked for an address with no user"
        );
        return Ok(());
    };
    let context = code_context(account, email);
    let keep_if_valid_at = now + RESEND_MIN_LEFT_MS;
    let open = |code: Option<sign_in::EmailCode>| {
        code.filter(|c| c.actor_id == actor.id && c.expires_at_ms > keep_if_valid_at)
            .and_then(|c| c.sealed)
            .and_then(|sealed| key.open(&sealed, &context).ok())
    };
    let code = match open(pending) {
        Some(code) => code,
        None => {
            let code = new_code()?;
            let hashed = {
                let code = code.clone();
                tokio::task::spawn_blocking(move || hash_code(&code)).await??
            };
            let fresh = sign_in::EmailCode {
                actor_id: actor.id,
                hash: hashed,
                sealed: Some(key.seal(&code, &context)?),
                expires_at_ms: now + CODE_LIFETIME_MS,
            };
            let mut tx = state.store.write().await?;
            let current = sign_in::put_email_code_unless_pending(
                &mut tx,
                account,
                email,
                &fresh,
                keep_if_valid_at,
            )
            .await?;
            tx.commit().await?;
            // Another request may have stored its code first: that one is
            // pending, and is the one to send.
            open(current).ok_or_else(|| anyhow::anyhow!("the pending code cannot be opened"))?
        }
    };
    state.mailer.send_code(email, slug, &code).await?;
    Ok(())
}

/// Whom a guess is counted against: the address, and the address from the
/// guesser's network. Keyed hashes: the table never holds an address.
struct Subjects {
    address: String,
    source: String,
}

impl Subjects {
    fn of(key: &SecretKey, email: &str, ip: IpAddr) -> Subjects {
        Subjects {
            address: key.mac("sign-in address", email),
            source: key.mac("sign-in source", &format!("{email}\n{}", network_of(ip))),
        }
    }
}

/// The network a guess comes from: an IPv4 address, or an IPv6 /64 (one
/// host usually has a whole /64 to pick addresses from).
pub(super) fn network_of(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => v4.to_string(),
            None => {
                let s = v6.segments();
                format!("{:x}:{:x}:{:x}:{:x}::/64", s[0], s[1], s[2], s[3])
            }
        },
    }
}

/// Counts the guess against the network, then the address; the first lock
/// found wins (and the address is not counted for a locked network).
async fn reserve(
    tx: &mut crate::store::Tx,
    account: Uuid,
    subjects: &Subjects,
    now: i64,
) -> WebResult<Guess> {
    let source = sign_in::reserve_guess(tx, account, &subjects.source, &SOURCE_LIMIT, now).await?;
    if source != Guess::Allowed {
        return Ok(source);
    }
    Ok(sign_in::reserve_guess(tx, account, &subjects.address, &ADDRESS_LIMIT, now).await?)
}

/// `POST /{account}/sign_in/email/verify`. Every typed code counts as a
/// wrong guess before it is checked (forgiven when it is right), in the same
/// transaction that checks the locks: parallel requests cannot get more
/// guesses than the limits allow.
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
    let subjects = Subjects::of(secret_key(&state)?, &email, meta.ip);
    let typed = normalize_code(&form.code);
    let wrong = || {
        let body = code_form(
            &account,
            &email,
            &form.csrf,
            &client,
            "<span class=\"error\">That code is wrong, used or expired.</span> \
             After 3 wrong tries, sign-in with this address waits a while.",
        );
        Ok(page(StatusCode::UNAUTHORIZED, "Check your email", &body))
    };
    let now = Timestamp::now().as_millisecond();
    let mut tx = state.store.write().await?;
    let guess = reserve(&mut tx, account.id, &subjects, now).await?;
    let pending = match guess {
        Guess::Allowed => sign_in::email_code(&mut tx, account.id, &email).await?,
        Guess::Locked { .. } => None,
    };
    tx.commit().await?;
    if let Guess::Locked { until_ms } = guess {
        let minutes = ((until_ms - now).max(0) + 59_999) / 60_000;
        let minutes = minutes.max(1);
        tracing::info!(account = %account.slug, minutes, "email code guess refused: locked");
        return Err(WebError::new(
            StatusCode::TOO_MANY_REQUESTS,
            format!(
                "Too many wrong codes for this address; try again in {minutes} minutes, \
                 or sign in another way."
            ),
        ));
    }
    // Unknown address, no code or an expired one: the same Argon2 work.
    let pending = pending.filter(|p| p.expires_at_ms > now);
    let hash = pending.as_ref().map(|p| p.hash.clone());
    let matches = tokio::task::spawn_blocking(move || verify_or_pretend(&typed, hash.as_deref()))
        .await
        .map_err(WebError::internal)?;
    let Some(pending) = pending.filter(|_| matches) else {
        return wrong();
    };
    let mut tx = state.store.write().await?;
    // Single use, also when the right code arrives twice at once.
    if !sign_in::take_email_code(&mut tx, account.id, &email, &pending.hash).await? {
        tx.commit().await?;
        return wrong();
    }
    sign_in::clear_guesses(&mut tx, account.id, &subjects.source).await?;
    sign_in::forgive_guess(&mut tx, account.id, &subjects.address).await?;
    let actor = actors::get(&mut tx, account.id, pending.actor_id).await?;
    tx.commit().await?;
    let actor = actor.ok_or_else(|| WebError::forbidden("This user no longer exists."))?;
    super::session::finish(&state, &account, &actor, None, client, &meta, &headers).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guesses_are_counted_per_ipv4_address_and_ipv6_64() {
        let of = |ip: &str| network_of(ip.parse().unwrap());
        assert_eq!(of("192.0.2.7"), "192.0.2.7");
        assert_eq!(of("::ffff:192.0.2.7"), "192.0.2.7");
        assert_eq!(of("2001:db8:1:2:aaaa::1"), "2001:db8:1:2::/64");
        assert_eq!(of("2001:db8:1:2:ffff::9"), of("2001:db8:1:2::1"));
        assert_ne!(of("2001:db8:1:3::1"), of("2001:db8:1:2::1"));
    }
}
