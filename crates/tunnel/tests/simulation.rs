#![allow(clippy::unwrap_used)] // a test file: unwrap is the assertion
//! A deterministic simulated network: a client and a gateway `Node`, each
//! behind a NAT, a relay running the real `postern-turn` server core, and a
//! stub portal that trickles candidates. Time is simulated.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use postern_model::protocol::IceCredentials;
use postern_tunnel::node::{Node, NodeEvent, PeerConfig, RelayConfig};
use postern_tunnel::wireguard::public_key;
use postern_turn::credentials::{rest_password, rest_username};
use postern_turn::server::{
    ClientAction, Now, PEER_HEADROOM, PEER_TAILROOM, PeerAction, RelaySockets, Server, ServerConfig,
};
use uuid::Uuid;

const RELAY_IP: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 3);
const SECRET: &[u8] = b"simulation-secret";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Nat {
    /// Endpoint-independent mapping and filtering ("full cone").
    Open,
    /// Endpoint-independent mapping, address- and port-restricted filtering.
    PortRestricted,
    /// A new mapping per destination, port-restricted filtering.
    Symmetric,
}

struct Router {
    kind: Nat,
    public: Ipv4Addr,
    /// destination (or None for endpoint-independent) -> public port
    mappings: HashMap<Option<SocketAddr>, u16>,
    /// public port -> destinations contacted from it
    contacted: HashMap<u16, Vec<SocketAddr>>,
    next_port: u16,
}

impl Router {
    fn outbound(&mut self, destination: SocketAddr) -> SocketAddr {
        let key = match self.kind {
            Nat::Symmetric => Some(destination),
            _ => None,
        };
        let port = *self.mappings.entry(key).or_insert_with(|| {
            self.next_port += 7;
            self.next_port
        });
        self.contacted.entry(port).or_default().push(destination);
        SocketAddr::new(IpAddr::V4(self.public), port)
    }

    /// Whether a datagram from `source` to our public `port` gets in.
    fn admits(&self, source: SocketAddr, port: u16) -> bool {
        let Some(contacted) = self.contacted.get(&port) else {
            return false;
        };
        match self.kind {
            Nat::Open => true,
            Nat::PortRestricted | Nat::Symmetric => contacted.contains(&source),
        }
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

struct Sim {
    now: Instant,
    nodes: [Node; 2],
    routers: [Router; 2],
    relay: Server,
    in_flight: BTreeMap<(Instant, u64), Datagram>,
    sequence: u64,
    latency: Duration,
    ids: [Uuid; 2],
    connected: [Option<(bool, Duration)>; 2],
    /// When each side's node said the other is dead.
    dead: [Option<Instant>; 2],
    /// A side that is down sends and receives nothing.
    down: [bool; 2],
    /// Percent of datagrams lost, decided by a seeded generator.
    loss_percent: u64,
    dice: u64,
    /// Packets that reached each side, with when.
    received: [Vec<(Instant, Vec<u8>)>; 2],
    started: Instant,
}

fn relay_config(device: Uuid) -> RelayConfig {
    let expiry = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 3600;
    let username = rest_username(expiry, &device.to_string());
    RelayConfig {
        server: SocketAddr::new(IpAddr::V4(RELAY_IP), 3478),
        password: rest_password(SECRET, &username),
        username,
    }
}

fn ice(tag: &str) -> IceCredentials {
    IceCredentials {
        username_fragment: format!("{tag}frag"),
        password: format!("{tag}-password-0123456789abcdef"),
    }
}

impl Sim {
    fn new(client_nat: Nat, gateway_nat: Nat) -> Sim {
        let now = Instant::now();
        let ids = [Uuid::from_u128(1), Uuid::from_u128(2)];
        let inside = [
            SocketAddr::from(([10, 1, 0, 2], 51820)),
            SocketAddr::from(([10, 2, 0, 2], 51820)),
        ];
        let secrets = [[1u8; 32], [2u8; 32]];
        let mut nodes = [
            Node::new(inside[0], secrets[0], true, 11),
            Node::new(inside[1], secrets[1], false, 22),
        ];
        for (n, node) in nodes.iter_mut().enumerate() {
            node.add_relay(relay_config(ids[n]), now);
        }
        let psk = [7u8; 32];
        let (client_ice, gateway_ice) = (ice("client"), ice("gateway"));
        nodes[0].add_peer(
            ids[1],
            PeerConfig {
                public_key: public_key(secrets[1]),
                preshared_key: psk,
                local_ice: client_ice.clone(),
                remote_ice: gateway_ice.clone(),
            },
            now,
        );
        nodes[1].add_peer(
            ids[0],
            PeerConfig {
                public_key: public_key(secrets[0]),
                preshared_key: psk,
                local_ice: gateway_ice,
                remote_ice: client_ice,
            },
            now,
        );
        let router = |kind, public| Router {
            kind,
            public,
            mappings: HashMap::new(),
            contacted: HashMap::new(),
            next_port: 20000,
        };
        Sim {
            now,
            nodes,
            routers: [
                router(client_nat, Ipv4Addr::new(198, 18, 0, 10)),
                router(gateway_nat, Ipv4Addr::new(198, 18, 0, 20)),
            ],
            relay: Server::new(ServerConfig::new("sim", SECRET, Some(RELAY_IP)), [5; 32]),
            in_flight: BTreeMap::new(),
            sequence: 0,
            latency: Duration::from_millis(10),
            ids,
            connected: [None, None],
            dead: [None, None],
            down: [false, false],
            loss_percent: 0,
            dice: 0x9e37_79b9_7f4a_7c15,
            received: [Vec::new(), Vec::new()],
            started: now,
        }
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

    fn unix(&self) -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs()
    }

    fn deliver(&mut self, from: SocketAddr, to: SocketAddr, payload: Vec<u8>) {
        if to.ip() == IpAddr::V4(RELAY_IP) {
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
                        self.emit(SocketAddr::new(IpAddr::V4(RELAY_IP), port), peer, payload)
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
                    self.emit(SocketAddr::new(IpAddr::V4(RELAY_IP), 3478), client, framed);
                }
            }
            return;
        }
        for side in 0..2 {
            if !self.down[side]
                && to.ip() == IpAddr::V4(self.routers[side].public)
                && self.routers[side].admits(from, to.port())
            {
                self.nodes[side].handle_datagram(from, &payload, self.now);
            }
        }
        // Anything else (a private host candidate of the other side) is lost.
    }

