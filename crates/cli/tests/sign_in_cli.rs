#![allow(clippy::unwrap_used)] // a test file: unwrap is the assertion
//! `postern client sign-in` and `sign-out` as a user runs them: a real
//! portal process in development mail mode (the code is read from its log),
//! the CLI's loopback listener receiving the browser's redirect, the token
//! file, and revocation at sign-out.

use std::io::{BufRead, BufReader};
use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt as _;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A child process whose stderr is collected; killed at drop.
struct Running {
    child: Child,
    stderr: Arc<Mutex<String>>,
}

impl Running {
    fn spawn(args: &[&str]) -> Running {
        let mut command = Command::new(env!("CARGO_BIN_EXE_postern"));
        command.args(args);
        for (key, _) in std::env::vars() {
            if key.starts_with("POSTERN_") {
                command.env_remove(key);
            }
        }
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = Arc::new(Mutex::new(String::new()));
        let sink = stderr.clone();
        let pipe = child.stderr.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                let mut text = sink.lock().unwrap();
                text.push_str(&line);
                text.push('\n');
            }
        });
        Running { child, stderr }
    }

    /// Waits until the log has a line for which `find` returns something.
    fn wait_for<T>(&mut self, what: &str, find: impl Fn(&str) -> Option<T>) -> T {
        let started = Instant::now();
        loop {
            if let Some(found) = self.stderr.lock().unwrap().lines().find_map(&find) {
                return found;
            }
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "no {what} within 20 s; stderr:\n{}",
                self.stderr.lock().unwrap()
            );
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!(
                    "exited ({status}) before {what}:\n{}",
                    self.stderr.lock().unwrap()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn wait_exit(&mut self) -> i32 {
        let started = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status.code().unwrap_or(-1);
            }
            assert!(started.elapsed() < Duration::from_secs(20), "did not exit");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn postern(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_postern"))
        .args(args)
        .env_remove("POSTERN_TOKEN")
        .output()
        .unwrap()
}

/// The query parameter `name` of `url`.
fn param(url: &str, name: &str) -> String {
    url::Url::parse(url)
        .unwrap()
        .query_pairs()
        .find(|(k, _)| k == name)
        .unwrap_or_else(|| panic!("no {name} in {url}"))
        .1
        .into_owned()
}

fn hidden(body: &str, name: &str) -> String {
    let marker = format!("name=\"{name}\" value=\"");
    let start = body
        .find(&marker)
        .unwrap_or_else(|| panic!("no {name} in {body}"))
        + marker.len();
    let end = body[start..].find('"').unwrap();
    body[start..start + end].replace("&amp;", "&")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_signs_in_through_the_browser_and_signs_out() {
    let dir =
        TempDir(std::env::temp_dir().join(format!("postern-signin-cli-{}", std::process::id())));
    let _ = std::fs::remove_dir_all(&dir.0);
    let database = format!("sqlite://{}/data/portal.db", dir.0.display());
    let init = postern(&[
        "portal",
        "init",
        "--database",
        &database,
        "--account",
        "acme",
        "--admin-email",
        "admin@acme.test",
    ]);
    assert_eq!(init.status.code(), Some(0));
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let base = format!("http://127.0.0.1:{port}");
    let mut portal = Running::spawn(&[
        "portal",
        "--database",
        &database,
        "--listen",
        &format!("127.0.0.1:{port}"),
        "--external-url",
        &base,
    ]);
    portal.wait_for("the development mail mode notice", |line| {
        line.contains("development mail mode").then_some(())
    });
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        std::thread::sleep(Duration::from_millis(50));
    }
    let key_file = dir.0.join("data/secret.key");
    let mode = std::fs::metadata(&key_file).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "the generated secret key is private");

    let state_dir = dir.0.join("state");
    let state_arg = state_dir.display().to_string();
    let mut cli = Running::spawn(&[
        "client",
        "sign-in",
        "--portal",
        &base,
        "--account",
        "acme",
        "--no-browser",
        "--state-dir",
        &state_arg,
        "--timeout",
        "60",
    ]);
    let url = cli.wait_for("the sign-in URL", |line| {
        line.trim()
            .starts_with(&format!("{base}/acme/sign_in?"))
            .then(|| line.trim().to_string())
    });
    let redirect_uri = param(&url, "redirect_uri");
    assert!(
        redirect_uri.starts_with("http://127.0.0.1:"),
        "{redirect_uri}"
    );

    // The browser's part.
    let browser = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let page = browser.get(&url).send().await.unwrap();
    let cookie = page.headers()["set-cookie"]
        .to_str()
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_string();
    let body = page.text().await.unwrap();
    let mut form = vec![("email".to_string(), "admin@acme.test".to_string())];
    for field in ["csrf", "client_state", "client_challenge", "redirect_uri"] {
        form.push((field.to_string(), hidden(&body, field)));
    }
    let code_page = browser
        .post(format!("{base}/acme/sign_in/email"))
        .header("cookie", &cookie)
        .form(&form)
        .send()
        .await
        .unwrap();
    assert_eq!(code_page.status(), 200);
    let code = portal.wait_for("the code in the log", |line| {
        let at = line.find("code=\"")? + 6;
        let code: String = line[at..]
            .chars()
            .take_while(char::is_ascii_digit)
            .collect();
        (code.len() == 8).then_some(code)
    });
    form.push(("code".to_string(), code));
    let done = browser
        .post(format!("{base}/acme/sign_in/email/verify"))
        .header("cookie", &cookie)
        .form(&form)
        .send()
        .await
        .unwrap();
    // The portal asks before it hands the client a token.
    assert_eq!(done.status(), 200);
    let asked = done.text().await.unwrap();
    assert!(asked.contains("Connect this device"), "{asked}");
    let done = browser
        .post(format!("{base}/acme/sign_in/confirm"))
        .header("cookie", &cookie)
        .form(&[
            ("csrf", hidden(&asked, "csrf")),
            ("confirmation", hidden(&asked, "confirmation")),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(done.status(), 303);
    let location = done.headers()["location"].to_str().unwrap().to_string();
    assert!(location.starts_with(&redirect_uri), "{location}");
    let landing = browser.get(&location).send().await.unwrap();
    assert_eq!(landing.status(), 200);
    assert!(landing.text().await.unwrap().contains("Signed in as"));

    assert_eq!(cli.wait_exit(), 0, "{}", cli.stderr.lock().unwrap());
    let token_file = state_dir.join("client-token");
    let token = std::fs::read_to_string(&token_file)
        .unwrap()
        .trim()
        .to_string();
    // The URL carried only the challenge of the nonce the token starts with.
    let (nonce, fragment) = token.split_once('~').unwrap();
    assert!(!url.contains(nonce), "the nonce passed through the browser");
    assert_eq!(
        param(&url, "client_challenge"),
        postern_portal::auth::token::challenge_of(nonce)
    );
    assert_eq!(fragment, param(&location, "fragment"));
    let mode = std::fs::metadata(&token_file).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);

    // `client up` would take the stored portal and token; sign-out revokes.
    let out = postern(&["client", "sign-out", "--state-dir", &state_arg]);
    let said = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(0), "{said}");
    assert!(said.contains("revoked and deleted"), "{said}");
    assert!(!token_file.exists());
    let again = browser
        .post(format!("{base}/acme/sign_out"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), 401, "the token no longer works");
    let out = postern(&["client", "sign-out", "--state-dir", &state_arg]);
    assert_eq!(out.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&out.stderr).contains("Not signed in"));
}

