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
    /// The token it connects with (a new device counts against its cap).
    pub token_id: Option<Uuid>,
    pub device_id: &'a str,
    pub name: &'a str,
    pub os: Option<&'a str>,
    pub version: Option<&'a str>,
    pub remote_ip: Option<String>,
}

/// How many devices one actor or token may register (issue 15, M5): a
/// token that mints device after device would otherwise use up the
/// account's addresses and grow the database without end.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DeviceCaps {
    pub per_actor: u32,
    pub per_token: u32,
}

/// Finds the device by its own id (per actor for clients, per site for
/// gateways) and records this connection, or creates it (see
/// `insert_on_connect`) if the caps allow. (The portal's connects go
/// through `channels::admission`, which runs the two halves apart.)
#[cfg(any(test, feature = "testing"))]
pub async fn upsert_on_connect(
    conn: &mut Conn,
    account: Uuid,
    device: &Connecting<'_>,
    caps: DeviceCaps,
    now_ms: i64,
) -> Result<Device> {
    match touch_on_connect(conn, account, device).await? {
        Some(known) => Ok(known),
        None => insert_on_connect(conn, account, device, caps, now_ms).await,
    }
}

/// A known device: records the token it connects with and reads its row,
/// in one statement; `None` if the device is new. It writes nothing that
/// can be refused, so a batch of connects runs it outside any savepoint.
pub async fn touch_on_connect(
    conn: &mut Conn,
    account: Uuid,
    device: &Connecting<'_>,
) -> Result<Option<Device>> {
    // An existing device's name, OS, version and address are recorded
    // once the hub admits the channel (`record_seen`): a refused second
    // device under the same id must not rename the first.
    let sql = touch_sql(device.kind);
    let row = sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(account.to_string())
        .bind(owner(device))
        .bind(device.device_id)
        .bind(device.token_id.map(|id| id.to_string()))
        .fetch_optional(&mut *conn)
        .await?;
    row.as_ref().map(from_row).transpose()
}

/// A new device, past the caps check, with the next free address index.
/// May be refused (caps, addresses used up, a concurrent writer's index):
/// run it in a savepoint when others' writes share the transaction.
pub async fn insert_on_connect(
    conn: &mut Conn,
    account: Uuid,
    device: &Connecting<'_>,
    caps: DeviceCaps,
    now_ms: i64,
) -> Result<Device> {
    check_caps(conn, account, device, caps).await?;
    let index = lowest_free_index(conn, account).await?;
    if index > capacity() {
        return Err(StoreError::Conflict(
            "the account has used every tunnel address".to_string(),
        ));
    }
    let sql = format!(
        "INSERT INTO devices (id, account_id, kind, actor_id, site_id, external_id, name, os, \
         version, address_index, verified, last_seen_at, last_seen_ip, created_at, token_id) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, 0, $11, $12, $11, $13) \
         RETURNING {COLUMNS}"
    );
    let row = sqlx::query(sqlx::AssertSqlSafe(sql))
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
        .bind(device.token_id.map(|id| id.to_string()))
        .fetch_one(&mut *conn)
        .await
        .map_err(classify)?;
    from_row(&row)
}

/// `touch_on_connect`'s statement. The kind is written into it, not bound:
/// the unique indexes on a device's own id are partial (`WHERE kind =
/// 'client'`), and a planner can use one only for a query that names the
/// kind itself; with a bound kind every connect walked all of the account's
/// devices (10,000 rows a connect in the benchmark's account).
fn touch_sql(kind: DeviceKind) -> String {
    format!(
        "UPDATE devices SET token_id = COALESCE($4, token_id) \
         WHERE account_id = $1 AND kind = '{}' AND {} = $2 AND external_id = $3 \
         RETURNING {COLUMNS}",
        kind.as_str(),
        owner_column(kind)
    )
}

/// The column naming a device's owner: clients belong to an actor,
/// gateways to a site.
fn owner_column(kind: DeviceKind) -> &'static str {
    match kind {
        DeviceKind::Client => "actor_id",
        DeviceKind::Gateway => "site_id",
    }
}

