//! Users, admins and service accounts: their tokens, clients and sessions.
//!
//! The list is paged in SQL (search by name or email); an actor's page
//! shows its details (what a directory owns is read-only, and the API's
//! 409 is shown if someone tries), its tokens without their secrets, its
//! clients and its latest sessions. Every change is the API's handler's:
//! `actors::create/update/remove`, `tokens::create/revoke`. Disabling,
//! revoking and deleting are asked first on a page that says what goes;
//! an admin acting on themselves is told so and must tick a box.

use std::collections::HashMap;
use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::StatusCode;
use axum::response::Response;
use axum::routing::{get, post};
use jiff::Timestamp;
use maud::{Markup, html};
use serde_json::json;
use uuid::Uuid;

use super::paging::{PER_PAGE, href_with, page_of, pager, params, search_of};
use super::{
    Console, Form, Posted, Refusal, Section, answer, error_box, input, refused_status, submit,
};
use crate::api::{self, body::Json};
use crate::domain::{Role, TokenKind};
use crate::state::AppState;
use crate::store::{actors, devices, tokens};
use crate::web::{WebError, WebResult, see_other};

/// The most tokens, clients and sessions an actor's page lists.
const ON_ACTOR_PAGE: i64 = 50;

/// This part's routes.
pub fn routes() -> Router<Arc<AppState>> {
    Router::new()
        .route("/{account}/actors", get(list).post(create))
        .route("/{account}/actors/{id}", get(show).post(update))
        .route(
            "/{account}/actors/{id}/disable",
            get(confirm_disable).post(disable),
        )
        .route("/{account}/actors/{id}/enable", post(enable))
        .route("/{account}/actors/{id}/tokens", post(create_token))
        .route(
            "/{account}/actors/{id}/tokens/{token}/revoke",
            get(confirm_revoke).post(revoke),
        )
        .route(
            "/{account}/actors/{id}/delete",
            get(confirm_delete).post(delete),
        )
}

// ---- Shared with the clients' pages -------------------------------------

/// A time for tables, to the second.
pub(crate) fn at(time: &Timestamp) -> String {
    time.strftime("%Y-%m-%d %H:%M:%S UTC").to_string()
}

pub(crate) fn role_label(role: Role) -> &'static str {
    match role {
        Role::User => "User",
        Role::Admin => "Admin",
        Role::ServiceAccount => "Service account",
    }
}

/// The id in a path, or the console's 404.
pub(crate) fn path_id(id: &str, what: &str) -> WebResult<Uuid> {
    Uuid::try_parse(id.trim())
        .map_err(|_| WebError::new(StatusCode::NOT_FOUND, format!("There is no such {what}.")))
}

/// The box an admin ticks to act on their own account.
fn confirm_self_box(c: &Console, actor: Uuid, what: &str) -> Markup {
    html! {
        @if actor == c.actor.id {
            div.choice {
                input #confirm-self type="checkbox" name="confirm_self" value="yes";
                " "
                label for="confirm-self" { (what) }
            }
        }
    }
}

/// Refuses an admin's change to their own account unless they ticked the
/// box that says they know.
fn check_self(c: &Console, actor: Uuid, form: &Form, what: &str) -> Result<(), Refusal> {
    if actor == c.actor.id && form.get("confirm_self") != "yes" {
        return Err(Refusal {
            status: StatusCode::UNPROCESSABLE_ENTITY,
            message: format!("This is your own account: {what} Tick the box to confirm."),
        });
    }
    Ok(())
}

// ---- The list -------------------------------------------------------------

/// What the add form held, to show it again after a refusal.
#[derive(Default)]
struct Draft {
    name: String,
    email: String,
    role: String,
}

async fn providers(c: &Console, ids: &[Uuid]) -> WebResult<HashMap<Uuid, Vec<String>>> {
    let mut tx = c.state.store.read().await?;
    let pairs = actors::providers_of(&mut tx, c.account.id, ids).await?;
    tx.commit().await?;
    let mut by_actor: HashMap<Uuid, Vec<String>> = HashMap::new();
    for (actor, name) in pairs {
        by_actor.entry(actor).or_default().push(name);
    }
    Ok(by_actor)
}

