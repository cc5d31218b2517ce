//! One relay worker: a listening socket, the relayed sockets of its
//! allocations, and one shard of the TURN core, driven by a mio loop.

use std::collections::HashMap;
use std::io::{self, IoSliceMut};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use mio::net::UdpSocket;
use mio::{Events, Interest, Poll, Registry, Token, Waker};
use postern_turn::server::{
    ClientAction, Now, PEER_HEADROOM, PEER_TAILROOM, PeerAction, RelaySockets, Server, ServerConfig,
};
use quinn_udp::{RecvMeta, Transmit, UdpSocketState};
use socket2::{Domain, Protocol, Socket, Type};

use crate::RelayError;
use crate::metrics::{Metrics, SendDrop};
use crate::stream::{self, Streams};

/// Datagrams per receive call (recvmmsg).
const BATCH: usize = 32;
/// Room per received datagram: a GRO batch is at most 64 KiB.
const SLOT: usize = 65_536;
/// Socket buffers asked for; the kernel caps them at net.core.[rw]mem_max.
const SOCKET_BUFFER: usize = 8 << 20;
/// The listening socket's token; relayed sockets use their port number.
const MAIN: Token = Token(0);
/// The waker's token: a [`Control`] is waiting.
const WAKE: Token = Token(1 << 20);

/// What the relay asks of a running worker.
#[derive(Debug)]
pub(crate) enum Control {
    /// See [`postern_turn::server::Server::revoke`].
    Revoke {
        ids: Arc<[String]>,
        not_after_unix: u64,
    },
}

struct RelaySocket {
    socket: UdpSocket,
    state: UdpSocketState,
}

/// The relayed sockets, opened and closed at the core's request.
struct RelayTable {
    registry: Registry,
    sockets: HashMap<u16, RelaySocket>,
}

impl RelaySockets for RelayTable {
    fn open(&mut self, ip: IpAddr, port: u16) -> bool {
        let any: IpAddr = if ip.is_ipv4() {
            Ipv4Addr::UNSPECIFIED.into()
        } else {
            Ipv6Addr::UNSPECIFIED.into()
        };
        let opened =
            open_socket(SocketAddr::new(any, port), false).and_then(|(mut socket, state)| {
                self.registry.register(
                    &mut socket,
                    Token(usize::from(port)),
                    Interest::READABLE,
                )?;
                Ok(RelaySocket { socket, state })
            });
        match opened {
            Ok(relay) => {
                self.sockets.insert(port, relay);
                true
            }
            Err(error) => {
                tracing::debug!(port, %error, "relayed port unavailable");
                false
            }
        }
    }

    fn close(&mut self, port: u16) {
        if let Some(mut relay) = self.sockets.remove(&port) {
            let _ = self.registry.deregister(&mut relay.socket);
        }
    }
}

/// A relayed socket (`reuse_port` false) is of one family; the listening
/// one (`reuse_port`: every worker binds it) on `[::]` serves both, IPv4
/// clients as v4-mapped addresses (`postern_sys::batch::datagrams` maps
/// them back, [`Worker::flush`] maps replies).
fn open_socket(addr: SocketAddr, reuse_port: bool) -> io::Result<(UdpSocket, UdpSocketState)> {
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    if addr.is_ipv6() {
        socket.set_only_v6(!(reuse_port && addr.ip().is_unspecified()))?;
    }
    if reuse_port {
        socket.set_reuse_port(true)?;
    }
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    let socket = UdpSocket::from_std(socket.into());
    let state = UdpSocketState::new((&socket).into())?;
    let _ = state.set_recv_buffer_size((&socket).into(), SOCKET_BUFFER);
    let _ = state.set_send_buffer_size((&socket).into(), SOCKET_BUFFER);
    Ok((socket, state))
}

/// Consecutive same-size datagrams for one destination, sent with one GSO
/// system call.
struct Batch {
    buf: Vec<u8>,
    /// `None` for the listening socket, else the relayed port.
    from_port: Option<u16>,
    to: Option<SocketAddr>,
    segment: usize,
    count: usize,
}

