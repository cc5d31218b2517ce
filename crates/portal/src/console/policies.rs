//! Policies: which group reaches which resource. Deleting one takes the
//! access it alone granted away from connected clients at once (the API's
//! own handler tells continuous evaluation).

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use maud::html;
use serde_json::json;

use super::{
    Console, Form, Refusal, Section, answer, data, deleted, error_box, input, names, object,
    refused_status, signed_in, text,
};
use crate::api::{self, body::Json};
use crate::web::{Shared, WebResult, see_other};

async fn page(c: &Console, refusal: Option<&Refusal>) -> WebResult<Response> {
    let error = refusal.map(|r| r.message.as_str());
    let state = || State(c.state.clone());
    let policies = data(api::policies::list(state(), c.admin).await).await?;
    let groups = data(api::groups::list(state(), c.admin).await).await?;
    let resources = data(api::resources::list(state(), c.admin).await).await?;
    let group_names = names(&groups);
    let resource_names = names(&resources);
    let name_of = |names: &std::collections::HashMap<&str, &str>, id: &str| {
        names.get(id).copied().unwrap_or_default().to_string()
    };
    let body = html! {
        @if policies.is_empty() {
            p.muted { "No policies: nobody reaches anything (access is denied by default)." }
        } @else {
            table {
                thead { tr { th { "Group" } th { "Resource" } th { "Conditions" } th { "State" } th { "Description" } th {} } }
                tbody {
                    @for policy in &policies {
                        @let id = text(policy, "id");
                        tr {
                            td { (name_of(&group_names, text(policy, "group_id"))) }
                            td { (name_of(&resource_names, text(policy, "resource_id"))) }
                            td { (policy["conditions"].as_array().map_or(0, Vec::len)) }
                            td { @if policy["disabled"] == json!(true) { span.offline { "disabled" } } @else { span.online { "active" } } }
                            td { (text(policy, "description")) }
                                                        td {
                                a href=(c.href(&format!("/policies/{id}/delete"))) aria-label=(format!("Delete the policy {} to {}", name_of(&group_names, text(policy, "group_id")), name_of(&resource_names, text(policy, "resource_id")))) { "Delete…" }
                            }
                        }
                    }
                }
            }
        }
        h2 { "Add a policy" }
        (error_box(error))
        form method="post" action=(c.href("/policies")) {
            (c.csrf_field())
            label for="p-group" { "Group" }
            select #p-group name="group_id" {
                @for group in &groups { option value=(text(group, "id")) { (text(group, "name")) } }
            }
            label for="p-resource" { "Resource" }
            select #p-resource name="resource_id" {
                @for resource in &resources { option value=(text(resource, "id")) { (text(resource, "name")) } }
            }
            label for="p-description" { "Description" }
            input #p-description type="text" name="description";
            div { button type="submit" { "Add the policy" } }
        }
    };
    Ok(c.page(refused_status(refusal), "Policies", Section::Policies, body))
}

/// `GET /{account}/policies`.
pub async fn list(
    state: Shared,
    Path(slug): Path<String>,
    headers: HeaderMap,
) -> WebResult<Response> {
    let c = signed_in!(state, slug, headers);
    page(&c, None).await
}

/// `POST /{account}/policies`.
pub async fn create(
    state: Shared,
    Path(slug): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> WebResult<Response> {
    let c = signed_in!(state, slug, headers);
    let form = Form::parse(&body);
    c.check_csrf(&headers, &form)?;
    let mut fields =
        json!({"group_id": form.get("group_id"), "resource_id": form.get("resource_id")});
    if !form.get("description").trim().is_empty() {
        fields["description"] = json!(form.get("description"));
    }
    let created = match input::<api::policies::PolicyInput>(fields) {
        Ok(policy) => {
            answer(api::policies::create(State(c.state.clone()), c.admin, Json(policy)).await).await
        }
        Err(error) => Err(Refusal::from(error)),
    };
    match created {
        Ok(_) => Ok(see_other(&c.href("/policies"))),
        Err(refusal) => page(&c, Some(&refusal)).await,
    }
}

/// `GET /{account}/policies/{id}/delete`: who loses what.
pub async fn confirm_delete(
    state: Shared,
    Path((slug, id)): Path<(String, String)>,
    headers: HeaderMap,
) -> WebResult<Response> {
    let c = signed_in!(state, slug, headers);
    let policy = object(
        api::policies::get(State(c.state.clone()), c.admin, Path(id.clone())).await,
        "policy",
    )
    .await?;
    let id = text(&policy, "id").to_string();
    let group = object(
        api::groups::get(
            State(c.state.clone()),
            c.admin,
            Path(text(&policy, "group_id").into()),
        )
        .await,
        "group",
    )
    .await?;
    let resource = object(
        api::resources::get(
            State(c.state.clone()),
            c.admin,
            Path(text(&policy, "resource_id").into()),
        )
        .await,
        "resource",
    )
    .await?;
    let body = html! {
        p { "Members of " b { (text(&group, "name")) } " lose access to " b { (text(&resource, "name")) } " at once, unless another policy grants it; their open connections to it are cut." }
        form method="post" action=(c.href(&format!("/policies/{id}/delete"))) {
            (c.csrf_field())
            button.danger type="submit" { "Delete the policy" }
        }
        p { a href=(c.href("/policies")) { "Keep it" } }
    };
    Ok(c.page(StatusCode::OK, "Delete a policy", Section::Policies, body))
}

/// `POST /{account}/policies/{id}/delete`.
pub async fn delete(
    state: Shared,
    Path((slug, id)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> WebResult<Response> {
    let c = signed_in!(state, slug, headers);
    c.check_csrf(&headers, &Form::parse(&body))?;
    deleted(api::policies::remove(State(c.state.clone()), c.admin, Path(id)).await).await?;
    Ok(see_other(&c.href("/policies")))
}
