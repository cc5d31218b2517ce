//! Sites: the list, a site with its gateways live (online, version, load,
//! refreshed every two seconds without a reload), the "deploy a gateway"
//! panel (a fresh token and the exact commands), deletion that says first
//! what goes with it.

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use maud::{Markup, html};
use serde_json::{Value, json};

use super::{
    Console, Posted, Refusal, Section, answer, data, deleted, error_box, input, object,
    refused_status, text, when,
};
use crate::api::{self, body::Json};
use crate::web::{Shared, WebResult, see_other};

type Id = Path<(String, String)>;

/// The sites with how many of their gateways are online and how many
/// they have: one query for every gateway of the account.
async fn sites_with_gateways(c: &Console) -> WebResult<Vec<(Value, usize, usize)>> {
    let sites = data(api::sites::list(State(c.state.clone()), c.admin).await).await?;
    let mut tx = c.state.store.read().await?;
    let gateways = crate::store::devices::list(
        &mut tx,
        c.account.id,
        crate::domain::DeviceKind::Gateway,
        None,
    )
    .await?;
    tx.commit().await?;
    let mut per_site: std::collections::HashMap<String, (usize, usize)> = Default::default();
    for gateway in &gateways {
        let Some(site) = gateway.site_id else {
            continue;
        };
        let entry = per_site.entry(site.to_string()).or_default();
        entry.1 += 1;
        if c.state.gateway_presence(gateway.id).0 {
            entry.0 += 1;
        }
    }
    Ok(sites
        .into_iter()
        .map(|site| {
            let (online, all) = per_site.get(text(&site, "id")).copied().unwrap_or_default();
            (site, online, all)
        })
        .collect())
}

async fn gateways_of(c: &Console, site: &str) -> WebResult<Vec<Value>> {
    let found = object(
        api::sites::gateways(State(c.state.clone()), c.admin, Path(site.to_string())).await,
        "site",
    )
    .await?;
    Ok(found["data"].as_array().cloned().unwrap_or_default())
}

fn list_page(
    c: &Console,
    sites: &[(Value, usize, usize)],
    error: Option<&Refusal>,
    name: &str,
) -> Response {
    let status = refused_status(error);
    let error = error.map(|e| e.message.as_str());
    let body = html! {
        @if sites.is_empty() {
            p.muted { "No sites yet. A site is a network your gateways can reach: add one, then deploy a gateway in it." }
        } @else {
            table {
                thead { tr { th { "Name" } th { "Gateways online" } th { "Created" } } }
                tbody {
                    @for (site, online, all) in sites {
                        tr {
                            td { a href=(c.href(&format!("/sites/{}", text(site, "id")))) { (text(site, "name")) } }
                            td {
                                span class=(if *online > 0 { "online" } else { "offline" }) { (online) }
                                " of " (all)
                            }
                            td { (when(&site["created_at"])) }
                        }
                    }
                }
            }
        }
        h2 { "Add a site" }
        (error_box(error))
        form method="post" action=(c.href("/sites")) {
            (c.csrf_field())
            label for="site-name" { "Name" }
            input #site-name type="text" name="name" value=(name) required maxlength="255";
            div { button type="submit" { "Add the site" } }
        }
    };
    c.page(status, "Sites", Section::Sites, body)
}

/// `GET /{account}/sites`.
pub async fn list(c: Console) -> WebResult<Response> {
    let sites = sites_with_gateways(&c).await?;
    Ok(list_page(&c, &sites, None, ""))
}

/// `POST /{account}/sites`: the API's create, then the new site's page.
pub async fn create(Posted { c, form }: Posted) -> WebResult<Response> {
    let name = form.get("name");
    let created = match input::<api::sites::SiteInput>(json!({"name": name})) {
        Ok(site) => {
            answer(api::sites::create(State(c.state.clone()), c.admin, Json(site)).await).await
        }
        Err(error) => Err(Refusal::from(format!("name: {error}"))),
    };
    match created {
        Ok(site) => Ok(see_other(&c.href(&format!("/sites/{}", text(&site, "id"))))),
        Err(error) => {
            let sites = sites_with_gateways(&c).await?;
            Ok(list_page(&c, &sites, Some(&error), name))
        }
    }
}

