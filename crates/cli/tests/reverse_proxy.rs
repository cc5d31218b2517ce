#![allow(clippy::unwrap_used)] // a test file: unwrap is the assertion
//! `postern portal --trusted-proxies` behind a real nginx (security review
//! M7) that terminates TLS (a certificate from the test's CA, verified by
//! the test's client): a page, an API call and a gateway channel (WSS to
//! nginx, a WebSocket on to the portal) pass through it, and the session log records the address the test connected from
//! (127.0.0.2), not nginx's (127.0.0.1), even though the client sends
//! spoofed `X-Forwarded-For` and `Forwarded` headers of its own. Without
//! the flag the portal records nginx. Needs nginx: `apt-get install nginx`.

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

/// The address the test's requests come from; nginx connects from 127.0.0.1.
const CLIENT: &str = "127.0.0.2";
/// What the client claims to be; it must never show up.
const SPOOFED: &str = "203.0.113.66";

mod support;
use std::sync::Arc;

use postern_lab::pki::{TestCa, Validity};
use support::{Running, TempDir, free_port, postern, wait_listening};

/// Where a request goes: the portal itself (plain HTTP) or nginx, which
/// terminates TLS with a certificate from the test's CA.
#[derive(Clone)]
struct Endpoint {
    port: u16,
    tls: Option<Arc<rustls::ClientConfig>>,
}

impl From<u16> for Endpoint {
    fn from(port: u16) -> Endpoint {
        Endpoint { port, tls: None }
    }
}

impl From<&Endpoint> for Endpoint {
    fn from(endpoint: &Endpoint) -> Endpoint {
        endpoint.clone()
    }
}

trait Stream: Read + Write {}
impl<T: Read + Write> Stream for T {}

/// A connection from `CLIENT`, over TLS (verified, name `localhost`) when
/// the endpoint speaks it.
fn open(to: &Endpoint) -> Box<dyn Stream> {
    let tcp = connect_from(CLIENT, to.port);
    match &to.tls {
        None => Box::new(tcp),
        Some(config) => {
            let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
            let connection = rustls::ClientConnection::new(Arc::clone(config), name).unwrap();
            Box::new(rustls::StreamOwned::new(connection, tcp))
        }
    }
}

/// A TCP connection to `port` from `from` (a loopback address of its own).
fn connect_from(from: &str, port: u16) -> TcpStream {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()
        .unwrap();
    let stream = runtime.block_on(async {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket
            .bind(SocketAddr::new(from.parse().unwrap(), 0))
            .unwrap();
        socket
            .connect(SocketAddr::from(([127, 0, 0, 1], port)))
            .await
            .unwrap()
    });
    let stream = stream.into_std().unwrap();
    stream.set_nonblocking(false).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    stream
}

/// One request from `CLIENT` carrying spoofed forwarding headers; returns
/// the status and the body (for a 101, the head only).
fn request(
    to: impl Into<Endpoint>,
    method: &str,
    path: &str,
    token: &str,
    extra: &str,
    body: &str,
) -> (u16, String) {
    let mut stream = open(&to.into());
    let auth = if token.is_empty() {
        String::new()
    } else {
        format!("Authorization: Bearer {token}\r\n")
    };
    let length = if method == "POST" {
        format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n",
            body.len()
        )
    } else {
        String::new()
    };
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\n{auth}\
         X-Forwarded-For: {SPOOFED}\r\nForwarded: for={SPOOFED}\r\n{length}{extra}\r\n{body}"
    )
    .unwrap();
    let mut response = Vec::new();
    let mut buffer = [0u8; 4096];
    // Until the end of a `Connection: close` response, or a 101's head.
    loop {
        match stream.read(&mut buffer) {
            Ok(0) => break,
            Ok(n) => response.extend_from_slice(&buffer[..n]),
            Err(error) => panic!("reading the response to {path}: {error}"),
        }
        if response.starts_with(b"HTTP/1.1 101") && response.windows(4).any(|w| w == b"\r\n\r\n") {
            break;
        }
    }
    let response = String::from_utf8_lossy(&response).into_owned();
    let status = response
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no HTTP response to {path}: {response:?}"));
    let body = match response.split_once("\r\n\r\n") {
        Some((head, body)) if status != 101 => {
            if head
                .to_ascii_lowercase()
                .contains("transfer-encoding: chunked")
            {
                dechunk(body)
            } else {
                body.to_string()
            }
        }
        _ => response.clone(),
    };
    (status, body)
}

fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let size = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if size == 0 || rest.len() < size {
            break;
        }
        out.push_str(&rest[..size]);
        body = rest[size..].trim_start_matches("\r\n");
    }
    out
}

fn get(to: impl Into<Endpoint>, path: &str, token: &str) -> (u16, String) {
    request(to, "GET", path, token, "Connection: close\r\n", "")
}

fn json(body: &str) -> serde_json::Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body}"))
}

/// A gateway joins its channel (a WebSocket upgrade) and hangs up.
fn join_gateway(to: impl Into<Endpoint>, token: &str, device: &str, key_byte: u8) {
    use base64::Engine;
    let key = base64::engine::general_purpose::STANDARD.encode([key_byte; 32]);
    let key = key
        .replace('+', "%2B")
        .replace('/', "%2F")
        .replace('=', "%3D");
    let (status, head) = request(
        to,
        "GET",
        &format!("/v1/gateway?device_id={device}&public_key={key}&name={device}"),
        token,
        "Connection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n",
        "",
    );
    assert_eq!(status, 101, "the gateway channel must open: {head}");
}

/// The address the portal recorded for the newest session, which must be
/// the gateway `device` joining.
fn newest_session_ip(to: impl Into<Endpoint>, admin: &str) -> IpAddr {
    let (status, body) = get(to, "/api/v1/sessions?limit=1", admin);
    assert_eq!(status, 200, "{body}");
    let sessions = json(&body);
    let newest = &sessions["data"][0];
    assert_eq!(newest["kind"], "gateway_connect", "{body}");
    newest["remote_ip"].as_str().unwrap().parse().unwrap()
}

fn start_portal(database: &str, port: u16, extra: &[&str]) -> Running {
    let mut child = Running(
        postern()
            .args([
                "portal",
                "--database",
                database,
                "--listen",
                &format!("127.0.0.1:{port}"),
            ])
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
        "the portal",
    );
    wait_listening(&mut child, port);
    child
}

fn nginx_config(dir: &Path, listen: u16, portal: u16, cert: &Path, key: &Path) -> PathBuf {
    let d = dir.display();
    let (cert, key) = (cert.display(), key.display());
    let config = format!(
        r#"
worker_processes 1;
pid {d}/nginx.pid;
error_log {d}/error.log info;
events {{ worker_connections 64; }}
http {{
    access_log off;
    client_body_temp_path {d}/client_body;
    proxy_temp_path {d}/proxy;
    fastcgi_temp_path {d}/fastcgi;
    uwsgi_temp_path {d}/uwsgi;
    scgi_temp_path {d}/scgi;
    map $http_upgrade $connection_upgrade {{
        default upgrade;
        ''      close;
    }}
    server {{
        listen 127.0.0.1:{listen} ssl;
        ssl_certificate {cert};
        ssl_certificate_key {key};
        location / {{
            proxy_pass http://127.0.0.1:{portal};
            proxy_http_version 1.1;
            proxy_set_header Host $host;
            proxy_set_header Upgrade $http_upgrade;
            proxy_set_header Connection $connection_upgrade;
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
            proxy_set_header Forwarded "$http_forwarded, for=$remote_addr";
            proxy_read_timeout 60s;
        }}
    }}
}}
"#
    );
    let path = dir.join("nginx.conf");
    std::fs::write(&path, config).unwrap();
    path
}

