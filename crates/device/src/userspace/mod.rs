//! The client without root (SPEC 7.7, `postern client up --userspace
//! --socks5 ADDR`): no TUN, no routes, no DNS settings. Apps reach
//! resources through a SOCKS5 proxy; a TCP/IP stack in the process
//! ([`netstack`], smoltcp) turns their connections into the packets the
//! client role already handles, so access on the first packet, DNS
//! resources by name, filters, revocation and failover are the TUN
//! client's, unchanged.
//!
//! - [`socks`]: the SOCKS5 protocol;
//! - [`proxy`]: the listener and each connection's task;
//! - [`netstack`]: the TCP/IP stack (sans-IO);
//! - this module: what the device loop holds, moving bytes between the
//!   connections' pipes and the stack.

pub mod netstack;
mod proxy;
pub mod socks;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use postern_tunnel::flows::EndedFlow;
use smoltcp::socket::tcp;
use tokio::sync::{Notify, mpsc, oneshot};

use netstack::{ConnectionId, Event, Netstack, Refusal};
use proxy::{PIPE_BYTES, PIPE_DATAGRAMS, Pipe, Request};

pub use proxy::Request as ProxyRequest;

use crate::stub::StubQuery;

/// Requests from the connections' tasks waiting for the loop.
const REQUESTS: usize = 256;

/// What the device loop holds in userspace mode.
pub struct Userspace {
    netstack: Netstack,
    requests: mpsc::Receiver<Request>,
    /// The tasks wake the loop through this when a pipe needs it.
    wake: Arc<Notify>,
    pipes: HashMap<ConnectionId, Arc<Pipe>>,
    /// Connections being opened: where the outcome goes.
    opening: HashMap<ConnectionId, oneshot::Sender<Result<SocketAddr, Refusal>>>,
    /// Where the proxy listens.
    pub listening: SocketAddr,
}

impl Userspace {
    /// Listens for SOCKS5 clients on `listen`; names are asked through
    /// `queries` (the loop's DNS queue).
    /// `seed` is fresh randomness (sequence numbers, ports, query ids).
    pub fn start(
        listen: SocketAddr,
        queries: mpsc::Sender<StubQuery>,
        now: Instant,
        seed: u64,
    ) -> std::io::Result<Userspace> {
        let (requests_tx, requests) = mpsc::channel(REQUESTS);
        let wake = Arc::new(Notify::new());
        let listening = proxy::serve(listen, requests_tx, queries, Arc::clone(&wake), seed)?;
        Ok(Userspace {
            netstack: Netstack::new(now, seed),
            requests,
            wake,
            pipes: HashMap::new(),
            opening: HashMap::new(),
            listening,
        })
    }

    /// A connection's task asks something (`Some`), or has bytes or an
    /// end in its pipe (`None`: the loop's flush moves them).
    pub async fn next(&mut self) -> Option<Request> {
        tokio::select! {
            request = self.requests.recv() => request,
            () = self.wake.notified() => None,
        }
    }

    /// The tunnel addresses are known.
    pub fn configure(&mut self, config: &postern_tunnel::effect::TunConfig, now: Instant) {
        self.netstack.configure(config.ipv4, config.ipv6, now);
    }

    pub fn handle(&mut self, request: Request, now: Instant) {
        match request {
            Request::Connect {
                id,
                to,
                pipe,
                answer,
            } => {
                self.pipes.insert(id, pipe);
                self.opening.insert(id, answer);
                self.netstack.open_tcp(id, to, now);
            }
            Request::Associate { id, pipe, answer } => {
                let opened = self.netstack.open_udp(id);
                if opened.is_ok() {
                    self.pipes.insert(id, pipe);
                }
                let _ = answer.send(opened);
            }
        }
    }

    /// A packet out of the tunnel (or the role's ICMP answer) for the
    /// stack.
    pub fn receive(&mut self, packet: &[u8]) {
        self.netstack.receive(packet);
    }

    /// A packet the stack sends, for the role.
    pub fn poll_transmit(&mut self) -> Option<Vec<u8>> {
        self.netstack.poll_transmit()
    }

    pub fn poll_at(&mut self, now: Instant) -> Option<Instant> {
        self.netstack.poll_at(now)
    }

    /// Their access ended: the apps' connections are reset.
    pub fn flows_ended(&mut self, flows: &[EndedFlow]) {
        self.netstack.flows_ended(flows);
        self.events();
    }

    /// Connections open now (for the status).
    pub fn connections(&self) -> usize {
        self.netstack.connections()
    }

