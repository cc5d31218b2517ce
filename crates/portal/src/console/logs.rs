//! The audit, session and flow logs, with filters and paging (issue 17):
//! `/{account}/logs/audit`, `/logs/sessions`, `/logs/flows`, tabs between
//! them. The filters are a GET form (no JavaScript needed) and every link
//! keeps them; pages are keyset pages in SQL on the log's own position,
//! 50 entries newest first, "older" and "newer" both ways, with the
//! cursors of the REST API. Read only: nothing here changes anything.

use std::collections::HashMap;
use std::sync::Arc;

use axum::Router;
use axum::extract::RawQuery;
use axum::http::StatusCode;
use axum::response::Response;
use axum::routing::get;
use maud::{Markup, html};
use serde_json::Value;
use uuid::Uuid;

use super::{Console, Section, error_box};
use crate::api::logs::{decode_cursor, encode_cursor};
use crate::domain::AuditEntry;
use crate::state::AppState;
use crate::store::audit::{self, AuditFilter};
use crate::store::logs::{
    self, FlowEntry, FlowFilter, FlowSearch, Keyset, SessionEntry, SessionFilter,
};
use crate::store::{Conn, actors};
use crate::web::{WebResult, see_other};

/// This part's routes.
pub fn routes() -> Router<Arc<AppState>> {
    Router::new()
        .route("/{account}/logs", get(index))
        .route("/{account}/logs/audit", get(audit_log))
        .route("/{account}/logs/sessions", get(sessions))
        .route("/{account}/logs/flows", get(flows))
}

/// Entries a page shows.
const PAGE: i64 = 50;

/// The longest value a filter field takes.
const MAX_FIELD: usize = 320;

/// The longest a value of the audit diff is shown (the whole JSON is
/// under "JSON").
const MAX_VALUE: usize = 160;

/// The longest JSON of one side of an audit entry shown in full.
const MAX_JSON: usize = 8_192;

/// The three logs, as tabs.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Log {
    Audit,
    Sessions,
    Flows,
}

const LOGS: [(Log, &str, &str); 3] = [
    (Log::Audit, "Audit log", "/logs/audit"),
    (Log::Sessions, "Sessions", "/logs/sessions"),
    (Log::Flows, "Flows", "/logs/flows"),
];

impl Log {
    fn title(self) -> &'static str {
        LOGS.iter()
            .find(|(log, _, _)| *log == self)
            .map_or("Logs", |(_, title, _)| title)
    }

    fn path(self) -> &'static str {
        LOGS.iter()
            .find(|(log, _, _)| *log == self)
            .map_or("/logs/audit", |(_, _, path)| path)
    }
}

/// The object types of audit entries, for the filter's list (an entry of
/// another type is still found by typing its action).
const OBJECT_TYPES: [&str; 11] = [
    "account",
    "actor",
    "client",
    "directory",
    "group",
    "identity_provider",
    "policy",
    "realm_access",
    "resource",
    "site",
    "token",
];

/// The kinds of session entries.
const SESSION_KINDS: [(&str, &str); 4] = [
    ("web_sign_in", "web sign-in"),
    ("client_sign_in", "client sign-in"),
    ("client_connect", "client connected"),
    ("gateway_connect", "gateway connected"),
];

/// `GET /{account}/logs`: the audit log is the first tab.
async fn index(c: Console) -> WebResult<Response> {
    Ok(see_other(&c.href(Log::Audit.path())))
}

/// A page's query string read strictly: each filter checked, its value
/// kept (as typed, trimmed) for the form and for the links, and what is
/// wrong with any of them said in words.
struct Query {
    typed: HashMap<String, String>,
    kept: Vec<(&'static str, String)>,
    problems: Vec<String>,
}

impl Query {
    fn parse(raw: Option<&str>) -> Query {
        let mut typed = HashMap::new();
        for (name, value) in url::form_urlencoded::parse(raw.unwrap_or_default().as_bytes()) {
            let value = value.trim();
            if !value.is_empty() {
                typed.insert(name.into_owned(), value.to_string());
            }
        }
        Query {
            typed,
            kept: Vec::new(),
            problems: Vec::new(),
        }
    }

    /// The value typed for `name`, for the form.
    fn typed(&self, name: &str) -> &str {
        self.typed.get(name).map(String::as_str).unwrap_or_default()
    }

