//! Actors: users, admins and service accounts.

use sqlx::Row;
use sqlx::any::AnyRow;
use uuid::Uuid;

use super::{Conn, Result, Scoped, StoreError, classify, opt_uuid_column, uuid_column};
use crate::domain::{Actor, Role, from_millis};

impl Scoped for Actor {
    const TABLE: &'static str = "actors";
    const COLUMNS: &'static str = "id, name, email, role, disabled, directory_id, created_at";

    fn from_row(row: &AnyRow) -> Result<Actor> {
        let role: String = row.try_get("role")?;
        Ok(Actor {
            id: uuid_column(row, Self::TABLE, "id")?,
            name: row.try_get("name")?,
            email: row.try_get("email")?,
            role: Role::parse(&role).ok_or_else(|| StoreError::Corrupt {
                table: Self::TABLE,
                detail: format!("unknown role {role:?}"),
            })?,
            disabled: row.try_get::<i64, _>("disabled")? != 0,
            directory_id: opt_uuid_column(row, Self::TABLE, "directory_id")?,
            created_at: from_millis(row.try_get("created_at")?),
        })
    }
}

pub async fn insert(conn: &mut Conn, account: Uuid, actor: &Actor) -> Result<()> {
    let now = actor.created_at.as_millisecond();
    sqlx::query(
        "INSERT INTO actors (id, account_id, name, email, role, disabled, created_at, updated_at, \
         directory_id) VALUES ($1, $2, $3, $4, $5, $6, $7, $7, $8)",
    )
    .bind(actor.id.to_string())
    .bind(account.to_string())
    .bind(&actor.name)
    .bind(actor.email.clone())
    .bind(actor.role.as_str())
    .bind(i64::from(actor.disabled))
    .bind(now)
    .bind(actor.directory_id.map(|id| id.to_string()))
    .execute(&mut *conn)
    .await
    .map_err(classify)?;
    Ok(())
}

pub async fn get(conn: &mut Conn, account: Uuid, id: Uuid) -> Result<Option<Actor>> {
    super::get_scoped(conn, account, id).await
}

pub async fn list(conn: &mut Conn, account: Uuid) -> Result<Vec<Actor>> {
    super::list_scoped(conn, account).await
}

/// How many actors the account has.
pub async fn count(conn: &mut Conn, account: Uuid) -> Result<i64> {
    let row = sqlx::query("SELECT COUNT(*) AS n FROM actors WHERE account_id = $1")
        .bind(account.to_string())
        .fetch_one(&mut *conn)
        .await?;
    Ok(row.try_get("n")?)
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
    super::delete_scoped::<Actor>(conn, account, id).await
}

/// Enabled admins of the account: the API refuses to remove the last one.
/// The rows are locked until the transaction ends, so two requests that
/// each remove one of the last two admins cannot both see two (SQLite's
/// writers are serialized already; PostgreSQL's READ COMMITTED needs the
/// lock, issue 15 L12).
pub async fn count_enabled_admins(conn: &mut Conn, account: Uuid) -> Result<i64> {
    let lock = if conn.backend_name().eq_ignore_ascii_case("postgresql") {
        " FOR UPDATE"
    } else {
        ""
    };
    // FOR UPDATE cannot go with COUNT: the rows are read and counted here.
    let sql = format!(
        "SELECT id FROM actors WHERE account_id = $1 AND role = 'admin' AND disabled = 0{lock}"
    );
    let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(account.to_string())
        .fetch_all(&mut *conn)
        .await?;
    Ok(rows.len() as i64)
}

/// The actor with this email (stored lowercase) in the account.
pub async fn by_email(conn: &mut Conn, account: Uuid, email: &str) -> Result<Option<Actor>> {
    let sql = format!(
        "SELECT {} FROM actors WHERE account_id = $1 AND email = $2",
        Actor::COLUMNS
    );
    let row = sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(account.to_string())
        .bind(email.trim().to_ascii_lowercase())
        .fetch_optional(&mut *conn)
        .await?;
    row.as_ref().map(Actor::from_row).transpose()
}
