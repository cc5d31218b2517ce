//! `/groups` and their members. `Everyone` can be used in policies but not
//! renamed, deleted or given explicit members.

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
use crate::domain::{Group, GroupKind};
use crate::state::Change;
use crate::store::{Tx, actors, groups};

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct GroupInput {
    pub name: String,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct GroupPatch {
    pub name: Option<String>,
}

#[derive(Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Members {
    pub actor_ids: Vec<Uuid>,
}

async fn group_of(tx: &mut Tx, admin: &Admin, id: &str) -> ApiResult<Group> {
    groups::get(tx, admin.account_id, parse_id(id)?)
        .await?
        .ok_or_else(Problem::not_found)
}

fn editable(group: &Group) -> ApiResult<()> {
    match group.kind {
        GroupKind::Everyone => Err(Problem::conflict(
            "Everyone is built in: its members are every user and admin, and it cannot be renamed or deleted",
        )),
        GroupKind::Static | GroupKind::Provider => Ok(()),
    }
}

#[utoipa::path(get, path = "/groups", tag = "groups", responses((status = 200, body = List<Group>)))]
pub async fn list(state: Shared, admin: Admin) -> ApiResult<impl IntoResponse> {
    let mut tx = state.store.read().await?;
    let all = groups::list(&mut tx, admin.account_id).await?;
    tx.commit().await?;
    Ok(List::of(all))
}

#[utoipa::path(post, path = "/groups", tag = "groups", request_body = GroupInput,
    responses((status = 201, body = Group), (status = 409, description = "name taken")))]
pub async fn create(
    state: Shared,
    admin: Admin,
    Json(input): Json<GroupInput>,
) -> ApiResult<impl IntoResponse> {
    let group = Group {
        id: Uuid::new_v4(),
        name: valid_name("name", &input.name)?,
        kind: GroupKind::Static,
        created_at: Timestamp::now(),
    };
    let mut tx = state.store.write().await?;
    groups::insert(&mut tx, admin.account_id, &group).await?;
    record(
        &mut tx,
        &admin,
        "group.create",
        group.id,
        None::<&Group>,
        Some(&group),
    )
    .await?;
    tx.commit().await?;
    Ok((StatusCode::CREATED, axum::Json(group)))
}

#[utoipa::path(get, path = "/groups/{id}", tag = "groups", responses((status = 200, body = Group), (status = 404)))]
pub async fn get(
    state: Shared,
    admin: Admin,
    Path(id): Path<String>,
) -> ApiResult<impl IntoResponse> {
    let mut tx = state.store.read().await?;
    let group = group_of(&mut tx, &admin, &id).await?;
    tx.commit().await?;
    Ok(axum::Json(group))
}

#[utoipa::path(patch, path = "/groups/{id}", tag = "groups", request_body = GroupPatch,
    responses((status = 200, body = Group), (status = 404), (status = 409)))]
pub async fn update(
    state: Shared,
    admin: Admin,
    Path(id): Path<String>,
    Json(patch): Json<GroupPatch>,
) -> ApiResult<impl IntoResponse> {
    let mut tx = state.store.write().await?;
    let before = group_of(&mut tx, &admin, &id).await?;
    let mut after = before.clone();
    if let Some(name) = &patch.name {
        editable(&before)?;
        after.name = valid_name("name", name)?;
    }
    groups::rename(&mut tx, admin.account_id, after.id, &after.name, now_ms()).await?;
    record(
        &mut tx,
        &admin,
        "group.update",
        after.id,
        Some(&before),
        Some(&after),
    )
    .await?;
    tx.commit().await?;
    Ok(axum::Json(after))
}

#[utoipa::path(delete, path = "/groups/{id}", tag = "groups",
    description = "Deletes the group and its policies; its members lose what only it granted.",
    responses((status = 204), (status = 404), (status = 409)))]
pub async fn remove(
    state: Shared,
    admin: Admin,
    Path(id): Path<String>,
) -> ApiResult<impl IntoResponse> {
    let mut tx = state.store.write().await?;
    let group = group_of(&mut tx, &admin, &id).await?;
    editable(&group)?;
    let members = groups::members(&mut tx, admin.account_id, &group).await?;
    groups::delete(&mut tx, admin.account_id, group.id).await?;
    record(
        &mut tx,
        &admin,
        "group.delete",
        group.id,
        Some(&group),
        None::<&Group>,
    )
    .await?;
    tx.commit().await?;
    state.changed(admin.account_id, Change::Actors(members));
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(get, path = "/groups/{id}/members", tag = "groups",
    responses((status = 200, body = Members), (status = 404)))]
pub async fn members(
    state: Shared,
    admin: Admin,
    Path(id): Path<String>,
) -> ApiResult<impl IntoResponse> {
    let mut tx = state.store.read().await?;
    let group = group_of(&mut tx, &admin, &id).await?;
    let actor_ids = groups::members(&mut tx, admin.account_id, &group).await?;
    tx.commit().await?;
    Ok(axum::Json(Members { actor_ids }))
}

#[utoipa::path(put, path = "/groups/{id}/members", tag = "groups", request_body = Members,
    description = "Replaces the members.",
    responses((status = 200, body = Members), (status = 404), (status = 422)))]
pub async fn set_members(
    state: Shared,
    admin: Admin,
    Path(id): Path<String>,
    Json(input): Json<Members>,
) -> ApiResult<impl IntoResponse> {
    let mut tx = state.store.write().await?;
    let group = group_of(&mut tx, &admin, &id).await?;
    editable(&group)?;
    let mut wanted = input.actor_ids;
    wanted.sort_unstable();
    wanted.dedup();
    for (index, actor) in wanted.iter().enumerate() {
        if actors::get(&mut tx, admin.account_id, *actor)
            .await?
            .is_none()
        {
            return Err(Problem::invalid(
                format!("actor_ids[{index}]"),
                format!("no actor {actor}"),
            ));
        }
    }
    let before = groups::members(&mut tx, admin.account_id, &group).await?;
    groups::set_members(&mut tx, admin.account_id, group.id, &wanted).await?;
    record(
        &mut tx,
        &admin,
        "group.members",
        group.id,
        Some(&Members {
            actor_ids: before.clone(),
        }),
        Some(&Members {
            actor_ids: wanted.clone(),
        }),
    )
    .await?;
    tx.commit().await?;
    let mut affected: Vec<Uuid> = before
        .iter()
        .filter(|a| !wanted.contains(a))
        .chain(wanted.iter().filter(|a| !before.contains(a)))
        .copied()
        .collect();
    affected.sort_unstable();
    state.changed(admin.account_id, Change::Actors(affected));
    Ok(axum::Json(Members { actor_ids: wanted }))
}
