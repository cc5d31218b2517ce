//! The session log (sign-ins and channel connections) and the flow log that
//! gateways report (SPEC F28, F29).

use serde::Serialize;
use sqlx::Row;
use sqlx::any::AnyRow;
use utoipa::ToSchema;
use uuid::Uuid;

use super::{Conn, Result, opt_uuid_column};
use crate::domain::from_millis;

#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct SessionEntry {
    pub cursor: i64,
    #[schema(value_type = String, format = DateTime)]
    pub at: jiff::Timestamp,
    pub actor_id: Option<Uuid>,
    pub device_id: Option<Uuid>,
    pub kind: String,
    pub remote_ip: Option<String>,
    pub user_agent: Option<String>,
}

#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct FlowEntry {
    pub cursor: i64,
    pub gateway_id: String,
    pub client_id: String,
    pub resource_id: String,
    pub actor_id: Option<String>,
    pub protocol: i64,
    pub source: String,
    pub destination: String,
    pub bytes_in: i64,
    pub bytes_out: i64,
    #[schema(value_type = String, format = DateTime)]
    pub started_at: jiff::Timestamp,
    #[schema(value_type = Option<String>, format = DateTime)]
    pub ended_at: Option<jiff::Timestamp>,
}

/// Stores a gateway's ended flows in its account, each with the actor its
/// client belongs to; a flow naming a resource outside the gateway's site
/// is not stored (a gateway writes only its own account's log, about its
/// own site's resources). Times are kept at or before `now_ms` (a gateway's
/// clock, or a forged time, cannot put entries past retention).
pub async fn record_flows(
    conn: &mut Conn,
    account: Uuid,
    gateway: Uuid,
    flows: &[postern_model::protocol::FlowRecord],
    now_ms: i64,
) -> Result<u64> {
    let mut stored = 0;
    for flow in flows {
        let ended = flow.ended_ms.min(now_ms);
        let started = flow.started_ms.min(ended);
        let result = sqlx::query(
            "INSERT INTO flows (account_id, gateway_id, client_id, resource_id, actor_id, protocol,              source, destination, bytes_in, bytes_out, started_at, ended_at)              SELECT $1, $2, $3, $4,              (SELECT actor_id FROM devices WHERE id = $3 AND account_id = $1),              $5, $6, $7, $8, $9, $10, $11              WHERE EXISTS (SELECT 1 FROM resources r JOIN devices g ON g.site_id = r.site_id \
             WHERE r.id = $4 AND r.account_id = $1 AND g.id = $2 AND g.account_id = $1)",
        )
        .bind(account.to_string())
        .bind(gateway.to_string())
        .bind(flow.client_id.0.to_string())
        .bind(flow.resource_id.0.to_string())
        .bind(i64::from(flow.protocol))
        .bind(flow.source.to_string())
        .bind(flow.destination.to_string())
        .bind(i64::try_from(flow.bytes_in).unwrap_or(i64::MAX))
        .bind(i64::try_from(flow.bytes_out).unwrap_or(i64::MAX))
        .bind(started)
        .bind(ended)
        .execute(&mut *conn)
        .await?;
        stored += result.rows_affected();
    }
    Ok(stored)
}

/// What `GET /flows` may filter by.
#[derive(Clone, Debug, Default)]
pub struct FlowFilter {
    pub resource_id: Option<Uuid>,
    pub actor_id: Option<Uuid>,
    /// Flows that ended at or after this (Unix ms).
    pub since_ms: Option<i64>,
    /// Flows that started at or before this (Unix ms).
    pub until_ms: Option<i64>,
}

/// A session log line to write.
#[derive(Debug)]
pub struct NewSession<'a> {
    pub actor_id: Option<Uuid>,
    pub device_id: Option<Uuid>,
    pub kind: &'a str,
    pub remote_ip: Option<String>,
    pub user_agent: Option<&'a str>,
}

