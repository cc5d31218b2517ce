//! Plays N clients (and one gateway) against a running portal and measures
//! what issue 23 asks of one portal node (`bench/portal.sh` runs it):
//! - first connects per second (new devices registered);
//! - the portal's memory per connected client;
//! - the time one policy change takes to reach every client;
//! - a burst of API changes: changes per second applied and fanned out;
//! - a reconnect storm (every client drops and connects again at once, as
//!   after a restart): connects per second, connects shed with 503 +
//!   Retry-After, the portal's CPU per connect, and how long the access
//!   requests of clients that stayed connected waited meanwhile;
//! - with TLS, the handshake's share of a connect's CPU.
//!
//! fanout --portal HOST:PORT --token ADMIN_TOKEN --pid PORTAL_PID
//!        [--clients N] [--tls-ca CERT.pem] [--changes N]
//! fanout make-cert DIR     (a self-signed certificate for 127.0.0.1)
//!
//! Sockets come from 127.0.0.2 and up (one source address per 20,000
//! clients): one address has too few ports for 100,000 connections.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use base64::Engine as _;
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{Semaphore, mpsc, watch};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

/// Clients per source address.
const PER_SOURCE: usize = 20_000;
/// Connects in flight at once while registering.
const FIRST_CONCURRENCY: usize = 512;
/// Clients that stay connected through the storm and ask for access.
const STEADY: usize = 20;

struct Args {
    portal: SocketAddr,
    token: String,
    pid: u32,
    clients: usize,
    changes: usize,
    tls: Option<Arc<rustls::ClientConfig>>,
}

fn args() -> Args {
    let mut raw = std::env::args().skip(1).peekable();
    if raw.peek().map(String::as_str) == Some("make-cert") {
        raw.next();
        let dir = raw
            .next()
            .unwrap_or_else(|| usage("make-cert needs a directory"));
        make_cert(std::path::Path::new(&dir));
        std::process::exit(0);
    }
    let mut map = HashMap::new();
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
    let number = |name: &str, default: usize| {
        map.get(name).map_or(default, |n| {
            n.parse()
                .unwrap_or_else(|_| usage(&format!("{name} takes a number")))
        })
    };
    Args {
        portal: get("--portal")
            .parse()
            .unwrap_or_else(|_| usage("--portal takes IP:PORT")),
        token: get("--token"),
        pid: get("--pid")
            .parse()
            .unwrap_or_else(|_| usage("--pid takes a process id")),
        clients: number("--clients", 10_000),
        changes: number("--changes", 1_000),
        tls: map.get("--tls-ca").map(|path| trusting(path)),
    }
}

fn usage(problem: &str) -> ! {
    eprintln!(
        "fanout: {problem}\nusage: fanout --portal IP:PORT --token TOKEN --pid PID [--clients N] \
         [--changes N] [--tls-ca CERT.pem]\n       fanout make-cert DIR"
    );
    std::process::exit(1)
}

/// Writes `cert.pem` and `key.pem` for 127.0.0.1 into `dir`.
fn make_cert(dir: &std::path::Path) {
    let key = rcgen::KeyPair::generate().expect("a key");
    let params = rcgen::CertificateParams::new(vec!["127.0.0.1".to_string()]).expect("params");
    let cert = params.self_signed(&key).expect("a certificate");
    std::fs::write(dir.join("cert.pem"), cert.pem()).expect("write cert.pem");
    std::fs::write(dir.join("key.pem"), key.serialize_pem()).expect("write key.pem");
}

