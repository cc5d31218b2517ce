//! Sites: sets of gateways that reach the same resources.

use sqlx::Row;
use sqlx::any::AnyRow;
use uuid::Uuid;

use super::{Conn, Result, classify, uuid_column};
use crate::domain::{Site, from_millis};

fn from_row(row: &AnyRow) -> Result<Site> {
    Ok(Site {
        id: uuid_column(row, "sites", "id")?,
        name: row.try_get("name")?,
        created_at: from_millis(row.try_get("created_at")?),
    })
}

pub async fn insert(conn: &mut Conn, account: Uuid, site: &Site) -> Result<()> {
    sqlx::query(
        "INSERT INTO sites (id, account_id, name, created_at, updated_at) VALUES ($1, $2, $3, $4, $4)",
    )
    .bind(site.id.to_string())
    .bind(account.to_string())
    .bind(&site.name)
    .bind(site.created_at.as_millisecond())
    .execute(&mut *conn)
    .await
    .map_err(classify)?;
    Ok(())
}

pub async fn get(conn: &mut Conn, account: Uuid, id: Uuid) -> Result<Option<Site>> {
    let row =
        sqlx::query("SELECT id, name, created_at FROM sites WHERE account_id = $1 AND id = $2")
            .bind(account.to_string())
            .bind(id.to_string())
            .fetch_optional(&mut *conn)
            .await?;
    row.as_ref().map(from_row).transpose()
}

pub async fn list(conn: &mut Conn, account: Uuid) -> Result<Vec<Site>> {
    let rows = sqlx::query(
        "SELECT id, name, created_at FROM sites WHERE account_id = $1 ORDER BY created_at, id",
    )
    .bind(account.to_string())
    .fetch_all(&mut *conn)
    .await?;
    rows.iter().map(from_row).collect()
}

pub async fn rename(
    conn: &mut Conn,
    account: Uuid,
    id: Uuid,
    name: &str,
    now_ms: i64,
) -> Result<()> {
    sqlx::query("UPDATE sites SET name = $1, updated_at = $2 WHERE account_id = $3 AND id = $4")
        .bind(name)
        .bind(now_ms)
        .bind(account.to_string())
        .bind(id.to_string())
        .execute(&mut *conn)
        .await
        .map_err(classify)?;
    Ok(())
}

pub async fn delete(conn: &mut Conn, account: Uuid, id: Uuid) -> Result<bool> {
    super::delete_scoped(conn, "sites", account, id).await
}
