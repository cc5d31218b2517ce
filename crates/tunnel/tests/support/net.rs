//! A deterministic simulated network: hosts behind NAT routers on a "public"
//! 198.18.0.0/15 segment, a relay running the real `postern-turn` server
//! core, latency and seeded loss. Time is whatever the test says it is.
//! Hosts may have IPv6 too (or only): a global address of their own, no
//! NAT, behind their router's stateful firewall as home routers ship them
//! (RFC 6092: only what answers an outgoing flow comes in).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::{Duration, Instant};

use postern_tunnel::node::RelayConfig;
use postern_turn::credentials::{rest_password, rest_username};
use postern_turn::server::{
    ClientAction, Now, PEER_HEADROOM, PEER_TAILROOM, PeerAction, RelaySockets, Server, ServerConfig,
};
use uuid::Uuid;

pub const RELAY_IP: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 3);
/// The relay's IPv6 address (the benchmarking prefix 2001:2::/48, the
/// IPv6 twin of 198.18.0.0/15).
pub const RELAY_IP6: Ipv6Addr = Ipv6Addr::new(0x2001, 2, 0, 0, 0, 0, 0, 3);
const SECRET: &[u8] = b"simulation-secret";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Nat {
    /// Endpoint-independent mapping and filtering ("full cone").
    Open,
    /// Endpoint-independent mapping, address- and port-restricted filtering.
    PortRestricted,
    /// [`Nat::PortRestricted`] on a router whose own WAN input is not
    /// firewalled (Linux masquerade with no input rules): an unsolicited
    /// packet leaves a conntrack entry (source -> our port) for
    /// [`CONNTRACK_UDP`] after the last such packet, and while it lives an
    /// outgoing packet to that source cannot take that port and is mapped
    /// to a fresh one (a clash).
    PortRestrictedOpenWan,
    /// A new mapping per destination, port-restricted filtering.
    Symmetric,
}

/// How long Linux keeps an unanswered UDP conntrack entry
/// (`nf_conntrack_udp_timeout`).
pub const CONNTRACK_UDP: Duration = Duration::from_secs(30);

/// Routers between two sites' NATs: a datagram sent with a TTL below
/// `2 + INTERNET_HOPS` (its own NAT, then these) dies before the far NAT.
pub const INTERNET_HOPS: u8 = 2;

struct Router {
    kind: Nat,
    public: Ipv4Addr,
    mappings: HashMap<Option<SocketAddr>, u16>,
    contacted: HashMap<u16, Vec<SocketAddr>>,
    next_port: u16,
    /// Unsolicited arrivals an open WAN kept: (our port, their source) ->
    /// when the entry expires.
    strangers: HashMap<(u16, SocketAddr), Instant>,
    /// Flows that had to take another port than their mapping's:
    /// destination -> (port, when the entry expires).
    clashed: HashMap<SocketAddr, (u16, Instant)>,
    /// The host's IPv6 address, if its network has IPv6.
    v6: Option<Ipv6Addr>,
    /// The IPv6 firewall's flows: (our port, their address).
    v6_flows: HashSet<(u16, SocketAddr)>,
    /// The network has no IPv4 at all.
    no_v4: bool,
}

impl Router {
    fn outbound(&mut self, destination: SocketAddr, now: Instant) -> SocketAddr {
        let key = match self.kind {
            Nat::Symmetric => Some(destination),
            _ => None,
        };
        let mut port = *self.mappings.entry(key).or_insert_with(|| {
            self.next_port += 7;
            self.next_port
        });
        if let Some((clashed, expires)) = self.clashed.get_mut(&destination)
            && *expires > now
        {
            *expires = now + CONNTRACK_UDP;
            port = *clashed;
        } else if self
            .strangers
            .get(&(port, destination))
            .is_some_and(|expires| *expires > now)
        {
            self.next_port += 7;
            port = self.next_port;
            self.clashed
                .insert(destination, (port, now + CONNTRACK_UDP));
        }
        let contacted = self.contacted.entry(port).or_default();
        if !contacted.contains(&destination) {
            contacted.push(destination);
        }
        SocketAddr::new(IpAddr::V4(self.public), port)
    }

