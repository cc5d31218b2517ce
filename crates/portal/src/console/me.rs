//! The page of a signed-in user who is not an admin: their devices and the resources they may use.
//!
//! `/{account}/me` is the one page a user's web session opens (an admin's
//! too, for their own devices). It is no part of the admin console: its
//! session is `web_user`'s (any enabled user or admin of the account), never
//! `Console::of`'s, and it shows and changes only what is the user's own.
//! What it lists as usable is what the channel hub offers the user's
//! clients: the same `AccountGraph` built from the user's groups, policies
//! and their resources. Signing a device out revokes its client token
//! through the API's own revoke handler, so the channel closes and the
//! audit log records it exactly as an admin's revoke.

use std::collections::HashMap;
use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use axum::routing::get;
use jiff::Timestamp;
use maud::{DOCTYPE, Markup, html};
use uuid::Uuid;

use super::{Form, when};
use crate::api::Admin;
use crate::channels::graph::{AccountGraph, AccountRows};
use crate::domain::{Account, Actor, Device, PolicyRecord, Resource, Role};
use crate::state::AppState;
use crate::store::{devices, groups, identity_providers, policies, resources};
use crate::web::{Shared, WebError, WebResult, csrf_token, see_other, with_csrf};

/// Devices per page.
const DEVICES_PAGE: usize = 50;
/// Resources per page.
const RESOURCES_PAGE: usize = 100;

/// This part's routes.
pub fn routes() -> Router<Arc<AppState>> {
    Router::new().route("/{account}/me", get(show)).route(
        "/{account}/me/devices/{id}/sign_out",
        get(confirm_sign_out).post(sign_out),
    )
}

/// A request of a signed-in user (or admin) of the account its path names.
struct Me {
    state: Arc<AppState>,
    account: Account,
    actor: Actor,
    /// The web session's token.
    token_id: Uuid,
    csrf: String,
    fresh_csrf: bool,
}

impl Me {
    /// The signed-in user, or the answer to give instead: the sign-in page
    /// for a browser without a live session of an enabled user of this
    /// account.
    async fn of(
        state: &Arc<AppState>,
        slug: &str,
        headers: &HeaderMap,
    ) -> WebResult<Result<Me, Response>> {
        let account = crate::web::account(state, slug).await?;
        let Some((actor, token_id)) =
            crate::web::session::web_user(state, &account, headers).await?
        else {
            return Ok(Err(see_other(&format!("/{}/sign_in", account.slug))));
        };
        // The console's limit per session holds here too.
        if let Err(wait) = state.api_limiter.check(token_id, std::time::Instant::now()) {
            return Err(WebError::new(
                StatusCode::TOO_MANY_REQUESTS,
                format!(
                    "Too many requests; wait {} s and reload.",
                    wait.as_secs().max(1)
                ),
            ));
        }
        let (csrf, fresh_csrf) = csrf_token(headers)?;
        Ok(Ok(Me {
            state: Arc::clone(state),
            account,
            actor,
            token_id,
            csrf,
            fresh_csrf,
        }))
    }

    fn href(&self, path: &str) -> String {
        format!("/{}{path}", self.account.slug)
    }

    fn check_csrf(&self, headers: &HeaderMap, form: &Form) -> WebResult<()> {
        super::check_form(headers, form)
    }

    fn csrf_field(&self) -> Markup {
        html! { input type="hidden" name="csrf" value=(self.csrf); }
    }

    /// A whole page: who is signed in, sign-out, `body`; the console's
    /// headers (no framing, no caching, only the portal's own script).
    fn page(&self, title: &str, body: Markup) -> Response {
        let markup = html! {
            (DOCTYPE)
            html lang="en" {
                head {
                    meta charset="utf-8";
                    meta name="viewport" content="width=device-width, initial-scale=1";
                    title { (title) " - Postern" }
                    link rel="stylesheet" href="/_assets/console.css";
                }
                body {
                    nav.side aria-label="Account" {
                        p.brand { "Postern" }
                        p.account { (self.account.name) }
                        ul {
                            li { a href=(self.href("/me")) aria-current="page" { "Your devices and access" } }
                            @if self.actor.role == Role::Admin {
                                li { a href=(self.href("/")) { "Admin console" } }
                            }
                        }
                        form method="post" action=(self.href("/sign_out")) {
                            (self.csrf_field())
                            p.muted {
                                (self.actor.name)
                                @if let Some(email) = &self.actor.email { br; (email) }
                            }
                            button.secondary type="submit" { "Sign out" }
                        }
                    }
                    main id="main" {
                        h1 { (title) }
                        (body)
                    }
                }
            }
        };
        let response = super::respond(StatusCode::OK, markup);
        with_csrf(
            &self.state,
            &self.account.slug,
            &self.csrf,
            self.fresh_csrf,
            response,
        )
    }
}

macro_rules! signed_in_user {
    ($state:expr, $slug:expr, $headers:expr) => {
        match Me::of(&$state.0, &$slug, &$headers).await? {
            Ok(me) => me,
            Err(elsewhere) => return Ok(elsewhere),
        }
    };
}

