//! Policies: group -> resource with conditions (a JSON array).

use sqlx::Row;
use sqlx::any::AnyRow;
use uuid::Uuid;

use super::{Conn, Result, Scoped, StoreError, classify, uuid_column};
use crate::domain::{PolicyRecord, from_millis};

impl Scoped for PolicyRecord {
    const TABLE: &'static str = "policies";
    const COLUMNS: &'static str =
        "id, group_id, resource_id, conditions, description, disabled, created_at";

    fn from_row(row: &AnyRow) -> Result<PolicyRecord> {
        let conditions: String = row.try_get("conditions")?;
        Ok(PolicyRecord {
            id: uuid_column(row, Self::TABLE, "id")?,
            group_id: uuid_column(row, Self::TABLE, "group_id")?,
            resource_id: uuid_column(row, Self::TABLE, "resource_id")?,
            conditions: serde_json::from_str(&conditions).map_err(|e| StoreError::Corrupt {
                table: Self::TABLE,
                detail: format!("conditions: {e}"),
            })?,
            description: row.try_get("description")?,
            disabled: row.try_get::<i64, _>("disabled")? != 0,
            created_at: from_millis(row.try_get("created_at")?),
        })
    }
}

fn conditions_json(policy: &PolicyRecord) -> Result<String> {
    serde_json::to_string(&policy.conditions).map_err(|e| StoreError::Corrupt {
        table: "policies",
        detail: e.to_string(),
    })
}

pub async fn insert(conn: &mut Conn, account: Uuid, policy: &PolicyRecord) -> Result<()> {
    sqlx::query(
        "INSERT INTO policies (id, account_id, group_id, resource_id, conditions, description, \
         disabled, created_at, updated_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $8)",
    )
    .bind(policy.id.to_string())
    .bind(account.to_string())
    .bind(policy.group_id.to_string())
    .bind(policy.resource_id.to_string())
    .bind(conditions_json(policy)?)
    .bind(&policy.description)
    .bind(i64::from(policy.disabled))
    .bind(policy.created_at.as_millisecond())
    .execute(&mut *conn)
    .await
    .map_err(classify)?;
    Ok(())
}

pub async fn list(conn: &mut Conn, account: Uuid) -> Result<Vec<PolicyRecord>> {
    super::list_scoped(conn, account).await
}

pub async fn update(
    conn: &mut Conn,
    account: Uuid,
    policy: &PolicyRecord,
    now_ms: i64,
) -> Result<()> {
    sqlx::query(
        "UPDATE policies SET group_id = $1, resource_id = $2, conditions = $3, description = $4, \
         disabled = $5, updated_at = $6 WHERE account_id = $7 AND id = $8",
    )
    .bind(policy.group_id.to_string())
    .bind(policy.resource_id.to_string())
    .bind(conditions_json(policy)?)
    .bind(&policy.description)
    .bind(i64::from(policy.disabled))
    .bind(now_ms)
    .bind(account.to_string())
    .bind(policy.id.to_string())
    .execute(&mut *conn)
    .await
    .map_err(classify)?;
    Ok(())
}

pub async fn delete(conn: &mut Conn, account: Uuid, id: Uuid) -> Result<bool> {
    super::delete_scoped::<PolicyRecord>(conn, account, id).await
}

/// The policies naming a resource, disabled ones too.
pub async fn of_resource(
    conn: &mut Conn,
    account: Uuid,
    resource: Uuid,
) -> Result<Vec<PolicyRecord>> {
    let sql = format!(
        "SELECT {} FROM policies WHERE account_id = $1 AND resource_id = $2 \
         ORDER BY created_at, id",
        PolicyRecord::COLUMNS
    );
    let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(account.to_string())
        .bind(resource.to_string())
        .fetch_all(&mut *conn)
        .await?;
    rows.iter().map(PolicyRecord::from_row).collect()
}

/// The policies of a group, disabled ones too.
pub async fn of_group(conn: &mut Conn, account: Uuid, group: Uuid) -> Result<Vec<PolicyRecord>> {
    let sql = format!(
        "SELECT {} FROM policies WHERE account_id = $1 AND group_id = $2 ORDER BY created_at, id",
        PolicyRecord::COLUMNS
    );
    let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(account.to_string())
        .bind(group.to_string())
        .fetch_all(&mut *conn)
        .await?;
    rows.iter().map(PolicyRecord::from_row).collect()
}

/// The policies of the groups of an actor (`groups::GROUPS_OF_ACTOR`),
/// disabled ones too: the policy graph decides what they grant.
pub async fn of_actor(conn: &mut Conn, account: Uuid, actor: Uuid) -> Result<Vec<PolicyRecord>> {
    let sql = format!(
        "SELECT {} FROM policies WHERE account_id = $1 AND group_id IN ({}) \
         ORDER BY created_at, id",
        PolicyRecord::COLUMNS,
        super::groups::GROUPS_OF_ACTOR
    );
    let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(account.to_string())
        .bind(actor.to_string())
        .fetch_all(&mut *conn)
        .await?;
    rows.iter().map(PolicyRecord::from_row).collect()
}
