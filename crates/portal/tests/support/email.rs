//! The email-code sign-in as a browser does it, shared by the SQLite and
//! PostgreSQL suites: a portal that mails over a test SMTP server, asking for
//! a code, typing one, and the attacks on codes.

use std::time::Duration;

use postern_portal::auth::email::Mailer;

use super::smtp::SmtpServer;
use super::web::{Browser, Page, WebPortal};

pub const REDIRECT: &str = "http://127.0.0.1:45999/callback";
pub const CLIENT_STATE: &str = "client-state-0123456789";
/// The client's secret nonce; only its challenge goes to the portal.
pub const CLIENT_NONCE: &str = "client-nonce-0123456789abcdef";

/// `client_challenge` for `CLIENT_NONCE`.
pub fn client_challenge() -> String {
    postern_portal::auth::token::challenge_of(CLIENT_NONCE)
}

/// A portal (on `database`, else a fresh SQLite file) whose codes go to a
/// test SMTP server.
pub async fn portal_with_mail(database: Option<String>) -> (WebPortal, SmtpServer) {
    let smtp = SmtpServer::start().await;
    let url = smtp.url();
    let portal = WebPortal::start_on(database, |state| {
        state.mailer = Mailer::smtp(&url, None, "Postern <postern@example.test>").unwrap();
    })
    .await;
    (portal, smtp)
}

/// Opens the sign-in page (getting the CSRF cookie) and asks for a code.
pub async fn ask_code(
    portal: &WebPortal,
    browser: &mut Browser,
    email: &str,
    client: bool,
) -> Page {
    let query = if client {
        format!(
            "?client_state={CLIENT_STATE}&client_challenge={}&redirect_uri={}",
            client_challenge(),
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
    for field in ["client_state", "client_challenge", "redirect_uri"] {
        if let Some(value) = page.hidden(field) {
            form.push((field, value));
        }
    }
    let form: Vec<(&str, &str)> = form.iter().map(|(k, v)| (*k, v.as_str())).collect();
    browser
        .post(&format!("{}/acme/sign_in/email", portal.base), &form)
        .await
}

/// What an attacker needs to type codes for `email` without asking for
/// one: the sign-in page (for the CSRF cookie), with the address added as
/// the code page would carry it.
pub async fn guessing_page(portal: &WebPortal, browser: &mut Browser, email: &str) -> Page {
    let mut page = browser.get(&format!("{}/acme/sign_in", portal.base)).await;
    assert_eq!(page.status, 200, "{}", page.body);
    page.body.push_str(&format!(
        "<input type=\"hidden\" name=\"email\" value=\"{email}\">"
    ));
    page
}

/// The form fields of the code page `page` with `code` typed in.
pub fn code_form(page: &Page, code: &str) -> Vec<(&'static str, String)> {
    let mut form = vec![("code", code.to_string())];
    for field in [
        "email",
        "csrf",
        "client_state",
        "client_challenge",
        "redirect_uri",
    ] {
        if let Some(value) = page.hidden(field) {
            form.push((field, value));
        }
    }
    form
}

/// Submits `code` on the code page `page`.
pub async fn enter_code(
    portal: &WebPortal,
    browser: &mut Browser,
    page: &Page,
    code: &str,
) -> Page {
    let form = code_form(page, code);
    let form: Vec<(&str, &str)> = form.iter().map(|(k, v)| (*k, v.as_str())).collect();
    browser
        .post(&format!("{}/acme/sign_in/email/verify", portal.base), &form)
        .await
}

/// Says yes on the "connect this device?" page `page` (from `browser`'s
/// sign-in) and returns the answer: the redirect to the client.
pub async fn confirm(base: &str, browser: &mut Browser, page: &Page) -> Page {
    assert_eq!(page.status, 200, "{}", page.body);
    assert!(
        page.body.contains("Connect this device"),
        "not the confirmation page: {}",
        page.body
    );
    assert!(page.location.is_none());
    let csrf = page.hidden("csrf").unwrap();
    let confirmation = page.hidden("confirmation").unwrap();
    browser
        .post(
            &format!("{base}/acme/sign_in/confirm"),
            &[("csrf", &csrf), ("confirmation", &confirmation)],
        )
        .await
}

/// The 8-digit code in a mail.
pub fn code_in(data: &str) -> String {
    let subject = data
        .lines()
        .find(|l| l.starts_with("Subject:"))
        .unwrap_or_default();
    let code: String = subject.chars().filter(char::is_ascii_digit).collect();
    assert_eq!(code.len(), 8, "{data}");
    assert!(data.contains(&format!("    {code}")), "{data}");
    code
}

/// A code that is not `code`.
pub fn wrong_code(code: &str, n: u32) -> String {
    let guess = format!("{:08}", n);
    if guess == code {
        format!("{:08}", n + 1)
    } else {
        guess
    }
}

/// The attack of review M6 (a): many verify requests for one code at once,
/// from one network. At most 3 of them are checked (the others are told to
/// wait), the code stays valid for its owner on another network, and the
/// attacker's network stays locked even with the right code.
pub async fn parallel_guesses_get_three_tries(portal: &WebPortal, smtp: &mut SmtpServer) {
    const PARALLEL: u32 = 24;
    let mut victim = Browser::new();
    let page = ask_code(portal, &mut victim, "admin@example.test", false).await;
    let code = code_in(&smtp.next(10).await.expect("the code arrives").data);

    let mut attacker = Browser::from_ip("127.0.0.2".parse().unwrap());
    let attacker_page = guessing_page(portal, &mut attacker, "admin@example.test").await;
    let url = format!("{}/acme/sign_in/email/verify", portal.base);
    let cookies = attacker.cookie_header();
    let client = reqwest::Client::builder()
        .local_address("127.0.0.2".parse::<std::net::IpAddr>().unwrap())
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .timeout(Duration::from_secs(60))
        .build()
        .unwrap();
    let mut requests = tokio::task::JoinSet::new();
    for n in 0..PARALLEL {
        let form = code_form(&attacker_page, &wrong_code(&code, n));
        let request = client
            .post(&url)
            .header("cookie", &cookies)
            .form(&form)
            .send();
        requests.spawn(async move { request.await.unwrap().status().as_u16() });
    }
    let statuses = requests.join_all().await;
    let checked = statuses.iter().filter(|s| **s != 429).count();
    println!("statuses of {PARALLEL} parallel guesses: {statuses:?}");
    assert!(
        statuses.iter().all(|s| *s == 401 || *s == 429),
        "{statuses:?}"
    );
    assert_eq!(checked, 3, "only 3 guesses are checked: {statuses:?}");

    let locked = enter_code(portal, &mut attacker, &attacker_page, &code).await;
    assert_eq!(locked.status, 429, "the attacker's network is locked");
    let signed_in = enter_code(portal, &mut victim, &page, &code).await;
    assert_eq!(
        signed_in.status, 303,
        "the victim signs in with the mailed code: {}",
        signed_in.body
    );
}
