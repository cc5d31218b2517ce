//! One relay worker: a listening socket, the relayed sockets of its
//! allocations, and one shard of the TURN core, driven by a mio loop.

use std::cell::RefCell;
use std::collections::HashMap;
use std::io::{self, IoSlice, IoSliceMut};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use mio::net::UdpSocket;
use mio::{Events, Interest, Poll, Registry, Token, Waker};
use nix::sys::socket::{ControlMessage, MsgFlags, MultiHeaders, SockaddrStorage};
use postern_turn::server::{
    ClientAction, Now, PEER_HEADROOM, PEER_TAILROOM, PeerAction, RelaySockets, Server, ServerConfig,
};
use quinn_udp::{RecvMeta, UdpSocketState};
use socket2::{Domain, Protocol, Socket, Type};

use crate::RelayError;
use crate::metrics::{Metrics, SendDrop};
use crate::outbox::{Flow, Group, MMSG, Outbox, Wire};
use crate::stream::{self, Streams};

/// Datagrams per receive call (recvmmsg).
const BATCH: usize = 32;
/// Room per received datagram: a GRO batch is at most 64 KiB.
const SLOT: usize = 65_536;
/// Datagrams the outbox holds before it is sent, though the turn of the
/// loop goes on: the more a flow has in one send, the fewer system calls,
/// at the price of this much delay (a few hundred microseconds at most, and
/// only while the sockets are busy).
const FLUSH_AT: usize = 256;
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

/// The worker's UDP sockets and what waits to leave them.
struct Sockets {
    registry: Registry,
    main: UdpSocket,
    main_state: UdpSocketState,
    /// The listening socket is IPv6 (dual-stack on `[::]`): IPv4 clients
    /// are sent to as v4-mapped addresses.
    main_v6: bool,
    /// The relayed sockets, opened and closed at the core's request.
    relays: HashMap<u16, RelaySocket>,
    outbox: Outbox,
}

impl Sockets {
    /// Queues a datagram from the listening socket (`from_port` `None`) or
    /// a relayed one; it leaves at [`Sockets::flush`] at the latest.
    fn push(&mut self, from_port: Option<u16>, to: SocketAddr, data: &[u8]) {
        let (to, max_segments) = match from_port {
            None => {
                let to = match to {
                    SocketAddr::V4(v4) if self.main_v6 => {
                        SocketAddr::new(v4.ip().to_ipv6_mapped().into(), v4.port())
                    }
                    _ => to,
                };
                (to, self.main_state.max_gso_segments())
            }
            Some(port) => match self.relays.get(&port) {
                Some(relay) => (to, relay.state.max_gso_segments()),
                // Closed while the core still relayed: nowhere to send from.
                None => {
                    self.outbox.stats.drops[SendDrop::Error as usize] += 1;
                    return;
                }
            },
        };
        let (outbox, mut wire) = self.wire();
        outbox.push(Flow { from_port, to }, data, max_segments, &mut wire);
    }

    /// Sends everything queued.
    fn flush(&mut self) {
        let (outbox, mut wire) = self.wire();
        outbox.flush(&mut wire);
    }

    fn wire(&mut self) -> (&mut Outbox, SocketWire<'_>) {
        let Sockets {
            main,
            relays,
            outbox,
            ..
        } = self;
        (outbox, SocketWire { main, relays })
    }
}

impl RelaySockets for Sockets {
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
                self.relays.insert(port, relay);
                true
            }
            Err(error) => {
                tracing::debug!(port, %error, "relayed port unavailable");
                false
            }
        }
    }

    fn close(&mut self, port: u16) {
        // What the client sent before it let the allocation go still
        // leaves (and no datagram waits for a socket a new allocation may
        // open on the same port).
        self.flush();
        if let Some(mut relay) = self.relays.remove(&port) {
            let _ = self.registry.deregister(&mut relay.socket);
        }
    }
}

