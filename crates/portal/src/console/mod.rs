//! The admin console (issue 17, SPEC F26): pages rendered on the server
//! with maud (which escapes every value it is given) and htmx for the live
//! parts, served by the portal itself: no Node build, no inline script, a
//! strict CSP. Every form works without JavaScript and carries the CSRF
//! token of the sign-in pages.
//!
//! The console is a client of the REST API's own handlers: a form becomes
//! the API's input type (so the same rules check it) and is handed to the
//! same handler as the signed-in admin, so a change from the console is
//! validated, audited and reaches connected clients exactly as an API call
//! does, and read-only rules (what a directory owns) hold here too.

pub mod access;
pub mod actors;
pub mod clients;
pub mod conditions;
pub mod groups;
pub mod identity;
pub mod logs;
pub mod me;
pub mod overview;
pub mod paging;
pub mod policies;
pub mod resources;
pub mod settings;
pub mod sites;

use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Path, Request};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use maud::{DOCTYPE, Markup, html};
use serde_json::Value;

use crate::api::Admin;
use crate::api::problem::ApiResult;
use crate::domain::{Account, Actor};
use crate::state::AppState;
use crate::web::{WebError, WebResult, cookies, csrf_token, see_other, with_csrf};

/// The account a console path names (`/{account}/...`).
async fn account_slug(parts: &mut Parts, state: &Arc<AppState>) -> Result<String, Response> {
    let Path(params) =
        Path::<std::collections::HashMap<String, String>>::from_request_parts(parts, state)
            .await
            .map_err(IntoResponse::into_response)?;
    params
        .get("account")
        .cloned()
        .ok_or_else(|| StatusCode::NOT_FOUND.into_response())
}

/// A console handler's first argument: the signed-in admin of the account
/// the path names; anyone else gets the sign-in (or their own page).
impl FromRequestParts<Arc<AppState>> for Console {
    type Rejection = Response;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &Arc<AppState>,
    ) -> Result<Self, Response> {
        let slug = account_slug(parts, state).await?;
        match Console::of(state, &slug, &parts.headers).await {
            Ok(Ok(console)) => Ok(console),
            Ok(Err(elsewhere)) => Err(elsewhere),
            Err(error) => Err(error.into_response()),
        }
    }
}

/// The most a console form may hold (a PEM certificate is the largest field).
const MAX_FORM: usize = 1 << 20;

/// A submitted console form: from the signed-in admin, carrying this
/// browser's CSRF token and sent by this console's own pages. Every form
/// route takes its form through this extractor, so none can skip the check.
pub struct Posted {
    pub c: Console,
    pub form: Form,
}

impl FromRequest<Arc<AppState>> for Posted {
    type Rejection = Response;

    async fn from_request(request: Request, state: &Arc<AppState>) -> Result<Self, Response> {
        let (mut parts, body) = request.into_parts();
        let c = Console::from_request_parts(&mut parts, state).await?;
        let body = axum::body::to_bytes(body, MAX_FORM).await.map_err(|_| {
            WebError::new(StatusCode::PAYLOAD_TOO_LARGE, "The form is too large.").into_response()
        })?;
        let form = Form::parse(&body);
        check_form(&parts.headers, &form).map_err(IntoResponse::into_response)?;
        Ok(Posted { c, form })
    }
}

