//! The page of a signed-in user who is not an admin (`/{account}/me`),
//! played by the attacker: a user's web session shows their own devices
//! and what their groups' policies open to them, signs out only their own
//! devices, and opens nothing of the admin console or the API.

use std::time::Duration;

use reqwest::Method;
use serde_json::{Value, json};

use crate::support;
use support::channel::{Peer, key};
use support::email::{CLIENT_NONCE, ask_code, code_in, confirm, enter_code, portal_with_mail};
use support::smtp::SmtpServer;
use support::web::{Browser, Page, WebPortal, query_param};

const PROBE: &str = "<script>alert(1)</script>\"'&";

/// `PROBE` as maud escapes it, and never raw.
fn assert_escaped(body: &str, what: &str) {
    assert!(!body.contains("<script>alert"), "{what} raw: {body}");
    assert!(
        body.contains("&lt;script&gt;alert(1)&lt;/script&gt;&quot;'&amp;")
            || body.contains("&lt;script&gt;alert(1)&lt;/script&gt;&quot;&#39;&amp;"),
        "{what} escaped: {body}"
    );
}

/// Signs `email` in on the web (no client parameters) in a new browser.
async fn web_sign_in(portal: &WebPortal, smtp: &mut SmtpServer, email: &str) -> (Browser, Page) {
    let mut browser = Browser::new();
    let page = ask_code(portal, &mut browser, email, false).await;
    assert_eq!(page.status, 200, "{}", page.body);
    let code = code_in(&smtp.next(10).await.expect("the code arrives").data);
    let done = enter_code(portal, &mut browser, &page, &code).await;
    (browser, done)
}

/// A client sign-in of `email`, confirmed: the client token.
async fn client_token(portal: &WebPortal, smtp: &mut SmtpServer, email: &str) -> String {
    let mut browser = Browser::new();
    let page = ask_code(portal, &mut browser, email, true).await;
    let code = code_in(&smtp.next(10).await.expect("the code arrives").data);
    let asked = enter_code(portal, &mut browser, &page, &code).await;
    let done = confirm(&portal.base, &mut browser, &asked).await;
    assert_eq!(done.status, 303, "{}", done.body);
    let fragment = query_param(&done.location.unwrap(), "fragment").unwrap();
    format!("{CLIENT_NONCE}~{fragment}")
}

async fn created(portal: &WebPortal, path: &str, body: Value) -> String {
    let (status, made) = portal.api(Method::POST, path, Some(body)).await;
    assert_eq!(status, 201, "{path}: {made}");
    made["id"].as_str().unwrap().to_string()
}

async fn members(portal: &WebPortal, group: &str, actors: &[&str]) {
    let (status, answer) = portal
        .api(
            Method::PUT,
            &format!("/groups/{group}/members"),
            Some(json!({"actor_ids": actors})),
        )
        .await;
    assert!(status == 200 || status == 204, "{answer}");
}

/// The account's objects an attacker aims at.
struct World {
    site: String,
    wiki: String,
    payroll: String,
    staff: String,
    policy: String,
    ann: String,
    bob: String,
}

