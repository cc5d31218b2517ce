#![allow(clippy::unwrap_used)] // a test file: unwrap is the assertion
//! OpenID Connect sign-in end to end against a real provider (npm
//! `oidc-provider`, tests/oidc): admin web sign-in, client sign-in ending in
//! the loopback redirect, groups and admin claims, membership changes
//! reaching connected clients, and every forged or broken answer refused.

mod support;

use std::time::{Duration, Instant};

use postern_portal::domain::TokenKind;
use reqwest::Method;
use serde_json::{Value, json};
use support::channel::{Peer, key};
use support::email::confirm;
use support::oidc::OidcProvider;
use support::postgres::TempPostgres;
use support::web::{Browser, Page, WebPortal, query_param};

const CLIENT_ID: &str = "postern-acme";
const CLIENT_SECRET: &str = "provider-secret-0123456789-abcdefghij";
const REDIRECT: &str = "http://127.0.0.1:45998/callback";
const CLIENT_STATE: &str = "client-state-0123456789";
const CLIENT_NONCE: &str = "client-nonce-0123456789abcdef";

struct Lab {
    portal: WebPortal,
    idp: OidcProvider,
    provider: String,
}

/// A portal with an OIDC provider registered through the API, pointing at a
/// real provider that knows the portal's callback.
async fn lab() -> Lab {
    lab_on(None).await
}

async fn lab_on(database: Option<String>) -> Lab {
    let portal = WebPortal::start_on(database, |_| {}).await;
    let (status, created) = portal
        .api(
            Method::POST,
            "/identity_providers",
            Some(json!({
                "type": "oidc", "name": "Corp IdP", "issuer": "http://127.0.0.1:1",
                "client_id": CLIENT_ID, "client_secret": CLIENT_SECRET,
                "groups_claim": "groups", "admin_claim": "is_admin",
                "client_session_lifetime_secs": 3600
            })),
        )
        .await;
    assert_eq!(status, 201, "{created}");
    let provider = created["id"].as_str().unwrap().to_string();
    let callback = created["redirect_uri"].as_str().unwrap().to_string();
    assert_eq!(
        callback,
        format!("{}/acme/sign_in/oidc/{provider}/callback", portal.base)
    );
    let idp = OidcProvider::start(CLIENT_ID, CLIENT_SECRET, &[callback]).await;
    let (status, patched) = portal
        .api(
            Method::PATCH,
            &format!("/identity_providers/{provider}"),
            Some(json!({"issuer": idp.issuer})),
        )
        .await;
    // The secret never follows the provider to a new issuer unasked.
    assert_eq!(status, 409, "{patched}");
    assert_eq!(patched["field"], "client_secret", "{patched}");
    let (status, patched) = portal
        .api(
            Method::PATCH,
            &format!("/identity_providers/{provider}"),
            Some(json!({"issuer": idp.issuer, "client_secret": CLIENT_SECRET})),
        )
        .await;
    assert_eq!(status, 200, "{patched}");
    Lab {
        portal,
        idp,
        provider,
    }
}

impl Lab {
    fn start_url(&self, client: bool) -> String {
        let query = if client {
            format!(
                "?client_state={CLIENT_STATE}&client_challenge={}&redirect_uri={}",
                postern_portal::auth::token::challenge_of(CLIENT_NONCE),
                url::form_urlencoded::byte_serialize(REDIRECT.as_bytes()).collect::<String>()
            )
        } else {
            String::new()
        };
        format!(
            "{}/acme/sign_in/oidc/{}{query}",
            self.portal.base, self.provider
        )
    }

    /// Starts at the portal, signs in at the provider as `login`, and
    /// returns the callback URL the provider sent the browser to.
    async fn to_callback(&self, browser: &mut Browser, login: &str, client: bool) -> String {
        let start = browser.get(&self.start_url(client)).await;
        assert_eq!(start.status, 303, "{}", start.body);
        let authorize = start.location.unwrap();
        assert!(authorize.starts_with(&self.idp.issuer), "{authorize}");
        assert_eq!(
            query_param(&authorize, "code_challenge_method").as_deref(),
            Some("S256")
        );
        assert!(browser.cookies.contains_key("postern_oidc"));
        self.idp.sign_in(&authorize, login).await
    }

