//! OpenID Connect sign-in (SPEC F2), with the `openidconnect` crate: discovery,
//! authorization code + PKCE S256, `state` and `nonce`, ID token validation
//! (signature, issuer, audience, expiry, nonce) and the userinfo endpoint for
//! claims the ID token lacks.

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::time::Duration;

use base64::Engine as _;
use openidconnect::core::{
    CoreAuthenticationFlow, CoreClient, CoreGenderClaim, CoreProviderMetadata,
};
use openidconnect::{
    AuthorizationCode, ClientId, ClientSecret, CsrfToken, HttpRequest, HttpResponse, IssuerUrl,
    Nonce, OAuth2TokenResponse, PkceCodeChallenge, PkceCodeVerifier, RedirectUrl, Scope,
    TokenResponse,
};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// What the portal needs to talk to one provider.
#[derive(Clone, Debug)]
pub struct ProviderConfig {
    pub issuer: String,
    pub client_id: String,
    pub client_secret: String,
    pub redirect_uri: String,
    /// Claims the sign-in needs beyond `sub` and `email` (groups, admin).
    pub wanted_claims: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum OidcError {
    #[error("cannot read the identity provider's discovery document: {0}")]
    Discovery(String),
    #[error("the identity provider is misconfigured: {0}")]
    Config(String),
    #[error("the identity provider refused the code: {0}")]
    Exchange(String),
    #[error("the identity provider sent no ID token")]
    NoIdToken,
    #[error("the ID token is not valid: {0}")]
    InvalidIdToken(String),
    #[error("the userinfo endpoint failed: {0}")]
    UserInfo(String),
}

/// The identity a provider vouched for.
#[derive(Clone, Debug)]
pub struct Identity {
    pub subject: String,
    pub email: Option<String>,
    pub email_verified: bool,
    pub name: Option<String>,
    /// Every claim, from the ID token and (where it lacked one) userinfo.
    pub claims: Map<String, Value>,
}

/// Every other claim userinfo returns (groups, custom admin flags).
#[derive(Debug, Deserialize, Serialize)]
struct OtherClaims {
    #[serde(flatten)]
    rest: Map<String, Value>,
}
impl openidconnect::AdditionalClaims for OtherClaims {}

/// Longest answer the portal reads from a provider (discovery, JWKS, token,
/// userinfo): real ones are a few KiB.
pub const MAX_RESPONSE_BYTES: usize = 1024 * 1024;
/// Longest a provider call may take, body included.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// Which addresses provider calls may reach.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reach {
    /// A portal that browsers reach elsewhere than on loopback: https only,
    /// and never loopback, link-local (cloud metadata), unspecified,
    /// multicast or broadcast addresses, checked on the addresses a name
    /// resolves to when connecting (no DNS rebinding in between). Private
    /// ranges stay allowed: a self-hosted provider on the internal network
    /// is the common case, and https-only calls whose answers and errors
    /// never reach the browser give a tenant admin no scanner.
    Public,
    /// A portal whose `--external-url` is on loopback (development, tests):
    /// plain http and loopback addresses allowed too.
    Development,
}

impl Reach {
    /// Development when the portal's own external URL is http on loopback.
    pub fn of_portal(external_url: Option<&str>) -> Reach {
        let loopback = external_url
            .and_then(|u| url::Url::parse(u).ok())
            .is_some_and(|u| u.scheme() == "http" && host_is_loopback(&u));
        if loopback {
            Reach::Development
        } else {
            Reach::Public
        }
    }
}

fn host_is_loopback(url: &url::Url) -> bool {
    match url.host() {
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        Some(url::Host::Domain(name)) => name.eq_ignore_ascii_case("localhost"),
        None => false,
    }
}

/// Addresses a provider call never goes to.
fn never(ip: IpAddr) -> bool {
    let ip = match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    };
    match ip {
        IpAddr::V4(v4) => {
            v4.is_unspecified()
                || v4.is_link_local()
                || v4.is_multicast()
                || v4.is_broadcast()
                || v4.octets()[0] == 0
        }
        IpAddr::V6(v6) => {
            v6.is_unspecified() || v6.is_multicast() || (v6.segments()[0] & 0xffc0) == 0xfe80
        }
    }
}

