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

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use jiff::Timestamp;
use maud::{Markup, html};
use postern_policy::{Decision, Denial, Facts, Verdict, evaluate, explain};
use serde::Deserialize;
use uuid::Uuid;

use super::{Console, Section, conditions, data, signed_in, text};
use crate::api;
use crate::channels::loader::read_graph;
use crate::domain::{Actor, Device, DeviceKind, PolicyRecord};
use crate::store::{actors, devices, policies, tokens};
use crate::web::{Shared, WebResult};

#[derive(Deserialize)]
pub struct Ask {
    /// An email, a name or an actor id.
    #[serde(default)]
    who: String,
    #[serde(default)]
    resource: String,
}

/// `GET /{account}/access?who=...&resource=...`.
pub async fn check(
    state: Shared,
    Path(slug): Path<String>,
    Query(ask): Query<Ask>,
    headers: HeaderMap,
) -> WebResult<Response> {
    let c = signed_in!(state, slug, headers);
    let resources = data(api::resources::list(State(c.state.clone()), c.admin).await).await?;
    let form = html! {
        form method="get" action=(c.href("/access")) {
            label for="a-who" { "Who (email, name or id)" }
            input #a-who type="text" name="who" value=(ask.who) required;
            label for="a-resource" { "Resource" }
            select #a-resource name="resource" {
                @for resource in &resources {
                    @let id = text(resource, "id");
                    option value=(id) selected[ask.resource.eq_ignore_ascii_case(id)] { (text(resource, "name")) }
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
    let people = actors::list(&mut tx, account).await?;
    let who = ask.who.trim();
    let found: Vec<&Actor> = match who.parse::<Uuid>() {
        Ok(id) => people.iter().filter(|a| a.id == id).collect(),
        Err(_) => people
            .iter()
            .filter(|a| {
                a.email
                    .as_deref()
                    .is_some_and(|e| e.eq_ignore_ascii_case(who))
                    || a.name.eq_ignore_ascii_case(who)
            })
            .collect(),
    };
    let actor = match found.as_slice() {
        [] => {
            return Ok(Err(format!(
                "Nobody in this account is called or has the email {who:?}."
            )));
        }
        [one] => *one,
        many => {
            return Ok(Err(format!(
                "{} people are called {who:?}; give an email or an id.",
                many.len()
            )));
        }
    };
    let clients: Vec<Device> = devices::list(&mut tx, account, DeviceKind::Client, None)
        .await?
        .into_iter()
        .filter(|d| d.actor_id == Some(actor.id))
        .collect();
    let providers_of = tokens::providers_of_devices(&mut tx, account, actor.id).await?;
    let records: HashMap<Uuid, PolicyRecord> = policies::list(&mut tx, account)
        .await?
        .into_iter()
        .map(|p| (p.id, p))
        .collect();
    let gateways = devices::list(&mut tx, account, DeviceKind::Gateway, None).await?;
    tx.commit().await?;
    let graph = read_graph(&c.state.store, account).await?;
    let Some(resource) = graph.resources.get(&resource_id) else {
        return Ok(Err("There is no such resource.".into()));
    };
    let providers =
        data(api::identity_providers::list(State(c.state.clone()), c.admin).await).await?;
    let provider_names = conditions::provider_names(&providers);
    let groups = data(api::groups::list(State(c.state.clone()), c.admin).await).await?;
    let group_names: HashMap<&str, &str> = groups
        .iter()
        .map(|g| (text(g, "id"), text(g, "name")))
        .collect();
    let gateway_online = gateways
        .iter()
        .filter(|g| g.site_id == Some(resource.site_id.0))
        .any(|g| c.state.gateway_presence(g.id).0);
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
            .get(group.to_string().as_str())
            .copied()
            .unwrap_or("(deleted group)")
            .to_string()
    };
    let provider_name = |asking: &Asking| match asking.provider {
        Some(id) => providers
            .iter()
            .find(|p| text(p, "id") == id.to_string())
            .map_or(id.to_string(), |p| text(p, "name").to_string()),
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
