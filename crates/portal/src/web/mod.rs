//! The browser side of the portal (SPEC section 3, "Sign-in URLs"): the
//! sign-in pages for email codes and OpenID Connect, the admin web session
//! and a minimal signed-in page. A sign-in that carries `client_state`,
//! `client_challenge` and a loopback `redirect_uri` is a client sign-in: it
//! ends in a "connect this device?" page, and only its yes redirects to the
//! client; one without is an admin web session.

pub mod cookies;
pub mod email;
pub mod html;
pub mod oidc;
pub mod session;

use std::sync::Arc;

use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Deserialize;

use crate::auth::token::random_secret;
use crate::domain::Account;
use crate::state::AppState;
use crate::store::sign_in::ClientRequest;
use crate::store::{StoreError, accounts, identity_providers};
use html::{escape, hidden, page};

pub type Shared = State<Arc<AppState>>;

/// The web routes.
pub fn router() -> Router<Arc<AppState>> {
    Router::new()
        .route("/{account}", get(add_slash))
        .route("/{account}/sign_in", get(sign_in_page))
        .route("/{account}/sign_in/email", post(email::request_code))
        .route("/{account}/sign_in/email/verify", post(email::verify))
        .route("/{account}/sign_in/oidc/{provider}", get(oidc::start))
        .route(
            "/{account}/sign_in/oidc/{provider}/callback",
            get(oidc::callback),
        )
        .route("/{account}/sign_in/confirm", post(session::confirm))
        .route("/{account}/sign_out", post(session::sign_out))
}

/// A page that explains what went wrong.
#[derive(Debug)]
pub struct WebError {
    pub status: StatusCode,
    pub message: String,
}

impl WebError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        WebError {
            status,
            message: message.into(),
        }
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        WebError::new(StatusCode::BAD_REQUEST, message)
    }

    pub fn forbidden(message: impl Into<String>) -> Self {
        WebError::new(StatusCode::FORBIDDEN, message)
    }

    pub fn internal(error: impl std::fmt::Display) -> Self {
        tracing::error!(%error, "sign-in failed");
        WebError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "Something went wrong on the portal; try again, and tell an admin if it persists.",
        )
    }
}

impl From<StoreError> for WebError {
    fn from(error: StoreError) -> Self {
        WebError::internal(error)
    }
}

impl From<sqlx::Error> for WebError {
    fn from(error: sqlx::Error) -> Self {
        WebError::internal(error)
    }
}

impl IntoResponse for WebError {
    fn into_response(self) -> Response {
        let title = match self.status {
            StatusCode::TOO_MANY_REQUESTS => "Slow down",
            StatusCode::NOT_FOUND => "Not found",
            StatusCode::FORBIDDEN => "Not allowed",
            StatusCode::UNAUTHORIZED => "Sign-in failed",
            status if status.is_server_error() => "Something went wrong",
            _ => "That did not work",
        };
        page(
            self.status,
            title,
            &format!("<p class=\"error\">{}</p>", escape(&self.message)),
        )
    }
}

pub type WebResult<T> = Result<T, WebError>;

/// The portal's secret key (sealed provider secrets and codes, keyed
/// hashes); without one, sign-in pages answer 500.
pub fn secret_key(state: &AppState) -> WebResult<&crate::secrets::SecretKey> {
    state
        .secret_key
        .as_ref()
        .ok_or_else(|| WebError::internal("the portal has no secret key"))
}

/// The account a URL names.
pub async fn account(state: &AppState, slug: &str) -> WebResult<Account> {
    let mut tx = state.store.read().await?;
    let account = accounts::by_slug(&mut tx, slug).await?;
    tx.commit().await?;
    account.ok_or_else(|| WebError::new(StatusCode::NOT_FOUND, "There is no such account."))
}

/// Where a request came from, for the session log.
#[derive(Clone, Debug)]
pub struct RequestMeta {
    pub ip: std::net::IpAddr,
    pub user_agent: Option<String>,
}

impl RequestMeta {
    pub fn of(client: std::net::IpAddr, headers: &HeaderMap) -> Self {
        RequestMeta {
            ip: client,
            user_agent: headers
                .get(header::USER_AGENT)
                .and_then(|v| v.to_str().ok())
                .map(|v| v.chars().take(256).collect()),
        }
    }
}

/// The client sign-in parameters every sign-in form and link carries along.
#[derive(Clone, Debug, Default, Deserialize)]
pub struct ClientParams {
    pub client_state: Option<String>,
    pub client_challenge: Option<String>,
    pub redirect_uri: Option<String>,
    /// What clients before review L3 sent instead of the challenge: refused,
    /// it put their secret into the URL.
    pub client_nonce: Option<String>,
}

