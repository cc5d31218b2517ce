//! What sign-ins keep between requests: identities (a provider's subject ->
//! an actor), pending email codes and the count of wrong ones, pending OIDC
//! sign-ins; and the memberships a provider's groups claim makes.

use sqlx::Row;
use uuid::Uuid;

use super::{Conn, Result, classify, opt_uuid_column, uuid_column};

/// The actor an identity of `provider` with `subject` belongs to.
pub async fn actor_of_identity(
    conn: &mut Conn,
    account: Uuid,
    provider: Uuid,
    subject: &str,
) -> Result<Option<Uuid>> {
    let row = sqlx::query(
        "SELECT actor_id FROM identities WHERE account_id = $1 AND provider_id = $2 \
         AND subject = $3",
    )
    .bind(account.to_string())
    .bind(provider.to_string())
    .bind(subject)
    .fetch_optional(&mut *conn)
    .await?;
    row.map(|row| uuid_column(&row, "identities", "actor_id"))
        .transpose()
}

/// Links `subject` at `provider` to `actor`, or notes the sign-in time.
pub async fn upsert_identity(
    conn: &mut Conn,
    account: Uuid,
    actor: Uuid,
    provider: Uuid,
    subject: &str,
    email: Option<&str>,
    now_ms: i64,
) -> Result<()> {
    sqlx::query(
        "INSERT INTO identities (id, account_id, actor_id, provider_id, subject, email, \
         created_at, last_signed_in_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $7) \
         ON CONFLICT (provider_id, subject) DO UPDATE SET last_signed_in_at = $7, email = $6",
    )
    .bind(Uuid::new_v4().to_string())
    .bind(account.to_string())
    .bind(actor.to_string())
    .bind(provider.to_string())
    .bind(subject)
    .bind(email)
    .bind(now_ms)
    .execute(&mut *conn)
    .await
    .map_err(classify)?;
    Ok(())
}

/// A pending email code.
#[derive(Clone, Debug)]
pub struct EmailCode {
    pub actor_id: Uuid,
    /// Argon2 PHC string: what a typed code is checked against.
    pub hash: String,
    /// The code sealed under the portal's secret key, to send it again
    /// (`None` for a code stored before migration 6).
    pub sealed: Option<String>,
    pub expires_at_ms: i64,
}

/// Stores `code` for `email` unless the pending code is still good at
/// `keep_if_valid_at_ms` (and is for the same actor): asking again resends
/// a code rather than replacing the one already on its way. Returns the code
/// pending afterwards, the new one or the one kept.
pub async fn put_email_code_unless_pending(
    conn: &mut Conn,
    account: Uuid,
    email: &str,
    code: &EmailCode,
    keep_if_valid_at_ms: i64,
) -> Result<Option<EmailCode>> {
    // `attempts_left` is no longer read: since migration 6 wrong codes are
    // counted per source network and address in `sign_in_failures`.
    sqlx::query(
        "INSERT INTO email_codes (account_id, email, actor_id, hash, sealed_code, attempts_left, \
         expires_at) VALUES ($1, $2, $3, $4, $5, 3, $6) \
         ON CONFLICT (account_id, email) DO UPDATE SET actor_id = excluded.actor_id, \
         hash = excluded.hash, sealed_code = excluded.sealed_code, \
         attempts_left = excluded.attempts_left, expires_at = excluded.expires_at \
         WHERE email_codes.expires_at <= $7 OR email_codes.sealed_code IS NULL \
         OR email_codes.actor_id <> excluded.actor_id",
    )
    .bind(account.to_string())
    .bind(email)
    .bind(code.actor_id.to_string())
    .bind(&code.hash)
    .bind(code.sealed.clone())
    .bind(code.expires_at_ms)
    .bind(keep_if_valid_at_ms)
    .execute(&mut *conn)
    .await
    .map_err(classify)?;
    email_code(conn, account, email).await
}

pub async fn email_code(conn: &mut Conn, account: Uuid, email: &str) -> Result<Option<EmailCode>> {
    let row = sqlx::query(
        "SELECT actor_id, hash, sealed_code, expires_at FROM email_codes \
         WHERE account_id = $1 AND email = $2",
    )
    .bind(account.to_string())
    .bind(email)
    .fetch_optional(&mut *conn)
    .await?;
    let Some(row) = row else { return Ok(None) };
    Ok(Some(EmailCode {
        actor_id: uuid_column(&row, "email_codes", "actor_id")?,
        hash: row.try_get("hash")?,
        sealed: row.try_get("sealed_code")?,
        expires_at_ms: row.try_get("expires_at")?,
    }))
}

