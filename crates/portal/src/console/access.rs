//! "Why can't alice reach web?": the access check. For one person and one
//! resource it shows the policy engine's decision for each of their
//! clients, as the client would ask now (its OS, verification, last
//! address and country, the identity provider of the newest sign-in), every
//! policy of the resource with each condition's answer, and what else stands
//! in the way (a disabled account, no gateway online). The decision is the
//! engine's own (`postern_policy::evaluate` over the graph the hub builds),
//! not a second implementation.

use std::collections::HashMap;
use std::net::IpAddr;

use axum::extract::Query;
use axum::http::StatusCode;
use axum::response::Response;
use jiff::Timestamp;
use maud::{Markup, html};
use postern_policy::{Decision, Denial, Facts, Verdict, evaluate, explain};
use serde::Deserialize;
use uuid::Uuid;

use super::{Console, Section, conditions};
use crate::channels::graph::{AccountGraph, AccountRows};
use crate::domain::{Actor, Device, DeviceKind, PolicyRecord};
use crate::store::{actors, devices, groups, identity_providers, policies, resources, tokens};
use crate::web::WebResult;

/// Clients of the person shown (a column each).
const CLIENTS: i64 = 10;

#[derive(Deserialize)]
pub struct Ask {
    /// An email, a name or an actor id.
    #[serde(default)]
    who: String,
    #[serde(default)]
    resource: String,
}

/// `GET /{account}/access?who=...&resource=...`.
pub async fn check(c: Console, Query(ask): Query<Ask>) -> WebResult<Response> {
    let mut tx = c.state.store.read().await?;
    let resources = resources::list(&mut tx, c.account.id).await?;
    tx.commit().await?;
    let form = html! {
        form method="get" action=(c.href("/access")) {
            label for="a-who" { "Who (email, name or id)" }
            input #a-who type="text" name="who" value=(ask.who) required;
            label for="a-resource" { "Resource" }
            select #a-resource name="resource" {
                @for resource in &resources {
                    @let id = resource.id.to_string();
                    option value=(id) selected[ask.resource.eq_ignore_ascii_case(&id)] { (resource.name) }
                }
            }
            div { button type="submit" { "Check" } }
        }
    };
    let (status, answer) = if ask.who.trim().is_empty() {
        (StatusCode::OK, html! {})
    } else {
        match answer(&c, &ask).await? {
            Ok(markup) => (StatusCode::OK, markup),
            Err(message) => (
                StatusCode::NOT_FOUND,
                html! { p.error role="alert" { (message) } },
            ),
        }
    };
    let body = html! {
        p { "What the policy engine decides when this person's clients ask for the resource now, and why." }
        (form)
        (answer)
    };
    Ok(c.page(status, "Access check", Section::Access, body))
}

/// The facts one client would ask with now.
struct Asking {
    label: String,
    provider: Option<Uuid>,
    os: Option<String>,
    verified: bool,
    ip: Option<IpAddr>,
    country: Option<String>,
}

