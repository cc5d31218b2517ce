//! The userspace client's TCP/IP stack (SPEC 7.7): smoltcp on an
//! in-memory device instead of the kernel's on a TUN. Packets the role
//! decapsulates go in ([`Netstack::receive`]); packets the stack sends come
//! out ([`Netstack::poll_transmit`]) for the role to route and encapsulate,
//! exactly as packets read from a TUN would be. Sans-IO: time is passed in,
//! nothing here touches a socket.
//!
//! smoltcp does not act on ICMP errors for TCP; a kernel does. The role
//! answers a refused first packet with ICMP (administratively prohibited
//! for a denial or an address of no resource, host unreachable when no
//! gateway can be had), so the stack matches those errors to the
//! connection being opened and reports why it failed.

use std::collections::{HashMap, HashSet, VecDeque};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::{Duration, Instant};

use postern_tunnel::flows::EndedFlow;
use postern_tunnel::packet::Packet;
use smoltcp::iface::{Config, Interface, SocketHandle, SocketSet};
use smoltcp::phy::{Device, DeviceCapabilities, Medium, RxToken, TxToken};
use smoltcp::socket::{tcp, udp};
use smoltcp::wire::{HardwareAddress, IpAddress, IpCidr, IpEndpoint};

/// The tunnel's MTU (as on the TUN).
const MTU: usize = postern_sys::tun::MTU as usize;
/// Each TCP connection's receive window (smoltcp scales it) and send
/// buffer: enough for a gigabit at a few milliseconds.
const TCP_RECEIVE: usize = 512 * 1024;
const TCP_SEND: usize = 256 * 1024;
/// Each UDP association's buffers.
const UDP_PACKETS: usize = 256;
const UDP_BYTES: usize = 256 * 1024;
/// Packets waiting to go into the stack, or out of it: beyond this the
/// stack drops, as a full NIC queue would (TCP backs off).
const QUEUE: usize = 4096;
/// How long a connection may take to open (the role gives up asking the
/// portal after 20 s with host unreachable).
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
/// Local ports the stack uses.
const PORTS: std::ops::Range<u16> = 32_768..61_000;
/// An idle connection is probed this often, and given up after this long
/// without a word from the far end (a kernel gives up after about 15
/// minutes of retransmissions; the far end or its path may be gone).
const KEEP_ALIVE: Duration = Duration::from_secs(75);
const GIVE_UP: Duration = Duration::from_secs(300);
/// Segments sent per poll at most (smoltcp sends one per socket per
/// egress pass).
const EGRESS_BUDGET: usize = 512;

/// A connection or association of the proxy.
pub type ConnectionId = u64;

/// Why a connection could not be opened.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// No policy lets this client reach the destination, a filter forbids
    /// the port, or no resource covers the address.
    NotAllowed,
    /// Nothing can carry it now (no gateway online, the portal did not
    /// answer).
    HostUnreachable,
    /// The destination answered with a reset.
    ConnectionRefused,
    /// No answer within [`CONNECT_TIMEOUT`].
    TimedOut,
    /// The portal has not configured the tunnel yet.
    NotReady,
    /// No free local port, or an address of the wrong kind.
    Failed,
}

/// What happened to a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Event {
    Opened {
        id: ConnectionId,
        local: SocketAddr,
    },
    Refused {
        id: ConnectionId,
        why: Refusal,
    },
    /// Access to its resource ended: the connection was dropped without a
    /// word to the far end (nothing carries it any more).
    Revoked {
        id: ConnectionId,
    },
}

enum Kind {
    Tcp {
        opening: Option<Instant>,
        /// An ICMP error about its first packet.
        refused: Option<Refusal>,
    },
    Udp,
}

struct Connection {
    handle: SocketHandle,
    kind: Kind,
    port: u16,
    remote: Option<SocketAddr>,
}

/// The in-memory device: packets in, packets out.
#[derive(Default)]
struct Queues {
    incoming: VecDeque<Vec<u8>>,
    outgoing: VecDeque<Vec<u8>>,
}

struct Incoming(Vec<u8>);
struct Outgoing<'a>(&'a mut VecDeque<Vec<u8>>);

impl RxToken for Incoming {
    fn consume<R, F>(self, f: F) -> R
    where
        F: FnOnce(&[u8]) -> R,
    {
        f(&self.0)
    }
}

