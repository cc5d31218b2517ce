//! The console's users and clients pages: adding each kind of actor, the
//! details a directory owns refused with the API's reason, tokens shown
//! once and revoked, deletion that says what goes and disconnects at once,
//! an admin told before acting on their own account, clients verified and
//! deleted through the API's handlers, lists paged in SQL, markup escaped,
//! forms without the CSRF token refused, no admin page for a user.

use std::time::Duration;

use reqwest::Method;
use serde_json::{Value, json};

use crate::support::channel::{Peer, key};
use crate::support::web::{Browser, Page, WebPortal};

const PROBE: &str = "<script>alert(1)</script>\"'&";
/// An email address the API takes that is full of markup.
const PROBE_EMAIL: &str = "<script>alert(1)</script>\"'&@probe.example";

/// The probe came back escaped, never raw.
fn escaped(page: &Page) {
    assert!(!page.body.contains("<script>alert"), "{}", page.body);
    assert!(
        page.body.contains("&lt;script&gt;alert(1)&lt;/script&gt;"),
        "{}",
        page.body
    );
}

async fn post(
    browser: &mut Browser,
    portal: &WebPortal,
    path: &str,
    form: &[(&str, &str)],
) -> Page {
    browser
        .post(&format!("{}/acme{path}", portal.base), form)
        .await
}

async fn get(browser: &mut Browser, portal: &WebPortal, path: &str) -> Page {
    browser.get(&format!("{}/acme{path}", portal.base)).await
}

async fn csrf(browser: &mut Browser, portal: &WebPortal) -> String {
    get(browser, portal, "/actors")
        .await
        .hidden("csrf")
        .unwrap()
}

/// The id at the end of a redirect to an actor's page.
fn actor_in(page: &Page) -> String {
    page.location
        .as_deref()
        .and_then(|l| l.strip_prefix("/acme/actors/"))
        .unwrap_or_else(|| {
            panic!(
                "no actor page: {} {:?} {}",
                page.status, page.location, page.body
            )
        })
        .to_string()
}

async fn actor(portal: &WebPortal, id: &str) -> (u16, Value) {
    portal
        .api(Method::GET, &format!("/actors/{id}"), None)
        .await
}

