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

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn init_prints_one_token_and_refuses_a_second_run() {
    let dir = TempDir::new("init");
    let url = dir.url();
    let output = postern(&[
        "portal",
        "init",
        "--database",
        &url,
        "--account",
        "acme",
        "--admin-email",
        "admin@acme.test",
    ]);
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

    let again = postern(&[
        "portal",
        "init",
        "--database",
        &url,
        "--account",
        "acme",
        "--admin-email",
        "admin@acme.test",
    ]);
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
    let output = postern(&[
        "portal",
        "init",
        "--database",
        &url,
        "--account",
        "acme",
        "--admin-email",
        "admin@acme.test",
    ]);
    let token = text(&output.stdout).trim().to_string();
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut child = Command::new(env!("CARGO_BIN_EXE_postern"))
        .args([
            "portal",
            "--database",
            &url,
            "--listen",
            &format!("127.0.0.1:{port}"),
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
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
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(http(port, "/health", None).0, 200);
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
