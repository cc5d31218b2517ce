//! A real OpenID Connect provider for tests: panva's `oidc-provider` under
//! Node.js, run from `tests/oidc/provider.mjs` on a random loopback port, plus
//! a tiny browser that signs in through its development login and consent
//! pages.
//!
//! It needs `node` (18.19 or later) and the npm packages of `tests/oidc`
//! (`npm ci --prefix crates/portal/tests/oidc`, which the CI runs). Without
//! them the tests fail and say so: they never skip silently.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use reqwest::header::{COOKIE, LOCATION, SET_COOKIE};
use reqwest::{StatusCode, Url};
use serde_json::{Value, json};

const START_TIMEOUT: Duration = Duration::from_secs(20);
const MISSING_PACKAGES: &str = "the OpenID Connect tests need oidc-provider: \
     run `npm ci --prefix crates/portal/tests/oidc` (the CI does)";

/// A running test provider with one registered client. Dropping it kills the
/// Node.js process.
pub struct OidcProvider {
    /// `http://127.0.0.1:PORT`, no trailing slash.
    pub issuer: String,
    child: Child,
    /// Held open: the provider exits when its stdin closes, so it cannot
    /// outlive a test process that is killed outright.
    _stdin: ChildStdin,
    stderr: Arc<Mutex<String>>,
    http: reqwest::Client,
}

impl Drop for OidcProvider {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The directory of `package.json` and `provider.mjs`.
fn oidc_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/oidc")
}

/// A client that never follows redirects and never uses a proxy: all the
/// traffic stays on loopback.
fn http_client() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .timeout(Duration::from_secs(20))
        .build()
        .expect("build the HTTP client")
}

impl OidcProvider {
    /// Starts a provider with one confidential client (`client_secret_basic`
    /// or `client_secret_post`, PKCE S256 required, code flow only).
    pub async fn start(
        client_id: &str,
        client_secret: &str,
        redirect_uris: &[String],
    ) -> OidcProvider {
        let dir = oidc_dir();
        if !dir.join("node_modules/oidc-provider").is_dir() {
            panic!(
                "{MISSING_PACKAGES} ({} has no node_modules/oidc-provider)",
                dir.display()
            );
        }
        let config = json!({
            "client_id": client_id,
            "client_secret": client_secret,
            "redirect_uris": redirect_uris,
        });
        let mut child = Command::new("node")
            .arg("provider.mjs")
            .current_dir(&dir)
            .env("OIDC_CONFIG", config.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|err| {
                if err.kind() == std::io::ErrorKind::NotFound {
                    panic!(
                        "the OpenID Connect tests need Node.js 18.19 or later as `node` on PATH: \
                         install Debian's `nodejs` and `npm` packages, then run \
                         `npm ci --prefix crates/portal/tests/oidc` (the CI does)"
                    )
                }
                panic!(
                    "could not start `node provider.mjs` in {}: {err}",
                    dir.display()
                )
            });
        let stdin = child.stdin.take().unwrap();

        // Drain stderr all along (a full pipe would block Node.js) and keep it
        // for the panic messages.
        let stderr = Arc::new(Mutex::new(String::new()));
        let stderr_thread = {
            let mut pipe = child.stderr.take().unwrap();
            let stderr = Arc::clone(&stderr);
            std::thread::spawn(move || {
                let mut chunk = [0u8; 4096];
                loop {
                    match pipe.read(&mut chunk) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => stderr
                            .lock()
                            .unwrap()
                            .push_str(&String::from_utf8_lossy(&chunk[..n])),
                    }
                }
            })
        };

        // Read stdout until the `listening` line, then keep draining it.
        let (ready_tx, ready_rx) = tokio::sync::oneshot::channel::<Result<String, String>>();
        {
            let stdout = child.stdout.take().unwrap();
            std::thread::spawn(move || {
                let mut ready_tx = Some(ready_tx);
                let mut seen = String::new();
                for line in BufReader::new(stdout).lines() {
                    let Ok(line) = line else { break };
                    if let Some(issuer) = line.strip_prefix("listening ") {
                        if let Some(tx) = ready_tx.take() {
                            let _ = tx.send(Ok(issuer.trim().to_string()));
                        }
                    } else if ready_tx.is_some() {
                        seen.push_str(&line);
                        seen.push('\n');
                    }
                }
                if let Some(tx) = ready_tx.take() {
                    let _ = tx.send(Err(seen));
                }
            });
        }