/// Whether `ip` may be called under `reach`.
pub fn address_allowed(ip: IpAddr, reach: Reach) -> bool {
    let mapped = match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    };
    !never(ip) && (reach == Reach::Development || !mapped.is_loopback())
}

/// Whether a provider URL (issuer, an endpoint) may be called under
/// `reach`: https, or http to loopback in development; no user info; a
/// literal address must be allowed (names are checked when resolved).
pub fn url_allowed(url: &url::Url, reach: Reach) -> Result<(), String> {
    if !url.username().is_empty() || url.password().is_some() {
        return Err(format!("{url} carries user info"));
    }
    match url.scheme() {
        "https" => {}
        "http" if reach == Reach::Development && host_is_loopback(url) => {}
        _ => return Err(format!("{url} is not https")),
    }
    let literal = match url.host() {
        Some(url::Host::Ipv4(ip)) => Some(IpAddr::V4(ip)),
        Some(url::Host::Ipv6(ip)) => Some(IpAddr::V6(ip)),
        Some(url::Host::Domain(_)) => None,
        None => return Err(format!("{url} names no host")),
    };
    match literal {
        Some(ip) if !address_allowed(ip, reach) => Err(format!("{url} is a forbidden address")),
        _ => Ok(()),
    }
}

/// A resolver that leaves out the addresses `reach` forbids, so the
/// connection goes only where the check said.
struct Guarded(Reach);

