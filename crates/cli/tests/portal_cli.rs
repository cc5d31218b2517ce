#![allow(clippy::unwrap_used)] // a test file: unwrap is the assertion
//! `postern portal init`, `relay-token` and `postern portal` as a user runs
//! them: real processes, a real SQLite file, HTTP on loopback.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        let dir = std::env::temp_dir().join(format!("postern-cli-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        TempDir(dir)
    }

    fn url(&self) -> String {
        format!("sqlite://{}/data/portal.db", self.0.display())
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn postern(args: &[&str]) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_postern"));
    command.args(args);
    for (key, _) in std::env::vars() {
        if key.starts_with("POSTERN_") {
            command.env_remove(key);
        }
    }
    command.output().unwrap()
}

/// `postern portal init` of account acme on `url`.
fn init_acme(url: &str) -> Output {
    postern(&[
        "portal",
        "init",
        "--database",
        url,
        "--account",
        "acme",
        "--admin-email",
        "admin@acme.test",
    ])
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn init_prints_one_token_and_refuses_a_second_run() {
    let dir = TempDir::new("init");
    let url = dir.url();
    let output = init_acme(&url);
    assert_eq!(output.status.code(), Some(0), "{}", text(&output.stderr));
    let stdout = text(&output.stdout);
    assert_eq!(
        stdout.lines().count(),
        1,
        "exactly the token on stdout: {stdout:?}"
    );
    assert!(stdout.trim().len() > 40);
    assert!(
        dir.0.join("data/portal.db").is_file(),
        "the database file and its directory are created"
    );

    let again = init_acme(&url);
    assert_eq!(again.status.code(), Some(1));
    let stderr = text(&again.stderr);
    assert_eq!(stderr.trim_end().lines().count(), 1, "{stderr:?}");
    assert!(stderr.contains("already exists"), "{stderr}");

    for (args, needle) in [
        (
            vec!["--account", "Bad Slug", "--admin-email", "a@acme.test"],
            "invalid account slug",
        ),
        (
            vec!["--account", "beta", "--admin-email", "not-an-email"],
            "invalid admin email",
        ),
    ] {
        let mut full = vec!["portal", "init", "--database", &url];
        full.extend(args);
        let output = postern(&full);
        assert_eq!(output.status.code(), Some(1));
        assert!(
            text(&output.stderr).contains(needle),
            "{}",
            text(&output.stderr)
        );
    }
    let bad_url = postern(&[
        "portal",
        "init",
        "--database",
        "mysql://x",
        "--account",
        "acme",
        "--admin-email",
        "a@acme.test",
    ]);
    assert_eq!(bad_url.status.code(), Some(1));
    assert!(
        text(&bad_url.stderr).contains("unsupported database URL"),
        "{}",
        text(&bad_url.stderr)
    );

    let no_geoip = postern(&[
        "portal",
        "--database",
        &url,
        "--listen",
        "127.0.0.1:0",
        "--geoip-db",
        "/nonexistent/country.mmdb",
    ]);
    assert_eq!(no_geoip.status.code(), Some(1));
    let stderr = text(&no_geoip.stderr);
    assert!(
        stderr.contains("cannot read the GeoIP database /nonexistent/country.mmdb"),
        "{stderr}"
    );
    assert_eq!(
        stderr
            .lines()
            .filter(|l| l.starts_with("postern portal:"))
            .count(),
        1,
        "{stderr}"
    );

    let relay = postern(&["portal", "relay-token", "--database", &url]);
    assert_eq!(relay.status.code(), Some(0), "{}", text(&relay.stderr));
    assert_eq!(text(&relay.stdout).lines().count(), 1);
}

/// One HTTP/1.1 request on a fresh connection; returns (status, body).
fn http(port: u16, path: &str, token: Option<&str>) -> (u16, String) {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: localhost\r\n{auth}Connection: close\r\n\r\n"
    )
    .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let status = response.split(' ').nth(1).unwrap().parse().unwrap();
    let body = response.split("\r\n\r\n").nth(1).unwrap_or("").to_string();
    (status, body)
}