    /// The whole browser flow; a client sign-in says yes on the "connect
    /// this device?" page when it comes.
    async fn sign_in(&self, browser: &mut Browser, login: &str, client: bool) -> Page {
        let callback = self.to_callback(browser, login, client).await;
        let started = Instant::now();
        let page = browser.get(&callback).await;
        println!(
            "callback answered in {:?} (discovery, code exchange, JWKS, userinfo)",
            started.elapsed()
        );
        if client && page.status == 200 {
            return confirm(&self.portal.base, browser, &page).await;
        }
        page
    }

    async fn group_named(&self, name: &str) -> Option<Value> {
        let (_, groups) = self.portal.api(Method::GET, "/groups", None).await;
        groups["data"]
            .as_array()
            .unwrap()
            .iter()
            .find(|g| g["name"] == name)
            .cloned()
    }

    async fn members(&self, group: &Value) -> Vec<Value> {
        let path = format!("/groups/{}/members", group["id"].as_str().unwrap());
        let (status, members) = self.portal.api(Method::GET, &path, None).await;
        assert_eq!(status, 200, "{members}");
        members["actor_ids"].as_array().unwrap().clone()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_admin_signs_in_to_the_web_portal_and_the_secret_stays_sealed() {
    let lab = lab().await;
    let (_, shown) = lab
        .portal
        .api(
            Method::GET,
            &format!("/identity_providers/{}", lab.provider),
            None,
        )
        .await;
    assert!(shown.get("client_secret").is_none(), "{shown}");
    assert!(!shown.to_string().contains(CLIENT_SECRET));
    let mut tx = lab.portal.state.store.read().await.unwrap();
    let sealed: String = sqlx::query_scalar("SELECT client_secret FROM identity_providers")
        .fetch_one(&mut *tx)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    assert!(
        sealed.starts_with("v1:") && !sealed.contains(CLIENT_SECRET),
        "{sealed}"
    );

    let mut browser = Browser::new();
    let page = browser
        .get(&format!("{}/acme/sign_in", lab.portal.base))
        .await;
    assert!(page.body.contains("Sign in with Corp IdP"), "{}", page.body);

    // The admin made by `portal init` is found by its verified email.
    lab.idp
        .set_account("root-sub", "admin@example.test", &[], true)
        .await;
    let done = lab.sign_in(&mut browser, "root-sub", false).await;
    assert_eq!(done.status, 303, "{}", done.body);
    assert_eq!(done.location.as_deref(), Some("/acme/"));
    assert!(
        !browser.cookies.contains_key("postern_oidc"),
        "the state cookie is spent"
    );
    let home = browser.get(&format!("{}/acme/", lab.portal.base)).await;
    assert_eq!(home.status, 200);
    assert!(home.body.contains("admin@example.test"), "{}", home.body);

    // A claim saying "not admin" cannot demote the account's last admin.
    lab.idp
        .set_account("root-sub", "admin@example.test", &[], false)
        .await;
    let again = lab.sign_in(&mut Browser::new(), "root-sub", false).await;
    assert_eq!(again.status, 303, "still an admin: {}", again.body);
    let (status, _) = lab.portal.api(Method::GET, "/sites", None).await;
    assert_eq!(status, 200, "the admin's API token still works");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_sign_in_maps_groups_and_the_admin_claim() {
    let lab = lab().await;
    let alice = lab
        .portal
        .add_actor("Alice", "alice@corp.test", "user")
        .await;
    // A group an admin made, with a member an admin added: left alone.
    let (_, team) = lab
        .portal
        .api(
            Method::POST,
            "/groups",
            Some(json!({"name": "static-team"})),
        )
        .await;
    let team_path = format!("/groups/{}/members", team["id"].as_str().unwrap());
    let (status, _) = lab
        .portal
        .api(Method::PUT, &team_path, Some(json!({"actor_ids": [alice]})))
        .await;
    assert_eq!(status, 200);

    lab.idp
        .set_account(
            "alice-sub",
            "alice@corp.test",
            &["eng", "ops", "static-team", "Everyone"],
            false,
        )
        .await;
    let mut browser = Browser::new();
    let done = lab.sign_in(&mut browser, "alice-sub", true).await;
    assert_eq!(done.status, 303, "{}", done.body);
    let location = done.location.unwrap();
    assert!(location.starts_with(REDIRECT), "{location}");
    assert_eq!(
        query_param(&location, "state").as_deref(),
        Some(CLIENT_STATE)
    );
    assert_eq!(
        query_param(&location, "actor_name").as_deref(),
        Some("Alice")
    );
    let fragment = query_param(&location, "fragment").unwrap();

    let store = &lab.portal.state.store;
    let now = jiff::Timestamp::now();
    let token = format!("{CLIENT_NONCE}~{fragment}");
    let record = postern_portal::auth::authenticate(store, &token, now)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(record.kind, TokenKind::Client);
    assert_eq!(
        record.identity_provider_id.unwrap().to_string(),
        lab.provider
    );
    let lifetime = record.expires_at.unwrap().duration_since(now).as_secs();
    assert!(
        (3540..=3600).contains(&lifetime),
        "the provider's lifetime: {lifetime}"
    );
    assert!(
        postern_portal::auth::authenticate(store, &fragment, now)
            .await
            .unwrap()
            .is_none(),
        "without the nonce the fragment is useless"
    );

    // Groups claim -> provider groups created, memberships set.
    let eng = lab.group_named("eng").await.unwrap();
    let ops = lab.group_named("ops").await.unwrap();
    assert_eq!(eng["kind"], "provider");
    assert_eq!(lab.members(&eng).await, [json!(alice)]);
    assert_eq!(lab.members(&ops).await, [json!(alice)]);

    // The next sign-in follows the claims: out of ops and static-team's
    // claim, admin by the claim; the admin-made membership stays.
    lab.idp
        .set_account("alice-sub", "alice@corp.test", &["eng"], true)
        .await;
    let again = lab.sign_in(&mut Browser::new(), "alice-sub", true).await;
    assert_eq!(again.status, 303, "{}", again.body);
    assert_eq!(lab.members(&eng).await, [json!(alice)]);
    assert!(lab.members(&ops).await.is_empty());
    let team = lab.group_named("static-team").await.unwrap();
    assert_eq!(
        lab.members(&team).await,
        [json!(alice)],
        "an admin's membership stays"
    );
    let (_, actor) = lab
        .portal
        .api(Method::GET, &format!("/actors/{alice}"), None)
        .await;
    assert_eq!(actor["role"], "admin");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_replayed_and_broken_answers_are_refused() {
    let lab = lab().await;
    lab.portal
        .add_actor("Alice", "alice@corp.test", "user")
        .await;
    lab.idp
        .set_account("alice-sub", "alice@corp.test", &[], false)
        .await;

    // Replayed code: the second use of a callback finds nothing.
    let mut browser = Browser::new();
    let callback = lab.to_callback(&mut browser, "alice-sub", true).await;
    let cookie = browser.cookies["postern_oidc"].clone();
    let asked = browser.get(&callback).await;
    assert_eq!(asked.status, 200, "the confirmation page: {}", asked.body);
    browser.cookies.insert("postern_oidc".into(), cookie);
    let replayed = browser.get(&callback).await;
    assert_eq!(replayed.status, 400, "{}", replayed.body);
    assert!(replayed.body.contains("already used"), "{}", replayed.body);

    // Wrong state: not this browser's, or not any sign-in's.
    let mut browser = Browser::new();
    let callback = lab.to_callback(&mut browser, "alice-sub", true).await;
    let state = query_param(&callback, "state").unwrap();
    let forged = callback.replace(&state, "forged-state-value");
    let refused = browser.get(&forged).await;
    assert_eq!(refused.status, 400);
    assert!(refused.body.contains("another browser"), "{}", refused.body);
    browser
        .cookies
        .insert("postern_oidc".into(), "forged-state-value".into());
    let refused = browser.get(&forged).await;
    assert_eq!(refused.status, 400);
    assert!(refused.body.contains("already used or has expired"));

    // Broken ID tokens: refused, with our words only (the details are in
    // the log, under the reference the page shows).
    for mode in [
        "expired",
        "wrong_audience",
        "tamper_signature",
        "wrong_nonce",
        "wrong_issuer",
    ] {
        lab.idp.set_mode(mode).await;
        let page = lab.sign_in(&mut Browser::new(), "alice-sub", true).await;
        assert_eq!(page.status, 401, "{mode}: {}", page.body);
        assert!(
            page.body.contains("(its ID token) is not valid") && page.body.contains("reference"),
            "{mode}: {}",
            page.body
        );
    }
    lab.idp.set_mode("normal").await;

    // Nobody with that email, or an unverified email: no sign-in.
    lab.idp
        .set_account("mallory", "mallory@corp.test", &[], true)
        .await;
    let page = lab.sign_in(&mut Browser::new(), "mallory", false).await;
    assert_eq!(page.status, 403);
    assert!(page.body.contains("no user of this account matches"));
    lab.idp
        .set_account_claims(&json!({
            "sub": "alice-other", "email": "alice@corp.test", "email_verified": false
        }))
        .await;
    let page = lab.sign_in(&mut Browser::new(), "alice-other", true).await;
    assert_eq!(page.status, 403, "{}", page.body);

    // The provider's own refusal is named by its standard code, never by
    // the text the callback carries.
    let denied = Browser::new()
        .get(&format!(
            "{}/acme/sign_in/oidc/{}/callback?error=access_denied&error_description=Call%20555-0100",
            lab.portal.base, lab.provider
        ))
        .await;
    assert_eq!(denied.status, 401);
    assert!(denied.body.contains("access_denied"));
    assert!(!denied.body.contains("555-0100"), "{}", denied.body);
    let odd = Browser::new()
        .get(&format!(
            "{}/acme/sign_in/oidc/{}/callback?error=Visit%20evil.example",
            lab.portal.base, lab.provider
        ))
        .await;
    assert_eq!(odd.status, 401);
    assert!(!odd.body.contains("evil.example"), "{}", odd.body);
    // And a normal sign-in still works afterwards.
    let page = lab.sign_in(&mut Browser::new(), "alice-sub", true).await;
    assert_eq!(page.status, 303, "{}", page.body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn group_changes_reach_connected_clients_and_deleting_the_provider_disconnects() {
    let lab = lab().await;
    let portal = &lab.portal;
    portal.add_actor("Alice", "alice@corp.test", "user").await;
    let (_, site) = portal
        .api(Method::POST, "/sites", Some(json!({"name": "Office"})))
        .await;
    let (status, resource) = portal
        .api(
            Method::POST,
            "/resources",
            Some(
                json!({"name": "Lab net", "type": "cidr", "address": "10.20.0.0/24",
                        "site_id": site["id"], "filters": []}),
            ),
        )
        .await;
    assert_eq!(status, 201, "{resource}");
    // The provider's group "eng" comes with the first sign-in that claims it
    // (a claim never joins a group an admin made); the policy follows.
    lab.idp
        .set_account("alice-sub", "alice@corp.test", &["eng"], false)
        .await;
    let first = lab.sign_in(&mut Browser::new(), "alice-sub", true).await;
    assert_eq!(first.status, 303, "{}", first.body);
    let eng = lab.group_named("eng").await.unwrap();
    assert_eq!(eng["kind"], "provider");
    let (status, _) = portal
        .api(
            Method::POST,
            "/policies",
            Some(json!({"group_id": eng["id"], "resource_id": resource["id"]})),
        )
        .await;
    assert_eq!(status, 201);

    let done = lab.sign_in(&mut Browser::new(), "alice-sub", true).await;
    let fragment = query_param(done.location.as_deref().unwrap(), "fragment").unwrap();
    let token = format!("{CLIENT_NONCE}~{fragment}");
    let addr = portal
        .base
        .strip_prefix("http://")
        .unwrap()
        .parse()
        .unwrap();
    let mut client = Peer::connect(addr, "/v1/client", &token, "laptop", &key(7))
        .await
        .unwrap();
    let init = client.next().await;
    assert_eq!(init["type"], "init", "{init}");
    assert!(init.to_string().contains("10.20.0.0/24"), "{init}");

    // The IdP drops her from eng; her next sign-in (say, on another device)
    // applies it to the connected client at once.
    lab.idp
        .set_account("alice-sub", "alice@corp.test", &[], false)
        .await;
    let started = Instant::now();
    let again = lab.sign_in(&mut Browser::new(), "alice-sub", true).await;
    assert_eq!(again.status, 303);
    let signed_in = started.elapsed();
    let removed = client.next_of("resource_removed").await;
    let latency = started.elapsed() - signed_in;
    assert_eq!(removed["id"], resource["id"], "{removed}");
    println!("membership change reached the client {latency:?} after the sign-in");
    assert!(latency < Duration::from_secs(1), "{latency:?}");

    // Deleting the provider revokes its sign-ins at once.
    let started = Instant::now();
    let (status, _) = portal
        .api(
            Method::DELETE,
            &format!("/identity_providers/{}", lab.provider),
            None,
        )
        .await;
    assert_eq!(status, 204);
    let disconnect = client.next_of("disconnect").await;
    assert_eq!(disconnect["reason"], "token_revoked");
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
    let store = &portal.state.store;
    assert!(
        postern_portal::auth::authenticate(store, &token, jiff::Timestamp::now())
            .await
            .unwrap()
            .is_none()
    );
}

/// The sign-in's store work (pending sign-ins, identities, claimed groups)
/// on PostgreSQL, the engine of several portal nodes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sign_in_works_on_postgres_too() {
    let server = TempPostgres::start_named("oidc");
    let lab = lab_on(Some(server.database("oidc").await)).await;
    let alice = lab
        .portal
        .add_actor("Alice", "alice@corp.test", "user")
        .await;
    lab.idp
        .set_account("alice-sub", "alice@corp.test", &["eng", "Everyone"], false)
        .await;
    let callback = lab
        .to_callback(&mut Browser::new(), "alice-sub", true)
        .await;
    let mut browser = Browser::new();
    let done = lab.sign_in(&mut browser, "alice-sub", true).await;
    assert_eq!(done.status, 303, "{}", done.body);
    let eng = lab.group_named("eng").await.unwrap();
    assert_eq!(lab.members(&eng).await, [json!(alice)]);
    // The first, unfinished sign-in's callback arrives late, without its
    // browser's cookie: refused.
    let late = browser.get(&callback).await;
    assert_eq!(late.status, 400);
    lab.idp
        .set_account("alice-sub", "alice@corp.test", &[], false)
        .await;
    let again = lab.sign_in(&mut Browser::new(), "alice-sub", true).await;
    assert_eq!(again.status, 303, "{}", again.body);
    assert!(lab.members(&eng).await.is_empty());
}

/// What a page may never show of a provider's or the HTTP client's words.
fn leaks(body: &str) -> Option<&'static str> {
    [
        "10.9.8.7",
        "PROVIDER-INTERNAL-DETAIL",
        "invalid_grant",
        "error sending request",
        "onnection refused",
        "127.0.0.1:",
        "larger than",
        "discovery document",
    ]
    .into_iter()
    .find(|needle| body.contains(needle))
}

/// Review M3: a provider whose discovery document names a plain-http token
/// endpoint (on a private address), or is 10 MiB, is refused before the
/// browser leaves the portal, on a generic page.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_discovery_documents_are_refused_without_detail() {
    let lab = lab().await;
    lab.portal
        .add_actor("Alice", "alice@corp.test", "user")
        .await;
    lab.idp
        .set_account("alice-sub", "alice@corp.test", &[], false)
        .await;
    for mode in ["http_token_endpoint", "huge_discovery"] {
        lab.idp.set_mode(mode).await;
        let mut browser = Browser::new();
        let started = Instant::now();
        let page = browser.get(&lab.start_url(true)).await;
        println!("{mode}: refused in {:?}", started.elapsed());
        assert_eq!(page.status, 502, "{mode}: {}", page.body);
        assert!(
            page.location.is_none(),
            "{mode}: no redirect to the provider"
        );
        assert!(
            page.body
                .contains("cannot be reached or is not set up right"),
            "{mode}: {}",
            page.body
        );
        assert_eq!(leaks(&page.body), None, "{mode}: {}", page.body);
    }
    lab.idp.set_mode("normal").await;
    let page = lab.sign_in(&mut Browser::new(), "alice-sub", true).await;
    assert_eq!(page.status, 303, "{}", page.body);
}

/// Review M3: a token endpoint that answers 10 MiB, or an error with
/// internal details, fails the sign-in on a generic page.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_token_answers_are_refused_without_detail() {
    let lab = lab().await;
    lab.portal
        .add_actor("Alice", "alice@corp.test", "user")
        .await;
    lab.idp
        .set_account("alice-sub", "alice@corp.test", &[], false)
        .await;
    for (mode, words) in [
        ("token_error", "did not accept this sign-in"),
        ("huge_token", "did not accept this sign-in"),
    ] {
        let mut browser = Browser::new();
        let callback = lab.to_callback(&mut browser, "alice-sub", true).await;
        lab.idp.set_mode(mode).await;
        let page = browser.get(&callback).await;
        lab.idp.set_mode("normal").await;
        assert_eq!(leaks(&page.body), None, "{mode}: {}", page.body);
        assert_eq!(page.status, 401, "{mode}: {}", page.body);
        assert!(page.body.contains(words), "{mode}: {}", page.body);
    }
}

/// Review M3 and L11: on a portal browsers reach over https, an issuer on
/// loopback (another daemon's port) is refused when it is configured, and a
/// name resolving to loopback is refused when it is called, with nothing of
/// the attempt in the page.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn providers_on_loopback_are_refused_outside_development() {
    let portal = WebPortal::start(|state| {
        state.external_url = Some("https://portal.example.test".into());
    })
    .await;
    let create = |issuer: &str| {
        json!({
            "type": "oidc", "name": format!("IdP {issuer}"), "issuer": issuer,
            "client_id": CLIENT_ID, "client_secret": CLIENT_SECRET,
        })
    };
    for issuer in [
        "http://127.0.0.1:9100",
        "https://127.0.0.1:9100",
        "https://169.254.169.254",
    ] {
        let (status, problem) = portal
            .api(Method::POST, "/identity_providers", Some(create(issuer)))
            .await;
        assert_eq!(status, 422, "{issuer}: {problem}");
    }
    // A name is only checked when it is resolved: `localhost` is.
    let (status, created) = portal
        .api(
            Method::POST,
            "/identity_providers",
            Some(create("https://localhost:9")),
        )
        .await;
    assert_eq!(status, 201, "{created}");
    let page = Browser::new()
        .get(&format!(
            "{}/acme/sign_in/oidc/{}",
            portal.base,
            created["id"].as_str().unwrap()
        ))
        .await;
    assert_eq!(page.status, 502, "{}", page.body);
    assert_eq!(leaks(&page.body), None, "{}", page.body);
    assert!(!page.body.contains("localhost"), "{}", page.body);
}

/// L11: without `--external-url` there is no OpenID Connect (the redirect
/// URI would come from the Host header).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn providers_need_the_external_url() {
    let portal = WebPortal::start(|state| state.external_url = None).await;
    let (status, problem) = portal
        .api(
            Method::POST,
            "/identity_providers",
            Some(json!({
                "type": "oidc", "name": "IdP", "issuer": "https://id.example.com",
                "client_id": CLIENT_ID, "client_secret": CLIENT_SECRET,
            })),
        )
        .await;
    assert_eq!(status, 409, "{problem}");
    assert!(
        problem["detail"]
            .as_str()
            .unwrap()
            .contains("--external-url"),
        "{problem}"
    );
}

