//! `/groups` and their members. `Everyone` can be used in policies but not
//! renamed, deleted or given explicit members.

use axum::extract::Path;
use axum::response::IntoResponse;
use jiff::Timestamp;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use super::audited::{self, Notices, Outcome};
use super::body::Json;
use super::fields::Name;
use super::problem::{ApiResult, Problem};
use super::{Admin, List, Shared, now_ms, read_all, read_one, scoped};
use crate::domain::{Group, GroupKind, impact};
use crate::state::Change;
use crate::store::{Conn, actors, groups};

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct GroupInput {
    pub name: Name,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct GroupPatch {
    pub name: Option<Name>,
}

#[derive(Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Members {
    pub actor_ids: Vec<Uuid>,
}

/// Whether admins may rename, delete or fill the group: not `Everyone`,
/// and not one a directory owns.
async fn editable(tx: &mut Conn, admin: &Admin, group: &Group) -> ApiResult<()> {
    super::directories::refuse_if_owned(
        tx,
        admin.account_id,
        group.directory_id,
        &format!("the group {:?}", group.name),
    )
    .await?;
    match group.kind {
        GroupKind::Everyone => Err(Problem::conflict(
            "Everyone is built in: its members are every user and admin, and it cannot be renamed or deleted",
        )),
        GroupKind::Static | GroupKind::Provider => Ok(()),
    }
}

#[utoipa::path(get, path = "/groups", tag = "groups", responses((status = 200, body = List<Group>)))]
pub async fn list(state: Shared, admin: Admin) -> ApiResult<impl IntoResponse> {
    Ok(List::of(read_all::<Group>(&state, &admin).await?))
}

#[utoipa::path(post, path = "/groups", tag = "groups", request_body = GroupInput,
    responses((status = 201, body = Group), (status = 409, description = "name taken")))]
pub async fn create(
    state: Shared,
    admin: Admin,
    Json(input): Json<GroupInput>,
) -> ApiResult<impl IntoResponse> {
    let group = Group {
        directory_id: None,
        id: Uuid::new_v4(),
        name: input.name.0,
        kind: GroupKind::Static,
        created_at: Timestamp::now(),
    };
    audited::write(&state, &admin, async |tx| {
        groups::insert(tx, admin.account_id, &group).await?;
        Ok(Outcome::created(
            "group.create",
            group.id,
            group,
            Notices::Quiet("a new group has no members and no policies yet"),
        ))
    })
    .await
}

#[utoipa::path(get, path = "/groups/{id}", tag = "groups", params(("id" = String, Path, description = "The object's id (a UUID)")), responses((status = 200, body = Group), (status = 404)))]
pub async fn get(
    state: Shared,
    admin: Admin,
    Path(id): Path<String>,
) -> ApiResult<impl IntoResponse> {
    Ok(axum::Json(read_one::<Group>(&state, &admin, &id).await?))
}

#[utoipa::path(patch, path = "/groups/{id}", tag = "groups", params(("id" = String, Path, description = "The object's id (a UUID)")), request_body = GroupPatch,
    responses((status = 200, body = Group), (status = 404), (status = 409)))]
pub async fn update(
    state: Shared,
    admin: Admin,
    Path(id): Path<String>,
    Json(patch): Json<GroupPatch>,
) -> ApiResult<impl IntoResponse> {
    audited::write_scoped(&state, &admin, &id, async |tx, before: Group| {
        let mut after = before.clone();
        if let Some(name) = &patch.name {
            editable(tx, &admin, &before).await?;
            after.name = name.0.clone();
        }
        groups::rename(tx, admin.account_id, after.id, &after.name, now_ms()).await?;
        Ok(Outcome::updated(
            "group.update",
            before.id,
            &before,
            after,
            Notices::Quiet("access follows group ids, not names"),
        ))
    })
    .await
}

#[utoipa::path(delete, path = "/groups/{id}", tag = "groups", params(("id" = String, Path, description = "The object's id (a UUID)")),
    description = "Deletes the group and its policies; its members lose what only it granted.",
    responses((status = 204), (status = 404), (status = 409)))]
pub async fn remove(
    state: Shared,
    admin: Admin,
    Path(id): Path<String>,
) -> ApiResult<impl IntoResponse> {
    audited::write_scoped(&state, &admin, &id, async |tx, group: Group| {
        editable(tx, &admin, &group).await?;
        let members = groups::members(tx, admin.account_id, &group).await?;
        groups::delete(tx, admin.account_id, group.id).await?;
        Ok(Outcome::deleted(
            "group.delete",
            group.id,
            &group,
            Change::Actors(members),
        ))
    })
    .await
}

#[utoipa::path(get, path = "/groups/{id}/members", tag = "groups", params(("id" = String, Path, description = "The object's id (a UUID)")),
    responses((status = 200, body = Members), (status = 404)))]
pub async fn members(
    state: Shared,
    admin: Admin,
    Path(id): Path<String>,
) -> ApiResult<impl IntoResponse> {
    let mut tx = state.store.read().await?;
    let group: Group = scoped(&mut tx, &admin, &id).await?;
    let actor_ids = groups::members(&mut tx, admin.account_id, &group).await?;
    tx.commit().await?;
    Ok(axum::Json(Members { actor_ids }))
}

#[utoipa::path(put, path = "/groups/{id}/members", tag = "groups", params(("id" = String, Path, description = "The object's id (a UUID)")), request_body = Members,
    description = "Replaces the members.",
    responses((status = 200, body = Members), (status = 404), (status = 422)))]
pub async fn set_members(
    state: Shared,
    admin: Admin,
    Path(id): Path<String>,
    Json(input): Json<Members>,
) -> ApiResult<impl IntoResponse> {
    audited::write_scoped(&state, &admin, &id, async |tx, group: Group| {
        editable(tx, &admin, &group).await?;
        for (index, actor) in input.actor_ids.iter().enumerate() {
            if actors::get(tx, admin.account_id, *actor).await?.is_none() {
                return Err(Problem::conflict_at(
                    format!("actor_ids[{index}]"),
                    format!("no actor {actor}"),
                ));
            }
        }
        let mut wanted = input.actor_ids;
        wanted.sort_unstable();
        wanted.dedup();
        let before = Members {
            actor_ids: groups::members(tx, admin.account_id, &group).await?,
        };
        groups::set_members(tx, admin.account_id, group.id, &wanted).await?;
        let after = Members { actor_ids: wanted };
        let changed = impact::membership_changes(&before.actor_ids, &after.actor_ids);
        Ok(Outcome::updated(
            "group.members",
            group.id,
            &before,
            after,
            Change::Actors(changed),
        ))
    })
    .await
}
