//! `/sites`, their gateway tokens and gateways.

use axum::extract::Path;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use jiff::Timestamp;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use super::audited::{self, Entry, Notices, Outcome};
use super::body::Json;
use super::fields::Name;
use super::problem::{ApiResult, Problem};
use super::{Admin, List, Shared, now_ms, read_all, read_one, scoped};
use crate::auth::token;
use crate::domain::{Device, DeviceKind, Site, TokenKind, impact};
use crate::state::Change;
use crate::store::tokens::NewToken;
use crate::store::{devices, resources, sites, tokens};

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SiteInput {
    pub name: Name,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SitePatch {
    pub name: Option<Name>,
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

#[utoipa::path(get, path = "/sites", tag = "sites", responses((status = 200, body = List<Site>)))]
pub async fn list(state: Shared, admin: Admin) -> ApiResult<impl IntoResponse> {
    Ok(List::of(read_all::<Site>(&state, &admin).await?))
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
        name: input.name.0,
        created_at: Timestamp::now(),
    };
    audited::write(&state, &admin, async |tx| {
        sites::insert(tx, admin.account_id, &site).await?;
        Ok(Outcome::created(
            "site.create",
            site.id,
            site,
            Notices::Quiet("a new site has no resources yet"),
        ))
    })
    .await
}

#[utoipa::path(get, path = "/sites/{id}", tag = "sites", params(("id" = String, Path, description = "The object's id (a UUID)")), responses((status = 200, body = Site), (status = 404)))]
pub async fn get(
    state: Shared,
    admin: Admin,
    Path(id): Path<String>,
) -> ApiResult<impl IntoResponse> {
    Ok(axum::Json(read_one::<Site>(&state, &admin, &id).await?))
}

#[utoipa::path(patch, path = "/sites/{id}", tag = "sites", params(("id" = String, Path, description = "The object's id (a UUID)")), request_body = SitePatch,
    responses((status = 200, body = Site), (status = 404)))]
pub async fn update(
    state: Shared,
    admin: Admin,
    Path(id): Path<String>,
    Json(patch): Json<SitePatch>,
) -> ApiResult<impl IntoResponse> {
    let name = patch.name.map(|n| n.0);
    audited::write_scoped(&state, &admin, &id, async |tx, before: Site| {
        let mut after = before.clone();
        if let Some(name) = name {
            after.name = name;
        }
        sites::rename(tx, admin.account_id, after.id, &after.name, now_ms()).await?;
        Ok(Outcome::updated(
            "site.update",
            before.id,
            &before,
            after,
            Notices::Quiet("clients and gateways are not told site names"),
        ))
    })
    .await
}

#[utoipa::path(delete, path = "/sites/{id}", tag = "sites", params(("id" = String, Path, description = "The object's id (a UUID)")),
    description = "Deletes the site with its resources, their policies and its gateway tokens.",
    responses((status = 204), (status = 404)))]
pub async fn remove(
    state: Shared,
    admin: Admin,
    Path(id): Path<String>,
) -> ApiResult<impl IntoResponse> {
    audited::write_scoped(&state, &admin, &id, async |tx, site: Site| {
        let all = resources::list(tx, admin.account_id).await?;
        let gone = impact::deleted_with_site(site.id, &all);
        sites::delete(tx, admin.account_id, site.id).await?;
        Ok(Outcome::deleted(
            "site.delete",
            site.id,
            &site,
            gone.into_iter().map(Change::Resource).collect::<Vec<_>>(),
        ))
    })
    .await
}

#[utoipa::path(post, path = "/sites/{id}/gateway_tokens", tag = "sites", params(("id" = String, Path, description = "The object's id (a UUID)")),
    description = "A token for the site's gateways; any number of gateways may share it. Shown once.",
    responses((status = 201, body = NewSecret), (status = 404)))]
pub async fn create_gateway_token(
    state: Shared,
    admin: Admin,
    Path(id): Path<String>,
) -> ApiResult<impl IntoResponse> {
    let minted =
        token::mint().map_err(|e| Problem::new(StatusCode::SERVICE_UNAVAILABLE, e.to_string()))?;
    audited::write_scoped(&state, &admin, &id, async |tx, site: Site| {
        let new = NewToken {
            account_id: Some(admin.account_id),
            kind: TokenKind::Gateway,
            actor_id: None,
            site_id: Some(site.id),
            identity_provider_id: None,
            expires_at_ms: None,
            read_only: false,
        };
        tokens::insert(tx, &minted, &new, now_ms()).await?;
        let shown = serde_json::json!({"kind": "gateway", "site_id": site.id});
        Ok(Outcome::new(
            (
                StatusCode::CREATED,
                axum::Json(NewSecret {
                    id: minted.id,
                    token: minted.token,
                    expires_at: None,
                }),
            ),
            Entry::created("token.create", minted.id, &shown),
            Notices::Quiet("a new token changes nothing until a gateway connects with it"),
        ))
    })
    .await
}

#[utoipa::path(get, path = "/sites/{id}/gateways", tag = "sites", params(("id" = String, Path, description = "The object's id (a UUID)")),
    responses((status = 200, body = List<GatewayView>), (status = 404)))]
pub async fn gateways(
    state: Shared,
    admin: Admin,
    Path(id): Path<String>,
) -> ApiResult<impl IntoResponse> {
    let mut tx = state.store.read().await?;
    let site: Site = scoped(&mut tx, &admin, &id).await?;
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