    fn admits(&mut self, source: SocketAddr, port: u16, now: Instant) -> bool {
        let contacted = self.contacted.get(&port);
        let admitted = match self.kind {
            Nat::Open => contacted.is_some(),
            Nat::PortRestricted | Nat::PortRestrictedOpenWan | Nat::Symmetric => {
                contacted.is_some_and(|c| c.contains(&source))
            }
        };
        if !admitted && self.kind == Nat::PortRestrictedOpenWan {
            self.strangers.insert((port, source), now + CONNTRACK_UDP);
        }
        admitted
    }

    /// A new public address (the host roamed to another network).
    fn roam(&mut self, public: Ipv4Addr) {
        self.public = public;
        self.mappings.clear();
        self.contacted.clear();
        self.strangers.clear();
        self.clashed.clear();
    }
}

struct NoSockets;

impl RelaySockets for NoSockets {
    fn open(&mut self, _ip: IpAddr, _port: u16) -> bool {
        true
    }
    fn close(&mut self, _port: u16) {}
}

/// A datagram in flight: (from, to, payload).
type Datagram = (SocketAddr, SocketAddr, Vec<u8>);

pub struct Net {
    pub now: Instant,
    pub started: Instant,
    routers: Vec<Router>,
    relay: Server,
    in_flight: BTreeMap<(Instant, u64), Datagram>,
    sequence: u64,
    pub latency: Duration,
    /// Percent of datagrams lost, decided by a seeded generator.
    pub loss_percent: u64,
    dice: u64,
    /// A host that is down sends and receives nothing.
    pub down: Vec<bool>,
    /// A firewall between the hosts' networks: only the relay gets through.
    pub direct_blocked: bool,
    /// Hosts whose network drops every outgoing UDP datagram: only
    /// streams (TURN over TCP) leave.
    pub udp_blocked: Vec<bool>,
    /// STUN datagrams sent by hosts, to see what ICE costs on the wire.
    pub stun_sent: usize,
    /// Every destination a host sent to: (host, destination).
    pub destinations: Vec<(usize, SocketAddr)>,
    /// The wall clock (Unix seconds) when the simulation started: the
    /// relay judges credentials' expiry on simulated time.
    unix_started: u64,
}

impl Net {
    pub fn new(nats: &[Nat]) -> Net {
        let now = Instant::now();
        let mut relay = ServerConfig::new("sim", SECRET, Some(RELAY_IP));
        relay.relay_ipv6 = Some(RELAY_IP6);
        Net {
            now,
            started: now,
            routers: nats
                .iter()
                .enumerate()
                .map(|(n, kind)| Router {
                    kind: *kind,
                    public: Ipv4Addr::new(198, 18, 0, 10 + 10 * n as u8),
                    mappings: HashMap::new(),
                    contacted: HashMap::new(),
                    next_port: 20000,
                    strangers: HashMap::new(),
                    clashed: HashMap::new(),
                    v6: None,
                    v6_flows: HashSet::new(),
                    no_v4: false,
                })
                .collect(),
            relay: Server::new(relay, [5; 32]),
            in_flight: BTreeMap::new(),
            sequence: 0,
            latency: Duration::from_millis(10),
            loss_percent: 0,
            dice: 0x9e37_79b9_7f4a_7c15,
            down: vec![false; nats.len()],
            direct_blocked: false,
            udp_blocked: vec![false; nats.len()],
            stun_sent: 0,
            destinations: Vec::new(),
            unix_started: unix_now(),
        }
    }

    /// Host `n`'s socket address behind its NAT.
    pub fn inside(n: usize) -> SocketAddr {
        SocketAddr::from(([10, n as u8 + 1, 0, 2], 51820))
    }

    /// Host `n`'s IPv6 socket address (global: no NAT in front of it).
    pub fn inside6(n: usize) -> SocketAddr {
        SocketAddr::new(
            Ipv6Addr::new(0x2001, 2, n as u16 + 0x10, 0, 0, 0, 0, 2).into(),
            51820,
        )
    }

