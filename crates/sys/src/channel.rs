//! The WebSocket to the portal (docs/architecture.md, control protocol): bearer
//! token, device identity in the query, JSON text frames. It runs as a task of
//! its own and reconnects with jittered exponential backoff, so the data plane
//! keeps forwarding while the portal is away (F22); a 401 means the token is no
//! good and a 426 that the portal does not take this daemon's version: neither
//! is retried.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::{self, Message};
use url::Url;

use crate::trust::{PortalTrust, TrustError, describe_tls_error};

/// No frame at all (the portal pings every 10 s) for this long means the
/// connection is dead.
const SILENCE: Duration = Duration::from_secs(30);
const BACKOFF_FIRST: Duration = Duration::from_millis(500);
const BACKOFF_MAX: Duration = Duration::from_secs(30);
/// The first reconnect after a connection that lasted comes within this.
const FIRST_SPREAD: Duration = Duration::from_secs(3);
/// Frames queued toward the portal before the loop is told to slow down.
const QUEUE: usize = 1024;

#[derive(Debug, thiserror::Error)]
pub enum ChannelError {
    #[error(transparent)]
    Trust(#[from] TrustError),
    #[error("portal URL {0:?} is not http:// or https://")]
    Scheme(String),
    #[error("cannot resolve the portal {0}: {1}")]
    Resolve(String, String),
}

/// Who connects: the channel path on the portal.
#[derive(Clone, Copy, Debug)]
pub enum Party {
    Client,
    Gateway,
    Relay,
}

impl Party {
    fn path(self) -> &'static str {
        match self {
            Party::Client => "/v1/client",
            Party::Gateway => "/v1/gateway",
            Party::Relay => "/v1/relay",
        }
    }
}

/// What the connection says.
#[derive(Debug)]
pub enum Incoming {
    /// A (re)connection is up; the portal's `init` follows.
    Connected,
    /// A text frame.
    Text(String),
    /// The connection dropped; the next attempt is in `retry_in`.
    Lost { error: String, retry_in: Duration },
    /// The portal refused the token (HTTP 401): sign in again. Final.
    Unauthorized,
    /// The portal does not take this daemon's version (HTTP 426); its
    /// reason, in one line (which versions it takes, what to update). Final.
    VersionRefused(String),
}

#[derive(Clone, Debug)]
pub struct ChannelConfig {
    /// `http://host:port` (a path prefix is kept).
    pub portal: String,
    pub party: Party,
    pub token: String,
    /// Query parameters: device_id, public_key, name, os, version.
    pub query: Vec<(String, String)>,
    /// Roots for an https:// portal; whether http:// may leave loopback.
    pub trust: PortalTrust,
}

/// The two ends the daemon's loop holds.
pub struct Channel {
    pub incoming: mpsc::UnboundedReceiver<Incoming>,
    pub outgoing: mpsc::Sender<String>,
    reconnect: std::sync::Arc<tokio::sync::Notify>,
}

impl Channel {
    /// The host moved to another network: the connection (bound to an
    /// address that may be gone) is dropped and made again at once, and a
    /// wait between attempts is cut short.
    pub fn reconnect(&self) {
        self.reconnect.notify_one();
    }
}

/// The WebSocket URL for a portal URL and a party.
pub fn channel_url(config: &ChannelConfig) -> Result<Url, ChannelError> {
    config.trust.check(&config.portal)?;
    let mut url =
        Url::parse(&config.portal).map_err(|_| ChannelError::Scheme(config.portal.clone()))?;
    let scheme = match url.scheme() {
        "http" => "ws",
        "https" => "wss",
        _ => return Err(ChannelError::Scheme(config.portal.clone())),
    };
    url.set_scheme(scheme)
        .map_err(|_| ChannelError::Scheme(config.portal.clone()))?;
    let base = url.path().trim_end_matches('/').to_string();
    url.set_path(&format!("{base}{}", config.party.path()));
    url.query_pairs_mut().clear().extend_pairs(&config.query);
    Ok(url)
}