impl Batch {
    fn fits(
        &self,
        from_port: Option<u16>,
        to: SocketAddr,
        len: usize,
        max_segments: usize,
    ) -> bool {
        self.count == 0
            || (self.from_port == from_port
                && self.to == Some(to)
                && self.segment == len
                && self.count < max_segments
                && self.buf.len() + len <= SLOT - 1024)
    }
}

pub(crate) struct Worker {
    index: usize,
    core: Server,
    poll: Poll,
    main: UdpSocket,
    main_state: UdpSocketState,
    relays: RelayTable,
    metrics: Arc<Metrics>,
    recv_buf: Vec<u8>,
    scratch: Vec<u8>,
    batch: Batch,
    send_drops: [u64; SendDrop::COUNT],
    control: mpsc::Receiver<Control>,
    waker: Arc<Waker>,
    /// TURN over TCP.
    streams: Streams,
    /// The listening socket is IPv6 (dual-stack on `[::]`): IPv4 clients
    /// are sent to as v4-mapped addresses.
    main_v6: bool,
}

impl Worker {
    pub(crate) fn bind(
        listen: SocketAddr,
        tls: Option<crate::TlsListen>,
        config: ServerConfig,
        seed: [u8; 32],
        index: usize,
        metrics: Arc<Metrics>,
        control: mpsc::Receiver<Control>,
    ) -> Result<Worker, RelayError> {
        let listen_error = |source| RelayError::Listen {
            addr: listen,
            source,
        };
        let poll = Poll::new().map_err(listen_error)?;
        let (mut main, main_state) = open_socket(listen, true).map_err(listen_error)?;
        poll.registry()
            .register(&mut main, MAIN, Interest::READABLE)
            .map_err(listen_error)?;
        let registry = poll.registry().try_clone().map_err(listen_error)?;
        let waker = Arc::new(Waker::new(poll.registry(), WAKE).map_err(listen_error)?);
        let streams = Streams::bind(listen, tls, poll.registry()).map_err(listen_error)?;
        if index == 0 {
            let effective = main_state.recv_buffer_size((&main).into()).unwrap_or(0);
            if effective < SOCKET_BUFFER {
                tracing::warn!(
                    asked = SOCKET_BUFFER,
                    effective,
                    "UDP receive buffer capped by the kernel; raise net.core.rmem_max and net.core.wmem_max for high rates"
                );
            }
        }
        Ok(Worker {
            main_v6: listen.is_ipv6(),
            index,
            core: Server::new(config, seed),
            poll,
            main,
            main_state,
            relays: RelayTable {
                registry,
                sockets: HashMap::new(),
            },
            metrics,
            recv_buf: vec![0; BATCH * SLOT],
            scratch: vec![0; PEER_HEADROOM + SLOT + PEER_TAILROOM],
            batch: Batch {
                buf: Vec::with_capacity(SLOT),
                from_port: None,
                to: None,
                segment: 0,
                count: 0,
            },
            send_drops: [0; SendDrop::COUNT],
            control,
            waker,
            streams,
        })
    }

    /// Wakes the worker's loop for a [`Control`] sent to it.
    pub(crate) fn waker(&self) -> Arc<Waker> {
        Arc::clone(&self.waker)
    }