    fn step(&mut self) {
        // Deliver what is due, then let both nodes act on it at once.
        while let Some(entry) = self.in_flight.first_entry() {
            if entry.key().0 > self.now {
                break;
            }
            let (from, to, payload) = entry.remove();
            self.deliver(from, to, payload);
        }
        for side in 0..2 {
            self.nodes[side].handle_timeout(self.now);
            while let Some(transmit) = self.nodes[side].poll_transmit() {
                if self.down[side] {
                    continue;
                }
                let from = self.routers[side].outbound(transmit.destination);
                self.emit(from, transmit.destination, transmit.payload);
            }
            while let Some(event) = self.nodes[side].poll_event() {
                match event {
                    NodeEvent::Candidate { candidate, .. } => {
                        // The stub portal relays candidates at once.
                        let other = 1 - side;
                        let peer = self.ids[side];
                        self.nodes[other].add_remote_candidate(peer, &candidate, self.now);
                    }
                    NodeEvent::Connected { relayed, .. } => {
                        self.connected[side] = Some((relayed, self.now - self.started));
                    }
                    NodeEvent::Packet { packet, .. } => {
                        self.received[side].push((self.now, packet))
                    }
                    NodeEvent::Dead { .. } => {
                        self.dead[side].get_or_insert(self.now);
                    }
                }
            }
        }
        let next = [
            self.nodes[0].poll_timeout(),
            self.nodes[1].poll_timeout(),
            self.in_flight.keys().next().map(|k| k.0),
        ]
        .into_iter()
        .flatten()
        .min()
        .unwrap_or(self.now + Duration::from_millis(10));
        self.now = next.max(self.now + Duration::from_millis(1));
    }

    fn run_until(&mut self, limit: Duration, done: impl Fn(&Sim) -> bool) -> bool {
        let deadline = self.now + limit;
        while self.now < deadline {
            self.step();
            if done(self) {
                return true;
            }
        }
        false
    }

    /// Sends an IP packet from one side to the other and waits for it.
    fn ping(&mut self, from: usize, tag: u8) -> Option<Duration> {
        let packet = ip_packet(tag);
        let before = self.received[1 - from].len();
        let started = self.now;
        let peer = self.ids[1 - from];
        self.nodes[from].send(peer, &packet, self.now);
        let arrived = self.run_until(Duration::from_secs(5), |sim| {
            sim.received[1 - from].len() > before
        });
        let (at, last) = self.received[1 - from].last()?;
        (arrived && *last == packet).then(|| *at - started)
    }
}

fn ip_packet(tag: u8) -> Vec<u8> {
    let mut packet = vec![0u8; 40];
    packet[0] = 0x45;
    packet[2..4].copy_from_slice(&40u16.to_be_bytes());
    packet[8] = 64;
    packet[9] = 17;
    packet[12..16].copy_from_slice(&[100, 64, 0, 1]);
    packet[16..20].copy_from_slice(&[100, 64, 0, 2]);
    packet[28..].fill(tag);
    packet
}

