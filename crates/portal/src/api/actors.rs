//! `/actors`: users, admins and service accounts. The account always keeps at
//! least one enabled admin.

use axum::extract::Path;
use axum::response::IntoResponse;
use jiff::Timestamp;
use serde::Deserialize;
use utoipa::ToSchema;
use uuid::Uuid;

use super::audited::{self, Outcome};
use super::body::Json;
use super::fields::{Email, Name};
use super::problem::{ApiResult, Problem};
use super::{Admin, List, Shared, now_ms, read_all, read_one};
use crate::domain::{Actor, Role};
use crate::state::Change;
use crate::store::{Conn, actors};

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ActorInput {
    pub name: Name,
    /// Required for users and admins (it is how they sign in).
    pub email: Option<Email>,
    pub role: Role,
    #[serde(default)]
    pub disabled: bool,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ActorPatch {
    pub name: Option<Name>,
    pub email: Option<Email>,
    pub role: Option<Role>,
    pub disabled: Option<bool>,
}

/// Users and admins sign in by their email address: they need one. The
/// address itself was checked on the way in (`Email`).
fn check_email(actor: &Actor) -> Result<(), &'static str> {
    if actor.email.is_none() && actor.role != Role::ServiceAccount {
        return Err("users and admins need an email address");
    }
    Ok(())
}

/// 409 for an actor a directory provisioned.
async fn owned(tx: &mut Conn, admin: &Admin, actor: &Actor) -> ApiResult<()> {
    super::directories::refuse_if_owned(
        tx,
        admin.account_id,
        actor.directory_id,
        &format!("the user {:?}", actor.name),
    )
    .await
}

fn enabled_admin(actor: &Actor) -> bool {
    actor.role == Role::Admin && !actor.disabled
}

/// Refuses a change that would leave the account without an enabled admin.
async fn keep_an_admin(
    tx: &mut Conn,
    admin: &Admin,
    before: &Actor,
    after: Option<&Actor>,
) -> ApiResult<()> {
    if enabled_admin(before)
        && !after.is_some_and(enabled_admin)
        && actors::count_enabled_admins(tx, admin.account_id).await? <= 1
    {
        return Err(Problem::conflict(
            "this is the account's last enabled admin",
        ));
    }
    Ok(())
}

#[utoipa::path(get, path = "/actors", tag = "actors", responses((status = 200, body = List<Actor>)))]
pub async fn list(state: Shared, admin: Admin) -> ApiResult<impl IntoResponse> {
    Ok(List::of(read_all::<Actor>(&state, &admin).await?))
}

#[utoipa::path(post, path = "/actors", tag = "actors", request_body = ActorInput,
    responses((status = 201, body = Actor), (status = 409, description = "email taken"), (status = 422)))]
pub async fn create(
    state: Shared,
    admin: Admin,
    Json(input): Json<ActorInput>,
) -> ApiResult<impl IntoResponse> {
    let actor = Actor {
        directory_id: None,
        id: Uuid::new_v4(),
        name: input.name.0,
        email: input.email.map(|e| e.0),
        role: input.role,
        disabled: input.disabled,
        created_at: Timestamp::now(),
    };
    check_email(&actor).map_err(|why| Problem::invalid("email", why))?;
    audited::write(&state, &admin, async |tx| {
        actors::insert(tx, admin.account_id, &actor).await?;
        let id = actor.id;
        Ok(Outcome::created(
            "actor.create",
            id,
            actor,
            Change::Actors(vec![id]),
        ))
    })
    .await
}

#[utoipa::path(get, path = "/actors/{id}", tag = "actors", params(("id" = String, Path, description = "The object's id (a UUID)")), responses((status = 200, body = Actor), (status = 404)))]
pub async fn get(
    state: Shared,
    admin: Admin,
    Path(id): Path<String>,
) -> ApiResult<impl IntoResponse> {
    Ok(axum::Json(read_one::<Actor>(&state, &admin, &id).await?))
}

#[utoipa::path(patch, path = "/actors/{id}", tag = "actors", params(("id" = String, Path, description = "The object's id (a UUID)")), request_body = ActorPatch,
    description = "Disabling an actor closes its clients' channels at once.",
    responses((status = 200, body = Actor), (status = 404), (status = 409), (status = 422)))]
pub async fn update(
    state: Shared,
    admin: Admin,
    Path(id): Path<String>,
    Json(patch): Json<ActorPatch>,
) -> ApiResult<impl IntoResponse> {
    audited::write_scoped(&state, &admin, &id, async |tx, before: Actor| {
        let mut after = before.clone();
        if let Some(name) = &patch.name {
            after.name = name.0.clone();
        }
        if let Some(email) = &patch.email {
            after.email = Some(email.0.clone());
        }
        if let Some(role) = patch.role {
            after.role = role;
        }
        if let Some(disabled) = patch.disabled {
            after.disabled = disabled;
        }
        // The patch is fine on its own; with the stored actor it may not be
        // (a service account without email made a user): a conflict.
        // A directory's user may come without an email (it cannot sign in
        // until the directory gives one); that is the directory's to fix.
        if after.directory_id.is_none() {
            check_email(&after).map_err(|why| Problem::conflict_at("role", why))?;
        }
        // What a directory says of its users is its own; the role is Postern's.
        if (&after.name, &after.email, after.disabled)
            != (&before.name, &before.email, before.disabled)
        {
            owned(tx, &admin, &before).await?;
        }
        keep_an_admin(tx, &admin, &before, Some(&after)).await?;
        actors::update(tx, admin.account_id, &after, now_ms()).await?;
        let id = before.id;
        Ok(Outcome::updated(
            "actor.update",
            id,
            &before,
            after,
            Change::Actors(vec![id]),
        ))
    })
    .await
}

#[utoipa::path(delete, path = "/actors/{id}", tag = "actors", params(("id" = String, Path, description = "The object's id (a UUID)")),
    description = "Deletes the actor with its tokens and devices; its channels close at once.",
    responses((status = 204), (status = 404), (status = 409)))]
pub async fn remove(
    state: Shared,
    admin: Admin,
    Path(id): Path<String>,
) -> ApiResult<impl IntoResponse> {
    audited::write_scoped(&state, &admin, &id, async |tx, actor: Actor| {
        owned(tx, &admin, &actor).await?;
        keep_an_admin(tx, &admin, &actor, None).await?;
        actors::delete(tx, admin.account_id, actor.id).await?;
        Ok(Outcome::deleted(
            "actor.delete",
            actor.id,
            &actor,
            Change::Actors(vec![actor.id]),
        ))
    })
    .await
}
