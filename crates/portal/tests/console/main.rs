#![allow(clippy::unwrap_used)] // a test file: unwrap is the assertion
//! The admin console (issue 17) over HTTP, as a browser without JavaScript
//! uses it: an admin signs in with an email code, adds a site, deploys a
//! gateway with the token the console shows and sees it online on the
//! site's live part, deletes the site after being told what goes with it;
//! markup in names comes back escaped, forms without the CSRF token and
//! requests without a session are refused, every page carries a CSP that
//! allows no inline script.

#[path = "../support/mod.rs"]
mod support;

// Each part of the console has its own file.
mod actors;
mod identity;
mod logs;
mod me;
mod policies;

use support::channel::{Peer, key};
use support::email::{ask_code, code_in, enter_code};
use support::web::{Browser, Page, WebPortal};

/// A browser signed in as the account's admin.
pub(crate) async fn admin_browser() -> (WebPortal, support::smtp::SmtpServer, Browser) {
    let (portal, mut smtp) = support::email::portal_with_mail(None).await;
    let mut browser = Browser::new();
    let page = ask_code(&portal, &mut browser, "admin@example.test", false).await;
    assert_eq!(page.status, 200, "{}", page.body);
    let code = code_in(&smtp.next(10).await.expect("the code arrives").data);
    let signed_in = enter_code(&portal, &mut browser, &page, &code).await;
    assert_eq!(signed_in.location.as_deref(), Some("/acme/"));
    (portal, smtp, browser)
}

