#![allow(clippy::unwrap_used)] // a test file: unwrap is the assertion
//! Email one-time codes end to end over real HTTP and a real SMTP exchange
//! (SPEC F1, F3, F5, F6): the code arrives, works once, expires, three wrong
//! tries lock it; unknown addresses get the same answer and no mail; CSRF,
//! rate limits, client sign-in with the loopback redirect, web sessions.

mod support;

use postern_portal::auth::email::Mailer;
use postern_portal::domain::TokenKind;
use support::smtp::SmtpServer;
use support::web::{Browser, Page, WebPortal, query_param};

const REDIRECT: &str = "http://127.0.0.1:45999/callback";
const CLIENT_STATE: &str = "client-state-0123456789";
const CLIENT_NONCE: &str = "client-nonce-0123456789abcdef";

async fn portal_with_mail() -> (WebPortal, SmtpServer) {
    let smtp = SmtpServer::start().await;
    let url = smtp.url();
    let portal = WebPortal::start(|state| {
        state.mailer = Mailer::smtp(&url, "Postern <postern@example.test>").unwrap();
    })
    .await;
    (portal, smtp)
}

/// Opens the sign-in page (getting the CSRF cookie) and asks for a code.
async fn ask_code(portal: &WebPortal, browser: &mut Browser, email: &str, client: bool) -> Page {
    let query = if client {
        format!(
            "?client_state={CLIENT_STATE}&client_nonce={CLIENT_NONCE}&redirect_uri={}",
            url::form_urlencoded::byte_serialize(REDIRECT.as_bytes()).collect::<String>()
        )
    } else {
        String::new()
    };
    let page = browser
        .get(&format!("{}/acme/sign_in{query}", portal.base))
        .await;
    assert_eq!(page.status, 200, "{}", page.body);
    let csrf = page.hidden("csrf").unwrap();
    let mut form = vec![("email", email.to_string()), ("csrf", csrf)];
    for field in ["client_state", "client_nonce", "redirect_uri"] {
        if let Some(value) = page.hidden(field) {
            form.push((field, value));
        }
    }
    let form: Vec<(&str, &str)> = form.iter().map(|(k, v)| (*k, v.as_str())).collect();
    browser
        .post(&format!("{}/acme/sign_in/email", portal.base), &form)
        .await
}

/// Submits `code` on the code page `page`.
async fn enter_code(portal: &WebPortal, browser: &mut Browser, page: &Page, code: &str) -> Page {
    let mut form = vec![("code", code.to_string())];
    for field in [
        "email",
        "csrf",
        "client_state",
        "client_nonce",
        "redirect_uri",
    ] {
        if let Some(value) = page.hidden(field) {
            form.push((field, value));
        }
    }
    let form: Vec<(&str, &str)> = form.iter().map(|(k, v)| (*k, v.as_str())).collect();
    browser
        .post(&format!("{}/acme/sign_in/email/verify", portal.base), &form)
        .await
}

/// The 8-digit code in a mail.
fn code_in(data: &str) -> String {
    let subject = data
        .lines()
        .find(|l| l.starts_with("Subject:"))
        .unwrap_or_default();
    let code: String = subject.chars().filter(char::is_ascii_digit).collect();
    assert_eq!(code.len(), 8, "{data}");
    assert!(data.contains(&format!("    {code}")), "{data}");
    code
}

