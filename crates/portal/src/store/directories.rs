//! Directories (SCIM and LDAP) and the entries each one provisioned: the
//! document a directory keeps of a user or group, next to the actor or
//! group row the rest of the portal reads.

use jiff::Timestamp;
use sqlx::Row;
use sqlx::any::AnyRow;
use uuid::Uuid;

use super::{Conn, Result, Scoped, StoreError, classify, uuid_column};
use crate::domain::{Directory, DirectoryKind, MintedToken, from_millis};

impl Scoped for Directory {
    const TABLE: &'static str = "directories";
    const COLUMNS: &'static str =
        "id, name, type, settings, last_sync_at, last_sync, last_error, created_at";

    fn from_row(row: &AnyRow) -> Result<Directory> {
        let kind: String = row.try_get("type")?;
        let corrupt = |detail: String| StoreError::Corrupt {
            table: Self::TABLE,
            detail,
        };
        let json = |column: &str| -> Result<Option<serde_json::Value>> {
            let text: Option<String> = row.try_get(column)?;
            text.map(|t| {
                serde_json::from_str(&t).map_err(|e| corrupt(format!("{column} is not JSON: {e}")))
            })
            .transpose()
        };
        Ok(Directory {
            id: uuid_column(row, Self::TABLE, "id")?,
            name: row.try_get("name")?,
            kind: match kind.as_str() {
                "scim" => DirectoryKind::Scim,
                "ldap" => DirectoryKind::Ldap,
                other => return Err(corrupt(format!("unknown type {other:?}"))),
            },
            settings: json("settings")?.unwrap_or_default(),
            last_sync_at: row
                .try_get::<Option<i64>, _>("last_sync_at")?
                .map(from_millis),
            last_sync: json("last_sync")?,
            last_error: row.try_get("last_error")?,
            created_at: from_millis(row.try_get("created_at")?),
        })
    }
}

pub async fn insert(conn: &mut Conn, account: Uuid, directory: &Directory) -> Result<()> {
    sqlx::query(
        "INSERT INTO directories (id, account_id, type, name, settings, created_at, updated_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $6)",
    )
    .bind(directory.id.to_string())
    .bind(account.to_string())
    .bind(directory.kind.as_str())
    .bind(&directory.name)
    .bind(directory.settings.to_string())
    .bind(directory.created_at.as_millisecond())
    .execute(&mut *conn)
    .await
    .map_err(classify)?;
    Ok(())
}

pub async fn get(conn: &mut Conn, account: Uuid, id: Uuid) -> Result<Option<Directory>> {
    super::get_scoped(conn, account, id).await
}

pub async fn list(conn: &mut Conn, account: Uuid) -> Result<Vec<Directory>> {
    super::list_scoped(conn, account).await
}

/// Every directory of every account, with its account: the LDAP scheduler.
pub async fn all_ldap(conn: &mut Conn) -> Result<Vec<(Uuid, Directory)>> {
    let sql = format!(
        "SELECT account_id, {} FROM directories WHERE type = 'ldap' ORDER BY created_at, id",
        Directory::COLUMNS
    );
    let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
        .fetch_all(&mut *conn)
        .await?;
    rows.iter()
        .map(|row| {
            Ok((
                uuid_column(row, "directories", "account_id")?,
                Directory::from_row(row)?,
            ))
        })
        .collect()
}

pub async fn update(
    conn: &mut Conn,
    account: Uuid,
    directory: &Directory,
    now_ms: i64,
) -> Result<()> {
    sqlx::query(
        "UPDATE directories SET name = $1, settings = $2, updated_at = $3 \
         WHERE account_id = $4 AND id = $5",
    )
    .bind(&directory.name)
    .bind(directory.settings.to_string())
    .bind(now_ms)
    .bind(account.to_string())
    .bind(directory.id.to_string())
    .execute(&mut *conn)
    .await
    .map_err(classify)?;
    Ok(())
}

/// Deletes a directory. What it provisioned stays, released to the admins:
/// removing a directory must not lock everyone out by surprise.
pub async fn delete(conn: &mut Conn, account: Uuid, id: Uuid) -> Result<bool> {
    for table in ["actors", "groups"] {
        let sql = format!(
            "UPDATE {table} SET directory_id = NULL WHERE account_id = $1 AND directory_id = $2"
        );
        sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(account.to_string())
            .bind(id.to_string())
            .execute(&mut *conn)
            .await?;
    }
    super::delete_scoped::<Directory>(conn, account, id).await
}

