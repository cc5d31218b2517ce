//! `postern client sign-in` and `sign-out` (SPEC F3): the browser signs in at
//! the portal, which (after the user confirms) redirects to a loopback
//! listener of ours (RFC 8252) with our `state` and a token fragment. Our
//! secret nonce never leaves this process: the sign-in URL carries only its
//! challenge, `base64url(SHA-256(nonce))`, PKCE-style, and the token is
//! `<nonce>~<fragment>`, so nothing the browser saw (URL, history, pages,
//! the redirect) makes a token. The token goes to a root-only file that
//! `postern client up` uses by default, beside a note of the portal and
//! account for sign-out.

use std::io::Write as _;
use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, bail};
use base64::Engine as _;
use postern_portal::auth::token::{NONCE_SEPARATOR, challenge_of};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

/// The token file `client up` reads when given no token.
pub const TOKEN_FILE: &str = "client-token";
/// Where the token came from (portal, account), for `up` and `sign-out`.
pub const SIGN_IN_FILE: &str = "sign-in.json";

#[derive(Debug, Serialize, Deserialize, PartialEq)]
pub struct SignInRecord {
    pub portal: String,
    pub account: String,
    pub actor_name: String,
}

fn random_text() -> anyhow::Result<String> {
    let mut bytes = [0u8; 32];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut bytes))
        .context("cannot read /dev/urandom")?;
    Ok(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes))
}

/// The sign-in page URL with our client parameters: the challenge of our
/// nonce, never the nonce.
pub fn sign_in_url(
    portal: &str,
    account: &str,
    state: &str,
    nonce: &str,
    redirect: &str,
) -> String {
    let mut url = format!("{}/{account}/sign_in?", portal.trim_end_matches('/'));
    url.push_str(
        &url::form_urlencoded::Serializer::new(String::new())
            .append_pair("client_state", state)
            .append_pair("client_challenge", &challenge_of(nonce))
            .append_pair("redirect_uri", redirect)
            .finish(),
    );
    url
}

/// The token the portal's fragment makes with our nonce.
fn client_token(nonce: &str, fragment: &str) -> String {
    format!("{nonce}{NONCE_SEPARATOR}{fragment}")
}

/// What the loopback listener got.
#[derive(Debug, PartialEq)]
enum Callback {
    /// `fragment` and `actor_name` from a request with our state.
    SignedIn {
        fragment: String,
        actor_name: String,
    },
    /// Anything else (another path, a wrong state): answered, then ignored.
    Ignored(&'static str),
}

/// Reads one HTTP request line from the browser and decides.
fn parse_callback(request_line: &str, state: &str) -> Callback {
    let mut parts = request_line.split_whitespace();
    let (Some("GET"), Some(target)) = (parts.next(), parts.next()) else {
        return Callback::Ignored("not a GET request");
    };
    let Some(query) = target.strip_prefix("/callback?") else {
        return Callback::Ignored("not the callback");
    };
    let mut got_state = None;
    let mut fragment = None;
    let mut actor_name = String::new();
    for (key, value) in url::form_urlencoded::parse(query.as_bytes()) {
        match key.as_ref() {
            "state" => got_state = Some(value.into_owned()),
            "fragment" => fragment = Some(value.into_owned()),
            "actor_name" => actor_name = value.into_owned(),
            _ => {}
        }
    }
    if got_state.as_deref() != Some(state) {
        return Callback::Ignored("the state does not match this sign-in");
    }
    match fragment {
        Some(fragment)
            if !fragment.is_empty()
                && fragment.len() <= 512
                && fragment
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b)) =>
        {
            Callback::SignedIn {
                fragment,
                actor_name,
            }
        }
        _ => Callback::Ignored("the callback carries no valid token fragment"),
    }
}