fn gateways_table(gateways: &[Value]) -> Markup {
    html! {
        @if gateways.is_empty() {
            p.muted { "No gateway has connected to this site yet." }
        } @else {
            table {
                thead { tr { th { "Gateway" } th { "State" } th { "Clients served" } th { "Version" } th { "Last seen" } th { "Address" } } }
                tbody {
                    @for gateway in gateways {
                        tr {
                            td { (text(gateway, "name")) }
                            td {
                                @if gateway["online"] == json!(true) {
                                    span.online { "online" }
                                } @else {
                                    span.offline { "offline" }
                                }
                            }
                            td { (gateway["load"].as_u64().unwrap_or(0)) }
                            td { (gateway["version"].as_str().unwrap_or("unknown")) }
                            td { (when(&gateway["last_seen_at"])) }
                            td { (gateway["last_seen_ip"].as_str().unwrap_or("")) }
                        }
                    }
                }
            }
        }
    }
}

/// The live part of a site's page: htmx asks again every two seconds.
fn live_gateways(c: &Console, site: &str, gateways: &[Value]) -> Markup {
    html! {
        div #gateways hx-get=(c.href(&format!("/sites/{site}/gateways"))) hx-trigger="every 2s" hx-swap="outerHTML" {
            (gateways_table(gateways))
        }
    }
}

async fn site(c: &Console, id: &str) -> WebResult<Value> {
    object(
        api::sites::get(State(c.state.clone()), c.admin, Path(id.to_string())).await,
        "site",
    )
    .await
}

/// The site's resources.
async fn resources_of(c: &Console, site: &str) -> WebResult<Vec<Value>> {
    let all = data(api::resources::list(State(c.state.clone()), c.admin).await).await?;
    Ok(all
        .into_iter()
        .filter(|r| text(r, "site_id") == site)
        .collect())
}

/// `GET /{account}/sites/{id}`.
pub async fn show(c: Console, Path((_, id)): Id) -> WebResult<Response> {
    let site = site(&c, &id).await?;
    // The id as the API spells it (the path may hold another spelling).
    let id = text(&site, "id").to_string();
    let gateways = gateways_of(&c, &id).await?;
    let resources = resources_of(&c, &id).await?;
    let body = html! {
        h2 { "Gateways" }
        (live_gateways(&c, &id, &gateways))
        h2 { "Deploy a gateway" }
        p { "A gateway runs next to the site's resources and connects out to the portal; any number of gateways may share one token (each is its own device), and more gateways mean load balancing and failover." }
        form method="post" action=(c.href(&format!("/sites/{id}/gateway_token"))) {
            (c.csrf_field())
            button type="submit" { "Create a gateway token" }
        }
        h2 { "Resources" }
        @if resources.is_empty() {
            p.muted { "No resources in this site yet." }
        } @else {
            table {
                thead { tr { th { "Name" } th { "Type" } th { "Address" } } }
                tbody {
                    @for resource in &resources {
                        tr {
                            td { (text(resource, "name")) }
                            td { (text(resource, "type")) }
                            td { (resource["address"].as_str().unwrap_or("")) }
                        }
                    }
                }
            }
        }
        h2 { "Delete" }
        p { a href=(c.href(&format!("/sites/{id}/delete"))) { "Delete this site…" } }
    };
    Ok(c.page(StatusCode::OK, text(&site, "name"), Section::Sites, body))
}

