//! Groups and their members: admins' own groups are edited here; those of
//! an identity provider or a directory are shown, and the API's refusal
//! (naming the directory) is shown if someone tries.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::Response;
use maud::html;
use serde_json::{Value, json};

use super::{
    Console, Posted, Refusal, Section, answer, data, deleted, error_box, input, object,
    refused_status, text,
};
use crate::api::{self, body::Json};
use crate::web::{WebResult, see_other};

fn origin(group: &Value) -> &'static str {
    match (text(group, "kind"), group["directory_id"].is_null()) {
        ("everyone", _) => "built in: every user and admin",
        ("provider", _) => "an identity provider's groups claim",
        (_, false) => "a directory",
        _ => "admins",
    }
}

async fn list_page(c: &Console, refusal: Option<&Refusal>, name: &str) -> WebResult<Response> {
    let error = refusal.map(|r| r.message.as_str());
    let mut counts = Vec::new();
    let groups = data(api::groups::list(State(c.state.clone()), c.admin).await).await?;
    for group in &groups {
        let members = answer(
            api::groups::members(
                State(c.state.clone()),
                c.admin,
                Path(text(group, "id").to_string()),
            )
            .await,
        )
        .await?;
        counts.push(members["actor_ids"].as_array().map_or(0, Vec::len));
    }
    let body = html! {
        table {
            thead { tr { th { "Name" } th { "Managed by" } th { "Members" } } }
            tbody {
                @for (group, count) in groups.iter().zip(&counts) {
                    @let id = text(group, "id");
                    tr {
                        td { a href=(c.href(&format!("/groups/{id}"))) { (text(group, "name")) } }
                        td { (origin(group)) }
                        td { (count) }
                    }
                }
            }
        }
        h2 { "Add a group" }
        (error_box(error))
        form method="post" action=(c.href("/groups")) {
            (c.csrf_field())
            label for="g-name" { "Name" }
            input #g-name type="text" name="name" value=(name) required maxlength="255";
            div { button type="submit" { "Add the group" } }
        }
    };
    Ok(c.page(refused_status(refusal), "Groups", Section::Groups, body))
}

/// `GET /{account}/groups`.
pub async fn list(c: Console) -> WebResult<Response> {
    list_page(&c, None, "").await
}

/// `POST /{account}/groups`.
pub async fn create(Posted { c, form }: Posted) -> WebResult<Response> {
    let name = form.get("name");
    let created = match input::<api::groups::GroupInput>(json!({"name": name})) {
        Ok(group) => {
            answer(api::groups::create(State(c.state.clone()), c.admin, Json(group)).await).await
        }
        Err(error) => Err(Refusal::from(format!("name: {error}"))),
    };
    match created {
        Ok(group) => Ok(see_other(
            &c.href(&format!("/groups/{}", text(&group, "id"))),
        )),
        Err(refusal) => list_page(&c, Some(&refusal), name).await,
    }
}

async fn group_page(c: &Console, id: &str, refusal: Option<&Refusal>) -> WebResult<Response> {
    let error = refusal.map(|r| r.message.as_str());
    let group = object(
        api::groups::get(State(c.state.clone()), c.admin, Path(id.to_string())).await,
        "group",
    )
    .await?;
    let id = text(&group, "id");
    let members =
        answer(api::groups::members(State(c.state.clone()), c.admin, Path(id.to_string())).await)
            .await?;
    let members: std::collections::HashSet<&str> = members["actor_ids"]
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    let actors = data(api::actors::list(State(c.state.clone()), c.admin).await).await?;
    let editable = text(&group, "kind") == "static" && group["directory_id"].is_null();
    let body = html! {
        p { "Managed by " (origin(&group)) "." }
        (error_box(error))
        form method="post" action=(c.href(&format!("/groups/{id}/members"))) {
            (c.csrf_field())
            fieldset {
                legend { "Members" }
                @for actor in &actors {
                    @let actor_id = text(actor, "id");
                    @let box_id = format!("m-{actor_id}");
                    div.choice {
                        input type="checkbox" id=(box_id) name="member" value=(actor_id) checked[members.contains(&actor_id)] disabled[!editable];
                        " "
                        label for=(box_id) { (text(actor, "name")) " " span.muted { (actor["email"].as_str().unwrap_or(text(actor, "role"))) } }
                    }
                }
            }
            @if editable {
                button type="submit" { "Save the members" }
            }
        }
        @if editable {
            h2 { "Delete" }
            p { a href=(c.href(&format!("/groups/{id}/delete"))) { "Delete this group…" } }
        }
    };
    Ok(c.page(
        refused_status(refusal),
        text(&group, "name"),
        Section::Groups,
        body,
    ))
}

/// `GET /{account}/groups/{id}`.
pub async fn show(c: Console, Path((_, id)): Path<(String, String)>) -> WebResult<Response> {
    group_page(&c, &id, None).await
}

/// `POST /{account}/groups/{id}/members`: the checked boxes become the
/// members (the API's `PUT /groups/{id}/members`).
pub async fn set_members(
    Path((_, id)): Path<(String, String)>,
    Posted { c, form }: Posted,
) -> WebResult<Response> {
    let chosen = form.all("member");
    let saved = match input::<api::groups::Members>(json!({"actor_ids": chosen})) {
        Ok(members) => {
            answer(
                api::groups::set_members(
                    State(c.state.clone()),
                    c.admin,
                    Path(id.clone()),
                    Json(members),
                )
                .await,
            )
            .await
        }
        Err(error) => Err(Refusal::from(error)),
    };
    match saved {
        Ok(_) => Ok(see_other(&c.href(&format!("/groups/{id}")))),
        Err(refusal) => group_page(&c, &id, Some(&refusal)).await,
    }
}

/// `GET /{account}/groups/{id}/delete`: what goes with it.
pub async fn confirm_delete(
    c: Console,
    Path((_, id)): Path<(String, String)>,
) -> WebResult<Response> {
    let group = object(
        api::groups::get(State(c.state.clone()), c.admin, Path(id.clone())).await,
        "group",
    )
    .await?;
    let id = text(&group, "id").to_string();
    let policies = data(api::policies::list(State(c.state.clone()), c.admin).await).await?;
    let granting = policies
        .iter()
        .filter(|p| text(p, "group_id") == id)
        .count();
    let body = html! {
        p { "Deleting " b { (text(&group, "name")) } " also deletes the " (granting) " policy(ies) naming it; its members lose what only those granted, at once." }
        form method="post" action=(c.href(&format!("/groups/{id}/delete"))) {
            (c.csrf_field())
            button.danger type="submit" { "Delete the group" }
        }
        p { a href=(c.href(&format!("/groups/{id}"))) { "Keep it" } }
    };
    Ok(c.page(StatusCode::OK, "Delete a group", Section::Groups, body))
}

/// `POST /{account}/groups/{id}/delete`.
pub async fn delete(
    Path((_, id)): Path<(String, String)>,
    Posted { c, .. }: Posted,
) -> WebResult<Response> {
    deleted(api::groups::remove(State(c.state.clone()), c.admin, Path(id)).await).await?;
    Ok(see_other(&c.href("/groups")))
}
