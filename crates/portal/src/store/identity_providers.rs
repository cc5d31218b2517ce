//! Identity providers (OpenID Connect) of an account. The client secret is
//! stored sealed (see `crate::secrets`) and only the sign-in flow opens it.

use sqlx::Row;
use sqlx::any::AnyRow;
use uuid::Uuid;

use super::{Conn, Result, Scoped, classify, uuid_column};
use crate::domain::{IdentityProvider, from_millis};

impl Scoped for IdentityProvider {
    const TABLE: &'static str = "identity_providers";
    const COLUMNS: &'static str = "id, name, issuer, client_id, client_secret, groups_claim, \
                                   admin_claim, admin_claim_value, client_session_lifetime_secs, \
                                   created_at, provision_users";

    fn from_row(row: &AnyRow) -> Result<IdentityProvider> {
        Ok(IdentityProvider {
            id: uuid_column(row, Self::TABLE, "id")?,
            name: row.try_get("name")?,
            issuer: row.try_get("issuer")?,
            client_id: row.try_get("client_id")?,
            sealed_client_secret: row.try_get("client_secret")?,
            groups_claim: row.try_get("groups_claim")?,
            admin_claim: row.try_get("admin_claim")?,
            admin_claim_value: row.try_get("admin_claim_value")?,
            client_session_lifetime_secs: row.try_get("client_session_lifetime_secs")?,
            created_at: from_millis(row.try_get("created_at")?),
            provision_users: row.try_get::<i64, _>("provision_users")? != 0,
        })
    }
}

pub async fn insert(conn: &mut Conn, account: Uuid, provider: &IdentityProvider) -> Result<()> {
    sqlx::query(
        "INSERT INTO identity_providers (id, account_id, kind, name, issuer, client_id, \
         client_secret, groups_claim, admin_claim, client_session_lifetime_secs, created_at, \
         updated_at, admin_claim_value, provision_users) \
         VALUES ($1, $2, 'oidc', $3, $4, $5, $6, $7, $8, $9, $10, $10, $11, $12)",
    )
    .bind(provider.id.to_string())
    .bind(account.to_string())
    .bind(&provider.name)
    .bind(&provider.issuer)
    .bind(&provider.client_id)
    .bind(&provider.sealed_client_secret)
    .bind(provider.groups_claim.clone())
    .bind(provider.admin_claim.clone())
    .bind(provider.client_session_lifetime_secs)
    .bind(provider.created_at.as_millisecond())
    .bind(provider.admin_claim_value.clone())
    .bind(i64::from(provider.provision_users))
    .execute(&mut *conn)
    .await
    .map_err(classify)?;
    Ok(())
}

pub async fn get(conn: &mut Conn, account: Uuid, id: Uuid) -> Result<Option<IdentityProvider>> {
    super::get_scoped(conn, account, id).await
}

pub async fn list(conn: &mut Conn, account: Uuid) -> Result<Vec<IdentityProvider>> {
    super::list_scoped(conn, account).await
}

pub async fn update(
    conn: &mut Conn,
    account: Uuid,
    provider: &IdentityProvider,
    now_ms: i64,
) -> Result<()> {
    sqlx::query(
        "UPDATE identity_providers SET name = $3, issuer = $4, client_id = $5, client_secret = $6, \
         groups_claim = $7, admin_claim = $8, client_session_lifetime_secs = $9, updated_at = $10, \
         admin_claim_value = $11, provision_users = $12 WHERE account_id = $1 AND id = $2",
    )
    .bind(account.to_string())
    .bind(provider.id.to_string())
    .bind(&provider.name)
    .bind(&provider.issuer)
    .bind(&provider.client_id)
    .bind(&provider.sealed_client_secret)
    .bind(provider.groups_claim.clone())
    .bind(provider.admin_claim.clone())
    .bind(provider.client_session_lifetime_secs)
    .bind(now_ms)
    .bind(provider.admin_claim_value.clone())
    .bind(i64::from(provider.provision_users))
    .execute(&mut *conn)
    .await
    .map_err(classify)?;
    Ok(())
}

