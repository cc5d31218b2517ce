//! Policies: which group reaches which resource. Deleting one takes the
//! access it alone granted away from connected clients at once (the API's
//! own handler tells continuous evaluation).

use axum::extract::{Path, RawQuery, State};
use axum::http::StatusCode;
use axum::response::Response;
use maud::html;
use serde_json::json;

use super::paging::Listing;
use super::{
    Console, Form, Posted, Refusal, Section, conditions, data, deleted, error_box, input, names,
    object, refused_status, submit, text,
};
use crate::api::{self, body::Json};
use crate::web::{WebResult, see_other};

/// What the create form holds: empty, or what was typed before a refusal.
struct Typed<'a> {
    form: Option<&'a Form>,
}

impl Typed<'_> {
    fn get(&self, name: &str) -> &str {
        self.form.map_or("", |f| f.get(name))
    }
}

async fn page(
    c: &Console,
    refusal: Option<&Refusal>,
    typed: Typed<'_>,
    listing: &Listing,
) -> WebResult<Response> {
    let error = refusal.map(|r| r.message.as_str());
    let state = || State(c.state.clone());
    let policies = data(api::policies::list(state(), c.admin).await).await?;
    let groups = data(api::groups::list(state(), c.admin).await).await?;
    let resources = data(api::resources::list(state(), c.admin).await).await?;
    let providers = data(api::identity_providers::list(state(), c.admin).await).await?;
    let provider_names = conditions::provider_names(&providers);
    let group_names = names(&groups);
    let resource_names = names(&resources);
    let name_of = |names: &std::collections::HashMap<&str, &str>, id: &str| {
        names.get(id).copied().unwrap_or_default().to_string()
    };
    let blank = Form::default();
    let found: Vec<&serde_json::Value> = policies
        .iter()
        .filter(|p| {
            listing.matches([
                group_names
                    .get(text(p, "group_id"))
                    .copied()
                    .unwrap_or_default(),
                resource_names
                    .get(text(p, "resource_id"))
                    .copied()
                    .unwrap_or_default(),
                text(p, "description"),
            ])
        })
        .collect();
    let shown = listing.slice(&found);
    let (search, pager) = listing.controls(c, "/policies", found.len());
    let body = html! {
        @if policies.is_empty() {
            p.muted { "No policies: nobody reaches anything (access is denied by default)." }
        } @else {
            (search)
            table {
                thead { tr { th { "Group" } th { "Resource" } th { "Conditions" } th { "State" } th { "Description" } th {} } }
                tbody {
                    @for policy in shown {
                        @let id = text(policy, "id");
                        @let group = name_of(&group_names, text(policy, "group_id"));
                        @let resource = name_of(&resource_names, text(policy, "resource_id"));
                        tr {
                            td { (group) }
                            td { (resource) }
                            td {
                                @let list = conditions::of_policy(policy);
                                @if list.is_empty() { span.muted { "none" } }
                                @for condition in &list { div { (conditions::describe(condition, &provider_names)) } }
                            }
                            td { @if policy["disabled"] == json!(true) { span.offline { "disabled" } } @else { span.online { "active" } } }
                            td { (text(policy, "description")) }
                            td {
                                a href=(c.href(&format!("/policies/{id}"))) aria-label=(format!("Edit the policy {group} to {resource}")) { "Edit" }
                                " "
                                a href=(c.href(&format!("/policies/{id}/delete"))) aria-label=(format!("Delete the policy {group} to {resource}")) { "Delete…" }
                            }
                        }
                    }
                }
            }
            (pager)
        }
        h2 { "Add a policy" }
        (error_box(error))
        form method="post" action=(c.href("/policies")) {
            (c.csrf_field())
            label for="p-group" { "Group" }
            select #p-group name="group_id" {
                @for group in &groups {
                    @let id = text(group, "id");
                    option value=(id) selected[typed.get("group_id") == id] { (text(group, "name")) }
                }
            }
            label for="p-resource" { "Resource" }
            select #p-resource name="resource_id" {
                @for resource in &resources {
                    @let id = text(resource, "id");
                    option value=(id) selected[typed.get("resource_id") == id] { (text(resource, "name")) }
                }
            }
            label for="p-description" { "Description" }
            input #p-description type="text" name="description" value=(typed.get("description"));
            (conditions::editor(typed.form.unwrap_or(&blank), &providers))
            div { button type="submit" { "Add the policy" } }
        }
    };
    Ok(c.page(refused_status(refusal), "Policies", Section::Policies, body))
}

/// `GET /{account}/policies`.
pub async fn list(c: Console, RawQuery(query): RawQuery) -> WebResult<Response> {
    page(
        &c,
        None,
        Typed { form: None },
        &Listing::from_query(query.as_deref()),
    )
    .await
}

/// The policy fields a form sets (the description only when typed).
fn fields(form: &Form) -> serde_json::Value {
    let mut fields = json!({"conditions": conditions::from_form(form)});
    if !form.get("description").trim().is_empty() {
        fields["description"] = json!(form.get("description"));
    }
    fields
}