async fn answer(c: &Console, ask: &Ask) -> WebResult<Result<Markup, String>> {
    let account = c.account.id;
    let Ok(resource_id) = ask.resource.parse::<Uuid>() else {
        return Ok(Err("Choose a resource.".into()));
    };
    let now = Timestamp::now();
    let mut tx = c.state.store.read().await?;
    let who = ask.who.trim();
    let found: Vec<Actor> = match who.parse::<Uuid>() {
        Ok(id) => actors::get(&mut tx, account, id)
            .await?
            .into_iter()
            .collect(),
        Err(_) => match actors::by_email(&mut tx, account, &who.to_lowercase()).await? {
            Some(actor) => vec![actor],
            None => actors::named(&mut tx, account, who, 2).await?,
        },
    };
    let actor = match found.as_slice() {
        [] => {
            return Ok(Err(format!(
                "Nobody in this account is called or has the email {who:?}."
            )));
        }
        [one] => one.clone(),
        _ => {
            return Ok(Err(format!(
                "Several people are called {who:?}; give an email or an id."
            )));
        }
    };
    let Some(resource_row) = resources::get(&mut tx, account, resource_id).await? else {
        tx.commit().await?;
        return Ok(Err("There is no such resource.".into()));
    };
    // The first clients of the person: a column each.
    let mut clients: Vec<Device> = devices::of_actor(
        &mut tx,
        account,
        actor.id,
        now.as_millisecond(),
        CLIENTS + 1,
        0,
    )
    .await?
    .into_iter()
    .map(|(device, _)| device)
    .collect();
    let more_clients = clients.len() > CLIENTS as usize;
    clients.truncate(CLIENTS as usize);
    let providers_of = tokens::providers_of_devices(&mut tx, account, actor.id).await?;
    let resource_policies = policies::of_resource(&mut tx, account, resource_id).await?;
    let all_groups = groups::list(&mut tx, account).await?;
    let (_, memberships) = groups::of_actor(&mut tx, account, actor.id).await?;
    let gateways = devices::list(
        &mut tx,
        account,
        DeviceKind::Gateway,
        Some(resource_row.site_id),
    )
    .await?;
    let providers = identity_providers::list(&mut tx, account).await?;
    tx.commit().await?;
    let records: HashMap<Uuid, PolicyRecord> = resource_policies
        .iter()
        .map(|p| (p.id, p.clone()))
        .collect();
    // The hub's own graph, of this person and this resource only: the
    // decision is the engine's, on what the hub would hold.
    let graph = AccountGraph::build(AccountRows {
        actors: vec![actor.clone()],
        groups: all_groups.clone(),
        memberships,
        resources: vec![resource_row],
        policies: resource_policies,
        search_domain: None,
    });
    let Some(resource) = graph.resources.get(&resource_id) else {
        return Ok(Err("There is no such resource.".into()));
    };
    let provider_names: HashMap<Uuid, String> =
        providers.iter().map(|p| (p.id, p.name.clone())).collect();
    let group_names: HashMap<String, &str> = all_groups
        .iter()
        .map(|g| (g.id.to_string(), g.name.as_str()))
        .collect();
    let gateway_online = gateways.iter().any(|g| c.state.gateway_presence(g.id).0);
    let member_of = graph.groups(actor.id);
    let askers: Vec<Asking> = if clients.is_empty() {
        vec![Asking {
            label: "a new client (none yet): unverified, OS and address unknown".into(),
            provider: None,
            os: None,
            verified: false,
            ip: None,
            country: None,
        }]
    } else {
        clients
            .iter()
            .map(|d| {
                let ip = d.last_seen_ip.as_deref().and_then(|ip| ip.parse().ok());
                Asking {
                    label: d.name.clone(),
                    provider: providers_of.get(&d.id).copied().flatten(),
                    os: d.os.clone(),
                    verified: d.verified,
                    ip,
                    country: ip.and_then(|ip| c.state.geoip.as_ref()?.country(ip)),
                }
            })
            .collect()
    };
    let facts = |asking| asking_facts(asking, now);
    let name = |group: Uuid| {
        group_names
            .get(&group.to_string())
            .copied()
            .unwrap_or("(deleted group)")
            .to_string()
    };
    let provider_name = |asking: &Asking| match asking.provider {
        Some(id) => provider_names
            .get(&id)
            .cloned()
            .unwrap_or_else(|| id.to_string()),
        None => "no identity provider".to_string(),
    };
    let markup = html! {
        h2 { (actor.name) " → " (resource.name) }
        @if actor.disabled {
            p.error role="alert" { (actor.name) " is disabled: no access to anything, whatever the policies say." }
        }
        @if !gateway_online {
            p.error role="alert" { "No gateway of the resource's site is online: even an allowed client is told the resource is offline." }
        }
        @if more_clients {
            p.muted { "The first " (CLIENTS) " of their clients are shown; see all on " a href=(c.href(&format!("/clients?owner={}", actor.id))) { "the clients page" } "." }
        }
        p { (actor.name) " is in: "
            @for (i, group) in member_of.iter().enumerate() { @if i > 0 { ", " } b { (name(*group)) } }
            "." }
        table {
            thead { tr { th { "Client" } th { "Asks with" } th { "Decision" } } }
            tbody {
                @for asking in &askers {
                    @let decision = evaluate(graph.policies.iter(), member_of, resource_id, &facts(asking));
                    tr {
                        td { (asking.label) }
                        td { (facts_in_words(asking)) ", " (provider_name(asking)) }
                        td { (decision_in_words(&decision, &records, &name, actor.disabled)) }
                    }
                }
            }
        }
        h3 { "The resource's policies" }
        @let verdicts: Vec<Vec<Verdict>> = askers.iter().map(|a| explain(graph.policies.iter(), member_of, resource_id, &facts(a))).collect();
        @if verdicts.first().is_none_or(Vec::is_empty) {
            p { "No policy names " (resource.name) ": nobody reaches it. Add one on the " a href=(c.href("/policies")) { "policies page" } "." }
        } @else {
            table {
                thead { tr { th { "Policy" } th { "Group" } th { "Condition" } @for asking in &askers { th { (asking.label) } } } }
                tbody {
                    @for (index, verdict) in verdicts[0].iter().enumerate() {
                        @let policy = verdict.policy;
                        @let record = records.get(&policy.id);
                        @let rows = record.map_or(0, |r| r.conditions.len());
                        tr {
                            td { a href=(c.href(&format!("/policies/{}", policy.id))) { "Edit" } @if policy.disabled { " " span.offline { "disabled" } } }
                            td { (name(policy.group_id)) @if verdict.member { " " span.online { "member" } } @else { " " span.offline { "not a member" } } }
                            td { @if rows == 0 { "none" } @else { (conditions::describe(&record.expect("rows > 0").conditions[0], &provider_names)) } }
                            @for answers in &verdicts { td { (holds(answers[index].conditions.first().copied())) } }
                        }
                        @for row in 1..rows {
                            tr {
                                td {} td {}
                                td { (conditions::describe(&record.expect("rows > 0").conditions[row], &provider_names)) }
                                @for answers in &verdicts { td { (holds(answers[index].conditions.get(row).copied())) } }
                            }
                        }
                    }
                }
            }
        }
    };
    Ok(Ok(markup))
}

