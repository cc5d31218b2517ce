//! Account settings: what `GET /api/v1/account` shows, and the DNS search
//! domain the API lets an admin change (clients get it at their next
//! connection).

use std::sync::Arc;

use axum::Router;
use axum::extract::{RawQuery, State};
use axum::response::Response;
use axum::routing::get;
use maud::html;
use serde_json::json;

use super::{Console, Posted, Refusal, Section, answer, error_box, input, refused_status, text};
use crate::api::{self, body::Json};
use crate::state::AppState;
use crate::web::{WebResult, see_other};

/// This part's routes.
pub fn routes() -> Router<Arc<AppState>> {
    Router::new().route("/{account}/settings", get(show).post(save))
}

/// The page; `typed` is the search domain as the admin typed it when the
/// API refused it.
async fn page(c: &Console, saved: bool, refused: Option<(&str, &Refusal)>) -> WebResult<Response> {
    let account = answer(api::account::get(State(c.state.clone()), c.admin).await).await?;
    let refusal = refused.map(|(_, r)| r);
    let domain = match refused {
        Some((typed, _)) => typed,
        None => account["search_domain"].as_str().unwrap_or_default(),
    };
    let body = html! {
        @if saved {
            p.notice role="status" { "Saved. Connected clients get the change when they next connect." }
        }
        h2 { "Account" }
        table {
            tbody {
                tr { th scope="row" { "Name" } td { (text(&account, "name")) } }
                tr { th scope="row" { "Address (slug)" } td { code { (text(&account, "slug")) } } }
                tr { th scope="row" { "Account ID" } td { code { (text(&account, "id")) } } }
            }
        }
        h2 { "Client DNS" }
        (error_box(refusal.map(|r| r.message.as_str())))
        form method="post" action=(c.href("/settings")) {
            (c.csrf_field())
            label for="s-search-domain" { "DNS search domain" }
            input #s-search-domain type="text" name="search_domain" value=(domain) maxlength="253" placeholder="corp.example" aria-describedby="s-search-domain-hint";
            p.hint #s-search-domain-hint { "Clients add it to short names: with " code { "corp.example" } ", " code { "wiki" } " resolves as " code { "wiki.corp.example" } ". Empty: none." }
            div { button type="submit" { "Save the settings" } }
        }
    };
    Ok(c.page(refused_status(refusal), "Settings", Section::Settings, body))
}

/// `GET /{account}/settings`.
pub async fn show(c: Console, RawQuery(query): RawQuery) -> WebResult<Response> {
    let saved = query.is_some_and(|q| q.split('&').any(|p| p == "saved"));
    page(&c, saved, None).await
}

/// `POST /{account}/settings`: the API's `PATCH /account` (an empty search
/// domain clears it).
pub async fn save(Posted { c, form }: Posted) -> WebResult<Response> {
    let typed = form.get("search_domain");
    let domain = if typed.trim().is_empty() {
        json!(null)
    } else {
        json!(typed)
    };
    let saved = match input::<api::account::AccountPatch>(json!({ "search_domain": domain })) {
        Ok(patch) => {
            answer(api::account::update(State(c.state.clone()), c.admin, Json(patch)).await).await
        }
        Err(error) => Err(Refusal::from(format!("search_domain: {error}"))),
    };
    match saved {
        Ok(_) => Ok(see_other(&c.href("/settings?saved"))),
        Err(refusal) => page(&c, false, Some((typed, &refusal))).await,
    }
}
