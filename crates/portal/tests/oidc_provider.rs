#![allow(clippy::unwrap_used)] // a test file: unwrap is the assertion
//! The OpenID Connect test harness on its own, without the portal: the real
//! provider (`tests/oidc/provider.mjs`), its browser stand-in and its broken ID
//! token modes, checked with a hand-made code flow and the `openidconnect`
//! crate's ID token verifier.

mod support;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use openidconnect::core::{CoreIdToken, CoreIdTokenVerifier, CoreJsonWebKeySet};
use openidconnect::{ClaimsVerificationError, ClientId, ClientSecret, IssuerUrl, Nonce};
use reqwest::Url;
use serde_json::Value;
use sha2::{Digest, Sha256};
use support::oidc::OidcProvider;

const CLIENT_ID: &str = "postern-portal";
const CLIENT_SECRET: &str = "a-test-secret-with-enough-entropy-0123456789";
// Never requested: sign_in stops at the redirect.
const REDIRECT_URI: &str = "http://127.0.0.1:9/acct/sign_in/oidc/test/callback";

fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .build()
        .unwrap()
}

async fn start() -> (OidcProvider, Value) {
    let provider = OidcProvider::start(CLIENT_ID, CLIENT_SECRET, &[REDIRECT_URI.to_string()]).await;
    let discovery = provider.discovery().await;
    (provider, discovery)
}

/// One pass of the code flow with PKCE.
struct Flow {
    state: String,
    nonce: String,
    verifier: String,
    authorize_url: String,
}

impl Flow {
    fn new(discovery: &Value, scope: &str) -> Flow {
        let state = uuid::Uuid::new_v4().simple().to_string();
        let nonce = uuid::Uuid::new_v4().simple().to_string();
        let verifier = format!(
            "{}{}",
            uuid::Uuid::new_v4().simple(),
            uuid::Uuid::new_v4().simple()
        );
        let challenge = URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()));
        let authorize_url = Url::parse_with_params(
            discovery["authorization_endpoint"].as_str().unwrap(),
            [
                ("client_id", CLIENT_ID),
                ("redirect_uri", REDIRECT_URI),
                ("response_type", "code"),
                ("scope", scope),
                ("state", &state),
                ("nonce", &nonce),
                ("code_challenge", &challenge),
                ("code_challenge_method", "S256"),
            ],
        )
        .unwrap()
        .to_string();
        Flow {
            state,
            nonce,
            verifier,
            authorize_url,
        }
    }

    /// Signs in as `login`, checks the callback and returns its code.
    async fn code(&self, provider: &OidcProvider, login: &str) -> String {
        let callback = provider.sign_in(&self.authorize_url, login).await;
        assert!(
            callback.starts_with(&format!("{REDIRECT_URI}?")),
            "{callback}"
        );
        let callback = Url::parse(&callback).unwrap();
        let param = |name: &str| {
            callback
                .query_pairs()
                .find(|(key, _)| key == name)
                .map(|(_, value)| value.into_owned())
        };
        assert_eq!(
            param("state").as_deref(),
            Some(self.state.as_str()),
            "{callback}"
        );
        assert_eq!(param("error"), None, "{callback}");
        param("code").unwrap_or_else(|| panic!("no code in {callback}"))
    }

    /// Redeems `code` at the token endpoint, the secret in HTTP Basic
    /// (`client_secret_basic`) or in the body (`client_secret_post`).
    async fn exchange(&self, discovery: &Value, code: &str, basic: bool) -> Value {
        let mut form = vec![
            ("grant_type", "authorization_code"),
            ("code", code),
            ("redirect_uri", REDIRECT_URI),
            ("code_verifier", &self.verifier),
        ];
        let request = http().post(discovery["token_endpoint"].as_str().unwrap());
        let request = if basic {
            request.basic_auth(CLIENT_ID, Some(CLIENT_SECRET))
        } else {
            form.push(("client_id", CLIENT_ID));
            form.push(("client_secret", CLIENT_SECRET));
            request
        };
        let response = request.form(&form).send().await.unwrap();
        let status = response.status();
        let body = response.text().await.unwrap();
        assert!(status.is_success(), "token endpoint: {status}\n{body}");
        serde_json::from_str(&body).unwrap()
    }

    async fn tokens(&self, provider: &OidcProvider, discovery: &Value, login: &str) -> Value {
        let code = self.code(provider, login).await;
        self.exchange(discovery, &code, true).await
    }
}

/// A fresh code flow for "carol" with the provider in `mode`: the flow and
/// its ID token.
async fn token_in_mode(provider: &OidcProvider, discovery: &Value, mode: &str) -> (Flow, String) {
    provider.set_mode(mode).await;
    let flow = Flow::new(discovery, "openid");
    let jwt = id_token(&flow.tokens(provider, discovery, "carol").await).to_string();
    (flow, jwt)
}