/// Uses the code up: true for exactly one caller, even when several
/// requests with the right code race.
pub async fn take_email_code(
    conn: &mut Conn,
    account: Uuid,
    email: &str,
    hash: &str,
) -> Result<bool> {
    let done =
        sqlx::query("DELETE FROM email_codes WHERE account_id = $1 AND email = $2 AND hash = $3")
            .bind(account.to_string())
            .bind(email)
            .bind(hash)
            .execute(&mut *conn)
            .await?;
    Ok(done.rows_affected() == 1)
}

/// How the wrong guesses of one subject (an address, or an address from one
/// source network) are limited: `free` guesses, then a lock of
/// `first_lock_ms` that doubles with every further guess up to
/// `max_lock_ms`; the count is forgotten `forget_after_ms` after the last
/// guess (longer than the longest lock, so waiting a lock out never resets
/// it).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GuessLimit {
    pub free: i64,
    pub first_lock_ms: i64,
    pub max_lock_ms: i64,
    pub forget_after_ms: i64,
}

/// What `reserve_guess` decided.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Guess {
    /// Counted as a wrong guess up front (a right one is forgiven after).
    Allowed,
    /// Locked until then (Unix ms); nothing counted.
    Locked { until_ms: i64 },
}

/// Counts one guess for `subject` before the code is checked, in one
/// conditional UPDATE: concurrent requests (PostgreSQL at READ COMMITTED,
/// several portal nodes) each see the count the previous one left, so no
/// more guesses get through than the limit allows.
pub async fn reserve_guess(
    conn: &mut Conn,
    account: Uuid,
    subject: &str,
    limit: &GuessLimit,
    now_ms: i64,
) -> Result<Guess> {
    // A count not touched for `forget_after_ms` starts again.
    sqlx::query(
        "DELETE FROM sign_in_failures WHERE account_id = $1 AND subject = $2 \
         AND last_failure_at < $3 AND locked_until <= $4",
    )
    .bind(account.to_string())
    .bind(subject)
    .bind(now_ms - limit.forget_after_ms)
    .bind(now_ms)
    .execute(&mut *conn)
    .await?;
    sqlx::query(
        "INSERT INTO sign_in_failures (account_id, subject, failures, lock_ms, locked_until, \
         last_failure_at) VALUES ($1, $2, 0, 0, 0, $3) ON CONFLICT (account_id, subject) DO NOTHING",
    )
    .bind(account.to_string())
    .bind(subject)
    .bind(now_ms)
    .execute(&mut *conn)
    .await
    .map_err(classify)?;
    let reserved = sqlx::query(
        "UPDATE sign_in_failures SET failures = failures + 1, \
         lock_ms = CASE WHEN failures + 1 < $3 THEN 0 WHEN lock_ms = 0 THEN $4 \
                        WHEN lock_ms * 2 > $5 THEN $5 ELSE lock_ms * 2 END, \
         locked_until = CASE WHEN failures + 1 < $3 THEN 0 WHEN lock_ms = 0 THEN $6 + $4 \
                        WHEN lock_ms * 2 > $5 THEN $6 + $5 ELSE $6 + lock_ms * 2 END, \
         last_failure_at = $6 \
         WHERE account_id = $1 AND subject = $2 AND locked_until <= $6 RETURNING failures",
    )
    .bind(account.to_string())
    .bind(subject)
    .bind(limit.free)
    .bind(limit.first_lock_ms)
    .bind(limit.max_lock_ms)
    .bind(now_ms)
    .fetch_optional(&mut *conn)
    .await?;
    if reserved.is_some() {
        return Ok(Guess::Allowed);
    }
    let until_ms: i64 = sqlx::query_scalar(
        "SELECT locked_until FROM sign_in_failures WHERE account_id = $1 AND subject = $2",
    )
    .bind(account.to_string())
    .bind(subject)
    .fetch_optional(&mut *conn)
    .await?
    .unwrap_or(now_ms);
    Ok(Guess::Locked { until_ms })
}

