//! The overview (`/{account}/`): what is connected now, the latest refused
//! access requests and why, the latest sign-ins and changes with who made
//! them. Presence and denials are live: the page listens on
//! `/{account}/live` (server-sent events, htmx's SSE extension) and the
//! server pushes new denial rows and fresh counts as they happen.
//!
//! Counts come from SQL and the presence tables, names are looked up only
//! for the rows shown: the page costs the same with 10 or 10,000 clients.

use std::collections::HashMap;
use std::convert::Infallible;
use std::time::Duration;

use axum::extract::{Path, Query};
use axum::http::{HeaderMap, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use maud::{Markup, html};
use postern_model::protocol::DenyReason;
use serde::Deserialize;
use uuid::Uuid;

use super::{Console, Section};
use crate::activity::Denial;
use crate::domain::DeviceKind;
use crate::state::AppState;
use crate::store::{Conn, StoreError, actors, audit, devices, directories, logs, resources};
use crate::web::{Shared, WebResult};

/// How many sign-ins and changes the overview lists.
const RECENT: i64 = 10;
/// Denial rows one push carries at most (a client hammering a forbidden
/// resource must not flood the page).
const PUSHED: usize = 20;
/// The least time between two pushes.
const PUSH_GAP: Duration = Duration::from_millis(100);
/// How often a live page's session is checked again.
const RECHECK: Duration = Duration::from_secs(10);

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
    let denials = c.state.activity().denials_after(account, 0);
    let newest = denials.first().map_or(0, |d| d.seq);
    let mut tx = c.state.store.read().await?;
    let presence = presence(&c.state, &mut tx, account).await?;
    let denial_rows = denial_rows(&mut tx, account, &denials, &mut Names::default()).await?;
    let sign_ins = logs::sessions(&mut tx, account, None, RECENT).await?;
    let changes = audit::list(&mut tx, account, None, RECENT).await?;
    let mut names = Names::default();
    for id in sign_ins.iter().filter_map(|e| e.actor_id) {
        names.actor(&mut tx, account, id).await?;
    }
    for id in changes.iter().filter_map(|e| e.actor_id) {
        names.actor(&mut tx, account, id).await?;
    }
    let sources = directories::list(&mut tx, account).await?;
    tx.commit().await?;
    let directory_names: HashMap<Uuid, &str> =
        sources.iter().map(|d| (d.id, d.name.as_str())).collect();
    let who = |actor: Option<Uuid>, directory: Option<Uuid>| -> String {
        match (actor, directory) {
            (Some(id), _) => names
                .actors
                .get(&id)
                .cloned()
                .unwrap_or_else(|| id.to_string()),
            (None, Some(id)) => format!(
                "directory {}",
                directory_names.get(&id).copied().unwrap_or("(deleted)")
            ),
            (None, None) => "the portal".to_string(),
        }
    };
    let body = html! {
        div hx-ext="sse" sse-connect=(c.href(&format!("/live?after={newest}"))) {
            div #presence sse-swap="presence" aria-live="polite" { (presence) }
            h2 { "Refused access" }
            p.muted { "The latest requests the policies refused, newest first, as they happen (kept in memory on this portal node)." }
            table {
                thead { tr { th { "When" } th { "Who" } th { "Client" } th { "Resource" } th { "Why" } } }
                tbody #denials sse-swap="denial" hx-swap="afterbegin" {
                    (denial_rows)
                }
            }
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

/// The counts: gateways and clients online of all, people.
async fn presence(state: &AppState, tx: &mut Conn, account: Uuid) -> Result<Markup, StoreError> {
    let gateways = devices::ids(tx, account, DeviceKind::Gateway).await?;
    let clients = devices::ids(tx, account, DeviceKind::Client).await?;
    let people = actors::count(tx, account, "").await?;
    let online = state.online();
    let gateways_online = gateways.iter().filter(|g| online.gateway(**g).0).count();
    let clients_online = online.clients_among(&clients);
    Ok(html! {
        div.cards {
            div.card { span.number { (gateways_online) } span.label { "gateways online of " (gateways.len()) } }
            div.card { span.number { (clients_online) } span.label { "clients online of " (clients.len()) } }
            div.card { span.number { (people) } span.label { "users, admins and service accounts" } }
        }
    })
}

/// Names of the objects rows show, each read once.
#[derive(Default)]
struct Names {
    actors: HashMap<Uuid, String>,
    clients: HashMap<Uuid, String>,
    resources: HashMap<Uuid, String>,
}

impl Names {
    async fn actor(
        &mut self,
        tx: &mut Conn,
        account: Uuid,
        id: Uuid,
    ) -> Result<String, StoreError> {
        if let Some(name) = self.actors.get(&id) {
            return Ok(name.clone());
        }
        let name = actors::get(tx, account, id)
            .await?
            .map_or_else(|| "(deleted)".to_string(), |a| a.name);
        self.actors.insert(id, name.clone());
        Ok(name)
    }

    async fn client(
        &mut self,
        tx: &mut Conn,
        account: Uuid,
        id: Uuid,
    ) -> Result<String, StoreError> {
        if let Some(name) = self.clients.get(&id) {
            return Ok(name.clone());
        }
        let name = devices::get(tx, account, DeviceKind::Client, id)
            .await?
            .map_or_else(|| "(deleted)".to_string(), |d| d.name);
        self.clients.insert(id, name.clone());
        Ok(name)
    }

    async fn resource(
        &mut self,
        tx: &mut Conn,
        account: Uuid,
        id: Uuid,
    ) -> Result<String, StoreError> {
        if let Some(name) = self.resources.get(&id) {
            return Ok(name.clone());
        }
        let name = resources::get(tx, account, id)
            .await?
            .map_or_else(|| "(no such resource)".to_string(), |r| r.name);
        self.resources.insert(id, name.clone());
        Ok(name)
    }
}

/// Table rows for refusals, newest first.
async fn denial_rows(
    tx: &mut Conn,
    account: Uuid,
    denials: &[Denial],
    names: &mut Names,
) -> Result<Markup, StoreError> {
    let mut rows = Vec::with_capacity(denials.len());
    for denial in denials {
        rows.push((
            denial,
            names.actor(tx, account, denial.actor).await?,
            names.client(tx, account, denial.client).await?,
            names.resource(tx, account, denial.resource).await?,
        ));
    }
    Ok(html! {
        @for (denial, actor, client, resource) in &rows {
            tr {
                td { (denial.at.strftime("%Y-%m-%d %H:%M:%S UTC")) }
                td { (actor) }
                td { (client) }
                td { (resource) }
                td { (why(denial)) @if denial.count > 1 { " (" (denial.count) " times)" } }
            }
        }
    })
}

/// A refusal's reason in words.
fn why(denial: &Denial) -> String {
    match denial.reason {
        DenyReason::Forbidden if denial.violated.is_empty() => "no policy grants it".to_string(),
        DenyReason::Forbidden => format!(
            "conditions not met: {}",
            denial.violated.join(", ").replace('_', " ")
        ),
        DenyReason::Offline => "no gateway of its site online".to_string(),
        DenyReason::NotFound => "no such resource for this client".to_string(),
    }
}

#[derive(Deserialize)]
pub struct After {
    /// The newest denial the page already shows.
    #[serde(default)]
    after: u64,
}

/// `GET /{account}/live`: the overview's event stream. `denial` events
/// carry new rows (their id is the newest denial's number, so a browser
/// that reconnects says where it was in `Last-Event-ID`), `presence` events
/// the counts when they changed. The session is checked again before each
/// push and every `RECHECK` when idle; the stream
/// ends with it (the browser then reconnects and is sent to the sign-in).
pub async fn live(
    state: Shared,
    Path(slug): Path<String>,
    Query(After { after }): Query<After>,
    headers: HeaderMap,
) -> WebResult<Response> {
    let c = match Console::of(&state.0, &slug, &headers).await? {
        Ok(c) => c,
        Err(redirect) => return Ok(redirect),
    };
    let resumed = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(0);
    let wake = c.state.activity().subscribe();
    let now = tokio::time::Instant::now();
    let stream = futures_util::stream::unfold(
        Live {
            c,
            headers,
            wake,
            after: after.max(resumed),
            shown: String::new(),
            checked: now,
            pushed: now - PUSH_GAP,
            counted: now - PRESENCE_GAP,
            counts_due: false,
            names: Names::default(),
            queue: Vec::new(),
        },
        |mut live| async move {
            let event = live.next().await?;
            Some((Ok::<_, Infallible>(event), live))
        },
    );
    Ok(Sse::new(stream)
        .keep_alive(KeepAlive::default())
        .into_response())
}

/// The least time between two countings of who is online for one page.
const PRESENCE_GAP: Duration = Duration::from_secs(1);

/// One live page's stream.
struct Live {
    c: Console,
    headers: HeaderMap,
    wake: tokio::sync::watch::Receiver<u64>,
    /// The newest denial sent.
    after: u64,
    /// The presence markup last sent.
    shown: String,
    checked: tokio::time::Instant,
    pushed: tokio::time::Instant,
    /// When who is online was last counted, and whether a change since
    /// waits for the next counting.
    counted: tokio::time::Instant,
    counts_due: bool,
    /// Names read for earlier rows.
    names: Names,
    /// Events ready to go.
    queue: Vec<Event>,
}

impl Live {
    /// The next event; `None` ends the stream.
    async fn next(&mut self) -> Option<Event> {
        loop {
            if let Some(event) = self.queue.pop() {
                return Some(event);
            }
            let mut wait = RECHECK.saturating_sub(self.checked.elapsed());
            if self.counts_due {
                wait = wait.min(PRESENCE_GAP.saturating_sub(self.counted.elapsed()));
            }
            match tokio::time::timeout(wait, self.wake.changed()).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) => return None,
                Err(_) => {}
            }
            // Before every push (one token lookup): a page whose session
            // ended is told nothing more.
            self.checked = tokio::time::Instant::now();
            let state = &self.c.state;
            match crate::web::session::web_admin(state, &self.c.account, &self.headers).await {
                Ok(Some(_)) => {}
                _ => return None,
            }
            // At most one push per gap; the first goes at once.
            tokio::time::sleep_until(self.pushed + PUSH_GAP).await;
            self.pushed = tokio::time::Instant::now();
            self.wake.mark_unchanged();
            if let Err(error) = self.gather().await {
                tracing::warn!(%error, "the live overview cannot read the store");
            }
        }
    }

    /// Queues what changed since the last push (presence last, so that it
    /// goes first: the queue pops from the end). Who is online is counted
    /// at most once per `PRESENCE_GAP`: a busy node wakes every page often.
    async fn gather(&mut self) -> Result<(), StoreError> {
        let account = self.c.account.id;
        // Names are read again now and then (renames; a bounded cache).
        if self.names.actors.len() + self.names.clients.len() + self.names.resources.len() > 1000 {
            self.names = Names::default();
        }
        let mut denials = self.c.state.activity().denials_after(account, self.after);
        denials.truncate(PUSHED);
        let mut tx = self.c.state.store.read().await?;
        if let Some(newest) = denials.first() {
            self.after = newest.seq;
            let rows = denial_rows(&mut tx, account, &denials, &mut self.names).await?;
            self.queue.push(
                Event::default()
                    .event("denial")
                    .id(newest.seq.to_string())
                    .data(rows.into_string()),
            );
        }
        self.counts_due = true;
        if self.counted.elapsed() >= PRESENCE_GAP {
            self.counted = tokio::time::Instant::now();
            self.counts_due = false;
            let presence = presence(&self.c.state, &mut tx, account)
                .await?
                .into_string();
            if presence != self.shown {
                self.queue
                    .push(Event::default().event("presence").data(presence.clone()));
                self.shown = presence;
            }
        }
        tx.commit().await?;
        Ok(())
    }
}