/// Review L2: the admin claim is read strictly. `"False"`, `"no"`, `1` or a
/// non-empty list from the provider never make an admin; `true`, `"TRUE"`
/// or the provider's configured `admin_claim_value` do.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_a_true_admin_claim_makes_an_admin() {
    let lab = lab().await;
    let alice = lab
        .portal
        .add_actor("Alice", "alice@corp.test", "user")
        .await;
    let role = || async {
        let (_, actor) = lab
            .portal
            .api(Method::GET, &format!("/actors/{alice}"), None)
            .await;
        actor["role"].as_str().unwrap().to_string()
    };
    let sign_in_with = |is_admin: Value| {
        let lab = &lab;
        async move {
            lab.idp
                .set_account_claims(&json!({
                    "sub": "alice-sub", "email": "alice@corp.test", "email_verified": true,
                    "is_admin": is_admin,
                }))
                .await;
            let page = lab.sign_in(&mut Browser::new(), "alice-sub", true).await;
            assert_eq!(page.status, 303, "{}", page.body);
        }
    };
    for not_admin in [
        json!("False"),
        json!("FALSE"),
        json!("no"),
        json!("off"),
        json!(["x"]),
        json!(["postern-admin"]),
        json!(1),
        json!({"admin": true}),
    ] {
        sign_in_with(not_admin.clone()).await;
        assert_eq!(role().await, "user", "{not_admin} must not make an admin");
    }
    for admin in [json!(true), json!("TRUE")] {
        sign_in_with(admin.clone()).await;
        assert_eq!(role().await, "admin", "{admin}");
        sign_in_with(json!(false)).await;
        assert_eq!(role().await, "user");
    }

    // A roles list: admin when it holds the configured value.
    let (status, patched) = lab
        .portal
        .api(
            Method::PATCH,
            &format!("/identity_providers/{}", lab.provider),
            Some(json!({"admin_claim_value": "postern-admin"})),
        )
        .await;
    assert_eq!(status, 200, "{patched}");
    assert_eq!(patched["admin_claim_value"], "postern-admin");
    sign_in_with(json!(["x"])).await;
    assert_eq!(role().await, "user");
    sign_in_with(json!(["staff", "postern-admin"])).await;
    assert_eq!(role().await, "admin");
    sign_in_with(json!("Postern-Admin")).await;
    assert_eq!(role().await, "user", "the configured value matches exactly");
}