#[tokio::test]
async fn a_code_arrives_by_smtp_and_works_once() {
    let (portal, mut smtp) = portal_with_mail().await;
    let mut browser = Browser::new();
    let started = std::time::Instant::now();
    let page = ask_code(&portal, &mut browser, "Admin@Example.test", false).await;
    assert_eq!(page.status, 200, "{}", page.body);
    assert!(page.body.contains("a sign-in code is on its way"));
    let answered = started.elapsed();
    let mail = smtp.next(10).await.expect("the code arrives");
    println!(
        "code page answered after {answered:?}, mail received after {:?}",
        started.elapsed()
    );
    assert_eq!(mail.to, ["admin@example.test"]);
    let code = code_in(&mail.data);

    // Only the Argon2 hash is stored.
    let mut tx = portal.state.store.read().await.unwrap();
    let stored: String = sqlx::query_scalar("SELECT hash FROM email_codes")
        .fetch_one(&mut *tx)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    assert!(
        stored.starts_with("$argon2id$") && !stored.contains(&code),
        "{stored}"
    );

    let started = std::time::Instant::now();
    let signed_in = enter_code(
        &portal,
        &mut browser,
        &page,
        &format!("{} {}", &code[..4], &code[4..]),
    )
    .await;
    println!("code checked and session made in {:?}", started.elapsed());
    assert_eq!(signed_in.status, 303, "{}", signed_in.body);
    assert_eq!(signed_in.location.as_deref(), Some("/acme/"));
    assert!(browser.cookies.contains_key("postern_session"));
    let home = browser.get(&format!("{}/acme/", portal.base)).await;
    assert_eq!(home.status, 200);
    assert!(
        home.body.contains("Signed in to <b>acme</b>"),
        "{}",
        home.body
    );

    // Single use.
    let again = enter_code(&portal, &mut browser, &page, &code).await;
    assert_eq!(again.status, 401);
    assert!(again.body.contains("wrong, used or expired"));

    // Sign-out needs the CSRF token, then the session is gone.
    let refused = browser
        .post(
            &format!("{}/acme/sign_out", portal.base),
            &[("csrf", "forged")],
        )
        .await;
    assert_eq!(refused.status, 403);
    let csrf = home.hidden("csrf").unwrap();
    let session = browser.cookies["postern_session"].clone();
    let out = browser
        .post(
            &format!("{}/acme/sign_out", portal.base),
            &[("csrf", &csrf)],
        )
        .await;
    assert_eq!(out.status, 303);
    assert_eq!(out.location.as_deref(), Some("/acme/sign_in"));
    browser.cookies.insert("postern_session".into(), session);
    let home = browser.get(&format!("{}/acme/", portal.base)).await;
    assert_eq!(home.status, 303, "a revoked session no longer works");
}

#[tokio::test]
async fn three_wrong_codes_lock_it_and_old_codes_expire() {
    let (portal, mut smtp) = portal_with_mail().await;
    let mut browser = Browser::new();
    let page = ask_code(&portal, &mut browser, "admin@example.test", false).await;
    let code = code_in(&smtp.next(10).await.unwrap().data);
    let wrong = if code == "00000000" {
        "11111111"
    } else {
        "00000000"
    };
    for _ in 0..3 {
        let answer = enter_code(&portal, &mut browser, &page, wrong).await;
        assert_eq!(answer.status, 401);
    }
    let locked = enter_code(&portal, &mut browser, &page, &code).await;
    assert_eq!(
        locked.status, 401,
        "the right code after 3 wrong ones is refused"
    );

    // A new code works until it expires.
    let page = ask_code(&portal, &mut browser, "admin@example.test", false).await;
    let code = code_in(&smtp.next(10).await.unwrap().data);
    let mut tx = portal.state.store.write().await.unwrap();
    sqlx::query("UPDATE email_codes SET expires_at = 1")
        .execute(&mut *tx)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    let expired = enter_code(&portal, &mut browser, &page, &code).await;
    assert_eq!(expired.status, 401, "an expired code is refused");
}

#[tokio::test]
async fn unknown_addresses_get_the_same_answer_and_no_mail() {
    let (portal, mut smtp) = portal_with_mail().await;
    let mut browser = Browser::new();
    let known = ask_code(&portal, &mut browser, "admin@example.test", false).await;
    assert!(smtp.next(10).await.is_some());
    let unknown = ask_code(&portal, &mut browser, "nobody@example.test", false).await;
    assert_eq!(known.status, unknown.status);
    assert_eq!(
        known.body.replace("admin@example.test", "X"),
        unknown.body.replace("nobody@example.test", "X"),
        "the pages differ only in the address"
    );
    assert!(
        smtp.next(1).await.is_none(),
        "no mail for an unknown address"
    );
    let answer = enter_code(&portal, &mut browser, &unknown, "12345678").await;
    assert_eq!(answer.status, 401);
}

