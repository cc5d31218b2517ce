//! Clients (devices): who, last seen, version, OS; verify, delete.
//!
//! The list is paged in SQL, 50 a page, with filters (online now,
//! unverified, a search in the client's or its owner's name or email, one
//! owner's). The writes are the API's handlers' (`clients::update` and
//! `clients::remove`); only the reads are the console's own queries, since
//! the API's list loads every client.

use std::collections::HashMap;
use std::sync::Arc;

use axum::Router;
use axum::extract::{Path, RawQuery, State};
use axum::http::StatusCode;
use axum::response::Response;
use axum::routing::{get, post};
use maud::{Markup, html};
use uuid::Uuid;

use super::Posted;
use super::actors::{at, path_id};
use super::paging::{PER_PAGE, href_with, page_of, pager, params, search_of};
use super::{Console, Section, answer, deleted};
use crate::api::{self, body::Json};
use crate::state::AppState;
use crate::store::devices::{self, ClientFilter, ClientRow};
use crate::web::{WebError, WebResult, see_other};

/// This part's routes.
pub fn routes() -> Router<Arc<AppState>> {
    Router::new()
        .route("/{account}/clients", get(list))
        .route("/{account}/clients/{id}", get(show))
        .route("/{account}/clients/{id}/verify", post(verify))
        .route(
            "/{account}/clients/{id}/delete",
            get(confirm_delete).post(delete),
        )
}

/// What the list shows, from its query (or a form's `back`).
struct View {
    search: String,
    /// `online`, `unverified` or empty (every client).
    show: &'static str,
    owner: Option<Uuid>,
    page: i64,
}

impl View {
    fn of(params: &HashMap<String, String>) -> View {
        View {
            search: search_of(params),
            show: match params.get("show").map(String::as_str) {
                Some("online") => "online",
                Some("unverified") => "unverified",
                _ => "",
            },
            owner: params
                .get("owner")
                .and_then(|o| Uuid::try_parse(o.trim()).ok()),
            page: page_of(params),
        }
    }

    fn owner_text(&self) -> String {
        self.owner.map(|o| o.to_string()).unwrap_or_default()
    }

    /// The list's address for page `page` of this view.
    fn href(&self, c: &Console, page: i64) -> String {
        let owner = self.owner_text();
        href_with(
            &c.href("/clients"),
            &[("q", &self.search), ("show", self.show), ("owner", &owner)],
            page,
        )
    }

    /// `?` and the query of this view, for a form to come back to it.
    fn back(&self, c: &Console) -> String {
        let href = self.href(c, self.page);
        let query = href.split_once('?').map_or("", |(_, q)| q);
        format!("?{query}")
    }
}

/// The page of clients the view shows, and how many it pages through.
async fn clients_in(c: &Console, view: &View) -> WebResult<(Vec<ClientRow>, i64)> {
    let filter = ClientFilter {
        search: view.search.clone(),
        unverified_only: view.show == "unverified",
        owner: view.owner,
    };
    let offset = (view.page - 1) * PER_PAGE;
    let mut tx = c.state.store.read().await?;
    let found = if view.show == "online" && c.state.online_counts().1 == 0 {
        // Nobody is connected to this node: nothing to read.
        (Vec::new(), 0)
    } else if view.show == "online" {
        // Who is online is this node's knowledge, not a column: the ids
        // and names that pass the other filters (one query, unordered),
        // those online sorted here, then the page's rows.
        let mut online: Vec<(String, Uuid)> = devices::client_names(&mut tx, c.account.id, &filter)
            .await?
            .into_iter()
            .filter(|(id, _)| c.state.client_online(*id))
            .map(|(id, name)| (name.to_lowercase(), id))
            .collect();
        online.sort_unstable();
        let total = online.len() as i64;
        let start = usize::try_from(offset)
            .unwrap_or(usize::MAX)
            .min(online.len());
        let end = start.saturating_add(PER_PAGE as usize).min(online.len());
        let page: Vec<Uuid> = online[start..end].iter().map(|(_, id)| *id).collect();
        let rows = devices::clients_by_ids(&mut tx, c.account.id, &page).await?;
        (rows, total)
    } else {
        let total = devices::client_count(&mut tx, c.account.id, &filter).await?;
        let rows = devices::client_page(&mut tx, c.account.id, &filter, offset, PER_PAGE).await?;
        (rows, total)
    };
    tx.commit().await?;
    Ok(found)
}

