//! `postern portal backup` and `restore` (SPEC 7.2). A backup is an SQLite
//! database file: `VACUUM INTO` writes it from one read transaction, so it
//! is consistent while the portal goes on serving writes (none is half in
//! it). A restore reads such a file (migrated forward first, so an older
//! backup restores into this version) and copies it, row by row, into an
//! empty database of either engine. PostgreSQL databases are backed up
//! with `pg_dump` (docs/operations.md); restoring a Postern backup into
//! PostgreSQL is how a portal moves from SQLite to PostgreSQL.
//!
//! The copy is written here rather than with a migration tool: it is one
//! loop over tables the schema already names, with the two column types
//! Postern uses (integers and text).

use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::fs::DirBuilderExt as _;
use std::path::{Path, PathBuf};

use sqlx::{AssertSqlSafe, Row};

use super::{Engine, Store, StoreError};

/// The table sqlx keeps its migrations in: the target has its own.
const MIGRATIONS_TABLE: &str = "_sqlx_migrations";

#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    #[error(
        "postern portal backup copies SQLite databases; back PostgreSQL up with \
         `pg_dump --format=custom` (docs/operations.md)"
    )]
    PostgresSource,
    #[error("{0} exists already; give a new file")]
    Exists(String),
    #[error("cannot read the backup {path}: {reason}")]
    Unreadable { path: String, reason: String },
    #[error("{0} is not an SQLite database path")]
    NotAFile(String),
    #[error("the target database is not empty ({0} has rows): restore into a new, empty database")]
    NotEmpty(String),
    #[error("the backup names {0:?}, which is not a table or column of Postern's schema")]
    Name(String),
    #[error("{table}.{column}: {reason}")]
    Value {
        table: String,
        column: String,
        reason: String,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<sqlx::Error> for BackupError {
    fn from(error: sqlx::Error) -> Self {
        BackupError::Store(StoreError::Database(error))
    }
}

/// What a restore copied.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Copied {
    pub tables: usize,
    pub rows: u64,
}

impl Store {
    /// Writes a consistent copy of this (SQLite) database to `output`, a
    /// new file, mode 0600.
    pub async fn backup_to(&self, output: &Path) -> Result<(), BackupError> {
        if self.engine != Engine::Sqlite {
            return Err(BackupError::PostgresSource);
        }
        let shown = output.display().to_string();
        if output.exists() {
            return Err(BackupError::Exists(shown));
        }
        let text = output
            .to_str()
            .ok_or(BackupError::NotAFile(shown.clone()))?;
        // Created 0600 first: VACUUM INTO fills an empty file.
        create_private(output).map_err(|error| BackupError::Unreadable {
            path: shown,
            reason: error.to_string(),
        })?;
        let mut conn = self.pool.acquire().await?;
        sqlx::query("VACUUM INTO $1")
            .bind(text)
            .execute(&mut *conn)
            .await?;
        Ok(())
    }
}

/// Copies the backup at `input` into the empty database at `target_url`.
pub async fn restore(input: &Path, target_url: &str) -> Result<Copied, BackupError> {
    let shown = input.display().to_string();
    let unreadable = |reason: String| BackupError::Unreadable {
        path: shown.clone(),
        reason,
    };
    let mut header = [0u8; 16];
    std::fs::File::open(input)
        .and_then(|mut file| std::io::Read::read_exact(&mut file, &mut header))
        .map_err(|error| unreadable(error.to_string()))?;
    if &header != b"SQLite format 3\0" {
        return Err(unreadable("not an SQLite database".to_string()));
    }
    // The backup itself stays as it is: a working copy is migrated.
    let work = WorkCopy::of(input).map_err(|error| unreadable(error.to_string()))?;
    let source = Store::open(&work.url())
        .await
        .map_err(|error| unreadable(error.to_string()))?;
    let target = Store::open(target_url).await?;
    let tables = tables_in_order(&source).await?;
    let mut tx = target.write().await?;
    for table in &tables {
        let query = format!("SELECT 1 FROM {} LIMIT 1", table.name);
        if sqlx::query(AssertSqlSafe(query))
            .fetch_optional(&mut *tx)
            .await?
            .is_some()
        {
            return Err(BackupError::NotEmpty(table.name.clone()));
        }
    }
    let mut copied = Copied::default();
    let mut reader = source.read().await?;
    for table in &tables {
        let columns: Vec<&str> = table.columns.iter().map(|c| c.name.as_str()).collect();
        let select = format!("SELECT {} FROM {}", columns.join(", "), table.name);
        let placeholders: Vec<String> = (1..=columns.len()).map(|n| format!("${n}")).collect();
        let insert = format!(
            "INSERT INTO {} ({}) VALUES ({})",
            table.name,
            columns.join(", "),
            placeholders.join(", ")
        );
        for row in sqlx::query(AssertSqlSafe(select.clone()))
            .fetch_all(&mut *reader)
            .await?
        {
            let mut query = sqlx::query(AssertSqlSafe(insert.clone()));
            for (index, column) in table.columns.iter().enumerate() {
                let value = |error: sqlx::Error| BackupError::Value {
                    table: table.name.clone(),
                    column: column.name.clone(),
                    reason: error.to_string(),
                };
                query = if column.integer {
                    query.bind(row.try_get::<Option<i64>, _>(index).map_err(value)?)
                } else {
                    query.bind(row.try_get::<Option<String>, _>(index).map_err(value)?)
                };
            }
            query.execute(&mut *tx).await?;
            copied.rows += 1;
        }
        copied.tables += 1;
    }
    if target.engine() == Engine::Postgres {
        // BIGSERIAL columns go on after the copied rows.
        for table in &tables {
            for column in table.columns.iter().filter(|c| c.autoincrement) {
                let query = format!(
                    "SELECT setval(pg_get_serial_sequence('{t}', '{c}'), \
                     COALESCE((SELECT MAX({c}) FROM {t}), 0) + 1, false)",
                    t = table.name,
                    c = column.name
                );
                sqlx::query(AssertSqlSafe(query)).execute(&mut *tx).await?;
            }
        }
    }
    tx.commit().await?;
    reader.commit().await?;
    source.close().await;
    target.close().await;
    Ok(copied)
}

