#![allow(clippy::unwrap_used)] // a test file: unwrap is the assertion
//! The admin console drives real daemons (issue 17): Debian's `chromium`,
//! through `chromium-driver` (WebDriver, the `fantoccini` crate), runs on an
//! admin's host on the lab's internet segment and talks to the demo's
//! portal over HTTPS. The admin signs in with an email code (the portal is
//! in development mail mode: the code is read from its log), adds a site,
//! takes the gateway command and token from the deploy page and starts a
//! real `postern gateway` with them in the office; the site's page, open
//! all along, shows it online without a reload. The admin adds a resource
//! (the office web server), a group with a service account and a policy; a
//! real `postern client` at home with that account's token then reaches the
//! web server through the tunnel (the console lists it online), and loses
//! it within a second of the admin deleting the policy in the browser; the
//! daemons log no WARN or ERROR. A screenshot of each page is written
//! under the test's target directory (`console-lab-screenshots`).
//!
//! Chromium, chromedriver and the WebDriver connection all live in the
//! admin's network namespace: nothing touches this machine's network.
//! Chromium trusts the portal's certificate by pinning its public key
//! (`--ignore-certificate-errors-spki-list` with the SHA-256 of the
//! portal's SubjectPublicKeyInfo), not by ignoring certificate errors: a
//! certificate with another key gets chromium's error page. Needs root
//! (the lab) and `chromium` and `chromium-driver` (the CI installs them);
//! fails loudly without them.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use base64::Engine as _;
use fantoccini::{Client, ClientBuilder, Locator};
use hyper_util::rt::TokioIo;
use postern_lab::demo::{Demo, DemoOptions, PORTAL};
use postern_lab::{Host, LabProcess, NatKind};
use serde_json::json;

/// chromedriver's port on the admin host's own loopback.
const DRIVER_PORT: u16 = 9515;
const PORTAL_URL: &str = "https://198.18.0.2:8080";

/// Chromium in `host`: chromedriver started there (it starts chromium,
/// which inherits the namespace), and a WebDriver session whose
/// connections are made inside the namespace too. The lab stops both with
/// the host (its processes, then the namespace).
async fn browser(host: &Host, spki: &[String], profile: &Path) -> (LabProcess, Client) {
    for tool in ["/usr/bin/chromium", "/usr/bin/chromedriver"] {
        assert!(
            Path::new(tool).exists(),
            "this test needs {tool}: apt install chromium chromium-driver (the CI does)"
        );
    }
    let mut command = host.command("/usr/bin/chromedriver");
    command.arg(format!("--port={DRIVER_PORT}"));
    let driver = host.spawn(command).unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while host
        .enter(|| std::net::TcpStream::connect(("127.0.0.1", DRIVER_PORT)))
        .unwrap()
        .is_err()
    {
        assert!(
            Instant::now() < deadline,
            "chromedriver did not start: {}",
            driver.stderr()
        );
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
                "--no-proxy-server",
                format!("--ignore-certificate-errors-spki-list={}", spki.join(",")),
                format!("--user-data-dir={}", profile.display()),
            ],
        }),
    );
    // Every connection to chromedriver is opened inside the admin's host.
    let inside = host.clone();
    // (A loopback connect is immediate: made at once, a ready future.)
    let connector = tower::service_fn(move |_: http::Uri| {
        let connect = || -> std::io::Result<_> {
            let stream = inside
                .enter(|| std::net::TcpStream::connect(("127.0.0.1", DRIVER_PORT)))
                .map_err(std::io::Error::other)??;
            stream.set_nonblocking(true)?;
            Ok(TokioIo::new(tokio::net::TcpStream::from_std(stream)?))
        };
        std::future::ready(connect())
    });
    let client = ClientBuilder::new(connector)
        .capabilities(capabilities)
        .connect(&format!("http://127.0.0.1:{DRIVER_PORT}"))
        .await
        .unwrap_or_else(|e| panic!("no chromium session: {e}\n{}", driver.stderr()));
    (driver, client)
}

/// Where the screenshots go.
fn shots() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("console-lab-screenshots");
    std::fs::create_dir_all(&dir).unwrap();
    dir
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

