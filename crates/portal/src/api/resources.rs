//! `/resources`: addresses validated per SPEC F9-F11, filters per F12.

use axum::extract::Path;
use axum::response::IntoResponse;
use jiff::Timestamp;
use postern_model::{AddressError, Filter, ResourceAddress, ResourceType};
use serde::Deserialize;
use uuid::Uuid;

use super::audited::{self, Outcome};
use super::body::Json;
use super::fields::{AddressDescription, MAX_FILTERS, Name};
use super::problem::{ApiResult, Problem};
use super::{Admin, List, Shared, now_ms, read_all, read_one};
use crate::domain::Resource;
use crate::state::Change;
use crate::store::{Conn, resources, sites};

/// Its JSON Schema is in `schemas` (the address depends on the type).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResourceInput {
    pub name: Name,
    #[serde(rename = "type")]
    pub kind: ResourceType,
    /// A CIDR prefix, an IP address or a DNS name pattern; none for `internet`.
    pub address: Option<String>,
    pub site_id: Uuid,
    #[serde(default)]
    pub filters: Vec<Filter>,
    pub address_description: Option<AddressDescription>,
    /// The internet resource only: prefixes or addresses its clients keep
    /// on their own path (at most 64).
    #[serde(default)]
    pub exclusions: Vec<String>,
}

/// Its JSON Schema is in `schemas`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResourcePatch {
    pub name: Option<Name>,
    #[serde(rename = "type")]
    pub kind: Option<ResourceType>,
    pub address: Option<String>,
    pub site_id: Option<Uuid>,
    pub filters: Option<Vec<Filter>>,
    /// An empty string removes it.
    pub address_description: Option<AddressDescription>,
    /// Replaces the internet resource's exclusions (`[]` removes them).
    pub exclusions: Option<Vec<String>>,
}

/// Names matter to people and to declarations (`admin apply` matches by
/// name): a second resource of a name is a conflict. (Older accounts may
/// hold duplicates; they stay until renamed.)
async fn unique_name(tx: &mut Conn, admin: &Admin, resource: &Resource) -> ApiResult<()> {
    let all = resources::list(tx, admin.account_id).await?;
    if all
        .iter()
        .any(|r| r.name == resource.name && r.id != resource.id)
    {
        return Err(Problem::conflict_at(
            "name",
            "another resource has this name",
        ));
    }
    Ok(())
}

/// The address (and the internet resource's exclusions) of a type, in
/// canonical form; which field is at fault when they do not fit it.
fn parse_address(
    kind: ResourceType,
    address: Option<&str>,
    exclusions: &[String],
) -> Result<ResourceAddress, (&'static str, AddressError)> {
    ResourceAddress::parse(kind, address).map_err(|e| ("address", e))?;
    ResourceAddress::parse_with_exclusions(kind, address, exclusions).map_err(|e| ("exclusions", e))
}

/// The request alone: filters within bounds, and with a type, an address
/// (and exclusions) that fit it. A failure is the request's fault: 422.
pub(super) fn check_request(
    kind: Option<ResourceType>,
    address: Option<&str>,
    exclusions: Option<&[String]>,
    filters: Option<&[Filter]>,
) -> ApiResult<()> {
    if filters.is_some_and(|f| f.len() > MAX_FILTERS) {
        return Err(Problem::invalid(
            "filters",
            format!("at most {MAX_FILTERS} filters"),
        ));
    }
    match kind {
        Some(kind) => parse_address(kind, address, exclusions.unwrap_or_default())
            .map(drop)
            .map_err(|(field, e)| Problem::invalid(field, e)),
        // An address alone must be one of some type (409 later when it is
        // not of the stored one); exclusions alone each an exclusion.
        None if address.is_some_and(|a| {
            !a.trim().is_empty()
                && [ResourceType::Cidr, ResourceType::Ip, ResourceType::Dns]
                    .iter()
                    .all(|kind| ResourceAddress::parse(*kind, Some(a)).is_err())
        }) =>
        {
            Err(Problem::invalid(
                "address",
                "is not a CIDR prefix, an IP address or a DNS name pattern",
            ))
        }
        None => match exclusions {
            Some(exclusions) if !exclusions.is_empty() => {
                ResourceAddress::parse_with_exclusions(ResourceType::Internet, None, exclusions)
                    .map(drop)
                    .map_err(|e| Problem::invalid("exclusions", e))
            }
            _ => Ok(()),
        },
    }
}

/// Validates a resource against the account (its site exists, one internet
/// resource) and puts the address in canonical form. The request was
/// checked alone already: what fails here conflicts with what is stored
/// (a patch's address that does not fit the stored type): 409.
pub(super) async fn validate(
    tx: &mut Conn,
    admin: &Admin,
    resource: &mut Resource,
    exclusions: &[String],
    leaving: &[Uuid],
) -> ApiResult<()> {
    let address = parse_address(resource.kind, resource.address.as_deref(), exclusions)
        .map_err(|(field, e)| Problem::conflict_at(field, e))?;
    resource.address = address.to_text();
    resource.exclusions = address.exclusions().to_vec();
    if sites::get(tx, admin.account_id, resource.site_id)
        .await?
        .is_none()
    {
        return Err(Problem::conflict_at("site_id", "no such site"));
    }
    if resource.kind == ResourceType::Internet {
        let others = resources::list(tx, admin.account_id).await?;
        if others.iter().any(|r| {
            r.kind == ResourceType::Internet && r.id != resource.id && !leaving.contains(&r.id)
        }) {
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
    check_request(
        Some(input.kind),
        input.address.as_deref(),
        Some(&input.exclusions),
        Some(&input.filters),
    )?;
    let mut resource = Resource {
        id: Uuid::new_v4(),
        site_id: input.site_id,
        name: input.name.0,
        kind: input.kind,
        address: input.address,
        address_description: input
            .address_description
            .map(|d| d.0)
            .filter(|d| !d.is_empty()),
        filters: input.filters,
        exclusions: Vec::new(),
        created_at: Timestamp::now(),
    };
    audited::write(&state, &admin, async |tx| {
        validate(tx, &admin, &mut resource, &input.exclusions, &[]).await?;
        unique_name(tx, &admin, &resource).await?;
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
    if patch
        .kind
        .is_some_and(|kind| kind != ResourceType::Internet && patch.address.is_none())
    {
        return Err(Problem::invalid(
            "address",
            "a new type needs its address in the same request",
        ));
    }
    check_request(
        patch.kind,
        patch.address.as_deref(),
        patch.exclusions.as_deref(),
        patch.filters.as_deref(),
    )?;
    audited::write_scoped(&state, &admin, &id, async |tx, before: Resource| {
        let mut after = before.clone();
        if let Some(name) = &patch.name {
            after.name = name.0.clone();
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
        if let Some(filters) = &patch.filters {
            after.filters = filters.clone();
        }
        if let Some(description) = &patch.address_description {
            after.address_description = Some(description.0.clone()).filter(|d| !d.is_empty());
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
        validate(tx, &admin, &mut after, &exclusions, &[]).await?;
        if after.name != before.name {
            unique_name(tx, &admin, &after).await?;
        }
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