/// The portal's address (for the host candidate's interface).
pub async fn portal_ip(portal: &str) -> Result<std::net::IpAddr, ChannelError> {
    let url = url_host_port(portal)?;
    let mut addresses = tokio::net::lookup_host(&url)
        .await
        .map_err(|e| ChannelError::Resolve(url.clone(), e.to_string()))?;
    addresses
        .next()
        .map(|a| a.ip())
        .ok_or_else(|| ChannelError::Resolve(url.clone(), "no address".into()))
}

/// `host:port` of an http URL.
pub fn url_host_port(portal: &str) -> Result<String, ChannelError> {
    let rest = portal
        .strip_prefix("http://")
        .map(|r| (r, 80))
        .or_else(|| portal.strip_prefix("https://").map(|r| (r, 443)));
    let Some((rest, default_port)) = rest else {
        return Err(ChannelError::Scheme(portal.to_string()));
    };
    let authority = rest.split('/').next().unwrap_or(rest);
    let has_port = authority.rsplit_once(':').is_some_and(|(_, port)| {
        port.chars().all(|c| c.is_ascii_digit()) && !authority.ends_with(']')
    });
    Ok(if has_port {
        authority.to_string()
    } else {
        format!("{authority}:{default_port}")
    })
}

/// Checks a portal URL as the daemons take it, before anything else runs.
pub fn check_portal_url(portal: &str, trust: &PortalTrust) -> Result<(), ChannelError> {
    channel_url(&ChannelConfig {
        portal: portal.to_string(),
        party: Party::Client,
        token: String::new(),
        query: Vec::new(),
        trust: trust.clone(),
    })
    .map(|_| ())
}

/// Starts the connection task (needs a tokio runtime).
pub fn open(config: ChannelConfig) -> Result<Channel, ChannelError> {
    open_with_deadline(config, SILENCE)
}

/// [`open`], declaring the connection dead after `silence` without a
/// frame from the portal (which pings every 10 s) instead of 30 s.
pub fn open_with_deadline(
    config: ChannelConfig,
    silence: Duration,
) -> Result<Channel, ChannelError> {
    let url = channel_url(&config)?;
    if config.trust.check(&config.portal)? {
        tracing::warn!(
            portal = %config.portal,
            "--insecure-http: the portal channel is plain http, so tokens, the TURN secret and \
             preshared keys cross the network in clear text"
        );
    }
    let (incoming_tx, incoming) = mpsc::unbounded_channel();
    let (outgoing, outgoing_rx) = mpsc::channel(QUEUE);
    let tls = config.trust.tls();
    let reconnect = std::sync::Arc::new(tokio::sync::Notify::new());
    tokio::spawn(run(
        Connection {
            url,
            token: config.token,
            tls,
            silence,
        },
        incoming_tx,
        outgoing_rx,
        std::sync::Arc::clone(&reconnect),
    ));
    Ok(Channel {
        incoming,
        outgoing,
        reconnect,
    })
}

enum Ended {
    /// Nobody listens any more: stop.
    Closed,
    Unauthorized,
    VersionRefused(String),
    Lost(String),
    /// The portal is busy (503 or 429) and said when to come back.
    Busy(Duration),
    /// The network changed under the connection: connect again now.
    Moved,
}

/// Where and how to connect.
struct Connection {
    url: Url,
    token: String,
    tls: std::sync::Arc<rustls::ClientConfig>,
    silence: Duration,
}