/// Review L1: a groups claim that names a group an admin made (say, from a
/// self-service group at the provider) does not join it; the provider's own
/// groups still follow the claim.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_groups_claim_never_joins_an_admin_made_group() {
    let lab = lab().await;
    let alice = lab
        .portal
        .add_actor("Alice", "alice@corp.test", "user")
        .await;
    let (status, admins) = lab
        .portal
        .api(
            Method::POST,
            "/groups",
            Some(json!({"name": "Prod-DB-Admins"})),
        )
        .await;
    assert_eq!(status, 201, "{admins}");
    lab.idp
        .set_account(
            "alice-sub",
            "alice@corp.test",
            &["Prod-DB-Admins", "eng"],
            false,
        )
        .await;
    let done = lab.sign_in(&mut Browser::new(), "alice-sub", true).await;
    assert_eq!(done.status, 303, "{}", done.body);
    assert!(
        lab.members(&admins).await.is_empty(),
        "the claim must not join an admin-made group"
    );
    let admins_now = lab.group_named("Prod-DB-Admins").await.unwrap();
    assert_eq!(admins_now["kind"], "static");
    let eng = lab.group_named("eng").await.unwrap();
    assert_eq!(eng["kind"], "provider");
    assert_eq!(lab.members(&eng).await, [json!(alice)]);
}