/// `client_state`: 16-128 URL-safe characters.
fn valid_client_value(field: &str, value: &str) -> WebResult<()> {
    let ok = (16..=128).contains(&value.len())
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(WebError::bad_request(format!(
            "{field} must be 16-128 letters, digits, '-' or '_'"
        )))
    }
}

/// Only `http://127.0.0.1:PORT/...` or `http://[::1]:PORT/...` (RFC 8252
/// loopback redirect): a sign-in can never send a token anywhere else.
pub fn valid_redirect_uri(value: &str) -> WebResult<String> {
    let bad = || {
        WebError::bad_request(
            "redirect_uri must be a loopback URL such as http://127.0.0.1:PORT/callback",
        )
    };
    let url = url::Url::parse(value).map_err(|_| bad())?;
    let loopback = matches!(
        url.host(),
        Some(url::Host::Ipv4(ip)) if ip == std::net::Ipv4Addr::LOCALHOST
    ) || matches!(url.host(), Some(url::Host::Ipv6(ip)) if ip.is_loopback());
    if url.scheme() != "http"
        || !loopback
        || url.port().is_none()
        || !url.username().is_empty()
        || url.password().is_some()
        || url.fragment().is_some()
    {
        return Err(bad());
    }
    Ok(url.to_string())
}

impl ClientParams {
    /// None for an admin web sign-in; all three or none must be given.
    pub fn request(&self) -> WebResult<Option<ClientRequest>> {
        fn nonempty(v: &Option<String>) -> Option<&str> {
            v.as_deref().filter(|v| !v.is_empty())
        }
        if nonempty(&self.client_nonce).is_some() {
            return Err(WebError::bad_request(
                "This postern client is too old: it sends its secret in the sign-in URL. \
                 Please update postern on the device and run `postern client sign-in` again.",
            ));
        }
        match (
            nonempty(&self.client_state),
            nonempty(&self.client_challenge),
            nonempty(&self.redirect_uri),
        ) {
            (None, None, None) => Ok(None),
            (Some(state), Some(challenge), Some(redirect)) => {
                valid_client_value("client_state", state)?;
                if !crate::auth::token::valid_challenge(challenge) {
                    return Err(WebError::bad_request(
                        "client_challenge must be base64url(SHA-256(nonce)), 43 characters",
                    ));
                }
                Ok(Some(ClientRequest {
                    state: state.to_string(),
                    challenge: challenge.to_string(),
                    redirect_uri: valid_redirect_uri(redirect)?,
                }))
            }
            _ => Err(WebError::bad_request(
                "a client sign-in needs client_state, client_challenge and redirect_uri together",
            )),
        }
    }

    /// Hidden fields that carry the request to the next form.
    pub fn hidden_fields(request: Option<&ClientRequest>) -> String {
        request
            .map(|r| {
                format!(
                    "{}{}{}",
                    hidden("client_state", &r.state),
                    hidden("client_challenge", &r.challenge),
                    hidden("redirect_uri", &r.redirect_uri)
                )
            })
            .unwrap_or_default()
    }

    /// The same as a query string, for links.
    pub fn query(request: Option<&ClientRequest>) -> String {
        request
            .map(|r| {
                let mut query = url::form_urlencoded::Serializer::new(String::new());
                query
                    .append_pair("client_state", &r.state)
                    .append_pair("client_challenge", &r.challenge)
                    .append_pair("redirect_uri", &r.redirect_uri);
                format!("?{}", query.finish())
            })
            .unwrap_or_default()
    }
}

/// The cookie jar for an account's pages.
pub fn jar(state: &AppState, slug: &str) -> cookies::Jar {
    cookies::Jar {
        path: format!("/{slug}"),
        secure: state
            .external_url
            .as_deref()
            .is_some_and(|url| url.starts_with("https://")),
    }
}

/// The CSRF token of this browser, minting one (and setting its cookie on
/// `response` later) when it has none yet.
pub fn csrf_token(headers: &HeaderMap) -> WebResult<(String, bool)> {
    match cookies::get(headers, cookies::CSRF).filter(|t| t.len() >= 32) {
        Some(token) => Ok((token, false)),
        None => Ok((random_secret().map_err(WebError::internal)?, true)),
    }
}