        let issuer = match tokio::time::timeout(START_TIMEOUT, ready_rx).await {
            Ok(Ok(Ok(issuer))) => issuer,
            other => {
                let reason = match other {
                    Err(_) => format!("no `listening` line within {START_TIMEOUT:?}"),
                    Ok(Ok(Err(stdout))) => format!("it exited before listening; stdout:\n{stdout}"),
                    Ok(Err(_)) | Ok(Ok(Ok(_))) => "it exited before listening".to_string(),
                };
                let _ = child.kill();
                let status = child.wait();
                let _ = stderr_thread.join();
                let stderr = stderr.lock().unwrap().clone();
                panic!(
                    "the OpenID Connect test provider (node {}/provider.mjs) did not start: \
                     {reason}\nexit: {status:?}\nstderr:\n{stderr}",
                    dir.display()
                );
            }
        };
        assert!(
            issuer.starts_with("http://127.0.0.1:") && !issuer.ends_with('/'),
            "unexpected issuer {issuer:?}"
        );

        let provider = OidcProvider {
            issuer,
            child,
            _stdin: stdin,
            stderr,
            http: http_client(),
        };
        let health = provider.get_json("/__test/health").await;
        assert_eq!(health["ok"], true, "{health}");
        provider
    }

    /// What the provider wrote to stderr so far (warnings, crashes).
    pub fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// `{issuer}{path}`, `path` starting with `/`.
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.issuer)
    }

    async fn get_json(&self, path: &str) -> Value {
        let response = self
            .http
            .get(self.url(path))
            .send()
            .await
            .unwrap_or_else(|err| panic!("GET {path}: {err}\nprovider stderr:\n{}", self.stderr()));
        let status = response.status();
        let body = response.text().await.unwrap();
        assert!(status.is_success(), "GET {path}: {status}\n{body}");
        serde_json::from_str(&body).unwrap_or_else(|err| panic!("GET {path}: {err}\n{body}"))
    }

    async fn post_json(&self, path: &str, body: &Value) -> Value {
        let response = self
            .http
            .post(self.url(path))
            .json(body)
            .send()
            .await
            .unwrap_or_else(|err| {
                panic!("POST {path}: {err}\nprovider stderr:\n{}", self.stderr())
            });
        let status = response.status();
        let text = response.text().await.unwrap();
        assert!(status.is_success(), "POST {path} {body}: {status}\n{text}");
        serde_json::from_str(&text).unwrap_or_else(|err| panic!("POST {path}: {err}\n{text}"))
    }

    /// The discovery document.
    pub async fn discovery(&self) -> Value {
        self.get_json("/.well-known/openid-configuration").await
    }

    /// Sets the claims of the account that login name `sub` signs in as:
    /// `email` (verified), `name` = `sub`, `groups` and `is_admin`. Logins
    /// never set get `{sub}@example.test`, no groups and no `is_admin`.
    pub async fn set_account(&self, sub: &str, email: &str, groups: &[&str], is_admin: bool) {
        self.set_account_claims(&json!({
            "sub": sub,
            "email": email,
            "email_verified": true,
            "name": sub,
            "groups": groups,
            "is_admin": is_admin,
        }))
        .await;
    }

    /// Sets an account's claims verbatim (`sub` required), for odd cases such
    /// as an unverified email or a missing claim.
    pub async fn set_account_claims(&self, claims: &Value) {
        self.post_json("/__test/accounts", claims).await;
    }

    /// How the ID tokens of later token responses are broken: `normal`,
    /// `tamper_signature`, `wrong_audience` (aud "someone-else"), `expired`,
    /// `wrong_nonce` (nonce "not-the-nonce") or `wrong_issuer`
    /// (iss "http://127.0.0.1:1/other"); or how other answers are damaged:
    /// `http_token_endpoint` (discovery names http://10.9.8.7:5432/token),
    /// `huge_discovery` and `huge_token` (10 MiB answers), `token_error` (an
    /// error whose description says "PROVIDER-INTERNAL-DETAIL
    /// 10.9.8.7:5432"). Stays until changed.
    pub async fn set_mode(&self, mode: &str) {
        self.post_json("/__test/mode", &json!({ "mode": mode }))
            .await;
    }

    /// Plays the browser: from `authorize_url` (on this provider) through the
    /// development login page (as `login`, any password) and the consent
    /// page, following the provider's redirects with its cookies, and
    /// returns the first redirect that leaves the provider (the client's
    /// redirect URI with `code`, `state` and `iss`) without requesting it.
    pub async fn sign_in(&self, authorize_url: &str, login: &str) -> String {
        let origin = Url::parse(&self.issuer).unwrap().origin();
        let mut url = Url::parse(authorize_url)
            .unwrap_or_else(|err| panic!("bad authorization URL {authorize_url:?}: {err}"));
        assert!(
            url.origin() == origin,
            "the authorization URL {authorize_url} is not on the provider {}",
            self.issuer
        );
        let mut jar = CookieJar::default();
        let mut form: Option<Vec<(String, String)>> = None;
        let mut forms_sent = 0;
        let mut trail = Vec::new();
        for _ in 0..20 {
            let request = match form.take() {
                Some(fields) => self.http.post(url.clone()).form(&fields),
                None => self.http.get(url.clone()),
            };
            let request = match jar.header(&url) {
                Some(cookies) => request.header(COOKIE, cookies),
                None => request,
            };
            let response = request.send().await.unwrap_or_else(|err| {
                panic!(
                    "sign-in request to {url}: {err}\nprovider stderr:\n{}",
                    self.stderr()
                )
            });
            let status = response.status();
            trail.push(format!("{status} {url}"));
            for value in response.headers().get_all(SET_COOKIE) {
                jar.store(&url, value.to_str().unwrap());
            }
            if status.is_redirection() {
                let location = response
                    .headers()
                    .get(LOCATION)
                    .unwrap_or_else(|| panic!("{status} without Location from {url}"))
                    .to_str()
                    .unwrap()
                    .to_string();
                let next = url
                    .join(&location)
                    .unwrap_or_else(|err| panic!("bad Location {location:?} from {url}: {err}"));
                if next.origin() != origin {
                    return next.to_string();
                }
                url = next;
                continue;
            }
            let body = response.text().await.unwrap();
            if status != StatusCode::OK {
                panic!("sign-in: {status} from {url}\nsteps: {trail:#?}\n{body}");
            }
            forms_sent += 1;
            if forms_sent > 3 {
                panic!(
                    "sign-in: still shown a form after {} forms at {url}\n{body}",
                    forms_sent - 1
                );
            }
            let page = Form::parse(&body)
                .unwrap_or_else(|| panic!("sign-in: no POST form on the page at {url}\n{body}"));
            url = url
                .join(&page.action)
                .unwrap_or_else(|err| panic!("bad form action {:?}: {err}\n{body}", page.action));
            assert!(
                url.origin() == origin,
                "form posts off the provider: {url}\n{body}"
            );
            form = Some(page.fill(login));
        }
        panic!("sign-in: too many steps\n{trail:#?}")
    }
}