/// Review L3: a link that starts a client sign-in, opened by someone with a
/// live session at the provider, completes at the provider without a click;
/// it must stop at the portal's "connect this device?" page, not hand a
/// token to whatever listens on the link's loopback port.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_sign_in_link_stops_at_the_confirmation() {
    let lab = lab().await;
    lab.portal
        .add_actor("Alice", "alice@corp.test", "user")
        .await;
    lab.idp
        .set_account("alice-sub", "alice@corp.test", &[], false)
        .await;
    let mut browser = Browser::new();
    let callback = lab.to_callback(&mut browser, "alice-sub", true).await;
    let page = browser.get(&callback).await;
    assert_eq!(page.status, 200, "{}", page.body);
    assert!(
        page.location.is_none(),
        "no redirect to the loopback listener"
    );
    assert!(
        page.body
            .contains("Connect this device to <b>acme</b> as Alice"),
        "{}",
        page.body
    );
    assert!(!page.body.contains("fragment"), "{}", page.body);
    let done = confirm(&lab.portal.base, &mut browser, &page).await;
    assert_eq!(done.status, 303, "{}", done.body);
    assert!(done.location.unwrap().starts_with(REDIRECT));
}

/// SPEC 7.3: a provider that provisions users makes a verified stranger a
/// user at first sign-in, with groups and role read from nested claims
/// (Keycloak's `realm_access.roles`, Zitadel's role object); an unverified
/// email, or a provider that does not provision, still finds no one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_provisioning_provider_makes_users_with_nested_claims() {
    let lab = lab().await;
    let zitadel = "urn:zitadel:iam:org:project:roles";
    let configure =
        |provision: bool| {
            let lab = &lab;
            async move {
                let (status, patched) = lab
                .portal
                .api(
                    Method::PATCH,
                    &format!("/identity_providers/{}", lab.provider),
                    Some(json!({"provision_users": provision, "groups_claim": "realm_access.roles",
                                "admin_claim": zitadel, "admin_claim_value": "postern-admin"})),
                )
                .await;
                assert_eq!(status, 200, "{patched}");
                assert_eq!(patched["provision_users"], provision);
            }
        };
    let stranger = |sub: &str, verified: bool| {
        json!({"sub": sub, "email": format!("{sub}@corp.test"), "email_verified": verified,
               "name": format!("New {sub}"),
               "realm_access": {"roles": ["eng", "ops"]},
               zitadel: {"postern-admin": {"1234": "corp.test"}}})
    };
    let actor_named = |email: String| {
        let lab = &lab;
        async move {
            let (_, actors) = lab.portal.api(Method::GET, "/actors", None).await;
            actors["data"]
                .as_array()
                .unwrap()
                .iter()
                .find(|a| a["email"] == email.as_str())
                .cloned()
        }
    };

    // Not provisioning: a stranger finds no one.
    configure(false).await;
    lab.idp.set_account_claims(&stranger("carol", true)).await;
    let page = lab.sign_in(&mut Browser::new(), "carol", true).await;
    assert_eq!(page.status, 403, "{}", page.body);
    assert!(actor_named("carol@corp.test".into()).await.is_none());

    // Provisioning: the verified stranger becomes a user, named by the
    // claim, in the groups of the nested roles, admin by the role object.
    configure(true).await;
    let page = lab.sign_in(&mut Browser::new(), "carol", true).await;
    assert_eq!(page.status, 303, "{}", page.body);
    let carol = actor_named("carol@corp.test".into())
        .await
        .expect("carol was provisioned");
    assert_eq!(carol["name"], "New carol");
    assert_eq!(carol["role"], "admin");
    for group in ["eng", "ops"] {
        let group = lab.group_named(group).await.unwrap();
        assert_eq!(lab.members(&group).await, [carol["id"].clone()]);
    }
    let (_, log) = lab.portal.api(Method::GET, "/audit_log", None).await;
    assert!(
        log["data"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["action"] == "actor.provision" && e["object_id"] == carol["id"]),
        "the provisioning is audited"
    );
    // A second sign-in finds the same user (linked by subject).
    let page = lab.sign_in(&mut Browser::new(), "carol", true).await;
    assert_eq!(page.status, 303, "{}", page.body);
    let (_, actors) = lab.portal.api(Method::GET, "/actors", None).await;
    let carols = actors["data"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|a| a["email"] == "carol@corp.test")
        .count();
    assert_eq!(carols, 1);

    // An unverified email is no one's, provisioning or not.
    lab.idp
        .set_account_claims(&stranger("mallory", false))
        .await;
    let page = lab.sign_in(&mut Browser::new(), "mallory", true).await;
    assert_eq!(page.status, 403, "{}", page.body);
    assert!(actor_named("mallory@corp.test".into()).await.is_none());
}