/// The sockets as the outbox's [`Wire`]: sendmmsg through nix's safe
/// wrapper (quinn-udp sends one message per call, and this crate has no
/// unsafe code). nix gives every message of a call the same control
/// messages, so a call carries one GSO segment size; the outbox groups
/// by it.
struct SocketWire<'a> {
    main: &'a UdpSocket,
    relays: &'a HashMap<u16, RelaySocket>,
}

impl SocketWire<'_> {
    fn socket(&self, from_port: Option<u16>) -> io::Result<&UdpSocket> {
        match from_port {
            None => Ok(self.main),
            // The allocation is gone: so are its datagrams (counted).
            Some(port) => self
                .relays
                .get(&port)
                .map(|relay| &relay.socket)
                .ok_or_else(|| {
                    io::Error::new(io::ErrorKind::NotFound, "the relayed socket is closed")
                }),
        }
    }
}

/// sendmmsg's message headers, preallocated. nix's `MultiHeaders` holds
/// raw pointers, so it is not `Send`, and a worker is built on one thread
/// and runs on another: the headers live with the thread.
struct SendHeaders {
    /// With room for a UDP_SEGMENT control message each.
    gso: MultiHeaders<SockaddrStorage>,
    plain: MultiHeaders<SockaddrStorage>,
    addresses: Vec<Option<SockaddrStorage>>,
}

thread_local! {
    static SEND_HEADERS: RefCell<Option<SendHeaders>> = const { RefCell::new(None) };
}