/// `GET /{account}/sites/{id}/gateways`: the live table alone.
pub async fn gateways(
    state: Shared,
    Path((slug, id)): Id,
    headers: HeaderMap,
) -> WebResult<Response> {
    // htmx swaps no error answer: a signed-out session is sent to the
    // sign-in page (`HX-Redirect`), a deleted site stops the polling (286).
    let c = match Console::of(&state.0, &slug, &headers).await? {
        Ok(c) => c,
        Err(elsewhere) => {
            if elsewhere.status() == StatusCode::TOO_MANY_REQUESTS {
                return Ok(elsewhere);
            }
            let mut signed_out = StatusCode::UNAUTHORIZED.into_response();
            if let Ok(to) = axum::http::HeaderValue::from_str(&format!("/{slug}/sign_in")) {
                signed_out.headers_mut().insert("hx-redirect", to);
            }
            return Ok(signed_out);
        }
    };
    match gateways_of(&c, &id).await {
        Ok(gateways) => Ok(c.fragment(live_gateways(&c, &id, &gateways))),
        Err(error) if error.status == StatusCode::NOT_FOUND => {
            let mut gone =
                c.fragment(html! { div #gateways { p.error { "This site was deleted." } } });
            *gone.status_mut() = StatusCode::from_u16(286).unwrap_or(StatusCode::OK);
            Ok(gone)
        }
        Err(error) => Err(error),
    }
}

/// `POST /{account}/sites/{id}/gateway_token`: a new token, shown once,
/// with the commands that use it.
pub async fn gateway_token(Path((_, id)): Id, Posted { c, .. }: Posted) -> WebResult<Response> {
    let site = site(&c, &id).await?;
    let id = text(&site, "id").to_string();
    let minted = answer(
        api::sites::create_gateway_token(State(c.state.clone()), c.admin, Path(id.clone())).await,
    )
    .await?;
    let token = text(&minted, "token");
    let portal = c
        .state
        .external_url
        .clone()
        .unwrap_or_else(|| "https://PORTAL".into());
    let portal = portal.trim_end_matches('/');
    let body = html! {
        p.notice { "This token is shown once. Anyone holding it can run a gateway for " b { (text(&site, "name")) } "; keep it like a password." }
        label for="gateway-token" { "Token" }
        pre #gateway-token { (token) }
        h2 { "Run it" }
        p { "On the gateway host (Linux, as root):" }
        pre { "install -d -m 700 /etc/postern\n"
              "install -m 600 /dev/null /etc/postern/gateway.token\n"
              "printf '%s' '" (token) "' > /etc/postern/gateway.token\n"
              "postern gateway --portal " (portal) " --token-file /etc/postern/gateway.token" }
        h2 { "Or as a service (the Debian package)" }
        p { "In " code { "/etc/postern/gateway.env" } ":" }
        pre { "POSTERN_PORTAL=" (portal) "\nPOSTERN_TOKEN_FILE=/etc/postern/gateway.token" }
        pre { "systemctl enable --now postern-gateway" }
        p { "The gateway appears on " a href=(c.href(&format!("/sites/{id}"))) { "the site's page" } " within seconds of starting, without a reload." }
    };
    Ok(c.page(
        StatusCode::CREATED,
        "Deploy a gateway",
        Section::Sites,
        body,
    ))
}

/// `GET /{account}/sites/{id}/delete`: what deleting takes with it.
pub async fn confirm_delete(c: Console, Path((_, id)): Id) -> WebResult<Response> {
    let site = site(&c, &id).await?;
    let id = text(&site, "id").to_string();
    let resources = resources_of(&c, &id).await?;
    let gateways = gateways_of(&c, &id).await?;
    let policies = data(api::policies::list(State(c.state.clone()), c.admin).await).await?;
    let granting = policies
        .iter()
        .filter(|p| {
            resources
                .iter()
                .any(|r| text(r, "id") == text(p, "resource_id"))
        })
        .count();
    let body = html! {
        p { "Deleting " b { (text(&site, "name")) } " also deletes:" }
        ul {
            li { (resources.len()) " resource(s) and the " (granting) " policy(ies) that grant them" }
            li { "its gateway tokens: its " (gateways.len()) " gateway(s) can no longer connect" }
        }
        @if !resources.is_empty() {
            p { "Resources: " @for (n, r) in resources.iter().enumerate() { @if n > 0 { ", " } (text(r, "name")) } }
        }
        form method="post" action=(c.href(&format!("/sites/{id}/delete"))) {
            (c.csrf_field())
            button.danger type="submit" { "Delete the site" }
        }
        p { a href=(c.href(&format!("/sites/{id}"))) { "Keep it" } }
    };
    Ok(c.page(StatusCode::OK, "Delete a site", Section::Sites, body))
}

/// `POST /{account}/sites/{id}/delete`.
pub async fn delete(Path((_, id)): Id, Posted { c, .. }: Posted) -> WebResult<Response> {
    deleted(api::sites::remove(State(c.state.clone()), c.admin, Path(id)).await).await?;
    Ok(see_other(&c.href("/sites")))
}
