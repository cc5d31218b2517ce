//! The console's audit, session and flow logs: changes made in the
//! console and through the API are listed with their author, filters
//! narrow, pages of 50 go older and newer without gaps or duplicates,
//! whatever a client, a directory or an admin can write comes back
//! escaped, garbage in the filters is a clear 400 (never a 500), and only
//! an admin sees any of it.

use reqwest::Method;
use serde_json::json;

use crate::support::channel::{Peer, key};
use crate::support::email::{ask_code, code_form, code_in, enter_code};
use crate::support::web::{Browser, Page, WebPortal};

const PROBE: &str = "<script>alert(1)</script>\"'&";

/// The probe as maud writes it in text.
fn escaped(probe: &str) -> String {
    probe
        .replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

fn assert_escaped(page: &Page, probe: &str) {
    let raw = &probe[..probe.find('"').unwrap_or(probe.len())];
    assert!(!page.body.contains(raw), "raw markup: {}", page.body);
    let text = escaped(probe);
    let text_squote = text.replace('\'', "&#39;");
    assert!(
        page.body.contains(&text) || page.body.contains(&text_squote),
        "{text} not in {}",
        page.body
    );
}

/// The href of the link whose `rel` is `rel` ("next": older, "prev":
/// newer), unescaped.
fn rel_link(page: &Page, rel: &str) -> Option<String> {
    let marker = format!("<a rel=\"{rel}\" href=\"");
    let start = page.body.find(&marker)? + marker.len();
    let end = page.body[start..].find('"')? + start;
    Some(page.body[start..end].replace("&amp;", "&"))
}

/// The objects' names (or ids) of an audit page, in order.
fn audit_objects(page: &Page) -> Vec<String> {
    let marker = "title=\"The history of this object\">";
    page.body
        .match_indices(marker)
        .map(|(at, _)| {
            let from = at + marker.len();
            let to = page.body[from..].find("</a>").unwrap() + from;
            page.body[from..to]
                .trim_start_matches("<code>")
                .trim_end_matches("</code>")
                .to_string()
        })
        .collect()
}

/// The rows of a page's log table.
fn rows(page: &Page) -> usize {
    page.body
        .split_once("<tbody>")
        .map_or(0, |(_, rest)| rest.matches("<tr>").count())
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_audit_log_lists_console_and_api_changes_by_the_admin_and_filters_narrow_it() {
    let (portal, _smtp, mut browser) = crate::admin_browser().await;
    let base = portal.base.clone();
    let admin = admin_id(&portal).await;

    // A site made in the console, a group made and renamed through the API.
    let sites = browser.get(&format!("{base}/acme/sites")).await;
    let csrf = sites.hidden("csrf").unwrap();
    let made = browser
        .post(
            &format!("{base}/acme/sites"),
            &[("name", PROBE), ("csrf", &csrf)],
        )
        .await;
    assert_eq!(made.status, 303, "{}", made.body);
    let site = made
        .location
        .unwrap()
        .rsplit('/')
        .next()
        .unwrap()
        .to_string();
    let (status, group) = portal
        .api(
            Method::POST,
            "/groups",
            Some(json!({"name": "Ops <b>old</b>"})),
        )
        .await;
    assert_eq!(status, 201, "{group}");
    let group = group["id"].as_str().unwrap().to_string();
    let (status, _) = portal
        .api(
            Method::PATCH,
            &format!("/groups/{group}"),
            Some(json!({"name": "Ops & <i>new</i>"})),
        )
        .await;
    assert_eq!(status, 200);

    let log = browser.get(&format!("{base}/acme/logs")).await;
    assert_eq!(log.status, 303);
    assert_eq!(log.location.as_deref(), Some("/acme/logs/audit"));
    let log = browser.get(&format!("{base}/acme/logs/audit")).await;
    assert_eq!(log.status, 200, "{}", log.body);
    assert!(log.body.contains("<h1>Audit log</h1>"));
    assert!(
        log.body
            .contains("href=\"/acme/logs/audit\" aria-current=\"page\">Audit log"),
        "the tab is marked"
    );
    // Newest first: the rename, the group, the site.
    let objects = audit_objects(&log);
    let renamed = "Ops &amp; &lt;i&gt;new&lt;/i&gt;";
    assert_eq!(objects[..2], [renamed, renamed], "{}", log.body);
    assert!(
        objects[2].starts_with("&lt;script&gt;alert(1)"),
        "{objects:?}"
    );
    assert!(log.body.contains("group.update") && log.body.contains("site.create"));
    // Each of them by the admin, named, the rename's diff old to new.
    let by_admin = format!(
        "href=\"/acme/logs/audit?actor={admin}\" title=\"Only the entries of this one\">admin</a>"
    );
    assert!(log.body.matches(&by_admin).count() >= 3, "{}", log.body);
    assert!(
        log.body
            .contains("<del>&quot;Ops &lt;b&gt;old&lt;/b&gt;&quot;</del> → <ins>&quot;Ops &amp; &lt;i&gt;new&lt;/i&gt;&quot;</ins>"),
        "{}",
        log.body
    );
    assert_escaped(&log, PROBE);
    assert!(!log.body.contains("<b>old</b>") && !log.body.contains("<i>new</i>"));

    // By action: only the site's creation.
    let only = browser
        .get(&format!("{base}/acme/logs/audit?action=site.create"))
        .await;
    assert_eq!(only.status, 200);
    assert_eq!(rows(&only), 1, "{}", only.body);
    assert!(only.body.contains(&format!("?object={site}")));
    assert!(
        only.body.contains("value=\"site.create\""),
        "the form keeps it"
    );
    // By type: the group's two entries.
    let groups = browser
        .get(&format!("{base}/acme/logs/audit?type=group"))
        .await;
    assert_eq!(rows(&groups), 2, "{}", groups.body);
    assert!(!groups.body.contains("site.create</code>"));
    // A click on an action narrows the filtered page further.
    assert!(
        groups
            .body
            .contains("href=\"/acme/logs/audit?type=group&amp;action=group.update\""),
        "{}",
        groups.body
    );
    // By object: its history.
    let history = browser
        .get(&format!("{base}/acme/logs/audit?object={group}"))
        .await;
    assert_eq!(rows(&history), 2);
    // By who: the admin by email has them all; another user has none.
    let (_, all) = portal.api(Method::GET, "/audit_log", None).await;
    let by_admin_in_api = all["data"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["actor_id"] == json!(admin))
        .count();
    let mine = browser
        .get(&format!(
            "{base}/acme/logs/audit?actor=ADMIN%40example.test"
        ))
        .await;
    assert_eq!(mine.status, 200, "{}", mine.body);
    assert_eq!(rows(&mine), by_admin_in_api);
    let user = portal.add_actor("Uma", "uma@example.test", "user").await;
    let hers = browser
        .get(&format!(
            "{base}/acme/logs/audit?actor={user}&action=site.create"
        ))
        .await;
    assert_eq!(hers.status, 200);
    assert_eq!(rows(&hers), 0);
    assert!(hers.body.contains("No entries match these filters"));
    // By time (UTC): none long ago, all of them today.
    let old = browser
        .get(&format!(
            "{base}/acme/logs/audit?since=2001-01-01&until=2001-01-02+12%3A00"
        ))
        .await;
    assert_eq!(old.status, 200, "{}", old.body);
    assert_eq!(rows(&old), 0);
    let today = jiff::Timestamp::now().strftime("%Y-%m-%d").to_string();
    let recent = browser
        .get(&format!(
            "{base}/acme/logs/audit?since={today}&until={today}&type=group"
        ))
        .await;
    assert_eq!(rows(&recent), 2, "{}", recent.body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pages_of_fifty_go_older_and_newer_without_gaps_or_duplicates() {
    let (portal, _smtp, mut browser) = crate::admin_browser().await;
    let base = portal.base.clone();
    let mut names = Vec::new();
    for n in 0..61 {
        let name = format!("team-{n:02}");
        let (status, _) = portal
            .api(Method::POST, "/groups", Some(json!({"name": name})))
            .await;
        assert_eq!(status, 201);
        names.push(name);
    }
    // Something else in between, which the filter leaves out.
    portal
        .api(Method::POST, "/sites", Some(json!({"name": "elsewhere"})))
        .await;

    let first = browser
        .get(&format!("{base}/acme/logs/audit?action=group.create"))
        .await;
    assert_eq!(first.status, 200);
    let page_one = audit_objects(&first);
    assert_eq!(page_one.len(), 50);
    assert!(rel_link(&first, "prev").is_none(), "no newer page");
    let older = rel_link(&first, "next").expect("an older page");
    assert!(older.contains("action=group.create"), "{older}");
    let second = browser.get(&format!("{base}{older}")).await;
    assert_eq!(second.status, 200, "{}", second.body);
    let page_two = audit_objects(&second);
    assert_eq!(page_two.len(), 11);
    assert!(rel_link(&second, "next").is_none(), "the oldest page");

    // Newest first, every one once, none missing.
    let mut seen: Vec<String> = page_one.iter().chain(&page_two).cloned().collect();
    let expected: Vec<String> = names.iter().rev().cloned().collect();
    assert_eq!(seen, expected);
    seen.sort();
    seen.dedup();
    assert_eq!(seen.len(), 61);

    // Back to newer: the first page again, filters kept.
    let newer = rel_link(&second, "prev").expect("a newer page");
    assert!(newer.contains("action=group.create"), "{newer}");
    let back = browser.get(&format!("{base}{newer}")).await;
    assert_eq!(audit_objects(&back), page_one);
    assert!(
        rel_link(&back, "prev").is_none(),
        "nothing newer than the first page"
    );
    assert!(rel_link(&back, "next").is_some());

    // Without the filter: the site first, then the groups, 50 a page.
    let started = std::time::Instant::now();
    let all = browser.get(&format!("{base}/acme/logs/audit")).await;
    println!("an audit page of 50 in {:?}", started.elapsed());
    let objects = audit_objects(&all);
    assert_eq!(objects.len(), 50);
    assert_eq!(objects[0], "elsewhere");
    assert_eq!(objects[1], "team-60");
}

/// Signs the admin in again from a browser whose user agent is `agent`.
async fn sign_in_with_agent(
    portal: &WebPortal,
    smtp: &mut crate::support::smtp::SmtpServer,
    agent: &str,
) {
    let mut browser = Browser::new();
    let page = ask_code(portal, &mut browser, "admin@example.test", false).await;
    let code = code_in(&smtp.next(10).await.expect("the code arrives").data);
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(agent)
        .no_proxy()
        .build()
        .unwrap();
    let answer = client
        .post(format!("{}/acme/sign_in/email/verify", portal.base))
        .header("cookie", browser.cookie_header())
        .form(&code_form(&page, &code))
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 303);
}

fn urlencode(text: &str) -> String {
    url::form_urlencoded::byte_serialize(text.as_bytes()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_and_flows_show_what_clients_send_escaped_and_filter() {
    let (portal, mut smtp, mut browser) = crate::admin_browser().await;
    let base = portal.base.clone();
    let addr: std::net::SocketAddr = base.trim_start_matches("http://").parse().unwrap();
    sign_in_with_agent(&portal, &mut smtp, PROBE).await;

    // A gateway, a resource in its site, and a service account (its name a
    // probe) whose client names itself with markup.
    let (_, site) = portal
        .api(Method::POST, "/sites", Some(json!({"name": "Office"})))
        .await;
    let site = site["id"].as_str().unwrap().to_string();
    let (_, gateway_token) = portal
        .api(Method::POST, &format!("/sites/{site}/gateway_tokens"), None)
        .await;
    let mut gateway = Peer::connect(
        addr,
        "/v1/gateway",
        gateway_token["token"].as_str().unwrap(),
        "gw-1",
        &key(1),
    )
    .await
    .unwrap();
    assert_eq!(gateway.next().await["type"], "init");
    let (status, resource) = portal
        .api(
            Method::POST,
            "/resources",
            Some(json!({"name": "Wiki <svg onload=alert(3)>", "type": "ip", "address": "10.0.0.5", "site_id": site})),
        )
        .await;
    assert_eq!(status, 201, "{resource}");
    let resource = resource["id"].as_str().unwrap().to_string();
    let robot_name = "Robot <img src=x onerror=alert(2)>";
    let (_, robot) = portal
        .api(
            Method::POST,
            "/actors",
            Some(json!({"name": robot_name, "role": "service_account"})),
        )
        .await;
    let robot = robot["id"].as_str().unwrap().to_string();
    let (_, token) = portal
        .api(Method::POST, &format!("/actors/{robot}/tokens"), None)
        .await;
    let client_name = "<script>alert('client')</script>";
    let mut client = Peer::connect_query(
        addr,
        "/v1/client",
        token["token"].as_str().unwrap(),
        &format!(
            "device_id=laptop&public_key={}&name={}&os=Linux",
            urlencode(&key(2)),
            urlencode(client_name)
        ),
    )
    .await
    .unwrap();
    assert_eq!(client.next().await["type"], "init");
    let (_, clients) = portal.api(Method::GET, "/clients", None).await;
    let device = clients["data"][0]["id"]
        .as_str()
        .unwrap_or_else(|| panic!("{clients}"))
        .to_string();

    // The sessions: the sign-in with its agent, the client's connection.
    let sessions = browser.get(&format!("{base}/acme/logs/sessions")).await;
    assert_eq!(sessions.status, 200, "{}", sessions.body);
    assert!(sessions.body.contains("client connected"));
    assert!(sessions.body.contains("web sign-in"));
    assert!(sessions.body.contains("gateway connected") && sessions.body.contains("a gateway"));
    assert!(sessions.body.contains("127.0.0.1"), "the remote address");
    assert_escaped(&sessions, PROBE);
    assert_escaped(&sessions, client_name);
    assert_escaped(&sessions, robot_name);
    let connects = browser
        .get(&format!("{base}/acme/logs/sessions?kind=client_connect"))
        .await;
    assert_eq!(rows(&connects), 1, "{}", connects.body);
    let robots = browser
        .get(&format!("{base}/acme/logs/sessions?actor={robot}"))
        .await;
    assert_eq!(rows(&robots), 1);
    assert!(
        robots.body.contains("Only: who <b>Robot &lt;img"),
        "{}",
        robots.body
    );
    let by_device = browser
        .get(&format!("{base}/acme/logs/sessions?device={device}"))
        .await;
    assert_eq!(rows(&by_device), 1);

    // Two flows of the client through the gateway.
    let flow = |port: u16, bytes_in: u64| {
        json!({
            "client_id": device,
            "resource_id": resource,
            "protocol": 6,
            "source": format!("100.64.0.2:{port}"),
            "destination": "10.0.0.5:443",
            "bytes_out": 1200,
            "bytes_in": bytes_in,
            "started_ms": 1_764_000_000_000i64,
            "ended_ms": 1_764_000_002_000i64 + i64::from(port % 2) * 3_600_000,
        })
    };
    gateway
        .send(json!({"type": "flows", "batch": 1, "flows": [flow(40001, 34_000), flow(40002, 10)]}))
        .await;
    assert_eq!(gateway.next_of("flows_stored").await["batch"], 1);
    let flows = browser.get(&format!("{base}/acme/logs/flows")).await;
    assert_eq!(flows.status, 200, "{}", flows.body);
    assert_eq!(rows(&flows), 2, "{}", flows.body);
    assert!(flows.body.contains("33.2 KiB") && flows.body.contains("10 B"));
    assert!(flows.body.contains("1.2 KiB"));
    assert!(flows.body.contains("2 s") && flows.body.contains("1 h 0 min"));
    assert!(
        flows
            .body
            .contains("<code>100.64.0.2:40001</code> → <code>10.0.0.5:443</code>")
    );
    assert!(flows.body.contains("TCP"));
    assert!(
        flows.body.contains("2025-11-24 16:00:00"),
        "started, in UTC"
    );
    assert!(flows.body.contains("gw-1"));
    assert_escaped(&flows, client_name);
    assert_escaped(&flows, robot_name);
    assert_escaped(&flows, "Wiki <svg onload=alert(3)>");
    for (filter, expected) in [
        (format!("resource={resource}"), 2),
        (format!("client={device}"), 2),
        (format!("actor={robot}"), 2),
        (format!("resource={site}"), 0),
        ("since=2025-11-24+16%3A00%3A03".to_string(), 1),
        ("until=2025-11-24T15%3A59%3A59Z".to_string(), 0),
    ] {
        let page = browser
            .get(&format!("{base}/acme/logs/flows?{filter}"))
            .await;
        assert_eq!(page.status, 200, "{filter}: {}", page.body);
        assert_eq!(rows(&page), expected, "{filter}: {}", page.body);
    }
    drop((client, gateway));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_in_the_filters_is_a_clear_400_never_a_500() {
    let (portal, _smtp, mut browser) = crate::admin_browser().await;
    let base = portal.base.clone();
    let long = "a".repeat(400);
    let cursor_of_zero = {
        use base64::Engine as _;
        let mut bytes = b"pc1".to_vec();
        bytes.extend_from_slice(&0i64.to_be_bytes());
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    };
    let cases = [
        ("audit", "before=garbage".to_string(), "damaged"),
        ("audit", "after=%FF%FE".to_string(), "damaged"),
        ("audit", format!("before={cursor_of_zero}"), "damaged"),
        (
            "audit",
            "before=cGMxAAAAAAAAAAE&after=cGMxAAAAAAAAAAE".to_string(),
            "damaged",
        ),
        ("audit", "actor=not-a-uuid".to_string(), "not an id"),
        (
            "audit",
            "actor=nobody%40example.test".to_string(),
            "no user",
        ),
        ("audit", "object=%3Cscript%3E".to_string(), "not an id"),
        ("audit", "directory=1".to_string(), "not an id"),
        ("audit", "since=yesterday".to_string(), "not a time"),
        ("audit", "until=2026-13-45".to_string(), "not a time"),
        (
            "audit",
            "since=2026-05-02&until=2026-05-01".to_string(),
            "starts after",
        ),
        (
            "audit",
            "action=%3Cscript%3Ealert(1)%3C%2Fscript%3E".to_string(),
            "not an action",
        ),
        ("audit", "type=DROP+TABLE".to_string(), "not a name"),
        ("audit", format!("action={long}"), "at most"),
        ("sessions", "kind=web.sign_in".to_string(), "not a name"),
        ("sessions", "device=%00".to_string(), "printable"),
        ("flows", "resource=1234".to_string(), "not an id"),
        (
            "flows",
            "gateway=00000000-0000-0000-0000".to_string(),
            "not an id",
        ),
        ("flows", "client=%27%20OR%201%3D1".to_string(), "not an id"),
        ("flows", "since=99999-01-01".to_string(), "not a time"),
    ];
    for (log, query, says) in cases {
        let page = browser
            .get(&format!("{base}/acme/logs/{log}?{query}"))
            .await;
        assert_eq!(page.status, 400, "{log}?{query}: {}", page.body);
        assert!(page.body.contains("role=\"alert\""), "{log}?{query}");
        assert!(
            page.body.contains(says),
            "{log}?{query} says {says}: {}",
            page.body
        );
        assert!(!page.body.contains("<script>alert"), "{}", page.body);
        assert!(
            !page.body.contains("<tbody>"),
            "no entries on a refused filter"
        );
        assert!(
            page.body.contains("<form class=\"filters\""),
            "the form to fix it"
        );
    }
    // A cursor the portal could have made, past the end: an empty page.
    let past = browser
        .get(&format!("{base}/acme/logs/audit?before=cGMxAAAAAAAAAAE"))
        .await;
    assert_eq!(past.status, 200, "{}", past.body);
    assert!(past.body.contains("No entries"));
    // Unknown parameters are ignored.
    let other = browser
        .get(&format!("{base}/acme/logs/flows?colour=blue&limit=9999"))
        .await;
    assert_eq!(other.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_an_admin_sees_the_logs() {
    let (portal, mut smtp, _admin) = crate::admin_browser().await;
    let base = portal.base.clone();
    let paths = [
        "/acme/logs",
        "/acme/logs/audit",
        "/acme/logs/sessions",
        "/acme/logs/flows",
    ];
    let mut stranger = Browser::new();
    for path in paths {
        let page = stranger.get(&format!("{base}{path}?actor=x")).await;
        assert_eq!(page.status, 303, "{path}");
        assert_eq!(page.location.as_deref(), Some("/acme/sign_in"));
    }
    // A user cannot sign in on the web; a second admin can, and sees the
    // logs until demoted to a user: the same session then gets no page.
    let ada = portal.add_actor("Ada", "ada@example.test", "admin").await;
    let mut browser = Browser::new();
    let page = ask_code(&portal, &mut browser, "ada@example.test", false).await;
    let code = code_in(&smtp.next(10).await.expect("the code arrives").data);
    let signed_in = enter_code(&portal, &mut browser, &page, &code).await;
    assert_eq!(signed_in.location.as_deref(), Some("/acme/"));
    let audit = browser.get(&format!("{base}/acme/logs/audit")).await;
    assert_eq!(audit.status, 200);
    assert!(audit.body.contains("actor.create"));
    let (status, _) = portal
        .api(
            Method::PATCH,
            &format!("/actors/{ada}"),
            Some(json!({"role": "user"})),
        )
        .await;
    assert_eq!(status, 200);
    for path in paths {
        let page = browser.get(&format!("{base}{path}")).await;
        assert_ne!(page.status, 200, "{path}");
        assert!(!page.body.contains("<table"), "{path}: {}", page.body);
        assert!(!page.body.contains("actor.create"), "{path}");
    }
    // The admin's own API token is not a console session either.
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let with_token = client
        .get(format!("{base}/acme/logs/audit"))
        .bearer_auth(&portal.token)
        .send()
        .await
        .unwrap();
    assert_eq!(with_token.status(), 303);
}
