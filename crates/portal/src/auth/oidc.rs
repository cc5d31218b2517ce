//! OpenID Connect sign-in (SPEC F2), with the `openidconnect` crate: discovery,
//! authorization code + PKCE S256, `state` and `nonce`, ID token validation
//! (signature, issuer, audience, expiry, nonce) and the userinfo endpoint for
//! claims the ID token lacks.

use std::time::Duration;

use base64::Engine as _;
use openidconnect::core::{
    CoreAuthenticationFlow, CoreClient, CoreGenderClaim, CoreProviderMetadata,
};
use openidconnect::{
    AuthorizationCode, ClientId, ClientSecret, CsrfToken, IssuerUrl, Nonce, OAuth2TokenResponse,
    PkceCodeChallenge, PkceCodeVerifier, RedirectUrl, Scope, TokenResponse,
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

/// The HTTP client for provider calls: no redirects (a provider is called
/// at the URLs it published, nowhere else), bounded time.
pub fn http_client() -> reqwest::Result<reqwest::Client> {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(10))
        .build()
}

async fn discover(
    http: &reqwest::Client,
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
    let metadata = CoreProviderMetadata::discover_async(issuer, http)
        .await
        .map_err(|e| OidcError::Discovery(error_chain(&e)))?;
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
    http: &reqwest::Client,
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
    http: &reqwest::Client,
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

/// Strings named by a claim: an array of strings, or one string.
pub fn claim_strings(claims: &Map<String, Value>, claim: &str) -> Vec<String> {
    match claims.get(claim) {
        Some(Value::Array(items)) => items
            .iter()
            .filter_map(|item| item.as_str())
            .map(str::to_string)
            .collect(),
        Some(Value::String(one)) => vec![one.clone()],
        _ => Vec::new(),
    }
}

/// Whether a claim says "yes": true, "true", a non-empty string or list.
pub fn claim_is_true(claims: &Map<String, Value>, claim: &str) -> bool {
    match claims.get(claim) {
        Some(Value::Bool(yes)) => *yes,
        Some(Value::String(text)) => !text.is_empty() && text != "false" && text != "0",
        Some(Value::Array(items)) => !items.is_empty(),
        Some(Value::Number(n)) => n.as_i64().is_some_and(|n| n != 0),
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

    #[test]
    fn claims_read_as_lists_and_flags() {
        let claims: Map<String, Value> = serde_json::from_str(
            r#"{"groups": ["eng", 7, "ops"], "one": "x", "admin": true, "no": false,
                "s": "true", "f": "false", "empty": [], "n": 1}"#,
        )
        .unwrap();
        assert_eq!(claim_strings(&claims, "groups"), ["eng", "ops"]);
        assert_eq!(claim_strings(&claims, "one"), ["x"]);
        assert!(claim_strings(&claims, "missing").is_empty());
        for yes in ["admin", "s", "n", "groups"] {
            assert!(claim_is_true(&claims, yes), "{yes}");
        }
        for no in ["no", "f", "empty", "missing"] {
            assert!(!claim_is_true(&claims, no), "{no}");
        }
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