/// Takes back one guess counted by `reserve_guess` (it was right); a lock
/// already set stays.
pub async fn forgive_guess(conn: &mut Conn, account: Uuid, subject: &str) -> Result<()> {
    sqlx::query(
        "UPDATE sign_in_failures SET failures = failures - 1 \
         WHERE account_id = $1 AND subject = $2 AND failures > 0",
    )
    .bind(account.to_string())
    .bind(subject)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// Deletes the counts nobody guessed against for `forget_after_ms`.
pub async fn prune_guesses(conn: &mut Conn, limit: &GuessLimit, now_ms: i64) -> Result<()> {
    sqlx::query("DELETE FROM sign_in_failures WHERE last_failure_at < $1 AND locked_until <= $2")
        .bind(now_ms - limit.forget_after_ms)
        .bind(now_ms)
        .execute(&mut *conn)
        .await?;
    Ok(())
}

/// Forgets every guess of `subject` (a right code from that network).
pub async fn clear_guesses(conn: &mut Conn, account: Uuid, subject: &str) -> Result<()> {
    sqlx::query("DELETE FROM sign_in_failures WHERE account_id = $1 AND subject = $2")
        .bind(account.to_string())
        .bind(subject)
        .execute(&mut *conn)
        .await?;
    Ok(())
}

/// Where a client sign-in sends its result (SPEC section 3, "Sign-in URLs"),
/// and the challenge of the client's secret nonce its token is bound to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientRequest {
    pub state: String,
    pub challenge: String,
    pub redirect_uri: String,
}

/// An OIDC sign-in between the redirect to the provider and its callback.
#[derive(Clone, Debug)]
pub struct PendingOidc {
    pub provider_id: Uuid,
    pub nonce: String,
    pub pkce_verifier: String,
    pub client: Option<ClientRequest>,
    pub expires_at_ms: i64,
}

pub async fn put_oidc(
    conn: &mut Conn,
    account: Uuid,
    state_hash: &str,
    pending: &PendingOidc,
    now_ms: i64,
) -> Result<()> {
    // Sign-ins never finished must not pile up.
    sqlx::query("DELETE FROM oidc_sign_ins WHERE expires_at < $1")
        .bind(now_ms)
        .execute(&mut *conn)
        .await?;
    sqlx::query(
        "INSERT INTO oidc_sign_ins (state_hash, account_id, provider_id, nonce, pkce_verifier, \
         client_state, client_challenge, redirect_uri, expires_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
    )
    .bind(state_hash)
    .bind(account.to_string())
    .bind(pending.provider_id.to_string())
    .bind(&pending.nonce)
    .bind(&pending.pkce_verifier)
    .bind(pending.client.as_ref().map(|c| c.state.clone()))
    .bind(pending.client.as_ref().map(|c| c.challenge.clone()))
    .bind(pending.client.as_ref().map(|c| c.redirect_uri.clone()))
    .bind(pending.expires_at_ms)
    .execute(&mut *conn)
    .await
    .map_err(classify)?;
    Ok(())
}

/// Takes (reads and deletes) a pending sign-in: a second callback with the
/// same state finds nothing. Expired rows of the account go too.
pub async fn take_oidc(
    conn: &mut Conn,
    account: Uuid,
    state_hash: &str,
    now_ms: i64,
) -> Result<Option<PendingOidc>> {
    let row = sqlx::query(
        "SELECT provider_id, nonce, pkce_verifier, client_state, client_challenge, redirect_uri, \
         expires_at FROM oidc_sign_ins WHERE account_id = $1 AND state_hash = $2",
    )
    .bind(account.to_string())
    .bind(state_hash)
    .fetch_optional(&mut *conn)
    .await?;
    sqlx::query("DELETE FROM oidc_sign_ins WHERE state_hash = $1 OR expires_at < $2")
        .bind(state_hash)
        .bind(now_ms)
        .execute(&mut *conn)
        .await?;
    let Some(row) = row else { return Ok(None) };
    let client = match (
        row.try_get::<Option<String>, _>("client_state")?,
        row.try_get::<Option<String>, _>("client_challenge")?,
        row.try_get::<Option<String>, _>("redirect_uri")?,
    ) {
        (Some(state), Some(challenge), Some(redirect_uri)) => Some(ClientRequest {
            state,
            challenge,
            redirect_uri,
        }),
        _ => None,
    };
    let pending = PendingOidc {
        provider_id: opt_uuid_column(&row, "oidc_sign_ins", "provider_id")?.unwrap_or_default(),
        nonce: row.try_get("nonce")?,
        pkce_verifier: row.try_get("pkce_verifier")?,
        client,
        expires_at_ms: row.try_get("expires_at")?,
    };
    Ok((pending.expires_at_ms >= now_ms).then_some(pending))
}