    /// A field's value once its length is checked.
    fn field(&mut self, name: &'static str, label: &str) -> Option<String> {
        let value = self.typed.get(name)?.clone();
        if value.chars().count() > MAX_FIELD || value.chars().any(char::is_control) {
            self.problems.push(format!(
                "{label}: at most {MAX_FIELD} printable characters."
            ));
            return None;
        }
        Some(value)
    }

    fn keep(&mut self, name: &'static str, value: String) {
        self.kept.push((name, value));
    }

    /// An object's id.
    fn uuid(&mut self, name: &'static str, label: &str) -> Option<Uuid> {
        let value = self.field(name, label)?;
        match Uuid::try_parse(&value) {
            Ok(id) => {
                self.keep(name, id.to_string());
                Some(id)
            }
            Err(_) => {
                self.problems.push(format!(
                    "{label}: \"{value}\" is not an id (a UUID such as 0b9f6a52-1c1e-4a4e-9d2a-6f1e2d3c4b5a)."
                ));
                None
            }
        }
    }

    /// An actor: an id, or an email to look up.
    fn actor(&mut self, label: &str) -> Option<Who> {
        let value = self.field("actor", label)?;
        if value.contains('@') {
            self.keep("actor", value.clone());
            return Some(Who::Email(value));
        }
        self.uuid("actor", label).map(Who::Id)
    }

    /// A name of the portal's own (an action, a type, a kind): lowercase
    /// words joined by `_`, an action with one `.`.
    fn word(&mut self, name: &'static str, label: &str, dotted: bool) -> Option<String> {
        let value = self.field(name, label)?;
        let lower = value.to_ascii_lowercase();
        let parts: Vec<&str> = lower.split('.').collect();
        let well_formed = parts.len() <= if dotted { 2 } else { 1 }
            && parts.iter().all(|p| {
                !p.is_empty()
                    && p.len() <= 64
                    && p.bytes().all(|b| b.is_ascii_lowercase() || b == b'_')
            });
        if well_formed {
            self.keep(name, lower.clone());
            Some(lower)
        } else {
            self.problems.push(format!(
                "{label}: \"{value}\" is not {} (lowercase letters and _{}).",
                if dotted { "an action" } else { "a name" },
                if dotted { ", such as site.create" } else { "" }
            ));
            None
        }
    }

    /// A time in UTC; `until` takes in all of the minute, second or day
    /// typed ("until 2026-05-01" is the whole day).
    fn time(&mut self, name: &'static str, label: &str, until: bool) -> Option<i64> {
        let value = self.field(name, label)?;
        match parse_time(&value, until) {
            Some(ms) => {
                self.keep(name, value);
                Some(ms)
            }
            None => {
                self.problems.push(format!(
                    "{label}: \"{value}\" is not a time; write it as 2026-05-01, \
                     2026-05-01 14:30 or 2026-05-01T14:30:00Z (UTC unless a zone is given)."
                ));
                None
            }
        }
    }

    /// `since` and `until`, checked together.
    fn range(&mut self) -> (Option<i64>, Option<i64>) {
        let since = self.time("since", "From", false);
        let until = self.time("until", "Until", true);
        if let (Some(from), Some(to)) = (since, until)
            && from > to
        {
            self.problems
                .push("From: the range starts after it ends.".to_string());
        }
        (since, until)
    }

    /// Which page: `before` or `after` a cursor of an earlier page.
    fn page(&mut self) -> Keyset {
        let mut cursor = |name: &str| {
            let value = self.typed.get(name)?.clone();
            let position = decode_cursor(&value);
            if position.is_none() {
                self.problems.push(format!(
                    "The page link is damaged ({name}): open the log again from its first page."
                ));
            }
            position
        };
        let before = cursor("before");
        let after = cursor("after");
        match (before, after) {
            (Some(_), Some(_)) => {
                self.problems
                    .push("The page link is damaged (before and after): open the log again from its first page.".to_string());
                Keyset::Newest
            }
            (Some(position), None) => Keyset::Before(position),
            (None, Some(position)) => Keyset::After(position),
            (None, None) => Keyset::Newest,
        }
    }