/// A page number from the query (`0` when absent or not a number).
fn page_number(query: &HashMap<String, String>, name: &str) -> usize {
    query
        .get(name)
        .and_then(|n| n.parse::<usize>().ok())
        .unwrap_or(0)
        .min(100_000)
}

/// What one resource of the user's looks like on the page.
struct Usable<'a> {
    resource: &'a Resource,
    /// The policies that grant it, each with its group's name.
    through: Vec<(&'a PolicyRecord, &'a str)>,
}

/// `GET /{account}/me`.
async fn show(
    state: Shared,
    Path(slug): Path<String>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> WebResult<Response> {
    let me = signed_in_user!(state, slug, headers);
    let account = me.account.id;
    let actor = me.actor.id;
    let device_page = page_number(&query, "devices");
    let resource_page = page_number(&query, "resources");
    let now = Timestamp::now().as_millisecond();
    let mut tx = me.state.store.read().await?;
    let mut own = devices::of_actor(
        &mut tx,
        account,
        actor,
        now,
        DEVICES_PAGE as i64 + 1,
        (device_page * DEVICES_PAGE) as i64,
    )
    .await?;
    let (group_rows, memberships) = groups::of_actor(&mut tx, account, actor).await?;
    let policy_rows = policies::of_actor(&mut tx, account, actor).await?;
    let resource_rows = resources::of_actor(&mut tx, account, actor).await?;
    let providers = identity_providers::list(&mut tx, account).await?;
    tx.commit().await?;
    let more_devices = own.len() > DEVICES_PAGE;
    own.truncate(DEVICES_PAGE);

    // What the hub offers this user's clients, from the same graph.
    let graph = AccountGraph::build(AccountRows {
        actors: vec![me.actor.clone()],
        groups: group_rows.clone(),
        memberships,
        resources: resource_rows.clone(),
        policies: policy_rows.clone(),
        search_domain: None,
    });
    let mine = graph.groups(actor);
    let group_names: HashMap<Uuid, &str> =
        group_rows.iter().map(|g| (g.id, g.name.as_str())).collect();
    let provider_names: HashMap<Uuid, &str> =
        providers.iter().map(|p| (p.id, p.name.as_str())).collect();
    let visible: std::collections::HashSet<Uuid> =
        graph.visible(actor).into_iter().map(|r| r.id.0).collect();
    // By name (the store's order); each with the enabled policies of the
    // user's groups that grant it.
    let usable: Vec<Usable> = resource_rows
        .iter()
        .filter(|r| visible.contains(&r.id))
        .map(|resource| Usable {
            resource,
            through: policy_rows
                .iter()
                .filter(|p| {
                    p.resource_id == resource.id
                        && mine.contains(&p.group_id)
                        && graph.policies.get(p.id).is_some_and(|p| !p.disabled)
                })
                .map(|p| (p, group_names.get(&p.group_id).copied().unwrap_or_default()))
                .collect(),
        })
        .collect();
    let more_resources = usable.len() > (resource_page + 1) * RESOURCES_PAGE;
    let shown: Vec<&Usable> = usable
        .iter()
        .skip(resource_page * RESOURCES_PAGE)
        .take(RESOURCES_PAGE)
        .collect();

    let pages = |name: &str, page: usize, more: bool| {
        let link = |n: usize| me.href(&format!("/me?{name}={n}"));
        html! {
            @if page > 0 || more {
                p {
                    @if page > 0 { a href=(link(page - 1)) { "Previous page" } " " }
                    @if more { a href=(link(page + 1)) { "Next page" } }
                }
            }
        }
    };
    let body = html! {
        p {
            "Signed in as " b { (me.actor.name) }
            @if let Some(email) = &me.actor.email { " (" (email) ")" }
            "."
        }
        h2 { "Your devices" }
        @if own.is_empty() && device_page == 0 {
            p.muted { "No device of yours has connected yet. To connect one, run " code { "postern client sign-in" } " on it." }
        } @else {
            table {
                thead { tr { th { "Name" } th { "System" } th { "Version" } th { "Last seen" } th { "Connection" } th { "Sign-in" } th { "Action" } } }
                tbody {
                    @for (device, token) in &own {
                        tr {
                            td { (device.name) }
                            td { (device.os.as_deref().unwrap_or("unknown")) }
                            td { (device.version.as_deref().unwrap_or("unknown")) }
                            td { (seen(device)) }
                            td {
                                @if me.state.client_online(device.id) { span.online { "online" } }
                                @else { span.offline { "offline" } }
                            }
                            td { @if token.is_some() { "signed in" } @else { span.muted { "signed out" } } }
                            td {
                                @if token.is_some() {
                                    a href=(me.href(&format!("/me/devices/{}/sign_out", device.id)))
                                        aria-label=(format!("Sign {} out", device.name)) { "Sign this device out…" }
                                }
                            }
                        }
                    }
                }
            }
            (pages("devices", device_page, more_devices))
        }
        h2 { "What you may use" }
        @if usable.is_empty() {
            p.muted { "No resource is open to you yet: an admin grants access to your groups with policies." }
        } @else {
            p.muted { "Reached through the policies of your groups. Where a policy has conditions, your device is let in only while they hold." }
            table {
                thead { tr { th { "Resource" } th { "Address" } th { "Traffic" } th { "Granted by" } } }
                tbody {
                    @for usable in &shown {
                        @let r = usable.resource;
                        tr {
                            td { (r.name) @if let Some(d) = &r.address_description { br; span.muted { (d) } } }
                            td { code { (r.address.as_deref().unwrap_or("the internet")) } }
                            td { (filters_text(r)) }
                            td {
                                ul.plain {
                                    @for (policy, group) in &usable.through {
                                        li {
                                            "Group " b { (group) } ": "
                                            (super::conditions::describe_all(&policy.conditions, &provider_names))
                                        }
                                    }
                                }
                            }
                        }
                    }
                }
            }
            (pages("resources", resource_page, more_resources))
        }
    };
    Ok(me.page("Your devices and access", body))
}

fn seen(device: &Device) -> String {
    match &device.last_seen_at {
        Some(at) => when(&serde_json::Value::String(at.to_string())),
        None => "never".into(),
    }
}

/// `tcp/22, udp, icmp`; no filters: all traffic.
fn filters_text(resource: &Resource) -> String {
    if resource.filters.is_empty() {
        return "all traffic".into();
    }
    resource
        .filters
        .iter()
        .map(|f| {
            let protocol = serde_json::to_value(f.protocol)
                .ok()
                .and_then(|v| v.as_str().map(str::to_string))
                .unwrap_or_default();
            match &f.ports {
                Some(ports) => format!("{protocol}/{ports}"),
                None => protocol,
            }
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// The user's own client device named by the path, with its live token;
/// 404 for a malformed id, a missing device or anyone else's.
async fn own_device(me: &Me, id: &str) -> WebResult<(Device, Option<Uuid>)> {
    let missing = || WebError::new(StatusCode::NOT_FOUND, "You have no such device.");
    let id = Uuid::try_parse(id).map_err(|_| missing())?;
    let mut tx = me.state.store.read().await?;
    let found = devices::one_of_actor(
        &mut tx,
        me.account.id,
        me.actor.id,
        id,
        Timestamp::now().as_millisecond(),
    )
    .await?;
    tx.commit().await?;
    found.ok_or_else(missing)
}

/// `GET /{account}/me/devices/{id}/sign_out`: what signing out does.
async fn confirm_sign_out(
    state: Shared,
    Path((slug, id)): Path<(String, String)>,
    headers: HeaderMap,
) -> WebResult<Response> {
    let me = signed_in_user!(state, slug, headers);
    let (device, token) = own_device(&me, &id).await?;
    let Some(token) = token else {
        let body = html! {
            p { b { (device.name) } " is already signed out: it cannot connect until someone runs " code { "postern client sign-in" } " on it." }
            p { a href=(me.href("/me")) { "Back to your devices" } }
        };
        return Ok(me.page("Sign a device out", body));
    };
    let mut tx = me.state.store.read().await?;
    let others = devices::others_with_token(&mut tx, me.account.id, token, device.id).await?;
    tx.commit().await?;
    let body = html! {
        p {
            "Sign " b { (device.name) } " out? Its sign-in is revoked at once: if it is connected it is disconnected, "
            "and it cannot connect again until someone runs " code { "postern client sign-in" } " on it."
        }
        @if !others.is_empty() {
            p {
                "The same sign-in is used by " (others.len()) " other device(s) of yours, which are signed out with it: "
                (others.join(", "))
            }
        }
        form method="post" action=(me.href(&format!("/me/devices/{}/sign_out", device.id))) {
            (me.csrf_field())
            button.danger type="submit" { "Sign this device out" }
        }
        p { a href=(me.href("/me")) { "Keep it signed in" } }
    };
    Ok(me.page("Sign a device out", body))
}

/// `POST /{account}/me/devices/{id}/sign_out`: revokes the device's client
/// token, as `DELETE /api/v1/tokens/{id}` does.
async fn sign_out(
    state: Shared,
    Path((slug, id)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> WebResult<Response> {
    let me = signed_in_user!(state, slug, headers);
    me.check_csrf(&headers, &Form::parse(&body))?;
    let (_, token) = own_device(&me, &id).await?;
    if let Some(token) = token {
        revoke_own(&me, token).await?;
    }
    Ok(see_other(&me.href("/me")))
}

/// Revokes `token`, a live client token of the signed-in user's own device
/// (checked by `own_device`), through the API's revoke handler: the same
/// store change, audit entry (`token.revoke`, by this user and session) and
/// channel close. The handler takes its caller as an `Admin` value, which it
/// uses only for the account and the audit author; the value is made here
/// for this one call and never leaves this function.
async fn revoke_own(me: &Me, token: Uuid) -> WebResult<()> {
    let caller = Admin {
        account_id: me.account.id,
        actor_id: me.actor.id,
        token_id: me.token_id,
    };
    super::deleted(
        crate::api::tokens::revoke(State(me.state.clone()), caller, Path(token.to_string())).await,
    )
    .await
}