/// One sendmmsg of the first [`MMSG`] `messages` (destination, datagram or
/// GSO batch), each with UDP_SEGMENT `segment` if given; how many left.
fn send_messages<'d>(
    socket: &UdpSocket,
    messages: impl Iterator<Item = (SocketAddr, &'d [u8])>,
    segment: Option<u16>,
) -> io::Result<usize> {
    SEND_HEADERS.with_borrow_mut(|headers| {
        let SendHeaders {
            gso,
            plain,
            addresses,
        } = headers.get_or_insert_with(|| SendHeaders {
            gso: MultiHeaders::preallocate(MMSG, Some(nix::cmsg_space!(u16))),
            plain: MultiHeaders::preallocate(MMSG, None),
            addresses: Vec::with_capacity(MMSG),
        });
        addresses.clear();
        let mut data: [&[u8]; MMSG] = [&[]; MMSG];
        for ((to, buf), slot) in messages.zip(&mut data) {
            addresses.push(Some(SockaddrStorage::from(to)));
            *slot = buf;
        }
        let slices: [[IoSlice<'_>; 1]; MMSG] = std::array::from_fn(|i| [IoSlice::new(data[i])]);
        let size = segment.unwrap_or(0);
        let gso_size = [ControlMessage::UdpGsoSegments(&size)];
        let (headers, cmsgs): (_, &[ControlMessage<'_>]) = match segment {
            Some(_) => (gso, &gso_size),
            None => (plain, &[]),
        };
        nix::sys::socket::sendmmsg(
            socket.as_raw_fd(),
            headers,
            &slices[..addresses.len()],
            &addresses[..],
            cmsgs,
            MsgFlags::empty(),
        )
        // Known unsoundness, kept for want of a safe alternative: nix
        // (0.32) gives sendmmsg's count only through `MultiResults`, whose
        // iterator copies each sent message's address out of
        // `MultiHeaders` storage that only recvmmsg writes
        // (`assume_init` on bytes sendmmsg never wrote) and reads its
        // family to set its length: undefined behaviour inside a safe API
        // (in practice a read of stale heap bytes whose result is
        // dropped). nix has no other way to the count (`MultiResults`
        // keeps it private, with no `len` or `size_hint`); rustix 1.x's
        // safe `sendmmsg` takes only SCM_RIGHTS, SCM_CREDENTIALS and
        // SCM_TXTIME control messages, not UDP_SEGMENT; socket2 (0.6) has
        // no sendmmsg; and this workspace forbids unsafe code. Move to
        // whichever first offers it.
        .map(Iterator::count)
        .map_err(io::Error::from)
    })
}

impl Wire for SocketWire<'_> {
    fn send(
        &mut self,
        from_port: Option<u16>,
        groups: &[Group],
        segment: Option<u16>,
    ) -> io::Result<usize> {
        let messages = groups.iter().map(|group| (group.flow.to, &group.buf[..]));
        send_messages(self.socket(from_port)?, messages, segment)
    }

    fn send_apart(
        &mut self,
        from_port: Option<u16>,
        to: SocketAddr,
        data: &[u8],
        segment: usize,
    ) -> io::Result<usize> {
        let messages = data.chunks(segment).map(|datagram| (to, datagram));
        send_messages(self.socket(from_port)?, messages, None)
    }
}

/// A relayed socket (`reuse_port` false) is of one family; the listening
/// one (`reuse_port`: every worker binds it) on `[::]` serves both, IPv4
/// clients as v4-mapped addresses (`postern_sys::batch::datagrams` maps
/// them back, [`Sockets::push`] maps what goes to them).
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
    // Root may go past net.core.[rw]mem_max (as the devices' sockets do);
    // others get what the limit allows.
    use nix::sys::socket::{setsockopt, sockopt};
    let forced_receive = setsockopt(&socket, sockopt::RcvBufForce, &SOCKET_BUFFER).is_ok();
    let forced_send = setsockopt(&socket, sockopt::SndBufForce, &SOCKET_BUFFER).is_ok();
    let socket = UdpSocket::from_std(socket.into());
    let state = UdpSocketState::new((&socket).into())?;
    if !forced_receive {
        let _ = state.set_recv_buffer_size((&socket).into(), SOCKET_BUFFER);
    }
    if !forced_send {
        let _ = state.set_send_buffer_size((&socket).into(), SOCKET_BUFFER);
    }
    Ok((socket, state))
}

pub(crate) struct Worker {
    index: usize,
    core: Server,
    poll: Poll,
    sockets: Sockets,
    metrics: Arc<Metrics>,
    recv_buf: Vec<u8>,
    scratch: Vec<u8>,
    /// Datagrams for TCP clients dropped (the outbox counts its own).
    send_drops: [u64; SendDrop::COUNT],
    control: mpsc::Receiver<Control>,
    waker: Arc<Waker>,
    /// TURN over TCP.
    streams: Streams,
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
            index,
            core: Server::new(config, seed),
            poll,
            sockets: Sockets {
                registry,
                main,
                main_state,
                main_v6: listen.is_ipv6(),
                relays: HashMap::new(),
                outbox: Outbox::default(),
            },
            metrics,
            recv_buf: vec![0; BATCH * SLOT],
            scratch: vec![0; PEER_HEADROOM + SLOT + PEER_TAILROOM],
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
                self.handle(event.token());
            }
            // What the turn's events brought leaves now: per flow, so many
            // clients' interleaved datagrams still go out in few calls.
            self.sockets.flush();
            while let Ok(control) = self.control.try_recv() {
                match control {
                    Control::Revoke {
                        ids,
                        not_after_unix,
                    } => {
                        self.core
                            .revoke(Self::now(), &ids, not_after_unix, &mut self.sockets);
                    }
                }
            }
            self.core.handle_timeout(Instant::now(), &mut self.sockets);
            for client in self.streams.expire(Instant::now()) {
                self.core.client_gone(client, &mut self.sockets);
            }
            self.record();
        }
        tracing::debug!(worker = self.index, "worker stopped");
    }

    fn handle(&mut self, token: Token) {
        match token {
            MAIN => self.drain_main(),
            WAKE => {}
            stream::LISTENER => self.streams.accept(self.poll.registry(), false),
            stream::TLS_LISTENER => self.streams.accept(self.poll.registry(), true),
            token if Streams::owns(token) => self.drain_stream(token),
            Token(port) => self.drain_relay(u16::try_from(port).unwrap_or(0)),
        }
    }

    fn record(&self) {
        let outbox = &self.sockets.outbox.stats;
        let drops = std::array::from_fn(|i| self.send_drops[i] + outbox.drops[i]);
        self.metrics.record(
            self.index,
            self.core.stats(),
            self.core.allocation_count(),
            &drops,
            outbox.send_calls,
        );
    }

    fn now() -> Now {
        Now {
            instant: Instant::now(),
            unix_secs: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
        }
    }

    /// Sends what waits if the outbox holds [`FLUSH_AT`] datagrams.
    fn flush_if_full(&mut self) {
        if self.sockets.outbox.datagrams() >= FLUSH_AT {
            self.sockets.flush();
        }
    }

    /// Datagrams from clients: requests are answered, data is relayed.
    /// Both wait in the outbox (see [`crate::outbox`]).
    fn drain_main(&mut self) {
        // The buffer leaves `self` while its datagrams are handled, so the
        // send methods can borrow the worker (a pointer swap, no copy).
        let mut buf = std::mem::take(&mut self.recv_buf);
        let mut metas = [RecvMeta::default(); BATCH];
        while let Some(received) = recv_batch(
            &self.sockets.main_state,
            &self.sockets.main,
            &mut buf,
            &mut metas,
        ) {
            let now = Self::now();
            for (from, datagram) in datagrams(&buf, &metas[..received]) {
                match self
                    .core
                    .handle_client(now, from, datagram, &mut self.sockets)
                {
                    ClientAction::Reply(reply) => self.sockets.push(None, from, &reply),
                    ClientAction::Relay {
                        port,
                        peer,
                        payload,
                    } => self.sockets.push(Some(port), peer, payload),
                    ClientAction::None => {}
                }
            }
            self.flush_if_full();
            if received < BATCH {
                break;
            }
        }
        self.recv_buf = buf;
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
                .handle_client(now, received.client, message, &mut self.sockets)
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
                } => self.sockets.push(Some(port), peer, payload),
                ClientAction::None => {}
            }
            // One read may hold many messages: the outbox stays bounded.
            self.flush_if_full();
        }
        // Closed by the client, or by a failed write just now.
        if received.closed || !self.streams.has(received.client) {
            self.core.client_gone(received.client, &mut self.sockets);
        }
    }

    /// Datagrams from peers to a relayed port: framed and queued for the
    /// client on the listening socket, where the datagrams of every port
    /// drained in this turn of the loop leave together.
    fn drain_relay(&mut self, port: u16) {
        let mut buf = std::mem::take(&mut self.recv_buf);
        let mut scratch = std::mem::take(&mut self.scratch);
        let mut metas = [RecvMeta::default(); BATCH];
        while let Some(relay) = self.sockets.relays.get(&port) {
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
                                self.core.client_gone(client, &mut self.sockets);
                            }
                        }
                    } else {
                        self.sockets.push(None, client, &scratch[range]);
                    }
                }
            }
            self.flush_if_full();
            if received < BATCH {
                break;
            }
        }
        self.recv_buf = buf;
        self.scratch = scratch;
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