impl TxToken for Outgoing<'_> {
    fn consume<R, F>(self, len: usize, f: F) -> R
    where
        F: FnOnce(&mut [u8]) -> R,
    {
        let mut packet = vec![0; len];
        let result = f(&mut packet);
        if self.0.len() < QUEUE {
            self.0.push_back(packet);
        }
        result
    }
}

impl Device for Queues {
    type RxToken<'a> = Incoming;
    type TxToken<'a> = Outgoing<'a>;

    fn receive(
        &mut self,
        _timestamp: smoltcp::time::Instant,
    ) -> Option<(Self::RxToken<'_>, Self::TxToken<'_>)> {
        let packet = self.incoming.pop_front()?;
        Some((Incoming(packet), Outgoing(&mut self.outgoing)))
    }

    fn transmit(&mut self, _timestamp: smoltcp::time::Instant) -> Option<Self::TxToken<'_>> {
        Some(Outgoing(&mut self.outgoing))
    }

    fn capabilities(&self) -> DeviceCapabilities {
        let mut capabilities = DeviceCapabilities::default();
        capabilities.medium = Medium::Ip;
        capabilities.max_transmission_unit = MTU;
        capabilities
    }
}

pub struct Netstack {
    interface: Option<Interface>,
    queues: Queues,
    sockets: SocketSet<'static>,
    connections: HashMap<ConnectionId, Connection>,
    events: VecDeque<Event>,
    ports: HashSet<u16>,
    next_port: u16,
    epoch: Instant,
    seed: u64,
}

impl Netstack {
    /// `seed` is fresh randomness: initial sequence numbers and the first
    /// local port must not be guessable.
    pub fn new(now: Instant, seed: u64) -> Self {
        let span = u64::from(PORTS.end - PORTS.start);
        Netstack {
            interface: None,
            queues: Queues::default(),
            sockets: SocketSet::new(Vec::new()),
            connections: HashMap::new(),
            events: VecDeque::new(),
            ports: HashSet::new(),
            next_port: PORTS.start + u16::try_from(seed % span).unwrap_or(0),
            epoch: now,
            seed,
        }
    }

    fn at(&self, now: Instant) -> smoltcp::time::Instant {
        let micros = now.saturating_duration_since(self.epoch).as_micros();
        smoltcp::time::Instant::from_micros(i64::try_from(micros).unwrap_or(i64::MAX))
    }

    /// The tunnel addresses (the role's first `init`): the stack's own,
    /// with every destination reached through the tunnel.
    pub fn configure(&mut self, ipv4: Ipv4Addr, ipv6: Ipv6Addr, now: Instant) {
        if self.interface.is_some() {
            return;
        }
        let at = self.at(now);
        let mut config = Config::new(HardwareAddress::Ip);
        config.random_seed = self.seed;
        let mut interface = Interface::new(config, &mut self.queues, at);
        interface.update_ip_addrs(|addresses| {
            let _ = addresses.push(IpCidr::new(IpAddress::Ipv4(ipv4), 32));
            let _ = addresses.push(IpCidr::new(IpAddress::Ipv6(ipv6), 128));
        });
        // The "router" is the stack's own address: on an IP medium it only
        // says that every destination is reachable through the device.
        let _ = interface.routes_mut().add_default_ipv4_route(ipv4);
        let _ = interface.routes_mut().add_default_ipv6_route(ipv6);
        self.interface = Some(interface);
    }

    pub fn is_configured(&self) -> bool {
        self.interface.is_some()
    }

    /// A packet out of the tunnel for the stack.
    pub fn receive(&mut self, packet: &[u8]) {
        // Only ICMP is parsed here (the protocol byte first: this is the
        // download path).
        let icmp = match packet.first().map(|b| b >> 4) {
            Some(4) => packet.get(9) == Some(&1),
            Some(6) => packet.get(6) == Some(&58),
            _ => false,
        };
        if icmp
            && let Ok(parsed) = Packet::parse(packet)
            && parsed.is_icmp_error()
        {
            self.icmp_error(&parsed);
            return;
        }
        if self.queues.incoming.len() < QUEUE {
            self.queues.incoming.push_back(packet.to_vec());
        }
    }

