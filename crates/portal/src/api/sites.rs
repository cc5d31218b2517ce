//! `/sites`, their gateway tokens and gateways.

use axum::extract::Path;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use jiff::Timestamp;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use super::body::Json;
use super::problem::{ApiResult, Problem};
use super::{Admin, List, Shared, now_ms, parse_id, record, valid_name};
use crate::auth::token;
use crate::domain::{Device, DeviceKind, Site, TokenKind};
use crate::state::Change;
use crate::store::tokens::NewToken;
use crate::store::{Tx, devices, resources, sites, tokens};

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SiteInput {
    pub name: String,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SitePatch {
    pub name: Option<String>,
}

/// A token shown once.
#[derive(Serialize, ToSchema)]
pub struct NewSecret {
    pub id: Uuid,
    pub token: String,
    #[schema(value_type = Option<String>, format = DateTime)]
    pub expires_at: Option<Timestamp>,
}

/// A gateway with its presence.
#[derive(Serialize, ToSchema)]
pub struct GatewayView {
    #[serde(flatten)]
    pub device: Device,
    pub online: bool,
    /// Clients it currently serves.
    pub load: u64,
}

pub(crate) async fn site_of(tx: &mut Tx, admin: &Admin, id: &str) -> ApiResult<Site> {
    sites::get(tx, admin.account_id, parse_id(id)?)
        .await?
        .ok_or_else(Problem::not_found)
}

#[utoipa::path(get, path = "/sites", tag = "sites", responses((status = 200, body = List<Site>)))]
pub async fn list(state: Shared, admin: Admin) -> ApiResult<impl IntoResponse> {
    let mut tx = state.store.read().await?;
    let sites = sites::list(&mut tx, admin.account_id).await?;
    tx.commit().await?;
    Ok(List::of(sites))
}

#[utoipa::path(post, path = "/sites", tag = "sites", request_body = SiteInput,
    responses((status = 201, body = Site), (status = 409, description = "name taken")))]
pub async fn create(
    state: Shared,
    admin: Admin,
    Json(input): Json<SiteInput>,
) -> ApiResult<impl IntoResponse> {
    let site = Site {
        id: Uuid::new_v4(),
        name: valid_name("name", &input.name)?,
        created_at: Timestamp::now(),
    };
    let mut tx = state.store.write().await?;
    sites::insert(&mut tx, admin.account_id, &site).await?;
    record(
        &mut tx,
        &admin,
        "site.create",
        site.id,
        None::<&Site>,
        Some(&site),
    )
    .await?;
    tx.commit().await?;
    Ok((StatusCode::CREATED, axum::Json(site)))
}

#[utoipa::path(get, path = "/sites/{id}", tag = "sites", responses((status = 200, body = Site), (status = 404)))]
pub async fn get(
    state: Shared,
    admin: Admin,
    Path(id): Path<String>,
) -> ApiResult<impl IntoResponse> {
    let mut tx = state.store.read().await?;
    let site = site_of(&mut tx, &admin, &id).await?;
    tx.commit().await?;
    Ok(axum::Json(site))
}

#[utoipa::path(patch, path = "/sites/{id}", tag = "sites", request_body = SitePatch,
    responses((status = 200, body = Site), (status = 404)))]
pub async fn update(
    state: Shared,
    admin: Admin,
    Path(id): Path<String>,
    Json(patch): Json<SitePatch>,
) -> ApiResult<impl IntoResponse> {
    let name = patch
        .name
        .as_deref()
        .map(|n| valid_name("name", n))
        .transpose()?;
    let mut tx = state.store.write().await?;
    let before = site_of(&mut tx, &admin, &id).await?;
    let mut after = before.clone();
    if let Some(name) = name {
        after.name = name;
    }
    sites::rename(&mut tx, admin.account_id, after.id, &after.name, now_ms()).await?;
    record(
        &mut tx,
        &admin,
        "site.update",
        after.id,
        Some(&before),
        Some(&after),
    )
    .await?;
    tx.commit().await?;
    Ok(axum::Json(after))
}

#[utoipa::path(delete, path = "/sites/{id}", tag = "sites",
    description = "Deletes the site with its resources, their policies and its gateway tokens.",
    responses((status = 204), (status = 404)))]
pub async fn remove(
    state: Shared,
    admin: Admin,
    Path(id): Path<String>,
) -> ApiResult<impl IntoResponse> {
    let mut tx = state.store.write().await?;
    let site = site_of(&mut tx, &admin, &id).await?;
    // Its resources go with it: their clients and gateways must hear.
    let resource_ids: Vec<Uuid> = resources::list(&mut tx, admin.account_id)
        .await?
        .into_iter()
        .filter(|r| r.site_id == site.id)
        .map(|r| r.id)
        .collect();
    sites::delete(&mut tx, admin.account_id, site.id).await?;
    record(
        &mut tx,
        &admin,
        "site.delete",
        site.id,
        Some(&site),
        None::<&Site>,
    )
    .await?;
    tx.commit().await?;
    for resource_id in resource_ids {
        state.changed(admin.account_id, Change::Resource(resource_id));
    }
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(post, path = "/sites/{id}/gateway_tokens", tag = "sites",
    description = "A token for the site's gateways; any number of gateways may share it. Shown once.",
    responses((status = 201, body = NewSecret), (status = 404)))]
pub async fn create_gateway_token(
    state: Shared,
    admin: Admin,
    Path(id): Path<String>,
) -> ApiResult<impl IntoResponse> {
    let minted = token::mint("")
        .map_err(|e| Problem::new(StatusCode::SERVICE_UNAVAILABLE, e.to_string()))?;
    let mut tx = state.store.write().await?;
    let site = site_of(&mut tx, &admin, &id).await?;
    let new = NewToken {
        account_id: Some(admin.account_id),
        kind: TokenKind::Gateway,
        actor_id: None,
        site_id: Some(site.id),
        identity_provider_id: None,
        expires_at_ms: None,
    };
    tokens::insert(&mut tx, &minted, &new, now_ms()).await?;
    let shown = serde_json::json!({"kind": "gateway", "site_id": site.id});
    record(
        &mut tx,
        &admin,
        "token.create",
        minted.id,
        None::<&()>,
        Some(&shown),
    )
    .await?;
    tx.commit().await?;
    Ok((
        StatusCode::CREATED,
        axum::Json(NewSecret {
            id: minted.id,
            token: minted.token,
            expires_at: None,
        }),
    ))
}

#[utoipa::path(get, path = "/sites/{id}/gateways", tag = "sites",
    responses((status = 200, body = List<GatewayView>), (status = 404)))]
pub async fn gateways(
    state: Shared,
    admin: Admin,
    Path(id): Path<String>,
) -> ApiResult<impl IntoResponse> {
    let mut tx = state.store.read().await?;
    let site = site_of(&mut tx, &admin, &id).await?;
    let gateways = devices::list(
        &mut tx,
        admin.account_id,
        DeviceKind::Gateway,
        Some(site.id),
    )
    .await?;
    tx.commit().await?;
    let views = gateways
        .into_iter()
        .map(|device| {
            let (online, load) = state.gateway_presence(device.id);
            GatewayView {
                device,
                online,
                load,
            }
        })
        .collect();
    Ok(List::of(views))
}