#[tokio::test]
async fn forms_need_the_csrf_cookie_and_addresses_are_rate_limited() {
    let (portal, mut smtp) = portal_with_mail().await;
    let mut stranger = Browser::new();
    let forged = stranger
        .post(
            &format!("{}/acme/sign_in/email", portal.base),
            &[("email", "admin@example.test"), ("csrf", "guess")],
        )
        .await;
    assert_eq!(forged.status, 403);
    assert!(smtp.next(1).await.is_none());

    let mut browser = Browser::new();
    for _ in 0..5 {
        assert_eq!(
            ask_code(&portal, &mut browser, "admin@example.test", false)
                .await
                .status,
            200
        );
    }
    let limited = ask_code(&portal, &mut browser, "admin@example.test", false).await;
    assert_eq!(limited.status, 429, "{}", limited.body);
    assert!(limited.body.contains("try again in"));
}

#[tokio::test]
async fn a_client_sign_in_ends_in_the_loopback_redirect_with_a_nonce_bound_token() {
    let (portal, mut smtp) = portal_with_mail().await;
    portal.add_actor("Ann", "ann@example.test", "user").await;
    let mut browser = Browser::new();
    let page = ask_code(&portal, &mut browser, "ann@example.test", true).await;
    let code = code_in(&smtp.next(10).await.unwrap().data);
    let done = enter_code(&portal, &mut browser, &page, &code).await;
    assert_eq!(done.status, 303, "{}", done.body);
    let location = done.location.unwrap();
    assert!(location.starts_with(REDIRECT), "{location}");
    assert_eq!(
        query_param(&location, "state").as_deref(),
        Some(CLIENT_STATE)
    );
    assert_eq!(query_param(&location, "actor_name").as_deref(), Some("Ann"));
    let fragment = query_param(&location, "fragment").unwrap();
    assert!(
        !browser.cookies.contains_key("postern_session"),
        "no web session for a client sign-in"
    );

    let store = &portal.state.store;
    let now = jiff::Timestamp::now();
    let token = format!("{CLIENT_NONCE}{fragment}");
    let record = postern_portal::auth::authenticate(store, &token, now)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(record.kind, TokenKind::Client);
    let lifetime = record.expires_at.unwrap().duration_since(now).as_secs();
    assert!(
        (7 * 86400 - 60..=7 * 86400).contains(&lifetime),
        "{lifetime}"
    );
    assert!(
        postern_portal::auth::authenticate(store, &fragment, now)
            .await
            .unwrap()
            .is_none(),
        "the redirect alone is useless"
    );

    // The client revokes its own token (`postern client sign-out`).
    let client = reqwest::Client::new();
    let revoked = client
        .post(format!("{}/acme/sign_out", portal.base))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(revoked.status(), 204);
    assert!(
        postern_portal::auth::authenticate(store, &token, now)
            .await
            .unwrap()
            .is_none()
    );

    // A user (not an admin) gets no web session, and bad redirects are refused.
    let page = ask_code(&portal, &mut browser, "ann@example.test", false).await;
    let code = code_in(&smtp.next(10).await.unwrap().data);
    let refused = enter_code(&portal, &mut browser, &page, &code).await;
    assert_eq!(refused.status, 403);
    assert!(refused.body.contains("Only admins"));
    let evil = browser
        .get(&format!(
            "{}/acme/sign_in?client_state={CLIENT_STATE}&client_nonce={CLIENT_NONCE}&redirect_uri=http%3A%2F%2Fevil.example%3A80%2F",
            portal.base
        ))
        .await;
    assert_eq!(evil.status, 400);
    assert!(evil.body.contains("loopback"));
}