/// The console's routes, its overview at `/{account}/`.
pub fn router() -> Router<Arc<AppState>> {
    Router::new()
        .route("/{account}/", get(overview::show))
        .route("/_assets/console.css", get(css))
        .route("/_assets/htmx.min.js", get(htmx))
        .route("/_assets/htmx-ext-sse.min.js", get(htmx_sse))
        .route("/{account}/live", get(overview::live))
        .route("/{account}/sites", get(sites::list).post(sites::create))
        .route("/{account}/sites/{id}", get(sites::show))
        .route("/{account}/sites/{id}/gateways", get(sites::gateways))
        .route(
            "/{account}/sites/{id}/gateway_token",
            axum::routing::post(sites::gateway_token),
        )
        .route(
            "/{account}/sites/{id}/delete",
            get(sites::confirm_delete).post(sites::delete),
        )
        .route(
            "/{account}/resources",
            get(resources::list).post(resources::create),
        )
        .route(
            "/{account}/resources/{id}/delete",
            get(resources::confirm_delete).post(resources::delete),
        )
        .route("/{account}/groups", get(groups::list).post(groups::create))
        .route("/{account}/groups/{id}", get(groups::show))
        .route(
            "/{account}/groups/{id}/members",
            axum::routing::post(groups::set_members),
        )
        .route(
            "/{account}/groups/{id}/delete",
            get(groups::confirm_delete).post(groups::delete),
        )
        .route(
            "/{account}/policies",
            get(policies::list).post(policies::create),
        )
        .route(
            "/{account}/policies/{id}",
            get(policies::show).post(policies::update),
        )
        .route(
            "/{account}/policies/{id}/delete",
            get(policies::confirm_delete).post(policies::delete),
        )
        .route("/{account}/access", get(access::check))
        .merge(actors::routes())
        .merge(clients::routes())
        .merge(identity::routes())
        .merge(logs::routes())
        .merge(settings::routes())
        .merge(me::routes())
}

const CSS: &str = include_str!("assets/console.css");
/// htmx 2.0.11 (BSD Zero Clause, `assets/htmx.LICENSE`), vendored as
/// published on npm: the console needs no build step.
const HTMX: &str = include_str!("assets/htmx.min.js");

fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "public, max-age=3600"),
        ],
        body,
    )
        .into_response()
}

async fn css() -> Response {
    asset("text/css; charset=utf-8", CSS)
}

async fn htmx() -> Response {
    asset("text/javascript; charset=utf-8", HTMX)
}

/// htmx's server-sent events extension 2.2.4 (BSD Zero Clause,
/// `assets/htmx-ext-sse.LICENSE`), vendored as published on npm.
const HTMX_SSE: &str = include_str!("assets/htmx-ext-sse.min.js");

async fn htmx_sse() -> Response {
    asset("text/javascript; charset=utf-8", HTMX_SSE)
}

/// The console's sections, for the navigation.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Section {
    Overview,
    Sites,
    Resources,
    Groups,
    Policies,
    Access,
    Actors,
    Clients,
    Identity,
    Logs,
    Settings,
}

const SECTIONS: [(Section, &str, &str); 11] = [
    (Section::Overview, "Overview", "/"),
    (Section::Sites, "Sites", "/sites"),
    (Section::Resources, "Resources", "/resources"),
    (Section::Groups, "Groups", "/groups"),
    (Section::Policies, "Policies", "/policies"),
    (Section::Access, "Access check", "/access"),
    (Section::Actors, "Users", "/actors"),
    (Section::Clients, "Clients", "/clients"),
    (Section::Identity, "Sign-in and directories", "/identity"),
    (Section::Logs, "Logs", "/logs/audit"),
    (Section::Settings, "Settings", "/settings"),
];

/// A request of the signed-in admin of the account its path names.
pub struct Console {
    pub state: Arc<AppState>,
    pub account: Account,
    pub actor: Actor,
    /// The admin as the API handlers take it (the web session's token).
    pub admin: Admin,
    pub csrf: String,
    fresh_csrf: bool,
}

impl Console {
    /// The console for this request, or the answer to give instead: the
    /// sign-in page for someone not signed in as an admin of the account.
    pub async fn of(
        state: &Arc<AppState>,
        slug: &str,
        headers: &HeaderMap,
    ) -> WebResult<Result<Console, Response>> {
        let account = crate::web::account(state, slug).await?;
        let Some((actor, token_id)) =
            crate::web::session::web_user(state, &account, headers).await?
        else {
            return Ok(Err(see_other(&format!("/{}/sign_in", account.slug))));
        };
        // A user who is not an admin has a page of their own, nothing here.
        if actor.role != crate::domain::Role::Admin {
            return Ok(Err(see_other(&format!("/{}/me", account.slug))));
        }
        // The API's limit holds for the console's session too.
        if let Err(wait) = state.api_limiter.check(token_id, std::time::Instant::now()) {
            let mut slow = WebError::new(
                StatusCode::TOO_MANY_REQUESTS,
                format!(
                    "Too many requests; wait {} s and reload.",
                    wait.as_secs().max(1)
                ),
            )
            .into_response();
            slow.headers_mut()
                .insert("hx-reswap", HeaderValue::from_static("none"));
            return Ok(Err(slow));
        }
        let (csrf, fresh_csrf) = csrf_token(headers)?;
        Ok(Ok(Console {
            state: Arc::clone(state),
            admin: Admin {
                account_id: account.id,
                actor_id: actor.id,
                token_id,
            },
            account,
            actor,
            csrf,
            fresh_csrf,
        }))
    }

