//! Actors: users, admins and service accounts.

use sqlx::Row;
use sqlx::any::AnyRow;
use uuid::Uuid;

use super::{Conn, Result, Scoped, StoreError, classify, opt_uuid_column, uuid_column};
use crate::domain::{Actor, Role, from_millis};

impl Scoped for Actor {
    const TABLE: &'static str = "actors";
    const COLUMNS: &'static str = "id, name, email, role, disabled, directory_id, created_at";

    fn from_row(row: &AnyRow) -> Result<Actor> {
        let role: String = row.try_get("role")?;
        Ok(Actor {
            id: uuid_column(row, Self::TABLE, "id")?,
            name: row.try_get("name")?,
            email: row.try_get("email")?,
            role: Role::parse(&role).ok_or_else(|| StoreError::Corrupt {
                table: Self::TABLE,
                detail: format!("unknown role {role:?}"),
            })?,
            disabled: row.try_get::<i64, _>("disabled")? != 0,
            directory_id: opt_uuid_column(row, Self::TABLE, "directory_id")?,
            created_at: from_millis(row.try_get("created_at")?),
        })
    }
}

pub async fn insert(conn: &mut Conn, account: Uuid, actor: &Actor) -> Result<()> {
    let now = actor.created_at.as_millisecond();
    sqlx::query(
        "INSERT INTO actors (id, account_id, name, email, role, disabled, created_at, updated_at, \
         directory_id) VALUES ($1, $2, $3, $4, $5, $6, $7, $7, $8)",
    )
    .bind(actor.id.to_string())
    .bind(account.to_string())
    .bind(&actor.name)
    .bind(actor.email.clone())
    .bind(actor.role.as_str())
    .bind(i64::from(actor.disabled))
    .bind(now)
    .bind(actor.directory_id.map(|id| id.to_string()))
    .execute(&mut *conn)
    .await
    .map_err(classify)?;
    Ok(())
}

pub async fn get(conn: &mut Conn, account: Uuid, id: Uuid) -> Result<Option<Actor>> {
    super::get_scoped(conn, account, id).await
}

/// The account's actors with these ids (one query per 128).
pub async fn get_many(conn: &mut Conn, account: Uuid, ids: &[Uuid]) -> Result<Vec<Actor>> {
    super::get_many_scoped(conn, account, ids).await
}

pub async fn list(conn: &mut Conn, account: Uuid) -> Result<Vec<Actor>> {
    super::list_scoped(conn, account).await
}

/// Actors named `name` (any case), at most `limit`.
pub async fn named(conn: &mut Conn, account: Uuid, name: &str, limit: i64) -> Result<Vec<Actor>> {
    let sql = format!(
        "SELECT {} FROM actors WHERE account_id = $1 AND LOWER(name) = LOWER($2) \
         ORDER BY created_at, id LIMIT $3",
        Actor::COLUMNS
    );
    let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(account.to_string())
        .bind(name)
        .bind(limit)
        .fetch_all(&mut *conn)
        .await?;
    rows.iter().map(Actor::from_row).collect()
}

pub async fn update(conn: &mut Conn, account: Uuid, actor: &Actor, now_ms: i64) -> Result<()> {
    sqlx::query(
        "UPDATE actors SET name = $1, email = $2, role = $3, disabled = $4, updated_at = $5 \
         WHERE account_id = $6 AND id = $7",
    )
    .bind(&actor.name)
    .bind(actor.email.clone())
    .bind(actor.role.as_str())
    .bind(i64::from(actor.disabled))
    .bind(now_ms)
    .bind(account.to_string())
    .bind(actor.id.to_string())
    .execute(&mut *conn)
    .await
    .map_err(classify)?;
    Ok(())
}

pub async fn delete(conn: &mut Conn, account: Uuid, id: Uuid) -> Result<bool> {
    super::delete_scoped::<Actor>(conn, account, id).await
}

