//! The console's identity providers, directories and settings pages.

use reqwest::Method;
use serde_json::{Value, json};

use crate::support::email::{ask_code, code_in, enter_code};
use crate::support::oidc::OidcProvider;
use crate::support::web::{Browser, Page, WebPortal};
use crate::{admin_browser, between};

const PROBE: &str = "<script>alert(1)</script>\"'&";
const CLIENT_ID: &str = "postern-console";
const SECRET: &str = "console-secret-0123456789-abcdefghij";
const BIND_PASSWORD: &str = "bind-password-9876543210-zyxw";

/// The probe as maud escapes it (`'` is left alone in text and quoted
/// attributes alike, or escaped: either is safe).
fn escaped(body: &str) -> bool {
    body.contains("&lt;script&gt;alert(1)&lt;/script&gt;&quot;&#39;&amp;")
        || body.contains("&lt;script&gt;alert(1)&lt;/script&gt;&quot;'&amp;")
}

fn assert_safe(page: &Page, what: &str) {
    assert!(
        !page.body.contains("<script>alert"),
        "{what}: the probe came back raw:\n{}",
        page.body
    );
}

/// The provider form as the list page sends it, with `extra` fields.
fn form<'a>(extra: &[(&'a str, &'a str)]) -> Vec<(&'a str, &'a str)> {
    let mut fields = vec![
        ("name", PROBE),
        ("issuer", "http://127.0.0.1:1"),
        ("client_id", CLIENT_ID),
        ("client_secret", SECRET),
        ("groups_claim", "groups"),
        ("admin_claim", "is_admin"),
        ("client_session_lifetime_secs", "3600"),
    ];
    fields.extend_from_slice(extra);
    fields
}

/// The path after `/acme/identity/{kind}/` in a redirect.
fn id_in(page: &Page, kind: &str) -> String {
    let prefix = format!("/acme/identity/{kind}/");
    page.location
        .as_deref()
        .and_then(|l| l.strip_prefix(&prefix))
        .map(|rest| rest.split('?').next().unwrap().to_string())
        .unwrap_or_else(|| panic!("no {kind} page: {:?} {}", page.location, page.body))
}

async fn last_audit(portal: &WebPortal) -> Value {
    let (_, log) = portal.api(Method::GET, "/audit_log?limit=1", None).await;
    log["data"][0].clone()
}

