//! `/clients`: devices of actors; admins can mark them verified or delete them.

use axum::extract::Path;
use axum::response::IntoResponse;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::audited::{self, Outcome};
use super::body::Json;
use super::problem::{ApiResult, Problem};
use super::{Admin, List, Shared, parse_id};
use crate::domain::{Device, DeviceKind};
use crate::state::Change;
use crate::store::devices;

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ClientPatch {
    pub verified: Option<bool>,
}

/// A client with its presence.
#[derive(Serialize, ToSchema)]
pub struct ClientView {
    #[serde(flatten)]
    pub device: Device,
    pub online: bool,
}

#[utoipa::path(get, path = "/clients", tag = "clients", responses((status = 200, body = List<ClientView>)))]
pub async fn list(state: Shared, admin: Admin) -> ApiResult<impl IntoResponse> {
    let mut tx = state.store.read().await?;
    let all = devices::list(&mut tx, admin.account_id, DeviceKind::Client, None).await?;
    tx.commit().await?;
    let views = all
        .into_iter()
        .map(|device| ClientView {
            online: state.client_online(device.id),
            device,
        })
        .collect();
    Ok(List::of(views))
}

#[utoipa::path(patch, path = "/clients/{id}", tag = "clients", params(("id" = String, Path, description = "The object's id (a UUID)")), request_body = ClientPatch,
    responses((status = 200, body = Device), (status = 404)))]
pub async fn update(
    state: Shared,
    admin: Admin,
    Path(id): Path<String>,
    Json(patch): Json<ClientPatch>,
) -> ApiResult<impl IntoResponse> {
    let id = parse_id(&id)?;
    audited::write(&state, &admin, async |tx| {
        let before = devices::get(tx, admin.account_id, DeviceKind::Client, id)
            .await?
            .ok_or_else(Problem::not_found)?;
        let mut after = before.clone();
        if let Some(verified) = patch.verified {
            after.verified = verified;
            devices::set_verified(tx, admin.account_id, id, verified).await?;
        }
        Ok(Outcome::updated(
            "client.update",
            id,
            &before,
            after,
            Change::Client(id),
        ))
    })
    .await
}

#[utoipa::path(delete, path = "/clients/{id}", tag = "clients", params(("id" = String, Path, description = "The object's id (a UUID)")),
    description = "Forgets the device and closes its channel; it gets new addresses if it returns.",
    responses((status = 204), (status = 404)))]
pub async fn remove(
    state: Shared,
    admin: Admin,
    Path(id): Path<String>,
) -> ApiResult<impl IntoResponse> {
    let id = parse_id(&id)?;
    audited::write(&state, &admin, async |tx| {
        let before = devices::get(tx, admin.account_id, DeviceKind::Client, id)
            .await?
            .ok_or_else(Problem::not_found)?;
        devices::delete(tx, admin.account_id, DeviceKind::Client, id).await?;
        Ok(Outcome::deleted(
            "client.delete",
            id,
            &before,
            Change::ClientDeleted(id),
        ))
    })
    .await
}
