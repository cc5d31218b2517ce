//! Resources. The address is validated before it gets here and stored in its
//! canonical text form; filters are a JSON array.

use postern_model::ResourceType;
use sqlx::Row;
use sqlx::any::AnyRow;
use uuid::Uuid;

use super::{Conn, Result, Scoped, StoreError, classify, uuid_column};
use crate::domain::{Resource, from_millis};

fn kind_text(kind: ResourceType) -> &'static str {
    match kind {
        ResourceType::Cidr => "cidr",
        ResourceType::Ip => "ip",
        ResourceType::Dns => "dns",
        ResourceType::Internet => "internet",
    }
}

impl Scoped for Resource {
    const TABLE: &'static str = "resources";
    const COLUMNS: &'static str =
        "id, site_id, name, type, address, address_description, filters, exclusions, created_at";

    fn from_row(row: &AnyRow) -> Result<Resource> {
        let corrupt = |detail: String| StoreError::Corrupt {
            table: Self::TABLE,
            detail,
        };
        let kind: String = row.try_get("type")?;
        let filters: String = row.try_get("filters")?;
        let exclusions: Option<String> = row.try_get("exclusions")?;
        Ok(Resource {
            exclusions: match exclusions {
                Some(text) => {
                    serde_json::from_str(&text).map_err(|e| corrupt(format!("exclusions: {e}")))?
                }
                None => Vec::new(),
            },
            id: uuid_column(row, Self::TABLE, "id")?,
            site_id: uuid_column(row, Self::TABLE, "site_id")?,
            name: row.try_get("name")?,
            kind: serde_json::from_value(serde_json::Value::String(kind.clone()))
                .map_err(|_| corrupt(format!("unknown type {kind:?}")))?,
            address: row.try_get("address")?,
            address_description: row.try_get("address_description")?,
            filters: serde_json::from_str(&filters)
                .map_err(|e| corrupt(format!("filters: {e}")))?,
            created_at: from_millis(row.try_get("created_at")?),
        })
    }
}

/// NULL for none, as nodes of the release before wrote it.
fn exclusions_json(resource: &Resource) -> Result<Option<String>> {
    if resource.exclusions.is_empty() {
        return Ok(None);
    }
    serde_json::to_string(&resource.exclusions)
        .map(Some)
        .map_err(|e| StoreError::Corrupt {
            table: "resources",
            detail: e.to_string(),
        })
}

fn filters_json(resource: &Resource) -> Result<String> {
    serde_json::to_string(&resource.filters).map_err(|e| StoreError::Corrupt {
        table: "resources",
        detail: e.to_string(),
    })
}

pub async fn insert(conn: &mut Conn, account: Uuid, resource: &Resource) -> Result<()> {
    sqlx::query(
        "INSERT INTO resources (id, account_id, site_id, name, type, address, address_description, \
         filters, created_at, updated_at, exclusions) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $9, $10)",
    )
    .bind(resource.id.to_string())
    .bind(account.to_string())
    .bind(resource.site_id.to_string())
    .bind(&resource.name)
    .bind(kind_text(resource.kind))
    .bind(resource.address.clone())
    .bind(resource.address_description.clone())
    .bind(filters_json(resource)?)
    .bind(resource.created_at.as_millisecond())
    .bind(exclusions_json(resource)?)
    .execute(&mut *conn)
    .await
    .map_err(classify)?;
    Ok(())
}

pub async fn get(conn: &mut Conn, account: Uuid, id: Uuid) -> Result<Option<Resource>> {
    super::get_scoped(conn, account, id).await
}

pub async fn list(conn: &mut Conn, account: Uuid) -> Result<Vec<Resource>> {
    super::list_scoped(conn, account).await
}

/// The resources the policies of an actor's groups point at
/// (`policies::of_actor`), by name.
pub async fn of_actor(conn: &mut Conn, account: Uuid, actor: Uuid) -> Result<Vec<Resource>> {
    let sql = format!(
        "SELECT {} FROM resources WHERE account_id = $1 AND id IN (SELECT resource_id FROM \
         policies WHERE account_id = $1 AND group_id IN ({})) ORDER BY name, id",
        Resource::COLUMNS,
        super::groups::GROUPS_OF_ACTOR
    );
    let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(account.to_string())
        .bind(actor.to_string())
        .fetch_all(&mut *conn)
        .await?;
    rows.iter().map(Resource::from_row).collect()
}

pub async fn update(
    conn: &mut Conn,
    account: Uuid,
    resource: &Resource,
    now_ms: i64,
) -> Result<()> {
    sqlx::query(
        "UPDATE resources SET site_id = $1, name = $2, type = $3, address = $4, \
         address_description = $5, filters = $6, updated_at = $7, exclusions = $10 \
         WHERE account_id = $8 AND id = $9",
    )
    .bind(resource.site_id.to_string())
    .bind(&resource.name)
    .bind(kind_text(resource.kind))
    .bind(resource.address.clone())
    .bind(resource.address_description.clone())
    .bind(filters_json(resource)?)
    .bind(now_ms)
    .bind(account.to_string())
    .bind(resource.id.to_string())
    .bind(exclusions_json(resource)?)
    .execute(&mut *conn)
    .await
    .map_err(classify)?;
    Ok(())
}

pub async fn delete(conn: &mut Conn, account: Uuid, id: Uuid) -> Result<bool> {
    super::delete_scoped::<Resource>(conn, account, id).await
}
