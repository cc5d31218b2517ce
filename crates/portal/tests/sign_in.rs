#![allow(clippy::unwrap_used)] // a test file: unwrap is the assertion
//! Email one-time codes end to end over real HTTP and a real SMTP exchange
//! (SPEC F1, F3, F5, F6): the code arrives, works once, expires, three wrong
//! tries lock it; unknown addresses get the same answer and no mail; CSRF,
//! rate limits, client sign-in with the loopback redirect, web sessions.

mod support;

use std::net::IpAddr;
use std::time::{Duration, Instant};

use postern_portal::domain::TokenKind;
use support::email::{
    CLIENT_NONCE, CLIENT_STATE, REDIRECT, ask_code, client_challenge, code_in, confirm, enter_code,
    guessing_page, wrong_code,
};
use support::web::{Browser, query_param};

async fn portal_with_mail() -> (support::web::WebPortal, support::smtp::SmtpServer) {
    support::email::portal_with_mail(None).await
}

fn network(n: u8) -> IpAddr {
    IpAddr::from([127, 0, 0, n])
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
    let mut tx = portal.state.store.read().await.unwrap();
    let sealed: String = sqlx::query_scalar("SELECT sealed_code FROM email_codes")
        .fetch_one(&mut *tx)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    assert!(
        sealed.starts_with("v1:") && !sealed.contains(&code),
        "{sealed}"
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
        home.body.contains("<h1>Overview</h1>")
            && home.body.contains("<p class=\"account\">acme</p>"),
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

/// Review M6 (b): a network that guessed 3 wrong codes waits, also after
/// asking for another code (and after that code is replaced by a new one):
/// the count is per address and network across codes, not per code.
#[tokio::test]
async fn wrong_codes_are_capped_across_codes() {
    let (portal, mut smtp) = portal_with_mail().await;
    let mut browser = Browser::new();
    let page = ask_code(&portal, &mut browser, "admin@example.test", false).await;
    let code = code_in(&smtp.next(10).await.unwrap().data);
    for n in 0..3 {
        let answer = enter_code(&portal, &mut browser, &page, &wrong_code(&code, n)).await;
        assert_eq!(answer.status, 401, "{}", answer.body);
        assert!(answer.body.contains("wrong, used or expired"));
    }
    let locked = enter_code(&portal, &mut browser, &page, &code).await;
    assert_eq!(
        locked.status, 429,
        "locked after 3 wrong codes: {}",
        locked.body
    );
    assert!(
        locked.body.contains("Too many wrong codes"),
        "{}",
        locked.body
    );

    // Asking again resends the same code; the network still waits.
    let page = ask_code(&portal, &mut browser, "admin@example.test", false).await;
    assert_eq!(code_in(&smtp.next(10).await.unwrap().data), code);
    let locked = enter_code(&portal, &mut browser, &page, &code).await;
    assert_eq!(locked.status, 429);

    // A new code (the old one expired) does not give new tries either.
    expire_codes(&portal).await;
    let page = ask_code(&portal, &mut browser, "admin@example.test", false).await;
    let fresh = code_in(&smtp.next(10).await.unwrap().data);
    let locked = enter_code(&portal, &mut browser, &page, &fresh).await;
    assert_eq!(
        locked.status, 429,
        "the cap holds across codes: {}",
        locked.body
    );

    // Another network is not locked by this one, and signs in.
    let mut other = Browser::from_ip(network(3));
    let page = ask_code(&portal, &mut other, "admin@example.test", false).await;
    assert_eq!(code_in(&smtp.next(10).await.unwrap().data), fresh);
    let done = enter_code(&portal, &mut other, &page, &fresh).await;
    assert_eq!(done.status, 303, "{}", done.body);
}

async fn expire_codes(portal: &support::web::WebPortal) {
    let mut tx = portal.state.store.write().await.unwrap();
    sqlx::query("UPDATE email_codes SET expires_at = 1")
        .execute(&mut *tx)
        .await
        .unwrap();
    tx.commit().await.unwrap();
}

#[tokio::test]
async fn old_codes_expire() {
    let (portal, mut smtp) = portal_with_mail().await;
    let mut browser = Browser::new();
    let page = ask_code(&portal, &mut browser, "admin@example.test", false).await;
    let code = code_in(&smtp.next(10).await.unwrap().data);
    expire_codes(&portal).await;
    let expired = enter_code(&portal, &mut browser, &page, &code).await;
    assert_eq!(expired.status, 401, "an expired code is refused");
    // Asking again after expiry mails a new code.
    ask_code(&portal, &mut browser, "admin@example.test", false).await;
    assert_ne!(code_in(&smtp.next(10).await.unwrap().data), code);
}

/// Review M6 (d): the attacker asks for codes for the victim's address and
/// guesses from two networks; the code in the victim's mailbox still works.
#[tokio::test]
async fn an_attackers_guesses_do_not_lock_the_victim_out() {
    let (portal, mut smtp) = portal_with_mail().await;
    let mut victim = Browser::new();
    let page = ask_code(&portal, &mut victim, "admin@example.test", false).await;
    let code = code_in(&smtp.next(10).await.unwrap().data);
    let mut statuses = Vec::new();
    for (n, asks) in [(2, 2), (3, 1)] {
        let mut attacker = Browser::from_ip(network(n));
        for _ in 1..asks {
            ask_code(&portal, &mut attacker, "admin@example.test", false).await;
        }
        let asked = ask_code(&portal, &mut attacker, "admin@example.test", false).await;
        for guess in 0..5 {
            let answer =
                enter_code(&portal, &mut attacker, &asked, &wrong_code(&code, guess)).await;
            statuses.push(answer.status);
        }
    }
    let done = enter_code(&portal, &mut victim, &page, &code).await;
    assert_eq!(done.status, 303, "the victim signs in: {}", done.body);
    // Each attacking network got 3 tries, then waits.
    assert_eq!(statuses, [401, 401, 401, 429, 429].repeat(2));
    // Every mail the attacker caused carries the victim's same code.
    while let Some(mail) = smtp.next(1).await {
        assert_eq!(code_in(&mail.data), code, "resent, never replaced");
    }
}

/// Review M6 (b) for an attacker with many networks: the address as a whole
/// gets 100 wrong codes, then even a new network waits.
#[tokio::test]
async fn the_address_wide_cap_holds_against_many_networks() {
    let (portal, mut smtp) = portal_with_mail().await;
    let mut victim = Browser::new();
    ask_code(&portal, &mut victim, "admin@example.test", false).await;
    let code = code_in(&smtp.next(10).await.unwrap().data);
    let mut checked = 0;
    for n in 2..40u8 {
        let mut attacker = Browser::from_ip(network(n));
        let page = guessing_page(&portal, &mut attacker, "admin@example.test").await;
        for guess in 0..3 {
            let answer = enter_code(
                &portal,
                &mut attacker,
                &page,
                &wrong_code(&code, u32::from(n) * 3 + guess),
            )
            .await;
            match answer.status {
                401 => checked += 1,
                429 => {}
                other => panic!("{other}: {}", answer.body),
            }
        }
    }
    assert_eq!(checked, 100, "100 wrong codes in all are checked");
    let mut fresh = Browser::from_ip(network(77));
    let page = guessing_page(&portal, &mut fresh, "admin@example.test").await;
    let locked = enter_code(&portal, &mut fresh, &page, &code).await;
    assert_eq!(locked.status, 429, "{}", locked.body);
}

/// Review M6 (e): checking a code for an address without one (unknown, or
/// no code asked) takes the same Argon2 work as for a known one.
#[tokio::test]
async fn known_and_unknown_addresses_take_the_same_time() {
    let (portal, mut smtp) = portal_with_mail().await;
    let mut known_pages = Vec::new();
    for n in 0..5 {
        let email = format!("user{n}@example.test");
        portal.add_actor(&format!("User {n}"), &email, "user").await;
        let mut browser = Browser::new();
        let page = ask_code(&portal, &mut browser, &email, false).await;
        code_in(&smtp.next(10).await.unwrap().data);
        known_pages.push((browser, page));
    }
    let mut unknown_pages = Vec::new();
    for n in 0..5 {
        let mut browser = Browser::new();
        let page = ask_code(
            &portal,
            &mut browser,
            &format!("nobody{n}@example.test"),
            false,
        )
        .await;
        unknown_pages.push((browser, page));
    }
    // Warm up (the dummy hash is made once).
    let (browser, page) = &mut unknown_pages[0];
    enter_code(&portal, browser, page, "00000000").await;
    let mut known = Vec::new();
    let mut unknown = Vec::new();
    for ((kb, kp), (ub, up)) in known_pages.iter_mut().zip(unknown_pages.iter_mut()) {
        let started = Instant::now();
        assert_eq!(enter_code(&portal, kb, kp, "00000001").await.status, 401);
        known.push(started.elapsed());
        let started = Instant::now();
        assert_eq!(enter_code(&portal, ub, up, "00000001").await.status, 401);
        unknown.push(started.elapsed());
    }
    known.sort();
    unknown.sort();
    let (known, unknown) = (known[2], unknown[2]);
    println!("median wrong-code answer: known {known:?}, unknown {unknown:?}");
    let ratio = unknown.as_secs_f64() / known.as_secs_f64();
    assert!(
        (0.5..2.0).contains(&ratio),
        "known {known:?} vs unknown {unknown:?}"
    );
    assert!(known > Duration::from_millis(1));
}

/// Review M6 (a) on SQLite (the PostgreSQL suite runs it too).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parallel_guesses_get_three_tries() {
    let (portal, mut smtp) = portal_with_mail().await;
    support::email::parallel_guesses_get_three_tries(&portal, &mut smtp).await;
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

    // Five mails per address at once (the same code each time); past that
    // the answer is the same but no mail goes out.
    let mut browser = Browser::new();
    let mut codes = Vec::new();
    for _ in 0..5 {
        let page = ask_code(&portal, &mut browser, "admin@example.test", false).await;
        assert_eq!(page.status, 200);
        codes.push(code_in(&smtp.next(10).await.unwrap().data));
    }
    codes.dedup();
    assert_eq!(codes.len(), 1, "one code, sent five times");
    let quiet = ask_code(&portal, &mut browser, "admin@example.test", false).await;
    assert_eq!(quiet.status, 200, "{}", quiet.body);
    assert!(smtp.next(1).await.is_none(), "no sixth mail");
    let done = enter_code(&portal, &mut browser, &quiet, &codes[0]).await;
    assert_eq!(
        done.status, 303,
        "the code sent earlier works: {}",
        done.body
    );

    // One IP posting forms too fast is told to slow down.
    let mut flood = Browser::from_ip(network(9));
    let mut statuses = Vec::new();
    for n in 0..40 {
        let page = ask_code(&portal, &mut flood, &format!("x{n}@example.test"), false).await;
        statuses.push(page.status);
    }
    assert!(statuses.contains(&429), "{statuses:?}");
}

#[tokio::test]
async fn a_client_sign_in_ends_in_the_loopback_redirect_with_a_nonce_bound_token() {
    let (portal, mut smtp) = portal_with_mail().await;
    portal.add_actor("Ann", "ann@example.test", "user").await;
    let mut browser = Browser::new();
    let page = ask_code(&portal, &mut browser, "ann@example.test", true).await;
    let code = code_in(&smtp.next(10).await.unwrap().data);
    let asked = enter_code(&portal, &mut browser, &page, &code).await;
    let done = confirm(&portal.base, &mut browser, &asked).await;
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
    let token = format!("{CLIENT_NONCE}~{fragment}");
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

    // A user (not an admin) gets a web session for their own page only,
    // and bad redirects are refused.
    let page = ask_code(&portal, &mut browser, "ann@example.test", false).await;
    let code = code_in(&smtp.next(10).await.unwrap().data);
    let signed_in = enter_code(&portal, &mut browser, &page, &code).await;
    assert_eq!(signed_in.status, 303, "{}", signed_in.body);
    assert_eq!(signed_in.location.as_deref(), Some("/acme/me"));
    assert!(browser.cookies.contains_key("postern_session"));
    let own = browser.get(&format!("{}/acme/me", portal.base)).await;
    assert_eq!(own.status, 200, "{}", own.body);
    let console = browser.get(&format!("{}/acme/", portal.base)).await;
    assert_eq!(console.status, 303, "no admin console for a user");
    assert_eq!(
        console.location.as_deref(),
        Some("/acme/me"),
        "her own page"
    );
    let evil = browser
        .get(&format!(
            "{}/acme/sign_in?client_state={CLIENT_STATE}&client_challenge={}&redirect_uri=http%3A%2F%2Fevil.example%3A80%2F",
            portal.base,
            client_challenge(),
        ))
        .await;
    assert_eq!(evil.status, 400);
    assert!(evil.body.contains("loopback"));
    // A client that still sends its nonce is told to update.
    let old = browser
        .get(&format!(
            "{}/acme/sign_in?client_state={CLIENT_STATE}&client_nonce={CLIENT_NONCE}&redirect_uri={}",
            portal.base,
            url::form_urlencoded::byte_serialize(REDIRECT.as_bytes()).collect::<String>()
        ))
        .await;
    assert_eq!(old.status, 400);
    assert!(old.body.contains("update postern"), "{}", old.body);
}

/// Review L3: the client's nonce never passes through the browser, and
/// nothing the browser sees (URLs, pages, the redirect) makes a token; the
/// token is handed out only after the user says yes, from the browser that
/// signed in.
#[tokio::test]
async fn a_client_sign_in_asks_first_and_the_browser_never_holds_the_token() {
    let (portal, mut smtp) = portal_with_mail().await;
    portal.add_actor("Ann", "ann@example.test", "user").await;
    let mut browser = Browser::new();
    let page = ask_code(&portal, &mut browser, "ann@example.test", true).await;
    let code = code_in(&smtp.next(10).await.unwrap().data);
    let asked = enter_code(&portal, &mut browser, &page, &code).await;
    assert_eq!(asked.status, 200, "a page, not a redirect: {}", asked.body);
    assert!(asked.location.is_none());
    assert!(
        asked
            .body
            .contains("Connect this device to <b>acme</b> as Ann")
    );
    assert!(asked.body.contains("127.0.0.1:45999"), "{}", asked.body);

    // Another browser cannot say yes for this one, and the form cannot be
    // altered.
    let csrf = asked.hidden("csrf").unwrap();
    let confirmation = asked.hidden("confirmation").unwrap();
    let mut stranger = Browser::from_ip(IpAddr::from([127, 0, 0, 5]));
    stranger.get(&format!("{}/acme/sign_in", portal.base)).await;
    let stolen = stranger
        .post(
            &format!("{}/acme/sign_in/confirm", portal.base),
            &[
                ("csrf", &stranger.cookies["postern_csrf"].clone()),
                ("confirmation", &confirmation),
            ],
        )
        .await;
    assert_eq!(stolen.status, 400, "{}", stolen.body);
    let (payload, mac) = confirmation.rsplit_once('.').unwrap();
    let first = if payload.starts_with('e') { 'f' } else { 'e' };
    let tampered = format!("{first}{}.{mac}", &payload[1..]);
    let altered = browser
        .post(
            &format!("{}/acme/sign_in/confirm", portal.base),
            &[("csrf", &csrf), ("confirmation", &tampered)],
        )
        .await;
    assert_eq!(altered.status, 400, "{}", altered.body);

    let done = confirm(&portal.base, &mut browser, &asked).await;
    assert_eq!(done.status, 303, "{}", done.body);
    let location = done.location.unwrap();
    let fragment = query_param(&location, "fragment").unwrap();

    // Everything the browser saw.
    let seen = [
        page.body.as_str(),
        asked.body.as_str(),
        location.as_str(),
        &format!(
            "{}/acme/sign_in?client_state={CLIENT_STATE}&client_challenge={}",
            portal.base,
            client_challenge()
        ),
    ]
    .concat();
    assert!(!seen.contains(CLIENT_NONCE), "the nonce passed the browser");
    let store = &portal.state.store;
    let now = jiff::Timestamp::now();
    let challenge = client_challenge();
    for forged in [
        fragment.clone(),
        format!("{challenge}{fragment}"),
        format!("{challenge}~{fragment}"),
        format!("~{fragment}"),
    ] {
        let record = postern_portal::auth::authenticate(store, &forged, now)
            .await
            .unwrap();
        assert!(record.is_none(), "{forged} must not be a token");
    }
    let token = format!("{CLIENT_NONCE}~{fragment}");
    assert!(
        postern_portal::auth::authenticate(store, &token, now)
            .await
            .unwrap()
            .is_some()
    );
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
        Just("client_challenge"),
        Just("confirmation"),
        Just("redirect_uri"),
        Just("state"),
        Just("error"),
    ];
    let pairs = proptest::collection::vec((field, value), 0..8);
    let raw = proptest::collection::vec(any::<u8>(), 0..300);
    let target = 0usize..9;
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
                    7 => ("POST", "/acme/sign_in/confirm".to_string()),
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

/// Review L11: every answer, pages, redirects, errors and the API, says
/// `nosniff` and `no-referrer`; HSTS only when the portal is on https.
#[tokio::test]
async fn every_answer_carries_the_security_headers() {
    for https in [false, true] {
        let portal = support::web::WebPortal::start(|state| {
            if https {
                state.external_url = Some("https://portal.example.test".into());
            }
        })
        .await;
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .build()
            .unwrap();
        let base = &portal.base;
        let requests = [
            client.get(format!("{base}/healthz")),
            client.get(format!("{base}/acme/sign_in")),
            client.get(format!("{base}/acme")),
            client.get(format!("{base}/nosuch/sign_in")),
            client
                .post(format!("{base}/acme/sign_in/confirm"))
                .body("x"),
            client.get(format!("{base}/api/v1/actors")),
            client
                .get(format!("{base}/api/v1/account"))
                .bearer_auth(&portal.token),
            client.get(format!("{base}/nowhere")),
        ];
        let mut statuses = Vec::new();
        for request in requests {
            let response = request.send().await.unwrap();
            let headers = response.headers();
            let url = response.url().to_string();
            statuses.push(response.status().as_u16());
            assert_eq!(headers["x-content-type-options"], "nosniff", "{url}");
            assert_eq!(headers["referrer-policy"], "no-referrer", "{url}");
            let hsts = headers.get("strict-transport-security");
            if https {
                assert_eq!(hsts.unwrap(), "max-age=31536000", "{url}");
            } else {
                assert!(hsts.is_none(), "{url}");
            }
        }
        // Answers of every kind were looked at.
        for status in [200, 303, 404, 401] {
            assert!(statuses.contains(&status), "{statuses:?}");
        }
    }
}