fn source(listed: &actors::Listed, providers: Option<&Vec<String>>) -> Markup {
    html! {
        @if let Some(directory) = &listed.directory {
            "Directory " b { (directory) } span.muted { " (name, email and state are read-only)" }
        } @else if listed.actor.directory_id.is_some() {
            "A directory since deleted"
        } @else if let Some(providers) = providers {
            "Signs in with " (providers.join(", "))
        } @else {
            "Added in Postern"
        }
    }
}

async fn list_page(
    c: &Console,
    query: &HashMap<String, String>,
    refusal: Option<&Refusal>,
    draft: &Draft,
) -> WebResult<Response> {
    let search = search_of(query);
    let page = page_of(query);
    let mut tx = c.state.store.read().await?;
    let total = actors::count(&mut tx, c.account.id, &search).await?;
    let rows = actors::page(
        &mut tx,
        c.account.id,
        &search,
        (page - 1) * PER_PAGE,
        PER_PAGE,
    )
    .await?;
    tx.commit().await?;
    let ids: Vec<Uuid> = rows.iter().map(|r| r.actor.id).collect();
    let providers = providers(c, &ids).await?;
    let path = c.href("/actors");
    let pairs = [("q", search.as_str())];
    let role = if draft.role.is_empty() {
        "user"
    } else {
        draft.role.as_str()
    };
    let body = html! {
        form.filters method="get" action=(path) role="search" {
            label for="actor-q" { "Search by name or email" }
            input #actor-q type="search" name="q" value=(search) maxlength="255";
            " "
            button type="submit" { "Search" }
            @if !search.is_empty() {
                " " a href=(path) { "Show everyone" }
            }
        }
        p.muted {
            @if search.is_empty() {
                (total) " users, admins and service accounts."
            } @else {
                (total) " match " q { (search) } "."
            }
        }
        @if !rows.is_empty() {
            table {
                thead { tr { th { "Name" } th { "Email" } th { "Role" } th { "State" } th { "Source" } th { "Clients" } } }
                tbody {
                    @for row in &rows {
                        @let actor = &row.actor;
                        tr {
                            td { a href=(c.href(&format!("/actors/{}", actor.id))) { (actor.name) } }
                            td { (actor.email.as_deref().unwrap_or("")) }
                            td { (role_label(actor.role)) }
                            td {
                                @if actor.disabled { span.offline { "disabled" } } @else { "enabled" }
                            }
                            td { (source(row, providers.get(&actor.id))) }
                            td {
                                @if row.clients > 0 {
                                    a href=(href_with(&c.href("/clients"), &[("owner", &actor.id.to_string())], 1)) { (row.clients) }
                                } @else { "0" }
                            }
                        }
                    }
                }
            }
        }
        (pager(&path, &pairs, page, total))
        h2 { "Add a user, admin or service account" }
        (error_box(refusal.map(|r| r.message.as_str())))
        form method="post" action=(path) {
            (c.csrf_field())
            label for="new-name" { "Name" }
            input #new-name type="text" name="name" value=(draft.name) required maxlength="255";
            label for="new-email" { "Email" }
            input #new-email type="email" name="email" value=(draft.email) maxlength="254" aria-describedby="new-email-help";
            p.muted #new-email-help { "Users and admins sign in with it; a service account needs none." }
            label for="new-role" { "Role" }
            select #new-role name="role" {
                @for r in [Role::User, Role::Admin, Role::ServiceAccount] {
                    option value=(r.as_str()) selected[role == r.as_str()] { (role_label(r)) }
                }
            }
            div { button type="submit" { "Add" } }
        }
    };
    Ok(c.page(
        refused_status(refusal),
        "Users, admins and service accounts",
        Section::Actors,
        body,
    ))
}

/// `GET /{account}/actors`.
pub async fn list(c: Console, RawQuery(query): RawQuery) -> WebResult<Response> {
    list_page(&c, &params(query.as_deref()), None, &Draft::default()).await
}