    /// One turn: packets in are processed, the pipes' bytes moved both
    /// ways, what the stack sends queued, connections opened or refused.
    pub fn pump(&mut self, now: Instant) {
        self.netstack.poll(now);
        // Connections the stack ended (revoked, refused) first: their
        // pipes hear why before the bytes are moved.
        self.events();
        let ids: Vec<ConnectionId> = self.pipes.keys().copied().collect();
        for id in ids {
            let Some(pipe) = self.pipes.get(&id).cloned() else {
                continue;
            };
            if self.opening.contains_key(&id) {
                continue;
            }
            let finished = if self.netstack.udp(id).is_some() {
                self.move_datagrams(id, &pipe)
            } else {
                self.move_bytes(id, &pipe)
            };
            if finished {
                self.netstack.remove(id);
                self.pipes.remove(&id);
            }
        }
        self.netstack.poll(now);
        self.events();
    }

    fn events(&mut self) {
        while let Some(event) = self.netstack.poll_event() {
            match event {
                Event::Opened { id, local } => {
                    let Some(answer) = self.opening.remove(&id) else {
                        continue;
                    };
                    if answer.send(Ok(local)).is_err()
                        && let Some(pipe) = self.pipes.get(&id)
                    {
                        // The app left while the connection opened: the
                        // next pump aborts it and forgets it.
                        pipe.lock().gone = true;
                    }
                }
                Event::Refused { id, why } => {
                    if let Some(answer) = self.opening.remove(&id) {
                        let _ = answer.send(Err(why));
                    }
                    self.pipes.remove(&id);
                }
                Event::Revoked { id } => {
                    tracing::debug!(id, "connection revoked: the app's is reset");
                    if let Some(answer) = self.opening.remove(&id) {
                        let _ = answer.send(Err(Refusal::NotAllowed));
                    }
                    if let Some(pipe) = self.pipes.remove(&id) {
                        pipe.lock().reset = true;
                        pipe.data.notify_one();
                        pipe.room.notify_one();
                    }
                }
            }
        }
    }

    /// A TCP connection's bytes both ways; true when it is over.
    fn move_bytes(&mut self, id: ConnectionId, pipe: &Pipe) -> bool {
        let Some(socket) = self.netstack.tcp(id) else {
            // Gone without a word: the app's connection cannot end well.
            pipe.lock().reset = true;
            pipe.data.notify_one();
            pipe.room.notify_one();
            return true;
        };
        let mut state = pipe.lock();
        if state.up_reset {
            // The app's connection was reset: so is the far end's, so that
            // a cut-off upload is not taken for a whole one.
            socket.abort();
            return true;
        }
        let (mut data, mut room) = (false, false);
        // Once the far end has closed (or reset), nothing more comes: what
        // is in the buffer goes to the pipe whole, before a TIME-WAIT's end
        // could clear it.
        let ended = !matches!(
            socket.state(),
            tcp::State::Established | tcp::State::FinWait1 | tcp::State::FinWait2
        );
        let limit = if ended { usize::MAX } else { PIPE_BYTES };
        while socket.can_recv() && state.down.len() < limit {
            let free = limit - state.down.len();
            let taken = socket
                .recv(|bytes| {
                    let n = bytes.len().min(free);
                    state.down.extend_from_slice(&bytes[..n]);
                    (n, n)
                })
                .unwrap_or(0);
            if taken == 0 {
                break;
            }
            data = true;
        }
        if !state.down_closed && !state.reset && socket.recv_queue() == 0 {
            // smoltcp says "finished" after the far end's FIN (also once
            // closed), "invalid state" after a reset or a timeout.
            match socket.recv(|_| (0, ())) {
                Err(tcp::RecvError::Finished) => {
                    state.down_closed = true;
                    data = true;
                }
                Err(tcp::RecvError::InvalidState) => {
                    state.reset = true;
                    data = true;
                }
                Ok(()) => {}
            }
        }
        if !state.up.is_empty() && socket.can_send() {
            let (first, second) = state.up.as_slices();
            let mut sent = socket.send_slice(first).unwrap_or(0);
            if sent == first.len() && !second.is_empty() {
                sent += socket.send_slice(second).unwrap_or(0);
            }
            state.up.drain(..sent);
            room |= sent > 0;
        }
        if state.up_closed && state.up.is_empty() && socket.may_send() {
            socket.close();
        }
        let finished = if state.gone {
            let closed = matches!(socket.state(), tcp::State::Closed | tcp::State::TimeWait);
            let both_closed = state.up_closed && state.down_closed;
            if !closed && !both_closed {
                // The app went away mid-connection: the far end hears so.
                socket.abort();
            }
            closed
        } else {
            false
        };
        drop(state);
        if data {
            pipe.data.notify_one();
        }
        if room {
            pipe.room.notify_one();
        }
        finished
    }

