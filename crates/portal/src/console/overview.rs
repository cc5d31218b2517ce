//! The overview (`/{account}/`): what is connected now, the latest
//! sign-ins and the latest changes, with who made them.

use std::collections::HashMap;

use axum::extract::Path;
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use maud::html;
use uuid::Uuid;

use super::{Console, Section};
use crate::domain::DeviceKind;
use crate::store::{actors, audit, devices, directories, logs};
use crate::web::{Shared, WebResult};

/// How many sign-ins and changes the overview lists.
const RECENT: i64 = 10;

/// `GET /{account}/`.
pub async fn show(
    state: Shared,
    Path(slug): Path<String>,
    headers: HeaderMap,
) -> WebResult<Response> {
    let c = match Console::of(&state.0, &slug, &headers).await? {
        Ok(c) => c,
        Err(redirect) => return Ok(redirect),
    };
    let account = c.account.id;
    let mut tx = c.state.store.read().await?;
    let gateways = devices::list(&mut tx, account, DeviceKind::Gateway, None).await?;
    let clients = devices::list(&mut tx, account, DeviceKind::Client, None).await?;
    let sign_ins = logs::sessions(&mut tx, account, None, RECENT).await?;
    let changes = audit::list(&mut tx, account, None, RECENT).await?;
    let people = actors::list(&mut tx, account).await?;
    let sources = directories::list(&mut tx, account).await?;
    tx.commit().await?;
    let names: HashMap<Uuid, &str> = people.iter().map(|a| (a.id, a.name.as_str())).collect();
    let directory_names: HashMap<Uuid, &str> =
        sources.iter().map(|d| (d.id, d.name.as_str())).collect();
    let who = |actor: Option<Uuid>, directory: Option<Uuid>| -> String {
        match (actor, directory) {
            (Some(id), _) => names
                .get(&id)
                .map_or_else(|| id.to_string(), |n| n.to_string()),
            (None, Some(id)) => format!(
                "directory {}",
                directory_names.get(&id).copied().unwrap_or("(deleted)")
            ),
            (None, None) => "the portal".to_string(),
        }
    };
    let gateways_online = gateways
        .iter()
        .filter(|g| c.state.gateway_presence(g.id).0)
        .count();
    let clients_online = clients
        .iter()
        .filter(|d| c.state.client_online(d.id))
        .count();
    let body = html! {
        div.cards {
            div.card { span.number { (gateways_online) } span.label { "gateways online of " (gateways.len()) } }
            div.card { span.number { (clients_online) } span.label { "clients online of " (clients.len()) } }
            div.card { span.number { (people.len()) } span.label { "users, admins and service accounts" } }
        }
        h2 { "Recent sign-ins" }
        @if sign_ins.is_empty() {
            p.muted { "Nobody has signed in yet." }
        } @else {
            table {
                thead { tr { th { "When" } th { "Who" } th { "How" } th { "From" } } }
                tbody {
                    @for entry in &sign_ins {
                        tr {
                            td { (entry.at.strftime("%Y-%m-%d %H:%M:%S UTC")) }
                            td { (who(entry.actor_id, None)) }
                            td { (entry.kind.replace('_', " ")) }
                            td { (entry.remote_ip.as_deref().unwrap_or("")) }
                        }
                    }
                }
            }
        }
        h2 { "Recent changes" }
        @if changes.is_empty() {
            p.muted { "No changes yet." }
        } @else {
            table {
                thead { tr { th { "When" } th { "Who" } th { "What" } th { "Object" } } }
                tbody {
                    @for entry in &changes {
                        tr {
                            td { (entry.at.strftime("%Y-%m-%d %H:%M:%S UTC")) }
                            td { (who(entry.actor_id, entry.directory_id)) }
                            td { code { (entry.action) } }
                            td { code { (entry.object_id) } }
                        }
                    }
                }
            }
        }
    };
    Ok(c.page(StatusCode::OK, "Overview", Section::Overview, body))
}