/// `POST /{account}/actors`: the API's create, then the new actor's page.
pub async fn create(Posted { c, form }: Posted) -> WebResult<Response> {
    let draft = Draft {
        name: form.get("name").to_string(),
        email: form.get("email").to_string(),
        role: form.get("role").to_string(),
    };
    let made = submit(new_actor(&draft), async |actor| {
        api::actors::create(State(c.state.clone()), c.admin, Json(actor)).await
    })
    .await;
    match made {
        Ok(actor) => Ok(see_other(
            &c.href(&format!("/actors/{}", super::text(&actor, "id"))),
        )),
        Err(refusal) => list_page(&c, &HashMap::new(), Some(&refusal), &draft).await,
    }
}

/// Name, email (none when blank) and role as the API's types check them.
fn fields_of(
    name: &str,
    email: &str,
    role: &str,
) -> Result<(api::fields::Name, Option<api::fields::Email>, Role), String> {
    let name = input(json!(name)).map_err(|e| format!("name: {e}"))?;
    let email = match email.trim() {
        "" => None,
        email => Some(input(json!(email)).map_err(|e| format!("email: {e}"))?),
    };
    let role = Role::parse(role)
        .ok_or_else(|| "role: choose user, admin or service account".to_string())?;
    Ok((name, email, role))
}

fn new_actor(draft: &Draft) -> Result<api::actors::ActorInput, String> {
    let (name, email, role) = fields_of(&draft.name, &draft.email, &draft.role)?;
    Ok(api::actors::ActorInput {
        name,
        email,
        role,
        disabled: false,
    })
}

// ---- One actor ------------------------------------------------------------

async fn load(c: &Console, id: &str) -> WebResult<actors::Listed> {
    let id = path_id(id, "user")?;
    let mut tx = c.state.store.read().await?;
    let found = actors::listed_one(&mut tx, c.account.id, id).await?;
    tx.commit().await?;
    found.ok_or_else(|| WebError::new(StatusCode::NOT_FOUND, "There is no such user."))
}

fn kind_label(kind: TokenKind) -> &'static str {
    match kind {
        TokenKind::Api => "API token",
        TokenKind::Client => "Client token",
        TokenKind::Browser => "Web session",
        TokenKind::Gateway => "Gateway token",
        TokenKind::Relay => "Relay token",
    }
}

fn session_label(kind: &str) -> String {
    match kind {
        "web_sign_in" => "signed in to the console".into(),
        "client_sign_in" => "signed in a client".into(),
        "client_connect" => "client connected".into(),
        other => other.replace('_', " "),
    }
}

/// What the details form held (after a refusal), else the actor's own.
struct Details {
    name: String,
    email: String,
    role: String,
}