    /// A link to this log with the filters kept, and `extra`.
    fn link(&self, c: &Console, log: Log, extra: &[(&str, &str)]) -> String {
        link(
            c,
            log,
            self.kept.iter().map(|(k, v)| (*k, v.as_str())),
            extra,
        )
    }
}

fn link<'a>(
    c: &Console,
    log: Log,
    kept: impl Iterator<Item = (&'a str, &'a str)>,
    extra: &[(&'a str, &'a str)],
) -> String {
    let mut query = url::form_urlencoded::Serializer::new(String::new());
    for (name, value) in kept.chain(extra.iter().copied()) {
        query.append_pair(name, value);
    }
    let query = query.finish();
    if query.is_empty() {
        c.href(log.path())
    } else {
        format!("{}?{query}", c.href(log.path()))
    }
}

/// Parses a UTC time: RFC 3339 (exact), or a civil date and time taken as
/// UTC; an `until` covers the whole unit typed.
fn parse_time(text: &str, until: bool) -> Option<i64> {
    if let Ok(exact) = text.parse::<jiff::Timestamp>() {
        return Some(exact.as_millisecond());
    }
    let civil = text.replacen(' ', "T", 1);
    let (start, unit_ms) = match civil.split_once('T') {
        None => {
            let date = civil.parse::<jiff::civil::Date>().ok()?;
            (date.to_datetime(jiff::civil::Time::midnight()), 86_400_000)
        }
        Some((_, time)) => {
            let unit = match time.len() {
                // HH:MM
                5 => 60_000,
                // HH:MM:SS
                8 => 1_000,
                _ => 1,
            };
            (civil.parse::<jiff::civil::DateTime>().ok()?, unit)
        }
    };
    let ms = jiff::tz::TimeZone::UTC
        .to_timestamp(start)
        .ok()?
        .as_millisecond();
    Some(if until { ms + unit_ms - 1 } else { ms })
}

/// An actor filter: an id, or an email the page looks up.
enum Who {
    Id(Uuid),
    Email(String),
}

/// The actor a filter names, or why it names none.
async fn resolve(
    conn: &mut Conn,
    c: &Console,
    who: Option<Who>,
    q: &mut Query,
) -> WebResult<Option<Uuid>> {
    Ok(match who {
        None => None,
        Some(Who::Id(id)) => Some(id),
        Some(Who::Email(email)) => match actors::by_email(conn, c.account.id, &email).await? {
            Some(actor) => Some(actor.id),
            None => {
                q.problems.push(format!(
                    "Who: no user, admin or service account has the email \"{email}\"."
                ));
                None
            }
        },
    })
}

/// What a page of a log shows besides its rows.
struct Frame<'a> {
    c: &'a Console,
    log: Log,
    q: &'a Query,
    page: Keyset,
    /// The positions of the first (newest) and last row, and whether more
    /// rows lie beyond the page in the direction it was read.
    ends: Option<(i64, i64)>,
    more: bool,
    names: &'a HashMap<String, String>,
}

impl Frame<'_> {
    fn name_or_id(&self, id: &str) -> Markup {
        match self.names.get(id) {
            Some(name) => html! { (name) },
            None => html! { code { (id) } },
        }
    }

    /// This log with the filters kept and `field` set to `value`: a click
    /// narrows what is shown, from the newest entry.
    fn narrow(&self, field: &str, value: &str) -> String {
        let kept = self
            .q
            .kept
            .iter()
            .filter(|(name, _)| *name != field)
            .map(|(name, value)| (*name, value.as_str()));
        link(self.c, self.log, kept, &[(field, value)])
    }

    /// A name (or the id, for a deleted object) that filters this log by it.
    fn filter_link(&self, field: &str, id: &str) -> Markup {
        html! {
            a href=(self.narrow(field, id)) title="Only the entries of this one" { (self.name_or_id(id)) }
        }
    }

    /// Who did it: an actor, a directory, or the portal itself.
    fn who(&self, actor: Option<&str>, directory: Option<&str>) -> Markup {
        match (actor, directory) {
            (Some(actor), _) => self.filter_link("actor", actor),
            (None, Some(directory)) => html! {
                "directory " (self.filter_link("directory", directory))
            },
            (None, None) => html! { span.muted { "the portal" } },
        }
    }

    fn pager(&self) -> Markup {
        let (newer, older) = match (self.page, self.ends) {
            (Keyset::Newest, Some((_, last))) => (None, self.more.then_some(last)),
            (Keyset::Before(_), Some((first, last))) => (Some(first), self.more.then_some(last)),
            (Keyset::After(_), Some((first, last))) => (self.more.then_some(first), Some(last)),
            (_, None) => (None, None),
        };
        let newer = newer.map(|p| {
            self.q
                .link(self.c, self.log, &[("after", &encode_cursor(p))])
        });
        let older = older.map(|p| {
            self.q
                .link(self.c, self.log, &[("before", &encode_cursor(p))])
        });
        let newest = self.page != Keyset::Newest;
        if newer.is_none() && older.is_none() && !newest {
            return html! {};
        }
        html! {
            nav.pager aria-label="Pages" {
                @if let Some(href) = newer {
                    a rel="prev" href=(href) { "← Newer" }
                }
                @if newest {
                    a href=(self.q.link(self.c, self.log, &[])) { "Newest" }
                }
                @if let Some(href) = older {
                    a rel="next" href=(href) { "Older →" }
                }
            }
        }
    }
}