/// Makes `actor`'s memberships from `provider`'s groups claim exactly
/// `names` (SPEC F8). Only that provider's groups count (review L1): a name is
/// the provider's group of that name, created when no group has it; a name
/// taken by a group an admin made, or by another provider's, is skipped,
/// never joined. Memberships the claim no longer names go; memberships an
/// admin made are left alone. Whether anything changed.
pub async fn sync_claimed_groups(
    conn: &mut Conn,
    account: Uuid,
    actor: Uuid,
    provider: Uuid,
    names: &[String],
    now_ms: i64,
) -> Result<bool> {
    let mut wanted = Vec::new();
    for name in names {
        let find = || {
            sqlx::query(
                "SELECT id, kind, provider_id FROM groups WHERE account_id = $1 AND name = $2",
            )
            .bind(account.to_string())
            .bind(name)
        };
        let ours = |row: &sqlx::any::AnyRow| -> Result<Option<Uuid>> {
            let kind: String = row.try_get("kind")?;
            let owner: Option<String> = row.try_get("provider_id")?;
            if kind == "provider" && owner.as_deref() == Some(provider.to_string().as_str()) {
                Ok(Some(uuid_column(row, "groups", "id")?))
            } else {
                Ok(None)
            }
        };
        let row = find().fetch_optional(&mut *conn).await?;
        let group = match row {
            Some(row) => match ours(&row)? {
                Some(group) => group,
                None => {
                    // Review L1: a group an admin made (or another
                    // provider's) is never joined by a claim naming it.
                    tracing::info!(
                        group = %name,
                        %provider,
                        "the groups claim names a group this provider does not manage: not joined"
                    );
                    continue;
                }
            },
            None => {
                sqlx::query(
                    "INSERT INTO groups (id, account_id, name, kind, provider_id, created_at, \
                     updated_at) VALUES ($1, $2, $3, 'provider', $4, $5, $5) \
                     ON CONFLICT DO NOTHING",
                )
                .bind(Uuid::new_v4().to_string())
                .bind(account.to_string())
                .bind(name)
                .bind(provider.to_string())
                .bind(now_ms)
                .execute(&mut *conn)
                .await
                .map_err(classify)?;
                // Whoever won a race made it: joined only if it is ours.
                match find().fetch_optional(&mut *conn).await? {
                    Some(row) => match ours(&row)? {
                        Some(group) => group,
                        None => continue,
                    },
                    None => continue,
                }
            }
        };
        wanted.push(group);
    }
    let rows = sqlx::query(
        "SELECT group_id FROM memberships WHERE account_id = $1 AND actor_id = $2 \
         AND provider_id = $3",
    )
    .bind(account.to_string())
    .bind(actor.to_string())
    .bind(provider.to_string())
    .fetch_all(&mut *conn)
    .await?;
    let held = rows
        .iter()
        .map(|row| uuid_column(row, "memberships", "group_id"))
        .collect::<Result<Vec<_>>>()?;
    let mut changed = false;
    for group in held.iter().filter(|g| !wanted.contains(g)) {
        sqlx::query(
            "DELETE FROM memberships WHERE group_id = $1 AND actor_id = $2 AND provider_id = $3",
        )
        .bind(group.to_string())
        .bind(actor.to_string())
        .bind(provider.to_string())
        .execute(&mut *conn)
        .await?;
        changed = true;
    }
    for group in wanted.iter().filter(|g| !held.contains(g)) {
        let done = sqlx::query(
            "INSERT INTO memberships (account_id, group_id, actor_id, provider_id) \
             VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING",
        )
        .bind(account.to_string())
        .bind(group.to_string())
        .bind(actor.to_string())
        .bind(provider.to_string())
        .execute(&mut *conn)
        .await
        .map_err(classify)?;
        changed |= done.rows_affected() > 0;
    }
    Ok(changed)
}