/// What deleting a provider took with it.
#[derive(Debug, Default)]
pub struct Removed {
    /// Actors who had an identity at the provider.
    pub actors: Vec<Uuid>,
    /// Tokens from sign-ins with it (now gone).
    pub tokens: Vec<Uuid>,
}

/// Deletes the provider with its identities, its tokens and the memberships
/// its groups claim made.
pub async fn delete(conn: &mut Conn, account: Uuid, id: Uuid) -> Result<Option<Removed>> {
    let rows = sqlx::query(
        "SELECT DISTINCT actor_id FROM identities WHERE provider_id = $1 AND account_id = $2",
    )
    .bind(id.to_string())
    .bind(account.to_string())
    .fetch_all(&mut *conn)
    .await?;
    let actors = rows
        .iter()
        .map(|row| uuid_column(row, "identities", "actor_id"))
        .collect::<Result<Vec<_>>>()?;
    let rows =
        sqlx::query("SELECT id FROM tokens WHERE identity_provider_id = $1 AND account_id = $2")
            .bind(id.to_string())
            .bind(account.to_string())
            .fetch_all(&mut *conn)
            .await?;
    let tokens = rows
        .iter()
        .map(|row| uuid_column(row, "tokens", "id"))
        .collect::<Result<Vec<_>>>()?;
    if !super::delete_scoped::<IdentityProvider>(conn, account, id).await? {
        return Ok(None);
    }
    for sql in [
        "DELETE FROM tokens WHERE identity_provider_id = $1 AND account_id = $2",
        "DELETE FROM memberships WHERE provider_id = $1 AND account_id = $2",
        "UPDATE groups SET provider_id = NULL, kind = 'static' WHERE provider_id = $1 AND account_id = $2",
    ] {
        sqlx::query(sql)
            .bind(id.to_string())
            .bind(account.to_string())
            .execute(&mut *conn)
            .await?;
    }
    Ok(Some(Removed { actors, tokens }))
}

/// What deleting a provider takes, by the rows `delete` touches: the users
/// linked to it (and the first `names` of them), the tokens of sign-ins
/// with it (and whether `session` is one), the groups its claims made.
#[derive(Debug)]
pub struct Impact {
    pub users: i64,
    pub user_names: Vec<String>,
    pub tokens: i64,
    pub groups: i64,
    pub this_session: bool,
}

pub async fn impact(
    conn: &mut Conn,
    account: Uuid,
    provider: &str,
    session: Uuid,
    names: i64,
) -> Result<Impact> {
    let account = account.to_string();
    let row = sqlx::query(
        "SELECT \
         (SELECT COUNT(DISTINCT actor_id) FROM identities WHERE provider_id = $1 AND account_id = $2) AS users, \
         (SELECT COUNT(*) FROM tokens WHERE identity_provider_id = $1 AND account_id = $2) AS tokens, \
         (SELECT COUNT(*) FROM groups WHERE provider_id = $1 AND account_id = $2) AS groups_made, \
         (SELECT COUNT(*) FROM tokens WHERE identity_provider_id = $1 AND account_id = $2 AND id = $3) AS mine",
    )
    .bind(provider)
    .bind(&account)
    .bind(session.to_string())
    .fetch_one(&mut *conn)
    .await?;
    let listed = sqlx::query(
        "SELECT name FROM actors WHERE account_id = $2 AND id IN \
         (SELECT actor_id FROM identities WHERE provider_id = $1 AND account_id = $2) \
         ORDER BY name LIMIT $3",
    )
    .bind(provider)
    .bind(&account)
    .bind(names)
    .fetch_all(&mut *conn)
    .await?;
    Ok(Impact {
        users: row.try_get("users")?,
        user_names: listed
            .iter()
            .map(|r| r.try_get("name"))
            .collect::<std::result::Result<_, _>>()?,
        tokens: row.try_get("tokens")?,
        groups: row.try_get("groups_made")?,
        this_session: row.try_get::<i64, _>("mine")? > 0,
    })
}