/// Gives a SCIM directory a new token (the old one stops working).
pub async fn set_token(
    conn: &mut Conn,
    account: Uuid,
    id: Uuid,
    minted: &MintedToken,
) -> Result<()> {
    sqlx::query(
        "UPDATE directories SET token_id = $1, token_salt = $2, token_hash = $3 \
         WHERE account_id = $4 AND id = $5",
    )
    .bind(minted.id.to_string())
    .bind(&minted.salt)
    .bind(&minted.hash)
    .bind(account.to_string())
    .bind(id.to_string())
    .execute(&mut *conn)
    .await
    .map_err(classify)?;
    Ok(())
}

/// The directory whose token has this id, with its account, salt and hash.
pub async fn by_token(
    conn: &mut Conn,
    token_id: Uuid,
) -> Result<Option<(Uuid, Directory, String, String)>> {
    let sql = format!(
        "SELECT account_id, token_salt, token_hash, {} FROM directories WHERE token_id = $1",
        Directory::COLUMNS
    );
    let row = sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(token_id.to_string())
        .fetch_optional(&mut *conn)
        .await?;
    row.map(|row| {
        Ok((
            uuid_column(&row, "directories", "account_id")?,
            Directory::from_row(&row)?,
            row.try_get("token_salt")?,
            row.try_get("token_hash")?,
        ))
    })
    .transpose()
}

/// Records a sync's outcome: its counts, or its error (the counts of the
/// last success stay).
pub async fn record_sync(
    conn: &mut Conn,
    id: Uuid,
    at: Timestamp,
    outcome: std::result::Result<&serde_json::Value, &str>,
) -> Result<()> {
    let query = match outcome {
        Ok(counts) => sqlx::query(
            "UPDATE directories SET last_sync_at = $1, last_sync = $2, last_error = NULL \
             WHERE id = $3",
        )
        .bind(at.as_millisecond())
        .bind(counts.to_string()),
        Err(error) => {
            sqlx::query("UPDATE directories SET last_sync_at = $1, last_error = $2 WHERE id = $3")
                .bind(at.as_millisecond())
                .bind(error.to_string())
        }
    };
    query.bind(id.to_string()).execute(&mut *conn).await?;
    Ok(())
}

/// A user or group a directory provisioned, as the directory describes it.
#[derive(Clone, Debug, PartialEq)]
pub struct Entry {
    /// The actor's or group's id, which is also the SCIM id.
    pub id: Uuid,
    pub kind: EntryKind,
    /// userName or displayName in lower case (unique per directory and kind).
    pub name_key: String,
    pub external_id: Option<String>,
    pub document: serde_json::Map<String, serde_json::Value>,
    /// Bumped at each change: the entity tag.
    pub version: i64,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum EntryKind {
    User,
    Group,
}

impl EntryKind {
    fn as_str(self) -> &'static str {
        match self {
            EntryKind::User => "user",
            EntryKind::Group => "group",
        }
    }
}

const ENTRY_COLUMNS: &str =
    "id, kind, name_key, external_id, document, version, created_at, updated_at";

fn entry_from_row(row: &AnyRow) -> Result<Entry> {
    let kind: String = row.try_get("kind")?;
    let document: String = row.try_get("document")?;
    let corrupt = |detail: String| StoreError::Corrupt {
        table: "directory_entries",
        detail,
    };
    Ok(Entry {
        id: uuid_column(row, "directory_entries", "id")?,
        kind: match kind.as_str() {
            "user" => EntryKind::User,
            "group" => EntryKind::Group,
            other => return Err(corrupt(format!("unknown kind {other:?}"))),
        },
        name_key: row.try_get("name_key")?,
        external_id: row.try_get("external_id")?,
        document: serde_json::from_str(&document)
            .map_err(|e| corrupt(format!("document is not a JSON object: {e}")))?,
        version: row.try_get("version")?,
        created_at: from_millis(row.try_get("created_at")?),
        updated_at: from_millis(row.try_get("updated_at")?),
    })
}

pub async fn entry(
    conn: &mut Conn,
    directory: Uuid,
    kind: EntryKind,
    id: Uuid,
) -> Result<Option<Entry>> {
    let sql = format!(
        "SELECT {ENTRY_COLUMNS} FROM directory_entries WHERE directory_id = $1 AND kind = $2 \
         AND id = $3"
    );
    let row = sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(directory.to_string())
        .bind(kind.as_str())
        .bind(id.to_string())
        .fetch_optional(&mut *conn)
        .await?;
    row.as_ref().map(entry_from_row).transpose()
}