/// The actor's page; `refusal` over the form it came from.
async fn actor_page(
    c: &Console,
    id: &str,
    refusal: Option<&Refusal>,
    typed: Option<Details>,
) -> WebResult<Response> {
    let listed = load(c, id).await?;
    let actor = &listed.actor;
    let mut tx = c.state.store.read().await?;
    let held = tokens::of_actor(&mut tx, c.account.id, actor.id, ON_ACTOR_PAGE).await?;
    let filter = devices::ClientFilter {
        owner: Some(actor.id),
        ..Default::default()
    };
    let clients = devices::client_page(&mut tx, c.account.id, &filter, 0, ON_ACTOR_PAGE).await?;
    let sessions = actors::recent_sessions(&mut tx, c.account.id, actor.id, ON_ACTOR_PAGE).await?;
    tx.commit().await?;
    let providers = providers(c, &[actor.id]).await?;
    let client_names: HashMap<Uuid, &str> = clients
        .iter()
        .map(|r| (r.device.id, r.device.name.as_str()))
        .collect();
    let details = typed.unwrap_or_else(|| Details {
        name: actor.name.clone(),
        email: actor.email.clone().unwrap_or_default(),
        role: actor.role.as_str().to_string(),
    });
    let owned = actor.directory_id.is_some();
    let is_self = actor.id == c.actor.id;
    let now = Timestamp::now();
    let base = format!("/actors/{}", actor.id);
    let error = refusal.map(|r| r.message.as_str());
    let body = html! {
        p {
            (role_label(actor.role)) " · "
            @if actor.disabled { span.offline { "disabled" } } @else { "enabled" }
            " · " (source(&listed, providers.get(&actor.id)))
            " · added " (at(&actor.created_at))
        }
        @if is_self {
            p.notice { "This is you." }
        }
        @if owned {
            p.notice {
                "A directory provisioned this user: its name, email and enabled state are the directory's and the API refuses changes to them here; the role is Postern's."
            }
        }
        (error_box(error))
        h2 { "Details" }
        form method="post" action=(c.href(&base)) {
            (c.csrf_field())
            label for="actor-name" { "Name" }
            input #actor-name type="text" name="name" value=(details.name) required maxlength="255" readonly[owned];
            label for="actor-email" { "Email" }
            input #actor-email type="email" name="email" value=(details.email) maxlength="254" readonly[owned];
            label for="actor-role" { "Role" }
            select #actor-role name="role" {
                @for r in [Role::User, Role::Admin, Role::ServiceAccount] {
                    option value=(r.as_str()) selected[details.role == r.as_str()] { (role_label(r)) }
                }
            }
            (confirm_self_box(c, actor.id, "I know that giving up the admin role ends my own console access at once"))
            div { button type="submit" { "Save the details" } }
        }
        h2 { "State" }
        @if actor.disabled {
            p { "Disabled: it cannot sign in, its clients cannot connect and its tokens do not work." }
            form method="post" action=(c.href(&format!("{base}/enable"))) {
                (c.csrf_field())
                button type="submit" { "Enable" }
            }
        } @else {
            form method="get" action=(c.href(&format!("{base}/disable"))) {
                button.secondary type="submit" { "Disable…" }
            }
        }
        h2 { "Tokens" }
        @if held.is_empty() {
            p.muted { "No tokens." }
        } @else {
            p.muted { "Secrets are never shown again after they are made; the last use of a token is not recorded, but the clients that registered with it are." }
            table {
                thead { tr { th { "Kind" } th { "Created" } th { "Expires" } th { "Scope" } th { "Clients (last seen)" } th { "Revoke" } } }
                tbody {
                    @for token in &held {
                        @let expired = token.expires_at.is_some_and(|e| e <= now);
                        tr {
                            td {
                                (kind_label(token.kind))
                                @if let Some(provider) = &token.provider { span.muted { " via " (provider) } }
                                @if token.id == c.admin.token_id { " " b { "(this session)" } }
                            }
                            td { (at(&token.created_at)) }
                            td {
                                @match &token.expires_at {
                                    Some(e) => { (at(e)) @if expired { " " span.offline { "expired" } } },
                                    None => "never",
                                }
                            }
                            td {
                                @if token.kind == TokenKind::Api {
                                    @if token.read_only { "read" } @else { "read, write" }
                                }
                            }
                            td {
                                (token.devices)
                                @if let Some(seen) = &token.last_device_seen_at { " (" (at(seen)) ")" }
                            }
                            td {
                                form method="get" action=(c.href(&format!("{base}/tokens/{}/revoke", token.id))) {
                                    button.secondary type="submit" aria-label=(format!("Revoke the {} made {}", kind_label(token.kind).to_lowercase(), at(&token.created_at))) { "Revoke…" }
                                }
                            }
                        }
                    }
                }
            }
            @if held.len() as i64 >= ON_ACTOR_PAGE {
                p.muted { "The newest " (ON_ACTOR_PAGE) " are shown." }
            }
        }
        @if matches!(actor.role, Role::ServiceAccount | Role::Admin) && !actor.disabled {
            h3 {
                @if actor.role == Role::Admin { "Create an API token" } @else { "Create a client token" }
            }
            form method="post" action=(c.href(&format!("{base}/tokens"))) {
                (c.csrf_field())
                label for="token-lifetime" { "Expires after" }
                select #token-lifetime name="lifetime_days" {
                    option value="" selected { @if actor.role == Role::Admin { "90 days (default)" } @else { "a year (default)" } }
                    option value="1" { "1 day" }
                    option value="30" { "30 days" }
                    option value="90" { "90 days" }
                    option value="365" { "a year" }
                    option value="1825" { "5 years" }
                }
                @if actor.role == Role::Admin {
                    label for="token-scope" { "Scope" }
                    select #token-scope name="scope" {
                        option value="write" selected { "read and change (read, write)" }
                        option value="read" { "only read (read)" }
                    }
                }
                div { button type="submit" { "Create the token" } }
            }
        }
        h2 { "Clients" }
        @if clients.is_empty() {
            p.muted { "No clients." }
        } @else {
            (client_table(c, &clients))
            @if clients.len() as i64 >= ON_ACTOR_PAGE {
                p { a href=(href_with(&c.href("/clients"), &[("owner", &actor.id.to_string())], 1)) { "All of its clients" } }
            }
        }
        h2 { "Recent sessions" }
        @if sessions.is_empty() {
            p.muted { "No sign-ins or connections logged." }
        } @else {
            table {
                thead { tr { th { "When" } th { "What" } th { "From" } th { "Client" } th { "User agent" } } }
                tbody {
                    @for entry in &sessions {
                        tr {
                            td { (at(&entry.at)) }
                            td { (session_label(&entry.kind)) }
                            td { (entry.remote_ip.as_deref().unwrap_or("")) }
                            td {
                                @if let Some(device) = entry.device_id {
                                    @match client_names.get(&device) {
                                        Some(name) => a href=(c.href(&format!("/clients/{device}"))) { (name) },
                                        None => span.muted { "a client since deleted or not listed" },
                                    }
                                }
                            }
                            td { (entry.user_agent.as_deref().unwrap_or("")) }
                        }
                    }
                }
            }
        }
        h2 { "Delete" }
        p { a href=(c.href(&format!("{base}/delete"))) { "Delete " (actor.name) "…" } }
    };
    Ok(c.page(refused_status(refusal), &actor.name, Section::Actors, body))
}