    /// Host `n`'s network gets IPv6 ([`Net::inside6`]), and with
    /// `only` loses IPv4 (an IPv6-only site).
    pub fn give_ipv6(&mut self, n: usize, only: bool) {
        let IpAddr::V6(v6) = Net::inside6(n).ip() else {
            unreachable!()
        };
        self.routers[n].v6 = Some(v6);
        self.routers[n].no_v4 = only;
    }

    /// The relay's TURN server address in `address`'s family.
    pub fn relay_server_like(address: SocketAddr) -> SocketAddr {
        if address.is_ipv4() {
            SocketAddr::new(IpAddr::V4(RELAY_IP), 3478)
        } else {
            SocketAddr::new(IpAddr::V6(RELAY_IP6), 3478)
        }
    }

    fn is_relay(ip: IpAddr) -> bool {
        ip == IpAddr::V4(RELAY_IP) || ip == IpAddr::V6(RELAY_IP6)
    }

    /// Credentials that outlive any simulation: the relay judges expiry
    /// on simulated time, which jumps to the next timer (hours when a
    /// client is idle and its gateways are dead), and this portal does not
    /// renew them. Tests of expiry use `relay_config_until`.
    pub fn relay_config(device: Uuid) -> RelayConfig {
        Net::relay_config_until(device, unix_now() + 30 * 24 * 3600)
    }

    /// Credentials for `device` that expire at `expiry` (Unix seconds).
    pub fn relay_config_until(device: Uuid, expiry: u64) -> RelayConfig {
        Net::relay_config_on(SocketAddr::new(IpAddr::V4(RELAY_IP), 3478), device, expiry)
    }

    /// [`Net::relay_config_until`] for the relay's address `server` (its
    /// IPv4 or its IPv6 one).
    pub fn relay_config_on(server: SocketAddr, device: Uuid, expiry: u64) -> RelayConfig {
        let username = rest_username(expiry, &device.to_string());
        RelayConfig {
            server,
            password: rest_password(SECRET, &username),
            username,
            tls: None,
        }
    }

    /// Host `n` moves to another network: a new public address and no NAT
    /// state.
    pub fn roam(&mut self, n: usize, public: Ipv4Addr) {
        self.routers[n].roam(public);
    }

    /// Host `n` moves to another network behind a NAT of another kind.
    pub fn roam_to(&mut self, n: usize, public: Ipv4Addr, kind: Nat) {
        self.routers[n].roam(public);
        self.routers[n].kind = kind;
    }

    fn emit(&mut self, from: SocketAddr, to: SocketAddr, payload: Vec<u8>) {
        self.dice ^= self.dice << 13;
        self.dice ^= self.dice >> 7;
        self.dice ^= self.dice << 17;
        if self.dice % 100 < self.loss_percent {
            return;
        }
        self.sequence += 1;
        self.in_flight.insert(
            (self.now + self.latency, self.sequence),
            (from, to, payload),
        );
    }

    /// Host `n` sends a datagram from its socket (data from the one send
    /// API: the caller knows whether its destination is a stream).
    pub fn send(&mut self, n: usize, destination: SocketAddr, payload: Vec<u8>) {
        let stream_to_relay = Net::is_relay(destination.ip());
        if self.udp_blocked[n] && !stream_to_relay {
            return;
        }
        self.send_with_ttl(n, destination, payload, None);
    }

    /// What a node asked to send: a datagram with a TTL of its own (below
    /// 2 it does not leave the host's network, below `2 + INTERNET_HOPS` it
    /// opens the NAT's mapping and dies before the far NAT), or a message
    /// on a stream to a relay (delivered as a datagram would be: the
    /// simulation has no TCP, only networks that drop UDP but not it).
    pub fn send_transmit(&mut self, n: usize, transmit: postern_tunnel::node::Transmit) {
        if self.udp_blocked[n] && transmit.stream.is_none() {
            return;
        }
        self.send_with_ttl(n, transmit.destination, transmit.payload, transmit.ttl);
    }