#[test]
fn the_portal_serves_the_api_and_stops_on_sigterm() {
    let dir = TempDir::new("serve");
    let url = dir.url();
    let output = init_acme(&url);
    let token = text(&output.stdout).trim().to_string();
    let (mut child, port) = start_portal(&url, Stdio::piped());
    assert_eq!(http(port, "/healthz", None).0, 200);
    assert_eq!(http(port, "/readyz", None).0, 200);
    assert_eq!(http(port, "/api/v1/sites", None).0, 401);
    let (status, body) = http(port, "/api/v1/sites", Some(&token));
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("\"data\""), "{body}");
    Command::new("kill")
        .arg(child.id().to_string())
        .status()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "the portal did not stop on SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    assert!(status.success(), "{status}: {stderr}");
    assert!(
        !stderr.contains("ERROR") && !stderr.contains("WARN"),
        "{stderr}"
    );
    assert!(!stderr.contains(&token), "the token must not be logged");
}

/// A test CA and the certificates it signs for `portal.test`.
struct Ca(rcgen::CertifiedIssuer<'static, rcgen::KeyPair>);

impl Ca {
    fn new() -> Ca {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "Test CA");
        let key = rcgen::KeyPair::generate().unwrap();
        Ca(rcgen::CertifiedIssuer::self_signed(params, key).unwrap())
    }

    /// (certificate PEM, key PEM, certificate DER) for `portal.test`.
    fn leaf(&self, cn: &str) -> (String, String, Vec<u8>) {
        let mut params = rcgen::CertificateParams::new(vec!["portal.test".to_string()]).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, cn);
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.0).unwrap();
        (cert.pem(), key.serialize_pem(), cert.der().to_vec())
    }

    fn client(&self) -> std::sync::Arc<rustls::ClientConfig> {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.0.der().clone()).unwrap();
        let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
        std::sync::Arc::new(
            rustls::ClientConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_root_certificates(roots)
                .with_no_client_auth(),
        )
    }
}

/// A kept-alive HTTPS connection to the portal at `port` as `portal.test`.
struct Https {
    tls: rustls::StreamOwned<rustls::ClientConnection, TcpStream>,
}

impl Https {
    fn connect(port: u16, ca: &Ca) -> Https {
        let tcp = TcpStream::connect(("127.0.0.1", port)).unwrap();
        tcp.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let name = rustls::pki_types::ServerName::try_from("portal.test").unwrap();
        let connection = rustls::ClientConnection::new(ca.client(), name).unwrap();
        let mut tls = rustls::StreamOwned::new(connection, tcp);
        while tls.conn.is_handshaking() {
            tls.conn.complete_io(&mut tls.sock).unwrap();
        }
        Https { tls }
    }

    /// The leaf certificate the portal presented.
    fn leaf(&self) -> Vec<u8> {
        self.tls.conn.peer_certificates().unwrap()[0].to_vec()
    }

    /// GET /healthz on this connection, kept open: the body.
    fn health(&mut self) -> String {
        write!(
            self.tls,
            "GET /healthz HTTP/1.1\r\nHost: portal.test\r\n\r\n"
        )
        .unwrap();
        // The answer is small: headers, then "ok\n" (Content-Length 3).
        let mut response = Vec::new();
        let mut byte = [0u8; 1];
        while !response.ends_with(b"\r\n\r\nok\n") {
            let read = self.tls.read(&mut byte).unwrap();
            assert_eq!(read, 1, "closed after {:?}", text(&response));
            response.push(byte[0]);
        }
        let response = text(&response);
        assert!(response.starts_with("HTTP/1.1 200 "), "{response}");
        "ok\n".to_string()
    }
}