/// A table of clients with links to them (an actor's page).
fn client_table(c: &Console, clients: &[devices::ClientRow]) -> Markup {
    html! {
        table {
            thead { tr { th { "Name" } th { "OS" } th { "Version" } th { "Last seen" } th { "Online" } th { "Verified" } } }
            tbody {
                @for row in clients {
                    @let d = &row.device;
                    tr {
                        td { a href=(c.href(&format!("/clients/{}", d.id))) { (d.name) } }
                        td { (d.os.as_deref().unwrap_or("")) }
                        td { (d.version.as_deref().unwrap_or("")) }
                        td { @match &d.last_seen_at { Some(t) => (at(t)), None => "never" } }
                        td { @if c.state.client_online(d.id) { span.online { "online" } } @else { "offline" } }
                        td { @if d.verified { "verified" } @else { "unverified" } }
                    }
                }
            }
        }
    }
}

/// `GET /{account}/actors/{id}`.
pub async fn show(c: Console, Path((_, id)): Path<(String, String)>) -> WebResult<Response> {
    actor_page(&c, &id, None, None).await
}

/// `POST /{account}/actors/{id}`: name, email and role (the API's update,
/// with only what changed, so a directory's user can have its role set).
pub async fn update(
    Path((_, id)): Path<(String, String)>,
    Posted { c, form }: Posted,
) -> WebResult<Response> {
    let actor = load(&c, &id).await?.actor;
    let typed = Details {
        name: form.get("name").to_string(),
        email: form.get("email").to_string(),
        role: form.get("role").to_string(),
    };
    let saved = match fields_of(&typed.name, &typed.email, &typed.role) {
        Err(error) => Err(Refusal::from(error)),
        // The API keeps an address once given (none in a patch means no
        // change): say so rather than keep it silently.
        Ok((_, None, _)) if actor.email.is_some() => Err(Refusal::from(
            "email: an address cannot be removed, only changed".to_string(),
        )),
        Ok((name, email, role)) => {
            let demoted = role != Role::Admin && actor.role == Role::Admin;
            match check_self(
                &c,
                actor.id,
                &form,
                "leaving the admin role ends your console access at once.",
            ) {
                Err(refusal) if demoted => Err(refusal),
                _ => {
                    let patch = api::actors::ActorPatch {
                        name: (name.0 != actor.name).then_some(name),
                        email: email.filter(|e| Some(&e.0) != actor.email.as_ref()),
                        role: (role != actor.role).then_some(role),
                        disabled: None,
                    };
                    answer(
                        api::actors::update(
                            State(c.state.clone()),
                            c.admin,
                            Path(actor.id.to_string()),
                            Json(patch),
                        )
                        .await,
                    )
                    .await
                }
            }
        }
    };
    match saved {
        Ok(_) => Ok(see_other(&c.href(&format!("/actors/{}", actor.id)))),
        Err(refusal) => actor_page(&c, &id, Some(&refusal), Some(typed)).await,
    }
}