/// The whole page: tabs, the filter form, the rows, the pager.
fn show(frame: &Frame, form: Markup, rows: Markup, empty: bool) -> Response {
    let Frame { c, log, q, .. } = *frame;
    let problems = q.problems.join(" ");
    let status = if q.problems.is_empty() {
        StatusCode::OK
    } else {
        StatusCode::BAD_REQUEST
    };
    let body = html! {
        nav.tabs aria-label="Logs" {
            ul {
                @for (tab, title, path) in LOGS {
                    li {
                        @if tab == log {
                            a href=(c.href(path)) aria-current="page" { (title) }
                        } @else {
                            a href=(c.href(path)) { (title) }
                        }
                    }
                }
            }
        }
        (error_box((!problems.is_empty()).then_some(problems.as_str())))
        form.filters method="get" action=(c.href(log.path())) {
            (form)
            div.filter-actions {
                button type="submit" { "Filter" }
                " "
                a href=(c.href(log.path())) { "Clear the filters" }
            }
        }
        @if q.problems.is_empty() {
            p.muted { "Newest first, " (PAGE) " a page; times in UTC." }
            @if empty {
                p.muted { "No entries" @if !q.kept.is_empty() { " match these filters" } "." }
            } @else {
                (rows)
            }
            (frame.pager())
        }
    };
    c.page(status, log.title(), Section::Logs, body)
}

/// A labelled text field of the filter form.
fn field(q: &Query, name: &str, label: &str, hint: &str) -> Markup {
    let id = format!("filter-{name}");
    html! {
        div.filter {
            label for=(id) { (label) }
            input id=(id) type="text" name=(name) value=(q.typed(name)) placeholder=(hint) maxlength=(MAX_FIELD);
        }
    }
}

fn time_fields(q: &Query) -> Markup {
    html! {
        (field(q, "since", "From (UTC)", "2026-05-01 14:30"))
        (field(q, "until", "Until (UTC)", "2026-05-01"))
    }
}

fn select(q: &Query, name: &str, label: &str, any: &str, options: &[(&str, &str)]) -> Markup {
    let id = format!("filter-{name}");
    let chosen = q.typed(name);
    html! {
        div.filter {
            label for=(id) { (label) }
            select id=(id) name=(name) {
                option value="" { (any) }
                @for (value, text) in options {
                    option value=(value) selected[*value == chosen] { (text) }
                }
                // A value typed in the address that the list lacks.
                @if !chosen.is_empty() && !options.iter().any(|(v, _)| *v == chosen) {
                    option value=(chosen) selected { (chosen) }
                }
            }
        }
    }
}

/// Reads a page of `fetch`'s rows: one more than the page to know
/// whether more lie beyond it, in the direction of reading.
fn trim<T>(mut rows: Vec<T>, page: Keyset) -> (Vec<T>, bool) {
    let more = rows.len() as i64 > PAGE;
    if more {
        match page {
            // Newest first: the extra row is the oldest, at the end.
            Keyset::Newest | Keyset::Before(_) => {
                rows.pop();
            }
            // Read upwards: the extra row is the newest, at the start.
            Keyset::After(_) => {
                rows.remove(0);
            }
        }
    }
    (rows, more)
}