fn holds(answer: Option<bool>) -> Markup {
    match answer {
        Some(true) => html! { span.online { "holds" } },
        Some(false) => html! { span.offline { "fails" } },
        None => html! { span.muted { "-" } },
    }
}

fn facts_in_words(asking: &Asking) -> String {
    format!(
        "{}, {}, from {}{}",
        asking.os.as_deref().unwrap_or("OS unknown"),
        if asking.verified {
            "verified"
        } else {
            "not verified"
        },
        asking
            .ip
            .map_or_else(|| "an unknown address".to_string(), |ip| ip.to_string()),
        asking
            .country
            .as_deref()
            .map(|c| format!(" ({c})"))
            .unwrap_or_default(),
    )
}

fn decision_in_words(
    decision: &Decision,
    records: &HashMap<Uuid, PolicyRecord>,
    group_name: &dyn Fn(Uuid) -> String,
    disabled: bool,
) -> Markup {
    if disabled {
        return html! { span.offline { "denied" } ": the account is disabled" };
    }
    match decision {
        Decision::Allow {
            policy_id,
            expires_at,
        } => html! {
            span.online { "allowed" }
            @if let Some(record) = records.get(policy_id) { " through the policy for " (group_name(record.group_id)) }
            @if let Some(until) = expires_at { ", until " (until.strftime("%Y-%m-%d %H:%M UTC")) }
        },
        Decision::Deny(Denial::NoPolicy) => html! {
            span.offline { "denied" } ": no enabled policy links any of their groups to the resource"
        },
        Decision::Deny(Denial::Conditions(properties)) => html! {
            span.offline { "denied" } ": conditions not met: "
            (properties.iter().map(|p| p.as_str().replace('_', " ")).collect::<Vec<_>>().join(", "))
        },
    }
}

fn asking_facts(asking: &Asking, now: Timestamp) -> Facts<'_> {
    Facts {
        now,
        remote_ip: asking.ip,
        country: asking.country.as_deref(),
        identity_provider: asking.provider,
        client_verified: asking.verified,
        client_os: asking.os.as_deref(),
    }
}