/// The sign-in code the portal logged for the latest sign-in.
async fn code_in_log(portal: &LabProcess) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let log = portal.stderr();
        let code = log
            .lines()
            .rev()
            .filter(|line| line.contains("development mail mode: sign-in code"))
            .find_map(|line| {
                let at = line.find(" code=")? + " code=".len();
                let code: String = line[at..]
                    .trim_start_matches('"')
                    .chars()
                    .take_while(char::is_ascii_alphanumeric)
                    .collect();
                (!code.is_empty()).then_some(code)
            });
        if let Some(code) = code {
            return code;
        }
        assert!(Instant::now() < deadline, "no sign-in code logged:\n{log}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A file with `contents`, mode 0600 (a token).
fn write_secret(path: &Path, contents: &str) {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .unwrap();
    file.write_all(contents.as_bytes()).unwrap();
}

fn base64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

fn id_of(body: &str, field: &str, value: &str) -> String {
    let list: serde_json::Value = serde_json::from_str(body).unwrap();
    let items = list["data"].as_array().or(list.as_array()).unwrap();
    items
        .iter()
        .find(|item| item[field] == value)
        .unwrap_or_else(|| panic!("no {field} {value:?} in {body}"))["id"]
        .as_str()
        .unwrap()
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_deploys_a_real_gateway_and_revokes_a_real_client() {
    let test_started = Instant::now();
    let mut demo = Demo::start_unconfigured(DemoOptions {
        postern: env!("CARGO_BIN_EXE_postern").into(),
        home_nat: NatKind::Cone,
        office_nat: NatKind::Cone,
        gateways: 1,
        client_in_office: false,
        ipv6: Default::default(),
    })
    .unwrap_or_else(|e| panic!("the lab did not start: {e}"));
    assert_eq!(format!("https://{PORTAL}"), PORTAL_URL);

    // The admin's host: on the internet segment, like the portal.
    let admin = demo.net.lab.add_host("admin").unwrap();
    demo.net
        .lab
        .connect(&admin, &demo.net.internet, &["198.18.0.50/24"])
        .unwrap();
    // The portal serves its certificate alone (no chain): its key is what
    // chromium sees and what is pinned (the CA's key would match nothing).
    let spki = vec![base64(&demo.pki.portal.spki_sha256().unwrap())];
    let profile = demo.data_dir().join("chromium-profile");
    let (_driver, client) = browser(&admin, &spki, &profile).await;

    // Sign in with an email code.
    client
        .goto(&format!("{PORTAL_URL}/demo/sign_in"))
        .await
        .unwrap();
    // (A certificate chromium does not trust shows its error page instead.)
    wait_heading(&client, "Sign in").await;
    type_into(&client, "input[name=email]", "admin@demo.test").await;
    click(
        &client,
        "form[action$='/sign_in/email'] button[type=submit]",
    )
    .await;
    let code = code_in_log(&demo.processes[0]).await;
    type_into(&client, "input[name=code]", &code).await;
    click(&client, "form[action$='/verify'] button[type=submit]").await;
    wait_heading(&client, "Overview").await;
    shoot(&client, "overview").await;

    // A site.
    client
        .find(Locator::LinkText("Sites"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    wait_heading(&client, "Sites").await;
    shoot(&client, "sites").await;
    type_into(&client, "#site-name", "Office").await;
    click(&client, "form[action$='/sites'] button[type=submit]").await;
    wait_heading(&client, "Office").await;
    let site_url = client.current_url().await.unwrap().to_string();
    shoot(&client, "site").await;

    // Deploy a gateway: the token and the command the page shows.
    click(&client, "form[action$='/gateway_token'] button").await;
    wait_heading(&client, "Deploy a gateway").await;
    shoot(&client, "deploy-a-gateway").await;
    let token = text_of(&client, "#gateway-token").await.trim().to_string();
    let run_it = client
        .find(Locator::XPath(
            "//pre[contains(., 'postern gateway --portal')]",
        ))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let command_line = run_it
        .lines()
        .find(|line| line.starts_with("postern gateway"))
        .unwrap_or_else(|| panic!("no gateway command in {run_it:?}"))
        .to_string();
    println!("the console's gateway command: {command_line}");
    assert!(
        run_it.contains(&format!(
            "printf '%s' '{token}' > /etc/postern/gateway.token"
        )),
        "the command does not write the token shown: {run_it}"
    );
    // The command as shown, with the token file in the lab's data rather
    // than /etc/postern, and what the lab needs: the lab CA (the portal's
    // certificate is not from a public CA), a state directory of the lab's
    // own (not this machine's /var/lib/postern) and a name to look for.
    let token_file = demo.data_dir().join("console-gateway.token");
    write_secret(&token_file, &token);
    let mut args: Vec<String> = command_line
        .split_whitespace()
        .skip(1)
        .map(str::to_string)
        .collect();
    assert_eq!(
        args,
        [
            "gateway",
            "--portal",
            PORTAL_URL,
            "--token-file",
            "/etc/postern/gateway.token"
        ]
    );
    args[4] = token_file.display().to_string();
    args.extend([
        demo.pki.ca_arg(),
        "--state-dir".into(),
        demo.data_dir().join("gateway-1").display().to_string(),
        "--name".into(),
        "gateway-1".into(),
    ]);

    // The site's page, open before the gateway starts, shows it online
    // without a reload (its live panel polls).
    client.goto(&site_url).await.unwrap();
    wait_heading(&client, "Office").await;
    client
        .execute("window.posternMark = 'set'; return 1;", vec![])
        .await
        .unwrap();
    assert!(
        text_of(&client, "#gateways")
            .await
            .contains("No gateway has connected")
    );
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let gateway_host = demo.net.gateways[0].clone();
    let gateway = demo.spawn_postern(&gateway_host, &args).unwrap();
    demo.gateway_processes.push(Some(gateway));
    let started = Instant::now();
    loop {
        let text = text_of(&client, "#gateways").await;
        if text.contains("gateway-1") && text.contains("online") {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "the gateway never showed: {text}\n{}",
            demo.logs()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let mark = client
        .execute("return window.posternMark || 'gone';", vec![])
        .await
        .unwrap();
    assert_eq!(mark, json!("set"), "the page was reloaded");
    println!(
        "the real gateway shown online {:?} after it was started",
        started.elapsed()
    );
    shoot(&client, "site-with-gateway").await;

    // The office web server as a resource.
    client
        .goto(&format!("{PORTAL_URL}/demo/resources"))
        .await
        .unwrap();
    type_into(&client, "#r-name", "Office web server").await;
    type_into(&client, "#r-address", "10.0.1.80/32").await;
    type_into(&client, "#r-filters", "tcp/80, icmp").await;
    click(&client, "form[action$='/resources'] button[type=submit]").await;
    wait_heading(&client, "Resources").await;
    let page = client.source().await.unwrap();
    assert!(
        !page.contains("No resources yet") && page.contains("tcp/80, icmp"),
        "the resource was not added: {}",
        text_of(&client, "main").await
    );
    shoot(&client, "resources").await;

    // The laptop's service account (API: its token is what the client
    // runs with), put in a group in the browser.
    let actor = demo
        .api_ok(
            "POST",
            "/api/v1/actors",
            Some(r#"{"name":"Laptop","role":"service_account"}"#),
        )
        .unwrap();
    let actor: serde_json::Value = serde_json::from_str(&actor).unwrap();
    let actor_id = actor["id"].as_str().unwrap().to_string();
    client
        .goto(&format!("{PORTAL_URL}/demo/groups"))
        .await
        .unwrap();
    type_into(&client, "#g-name", "Laptops").await;
    click(&client, "form[action$='/groups'] button[type=submit]").await;
    wait_heading(&client, "Laptops").await;
    click(&client, &format!("input[value='{actor_id}']")).await;
    click(&client, "form[action$='/members'] button[type=submit]").await;
    wait_heading(&client, "Laptops").await;
    shoot(&client, "group").await;

    // The policy: the group reaches the web server.
    client
        .goto(&format!("{PORTAL_URL}/demo/policies"))
        .await
        .unwrap();
    let groups = demo.api_ok("GET", "/api/v1/groups", None).unwrap();
    let group_id = id_of(&groups, "name", "Laptops");
    click(&client, &format!("#p-group option[value='{group_id}']")).await;
    click(&client, "form[action$='/policies'] button[type=submit]").await;
    wait_heading(&client, "Policies").await;
    assert!(
        !client.source().await.unwrap().contains("No policies"),
        "the policy was not added: {}",
        text_of(&client, "main").await
    );
    shoot(&client, "policies").await;

    // The real client at home, with the account's token, reaches the web
    // server through the tunnel.
    let resources = demo.api_ok("GET", "/api/v1/resources", None).unwrap();
    demo.setup.resource_id = id_of(&resources, "name", "Office web server");
    let token = demo
        .api_ok(
            "POST",
            &format!("/api/v1/actors/{actor_id}/tokens"),
            Some("{}"),
        )
        .unwrap();
    let token: serde_json::Value = serde_json::from_str(&token).unwrap();
    demo.setup.client_token = token["token"].as_str().unwrap().to_string();
    let client_started = Instant::now();
    demo.start_client(&[])
        .unwrap_or_else(|e| panic!("{e}\n{}", demo.logs()));
    let took = demo
        .download(64 * 1024, Duration::from_secs(10))
        .unwrap_or_else(|e| {
            panic!(
                "the client does not reach the web server: {e}\n{}",
                demo.logs()
            )
        });
    println!(
        "the client reached the web server {:?} after it started (64 KiB in {took:?}, path {})",
        client_started.elapsed(),
        demo.path()
    );
    demo.connect(80, Duration::from_secs(2))
        .unwrap_or_else(|e| panic!("tcp/80 through the tunnel: {e}\n{}", demo.logs()));

    // The console lists the real client.
    client
        .goto(&format!("{PORTAL_URL}/demo/clients"))
        .await
        .unwrap();
    wait_heading(&client, "Clients").await;
    let clients = text_of(&client, "main").await;
    assert!(
        clients.contains("laptop"),
        "the client is not listed: {clients}"
    );
    shoot(&client, "clients").await;

    // The admin deletes the policy in the browser (told first who loses
    // what): the client loses the web server within a second of the click.
    client
        .goto(&format!("{PORTAL_URL}/demo/policies"))
        .await
        .unwrap();
    wait_heading(&client, "Policies").await;
    click(&client, "a[href$='/delete']").await;
    wait_heading(&client, "Delete a policy").await;
    shoot(&client, "delete-a-policy").await;
    let clicked = Instant::now();
    click(&client, "form[action$='/delete'] button.danger").await;
    let click_took = clicked.elapsed();
    let blocked = loop {
        // Once revoked, the SYN leaves by the client's default route and
        // dies unanswered: a short timeout keeps the measure close. A slow
        // connect that only looked blocked is caught by the longer retry.
        if demo.connect(80, Duration::from_millis(50)).is_err() {
            let at = clicked.elapsed();
            if demo.connect(80, Duration::from_secs(1)).is_err() {
                break at;
            }
        }
        assert!(
            clicked.elapsed() < Duration::from_secs(5),
            "still reachable 5 s after the policy was deleted\n{}",
            demo.logs()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    println!(
        "policy deleted in chromium (the click took {click_took:?}): the client lost tcp/80 {blocked:?} after the click"
    );
    assert!(blocked < Duration::from_secs(1), "{blocked:?}");
    wait_heading(&client, "Policies").await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while !client.source().await.unwrap().contains("No policies") {
        assert!(Instant::now() < deadline, "the policy is still listed");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    shoot(&client, "policies-after-delete").await;
    // And it stays lost.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(
        demo.connect(80, Duration::from_secs(1)).is_err(),
        "the web server is reachable again"
    );
    client.close().await.unwrap();
    let problems = demo.problems();
    assert!(
        problems.is_empty(),
        "WARN/ERROR lines in the daemons' logs:\n{}",
        problems.join("\n")
    );
    println!("the test took {:?}", test_started.elapsed());
}