#[cfg(test)]
mod tests {
    //! A worker driven by hand over loopback sockets: every datagram is in
    //! the socket before the worker reads, so the receive batches hold the
    //! clients' datagrams interleaved, as a busy relay sees them.

    use std::net::UdpSocket as StdSocket;

    use postern_turn::client::{Client, ClientEvent};
    use postern_turn::credentials::{rest_password, rest_username};
    use postern_turn::server::PeerPolicy;

    use super::*;

    const SECRET: &[u8] = b"worker-secret";

    /// A client with an allocation and a channel to its own peer socket.
    struct Device {
        socket: StdSocket,
        client: Client,
        peer: StdSocket,
        relayed: SocketAddr,
    }

    fn worker() -> (Worker, SocketAddr) {
        let mut config = ServerConfig::new("postern", SECRET, Some(Ipv4Addr::LOCALHOST));
        config.ports = 25_100..=25_199;
        config.peers = PeerPolicy {
            allow_loopback: true,
            ..PeerPolicy::default()
        };
        config.max_allocations_per_user = 100;
        let (_control, receiver) = mpsc::channel();
        let worker = Worker::bind(
            "127.0.0.1:0".parse().unwrap(),
            None,
            config,
            [7; 32],
            0,
            Arc::new(Metrics::new(1)),
            receiver,
        )
        .unwrap();
        let listen = worker.sockets.main.local_addr().unwrap();
        (worker, listen)
    }