fn site_id(page: &Page) -> String {
    page.location
        .as_deref()
        .and_then(|l| l.strip_prefix("/acme/sites/"))
        .unwrap_or_else(|| panic!("no site page: {:?} {}", page.location, page.body))
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_admin_adds_a_site_deploys_a_gateway_and_sees_it_online() {
    let (portal, _smtp, mut browser) = admin_browser().await;
    let base = portal.base.clone();
    let overview = browser.get(&format!("{base}/acme/")).await;
    assert_eq!(overview.status, 200, "{}", overview.body);
    assert!(
        overview.body.contains("<h1>Overview</h1>"),
        "{}",
        overview.body
    );
    assert!(
        overview.body.contains("web sign in"),
        "the sign-in is listed"
    );

    let sites = browser.get(&format!("{base}/acme/sites")).await;
    assert_eq!(sites.status, 200);
    let csrf = sites.hidden("csrf").unwrap();
    // Without the CSRF token: refused, nothing made.
    let forged = browser
        .post(&format!("{base}/acme/sites"), &[("name", "Forged")])
        .await;
    assert_eq!(forged.status, 403);
    // Invalid by the API's own rules: the form again, with the reason.
    let blank = browser
        .post(
            &format!("{base}/acme/sites"),
            &[("name", "   "), ("csrf", &csrf)],
        )
        .await;
    assert_eq!(blank.status, 422);
    assert!(blank.body.contains("role=\"alert\""), "{}", blank.body);
    let probe = "<script>alert(1)</script>\"'&";
    let created = browser
        .post(
            &format!("{base}/acme/sites"),
            &[("name", probe), ("csrf", &csrf)],
        )
        .await;
    assert_eq!(created.status, 303, "{}", created.body);
    let id = site_id(&created);
    // A name taken: the API's 409, said next to the form.
    let taken = browser
        .post(
            &format!("{base}/acme/sites"),
            &[("name", probe), ("csrf", &csrf)],
        )
        .await;
    assert_eq!(taken.status, 422);
    assert!(taken.body.contains("role=\"alert\""));

    let page = browser.get(&format!("{base}/acme/sites/{id}")).await;
    assert_eq!(page.status, 200);
    assert!(!page.body.contains("<script>alert"), "{}", page.body);
    assert!(
        page.body
            .contains("&lt;script&gt;alert(1)&lt;/script&gt;&quot;&#39;&amp;")
            || page
                .body
                .contains("&lt;script&gt;alert(1)&lt;/script&gt;&quot;'&amp;"),
        "{}",
        page.body
    );
    assert!(page.body.contains("No gateway has connected"));
    // The change went through the API's handler: audited as the admin.
    let (_, log) = portal
        .api(reqwest::Method::GET, "/audit_log?limit=5", None)
        .await;
    let entry = &log["data"][0];
    assert_eq!(entry["action"], "site.create");
    assert_eq!(entry["object_id"], id);
    assert!(!entry["actor_id"].is_null());

    // Deploy a gateway: the token shown works, and the live part shows it.
    let deploy = browser
        .post(
            &format!("{base}/acme/sites/{id}/gateway_token"),
            &[("csrf", &csrf)],
        )
        .await;
    assert_eq!(deploy.status, 201, "{}", deploy.body);
    let token = between(&deploy.body, "<pre id=\"gateway-token\">", "</pre>");
    assert!(
        deploy
            .body
            .contains("--token-file /etc/postern/gateway.token")
    );
    let addr: std::net::SocketAddr = base.trim_start_matches("http://").parse().unwrap();
    let mut gateway = Peer::connect(addr, "/v1/gateway", &token, "gw-console", &key(1))
        .await
        .unwrap();
    assert_eq!(gateway.next().await["type"], "init");
    let live = browser
        .get(&format!("{base}/acme/sites/{id}/gateways"))
        .await;
    assert_eq!(live.status, 200);
    assert!(live.body.contains("gw-console"), "{}", live.body);
    assert!(live.body.contains("class=\"online\""), "{}", live.body);
    assert!(live.body.contains("hx-trigger=\"every 2s\""));

    // Deleting says what goes first (whatever the spelling of the id),
    // then needs the CSRF token too.
    let confirm = browser
        .get(&format!("{base}/acme/sites/{}/delete", id.to_uppercase()))
        .await;
    assert!(confirm.body.contains("1 gateway(s)"), "{}", confirm.body);
    assert!(confirm.body.contains("0 resource(s)"), "{}", confirm.body);
    // A form another site's page sent is refused, token or not.
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let cookie: String = browser
        .cookies
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join("; ");
    let cross = client
        .post(format!("{base}/acme/sites/{id}/delete"))
        .header("cookie", &cookie)
        .header("origin", "https://evil.example")
        .form(&[("csrf", csrf.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(cross.status(), 403);
    let forged = browser
        .post(&format!("{base}/acme/sites/{id}/delete"), &[])
        .await;
    assert_eq!(forged.status, 403);
    let deleted = browser
        .post(
            &format!("{base}/acme/sites/{id}/delete"),
            &[("csrf", &csrf)],
        )
        .await;
    assert_eq!(deleted.status, 303);
    let gone = browser.get(&format!("{base}/acme/sites/{id}")).await;
    assert_eq!(gone.status, 404);
    // The live part of the deleted site's open page stops polling (286).
    let stopped = browser
        .get(&format!("{base}/acme/sites/{id}/gateways"))
        .await;
    assert_eq!(stopped.status, 286, "{}", stopped.body);
    // A second click on the deletion is not an error.
    let again = browser
        .post(
            &format!("{base}/acme/sites/{id}/delete"),
            &[("csrf", &csrf)],
        )
        .await;
    assert_eq!(again.status, 303);
    drop(gateway);
}

fn between(text: &str, start: &str, end: &str) -> String {
    let from = text
        .find(start)
        .unwrap_or_else(|| panic!("{start} in {text}"))
        + start.len();
    let to = text[from..].find(end).unwrap() + from;
    text[from..to].to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn console_pages_need_an_admin_session_and_allow_no_inline_script() {
    let (portal, _smtp, browser) = admin_browser().await;
    let base = portal.base.clone();
    let mut stranger = Browser::new();
    for path in ["/acme/", "/acme/sites"] {
        let page = stranger.get(&format!("{base}{path}")).await;
        assert_eq!(page.status, 303, "{path}");
        assert_eq!(page.location.as_deref(), Some("/acme/sign_in"));
    }
    // A live part polled after sign-out sends the page to the sign-in.
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let fragment = client
        .get(format!(
            "{base}/acme/sites/00000000-0000-0000-0000-000000000000/gateways"
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(fragment.status(), 401);
    assert_eq!(fragment.headers()["hx-redirect"], "/acme/sign_in");
    // The admin's own session: the page and its headers.
    let cookie: String = browser
        .cookies
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join("; ");
    let page = client
        .get(format!("{base}/acme/sites"))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), 200);
    let csp = page.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(
        csp.contains("script-src 'self'") && !csp.contains("unsafe-inline"),
        "{csp}"
    );
    assert_eq!(page.headers()["x-frame-options"], "DENY");
    let body = page.text().await.unwrap();
    // Every script is a file of the portal's; nothing inline.
    assert_eq!(
        body.matches("<script").count(),
        body.matches("<script src=\"/_assets/").count()
    );
    let htmx = client
        .get(format!("{base}/_assets/htmx.min.js"))
        .send()
        .await
        .unwrap();
    assert_eq!(htmx.status(), 200);
    assert!(htmx.text().await.unwrap().contains("htmx"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn access_made_in_the_console_works_and_a_policy_deleted_there_is_revoked_within_a_second() {
    use serde_json::json;
    let (portal, _smtp, mut browser) = admin_browser().await;
    let base = portal.base.clone();
    let sites = browser.get(&format!("{base}/acme/sites")).await;
    let csrf = sites.hidden("csrf").unwrap();
    let post = async |browser: &mut Browser, path: &str, form: &[(&str, &str)]| {
        let mut form = form.to_vec();
        form.push(("csrf", &csrf));
        browser.post(&format!("{base}/acme{path}"), &form).await
    };
    let site = site_id(&post(&mut browser, "/sites", &[("name", "Office")]).await);
    let deploy = post(&mut browser, &format!("/sites/{site}/gateway_token"), &[]).await;
    let gateway_token = between(&deploy.body, "<pre id=\"gateway-token\">", "</pre>");

    // A resource, refused first for a filter the API would not take.
    let refused = post(
        &mut browser,
        "/resources",
        &[
            ("name", "Web"),
            ("type", "cidr"),
            ("address", "10.0.1.0/24"),
            ("site_id", &site),
            ("filters", "tcp/99999"),
        ],
    )
    .await;
    assert_eq!(refused.status, 422, "{}", refused.body);
    assert!(
        refused.body.contains("value=\"10.0.1.0/24\""),
        "the form keeps what was typed"
    );
    let made = post(
        &mut browser,
        "/resources",
        &[
            ("name", "Web <b>"),
            ("type", "cidr"),
            ("address", "10.0.1.0/24"),
            ("site_id", &site),
            ("filters", "tcp/80, icmp"),
            ("address_description", "<i>intranet</i>"),
        ],
    )
    .await;
    assert_eq!(made.status, 303, "{}", made.body);
    let (_, resources) = portal.api(reqwest::Method::GET, "/resources", None).await;
    let resource = resources["data"][0]["id"].as_str().unwrap().to_string();
    assert_eq!(
        resources["data"][0]["filters"],
        json!([{"protocol": "tcp", "ports": "80"}, {"protocol": "icmp"}])
    );
    let listed = browser.get(&format!("{base}/acme/resources")).await;
    assert!(
        listed.body.contains("Web &lt;b&gt;")
            && listed.body.contains("&lt;i&gt;intranet&lt;/i&gt;"),
        "{}",
        listed.body
    );

    // A service account (the API; actors come to the console later) in a
    // group made here, and the policy.
    let (_, robot) = portal
        .api(
            reqwest::Method::POST,
            "/actors",
            Some(json!({"name": "CI robot", "role": "service_account"})),
        )
        .await;
    let robot = robot["id"].as_str().unwrap().to_string();
    let group_page = post(&mut browser, "/groups", &[("name", "Robots")]).await;
    assert_eq!(group_page.status, 303);
    let group = group_page
        .location
        .unwrap()
        .rsplit('/')
        .next()
        .unwrap()
        .to_string();
    let saved = post(
        &mut browser,
        &format!("/groups/{group}/members"),
        &[("member", &robot)],
    )
    .await;
    assert_eq!(saved.status, 303, "{}", saved.body);
    let policy = post(
        &mut browser,
        "/policies",
        &[
            ("group_id", &group),
            ("resource_id", &resource),
            ("description", "robots reach web"),
        ],
    )
    .await;
    assert_eq!(policy.status, 303, "{}", policy.body);

    let addr: std::net::SocketAddr = base.trim_start_matches("http://").parse().unwrap();
    let mut gateway = Peer::connect(addr, "/v1/gateway", &gateway_token, "gw-1", &key(1))
        .await
        .unwrap();
    assert_eq!(gateway.next().await["type"], "init");
    let (_, token) = portal
        .api(
            reqwest::Method::POST,
            &format!("/actors/{robot}/tokens"),
            None,
        )
        .await;
    let mut client = Peer::connect(
        addr,
        "/v1/client",
        token["token"].as_str().unwrap(),
        "laptop",
        &key(2),
    )
    .await
    .unwrap();
    assert_eq!(client.next().await["type"], "init");
    client
        .send(json!({"type": "request_access", "ref": "a", "resource_id": resource}))
        .await;
    let authorize = gateway.next_of("authorize").await;
    gateway
        .send(json!({"type": "authorized", "ref": authorize["ref"]}))
        .await;
    assert_eq!(client.next_of("access_granted").await["ref"], "a");

    // Deleted in the console: the gateway revokes at once.
    let (_, policies) = portal.api(reqwest::Method::GET, "/policies", None).await;
    let policy_id = policies["data"][0]["id"].as_str().unwrap().to_string();
    let started = std::time::Instant::now();
    let deleted = post(&mut browser, &format!("/policies/{policy_id}/delete"), &[]).await;
    assert_eq!(deleted.status, 303);
    assert_eq!(
        gateway.next_of("revoke").await["resource_id"],
        json!(resource)
    );
    let elapsed = started.elapsed();
    assert!(elapsed < std::time::Duration::from_secs(1), "{elapsed:?}");
    println!("policy deleted in the console to the gateway's revoke: {elapsed:?}");
}
