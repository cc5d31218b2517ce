//! What sign-ins keep between requests: identities (a provider's subject ->
//! an actor), pending email codes and pending OIDC sign-ins.

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
    /// Argon2 PHC string.
    pub hash: String,
    pub attempts_left: i64,
    pub expires_at_ms: i64,
}

/// Stores a new code for `email`, replacing any earlier one.
pub async fn put_email_code(
    conn: &mut Conn,
    account: Uuid,
    email: &str,
    code: &EmailCode,
) -> Result<()> {
    sqlx::query("DELETE FROM email_codes WHERE account_id = $1 AND email = $2")
        .bind(account.to_string())
        .bind(email)
        .execute(&mut *conn)
        .await?;
    sqlx::query(
        "INSERT INTO email_codes (account_id, email, actor_id, hash, attempts_left, expires_at) \
         VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(account.to_string())
    .bind(email)
    .bind(code.actor_id.to_string())
    .bind(&code.hash)
    .bind(code.attempts_left)
    .bind(code.expires_at_ms)
    .execute(&mut *conn)
    .await
    .map_err(classify)?;
    Ok(())
}

pub async fn email_code(conn: &mut Conn, account: Uuid, email: &str) -> Result<Option<EmailCode>> {
    let row = sqlx::query(
        "SELECT actor_id, hash, attempts_left, expires_at FROM email_codes \
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
        attempts_left: row.try_get("attempts_left")?,
        expires_at_ms: row.try_get("expires_at")?,
    }))
}

/// Uses up one attempt; the code goes when none are left.
pub async fn spend_email_attempt(conn: &mut Conn, account: Uuid, email: &str) -> Result<()> {
    sqlx::query(
        "UPDATE email_codes SET attempts_left = attempts_left - 1 \
         WHERE account_id = $1 AND email = $2",
    )
    .bind(account.to_string())
    .bind(email)
    .execute(&mut *conn)
    .await?;
    sqlx::query(
        "DELETE FROM email_codes WHERE account_id = $1 AND email = $2 AND attempts_left <= 0",
    )
    .bind(account.to_string())
    .bind(email)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

pub async fn delete_email_code(conn: &mut Conn, account: Uuid, email: &str) -> Result<()> {
    sqlx::query("DELETE FROM email_codes WHERE account_id = $1 AND email = $2")
        .bind(account.to_string())
        .bind(email)
        .execute(&mut *conn)
        .await?;
    Ok(())
}

/// Where a client sign-in sends its result (SPEC section 3, "Sign-in URLs").
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientRequest {
    pub state: String,
    pub nonce: String,
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
         client_state, client_nonce, redirect_uri, expires_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
    )
    .bind(state_hash)
    .bind(account.to_string())
    .bind(pending.provider_id.to_string())
    .bind(&pending.nonce)
    .bind(&pending.pkce_verifier)
    .bind(pending.client.as_ref().map(|c| c.state.clone()))
    .bind(pending.client.as_ref().map(|c| c.nonce.clone()))
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
        "SELECT provider_id, nonce, pkce_verifier, client_state, client_nonce, redirect_uri, \
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
        row.try_get::<Option<String>, _>("client_nonce")?,
        row.try_get::<Option<String>, _>("redirect_uri")?,
    ) {
        (Some(state), Some(nonce), Some(redirect_uri)) => Some(ClientRequest {
            state,
            nonce,
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