    fn receive(socket: &StdSocket) -> Option<Vec<u8>> {
        let mut buf = [0u8; 2048];
        socket.recv(&mut buf).ok().map(|n| buf[..n].to_vec())
    }

    /// Allocations with a channel each, the worker turned by hand.
    fn devices(worker: &mut Worker, listen: SocketAddr, count: usize) -> Vec<Device> {
        let expiry = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs()
            + 600;
        let mut pending: Vec<(StdSocket, Client, StdSocket, Option<SocketAddr>)> = (0..count)
            .map(|i| {
                let username = rest_username(expiry, &format!("device-{i}"));
                let password = rest_password(SECRET, &username);
                let socket = StdSocket::bind("127.0.0.1:0").unwrap();
                socket.connect(listen).unwrap();
                socket.set_nonblocking(true).unwrap();
                let peer = StdSocket::bind("127.0.0.1:0").unwrap();
                peer.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
                let client =
                    Client::new(listen, &username, &password, i as u64 + 1, Instant::now());
                (socket, client, peer, None)
            })
            .collect();
        let mut ready = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(10);
        while !pending.is_empty() {
            assert!(Instant::now() < deadline, "no channels within 10 s");
            for (socket, client, _, _) in &mut pending {
                while let Some(datagram) = client.poll_transmit() {
                    socket.send(&datagram).unwrap();
                }
            }
            worker.drain_main();
            worker.sockets.flush();
            let mut index = 0;
            while index < pending.len() {
                let (socket, client, peer, relayed) = &mut pending[index];
                while let Some(reply) = receive(socket) {
                    client.handle_packet(&reply, Instant::now());
                }
                client.handle_timeout(Instant::now());
                let mut bound = false;
                while let Some(event) = client.poll_event() {
                    match event {
                        ClientEvent::Allocated { relayed: at, .. } => {
                            *relayed = Some(at);
                            client.bind_channel(peer.local_addr().unwrap(), Instant::now());
                        }
                        ClientEvent::ChannelBound { .. } => bound = true,
                        other => panic!("{other:?}"),
                    }
                }
                if bound {
                    let (socket, client, peer, relayed) = pending.swap_remove(index);
                    let relayed = relayed.unwrap();
                    ready.push(Device {
                        socket,
                        client,
                        peer,
                        relayed,
                    });
                } else {
                    index += 1;
                }
            }
        }
        ready.sort_by_key(|device| device.relayed.port());
        ready
    }

    /// Datagram `n` of device `i`: its number and sender, then filler.
    fn payload(i: usize, n: usize) -> Vec<u8> {
        let mut data = vec![0x5A; 300];
        data[0] = i as u8;
        data[1] = n as u8;
        data
    }

    /// Without GSO (after the kernel refused it), a group's datagrams
    /// leave a message each, in order.
    #[test]
    fn a_group_is_sent_apart_over_a_real_socket() {
        let (mut worker, _) = worker();
        let sink = StdSocket::bind("127.0.0.1:0").unwrap();
        sink.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        let data: Vec<u8> = (0..350).map(|i| (i / 100) as u8).collect();
        let (_, mut wire) = worker.sockets.wire();
        let to = sink.local_addr().unwrap();
        assert_eq!(wire.send_apart(None, to, &data, 100).unwrap(), 4);
        for (n, len) in [100, 100, 100, 50].into_iter().enumerate() {
            assert_eq!(receive(&sink).unwrap(), vec![n as u8; len]);
        }
    }