/// `GET /{account}/logs/audit`.
async fn audit_log(c: Console, RawQuery(raw): RawQuery) -> WebResult<Response> {
    let mut q = Query::parse(raw.as_deref());
    let who = q.actor("Who");
    let directory_id = q.uuid("directory", "Directory");
    let object_type = q.word("type", "Type", false);
    let action = q.word("action", "Action", true);
    let object_id = q.uuid("object", "Object").map(|id| id.to_string());
    let (since_ms, until_ms) = q.range();
    let page = q.page();
    let mut tx = c.state.store.read().await?;
    let actor_id = resolve(&mut tx, &c, who, &mut q).await?;
    let mut entries = Vec::new();
    let mut more = false;
    let mut names = HashMap::new();
    if q.problems.is_empty() {
        let filter = AuditFilter {
            actor_id,
            directory_id,
            action,
            object_type,
            object_id: object_id.clone(),
            since_ms,
            until_ms,
        };
        let rows = audit::search(&mut tx, c.account.id, &filter, page, PAGE + 1).await?;
        (entries, more) = trim(rows, page);
        let mut ids: Vec<String> = entries
            .iter()
            .flat_map(|e: &AuditEntry| {
                [
                    e.actor_id.map(|id| id.to_string()),
                    e.directory_id.map(|id| id.to_string()),
                    Some(e.object_id.clone()),
                ]
            })
            .flatten()
            .collect();
        ids.extend(actor_id.map(|id| id.to_string()));
        ids.extend(directory_id.map(|id| id.to_string()));
        ids.extend(object_id.clone());
        names = logs::names(&mut tx, c.account.id, &ids).await?;
        names.insert(c.account.id.to_string(), c.account.name.clone());
    }
    tx.commit().await?;
    let frame = Frame {
        c: &c,
        log: Log::Audit,
        q: &q,
        page,
        ends: ends(&entries, |e| e.cursor),
        more,
        names: &names,
    };
    let types: Vec<(&str, &str)> = OBJECT_TYPES.iter().map(|t| (*t, *t)).collect();
    let form = html! {
        div.filter-row {
            (field(&q, "actor", "Who", "email or id"))
            (select(&q, "type", "Type", "any type", &types))
            (field(&q, "action", "Action", "site.create"))
            (field(&q, "object", "Object", "id"))
            (time_fields(&q))
        }
        @if let Some(id) = directory_id {
            input type="hidden" name="directory" value=(id);
            p.muted { "Only changes of directory " (frame.name_or_id(&id.to_string())) "." }
        }
        (focus(&frame, &[("Who", actor_id.map(|id| id.to_string())), ("Object", object_id.clone())]))
    };
    let rows = html! {
        table.log {
            thead { tr { th { "When" } th { "Who" } th { "Action" } th { "Object" } th { "Change" } } }
            tbody {
                @for entry in &entries {
                    tr {
                        td.when { (at(entry.at)) }
                        td { (frame.who(
                            entry.actor_id.map(|id| id.to_string()).as_deref(),
                            entry.directory_id.map(|id| id.to_string()).as_deref(),
                        )) }
                        td { a href=(frame.narrow("action", &entry.action)) title="Only the entries of this action" { code { (entry.action) } } }
                        td { (object(&frame, entry)) }
                        td.change { (change(entry.before.as_ref(), entry.after.as_ref())) }
                    }
                }
            }
        }
    };
    Ok(show(&frame, form, rows, entries.is_empty()))
}

/// The names of the objects the filters name, when they have one.
fn focus(frame: &Frame, named: &[(&str, Option<String>)]) -> Markup {
    let named: Vec<(&str, &String, &String)> = named
        .iter()
        .filter_map(|(label, id)| {
            let id = id.as_ref()?;
            Some((*label, id, frame.names.get(id)?))
        })
        .collect();
    html! {
        @if !named.is_empty() {
            p.muted {
                "Only: "
                @for (n, (label, _, name)) in named.iter().enumerate() {
                    @if n > 0 { ", " }
                    (label.to_lowercase()) " " b { (name) }
                }
            }
        }
    }
}

fn ends<T>(rows: &[T], cursor: impl Fn(&T) -> i64) -> Option<(i64, i64)> {
    Some((cursor(rows.first()?), cursor(rows.last()?)))
}

fn at(time: jiff::Timestamp) -> String {
    time.strftime("%Y-%m-%d %H:%M:%S").to_string()
}