fn trusting(path: &str) -> Arc<rustls::ClientConfig> {
    let pem = std::fs::read(path).unwrap_or_else(|e| usage(&format!("--tls-ca {path}: {e}")));
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls::pki_types::pem::PemObject::pem_slice_iter(&pem) {
        roots.add(cert.expect("a PEM certificate")).expect("a CA");
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Arc::new(
        rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("TLS versions")
            .with_root_certificates(roots)
            .with_no_client_auth(),
    )
}

/// One JSON request over HTTP/1.1 (no client library needed for a benchmark).
async fn api(args: &Args, method: &str, path: &str, body: Option<Value>) -> Value {
    api_as(args, &args.token, method, path, body).await
}

/// [`api`] with another admin's token (each token has its own rate limit).
async fn api_as(args: &Args, token: &str, method: &str, path: &str, body: Option<Value>) -> Value {
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    let request = format!(
        "{method} /api/v1{path} HTTP/1.1\r\nHost: portal\r\nAuthorization: Bearer {}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        token,
        body.len()
    );
    let mut stream = open(args, 0).await.expect("connect to the portal");
    stream.write_all(request.as_bytes()).await.expect("send");
    let mut response = Vec::new();
    // A TLS peer that closes without close_notify is fine here.
    let _ = stream.read_to_end(&mut response).await;
    let response = String::from_utf8_lossy(&response);
    let status = response.split(' ').nth(1).unwrap_or("?");
    let payload = response.split("\r\n\r\n").nth(1).unwrap_or("");
    assert!(
        status.starts_with('2'),
        "{method} {path}: {status} {payload}"
    );
    serde_json::from_str(payload).unwrap_or(Value::Null)
}

trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}
type Socket = WebSocketStream<Box<dyn Io>>;

/// A TCP (and TLS) connection to the portal from client `n`'s source address.
async fn open(args: &Args, n: usize) -> std::io::Result<Box<dyn Io>> {
    let source = Ipv4Addr::new(127, 0, 0, 2 + (n / PER_SOURCE) as u8);
    let socket = tokio::net::TcpSocket::new_v4()?;
    socket.bind(SocketAddr::new(IpAddr::V4(source), 0))?;
    let tcp = socket.connect(args.portal).await?;
    tcp.set_nodelay(true)?;
    match &args.tls {
        None => Ok(Box::new(tcp)),
        Some(tls) => {
            let name = rustls::pki_types::ServerName::IpAddress(args.portal.ip().into());
            let stream = tokio_rustls::TlsConnector::from(tls.clone())
                .connect(name, tcp)
                .await?;
            Ok(Box::new(stream))
        }
    }
}

enum Connect {
    Open(Box<Socket>),
    /// 503 (or 429) with the seconds of its Retry-After.
    Busy(u64),
    /// Anything else: a reset, a timeout, a 503 that says nothing.
    Failed(String),
}

async fn connect(args: &Args, n: usize, path: &str, query: &str, token: &str) -> Connect {
    let scheme = if args.tls.is_some() { "wss" } else { "ws" };
    let url = format!("{scheme}://{}{path}?{query}", args.portal);
    let mut request = url.into_client_request().expect("a request");
    request.headers_mut().insert(
        "authorization",
        format!("Bearer {token}").parse().expect("a header"),
    );
    let stream = match open(args, n).await {
        Ok(stream) => stream,
        Err(error) => return Connect::Failed(format!("cannot connect: {error}")),
    };
    match tokio_tungstenite::client_async(request, stream).await {
        Ok((socket, _)) => Connect::Open(Box::new(socket)),
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            let wait = response
                .headers()
                .get("retry-after")
                .and_then(|v| v.to_str().ok()?.parse().ok());
            match (response.status().as_u16(), wait) {
                (503 | 429, Some(wait)) => Connect::Busy(wait),
                (status, _) => Connect::Failed(format!("HTTP {status}")),
            }
        }
        Err(error) => Connect::Failed(format!("handshake failed: {error}")),
    }
}

fn fail(why: &str) -> ! {
    eprintln!("fanout: {why}");
    std::process::exit(1)
}

fn query(n: usize, kind: &str) -> String {
    // A key of its own per device: the portal refuses a device that
    // presents another's.
    let mut key = [7u8; 32];
    key[..8].copy_from_slice(&(n as u64).to_le_bytes());
    key[8] = kind.len() as u8;
    let key = base64::engine::general_purpose::STANDARD.encode(key);
    let key = key
        .replace('+', "%2B")
        .replace('/', "%2F")
        .replace('=', "%3D");
    format!("device_id={kind}-{n}&public_key={key}&name={kind}-{n}")
}

/// Connects and refusals so far.
#[derive(Default)]
struct Tally {
    /// Turned away with 503 + Retry-After.
    shed: AtomicU64,
    /// Failed otherwise (reset, timeout, an error without Retry-After).
    failed: AtomicU64,
}

