//! Policies: which group reaches which resource. Deleting one takes the
//! access it alone granted away from connected clients at once (the API's
//! own handler tells continuous evaluation).

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use maud::html;
use serde_json::{Value, json};

use super::{Console, Form, Section, answer, data, error_box, input, signed_in, text};
use crate::api::{self, body::Json};
use crate::web::{Shared, WebError, WebResult, see_other};

async fn page(c: &Console, error: Option<&str>) -> WebResult<Response> {
    let state = || State(c.state.clone());
    let policies = data(api::policies::list(state(), c.admin).await).await?;
    let groups = data(api::groups::list(state(), c.admin).await).await?;
    let resources = data(api::resources::list(state(), c.admin).await).await?;
    let name_of = |list: &[Value], id: &str| {
        list.iter()
            .find(|x| text(x, "id") == id)
            .map(|x| text(x, "name").to_string())
            .unwrap_or_default()
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
                            td { (name_of(&groups, text(policy, "group_id"))) }
                            td { (name_of(&resources, text(policy, "resource_id"))) }
                            td { (policy["conditions"].as_array().map_or(0, Vec::len)) }
                            td { @if policy["disabled"] == json!(true) { span.offline { "disabled" } } @else { span.online { "active" } } }
                            td { (text(policy, "description")) }
                            td {
                                form.inline method="post" action=(c.href(&format!("/policies/{id}/delete"))) {
                                    (c.csrf_field())
                                    button.danger type="submit" aria-label=(format!("Delete the policy {} to {}", name_of(&groups, text(policy, "group_id")), name_of(&resources, text(policy, "resource_id")))) { "Delete" }
                                }
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
    let status = if error.is_some() {
        StatusCode::UNPROCESSABLE_ENTITY
    } else {
        StatusCode::OK
    };
    Ok(c.page(status, "Policies", Section::Policies, body))
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
        Err(error) => Err(error),
    };
    match created {
        Ok(_) => Ok(see_other(&c.href("/policies"))),
        Err(error) => page(&c, Some(&error)).await,
    }
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
    answer(api::policies::remove(State(c.state.clone()), c.admin, Path(id)).await)
        .await
        .map_err(|e| WebError::new(StatusCode::CONFLICT, e))?;
    Ok(see_other(&c.href("/policies")))
}
