//! The audit log: who changed what, with the object before and after, written
//! in the same transaction as the change itself.

use sqlx::Row;
use sqlx::any::AnyRow;
use uuid::Uuid;

use super::logs::Keyset;
use super::{Conn, Result, opt_uuid_column};
use crate::domain::{AuditEntry, from_millis};

/// Who made a change.
#[derive(Clone, Copy, Debug)]
pub struct Author {
    pub actor_id: Option<Uuid>,
    pub token_id: Option<Uuid>,
    /// A directory's change (SCIM, LDAP sync).
    pub directory_id: Option<Uuid>,
}

/// An audit log line to write (`domain::AuditEntry` is the line read back).
/// Not `state::Change`, which tells continuous evaluation what a commit touched.
#[derive(Debug)]
pub struct NewAuditEntry<'a> {
    pub action: &'a str,
    pub object_type: &'a str,
    pub object_id: String,
    pub before: Option<serde_json::Value>,
    pub after: Option<serde_json::Value>,
}

pub async fn record(
    conn: &mut Conn,
    account: Uuid,
    author: Author,
    entry: NewAuditEntry<'_>,
    now_ms: i64,
) -> Result<()> {
    sqlx::query(
        "INSERT INTO audit_log (account_id, at, actor_id, token_id, action, object_type, object_id, \
         before_json, after_json, directory_id) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
    )
    .bind(account.to_string())
    .bind(now_ms)
    .bind(author.actor_id.map(|id| id.to_string()))
    .bind(author.token_id.map(|id| id.to_string()))
    .bind(entry.action)
    .bind(entry.object_type)
    .bind(entry.object_id)
    .bind(entry.before.map(|v| v.to_string()))
    .bind(entry.after.map(|v| v.to_string()))
    .bind(author.directory_id.map(|id| id.to_string()))
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// Entries newest first, older than `before_cursor` if given.
pub async fn list(
    conn: &mut Conn,
    account: Uuid,
    before_cursor: Option<i64>,
    limit: i64,
) -> Result<Vec<AuditEntry>> {
    let rows = sqlx::query(
        "SELECT seq, at, actor_id, token_id, directory_id, action, object_type, object_id, before_json, \
         after_json FROM audit_log WHERE account_id = $1 AND seq < $2 ORDER BY seq DESC LIMIT $3",
    )
    .bind(account.to_string())
    .bind(before_cursor.unwrap_or(i64::MAX))
    .bind(limit)
    .fetch_all(&mut *conn)
    .await?;
    rows.iter().map(entry).collect()
}

fn entry(row: &AnyRow) -> Result<AuditEntry> {
    let json = |column: &str| -> Result<Option<serde_json::Value>> {
        let text: Option<String> = row.try_get(column)?;
        Ok(text.and_then(|t| serde_json::from_str(&t).ok()))
    };
    Ok(AuditEntry {
        cursor: row.try_get("seq")?,
        at: from_millis(row.try_get("at")?),
        actor_id: opt_uuid_column(row, "audit_log", "actor_id")?,
        token_id: opt_uuid_column(row, "audit_log", "token_id")?,
        directory_id: opt_uuid_column(row, "audit_log", "directory_id")?,
        action: row.try_get("action")?,
        object_type: row.try_get("object_type")?,
        object_id: row.try_get("object_id")?,
        before: json("before_json")?,
        after: json("after_json")?,
    })
}

/// What the console's audit log may filter by (every part optional).
#[derive(Clone, Debug, Default)]
pub struct AuditFilter {
    pub actor_id: Option<Uuid>,
    pub directory_id: Option<Uuid>,
    /// The whole action (`site.create`).
    pub action: Option<String>,
    /// The object type (`site`).
    pub object_type: Option<String>,
    pub object_id: Option<String>,
    /// Entries at or after this (Unix ms).
    pub since_ms: Option<i64>,
    /// Entries at or before this (Unix ms).
    pub until_ms: Option<i64>,
}

/// A page of the entries `filter` keeps, newest first, at `page`: keyset
/// paging on the log's position in both directions.
pub async fn search(
    conn: &mut Conn,
    account: Uuid,
    filter: &AuditFilter,
    page: Keyset,
    limit: i64,
) -> Result<Vec<AuditEntry>> {
    let (position, order, from) = page.sql();
    let sql = format!(
        "SELECT seq, at, actor_id, token_id, directory_id, action, object_type, object_id, \
         before_json, after_json FROM audit_log WHERE account_id = $1 AND seq {position} $2 \
         AND ($4 IS NULL OR actor_id = $4) AND ($5 IS NULL OR directory_id = $5) \
         AND ($6 IS NULL OR action = $6) AND ($7 IS NULL OR object_type = $7) \
         AND ($8 IS NULL OR object_id = $8) AND ($9 IS NULL OR at >= $9) \
         AND ($10 IS NULL OR at <= $10) ORDER BY seq {order} LIMIT $3"
    );
    let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(account.to_string())
        .bind(from)
        .bind(limit)
        .bind(filter.actor_id.map(|id| id.to_string()))
        .bind(filter.directory_id.map(|id| id.to_string()))
        .bind(filter.action.clone())
        .bind(filter.object_type.clone())
        .bind(filter.object_id.clone())
        .bind(filter.since_ms)
        .bind(filter.until_ms)
        .fetch_all(&mut *conn)
        .await?;
    let entries = rows.iter().map(entry).collect::<Result<Vec<_>>>()?;
    Ok(page.newest_first(entries))
}