    /// A path of this account's console.
    pub fn href(&self, path: &str) -> String {
        format!("/{}{path}", self.account.slug)
    }

    /// The hidden CSRF field every form carries.
    pub fn csrf_field(&self) -> Markup {
        html! { input type="hidden" name="csrf" value=(self.csrf); }
    }

    /// A whole page: the navigation, `body`, the console's headers.
    pub fn page(
        &self,
        status: StatusCode,
        title: &str,
        section: Section,
        body: Markup,
    ) -> Response {
        let markup = html! {
            (DOCTYPE)
            html lang="en" {
                head {
                    meta charset="utf-8";
                    meta name="viewport" content="width=device-width, initial-scale=1";
                    // htmx would add an inline style, which the CSP refuses.
                    meta name="htmx-config" content=r#"{"includeIndicatorStyles":false}"#;
                    title { (title) " - Postern" }
                    link rel="stylesheet" href="/_assets/console.css";
                    script src="/_assets/htmx.min.js" defer {}
                    script src="/_assets/htmx-ext-sse.min.js" defer {}
                }
                body {
                    nav.side aria-label="Console" {
                        p.brand { "Postern" }
                        p.account { (self.account.name) }
                        ul {
                            @for (item, label, path) in SECTIONS {
                                li {
                                    @if item == section {
                                        a href=(self.href(path)) aria-current="page" { (label) }
                                    } @else {
                                        a href=(self.href(path)) { (label) }
                                    }
                                }
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
        let response = respond(status, markup);
        with_csrf(
            &self.state,
            &self.account.slug,
            &self.csrf,
            self.fresh_csrf,
            response,
        )
    }

    /// A piece of a page (an htmx swap), with the same headers.
    pub fn fragment(&self, markup: Markup) -> Response {
        respond(StatusCode::OK, markup)
    }
}

/// Refuses a form without this browser's CSRF token, or one another
/// site's page sent (the browser says so in `Sec-Fetch-Site` and `Origin`;
/// defence in depth over the double-submitted token).
pub fn check_form(headers: &HeaderMap, form: &Form) -> WebResult<()> {
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let cross_site = header("sec-fetch-site").is_some_and(|s| s != "same-origin" && s != "none");
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
            "The form expired or did not come from this console; reload the page and try again.",
        ))
    }
}

/// Console answers are never framed, cached or allowed any script but the
/// console's own.
pub(crate) fn respond(status: StatusCode, markup: Markup) -> Response {
    let mut response = (status, Html(markup.into_string())).into_response();
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
    response
}

/// A submitted form's fields, in order.
#[derive(Default)]
pub struct Form(Vec<(String, String)>);

impl Form {
    pub fn parse(body: &Bytes) -> Form {
        Form(
            url::form_urlencoded::parse(body)
                .map(|(k, v)| (k.into_owned(), v.into_owned()))
                .collect(),
        )
    }

    /// The last value of a field ("" when absent).
    pub fn get(&self, name: &str) -> &str {
        self.0
            .iter()
            .rev()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
            .unwrap_or_default()
    }

    /// Every value of a field (checkboxes), in order.
    pub fn all(&self, name: &str) -> Vec<&str> {
        self.0
            .iter()
            .filter(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
            .collect()
    }
}

/// What an API handler refused, with its status.
#[derive(Debug)]
pub struct Refusal {
    pub status: StatusCode,
    pub message: String,
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl From<Refusal> for WebError {
    fn from(refusal: Refusal) -> WebError {
        let status = if refusal.status.is_server_error() {
            StatusCode::INTERNAL_SERVER_ERROR
        } else {
            refusal.status
        };
        WebError::new(status, refusal.message)
    }
}

impl From<String> for Refusal {
    /// A form the API's input type refused before any call: invalid.
    fn from(message: String) -> Refusal {
        Refusal {
            status: StatusCode::UNPROCESSABLE_ENTITY,
            message,
        }
    }
}

/// What an API handler answered: its JSON, or its refusal (the problem's
/// words with the field at fault, to show next to the form).
pub async fn answer<R: IntoResponse>(result: ApiResult<R>) -> Result<Value, Refusal> {
    let response = match result {
        Ok(ok) => ok.into_response(),
        Err(problem) => problem.into_response(),
    };
    let status = response.status();
    let broken = |e: String| Refusal {
        status: StatusCode::INTERNAL_SERVER_ERROR,
        message: e,
    };
    let body = axum::body::to_bytes(response.into_body(), 16 << 20)
        .await
        .map_err(|e| broken(e.to_string()))?;
    let value: Value = if body.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&body).map_err(|e| broken(e.to_string()))?
    };
    if status.is_success() {
        return Ok(value);
    }
    let detail = value["detail"].as_str().unwrap_or("the request failed");
    Err(Refusal {
        status,
        message: match value["field"].as_str() {
            Some(field) => format!("{field}: {detail}"),
            None => detail.to_string(),
        },
    })
}

/// A form's input, checked by the API's type, handed to an API handler:
/// its answer, or the refusal (of the input or of the handler).
pub async fn submit<T, R: IntoResponse>(
    checked: Result<T, String>,
    call: impl AsyncFnOnce(T) -> ApiResult<R>,
) -> Result<Value, Refusal> {
    match checked {
        Ok(input) => answer(call(input).await).await,
        Err(error) => Err(Refusal::from(error)),
    }
}

/// A deletion's answer: done, or already gone (a second click), else the
/// refusal.
pub async fn deleted<R: IntoResponse>(result: ApiResult<R>) -> WebResult<()> {
    match answer(result).await {
        Ok(_) => Ok(()),
        Err(refusal) if refusal.status == StatusCode::NOT_FOUND => Ok(()),
        Err(refusal) => Err(refusal.into()),
    }
}

/// An object the page is about: 404 when the API has none, its refusal
/// otherwise.
pub async fn object<R: IntoResponse>(result: ApiResult<R>, what: &str) -> WebResult<Value> {
    answer(result)
        .await
        .map_err(|refusal| match refusal.status {
            StatusCode::NOT_FOUND => {
                WebError::new(StatusCode::NOT_FOUND, format!("There is no such {what}."))
            }
            _ => refusal.into(),
        })
}

/// The `data` list of an API list answer.
pub async fn data<R: IntoResponse>(result: ApiResult<R>) -> WebResult<Vec<Value>> {
    let value = answer(result).await?;
    Ok(value["data"].as_array().cloned().unwrap_or_default())
}

/// An API input type from form fields, checked by its own rules.
pub fn input<T: serde::de::DeserializeOwned>(fields: Value) -> Result<T, String> {
    serde_json::from_value(fields).map_err(|e| e.to_string())
}

/// The status a page showing a refused form answers with.
pub fn refused_status(error: Option<&Refusal>) -> StatusCode {
    match error {
        Some(refusal) if refusal.status.is_client_error() => StatusCode::UNPROCESSABLE_ENTITY,
        Some(_) => StatusCode::INTERNAL_SERVER_ERROR,
        None => StatusCode::OK,
    }
}

/// The error box over a form.
pub fn error_box(error: Option<&str>) -> Markup {
    html! {
        @if let Some(error) = error {
            p.error role="alert" { (error) }
        }
    }
}

/// RFC 3339 to the second, for tables.
pub fn when(value: &Value) -> String {
    value
        .as_str()
        .and_then(|t| t.parse::<jiff::Timestamp>().ok())
        .map(|t| t.strftime("%Y-%m-%d %H:%M:%S UTC").to_string())
        .unwrap_or_else(|| "never".into())
}

/// Names of API objects by id.
pub fn names(list: &[Value]) -> std::collections::HashMap<&str, &str> {
    list.iter()
        .map(|x| (text(x, "id"), text(x, "name")))
        .collect()
}

/// A string field of an API object ("" when absent).
pub fn text<'a>(value: &'a Value, field: &str) -> &'a str {
    value[field].as_str().unwrap_or_default()
}