/// The first POST form of a page, enough for the dev interaction pages.
struct Form {
    action: String,
    /// `(name, type, value)` of each named `<input>`.
    inputs: Vec<(String, String, String)>,
}

impl Form {
    fn parse(html: &str) -> Option<Form> {
        let lower = html.to_ascii_lowercase();
        let mut from = 0;
        while let Some(at) = lower[from..].find("<form") {
            let start = from + at;
            let tag_end = start + lower[start..].find('>')?;
            let attrs = attributes(&html[start + "<form".len()..tag_end]);
            let end = lower[tag_end..]
                .find("</form")
                .map_or(html.len(), |i| tag_end + i);
            from = tag_end;
            let method = attrs.get("method").map(|m| m.to_ascii_lowercase());
            if method.as_deref() != Some("post") {
                continue;
            }
            let mut inputs = Vec::new();
            let inner = &html[tag_end..end];
            let inner_lower = &lower[tag_end..end];
            let mut at = 0;
            while let Some(i) = inner_lower[at..].find("<input") {
                let open = at + i + "<input".len();
                let close = open + inner_lower[open..].find('>')?;
                let attrs = attributes(inner[open..close].trim_end_matches('/'));
                if let Some(name) = attrs.get("name") {
                    let kind = attrs.get("type").cloned().unwrap_or_else(|| "text".into());
                    let value = attrs.get("value").cloned().unwrap_or_default();
                    inputs.push((name.clone(), kind.to_ascii_lowercase(), value));
                }
                at = close;
            }
            return Some(Form {
                action: attrs.get("action").cloned().unwrap_or_default(),
                inputs,
            });
        }
        None
    }