async fn admin_id(portal: &WebPortal) -> String {
    let (_, actors) = portal.api(Method::GET, "/actors", None).await;
    actors["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["email"] == "admin@example.test")
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string()
}

/// The newest audit entry.
async fn last_audit(portal: &WebPortal) -> Value {
    let (_, log) = portal.api(Method::GET, "/audit_log?limit=1", None).await;
    log["data"][0].clone()
}

/// Client devices of `actor` made in the store, as connecting clients
/// make them: (name, os) each.
async fn add_clients(portal: &WebPortal, actor: &str, clients: &[(String, Option<&str>)]) {
    use postern_portal::testing::devices;
    let mut tx = portal.state.store.write().await.unwrap();
    for (n, (name, os)) in clients.iter().enumerate() {
        devices::upsert_on_connect(
            &mut tx,
            portal.account_id,
            &devices::Connecting {
                kind: postern_portal::domain::DeviceKind::Client,
                actor_id: Some(actor.parse().unwrap()),
                site_id: None,
                token_id: None,
                device_id: &format!("device-{actor}-{n}"),
                name,
                os: *os,
                version: Some("1.2.3"),
                remote_ip: Some("192.0.2.7".into()),
            },
            devices::DeviceCaps {
                per_actor: u32::MAX,
                per_token: u32::MAX,
            },
            1_700_000_000_000,
        )
        .await
        .unwrap();
    }
    tx.commit().await.unwrap();
}

async fn clients(portal: &WebPortal) -> Vec<Value> {
    let (_, list) = portal.api(Method::GET, "/clients", None).await;
    list["data"].as_array().unwrap().clone()
}

fn addr(portal: &WebPortal) -> std::net::SocketAddr {
    portal.base.trim_start_matches("http://").parse().unwrap()
}

/// The secret on a new token's page.
fn new_token(page: &Page) -> String {
    let start = page
        .body
        .find("<pre id=\"new-token\">")
        .unwrap_or_else(|| panic!("no token: {} {}", page.status, page.body))
        + "<pre id=\"new-token\">".len();
    let end = page.body[start..].find("</pre>").unwrap() + start;
    page.body[start..end].to_string()
}

/// Calls the API with another token.
async fn api_with(portal: &WebPortal, token: &str, path: &str) -> u16 {
    reqwest::Client::new()
        .get(format!("{}/api/v1{path}", portal.base))
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_kind_of_actor_is_added_and_its_markup_comes_back_escaped() {
    let (portal, _smtp, mut browser) = crate::admin_browser().await;
    let csrf = csrf(&mut browser, &portal).await;
    let admin = admin_id(&portal).await;

    // Refused by the API's rules: the form again with the reason and what
    // was typed (escaped too).
    let no_email = post(
        &mut browser,
        &portal,
        "/actors",
        &[
            ("name", PROBE),
            ("email", ""),
            ("role", "user"),
            ("csrf", &csrf),
        ],
    )
    .await;
    assert_eq!(no_email.status, 422, "{}", no_email.body);
    assert!(no_email.body.contains("role=\"alert\""));
    assert!(no_email.body.contains("need an email"), "{}", no_email.body);
    escaped(&no_email);
    let bad_email = post(
        &mut browser,
        &portal,
        "/actors",
        &[
            ("name", "Bob"),
            ("email", "not an address"),
            ("role", "user"),
            ("csrf", &csrf),
        ],
    )
    .await;
    assert_eq!(bad_email.status, 422);
    assert!(
        bad_email.body.contains("value=\"not an address\""),
        "{}",
        bad_email.body
    );

    let mut made = Vec::new();
    for (role, email, name) in [
        ("user", PROBE_EMAIL, format!("User {PROBE}")),
        ("admin", "ops@example.test", format!("Admin {PROBE}")),
        ("service_account", "", format!("Robot {PROBE}")),
    ] {
        let page = post(
            &mut browser,
            &portal,
            "/actors",
            &[
                ("name", &name),
                ("email", email),
                ("role", role),
                ("csrf", &csrf),
            ],
        )
        .await;
        assert_eq!(page.status, 303, "{role}: {}", page.body);
        let id = actor_in(&page);
        // Really made, by the API's handler, audited as the admin.
        let (status, stored) = actor(&portal, &id).await;
        assert_eq!(status, 200);
        assert_eq!(stored["role"], role);
        assert_eq!(stored["name"], name.as_str());
        assert_eq!(
            stored["email"],
            if email.is_empty() {
                Value::Null
            } else {
                json!(email)
            }
        );
        let entry = last_audit(&portal).await;
        assert_eq!(
            (entry["action"].as_str(), entry["object_id"].as_str()),
            (Some("actor.create"), Some(id.as_str()))
        );
        assert_eq!(entry["actor_id"], admin.as_str());
        made.push(id);
    }
    // The email taken: the API's 409, shown next to the form.
    let taken = post(
        &mut browser,
        &portal,
        "/actors",
        &[
            ("name", "Again"),
            ("email", "ops@example.test"),
            ("role", "user"),
            ("csrf", &csrf),
        ],
    )
    .await;
    assert_eq!(taken.status, 422, "{}", taken.body);
    assert!(taken.body.contains("role=\"alert\""));

    let list = get(&mut browser, &portal, "/actors").await;
    assert_eq!(list.status, 200);
    escaped(&list);
    assert!(
        list.body
            .contains("&lt;script&gt;alert(1)&lt;/script&gt;&quot;&#39;&amp;@probe.example")
            || list
                .body
                .contains("&lt;script&gt;alert(1)&lt;/script&gt;&quot;'&amp;@probe.example"),
        "the email, escaped: {}",
        list.body
    );
    for label in ["User", "Admin", "Service account"] {
        assert!(list.body.contains(&format!("<td>{label}</td>")), "{label}");
    }
    for id in &made {
        let page = get(&mut browser, &portal, &format!("/actors/{id}")).await;
        assert_eq!(page.status, 200);
        escaped(&page);
    }
    // Search by name or email, any case.
    let found = get(&mut browser, &portal, "/actors?q=ROBOT").await;
    assert!(found.body.contains(&format!("/acme/actors/{}", made[2])));
    assert!(!found.body.contains(&format!("/acme/actors/{}", made[0])));
    assert!(found.body.contains("1 match"), "{}", found.body);
    let by_email = get(&mut browser, &portal, "/actors?q=probe.example").await;
    assert!(by_email.body.contains(&format!("/acme/actors/{}", made[0])));
    assert!(!by_email.body.contains(&format!("/acme/actors/{}", made[1])));
    // `%` is a character, not a wildcard.
    let literal = get(&mut browser, &portal, "/actors?q=%25").await;
    assert!(literal.body.contains("0 match"), "{}", literal.body);

    // Details changed through the API's update.
    let saved = post(
        &mut browser,
        &portal,
        &format!("/actors/{}", made[0]),
        &[
            ("name", "Renamed"),
            ("email", "renamed@example.test"),
            ("role", "admin"),
            ("csrf", &csrf),
        ],
    )
    .await;
    assert_eq!(saved.status, 303, "{}", saved.body);
    let (_, stored) = actor(&portal, &made[0]).await;
    assert_eq!(
        (
            stored["name"].as_str(),
            stored["email"].as_str(),
            stored["role"].as_str()
        ),
        (Some("Renamed"), Some("renamed@example.test"), Some("admin"))
    );
    assert_eq!(last_audit(&portal).await["action"], "actor.update");
    // A service account made a user without an email: the API's 409,
    // shown with what was typed.
    let refused = post(
        &mut browser,
        &portal,
        &format!("/actors/{}", made[2]),
        &[
            ("name", "Robot two"),
            ("email", ""),
            ("role", "user"),
            ("csrf", &csrf),
        ],
    )
    .await;
    assert_eq!(refused.status, 422, "{}", refused.body);
    assert!(
        refused.body.contains("role=\"alert\"") && refused.body.contains("value=\"Robot two\"")
    );
    assert_eq!(actor(&portal, &made[2]).await.1["role"], "service_account");
    // A blank email is not quietly kept: the admin is told.
    let cleared = post(
        &mut browser,
        &portal,
        &format!("/actors/{}", made[1]),
        &[
            ("name", "Ops"),
            ("email", ""),
            ("role", "admin"),
            ("csrf", &csrf),
        ],
    )
    .await;
    assert_eq!(cleared.status, 422, "{}", cleared.body);
    assert!(
        cleared.body.contains("cannot be removed"),
        "{}",
        cleared.body
    );
    assert_eq!(
        actor(&portal, &made[1]).await.1["email"],
        "ops@example.test"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_directorys_user_is_read_only_here_with_the_apis_reason() {
    let (portal, _smtp, mut browser) = crate::admin_browser().await;
    let csrf = csrf(&mut browser, &portal).await;
    let (status, directory) = portal
        .api(
            Method::POST,
            "/directories",
            Some(json!({"type": "scim", "name": "Okta <i>"})),
        )
        .await;
    assert_eq!(status, 201, "{directory}");
    let scim = directory["scim_base_url"].as_str().unwrap();
    let user = reqwest::Client::new()
        .post(format!("{scim}/Users"))
        .bearer_auth(directory["token"].as_str().unwrap())
        .header("content-type", "application/scim+json")
        .body(
            json!({
                "schemas": ["urn:ietf:params:scim:schemas:core:2.0:User"],
                "userName": "dana@acme.test",
                "name": {"givenName": PROBE, "familyName": "Dana"},
                "displayName": PROBE,
                "emails": [{"primary": true, "value": "dana@acme.test"}],
                "active": true,
            })
            .to_string(),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(user.status(), 201);
    let dana: Value = user.json().await.unwrap();
    let id = dana["id"].as_str().unwrap();
    let before = actor(&portal, id).await.1;

    let list = get(&mut browser, &portal, "/actors").await;
    escaped(&list);
    assert!(list.body.contains("Okta &lt;i&gt;"), "{}", list.body);
    let page = get(&mut browser, &portal, &format!("/actors/{id}")).await;
    escaped(&page);
    assert!(page.body.contains("readonly"), "{}", page.body);
    // A changed name: the API's 409 naming the directory, shown.
    let renamed = post(
        &mut browser,
        &portal,
        &format!("/actors/{id}"),
        &[
            ("name", "Mallory"),
            ("email", "dana@acme.test"),
            ("role", "user"),
            ("csrf", &csrf),
        ],
    )
    .await;
    assert_eq!(renamed.status, 422, "{}", renamed.body);
    assert!(renamed.body.contains("Okta &lt;i&gt;"), "{}", renamed.body);
    assert_eq!(actor(&portal, id).await.1, before);
    // Its role is Postern's: taken, the directory's fields sent unchanged.
    let name = before["name"].as_str().unwrap();
    let promoted = post(
        &mut browser,
        &portal,
        &format!("/actors/{id}"),
        &[
            ("name", name),
            ("email", "dana@acme.test"),
            ("role", "admin"),
            ("csrf", &csrf),
        ],
    )
    .await;
    assert_eq!(promoted.status, 303, "{}", promoted.body);
    assert_eq!(actor(&portal, id).await.1["role"], "admin");
    // Disabling and deleting are the directory's: refused with its reason.
    for path in ["disable", "delete"] {
        let refused = post(
            &mut browser,
            &portal,
            &format!("/actors/{id}/{path}"),
            &[("csrf", &csrf)],
        )
        .await;
        assert_eq!(refused.status, 422, "{path}: {}", refused.body);
        assert!(
            refused.body.contains("role=\"alert\"") && refused.body.contains("Okta &lt;i&gt;"),
            "{}",
            refused.body
        );
    }
    let (status, after) = actor(&portal, id).await;
    assert_eq!((status, &after["disabled"]), (200, &json!(false)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_post_without_the_csrf_token_is_refused_and_changes_nothing() {
    let (portal, _smtp, mut browser) = crate::admin_browser().await;
    let user = portal
        .add_actor("Ursula", "ursula@example.test", "user")
        .await;
    let (_, robot) = portal
        .api(
            Method::POST,
            "/actors",
            Some(json!({"name": "Robot", "role": "service_account"})),
        )
        .await;
    let robot = robot["id"].as_str().unwrap().to_string();
    let (_, disabled) = portal
        .api(Method::POST, "/actors", Some(json!({"name": "Off", "email": "off@example.test", "role": "user", "disabled": true})))
        .await;
    let disabled = disabled["id"].as_str().unwrap().to_string();
    let (_, token) = portal
        .api(Method::POST, &format!("/actors/{robot}/tokens"), None)
        .await;
    let token_id = token["id"].as_str().unwrap().to_string();
    add_clients(&portal, &user, &[("laptop".into(), Some("Linux"))]).await;
    let client = clients(&portal).await[0]["id"]
        .as_str()
        .unwrap()
        .to_string();

    let actors_before = portal.api(Method::GET, "/actors", None).await.1;
    let clients_before = clients(&portal).await;
    let audit_before = last_audit(&portal).await;
    let csrf = csrf(&mut browser, &portal).await;
    let routes: Vec<(String, Vec<(&str, &str)>)> = vec![
        (
            "/actors".into(),
            vec![
                ("name", "Forged"),
                ("email", "forged@example.test"),
                ("role", "admin"),
            ],
        ),
        (
            format!("/actors/{user}"),
            vec![
                ("name", "Forged"),
                ("email", "ursula@example.test"),
                ("role", "admin"),
            ],
        ),
        (format!("/actors/{user}/disable"), vec![]),
        (format!("/actors/{disabled}/enable"), vec![]),
        (
            format!("/actors/{robot}/tokens"),
            vec![("lifetime_days", "30")],
        ),
        (format!("/actors/{robot}/tokens/{token_id}/revoke"), vec![]),
        (format!("/actors/{user}/delete"), vec![]),
        (
            format!("/clients/{client}/verify"),
            vec![("verified", "true")],
        ),
        (format!("/clients/{client}/delete"), vec![]),
    ];
    for (path, form) in &routes {
        // No token, a wrong token, and the right token from another site.
        let forged = post(&mut browser, &portal, path, form).await;
        assert_eq!(forged.status, 403, "{path}: {}", forged.body);
        let mut wrong = form.clone();
        wrong.push(("csrf", "not-the-token"));
        assert_eq!(
            post(&mut browser, &portal, path, &wrong).await.status,
            403,
            "{path}"
        );
        let mut right = form.clone();
        right.push(("csrf", &csrf));
        let body = url::form_urlencoded::Serializer::new(String::new())
            .extend_pairs(&right)
            .finish();
        let cross = reqwest::Client::new()
            .post(format!("{}/acme{path}", portal.base))
            .header("cookie", browser.cookie_header())
            .header("content-type", "application/x-www-form-urlencoded")
            .header("sec-fetch-site", "cross-site")
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(cross.status(), 403, "{path}");
    }
    // Nothing changed: no audit entry, the same actors and clients, the
    // token still good.
    assert_eq!(last_audit(&portal).await, audit_before);
    assert_eq!(
        portal.api(Method::GET, "/actors", None).await.1,
        actors_before
    );
    let clients_after = clients(&portal).await;
    assert_eq!(clients_after.len(), clients_before.len());
    assert_eq!(clients_after[0]["verified"], clients_before[0]["verified"]);
    let mut peer = Peer::connect(
        addr(&portal),
        "/v1/client",
        token["token"].as_str().unwrap(),
        "robot-box",
        &key(3),
    )
    .await
    .expect("the token still works");
    assert_eq!(peer.next().await["type"], "init");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_made_in_the_console_is_shown_once_and_stops_working_when_revoked() {
    let (portal, _smtp, mut browser) = crate::admin_browser().await;
    let csrf = csrf(&mut browser, &portal).await;
    let ops = actor_in(
        &post(
            &mut browser,
            &portal,
            "/actors",
            &[
                ("name", "Ops"),
                ("email", "ops@example.test"),
                ("role", "admin"),
                ("csrf", &csrf),
            ],
        )
        .await,
    );
    // An admin's token is an API token; a read-only one may not write.
    let made = post(
        &mut browser,
        &portal,
        &format!("/actors/{ops}/tokens"),
        &[("lifetime_days", "30"), ("scope", "write"), ("csrf", &csrf)],
    )
    .await;
    assert_eq!(made.status, 201, "{}", made.body);
    let token = new_token(&made);
    assert_eq!(api_with(&portal, &token, "/actors").await, 200);
    let page = get(&mut browser, &portal, &format!("/actors/{ops}")).await;
    assert!(page.body.contains("API token"), "{}", page.body);
    assert!(!page.body.contains(&token), "the secret is shown once only");
    let token_id = {
        let marker = format!("/acme/actors/{ops}/tokens/");
        let start = page.body.find(&marker).unwrap() + marker.len();
        page.body[start..start + 36].to_string()
    };
    let confirm = get(
        &mut browser,
        &portal,
        &format!("/actors/{ops}/tokens/{token_id}/revoke"),
    )
    .await;
    assert_eq!(confirm.status, 200);
    assert!(confirm.body.contains("get 401"), "{}", confirm.body);
    assert_eq!(
        api_with(&portal, &token, "/actors").await,
        200,
        "asking revokes nothing"
    );
    let revoked = post(
        &mut browser,
        &portal,
        &format!("/actors/{ops}/tokens/{token_id}/revoke"),
        &[("csrf", &csrf)],
    )
    .await;
    assert_eq!(revoked.status, 303, "{}", revoked.body);
    assert_eq!(api_with(&portal, &token, "/actors").await, 401);
    let entry = last_audit(&portal).await;
    assert_eq!(
        (entry["action"].as_str(), entry["object_id"].as_str()),
        (Some("token.revoke"), Some(token_id.as_str()))
    );

    // A service account's client token: its connected client is closed
    // at once, and it cannot connect again.
    let robot = actor_in(
        &post(
            &mut browser,
            &portal,
            "/actors",
            &[
                ("name", "CI"),
                ("email", ""),
                ("role", "service_account"),
                ("csrf", &csrf),
            ],
        )
        .await,
    );
    let made = post(
        &mut browser,
        &portal,
        &format!("/actors/{robot}/tokens"),
        &[("lifetime_days", ""), ("csrf", &csrf)],
    )
    .await;
    assert_eq!(made.status, 201, "{}", made.body);
    assert!(made.body.contains("postern client up"), "{}", made.body);
    let client_token = new_token(&made);
    let mut peer = Peer::connect(
        addr(&portal),
        "/v1/client",
        &client_token,
        "ci-box",
        &key(4),
    )
    .await
    .unwrap();
    assert_eq!(peer.next().await["type"], "init");
    let page = get(&mut browser, &portal, &format!("/actors/{robot}")).await;
    assert!(
        page.body.contains("Client token") && page.body.contains("ci-box"),
        "{}",
        page.body
    );
    assert!(
        page.body.contains("client connected"),
        "the session log: {}",
        page.body
    );
    let marker = format!("/acme/actors/{robot}/tokens/");
    let start = page.body.find(&marker).unwrap() + marker.len();
    let client_token_id = page.body[start..start + 36].to_string();
    let confirm = get(
        &mut browser,
        &portal,
        &format!("/actors/{robot}/tokens/{client_token_id}/revoke"),
    )
    .await;
    assert!(confirm.body.contains("1 client(s)"), "{}", confirm.body);
    // Not through another actor's page.
    let elsewhere = post(
        &mut browser,
        &portal,
        &format!("/actors/{ops}/tokens/{client_token_id}/revoke"),
        &[("csrf", &csrf)],
    )
    .await;
    assert_eq!(elsewhere.status, 303);
    assert!(
        !peer.closed_within(Duration::from_millis(300)).await,
        "another actor's page revokes nothing"
    );
    let revoked = post(
        &mut browser,
        &portal,
        &format!("/actors/{robot}/tokens/{client_token_id}/revoke"),
        &[("csrf", &csrf)],
    )
    .await;
    assert_eq!(revoked.status, 303);
    assert!(
        peer.closed_within(Duration::from_secs(2)).await,
        "the channel closes at once"
    );
    assert_eq!(
        Peer::connect(
            addr(&portal),
            "/v1/client",
            &client_token,
            "ci-box",
            &key(4)
        )
        .await
        .err(),
        Some(401)
    );

    // A user gets no token here (the API's 409, shown).
    let user = portal
        .add_actor("Ursula", "ursula@example.test", "user")
        .await;
    let refused = post(
        &mut browser,
        &portal,
        &format!("/actors/{user}/tokens"),
        &[("csrf", &csrf)],
    )
    .await;
    assert_eq!(refused.status, 422, "{}", refused.body);
    assert!(
        refused.body.contains("postern client sign-in"),
        "{}",
        refused.body
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_an_actor_says_what_goes_and_its_client_token_stops_working() {
    let (portal, _smtp, mut browser) = crate::admin_browser().await;
    let csrf = csrf(&mut browser, &portal).await;
    let robot = actor_in(
        &post(
            &mut browser,
            &portal,
            "/actors",
            &[
                ("name", "Builder"),
                ("email", ""),
                ("role", "service_account"),
                ("csrf", &csrf),
            ],
        )
        .await,
    );
    let made = post(
        &mut browser,
        &portal,
        &format!("/actors/{robot}/tokens"),
        &[("csrf", &csrf)],
    )
    .await;
    let token = new_token(&made);
    let mut peer = Peer::connect(addr(&portal), "/v1/client", &token, "build-1", &key(5))
        .await
        .unwrap();
    assert_eq!(peer.next().await["type"], "init");
    let (_, group) = portal
        .api(
            Method::POST,
            "/groups",
            Some(json!({"name": "Builders <b>"})),
        )
        .await;
    let (status, _) = portal
        .api(
            Method::PUT,
            &format!("/groups/{}/members", group["id"].as_str().unwrap()),
            Some(json!({"actor_ids": [robot]})),
        )
        .await;
    assert_eq!(status, 200);

    let confirm = get(&mut browser, &portal, &format!("/actors/{robot}/delete")).await;
    assert_eq!(confirm.status, 200);
    for said in [
        "1 token(s)",
        "1 client(s)",
        "1 group(s)",
        "Builders &lt;b&gt;",
        "disconnected at once",
    ] {
        assert!(confirm.body.contains(said), "{said}: {}", confirm.body);
    }
    assert!(
        !peer.closed_within(Duration::from_millis(200)).await,
        "asking deletes nothing"
    );
    let deleted = post(
        &mut browser,
        &portal,
        &format!("/actors/{robot}/delete"),
        &[("csrf", &csrf)],
    )
    .await;
    assert_eq!(deleted.status, 303, "{}", deleted.body);
    assert_eq!(deleted.location.as_deref(), Some("/acme/actors"));
    assert!(
        peer.closed_within(Duration::from_secs(2)).await,
        "its client is disconnected at once"
    );
    assert_eq!(
        Peer::connect(addr(&portal), "/v1/client", &token, "build-1", &key(5))
            .await
            .err(),
        Some(401)
    );
    assert_eq!(actor(&portal, &robot).await.0, 404);
    assert!(clients(&portal).await.is_empty());
    let entry = last_audit(&portal).await;
    assert_eq!(
        (entry["action"].as_str(), entry["object_id"].as_str()),
        (Some("actor.delete"), Some(robot.as_str()))
    );
    assert_eq!(entry["actor_id"], admin_id(&portal).await.as_str());
    // A second click is not an error; the page is gone.
    let again = post(
        &mut browser,
        &portal,
        &format!("/actors/{robot}/delete"),
        &[("csrf", &csrf)],
    )
    .await;
    assert_eq!(again.status, 303);
    assert_eq!(
        get(&mut browser, &portal, &format!("/actors/{robot}"))
            .await
            .status,
        404
    );

    // Disabling says what it does, then closes the channels of a user.
    let user = portal.add_actor("Uma", "uma@example.test", "admin").await;
    let made = post(
        &mut browser,
        &portal,
        &format!("/actors/{user}/tokens"),
        &[("csrf", &csrf)],
    )
    .await;
    let api_token = new_token(&made);
    let confirm = get(&mut browser, &portal, &format!("/actors/{user}/disable")).await;
    assert!(
        confirm.body.contains("disconnected at once"),
        "{}",
        confirm.body
    );
    assert_eq!(actor(&portal, &user).await.1["disabled"], false);
    let disabled = post(
        &mut browser,
        &portal,
        &format!("/actors/{user}/disable"),
        &[("csrf", &csrf)],
    )
    .await;
    assert_eq!(disabled.status, 303, "{}", disabled.body);
    assert_eq!(actor(&portal, &user).await.1["disabled"], true);
    assert_eq!(api_with(&portal, &api_token, "/actors").await, 401);
    let enabled = post(
        &mut browser,
        &portal,
        &format!("/actors/{user}/enable"),
        &[("csrf", &csrf)],
    )
    .await;
    assert_eq!(enabled.status, 303);
    assert_eq!(actor(&portal, &user).await.1["disabled"], false);
    assert_eq!(api_with(&portal, &api_token, "/actors").await, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_admin_is_told_before_deleting_disabling_or_demoting_themselves() {
    let (portal, _smtp, mut browser) = crate::admin_browser().await;
    let csrf = csrf(&mut browser, &portal).await;
    let me = admin_id(&portal).await;
    let page = get(&mut browser, &portal, &format!("/actors/{me}")).await;
    assert!(page.body.contains("This is you"), "{}", page.body);
    assert!(page.body.contains("(this session)"), "{}", page.body);
    for path in ["delete", "disable"] {
        let confirm = get(&mut browser, &portal, &format!("/actors/{me}/{path}")).await;
        assert!(
            confirm.body.contains("This is your own account"),
            "{path}: {}",
            confirm.body
        );
        assert!(confirm.body.contains("name=\"confirm_self\""));
        // Without the box ticked: refused here, before the API.
        let refused = post(
            &mut browser,
            &portal,
            &format!("/actors/{me}/{path}"),
            &[("csrf", &csrf)],
        )
        .await;
        assert_eq!(refused.status, 422, "{path}: {}", refused.body);
        assert!(refused.body.contains("Tick the box"), "{}", refused.body);
        // Ticked: the API refuses to lose the last admin, and says so.
        let last = post(
            &mut browser,
            &portal,
            &format!("/actors/{me}/{path}"),
            &[("csrf", &csrf), ("confirm_self", "yes")],
        )
        .await;
        assert_eq!(last.status, 422, "{path}: {}", last.body);
        assert!(last.body.contains("last enabled admin"), "{}", last.body);
    }
    let demote = post(
        &mut browser,
        &portal,
        &format!("/actors/{me}"),
        &[
            ("name", "Admin"),
            ("email", "admin@example.test"),
            ("role", "user"),
            ("csrf", &csrf),
        ],
    )
    .await;
    assert_eq!(demote.status, 422, "{}", demote.body);
    assert!(demote.body.contains("Tick the box"));
    let (status, stored) = actor(&portal, &me).await;
    assert_eq!(
        (status, stored["role"].as_str(), &stored["disabled"]),
        (200, Some("admin"), &json!(false))
    );

    // With another admin, ticking the box disables yourself: signed out.
    let second = portal
        .add_actor("Second", "second@example.test", "admin")
        .await;
    // The first admin's API token stops working with it: read as the second.
    let (_, token) = portal
        .api(Method::POST, &format!("/actors/{second}/tokens"), None)
        .await;
    let token = token["token"].as_str().unwrap().to_string();
    let done = post(
        &mut browser,
        &portal,
        &format!("/actors/{me}/disable"),
        &[("csrf", &csrf), ("confirm_self", "yes")],
    )
    .await;
    assert_eq!(done.status, 303, "{}", done.body);
    let stored: Value = reqwest::Client::new()
        .get(format!("{}/api/v1/actors/{me}", portal.base))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(stored["disabled"], true);
    let after = get(&mut browser, &portal, "/actors").await;
    assert_eq!(after.location.as_deref(), Some("/acme/sign_in"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verifying_a_client_reaches_the_api_and_deleting_one_says_what_goes() {
    let (portal, _smtp, mut browser) = crate::admin_browser().await;
    let csrf = csrf(&mut browser, &portal).await;
    let owner = portal
        .add_actor(&format!("Owner {PROBE}"), "owner@example.test", "user")
        .await;
    add_clients(&portal, &owner, &[(format!("Laptop {PROBE}"), Some(PROBE))]).await;
    let client = clients(&portal).await[0].clone();
    let id = client["id"].as_str().unwrap().to_string();
    assert_eq!(client["verified"], false);

    let list = get(&mut browser, &portal, "/clients?show=unverified").await;
    assert_eq!(list.status, 200);
    let online = get(&mut browser, &portal, "/clients?show=online").await;
    assert!(
        online.body.contains("0 client(s)") && !online.body.contains(&id),
        "{}",
        online.body
    );
    escaped(&list);
    assert!(list.body.contains(&format!("/acme/clients/{id}")));
    assert!(
        list.body.contains(&format!("/acme/actors/{owner}")),
        "the owner links to its page"
    );
    let page = get(&mut browser, &portal, &format!("/clients/{id}")).await;
    assert_eq!(page.status, 200);
    escaped(&page);
    assert!(
        page.body.contains("1.2.3") && page.body.contains("192.0.2.7"),
        "{}",
        page.body
    );

    // Verified from the filtered list: back to it, the API agrees.
    let verified = post(
        &mut browser,
        &portal,
        &format!("/clients/{id}/verify"),
        &[
            ("verified", "true"),
            ("back", "?show=unverified&q=laptop"),
            ("csrf", &csrf),
        ],
    )
    .await;
    assert_eq!(verified.status, 303, "{}", verified.body);
    assert_eq!(
        verified.location.as_deref(),
        Some("/acme/clients?q=laptop&show=unverified")
    );
    assert_eq!(clients(&portal).await[0]["verified"], true);
    let entry = last_audit(&portal).await;
    assert_eq!(
        (entry["action"].as_str(), entry["object_id"].as_str()),
        (Some("client.update"), Some(id.as_str()))
    );
    assert_eq!(entry["actor_id"], admin_id(&portal).await.as_str());
    let unverified_only = get(&mut browser, &portal, "/clients?show=unverified").await;
    assert!(
        !unverified_only
            .body
            .contains(&format!("/acme/clients/{id}\"")),
        "{}",
        unverified_only.body
    );
    // `back` is only ever the list's own parameters.
    let elsewhere = post(
        &mut browser,
        &portal,
        &format!("/clients/{id}/verify"),
        &[
            ("verified", "false"),
            (
                "back",
                "?show=online&next=https://evil.example&owner=//evil.example",
            ),
            ("csrf", &csrf),
        ],
    )
    .await;
    assert_eq!(
        elsewhere.location.as_deref(),
        Some("/acme/clients?show=online")
    );
    // From the whole list back to it; from the client's page back there.
    for (back, to) in [
        ("?", "/acme/clients".to_string()),
        ("", format!("/acme/clients/{id}")),
    ] {
        let page = post(
            &mut browser,
            &portal,
            &format!("/clients/{id}/verify"),
            &[("verified", "false"), ("back", back), ("csrf", &csrf)],
        )
        .await;
        assert_eq!(page.location.as_deref(), Some(to.as_str()));
    }
    assert_eq!(clients(&portal).await[0]["verified"], false);

    let confirm = get(&mut browser, &portal, &format!("/clients/{id}/delete")).await;
    assert_eq!(confirm.status, 200);
    escaped(&confirm);
    let ipv4 = client["ipv4"].as_str().unwrap();
    assert!(
        confirm.body.contains(ipv4) && confirm.body.contains("closes at once"),
        "{}",
        confirm.body
    );
    let deleted = post(
        &mut browser,
        &portal,
        &format!("/clients/{id}/delete"),
        &[("csrf", &csrf)],
    )
    .await;
    assert_eq!(deleted.status, 303);
    assert!(clients(&portal).await.is_empty());
    assert_eq!(last_audit(&portal).await["action"], "client.delete");
    assert_eq!(
        get(&mut browser, &portal, &format!("/clients/{id}"))
            .await
            .status,
        404
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_and_actors_are_paged_fifty_at_a_time_and_filtered() {
    let (portal, _smtp, mut browser) = crate::admin_browser().await;
    let pat = portal.add_actor("Pat", "pat@example.test", "user").await;
    let names: Vec<(String, Option<&str>)> = (0..120)
        .map(|n| (format!("client-{n:03}"), Some("Linux")))
        .collect();
    add_clients(&portal, &pat, &names).await;

    let first = get(&mut browser, &portal, "/clients").await;
    assert_eq!(first.status, 200);
    assert!(
        first.body.contains("120 client(s)") && first.body.contains("Page 1 of 3"),
        "{}",
        first.body
    );
    assert!(first.body.contains(">client-000<") && first.body.contains(">client-049<"));
    assert!(!first.body.contains(">client-050<"));
    assert!(
        first.body.contains("href=\"/acme/clients?page=2\""),
        "{}",
        first.body
    );
    let second = get(&mut browser, &portal, "/clients?page=2").await;
    assert!(second.body.contains(">client-050<") && second.body.contains(">client-099<"));
    assert!(!second.body.contains(">client-049<") && !second.body.contains(">client-100<"));
    assert!(second.body.contains("Page 2 of 3"));
    assert!(
        second.body.contains("href=\"/acme/clients?page=3\"")
            && second.body.contains("href=\"/acme/clients\""),
        "{}",
        second.body
    );
    let last = get(&mut browser, &portal, "/clients?page=3").await;
    assert!(last.body.contains(">client-119<") && !last.body.contains("rel=\"next\""));
    // A page past the end is empty, not an error; nonsense is page 1.
    assert_eq!(
        get(&mut browser, &portal, "/clients?page=99").await.status,
        200
    );
    assert!(
        get(&mut browser, &portal, "/clients?page=x")
            .await
            .body
            .contains(">client-000<")
    );

    // Search by the client's name or its owner's; filters keep paging.
    let search = get(&mut browser, &portal, "/clients?q=CLIENT-07").await;
    assert!(search.body.contains("10 client(s)"), "{}", search.body);
    let by_owner = get(&mut browser, &portal, "/clients?q=pat%40example").await;
    assert!(
        by_owner.body.contains("120 client(s)")
            && by_owner.body.contains("q=pat%40example&amp;page=2"),
        "{}",
        by_owner.body
    );
    let of_pat = get(
        &mut browser,
        &portal,
        &format!("/clients?owner={pat}&page=3"),
    )
    .await;
    assert!(
        of_pat.body.contains(">client-119<") && of_pat.body.contains("Clients of"),
        "{}",
        of_pat.body
    );

    // Online now: the one connected client only.
    let (_, robot) = portal
        .api(
            Method::POST,
            "/actors",
            Some(json!({"name": "Robot", "role": "service_account"})),
        )
        .await;
    let (_, token) = portal
        .api(
            Method::POST,
            &format!("/actors/{}/tokens", robot["id"].as_str().unwrap()),
            None,
        )
        .await;
    let mut peer = Peer::connect(
        addr(&portal),
        "/v1/client",
        token["token"].as_str().unwrap(),
        "online-box",
        &key(6),
    )
    .await
    .unwrap();
    assert_eq!(peer.next().await["type"], "init");
    let online = get(&mut browser, &portal, "/clients?show=online").await;
    assert!(
        online.body.contains(">online-box<") && online.body.contains("1 client(s)"),
        "{}",
        online.body
    );
    assert!(!online.body.contains(">client-000<"));

    // The actor list pages too.
    for n in 0..55 {
        portal
            .add_actor(
                &format!("user-{n:02}"),
                &format!("user{n:02}@example.test"),
                "user",
            )
            .await;
    }
    let actors = get(&mut browser, &portal, "/actors").await;
    assert!(
        actors.body.contains("58 users") && actors.body.contains("Page 1 of 2"),
        "{}",
        actors.body
    );
    let page_two = get(&mut browser, &portal, "/actors?page=2").await;
    assert!(
        page_two.body.contains(">user-54<") && !page_two.body.contains(">user-00<"),
        "{}",
        page_two.body
    );
    // Pat's 120 clients are counted in the list, and linked.
    let pat_row = get(&mut browser, &portal, "/actors?q=pat").await;
    assert!(
        pat_row
            .body
            .contains(&format!("/acme/clients?owner={pat}\">120<")),
        "{}",
        pat_row.body
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_with_a_web_session_gets_no_admin_page() {
    let (portal, _smtp, _admin) = crate::admin_browser().await;
    let user = portal
        .add_actor("Ursula", "ursula@example.test", "user")
        .await;
    let second = portal.add_actor("Ada", "ada@example.test", "admin").await;
    add_clients(&portal, &user, &[("laptop".into(), None)]).await;
    let client = clients(&portal).await[0]["id"]
        .as_str()
        .unwrap()
        .to_string();
    // A web session of each, as the sign-in would make it.
    let session = async |actor: &str| {
        let minted = postern_portal::auth::token::mint().unwrap();
        let mut tx = portal.state.store.write().await.unwrap();
        postern_portal::testing::tokens::insert(
            &mut tx,
            &minted,
            &postern_portal::testing::tokens::NewToken {
                account_id: Some(portal.account_id),
                kind: postern_portal::domain::TokenKind::Browser,
                actor_id: Some(actor.parse().unwrap()),
                site_id: None,
                identity_provider_id: None,
                expires_at_ms: Some(4_000_000_000_000),
                read_only: false,
            },
            0,
        )
        .await
        .unwrap();
        tx.commit().await.unwrap();
        let mut browser = Browser::new();
        // The CSRF cookie and token a form would carry.
        let sign_in = browser.get(&format!("{}/acme/sign_in", portal.base)).await;
        let csrf = sign_in.hidden("csrf").unwrap();
        browser
            .cookies
            .insert("postern_session".into(), minted.token);
        (browser, csrf)
    };
    let pages = [
        "/actors".to_string(),
        format!("/actors/{user}"),
        format!("/actors/{user}/delete"),
        format!("/actors/{user}/disable"),
        "/clients".to_string(),
        format!("/clients/{client}"),
        format!("/clients/{client}/delete"),
    ];
    // The same session of an admin sees them (the test's session is real).
    let (mut admin, _) = session(&second).await;
    for path in &pages {
        assert_eq!(get(&mut admin, &portal, path).await.status, 200, "{path}");
    }
    let (mut browser, csrf) = session(&user).await;
    let mut nobody = Browser::new();
    for path in &pages {
        // A user is sent to their own page, nobody to the sign-in.
        for (who, to) in [(&mut browser, "/acme/me"), (&mut nobody, "/acme/sign_in")] {
            let page = get(who, &portal, path).await;
            assert_eq!(page.status, 303, "{path}");
            assert_eq!(page.location.as_deref(), Some(to), "{path}");
            assert!(!page.body.contains("Ursula"), "{path}");
        }
    }
    let before = portal.api(Method::GET, "/actors", None).await.1;
    for (path, form) in [
        (
            "/actors".to_string(),
            vec![
                ("name", "Mine"),
                ("email", "mine@example.test"),
                ("role", "admin"),
            ],
        ),
        (
            format!("/actors/{user}"),
            vec![
                ("name", "Ursula"),
                ("email", "ursula@example.test"),
                ("role", "admin"),
            ],
        ),
        (format!("/actors/{user}/delete"), vec![]),
        (
            format!("/clients/{client}/verify"),
            vec![("verified", "true")],
        ),
    ] {
        let mut form = form;
        form.push(("csrf", &csrf));
        let page = post(&mut browser, &portal, &path, &form).await;
        assert_eq!(
            page.location.as_deref(),
            Some("/acme/me"),
            "{path}: {}",
            page.body
        );
    }
    assert_eq!(portal.api(Method::GET, "/actors", None).await.1, before);
    assert_eq!(clients(&portal).await[0]["verified"], false);
}

/// The same queries on PostgreSQL: every page of this part answers, with
/// search, filters and paging.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_users_and_clients_pages_work_on_postgresql() {
    use crate::support::email::{ask_code, code_in, enter_code, portal_with_mail};
    let server = crate::support::postgres::TempPostgres::start_named("console-actors");
    let url = server.database("console_actors").await;
    let (portal, mut smtp) = portal_with_mail(Some(url)).await;
    let mut browser = Browser::new();
    let page = ask_code(&portal, &mut browser, "admin@example.test", false).await;
    let code = code_in(&smtp.next(10).await.expect("the code arrives").data);
    enter_code(&portal, &mut browser, &page, &code).await;
    let csrf = csrf(&mut browser, &portal).await;

    let user = actor_in(
        &post(
            &mut browser,
            &portal,
            "/actors",
            &[
                ("name", "Pat 100%_"),
                ("email", "pat@example.test"),
                ("role", "user"),
                ("csrf", &csrf),
            ],
        )
        .await,
    );
    let robot = actor_in(
        &post(
            &mut browser,
            &portal,
            "/actors",
            &[
                ("name", "Robot"),
                ("email", ""),
                ("role", "service_account"),
                ("csrf", &csrf),
            ],
        )
        .await,
    );
    let made = post(
        &mut browser,
        &portal,
        &format!("/actors/{robot}/tokens"),
        &[("lifetime_days", "30"), ("csrf", &csrf)],
    )
    .await;
    assert_eq!(made.status, 201, "{}", made.body);
    let token = new_token(&made);
    let mut peer = Peer::connect(addr(&portal), "/v1/client", &token, "pg-box", &key(7))
        .await
        .unwrap();
    assert_eq!(peer.next().await["type"], "init");
    let names: Vec<(String, Option<&str>)> = (0..60)
        .map(|n| (format!("laptop-{n:02}"), Some("macOS")))
        .collect();
    add_clients(&portal, &user, &names).await;

    let found = get(&mut browser, &portal, "/actors?q=100%25_").await;
    assert!(
        found.body.contains("1 match") && found.body.contains("Pat 100%_"),
        "{}",
        found.body
    );
    let none = get(&mut browser, &portal, "/actors?q=0_0").await;
    assert!(
        none.body.contains("0 match"),
        "`_` is literal: {}",
        none.body
    );
    let list = get(&mut browser, &portal, "/actors").await;
    assert!(
        list.body
            .contains(&format!("/acme/clients?owner={user}\">60<")),
        "{}",
        list.body
    );
    let robot_page = get(&mut browser, &portal, &format!("/actors/{robot}")).await;
    assert!(
        robot_page.body.contains("pg-box") && robot_page.body.contains("client connected"),
        "{}",
        robot_page.body
    );
    let confirm = get(&mut browser, &portal, &format!("/actors/{user}/delete")).await;
    assert!(confirm.body.contains("60 client(s)"), "{}", confirm.body);

    for (path, says) in [
        ("/clients".to_string(), "61 client(s)"),
        ("/clients?page=2".to_string(), ">laptop-59<"),
        ("/clients?q=LAPTOP-1".to_string(), "10 client(s)"),
        (
            "/clients?q=pat%40example&show=unverified".to_string(),
            "60 client(s)",
        ),
        (format!("/clients?owner={user}&page=2"), ">laptop-50<"),
        ("/clients?show=online".to_string(), ">pg-box<"),
    ] {
        let page = get(&mut browser, &portal, &path).await;
        assert_eq!(page.status, 200, "{path}");
        assert!(page.body.contains(says), "{path}: {says}: {}", page.body);
    }
    let id = clients(&portal)
        .await
        .iter()
        .find(|c| c["name"] == "pg-box")
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let page = get(&mut browser, &portal, &format!("/clients/{id}")).await;
    assert_eq!(page.status, 200);
    let verified = post(
        &mut browser,
        &portal,
        &format!("/clients/{id}/verify"),
        &[
            ("verified", "true"),
            ("back", "?show=online"),
            ("csrf", &csrf),
        ],
    )
    .await;
    assert_eq!(verified.status, 303);
    let unverified = get(&mut browser, &portal, "/clients?show=unverified").await;
    assert!(
        unverified.body.contains("60 client(s)"),
        "{}",
        unverified.body
    );
}
