//! Probes that measure a lab from inside its hosts: a UDP reflector that
//! answers with the source address it saw (what a STUN server does), and
//! helpers for mapped addresses and round-trip times.

use std::net::{SocketAddr, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::error::{LabError, Result};
use crate::host::Host;

/// Answers every datagram with the text form of its source address. Stops
/// when dropped.
#[derive(Debug)]
pub struct Reflector {
    pub addr: SocketAddr,
    received: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Reflector {
    /// Starts a reflector bound to `addr` inside `host`.
    pub fn start(host: &Host, addr: SocketAddr) -> Result<Reflector> {
        let socket = udp_socket(host, addr)?;
        socket.set_read_timeout(Some(Duration::from_millis(50)))?;
        let stop = Arc::new(AtomicBool::new(false));
        let received = Arc::new(AtomicUsize::new(0));
        let (thread_stop, thread_received) = (Arc::clone(&stop), Arc::clone(&received));
        let thread = std::thread::Builder::new()
            .name(format!("reflector-{addr}"))
            .spawn(move || {
                let mut buf = [0u8; 2048];
                while !thread_stop.load(Ordering::Relaxed) {
                    if let Ok((_, from)) = socket.recv_from(&mut buf) {
                        thread_received.fetch_add(1, Ordering::Relaxed);
                        let _ = socket.send_to(from.to_string().as_bytes(), from);
                    }
                }
            })?;
        Ok(Reflector {
            addr,
            received,
            stop,
            thread: Some(thread),
        })
    }

    /// Datagrams received so far.
    pub fn received(&self) -> usize {
        self.received.load(Ordering::Relaxed)
    }
}

impl Drop for Reflector {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// A UDP socket bound to `addr` inside `host`, with a 100 ms read timeout.
pub fn udp_socket(host: &Host, addr: SocketAddr) -> Result<UdpSocket> {
    let socket = host.enter(|| UdpSocket::bind(addr))?.map_err(|error| {
        LabError::Invalid(format!("cannot bind {addr} in {}: {error}", host.name()))
    })?;
    socket.set_read_timeout(Some(Duration::from_millis(100)))?;
    Ok(socket)
}

/// Asks a reflector which source address it sees for `socket` (retrying, as
/// STUN does); `None` when no answer comes within about a second.
pub fn observed_address(socket: &UdpSocket, reflector: SocketAddr) -> Option<SocketAddr> {
    let mut buf = [0u8; 256];
    for _ in 0..10 {
        socket.send_to(b"probe", reflector).ok()?;
        if let Ok((n, from)) = socket.recv_from(&mut buf)
            && from == reflector
        {
            return std::str::from_utf8(&buf[..n]).ok()?.parse().ok();
        }
    }
    None
}

/// Round-trip time of one probe to a reflector (`None` after a second).
pub fn rtt(socket: &UdpSocket, reflector: SocketAddr) -> Option<Duration> {
    let mut buf = [0u8; 256];
    let start = Instant::now();
    socket.send_to(b"ping", reflector).ok()?;
    let deadline = start + Duration::from_secs(1);
    while Instant::now() < deadline {
        if let Ok((_, from)) = socket.recv_from(&mut buf)
            && from == reflector
        {
            return Some(start.elapsed());
        }
    }
    None
}

/// Median RTT over `count` probes, ignoring lost ones; `None` if most were lost.
pub fn median_rtt(socket: &UdpSocket, reflector: SocketAddr, count: usize) -> Option<Duration> {
    let mut samples: Vec<Duration> = (0..count).filter_map(|_| rtt(socket, reflector)).collect();
    if samples.len() <= count / 2 {
        return None;
    }
    samples.sort();
    samples.get(samples.len() / 2).copied()
}

/// Simultaneous open: both sockets send to the other's public address at
/// once, as ICE connectivity checks do. True when each heard the other.
pub fn punch(a: &UdpSocket, a_public: SocketAddr, b: &UdpSocket, b_public: SocketAddr) -> bool {
    let mut buf = [0u8; 64];
    let (mut a_heard, mut b_heard) = (false, false);
    for _ in 0..10 {
        let _ = a.send_to(b"from a", b_public);
        let _ = b.send_to(b"from b", a_public);
        if let Ok((n, _)) = a.recv_from(&mut buf) {
            a_heard |= &buf[..n] == b"from b";
        }
        if let Ok((n, _)) = b.recv_from(&mut buf) {
            b_heard |= &buf[..n] == b"from a";
        }
        if a_heard && b_heard {
            break;
        }
    }
    a_heard && b_heard
}
