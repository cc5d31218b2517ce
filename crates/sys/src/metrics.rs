//! Prometheus text for the daemons (F32). The daemon's loop keeps plain
//! counters on its packet path and publishes them into atomics on each
//! timer tick; a scrape reads the atomics. The endpoint is a few lines over
//! std's TcpListener: a scrape is one GET and needs no HTTP stack.

use std::fmt::Write as _;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

/// Serves `GET /metrics` with whatever `render` returns, and `GET /healthz`
/// (the daemon's process answers: 200 "ok"), on a thread.
pub fn serve(
    address: SocketAddr,
    render: impl Fn() -> String + Send + 'static,
) -> std::io::Result<JoinHandle<()>> {
    serve_on(TcpListener::bind(address)?, render)
}

/// [`serve`] on a listener already bound.
pub fn serve_on(
    listener: TcpListener,
    render: impl Fn() -> String + Send + 'static,
) -> std::io::Result<JoinHandle<()>> {
    std::thread::Builder::new()
        .name("metrics".into())
        .spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
                let first_line = request_head(&mut stream);
                let (status, kind, body) = if first_line.starts_with("GET /metrics ") {
                    ("200 OK", "text/plain; version=0.0.4", render())
                } else if first_line.starts_with("GET /healthz ") {
                    // Liveness only: this thread answering means the process
                    // runs; the portal link is in `postern_portal_connected`.
                    ("200 OK", "text/plain; charset=utf-8", "ok\n".to_string())
                } else {
                    (
                        "404 Not Found",
                        "text/plain; charset=utf-8",
                        "only /metrics and /healthz are served here\n".to_string(),
                    )
                };
                let _ = write!(
                    stream,
                    "HTTP/1.1 {status}\r\nContent-Type: {kind}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
            }
        })
}

/// The request head, read to its end (a request may come in pieces; a reset
/// from unread bytes could cut the answer), at most 1 KiB, within the read
/// timeout. Only its first line matters.
fn request_head(stream: &mut impl Read) -> String {
    let mut request = [0u8; 1024];
    let mut n = 0;
    while n < request.len() && !request[..n].windows(4).any(|w| w == b"\r\n\r\n") {
        match stream.read(&mut request[n..]) {
            Ok(0) | Err(_) => break,
            Ok(read) => n += read,
        }
    }
    String::from_utf8_lossy(&request[..n]).into_owned()
}