    /// An ICMP error about the first packet of a connection being opened
    /// fails it with the error's reason (as a kernel's `connect` fails).
    fn icmp_error(&mut self, error: &Packet<'_>) {
        let Some(quoted) = error
            .transport_offset()
            .and_then(|at| error.bytes().get(at + 8..))
            .and_then(|bytes| Packet::parse_quoted(bytes).ok())
        else {
            return;
        };
        let Some((source_port, destination_port)) = quoted.ports() else {
            return;
        };
        let remote = SocketAddr::new(quoted.destination(), destination_port);
        let prohibited = match error.bytes().get(error.transport_offset().unwrap_or(0)..) {
            // ICMP 3/13 (and 3/9, 3/10), ICMPv6 1/1: administratively
            // prohibited; anything else: unreachable.
            Some([3, code, ..]) => matches!(code, 9 | 10 | 13),
            Some([1, 1, ..]) => true,
            _ => false,
        };
        let mut revoked = None;
        for (id, connection) in &mut self.connections {
            let Kind::Tcp { opening, refused } = &mut connection.kind else {
                continue;
            };
            if connection.port != source_port || connection.remote != Some(remote) {
                continue;
            }
            if opening.is_some() {
                *refused = Some(if prohibited {
                    Refusal::NotAllowed
                } else {
                    Refusal::HostUnreachable
                });
            } else if prohibited {
                // The role refuses an open connection's packets: its
                // access lapsed (expired; the revocation itself resets at
                // once). An unreachable stays a soft error, as in a kernel.
                revoked = Some(*id);
            }
        }
        if let Some(id) = revoked {
            self.remove(id);
            self.events.push_back(Event::Revoked { id });
        }
    }

    /// Opens a TCP connection to `remote`; [`Event::Opened`] or
    /// [`Event::Refused`] follows.
    pub fn open_tcp(&mut self, id: ConnectionId, remote: SocketAddr, now: Instant) {
        let Some(interface) = self.interface.as_mut() else {
            self.events.push_back(Event::Refused {
                id,
                why: Refusal::NotReady,
            });
            return;
        };
        let Some(port) = free(&mut self.ports, &mut self.next_port) else {
            self.events.push_back(Event::Refused {
                id,
                why: Refusal::Failed,
            });
            return;
        };
        let mut socket = tcp::Socket::new(
            tcp::SocketBuffer::new(vec![0; TCP_RECEIVE]),
            tcp::SocketBuffer::new(vec![0; TCP_SEND]),
        );
        socket.set_nagle_enabled(false);
        socket.set_keep_alive(Some(KEEP_ALIVE.into()));
        socket.set_timeout(Some(GIVE_UP.into()));
        if socket
            .connect(interface.context(), IpEndpoint::from(remote), port)
            .is_err()
        {
            self.ports.remove(&port);
            self.events.push_back(Event::Refused {
                id,
                why: Refusal::Failed,
            });
            return;
        }
        let handle = self.sockets.add(socket);
        self.connections.insert(
            id,
            Connection {
                handle,
                kind: Kind::Tcp {
                    opening: Some(now + CONNECT_TIMEOUT),
                    refused: None,
                },
                port,
                remote: Some(remote),
            },
        );
    }

    /// Opens a UDP association: a local port that sends anywhere.
    pub fn open_udp(&mut self, id: ConnectionId) -> Result<(), Refusal> {
        if self.interface.is_none() {
            return Err(Refusal::NotReady);
        }
        let port = free(&mut self.ports, &mut self.next_port).ok_or(Refusal::Failed)?;
        let mut socket = udp::Socket::new(
            udp::PacketBuffer::new(
                vec![udp::PacketMetadata::EMPTY; UDP_PACKETS],
                vec![0; UDP_BYTES],
            ),
            udp::PacketBuffer::new(
                vec![udp::PacketMetadata::EMPTY; UDP_PACKETS],
                vec![0; UDP_BYTES],
            ),
        );
        if socket.bind(port).is_err() {
            self.ports.remove(&port);
            return Err(Refusal::Failed);
        }
        let handle = self.sockets.add(socket);
        self.connections.insert(
            id,
            Connection {
                handle,
                kind: Kind::Udp,
                port,
                remote: None,
            },
        );
        Ok(())
    }