fn owner_cell(c: &Console, row: &ClientRow) -> Markup {
    html! {
        @match (row.device.actor_id, &row.owner_name) {
            (Some(actor), Some(name)) => {
                a href=(c.href(&format!("/actors/{actor}"))) { (name) }
                @if let Some(email) = &row.owner_email { br; span.muted { (email) } }
            },
            _ => span.muted { "nobody" },
        }
    }
}

fn verify_form(c: &Console, device: &crate::domain::Device, back: &str) -> Markup {
    html! {
        form.inline method="post" action=(c.href(&format!("/clients/{}/verify", device.id))) {
            (c.csrf_field())
            input type="hidden" name="verified" value=(if device.verified { "false" } else { "true" });
            input type="hidden" name="back" value=(back);
            @if device.verified {
                button.secondary type="submit" aria-label=(format!("Mark {} unverified", device.name)) { "Mark unverified" }
            } @else {
                button type="submit" aria-label=(format!("Mark {} verified", device.name)) { "Mark verified" }
            }
        }
    }
}

/// `GET /{account}/clients`.
pub async fn list(c: Console, RawQuery(query): RawQuery) -> WebResult<Response> {
    let view = View::of(&params(query.as_deref()));
    let (rows, total) = clients_in(&c, &view).await?;
    let owner_name = match view.owner {
        Some(owner) => {
            let mut tx = c.state.store.read().await?;
            let actor = crate::store::actors::get(&mut tx, c.account.id, owner).await?;
            tx.commit().await?;
            actor.map(|a| a.name)
        }
        None => None,
    };
    let back = view.back(&c);
    let owner = view.owner_text();
    let path = c.href("/clients");
    let body = html! {
        form.filters method="get" action=(path) role="search" {
            label for="client-q" { "Search by name or owner" }
            input #client-q type="search" name="q" value=(view.search) maxlength="255";
            label for="client-show" { "Show" }
            select #client-show name="show" {
                option value="" selected[view.show.is_empty()] { "every client" }
                option value="online" selected[view.show == "online"] { "online now" }
                option value="unverified" selected[view.show == "unverified"] { "unverified" }
            }
            @if view.owner.is_some() {
                input type="hidden" name="owner" value=(owner);
            }
            " "
            button type="submit" { "Filter" }
            @if !view.search.is_empty() || !view.show.is_empty() || view.owner.is_some() {
                " " a href=(path) { "Show every client" }
            }
        }
        @if let Some(owner) = view.owner {
            p {
                "Clients of "
                a href=(c.href(&format!("/actors/{owner}"))) { (owner_name.as_deref().unwrap_or("a user since deleted")) }
                "."
            }
        }
        p.muted { (total) " client(s)." }
        @if !rows.is_empty() {
            table {
                thead { tr { th { "Name" } th { "Owner" } th { "OS" } th { "Version" } th { "Last seen" } th { "Online" } th { "Verified" } } }
                tbody {
                    @for row in &rows {
                        @let d = &row.device;
                        tr {
                            td { a href=(c.href(&format!("/clients/{}", d.id))) { (d.name) } }
                            td { (owner_cell(&c, row)) }
                            td { (d.os.as_deref().unwrap_or("")) }
                            td { (d.version.as_deref().unwrap_or("")) }
                            td {
                                @match &d.last_seen_at { Some(t) => (at(t)), None => "never" }
                                @if let Some(ip) = &d.last_seen_ip { br; span.muted { (ip) } }
                            }
                            td { @if c.state.client_online(d.id) { span.online { "online" } } @else { "offline" } }
                            td {
                                @if d.verified { "verified " } @else { "unverified " }
                                (verify_form(&c, d, &back))
                            }
                        }
                    }
                }
            }
        }
        (pager(&path, &[("q", &view.search), ("show", view.show), ("owner", &owner)], view.page, total))
    };
    Ok(c.page(StatusCode::OK, "Clients", Section::Clients, body))
}

async fn load(c: &Console, id: &str) -> WebResult<ClientRow> {
    let id = path_id(id, "client")?;
    let mut tx = c.state.store.read().await?;
    let found = devices::client_row_of(&mut tx, c.account.id, id).await?;
    tx.commit().await?;
    found.ok_or_else(|| WebError::new(StatusCode::NOT_FOUND, "There is no such client."))
}

