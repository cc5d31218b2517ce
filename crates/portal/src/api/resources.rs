//! `/resources`: addresses validated per SPEC F9-F11, filters per F12.

use axum::extract::Path;
use axum::response::IntoResponse;
use jiff::Timestamp;
use postern_model::{Filter, ResourceAddress, ResourceType};
use serde::Deserialize;
use utoipa::ToSchema;
use uuid::Uuid;

use super::audited::{self, Outcome};
use super::body::Json;
use super::problem::{ApiResult, Problem};
use super::{Admin, List, Shared, now_ms, read_all, read_one, valid_name};
use crate::domain::Resource;
use crate::state::Change;
use crate::store::{Conn, resources, sites};

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ResourceInput {
    pub name: String,
    #[serde(rename = "type")]
    #[schema(value_type = String, example = "cidr")]
    pub kind: ResourceType,
    /// A CIDR prefix, an IP address or a DNS name pattern; none for `internet`.
    pub address: Option<String>,
    pub site_id: Uuid,
    #[serde(default)]
    #[schema(value_type = Vec<Object>)]
    pub filters: Vec<Filter>,
    pub address_description: Option<String>,
    /// The internet resource only: prefixes or addresses its clients keep
    /// on their own path (at most 64).
    #[serde(default)]
    pub exclusions: Vec<String>,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ResourcePatch {
    pub name: Option<String>,
    #[serde(rename = "type")]
    #[schema(value_type = Option<String>)]
    pub kind: Option<ResourceType>,
    pub address: Option<String>,
    pub site_id: Option<Uuid>,
    #[schema(value_type = Option<Vec<Object>>)]
    pub filters: Option<Vec<Filter>>,
    /// An empty string removes it.
    pub address_description: Option<String>,
    /// Replaces the internet resource's exclusions (`[]` removes them).
    pub exclusions: Option<Vec<String>>,
}

/// Filters travel in every authorization; keep them a list, not a novel.
const MAX_FILTERS: usize = 32;

/// Validates the parts of a resource that depend on each other and on the
/// account, and puts the address in canonical form.
async fn validate(
    tx: &mut Conn,
    admin: &Admin,
    resource: &mut Resource,
    exclusions: &[String],
) -> ApiResult<()> {
    let address = ResourceAddress::parse(resource.kind, resource.address.as_deref())
        .map_err(|e| Problem::invalid("address", e))?;
    resource.address = address.to_text();
    let with_exclusions = ResourceAddress::parse_with_exclusions(
        resource.kind,
        resource.address.as_deref(),
        exclusions,
    )
    .map_err(|e| Problem::invalid("exclusions", e))?;
    resource.exclusions = with_exclusions.exclusions().to_vec();
    if resource.filters.len() > MAX_FILTERS {
        return Err(Problem::invalid(
            "filters",
            format!("at most {MAX_FILTERS} filters"),
        ));
    }
    if sites::get(tx, admin.account_id, resource.site_id)
        .await?
        .is_none()
    {
        return Err(Problem::invalid("site_id", "no such site"));
    }
    if let Some(description) = &resource.address_description {
        let description = description.trim();
        if description.chars().count() > 512 || description.chars().any(char::is_control) {
            return Err(Problem::invalid(
                "address_description",
                "must be at most 512 characters without control characters",
            ));
        }
        resource.address_description = (!description.is_empty()).then(|| description.to_string());
    }
    if resource.kind == ResourceType::Internet {
        let others = resources::list(tx, admin.account_id).await?;
        if others
            .iter()
            .any(|r| r.kind == ResourceType::Internet && r.id != resource.id)
        {
            return Err(Problem::conflict(
                "the account already has its internet resource",
            ));
        }
    }
    Ok(())
}

#[utoipa::path(get, path = "/resources", tag = "resources", responses((status = 200, body = List<Resource>)))]
pub async fn list(state: Shared, admin: Admin) -> ApiResult<impl IntoResponse> {
    Ok(List::of(read_all::<Resource>(&state, &admin).await?))
}

#[utoipa::path(post, path = "/resources", tag = "resources", request_body = ResourceInput,
    responses((status = 201, body = Resource), (status = 422, description = "invalid field")))]