async fn run(
    connection: Connection,
    incoming: mpsc::UnboundedSender<Incoming>,
    mut outgoing: mpsc::Receiver<String>,
    reconnect: std::sync::Arc<tokio::sync::Notify>,
) {
    let mut backoff = BACKOFF_FIRST;
    loop {
        let started = tokio::time::Instant::now();
        let ended = tokio::select! {
            ended = connect_and_pump(&connection, &incoming, &mut outgoing) => ended,
            () = reconnect.notified() => Ended::Moved,
        };
        let error = match ended {
            Ended::Moved => {
                backoff = BACKOFF_FIRST;
                let error = "the network changed; connecting again".to_string();
                if incoming
                    .send(Incoming::Lost {
                        error,
                        retry_in: Duration::ZERO,
                    })
                    .is_err()
                {
                    return;
                }
                while outgoing.try_recv().is_ok() {}
                continue;
            }
            Ended::Closed => return,
            Ended::Unauthorized => {
                let _ = incoming.send(Incoming::Unauthorized);
                return;
            }
            Ended::VersionRefused(reason) => {
                let _ = incoming.send(Incoming::VersionRefused(reason));
                return;
            }
            Ended::Lost(error) => error,
            Ended::Busy(wait) => {
                // Never before the portal's time; a spread after it, so the
                // clients it turned away together do not all come back at
                // the same instant.
                let retry_in = wait + spread(wait / 2);
                let error = format!(
                    "the portal is busy; it asked to connect again in {} s",
                    wait.as_secs()
                );
                if incoming.send(Incoming::Lost { error, retry_in }).is_err() {
                    return;
                }
                tokio::select! {
                    () = tokio::time::sleep(retry_in) => {}
                    () = reconnect.notified() => {}
                }
                while outgoing.try_recv().is_ok() {}
                continue;
            }
        };
        // A connection that lasted a while starts the backoff afresh, its
        // first wait spread over [0, FIRST_SPREAD): when a portal restarts,
        // all its clients lose it at once, and their returns become a ramp
        // instead of a wall.
        let retry_in = if started.elapsed() > BACKOFF_MAX {
            backoff = BACKOFF_FIRST;
            spread(FIRST_SPREAD)
        } else {
            jitter(backoff)
        };
        if incoming.send(Incoming::Lost { error, retry_in }).is_err() {
            return;
        }
        // Frames for a connection that is gone are stale (refs, candidates
        // of a session the portal forgot): drop them. A network change cuts
        // the wait short: the new network may well reach the portal.
        tokio::select! {
            () = tokio::time::sleep(retry_in) => {}
            () = reconnect.notified() => backoff = BACKOFF_FIRST,
        }
        while outgoing.try_recv().is_ok() {}
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
}

/// A failed connection in one line; a refused portal certificate says why
/// (rustls reports handshake failures through the stream's I/O error).
fn describe_connect_error(error: &tungstenite::Error, url: &Url) -> String {
    let tls = match error {
        tungstenite::Error::Io(io) => io
            .get_ref()
            .and_then(|inner| inner.downcast_ref::<rustls::Error>()),
        _ => None,
    };
    match tls {
        Some(tls) => describe_tls_error(tls, url.host_str().unwrap_or("")),
        None => error.to_string(),
    }
}

/// The portal's reason for a 426, from its answer's body (a problem+json
/// `detail`, or plain text) as far as it came with the head: one line of
/// at most 300 printable characters. The portal's word is shown, never
/// obeyed; a body that did not come gets a generic line.
fn refusal_reason(body: Option<&[u8]>) -> String {
    let body = body.unwrap_or_default();
    let text = serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v.get("detail")?.as_str().map(str::to_string))
        .unwrap_or_else(|| String::from_utf8_lossy(body).into_owned());
    let line: String = text
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .chars()
        .filter(|c| !c.is_control())
        .take(300)
        .collect();
    if line.is_empty() {
        format!(
            "the portal does not take this daemon's version ({}): update postern or the portal",
            env!("CARGO_PKG_VERSION")
        )
    } else {
        line
    }
}

/// 75-125 % of `base`.
fn jitter(base: Duration) -> Duration {
    base * 3 / 4 + spread(base / 2)
}

/// Uniform in [0, `range`), in steps of 1/65536 of it.
fn spread(range: Duration) -> Duration {
    let mut bytes = [0u8; 2];
    let _ = getrandom::fill(&mut bytes);
    range.mul_f64(f64::from(u16::from_le_bytes(bytes)) / 65536.0)
}

