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
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use jiff::Timestamp;
use maud::{DOCTYPE, Markup, html};
use postern_model::{Condition, ConditionOperator, ConditionProperty};
use uuid::Uuid;

use super::{Form, when};
use crate::api::Admin;
use crate::channels::graph::{AccountGraph, AccountRows};
use crate::domain::{Account, Actor, Device, PolicyRecord, Resource, Role};
use crate::state::AppState;
use crate::store::{devices, groups, identity_providers, policies, resources};
use crate::web::{Shared, WebError, WebResult, cookies, csrf_token, see_other, with_csrf};

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

    /// `Console::check_csrf`'s rule: this browser's token, from a page of
    /// this portal (`Sec-Fetch-Site`, `Origin`).
    fn check_csrf(&self, headers: &HeaderMap, form: &Form) -> WebResult<()> {
        let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
        let cross_site =
            header("sec-fetch-site").is_some_and(|s| s != "same-origin" && s != "none");
        let host = header("host").unwrap_or_default();
        let foreign_origin = header("origin").is_some_and(|origin| {
            origin != "null"
                && url::Url::parse(origin)
                    .ok()
                    .and_then(|u| {
                        Some(match u.port() {
                            Some(port) => format!("{}:{port}", u.host_str()?),
                            None => u.host_str()?.to_string(),
                        })
                    })
                    .is_none_or(|authority| authority != host)
        });
        if !cross_site && !foreign_origin && cookies::csrf_ok(headers, form.get("csrf")) {
            Ok(())
        } else {
            Err(WebError::forbidden(
                "The form expired or did not come from this page; reload the page and try again.",
            ))
        }
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
        let mut response = (StatusCode::OK, Html(markup.into_string())).into_response();
        let headers = response.headers_mut();
        headers.insert("x-frame-options", HeaderValue::from_static("DENY"));
        headers.insert(
            "content-security-policy",
            HeaderValue::from_static(
                "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; \
                 connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
            ),
        );
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
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
                                            (conditions_text(&policy.conditions, &provider_names))
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

/// A policy's conditions in words: "always", or each condition joined by
/// "and" (all must hold).
fn conditions_text(conditions: &[Condition], providers: &HashMap<Uuid, &str>) -> String {
    if conditions.is_empty() {
        return "always".into();
    }
    conditions
        .iter()
        .map(|c| condition_text(c, providers))
        .collect::<Vec<_>>()
        .join(", and ")
}

fn condition_text(condition: &Condition, providers: &HashMap<Uuid, &str>) -> String {
    let not = condition.operator == ConditionOperator::NotIn;
    let values = |each: &dyn Fn(&str) -> String| {
        condition
            .values
            .iter()
            .map(|v| each(v.trim()))
            .collect::<Vec<_>>()
            .join(" or ")
    };
    let plain = |v: &str| v.to_string();
    let (yes, no) = match condition.property {
        ConditionProperty::RemoteIp => ("connecting from", "not connecting from"),
        ConditionProperty::Country => ("connecting from the country", "not connecting from"),
        ConditionProperty::Time => ("only", "except"),
        ConditionProperty::IdentityProvider => ("signed in with", "not signed in with"),
        ConditionProperty::ClientOs => ("on a device running", "not on a device running"),
        ConditionProperty::ClientVerified => {
            let verified = |v: &str| v.eq_ignore_ascii_case("true");
            let allows_verified = condition.values.iter().any(|v| verified(v.trim())) != not;
            let allows_unverified = condition.values.iter().any(|v| !verified(v.trim())) != not;
            return match (allows_verified, allows_unverified) {
                (true, true) => "on any device".into(),
                (true, false) => "on a device an admin has verified".into(),
                (false, true) => "on a device no admin has verified".into(),
                (false, false) => "never".into(),
            };
        }
    };
    let list = match condition.property {
        ConditionProperty::Time => values(&time_text),
        ConditionProperty::IdentityProvider => values(&|v: &str| {
            Uuid::try_parse(v)
                .ok()
                .and_then(|id| providers.get(&id))
                .map_or_else(|| "a removed provider".to_string(), |n| n.to_string())
        }),
        ConditionProperty::Country => values(&|v: &str| v.to_ascii_uppercase()),
        _ => values(&plain),
    };
    format!("{} {list}", if not { no } else { yes })
}

/// `MTWRF/09:00-17:00/Europe/Berlin` as "Mon, Tue, Wed, Thu, Fri
/// 09:00-17:00 (Europe/Berlin)"; anything else as it is.
fn time_text(window: &str) -> String {
    let mut parts = window.splitn(3, '/');
    let (Some(days), Some(times), Some(zone)) = (parts.next(), parts.next(), parts.next()) else {
        return window.to_string();
    };
    let names: Option<Vec<&str>> = days
        .chars()
        .map(|d| match d.to_ascii_uppercase() {
            'M' => Some("Mon"),
            'T' => Some("Tue"),
            'W' => Some("Wed"),
            'R' => Some("Thu"),
            'F' => Some("Fri"),
            'S' => Some("Sat"),
            'U' => Some("Sun"),
            _ => None,
        })
        .collect();
    match names {
        Some(names) => format!("{} {times} ({zone})", names.join(", ")),
        None => window.to_string(),
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn condition(property: &str, operator: &str, values: &[&str]) -> Condition {
        serde_json::from_value(
            serde_json::json!({"property": property, "operator": operator, "values": values}),
        )
        .unwrap()
    }

    #[test]
    fn conditions_read_as_words() {
        let okta = Uuid::from_u128(7);
        let providers = HashMap::from([(okta, "Okta")]);
        let words = |c: &[Condition]| conditions_text(c, &providers);
        assert_eq!(words(&[]), "always");
        assert_eq!(
            words(&[
                condition(
                    "identity_provider",
                    "in",
                    &[&okta.to_string().to_uppercase()]
                ),
                condition("remote_ip", "not_in", &["10.0.0.0/8", "192.0.2.1"]),
            ]),
            "signed in with Okta, and not connecting from 10.0.0.0/8 or 192.0.2.1"
        );
        assert_eq!(
            words(&[condition("time", "not_in", &["SU/00:00-24:00/UTC"])]),
            "except Sat, Sun 00:00-24:00 (UTC)"
        );
        for (operator, values, expected) in [
            ("in", &["true"][..], "on a device an admin has verified"),
            ("not_in", &["true"][..], "on a device no admin has verified"),
            ("in", &["true", "false"][..], "on any device"),
            ("not_in", &["true", "false"][..], "never"),
        ] {
            assert_eq!(
                words(&[condition("client_verified", operator, values)]),
                expected
            );
        }
        assert_eq!(
            words(&[condition("client_os", "in", &["Linux", "macOS"])]),
            "on a device running Linux or macOS"
        );
    }
}
