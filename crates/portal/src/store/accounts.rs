//! Accounts (tenants).

use sqlx::Row;
use uuid::Uuid;

use super::{Conn, Result, classify, uuid_column};
use crate::domain::Account;

pub async fn insert(conn: &mut Conn, slug: &str, name: &str, now_ms: i64) -> Result<Account> {
    let id = Uuid::new_v4();
    sqlx::query("INSERT INTO accounts (id, slug, name, created_at) VALUES ($1, $2, $3, $4)")
        .bind(id.to_string())
        .bind(slug)
        .bind(name)
        .bind(now_ms)
        .execute(&mut *conn)
        .await
        .map_err(classify)?;
    Ok(Account {
        id,
        slug: slug.to_string(),
        name: name.to_string(),
    })
}

pub async fn by_slug(conn: &mut Conn, slug: &str) -> Result<Option<Account>> {
    let row = sqlx::query("SELECT id, slug, name FROM accounts WHERE slug = $1")
        .bind(slug)
        .fetch_optional(&mut *conn)
        .await?;
    row.as_ref().map(account_from).transpose()
}

/// The account's DNS search domain (F25), if it has one.
pub async fn search_domain(conn: &mut Conn, account: Uuid) -> Result<Option<String>> {
    let row = sqlx::query("SELECT search_domain FROM accounts WHERE id = $1")
        .bind(account.to_string())
        .fetch_optional(&mut *conn)
        .await?;
    Ok(match row {
        Some(row) => row.try_get::<Option<String>, _>("search_domain")?,
        None => None,
    })
}

/// Sets (or with `None` clears) the account's search domain.
pub async fn set_search_domain(conn: &mut Conn, account: Uuid, domain: Option<&str>) -> Result<()> {
    sqlx::query("UPDATE accounts SET search_domain = $1 WHERE id = $2")
        .bind(domain.map(str::to_string))
        .bind(account.to_string())
        .execute(&mut *conn)
        .await
        .map_err(classify)?;
    Ok(())
}

/// An account by id.
pub async fn get(conn: &mut Conn, account: Uuid) -> Result<Option<Account>> {
    let row = sqlx::query("SELECT id, slug, name FROM accounts WHERE id = $1")
        .bind(account.to_string())
        .fetch_optional(&mut *conn)
        .await?;
    row.as_ref().map(account_from).transpose()
}

fn account_from(row: &sqlx::any::AnyRow) -> Result<Account> {
    Ok(Account {
        id: uuid_column(row, "accounts", "id")?,
        slug: row.try_get("slug")?,
        name: row.try_get("name")?,
    })
}