/// The object of an audit entry: its name while it exists, else its id
/// (and the name it had, from the entry).
fn object(frame: &Frame, entry: &AuditEntry) -> Markup {
    let was = [entry.before.as_ref(), entry.after.as_ref()]
        .into_iter()
        .flatten()
        .find_map(|v| v["name"].as_str());
    // The whole history, whatever else the page is filtered by.
    let history = link(
        frame.c,
        Log::Audit,
        std::iter::empty(),
        &[("object", &entry.object_id)],
    );
    html! {
        span.muted { (entry.object_type) " " }
        @match frame.names.get(&entry.object_id) {
            Some(name) => a href=(history) title="The history of this object" { (name) },
            None => {
                a href=(history) title="The history of this object" { code { (entry.object_id) } }
                @if let Some(was) = was {
                    span.muted { " (gone; was " (was) ")" }
                }
            }
        }
    }
}

/// What an audit entry changed: the fields that differ, old and new,
/// then the whole JSON on demand. Every value goes through maud, escaped.
fn change(before: Option<&Value>, after: Option<&Value>) -> Markup {
    let rows = diff(before, after);
    html! {
        @if rows.is_empty() {
            span.muted { "no field changed" }
        } @else {
            ul.diff {
                @for (key, old, new) in &rows {
                    li {
                        code { (key) } ": "
                        @if let Some(old) = old { del { (old) } }
                        @if old.is_some() && new.is_some() { " → " }
                        @if let Some(new) = new { ins { (new) } }
                    }
                }
            }
        }
        @if before.is_some() || after.is_some() {
            details {
                summary { "JSON" }
                @if let Some(before) = before { p.muted { "Before" } pre { (pretty(before)) } }
                @if let Some(after) = after { p.muted { "After" } pre { (pretty(after)) } }
            }
        }
    }
}

/// Fields that say nothing about the change.
const NOISE: [&str; 4] = ["id", "account_id", "created_at", "updated_at"];

/// The top-level fields that differ between two JSON objects (a whole
/// value for anything else), each value compact and shortened.
fn diff(
    before: Option<&Value>,
    after: Option<&Value>,
) -> Vec<(String, Option<String>, Option<String>)> {
    let objects = before.is_none_or(Value::is_object) && after.is_none_or(Value::is_object);
    if !objects {
        return if before == after {
            Vec::new()
        } else {
            vec![("value".into(), before.map(compact), after.map(compact))]
        };
    }
    let empty = serde_json::Map::new();
    let old = before.and_then(Value::as_object).unwrap_or(&empty);
    let new = after.and_then(Value::as_object).unwrap_or(&empty);
    let mut keys: Vec<&String> = old.keys().chain(new.keys()).collect();
    keys.sort();
    keys.dedup();
    keys.into_iter()
        .filter(|k| !NOISE.contains(&k.as_str()) && old.get(*k) != new.get(*k))
        // A created or deleted object's empty fields say nothing.
        .filter(|k| {
            let set = |side: Option<&Value>| side.is_some_and(|v| !v.is_null());
            set(old.get(*k)) || set(new.get(*k))
        })
        .map(|k| (k.clone(), old.get(k).map(compact), new.get(k).map(compact)))
        .collect()
}

fn compact(value: &Value) -> String {
    shorten(&value.to_string(), MAX_VALUE)
}

fn pretty(value: &Value) -> String {
    shorten(
        &serde_json::to_string_pretty(value).unwrap_or_default(),
        MAX_JSON,
    )
}

fn shorten(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        text.to_string()
    } else {
        let mut short: String = text.chars().take(max).collect();
        short.push('…');
        short
    }
}