#[test]
fn a_wrong_state_is_ignored_and_the_wait_times_out() {
    let dir = TempDir(
        std::env::temp_dir().join(format!("postern-signin-timeout-{}", std::process::id())),
    );
    let state_arg = dir.0.join("state").display().to_string();
    let mut cli = Running::spawn(&[
        "client",
        "sign-in",
        "--portal",
        "http://127.0.0.1:9",
        "--account",
        "acme",
        "--no-browser",
        "--state-dir",
        &state_arg,
        "--timeout",
        "3",
    ]);
    let url = cli.wait_for("the sign-in URL", |line| {
        line.trim()
            .starts_with("http://127.0.0.1:9/acme/sign_in?")
            .then(|| line.trim().to_string())
    });
    let redirect_uri = param(&url, "redirect_uri");
    let port = url::Url::parse(&redirect_uri).unwrap().port().unwrap();
    let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    std::io::Write::write_all(
        &mut stream,
        b"GET /callback?state=forged&fragment=abc.def HTTP/1.1\r\nHost: x\r\n\r\n",
    )
    .unwrap();
    let mut answer = String::new();
    std::io::Read::read_to_string(&mut stream, &mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    assert_eq!(cli.wait_exit(), 1);
    let said = cli.stderr.lock().unwrap().clone();
    assert!(said.contains("no sign-in within 3 s"), "{said}");
    assert!(!dir.0.join("state/client-token").exists());
}