/// The wait a busy portal asks for (`Retry-After`, in seconds; an HTTP date
/// or nothing counts as a second), at most five minutes.
fn retry_after(response: &tungstenite::handshake::client::Response) -> Duration {
    let seconds = response
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .unwrap_or(1);
    Duration::from_secs(seconds.clamp(1, 300))
}

async fn connect_and_pump(
    connection: &Connection,
    incoming: &mpsc::UnboundedSender<Incoming>,
    outgoing: &mut mpsc::Receiver<String>,
) -> Ended {
    let Connection {
        url,
        token,
        tls,
        silence,
    } = connection;
    let silence = *silence;
    let mut request = match url.as_str().into_client_request() {
        Ok(request) => request,
        Err(error) => return Ended::Lost(error.to_string()),
    };
    match format!("Bearer {token}").parse() {
        Ok(value) => {
            request.headers_mut().insert("authorization", value);
        }
        Err(_) => return Ended::Lost("the token has characters a header cannot carry".into()),
    }
    let connector = tokio_tungstenite::Connector::Rustls(std::sync::Arc::clone(tls));
    let connect = tokio::time::timeout(
        silence,
        tokio_tungstenite::connect_async_tls_with_config(request, None, false, Some(connector)),
    );
    let mut socket = match connect.await {
        Err(_) => return Ended::Lost("connecting timed out".into()),
        Ok(Err(tungstenite::Error::Http(response))) if response.status() == 401 => {
            return Ended::Unauthorized;
        }
        Ok(Err(tungstenite::Error::Http(response))) if response.status() == 426 => {
            return Ended::VersionRefused(refusal_reason(response.body().as_deref()));
        }
        Ok(Err(tungstenite::Error::Http(response)))
            if response.status() == 503 || response.status() == 429 =>
        {
            return Ended::Busy(retry_after(&response));
        }
        Ok(Err(tungstenite::Error::Http(response))) => {
            return Ended::Lost(format!("the portal answered HTTP {}", response.status()));
        }
        Ok(Err(tungstenite::Error::Tls(tungstenite::error::TlsError::Rustls(error)))) => {
            return Ended::Lost(describe_tls_error(&error, url.host_str().unwrap_or("")));
        }
        Ok(Err(error)) => return Ended::Lost(describe_connect_error(&error, url)),
        Ok(Ok((socket, _))) => socket,
    };
    if incoming.send(Incoming::Connected).is_err() {
        return Ended::Closed;
    }
    // The deadline counts from the last frame heard, whatever is sent
    // meanwhile: a dead path swallows what we send without an error (TCP
    // retries for minutes), so only hearing the portal proves it is alive.
    let mut heard = tokio::time::Instant::now();
    loop {
        let deadline = heard + silence;
        tokio::select! {
            () = tokio::time::sleep_until(deadline) => {
                return Ended::Lost(format!("nothing heard for {} s", silence.as_secs()));
            }
            frame = socket.next() => {
                heard = tokio::time::Instant::now();
                match frame {
                    None => return Ended::Lost("the portal closed the connection".into()),
                    Some(Err(error)) => return Ended::Lost(error.to_string()),
                    Some(Ok(Message::Text(text))) => {
                        if incoming.send(Incoming::Text(text.to_string())).is_err() {
                            return Ended::Closed;
                        }
                    }
                    Some(Ok(Message::Close(frame))) => {
                        let why = frame.map(|f| f.reason.to_string()).unwrap_or_default();
                        return Ended::Lost(format!("the portal closed the connection {why}").trim().to_string());
                    }
                    // Pings are answered by tungstenite; binary frames are not
                    // part of the protocol.
                    Some(Ok(_)) => {}
                }
            }
            message = outgoing.recv() => match message {
                None => {
                    let _ = tokio::time::timeout(Duration::from_secs(1), socket.close(None)).await;
                    return Ended::Closed;
                }
                Some(text) => {
                    // A send that cannot finish (a full socket buffer on a
                    // dead path) ends at the deadline too.
                    let sent = tokio::time::timeout_at(deadline, socket.send(Message::Text(text.into())));
                    match sent.await {
                        Ok(Ok(())) => {}
                        Ok(Err(error)) => return Ended::Lost(error.to_string()),
                        Err(_) => {
                            return Ended::Lost(format!("nothing heard for {} s", silence.as_secs()));
                        }
                    }
                }
            },
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // a test: unwrap is the assertion
    use super::*;
    use std::io::{Read as _, Write as _};
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// A portal on loopback that answers every handshake with `answer`;
    /// its URL and how many connections it took.
    fn refusing_portal(answer: &'static str) -> (String, Arc<AtomicUsize>) {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let portal = format!("http://{}", listener.local_addr().unwrap());
        let taken = Arc::new(AtomicUsize::new(0));
        let counted = Arc::clone(&taken);
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                counted.fetch_add(1, Ordering::SeqCst);
                let mut head = Vec::new();
                let mut byte = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") && stream.read(&mut byte).unwrap_or(0) == 1 {
                    head.push(byte[0]);
                }
                let _ = stream.write_all(answer.as_bytes());
            }
        });
        (portal, taken)
    }

    async fn refused_with(answer: &'static str) -> (Vec<Incoming>, usize) {
        let (portal, taken) = refusing_portal(answer);
        let mut channel = open(ChannelConfig {
            portal,
            party: Party::Gateway,
            token: "t".into(),
            query: vec![("version".into(), "9.9.9".into())],
            trust: PortalTrust::new(None, false).unwrap(),
        })
        .unwrap();
        let mut heard = Vec::new();
        // The task ends after a final answer: the channel closes.
        while let Some(incoming) =
            tokio::time::timeout(Duration::from_secs(5), channel.incoming.recv())
                .await
                .unwrap()
        {
            heard.push(incoming);
        }
        (heard, taken.load(Ordering::SeqCst))
    }

    #[tokio::test]
    async fn a_426_is_final_and_says_the_portals_reason() {
        let (heard, taken) = refused_with(
            "HTTP/1.1 426 Upgrade Required\r\nContent-Type: application/problem+json\r\n\
             Content-Length: 85\r\nConnection: close\r\n\r\n\
             {\"status\":426,\"detail\":\"this portal accepts daemons 0.1.0 to 0.1.x;\\nupdate postern\"}",
        )
        .await;
        assert!(
            matches!(
                &heard[..],
                [Incoming::VersionRefused(reason)]
                    if reason == "this portal accepts daemons 0.1.0 to 0.1.x; update postern"
            ),
            "{heard:?}"
        );
        assert_eq!(taken, 1, "never retried");
    }

    #[tokio::test]
    async fn a_426_without_a_body_still_stops_with_a_line() {
        let (heard, taken) =
            refused_with("HTTP/1.1 426 Upgrade Required\r\nConnection: close\r\n\r\n").await;
        assert!(
            matches!(
                &heard[..],
                [Incoming::VersionRefused(reason)] if reason.contains("update postern")
            ),
            "{heard:?}"
        );
        assert_eq!(taken, 1);
    }

    /// A portal on loopback that completes WebSocket handshakes and then
    /// says nothing (a path that died: no pings, no errors); its URL and
    /// how many connections it took.
    async fn silent_portal() -> (String, Arc<AtomicUsize>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let portal = format!("http://{}", listener.local_addr().unwrap());
        let taken = Arc::new(AtomicUsize::new(0));
        let counted = Arc::clone(&taken);
        tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    return;
                };
                counted.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let Ok(mut socket) = tokio_tungstenite::accept_async(tcp).await else {
                        return;
                    };
                    // Reads (so sends never block) and never answers.
                    while let Some(Ok(_)) = socket.next().await {}
                });
            }
        });
        (portal, taken)
    }

    async fn next(channel: &mut Channel) -> Incoming {
        tokio::time::timeout(Duration::from_secs(5), channel.incoming.recv())
            .await
            .expect("the channel said nothing")
            .unwrap()
    }

    fn config(portal: String) -> ChannelConfig {
        ChannelConfig {
            portal,
            party: Party::Client,
            token: "t".into(),
            query: Vec::new(),
            trust: PortalTrust::new(None, false).unwrap(),
        }
    }

    #[tokio::test]
    async fn a_portal_that_falls_silent_is_lost_at_the_deadline_while_we_keep_sending() {
        let (portal, _) = silent_portal().await;
        let mut channel = open_with_deadline(config(portal), Duration::from_millis(600)).unwrap();
        assert!(matches!(next(&mut channel).await, Incoming::Connected));
        let connected = tokio::time::Instant::now();
        // The daemon goes on sending (requests, candidates): that must not
        // keep a connection alive that hears nothing.
        let outgoing = channel.outgoing.clone();
        let sender = tokio::spawn(async move {
            while outgoing.send("{}".into()).await.is_ok() {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        });
        let lost = next(&mut channel).await;
        let after = connected.elapsed();
        sender.abort();
        assert!(
            matches!(&lost, Incoming::Lost { error, .. } if error.contains("nothing heard")),
            "{lost:?}"
        );
        assert!(
            after < Duration::from_millis(1500),
            "lost after {after:?}, deadline 600 ms"
        );
    }

    #[tokio::test]
    async fn a_busy_portal_is_asked_again_after_its_retry_after_and_not_before() {
        let (portal, taken) = refusing_portal(
            "HTTP/1.1 503 Service Unavailable\r\nRetry-After: 7\r\nContent-Length: 0\r\n\r\n",
        );
        let mut channel = open(config(portal)).unwrap();
        let lost = next(&mut channel).await;
        let Incoming::Lost { error, retry_in } = &lost else {
            panic!("{lost:?}");
        };
        assert!(error.contains("busy") && error.contains("7 s"), "{error}");
        // The portal's time, plus up to half of it again as spread.
        assert!(
            *retry_in >= Duration::from_secs(7) && *retry_in < Duration::from_millis(10_500),
            "{retry_in:?}"
        );
        // Not asked again meanwhile.
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(taken.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn spreads_cover_their_range_and_stay_in_it() {
        let waits: Vec<Duration> = (0..2000).map(|_| spread(FIRST_SPREAD)).collect();
        assert!(waits.iter().all(|w| *w < FIRST_SPREAD));
        // Both ends of the range are used: a storm becomes a ramp.
        assert!(waits.iter().any(|w| *w < FIRST_SPREAD / 10));
        assert!(waits.iter().any(|w| *w > FIRST_SPREAD * 9 / 10));
        let jittered: Vec<Duration> = (0..2000).map(|_| jitter(BACKOFF_FIRST)).collect();
        assert!(
            jittered
                .iter()
                .all(|w| *w >= BACKOFF_FIRST * 3 / 4 && *w < BACKOFF_FIRST * 5 / 4)
        );
    }

    #[tokio::test]
    async fn a_network_change_reconnects_at_once() {
        let (portal, taken) = silent_portal().await;
        let mut channel = open_with_deadline(config(portal), Duration::from_secs(30)).unwrap();
        assert!(matches!(next(&mut channel).await, Incoming::Connected));
        channel.reconnect();
        let started = tokio::time::Instant::now();
        assert!(matches!(
            next(&mut channel).await,
            Incoming::Lost { retry_in, .. } if retry_in.is_zero()
        ));
        assert!(matches!(next(&mut channel).await, Incoming::Connected));
        assert!(started.elapsed() < Duration::from_secs(1));
        assert_eq!(taken.load(Ordering::SeqCst), 2);
    }

    #[test]
    fn the_reason_is_one_bounded_printable_line() {
        assert_eq!(
            refusal_reason(Some(b"  too\r\nold \x1b[31m ")),
            "too old [31m"
        );
        assert_eq!(refusal_reason(Some(&[b'x'; 1000])).len(), 300);
        assert_eq!(refusal_reason(Some(br#"{"detail": "why"}"#)), "why");
    }
}