#[test]
fn behind_nginx_the_portal_sees_the_client_only_when_it_trusts_the_proxy() {
    let nginx = support::tool("nginx", "nginx");
    let dir = TempDir::new("proxy-nginx");
    let database = format!("sqlite://{}/data/portal.db", dir.0.display());
    let init = postern()
        .args([
            "portal",
            "init",
            "--database",
            &database,
            "--account",
            "acme",
            "--admin-email",
            "admin@acme.test",
        ])
        .output()
        .unwrap();
    assert!(
        init.status.success(),
        "{}",
        String::from_utf8_lossy(&init.stderr)
    );
    let admin = String::from_utf8_lossy(&init.stdout).trim().to_string();

    let portal_port = free_port();
    let nginx_port = free_port();
    let ca = TestCa::new("nginx test CA").unwrap();
    let files = ca
        .write_server(&dir.0, "nginx", &["localhost"], Validity::Current)
        .unwrap();
    let config = nginx_config(
        &dir.0,
        nginx_port,
        portal_port,
        &files.certificate,
        &files.key,
    );
    // nginx terminates TLS; the portal behind it speaks plain HTTP.
    let nginx_tls = Endpoint {
        port: nginx_port,
        tls: Some(ca.client_config().unwrap()),
    };
    let mut proxy = Running(
        Command::new(&nginx)
            .arg("-p")
            .arg(&dir.0)
            .arg("-e")
            .arg(dir.0.join("error.log"))
            .arg("-c")
            .arg(&config)
            .args(["-g", "daemon off;"])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", nginx.display())),
        "nginx",
    );
    wait_listening(&mut proxy, nginx_port);

    // Not trusted: the portal records nginx, whatever the headers say.
    let portal = start_portal(&database, portal_port, &[]);
    let (status, body) = get(&nginx_tls, "/api/v1/sites", &admin);
    assert_eq!(status, 200, "an API call through nginx: {body}");
    let (status, body) = request(
        &nginx_tls,
        "POST",
        "/api/v1/sites",
        &admin,
        "Connection: close\r\n",
        r#"{"name":"proxied"}"#,
    );
    assert_eq!(status, 201, "{body}");
    let site = json(&body)["id"].as_str().unwrap().to_string();
    let (status, body) = request(
        &nginx_tls,
        "POST",
        &format!("/api/v1/sites/{site}/gateway_tokens"),
        &admin,
        "Connection: close\r\n",
        "{}",
    );
    assert_eq!(status, 201, "{body}");
    let gateway = json(&body)["token"].as_str().unwrap().to_string();
    let (status, page) = get(&nginx_tls, "/acme/sign_in", "");
    assert_eq!(status, 200, "a page through nginx: {page}");
    assert!(page.contains("<html") || page.contains("<!"), "{page}");

    join_gateway(&nginx_tls, &gateway, "gw-untrusted", 1);
    assert_eq!(
        newest_session_ip(&nginx_tls, &admin),
        "127.0.0.1".parse::<IpAddr>().unwrap(),
        "without --trusted-proxies the client is the TCP peer, nginx"
    );
    drop(portal);

    // Trusted, X-Forwarded-For: the address the test connected from.
    let portal = start_portal(
        &database,
        portal_port,
        &["--trusted-proxies", "127.0.0.1/32"],
    );
    assert_eq!(get(&nginx_tls, "/api/v1/sites", &admin).0, 200);
    join_gateway(&nginx_tls, &gateway, "gw-xff", 2);
    assert_eq!(
        newest_session_ip(&nginx_tls, &admin),
        CLIENT.parse::<IpAddr>().unwrap(),
        "through a trusted nginx the client is who connected to nginx"
    );
    // Straight to the portal from an untrusted address: the headers count
    // for nothing.
    join_gateway(portal_port, &gateway, "gw-direct", 3);
    assert_eq!(
        newest_session_ip(portal_port, &admin),
        CLIENT.parse::<IpAddr>().unwrap(),
        "an untrusted peer's X-Forwarded-For is ignored"
    );
    drop(portal);

    // Trusted, RFC 7239 Forwarded.
    let portal = start_portal(
        &database,
        portal_port,
        &[
            "--trusted-proxies",
            "127.0.0.1",
            "--proxy-header",
            "forwarded",
        ],
    );
    join_gateway(&nginx_tls, &gateway, "gw-forwarded", 4);
    assert_eq!(
        newest_session_ip(&nginx_tls, &admin),
        CLIENT.parse::<IpAddr>().unwrap(),
        "Forwarded: for= through a trusted nginx"
    );
    // The device's own record agrees.
    let (status, body) = get(
        &nginx_tls,
        &format!("/api/v1/sites/{site}/gateways"),
        &admin,
    );
    assert_eq!(status, 200, "{body}");
    let gateways = json(&body);
    let all = gateways["data"].as_array().unwrap();
    let ips: Vec<(&str, &str)> = all
        .iter()
        .map(|g| {
            (
                g["name"].as_str().unwrap_or_default(),
                g["last_seen_ip"].as_str().unwrap_or_default(),
            )
        })
        .collect();
    for (name, ip) in [
        ("gw-untrusted", "127.0.0.1"),
        ("gw-xff", CLIENT),
        ("gw-direct", CLIENT),
        ("gw-forwarded", CLIENT),
    ] {
        assert!(ips.contains(&(name, ip)), "{name} at {ip}: {ips:?}");
    }
    assert!(!body.contains(SPOOFED), "{body}");
    drop(portal);

    drop(proxy);
}