    pub(crate) fn run(mut self, stop: &AtomicBool) {
        let mut events = Events::with_capacity(1024);
        while !stop.load(Ordering::Relaxed) {
            let timeout = self
                .core
                .poll_timeout()
                .map(|due| due.saturating_duration_since(Instant::now()))
                .unwrap_or(Duration::MAX)
                .min(Duration::from_millis(200));
            if let Err(error) = self.poll.poll(&mut events, Some(timeout))
                && error.kind() != io::ErrorKind::Interrupted
            {
                tracing::error!(%error, "poll failed; worker stops");
                return;
            }
            for event in &events {
                match event.token() {
                    MAIN => self.drain_main(),
                    WAKE => {}
                    stream::LISTENER => self.streams.accept(self.poll.registry(), false),
                    stream::TLS_LISTENER => self.streams.accept(self.poll.registry(), true),
                    token if Streams::owns(token) => self.drain_stream(token),
                    Token(port) => self.drain_relay(u16::try_from(port).unwrap_or(0)),
                }
            }
            while let Ok(control) = self.control.try_recv() {
                match control {
                    Control::Revoke {
                        ids,
                        not_after_unix,
                    } => {
                        self.core
                            .revoke(Self::now(), &ids, not_after_unix, &mut self.relays);
                    }
                }
            }
            self.core.handle_timeout(Instant::now(), &mut self.relays);
            for client in self.streams.expire(Instant::now()) {
                self.core.client_gone(client, &mut self.relays);
            }
            self.metrics.record(
                self.index,
                self.core.stats(),
                self.core.allocation_count(),
                &self.send_drops,
            );
        }
        tracing::debug!(worker = self.index, "worker stopped");
    }

    fn now() -> Now {
        Now {
            instant: Instant::now(),
            unix_secs: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
        }
    }

    /// Datagrams from clients: requests are answered, data is relayed.
    fn drain_main(&mut self) {
        // The buffer leaves `self` while its datagrams are handled, so the
        // send methods can borrow the worker (a pointer swap, no copy).
        let mut buf = std::mem::take(&mut self.recv_buf);
        let mut metas = [RecvMeta::default(); BATCH];
        while let Some(received) = recv_batch(&self.main_state, &self.main, &mut buf, &mut metas) {
            let now = Self::now();
            for (from, datagram) in datagrams(&buf, &metas[..received]) {
                match self
                    .core
                    .handle_client(now, from, datagram, &mut self.relays)
                {
                    ClientAction::Reply(reply) => {
                        self.flush();
                        self.push(None, from, &reply, 1);
                        self.flush();
                    }
                    ClientAction::Relay {
                        port,
                        peer,
                        payload,
                    } => self.send_to_peer(port, peer, payload),
                    ClientAction::None => {}
                }
            }
            self.flush();
            if received < BATCH {
                break;
            }
        }
        self.recv_buf = buf;
    }

    /// A client's data for a peer, from its relayed port (batched).
    fn send_to_peer(&mut self, port: u16, peer: SocketAddr, payload: &[u8]) {
        let max = self
            .relays
            .sockets
            .get(&port)
            .map_or(1, |r| r.state.max_gso_segments());
        self.push(Some(port), peer, payload, max);
    }

    /// A TCP client's messages, handled as its datagrams would be; what
    /// the core answers goes back on the connection.
    fn drain_stream(&mut self, token: Token) {
        let Some(received) = self.streams.ready(token, Instant::now()) else {
            return;
        };
        let now = Self::now();
        for message in &received.messages {
            match self
                .core
                .handle_client(now, received.client, message, &mut self.relays)
            {
                ClientAction::Reply(reply) => {
                    if !self.streams.send(received.client, &reply) {
                        self.send_drops[SendDrop::BufferFull as usize] += 1;
                    }
                }
                ClientAction::Relay {
                    port,
                    peer,
                    payload,
                } => self.send_to_peer(port, peer, payload),
                ClientAction::None => {}
            }
        }
        self.flush();
        // Closed by the client, or by a failed write just now.
        if received.closed || !self.streams.has(received.client) {
            self.core.client_gone(received.client, &mut self.relays);
        }
    }