/// Enabled admins of the account: the API refuses to remove the last one.
/// The rows are locked until the transaction ends, so two requests that
/// each remove one of the last two admins cannot both see two (SQLite's
/// writers are serialized already; PostgreSQL's READ COMMITTED needs the
/// lock, issue 15 L12).
pub async fn count_enabled_admins(conn: &mut Conn, account: Uuid) -> Result<i64> {
    let lock = if conn.backend_name().eq_ignore_ascii_case("postgresql") {
        " FOR UPDATE"
    } else {
        ""
    };
    // FOR UPDATE cannot go with COUNT: the rows are read and counted here.
    let sql = format!(
        "SELECT id FROM actors WHERE account_id = $1 AND role = 'admin' AND disabled = 0{lock}"
    );
    let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(account.to_string())
        .fetch_all(&mut *conn)
        .await?;
    Ok(rows.len() as i64)
}

/// The actor with this email (stored lowercase) in the account.
pub async fn by_email(conn: &mut Conn, account: Uuid, email: &str) -> Result<Option<Actor>> {
    let sql = format!(
        "SELECT {} FROM actors WHERE account_id = $1 AND email = $2",
        Actor::COLUMNS
    );
    let row = sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(account.to_string())
        .bind(email.trim().to_ascii_lowercase())
        .fetch_optional(&mut *conn)
        .await?;
    row.as_ref().map(Actor::from_row).transpose()
}

/// `%text%` for `LIKE ... ESCAPE '\'`, in lower case, the wildcards in
/// `text` taken literally.
pub fn contains_pattern(text: &str) -> String {
    let mut pattern = String::with_capacity(text.len() + 2);
    pattern.push('%');
    for c in text.trim().to_lowercase().chars() {
        if matches!(c, '\\' | '%' | '_') {
            pattern.push('\\');
        }
        pattern.push(c);
    }
    pattern.push('%');
    pattern
}

/// An actor as the console's list shows it: with the directory that
/// provisioned it (by name) and how many client devices it has.
#[derive(Clone, Debug)]
pub struct Listed {
    pub actor: Actor,
    pub directory: Option<String>,
    pub clients: i64,
}

const LISTED: &str = "a.id AS id, a.name AS name, a.email AS email, a.role AS role, \
     a.disabled AS disabled, a.directory_id AS directory_id, a.created_at AS created_at, \
     dir.name AS directory_name, \
     (SELECT COUNT(*) FROM devices d WHERE d.account_id = a.account_id AND d.kind = 'client' \
      AND d.actor_id = a.id) AS clients";

/// `$2`: the search (empty: everyone), `$3` its pattern.
const SEARCH: &str = "a.account_id = $1 AND ($2 = '' OR LOWER(a.name) LIKE $3 ESCAPE '\\' \
     OR a.email LIKE $3 ESCAPE '\\')";

fn listed(row: &AnyRow) -> Result<Listed> {
    Ok(Listed {
        actor: Actor::from_row(row)?,
        directory: row.try_get("directory_name")?,
        clients: row.try_get("clients")?,
    })
}

/// One page of the account's actors whose name or email contains `search`
/// (any case), by name: the page's ids first, then only their rows with
/// their counts.
pub async fn page(
    conn: &mut Conn,
    account: Uuid,
    search: &str,
    offset: i64,
    limit: i64,
) -> Result<Vec<Listed>> {
    let sql = format!(
        "SELECT {LISTED} FROM actors a LEFT JOIN directories dir ON dir.id = a.directory_id \
         WHERE a.id IN (SELECT a.id FROM actors a WHERE {SEARCH} \
         ORDER BY LOWER(a.name), a.id LIMIT $4 OFFSET $5) ORDER BY LOWER(a.name), a.id"
    );
    let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(account.to_string())
        .bind(search.trim().to_string())
        .bind(contains_pattern(search))
        .bind(limit)
        .bind(offset)
        .fetch_all(&mut *conn)
        .await?;
    rows.iter().map(listed).collect()
}

/// How many actors [`page`] pages through.
pub async fn count(conn: &mut Conn, account: Uuid, search: &str) -> Result<i64> {
    let sql = format!("SELECT COUNT(*) AS n FROM actors a WHERE {SEARCH}");
    let row = sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(account.to_string())
        .bind(search.trim().to_string())
        .bind(contains_pattern(search))
        .fetch_one(&mut *conn)
        .await?;
    Ok(row.try_get("n")?)
}

