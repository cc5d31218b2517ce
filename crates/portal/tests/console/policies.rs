//! The conditions editor of a policy and the access check ("why can't
//! alice reach web?").

use reqwest::Method;
use serde_json::json;

use crate::admin_browser;
use crate::support::web::{Browser, Page, WebPortal};

/// Posts a console form with the page's CSRF token.
async fn post(
    browser: &mut Browser,
    portal: &WebPortal,
    path: &str,
    form: &[(&str, &str)],
) -> Page {
    let csrf = browser
        .get(&format!("{}/acme/policies", portal.base))
        .await
        .hidden("csrf")
        .unwrap();
    let mut form = form.to_vec();
    form.push(("csrf", &csrf));
    browser
        .post(&format!("{}/acme{path}", portal.base), &form)
        .await
}

/// A site, a resource `name` on it, a group with `members`: (resource, group).
async fn setup(portal: &WebPortal, name: &str, members: &[&str]) -> (String, String) {
    let (_, site) = portal
        .api(
            Method::POST,
            "/sites",
            Some(json!({"name": format!("{name} site")})),
        )
        .await;
    let (status, resource) = portal
        .api(
            Method::POST,
            "/resources",
            Some(json!({"name": name, "type": "cidr", "address": "10.9.0.0/24", "site_id": site["id"]})),
        )
        .await;
    assert_eq!(status, 201, "{resource}");
    let (_, group) = portal
        .api(
            Method::POST,
            "/groups",
            Some(json!({"name": format!("{name} people")})),
        )
        .await;
    let group = group["id"].as_str().unwrap().to_string();
    let (status, _) = portal
        .api(
            Method::PUT,
            &format!("/groups/{group}/members"),
            Some(json!({"actor_ids": members})),
        )
        .await;
    assert_eq!(status, 200);
    (resource["id"].as_str().unwrap().to_string(), group)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conditions_made_in_the_editor_are_the_policy_s_and_a_refusal_keeps_them() {
    let (portal, _smtp, mut browser) = admin_browser().await;
    let (resource, group) = setup(&portal, "Web", &[]).await;
    let mut form = vec![
        ("group_id", group.as_str()),
        ("resource_id", resource.as_str()),
        ("description", "office hours <b>"),
        ("country_op", "not_in"),
        ("country_values", "KP, IR"),
        ("time_op", "in"),
        ("time_day", "M"),
        ("time_day", "W"),
        ("time_from", "08:30"),
        ("time_to", "18:00"),
        ("time_zone", "Europe/Berlin"),
        ("os_op", "in"),
        ("os", "linux"),
        ("os", "macos"),
        ("verified", "true"),
        ("ip_op", "in"),
        ("ip_values", "198.51.100.0/24, not-a-network"),
    ];
    // The API refuses the bad network and says which; what was typed stays.
    let refused = post(&mut browser, &portal, "/policies", &form).await;
    assert_eq!(refused.status, 422, "{}", refused.body);
    assert!(refused.body.contains("conditions[0]"), "{}", refused.body);
    assert!(
        refused.body.contains("not-a-network"),
        "kept: {}",
        refused.body
    );
    assert!(refused.body.contains(r#"value="08:30""#));
    assert!(refused.body.contains("office hours &lt;b&gt;"));
    let (_, listed) = portal.api(Method::GET, "/policies", None).await;
    assert_eq!(listed["data"], json!([]), "nothing made");

    form.retain(|(k, _)| *k != "ip_values" && *k != "ip_op");
    form.push(("ip_values", "198.51.100.0/24"));
    let made = post(&mut browser, &portal, "/policies", &form).await;
    assert_eq!(made.status, 303, "{}", made.body);
    let (_, listed) = portal.api(Method::GET, "/policies", None).await;
    let policy = &listed["data"][0];
    assert_eq!(
        policy["conditions"],
        json!([
            {"property": "remote_ip", "operator": "in", "values": ["198.51.100.0/24"]},
            {"property": "country", "operator": "not_in", "values": ["KP", "IR"]},
            {"property": "time", "operator": "in", "values": ["MW/08:30-18:00/Europe/Berlin"]},
            {"property": "client_verified", "operator": "in", "values": ["true"]},
            {"property": "client_os", "operator": "in", "values": ["linux", "macos"]},
        ])
    );
    let id = policy["id"].as_str().unwrap().to_string();
    let page = browser.get(&format!("{}/acme/policies", portal.base)).await;
    assert!(
        page.body.contains("not connecting from KP or IR"),
        "{}",
        page.body
    );

    // The edit page shows them; without the CSRF token nothing changes.
    let edit = browser
        .get(&format!("{}/acme/policies/{id}", portal.base))
        .await;
    assert_eq!(edit.status, 200);
    assert!(edit.body.contains(r#"value="KP, IR""#), "{}", edit.body);
    let forged = browser
        .post(
            &format!("{}/acme/policies/{id}", portal.base),
            &[("disabled", "true"), ("description", "")],
        )
        .await;
    assert_eq!(forged.status, 403);
    // Saved: conditions replaced, disabled, audited as the admin.
    let saved = post(
        &mut browser,
        &portal,
        &format!("/policies/{id}"),
        &[
            ("description", "weekdays"),
            ("disabled", "true"),
            ("os", "windows"),
        ],
    )
    .await;
    assert_eq!(saved.status, 303, "{}", saved.body);
    let (_, after) = portal
        .api(Method::GET, &format!("/policies/{id}"), None)
        .await;
    assert_eq!(
        after["conditions"],
        json!([{"property": "client_os", "operator": "in", "values": ["windows"]}])
    );
    assert_eq!(after["disabled"], json!(true));
    assert_eq!(after["description"], json!("weekdays"));
    let (_, audit) = portal.api(Method::GET, "/audit_log?limit=1", None).await;
    assert_eq!(
        audit["data"][0]["action"],
        json!("policy.update"),
        "{audit}"
    );
    assert!(audit["data"][0]["actor_id"].is_string(), "{audit}");

    // Conditions written through the API in a shape the editor cannot hold
    // (verified devices said as "not unverified", two address rules) are
    // shown read-only and survive a save of the other fields unchanged.
    let strict = json!([
        {"property": "client_verified", "operator": "not_in", "values": ["false"]},
        {"property": "remote_ip", "operator": "in", "values": ["10.0.0.0/8"]},
        {"property": "remote_ip", "operator": "not_in", "values": ["10.9.0.0/16"]},
    ]);
    let (status, _) = portal
        .api(
            Method::PATCH,
            &format!("/policies/{id}"),
            Some(json!({"conditions": strict})),
        )
        .await;
    assert_eq!(status, 200);
    let edit = browser
        .get(&format!("{}/acme/policies/{id}", portal.base))
        .await;
    assert!(edit.body.contains("kept as they are"), "{}", edit.body);
    assert!(
        !edit.body.contains(r#"name="ip_values""#),
        "no editor to lose them"
    );
    let saved = post(
        &mut browser,
        &portal,
        &format!("/policies/{id}"),
        &[("description", "renamed only"), ("conditions", "keep")],
    )
    .await;
    assert_eq!(saved.status, 303, "{}", saved.body);
    let (_, after) = portal
        .api(Method::GET, &format!("/policies/{id}"), None)
        .await;
    assert_eq!(after["conditions"], strict, "nothing loosened");
    assert_eq!(after["description"], json!("renamed only"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_access_check_says_why_alice_cannot_reach_web() {
    use crate::support::channel::{Peer, key};
    let (portal, _smtp, mut browser) = admin_browser().await;
    // A service account, so that a client can connect with an admin-made token.
    let alice = portal
        .add_actor(
            "Alice <script>x</script>",
            "alice@example.test",
            "service_account",
        )
        .await;
    let bob = portal.add_actor("Bob", "bob@example.test", "user").await;
    let (web, group) = setup(&portal, "Web", &[&alice]).await;
    let (status, _) = portal
        .api(
            Method::POST,
            "/policies",
            Some(
                json!({"group_id": group, "resource_id": web, "conditions": [
                    {"property": "client_os", "values": ["windows"]},
                    {"property": "client_verified", "values": ["true"]}
                ]}),
            ),
        )
        .await;
    assert_eq!(status, 201);
    // Alice's laptop runs Linux (what the test client reports), verified.
    let (_, token) = portal
        .api(Method::POST, &format!("/actors/{alice}/tokens"), None)
        .await;
    let addr: std::net::SocketAddr = portal.base.trim_start_matches("http://").parse().unwrap();
    let mut laptop = Peer::connect(
        addr,
        "/v1/client",
        token["token"].as_str().unwrap(),
        "alice-laptop",
        &key(3),
    )
    .await
    .unwrap();
    assert_eq!(laptop.next().await["type"], "init");
    let (_, clients) = portal.api(Method::GET, "/clients", None).await;
    let client = clients["data"][0]["id"].as_str().unwrap().to_string();
    let (status, _) = portal
        .api(
            Method::PATCH,
            &format!("/clients/{client}"),
            Some(json!({"verified": true})),
        )
        .await;
    assert_eq!(status, 200);

    let check = |who: &str| format!("{}/acme/access?who={who}&resource={web}", portal.base);
    let page = browser.get(&check("alice%40example.test")).await;
    assert_eq!(page.status, 200, "{}", page.body);
    assert!(
        page.body.contains("Alice &lt;script&gt;"),
        "escaped: {}",
        page.body
    );
    assert!(!page.body.contains("<script>x"), "{}", page.body);
    assert!(page.body.contains("alice-laptop"));
    assert!(
        page.body.contains("conditions not met: client os"),
        "the engine's denial: {}",
        page.body
    );
    assert!(
        page.body.contains("on a device running windows"),
        "the condition in words"
    );
    assert!(
        page.body.contains("fails") && page.body.contains("holds"),
        "{}",
        page.body
    );
    assert!(
        page.body.contains("No gateway of the resource"),
        "{}",
        page.body
    );

    // Bob is in no group the policy names.
    let page = browser.get(&check("Bob")).await;
    assert!(
        page.body
            .contains("no enabled policy links any of their groups"),
        "{}",
        page.body
    );
    assert!(page.body.contains("not a member"));
    assert!(page.body.contains("a new client (none yet)"));

    // Let Linux in: allowed now, by the policy of her group.
    let (_, policies) = portal.api(Method::GET, "/policies", None).await;
    let policy = policies["data"][0]["id"].as_str().unwrap();
    portal
        .api(
            Method::PATCH,
            &format!("/policies/{policy}"),
            Some(
                json!({"conditions": [{"property": "client_os", "values": ["windows", "linux"]}]}),
            ),
        )
        .await;
    let page = browser.get(&check(&alice)).await;
    assert!(page.body.contains("allowed"), "{}", page.body);
    assert!(
        page.body.contains("through the policy for Web people"),
        "{}",
        page.body
    );

    // Nobody by that name: said so, 404.
    let page = browser.get(&check("carol")).await;
    assert_eq!(page.status, 404);
    assert!(page.body.contains("Nobody in this account"));
    let _ = bob;
}

/// Reads a server-sent event stream until an event `name` whose data
/// contains `needle`, within `wait`; the data.
async fn event_with(
    response: &mut reqwest::Response,
    seen: &mut String,
    name: &str,
    needle: &str,
    wait: std::time::Duration,
) -> Option<String> {
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        for block in seen.split("\n\n") {
            if block.lines().any(|l| l == format!("event: {name}")) && block.contains(needle) {
                let data: String = block
                    .lines()
                    .filter_map(|l| l.strip_prefix("data: "))
                    .collect();
                return Some(data);
            }
        }
        let chunk = tokio::time::timeout_at(deadline, response.chunk())
            .await
            .ok()?;
        seen.push_str(&String::from_utf8_lossy(&chunk.ok()??));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_live_overview_pushes_denials_and_presence_as_they_happen() {
    use crate::support::channel::{Peer, key};
    let (portal, _smtp, mut browser) = admin_browser().await;
    let robot = portal
        .add_actor("Robot", "robot@example.test", "service_account")
        .await;
    let (web, group) = setup(&portal, "Payroll <img src=x>", &[&robot]).await;
    // Offered to the robot, but only to Windows clients.
    let (status, _) = portal
        .api(
            Method::POST,
            "/policies",
            Some(
                json!({"group_id": group, "resource_id": web, "conditions": [
                    {"property": "client_os", "values": ["windows"]}
                ]}),
            ),
        )
        .await;
    assert_eq!(status, 201);
    let (_, token) = portal
        .api(Method::POST, &format!("/actors/{robot}/tokens"), None)
        .await;

    // Not signed in: no stream.
    let stranger = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let refused = stranger
        .get(format!("{}/acme/live", portal.base))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 303);

    let overview = browser.get(&format!("{}/acme/", portal.base)).await;
    assert!(
        overview
            .body
            .contains(r#"sse-connect="/acme/live?after=0""#),
        "{}",
        overview.body
    );
    let mut live = stranger
        .get(format!("{}/acme/live?after=0", portal.base))
        .header("cookie", browser.cookie_header())
        .send()
        .await
        .unwrap();
    assert_eq!(live.status(), 200);
    assert_eq!(live.headers()["content-type"], "text/event-stream");
    let mut seen = String::new();

    // A client connects: the counts move without a reload.
    let addr: std::net::SocketAddr = portal.base.trim_start_matches("http://").parse().unwrap();
    let mut client = Peer::connect(
        addr,
        "/v1/client",
        token["token"].as_str().unwrap(),
        "robot-1",
        &key(4),
    )
    .await
    .unwrap();
    assert_eq!(client.next().await["type"], "init");
    let wait = std::time::Duration::from_secs(3);
    let presence = event_with(
        &mut live,
        &mut seen,
        "presence",
        "clients online of 1",
        wait,
    )
    .await
    .unwrap_or_else(|| panic!("no presence event: {seen}"));
    assert!(
        presence
            .contains(r#"<span class="number">1</span><span class="label">clients online of 1"#),
        "{presence}"
    );

    // It asks from Linux: the refusal is pushed, with its reason, the name
    // escaped.
    let started = std::time::Instant::now();
    client
        .send(json!({"type": "request_access", "ref": "r1", "resource_id": web}))
        .await;
    assert_eq!(client.next_of("access_denied").await["reason"], "forbidden");
    let row = event_with(&mut live, &mut seen, "denial", "Payroll", wait)
        .await
        .unwrap_or_else(|| panic!("no denial event: {seen}"));
    println!(
        "denial pushed {} ms after the request",
        started.elapsed().as_millis()
    );
    assert!(row.contains("Payroll &lt;img src=x&gt;"), "{row}");
    assert!(!row.contains("<img"), "{row}");
    assert!(row.contains("Robot") && row.contains("robot-1"), "{row}");
    assert!(row.contains("conditions not met: client os"), "{row}");

    // A reload shows it too, and the stream goes on from the newest.
    let overview = browser.get(&format!("{}/acme/", portal.base)).await;
    assert!(overview.body.contains("conditions not met: client os"));
    assert!(
        !overview.body.contains(r#"live?after=0""#),
        "{}",
        overview.body
    );

    // Asked again: one row, counted, pushed as the newest.
    client
        .send(json!({"type": "request_access", "ref": "r2", "resource_id": web}))
        .await;
    client.next_of("access_denied").await;
    event_with(&mut live, &mut seen, "denial", "(2 times)", wait)
        .await
        .unwrap_or_else(|| panic!("no repeat: {seen}"));

    // Signed out: the stream ends with the session (no more pushes).
    let csrf = overview.hidden("csrf").unwrap();
    let out = browser
        .post(
            &format!("{}/acme/sign_out", portal.base),
            &[("csrf", &csrf)],
        )
        .await;
    assert_eq!(out.status, 303);
    client
        .send(json!({"type": "request_access", "ref": "r3", "resource_id": web}))
        .await;
    client.next_of("access_denied").await;
    let ended = tokio::time::timeout(std::time::Duration::from_secs(3), async {
        while let Ok(Some(chunk)) = live.chunk().await {
            assert!(
                !String::from_utf8_lossy(&chunk).contains("(3 times)"),
                "a signed-out page was told: {}",
                String::from_utf8_lossy(&chunk)
            );
        }
    })
    .await;
    assert!(ended.is_ok(), "the stream outlived the session");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resources_and_policies_are_listed_fifty_a_page_and_searched() {
    let (portal, _smtp, mut browser) = admin_browser().await;
    let (first, group) = setup(&portal, "res-000", &[]).await;
    let (_, site) = portal.api(Method::GET, "/sites", None).await;
    let site = site["data"][0]["id"].clone();
    let mut ids = vec![first];
    for n in 1..55 {
        let (status, made) = api_paced(
                &portal,
                Method::POST,
                "/resources",
                Some(json!({"name": format!("res-{n:03}"), "type": "ip", "address": format!("10.8.0.{n}"), "site_id": site})),
            )
            .await;
        assert_eq!(status, 201, "{made}");
        ids.push(made["id"].as_str().unwrap().to_string());
    }
    for id in &ids {
        let (status, _) = api_paced(
            &portal,
            Method::POST,
            "/policies",
            Some(json!({"group_id": group, "resource_id": id})),
        )
        .await;
        assert_eq!(status, 201);
    }
    for (list, row) in [
        ("resources", r#"aria-label="Delete res-"#),
        ("policies", r#"aria-label="Edit the policy"#),
    ] {
        let count = |body: &str| body.matches(row).count();
        let first = browser.get(&format!("{}/acme/{list}", portal.base)).await;
        assert_eq!(first.status, 200);
        assert!(first.body.contains("55 in all"), "{list}: {}", first.body);
        let next = format!("/acme/{list}?page=2");
        assert!(
            first.body.contains(&format!(r#"href="{next}""#)),
            "{list}: {}",
            first.body
        );
        let second = browser.get(&format!("{}{next}", portal.base)).await;
        assert_eq!((count(&first.body), count(&second.body)), (50, 5), "{list}");
        assert!(!second.body.contains("page=3"), "no third page");
        let searched = browser
            .get(&format!("{}/acme/{list}?q=RES-05", portal.base))
            .await;
        assert!(
            searched.body.contains("5 in all"),
            "{list}: {}",
            searched.body
        );
        let past = browser
            .get(&format!("{}/acme/{list}?page=99", portal.base))
            .await;
        assert_eq!(
            past.status, 200,
            "a page past the end is empty, not an error"
        );
    }
}

/// The API as the admin, waiting out its rate limit (a test that sets up
/// more than its burst).
async fn api_paced(
    portal: &WebPortal,
    method: Method,
    path: &str,
    body: Option<serde_json::Value>,
) -> (u16, serde_json::Value) {
    loop {
        let (status, answer) = portal.api(method.clone(), path, body.clone()).await;
        if status != 429 {
            return (status, answer);
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}