/// Ann (name `PROBE`) in Staff, which reaches the wiki (name with `PROBE`)
/// on conditions and, through a disabled policy, a vault; Bob in Finance,
/// which reaches payroll.
async fn world(portal: &WebPortal) -> World {
    let ann = portal
        .add_actor(&format!("Ann {PROBE}"), "ann@example.test", "user")
        .await;
    let bob = portal.add_actor("Bob", "bob@example.test", "user").await;
    let site = created(portal, "/sites", json!({"name": "Office"})).await;
    let resource = |name: &str, address: &str| {
        json!({"name": name, "type": "cidr", "address": address, "site_id": site,
               "filters": [{"protocol": "tcp", "ports": "443"}],
               "address_description": format!("desc {PROBE}")})
    };
    let wiki = created(
        portal,
        "/resources",
        resource(&format!("Wiki {PROBE}"), "10.0.1.0/24"),
    )
    .await;
    let payroll = created(portal, "/resources", resource("Payroll", "10.0.9.0/24")).await;
    let vault = created(portal, "/resources", resource("Vault", "10.0.7.0/24")).await;
    let staff = created(portal, "/groups", json!({"name": "Staff"})).await;
    let finance = created(portal, "/groups", json!({"name": "Finance"})).await;
    members(portal, &staff, &[&ann]).await;
    members(portal, &finance, &[&bob]).await;
    let policy = created(
        portal,
        "/policies",
        json!({"group_id": staff, "resource_id": wiki, "conditions": [
            {"property": "time", "values": ["MTWRF/09:00-17:00/Europe/Berlin"]},
            {"property": "client_verified", "values": ["true"]},
            {"property": "country", "operator": "not_in", "values": ["ru"]},
        ]}),
    )
    .await;
    created(
        portal,
        "/policies",
        json!({"group_id": staff, "resource_id": vault, "disabled": true}),
    )
    .await;
    created(
        portal,
        "/policies",
        json!({"group_id": finance, "resource_id": payroll}),
    )
    .await;
    World {
        site,
        wiki,
        payroll,
        staff,
        policy,
        ann,
        bob,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_signs_in_by_email_and_sees_what_their_groups_reach() {
    let (portal, mut smtp) = portal_with_mail(None).await;
    let w = world(&portal).await;
    let (mut ann, done) = web_sign_in(&portal, &mut smtp, "ann@example.test").await;
    assert_eq!(done.status, 303, "{}", done.body);
    assert_eq!(done.location.as_deref(), Some("/acme/me"));
    assert!(ann.cookies.contains_key("postern_session"));

    let me = ann.get(&format!("{}/acme/me", portal.base)).await;
    assert_eq!(me.status, 200, "{}", me.body);
    assert_escaped(&me.body, "the user's name and the resource's");
    assert!(me.body.contains("ann@example.test"));
    assert!(me.body.contains("Wiki &lt;script&gt;"), "{}", me.body);
    assert!(me.body.contains("10.0.1.0/24") && me.body.contains("tcp/443"));
    assert!(me.body.contains("desc &lt;script&gt;"), "{}", me.body);
    assert!(me.body.contains("<b>Staff</b>"), "{}", me.body);
    // The policy's conditions in words.
    for words in [
        "only Mon, Tue, Wed, Thu, Fri 09:00-17:00 (Europe/Berlin)",
        "on a device an admin has verified",
        "not connecting from RU",
    ] {
        assert!(me.body.contains(words), "{words}: {}", me.body);
    }
    // Another group's resource, and one whose policy is disabled: not hers.
    assert!(!me.body.contains("Payroll"), "{}", me.body);
    assert!(!me.body.contains("Vault"), "{}", me.body);
    assert!(!me.body.contains("10.0.9.0/24"));
    // Nothing of the admin console around it.
    assert!(!me.body.contains("Admin console"));
    assert!(!me.body.contains("/acme/sites"));
    assert!(me.body.contains("No device of yours has connected yet"));
    let csp = reqwest::Client::new()
        .get(format!("{}/acme/me", portal.base))
        .header("cookie", ann.cookie_header())
        .send()
        .await
        .unwrap();
    assert_eq!(csp.headers()["x-frame-options"], "DENY");
    assert!(
        csp.headers()["content-security-policy"]
            .to_str()
            .unwrap()
            .contains("script-src 'self'")
    );

    // Ann leaves Staff: the wiki is gone from her page at once.
    members(&portal, &w.staff, &[]).await;
    let me = ann.get(&format!("{}/acme/me", portal.base)).await;
    assert!(!me.body.contains("Wiki"), "{}", me.body);
    assert!(me.body.contains("No resource is open to you yet"));

    // An admin lands on the console and may open their own page too.
    let (mut admin, done) = web_sign_in(&portal, &mut smtp, "admin@example.test").await;
    assert_eq!(done.location.as_deref(), Some("/acme/"));
    let page = admin.get(&format!("{}/acme/me", portal.base)).await;
    assert_eq!(page.status, 200);
    assert!(page.body.contains("Admin console"));
    let _ = (w.payroll, w.policy, w.ann, w.bob, w.site, w.wiki);
}

/// Every GET of the admin console there is (or will be) and some that
/// take ids.
fn console_pages(w: &World) -> Vec<String> {
    let mut paths: Vec<String> = [
        "/acme/",
        "/acme/sites",
        "/acme/resources",
        "/acme/groups",
        "/acme/policies",
        "/acme/actors",
        "/acme/clients",
        "/acme/identity",
        "/acme/logs/audit",
        "/acme/logs/sessions",
        "/acme/logs/flows",
        "/acme/settings",
        "/acme/live",
    ]
    .map(String::from)
    .to_vec();
    paths.extend([
        format!("/acme/sites/{}", w.site),
        format!("/acme/sites/{}/gateways", w.site),
        format!("/acme/sites/{}/delete", w.site),
        format!("/acme/resources/{}/delete", w.wiki),
        format!("/acme/groups/{}", w.staff),
        format!("/acme/groups/{}/delete", w.staff),
        format!("/acme/policies/{}/delete", w.policy),
        format!("/acme/actors/{}", w.bob),
        format!("/acme/policies/{}", w.policy),
        format!("/acme/access?who={}&resource={}", w.bob, w.payroll),
    ]);
    paths
}

/// An answer that gives nothing away: the sign-in, or a refusal.
fn refused(path: &str, page: &Page) {
    match page.status {
        // The sign-in, or a user's own page.
        303 => assert!(
            matches!(page.location.as_deref(), Some("/acme/sign_in" | "/acme/me")),
            "{path}: {:?}",
            page.location
        ),
        401 | 403 | 404 => {}
        other => panic!("{path}: {other} {}", page.body),
    }
    for secret in ["Payroll", "Finance", "admin@example.test", "gateway"] {
        assert!(!page.body.contains(secret), "{path} shows {secret}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_users_session_opens_no_admin_page_no_form_no_api_and_no_other_account() {
    let (portal, mut smtp) = portal_with_mail(None).await;
    let w = world(&portal).await;
    let (mut ann, _) = web_sign_in(&portal, &mut smtp, "ann@example.test").await;
    let base = portal.base.clone();
    let me = ann.get(&format!("{base}/acme/me")).await;
    assert_eq!(me.status, 200);
    let csrf = me.hidden("csrf").unwrap();

    for path in console_pages(&w) {
        let page = ann.get(&format!("{base}{path}")).await;
        refused(&path, &page);
    }
    // Forms, with her own valid CSRF token: refused, nothing changes.
    let (_, before) = portal.api(Method::GET, "/audit_log?limit=1", None).await;
    let forms: Vec<(String, Vec<(&str, String)>)> = vec![
        ("/acme/sites".into(), vec![("name", "Evil".into())]),
        (format!("/acme/sites/{}/gateway_token", w.site), vec![]),
        (format!("/acme/sites/{}/delete", w.site), vec![]),
        (format!("/acme/resources/{}/delete", w.payroll), vec![]),
        (
            "/acme/groups".into(),
            vec![("name", "Evil group".to_string())],
        ),
        (
            format!("/acme/groups/{}/members", w.staff),
            vec![("member", w.ann.clone()), ("member", w.bob.clone())],
        ),
        (format!("/acme/groups/{}/delete", w.staff), vec![]),
        (
            "/acme/policies".into(),
            vec![
                ("group_id", w.staff.clone()),
                ("resource_id", w.payroll.clone()),
            ],
        ),
        (format!("/acme/policies/{}/delete", w.policy), vec![]),
        (
            format!("/acme/actors/{}", w.ann),
            vec![("role", "admin".into())],
        ),
        (format!("/acme/actors/{}/tokens", w.ann), vec![]),
        (format!("/acme/actors/{}/disable", w.bob), vec![]),
        (format!("/acme/actors/{}/delete", w.bob), vec![]),
        (
            format!("/acme/policies/{}", w.policy),
            vec![("disabled", "true".into())],
        ),
        (
            "/acme/identity/directories".into(),
            vec![("type", "scim".into()), ("name", "Evil".into())],
        ),
        (
            "/acme/settings".into(),
            vec![("search_domain", "evil.test".into())],
        ),
    ];
    for (path, fields) in &forms {
        let mut form: Vec<(&str, &str)> = fields.iter().map(|(k, v)| (*k, v.as_str())).collect();
        form.push(("csrf", &csrf));
        let page = ann.post(&format!("{base}{path}"), &form).await;
        refused(path, &page);
    }
    let (_, after) = portal.api(Method::GET, "/audit_log?limit=1", None).await;
    assert_eq!(
        before["data"][0]["cursor"], after["data"][0]["cursor"],
        "nothing was changed: {after}"
    );
    let (_, sites) = portal.api(Method::GET, "/sites", None).await;
    assert_eq!(sites["data"].as_array().unwrap().len(), 1, "{sites}");
    let (_, staff) = portal
        .api(Method::GET, &format!("/groups/{}/members", w.staff), None)
        .await;
    assert!(!staff.to_string().contains(&w.bob), "{staff}");
    let (_, actor) = portal
        .api(Method::GET, &format!("/actors/{}", w.ann), None)
        .await;
    assert_eq!(actor["role"], "user");

    // Her session token as an API bearer token: refused everywhere.
    let session = ann.cookies["postern_session"].clone();
    let client = reqwest::Client::new();
    for (method, path) in [
        (Method::GET, "/sites"),
        (Method::GET, "/actors"),
        (Method::GET, "/clients"),
        (Method::GET, "/audit_log"),
        (Method::GET, "/nothing"),
        (Method::POST, "/sites"),
        (Method::DELETE, &format!("/policies/{}", w.policy)),
    ] {
        let answer = client
            .request(method.clone(), format!("{base}/api/v1{path}"))
            .bearer_auth(&session)
            .json(&json!({"name": "Evil"}))
            .send()
            .await
            .unwrap();
        assert_eq!(answer.status(), 401, "{method} {path}");
    }
    let (_, policy) = portal
        .api(Method::GET, &format!("/policies/{}", w.policy), None)
        .await;
    assert_eq!(policy["id"], w.policy.as_str());

    // Her session on another account's pages: nobody there.
    let other =
        postern_portal::setup::init_account(&portal.state.store, "other", "ann@example.test")
            .await
            .unwrap();
    for path in ["/other/me", "/other/", "/other/sites"] {
        let page = ann.get(&format!("{base}{path}")).await;
        assert_eq!(page.status, 303, "{path}");
        assert_eq!(page.location.as_deref(), Some("/other/sign_in"), "{path}");
    }
    // Tokens of other kinds are no web session: the admin's API token, a
    // client token.
    let ann_client = client_token(&portal, &mut smtp, "ann@example.test").await;
    for token in [
        portal.token.as_str(),
        ann_client.as_str(),
        other.token.as_str(),
    ] {
        let mut forger = Browser::new();
        forger
            .cookies
            .insert("postern_session".into(), token.to_string());
        for path in ["/acme/me", "/acme/", "/acme/sites"] {
            let page = forger.get(&format!("{base}{path}")).await;
            assert_eq!(page.status, 303, "{path}");
            assert_eq!(page.location.as_deref(), Some("/acme/sign_in"));
        }
    }
}

/// A client of `token` connected as `device`.
async fn connect(portal: &WebPortal, token: &str, device: &str, seed: u8) -> Peer {
    let addr: std::net::SocketAddr = portal.base.trim_start_matches("http://").parse().unwrap();
    let mut peer = Peer::connect(addr, "/v1/client", token, device, &key(seed))
        .await
        .unwrap();
    assert_eq!(peer.next().await["type"], "init");
    peer
}

async fn device_id(portal: &WebPortal, name: &str) -> String {
    let (_, clients) = portal.api(Method::GET, "/clients", None).await;
    clients["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("no {name}: {clients}"))["id"]
        .as_str()
        .unwrap()
        .to_string()
}

async fn token_works(portal: &WebPortal, token: &str) -> bool {
    postern_portal::auth::authenticate(&portal.state.store, token, jiff::Timestamp::now())
        .await
        .unwrap()
        .is_some()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_signs_out_their_own_device_and_no_one_elses() {
    own_devices_only(None).await;
}

/// The page's queries on the other store.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_and_signing_out_work_on_postgres_too() {
    let server = support::postgres::TempPostgres::start_named("me");
    own_devices_only(Some(server.database("me").await)).await;
}

async fn own_devices_only(database: Option<String>) {
    let (portal, mut smtp) = portal_with_mail(database).await;
    let w = world(&portal).await;
    let ann_token = client_token(&portal, &mut smtp, "ann@example.test").await;
    let bob_token = client_token(&portal, &mut smtp, "bob@example.test").await;
    let mut laptop = connect(&portal, &ann_token, "ann-laptop", 2).await;
    let mut phone = connect(&portal, &bob_token, "bob-phone", 3).await;
    // A second device of hers on the same sign-in, which names itself and
    // its system with markup.
    let addr: std::net::SocketAddr = portal.base.trim_start_matches("http://").parse().unwrap();
    let encode =
        |text: &str| url::form_urlencoded::byte_serialize(text.as_bytes()).collect::<String>();
    let mut tablet = Peer::connect_query(
        addr,
        "/v1/client",
        &ann_token,
        &format!(
            "device_id=ann-tablet&public_key={}&name={}&os={}&version=0.1.7",
            encode(&key(4)),
            encode(&format!("tablet {PROBE}")),
            encode(PROBE)
        ),
    )
    .await
    .unwrap();
    assert_eq!(tablet.next().await["type"], "init");
    let laptop_id = device_id(&portal, "ann-laptop").await;
    let phone_id = device_id(&portal, "bob-phone").await;
    let base = portal.base.clone();

    let (mut ann, _) = web_sign_in(&portal, &mut smtp, "ann@example.test").await;
    let me = ann.get(&format!("{base}/acme/me")).await;
    assert_eq!(me.status, 200);
    assert!(me.body.contains("ann-laptop"), "{}", me.body);
    assert!(me.body.contains("Linux"));
    assert!(me.body.contains("class=\"online\""), "{}", me.body);
    assert!(!me.body.contains("bob-phone"), "{}", me.body);
    assert!(me.body.contains("0.1.7"));
    assert!(me.body.contains("Wiki &lt;") && !me.body.contains("Payroll"));
    assert_escaped(&me.body, "the device's name and system");
    let csrf = me.hidden("csrf").unwrap();

    // Bob's device, by its id: no such device of hers; nothing revoked.
    let theirs = format!("{base}/acme/me/devices/{phone_id}/sign_out");
    assert_eq!(ann.get(&theirs).await.status, 404);
    let attempt = ann.post(&theirs, &[("csrf", &csrf)]).await;
    assert_eq!(attempt.status, 404, "{}", attempt.body);
    assert!(!attempt.body.contains("bob-phone"));
    for bad in ["not-a-uuid", "00000000-0000-0000-0000-000000000000"] {
        let page = ann
            .post(
                &format!("{base}/acme/me/devices/{bad}/sign_out"),
                &[("csrf", &csrf)],
            )
            .await;
        assert_eq!(page.status, 404, "{bad}");
    }
    assert!(token_works(&portal, &bob_token).await);
    assert!(
        phone
            .next_within(Duration::from_millis(500))
            .await
            .is_none()
    );

    // Her own, without the CSRF token or from another site: refused.
    let own = format!("{base}/acme/me/devices/{laptop_id}/sign_out");
    assert_eq!(ann.post(&own, &[]).await.status, 403);
    let cross = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
        .post(&own)
        .header("cookie", ann.cookie_header())
        .header("origin", "https://evil.example")
        .form(&[("csrf", csrf.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(cross.status(), 403);
    assert!(token_works(&portal, &ann_token).await);

    // Asked first, then done: the channel closes, the token is dead.
    let asked = ann.get(&own).await;
    assert_eq!(asked.status, 200, "{}", asked.body);
    assert!(
        asked.body.contains("Sign <b>ann-laptop</b> out?"),
        "{}",
        asked.body
    );
    assert!(asked.body.contains("Sign this device out"));
    // What goes with it: the other device on the same sign-in.
    assert!(
        asked.body.contains("used by 1 other device(s)"),
        "{}",
        asked.body
    );
    assert_escaped(&asked.body, "the other device's name");
    let done = ann.post(&own, &[("csrf", &csrf)]).await;
    assert_eq!(done.status, 303, "{}", done.body);
    assert_eq!(done.location.as_deref(), Some("/acme/me"));
    for device in [&mut laptop, &mut tablet] {
        assert_eq!(
            device.next_of("disconnect").await["reason"],
            "token_revoked"
        );
    }
    assert!(!token_works(&portal, &ann_token).await);
    let again = Peer::connect(addr, "/v1/client", &ann_token, "ann-laptop", &key(2))
        .await
        .err();
    assert_eq!(again, Some(401));
    // Audited as the API's revoke, by her.
    let (_, log) = portal.api(Method::GET, "/audit_log?limit=1", None).await;
    let entry = &log["data"][0];
    assert_eq!(entry["action"], "token.revoke", "{log}");
    assert_eq!(entry["actor_id"], w.ann.as_str());
    // Her page says so; a second click is no error. Bob's device still works.
    let me = ann.get(&format!("{base}/acme/me")).await;
    assert!(me.body.contains("signed out"), "{}", me.body);
    assert!(
        !me.body
            .contains(&format!("/me/devices/{laptop_id}/sign_out"))
    );
    assert_eq!(ann.post(&own, &[("csrf", &csrf)]).await.status, 303);
    assert!(token_works(&portal, &bob_token).await);
    assert!(
        phone
            .next_within(Duration::from_millis(300))
            .await
            .is_none()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_disabled_or_signed_out_users_session_stops_working() {
    let (portal, mut smtp) = portal_with_mail(None).await;
    let w = world(&portal).await;
    let base = portal.base.clone();
    let (mut ann, _) = web_sign_in(&portal, &mut smtp, "ann@example.test").await;
    assert_eq!(ann.get(&format!("{base}/acme/me")).await.status, 200);
    let (status, _) = portal
        .api(
            Method::PATCH,
            &format!("/actors/{}", w.ann),
            Some(json!({"disabled": true})),
        )
        .await;
    assert_eq!(status, 200);
    let page = ann.get(&format!("{base}/acme/me")).await;
    assert_eq!(page.status, 303);
    assert_eq!(page.location.as_deref(), Some("/acme/sign_in"));

    // Bob signs out on his page: the session's token is revoked, not only
    // the cookie dropped.
    let (mut bob, _) = web_sign_in(&portal, &mut smtp, "bob@example.test").await;
    let me = bob.get(&format!("{base}/acme/me")).await;
    let csrf = me.hidden("csrf").unwrap();
    let session = bob.cookies["postern_session"].clone();
    let out = bob
        .post(&format!("{base}/acme/sign_out"), &[("csrf", &csrf)])
        .await;
    assert_eq!(out.status, 303);
    assert!(!token_works(&portal, &session).await);
    let mut replay = Browser::new();
    replay.cookies.insert("postern_session".into(), session);
    assert_eq!(replay.get(&format!("{base}/acme/me")).await.status, 303);
}

/// The page's cost with the benchmark's account: 10,000 clients (100 of
/// them hers) and 1,000 resources her group reaches. Rows are written
/// straight into the store (the API's rate limit and the device cap would
/// take minutes); the page is read over HTTP, as a browser does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_pages_ten_thousand_clients_and_a_thousand_resources() {
    let (portal, mut smtp) = portal_with_mail(None).await;
    let w = world(&portal).await;
    let account = portal.account_id.to_string();
    let mut tx = portal.state.store.write().await.unwrap();
    for n in 0..1000 {
        let id = uuid::Uuid::new_v4().to_string();
        sqlx::query(
            "INSERT INTO resources (id, account_id, site_id, name, type, address, filters, \
             created_at, updated_at) VALUES ($1, $2, $3, $4, 'cidr', $5, '[]', 0, 0)",
        )
        .bind(&id)
        .bind(&account)
        .bind(&w.site)
        .bind(format!("bench-{n:04}"))
        .bind(format!("10.{}.{}.0/24", 100 + n / 256, n % 256))
        .execute(&mut *tx)
        .await
        .unwrap();
        sqlx::query(
            "INSERT INTO policies (id, account_id, group_id, resource_id, conditions, \
             description, disabled, created_at, updated_at) \
             VALUES ($1, $2, $3, $4, '[]', '', 0, 0, 0)",
        )
        .bind(uuid::Uuid::new_v4().to_string())
        .bind(&account)
        .bind(&w.staff)
        .bind(&id)
        .execute(&mut *tx)
        .await
        .unwrap();
    }
    for n in 0..10_000i64 {
        let owner = if n < 100 { &w.ann } else { &w.bob };
        sqlx::query(
            "INSERT INTO devices (id, account_id, kind, actor_id, external_id, name, os, \
             address_index, created_at) VALUES ($1, $2, 'client', $3, $4, $4, 'Linux', $5, $5)",
        )
        .bind(uuid::Uuid::new_v4().to_string())
        .bind(&account)
        .bind(owner)
        .bind(format!("device-{n:05}"))
        .bind(n + 1000)
        .execute(&mut *tx)
        .await
        .unwrap();
    }
    tx.commit().await.unwrap();

    let (mut ann, _) = web_sign_in(&portal, &mut smtp, "ann@example.test").await;
    let url = format!("{}/acme/me", portal.base);
    let mut best = Duration::MAX;
    for _ in 0..5 {
        let started = std::time::Instant::now();
        let page = ann.get(&url).await;
        best = best.min(started.elapsed());
        assert_eq!(page.status, 200);
    }
    let page = ann.get(&url).await;
    println!("GET /acme/me: {best:?} (best of 5)");
    // A page of each, with a way on.
    assert_eq!(
        page.body.matches("device-0").count(),
        50,
        "50 devices a page"
    );
    assert!(!page.body.contains("device-00100"), "only hers");
    // By name: her wiki first, then 99 of these.
    assert_eq!(
        page.body.matches("bench-").count(),
        99,
        "100 resources a page"
    );
    assert!(page.body.contains("/acme/me?devices=1"));
    assert!(page.body.contains("/acme/me?resources=1"));
    let last = ann.get(&format!("{url}?resources=10")).await;
    assert!(last.body.contains("bench-0999"), "the last page");
    assert!(last.body.contains("/acme/me?resources=9"));
    assert!(!last.body.contains("/acme/me?resources=11"));
    // How fast it is, is bench/console.sh's business (no timing asserted).
}

/// By OpenID Connect too: a user lands on their own page, an admin (by the
/// provider's admin claim) on the console; a client sign-in still ends in
/// the "connect this device?" question, with no web session.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_signing_in_with_oidc_lands_on_their_own_page() {
    let portal = WebPortal::start(|_| {}).await;
    let (status, created) = portal
        .api(
            Method::POST,
            "/identity_providers",
            Some(json!({
                "type": "oidc", "name": "Corp IdP", "issuer": "http://127.0.0.1:1",
                "client_id": "postern-acme",
                "client_secret": "provider-secret-0123456789-abcdefghij",
                "admin_claim": "is_admin",
            })),
        )
        .await;
    assert_eq!(status, 201, "{created}");
    let provider = created["id"].as_str().unwrap().to_string();
    let callback = created["redirect_uri"].as_str().unwrap().to_string();
    let idp = support::oidc::OidcProvider::start(
        "postern-acme",
        "provider-secret-0123456789-abcdefghij",
        &[callback],
    )
    .await;
    let (status, _) = portal
        .api(
            Method::PATCH,
            &format!("/identity_providers/{provider}"),
            Some(json!({
                "issuer": idp.issuer,
                "client_secret": "provider-secret-0123456789-abcdefghij",
            })),
        )
        .await;
    assert_eq!(status, 200);
    portal.add_actor("Carol", "carol@corp.test", "user").await;
    let sign_in = async |query: &str, login: &str| {
        let mut browser = Browser::new();
        let start = browser
            .get(&format!(
                "{}/acme/sign_in/oidc/{provider}{query}",
                portal.base
            ))
            .await;
        assert_eq!(start.status, 303, "{}", start.body);
        let callback = idp.sign_in(&start.location.unwrap(), login).await;
        let page = browser.get(&callback).await;
        (browser, page)
    };

    idp.set_account("carol-sub", "carol@corp.test", &[], false)
        .await;
    let (mut carol, page) = sign_in("", "carol-sub").await;
    assert_eq!(page.status, 303, "{}", page.body);
    assert_eq!(page.location.as_deref(), Some("/acme/me"));
    let me = carol.get(&format!("{}/acme/me", portal.base)).await;
    assert_eq!(me.status, 200);
    assert!(me.body.contains("carol@corp.test"));
    let console = carol.get(&format!("{}/acme/", portal.base)).await;
    assert_eq!(
        console.location.as_deref(),
        Some("/acme/me"),
        "her own page"
    );

    // A client sign-in: the question, no session.
    let query = format!(
        "?client_state=client-state-0123456789&client_challenge={}&redirect_uri={}",
        postern_portal::auth::token::challenge_of(CLIENT_NONCE),
        url::form_urlencoded::byte_serialize(support::email::REDIRECT.as_bytes())
            .collect::<String>()
    );
    let (browser, page) = sign_in(&query, "carol-sub").await;
    assert_eq!(page.status, 200, "{}", page.body);
    assert!(page.body.contains("Connect this device"));
    assert!(!browser.cookies.contains_key("postern_session"));

    idp.set_account("root-sub", "admin@example.test", &[], true)
        .await;
    let (_, page) = sign_in("", "root-sub").await;
    assert_eq!(page.location.as_deref(), Some("/acme/"));
}