    /// Data for a relayed port that was closed is dropped, and counted.
    #[test]
    fn data_for_a_closed_relayed_port_is_counted_as_dropped() {
        let (mut worker, _) = worker();
        let to = SocketAddr::from(([127, 0, 0, 1], 9));
        worker.sockets.push(Some(25_150), to, b"gone");
        worker.sockets.flush();
        assert_eq!(
            worker.sockets.outbox.stats.drops[SendDrop::Error as usize],
            1
        );
        assert_eq!(worker.sockets.outbox.stats.send_calls, 0);
    }

    /// Six clients each send five datagrams, one per system call, turn by
    /// turn, before the worker reads: its receive batches hold them
    /// interleaved. Each peer gets its client's five in order, and each
    /// relayed socket sent them with one system call (the old single
    /// pending batch made one per datagram here). The peers' answers,
    /// queued on six relayed ports, go back to the six clients in order, in
    /// one sendmmsg from the listening socket.
    #[test]
    fn interleaved_clients_are_relayed_in_per_flow_order_with_one_send_per_flow() {
        const DEVICES: usize = 6;
        const EACH: usize = 5;
        let (mut worker, listen) = worker();
        let mut devices = devices(&mut worker, listen, DEVICES);

        let mut frame = Vec::new();
        for n in 0..EACH {
            for (i, device) in devices.iter_mut().enumerate() {
                let peer = device.peer.local_addr().unwrap();
                assert!(
                    device
                        .client
                        .encode_to_peer(peer, &payload(i, n), &mut frame)
                );
                device.socket.send(&frame).unwrap();
            }
        }
        let relayed = worker.core.stats().to_peer_packets;
        let calls = worker.sockets.outbox.stats.send_calls;
        let deadline = Instant::now() + Duration::from_secs(5);
        while worker.core.stats().to_peer_packets < relayed + (DEVICES * EACH) as u64 {
            assert!(
                Instant::now() < deadline,
                "the worker did not get every datagram"
            );
            worker.drain_main();
        }
        worker.sockets.flush();
        assert_eq!(
            worker.sockets.outbox.stats.send_calls - calls,
            DEVICES as u64,
            "one send per relayed socket"
        );
        for (i, device) in devices.iter().enumerate() {
            for n in 0..EACH {
                let got = receive(&device.peer).expect("the peer got every datagram");
                assert_eq!(got, payload(i, n), "device {i}, datagram {n}");
            }
        }

        // Back: each peer answers five times, to its allocation's relayed
        // address.
        for n in 0..EACH {
            for (i, device) in devices.iter().enumerate() {
                device.peer.send_to(&payload(i, n), device.relayed).unwrap();
            }
        }
        let relayed = worker.core.stats().to_client_packets;
        let calls = worker.sockets.outbox.stats.send_calls;
        let deadline = Instant::now() + Duration::from_secs(5);
        while worker.core.stats().to_client_packets < relayed + (DEVICES * EACH) as u64 {
            assert!(
                Instant::now() < deadline,
                "the worker did not get every answer"
            );
            for device in &devices {
                worker.handle(Token(usize::from(device.relayed.port())));
            }
        }
        worker.sockets.flush();
        assert_eq!(
            worker.sockets.outbox.stats.send_calls - calls,
            1,
            "one sendmmsg for all the clients"
        );
        for (i, device) in devices.iter_mut().enumerate() {
            device.socket.set_nonblocking(false).unwrap();
            device
                .socket
                .set_read_timeout(Some(Duration::from_secs(2)))
                .unwrap();
            let peer = device.peer.local_addr().unwrap();
            for n in 0..EACH {
                let got = receive(&device.socket).expect("the client got every answer");
                let (from, data) = device
                    .client
                    .handle_packet(&got, Instant::now())
                    .expect("peer data");
                assert_eq!(
                    (from, data),
                    (peer, &payload(i, n)[..]),
                    "device {i}, answer {n}"
                );
            }
        }
        assert_eq!(worker.sockets.outbox.stats.drops, [0; SendDrop::COUNT]);
    }
}