pub async fn create(
    state: Shared,
    admin: Admin,
    Json(input): Json<ResourceInput>,
) -> ApiResult<impl IntoResponse> {
    let mut resource = Resource {
        id: Uuid::new_v4(),
        site_id: input.site_id,
        name: valid_name("name", &input.name)?,
        kind: input.kind,
        address: input.address,
        address_description: input.address_description,
        filters: input.filters,
        exclusions: Vec::new(),
        created_at: Timestamp::now(),
    };
    audited::write(&state, &admin, async |tx| {
        validate(tx, &admin, &mut resource, &input.exclusions).await?;
        resources::insert(tx, admin.account_id, &resource).await?;
        let id = resource.id;
        Ok(Outcome::created(
            "resource.create",
            id,
            resource,
            Change::Resource(id),
        ))
    })
    .await
}

#[utoipa::path(get, path = "/resources/{id}", tag = "resources", params(("id" = String, Path, description = "The object's id (a UUID)")), responses((status = 200, body = Resource), (status = 404)))]
pub async fn get(
    state: Shared,
    admin: Admin,
    Path(id): Path<String>,
) -> ApiResult<impl IntoResponse> {
    Ok(axum::Json(read_one::<Resource>(&state, &admin, &id).await?))
}

#[utoipa::path(patch, path = "/resources/{id}", tag = "resources", params(("id" = String, Path, description = "The object's id (a UUID)")), request_body = ResourcePatch,
    responses((status = 200, body = Resource), (status = 404), (status = 422)))]
pub async fn update(
    state: Shared,
    admin: Admin,
    Path(id): Path<String>,
    Json(patch): Json<ResourcePatch>,
) -> ApiResult<impl IntoResponse> {
    audited::write_scoped(&state, &admin, &id, async |tx, before: Resource| {
        let mut after = before.clone();
        if let Some(name) = &patch.name {
            after.name = valid_name("name", name)?;
        }
        if let Some(kind) = patch.kind {
            after.kind = kind;
            if kind == ResourceType::Internet && patch.address.is_none() {
                after.address = None;
            }
        }
        if patch.address.is_some() {
            after.address = patch.address;
        }
        if let Some(site_id) = patch.site_id {
            after.site_id = site_id;
        }
        if let Some(filters) = patch.filters {
            after.filters = filters;
        }
        if patch.address_description.is_some() {
            after.address_description = patch.address_description;
        }
        // Kept unless replaced; a resource that stops being the internet
        // one loses them.
        let exclusions: Vec<String> = match &patch.exclusions {
            Some(exclusions) => exclusions.clone(),
            None if after.kind == ResourceType::Internet => {
                before.exclusions.iter().map(|n| n.to_string()).collect()
            }
            None => Vec::new(),
        };
        validate(tx, &admin, &mut after, &exclusions).await?;
        resources::update(tx, admin.account_id, &after, now_ms()).await?;
        let id = before.id;
        Ok(Outcome::updated(
            "resource.update",
            id,
            &before,
            after,
            Change::Resource(id),
        ))
    })
    .await
}

#[utoipa::path(delete, path = "/resources/{id}", tag = "resources", params(("id" = String, Path, description = "The object's id (a UUID)")),
    description = "Deletes the resource and its policies; clients lose it at once.",
    responses((status = 204), (status = 404)))]
pub async fn remove(
    state: Shared,
    admin: Admin,
    Path(id): Path<String>,
) -> ApiResult<impl IntoResponse> {
    audited::write_scoped(&state, &admin, &id, async |tx, resource: Resource| {
        resources::delete(tx, admin.account_id, resource.id).await?;
        Ok(Outcome::deleted(
            "resource.delete",
            resource.id,
            &resource,
            Change::Resource(resource.id),
        ))
    })
    .await
}