async fn answer(stream: &mut tokio::net::TcpStream, status: &str, message: &str) {
    let body = format!(
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>Postern</title></head>\
         <body style=\"font-family:system-ui,sans-serif;margin:3rem\"><p>{}</p></body></html>",
        message
            .replace('&', "&amp;")
            .replace('<', "&lt;")
            .replace('>', "&gt;")
    );
    let response = format!(
        "HTTP/1.1 {status}\r\nContent-Type: text/html; charset=utf-8\r\nContent-Length: {}\r\n\
         Cache-Control: no-store\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = stream.write_all(response.as_bytes()).await;
    let _ = stream.shutdown().await;
}

/// Connections the loopback listener serves at once; a new one past it
/// closes the oldest (a browser sends its request at once, so a local user
/// holding many silent connections cannot crowd it out).
const CALLBACK_CONNECTIONS: usize = 32;

/// Waits for the browser's redirect with our state. Each connection is
/// served on its own task, so a local user who connects and sends nothing
/// cannot hold up the browser's redirect (review L12).
async fn wait_for_callback(
    listener: tokio::net::TcpListener,
    state: &str,
) -> anyhow::Result<(String, String)> {
    let mut serving: std::collections::VecDeque<tokio::task::JoinHandle<()>> =
        std::collections::VecDeque::new();
    let (found, mut signed_in) = tokio::sync::mpsc::channel(1);
    let result = loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, _) = accepted.context("the loopback listener failed")?;
                serving.retain(|task| !task.is_finished());
                if serving.len() >= CALLBACK_CONNECTIONS
                    && let Some(oldest) = serving.pop_front()
                {
                    oldest.abort();
                }
                let (found, state) = (found.clone(), state.to_string());
                serving.push_back(tokio::spawn(async move {
                    if let Some(result) = serve_callback(stream, &state).await {
                        let _ = found.send(result).await;
                    }
                }));
            }
            Some(result) = signed_in.recv() => break result,
        }
    };
    for task in serving {
        task.abort();
    }
    Ok(result)
}

/// Reads one request on the loopback listener and answers it; the token
/// fragment and user name when it is our callback.
async fn serve_callback(
    mut stream: tokio::net::TcpStream,
    state: &str,
) -> Option<(String, String)> {
    let mut buf = vec![0u8; 8192];
    let mut len = 0;
    // The request line is all we need; a browser sends it at once.
    let read = tokio::time::timeout(Duration::from_secs(5), async {
        while len < buf.len() && !buf[..len].windows(2).any(|w| w == b"\r\n") {
            match stream.read(&mut buf[len..]).await {
                Ok(0) | Err(_) => break,
                Ok(n) => len += n,
            }
        }
    })
    .await;
    if read.is_err() {
        return None;
    }
    let text = String::from_utf8_lossy(&buf[..len]);
    let line = text.lines().next().unwrap_or_default();
    match parse_callback(line, state) {
        Callback::SignedIn {
            fragment,
            actor_name,
        } => {
            answer(
                &mut stream,
                "200 OK",
                &format!(
                    "Signed in as {actor_name}. You can close this tab and return to the terminal."
                ),
            )
            .await;
            Some((fragment, actor_name))
        }
        Callback::Ignored(why) => {
            if line.contains("/callback") {
                eprintln!("ignored a callback: {why}");
            }
            answer(
                &mut stream,
                "400 Bad Request",
                &format!("Postern sign-in: {why}."),
            )
            .await;
            None
        }
    }
}

/// Writes `contents` to `path` with mode 0600, atomically (a temporary file
/// renamed over it), creating the directory with mode 0700.
fn write_private(path: &Path, contents: &str) -> anyhow::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .with_context(|| {
            format!(
                "cannot create {} (run as root or give --state-dir)",
                dir.display()
            )
        })?;
    let temporary = path.with_extension("tmp");
    let _ = std::fs::remove_file(&temporary);
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&temporary)
        .with_context(|| {
            format!(
                "cannot write {} (run as root or give --state-dir)",
                temporary.display()
            )
        })?;
    file.write_all(contents.as_bytes())
        .and_then(|()| file.sync_all())
        .with_context(|| format!("cannot write {}", temporary.display()))?;
    std::fs::rename(&temporary, path)
        .with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}