/// What a device loop counts, owned by the loop (no atomics on the packet
/// path).
#[derive(Clone, Debug, Default)]
pub struct Tally {
    pub datagrams_received: u64,
    pub datagrams_sent: u64,
    pub send_dropped: u64,
    pub tun_packets_read: u64,
    pub tun_bytes_read: u64,
    pub tun_packets_written: u64,
    pub tun_bytes_written: u64,
    /// Packets refused or dropped, by reason (the daemon's own labels).
    pub dropped: Vec<(&'static str, u64)>,
    /// Errors met (bad candidates, WireGuard refusals...), by reason.
    pub errors: Vec<(&'static str, u64)>,
}

impl Tally {
    pub fn drop_reason(&mut self, reason: &'static str) {
        match self.dropped.iter_mut().find(|(r, _)| *r == reason) {
            Some((_, count)) => *count += 1,
            None => self.dropped.push((reason, 1)),
        }
    }
}

/// The published view, shared with the metrics thread.
#[derive(Debug, Default)]
pub struct DeviceMetrics {
    role: &'static str,
    portal_connected: AtomicU64,
    peers: AtomicU64,
    /// Gateway: authorized clients; client: resources.
    entries: AtomicU64,
    tally: std::sync::Mutex<Tally>,
}

impl DeviceMetrics {
    pub fn new(role: &'static str) -> Arc<Self> {
        Arc::new(DeviceMetrics {
            role,
            ..Default::default()
        })
    }

    /// Called by the loop a few times a second.
    pub fn publish(&self, tally: &Tally, portal_connected: bool, peers: usize, entries: usize) {
        self.portal_connected
            .store(u64::from(portal_connected), Ordering::Relaxed);
        self.peers.store(peers as u64, Ordering::Relaxed);
        self.entries.store(entries as u64, Ordering::Relaxed);
        if let Ok(mut published) = self.tally.lock() {
            published.clone_from(tally);
        }
    }

    pub fn render(&self) -> String {
        let tally = self.tally.lock().map(|t| t.clone()).unwrap_or_default();
        let role = self.role;
        let mut out = String::new();
        let mut metric = |name: &str, kind: &str, help: &str, lines: &[(String, u64)]| {
            let _ = writeln!(
                out,
                "# HELP postern_{name} {help}\n# TYPE postern_{name} {kind}"
            );
            for (labels, value) in lines {
                let _ = writeln!(out, "postern_{name}{labels} {value}");
            }
        };
        let plain = |v: u64| vec![(format!("{{role=\"{role}\"}}"), v)];
        metric(
            "portal_connected",
            "gauge",
            "1 while the portal channel is up",
            &plain(self.portal_connected.load(Ordering::Relaxed)),
        );
        metric(
            "peers",
            "gauge",
            "tunnel peers (gateways of a client, clients of a gateway)",
            &plain(self.peers.load(Ordering::Relaxed)),
        );
        let (entries, help) = if role == "gateway" {
            ("authorized_clients", "clients holding an authorization")
        } else {
            ("resources", "resources this client may ask for")
        };
        metric(
            entries,
            "gauge",
            help,
            &plain(self.entries.load(Ordering::Relaxed)),
        );
        metric(
            "udp_datagrams_total",
            "counter",
            "datagrams on the tunnel socket",
            &[
                (
                    format!("{{role=\"{role}\",direction=\"received\"}}"),
                    tally.datagrams_received,
                ),
                (
                    format!("{{role=\"{role}\",direction=\"sent\"}}"),
                    tally.datagrams_sent,
                ),
            ],
        );
        metric(
            "udp_send_dropped_total",
            "counter",
            "datagrams the kernel would not take",
            &plain(tally.send_dropped),
        );
        metric(
            "tun_packets_total",
            "counter",
            "IP packets through the TUN interface",
            &[
                (
                    format!("{{role=\"{role}\",direction=\"read\"}}"),
                    tally.tun_packets_read,
                ),
                (
                    format!("{{role=\"{role}\",direction=\"written\"}}"),
                    tally.tun_packets_written,
                ),
            ],
        );
        metric(
            "tun_bytes_total",
            "counter",
            "bytes of IP packets through the TUN interface",
            &[
                (
                    format!("{{role=\"{role}\",direction=\"read\"}}"),
                    tally.tun_bytes_read,
                ),
                (
                    format!("{{role=\"{role}\",direction=\"written\"}}"),
                    tally.tun_bytes_written,
                ),
            ],
        );
        let dropped: Vec<(String, u64)> = tally
            .dropped
            .iter()
            .map(|(reason, count)| (format!("{{role=\"{role}\",reason=\"{reason}\"}}"), *count))
            .collect();
        metric(
            "packets_dropped_total",
            "counter",
            "packets refused or dropped, by reason",
            &dropped,
        );
        let errors: Vec<(String, u64)> = tally
            .errors
            .iter()
            .map(|(reason, count)| (format!("{{role=\"{role}\",reason=\"{reason}\"}}"), *count))
            .collect();
        metric(
            "errors_total",
            "counter",
            "errors met on the data path (candidates, WireGuard, relays), by reason",
            &errors,
        );
        out
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // a test: unwrap is the assertion
    use super::*;

    fn get(address: SocketAddr, path: &str) -> String {
        let mut stream = std::net::TcpStream::connect(address).unwrap();
        // In pieces, as a slow client may send it.
        write!(stream, "GET {path} HTTP/1.1\r\nHost: metrics\r\n\r\n").unwrap();
        let mut answer = String::new();
        stream.read_to_string(&mut answer).unwrap();
        answer
    }

    #[test]
    fn healthz_metrics_and_nothing_else() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let address = listener.local_addr().unwrap();
        serve_on(listener, || "postern_up 1\n".to_string()).unwrap();
        let health = get(address, "/healthz");
        assert!(health.starts_with("HTTP/1.1 200 OK\r\n"), "{health}");
        assert!(health.ends_with("\r\n\r\nok\n"), "{health}");
        let metrics = get(address, "/metrics");
        assert!(metrics.starts_with("HTTP/1.1 200 OK\r\n"), "{metrics}");
        assert!(metrics.ends_with("\r\n\r\npostern_up 1\n"), "{metrics}");
        let other = get(address, "/healthzz");
        assert!(other.starts_with("HTTP/1.1 404 "), "{other}");
    }
}