impl reqwest::dns::Resolve for Guarded {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let reach = self.0;
        Box::pin(async move {
            let host = name.as_str().to_string();
            let found = tokio::net::lookup_host((host.as_str(), 0)).await?;
            let allowed: Vec<SocketAddr> =
                found.filter(|a| address_allowed(a.ip(), reach)).collect();
            if allowed.is_empty() {
                return Err(Box::new(HttpError::Forbidden(format!(
                    "{host} resolves to no allowed address"
                )))
                    as Box<dyn std::error::Error + Send + Sync>);
            }
            Ok(Box::new(allowed.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error("refused to call {0}")]
    Forbidden(String),
    #[error("the answer is larger than {MAX_RESPONSE_BYTES} bytes")]
    TooLarge,
    #[error("bad request: {0}")]
    Request(String),
    #[error(transparent)]
    Http(#[from] reqwest::Error),
}

/// The HTTP client for provider calls: no redirects (a provider is called at
/// the URLs it published, nowhere else), bounded time and size, and only to
/// addresses `reach` allows.
#[derive(Clone, Debug)]
pub struct ProviderHttp {
    client: reqwest::Client,
    reach: Reach,
}

impl ProviderHttp {
    pub fn new(reach: Reach) -> reqwest::Result<ProviderHttp> {
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(CALL_TIMEOUT)
            .connect_timeout(Duration::from_secs(5))
            .dns_resolver(std::sync::Arc::new(Guarded(reach)))
            .build()?;
        Ok(ProviderHttp { client, reach })
    }

    pub fn reach(&self) -> Reach {
        self.reach
    }

    async fn send(&self, request: HttpRequest) -> Result<HttpResponse, HttpError> {
        let url = url::Url::parse(&request.uri().to_string())
            .map_err(|e| HttpError::Request(e.to_string()))?;
        url_allowed(&url, self.reach).map_err(HttpError::Forbidden)?;
        let request =
            reqwest::Request::try_from(request).map_err(|e| HttpError::Request(e.to_string()))?;
        let mut response = self.client.execute(request).await?;
        if response
            .content_length()
            .is_some_and(|n| n > MAX_RESPONSE_BYTES as u64)
        {
            return Err(HttpError::TooLarge);
        }
        let mut body = Vec::new();
        while let Some(chunk) = response.chunk().await? {
            if body.len() + chunk.len() > MAX_RESPONSE_BYTES {
                return Err(HttpError::TooLarge);
            }
            body.extend_from_slice(&chunk);
        }
        let mut answer = openidconnect::http::Response::builder().status(response.status());
        for (name, value) in response.headers() {
            answer = answer.header(name, value);
        }
        answer
            .body(body)
            .map_err(|e| HttpError::Request(e.to_string()))
    }
}

impl<'c> openidconnect::AsyncHttpClient<'c> for ProviderHttp {
    type Error = HttpError;
    type Future = Pin<Box<dyn Future<Output = Result<HttpResponse, HttpError>> + Send + 'c>>;

    fn call(&'c self, request: HttpRequest) -> Self::Future {
        Box::pin(self.send(request))
    }
}

async fn discover(
    http: &ProviderHttp,
    config: &ProviderConfig,
) -> Result<
    CoreClient<
        openidconnect::EndpointSet,
        openidconnect::EndpointNotSet,
        openidconnect::EndpointNotSet,
        openidconnect::EndpointNotSet,
        openidconnect::EndpointMaybeSet,
        openidconnect::EndpointMaybeSet,
    >,
    OidcError,
> {
    let issuer =
        IssuerUrl::new(config.issuer.clone()).map_err(|e| OidcError::Config(e.to_string()))?;
    url_allowed(issuer.url(), http.reach()).map_err(OidcError::Config)?;
    let metadata = CoreProviderMetadata::discover_async(issuer, http)
        .await
        .map_err(|e| OidcError::Discovery(error_chain(&e)))?;
    // Every endpoint the discovery document names is held to the issuer's
    // rules (the JWKS already was, when it was fetched).
    let endpoints = [
        Some(metadata.authorization_endpoint().url()),
        metadata.token_endpoint().map(|u| u.url()),
        metadata.userinfo_endpoint().map(|u| u.url()),
        Some(metadata.jwks_uri().url()),
    ];
    for url in endpoints.into_iter().flatten() {
        url_allowed(url, http.reach())
            .map_err(|why| OidcError::Config(format!("discovery document: {why}")))?;
    }
    if metadata.token_endpoint().is_none() {
        return Err(OidcError::Config(
            "the discovery document names no token endpoint".into(),
        ));
    }
    let redirect = RedirectUrl::new(config.redirect_uri.clone())
        .map_err(|e| OidcError::Config(e.to_string()))?;
    Ok(CoreClient::from_provider_metadata(
        metadata,
        ClientId::new(config.client_id.clone()),
        Some(ClientSecret::new(config.client_secret.clone())),
    )
    .set_redirect_uri(redirect))
}

/// Where to send the browser, and the PKCE verifier to keep for the callback.
pub async fn authorization(
    http: &ProviderHttp,
    config: &ProviderConfig,
    state: &str,
    nonce: &str,
) -> Result<(String, String), OidcError> {
    let client = discover(http, config).await?;
    let (challenge, verifier) = PkceCodeChallenge::new_random_sha256();
    let state = state.to_string();
    let nonce = nonce.to_string();
    let mut request = client
        .authorize_url(
            CoreAuthenticationFlow::AuthorizationCode,
            move || CsrfToken::new(state),
            move || Nonce::new(nonce),
        )
        .add_scope(Scope::new("email".into()))
        .add_scope(Scope::new("profile".into()))
        .set_pkce_challenge(challenge);
    if config.wanted_claims.iter().any(|c| c == "groups") {
        request = request.add_scope(Scope::new("groups".into()));
    }
    let (url, _, _) = request.url();
    Ok((url.to_string(), verifier.secret().clone()))
}

/// Redeems the code and validates what comes back.
pub async fn complete(
    http: &ProviderHttp,
    config: &ProviderConfig,
    code: &str,
    pkce_verifier: &str,
    nonce: &str,
) -> Result<Identity, OidcError> {
    let client = discover(http, config).await?;
    let response = client
        .exchange_code(AuthorizationCode::new(code.to_string()))
        .map_err(|e| OidcError::Config(e.to_string()))?
        .set_pkce_verifier(PkceCodeVerifier::new(pkce_verifier.to_string()))
        .request_async(http)
        .await
        .map_err(|e| OidcError::Exchange(error_chain(&e)))?;
    let id_token = response.id_token().ok_or(OidcError::NoIdToken)?;
    let verified = id_token
        .claims(&client.id_token_verifier(), &Nonce::new(nonce.to_string()))
        .map_err(|e| OidcError::InvalidIdToken(error_chain(&e)))?;
    let subject = verified.subject().to_string();
    let mut identity = Identity {
        subject: subject.clone(),
        email: verified.email().map(|e| e.to_string()),
        email_verified: verified.email_verified().unwrap_or(false),
        name: verified
            .name()
            .and_then(|n| n.get(None))
            .map(|n| n.to_string()),
        // The signature was checked above, so the payload's other claims
        // can be read as they are.
        claims: payload_claims(&id_token.to_string()),
    };
    let missing = identity.email.is_none()
        || config
            .wanted_claims
            .iter()
            .any(|claim| !identity.claims.contains_key(claim));
    if missing
        && let Ok(request) = client.user_info(
            response.access_token().clone(),
            Some(verified.subject().clone()),
        )
    {
        let info = request
            .request_async::<OtherClaims, _, CoreGenderClaim>(http)
            .await
            .map_err(|e| OidcError::UserInfo(error_chain(&e)))?;
        if identity.email.is_none() {
            identity.email = info.email().map(|e| e.to_string());
            identity.email_verified = info.email_verified().unwrap_or(false);
        }
        if identity.name.is_none() {
            identity.name = info.name().and_then(|n| n.get(None)).map(|n| n.to_string());
        }
        for (claim, value) in &info.additional_claims().rest {
            identity
                .claims
                .entry(claim.clone())
                .or_insert_with(|| value.clone());
        }
    }
    Ok(identity)
}

/// The JSON object in the middle of a JWS; empty if it is not one.
fn payload_claims(jwt: &str) -> Map<String, Value> {
    jwt.split('.')
        .nth(1)
        .and_then(|payload| {
            base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(payload.trim_end_matches('='))
                .ok()
        })
        .and_then(|bytes| serde_json::from_slice(&bytes).ok())
        .unwrap_or_default()
}

/// The value a claim path names: the claim of that exact name (names may
/// hold dots: `https://example.com/groups`), else a path into nested objects
/// (`realm_access.roles`, Keycloak's realm roles), taking at each level the
/// longest name that exists.
pub fn claim_at<'a>(claims: &'a Map<String, Value>, path: &str) -> Option<&'a Value> {
    if let Some(value) = claims.get(path) {
        return Some(value);
    }
    let dots: Vec<usize> = path.match_indices('.').map(|(at, _)| at).collect();
    dots.iter()
        .rev()
        .find_map(|&at| match claims.get(&path[..at]) {
            Some(Value::Object(inner)) => claim_at(inner, &path[at + 1..]),
            _ => None,
        })
}

/// Strings named by a claim path: an array of strings, one string of names
/// separated by spaces (as OAuth writes scopes), or an object's keys
/// (Zitadel's roles: `{"admin": {"<org id>": "<domain>"}}`).
pub fn claim_strings(claims: &Map<String, Value>, claim: &str) -> Vec<String> {
    match claim_at(claims, claim) {
        Some(Value::Array(items)) => items
            .iter()
            .filter_map(|item| item.as_str())
            .map(str::to_string)
            .collect(),
        Some(Value::String(names)) => names.split_whitespace().map(str::to_string).collect(),
        Some(Value::Object(keyed)) => keyed.keys().cloned().collect(),
        _ => Vec::new(),
    }
}

/// Whether the admin claim says admin (review L2: parsed strictly, never
/// "any non-empty value"): JSON `true`, the string `"true"` in any case, or
/// `value` (the provider's `admin_claim_value`) as the string, as a member of
/// a list of strings, as a key of an object (Zitadel's roles) or as a
/// number's text. `false`, `"False"`, `"no"`, `1`, a list without `value` and
/// everything else mean user. The claim is a path as for `claim_at`.
pub fn claim_is_admin(claims: &Map<String, Value>, claim: &str, value: Option<&str>) -> bool {
    match claim_at(claims, claim) {
        Some(Value::Bool(yes)) => *yes,
        Some(Value::String(text)) => text.eq_ignore_ascii_case("true") || value == Some(text),
        Some(Value::Array(items)) => {
            value.is_some_and(|value| items.iter().any(|item| item.as_str() == Some(value)))
        }
        Some(Value::Object(keyed)) => value.is_some_and(|value| keyed.contains_key(value)),
        Some(Value::Number(n)) => value.is_some_and(|value| n.to_string() == value),
        _ => false,
    }
}

/// An error with its sources, for one log line.
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Keycloak's realm roles, Zitadel's role object, a space-separated
    /// string, a claim named like a URL.
    #[test]
    fn claim_paths_reach_nested_claims() {
        let claims: Map<String, Value> = serde_json::from_str(
            r#"{"realm_access": {"roles": ["eng", "postern-admin"]},
                "urn:zitadel:iam:org:project:roles": {"ops": {"1": "acme"}, "postern-admin": {}},
                "scope_groups": "eng  ops",
                "https://acme.test/groups": ["web"],
                "https://acme": {"test/x": 1},
                "a": {"b.c": {"d": ["deep"]}, "b": {"c": {"d": ["shallow"]}}}}"#,
        )
        .unwrap();
        assert_eq!(
            claim_strings(&claims, "realm_access.roles"),
            ["eng", "postern-admin"]
        );
        assert_eq!(
            claim_strings(&claims, "urn:zitadel:iam:org:project:roles"),
            ["ops", "postern-admin"]
        );
        assert_eq!(claim_strings(&claims, "scope_groups"), ["eng", "ops"]);
        assert_eq!(claim_strings(&claims, "https://acme.test/groups"), ["web"]);
        // The longest existing name wins at each level.
        assert_eq!(claim_strings(&claims, "a.b.c.d"), ["deep"]);
        assert!(claim_strings(&claims, "realm_access.nothing").is_empty());
        assert!(claim_strings(&claims, "realm_access.roles.x").is_empty());
        assert!(claim_is_admin(
            &claims,
            "realm_access.roles",
            Some("postern-admin")
        ));
        assert!(claim_is_admin(
            &claims,
            "urn:zitadel:iam:org:project:roles",
            Some("postern-admin")
        ));
        assert!(!claim_is_admin(&claims, "realm_access.roles", Some("ops")));
        assert!(
            !claim_is_admin(&claims, "realm_access", None),
            "an object alone is no"
        );
    }