    /// Datagrams from peers to a relayed port: framed and sent to the client.
    fn drain_relay(&mut self, port: u16) {
        let max_segments = self.main_state.max_gso_segments();
        let mut buf = std::mem::take(&mut self.recv_buf);
        let mut scratch = std::mem::take(&mut self.scratch);
        let mut metas = [RecvMeta::default(); BATCH];
        while let Some(relay) = self.relays.sockets.get(&port) {
            let Some(received) = recv_batch(&relay.state, &relay.socket, &mut buf, &mut metas)
            else {
                break;
            };
            let now = Instant::now();
            for (from, datagram) in datagrams(&buf, &metas[..received]) {
                let len = datagram.len();
                scratch[PEER_HEADROOM..PEER_HEADROOM + len].copy_from_slice(datagram);
                if let PeerAction::ToClient { client, range } =
                    self.core
                        .handle_peer(now, port, from, &mut scratch, PEER_HEADROOM, len)
                {
                    if self.streams.has(client) {
                        if !self.streams.send(client, &scratch[range]) {
                            self.send_drops[SendDrop::BufferFull as usize] += 1;
                            if !self.streams.has(client) {
                                // The write broke the connection.
                                self.core.client_gone(client, &mut self.relays);
                            }
                        }
                    } else {
                        self.push(None, client, &scratch[range], max_segments);
                    }
                }
            }
            self.flush();
            if received < BATCH {
                break;
            }
        }
        self.recv_buf = buf;
        self.scratch = scratch;
    }

    /// Adds a datagram to the pending GSO batch, sending the batch first if
    /// the datagram does not fit it (other socket, destination or size).
    fn push(&mut self, from_port: Option<u16>, to: SocketAddr, data: &[u8], max_segments: usize) {
        if !self.batch.fits(from_port, to, data.len(), max_segments) {
            self.flush();
        }
        let batch = &mut self.batch;
        if batch.count == 0 {
            batch.from_port = from_port;
            batch.to = Some(to);
            batch.segment = data.len();
        }
        batch.buf.extend_from_slice(data);
        batch.count += 1;
    }

    /// Sends the pending batch in one system call; a full send buffer or an
    /// error drops it and counts the datagrams.
    fn flush(&mut self) {
        let batch = &mut self.batch;
        let Some(to) = batch.to.take() else {
            return;
        };
        if batch.count > 0 {
            let destination = match to {
                SocketAddr::V4(v4) if batch.from_port.is_none() && self.main_v6 => {
                    SocketAddr::new(v4.ip().to_ipv6_mapped().into(), v4.port())
                }
                _ => to,
            };
            let transmit = Transmit {
                destination,
                ecn: None,
                contents: &batch.buf,
                segment_size: (batch.count > 1).then_some(batch.segment),
                src_ip: None,
            };
            let result = match batch.from_port {
                None => self.main_state.try_send((&self.main).into(), &transmit),
                Some(port) => match self.relays.sockets.get(&port) {
                    Some(relay) => relay.state.try_send((&relay.socket).into(), &transmit),
                    None => Ok(()),
                },
            };
            if let Err(error) = result {
                let reason = if error.kind() == io::ErrorKind::WouldBlock {
                    SendDrop::BufferFull
                } else {
                    SendDrop::Error
                };
                self.send_drops[reason as usize] += batch.count as u64;
            }
        }
        batch.buf.clear();
        batch.count = 0;
    }
}

/// Receives up to [`BATCH`] datagrams (or GRO batches) into `buf`, slot `i`
/// at `i * SLOT`; `None` once the socket is drained. A short batch means the
/// queue was empty when read: the callers stop there rather than pay one
/// more system call for EAGAIN, since with edge-triggered polling any later
/// arrival raises a new event.
fn recv_batch(
    state: &UdpSocketState,
    socket: &UdpSocket,
    buf: &mut [u8],
    metas: &mut [RecvMeta; BATCH],
) -> Option<usize> {
    let mut chunks = buf.chunks_exact_mut(SLOT);
    let mut slices: [IoSliceMut<'_>; BATCH] =
        std::array::from_fn(|_| IoSliceMut::new(chunks.next().unwrap_or_default()));
    match state.recv(socket.into(), &mut slices, metas) {
        Ok(received) => Some(received),
        Err(error) if error.kind() == io::ErrorKind::WouldBlock => None,
        Err(error) => {
            tracing::debug!(%error, "receive failed");
            None
        }
    }
}

/// The datagrams of a received batch, GRO batches split at their stride.
fn datagrams<'a>(
    buf: &'a [u8],
    metas: &'a [RecvMeta],
) -> impl Iterator<Item = (SocketAddr, &'a [u8])> + 'a {
    postern_sys::batch::datagrams(buf, metas, SLOT)
}
