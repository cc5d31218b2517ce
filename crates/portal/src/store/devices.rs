//! Devices: clients and gateways, each with a stable address index.

use sqlx::Row;
use sqlx::any::AnyRow;
use uuid::Uuid;

use super::{Conn, Result, StoreError, classify, opt_uuid_column, uuid_column};
use crate::domain::address::{capacity, device_addresses};
use crate::domain::{Device, DeviceKind, from_millis};

const COLUMNS: &str = "id, kind, actor_id, site_id, external_id, name, os, version, \
                       address_index, verified, last_seen_at, last_seen_ip, created_at";

fn from_row(row: &AnyRow) -> Result<Device> {
    let corrupt = |detail: String| StoreError::Corrupt {
        table: "devices",
        detail,
    };
    let kind: String = row.try_get("kind")?;
    let index: i64 = row.try_get("address_index")?;
    let (ipv4, ipv6) =
        device_addresses(index).ok_or_else(|| corrupt(format!("address index {index}")))?;
    Ok(Device {
        id: uuid_column(row, "devices", "id")?,
        kind: match kind.as_str() {
            "client" => DeviceKind::Client,
            "gateway" => DeviceKind::Gateway,
            other => return Err(corrupt(format!("unknown kind {other:?}"))),
        },
        actor_id: opt_uuid_column(row, "devices", "actor_id")?,
        site_id: opt_uuid_column(row, "devices", "site_id")?,
        device_id: row.try_get("external_id")?,
        name: row.try_get("name")?,
        os: row.try_get("os")?,
        version: row.try_get("version")?,
        ipv4,
        ipv6,
        verified: row.try_get::<i64, _>("verified")? != 0,
        last_seen_at: row
            .try_get::<Option<i64>, _>("last_seen_at")?
            .map(from_millis),
        last_seen_ip: row.try_get("last_seen_ip")?,
        created_at: from_millis(row.try_get("created_at")?),
    })
}

/// Who a connecting device is.
#[derive(Clone, Debug)]
pub struct Connecting<'a> {
    pub kind: DeviceKind,
    pub actor_id: Option<Uuid>,
    pub site_id: Option<Uuid>,
    pub device_id: &'a str,
    pub name: &'a str,
    pub os: Option<&'a str>,
    pub version: Option<&'a str>,
    pub remote_ip: Option<String>,
}

/// Finds the device by its own id (per actor for clients, per site for
/// gateways) and records this connection, or creates it with the next free
/// address index.
pub async fn upsert_on_connect(
    conn: &mut Conn,
    account: Uuid,
    device: &Connecting<'_>,
    now_ms: i64,
) -> Result<Device> {
    let owner_column = match device.kind {
        DeviceKind::Client => "actor_id",
        DeviceKind::Gateway => "site_id",
    };
    let owner = match device.kind {
        DeviceKind::Client => device.actor_id,
        DeviceKind::Gateway => device.site_id,
    }
    .map(|id| id.to_string());
    let sql = format!(
        "UPDATE devices SET name = $1, os = $2, version = $3, last_seen_at = $4, last_seen_ip = $5 \
         WHERE account_id = $6 AND kind = $7 AND {owner_column} = $8 AND external_id = $9"
    );
    let done = sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(device.name)
        .bind(device.os)
        .bind(device.version)
        .bind(now_ms)
        .bind(device.remote_ip.clone())
        .bind(account.to_string())
        .bind(device.kind.as_str())
        .bind(owner.clone())
        .bind(device.device_id)
        .execute(&mut *conn)
        .await?;
    if done.rows_affected() == 0 {
        let row = sqlx::query(
            "SELECT COALESCE(MAX(address_index), 0) AS n FROM devices WHERE account_id = $1",
        )
        .bind(account.to_string())
        .fetch_one(&mut *conn)
        .await?;
        let index = row.try_get::<i64, _>("n")? + 1;
        if index > capacity() {
            return Err(StoreError::Conflict(
                "the account has used every tunnel address".to_string(),
            ));
        }
        sqlx::query(
            "INSERT INTO devices (id, account_id, kind, actor_id, site_id, external_id, name, os, \
             version, address_index, verified, last_seen_at, last_seen_ip, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, 0, $11, $12, $11)",
        )
        .bind(Uuid::new_v4().to_string())
        .bind(account.to_string())
        .bind(device.kind.as_str())
        .bind(device.actor_id.map(|id| id.to_string()))
        .bind(device.site_id.map(|id| id.to_string()))
        .bind(device.device_id)
        .bind(device.name)
        .bind(device.os)
        .bind(device.version)
        .bind(index)
        .bind(now_ms)
        .bind(device.remote_ip.clone())
        .execute(&mut *conn)
        .await
        .map_err(classify)?;
    }
    let sql = format!(
        "SELECT {COLUMNS} FROM devices WHERE account_id = $1 AND kind = $2 AND {owner_column} = $3 \
         AND external_id = $4"
    );
    let row = sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(account.to_string())
        .bind(device.kind.as_str())
        .bind(owner)
        .bind(device.device_id)
        .fetch_one(&mut *conn)
        .await?;
    from_row(&row)
}

pub async fn get(
    conn: &mut Conn,
    account: Uuid,
    kind: DeviceKind,
    id: Uuid,
) -> Result<Option<Device>> {
    let sql =
        format!("SELECT {COLUMNS} FROM devices WHERE account_id = $1 AND kind = $2 AND id = $3");
    let row = sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(account.to_string())
        .bind(kind.as_str())
        .bind(id.to_string())
        .fetch_optional(&mut *conn)
        .await?;
    row.as_ref().map(from_row).transpose()
}

pub async fn list(
    conn: &mut Conn,
    account: Uuid,
    kind: DeviceKind,
    site: Option<Uuid>,
) -> Result<Vec<Device>> {
    let sql = format!(
        "SELECT {COLUMNS} FROM devices WHERE account_id = $1 AND kind = $2 \
         AND ($3 = '' OR site_id = $3) ORDER BY created_at, id"
    );
    let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(account.to_string())
        .bind(kind.as_str())
        .bind(site.map(|s| s.to_string()).unwrap_or_default())
        .fetch_all(&mut *conn)
        .await?;
    rows.iter().map(from_row).collect()
}

pub async fn set_verified(conn: &mut Conn, account: Uuid, id: Uuid, verified: bool) -> Result<()> {
    sqlx::query("UPDATE devices SET verified = $1 WHERE account_id = $2 AND id = $3")
        .bind(i64::from(verified))
        .bind(account.to_string())
        .bind(id.to_string())
        .execute(&mut *conn)
        .await?;
    Ok(())
}

pub async fn delete(conn: &mut Conn, account: Uuid, kind: DeviceKind, id: Uuid) -> Result<bool> {
    let done = sqlx::query("DELETE FROM devices WHERE account_id = $1 AND kind = $2 AND id = $3")
        .bind(account.to_string())
        .bind(kind.as_str())
        .bind(id.to_string())
        .execute(&mut *conn)
        .await?;
    Ok(done.rows_affected() > 0)
}
