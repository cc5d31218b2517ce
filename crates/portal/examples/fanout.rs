//! Connects N simulated clients to a running portal, then measures the
//! portal's memory per connected client and how long one policy change takes
//! to reach all of them (issue 4's benchmark; `bench/portal.sh` runs it).
//!
//! fanout --portal 127.0.0.1:PORT --token ADMIN_TOKEN --pid PORTAL_PID [--clients N]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine as _;
use futures_util::StreamExt;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{Barrier, mpsc};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

struct Args {
    portal: SocketAddr,
    token: String,
    pid: u32,
    clients: usize,
}

fn args() -> Args {
    let mut map = HashMap::new();
    let mut raw = std::env::args().skip(1);
    while let Some(flag) = raw.next() {
        let value = raw
            .next()
            .unwrap_or_else(|| usage(&format!("{flag} needs a value")));
        map.insert(flag, value);
    }
    let get = |name: &str| {
        map.get(name)
            .cloned()
            .unwrap_or_else(|| usage(&format!("{name} is required")))
    };
    Args {
        portal: get("--portal")
            .parse()
            .unwrap_or_else(|_| usage("--portal takes IP:PORT")),
        token: get("--token"),
        pid: get("--pid")
            .parse()
            .unwrap_or_else(|_| usage("--pid takes a process id")),
        clients: map
            .get("--clients")
            .map(|n| {
                n.parse()
                    .unwrap_or_else(|_| usage("--clients takes a number"))
            })
            .unwrap_or(10_000),
    }
}

fn usage(problem: &str) -> ! {
    eprintln!(
        "fanout: {problem}\nusage: fanout --portal IP:PORT --token TOKEN --pid PID [--clients N]"
    );
    std::process::exit(1)
}

/// One JSON request over HTTP/1.1 (no client library needed for a benchmark).
async fn api(
    portal: SocketAddr,
    token: &str,
    method: &str,
    path: &str,
    body: Option<Value>,
) -> Value {
    let mut stream = tokio::net::TcpStream::connect(portal)
        .await
        .expect("connect to the portal");
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    let request = format!(
        "{method} /api/v1{path} HTTP/1.1\r\nHost: portal\r\nAuthorization: Bearer {token}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).await.expect("send");
    let mut response = String::new();
    stream.read_to_string(&mut response).await.expect("read");
    let status = response.split(' ').nth(1).unwrap_or("?");
    let payload = response.split("\r\n\r\n").nth(1).unwrap_or("");
    assert!(
        status.starts_with('2'),
        "{method} {path}: {status} {payload}"
    );
    serde_json::from_str(payload).unwrap_or(Value::Null)
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse().ok()))
        })
        .unwrap_or(0)
}

fn id(value: &Value) -> String {
    value["id"].as_str().expect("an id").to_string()
}