// ---- Disable and enable ---------------------------------------------------

async fn disable_page(c: &Console, id: &str, refusal: Option<&Refusal>) -> WebResult<Response> {
    let listed = load(c, id).await?;
    let actor = &listed.actor;
    let mut tx = c.state.store.read().await?;
    let footprint = actors::footprint(&mut tx, c.account.id, actor.id).await?;
    tx.commit().await?;
    let base = format!("/actors/{}", actor.id);
    let body = html! {
        (error_box(refusal.map(|r| r.message.as_str())))
        p { "Disabling " b { (actor.name) } ":" }
        ul {
            li { "it can no longer sign in;" }
            li { "its " (footprint.clients) " client(s) are disconnected at once and cannot connect again;" }
            li { "its " (footprint.tokens) " token(s) stop working (they are kept, and work again if it is enabled)." }
        }
        @if actor.id == c.actor.id {
            p.error role="alert" { "This is your own account: you are signed out at once and cannot sign in again until another admin enables you." }
        }
        form method="post" action=(c.href(&format!("{base}/disable"))) {
            (c.csrf_field())
            (confirm_self_box(c, actor.id, "I know that I disable my own account"))
            div { button.danger type="submit" { "Disable " (actor.name) } }
        }
        p { a href=(c.href(&base)) { "Keep it enabled" } }
    };
    Ok(c.page(
        refused_status(refusal),
        "Disable a user",
        Section::Actors,
        body,
    ))
}

/// `GET /{account}/actors/{id}/disable`: what disabling does.
pub async fn confirm_disable(
    c: Console,
    Path((_, id)): Path<(String, String)>,
) -> WebResult<Response> {
    disable_page(&c, &id, None).await
}

async fn set_disabled(c: &Console, actor: Uuid, disabled: bool) -> Result<(), Refusal> {
    let patch = api::actors::ActorPatch {
        name: None,
        email: None,
        role: None,
        disabled: Some(disabled),
    };
    answer(
        api::actors::update(
            State(c.state.clone()),
            c.admin,
            Path(actor.to_string()),
            Json(patch),
        )
        .await,
    )
    .await
    .map(|_| ())
}

/// `POST /{account}/actors/{id}/disable`.
pub async fn disable(
    Path((_, id)): Path<(String, String)>,
    Posted { c, form }: Posted,
) -> WebResult<Response> {
    let actor = load(&c, &id).await?.actor;
    let done = match check_self(&c, actor.id, &form, "you would be signed out at once.") {
        Ok(()) => set_disabled(&c, actor.id, true).await,
        Err(refusal) => Err(refusal),
    };
    match done {
        Ok(()) => Ok(see_other(&c.href(&format!("/actors/{}", actor.id)))),
        Err(refusal) => disable_page(&c, &id, Some(&refusal)).await,
    }
}

/// `POST /{account}/actors/{id}/enable`.
pub async fn enable(
    Path((_, id)): Path<(String, String)>,
    Posted { c, .. }: Posted,
) -> WebResult<Response> {
    let actor = load(&c, &id).await?.actor;
    match set_disabled(&c, actor.id, false).await {
        Ok(()) => Ok(see_other(&c.href(&format!("/actors/{}", actor.id)))),
        Err(refusal) => actor_page(&c, &id, Some(&refusal), None).await,
    }
}

// ---- Tokens ---------------------------------------------------------------