#[test]
fn the_portal_serves_https_and_reloads_its_certificate_on_sighup() {
    let dir = TempDir::new("tls");
    let url = dir.url();
    let output = init_acme(&url);
    assert_eq!(output.status.code(), Some(0), "{}", text(&output.stderr));
    let ca = Ca::new();
    let (cert1, key1, der1) = ca.leaf("portal-1");
    let (cert2, key2, der2) = ca.leaf("portal-2");
    let cert = dir.0.join("cert.pem");
    let key = dir.0.join("key.pem");
    std::fs::write(&cert, &cert1).unwrap();
    std::fs::write(&key, &key1).unwrap();

    // Errors at start name the file, in one line.
    let missing = dir.0.join("missing.pem");
    let refused = postern(&[
        "portal",
        "--database",
        &url,
        "--listen",
        "127.0.0.1:0",
        "--tls-cert",
        missing.to_str().unwrap(),
        "--tls-key",
        key.to_str().unwrap(),
    ]);
    assert_eq!(refused.status.code(), Some(1));
    let stderr = text(&refused.stderr);
    let line = stderr
        .lines()
        .find(|l| l.starts_with("postern portal:"))
        .unwrap_or_else(|| panic!("{stderr}"));
    assert!(
        line.contains(&format!(
            "cannot read the TLS certificate file {}",
            missing.display()
        )),
        "{stderr}"
    );
    assert_eq!(
        stderr.lines().filter(|l| l.starts_with("postern")).count(),
        1,
        "{stderr}"
    );
    let alone = postern(&["portal", "--tls-cert", cert.to_str().unwrap()]);
    assert_eq!(alone.status.code(), Some(1));
    assert!(
        text(&alone.stderr).contains("--tls-key"),
        "{}",
        text(&alone.stderr)
    );

    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut child = Command::new(env!("CARGO_BIN_EXE_postern"))
        .args(["portal", "--database", &url, "--listen"])
        .arg(format!("127.0.0.1:{port}"))
        .arg("--tls-cert")
        .arg(&cert)
        .arg("--tls-key")
        .arg(&key)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // The log, line by line, as it comes.
    let (lines, log) = std::sync::mpsc::channel::<String>();
    let stderr = child.stderr.take().unwrap();
    std::thread::spawn(move || {
        for line in std::io::BufRead::lines(std::io::BufReader::new(stderr)) {
            let Ok(line) = line else { break };
            if lines.send(line).is_err() {
                break;
            }
        }
    });
    let mut seen = Vec::new();
    // The next log line with `needle`.
    let mut wait_for_log = |needle: &str| -> String {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match log.recv_timeout(left) {
                Ok(line) if line.contains(needle) => return line,
                Ok(line) => seen.push(line),
                Err(_) => panic!("no {needle:?} in the log: {seen:#?}"),
            }
        }
    };
    wait_for_log("portal serving");
    let hangup = |child: &std::process::Child| {
        let status = Command::new("kill")
            .args(["-HUP", &child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    };

    let mut open = Https::connect(port, &ca);
    assert_eq!(open.leaf(), der1);
    assert_eq!(open.health(), "ok\n");

    std::fs::write(&cert, &cert2).unwrap();
    std::fs::write(&key, &key2).unwrap();
    hangup(&child);
    wait_for_log("reloaded the TLS certificate");
    assert_eq!(Https::connect(port, &ca).leaf(), der2);
    assert_eq!(open.health(), "ok\n", "the open connection goes on");

    std::fs::write(&cert, "not a certificate\n").unwrap();
    hangup(&child);
    let kept = wait_for_log("kept the old TLS certificate");
    assert!(kept.contains("ERROR"), "{kept}");
    assert!(kept.contains(&cert.display().to_string()), "{kept}");
    let mut fresh = Https::connect(port, &ca);
    assert_eq!(fresh.leaf(), der2);
    assert_eq!(fresh.health(), "ok\n");
    assert!(
        child.try_wait().unwrap().is_none(),
        "SIGHUP must not stop it"
    );
    drop((open, fresh));

    Command::new("kill")
        .arg(child.id().to_string())
        .status()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "the portal did not stop");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "{status}");
}

/// One HTTP/1.1 POST of `json` on a fresh connection; the status, or None
/// when the connection broke (the portal died under it).
fn post(port: u16, path: &str, token: &str, json: &str) -> Option<u16> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        stream,
        "POST {path} HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {token}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{json}",
        json.len()
    )
    .ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    response.split(' ').nth(1)?.parse().ok()
}