/// Adds the CSRF cookie when the token is new.
pub fn with_csrf(
    state: &AppState,
    slug: &str,
    token: &str,
    fresh: bool,
    mut response: Response,
) -> Response {
    if fresh {
        jar(state, slug).set(&mut response, cookies::CSRF, token, 12 * 3600, false);
    }
    response
}

/// `/acme` is `/acme/` (the cookies are scoped to the account's path).
async fn add_slash(Path(slug): Path<String>) -> Response {
    if crate::setup::validate_slug(&slug) {
        see_other(&format!("/{slug}/"))
    } else {
        WebError::new(StatusCode::NOT_FOUND, "There is no such page.").into_response()
    }
}

/// `GET /{account}/sign_in`: the account's ways to sign in.
async fn sign_in_page(
    State(state): Shared,
    Path(slug): Path<String>,
    Query(params): Query<ClientParams>,
    headers: HeaderMap,
) -> WebResult<Response> {
    let account = account(&state, &slug).await?;
    let client = params.request()?;
    let mut tx = state.store.read().await?;
    let providers = identity_providers::list(&mut tx, account.id).await?;
    tx.commit().await?;
    let (csrf, fresh) = csrf_token(&headers)?;
    let purpose = if client.is_some() {
        "to connect this device"
    } else {
        "to the portal"
    };
    let mut body = format!(
        "<p>Sign in to <b>{}</b> {purpose}.</p>",
        escape(&account.name)
    );
    for provider in &providers {
        body.push_str(&format!(
            "<p><a href=\"/{}/sign_in/oidc/{}{}\">Sign in with {}</a></p>",
            escape(&account.slug),
            provider.id,
            escape(&ClientParams::query(client.as_ref())),
            escape(&provider.name)
        ));
    }
    body.push_str(&format!(
        "<form method=\"post\" action=\"/{}/sign_in/email\">\
         <label>Email <input type=\"email\" name=\"email\" required autofocus></label> \
         {}{}<button type=\"submit\">Send me a code</button></form>",
        escape(&account.slug),
        hidden("csrf", &csrf),
        ClientParams::hidden_fields(client.as_ref()),
    ));
    Ok(with_csrf(
        &state,
        &account.slug,
        &csrf,
        fresh,
        page(StatusCode::OK, "Sign in", &body),
    ))
}

/// Where sign-in redirects go: 303 See Other.
pub fn see_other(location: &str) -> Response {
    let mut response = StatusCode::SEE_OTHER.into_response();
    if let Ok(value) = location.parse() {
        response.headers_mut().insert(header::LOCATION, value);
    }
    response
}

/// The client's address (the TCP peer, or who a trusted proxy forwarded
/// for): see `client_ip`.
pub type Peer = crate::client_ip::ClientAddr;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_loopback_redirects_are_accepted() {
        for good in [
            "http://127.0.0.1:4321/callback",
            "http://[::1]:4321/",
            "http://127.0.0.1:1/x?y=z",
        ] {
            assert!(valid_redirect_uri(good).is_ok(), "{good}");
        }
        for bad in [
            "https://127.0.0.1:4321/",
            "http://localhost:4321/",
            "http://127.0.0.2:4321/",
            "http://127.0.0.1/",
            "http://evil.example:4321/",
            "http://user@127.0.0.1:4321/",
            "http://127.0.0.1:4321/#frag",
            "javascript:alert(1)",
            "",
        ] {
            assert!(valid_redirect_uri(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn client_parameters_come_all_together() {
        let good = ClientParams {
            client_state: Some("s".repeat(20)),
            client_challenge: Some(crate::auth::token::challenge_of("nonce")),
            redirect_uri: Some("http://127.0.0.1:9/cb".into()),
            client_nonce: None,
        };
        assert!(good.request().unwrap().is_some());
        assert!(ClientParams::default().request().unwrap().is_none());
        let partial = ClientParams {
            client_challenge: None,
            ..good.clone()
        };
        assert!(partial.request().is_err());
        let short = ClientParams {
            client_state: Some("short".into()),
            ..good.clone()
        };
        assert!(short.request().is_err());
        let dotted = ClientParams {
            client_state: Some(format!("{}.x", "n".repeat(20))),
            ..good.clone()
        };
        assert!(dotted.request().is_err());
        let not_a_hash = ClientParams {
            client_challenge: Some("n".repeat(20)),
            ..good.clone()
        };
        assert!(not_a_hash.request().is_err());
        // A client that still sends its nonce is refused, also with the rest.
        let old = ClientParams {
            client_nonce: Some("n".repeat(20)),
            ..good
        };
        assert!(old.request().is_err());
    }
}