#[derive(Debug)]
struct Column {
    name: String,
    integer: bool,
    /// An INTEGER PRIMARY KEY: a sequence on PostgreSQL.
    autoincrement: bool,
}

#[derive(Debug)]
struct Table {
    name: String,
    columns: Vec<Column>,
}

/// The tables of the (migrated) backup, parents before the tables that
/// refer to them.
async fn tables_in_order(source: &Store) -> Result<Vec<Table>, BackupError> {
    let mut conn = source.read().await?;
    let names: Vec<String> = sqlx::query(
        "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' \
         ORDER BY name",
    )
    .fetch_all(&mut *conn)
    .await?
    .iter()
    .map(|row| row.try_get::<String, _>(0))
    .collect::<Result<_, _>>()?;
    let mut tables = BTreeMap::new();
    let mut parents: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for name in names.into_iter().filter(|n| n != MIGRATIONS_TABLE) {
        // Names come from a file: only plain identifiers go into SQL.
        identifier(&name)?;
        let mut columns = Vec::new();
        let info = sqlx::query(AssertSqlSafe(format!("PRAGMA table_info({name})")))
            .fetch_all(&mut *conn)
            .await?;
        for row in info {
            let column: String = row.try_get("name")?;
            identifier(&column)?;
            let declared: String = row.try_get("type")?;
            let key: i64 = row.try_get("pk")?;
            let integer = declared.to_ascii_uppercase().contains("INT");
            columns.push(Column {
                name: column,
                integer,
                autoincrement: integer && key == 1 && declared.eq_ignore_ascii_case("INTEGER"),
            });
        }
        let references = sqlx::query(AssertSqlSafe(format!("PRAGMA foreign_key_list({name})")))
            .fetch_all(&mut *conn)
            .await?;
        let mut own = BTreeSet::new();
        for row in references {
            let parent: String = row.try_get("table")?;
            if parent != name {
                own.insert(parent);
            }
        }
        parents.insert(name.clone(), own);
        tables.insert(name.clone(), Table { name, columns });
    }
    conn.commit().await?;
    // Parents first (Kahn); a cycle, which the schema does not have, would
    // leave its tables in name order at the end.
    let mut ordered = Vec::new();
    let mut done: BTreeSet<String> = BTreeSet::new();
    while done.len() < parents.len() {
        let ready: Vec<String> = parents
            .iter()
            .filter(|(name, of)| {
                !done.contains(*name)
                    && of
                        .iter()
                        .all(|p| done.contains(p) || !parents.contains_key(p))
            })
            .map(|(name, _)| name.clone())
            .collect();
        let next = if ready.is_empty() {
            parents
                .keys()
                .filter(|n| !done.contains(*n))
                .cloned()
                .collect()
        } else {
            ready
        };
        for name in next {
            done.insert(name.clone());
            if let Some(table) = tables.remove(&name) {
                ordered.push(table);
            }
        }
    }
    Ok(ordered)
}

/// A table or column name safe to put into SQL: what Postern's schema uses.
fn identifier(name: &str) -> Result<(), BackupError> {
    let plain = !name.is_empty()
        && name.len() <= 63
        && name.starts_with(|c: char| c.is_ascii_lowercase() || c == '_')
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    if plain {
        Ok(())
    } else {
        Err(BackupError::Name(name.chars().take(64).collect()))
    }
}

/// A private temporary copy of a backup, removed when dropped.
struct WorkCopy {
    dir: PathBuf,
    file: PathBuf,
}

impl WorkCopy {
    fn of(input: &Path) -> std::io::Result<WorkCopy> {
        let mut random = [0u8; 8];
        getrandom::fill(&mut random).map_err(std::io::Error::other)?;
        let suffix: String = random.iter().map(|b| format!("{b:02x}")).collect();
        let dir = std::env::temp_dir().join(format!("postern-restore-{suffix}"));
        std::fs::DirBuilder::new().mode(0o700).create(&dir)?;
        let file = dir.join("backup.db");
        std::fs::copy(input, &file)?;
        Ok(WorkCopy { dir, file })
    }

    fn url(&self) -> String {
        format!("sqlite://{}", self.file.display())
    }
}

impl Drop for WorkCopy {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn create_private(path: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt as _;
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_plain_names_go_into_sql() {
        for fine in ["sites", "audit_log", "_x1"] {
            assert!(identifier(fine).is_ok(), "{fine}");
        }
        for hostile in [
            "",
            "Sites",
            "a; DROP TABLE sites",
            "x\"y",
            "1abc",
            &"a".repeat(64),
        ] {
            assert!(
                matches!(identifier(hostile), Err(BackupError::Name(_))),
                "{hostile}"
            );
        }
    }
}
