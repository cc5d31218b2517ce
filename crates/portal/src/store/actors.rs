//! Actors: users, admins and service accounts.

use sqlx::Row;
use sqlx::any::AnyRow;
use uuid::Uuid;

use super::{Conn, Result, StoreError, classify, uuid_column};
use crate::domain::{Actor, Role, from_millis};

const COLUMNS: &str = "id, name, email, role, disabled, created_at";

fn from_row(row: &AnyRow) -> Result<Actor> {
    let role: String = row.try_get("role")?;
    Ok(Actor {
        id: uuid_column(row, "actors", "id")?,
        name: row.try_get("name")?,
        email: row.try_get("email")?,
        role: Role::parse(&role).ok_or_else(|| StoreError::Corrupt {
            table: "actors",
            detail: format!("unknown role {role:?}"),
        })?,
        disabled: row.try_get::<i64, _>("disabled")? != 0,
        created_at: from_millis(row.try_get("created_at")?),
    })
}

pub async fn insert(conn: &mut Conn, account: Uuid, actor: &Actor) -> Result<()> {
    let now = actor.created_at.as_millisecond();
    sqlx::query(
        "INSERT INTO actors (id, account_id, name, email, role, disabled, created_at, updated_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $7)",
    )
    .bind(actor.id.to_string())
    .bind(account.to_string())
    .bind(&actor.name)
    .bind(actor.email.clone())
    .bind(actor.role.as_str())
    .bind(i64::from(actor.disabled))
    .bind(now)
    .execute(&mut *conn)
    .await
    .map_err(classify)?;
    Ok(())
}

pub async fn get(conn: &mut Conn, account: Uuid, id: Uuid) -> Result<Option<Actor>> {
    let sql = format!("SELECT {COLUMNS} FROM actors WHERE account_id = $1 AND id = $2");
    let row = sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(account.to_string())
        .bind(id.to_string())
        .fetch_optional(&mut *conn)
        .await?;
    row.as_ref().map(from_row).transpose()
}

pub async fn list(conn: &mut Conn, account: Uuid) -> Result<Vec<Actor>> {
    let sql = format!("SELECT {COLUMNS} FROM actors WHERE account_id = $1 ORDER BY created_at, id");
    let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(account.to_string())
        .fetch_all(&mut *conn)
        .await?;
    rows.iter().map(from_row).collect()
}

pub async fn update(conn: &mut Conn, account: Uuid, actor: &Actor, now_ms: i64) -> Result<()> {
    sqlx::query(
        "UPDATE actors SET name = $1, email = $2, role = $3, disabled = $4, updated_at = $5 \
         WHERE account_id = $6 AND id = $7",
    )
    .bind(&actor.name)
    .bind(actor.email.clone())
    .bind(actor.role.as_str())
    .bind(i64::from(actor.disabled))
    .bind(now_ms)
    .bind(account.to_string())
    .bind(actor.id.to_string())
    .execute(&mut *conn)
    .await
    .map_err(classify)?;
    Ok(())
}

pub async fn delete(conn: &mut Conn, account: Uuid, id: Uuid) -> Result<bool> {
    super::delete_scoped(conn, "actors", account, id).await
}

/// Enabled admins of the account: the API refuses to remove the last one.
pub async fn count_enabled_admins(conn: &mut Conn, account: Uuid) -> Result<i64> {
    let row = sqlx::query(
        "SELECT COUNT(*) AS n FROM actors WHERE account_id = $1 AND role = 'admin' AND disabled = 0",
    )
    .bind(account.to_string())
    .fetch_one(&mut *conn)
    .await?;
    Ok(row.try_get("n")?)
}

/// The actor with this email (stored lowercase) in the account.
pub async fn by_email(conn: &mut Conn, account: Uuid, email: &str) -> Result<Option<Actor>> {
    let sql = format!("SELECT {COLUMNS} FROM actors WHERE account_id = $1 AND email = $2");
    let row = sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(account.to_string())
        .bind(email.trim().to_ascii_lowercase())
        .fetch_optional(&mut *conn)
        .await?;
    row.as_ref().map(from_row).transpose()
}