    fn send_with_ttl(
        &mut self,
        n: usize,
        destination: SocketAddr,
        payload: Vec<u8>,
        ttl: Option<u8>,
    ) {
        if self.down[n] || ttl.is_some_and(|ttl| ttl < 2) {
            return;
        }
        self.destinations.push((n, destination));
        if self.direct_blocked && !Net::is_relay(destination.ip()) {
            return;
        }
        if payload.len() >= 20 && payload[4..8] == [0x21, 0x12, 0xa4, 0x42] {
            self.stun_sent += 1;
        }
        let from = if destination.is_ipv6() {
            // No route without an IPv6 address.
            let Some(v6) = self.routers[n].v6 else {
                return;
            };
            let port = Net::inside6(n).port();
            self.routers[n].v6_flows.insert((port, destination));
            SocketAddr::new(IpAddr::V6(v6), port)
        } else {
            if self.routers[n].no_v4 {
                return;
            }
            self.routers[n].outbound(destination, self.now)
        };
        if ttl.is_some_and(|ttl| ttl < 2 + INTERNET_HOPS) {
            return;
        }
        self.emit(from, destination, payload);
    }

    /// Datagrams due now for hosts: (host, source, payload). The relay's
    /// share is handled here.
    pub fn due(&mut self) -> Vec<(usize, SocketAddr, Vec<u8>)> {
        let mut out = Vec::new();
        while let Some(entry) = self.in_flight.first_entry() {
            if entry.key().0 > self.now {
                break;
            }
            let (from, to, payload) = entry.remove();
            if Net::is_relay(to.ip()) {
                self.relay_receive(from, to, payload);
                continue;
            }
            if let IpAddr::V6(v6) = to.ip() {
                let host = (0..self.routers.len()).find(|n| {
                    !self.down[*n]
                        && self.routers[*n].v6 == Some(v6)
                        && self.routers[*n].v6_flows.contains(&(to.port(), from))
                });
                if let Some(n) = host {
                    out.push((n, from, payload));
                }
                continue;
            }
            let now = self.now;
            for n in 0..self.routers.len() {
                if !self.down[n]
                    && to.ip() == IpAddr::V4(self.routers[n].public)
                    && self.routers[n].admits(from, to.port(), now)
                {
                    out.push((n, from, payload.clone()));
                }
            }
        }
        out
    }

    fn relay_receive(&mut self, from: SocketAddr, to: SocketAddr, payload: Vec<u8>) {
        let now = Now {
            instant: self.now,
            unix_secs: self.unix(),
        };
        if to.port() == 3478 {
            match self
                .relay
                .handle_client(now, from, &payload, &mut NoSockets)
            {
                ClientAction::Reply(reply) => self.emit(to, from, reply),
                ClientAction::Relay {
                    port,
                    peer,
                    payload,
                } => {
                    let payload = payload.to_vec();
                    let relayed = Net::relay_server_like(peer).ip();
                    self.emit(SocketAddr::new(relayed, port), peer, payload)
                }
                ClientAction::None => {}
            }
        } else {
            let mut buf = vec![0u8; PEER_HEADROOM + payload.len() + PEER_TAILROOM];
            buf[PEER_HEADROOM..PEER_HEADROOM + payload.len()].copy_from_slice(&payload);
            if let PeerAction::ToClient { client, range } = self.relay.handle_peer(
                self.now,
                to.port(),
                from,
                &mut buf,
                PEER_HEADROOM,
                payload.len(),
            ) {
                let framed = buf[range].to_vec();
                self.emit(Net::relay_server_like(client), client, framed);
            }
        }
    }

    /// When the next datagram arrives.
    pub fn next_arrival(&self) -> Option<Instant> {
        self.in_flight.keys().next().map(|k| k.0)
    }

    /// Moves the clock to `next` (at least a millisecond on).
    /// Unix seconds now, in simulated time.
    pub fn unix(&self) -> u64 {
        self.unix_started + (self.now - self.started).as_secs()
    }

    pub fn advance(&mut self, next: Option<Instant>) {
        let next = next.unwrap_or(self.now + Duration::from_millis(10));
        self.now = next.max(self.now + Duration::from_millis(1));
    }
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}