/// `postern client sign-in`.
pub fn sign_in(
    portal: &str,
    trust: &crate::args::PortalTrustArgs,
    account: &str,
    no_browser: bool,
    state_dir: &Path,
    timeout: Duration,
) -> anyhow::Result<ExitCode> {
    if !postern_portal::setup::validate_slug(account) {
        bail!("{account:?} is not an account slug (3-63 lowercase letters, digits, '-' or '_')");
    }
    // The browser signs in there; the same rule as for the daemons.
    trust.trust_for(portal)?;
    let state = random_text()?;
    let nonce = random_text()?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the runtime")?;
    runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .context("cannot listen on loopback for the sign-in redirect")?;
        let redirect = format!(
            "http://127.0.0.1:{}/callback",
            listener.local_addr()?.port()
        );
        let url = sign_in_url(portal, account, &state, &nonce, &redirect);
        let opened = !no_browser
            && std::process::Command::new("xdg-open")
                .arg(&url)
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .spawn()
                .is_ok();
        if opened {
            eprintln!(
                "Opened the sign-in page in your browser. If it did not appear, open:\n\n  {url}\n"
            );
        } else {
            eprintln!("Open this URL in a browser to sign in:\n\n  {url}\n");
        }
        eprintln!("Waiting up to {} s for the sign-in...", timeout.as_secs());
        let (fragment, actor_name) =
            tokio::time::timeout(timeout, wait_for_callback(listener, &state))
                .await
                .map_err(|_| {
                    anyhow::anyhow!(
                        "no sign-in within {} s; run the command again",
                        timeout.as_secs()
                    )
                })??;
        let token_path = state_dir.join(TOKEN_FILE);
        write_private(
            &token_path,
            &format!("{}\n", client_token(&nonce, &fragment)),
        )?;
        let record = SignInRecord {
            portal: portal.trim_end_matches('/').to_string(),
            account: account.to_string(),
            actor_name: actor_name.clone(),
        };
        write_private(
            &state_dir.join(SIGN_IN_FILE),
            &serde_json::to_string_pretty(&record)?,
        )?;
        eprintln!(
            "Signed in to {account} as {actor_name}. The token is in {} (root only); \
             `postern client up` uses it.",
            token_path.display()
        );
        Ok(ExitCode::SUCCESS)
    })
}

/// The portal and account of the stored sign-in.
pub fn read_record(state_dir: &Path) -> Option<SignInRecord> {
    let text = std::fs::read_to_string(state_dir.join(SIGN_IN_FILE)).ok()?;
    serde_json::from_str(&text).ok()
}

/// `postern client sign-out`: revokes the token at the portal, then deletes
/// it (also when the portal cannot be reached, with a warning and exit 1).
pub fn sign_out(
    state_dir: &Path,
    trust: &crate::args::PortalTrustArgs,
) -> anyhow::Result<ExitCode> {
    let token_path: PathBuf = state_dir.join(TOKEN_FILE);
    let token = match std::fs::read_to_string(&token_path) {
        Ok(token) => token.trim().to_string(),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
            eprintln!("Not signed in (no {}).", token_path.display());
            return Ok(ExitCode::SUCCESS);
        }
        Err(error) => {
            return Err(error).with_context(|| format!("cannot read {}", token_path.display()));
        }
    };
    let revoked = match read_record(state_dir) {
        Some(record) => trust
            .trust_for(&record.portal)
            .and_then(|trust| revoke(&record, &trust, &token)),
        None => Err(anyhow::anyhow!(
            "{} is missing",
            state_dir.join(SIGN_IN_FILE).display()
        )),
    };
    std::fs::remove_file(&token_path)
        .with_context(|| format!("cannot delete {}", token_path.display()))?;
    let _ = std::fs::remove_file(state_dir.join(SIGN_IN_FILE));
    match revoked {
        Ok(true) => {
            eprintln!("Signed out: the token is revoked and deleted.");
            Ok(ExitCode::SUCCESS)
        }
        Ok(false) => {
            eprintln!("Signed out: the portal no longer accepted the token; deleted it.");
            Ok(ExitCode::SUCCESS)
        }
        Err(error) => {
            eprintln!(
                "Deleted the token, but could not revoke it at the portal ({error:#}); \
                 an admin can revoke it in the portal."
            );
            Ok(ExitCode::FAILURE)
        }
    }
}