/// `postern portal` on `url` at a free port, once it listens.
fn start_portal(url: &str, stderr: Stdio) -> (std::process::Child, u16) {
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut child = Command::new(env!("CARGO_BIN_EXE_postern"))
        .args(["portal", "--database", url, "--listen"])
        .arg(format!("127.0.0.1:{port}"))
        .stdout(Stdio::null())
        .stderr(stderr)
        .spawn()
        .unwrap();
    let started = Instant::now();
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the portal did not listen"
        );
        if let Some(status) = child.try_wait().unwrap() {
            panic!("the portal exited early: {status}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    (child, port)
}

#[test]
fn kill_9_under_writes_loses_nothing_answered_and_a_live_backup_restores() {
    let dir = TempDir::new("durable");
    let url = dir.url();
    let output = init_acme(&url);
    let token = text(&output.stdout).trim().to_string();
    let (mut portal, port) = start_portal(&url, Stdio::null());

    // A stream of writes; the portal is killed with SIGKILL in the middle.
    let writer = {
        let token = token.clone();
        std::thread::spawn(move || {
            let mut answered = Vec::new();
            for n in 0..10_000 {
                let name = format!("site-{n}");
                match post(
                    port,
                    "/api/v1/sites",
                    &token,
                    &format!("{{\"name\": \"{name}\"}}"),
                ) {
                    Some(201) => answered.push(name),
                    Some(429) => std::thread::sleep(Duration::from_millis(50)),
                    Some(other) => panic!("{name}: HTTP {other}"),
                    None => break,
                }
            }
            answered
        })
    };
    std::thread::sleep(Duration::from_millis(700));
    // A backup taken while the writes go on.
    let backup = dir.0.join("live.backup");
    let made = postern(&[
        "portal",
        "backup",
        "--database",
        &url,
        "--output",
        &backup.display().to_string(),
    ]);
    assert_eq!(made.status.code(), Some(0), "{}", text(&made.stderr));
    std::thread::sleep(Duration::from_millis(300));
    portal.kill().unwrap();
    portal.wait().unwrap();
    let answered = writer.join().unwrap();
    assert!(
        answered.len() > 10,
        "too few writes to mean anything: {}",
        answered.len()
    );

    // Everything answered 201 is there after the restart.
    let (mut portal, port) = start_portal(&url, Stdio::null());
    let (status, body) = http(port, "/api/v1/sites", Some(&token));
    assert_eq!(status, 200, "{body}");
    let listed: serde_json::Value = serde_json::from_str(&body).unwrap();
    let names: std::collections::HashSet<&str> = listed["data"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|site| site["name"].as_str())
        .collect();
    let lost: Vec<&String> = answered
        .iter()
        .filter(|n| !names.contains(n.as_str()))
        .collect();
    println!(
        "{} writes answered 201 before SIGKILL, {} lost",
        answered.len(),
        lost.len()
    );
    assert!(lost.is_empty(), "answered but lost: {lost:?}");
    portal.kill().unwrap();
    portal.wait().unwrap();

    // The live backup restores into a new database, which serves.
    let restored_url = format!("sqlite://{}/restored/portal.db", dir.0.display());
    let restored = postern(&[
        "portal",
        "restore",
        "--database",
        &restored_url,
        "--input",
        &backup.display().to_string(),
    ]);
    assert_eq!(
        restored.status.code(),
        Some(0),
        "{}",
        text(&restored.stderr)
    );
    assert!(
        text(&restored.stderr).contains("restored"),
        "{}",
        text(&restored.stderr)
    );
    // With the original's secret key beside it, as the backup needs.
    std::fs::copy(
        dir.0.join("data/secret.key"),
        dir.0.join("restored/secret.key"),
    )
    .unwrap();
    let (mut portal, port) = start_portal(&restored_url, Stdio::null());
    let (status, _) = http(port, "/api/v1/sites", Some(&token));
    portal.kill().unwrap();
    portal.wait().unwrap();
    assert_eq!(status, 200);
}

/// One request with a JSON body; returns (status, body as JSON).
fn request(
    port: u16,
    method: &str,
    path: &str,
    token: &str,
    json: &serde_json::Value,
) -> (u16, serde_json::Value) {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let body = json.to_string();
    write!(
        stream,
        "{method} /api/v1{path} HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {token}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let status = response.split(' ').nth(1).unwrap().parse().unwrap();
    let body = response.split("\r\n\r\n").nth(1).unwrap_or("");
    (status, serde_json::from_str(body).unwrap_or_default())
}

/// The names of a list's objects, sorted.
fn names(port: u16, token: &str, path: &str) -> Vec<String> {
    let (status, body) = http(port, &format!("/api/v1{path}"), Some(token));
    assert_eq!(status, 200, "{body}");
    let body: serde_json::Value = serde_json::from_str(&body).unwrap();
    let mut names: Vec<String> = body["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|item| item["name"].as_str().unwrap().to_string())
        .collect();
    names.sort();
    names
}

/// `postern admin apply|export` against the portal at `port`.
fn admin(port: u16, token: &str, args: &[&str]) -> Output {
    let portal = format!("http://127.0.0.1:{port}");
    let mut all = vec!["admin"];
    all.extend_from_slice(args);
    all.extend_from_slice(&["--portal", &portal, "--token", token]);
    postern(&all)
}

const DECLARED: &str = "\
sites:
  - name: office
resources:
  - name: web
    type: cidr
    address: 10.0.1.0/24
    site: office
    filters: [{protocol: tcp, ports: \"80,443\"}, {protocol: icmp}]
  - name: db
    type: ip
    address: 10.0.1.5
    site: office
groups:
  - name: engineering
    members: [alice@acme.test, ci-runner]
policies:
  - group: engineering
    resource: web
    conditions: [{property: time, operator: in, values: [\"MTWRF/08:00-18:00/UTC\"]}]
";

#[test]
fn admin_apply_and_export_manage_an_account_from_a_file() {
    let dir = TempDir::new("apply");
    let url = dir.url();
    let token = text(&init_acme(&url).stdout).trim().to_string();
    let (child, port) = start_portal(&url, Stdio::null());
    let _portal = Stopped(child);
    for actor in [
        serde_json::json!({"name": "Alice", "email": "alice@acme.test", "role": "user"}),
        serde_json::json!({"name": "ci-runner", "role": "service_account"}),
    ] {
        assert_eq!(request(port, "POST", "/actors", &token, &actor).0, 201);
    }
    let file = |name: &str, body: &str| {
        let path = dir.0.join(name);
        std::fs::create_dir_all(&dir.0).unwrap();
        std::fs::write(&path, body).unwrap();
        path.to_str().unwrap().to_string()
    };
    let declared = file("acme.yaml", DECLARED);
    let expected_plan = [
        "+ site office",
        "+ resource web",
        "+ resource db",
        "+ group engineering",
        "~ group engineering (members)",
        "+ policy engineering -> web",
    ];

    // A dry run prints the plan and changes nothing.
    let dry = admin(port, &token, &["apply", &declared, "--dry-run"]);
    assert_eq!(dry.status.code(), Some(0), "{}", text(&dry.stderr));
    let printed = text(&dry.stdout);
    assert_eq!(
        printed
            .lines()
            .take(expected_plan.len())
            .collect::<Vec<_>>(),
        expected_plan,
        "{printed}"
    );
    assert!(
        printed.contains("dry run: 5 to create, 1 to update, 0 to delete"),
        "{printed}"
    );
    assert!(names(port, &token, "/sites").is_empty());

    // Create from empty.
    let applied = admin(port, &token, &["apply", &declared]);
    assert_eq!(applied.status.code(), Some(0), "{}", text(&applied.stderr));
    let printed = text(&applied.stdout);
    assert!(printed.starts_with(&expected_plan.join("\n")), "{printed}");
    assert!(
        printed.contains("applied: 5 create, 1 update, 0 delete"),
        "{printed}"
    );
    assert_eq!(names(port, &token, "/sites"), ["office"]);
    assert_eq!(names(port, &token, "/resources"), ["db", "web"]);
    let (_, all) = http(port, "/api/v1/resources", Some(&token));
    let all: serde_json::Value = serde_json::from_str(&all).unwrap();
    let web = all["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["name"] == "web")
        .unwrap();
    assert_eq!(
        web["filters"],
        serde_json::json!([{"protocol": "tcp", "ports": "80"}, {"protocol": "tcp", "ports": "443"},
                           {"protocol": "icmp"}])
    );
    let (_, audit) = http(port, "/api/v1/audit_log", Some(&token));
    assert!(
        audit.contains("\"policy.create\""),
        "the changes are audited"
    );

    // Idempotent: the same file again changes nothing.
    let again = admin(port, &token, &["apply", &declared]);
    assert_eq!(
        text(&again.stdout).trim(),
        format!("no changes: the account matches {declared}")
    );

    // Build more through the API, then export: applying the export changes
    // nothing.
    let (_, lab) = request(
        port,
        "POST",
        "/sites",
        &token,
        &serde_json::json!({"name": "lab"}),
    );
    let (status, _) = request(
        port,
        "POST",
        "/resources",
        &token,
        &serde_json::json!({"name": "internet", "type": "internet", "site_id": lab["id"],
                            "exclusions": ["198.51.100.0/24"], "address_description": "all of it"}),
    );
    assert_eq!(status, 201);
    let (_, group) = request(
        port,
        "POST",
        "/groups",
        &token,
        &serde_json::json!({"name": "ops"}),
    );
    let (_, everyone) = http(port, "/api/v1/groups", Some(&token));
    assert!(everyone.contains("Everyone"));
    let (_, resources) = http(port, "/api/v1/resources", Some(&token));
    let resources: serde_json::Value = serde_json::from_str(&resources).unwrap();
    let db_id = resources["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["name"] == "db")
        .unwrap()["id"]
        .clone();
    let (status, _) = request(
        port,
        "POST",
        "/policies",
        &token,
        &serde_json::json!({"group_id": group["id"], "resource_id": db_id, "disabled": true,
            "description": "ops reach the database",
            "conditions": [{"property": "client_verified", "values": ["true"]}]}),
    );
    assert_eq!(status, 201);
    let exported = admin(port, &token, &["export"]);
    assert_eq!(
        exported.status.code(),
        Some(0),
        "{}",
        text(&exported.stderr)
    );
    let export_text = text(&exported.stdout);
    assert!(export_text.contains("name: \"internet\""), "{export_text}");
    let exported_file = file("exported.yaml", &export_text);
    let round = admin(port, &token, &["apply", &exported_file, "--prune"]);
    assert_eq!(
        text(&round.stdout).trim(),
        format!("no changes: the account matches {exported_file}"),
        "{}",
        text(&round.stderr)
    );

    // A broken reference changes nothing, and names the file's line.
    let broken = file(
        "broken.yaml",
        &format!("{DECLARED}  - group: ghosts\n    resource: web\n").replace(
            "sites:\n  - name: office\n",
            "sites:\n  - name: office\n  - name: branch\n",
        ),
    );
    let refused = admin(port, &token, &["apply", &broken]);
    assert_eq!(refused.status.code(), Some(1));
    let stderr = text(&refused.stderr);
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains(&format!("{broken}:21: policies[1].group: no such group")),
        "{stderr}"
    );
    assert!(stderr.contains("nothing was changed"), "{stderr}");
    assert_eq!(names(port, &token, "/sites"), ["lab", "office"]);

    // A section left out is no wish to delete everything of its kind.
    let partial = file("partial.yaml", "sites:\n  - name: office\n");
    let refused = admin(port, &token, &["apply", &partial, "--prune"]);
    assert_eq!(refused.status.code(), Some(1));
    assert!(
        text(&refused.stderr).contains("--prune with no `resources:` section"),
        "{}",
        text(&refused.stderr)
    );
    assert_eq!(names(port, &token, "/resources"), ["db", "internet", "web"]);

    // Rename by way of prune: the new name is created, the old one (and its
    // policy) deleted, and what the file does not name goes too.
    let renamed = file(
        "renamed.yaml",
        &DECLARED
            .replace("name: web", "name: intranet")
            .replace("resource: web", "resource: intranet"),
    );
    let pruned = admin(port, &token, &["apply", &renamed, "--prune"]);
    assert_eq!(pruned.status.code(), Some(0), "{}", text(&pruned.stderr));
    let printed = text(&pruned.stdout);
    for line in [
        "+ resource intranet",
        "+ policy engineering -> intranet",
        "- policy engineering -> web",
        "- resource web",
        "- resource internet",
        "- group ops",
        "- site lab",
    ] {
        assert!(
            printed.lines().any(|l| l == line),
            "{line:?} missing:\n{printed}"
        );
    }
    assert_eq!(names(port, &token, "/resources"), ["db", "intranet"]);
    assert_eq!(names(port, &token, "/sites"), ["office"]);
    let groups = names(port, &token, "/groups");
    assert!(groups.contains(&"Everyone".to_string()) && !groups.contains(&"ops".to_string()));

    // A read-scoped token exports but may not apply.
    let (_, actors) = http(port, "/api/v1/actors", Some(&token));
    let actors: serde_json::Value = serde_json::from_str(&actors).unwrap();
    let admin_id = actors["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["role"] == "admin")
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let (status, reader) = request(
        port,
        "POST",
        &format!("/actors/{admin_id}/tokens"),
        &token,
        &serde_json::json!({"scopes": ["read"]}),
    );
    assert_eq!(status, 201);
    let reader = reader["token"].as_str().unwrap();
    assert_eq!(admin(port, reader, &["export"]).status.code(), Some(0));
    let refused = admin(port, reader, &["apply", &declared]);
    assert_eq!(refused.status.code(), Some(1));
    assert!(
        text(&refused.stderr).contains("HTTP 403"),
        "{}",
        text(&refused.stderr)
    );
}

/// A portal process stopped when the test ends, passed or failed.
struct Stopped(std::process::Child);

impl Drop for Stopped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
