//! Sites: sets of gateways that reach the same resources.

use sqlx::Row;
use sqlx::any::AnyRow;
use uuid::Uuid;

use super::{Conn, Result, Scoped, classify, uuid_column};
use crate::domain::{Site, from_millis};

impl Scoped for Site {
    const TABLE: &'static str = "sites";
    const COLUMNS: &'static str = "id, name, created_at";

    fn from_row(row: &AnyRow) -> Result<Site> {
        Ok(Site {
            id: uuid_column(row, Self::TABLE, "id")?,
            name: row.try_get("name")?,
            created_at: from_millis(row.try_get("created_at")?),
        })
    }
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
    super::get_scoped(conn, account, id).await
}

pub async fn rename(
    conn: &mut Conn,
    account: Uuid,
    id: Uuid,
    name: &str,
    now_ms: i64,
) -> Result<()> {
    super::rename_scoped::<Site>(conn, account, id, name, now_ms).await
}

pub async fn delete(conn: &mut Conn, account: Uuid, id: Uuid) -> Result<bool> {
    super::delete_scoped::<Site>(conn, account, id).await
}