#[tokio::test]
async fn a_portal_started_with_another_secret_key_stops() {
    use postern_portal::secrets::{SecretError, SecretKey};
    let db = support::TempDb::new("key");
    let store = postern_portal::Store::open(&db.url()).await.unwrap();
    let first = SecretKey::generate().unwrap();
    first.check_against(&store).await.unwrap();
    first.check_against(&store).await.unwrap();
    let other = SecretKey::generate().unwrap();
    let refused = other.check_against(&store).await;
    assert!(matches!(refused, Err(SecretError::WrongKey)), "{refused:?}");
}

/// Hostile bytes at every sign-in URL: never a server error (or a panic).
#[test]
fn hostile_sign_in_requests_never_get_a_server_error() {
    use axum::body::Body;
    use axum::extract::ConnectInfo;
    use axum::http::Request;
    use postern_portal::testing::RateLimiter;
    use proptest::prelude::*;
    use tower::ServiceExt;

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let db = support::TempDb::new("fuzzweb");
    let app = runtime.block_on(support::TestApp::open_with(&db.url(), "acme", |state| {
        state.sign_in_limiter = RateLimiter::new(1_000_000, 1_000_000);
        state.sign_in_ip_limiter = RateLimiter::new(1_000_000, 1_000_000);
    }));
    let router = postern_portal::serve::app(app.state.clone());
    let csrf = "c".repeat(43);
    let value = prop_oneof![
        any::<String>(),
        Just(csrf.clone()),
        Just("admin@example.test".to_string()),
        Just("http://127.0.0.1:9/cb".to_string()),
        "[a-zA-Z0-9_-]{0,140}",
    ];
    let field = prop_oneof![
        Just("email"),
        Just("code"),
        Just("csrf"),
        Just("client_state"),
        Just("client_nonce"),
        Just("redirect_uri"),
        Just("state"),
        Just("error"),
    ];
    let pairs = proptest::collection::vec((field, value), 0..8);
    let raw = proptest::collection::vec(any::<u8>(), 0..300);
    let target = 0usize..8;
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig::with_cases(400));
    runner
        .run(
            &(target, pairs, raw, any::<bool>(), any::<bool>()),
            |(target, pairs, raw, use_raw, with_cookie)| {
                let encoded = url::form_urlencoded::Serializer::new(String::new())
                    .extend_pairs(pairs.iter().map(|(k, v)| (*k, v.as_str())))
                    .finish();
                let id = uuid::Uuid::new_v4();
                let (method, path) = match target {
                    0 => ("POST", "/acme/sign_in/email".to_string()),
                    1 => ("POST", "/acme/sign_in/email/verify".to_string()),
                    2 => ("GET", format!("/acme/sign_in?{encoded}")),
                    3 => ("GET", format!("/acme/sign_in/oidc/{id}/callback?{encoded}")),
                    4 => ("GET", format!("/acme/sign_in/oidc/{id}?{encoded}")),
                    5 => ("POST", "/acme/sign_out".to_string()),
                    6 => ("GET", "/acme/".to_string()),
                    _ => ("GET", format!("/nosuch/sign_in?{encoded}")),
                };
                let body = if use_raw {
                    raw.clone()
                } else {
                    encoded.clone().into_bytes()
                };
                let mut request = Request::builder()
                    .method(method)
                    .uri(&path)
                    .header("content-type", "application/x-www-form-urlencoded");
                if with_cookie {
                    request = request.header(
                        "cookie",
                        format!("postern_csrf={csrf}; postern_oidc=x; postern_session=a.b"),
                    );
                }
                let mut request = request.body(Body::from(body)).unwrap();
                request
                    .extensions_mut()
                    .insert(ConnectInfo(std::net::SocketAddr::from((
                        [127, 0, 0, 1],
                        40000,
                    ))));
                let status = runtime
                    .block_on(router.clone().oneshot(request))
                    .unwrap()
                    .status();
                prop_assert!(status.as_u16() < 500, "{method} {path}: {status}");
                Ok(())
            },
        )
        .unwrap();
}