/// The admin's actor id.
async fn admin_id(portal: &WebPortal) -> Value {
    let (_, actors) = portal.api(Method::GET, "/actors", None).await;
    actors["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["email"] == "admin@example.test")
        .unwrap()["id"]
        .clone()
}

/// A browser signed in as the admin of a portal on `database` (PostgreSQL),
/// else on SQLite.
async fn admin_on(
    database: Option<String>,
) -> (WebPortal, crate::support::smtp::SmtpServer, Browser) {
    let Some(database) = database else {
        return admin_browser().await;
    };
    let (portal, mut smtp) = crate::support::email::portal_with_mail(Some(database)).await;
    let mut browser = Browser::new();
    let page = ask_code(&portal, &mut browser, "admin@example.test", false).await;
    let code = code_in(&smtp.next(10).await.expect("the code arrives").data);
    let signed_in = enter_code(&portal, &mut browser, &page, &code).await;
    assert_eq!(signed_in.location.as_deref(), Some("/acme/"));
    (portal, smtp, browser)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_provider_is_added_edited_used_and_deleted_in_the_console_and_its_secret_never_shown() {
    provider_in_the_console(None).await;
}

/// The console's own queries (what a deletion takes, a directory's names)
/// on PostgreSQL too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn providers_and_directories_work_on_postgres_too() {
    let server = crate::support::postgres::TempPostgres::start_named("console-identity");
    provider_in_the_console(Some(server.database("providers").await)).await;
    scim_in_the_console(Some(server.database("scim").await)).await;
}

async fn provider_in_the_console(database: Option<String>) {
    let (portal, _smtp, mut browser) = admin_on(database).await;
    let base = portal.base.clone();
    let mut pages: Vec<Page> = Vec::new();
    let list = browser.get(&format!("{base}/acme/identity")).await;
    assert_eq!(list.status, 200, "{}", list.body);
    assert!(list.body.contains("No identity provider yet"));
    let csrf = list.hidden("csrf").unwrap();
    // Without the CSRF token: refused, nothing made.
    let forged = browser
        .post(&format!("{base}/acme/identity/providers"), &form(&[]))
        .await;
    assert_eq!(forged.status, 403);
    let (_, providers) = portal.api(Method::GET, "/identity_providers", None).await;
    assert_eq!(providers["data"], json!([]));

    // Refused by the API's rules: the form again with the reason, what was
    // typed kept, but never the secret.
    let mut bad = form(&[("csrf", &csrf)]);
    bad[1].1 = "ftp://id.example.com";
    let refused = browser
        .post(&format!("{base}/acme/identity/providers"), &bad)
        .await;
    assert_eq!(refused.status, 422, "{}", refused.body);
    assert!(refused.body.contains("role=\"alert\""));
    assert!(refused.body.contains("issuer"), "{}", refused.body);
    assert!(refused.body.contains("value=\"ftp://id.example.com\""));
    assert!(refused.body.contains("value=\"is_admin\""));
    assert_safe(&refused, "refused create");
    assert!(escaped(&refused.body), "{}", refused.body);
    pages.push(refused);
    let lifetime = browser
        .post(
            &format!("{base}/acme/identity/providers"),
            &[
                form(&[("csrf", &csrf)]),
                vec![("client_session_lifetime_secs", "a week")],
            ]
            .concat(),
        )
        .await;
    assert_eq!(lifetime.status, 422, "{}", lifetime.body);
    assert!(lifetime.body.contains("client_session_lifetime_secs"));
    pages.push(lifetime);

    let created = browser
        .post(
            &format!("{base}/acme/identity/providers"),
            &form(&[("csrf", &csrf)]),
        )
        .await;
    assert_eq!(created.status, 303, "{}", created.body);
    let id = id_in(&created, "providers");
    let (status, made) = portal
        .api(Method::GET, &format!("/identity_providers/{id}"), None)
        .await;
    assert_eq!(status, 200);
    assert_eq!(made["name"], PROBE);
    assert_eq!(made["groups_claim"], "groups");
    assert_eq!(made["client_session_lifetime_secs"], 3600);
    assert_eq!(made["provision_users"], false);
    let entry = last_audit(&portal).await;
    assert_eq!(entry["action"], "identity_provider.create");
    assert_eq!(entry["object_id"], json!(id));
    assert_eq!(entry["actor_id"], admin_id(&portal).await);

    // Its page: the callback URL to register, ready to copy.
    let callback = format!("{base}/acme/sign_in/oidc/{id}/callback");
    let page = browser
        .get(&format!("{base}{}", created.location.as_deref().unwrap()))
        .await;
    assert_eq!(page.status, 200);
    assert!(page.body.contains("Register the callback URL"));
    assert!(
        page.body
            .contains(&format!("type=\"text\" readonly value=\"{callback}\"")),
        "{}",
        page.body
    );
    assert_safe(&page, "provider page");
    assert!(escaped(&page.body));
    pages.push(page);
    let list = browser.get(&format!("{base}/acme/identity")).await;
    assert!(list.body.contains(&callback), "{}", list.body);
    assert_safe(&list, "list");
    assert!(escaped(&list.body));
    pages.push(list);

    // A real provider that knows the callback; the console points at it,
    // leaving the secret field empty: the secret stays (the sign-in below
    // needs it at the provider's token endpoint).
    let idp = OidcProvider::start(CLIENT_ID, SECRET, std::slice::from_ref(&callback)).await;
    let edit = |issuer: &str, secret: &str, csrf: &str| {
        vec![
            ("name".to_string(), "Corp IdP".to_string()),
            ("issuer".into(), issuer.to_string()),
            ("client_id".into(), CLIENT_ID.into()),
            ("client_secret".into(), secret.to_string()),
            ("groups_claim".into(), "groups".into()),
            ("admin_claim".into(), "is_admin".into()),
            ("admin_claim_value".into(), String::new()),
            ("client_session_lifetime_secs".into(), String::new()),
            ("provision_users".into(), "true".into()),
            ("csrf".into(), csrf.to_string()),
        ]
    };
    let post = async |browser: &mut Browser, path: &str, fields: &[(String, String)]| {
        let fields: Vec<(&str, &str)> = fields
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        browser.post(&format!("{base}{path}"), &fields).await
    };
    let provider_path = format!("/acme/identity/providers/{id}");
    let forged = post(
        &mut browser,
        &provider_path,
        &edit(&idp.issuer, "", "")[..9],
    )
    .await;
    assert_eq!(forged.status, 403);
    let (_, unchanged) = portal
        .api(Method::GET, &format!("/identity_providers/{id}"), None)
        .await;
    assert_eq!(unchanged, made, "a forged edit changes nothing");
    // Refused: the typed secret is not shown back either.
    let refused = post(
        &mut browser,
        &provider_path,
        &edit("not a url", "typed-but-refused-secret-42", &csrf),
    )
    .await;
    assert_eq!(refused.status, 422, "{}", refused.body);
    assert!(refused.body.contains("value=\"not a url\""));
    assert!(!refused.body.contains("typed-but-refused-secret-42"));
    pages.push(refused);
    // A new issuer without the secret: refused (the stored secret is never
    // sent to another server), nothing changed.
    let moved = post(&mut browser, &provider_path, &edit(&idp.issuer, "", &csrf)).await;
    assert_eq!(moved.status, 422, "{}", moved.body);
    assert!(moved.body.contains("client secret again"), "{}", moved.body);
    let (_, unchanged) = portal
        .api(Method::GET, &format!("/identity_providers/{id}"), None)
        .await;
    assert_eq!(unchanged["issuer"], made["issuer"]);
    let saved = post(
        &mut browser,
        &provider_path,
        &edit(&idp.issuer, SECRET, &csrf),
    )
    .await;
    assert_eq!(saved.status, 303, "{}", saved.body);
    // The same issuer, the secret field left empty: the secret stays (the
    // sign-in below needs it at the provider's token endpoint).
    let saved = post(&mut browser, &provider_path, &edit(&idp.issuer, "", &csrf)).await;
    assert_eq!(saved.status, 303, "{}", saved.body);
    let (_, edited) = portal
        .api(Method::GET, &format!("/identity_providers/{id}"), None)
        .await;
    assert_eq!(edited["name"], "Corp IdP");
    assert_eq!(edited["issuer"], idp.issuer);
    assert_eq!(edited["client_session_lifetime_secs"], Value::Null);
    assert_eq!(edited["provision_users"], true);
    let entry = last_audit(&portal).await;
    assert_eq!(entry["action"], "identity_provider.update");
    assert_eq!(entry["actor_id"], admin_id(&portal).await);

    idp.set_account("carol", "carol@example.test", &["Engineering"], true)
        .await;
    let mut carol = Browser::new();
    let start = carol.get(&format!("{base}/acme/sign_in/oidc/{id}")).await;
    assert_eq!(start.status, 303, "{}", start.body);
    let back = idp
        .sign_in(start.location.as_deref().unwrap(), "carol")
        .await;
    let signed_in = carol.get(&back).await;
    assert_eq!(
        signed_in.location.as_deref(),
        Some("/acme/"),
        "the kept secret signs carol in: {}",
        signed_in.body
    );

    // Deleting says what goes, by the rows the API's delete touches.
    let confirm = browser
        .get(&format!("{base}/acme/identity/providers/{id}/delete"))
        .await;
    assert_eq!(confirm.status, 200);
    for says in [
        "The 1 user(s) who signed in through it keep their Postern accounts",
        "<b>carol</b>",
        "1 token(s) from sign-ins with it",
        "Its 1 group(s) stay, now managed by admins",
    ] {
        assert!(confirm.body.contains(says), "{says}: {}", confirm.body);
    }
    assert!(!confirm.body.contains("signs you out too"));
    pages.push(confirm);
    let delete_path = format!("{base}/acme/identity/providers/{id}/delete");
    let forged = browser.post(&delete_path, &[]).await;
    assert_eq!(forged.status, 403);
    let (status, _) = portal
        .api(Method::GET, &format!("/identity_providers/{id}"), None)
        .await;
    assert_eq!(status, 200, "a forged delete deletes nothing");

    // The secret: in no page of the console, and not in carol's page
    // either; a new one typed in the console replaces it (the provider
    // refuses the sign-in with it).
    let wrong = post(
        &mut browser,
        &provider_path,
        &edit(&idp.issuer, "a-wrong-secret-0000", &csrf),
    )
    .await;
    assert_eq!(wrong.status, 303, "{}", wrong.body);
    let mut dave = Browser::new();
    idp.set_account("dave", "dave@example.test", &[], true)
        .await;
    let start = dave.get(&format!("{base}/acme/sign_in/oidc/{id}")).await;
    let back = idp
        .sign_in(start.location.as_deref().unwrap(), "dave")
        .await;
    let refused = dave.get(&back).await;
    assert_ne!(
        refused.location.as_deref(),
        Some("/acme/"),
        "the wrong secret signs nobody in"
    );
    for page in [
        browser.get(&format!("{base}/acme/identity")).await,
        browser.get(&format!("{base}{provider_path}")).await,
        browser.get(&delete_path).await,
    ] {
        pages.push(page);
    }
    for page in &pages {
        assert!(
            !page.body.contains(SECRET),
            "the secret was shown: {}",
            page.body
        );
        assert!(!page.body.contains("a-wrong-secret-0000"));
    }

    let deleted = browser.post(&delete_path, &[("csrf", &csrf)]).await;
    assert_eq!(deleted.status, 303);
    assert_eq!(deleted.location.as_deref(), Some("/acme/identity"));
    let (status, _) = portal
        .api(Method::GET, &format!("/identity_providers/{id}"), None)
        .await;
    assert_eq!(status, 404);
    let entry = last_audit(&portal).await;
    assert_eq!(entry["action"], "identity_provider.delete");
    assert_eq!(entry["actor_id"], admin_id(&portal).await);
    // What the page said: carol keeps her account, her session is gone, the
    // group stays as an admins' group.
    let (_, actors) = portal.api(Method::GET, "/actors", None).await;
    assert!(
        actors["data"]
            .as_array()
            .unwrap()
            .iter()
            .any(|a| a["email"] == "carol@example.test")
    );
    let gone = carol.get(&format!("{base}/acme/identity")).await;
    assert_eq!(gone.location.as_deref(), Some("/acme/sign_in"));
    let (_, groups) = portal.api(Method::GET, "/groups", None).await;
    let engineering = groups["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|g| g["name"] == "Engineering")
        .unwrap()
        .clone();
    assert_eq!(engineering["kind"], "static");
    // A second click is not an error.
    let again = browser.post(&delete_path, &[("csrf", &csrf)]).await;
    assert_eq!(again.status, 303);
}

async fn scim_get(base: &str, token: &str) -> u16 {
    reqwest::Client::new()
        .get(format!("{base}/acme/scim/v2/Users"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scim_directory_made_in_the_console_works_with_its_token_until_rotated() {
    scim_in_the_console(None).await;
}

async fn scim_in_the_console(database: Option<String>) {
    let (portal, _smtp, mut browser) = admin_on(database).await;
    let base = portal.base.clone();
    let csrf = browser
        .get(&format!("{base}/acme/identity"))
        .await
        .hidden("csrf")
        .unwrap();
    let directories = format!("{base}/acme/identity/directories");
    let forged = browser
        .post(&directories, &[("type", "scim"), ("name", "Okta")])
        .await;
    assert_eq!(forged.status, 403);
    let (_, list) = portal.api(Method::GET, "/directories", None).await;
    assert_eq!(list["data"], json!([]));
    let blank = browser
        .post(
            &directories,
            &[("type", "scim"), ("name", "  "), ("csrf", &csrf)],
        )
        .await;
    assert_eq!(blank.status, 422);
    assert!(blank.body.contains("role=\"alert\""), "{}", blank.body);

    let made = browser
        .post(
            &directories,
            &[("type", "scim"), ("name", PROBE), ("csrf", &csrf)],
        )
        .await;
    assert_eq!(made.status, 201, "{}", made.body);
    assert_safe(&made, "token page");
    assert!(escaped(&made.body));
    let token = between(&made.body, "<pre id=\"scim-token\">", "</pre>");
    let scim_url = between(&made.body, "<pre id=\"scim-base-url\">", "</pre>");
    assert_eq!(scim_url, format!("{base}/acme/scim/v2"));
    assert!(made.body.contains("Okta") && made.body.contains("Microsoft Entra ID"));
    assert!(made.body.contains("shown once"));
    let (_, list) = portal.api(Method::GET, "/directories", None).await;
    let id = list["data"][0]["id"].as_str().unwrap().to_string();
    assert_eq!(list["data"][0]["name"], PROBE);
    assert_eq!(list["data"][0]["type"], "scim");
    let entry = last_audit(&portal).await;
    assert_eq!(entry["action"], "directory.create");
    assert_eq!(entry["actor_id"], admin_id(&portal).await);

    // The token works; the directory provisions a user whose name is a probe.
    assert_eq!(scim_get(&base, &token).await, 200);
    let pushed = reqwest::Client::new()
        .post(format!("{scim_url}/Users"))
        .bearer_auth(&token)
        .json(&json!({
            "schemas": ["urn:ietf:params:scim:schemas:core:2.0:User"],
            "userName": "mallory@example.test",
            "displayName": PROBE,
            "emails": [{"value": "mallory@example.test", "primary": true}],
            "active": true
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(pushed.status(), 201, "{}", pushed.text().await.unwrap());

    // Its pages show the probe escaped and never the token again.
    let page_path = format!("{base}/acme/identity/directories/{id}");
    for path in [
        format!("{base}/acme/identity"),
        page_path.clone(),
        format!("{page_path}/delete"),
    ] {
        let page = browser.get(&path).await;
        assert_eq!(page.status, 200, "{path}: {}", page.body);
        assert_safe(&page, &path);
        assert!(escaped(&page.body), "{path}: {}", page.body);
        assert!(!page.body.contains(&token), "{path} shows the token");
    }
    let page = browser.get(&page_path).await;
    assert!(page.body.contains(&format!("value=\"{scim_url}\"")));
    assert!(page.body.contains("1 user(s)"), "{}", page.body);
    // The user's name, escaped, among the directory's users (twice: the
    // directory's own name is the probe as well).
    assert!(
        page.body.contains("Users: <b>&lt;script&gt;"),
        "{}",
        page.body
    );

    // Rotation: refused without the CSRF token (the old token still
    // works), then a new token shown once and the old one refused.
    let rotate = format!("{page_path}/token");
    let forged = browser.post(&rotate, &[]).await;
    assert_eq!(forged.status, 403);
    assert_eq!(scim_get(&base, &token).await, 200);
    let rotated = browser.post(&rotate, &[("csrf", &csrf)]).await;
    assert_eq!(rotated.status, 201, "{}", rotated.body);
    assert!(rotated.body.contains("The previous token stopped working"));
    let new_token = between(&rotated.body, "<pre id=\"scim-token\">", "</pre>");
    assert_ne!(new_token, token);
    assert_eq!(scim_get(&base, &token).await, 401);
    assert_eq!(scim_get(&base, &new_token).await, 200);
    let entry = last_audit(&portal).await;
    assert_eq!(entry["action"], "directory.token");
    assert_eq!(entry["actor_id"], admin_id(&portal).await);
    assert!(!browser.get(&page_path).await.body.contains(&new_token));

    // Renaming: CSRF first.
    let forged = browser.post(&page_path, &[("name", "Okta")]).await;
    assert_eq!(forged.status, 403);
    let renamed = browser
        .post(&page_path, &[("name", "Okta"), ("csrf", &csrf)])
        .await;
    assert_eq!(renamed.status, 303, "{}", renamed.body);
    let (_, shown) = portal
        .api(Method::GET, &format!("/directories/{id}"), None)
        .await;
    assert_eq!(shown["name"], "Okta");

    // Deleting: what the page says, then what the API did.
    let confirm = browser.get(&format!("{page_path}/delete")).await;
    assert!(
        confirm
            .body
            .contains("Its 1 user(s) and 0 group(s) stay as they are, released to the admins"),
        "{}",
        confirm.body
    );
    assert!(confirm.body.contains("Its SCIM token stops working"));
    let forged = browser.post(&format!("{page_path}/delete"), &[]).await;
    assert_eq!(forged.status, 403);
    assert_eq!(scim_get(&base, &new_token).await, 200, "not deleted");
    let deleted = browser
        .post(&format!("{page_path}/delete"), &[("csrf", &csrf)])
        .await;
    assert_eq!(deleted.status, 303);
    let (status, _) = portal
        .api(Method::GET, &format!("/directories/{id}"), None)
        .await;
    assert_eq!(status, 404);
    assert_eq!(scim_get(&base, &new_token).await, 401);
    let (_, actors) = portal.api(Method::GET, "/actors", None).await;
    let mallory = actors["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["email"] == "mallory@example.test")
        .expect("the user stays")
        .clone();
    assert_eq!(mallory["directory_id"], Value::Null, "released: {mallory}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ldap_directory_made_in_the_console_shows_why_its_sync_failed_escaped() {
    let (portal, _smtp, mut browser) = admin_browser().await;
    let base = portal.base.clone();
    let csrf = browser
        .get(&format!("{base}/acme/identity"))
        .await
        .hidden("csrf")
        .unwrap();
    // A closed port, and one that hangs up on every connection.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let hangs_up = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hang_up_port = hangs_up.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((socket, _)) = hangs_up.accept().await {
            drop(socket);
        }
    });
    let closed_url = format!("ldap://127.0.0.1:{closed}");
    let bind_dn = format!("cn={PROBE},dc=example,dc=test");
    let fields = |url: &str, password: &str, csrf: &str| {
        vec![
            ("type".to_string(), "ldap".to_string()),
            ("name".into(), PROBE.into()),
            ("url".into(), url.to_string()),
            ("bind_dn".into(), bind_dn.clone()),
            ("bind_password".into(), password.to_string()),
            ("base_dn".into(), "dc=example,dc=test".into()),
            ("user_filter".into(), String::new()),
            ("group_filter".into(), "(objectClass=groupOfNames)".into()),
            ("interval_secs".into(), "600".into()),
            ("ca_certificate".into(), String::new()),
            ("csrf".into(), csrf.to_string()),
        ]
    };
    let post = async |browser: &mut Browser, path: &str, fields: &[(String, String)]| {
        let fields: Vec<(&str, &str)> = fields
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        browser.post(&format!("{base}{path}"), &fields).await
    };
    let mut pages = Vec::new();

    let forged = post(
        &mut browser,
        "/acme/identity/directories",
        &fields(&closed_url, BIND_PASSWORD, ""),
    )
    .await;
    assert_eq!(forged.status, 403);
    let (_, list) = portal.api(Method::GET, "/directories", None).await;
    assert_eq!(list["data"], json!([]));
    let refused = post(
        &mut browser,
        "/acme/identity/directories",
        &fields("http://dc1.example.test", BIND_PASSWORD, &csrf),
    )
    .await;
    assert_eq!(refused.status, 422, "{}", refused.body);
    assert!(
        refused.body.contains("must be ldap://HOST"),
        "{}",
        refused.body
    );
    assert!(refused.body.contains("value=\"http://dc1.example.test\""));
    assert!(
        refused
            .body
            .contains("value=\"(objectClass=groupOfNames)\"")
    );
    assert_safe(&refused, "refused LDAP form");
    pages.push(refused);

    let made = post(
        &mut browser,
        "/acme/identity/directories",
        &fields(&closed_url, BIND_PASSWORD, &csrf),
    )
    .await;
    assert_eq!(made.status, 303, "{}", made.body);
    let id = id_in(&made, "directories");
    let (_, shown) = portal
        .api(Method::GET, &format!("/directories/{id}"), None)
        .await;
    assert_eq!(shown["ldap"]["url"], closed_url);
    assert_eq!(shown["ldap"]["bind_dn"], bind_dn);
    assert_eq!(shown["ldap"]["interval_secs"], 600);
    assert_eq!(shown["ldap"]["group_filter"], "(objectClass=groupOfNames)");
    assert_eq!(shown["ldap"]["starttls"], false);

    // Sync now: CSRF first, then the API's 502 and its reason.
    let path = format!("/acme/identity/directories/{id}");
    let forged = browser.post(&format!("{base}{path}/sync"), &[]).await;
    assert_eq!(forged.status, 403);
    let (_, shown) = portal
        .api(Method::GET, &format!("/directories/{id}"), None)
        .await;
    assert_eq!(shown["last_sync_at"], Value::Null, "no sync ran");
    let failed = browser
        .post(&format!("{base}{path}/sync"), &[("csrf", &csrf)])
        .await;
    assert_eq!(failed.status, 502, "{}", failed.body);
    assert!(failed.body.contains("The sync failed and changed nothing"));
    assert!(failed.body.contains("cannot connect"), "{}", failed.body);
    pages.push(failed);

    // Edited to a server that hangs up: the bind fails, and the reason
    // names the bind DN.
    let mut edit = fields(&format!("ldap://127.0.0.1:{hang_up_port}"), "", "");
    edit.remove(0);
    let forged = post(&mut browser, &path, &edit).await;
    assert_eq!(forged.status, 403);
    let (_, unchanged) = portal
        .api(Method::GET, &format!("/directories/{id}"), None)
        .await;
    assert_eq!(unchanged["ldap"]["url"], closed_url);
    edit.last_mut().unwrap().1 = csrf.clone();
    // Refused (an interval under a minute, a new password typed): the form
    // again with what was typed, but not the password.
    let mut too_often = edit.clone();
    too_often[7].1 = "5".into();
    too_often[3].1 = "typed-refused-password-77".into();
    let refused = post(&mut browser, &path, &too_often).await;
    assert_eq!(refused.status, 422, "{}", refused.body);
    assert!(refused.body.contains("interval_secs"), "{}", refused.body);
    assert!(refused.body.contains("value=\"5\""));
    assert!(
        refused
            .body
            .contains(&format!("value=\"ldap://127.0.0.1:{hang_up_port}\""))
    );
    assert!(!refused.body.contains("typed-refused-password-77"));
    assert_safe(&refused, "refused LDAP edit");
    pages.push(refused);
    // Another server with the password field left empty: refused, the
    // stored password is never sent anywhere new.
    let moved = post(&mut browser, &path, &edit).await;
    assert_eq!(moved.status, 422, "{}", moved.body);
    assert!(moved.body.contains("bind password again"), "{}", moved.body);
    edit[3].1 = BIND_PASSWORD.into();
    let saved = post(&mut browser, &path, &edit).await;
    assert_eq!(saved.status, 303, "{}", saved.body);
    let entry = last_audit(&portal).await;
    assert_eq!(entry["action"], "directory.update");
    assert_eq!(entry["actor_id"], admin_id(&portal).await);
    let failed = browser
        .post(&format!("{base}{path}/sync"), &[("csrf", &csrf)])
        .await;
    assert_eq!(failed.status, 502, "{}", failed.body);
    assert!(
        failed.body.contains("cannot bind as cn=&lt;script&gt;"),
        "{}",
        failed.body
    );
    assert_safe(&failed, "sync answer");
    pages.push(failed);
    let (_, shown) = portal
        .api(Method::GET, &format!("/directories/{id}"), None)
        .await;
    let last_error = shown["last_error"].as_str().unwrap();
    assert!(
        last_error.contains(PROBE),
        "the API keeps it raw: {last_error}"
    );
    assert_eq!(
        shown["ldap"]["url"],
        format!("ldap://127.0.0.1:{hang_up_port}")
    );
    for path in [
        "/acme/identity".to_string(),
        path.clone(),
        format!("{path}/delete"),
    ] {
        let page = browser.get(&format!("{base}{path}")).await;
        assert_eq!(page.status, 200, "{path}");
        assert_safe(&page, &path);
        pages.push(page);
    }
    let list = &pages[pages.len() - 3];
    assert!(list.body.contains("failing"), "{}", list.body);
    assert!(list.body.contains("cannot bind as cn=&lt;script&gt;"));
    let page = &pages[pages.len() - 2];
    // The form shows what is set, never the password; the default user
    // filter shows as an empty field.
    assert!(page.body.contains("value=\"600\""));
    assert!(page.body.contains("name=\"user_filter\" value=\"\""));
    for page in &pages {
        assert!(!page.body.contains(BIND_PASSWORD), "the password was shown");
    }
    let confirm = &pages[pages.len() - 1];
    assert!(
        confirm
            .body
            .contains("Its 0 user(s) and 0 group(s) stay as they are")
    );
    assert!(confirm.body.contains("The portal stops syncing it"));

    // An LDAP directory has no token to rotate: the API's refusal.
    let no_token = browser
        .post(&format!("{base}{path}/token"), &[("csrf", &csrf)])
        .await;
    assert_eq!(no_token.status, 409, "{}", no_token.body);

    let forged = browser.post(&format!("{base}{path}/delete"), &[]).await;
    assert_eq!(forged.status, 403);
    let deleted = browser
        .post(&format!("{base}{path}/delete"), &[("csrf", &csrf)])
        .await;
    assert_eq!(deleted.status, 303);
    let (status, _) = portal
        .api(Method::GET, &format!("/directories/{id}"), None)
        .await;
    assert_eq!(status, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn settings_changed_in_the_console_are_the_accounts() {
    let (portal, _smtp, mut browser) = admin_browser().await;
    let base = portal.base.clone();
    let page = browser.get(&format!("{base}/acme/settings")).await;
    assert_eq!(page.status, 200, "{}", page.body);
    assert!(page.body.contains("<label for=\"s-search-domain\">"));
    let csrf = page.hidden("csrf").unwrap();
    let settings = format!("{base}/acme/settings");

    let forged = browser
        .post(&settings, &[("search_domain", "corp.example")])
        .await;
    assert_eq!(forged.status, 403);
    let (_, account) = portal.api(Method::GET, "/account", None).await;
    assert_eq!(account["search_domain"], Value::Null);

    let refused = browser
        .post(&settings, &[("search_domain", PROBE), ("csrf", &csrf)])
        .await;
    assert_eq!(refused.status, 422, "{}", refused.body);
    assert!(refused.body.contains("role=\"alert\""));
    assert!(refused.body.contains("search_domain"));
    assert_safe(&refused, "refused settings");
    assert!(escaped(&refused.body), "kept, escaped: {}", refused.body);

    let saved = browser
        .post(
            &settings,
            &[("search_domain", " Corp.Example. "), ("csrf", &csrf)],
        )
        .await;
    assert_eq!(saved.status, 303, "{}", saved.body);
    assert_eq!(saved.location.as_deref(), Some("/acme/settings?saved"));
    let (_, account) = portal.api(Method::GET, "/account", None).await;
    assert_eq!(account["search_domain"], "corp.example");
    let entry = last_audit(&portal).await;
    assert_eq!(entry["action"], "account.update");
    assert_eq!(entry["actor_id"], admin_id(&portal).await);
    let shown = browser.get(&format!("{base}/acme/settings?saved")).await;
    assert!(shown.body.contains("value=\"corp.example\""));
    assert!(shown.body.contains("Saved."));

    let cleared = browser
        .post(&settings, &[("search_domain", ""), ("csrf", &csrf)])
        .await;
    assert_eq!(cleared.status, 303);
    let (_, account) = portal.api(Method::GET, "/account", None).await;
    assert_eq!(account["search_domain"], Value::Null);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_page_or_change_here_for_a_non_admin_or_nobody() {
    let (portal, mut smtp, mut admin) = admin_browser().await;
    let base = portal.base.clone();
    assert_eq!(
        admin.get(&format!("{base}/acme/identity")).await.status,
        200
    );
    let (_, directory) = portal
        .api(
            Method::POST,
            "/directories",
            Some(json!({"type": "scim", "name": "Okta"})),
        )
        .await;
    let directory = directory["id"].as_str().unwrap().to_string();
    let (_, provider) = portal
        .api(
            Method::POST,
            "/identity_providers",
            Some(
                json!({"type": "oidc", "name": "IdP", "issuer": "http://127.0.0.1:1",
                "client_id": "x", "client_secret": "y"}),
            ),
        )
        .await;
    let provider = provider["id"].as_str().unwrap().to_string();

    // Bob signs in as an admin, then is made a user: his session shows no
    // admin page any more.
    let bob = portal.add_actor("Bob", "bob@example.test", "admin").await;
    let mut user = Browser::new();
    let page = ask_code(&portal, &mut user, "bob@example.test", false).await;
    let code = code_in(&smtp.next(10).await.expect("the code arrives").data);
    let signed_in = enter_code(&portal, &mut user, &page, &code).await;
    assert_eq!(signed_in.location.as_deref(), Some("/acme/"));
    assert_eq!(
        user.get(&format!("{base}/acme/settings")).await.status,
        200,
        "an admin's session"
    );
    let (status, demoted) = portal
        .api(
            Method::PATCH,
            &format!("/actors/{bob}"),
            Some(json!({"role": "user"})),
        )
        .await;
    assert_eq!(status, 200, "{demoted}");
    // His browser still has a valid CSRF cookie pair from his admin pages.
    let user_csrf = user
        .get(&format!("{base}/acme/sign_in"))
        .await
        .hidden("csrf")
        .unwrap_or_default();

    let gets = [
        "/acme/identity".to_string(),
        format!("/acme/identity/providers/{provider}"),
        format!("/acme/identity/providers/{provider}/delete"),
        format!("/acme/identity/directories/{directory}"),
        format!("/acme/identity/directories/{directory}/delete"),
        "/acme/settings".to_string(),
    ];
    let posts = [
        "/acme/identity/providers".to_string(),
        format!("/acme/identity/providers/{provider}"),
        format!("/acme/identity/providers/{provider}/delete"),
        "/acme/identity/directories".to_string(),
        format!("/acme/identity/directories/{directory}"),
        format!("/acme/identity/directories/{directory}/token"),
        format!("/acme/identity/directories/{directory}/sync"),
        format!("/acme/identity/directories/{directory}/delete"),
        "/acme/settings".to_string(),
    ];
    let mut nobody = Browser::new();
    // A user is sent to their own page, nobody to the sign-in.
    for (who, to) in [(&mut user, "/acme/me"), (&mut nobody, "/acme/sign_in")] {
        for path in &gets {
            let page = who.get(&format!("{base}{path}")).await;
            assert_eq!(page.status, 303, "{path}: {}", page.body);
            assert_eq!(page.location.as_deref(), Some(to), "{path}");
        }
        for path in &posts {
            let page = who
                .post(
                    &format!("{base}{path}"),
                    &[
                        ("csrf", user_csrf.as_str()),
                        ("type", "scim"),
                        ("name", "Taken over"),
                        ("search_domain", "evil.example"),
                    ],
                )
                .await;
            assert_eq!(page.status, 303, "{path}: {}", page.body);
            assert_eq!(page.location.as_deref(), Some(to), "{path}");
        }
    }
    // Nothing changed.
    let (_, directories) = portal.api(Method::GET, "/directories", None).await;
    assert_eq!(directories["data"].as_array().unwrap().len(), 1);
    assert_eq!(directories["data"][0]["name"], "Okta");
    let (status, _) = portal
        .api(
            Method::GET,
            &format!("/identity_providers/{provider}"),
            None,
        )
        .await;
    assert_eq!(status, 200);
    let (_, account) = portal.api(Method::GET, "/account", None).await;
    assert_eq!(account["search_domain"], Value::Null);
}