/// `GET /{account}/logs/sessions`.
async fn sessions(c: Console, RawQuery(raw): RawQuery) -> WebResult<Response> {
    let mut q = Query::parse(raw.as_deref());
    let who = q.actor("Who");
    let kind = q.word("kind", "Kind", false);
    let device_id = q.uuid("device", "Device");
    let (since_ms, until_ms) = q.range();
    let page = q.page();
    let mut tx = c.state.store.read().await?;
    let actor_id = resolve(&mut tx, &c, who, &mut q).await?;
    let mut entries = Vec::new();
    let mut more = false;
    let mut names = HashMap::new();
    if q.problems.is_empty() {
        let filter = SessionFilter {
            actor_id,
            device_id,
            kind,
            since_ms,
            until_ms,
        };
        let rows = logs::search_sessions(&mut tx, c.account.id, &filter, page, PAGE + 1).await?;
        (entries, more) = trim(rows, page);
        let mut ids: Vec<String> = entries
            .iter()
            .flat_map(|e: &SessionEntry| [e.actor_id, e.device_id])
            .flatten()
            .map(|id| id.to_string())
            .collect();
        ids.extend(
            [actor_id, device_id]
                .into_iter()
                .flatten()
                .map(|id| id.to_string()),
        );
        names = logs::names(&mut tx, c.account.id, &ids).await?;
    }
    tx.commit().await?;
    let frame = Frame {
        c: &c,
        log: Log::Sessions,
        q: &q,
        page,
        ends: ends(&entries, |e| e.cursor),
        more,
        names: &names,
    };
    let form = html! {
        div.filter-row {
            (field(&q, "actor", "Who", "email or id"))
            (select(&q, "kind", "Kind", "any kind", &SESSION_KINDS))
            (field(&q, "device", "Device", "id"))
            (time_fields(&q))
        }
        (focus(&frame, &[("Who", actor_id.map(|id| id.to_string())), ("Device", device_id.map(|id| id.to_string()))]))
    };
    let rows = html! {
        table.log {
            thead { tr { th { "When" } th { "Who" } th { "What" } th { "Device" } th { "From" } th { "User agent" } } }
            tbody {
                @for entry in &entries {
                    tr {
                        td.when { (at(entry.at)) }
                        td {
                            @match entry.actor_id {
                                Some(actor) => (frame.filter_link("actor", &actor.to_string())),
                                None if entry.kind == "gateway_connect" => span.muted { "a gateway" },
                                None => span.muted { "unknown" },
                            }
                        }
                        td { (kind_text(&entry.kind)) }
                        td { @if let Some(device) = entry.device_id { (frame.filter_link("device", &device.to_string())) } }
                        td { (entry.remote_ip.as_deref().unwrap_or("")) }
                        td.agent { (entry.user_agent.as_deref().unwrap_or("")) }
                    }
                }
            }
        }
    };
    Ok(show(&frame, form, rows, entries.is_empty()))
}

fn kind_text(kind: &str) -> String {
    SESSION_KINDS
        .iter()
        .find(|(k, _)| *k == kind)
        .map_or_else(|| kind.replace('_', " "), |(_, text)| text.to_string())
}

/// `GET /{account}/logs/flows`.
async fn flows(c: Console, RawQuery(raw): RawQuery) -> WebResult<Response> {
    let mut q = Query::parse(raw.as_deref());
    let who = q.actor("Who");
    let client_id = q.uuid("client", "Client");
    let resource_id = q.uuid("resource", "Resource");
    let gateway_id = q.uuid("gateway", "Gateway");
    let (since_ms, until_ms) = q.range();
    let page = q.page();
    let mut tx = c.state.store.read().await?;
    let actor_id = resolve(&mut tx, &c, who, &mut q).await?;
    let mut entries = Vec::new();
    let mut more = false;
    let mut names = HashMap::new();
    if q.problems.is_empty() {
        let search = FlowSearch {
            filter: FlowFilter {
                resource_id,
                actor_id,
                since_ms,
                until_ms,
            },
            client_id,
            gateway_id,
        };
        let rows = logs::search_flows(&mut tx, c.account.id, &search, page, PAGE + 1).await?;
        (entries, more) = trim(rows, page);
        let mut ids: Vec<String> = entries
            .iter()
            .flat_map(|e: &FlowEntry| {
                [
                    Some(e.gateway_id.clone()),
                    Some(e.client_id.clone()),
                    Some(e.resource_id.clone()),
                    e.actor_id.clone(),
                ]
            })
            .flatten()
            .collect();
        ids.extend(
            [actor_id, client_id, resource_id, gateway_id]
                .into_iter()
                .flatten()
                .map(|id| id.to_string()),
        );
        names = logs::names(&mut tx, c.account.id, &ids).await?;
    }
    tx.commit().await?;
    let frame = Frame {
        c: &c,
        log: Log::Flows,
        q: &q,
        page,
        ends: ends(&entries, |e| e.cursor),
        more,
        names: &names,
    };
    let form = html! {
        div.filter-row {
            (field(&q, "actor", "Who", "email or id"))
            (field(&q, "client", "Client", "id"))
            (field(&q, "resource", "Resource", "id"))
            (field(&q, "gateway", "Gateway", "id"))
            (time_fields(&q))
        }
        (focus(&frame, &[
            ("Who", actor_id.map(|id| id.to_string())),
            ("Client", client_id.map(|id| id.to_string())),
            ("Resource", resource_id.map(|id| id.to_string())),
            ("Gateway", gateway_id.map(|id| id.to_string())),
        ]))
        p.muted { "A flow is a connection a gateway carried, logged when it ended; a click on a name keeps only its flows. Access a policy refused never reaches a gateway, so it has no flow here." }
    };
    let rows = html! {
        table.log {
            thead { tr {
                th { "Started" } th { "Duration" } th { "Who" } th { "Client" } th { "Resource" }
                th { "Gateway" } th { "Connection" } th { "Bytes in" } th { "Bytes out" }
            } }
            tbody {
                @for flow in &entries {
                    tr {
                        td.when { (at(flow.started_at)) }
                        td { (duration(flow)) }
                        td { (frame.who(flow.actor_id.as_deref(), None)) }
                        td { (frame.filter_link("client", &flow.client_id)) }
                        td { (frame.filter_link("resource", &flow.resource_id)) }
                        td { (frame.filter_link("gateway", &flow.gateway_id)) }
                        td { (protocol(flow.protocol)) " " code { (flow.source) } " → " code { (flow.destination) } }
                        td.number { (bytes(flow.bytes_in)) }
                        td.number { (bytes(flow.bytes_out)) }
                    }
                }
            }
        }
    };
    Ok(show(&frame, form, rows, entries.is_empty()))
}

