//! Tokens: only the salt and hash of each secret are stored.

use sqlx::Row;
use uuid::Uuid;

use super::{Conn, Result, StoreError, classify, opt_uuid_column, uuid_column};
use crate::domain::{MintedToken, TokenKind, TokenRecord, from_millis};

/// What a new token is for.
#[derive(Clone, Debug)]
pub struct NewToken {
    pub account_id: Option<Uuid>,
    pub kind: TokenKind,
    pub actor_id: Option<Uuid>,
    pub site_id: Option<Uuid>,
    pub identity_provider_id: Option<Uuid>,
    pub expires_at_ms: Option<i64>,
    /// An API token that may only read (the `read` scope).
    pub read_only: bool,
}

pub async fn insert(
    conn: &mut Conn,
    minted: &MintedToken,
    token: &NewToken,
    now_ms: i64,
) -> Result<()> {
    sqlx::query(
        "INSERT INTO tokens (id, account_id, kind, actor_id, site_id, identity_provider_id, salt, \
         hash, created_at, expires_at, scopes) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, \
         $11)",
    )
    .bind(minted.id.to_string())
    .bind(token.account_id.map(|id| id.to_string()))
    .bind(token.kind.as_str())
    .bind(token.actor_id.map(|id| id.to_string()))
    .bind(token.site_id.map(|id| id.to_string()))
    .bind(token.identity_provider_id.map(|id| id.to_string()))
    .bind(&minted.salt)
    .bind(&minted.hash)
    .bind(now_ms)
    .bind(token.expires_at_ms)
    .bind(token.read_only.then_some(READ_ONLY))
    .execute(&mut *conn)
    .await
    .map_err(classify)?;
    Ok(())
}

/// The `scopes` of a token that may only read; NULL: read and write.
const READ_ONLY: &str = "read";
/// What a token with both scopes could be written as (NULL is).
const READ_WRITE: &str = "read write";

/// The token row with its salt and hash, for verification.
pub async fn get_with_hash(
    conn: &mut Conn,
    id: Uuid,
) -> Result<Option<(TokenRecord, String, String)>> {
    let row = sqlx::query(
        "SELECT id, account_id, kind, actor_id, site_id, identity_provider_id, salt, hash, \
         expires_at, scopes FROM tokens WHERE id = $1",
    )
    .bind(id.to_string())
    .fetch_optional(&mut *conn)
    .await?;
    let Some(row) = row else { return Ok(None) };
    let kind: String = row.try_get("kind")?;
    let record = TokenRecord {
        id: uuid_column(&row, "tokens", "id")?,
        account_id: opt_uuid_column(&row, "tokens", "account_id")?,
        kind: TokenKind::parse(&kind).ok_or_else(|| StoreError::Corrupt {
            table: "tokens",
            detail: format!("unknown kind {kind:?}"),
        })?,
        actor_id: opt_uuid_column(&row, "tokens", "actor_id")?,
        site_id: opt_uuid_column(&row, "tokens", "site_id")?,
        identity_provider_id: opt_uuid_column(&row, "tokens", "identity_provider_id")?,
        expires_at: row
            .try_get::<Option<i64>, _>("expires_at")?
            .map(from_millis),
        // Fail closed: only no scopes (every token before them) or
        // exactly read and write may write.
        read_only: !matches!(
            row.try_get::<Option<String>, _>("scopes")?.as_deref(),
            None | Some(READ_WRITE)
        ),
    };
    Ok(Some((record, row.try_get("salt")?, row.try_get("hash")?)))
}

/// Deletes a token of the account; returns what it was.
pub async fn delete(conn: &mut Conn, account: Uuid, id: Uuid) -> Result<Option<TokenRecord>> {
    let Some((record, _, _)) = get_with_hash(conn, id).await? else {
        return Ok(None);
    };
    if record.account_id != Some(account) {
        return Ok(None);
    }
    sqlx::query("DELETE FROM tokens WHERE id = $1")
        .bind(id.to_string())
        .execute(&mut *conn)
        .await?;
    Ok(Some(record))
}

/// Tokens of an actor that are still good at `now_ms` (expired ones stay in
/// the table but no longer count).
pub async fn count_live(conn: &mut Conn, actor: Uuid, now_ms: i64) -> Result<i64> {
    let row = sqlx::query(
        "SELECT COUNT(*) AS n FROM tokens WHERE actor_id = $1 \
         AND (expires_at IS NULL OR expires_at > $2)",
    )
    .bind(actor.to_string())
    .bind(now_ms)
    .fetch_one(&mut *conn)
    .await?;
    Ok(row.try_get("n")?)
}