fn id_token(tokens: &Value) -> &str {
    tokens["id_token"]
        .as_str()
        .unwrap_or_else(|| panic!("no id_token in {tokens}"))
}

fn jwt_part(jwt: &str, index: usize) -> Value {
    let part = jwt.split('.').nth(index).unwrap();
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(part).unwrap()).unwrap()
}

/// Verifies `jwt` the way a relying party does: signature against the
/// provider's JWKS, issuer, audience, expiry and nonce.
async fn verify(discovery: &Value, jwt: &str, nonce: &str) -> Result<(), ClaimsVerificationError> {
    let jwks: CoreJsonWebKeySet = http()
        .get(discovery["jwks_uri"].as_str().unwrap())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let verifier = CoreIdTokenVerifier::new_confidential_client(
        ClientId::new(CLIENT_ID.to_string()),
        ClientSecret::new(CLIENT_SECRET.to_string()),
        IssuerUrl::new(discovery["issuer"].as_str().unwrap().to_string()).unwrap(),
        jwks,
    );
    let token: CoreIdToken = jwt.parse().unwrap();
    token
        .claims(&verifier, &Nonce::new(nonce.to_string()))
        .map(|_| ())
}

#[tokio::test]
async fn discovery_advertises_the_issuer_and_pkce() {
    let (provider, discovery) = start().await;
    assert_eq!(discovery["issuer"], provider.issuer.as_str());
    let methods = discovery["code_challenge_methods_supported"]
        .as_array()
        .unwrap();
    assert!(methods.iter().any(|m| m == "S256"), "{discovery}");
    assert_eq!(
        discovery["response_types_supported"],
        serde_json::json!(["code"])
    );
    for endpoint in [
        "authorization_endpoint",
        "token_endpoint",
        "userinfo_endpoint",
        "jwks_uri",
    ] {
        let url = discovery[endpoint].as_str().unwrap();
        assert!(
            url.starts_with(&format!("{}/", provider.issuer)),
            "{endpoint}: {url}"
        );
    }
}