fn protocol(number: i64) -> String {
    match number {
        1 => "ICMP".into(),
        6 => "TCP".into(),
        17 => "UDP".into(),
        58 => "ICMPv6".into(),
        other => format!("protocol {other}"),
    }
}

fn duration(flow: &FlowEntry) -> String {
    let Some(ended) = flow.ended_at else {
        return "open".into();
    };
    let ms = (ended.as_millisecond() - flow.started_at.as_millisecond()).max(0);
    let s = ms / 1000;
    match s {
        0 => format!("{ms} ms"),
        1..60 => format!("{s} s"),
        60..3600 => format!("{} min {} s", s / 60, s % 60),
        _ => format!("{} h {} min", s / 3600, s % 3600 / 60),
    }
}

fn bytes(n: i64) -> String {
    const UNITS: [&str; 5] = ["KiB", "MiB", "GiB", "TiB", "PiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut value = n as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_utc_and_until_covers_the_unit_typed() {
        let at = |t: &str| t.parse::<jiff::Timestamp>().unwrap().as_millisecond();
        assert_eq!(
            parse_time("2026-05-01", false),
            Some(at("2026-05-01T00:00:00Z"))
        );
        assert_eq!(
            parse_time("2026-05-01", true),
            Some(at("2026-05-02T00:00:00Z") - 1)
        );
        assert_eq!(
            parse_time("2026-05-01 14:30", false),
            Some(at("2026-05-01T14:30:00Z"))
        );
        assert_eq!(
            parse_time("2026-05-01T14:30", true),
            Some(at("2026-05-01T14:31:00Z") - 1)
        );
        assert_eq!(
            parse_time("2026-05-01T14:30:05", true),
            Some(at("2026-05-01T14:30:06Z") - 1)
        );
        assert_eq!(
            parse_time("2026-05-01T14:30:00+02:00", true),
            Some(at("2026-05-01T12:30:00Z"))
        );
        for garbage in [
            "yesterday",
            "2026-13-01",
            "2026-05-01T25:00",
            "",
            "1e9",
            "2026-05-01<script>",
        ] {
            assert_eq!(parse_time(garbage, false), None, "{garbage}");
        }
    }

    #[test]
    fn the_diff_shows_the_fields_that_changed() {
        let before = serde_json::json!({"id": "x", "name": "<b>old</b>", "same": 1});
        let after = serde_json::json!({"id": "x", "name": "new", "same": 1, "added": true});
        assert_eq!(
            diff(Some(&before), Some(&after)),
            vec![
                ("added".to_string(), None, Some("true".to_string())),
                (
                    "name".to_string(),
                    Some("\"<b>old</b>\"".to_string()),
                    Some("\"new\"".to_string())
                ),
            ]
        );
        assert_eq!(
            diff(Some(&before), None).len(),
            2,
            "a deletion shows what was"
        );
        assert_eq!(
            diff(Some(&serde_json::json!([1])), Some(&serde_json::json!([2]))),
            vec![(
                "value".to_string(),
                Some("[1]".to_string()),
                Some("[2]".to_string())
            )]
        );
        assert!(diff(None, None).is_empty());
    }
}