/// One actor as [`page`] lists it.
pub async fn listed_one(conn: &mut Conn, account: Uuid, id: Uuid) -> Result<Option<Listed>> {
    let sql = format!(
        "SELECT {LISTED} FROM actors a LEFT JOIN directories dir ON dir.id = a.directory_id \
         WHERE a.account_id = $1 AND a.id = $2"
    );
    let row = sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(account.to_string())
        .bind(id.to_string())
        .fetch_optional(&mut *conn)
        .await?;
    row.as_ref().map(listed).transpose()
}

/// The identity providers each of `actors` has signed in with, as
/// (actor, provider name), in one query.
pub async fn providers_of(
    conn: &mut Conn,
    account: Uuid,
    actors: &[Uuid],
) -> Result<Vec<(Uuid, String)>> {
    if actors.is_empty() {
        return Ok(Vec::new());
    }
    let placeholders: Vec<String> = (0..actors.len()).map(|n| format!("${}", n + 2)).collect();
    let sql = format!(
        "SELECT i.actor_id AS actor_id, p.name AS name FROM identities i \
         JOIN identity_providers p ON p.id = i.provider_id \
         WHERE i.account_id = $1 AND i.actor_id IN ({}) ORDER BY p.name",
        placeholders.join(", ")
    );
    let mut query = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(account.to_string());
    for actor in actors {
        query = query.bind(actor.to_string());
    }
    let rows = query.fetch_all(&mut *conn).await?;
    rows.iter()
        .map(|row| {
            Ok((
                uuid_column(row, "identities", "actor_id")?,
                row.try_get("name")?,
            ))
        })
        .collect()
}

/// What deleting an actor takes with it.
#[derive(Clone, Debug, Default)]
pub struct Footprint {
    /// Tokens of every kind, expired ones included.
    pub tokens: i64,
    pub clients: i64,
    /// The groups it is an explicit member of, by name.
    pub groups: Vec<String>,
    /// Sign-in identities (a provider's subject linked to it).
    pub identities: i64,
}

pub async fn footprint(conn: &mut Conn, account: Uuid, actor: Uuid) -> Result<Footprint> {
    let row = sqlx::query(
        "SELECT (SELECT COUNT(*) FROM tokens WHERE account_id = $1 AND actor_id = $2) AS tokens, \
         (SELECT COUNT(*) FROM devices WHERE account_id = $1 AND kind = 'client' \
          AND actor_id = $2) AS clients, \
         (SELECT COUNT(*) FROM identities WHERE account_id = $1 AND actor_id = $2) AS identities",
    )
    .bind(account.to_string())
    .bind(actor.to_string())
    .fetch_one(&mut *conn)
    .await?;
    let groups = sqlx::query(
        "SELECT g.name AS name FROM memberships m JOIN groups g ON g.id = m.group_id \
         WHERE m.account_id = $1 AND m.actor_id = $2 ORDER BY g.name",
    )
    .bind(account.to_string())
    .bind(actor.to_string())
    .fetch_all(&mut *conn)
    .await?;
    Ok(Footprint {
        tokens: row.try_get("tokens")?,
        clients: row.try_get("clients")?,
        identities: row.try_get("identities")?,
        groups: groups
            .iter()
            .map(|g| g.try_get("name"))
            .collect::<Result<_, _>>()?,
    })
}

/// The actor's latest session log lines (sign-ins and connections),
/// newest first.
pub async fn recent_sessions(
    conn: &mut Conn,
    account: Uuid,
    actor: Uuid,
    limit: i64,
) -> Result<Vec<super::logs::SessionEntry>> {
    let rows = sqlx::query(
        "SELECT seq, at, actor_id, device_id, kind, remote_ip, user_agent FROM sessions \
         WHERE account_id = $1 AND actor_id = $2 ORDER BY seq DESC LIMIT $3",
    )
    .bind(account.to_string())
    .bind(actor.to_string())
    .bind(limit)
    .fetch_all(&mut *conn)
    .await?;
    rows.iter()
        .map(|row| {
            Ok(super::logs::SessionEntry {
                cursor: row.try_get("seq")?,
                at: from_millis(row.try_get("at")?),
                actor_id: opt_uuid_column(row, "sessions", "actor_id")?,
                device_id: opt_uuid_column(row, "sessions", "device_id")?,
                kind: row.try_get("kind")?,
                remote_ip: row.try_get("remote_ip")?,
                user_agent: row.try_get("user_agent")?,
            })
        })
        .collect()
}