/// The directory's entries of one kind, oldest first.
pub async fn entries(conn: &mut Conn, directory: Uuid, kind: EntryKind) -> Result<Vec<Entry>> {
    let sql = format!(
        "SELECT {ENTRY_COLUMNS} FROM directory_entries WHERE directory_id = $1 AND kind = $2 \
         ORDER BY created_at, id"
    );
    let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(directory.to_string())
        .bind(kind.as_str())
        .fetch_all(&mut *conn)
        .await?;
    rows.iter().map(entry_from_row).collect()
}

/// The entry of this kind whose name key is `name_key`, the index's answer
/// to the `userName eq "..."` lookups identity providers make for each user.
pub async fn entry_by_name(
    conn: &mut Conn,
    directory: Uuid,
    kind: EntryKind,
    name_key: &str,
) -> Result<Option<Entry>> {
    let sql = format!(
        "SELECT {ENTRY_COLUMNS} FROM directory_entries WHERE directory_id = $1 AND kind = $2 \
         AND name_key = $3"
    );
    let row = sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(directory.to_string())
        .bind(kind.as_str())
        .bind(name_key)
        .fetch_optional(&mut *conn)
        .await?;
    row.as_ref().map(entry_from_row).transpose()
}

/// Inserts or replaces an entry (the caller bumped its version).
pub async fn put_entry(
    conn: &mut Conn,
    account: Uuid,
    directory: Uuid,
    entry: &Entry,
) -> Result<()> {
    sqlx::query(
        "INSERT INTO directory_entries (id, account_id, directory_id, kind, name_key, external_id, \
         document, version, created_at, updated_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, \
         $10) ON CONFLICT (id) DO UPDATE SET name_key = $5, external_id = $6, document = $7, \
         version = $8, updated_at = $10 WHERE directory_entries.directory_id = $3",
    )
    .bind(entry.id.to_string())
    .bind(account.to_string())
    .bind(directory.to_string())
    .bind(entry.kind.as_str())
    .bind(&entry.name_key)
    .bind(entry.external_id.clone())
    .bind(serde_json::Value::Object(entry.document.clone()).to_string())
    .bind(entry.version)
    .bind(entry.created_at.as_millisecond())
    .bind(entry.updated_at.as_millisecond())
    .execute(&mut *conn)
    .await
    .map_err(classify)?;
    Ok(())
}

pub async fn delete_entry(conn: &mut Conn, directory: Uuid, id: Uuid) -> Result<bool> {
    let done = sqlx::query("DELETE FROM directory_entries WHERE directory_id = $1 AND id = $2")
        .bind(directory.to_string())
        .bind(id.to_string())
        .execute(&mut *conn)
        .await?;
    Ok(done.rows_affected() > 0)
}

/// The ids of the directory's entries of one kind (without their documents).
pub async fn entry_ids(conn: &mut Conn, directory: Uuid, kind: EntryKind) -> Result<Vec<Uuid>> {
    let rows =
        sqlx::query("SELECT id FROM directory_entries WHERE directory_id = $1 AND kind = $2")
            .bind(directory.to_string())
            .bind(kind.as_str())
            .fetch_all(&mut *conn)
            .await?;
    rows.iter()
        .map(|row| uuid_column(row, "directory_entries", "id"))
        .collect()
}

/// Takes the directory's row lock for the rest of the transaction, so that
/// its writes (SCIM requests, syncs, on every portal node) run one after the
/// other: each reads what the previous one wrote. A no-op update: SQLite's
/// writer lock already serializes, PostgreSQL locks the row.
pub async fn lock(conn: &mut Conn, directory: Uuid) -> Result<bool> {
    let done = sqlx::query("UPDATE directories SET updated_at = updated_at WHERE id = $1")
        .bind(directory.to_string())
        .execute(&mut *conn)
        .await?;
    Ok(done.rows_affected() > 0)
}

/// What a directory owns, for listing names.
#[derive(Clone, Copy, Debug)]
pub enum Owned {
    Users,
    Groups,
}

/// The first `limit` names (by name) of the users or groups a directory owns.
pub async fn owned_names(
    conn: &mut Conn,
    account: Uuid,
    directory: &str,
    owned: Owned,
    limit: i64,
) -> Result<Vec<String>> {
    let sql = match owned {
        Owned::Groups => {
            "SELECT name FROM groups WHERE account_id = $1 AND directory_id = $2 ORDER BY name LIMIT $3"
        }
        Owned::Users => {
            "SELECT name FROM actors WHERE account_id = $1 AND directory_id = $2 ORDER BY name LIMIT $3"
        }
    };
    let rows = sqlx::query(sql)
        .bind(account.to_string())
        .bind(directory)
        .bind(limit)
        .fetch_all(&mut *conn)
        .await?;
    rows.iter().map(|r| Ok(r.try_get("name")?)).collect()
}