    /// The TCP socket of a connection.
    pub fn tcp(&mut self, id: ConnectionId) -> Option<&mut tcp::Socket<'static>> {
        let connection = self.connections.get(&id)?;
        matches!(connection.kind, Kind::Tcp { .. })
            .then(|| self.sockets.get_mut::<tcp::Socket>(connection.handle))
    }

    /// The UDP socket of an association.
    pub fn udp(&mut self, id: ConnectionId) -> Option<&mut udp::Socket<'static>> {
        let connection = self.connections.get(&id)?;
        matches!(connection.kind, Kind::Udp)
            .then(|| self.sockets.get_mut::<udp::Socket>(connection.handle))
    }

    /// Forgets a connection (its socket and port).
    pub fn remove(&mut self, id: ConnectionId) {
        if let Some(connection) = self.connections.remove(&id) {
            self.sockets.remove(connection.handle);
            self.ports.remove(&connection.port);
        }
    }

    /// The role forgot these flows (their access ended): their TCP
    /// connections are dropped without a packet (it would only ask for
    /// access again) and reported.
    pub fn flows_ended(&mut self, flows: &[EndedFlow]) {
        let ended: HashSet<(u16, SocketAddr)> = flows
            .iter()
            .filter(|flow| flow.protocol == 6)
            .map(|flow| (flow.client.1, SocketAddr::new(flow.remote.0, flow.remote.1)))
            .collect();
        let revoked: Vec<ConnectionId> = self
            .connections
            .iter()
            .filter(|(_, c)| {
                matches!(c.kind, Kind::Tcp { .. })
                    && c.remote
                        .is_some_and(|remote| ended.contains(&(c.port, remote)))
            })
            .map(|(id, _)| *id)
            .collect();
        for id in revoked {
            self.remove(id);
            self.events.push_back(Event::Revoked { id });
        }
    }

    /// Runs the stack: packets in are processed, sockets' data goes out,
    /// connections being opened are decided.
    pub fn poll(&mut self, now: Instant) {
        let at = self.at(now);
        let Some(interface) = self.interface.as_mut() else {
            return;
        };
        interface.poll(at, &mut self.queues, &mut self.sockets);
        egress(interface, at, &mut self.queues, &mut self.sockets);
        let mut decided = Vec::new();
        for (id, connection) in &mut self.connections {
            let Kind::Tcp { opening, refused } = &mut connection.kind else {
                continue;
            };
            let Some(deadline) = *opening else { continue };
            let socket = self.sockets.get_mut::<tcp::Socket>(connection.handle);
            let outcome = if let Some(why) = *refused {
                Some(Err(why))
            } else if socket.state() == tcp::State::Established {
                match socket.local_endpoint() {
                    Some(local) => Some(Ok(SocketAddr::new(local.addr.into(), local.port))),
                    None => Some(Err(Refusal::Failed)),
                }
            } else if !socket.is_open() {
                Some(Err(Refusal::ConnectionRefused))
            } else if now >= deadline {
                Some(Err(Refusal::TimedOut))
            } else {
                None
            };
            match outcome {
                Some(Ok(local)) => {
                    *opening = None;
                    self.events.push_back(Event::Opened { id: *id, local });
                }
                // Nothing to tell the far end: the SYN never got there,
                // or it answered with a reset.
                Some(Err(why)) => {
                    decided.push(*id);
                    self.events.push_back(Event::Refused { id: *id, why });
                }
                None => {}
            }
        }
        for id in decided {
            self.remove(id);
        }
    }

    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// A packet the stack sends, for the role.
    pub fn poll_transmit(&mut self) -> Option<Vec<u8>> {
        self.queues.outgoing.pop_front()
    }

    /// When [`Netstack::poll`] next has work (retransmissions, delayed
    /// ACKs, a connection's deadline).
    pub fn poll_at(&mut self, now: Instant) -> Option<Instant> {
        if !self.queues.incoming.is_empty() {
            return Some(now);
        }
        let at = self.at(now);
        let interface = self.interface.as_mut()?;
        let stack = interface
            .poll_at(at, &self.sockets)
            .map(|next| self.epoch + Duration::from_micros(next.total_micros().max(0) as u64));
        let deadlines = self.connections.values().filter_map(|c| match c.kind {
            Kind::Tcp { opening, .. } => opening,
            Kind::Udp => None,
        });
        stack.into_iter().chain(deadlines).min()
    }

    /// The addresses the stack sends from (for the status).
    pub fn addresses(&self) -> Vec<IpAddr> {
        self.interface
            .iter()
            .flat_map(|i| i.ip_addrs().iter().map(|cidr| cidr.address().into()))
            .collect()
    }

    pub fn connections(&self) -> usize {
        self.connections.len()
    }
}

/// Sends what the sockets have (within the window) until they are quiet:
/// one `poll` sends one segment per socket.
fn egress(
    interface: &mut Interface,
    at: smoltcp::time::Instant,
    queues: &mut Queues,
    sockets: &mut SocketSet<'static>,
) {
    let mut sent = 0;
    while sent < EGRESS_BUDGET {
        let before = queues.outgoing.len();
        interface.poll_egress(at, queues, sockets);
        let now_queued = queues.outgoing.len();
        if now_queued == before {
            return;
        }
        sent += now_queued - before;
    }
}