    /// An association's datagrams both ways; true when it is over.
    fn move_datagrams(&mut self, id: ConnectionId, pipe: &Pipe) -> bool {
        let Some(socket) = self.netstack.udp(id) else {
            return true;
        };
        let mut state = pipe.lock();
        if state.gone {
            return true;
        }
        while socket.can_send() {
            let Some((to, payload)) = state.datagrams_up.pop_front() else {
                break;
            };
            if let Err(error) = socket.send_slice(&payload, smoltcp::wire::IpEndpoint::from(to)) {
                tracing::debug!(%to, %error, "SOCKS5 datagram dropped");
            }
        }
        let mut data = false;
        while socket.can_recv() && state.datagrams_down.len() < PIPE_DATAGRAMS {
            let Ok((payload, meta)) = socket.recv() else {
                break;
            };
            let from = SocketAddr::new(meta.endpoint.addr.into(), meta.endpoint.port);
            state.datagrams_down.push_back((from, payload.to_vec()));
            data = true;
        }
        drop(state);
        if data {
            pipe.data.notify_one();
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use std::net::{IpAddr, Ipv4Addr};
    use std::time::Duration;

    use postern_tunnel::effect::TunConfig;

    use super::netstack::testing::Far;
    use super::*;

    /// One round: the stack runs, its packets reach the far end, the far
    /// end's come back.
    fn round(userspace: &mut Userspace, far: &mut Far, now: Instant, since: Instant) {
        userspace.pump(now);
        let sent: Vec<Vec<u8>> = std::iter::from_fn(|| userspace.poll_transmit()).collect();
        let at = smoltcp::time::Instant::from_micros(
            i64::try_from(now.duration_since(since).as_micros()).unwrap_or(i64::MAX),
        );
        for packet in far.step(at, sent) {
            userspace.receive(&packet);
        }
    }

    /// Review: the far end closes while the pipe to the app is full, then
    /// the app half-closes; the last bytes must reach the app and end in a
    /// close, not a reset (smoltcp is "Closed" by then either way).
    #[tokio::test]
    async fn a_far_end_that_closes_while_the_app_is_slow_loses_nothing() {
        let since = Instant::now();
        let (queries, _unused) = mpsc::channel(1);
        let mut userspace =
            Userspace::start("127.0.0.1:0".parse().unwrap(), queries, since, 7).unwrap();
        userspace.configure(
            &TunConfig {
                ipv4: Ipv4Addr::new(100, 64, 0, 7),
                ipv4_prefix: 32,
                ipv6: "fd00:100::7".parse().unwrap(),
                ipv6_prefix: 128,
            },
            since,
        );
        let mut far = Far::new(smoltcp::time::Instant::from_micros(0));
        let pipe = Arc::new(Pipe::default());
        let (answer, mut opened) = oneshot::channel();
        userspace.handle(
            Request::Connect {
                id: 1,
                to: "10.0.1.80:80".parse().unwrap(),
                pipe: Arc::clone(&pipe),
                answer,
            },
            since,
        );
        let mut now = since;
        for _ in 0..10 {
            now += Duration::from_millis(1);
            round(&mut userspace, &mut far, now, since);
        }
        let local = opened.try_recv().unwrap().unwrap();
        assert_eq!(local.ip(), IpAddr::V4(Ipv4Addr::new(100, 64, 0, 7)));
        // 700 KB from the far end, then its FIN; the app reads nothing.
        let total = 700 * 1024;
        let payload: Vec<u8> = (0..total).map(|i| (i % 251) as u8).collect();
        let mut offered = 0;
        for _ in 0..2000 {
            if offered < total {
                offered += far.socket().send_slice(&payload[offered..]).unwrap();
            } else if far.socket().may_send() {
                far.socket().close();
            }
            now += Duration::from_millis(1);
            round(&mut userspace, &mut far, now, since);
        }
        assert_eq!(offered, total);
        // Past the pipe's bound: once the far end closed nothing more
        // comes, and the socket's buffer goes to the pipe whole.
        assert!(pipe.lock().down.len() > PIPE_BYTES);
        // The app half-closes; its side's FIN goes out, the far end's
        // ACK closes the socket; only then does the app read.
        pipe.lock().up_closed = true;
        for _ in 0..50 {
            now += Duration::from_millis(1);
            round(&mut userspace, &mut far, now, since);
        }
        let mut received = Vec::new();
        for _ in 0..2000 {
            let (data, closed, reset) = {
                let mut state = pipe.lock();
                (
                    std::mem::take(&mut state.down),
                    state.down_closed,
                    state.reset,
                )
            };
            received.extend(data);
            assert!(
                !reset,
                "a close, not a reset, after {} bytes",
                received.len()
            );
            if closed && pipe.lock().down.is_empty() {
                break;
            }
            now += Duration::from_millis(1);
            round(&mut userspace, &mut far, now, since);
        }
        assert_eq!(received.len(), total);
        assert!(received == payload, "every byte, in order");
        assert!(pipe.lock().down_closed);
    }
}
