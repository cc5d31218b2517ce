//! The store: one `sqlx` Any pool over SQLite (default, embedded) or
//! PostgreSQL, with one set of migrations per engine. The queries are written
//! once in the subset both engines share (`$n` parameters, TEXT ids, BIGINT
//! times and flags). Every query takes the request's transaction, so one API
//! request is one transaction.

pub mod accounts;
pub mod actors;
pub mod audit;
pub mod backup;
pub mod devices;
pub mod directories;
pub mod grants;
pub mod groups;
pub mod identity_providers;
pub mod logs;
pub mod policies;
pub mod resources;
#[cfg(test)]
mod rolling;
pub mod settings;
pub mod sign_in;
pub mod sites;
pub mod tokens;

use std::borrow::Cow;
use std::path::Path;
use std::str::FromStr;

use sqlx::any::{AnyConnectOptions, AnyPoolOptions, AnyRow};
use sqlx::migrate::{MigrateError, Migration, MigrationType, Migrator};
use sqlx::{Any, AnyConnection, AnyPool, Transaction};
use uuid::Uuid;

/// The open transaction every query runs in.
pub type Tx = Transaction<'static, Any>;

/// Which database engine the URL named.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Engine {
    Sqlite,
    Postgres,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("unsupported database URL {0:?}: use sqlite://PATH or postgres://USER@HOST/DATABASE")]
    UnsupportedUrl(String),
    #[error("cannot create the directory for the SQLite database {path}: {source}")]
    CreateDir {
        path: String,
        source: std::io::Error,
    },
    #[error("cannot make the SQLite database file {path} private (0600): {source}")]
    Permissions {
        path: String,
        source: std::io::Error,
    },
    #[error(
        "the database was migrated by a newer Postern (it has migration {0}, which this \
         version does not know); run the newer version or restore a backup"
    )]
    NewerSchema(i64),
    #[error("database migration failed: {0}")]
    Migrate(#[source] MigrateError),
    /// The database answers but lacks migrations this version runs
    /// (`/readyz`).
    #[error("the database has migration {have} of {want}")]
    NotMigrated { have: i64, want: i64 },
    /// A uniqueness rule was broken (a duplicate name, say).
    #[error("conflict: {0}")]
    Conflict(String),
    /// A row this one refers to does not exist.
    #[error("a referenced object does not exist")]
    MissingReference,
    /// A cap on what one token or actor may create (the text says which).
    #[error("{0}")]
    LimitReached(String),
    #[error("corrupt row in {table}: {detail}")]
    Corrupt { table: &'static str, detail: String },
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// The portal's database.
#[derive(Clone)]
pub struct Store {
    pool: AnyPool,
    engine: Engine,
    /// For the PostgreSQL cluster listener; may hold a password.
    url: String,
    /// The newest migration this build runs (`/readyz` wants it).
    latest: i64,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("engine", &self.engine)
            .finish_non_exhaustive()
    }
}

impl Store {
    /// Opens (creating an SQLite file and its directory if missing) and
    /// migrates the database at `url`.
    pub async fn open(url: &str) -> Result<Store> {
        Store::open_migrating(url, migrations).await
    }

    /// [`open`](Self::open) with the migrations `known` gives: the tests
    /// add the next release's to play it against this one's code.
    pub(crate) async fn open_migrating(
        url: &str,
        known: impl FnOnce(Engine) -> Vec<Migration>,
    ) -> Result<Store> {
        sqlx::any::install_default_drivers();
        let (engine, url) = normalize_url(url)?;
        let options = AnyConnectOptions::from_str(&url)
            .map_err(|_| StoreError::UnsupportedUrl(url.clone()))?;
        let pool_options = match engine {
            // Writers take the lock up front (BEGIN IMMEDIATE) and wait for
            // each other; WAL lets readers go on meanwhile.
            // Each connection to `:memory:` is a database of its own.
            Engine::Sqlite => AnyPoolOptions::new()
                .max_connections(if url.contains(":memory:") { 1 } else { 4 })
                // A local file has no link to go stale: the check sqlx runs on
                // every acquire was one more round trip to the connection's
                // thread per request (a tenth of a connect's database work).
                .test_before_acquire(false)
                .after_connect(|conn, _| {
                    Box::pin(async move {
                        for pragma in [
                            "PRAGMA journal_mode = WAL",
                            "PRAGMA foreign_keys = ON",
                            "PRAGMA busy_timeout = 10000",
                            "PRAGMA synchronous = FULL",
                        ] {
                            sqlx::query(pragma).execute(&mut *conn).await?;
                        }
                        Ok(())
                    })
                }),
            Engine::Postgres => AnyPoolOptions::new().max_connections(16),
        };
        let pool = pool_options.connect_with(options).await?;
        let known = known(engine);
        let latest = known.iter().map(|m| m.version).max().unwrap_or(0);
        let store = Store {
            pool,
            engine,
            url,
            latest,
        };
        store.migrate(known).await?;
        // The WAL and shared-memory files exist now. SQLite creates them with
        // the database file's mode; made private again all the same.
        if let Some(path) = sqlite_file(&store.url) {
            private_database_files(Path::new(path), false)?;
        }
        Ok(store)
    }

    pub fn engine(&self) -> Engine {
        self.engine
    }

    /// The connection URL (PostgreSQL LISTEN needs its own connection).
    pub fn url(&self) -> &str {
        &self.url
    }

    async fn migrate(&self, known: Vec<Migration>) -> Result<()> {
        let migrator = Migrator::with_migrations(known);
        match migrator.run(&self.pool).await {
            Ok(()) => Ok(()),
            Err(MigrateError::VersionMissing(version)) => Err(StoreError::NewerSchema(version)),
            Err(error) => Err(StoreError::Migrate(error)),
        }
    }

    /// Whether the database answers a trivial query and holds every
    /// migration this version knows, all of them run to success (`/readyz`).
    /// `open` migrates before it returns, so a missing one means another
    /// node's rollback or a hand-edited database; a closed pool or an
    /// unreachable server is the usual failure.
    pub async fn ready(&self) -> Result<()> {
        let want = self.latest;
        let mut conn = self.pool.acquire().await?;
        let have: Option<i64> =
            sqlx::query_scalar("SELECT MAX(version) FROM _sqlx_migrations WHERE success = TRUE")
                .fetch_one(&mut *conn)
                .await?;
        let have = have.unwrap_or(0);
        if have < want {
            return Err(StoreError::NotMigrated { have, want });
        }
        Ok(())
    }

    /// A pooled connection for one statement that needs no transaction
    /// around it (a lookup): no BEGIN and COMMIT round trips.
    pub async fn conn(&self) -> Result<sqlx::pool::PoolConnection<Any>> {
        Ok(self.pool.acquire().await?)
    }

    /// A transaction for a request that only reads.
    pub async fn read(&self) -> Result<Tx> {
        Ok(self.pool.begin().await?)
    }

    /// A transaction for a request that writes: on SQLite it takes the write
    /// lock at once, so two writers queue instead of failing half way.
    pub async fn write(&self) -> Result<Tx> {
        Ok(match self.engine {
            Engine::Sqlite => self.pool.begin_with("BEGIN IMMEDIATE").await?,
            Engine::Postgres => self.pool.begin().await?,
        })
    }

    pub async fn close(&self) {
        self.pool.close().await;
    }
}

pub(crate) fn migrations(engine: Engine) -> Vec<Migration> {
    let steps: [(i64, &'static str, &'static str, &'static str); 11] = [
        (
            1,
            "initial",
            include_str!("../../migrations/sqlite/0001_initial.sql"),
            include_str!("../../migrations/postgres/0001_initial.sql"),
        ),
        (
            2,
            "settings",
            include_str!("../../migrations/sqlite/0002_settings.sql"),
            include_str!("../../migrations/postgres/0002_settings.sql"),
        ),
        (
            3,
            "search domain",
            include_str!("../../migrations/sqlite/0003_search_domain.sql"),
            include_str!("../../migrations/postgres/0003_search_domain.sql"),
        ),
        (
            4,
            "sign in",
            include_str!("../../migrations/sqlite/0004_sign_in.sql"),
            include_str!("../../migrations/postgres/0004_sign_in.sql"),
        ),
        (
            5,
            "enforcement",
            include_str!("../../migrations/sqlite/0005_enforcement.sql"),
            include_str!("../../migrations/postgres/0005_enforcement.sql"),
        ),
        (
            6,
            "sign-in hardening",
            include_str!("../../migrations/sqlite/0006_sign_in_hardening.sql"),
            include_str!("../../migrations/postgres/0006_sign_in_hardening.sql"),
        ),
        (
            7,
            "client challenge",
            include_str!("../../migrations/sqlite/0007_client_challenge.sql"),
            include_str!("../../migrations/postgres/0007_client_challenge.sql"),
        ),
        (
            8,
            "internet exclusions",
            include_str!("../../migrations/sqlite/0008_internet_exclusions.sql"),
            include_str!("../../migrations/postgres/0008_internet_exclusions.sql"),
        ),
        (
            9,
            "token scopes",
            include_str!("../../migrations/sqlite/0009_token_scopes.sql"),
            include_str!("../../migrations/postgres/0009_token_scopes.sql"),
        ),
        (
            10,
            "provision users",
            include_str!("../../migrations/sqlite/0010_provision_users.sql"),
            include_str!("../../migrations/postgres/0010_provision_users.sql"),
        ),
        (
            11,
            "directories",
            include_str!("../../migrations/sqlite/0011_directories.sql"),
            include_str!("../../migrations/postgres/0011_directories.sql"),
        ),
    ];
    steps
        .into_iter()
        .map(|(version, description, sqlite, postgres)| {
            let sql = match engine {
                Engine::Sqlite => sqlite,
                Engine::Postgres => postgres,
            };
            Migration::new(
                version,
                Cow::Borrowed(description),
                MigrationType::Simple,
                sqlx::SqlStr::from_static(sql),
                false,
            )
        })
        .collect()
}

/// Accepts `sqlite://PATH`, `sqlite:PATH`, `sqlite::memory:` and
/// `postgres://...`/`postgresql://...`; creates the SQLite file's directory.
fn normalize_url(url: &str) -> Result<(Engine, String)> {
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        return Ok((Engine::Postgres, url.to_string()));
    }
    let Some(rest) = url
        .strip_prefix("sqlite://")
        .or_else(|| url.strip_prefix("sqlite:"))
    else {
        return Err(StoreError::UnsupportedUrl(url.to_string()));
    };
    let (path, query) = rest.split_once('?').unwrap_or((rest, ""));
    if path.is_empty() {
        return Err(StoreError::UnsupportedUrl(url.to_string()));
    }
    if path == ":memory:" {
        return Ok((Engine::Sqlite, "sqlite::memory:".to_string()));
    }
    if let Some(dir) = Path::new(path).parent()
        && !dir.as_os_str().is_empty()
    {
        std::fs::create_dir_all(dir).map_err(|source| StoreError::CreateDir {
            path: dir.display().to_string(),
            source,
        })?;
    }
    let mode = if query.contains("mode=") {
        ""
    } else {
        "mode=rwc"
    };
    private_database_files(
        Path::new(path),
        !mode.is_empty() || query.contains("mode=rwc"),
    )?;
    let separator = if query.is_empty() || mode.is_empty() {
        ""
    } else {
        "&"
    };
    Ok((
        Engine::Sqlite,
        format!("sqlite://{path}?{query}{separator}{mode}"),
    ))
}

/// The file of a normalized SQLite URL (`sqlite://PATH?...`); `None` for
/// `:memory:` and PostgreSQL.
fn sqlite_file(normalized: &str) -> Option<&str> {
    let rest = normalized.strip_prefix("sqlite://")?;
    Some(rest.split_once('?').map_or(rest, |(path, _)| path))
}

/// The database holds secrets, addresses and pending sign-ins (review L6):
/// its file and SQLite's `-wal` and `-shm` beside it are the portal user's
/// alone, 0600 whatever the umask. With `create`, a missing database file is
/// created 0600 first, so SQLite never makes it with the umask's mode, and
/// the files SQLite makes next to it take that mode. Files from before are
/// made 0600 too.
fn private_database_files(path: &Path, create: bool) -> Result<()> {
    use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
    let failed = |path: &Path, source| StoreError::Permissions {
        path: path.display().to_string(),
        source,
    };
    if create {
        match std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
        {
            Ok(_) => {}
            Err(error) if error.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(error) => return Err(failed(path, error)),
        }
    }
    let mut sidecars = [path.as_os_str().to_owned(), path.as_os_str().to_owned()];
    sidecars[0].push("-wal");
    sidecars[1].push("-shm");
    for file in [path.as_os_str()]
        .into_iter()
        .chain(sidecars.iter().map(|s| s.as_os_str()))
    {
        let file = Path::new(file);
        match std::fs::metadata(file) {
            Ok(meta) if meta.permissions().mode() & 0o777 != 0o600 => {
                match std::fs::set_permissions(file, std::fs::Permissions::from_mode(0o600)) {
                    Ok(()) => {}
                    // Another user's database, opened as it is.
                    Err(error) if error.kind() == std::io::ErrorKind::PermissionDenied => {
                        tracing::warn!(
                            path = %file.display(),
                            "cannot make the database file private (0600): not its owner"
                        );
                    }
                    Err(error) => return Err(failed(file, error)),
                }
            }
            Ok(_) => {}
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
            Err(error) => return Err(failed(file, error)),
        }
    }
    Ok(())
}

/// A table of rows that each belong to one account, read whole into `Self`.
/// The generic `get_scoped`, `list_scoped`, `rename_scoped` and
/// `delete_scoped` below serve every such table: their SQL differs between
/// tables only in these names, which are ours, never input.
pub(crate) trait Scoped: Sized {
    const TABLE: &'static str;
    /// What `from_row` reads.
    const COLUMNS: &'static str;
    fn from_row(row: &AnyRow) -> Result<Self>;
}

/// The account's row with this id; another account's is `None`, like a
/// missing one.
pub(crate) async fn get_scoped<T: Scoped>(
    conn: &mut Conn,
    account: Uuid,
    id: Uuid,
) -> Result<Option<T>> {
    let sql = format!(
        "SELECT {} FROM {} WHERE account_id = $1 AND id = $2",
        T::COLUMNS,
        T::TABLE
    );
    let row = sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(account.to_string())
        .bind(id.to_string())
        .fetch_optional(&mut *conn)
        .await?;
    row.as_ref().map(T::from_row).transpose()
}

/// The account's rows with these ids (missing ones and other accounts'
/// left out), in no particular order.
pub(crate) async fn get_many_scoped<T: Scoped>(
    conn: &mut Conn,
    account: Uuid,
    ids: &[Uuid],
) -> Result<Vec<T>> {
    let mut found = Vec::with_capacity(ids.len());
    // Small statements: SQLite finds a bound value's name by walking
    // the statement's list of them, and sqlx asks for every one's, which
    // makes a statement's binding cost grow with the square of its size.
    for chunk in row_chunks(ids, 128) {
        let placeholders = (2..chunk.len() + 2)
            .map(|n| format!("${n}"))
            .collect::<Vec<_>>()
            .join(", ");
        let sql = format!(
            "SELECT {} FROM {} WHERE account_id = $1 AND id IN ({placeholders})",
            T::COLUMNS,
            T::TABLE
        );
        let mut query = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(account.to_string());
        for id in chunk {
            query = query.bind(id.to_string());
        }
        for row in query.fetch_all(&mut *conn).await? {
            found.push(T::from_row(&row)?);
        }
    }
    Ok(found)
}

/// Rows for multi-row statements, in chunks of `max` (a power of two) and
/// then of smaller powers of two: a handful of statement sizes, which stay
/// in each connection's cache of prepared statements (a statement per
/// batch size was prepared again and again, and pushed others out).
pub(crate) fn row_chunks<T>(rows: &[T], max: usize) -> Vec<&[T]> {
    let mut chunks = Vec::new();
    let mut rest = rows;
    while !rest.is_empty() {
        let take = if rest.len() >= max {
            max
        } else {
            1 << rest.len().ilog2()
        };
        let (chunk, tail) = rest.split_at(take);
        chunks.push(chunk);
        rest = tail;
    }
    chunks
}

/// The placeholders of a multi-row `VALUES`: `($1, $2), ($3, $4)` for two
/// rows of two columns.
pub(crate) fn value_rows(rows: usize, columns: usize) -> String {
    (0..rows)
        .map(|row| {
            let row: Vec<String> = (1..=columns)
                .map(|column| format!("${}", row * columns + column))
                .collect();
            format!("({})", row.join(", "))
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// The account's rows, oldest first.
pub(crate) async fn list_scoped<T: Scoped>(conn: &mut Conn, account: Uuid) -> Result<Vec<T>> {
    let sql = format!(
        "SELECT {} FROM {} WHERE account_id = $1 ORDER BY created_at, id",
        T::COLUMNS,
        T::TABLE
    );
    let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(account.to_string())
        .fetch_all(&mut *conn)
        .await?;
    rows.iter().map(T::from_row).collect()
}

/// Renames one row of a table with a `name` column.
pub(crate) async fn rename_scoped<T: Scoped>(
    conn: &mut Conn,
    account: Uuid,
    id: Uuid,
    name: &str,
    now_ms: i64,
) -> Result<()> {
    let sql = format!(
        "UPDATE {} SET name = $1, updated_at = $2 WHERE account_id = $3 AND id = $4",
        T::TABLE
    );
    sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(name)
        .bind(now_ms)
        .bind(account.to_string())
        .bind(id.to_string())
        .execute(&mut *conn)
        .await
        .map_err(classify)?;
    Ok(())
}

/// Deletes one row; whether there was one.
pub(crate) async fn delete_scoped<T: Scoped>(
    conn: &mut Conn,
    account: Uuid,
    id: Uuid,
) -> Result<bool> {
    let sql = format!("DELETE FROM {} WHERE account_id = $1 AND id = $2", T::TABLE);
    let done = sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(account.to_string())
        .bind(id.to_string())
        .execute(&mut *conn)
        .await
        .map_err(classify)?;
    Ok(done.rows_affected() > 0)
}

/// Maps a database error on a write to what the caller should report.
pub(crate) fn classify(error: sqlx::Error) -> StoreError {
    if let sqlx::Error::Database(db) = &error {
        match db.kind() {
            sqlx::error::ErrorKind::UniqueViolation => {
                return StoreError::Conflict(db.message().to_string());
            }
            sqlx::error::ErrorKind::ForeignKeyViolation => return StoreError::MissingReference,
            _ => {}
        }
    }
    StoreError::Database(error)
}

/// Reads a UUID column kept as text.
pub(crate) fn uuid_column(row: &AnyRow, table: &'static str, column: &str) -> Result<Uuid> {
    use sqlx::Row;
    let text: String = row.try_get(column)?;
    Uuid::parse_str(&text).map_err(|_| StoreError::Corrupt {
        table,
        detail: format!("{column} is not a UUID: {text:?}"),
    })
}

pub(crate) fn opt_uuid_column(
    row: &AnyRow,
    table: &'static str,
    column: &str,
) -> Result<Option<Uuid>> {
    use sqlx::Row;
    let text: Option<String> = row.try_get(column)?;
    text.map(|text| {
        Uuid::parse_str(&text).map_err(|_| StoreError::Corrupt {
            table,
            detail: format!("{column} is not a UUID: {text:?}"),
        })
    })
    .transpose()
}

/// For queries generic over the connection.
pub type Conn = AnyConnection;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_are_chunked_in_few_sizes() {
        let rows: Vec<u32> = (0..300).collect();
        let sizes: Vec<usize> = row_chunks(&rows, 128).iter().map(|c| c.len()).collect();
        assert_eq!(sizes, vec![128, 128, 32, 8, 4]);
        let again: Vec<u32> = row_chunks(&rows, 128).concat();
        assert_eq!(again, rows, "every row once, in order");
        assert!(row_chunks::<u32>(&[], 128).is_empty());
        assert_eq!(row_chunks(&rows[..1], 128).len(), 1);
        assert_eq!(value_rows(2, 3), "($1, $2, $3), ($4, $5, $6)");
    }

    /// Review L6: a fresh database and its WAL files are 0600, and an old
    /// world-readable one is made private at the next start.
    #[tokio::test]
    async fn sqlite_files_are_private() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = std::env::temp_dir().join(format!("postern-mode-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let path = dir.join("portal.db");
        let mode = |suffix: &str| {
            let file = format!("{}{suffix}", path.display());
            std::fs::metadata(&file)
                .unwrap_or_else(|e| panic!("{file}: {e}"))
                .permissions()
                .mode()
                & 0o777
        };
        let store = Store::open(&format!("sqlite://{}", path.display()))
            .await
            .unwrap();
        // A write, so that the WAL is in use.
        let mut tx = store.write().await.unwrap();
        sqlx::query("CREATE TABLE probe (x INTEGER)")
            .execute(&mut *tx)
            .await
            .unwrap();
        tx.commit().await.unwrap();
        for suffix in ["", "-wal", "-shm"] {
            assert_eq!(mode(suffix), 0o600, "portal.db{suffix}");
        }
        store.close().await;
        for suffix in ["", "-wal", "-shm"] {
            let file = format!("{}{suffix}", path.display());
            if std::path::Path::new(&file).exists() {
                std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
            }
        }
        let store = Store::open(&format!("sqlite:{}", path.display()))
            .await
            .unwrap();
        for suffix in ["", "-wal", "-shm"] {
            assert_eq!(mode(suffix), 0o600, "reopened portal.db{suffix}");
        }
        store.close().await;
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn urls_are_normalized() {
        assert_eq!(
            normalize_url("sqlite::memory:").unwrap(),
            (Engine::Sqlite, "sqlite::memory:".to_string())
        );
        let dir = std::env::temp_dir().join(format!("postern-url-{}", std::process::id()));
        let url = format!("sqlite://{}/x/p.db", dir.display());
        let (engine, normalized) = normalize_url(&url).unwrap();
        assert_eq!(engine, Engine::Sqlite);
        assert!(normalized.ends_with("/x/p.db?mode=rwc"), "{normalized}");
        assert!(dir.join("x").is_dir());
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(matches!(
            normalize_url("mysql://x"),
            Err(StoreError::UnsupportedUrl(_))
        ));
        assert_eq!(
            normalize_url("postgres://u@h/d").unwrap().0,
            Engine::Postgres
        );
    }

    /// The generic helpers see only the account's own rows: another
    /// account's id reads as missing and is neither renamed nor deleted.
    #[tokio::test]
    async fn scoped_helpers_stay_inside_the_account() {
        use crate::domain::Site;
        let store = Store::open("sqlite::memory:").await.unwrap();
        let mut tx = store.write().await.unwrap();
        let ours = accounts::insert(&mut tx, "ours", "Ours", 0)
            .await
            .unwrap()
            .id;
        let theirs = accounts::insert(&mut tx, "theirs", "Theirs", 0)
            .await
            .unwrap()
            .id;
        let site = |id: u128, name: &str, at: i64| Site {
            id: Uuid::from_u128(id),
            name: name.to_string(),
            created_at: crate::domain::from_millis(at),
        };
        // Inserted out of order: listing goes by creation time.
        sites::insert(&mut tx, ours, &site(2, "second", 20))
            .await
            .unwrap();
        sites::insert(&mut tx, ours, &site(1, "first", 10))
            .await
            .unwrap();
        sites::insert(&mut tx, theirs, &site(3, "theirs", 5))
            .await
            .unwrap();

        let listed: Vec<Site> = list_scoped(&mut tx, ours).await.unwrap();
        let names: Vec<&str> = listed.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["first", "second"]);
        let got: Option<Site> = get_scoped(&mut tx, ours, Uuid::from_u128(1)).await.unwrap();
        assert_eq!(got, Some(site(1, "first", 10)));
        let foreign: Option<Site> = get_scoped(&mut tx, ours, Uuid::from_u128(3)).await.unwrap();
        assert_eq!(foreign, None);

        rename_scoped::<Site>(&mut tx, ours, Uuid::from_u128(3), "taken", 30)
            .await
            .unwrap();
        rename_scoped::<Site>(&mut tx, ours, Uuid::from_u128(1), "renamed", 30)
            .await
            .unwrap();
        let theirs_site: Option<Site> = get_scoped(&mut tx, theirs, Uuid::from_u128(3))
            .await
            .unwrap();
        assert_eq!(theirs_site.map(|s| s.name).as_deref(), Some("theirs"));
        let renamed: Option<Site> = get_scoped(&mut tx, ours, Uuid::from_u128(1)).await.unwrap();
        assert_eq!(renamed.map(|s| s.name).as_deref(), Some("renamed"));

        assert!(
            !delete_scoped::<Site>(&mut tx, ours, Uuid::from_u128(3))
                .await
                .unwrap()
        );
        assert!(
            delete_scoped::<Site>(&mut tx, ours, Uuid::from_u128(1))
                .await
                .unwrap()
        );
        let left: Vec<Site> = list_scoped(&mut tx, ours).await.unwrap();
        assert_eq!(left, [site(2, "second", 20)]);
        let theirs_left: Vec<Site> = list_scoped(&mut tx, theirs).await.unwrap();
        assert_eq!(theirs_left.len(), 1);
        tx.commit().await.unwrap();
    }
}