/// `GET /{account}/clients/{id}`.
pub async fn show(c: Console, Path((_, id)): Path<(String, String)>) -> WebResult<Response> {
    let row = load(&c, &id).await?;
    let d = &row.device;
    let body = html! {
        table.fields {
            tbody {
                tr { th scope="row" { "Owner" } td { (owner_cell(&c, &row)) } }
                tr { th scope="row" { "Online" } td { @if c.state.client_online(d.id) { span.online { "online" } } @else { "offline" } } }
                tr { th scope="row" { "Verified" } td { @if d.verified { "verified " } @else { "unverified " } (verify_form(&c, d, "")) } }
                tr { th scope="row" { "OS" } td { (d.os.as_deref().unwrap_or("unknown")) } }
                tr { th scope="row" { "Version" } td { (d.version.as_deref().unwrap_or("unknown")) } }
                tr { th scope="row" { "Last seen" } td { @match &d.last_seen_at { Some(t) => (at(t)), None => "never" } } }
                tr { th scope="row" { "Last address" } td { (d.last_seen_ip.as_deref().unwrap_or("")) } }
                tr { th scope="row" { "Tunnel addresses" } td { (d.ipv4) ", " (d.ipv6) } }
                tr { th scope="row" { "Device id" } td { code { (d.device_id) } } }
                tr { th scope="row" { "First seen" } td { (at(&d.created_at)) } }
            }
        }
        h2 { "Delete" }
        p { a href=(c.href(&format!("/clients/{}/delete", d.id))) { "Delete this client…" } }
    };
    Ok(c.page(StatusCode::OK, &d.name, Section::Clients, body))
}

/// `POST /{account}/clients/{id}/verify`: `verified` true or false (the
/// API's update), then back to the list the form was on, or the client.
pub async fn verify(
    Path((_, id)): Path<(String, String)>,
    Posted { c, form }: Posted,
) -> WebResult<Response> {
    let verified = match form.get("verified") {
        "true" => true,
        "false" => false,
        _ => {
            return Err(WebError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "verified: must be true or false",
            ));
        }
    };
    let patch = api::clients::ClientPatch {
        verified: Some(verified),
    };
    let saved = answer(
        api::clients::update(
            State(c.state.clone()),
            c.admin,
            Path(id.clone()),
            Json(patch),
        )
        .await,
    )
    .await?;
    // From the list (`back` is `?` and its query): back to it, with only
    // the list's own parameters written again, never a place of the
    // form's choosing. From the client's page: back there.
    match form.get("back").strip_prefix('?') {
        Some(query) => {
            let view = View::of(&params(Some(query)));
            Ok(see_other(&view.href(&c, view.page)))
        }
        None => Ok(see_other(
            &c.href(&format!("/clients/{}", super::text(&saved, "id"))),
        )),
    }
}

/// `GET /{account}/clients/{id}/delete`: what deleting does.
pub async fn confirm_delete(
    c: Console,
    Path((_, id)): Path<(String, String)>,
) -> WebResult<Response> {
    let row = load(&c, &id).await?;
    let d = &row.device;
    let online = c.state.client_online(d.id);
    let body = html! {
        p {
            "Deleting " b { (d.name) }
            @if let Some(owner) = &row.owner_name { " of " (owner) }
            ":"
        }
        ul {
            li {
                "its channel to the portal closes at once"
                @if online { " (it is online now)" } @else { " (it is offline now)" }
                ";"
            }
            li { "its addresses " code { (d.ipv4) } " and " code { (d.ipv6) } " are forgotten and may be given to another device;" }
            li { "its verification is forgotten." }
        }
        p.muted {
            "If its owner's token still works, it can connect again as a new, unverified client: to keep it out, revoke the token or disable the owner on "
            @match d.actor_id {
                Some(actor) => a href=(c.href(&format!("/actors/{actor}"))) { "the owner's page" },
                None => "the owner's page",
            }
            "."
        }
        form method="post" action=(c.href(&format!("/clients/{}/delete", d.id))) {
            (c.csrf_field())
            button.danger type="submit" { "Delete the client" }
        }
        p { a href=(c.href(&format!("/clients/{}", d.id))) { "Keep it" } }
    };
    Ok(c.page(StatusCode::OK, "Delete a client", Section::Clients, body))
}

/// `POST /{account}/clients/{id}/delete`.
pub async fn delete(
    Path((_, id)): Path<(String, String)>,
    Posted { c, .. }: Posted,
) -> WebResult<Response> {
    deleted(api::clients::remove(State(c.state.clone()), c.admin, Path(id)).await).await?;
    Ok(see_other(&c.href("/clients")))
}