/// Whether the portal revoked it (false: it was already invalid).
fn revoke(
    record: &SignInRecord,
    trust: &postern_sys::trust::PortalTrust,
    token: &str,
) -> anyhow::Result<bool> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the runtime")?;
    runtime.block_on(async {
        let client = reqwest::Client::builder()
            .use_preconfigured_tls((*trust.tls()).clone())
            .timeout(Duration::from_secs(10))
            .redirect(reqwest::redirect::Policy::none())
            .build()?;
        let response = client
            .post(format!("{}/{}/sign_out", record.portal, record.account))
            .bearer_auth(token)
            .send()
            .await
            .with_context(|| format!("cannot reach {}", record.portal))?;
        match response.status().as_u16() {
            204 => Ok(true),
            // Already revoked or expired, which is what we wanted.
            401 => Ok(false),
            other => bail!("the portal answered HTTP {other}"),
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_our_state_with_a_fragment_signs_in() {
        let state = "s".repeat(43);
        let line =
            format!("GET /callback?state={state}&fragment=abc-_.123&actor_name=Ann%20Lee HTTP/1.1");
        assert_eq!(
            parse_callback(&line, &state),
            Callback::SignedIn {
                fragment: "abc-_.123".into(),
                actor_name: "Ann Lee".into()
            }
        );
        for bad in [
            "GET /callback?state=other&fragment=abc HTTP/1.1".to_string(),
            format!("GET /callback?state={state} HTTP/1.1"),
            format!("GET /callback?state={state}&fragment=a%20b HTTP/1.1"),
            format!("POST /callback?state={state}&fragment=abc HTTP/1.1"),
            "GET /favicon.ico HTTP/1.1".to_string(),
            String::new(),
        ] {
            assert!(
                matches!(parse_callback(&bad, &state), Callback::Ignored(_)),
                "{bad}"
            );
        }
    }

    /// A local user who connects to the loopback listener first and sends
    /// nothing does not hold up the browser's redirect (review L12).
    #[tokio::test]
    async fn a_silent_connection_does_not_stall_the_callback() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let state = "s".repeat(43);
        let waiting = tokio::spawn({
            let state = state.clone();
            async move { wait_for_callback(listener, &state).await }
        });
        let mut squatters = Vec::new();
        for _ in 0..CALLBACK_CONNECTIONS + 3 {
            squatters.push(tokio::net::TcpStream::connect(address).await.unwrap());
        }
        let started = std::time::Instant::now();
        let mut browser = tokio::net::TcpStream::connect(address).await.unwrap();
        let request =
            format!("GET /callback?state={state}&fragment=f.1&actor_name=Ann HTTP/1.1\r\n\r\n");
        browser.write_all(request.as_bytes()).await.unwrap();
        let (fragment, actor) = tokio::time::timeout(Duration::from_secs(2), waiting)
            .await
            .expect("the callback waited behind a silent connection")
            .unwrap()
            .unwrap();
        assert_eq!((fragment.as_str(), actor.as_str()), ("f.1", "Ann"));
        assert!(started.elapsed() < Duration::from_secs(2));
        drop(squatters);
    }

    #[test]
    fn private_files_are_0600_and_replaced_whole() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = std::env::temp_dir().join(format!("postern-signin-{}", std::process::id()));
        let path = dir.join("state/client-token");
        write_private(&path, "one").unwrap();
        write_private(&path, "two").unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "two");
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let dir_mode = std::fs::metadata(path.parent().unwrap())
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(dir_mode & 0o777, 0o700);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn the_sign_in_url_carries_the_challenge_not_the_nonce() {
        let nonce = "secret-nonce-0123456789";
        let url = sign_in_url(
            "http://p:8080/",
            "acme",
            "st",
            nonce,
            "http://127.0.0.1:5/callback",
        );
        assert_eq!(
            url,
            format!(
                "http://p:8080/acme/sign_in?client_state=st&client_challenge={}&redirect_uri=http%3A%2F%2F127.0.0.1%3A5%2Fcallback",
                challenge_of(nonce)
            )
        );
        assert!(!url.contains(nonce));
        assert_eq!(client_token(nonce, "r.id"), format!("{nonce}~r.id"));
    }
}