    #[test]
    fn claims_read_as_lists_and_flags() {
        let claims: Map<String, Value> = serde_json::from_str(
            r#"{"groups": ["eng", 7, "ops"], "one": "x", "admin": true, "no": false,
                "s": "true", "S": "TRUE", "f": "false", "F": "False", "word": "no",
                "yes": "yes", "empty": [], "n": 1, "zero": 0, "roles": ["user", "postern-admin"],
                "role": "postern-admin", "nested": {"admin": true}, "null": null}"#,
        )
        .unwrap();
        assert_eq!(claim_strings(&claims, "groups"), ["eng", "ops"]);
        assert_eq!(claim_strings(&claims, "one"), ["x"]);
        assert!(claim_strings(&claims, "missing").is_empty());
        for yes in ["admin", "s", "S"] {
            assert!(claim_is_admin(&claims, yes, None), "{yes}");
            assert!(claim_is_admin(&claims, yes, Some("postern-admin")), "{yes}");
        }
        for no in [
            "no", "f", "F", "word", "yes", "empty", "n", "zero", "groups", "roles", "role", "one",
            "nested", "null", "missing",
        ] {
            assert!(!claim_is_admin(&claims, no, None), "{no}");
        }
        // A configured value: that string, or a list holding it.
        for yes in ["roles", "role"] {
            assert!(claim_is_admin(&claims, yes, Some("postern-admin")), "{yes}");
        }
        for no in ["groups", "empty", "word", "F", "one", "no"] {
            assert!(!claim_is_admin(&claims, no, Some("postern-admin")), "{no}");
        }
        assert!(claim_is_admin(&claims, "groups", Some("ops")));
        assert!(claim_is_admin(&claims, "n", Some("1")));
        assert!(
            !claim_is_admin(&claims, "roles", Some("Postern-Admin")),
            "exact match"
        );
    }

    #[test]
    fn payloads_of_garbage_are_empty() {
        for jwt in ["", "a", "a.b.c", "a.!!!.c", "a.bnVsbA.c"] {
            assert!(payload_claims(jwt).is_empty(), "{jwt}");
        }
        let payload = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(r#"{"sub":"x"}"#);
        assert_eq!(payload_claims(&format!("h.{payload}.s"))["sub"], "x");
    }
}