/// The next free local port, taken.
fn free(ports: &mut HashSet<u16>, next: &mut u16) -> Option<u16> {
    for _ in PORTS {
        let port = *next;
        *next = if port + 1 >= PORTS.end {
            PORTS.start
        } else {
            port + 1
        };
        if ports.insert(port) {
            return Some(port);
        }
    }
    None
}

/// A far end for the tests: smoltcp as the web server behind the tunnel.
#[cfg(test)]
pub mod testing {
    use super::*;

    /// A smoltcp stack playing the web server at the far end of the tunnel.
    pub struct Far {
        interface: Interface,
        queues: Queues,
        sockets: SocketSet<'static>,
        listener: SocketHandle,
    }

    impl Far {
        pub fn new(now: smoltcp::time::Instant) -> Far {
            let mut queues = Queues::default();
            let mut interface = Interface::new(Config::new(HardwareAddress::Ip), &mut queues, now);
            interface.update_ip_addrs(|a| {
                let _ = a.push(IpCidr::new(IpAddress::v4(10, 0, 1, 80), 32));
            });
            let _ = interface
                .routes_mut()
                .add_default_ipv4_route(Ipv4Addr::new(10, 0, 1, 80));
            let mut sockets = SocketSet::new(Vec::new());
            let mut socket = tcp::Socket::new(
                tcp::SocketBuffer::new(vec![0; 1 << 20]),
                tcp::SocketBuffer::new(vec![0; 1 << 20]),
            );
            socket.listen(80).unwrap();
            let listener = sockets.add(socket);
            Far {
                interface,
                queues,
                sockets,
                listener,
            }
        }

        pub fn socket(&mut self) -> &mut tcp::Socket<'static> {
            self.sockets.get_mut::<tcp::Socket>(self.listener)
        }