    /// Hidden fields as they are, `login` = the login name, any password.
    fn fill(&self, login: &str) -> Vec<(String, String)> {
        self.inputs
            .iter()
            .map(|(name, kind, value)| {
                let value = match (name.as_str(), kind.as_str()) {
                    (_, "hidden") => value.clone(),
                    ("login", _) => login.to_string(),
                    (_, "password") => "any-password".to_string(),
                    _ => value.clone(),
                };
                (name.clone(), value)
            })
            .collect()
    }
}

/// The attributes of a tag's inside (`name="v" name='v' name=v name`), names
/// lowercased, values with HTML entities decoded.
fn attributes(tag: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut rest = tag.trim_start();
    while !rest.is_empty() {
        let name_end = rest
            .find(|c: char| c.is_whitespace() || c == '=' || c == '/')
            .unwrap_or(rest.len());
        let name = rest[..name_end].to_ascii_lowercase();
        rest = rest[name_end..].trim_start();
        let mut value = String::new();
        if let Some(after) = rest.strip_prefix('=') {
            let after = after.trim_start();
            let (raw, tail) = match after.chars().next() {
                Some(quote @ ('"' | '\'')) => {
                    let body = &after[1..];
                    let close = body.find(quote).unwrap_or(body.len());
                    (&body[..close], body.get(close + 1..).unwrap_or(""))
                }
                _ => {
                    let close = after.find(char::is_whitespace).unwrap_or(after.len());
                    (&after[..close], &after[close..])
                }
            };
            value = decode_entities(raw);
            rest = tail;
        } else if name.is_empty() {
            rest = rest.get(1..).unwrap_or("");
        }
        if !name.is_empty() {
            out.insert(name, value);
        }
        rest = rest.trim_start();
    }
    out
}

fn decode_entities(text: &str) -> String {
    text.replace("&quot;", "\"")
        .replace("&#34;", "\"")
        .replace("&#39;", "'")
        .replace("&#x27;", "'")
        .replace("&#x2F;", "/")
        .replace("&#x2f;", "/")
        .replace("&#47;", "/")
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&amp;", "&")
}

/// Cookies of one origin, by name and path, as a browser would keep them.
#[derive(Default)]
struct CookieJar {
    cookies: BTreeMap<(String, String), String>,
}

impl CookieJar {
    fn store(&mut self, url: &Url, set_cookie: &str) {
        let mut parts = set_cookie.split(';');
        let Some((name, value)) = parts.next().and_then(|pair| pair.split_once('=')) else {
            return;
        };
        let (name, value) = (name.trim().to_string(), value.trim().to_string());
        let mut path = None;
        let mut gone = value.is_empty();
        for attr in parts {
            let (key, val) = attr.split_once('=').unwrap_or((attr, ""));
            let (key, val) = (key.trim().to_ascii_lowercase(), val.trim());
            match key.as_str() {
                "path" if val.starts_with('/') => path = Some(val.to_string()),
                "max-age" => gone |= val.parse::<i64>().is_ok_and(|age| age <= 0),
                "expires" => gone |= val.contains("1970"),
                _ => {}
            }
        }
        // RFC 6265 default-path: the request path up to its last '/'.
        let path = path.unwrap_or_else(|| match url.path().rfind('/') {
            Some(0) | None => "/".to_string(),
            Some(i) => url.path()[..i].to_string(),
        });
        if gone {
            self.cookies.remove(&(name, path));
        } else {
            self.cookies.insert((name, path), value);
        }
    }

    fn header(&self, url: &Url) -> Option<String> {
        let request_path = url.path();
        let matching: Vec<String> = self
            .cookies
            .iter()
            .filter(|((_, path), _)| {
                request_path == path
                    || (request_path.starts_with(path.as_str())
                        && (path.ends_with('/') || request_path[path.len()..].starts_with('/')))
            })
            .map(|((name, _), value)| format!("{name}={value}"))
            .collect();
        (!matching.is_empty()).then(|| matching.join("; "))
    }
}