#[test]
fn cone_nats_give_a_direct_path() {
    let mut sim = Sim::new(Nat::PortRestricted, Nat::Open);
    assert!(
        sim.run_until(Duration::from_secs(20), |s| s.connected[0].is_some()
            && s.connected[1].is_some()),
        "no path"
    );
    let (relayed, after) = sim.connected[0].unwrap();
    assert!(!relayed, "cone NATs must give a direct path");
    println!("direct path nominated after {after:?} of simulated time");
    let took = sim.ping(0, 1).expect("client -> gateway packet");
    let second = sim.ping(1, 2).expect("gateway -> client packet");
    println!("first packet (with the WireGuard handshake) took {took:?}, the next {second:?}");
    assert!(
        second < Duration::from_millis(20),
        "a direct packet takes one 10 ms hop: {second:?}"
    );
    assert!(
        sim.nodes[0]
            .path(sim.ids[1])
            .is_some_and(|(_, _, relayed)| !relayed)
    );
}

#[test]
fn symmetric_nats_fall_back_to_the_relay() {
    let mut sim = Sim::new(Nat::Symmetric, Nat::Symmetric);
    assert!(
        sim.run_until(Duration::from_secs(30), |s| s.connected[0].is_some()
            && s.connected[1].is_some()),
        "no path at all"
    );
    println!("symmetric NATs: {:?}", sim.connected);
    let client_path = sim.nodes[0].path(sim.ids[1]).unwrap();
    let gateway_path = sim.nodes[1].path(sim.ids[0]).unwrap();
    assert!(
        client_path.2 || gateway_path.2,
        "one side sends through the relay: {client_path:?} {gateway_path:?}"
    );
    let first = sim
        .ping(0, 3)
        .expect("client -> gateway packet through the relay");
    let next = sim
        .ping(1, 4)
        .expect("gateway -> client packet through the relay");
    let again = sim.ping(0, 5).expect("and again");
    println!("relayed: first packet {first:?}, then {next:?} and {again:?}");
    // Through the relay a packet takes two 10 ms hops.
    assert!(again >= Duration::from_millis(20), "{again:?}");
}

#[test]
fn a_dead_gateway_is_noticed_within_a_second_and_a_half() {
    let mut sim = Sim::new(Nat::PortRestricted, Nat::Open);
    assert!(
        sim.run_until(Duration::from_secs(20), |s| s.connected[0].is_some()
            && s.connected[1].is_some())
    );
    sim.ping(0, 1).expect("traffic flows");
    // Idle but alive for a while: keepalives, no false alarm.
    sim.run_until(Duration::from_secs(10), |_| false);
    assert_eq!(sim.dead, [None, None], "an idle peer is not dead");
    // The gateway dies.
    sim.down[1] = true;
    let died = sim.now;
    assert!(
        sim.run_until(Duration::from_secs(10), |s| s.dead[0].is_some()),
        "never noticed"
    );
    let noticed = sim.dead[0].unwrap() - died;
    println!("dead gateway noticed after {noticed:?} of simulated time");
    assert!(noticed <= Duration::from_millis(1600), "{noticed:?}");
}

/// A tiny go-back-N stream over the tunnel: every segment arrives, in order,
/// across a lossy network.
#[test]
fn ten_percent_loss_still_delivers_a_stream() {
    let mut sim = Sim::new(Nat::PortRestricted, Nat::Open);
    sim.loss_percent = 10;
    assert!(
        sim.run_until(Duration::from_secs(60), |s| s.connected[0].is_some()
            && s.connected[1].is_some()),
        "ICE must get through 10% loss"
    );
    const SEGMENTS: u8 = 200;
    const WINDOW: u8 = 8;
    let (client, gateway) = (sim.ids[0], sim.ids[1]);
    let mut acked: u8 = 0;
    let mut delivered: Vec<u8> = Vec::new();
    let mut sent_at = sim.now;
    let mut next: u8 = 0;
    let deadline = sim.now + Duration::from_secs(120);
    while acked < SEGMENTS {
        assert!(sim.now < deadline, "stream stalled at {acked}");
        // Send what the window allows; after a timeout, go back.
        if sim.now - sent_at > Duration::from_millis(200) {
            next = acked;
        }
        while next < acked.saturating_add(WINDOW).min(SEGMENTS) {
            sim.nodes[0].send(gateway, &ip_packet(next), sim.now);
            sent_at = sim.now;
            next += 1;
        }
        sim.step();
        // The gateway takes the next in-order segment and acks cumulatively
        // (again for duplicates: the last ack may have been lost).
        let arrived: Vec<u8> = sim.received[1].drain(..).map(|(_, p)| p[30]).collect();
        for segment in &arrived {
            if usize::from(*segment) == delivered.len() {
                delivered.push(*segment);
            }
        }
        if !arrived.is_empty() {
            let ack = delivered.len() as u8;
            sim.nodes[1].send(client, &ip_packet(ack), sim.now);
        }
        for (_, ack) in sim.received[0].drain(..) {
            acked = acked.max(ack[30]);
        }
    }
    assert_eq!(delivered, (0..SEGMENTS).collect::<Vec<_>>());
    println!(
        "{SEGMENTS} segments through 10% loss in {:?} of simulated time",
        sim.now - sim.started
    );
}
