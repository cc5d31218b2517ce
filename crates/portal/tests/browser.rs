#![allow(clippy::unwrap_used)] // a test file: unwrap is the assertion
//! The admin console in a real browser (issue 17): Debian's `chromium`
//! driven through `chromium-driver` (WebDriver, with the `fantoccini`
//! crate). An admin signs in with an email code, adds a site, creates a
//! gateway token and sees the gateway that connects with it appear without
//! a reload, adds a resource, a group with a member and a policy; a client
//! is granted access, and deleting the policy in the browser revokes it
//! within a second. Markup typed into a name comes back as text. A
//! screenshot of each page is written under the test's target directory.
//!
//! The browser is kept on loopback: every other host name resolves to
//! nothing and its background services are off. Needs `chromium` and
//! `chromium-driver` (the CI installs them) and fails loudly without them.

mod support;

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::json;
use support::channel::{Peer, key};
use support::email::code_in;

/// A chromedriver of the test's own, stopped at drop.
struct Driver {
    child: Child,
    port: u16,
    profile: PathBuf,
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.profile);
    }
}

async fn browser() -> (Driver, Client) {
    for tool in ["/usr/bin/chromium", "/usr/bin/chromedriver"] {
        assert!(
            std::path::Path::new(tool).exists(),
            "this test needs {tool}: apt install chromium chromium-driver (the CI does)"
        );
    }
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let profile =
        std::env::temp_dir().join(format!("postern-chromium-{}-{port}", std::process::id()));
    let child = Command::new("/usr/bin/chromedriver")
        .arg(format!("--port={port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let driver = Driver {
        child,
        port,
        profile: profile.clone(),
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "chromedriver did not start");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut capabilities = serde_json::Map::new();
    capabilities.insert(
        "goog:chromeOptions".into(),
        json!({
            "binary": "/usr/bin/chromium",
            "args": [
                "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--window-size=1280,900", "--no-first-run", "--no-default-browser-check",
                "--disable-background-networking", "--disable-component-update",
                "--disable-sync", "--disable-default-apps", "--disable-extensions",
                "--proxy-server=127.0.0.1:9", "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1",
                format!("--user-data-dir={}", profile.display()),
            ],
        }),
    );
    let connector = hyper_util::client::legacy::connect::HttpConnector::new();
    let client = ClientBuilder::new(connector)
        .capabilities(capabilities)
        .connect(&format!("http://127.0.0.1:{}", driver.port))
        .await
        .expect("a chromium session");
    (driver, client)
}

/// Where the screenshots go.
fn shots() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("console-screenshots");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// The text of the element `css` names. A live panel is replaced by its
/// poll every 2 s: an element replaced between finding it and reading it is
/// found again.
async fn text_of(client: &Client, css: &str) -> String {
    for _ in 0..20 {
        let element = client.find(Locator::Css(css)).await.unwrap();
        match element.text().await {
            Ok(text) => return text,
            Err(fantoccini::error::CmdError::Standard(e))
                if e.error == fantoccini::error::ErrorStatus::StaleElementReference =>
            {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(other) => panic!("{css}: {other}"),
        }
    }
    panic!("{css}: replaced on every read");
}

async fn shoot(client: &Client, name: &str) {
    let png = client.screenshot().await.unwrap();
    assert!(png.starts_with(b"\x89PNG"), "a PNG");
    let path = shots().join(format!("{name}.png"));
    std::fs::write(&path, png).unwrap();
    println!("screenshot: {}", path.display());
}

async fn type_into(client: &Client, css: &str, text: &str) {
    client
        .find(Locator::Css(css))
        .await
        .unwrap()
        .send_keys(text)
        .await
        .unwrap();
}

async fn click(client: &Client, css: &str) {
    client
        .find(Locator::Css(css))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
}

/// Waits for the page whose heading is `expected` (a click navigates in
/// its own time).
async fn wait_heading(client: &Client, expected: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut last = String::new();
    while Instant::now() < deadline {
        if let Ok(h1) = client.find(Locator::Css("h1")).await
            && let Ok(text) = h1.text().await
        {
            if text == expected {
                return;
            }
            last = text;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("no page {expected:?}; the last heading was {last:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_admin_runs_the_account_from_chromium() {
    let (portal, mut smtp) = support::email::portal_with_mail(None).await;
    let base = portal.base.clone();
    let (_driver, client) = browser().await;

    // Sign in with an email code.
    client.goto(&format!("{base}/acme/sign_in")).await.unwrap();
    type_into(&client, "input[name=email]", "admin@example.test").await;
    click(
        &client,
        "form[action$='/sign_in/email'] button[type=submit]",
    )
    .await;
    let code = code_in(&smtp.next(10).await.expect("the code arrives").data);
    type_into(&client, "input[name=code]", &code).await;
    click(&client, "form[action$='/verify'] button[type=submit]").await;
    wait_heading(&client, "Overview").await;
    shoot(&client, "overview").await;

    // A site, named with markup: shown as text.
    client
        .find(Locator::LinkText("Sites"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    let probe = "Office <img src=x onerror=alert(1)>";
    type_into(&client, "#site-name", probe).await;
    click(&client, "form[action$='/sites'] button[type=submit]").await;
    wait_heading(&client, probe).await;
    let site_url = client.current_url().await.unwrap().to_string();
    shoot(&client, "site").await;

    // Deploy a gateway: the token the page shows; the site's page, open
    // before the gateway connects, shows it online without a reload.
    click(&client, "form[action$='/gateway_token'] button").await;
    wait_heading(&client, "Deploy a gateway").await;
    let token = client
        .find(Locator::Css("#gateway-token"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    shoot(&client, "deploy-a-gateway").await;
    client.goto(&site_url).await.unwrap();
    // A mark on this page: still there at the end, so nothing reloaded it.
    client
        .execute("window.posternMark = 'set'; return 1;", vec![])
        .await
        .unwrap();
    assert!(
        text_of(&client, "#gateways")
            .await
            .contains("No gateway has connected")
    );
    let addr: std::net::SocketAddr = base.trim_start_matches("http://").parse().unwrap();
    let mut gateway = Peer::connect(addr, "/v1/gateway", token.trim(), "gw-1", &key(1))
        .await
        .unwrap();
    assert_eq!(gateway.next().await["type"], "init");
    let started = Instant::now();
    loop {
        let text = text_of(&client, "#gateways").await;
        if text.contains("gw-1") && text.contains("online") {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the gateway never showed: {text}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let mark = client
        .execute("return window.posternMark || 'gone';", vec![])
        .await
        .unwrap();
    assert_eq!(mark, json!("set"), "the page was not reloaded");
    println!(
        "gateway shown online {:?} after it connected",
        started.elapsed()
    );
    shoot(&client, "site-with-gateway").await;

    // A resource, a group with a member, a policy.
    client
        .goto(&format!("{base}/acme/resources"))
        .await
        .unwrap();
    type_into(&client, "#r-name", "Web").await;
    type_into(&client, "#r-address", "10.0.1.0/24").await;
    type_into(&client, "#r-filters", "tcp/80, icmp").await;
    click(&client, "form[action$='/resources'] button[type=submit]").await;
    wait_heading(&client, "Resources").await;
    assert!(client.source().await.unwrap().contains("tcp/80, icmp"));
    shoot(&client, "resources").await;
    let (_, robot) = portal
        .api(
            reqwest::Method::POST,
            "/actors",
            Some(json!({"name": "CI robot", "role": "service_account"})),
        )
        .await;
    let robot = robot["id"].as_str().unwrap().to_string();
    client.goto(&format!("{base}/acme/groups")).await.unwrap();
    type_into(&client, "#g-name", "Robots").await;
    click(&client, "form[action$='/groups'] button[type=submit]").await;
    wait_heading(&client, "Robots").await;
    click(&client, &format!("input[value='{robot}']")).await;
    click(&client, "form[action$='/members'] button[type=submit]").await;
    wait_heading(&client, "Robots").await;
    shoot(&client, "group").await;
    client.goto(&format!("{base}/acme/policies")).await.unwrap();
    let (_, groups) = portal.api(reqwest::Method::GET, "/groups", None).await;
    let group = groups["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|g| g["name"] == "Robots")
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    click(&client, &format!("#p-group option[value='{group}']")).await;
    click(&client, "form[action$='/policies'] button[type=submit]").await;
    wait_heading(&client, "Policies").await;
    shoot(&client, "policies").await;

    // The robot's client gets access through the gateway.
    let (_, resources) = portal.api(reqwest::Method::GET, "/resources", None).await;
    let resource = resources["data"][0]["id"].as_str().unwrap().to_string();
    let (_, token) = portal
        .api(
            reqwest::Method::POST,
            &format!("/actors/{robot}/tokens"),
            None,
        )
        .await;
    let mut laptop = Peer::connect(
        addr,
        "/v1/client",
        token["token"].as_str().unwrap(),
        "laptop",
        &key(2),
    )
    .await
    .unwrap();
    assert_eq!(laptop.next().await["type"], "init");
    laptop
        .send(json!({"type": "request_access", "ref": "a", "resource_id": resource}))
        .await;
    let authorize = gateway.next_of("authorize").await;
    gateway
        .send(json!({"type": "authorized", "ref": authorize["ref"]}))
        .await;
    assert_eq!(laptop.next_of("access_granted").await["ref"], "a");

    // The admin deletes the policy in the browser (told first who loses
    // what): revoked within a second of the click.
    click(&client, "a[href$='/delete']").await;
    wait_heading(&client, "Delete a policy").await;
    shoot(&client, "delete-a-policy").await;
    let started = Instant::now();
    click(&client, "form[action$='/delete'] button.danger").await;
    assert_eq!(
        gateway.next_of("revoke").await["resource_id"],
        json!(resource)
    );
    let elapsed = started.elapsed();
    assert!(elapsed < Duration::from_secs(1), "{elapsed:?}");
    println!("policy deleted in chromium to the gateway's revoke: {elapsed:?}");
    wait_heading(&client, "Policies").await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while !client.source().await.unwrap().contains("No policies") {
        assert!(Instant::now() < deadline, "the policy is still listed");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    client.close().await.unwrap();
}