/// `POST /{account}/actors/{id}/tokens`: the API's token create; the
/// secret is in this answer only.
pub async fn create_token(
    Path((_, id)): Path<(String, String)>,
    Posted { c, form }: Posted,
) -> WebResult<Response> {
    let actor = load(&c, &id).await?.actor;
    let mut request = serde_json::Map::new();
    let days = form.get("lifetime_days").trim();
    if !days.is_empty() {
        let Some(days) = days.parse::<i64>().ok().filter(|d| (1..=3650).contains(d)) else {
            let refusal = Refusal::from("expires after: choose a lifetime".to_string());
            return actor_page(&c, &id, Some(&refusal), None).await;
        };
        let expires = Timestamp::now()
            .checked_add(jiff::SignedDuration::from_hours(days * 24))
            .map_err(WebError::internal)?;
        request.insert("expires_at".into(), json!(expires));
    }
    if actor.role == Role::Admin {
        let scopes = match form.get("scope") {
            "read" => json!(["read"]),
            _ => json!(["read", "write"]),
        };
        request.insert("scopes".into(), scopes);
    }
    let request = serde_json::to_vec(&request).map_err(WebError::internal)?;
    let minted = answer(
        api::tokens::create(
            State(c.state.clone()),
            c.admin,
            Path(actor.id.to_string()),
            Bytes::from(request),
        )
        .await,
    )
    .await;
    let minted = match minted {
        Ok(minted) => minted,
        Err(refusal) => return actor_page(&c, &id, Some(&refusal), None).await,
    };
    let token = super::text(&minted, "token");
    let portal = c
        .state
        .external_url
        .clone()
        .unwrap_or_else(|| "https://PORTAL".into());
    let portal = portal.trim_end_matches('/');
    let back = c.href(&format!("/actors/{}", actor.id));
    let body = html! {
        p.notice {
            "This token is shown once: copy it now. Anyone holding it acts as "
            b { (actor.name) } "; keep it like a password. It expires "
            (super::when(&minted["expires_at"])) "."
        }
        label for="new-token" { "Token" }
        pre #new-token { (token) }
        @if actor.role == Role::Admin {
            h2 { "Use it" }
            p { "Send it with every request to the REST API:" }
            pre { "curl -H 'Authorization: Bearer " (token) "' " (portal) "/api/v1/account" }
        } @else {
            h2 { "Use it" }
            p { "On the service account's machine:" }
            pre { "install -m 600 /dev/null client.token\n"
                  "printf '%s' '" (token) "' > client.token\n"
                  "postern client up --portal " (portal) " --token-file client.token" }
        }
        p { a href=(back) { "Back to " (actor.name) } }
    };
    Ok(c.page(StatusCode::CREATED, "New token", Section::Actors, body))
}

/// The token `token` of the actor `id`, or 404.
async fn token_of(
    c: &Console,
    id: &str,
    token: &str,
) -> WebResult<(actors::Listed, tokens::Listing)> {
    let listed = load(c, id).await?;
    let token = path_id(token, "token")?;
    let mut tx = c.state.store.read().await?;
    let found = tokens::listing_of(&mut tx, c.account.id, token).await?;
    tx.commit().await?;
    match found {
        Some(found) if found.actor_id == Some(listed.actor.id) => Ok((listed, found)),
        _ => Err(WebError::new(
            StatusCode::NOT_FOUND,
            "There is no such token.",
        )),
    }
}

/// `GET /{account}/actors/{id}/tokens/{token}/revoke`: what revoking does.
pub async fn confirm_revoke(
    c: Console,
    Path((_slug, id, token)): Path<(String, String, String)>,
) -> WebResult<Response> {
    let (listed, token) = token_of(&c, &id, &token).await?;
    let actor = &listed.actor;
    let base = format!("/actors/{}", actor.id);
    let body = html! {
        p { "Revoking the " (kind_label(token.kind).to_lowercase()) " of " b { (actor.name) } " made " (at(&token.created_at)) ":" }
        ul {
            li { "it stops working at once;" }
            @if token.kind == TokenKind::Client {
                li { "every channel using it is closed at once: " (token.devices) " client(s) registered with it must sign in again or get a new token." }
            }
            @if token.kind == TokenKind::Api {
                li { "scripts and tools calling the REST API with it get 401 from now on." }
            }
        }
        @if token.id == c.admin.token_id {
            p.error role="alert" { "This is your current web session: you are signed out at once." }
        }
        form method="post" action=(c.href(&format!("{base}/tokens/{}/revoke", token.id))) {
            (c.csrf_field())
            button.danger type="submit" { "Revoke the token" }
        }
        p { a href=(c.href(&base)) { "Keep it" } }
    };
    Ok(c.page(StatusCode::OK, "Revoke a token", Section::Actors, body))
}