#[tokio::test]
async fn code_flow_issues_a_verifiable_id_token_and_userinfo_has_the_claims() {
    let (provider, discovery) = start().await;
    provider
        .set_account("alice", "alice@corp.test", &["eng", "ops"], true)
        .await;
    let flow = Flow::new(&discovery, "openid email groups");
    let tokens = flow.tokens(&provider, &discovery, "alice").await;
    let jwt = id_token(&tokens);
    verify(&discovery, jwt, &flow.nonce).await.unwrap();

    let header = jwt_part(jwt, 0);
    assert_eq!(header["alg"], "RS256", "{header}");
    let claims = jwt_part(jwt, 1);
    assert_eq!(claims["sub"], "alice", "{claims}");
    assert_eq!(claims["aud"], CLIENT_ID, "{claims}");
    assert_eq!(claims["nonce"], flow.nonce.as_str(), "{claims}");
    // conformIdTokenClaims: with an access token issued, scope claims are at
    // userinfo only.
    assert!(claims.get("email").is_none(), "{claims}");
    assert!(claims.get("groups").is_none(), "{claims}");

    let access_token = tokens["access_token"].as_str().unwrap();
    let userinfo: Value = http()
        .get(discovery["userinfo_endpoint"].as_str().unwrap())
        .bearer_auth(access_token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(userinfo["sub"], "alice", "{userinfo}");
    assert_eq!(userinfo["email"], "alice@corp.test", "{userinfo}");
    assert_eq!(userinfo["email_verified"], true, "{userinfo}");
    assert_eq!(
        userinfo["groups"],
        serde_json::json!(["eng", "ops"]),
        "{userinfo}"
    );
    assert_eq!(userinfo["is_admin"], true, "{userinfo}");
    // The profile scope was not asked for.
    assert!(userinfo.get("name").is_none(), "{userinfo}");
}

#[tokio::test]
async fn unknown_logins_get_default_claims_and_client_secret_post_works() {
    let (provider, discovery) = start().await;
    let flow = Flow::new(&discovery, "openid email profile groups");
    let code = flow.code(&provider, "bob").await;
    let tokens = flow.exchange(&discovery, &code, false).await;
    verify(&discovery, id_token(&tokens), &flow.nonce)
        .await
        .unwrap();
    let userinfo: Value = http()
        .get(discovery["userinfo_endpoint"].as_str().unwrap())
        .bearer_auth(tokens["access_token"].as_str().unwrap())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(userinfo["sub"], "bob", "{userinfo}");
    assert_eq!(userinfo["email"], "bob@example.test", "{userinfo}");
    assert_eq!(userinfo["name"], "bob", "{userinfo}");
    assert_eq!(userinfo["groups"], serde_json::json!([]), "{userinfo}");
}

#[tokio::test]
async fn pkce_is_required() {
    let (provider, discovery) = start().await;
    let url = Url::parse_with_params(
        discovery["authorization_endpoint"].as_str().unwrap(),
        [
            ("client_id", CLIENT_ID),
            ("redirect_uri", REDIRECT_URI),
            ("response_type", "code"),
            ("scope", "openid"),
            ("state", "s"),
            ("nonce", "n"),
        ],
    )
    .unwrap();
    // The error goes back to the client's redirect URI.
    let callback = provider.sign_in(url.as_str(), "alice").await;
    assert!(
        callback.starts_with(&format!("{REDIRECT_URI}?")),
        "{callback}"
    );
    assert!(callback.contains("error=invalid_request"), "{callback}");
}

#[tokio::test]
async fn broken_modes_rewrite_the_id_token() {
    let (provider, discovery) = start().await;
    let normal = {
        let flow = Flow::new(&discovery, "openid email groups");
        id_token(&flow.tokens(&provider, &discovery, "carol").await).to_string()
    };

    // wrong_audience: the same key re-signs the token for someone else.
    provider.set_mode("wrong_audience").await;
    let flow = Flow::new(&discovery, "openid email groups");
    let tokens = flow.tokens(&provider, &discovery, "carol").await;
    let jwt = id_token(&tokens);
    let claims = jwt_part(jwt, 1);
    assert_eq!(claims["aud"], "someone-else", "{claims}");
    assert_eq!(claims["sub"], "carol", "{claims}");
    assert_eq!(jwt_part(jwt, 0), jwt_part(&normal, 0), "same alg and kid");
    assert!(matches!(
        verify(&discovery, jwt, &flow.nonce).await,
        Err(ClaimsVerificationError::InvalidAudience(_))
    ));
    // The mode stays until changed.
    let flow = Flow::new(&discovery, "openid");
    let again = flow.tokens(&provider, &discovery, "carol").await;
    assert_eq!(jwt_part(id_token(&again), 1)["aud"], "someone-else");

    // tamper_signature: header and payload intact, the signature broken.
    provider.set_mode("tamper_signature").await;
    let flow = Flow::new(&discovery, "openid");
    let tokens = flow.tokens(&provider, &discovery, "carol").await;
    let jwt = id_token(&tokens);
    let claims = jwt_part(jwt, 1);
    assert_eq!(claims["aud"], CLIENT_ID, "{claims}");
    assert_eq!(claims["nonce"], flow.nonce.as_str(), "{claims}");
    let signature = jwt.split('.').nth(2).unwrap();
    assert_eq!(URL_SAFE_NO_PAD.decode(signature).unwrap().len(), 256);
    assert_ne!(signature, normal.split('.').nth(2).unwrap());
    assert!(matches!(
        verify(&discovery, jwt, &flow.nonce).await,
        Err(ClaimsVerificationError::SignatureVerification(_))
    ));

    // expired
    let (flow, jwt) = token_in_mode(&provider, &discovery, "expired").await;
    let claims = jwt_part(&jwt, 1);
    let now = jiff::Timestamp::now().as_second();
    let exp = claims["exp"].as_i64().unwrap();
    let iat = claims["iat"].as_i64().unwrap();
    assert!(
        (now - 3600 - 60..=now - 3600 + 60).contains(&exp),
        "{claims}"
    );
    assert!(
        (now - 7200 - 60..=now - 7200 + 60).contains(&iat),
        "{claims}"
    );
    assert!(matches!(
        verify(&discovery, &jwt, &flow.nonce).await,
        Err(ClaimsVerificationError::Expired(_))
    ));

    // wrong_nonce
    let (flow, jwt) = token_in_mode(&provider, &discovery, "wrong_nonce").await;
    assert_eq!(jwt_part(&jwt, 1)["nonce"], "not-the-nonce");
    assert!(matches!(
        verify(&discovery, &jwt, &flow.nonce).await,
        Err(ClaimsVerificationError::InvalidNonce(_))
    ));

    // wrong_issuer
    let (flow, jwt) = token_in_mode(&provider, &discovery, "wrong_issuer").await;
    assert_eq!(jwt_part(&jwt, 1)["iss"], "http://127.0.0.1:1/other");
    assert!(matches!(
        verify(&discovery, &jwt, &flow.nonce).await,
        Err(ClaimsVerificationError::InvalidIssuer(_))
    ));

    // Back to normal.
    let (flow, jwt) = token_in_mode(&provider, &discovery, "normal").await;
    verify(&discovery, &jwt, &flow.nonce).await.unwrap();
}