pub async fn record_session(
    conn: &mut Conn,
    account: Uuid,
    session: &NewSession<'_>,
    now_ms: i64,
) -> Result<()> {
    record_sessions(conn, &[(account, session)], now_ms).await
}

/// Session lines of any accounts, 32 to a statement (a batch of
/// connects logs its sessions together), in the order given.
pub async fn record_sessions(
    conn: &mut Conn,
    sessions: &[(Uuid, &NewSession<'_>)],
    now_ms: i64,
) -> Result<()> {
    for chunk in super::row_chunks(sessions, 32) {
        let rows = super::value_rows(chunk.len(), 7);
        let sql = format!(
            "INSERT INTO sessions (account_id, at, actor_id, device_id, kind, remote_ip, \
             user_agent) VALUES {rows}"
        );
        let mut query = sqlx::query(sqlx::AssertSqlSafe(sql));
        for (account, session) in chunk {
            query = query
                .bind(account.to_string())
                .bind(now_ms)
                .bind(session.actor_id.map(|id| id.to_string()))
                .bind(session.device_id.map(|id| id.to_string()))
                .bind(session.kind)
                .bind(session.remote_ip.clone())
                .bind(session.user_agent);
        }
        query.execute(&mut *conn).await?;
    }
    Ok(())
}

pub async fn sessions(
    conn: &mut Conn,
    account: Uuid,
    before: Option<i64>,
    limit: i64,
) -> Result<Vec<SessionEntry>> {
    let rows = sqlx::query(
        "SELECT seq, at, actor_id, device_id, kind, remote_ip, user_agent FROM sessions \
         WHERE account_id = $1 AND seq < $2 ORDER BY seq DESC LIMIT $3",
    )
    .bind(account.to_string())
    .bind(before.unwrap_or(i64::MAX))
    .bind(limit)
    .fetch_all(&mut *conn)
    .await?;
    rows.iter().map(session_entry).collect()
}

fn session_entry(row: &AnyRow) -> Result<SessionEntry> {
    Ok(SessionEntry {
        cursor: row.try_get("seq")?,
        at: from_millis(row.try_get("at")?),
        actor_id: opt_uuid_column(row, "sessions", "actor_id")?,
        device_id: opt_uuid_column(row, "sessions", "device_id")?,
        kind: row.try_get("kind")?,
        remote_ip: row.try_get("remote_ip")?,
        user_agent: row.try_get("user_agent")?,
    })
}

pub async fn flows(
    conn: &mut Conn,
    account: Uuid,
    filter: &FlowFilter,
    before: Option<i64>,
    limit: i64,
) -> Result<Vec<FlowEntry>> {
    let rows = sqlx::query(
        "SELECT seq, gateway_id, client_id, resource_id, actor_id, protocol, source, destination, \
         bytes_in, bytes_out, started_at, ended_at FROM flows \
         WHERE account_id = $1 AND seq < $2 \
         AND ($4 IS NULL OR resource_id = $4) AND ($5 IS NULL OR actor_id = $5) \
         AND ($6 IS NULL OR COALESCE(ended_at, started_at) >= $6) \
         AND ($7 IS NULL OR started_at <= $7) \
         ORDER BY seq DESC LIMIT $3",
    )
    .bind(account.to_string())
    .bind(before.unwrap_or(i64::MAX))
    .bind(limit)
    .bind(filter.resource_id.map(|id| id.to_string()))
    .bind(filter.actor_id.map(|id| id.to_string()))
    .bind(filter.since_ms)
    .bind(filter.until_ms)
    .fetch_all(&mut *conn)
    .await?;
    rows.iter().map(flow_entry).collect()
}

fn flow_entry(row: &AnyRow) -> Result<FlowEntry> {
    Ok(FlowEntry {
        cursor: row.try_get("seq")?,
        gateway_id: row.try_get("gateway_id")?,
        client_id: row.try_get("client_id")?,
        resource_id: row.try_get("resource_id")?,
        actor_id: row.try_get("actor_id")?,
        protocol: row.try_get("protocol")?,
        source: row.try_get("source")?,
        destination: row.try_get("destination")?,
        bytes_in: row.try_get("bytes_in")?,
        bytes_out: row.try_get("bytes_out")?,
        started_at: from_millis(row.try_get("started_at")?),
        ended_at: row.try_get::<Option<i64>, _>("ended_at")?.map(from_millis),
    })
}

/// Which page of a log the console shows: the newest entries, those just
/// older than a position, or those just newer than one. Pages are always
/// handed back newest first.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Keyset {
    Newest,
    Before(i64),
    After(i64),
}

impl Keyset {
    /// The position test, the order to read in and the position bound.
    pub(crate) fn sql(self) -> (&'static str, &'static str, i64) {
        match self {
            Keyset::Newest => ("<", "DESC", i64::MAX),
            Keyset::Before(position) => ("<", "DESC", position),
            Keyset::After(position) => (">", "ASC", position),
        }
    }

    /// Rows as read, newest first.
    pub(crate) fn newest_first<T>(self, mut rows: Vec<T>) -> Vec<T> {
        if let Keyset::After(_) = self {
            rows.reverse();
        }
        rows
    }
}

/// What the console's session log may filter by.
#[derive(Clone, Debug, Default)]
pub struct SessionFilter {
    pub actor_id: Option<Uuid>,
    pub device_id: Option<Uuid>,
    pub kind: Option<String>,
    /// Entries at or after this (Unix ms).
    pub since_ms: Option<i64>,
    /// Entries at or before this (Unix ms).
    pub until_ms: Option<i64>,
}

/// A page of the sessions `filter` keeps, newest first.
pub async fn search_sessions(
    conn: &mut Conn,
    account: Uuid,
    filter: &SessionFilter,
    page: Keyset,
    limit: i64,
) -> Result<Vec<SessionEntry>> {
    let (position, order, from) = page.sql();
    let sql = format!(
        "SELECT seq, at, actor_id, device_id, kind, remote_ip, user_agent FROM sessions \
         WHERE account_id = $1 AND seq {position} $2 \
         AND ($4 IS NULL OR actor_id = $4) AND ($5 IS NULL OR device_id = $5) \
         AND ($6 IS NULL OR kind = $6) AND ($7 IS NULL OR at >= $7) \
         AND ($8 IS NULL OR at <= $8) ORDER BY seq {order} LIMIT $3"
    );
    let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(account.to_string())
        .bind(from)
        .bind(limit)
        .bind(filter.actor_id.map(|id| id.to_string()))
        .bind(filter.device_id.map(|id| id.to_string()))
        .bind(filter.kind.clone())
        .bind(filter.since_ms)
        .bind(filter.until_ms)
        .fetch_all(&mut *conn)
        .await?;
    let entries = rows.iter().map(session_entry).collect::<Result<Vec<_>>>()?;
    Ok(page.newest_first(entries))
}

/// What the console's flow log may filter by: the API's filters, and the
/// client and gateway.
#[derive(Clone, Debug, Default)]
pub struct FlowSearch {
    pub filter: FlowFilter,
    pub client_id: Option<Uuid>,
    pub gateway_id: Option<Uuid>,
}

/// A page of the flows `search` keeps, newest first.
pub async fn search_flows(
    conn: &mut Conn,
    account: Uuid,
    search: &FlowSearch,
    page: Keyset,
    limit: i64,
) -> Result<Vec<FlowEntry>> {
    let (position, order, from) = page.sql();
    let sql = format!(
        "SELECT seq, gateway_id, client_id, resource_id, actor_id, protocol, source, destination, \
         bytes_in, bytes_out, started_at, ended_at FROM flows \
         WHERE account_id = $1 AND seq {position} $2 \
         AND ($4 IS NULL OR resource_id = $4) AND ($5 IS NULL OR actor_id = $5) \
         AND ($6 IS NULL OR COALESCE(ended_at, started_at) >= $6) \
         AND ($7 IS NULL OR started_at <= $7) \
         AND ($8 IS NULL OR client_id = $8) AND ($9 IS NULL OR gateway_id = $9) \
         ORDER BY seq {order} LIMIT $3"
    );
    let filter = &search.filter;
    let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(account.to_string())
        .bind(from)
        .bind(limit)
        .bind(filter.resource_id.map(|id| id.to_string()))
        .bind(filter.actor_id.map(|id| id.to_string()))
        .bind(filter.since_ms)
        .bind(filter.until_ms)
        .bind(search.client_id.map(|id| id.to_string()))
        .bind(search.gateway_id.map(|id| id.to_string()))
        .fetch_all(&mut *conn)
        .await?;
    let entries = rows.iter().map(flow_entry).collect::<Result<Vec<_>>>()?;
    Ok(page.newest_first(entries))
}

/// The tables whose rows a log names, with the column a person knows
/// each by.
const NAMED: [(&str, &str); 8] = [
    ("actors", "name"),
    ("devices", "name"),
    ("groups", "name"),
    ("sites", "name"),
    ("resources", "name"),
    ("policies", "description"),
    ("identity_providers", "name"),
    ("directories", "name"),
];

/// Most ids one [`names`] call looks up (a page names a few hundred).
pub const MAX_NAMED: usize = 1_000;

/// The names of the account's objects among `ids` (actors, devices,
/// groups, sites, resources, policies by description, sign-in providers,
/// directories), by id: one query for a whole page of a log. Ids of
/// deleted objects, and more than [`MAX_NAMED`], are left out.
pub async fn names(
    conn: &mut Conn,
    account: Uuid,
    ids: &[String],
) -> Result<std::collections::HashMap<String, String>> {
    let mut ids: Vec<&str> = ids.iter().map(String::as_str).collect();
    ids.sort_unstable();
    ids.dedup();
    ids.truncate(MAX_NAMED);
    if ids.is_empty() {
        return Ok(Default::default());
    }
    let list = (0..ids.len())
        .map(|n| format!("${}", n + 2))
        .collect::<Vec<_>>()
        .join(", ");
    let sql = NAMED
        .iter()
        .map(|(table, column)| {
            format!(
                "SELECT id, {column} AS name FROM {table} WHERE account_id = $1 AND id IN ({list})"
            )
        })
        .collect::<Vec<_>>()
        .join(" UNION ALL ");
    let mut query = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(account.to_string());
    for id in ids {
        query = query.bind(id.to_string());
    }
    let rows = query.fetch_all(&mut *conn).await?;
    rows.iter()
        .map(|row| Ok((row.try_get("id")?, row.try_get("name")?)))
        .collect()
}

/// Rows one pruning transaction deletes at most: each is short, so writers
/// never wait long behind it.
pub const PRUNE_BATCH: i64 = 1_000;

/// Deletes up to [`PRUNE_BATCH`] rows older than `before_ms` from one log
/// (`audit_log`, `sessions`: by `at`; `flows`: by when they ended); how
/// many it deleted (0: done).
pub async fn prune_batch(conn: &mut Conn, log: Log, before_ms: i64) -> Result<u64> {
    let sql = match log {
        Log::Audit => {
            "DELETE FROM audit_log WHERE seq IN \
             (SELECT seq FROM audit_log WHERE at < $1 ORDER BY seq LIMIT $2)"
        }
        Log::Sessions => {
            "DELETE FROM sessions WHERE seq IN \
             (SELECT seq FROM sessions WHERE at < $1 ORDER BY seq LIMIT $2)"
        }
        Log::Flows => {
            "DELETE FROM flows WHERE seq IN (SELECT seq FROM flows \
             WHERE COALESCE(ended_at, started_at) < $1 ORDER BY seq LIMIT $2)"
        }
    };
    let result = sqlx::query(sql)
        .bind(before_ms)
        .bind(PRUNE_BATCH)
        .execute(&mut *conn)
        .await?;
    Ok(result.rows_affected())
}

/// The logs that retention prunes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Log {
    Audit,
    Sessions,
    Flows,
}