/// `POST /{account}/actors/{id}/tokens/{token}/revoke`.
pub async fn revoke(
    Path((_slug, id, token)): Path<(String, String, String)>,
    Posted { c, .. }: Posted,
) -> WebResult<Response> {
    let actor = load(&c, &id).await?.actor;
    let token = path_id(&token, "token")?;
    let mut tx = c.state.store.read().await?;
    let found = tokens::listing_of(&mut tx, c.account.id, token).await?;
    tx.commit().await?;
    // Another actor's token is not revoked from this actor's page; one
    // already gone is not an error (a second click).
    if found.is_some_and(|t| t.actor_id == Some(actor.id)) {
        super::deleted(
            api::tokens::revoke(State(c.state.clone()), c.admin, Path(token.to_string())).await,
        )
        .await?;
    }
    Ok(see_other(&c.href(&format!("/actors/{}", actor.id))))
}

// ---- Delete ---------------------------------------------------------------

async fn delete_page(c: &Console, id: &str, refusal: Option<&Refusal>) -> WebResult<Response> {
    let listed = load(c, id).await?;
    let actor = &listed.actor;
    let mut tx = c.state.store.read().await?;
    let footprint = actors::footprint(&mut tx, c.account.id, actor.id).await?;
    tx.commit().await?;
    let base = format!("/actors/{}", actor.id);
    let body = html! {
        (error_box(refusal.map(|r| r.message.as_str())))
        p { "Deleting " b { (actor.name) } " also deletes:" }
        ul {
            li { "its " (footprint.tokens) " token(s): they stop working at once;" }
            li { "its " (footprint.clients) " client(s): those connected now are disconnected at once, and their addresses are forgotten;" }
            li {
                "its membership of " (footprint.groups.len()) " group(s)"
                @if !footprint.groups.is_empty() { ": " (footprint.groups.join(", ")) }
                ";"
            }
            li { "its " (footprint.identities) " sign-in identity(ies) with identity providers." }
        }
        p { "The audit and session logs keep what it did." }
        @if listed.directory.is_some() || actor.directory_id.is_some() {
            p.notice { "A directory provisioned this user: the API refuses to delete it here; remove it in the directory." }
        }
        @if actor.id == c.actor.id {
            p.error role="alert" { "This is your own account: you are signed out at once and can never sign in as it again." }
        }
        form method="post" action=(c.href(&format!("{base}/delete"))) {
            (c.csrf_field())
            (confirm_self_box(c, actor.id, "I know that I delete my own account"))
            div { button.danger type="submit" { "Delete " (actor.name) } }
        }
        p { a href=(c.href(&base)) { "Keep it" } }
    };
    Ok(c.page(
        refused_status(refusal),
        "Delete a user",
        Section::Actors,
        body,
    ))
}

/// `GET /{account}/actors/{id}/delete`: what deleting takes with it.
pub async fn confirm_delete(
    c: Console,
    Path((_, id)): Path<(String, String)>,
) -> WebResult<Response> {
    delete_page(&c, &id, None).await
}

/// `POST /{account}/actors/{id}/delete`.
pub async fn delete(
    Path((_, id)): Path<(String, String)>,
    Posted { c, form }: Posted,
) -> WebResult<Response> {
    let Ok(actor) = path_id(&id, "user") else {
        return Ok(see_other(&c.href("/actors")));
    };
    let done = match check_self(
        &c,
        actor,
        &form,
        "you would be signed out at once, for good.",
    ) {
        Ok(()) => {
            answer(
                api::actors::remove(State(c.state.clone()), c.admin, Path(actor.to_string())).await,
            )
            .await
        }
        Err(refusal) => Err(refusal),
    };
    match done {
        Ok(_) => Ok(see_other(&c.href("/actors"))),
        // Already gone (a second click): not an error.
        Err(refusal) if refusal.status == StatusCode::NOT_FOUND => {
            Ok(see_other(&c.href("/actors")))
        }
        Err(refusal) => delete_page(&c, &id, Some(&refusal)).await,
    }
}