#[tokio::main]
async fn main() {
    let args = args();
    let (portal, token) = (args.portal, args.token.as_str());
    let site = id(&api(
        portal,
        token,
        "POST",
        "/sites",
        Some(json!({"name": "bench"})),
    )
    .await);
    let first = id(&api(
        portal,
        token,
        "POST",
        "/resources",
        Some(json!({"name": "a", "type": "cidr", "address": "10.0.0.0/24", "site_id": site})),
    )
    .await);
    let second = id(&api(
        portal,
        token,
        "POST",
        "/resources",
        Some(json!({"name": "b", "type": "cidr", "address": "10.0.1.0/24", "site_id": site})),
    )
    .await);
    let group = id(&api(
        portal,
        token,
        "POST",
        "/groups",
        Some(json!({"name": "fleet"})),
    )
    .await);
    let robot = id(&api(
        portal,
        token,
        "POST",
        "/actors",
        Some(json!({"name": "fleet", "role": "service_account"})),
    )
    .await);
    api(
        portal,
        token,
        "PUT",
        &format!("/groups/{group}/members"),
        Some(json!({"actor_ids": [robot]})),
    )
    .await;
    api(
        portal,
        token,
        "POST",
        "/policies",
        Some(json!({"group_id": group, "resource_id": first})),
    )
    .await;
    let client_token = api(
        portal,
        token,
        "POST",
        &format!("/actors/{robot}/tokens"),
        None,
    )
    .await["token"]
        .as_str()
        .expect("a token")
        .to_string();

    let before = rss_kib(args.pid);
    let started = Instant::now();
    let (arrivals, mut arrived) = mpsc::unbounded_channel::<(usize, Instant)>();
    let connected = Arc::new(Barrier::new(args.clients + 1));
    let permits = Arc::new(tokio::sync::Semaphore::new(256));
    for n in 0..args.clients {
        let client_token = client_token.clone();
        let arrivals = arrivals.clone();
        let connected = connected.clone();
        let permits = permits.clone();
        tokio::spawn(async move {
            let key = base64::engine::general_purpose::STANDARD.encode([(n % 251) as u8; 32]);
            let url = format!(
                "ws://{portal}/v1/client?device_id=bench-{n}&public_key={}&name=bench-{n}",
                key.replace('+', "%2B")
                    .replace('/', "%2F")
                    .replace('=', "%3D")
            );
            let mut request = url.into_client_request().expect("a request");
            request.headers_mut().insert(
                "authorization",
                format!("Bearer {client_token}").parse().expect("a header"),
            );
            let permit = permits.acquire().await.expect("semaphore");
            let mut socket = match tokio_tungstenite::connect_async(request).await {
                Ok((socket, _)) => socket,
                Err(error) => {
                    eprintln!("client {n}: cannot connect: {error}");
                    std::process::exit(1);
                }
            };
            // The first text frame is `init` (pings may come before it).
            loop {
                match socket.next().await {
                    Some(Ok(Message::Text(text))) => {
                        assert!(
                            text.contains("\"init\""),
                            "client {n}: first message is not init: {text}"
                        );
                        break;
                    }
                    Some(Ok(_)) => continue,
                    other => {
                        eprintln!("client {n}: channel ended before init: {other:?}");
                        std::process::exit(1);
                    }
                }
            }
            drop(permit);
            connected.wait().await;
            // Wait for the change and report when it came.
            while let Some(Ok(message)) = socket.next().await {
                if let Message::Text(text) = message
                    && text.contains("resource_upserted")
                {
                    let _ = arrivals.send((n, Instant::now()));
                }
            }
        });
    }
    drop(arrivals);
    if tokio::time::timeout(Duration::from_secs(600), connected.wait())
        .await
        .is_err()
    {
        eprintln!("fanout: the clients did not all connect within 10 minutes");
        std::process::exit(1);
    }
    let connect_time = started.elapsed();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let after = rss_kib(args.pid);
    println!(
        "connected: {} clients in {:.2} s ({:.0} connects/s)",
        args.clients,
        connect_time.as_secs_f64(),
        args.clients as f64 / connect_time.as_secs_f64()
    );
    println!(
        "portal memory: {:.1} MiB before, {:.1} MiB with {} clients = {:.1} KiB per client",
        before as f64 / 1024.0,
        after as f64 / 1024.0,
        args.clients,
        after.saturating_sub(before) as f64 / args.clients as f64
    );

    let change = Instant::now();
    api(
        portal,
        token,
        "POST",
        "/policies",
        Some(json!({"group_id": group, "resource_id": second})),
    )
    .await;
    let api_done = change.elapsed();
    let mut last = change;
    let mut count = 0;
    while count < args.clients {
        match tokio::time::timeout(Duration::from_secs(30), arrived.recv()).await {
            Ok(Some((_, at))) => {
                last = last.max(at);
                count += 1;
            }
            _ => break,
        }
    }
    println!(
        "fan-out: one policy change reached {count}/{} clients in {:.1} ms (API call {:.1} ms)",
        args.clients,
        (last - change).as_secs_f64() * 1e3,
        api_done.as_secs_f64() * 1e3
    );
    if count < args.clients {
        std::process::exit(1);
    }
}