fn owner(device: &Connecting<'_>) -> Option<String> {
    match device.kind {
        DeviceKind::Client => device.actor_id,
        DeviceKind::Gateway => device.site_id,
    }
    .map(|id| id.to_string())
}

/// What an admitted channel's device said about itself, from where,
/// when (`record_seen`).
#[derive(Clone, Debug)]
pub struct Seen<'a> {
    pub account: Uuid,
    pub device: Uuid,
    pub name: &'a str,
    pub os: Option<&'a str>,
    pub version: Option<&'a str>,
    pub remote_ip: String,
    pub at_ms: i64,
}

/// Records admitted channels' devices, 32 to a statement (a reconnect
/// storm admits thousands a second). Written from tasks that may finish
/// out of order: a newer record is never overwritten by an older one, and
/// a device seen twice here keeps its latest.
pub async fn record_seen(conn: &mut Conn, seen: &[Seen<'_>]) -> Result<()> {
    // In key order: concurrent writers (PostgreSQL nodes) lock rows in
    // the same order.
    let mut latest: std::collections::BTreeMap<(Uuid, Uuid), &Seen<'_>> =
        std::collections::BTreeMap::new();
    for one in seen {
        let slot = latest.entry((one.account, one.device)).or_insert(one);
        if one.at_ms >= slot.at_ms {
            *slot = one;
        }
    }
    let latest: Vec<&Seen<'_>> = latest.into_values().collect();
    for chunk in super::row_chunks(&latest, 32) {
        let rows = super::value_rows(chunk.len(), 7);
        let sql = format!(
            "WITH seen (account_id, id, name, os, version, at, ip) AS (VALUES {rows}) \
             UPDATE devices SET name = seen.name, os = seen.os, version = seen.version, \
             last_seen_at = seen.at, last_seen_ip = seen.ip FROM seen \
             WHERE devices.account_id = seen.account_id AND devices.id = seen.id \
             AND (devices.last_seen_at IS NULL OR devices.last_seen_at <= seen.at)"
        );
        let mut query = sqlx::query(sqlx::AssertSqlSafe(sql));
        for one in chunk {
            query = query
                .bind(one.account.to_string())
                .bind(one.device.to_string())
                .bind(one.name)
                .bind(one.os)
                .bind(one.version)
                .bind(one.at_ms)
                .bind(one.remote_ip.as_str());
        }
        query.execute(&mut *conn).await?;
    }
    Ok(())
}

/// Refuses a new device past the actor's or the token's cap, saying so.
async fn check_caps(
    conn: &mut Conn,
    account: Uuid,
    device: &Connecting<'_>,
    caps: DeviceCaps,
) -> Result<()> {
    if let (DeviceKind::Client, Some(actor)) = (device.kind, device.actor_id) {
        let row = sqlx::query(
            "SELECT COUNT(*) AS n FROM devices WHERE account_id = $1 AND kind = 'client' \
             AND actor_id = $2",
        )
        .bind(account.to_string())
        .bind(actor.to_string())
        .fetch_one(&mut *conn)
        .await?;
        let count = row.try_get::<i64, _>("n")?;
        if count >= i64::from(caps.per_actor) {
            return Err(StoreError::LimitReached(format!(
                "this user or service account has {count} client devices, the most the portal \
                 allows (--max-devices-per-actor): an admin must delete unused ones \
                 (DELETE /api/v1/clients/ID) first"
            )));
        }
    }
    if let Some(token) = device.token_id {
        let row = sqlx::query("SELECT COUNT(*) AS n FROM devices WHERE token_id = $1")
            .bind(token.to_string())
            .fetch_one(&mut *conn)
            .await?;
        let count = row.try_get::<i64, _>("n")?;
        if count >= i64::from(caps.per_token) {
            return Err(StoreError::LimitReached(format!(
                "this token registered {count} devices, the most the portal allows \
                 (--max-devices-per-token): reuse a device's state directory, or have an admin \
                 delete unused devices"
            )));
        }
    }
    Ok(())
}

/// The lowest address index no device of the account holds: a deleted
/// device's addresses are given out again, so the pool is not used up by
/// devices that come and go.
async fn lowest_free_index(conn: &mut Conn, account: Uuid) -> Result<i64> {
    // The index after the highest, while the range lasts: one step down
    // the unique index, where searching for the lowest gap walked every
    // device of the account (a first connect cost O(devices)). A deleted
    // device's addresses are not handed out again until the range is used
    // up: its flows, logs and any state a gateway still holds keep naming
    // it alone for that much longer.
    let row = sqlx::query(
        "SELECT COALESCE(MAX(address_index), 0) + 1 AS n FROM devices WHERE account_id = $1",
    )
    .bind(account.to_string())
    .fetch_one(&mut *conn)
    .await?;
    let next = row.try_get::<i64, _>("n")?;
    if next <= capacity() {
        return Ok(next);
    }
    // The range is used up: the lowest gap, if any.
    let row = sqlx::query(
        "SELECT CASE WHEN NOT EXISTS \
         (SELECT 1 FROM devices WHERE account_id = $1 AND address_index = 1) THEN 1 \
         ELSE (SELECT MIN(d.address_index) + 1 FROM devices d WHERE d.account_id = $1 \
         AND NOT EXISTS (SELECT 1 FROM devices e WHERE e.account_id = $1 \
         AND e.address_index = d.address_index + 1)) END AS n",
    )
    .bind(account.to_string())
    .fetch_one(&mut *conn)
    .await?;
    Ok(row.try_get::<i64, _>("n")?)
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

/// The ids of an account's devices of a kind (for counting who is online
/// without reading whole rows).
pub async fn ids(conn: &mut Conn, account: Uuid, kind: DeviceKind) -> Result<Vec<Uuid>> {
    let rows = sqlx::query("SELECT id FROM devices WHERE account_id = $1 AND kind = $2")
        .bind(account.to_string())
        .bind(kind.as_str())
        .fetch_all(&mut *conn)
        .await?;
    rows.iter()
        .map(|row| uuid_column(row, "devices", "id"))
        .collect()
}

/// A client device of an actor, with the token it last connected with when
/// that is still a live client token of the same actor (what signing the
/// device out revokes); `None`: the device is signed out.
pub type OwnDevice = (Device, Option<Uuid>);

/// The select of `OwnDevice` rows: `$1` account, `$2` actor, `$3` now.
fn own_devices_sql(rest: &str) -> String {
    format!(
        "SELECT {COLUMNS}, (SELECT t.id FROM tokens t WHERE t.id = devices.token_id \
         AND t.account_id = devices.account_id AND t.kind = 'client' \
         AND t.actor_id = devices.actor_id AND (t.expires_at IS NULL OR t.expires_at > $3)) \
         AS live_token FROM devices WHERE account_id = $1 AND kind = 'client' \
         AND actor_id = $2 {rest}"
    )
}

fn own_device(row: &AnyRow) -> Result<OwnDevice> {
    Ok((
        from_row(row)?,
        opt_uuid_column(row, "devices", "live_token")?,
    ))
}

/// An actor's client devices, oldest first: `limit` from `offset`.
pub async fn of_actor(
    conn: &mut Conn,
    account: Uuid,
    actor: Uuid,
    now_ms: i64,
    limit: i64,
    offset: i64,
) -> Result<Vec<OwnDevice>> {
    let sql = own_devices_sql("ORDER BY created_at, id LIMIT $4 OFFSET $5");
    let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(account.to_string())
        .bind(actor.to_string())
        .bind(now_ms)
        .bind(limit)
        .bind(offset)
        .fetch_all(&mut *conn)
        .await?;
    rows.iter().map(own_device).collect()
}

/// One client device of an actor; `None` for another actor's, like a
/// missing one.
pub async fn one_of_actor(
    conn: &mut Conn,
    account: Uuid,
    actor: Uuid,
    id: Uuid,
    now_ms: i64,
) -> Result<Option<OwnDevice>> {
    let sql = own_devices_sql("AND id = $4");
    let row = sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(account.to_string())
        .bind(actor.to_string())
        .bind(now_ms)
        .bind(id.to_string())
        .fetch_optional(&mut *conn)
        .await?;
    row.as_ref().map(own_device).transpose()
}

/// The names of the other devices that last connected with `token`.
pub async fn others_with_token(
    conn: &mut Conn,
    account: Uuid,
    token: Uuid,
    except: Uuid,
) -> Result<Vec<String>> {
    let rows = sqlx::query(
        "SELECT name FROM devices WHERE account_id = $1 AND token_id = $2 AND id <> $3 \
         ORDER BY created_at, id LIMIT 100",
    )
    .bind(account.to_string())
    .bind(token.to_string())
    .bind(except.to_string())
    .fetch_all(&mut *conn)
    .await?;
    rows.iter()
        .map(|row| Ok(row.try_get::<String, _>("name")?))
        .collect()
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

/// Which clients the console's list shows.
#[derive(Clone, Debug, Default)]
pub struct ClientFilter {
    /// In the client's name or its owner's name or email (any case);
    /// empty: every client.
    pub search: String,
    pub unverified_only: bool,
    pub owner: Option<Uuid>,
}

/// A client with its owner's name and email.
#[derive(Clone, Debug)]
pub struct ClientRow {
    pub device: Device,
    pub owner_name: Option<String>,
    pub owner_email: Option<String>,
}

const CLIENT_COLUMNS: &str = "d.id AS id, d.kind AS kind, d.actor_id AS actor_id, \
     d.site_id AS site_id, d.external_id AS external_id, d.name AS name, d.os AS os, \
     d.version AS version, d.address_index AS address_index, d.verified AS verified, \
     d.last_seen_at AS last_seen_at, d.last_seen_ip AS last_seen_ip, \
     d.created_at AS created_at, a.name AS owner_name, a.email AS owner_email";

/// The list's order (the same everywhere it pages).
const CLIENT_ORDER: &str = "ORDER BY LOWER(d.name), d.id";

/// `FROM ... WHERE ...` of the clients `filter` passes, and what it binds
/// (`$1` the account, then the filter's values in order). The owners are
/// joined only to search their names.
fn client_filter(filter: &ClientFilter) -> (String, Vec<String>) {
    let mut binds = Vec::new();
    let mut sql = String::from("FROM devices d");
    let search = filter.search.trim();
    if !search.is_empty() {
        sql.push_str(" LEFT JOIN actors a ON a.id = d.actor_id");
    }
    sql.push_str(" WHERE d.account_id = $1 AND d.kind = 'client'");
    if !search.is_empty() {
        binds.push(super::actors::contains_pattern(search));
        let n = binds.len() + 1;
        sql.push_str(&format!(
            " AND (LOWER(d.name) LIKE ${n} ESCAPE '\\' OR LOWER(a.name) LIKE ${n} ESCAPE '\\' \
             OR a.email LIKE ${n} ESCAPE '\\')"
        ));
    }
    if filter.unverified_only {
        sql.push_str(" AND d.verified = 0");
    }
    if let Some(owner) = filter.owner {
        binds.push(owner.to_string());
        sql.push_str(&format!(" AND d.actor_id = ${}", binds.len() + 1));
    }
    (sql, binds)
}

fn client_row(row: &AnyRow) -> Result<ClientRow> {
    Ok(ClientRow {
        device: from_row(row)?,
        owner_name: row.try_get("owner_name")?,
        owner_email: row.try_get("owner_email")?,
    })
}

/// One page of the account's clients that pass `filter`, by name: the
/// page's ids first, then only their rows with their owners.
pub async fn client_page(
    conn: &mut Conn,
    account: Uuid,
    filter: &ClientFilter,
    offset: i64,
    limit: i64,
) -> Result<Vec<ClientRow>> {
    let (from, binds) = client_filter(filter);
    let n = binds.len() + 2;
    let sql = format!(
        "SELECT {CLIENT_COLUMNS} FROM devices d LEFT JOIN actors a ON a.id = d.actor_id \
         WHERE d.id IN (SELECT d.id {from} {CLIENT_ORDER} LIMIT ${n} OFFSET ${}) {CLIENT_ORDER}",
        n + 1
    );
    let mut query = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(account.to_string());
    for value in binds {
        query = query.bind(value);
    }
    let rows = query.bind(limit).bind(offset).fetch_all(&mut *conn).await?;
    rows.iter().map(client_row).collect()
}

/// How many clients [`client_page`] pages through.
pub async fn client_count(conn: &mut Conn, account: Uuid, filter: &ClientFilter) -> Result<i64> {
    let (from, binds) = client_filter(filter);
    let sql = format!("SELECT COUNT(*) AS n {from}");
    let mut query = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(account.to_string());
    for value in binds {
        query = query.bind(value);
    }
    let row = query.fetch_one(&mut *conn).await?;
    Ok(row.try_get("n")?)
}

/// The id and name of every client that passes `filter`, unordered: for a
/// filter the database cannot apply (who is online is known to this node,
/// not stored), whose caller sorts and pages what is left.
pub async fn client_names(
    conn: &mut Conn,
    account: Uuid,
    filter: &ClientFilter,
) -> Result<Vec<(Uuid, String)>> {
    let (from, binds) = client_filter(filter);
    let sql = format!("SELECT d.id AS id, d.name AS name {from}");
    let mut query = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(account.to_string());
    for value in binds {
        query = query.bind(value);
    }
    let rows = query.fetch_all(&mut *conn).await?;
    rows.iter()
        .map(|row| Ok((uuid_column(row, "devices", "id")?, row.try_get("name")?)))
        .collect()
}

/// These clients of the account (at most a page's worth), by name.
pub async fn clients_by_ids(
    conn: &mut Conn,
    account: Uuid,
    ids: &[Uuid],
) -> Result<Vec<ClientRow>> {
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    let placeholders: Vec<String> = (0..ids.len()).map(|n| format!("${}", n + 2)).collect();
    let sql = format!(
        "SELECT {CLIENT_COLUMNS} FROM devices d LEFT JOIN actors a ON a.id = d.actor_id \
         WHERE d.account_id = $1 AND d.kind = 'client' AND d.id IN ({}) {CLIENT_ORDER}",
        placeholders.join(", ")
    );
    let mut query = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(account.to_string());
    for id in ids {
        query = query.bind(id.to_string());
    }
    let rows = query.fetch_all(&mut *conn).await?;
    rows.iter().map(client_row).collect()
}

/// One client with its owner.
pub async fn client_row_of(conn: &mut Conn, account: Uuid, id: Uuid) -> Result<Option<ClientRow>> {
    Ok(clients_by_ids(conn, account, &[id]).await?.pop())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{Store, accounts, actors};

    fn connecting<'a>(actor: Uuid, token: Uuid, id: &'a str) -> Connecting<'a> {
        Connecting {
            kind: DeviceKind::Client,
            actor_id: Some(actor),
            site_id: None,
            token_id: Some(token),
            device_id: id,
            name: id,
            os: None,
            version: None,
            remote_ip: None,
        }
    }

    fn service_account() -> crate::domain::Actor {
        crate::domain::Actor {
            id: Uuid::new_v4(),
            name: "ci".to_string(),
            email: None,
            role: crate::domain::Role::ServiceAccount,
            disabled: false,
            directory_id: None,
            created_at: crate::domain::from_millis(0),
        }
    }

    #[tokio::test]
    async fn devices_are_capped_per_actor_and_token_and_freed_addresses_come_back() {
        let store = Store::open("sqlite::memory:").await.unwrap();
        let mut tx = store.write().await.unwrap();
        let account = accounts::insert(&mut tx, "acme", "Acme", 0)
            .await
            .unwrap()
            .id;
        let actor = service_account();
        actors::insert(&mut tx, account, &actor).await.unwrap();
        let caps = DeviceCaps {
            per_actor: 3,
            per_token: 2,
        };
        let (one, two) = (Uuid::from_u128(1), Uuid::from_u128(2));
        let a = upsert_on_connect(&mut tx, account, &connecting(actor.id, one, "a"), caps, 0)
            .await
            .unwrap();
        let b = upsert_on_connect(&mut tx, account, &connecting(actor.id, one, "b"), caps, 0)
            .await
            .unwrap();
        // The token's cap: a third device is refused, a known one is not.
        let refused =
            upsert_on_connect(&mut tx, account, &connecting(actor.id, one, "c"), caps, 0).await;
        assert!(
            matches!(&refused, Err(StoreError::LimitReached(m)) if m.contains("--max-devices-per-token")),
            "{refused:?}"
        );
        upsert_on_connect(&mut tx, account, &connecting(actor.id, one, "a"), caps, 1)
            .await
            .unwrap();
        // Another token of the actor: the actor's cap.
        let c = upsert_on_connect(&mut tx, account, &connecting(actor.id, two, "c"), caps, 0)
            .await
            .unwrap();
        let refused =
            upsert_on_connect(&mut tx, account, &connecting(actor.id, two, "d"), caps, 0).await;
        assert!(
            matches!(&refused, Err(StoreError::LimitReached(m)) if m.contains("--max-devices-per-actor")),
            "{refused:?}"
        );
        // A deleted device's addresses are not handed out again while the
        // range lasts: the next new device gets the next fresh ones.
        assert!(
            delete(&mut tx, account, DeviceKind::Client, b.id)
                .await
                .unwrap()
        );
        let d = upsert_on_connect(&mut tx, account, &connecting(actor.id, two, "d"), caps, 0)
            .await
            .unwrap();
        assert_ne!((d.ipv4, d.ipv6), (b.ipv4, b.ipv6));
        assert_eq!(
            d.ipv4,
            device_addresses(4).unwrap().0,
            "the index after the highest"
        );
        assert_ne!(a.ipv4, c.ipv4);
        // Once the range is used up, the lowest gap (b's) is reused.
        sqlx::query("UPDATE devices SET address_index = $1 WHERE id = $2")
            .bind(capacity())
            .bind(d.id.to_string())
            .execute(&mut *tx)
            .await
            .unwrap();
        let roomy = DeviceCaps {
            per_actor: 10,
            per_token: 10,
        };
        let e = upsert_on_connect(&mut tx, account, &connecting(actor.id, two, "e"), roomy, 0)
            .await
            .unwrap();
        assert_eq!((e.ipv4, e.ipv6), (b.ipv4, b.ipv6));
        tx.commit().await.unwrap();
    }

    /// A known device is found through its unique index, not by walking
    /// the account's devices (see `touch_sql`).
    #[tokio::test]
    async fn touching_a_device_uses_its_unique_index() {
        let store = Store::open("sqlite::memory:").await.unwrap();
        let mut conn = store.conn().await.unwrap();
        for (kind, index) in [
            (DeviceKind::Client, "devices_client"),
            (DeviceKind::Gateway, "devices_gateway"),
        ] {
            let plan = format!("EXPLAIN QUERY PLAN {}", touch_sql(kind));
            let rows = sqlx::query(sqlx::AssertSqlSafe(plan))
                .bind("a")
                .bind("b")
                .bind("c")
                .bind("d")
                .fetch_all(&mut *conn)
                .await
                .unwrap();
            let details: Vec<String> = rows.iter().map(|r| r.try_get("detail").unwrap()).collect();
            assert!(
                details
                    .iter()
                    .any(|d| d.contains(&format!("INDEX {index} (account_id=? AND"))),
                "{kind:?}: {details:?}"
            );
        }
    }

    /// The batched writes of a group of connects: details of 150 devices
    /// (in several statements) and their sessions, the newest details kept.
    #[tokio::test]
    async fn details_and_sessions_of_many_devices_are_written_together() {
        let store = Store::open("sqlite::memory:").await.unwrap();
        let mut tx = store.write().await.unwrap();
        let account = accounts::insert(&mut tx, "acme", "Acme", 0)
            .await
            .unwrap()
            .id;
        let actor = service_account();
        actors::insert(&mut tx, account, &actor).await.unwrap();
        let roomy = DeviceCaps {
            per_actor: 1000,
            per_token: 1000,
        };
        let token = Uuid::from_u128(1);
        let mut devices = Vec::new();
        for n in 0..150 {
            let name = format!("d{n}");
            let device = upsert_on_connect(
                &mut tx,
                account,
                &connecting(actor.id, token, &name),
                roomy,
                0,
            )
            .await
            .unwrap();
            devices.push(device);
        }
        // A connect the caller already saw: touching finds it, unchanged.
        let again = touch_on_connect(&mut tx, account, &connecting(actor.id, token, "d7"))
            .await
            .unwrap()
            .unwrap();
        assert_eq!((again.id, again.ipv4), (devices[7].id, devices[7].ipv4));
        assert!(
            touch_on_connect(&mut tx, account, &connecting(actor.id, token, "new"))
                .await
                .unwrap()
                .is_none()
        );
        let seen = |n: usize, name: &'static str, at_ms: i64| Seen {
            account,
            device: devices[n].id,
            name,
            os: Some("linux"),
            version: Some("1.2.3"),
            remote_ip: format!("198.18.0.{}", n % 250),
            at_ms,
        };
        let mut batch: Vec<Seen<'_>> = (0..150).map(|n| seen(n, "laptop", 100)).collect();
        // Device 0 twice in one batch: the later record wins, wherever it is.
        batch.insert(0, seen(0, "newest", 300));
        batch.push(seen(0, "older", 200));
        // Device 1 was already seen later than this batch says.
        record_seen(&mut tx, &[seen(1, "already newer", 500)])
            .await
            .unwrap();
        record_seen(&mut tx, &batch).await.unwrap();
        let zero = get(&mut tx, account, DeviceKind::Client, devices[0].id)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(zero.name, "newest");
        let one = get(&mut tx, account, DeviceKind::Client, devices[1].id)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(one.name, "already newer");
        let last = get(&mut tx, account, DeviceKind::Client, devices[149].id)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            (
                last.name.as_str(),
                last.os.as_deref(),
                last.version.as_deref()
            ),
            ("laptop", Some("linux"), Some("1.2.3"))
        );
        assert_eq!(last.last_seen_ip.as_deref(), Some("198.18.0.149"));
        assert_eq!(last.last_seen_at, Some(crate::domain::from_millis(100)));

        let lines: Vec<crate::store::logs::NewSession<'_>> = devices
            .iter()
            .map(|d| crate::store::logs::NewSession {
                actor_id: Some(actor.id),
                device_id: Some(d.id),
                kind: "client_connect",
                remote_ip: Some("198.18.0.1".to_string()),
                user_agent: Some("postern"),
            })
            .collect();
        let lines: Vec<(Uuid, &crate::store::logs::NewSession<'_>)> =
            lines.iter().map(|line| (account, line)).collect();
        crate::store::logs::record_sessions(&mut tx, &lines, 42)
            .await
            .unwrap();
        let logged = crate::store::logs::sessions(&mut tx, account, None, 1000)
            .await
            .unwrap();
        assert_eq!(logged.len(), 150);
        // Newest first: the order given is the order logged.
        let order: Vec<Option<Uuid>> = logged.iter().rev().map(|l| l.device_id).collect();
        let given: Vec<Option<Uuid>> = devices.iter().map(|d| Some(d.id)).collect();
        assert_eq!(order, given);
        assert!(
            logged
                .iter()
                .all(|l| l.user_agent.as_deref() == Some("postern"))
        );
        tx.commit().await.unwrap();
    }
}