/// `POST /{account}/policies`.
pub async fn create(Posted { c, form }: Posted) -> WebResult<Response> {
    let mut fields = fields(&form);
    fields["group_id"] = json!(form.get("group_id"));
    fields["resource_id"] = json!(form.get("resource_id"));
    let created = submit(
        input::<api::policies::PolicyInput>(fields),
        async |policy| api::policies::create(State(c.state.clone()), c.admin, Json(policy)).await,
    )
    .await;
    match created {
        Ok(_) => Ok(see_other(&c.href("/policies"))),
        Err(refusal) => {
            page(
                &c,
                Some(&refusal),
                Typed { form: Some(&form) },
                &Listing::from_query(None),
            )
            .await
        }
    }
}

/// The edit page of one policy: its conditions, state and description;
/// after a refusal, what was typed.
async fn edit_page(
    c: &Console,
    id: &str,
    refusal: Option<&Refusal>,
    typed: Option<&Form>,
) -> WebResult<Response> {
    let state = || State(c.state.clone());
    let policy = object(
        api::policies::get(state(), c.admin, Path(id.to_string())).await,
        "policy",
    )
    .await?;
    let id = text(&policy, "id").to_string();
    let group = object(
        api::groups::get(state(), c.admin, Path(text(&policy, "group_id").into())).await,
        "group",
    )
    .await?;
    let resource = object(
        api::resources::get(state(), c.admin, Path(text(&policy, "resource_id").into())).await,
        "resource",
    )
    .await?;
    let providers = data(api::identity_providers::list(state(), c.admin).await).await?;
    let stored = conditions::of_policy(&policy);
    // Conditions the editor cannot hold are kept as they are (read-only):
    // saving must not loosen what it could not show.
    let editable = conditions::editable(&stored, &providers);
    let (fields, description, disabled) = match typed {
        Some(form) => (
            None,
            form.get("description").to_string(),
            form.get("disabled") == "true",
        ),
        None => (
            Some(conditions::fields_of(&stored, &providers)),
            text(&policy, "description").to_string(),
            policy["disabled"] == json!(true),
        ),
    };
    let provider_names = conditions::provider_names(&providers);
    let body = html! {
        p { "Members of " b { (text(&group, "name")) } " may use " b { (text(&resource, "name")) } " when every condition below holds. A change is decided again for connected clients at once." }
        (error_box(refusal.map(|r| r.message.as_str())))
        form method="post" action=(c.href(&format!("/policies/{id}"))) {
            (c.csrf_field())
            label for="p-description" { "Description" }
            input #p-description type="text" name="description" value=(description);
            div {
                input #p-disabled type="checkbox" name="disabled" value="true" checked[disabled];
                label.inline for="p-disabled" { "Disabled (grants nothing)" }
            }
            @if editable {
                (conditions::editor(fields.as_ref().or(typed).unwrap_or(&Form::default()), &providers))
            } @else {
                input type="hidden" name="conditions" value="keep";
                fieldset.conditions {
                    legend { "Conditions (kept as they are)" }
                    p.muted { "These conditions were written through the API in a form this editor cannot show without changing them; they stay as they are when you save. Change them through the API." }
                    ul { @for condition in &stored { li { (conditions::describe(condition, &provider_names)) } } }
                }
            }
            div { button type="submit" { "Save the policy" } }
        }
        p { a href=(c.href("/policies")) { "Back to the policies" } }
    };
    Ok(c.page(
        refused_status(refusal),
        "Edit a policy",
        Section::Policies,
        body,
    ))
}

/// `GET /{account}/policies/{id}`.
pub async fn show(c: Console, Path((_, id)): Path<(String, String)>) -> WebResult<Response> {
    edit_page(&c, &id, None, None).await
}

/// `POST /{account}/policies/{id}`: the API's PATCH with every field of
/// the form (the conditions replace the old ones).
pub async fn update(
    Path((_, id)): Path<(String, String)>,
    Posted { c, form }: Posted,
) -> WebResult<Response> {
    let mut fields = fields(&form);
    fields["description"] = json!(form.get("description"));
    fields["disabled"] = json!(form.get("disabled") == "true");
    if form.get("conditions") == "keep" {
        // The page showed them read-only: the PATCH leaves them alone.
        fields.as_object_mut().map(|f| f.remove("conditions"));
    }
    let saved = submit(input::<api::policies::PolicyPatch>(fields), async |patch| {
        api::policies::update(
            State(c.state.clone()),
            c.admin,
            Path(id.clone()),
            Json(patch),
        )
        .await
    })
    .await;
    match saved {
        Ok(_) => Ok(see_other(&c.href("/policies"))),
        Err(refusal) if refusal.status == StatusCode::NOT_FOUND => Err(refusal.into()),
        Err(refusal) => edit_page(&c, &id, Some(&refusal), Some(&form)).await,
    }
}

/// `GET /{account}/policies/{id}/delete`: who loses what.
pub async fn confirm_delete(
    c: Console,
    Path((_, id)): Path<(String, String)>,
) -> WebResult<Response> {
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
    Path((_, id)): Path<(String, String)>,
    Posted { c, .. }: Posted,
) -> WebResult<Response> {
    deleted(api::policies::remove(State(c.state.clone()), c.admin, Path(id)).await).await?;
    Ok(see_other(&c.href("/policies")))
}
