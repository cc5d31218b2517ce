//! Groups and memberships. `Everyone` is a real row (so policies can point at
//! it) whose members are implicit: every user and admin of the account.

use sqlx::Row;
use sqlx::any::AnyRow;
use uuid::Uuid;

use super::{Conn, Result, Scoped, StoreError, classify, opt_uuid_column, uuid_column};
use crate::domain::{Group, GroupKind, from_millis};

pub const EVERYONE: &str = "Everyone";

impl Scoped for Group {
    const TABLE: &'static str = "groups";
    const COLUMNS: &'static str = "id, name, kind, directory_id, created_at";

    fn from_row(row: &AnyRow) -> Result<Group> {
        let kind: String = row.try_get("kind")?;
        Ok(Group {
            id: uuid_column(row, Self::TABLE, "id")?,
            name: row.try_get("name")?,
            kind: match kind.as_str() {
                "static" => GroupKind::Static,
                "everyone" => GroupKind::Everyone,
                "provider" => GroupKind::Provider,
                other => {
                    return Err(StoreError::Corrupt {
                        table: Self::TABLE,
                        detail: format!("unknown kind {other:?}"),
                    });
                }
            },
            directory_id: opt_uuid_column(row, Self::TABLE, "directory_id")?,
            created_at: from_millis(row.try_get("created_at")?),
        })
    }
}

pub async fn insert(conn: &mut Conn, account: Uuid, group: &Group) -> Result<()> {
    let kind = match group.kind {
        GroupKind::Static => "static",
        GroupKind::Everyone => "everyone",
        GroupKind::Provider => "provider",
    };
    sqlx::query(
        "INSERT INTO groups (id, account_id, name, kind, created_at, updated_at, directory_id) \
         VALUES ($1, $2, $3, $4, $5, $5, $6)",
    )
    .bind(group.id.to_string())
    .bind(account.to_string())
    .bind(&group.name)
    .bind(kind)
    .bind(group.created_at.as_millisecond())
    .bind(group.directory_id.map(|id| id.to_string()))
    .execute(&mut *conn)
    .await
    .map_err(classify)?;
    Ok(())
}

pub async fn get(conn: &mut Conn, account: Uuid, id: Uuid) -> Result<Option<Group>> {
    super::get_scoped(conn, account, id).await
}

pub async fn list(conn: &mut Conn, account: Uuid) -> Result<Vec<Group>> {
    super::list_scoped(conn, account).await
}

pub async fn rename(
    conn: &mut Conn,
    account: Uuid,
    id: Uuid,
    name: &str,
    now_ms: i64,
) -> Result<()> {
    super::rename_scoped::<Group>(conn, account, id, name, now_ms).await
}

pub async fn delete(conn: &mut Conn, account: Uuid, id: Uuid) -> Result<bool> {
    super::delete_scoped::<Group>(conn, account, id).await
}

/// Members of a group; for `Everyone`, every user and admin.
pub async fn members(conn: &mut Conn, account: Uuid, group: &Group) -> Result<Vec<Uuid>> {
    let rows = match group.kind {
        GroupKind::Everyone => {
            sqlx::query(
                "SELECT id AS actor_id FROM actors WHERE account_id = $1 \
                 AND role <> 'service_account' ORDER BY id",
            )
            .bind(account.to_string())
            .fetch_all(&mut *conn)
            .await?
        }
        GroupKind::Static | GroupKind::Provider => {
            sqlx::query(
                "SELECT actor_id FROM memberships WHERE account_id = $1 AND group_id = $2 \
                 ORDER BY actor_id",
            )
            .bind(account.to_string())
            .bind(group.id.to_string())
            .fetch_all(&mut *conn)
            .await?
        }
    };
    rows.iter()
        .map(|row| uuid_column(row, "memberships", "actor_id"))
        .collect()
}

/// Replaces a static group's members. The caller checked that every actor
/// belongs to the account.
pub async fn set_members(
    conn: &mut Conn,
    account: Uuid,
    group: Uuid,
    actors: &[Uuid],
) -> Result<()> {
    sqlx::query("DELETE FROM memberships WHERE account_id = $1 AND group_id = $2")
        .bind(account.to_string())
        .bind(group.to_string())
        .execute(&mut *conn)
        .await?;
    for actor in actors {
        sqlx::query(
            "INSERT INTO memberships (account_id, group_id, actor_id) VALUES ($1, $2, $3) \
             ON CONFLICT DO NOTHING",
        )
        .bind(account.to_string())
        .bind(group.to_string())
        .bind(actor.to_string())
        .execute(&mut *conn)
        .await
        .map_err(classify)?;
    }
    Ok(())
}

/// Every explicit membership of the account as (group, actor).
pub async fn all_memberships(conn: &mut Conn, account: Uuid) -> Result<Vec<(Uuid, Uuid)>> {
    let rows = sqlx::query("SELECT group_id, actor_id FROM memberships WHERE account_id = $1")
        .bind(account.to_string())
        .fetch_all(&mut *conn)
        .await?;
    rows.iter()
        .map(|row| {
            Ok((
                uuid_column(row, "memberships", "group_id")?,
                uuid_column(row, "memberships", "actor_id")?,
            ))
        })
        .collect()
}

/// The ids of the groups whose policies can reach `$2`, an actor of account
/// `$1`: their explicit groups and the account's `Everyone` (whether it
/// holds the actor is the policy graph's rule, by role).
pub(crate) const GROUPS_OF_ACTOR: &str = "SELECT group_id FROM memberships WHERE account_id = $1 \
     AND actor_id = $2 UNION SELECT id FROM groups WHERE account_id = $1 AND kind = 'everyone'";

/// What the policy graph of one actor needs of the groups: the groups of
/// `GROUPS_OF_ACTOR` and the actor's memberships as (group, actor).
pub async fn of_actor(
    conn: &mut Conn,
    account: Uuid,
    actor: Uuid,
) -> Result<(Vec<Group>, Vec<(Uuid, Uuid)>)> {
    let sql = format!(
        "SELECT {} FROM groups WHERE account_id = $1 AND id IN ({GROUPS_OF_ACTOR}) \
         ORDER BY created_at, id",
        Group::COLUMNS
    );
    let groups = sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(account.to_string())
        .bind(actor.to_string())
        .fetch_all(&mut *conn)
        .await?
        .iter()
        .map(Group::from_row)
        .collect::<Result<Vec<_>>>()?;
    let rows = sqlx::query(
        "SELECT group_id, actor_id FROM memberships WHERE account_id = $1 AND actor_id = $2",
    )
    .bind(account.to_string())
    .bind(actor.to_string())
    .fetch_all(&mut *conn)
    .await?;
    let memberships = rows
        .iter()
        .map(|row| {
            Ok((
                uuid_column(row, "memberships", "group_id")?,
                uuid_column(row, "memberships", "actor_id")?,
            ))
        })
        .collect::<Result<Vec<_>>>()?;
    Ok((groups, memberships))
}

/// The account's group of this exact name, if any.
pub async fn by_name(conn: &mut Conn, account: Uuid, name: &str) -> Result<Option<Group>> {
    let sql = format!(
        "SELECT {} FROM groups WHERE account_id = $1 AND name = $2",
        Group::COLUMNS
    );
    let row = sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(account.to_string())
        .bind(name)
        .fetch_optional(&mut *conn)
        .await?;
    row.as_ref().map(Group::from_row).transpose()
}