/// The identity provider of the token each of an actor's client devices
/// last connected with (what a policy's identity provider condition sees
/// when that client asks); devices whose token is gone are left out.
pub async fn providers_of_devices(
    conn: &mut Conn,
    account: Uuid,
    actor: Uuid,
) -> Result<std::collections::HashMap<Uuid, Option<Uuid>>> {
    let rows = sqlx::query(
        "SELECT d.id AS device, t.identity_provider_id AS provider FROM devices d \
         JOIN tokens t ON t.id = d.token_id \
         WHERE d.account_id = $1 AND d.actor_id = $2 AND d.kind = $3",
    )
    .bind(account.to_string())
    .bind(actor.to_string())
    .bind(crate::domain::DeviceKind::Client.as_str())
    .fetch_all(&mut *conn)
    .await?;
    rows.iter()
        .map(|row| {
            Ok((
                uuid_column(row, "devices", "device")?,
                opt_uuid_column(row, "tokens", "provider")?,
            ))
        })
        .collect()
}

/// Deletes an actor's tokens of these kinds; returns their ids (each one's
/// channels are closed by the caller's notices).
pub async fn delete_of_actor(
    conn: &mut Conn,
    account: Uuid,
    actor: Uuid,
    kinds: &[TokenKind],
) -> Result<Vec<Uuid>> {
    let mut gone = Vec::new();
    for kind in kinds {
        let rows = sqlx::query(
            "DELETE FROM tokens WHERE account_id = $1 AND actor_id = $2 AND kind = $3 RETURNING id",
        )
        .bind(account.to_string())
        .bind(actor.to_string())
        .bind(kind.as_str())
        .fetch_all(&mut *conn)
        .await?;
        for row in &rows {
            gone.push(uuid_column(row, "tokens", "id")?);
        }
    }
    Ok(gone)
}

/// A token as the console lists it: what it is, never its secret.
#[derive(Clone, Debug)]
pub struct Listing {
    pub id: Uuid,
    pub kind: TokenKind,
    pub actor_id: Option<Uuid>,
    pub created_at: jiff::Timestamp,
    pub expires_at: Option<jiff::Timestamp>,
    pub read_only: bool,
    /// The identity provider of the sign-in that made it, by name.
    pub provider: Option<String>,
    /// Client devices registered with it, and when one was last seen.
    pub devices: i64,
    pub last_device_seen_at: Option<jiff::Timestamp>,
}

const LISTING: &str = "SELECT t.id AS id, t.kind AS kind, t.actor_id AS actor_id, \
     t.created_at AS created_at, t.expires_at AS expires_at, t.scopes AS scopes, \
     p.name AS provider, \
     (SELECT COUNT(*) FROM devices d WHERE d.token_id = t.id) AS devices, \
     (SELECT MAX(d.last_seen_at) FROM devices d WHERE d.token_id = t.id) AS last_seen \
     FROM tokens t LEFT JOIN identity_providers p ON p.id = t.identity_provider_id";

fn listing(row: &sqlx::any::AnyRow) -> Result<Listing> {
    let kind: String = row.try_get("kind")?;
    Ok(Listing {
        id: uuid_column(row, "tokens", "id")?,
        kind: TokenKind::parse(&kind).ok_or_else(|| StoreError::Corrupt {
            table: "tokens",
            detail: format!("unknown kind {kind:?}"),
        })?,
        actor_id: opt_uuid_column(row, "tokens", "actor_id")?,
        created_at: from_millis(row.try_get("created_at")?),
        expires_at: row
            .try_get::<Option<i64>, _>("expires_at")?
            .map(from_millis),
        read_only: !matches!(
            row.try_get::<Option<String>, _>("scopes")?.as_deref(),
            None | Some(READ_WRITE)
        ),
        provider: row.try_get("provider")?,
        devices: row.try_get("devices")?,
        last_device_seen_at: row.try_get::<Option<i64>, _>("last_seen")?.map(from_millis),
    })
}

/// The actor's newest `limit` tokens (expired ones too), newest first.
pub async fn of_actor(
    conn: &mut Conn,
    account: Uuid,
    actor: Uuid,
    limit: i64,
) -> Result<Vec<Listing>> {
    let sql = format!(
        "{LISTING} WHERE t.account_id = $1 AND t.actor_id = $2 \
         ORDER BY t.created_at DESC, t.id LIMIT $3"
    );
    let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(account.to_string())
        .bind(actor.to_string())
        .bind(limit)
        .fetch_all(&mut *conn)
        .await?;
    rows.iter().map(listing).collect()
}

/// One token of the account, as [`of_actor`] lists it.
pub async fn listing_of(conn: &mut Conn, account: Uuid, id: Uuid) -> Result<Option<Listing>> {
    let sql = format!("{LISTING} WHERE t.account_id = $1 AND t.id = $2");
    let row = sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(account.to_string())
        .bind(id.to_string())
        .fetch_optional(&mut *conn)
        .await?;
    row.as_ref().map(listing).transpose()
}