/// Connects client `n` like the daemon does (a busy portal's Retry-After
/// waited, plus up to half of it again; any other failure retried after
/// a second or so) until its `init` arrives.
async fn join(args: &Args, n: usize, token: &str, tally: &Tally) -> Socket {
    loop {
        match connect(args, n, "/v1/client", &query(n, "bench"), token).await {
            Connect::Open(mut socket) => {
                loop {
                    match socket.next().await {
                        Some(Ok(Message::Text(text))) if text.contains("\"init\"") => break,
                        Some(Ok(Message::Text(text))) => {
                            fail(&format!("client {n}: first message is not init: {text}"))
                        }
                        Some(Ok(_)) => continue,
                        other => fail(&format!("client {n}: channel ended before init: {other:?}")),
                    }
                }
                return *socket;
            }
            Connect::Failed(why) => {
                if tally.failed.fetch_add(1, Ordering::Relaxed) == 0 {
                    eprintln!("client {n}: {why} (counted, retried; later ones only counted)");
                }
                let spread = (n as u64).wrapping_mul(2_654_435_761) % 1000;
                tokio::time::sleep(Duration::from_millis(1000 + spread)).await;
            }
            Connect::Busy(seconds) => {
                tally.shed.fetch_add(1, Ordering::Relaxed);
                let spread = (n as u64).wrapping_mul(2_654_435_761) % (seconds * 500).max(1);
                tokio::time::sleep(Duration::from_secs(seconds) + Duration::from_millis(spread))
                    .await;
            }
        }
    }
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

/// The portal's CPU time so far (user + system).
fn cpu(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name, which may hold spaces.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    let ticks: u64 = [11, 12]
        .iter()
        .filter_map(|i| fields.get(*i)?.parse::<u64>().ok())
        .sum();
    // In USER_HZ ticks, which Linux fixes at 100 for userspace.
    Duration::from_millis(ticks * 10)
}

fn id(value: &Value) -> String {
    value["id"].as_str().expect("an id").to_string()
}

/// A client's life: join, report when a resource reaches it, and when the
/// storm starts drop the socket and join again at once.
#[allow(clippy::too_many_arguments)]
async fn client(
    args: Arc<Args>,
    n: usize,
    token: Arc<String>,
    admitted: mpsc::UnboundedSender<(usize, bool)>,
    heard: mpsc::UnboundedSender<Instant>,
    mut storm: watch::Receiver<bool>,
    permits: Arc<Semaphore>,
    tally: Arc<Tally>,
) {
    let permit = permits.acquire_owned().await.expect("semaphore");
    let mut socket = join(&args, n, &token, &tally).await;
    drop(permit);
    let _ = admitted.send((n, false));
    loop {
        tokio::select! {
            message = socket.next() => match message {
                Some(Ok(Message::Text(text))) => {
                    if text.contains("\"resource_upserted\"") {
                        let _ = heard.send(Instant::now());
                    }
                }
                Some(Ok(_)) => {}
                _ => fail(&format!("client {n}: the portal closed the channel")),
            },
            changed = storm.changed() => {
                if changed.is_err() {
                    return;
                }
                drop(socket);
                socket = join(&args, n, &token, &tally).await;
                let _ = admitted.send((n, true));
            }
        }
    }
}

/// A gateway that authorizes whatever it is asked.
async fn gateway(args: Arc<Args>, token: String) {
    let socket = match connect(&args, 0, "/v1/gateway", &query(0, "gateway"), &token).await {
        Connect::Open(socket) => socket,
        Connect::Busy(_) | Connect::Failed(_) => fail("the gateway could not connect"),
    };
    let (mut write, mut read) = socket.split();
    while let Some(Ok(message)) = read.next().await {
        if let Message::Text(text) = message {
            let value: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
            if value["type"] == "authorize" {
                let answer = json!({"type": "authorized", "ref": value["ref"]});
                if write
                    .send(Message::Text(answer.to_string().into()))
                    .await
                    .is_err()
                {
                    return;
                }
            }
        }
    }
}

/// Steady client `n`: asks for access every 100 ms until `stop`, and
/// records how long each answer took (`None`: none within 10 s).
async fn steady(
    args: Arc<Args>,
    n: usize,
    token: Arc<String>,
    resource: String,
    stop: watch::Receiver<bool>,
) -> Vec<Option<Duration>> {
    let socket = join(&args, n, &token, &Tally::default()).await;
    let (mut write, mut read) = socket.split();
    let mut waits = Vec::new();
    let mut reference = 0u64;
    while !*stop.borrow() {
        reference += 1;
        let asked = Instant::now();
        let request = json!({"type": "request_access", "ref": reference.to_string(), "resource_id": resource});
        if write
            .send(Message::Text(request.to_string().into()))
            .await
            .is_err()
        {
            fail(&format!("steady client {n}: the channel broke"));
        }
        let wanted = format!("\"ref\":\"{reference}\"");
        let answered = tokio::time::timeout(Duration::from_secs(10), async {
            while let Some(Ok(message)) = read.next().await {
                if let Message::Text(text) = message
                    && text.contains(&wanted)
                {
                    return true;
                }
            }
            false
        })
        .await;
        waits.push(matches!(answered, Ok(true)).then(|| asked.elapsed()));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    waits
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[i].as_secs_f64() * 1e3
}

/// Waits until `count` clients report; the last report's time.
async fn arrivals(
    heard: &mut mpsc::UnboundedReceiver<Instant>,
    count: usize,
    since: Instant,
) -> (usize, Instant) {
    let mut seen = 0;
    let mut last = since;
    while seen < count {
        match tokio::time::timeout(Duration::from_secs(60), heard.recv()).await {
            Ok(Some(at)) => {
                last = last.max(at);
                seen += 1;
            }
            _ => break,
        }
    }
    (seen, last)
}

#[tokio::main]
async fn main() {
    let args = Arc::new(args());
    let clients = args.clients;
    let site = id(&api(&args, "POST", "/sites", Some(json!({"name": "bench"}))).await);
    let resource = |name: &str, address: &str| json!({"name": name, "type": "cidr", "address": address, "site_id": site});
    let first = id(&api(
        &args,
        "POST",
        "/resources",
        Some(resource("a", "10.0.0.0/24")),
    )
    .await);
    let second = id(&api(
        &args,
        "POST",
        "/resources",
        Some(resource("b", "10.0.1.0/24")),
    )
    .await);
    let group = id(&api(&args, "POST", "/groups", Some(json!({"name": "fleet"}))).await);
    let robot = id(&api(
        &args,
        "POST",
        "/actors",
        Some(json!({"name": "fleet", "role": "service_account"})),
    )
    .await);
    api(
        &args,
        "PUT",
        &format!("/groups/{group}/members"),
        Some(json!({"actor_ids": [robot]})),
    )
    .await;
    api(
        &args,
        "POST",
        "/policies",
        Some(json!({"group_id": group, "resource_id": first})),
    )
    .await;
    let token = Arc::new(
        api(&args, "POST", &format!("/actors/{robot}/tokens"), None).await["token"]
            .as_str()
            .expect("a token")
            .to_string(),
    );
    let gateway_token = api(
        &args,
        "POST",
        &format!("/sites/{site}/gateway_tokens"),
        None,
    )
    .await["token"]
        .as_str()
        .expect("a gateway token")
        .to_string();
    tokio::spawn(gateway(args.clone(), gateway_token));

    // First connects: every client registers its device.
    let before = rss_kib(args.pid);
    let tally = Arc::new(Tally::default());
    let (admitted_tx, mut admitted) = mpsc::unbounded_channel();
    let (heard_tx, mut heard) = mpsc::unbounded_channel();
    let (storm_tx, storm) = watch::channel(false);
    let permits = Arc::new(Semaphore::new(FIRST_CONCURRENCY));
    let started = Instant::now();
    for n in 0..clients {
        tokio::spawn(client(
            args.clone(),
            n,
            token.clone(),
            admitted_tx.clone(),
            heard_tx.clone(),
            storm.clone(),
            permits.clone(),
            tally.clone(),
        ));
    }
    drop(admitted_tx);
    for _ in 0..clients {
        if admitted.recv().await.is_none() {
            fail("the clients stopped before all connected");
        }
    }
    let took = started.elapsed();
    println!(
        "first connects: {clients} clients in {:.2} s = {:.0} connects/s ({} shed with Retry-After, \
         {} failed otherwise)",
        took.as_secs_f64(),
        clients as f64 / took.as_secs_f64(),
        tally.shed.swap(0, Ordering::Relaxed),
        tally.failed.swap(0, Ordering::Relaxed)
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    let after = rss_kib(args.pid);
    println!(
        "portal memory: {:.1} MiB before, {:.1} MiB with {clients} clients = {:.1} KiB per client \
         (rss_mib={:.0})",
        before as f64 / 1024.0,
        after as f64 / 1024.0,
        after.saturating_sub(before) as f64 / clients as f64,
        after as f64 / 1024.0
    );

    // One policy change, fanned out.
    let fanout_cpu = cpu(args.pid);
    let change = Instant::now();
    api(
        &args,
        "POST",
        "/policies",
        Some(json!({"group_id": group, "resource_id": second})),
    )
    .await;
    let api_done = change.elapsed();
    let (count, last) = arrivals(&mut heard, clients, change).await;
    // What the portal spent (the API call, the hub, every channel's send),
    // per client: the fan-out's cost on a machine of its own.
    let fanout_cpu = cpu(args.pid).saturating_sub(fanout_cpu);
    println!(
        "fan-out: one policy change reached {count}/{clients} clients in {:.1} ms (API call {:.1} ms); \
         portal CPU {:.1} us per client (fanout_ms={:.1} fanout_cpu_us_per_client={:.1})",
        (last - change).as_secs_f64() * 1e3,
        api_done.as_secs_f64() * 1e3,
        fanout_cpu.as_secs_f64() * 1e6 / clients as f64,
        (last - change).as_secs_f64() * 1e3,
        fanout_cpu.as_secs_f64() * 1e6 / clients as f64
    );
    if count < clients {
        fail("the change did not reach every client");
    }

    // A burst of API changes (resources no policy grants yet: nobody hears
    // of them), then one that every client hears: once it arrives, every
    // change before it was applied. Made by several admins at once, as a
    // team or a directory sync would: one token alone is held to its rate
    // limit (100 at once, then 20 a second).
    if args.changes > 0 {
        let workers = 8;
        let per_worker = args.changes.div_ceil(workers);
        let mut tokens = Vec::new();
        for w in 0..workers.max(per_worker.div_ceil(90) * workers).min(64) {
            let admin = id(&api(
                &args,
                "POST",
                "/actors",
                Some(json!({"name": format!("admin-{w}"), "role": "admin", "email": format!("admin-{w}@bench.test")})),
            )
            .await);
            tokens.push(
                api(&args, "POST", &format!("/actors/{admin}/tokens"), None).await["token"]
                    .as_str()
                    .expect("an API token")
                    .to_string(),
            );
        }
        let tokens = Arc::new(tokens);
        let burst = Instant::now();
        let next = Arc::new(AtomicUsize::new(0));
        let workers: Vec<_> = (0..workers)
            .map(|_| {
                let (args, next, site) = (args.clone(), next.clone(), site.clone());
                let tokens = tokens.clone();
                tokio::spawn(async move {
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        if i >= args.changes {
                            return;
                        }
                        let body = json!({"name": format!("burst-{i}"), "type": "cidr",
                            "address": format!("10.{}.{}.0/24", 100 + i / 256, i % 256), "site_id": site});
                        // Each token takes at most 90 of the burst.
                        let token = &tokens[(i / 90) % tokens.len()];
                        api_as(&args, token, "POST", "/resources", Some(body)).await;
                    }
                })
            })
            .collect();
        for worker in workers {
            worker.await.expect("an API worker");
        }
        let applied = burst.elapsed();
        let third = id(&api(
            &args,
            "POST",
            "/resources",
            Some(resource("c", "10.0.2.0/24")),
        )
        .await);
        api(
            &args,
            "POST",
            "/policies",
            Some(json!({"group_id": group, "resource_id": third})),
        )
        .await;
        let committed = burst.elapsed();
        let (count, last) = arrivals(&mut heard, clients, burst).await;
        let total = (last - burst).as_secs_f64();
        println!(
            "burst: {} API changes committed in {:.2} s ({:.0}/s); with them all applied, the last \
             reached {count}/{clients} clients after {:.2} s ({:.0} ms after its commit) = {:.0} \
             changes/s applied and fanned out (burst_changes_per_s={:.0})",
            args.changes,
            applied.as_secs_f64(),
            args.changes as f64 / applied.as_secs_f64(),
            total,
            (total - committed.as_secs_f64()).max(0.0) * 1e3,
            (args.changes + 2) as f64 / total,
            (args.changes + 2) as f64 / total
        );
        if count < clients {
            fail("the burst's last change did not reach every client");
        }
    }

    // The storm, with steady clients asking for access meanwhile.
    let (stop_tx, stop) = watch::channel(false);
    let steady_tasks: Vec<_> = (0..STEADY)
        .map(|i| {
            tokio::spawn(steady(
                args.clone(),
                clients + i,
                token.clone(),
                second.clone(),
                stop.clone(),
            ))
        })
        .collect();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let cpu_before = cpu(args.pid);
    let started = Instant::now();
    storm_tx.send_replace(true);
    for _ in 0..clients {
        if admitted.recv().await.is_none() {
            fail("the clients stopped before all reconnected");
        }
    }
    let took = started.elapsed();
    let storm_cpu = cpu(args.pid).saturating_sub(cpu_before);
    stop_tx.send_replace(true);
    let mut waits = Vec::new();
    let mut unanswered = 0;
    for task in steady_tasks {
        for wait in task.await.expect("a steady client") {
            match wait {
                Some(wait) => waits.push(wait),
                None => unanswered += 1,
            }
        }
    }
    waits.sort();
    let per_connect = storm_cpu.as_secs_f64() / clients as f64;
    println!(
        "reconnect storm: {clients} clients at once, all back in {:.2} s = {:.0} connects/s \
         ({} shed with Retry-After, {} failed otherwise); portal CPU {:.0} us per connect = {:.0} \
         connects/s per core (storm_connects_per_s={:.0} cpu_us_per_connect={:.0})",
        took.as_secs_f64(),
        clients as f64 / took.as_secs_f64(),
        tally.shed.swap(0, Ordering::Relaxed),
        tally.failed.swap(0, Ordering::Relaxed),
        per_connect * 1e6,
        1.0 / per_connect.max(1e-9),
        clients as f64 / took.as_secs_f64(),
        per_connect * 1e6
    );
    println!(
        "access requests during the storm: {} answered (p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms), \
         {unanswered} unanswered within 10 s",
        waits.len(),
        percentile(&waits, 0.5),
        percentile(&waits, 0.99),
        percentile(&waits, 1.0)
    );

    // The TLS handshake's share: handshakes alone, then closed.
    if args.tls.is_some() {
        let handshakes = clients.min(20_000);
        let cpu_before = cpu(args.pid);
        let permits = Arc::new(Semaphore::new(FIRST_CONCURRENCY));
        let tasks: Vec<_> = (0..handshakes)
            .map(|n| {
                let (args, permits) = (args.clone(), permits.clone());
                tokio::spawn(async move {
                    let _permit = permits.acquire_owned().await.expect("semaphore");
                    match open(&args, n).await {
                        Ok(stream) => drop(stream),
                        Err(error) => fail(&format!("handshake {n}: {error}")),
                    }
                })
            })
            .collect();
        for task in tasks {
            task.await.expect("a handshake");
        }
        let per_handshake =
            cpu(args.pid).saturating_sub(cpu_before).as_secs_f64() / handshakes as f64;
        println!(
            "TLS: portal CPU {:.0} us per handshake = {:.0} % of a connect's {:.0} us \
             (tls_share_pct={:.0})",
            per_handshake * 1e6,
            per_handshake / per_connect.max(1e-9) * 100.0,
            per_connect * 1e6,
            per_handshake / per_connect.max(1e-9) * 100.0
        );
    }
    if unanswered > 0 {
        fail("access requests went unanswered during the storm");
    }
    drop(storm_tx);
}