        /// Takes `incoming` packets, runs, returns what it sends.
        pub fn step(&mut self, at: smoltcp::time::Instant, incoming: Vec<Vec<u8>>) -> Vec<Vec<u8>> {
            self.queues.incoming.extend(incoming);
            self.interface.poll(at, &mut self.queues, &mut self.sockets);
            egress(&mut self.interface, at, &mut self.queues, &mut self.sockets);
            self.queues.outgoing.drain(..).collect()
        }
    }

    /// Moves packets both ways until neither side sends.
    pub fn exchange(stack: &mut Netstack, far: &mut Far, now: Instant) {
        for _ in 0..100 {
            stack.poll(now);
            let at = stack.at(now);
            let sent: Vec<Vec<u8>> = std::iter::from_fn(|| stack.poll_transmit()).collect();
            let mut moved = !sent.is_empty();
            for packet in far.step(at, sent) {
                stack.receive(&packet);
                moved = true;
            }
            if !moved {
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use postern_tunnel::icmp::{Unreachable, unreachable};

    use super::testing::{Far, exchange};
    use super::*;

    const ME: Ipv4Addr = Ipv4Addr::new(100, 64, 0, 7);
    const WEB: &str = "10.0.1.80:80";

    fn stack(now: Instant) -> Netstack {
        let mut stack = Netstack::new(now, 7);
        stack.configure(ME, "fd00:100::7".parse().unwrap(), now);
        stack
    }

    /// The SYN the stack sends for a new connection.
    fn syn(stack: &mut Netstack, id: ConnectionId, now: Instant) -> Vec<u8> {
        stack.open_tcp(id, WEB.parse().unwrap(), now);
        stack.poll(now);
        let packet = stack.poll_transmit().expect("a SYN");
        let parsed = Packet::parse(&packet).unwrap();
        assert_eq!(parsed.source(), IpAddr::V4(ME));
        assert_eq!(parsed.tcp_flags().map(|f| f & 0x02), Some(0x02));
        packet
    }

    #[test]
    fn the_roles_icmp_answer_fails_the_connection_with_its_reason() {
        let now = Instant::now();
        for (why, expected) in [
            (Unreachable::Prohibited, Refusal::NotAllowed),
            (Unreachable::Host, Refusal::HostUnreachable),
        ] {
            let mut stack = stack(now);
            let packet = syn(&mut stack, 1, now);
            let answer = unreachable(&Packet::parse(&packet).unwrap(), why).unwrap();
            stack.receive(&answer);
            stack.poll(now);
            assert_eq!(
                stack.poll_event(),
                Some(Event::Refused {
                    id: 1,
                    why: expected
                })
            );
            assert_eq!(stack.connections(), 0, "forgotten, its port free");
        }
    }

    #[test]
    fn an_unanswered_connection_times_out() {
        let now = Instant::now();
        let mut stack = stack(now);
        syn(&mut stack, 1, now);
        stack.poll(now + CONNECT_TIMEOUT - Duration::from_millis(1));
        assert_eq!(stack.poll_event(), None);
        assert!(
            stack
                .poll_at(now)
                .is_some_and(|at| at <= now + CONNECT_TIMEOUT)
        );
        stack.poll(now + CONNECT_TIMEOUT);
        assert_eq!(
            stack.poll_event(),
            Some(Event::Refused {
                id: 1,
                why: Refusal::TimedOut
            })
        );
    }

    #[test]
    fn bytes_flow_both_ways_and_revocation_drops_the_connection_silently() {
        let now = Instant::now();
        let mut stack = stack(now);
        let mut far = Far::new(stack.at(now));
        stack.open_tcp(1, WEB.parse().unwrap(), now);
        exchange(&mut stack, &mut far, now);
        let Some(Event::Opened { id: 1, local }) = stack.poll_event() else {
            panic!("not opened");
        };
        assert_eq!(local.ip(), IpAddr::V4(ME));
        let request = b"GET / HTTP/1.1\r\n\r\n";
        assert_eq!(stack.tcp(1).unwrap().send_slice(request), Ok(request.len()));
        exchange(&mut stack, &mut far, now);
        let mut got = [0u8; 64];
        let n = far.socket().recv_slice(&mut got).unwrap();
        assert_eq!(&got[..n], request);
        far.socket().send_slice(b"hello").unwrap();
        exchange(&mut stack, &mut far, now);
        let n = stack.tcp(1).unwrap().recv_slice(&mut got).unwrap();
        assert_eq!(&got[..n], b"hello");
        // Access ends: the role names the flow; the connection goes
        // without a packet (a RST would only ask for access again).
        stack.flows_ended(&[EndedFlow {
            protocol: 6,
            client: (IpAddr::V4(ME), local.port()),
            remote: ("10.0.1.80".parse().unwrap(), 80),
            resource: None,
            started: now,
            ended: now,
            bytes_out: 0,
            bytes_in: 0,
        }]);
        assert_eq!(stack.poll_event(), Some(Event::Revoked { id: 1 }));
        assert!(stack.tcp(1).is_none());
        stack.poll(now);
        assert_eq!(stack.poll_transmit(), None, "nothing sent");
    }

    /// Access lapsed without a revocation (it expired): the role (or the
    /// gateway) answers the connection's next packet with "prohibited",
    /// which ends it; "unreachable" stays a soft error.
    #[test]
    fn prohibited_ends_an_open_connection_and_unreachable_does_not() {
        let now = Instant::now();
        let mut stack = stack(now);
        let mut far = Far::new(stack.at(now));
        stack.open_tcp(1, WEB.parse().unwrap(), now);
        exchange(&mut stack, &mut far, now);
        assert!(matches!(
            stack.poll_event(),
            Some(Event::Opened { id: 1, .. })
        ));
        let mut refused = |why| {
            stack.tcp(1).unwrap().send_slice(b"more").unwrap();
            stack.poll(now);
            let packet = stack.poll_transmit().expect("a segment");
            let answer = unreachable(&Packet::parse(&packet).unwrap(), why).unwrap();
            stack.receive(&answer);
            stack.poll(now);
            stack.poll_event()
        };
        assert_eq!(refused(Unreachable::Host), None);
        assert_eq!(
            refused(Unreachable::Prohibited),
            Some(Event::Revoked { id: 1 })
        );
        assert!(stack.tcp(1).is_none());
    }

    #[test]
    fn a_reset_answer_is_connection_refused() {
        let now = Instant::now();
        let mut stack = stack(now);
        let mut far = Far::new(stack.at(now));
        far.socket().abort();
        // Nobody listens on the far side now: smoltcp answers the SYN with
        // a reset.
        stack.open_tcp(1, WEB.parse().unwrap(), now);
        exchange(&mut stack, &mut far, now);
        assert_eq!(
            stack.poll_event(),
            Some(Event::Refused {
                id: 1,
                why: Refusal::ConnectionRefused
            })
        );
    }
}
