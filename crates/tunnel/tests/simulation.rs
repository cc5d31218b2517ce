#![allow(clippy::unwrap_used)] // a test file: unwrap is the assertion
//! Two nodes, a client and a gateway, each behind a NAT, with a relay and a
//! stub portal that trickles candidates, on the simulated network.

mod support;

use std::time::{Duration, Instant};

use postern_model::protocol::IceCredentials;
use postern_tunnel::node::{Node, NodeEvent, PeerConfig, REPROBE};
use postern_tunnel::wireguard::public_key;
use support::net::{Nat, Net};
use uuid::Uuid;

struct Sim {
    net: Net,
    nodes: [Node; 2],
    ids: [Uuid; 2],
    connected: [Option<(bool, Duration)>; 2],
    /// When each side's node said the other is dead.
    dead: [Option<Instant>; 2],
    /// Packets that reached each side, with when.
    received: [Vec<(Instant, Vec<u8>)>; 2],
}

fn ice(tag: &str) -> IceCredentials {
    IceCredentials {
        username_fragment: format!("{tag}frag"),
        password: format!("{tag}-password-0123456789abcdef"),
    }
}

impl Sim {
    fn new(client_nat: Nat, gateway_nat: Nat) -> Sim {
        let net = Net::new(&[client_nat, gateway_nat]);
        let now = net.now;
        let ids = [Uuid::from_u128(1), Uuid::from_u128(2)];
        let secrets = [[1u8; 32], [2u8; 32]];
        let mut nodes = [
            Node::new(Net::inside(0), secrets[0], true, 11),
            Node::new(Net::inside(1), secrets[1], false, 22),
        ];
        for (n, node) in nodes.iter_mut().enumerate() {
            node.add_relay(Net::relay_config(ids[n]), now);
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
        Sim {
            net,
            nodes,
            ids,
            connected: [None, None],
            dead: [None, None],
            received: [Vec::new(), Vec::new()],
        }
    }

    fn step(&mut self) {
        let now = self.net.now;
        // Deliver what is due, then let both nodes act on it at once.
        for (side, source, payload) in self.net.due() {
            self.nodes[side].handle_datagram(source, &payload, now);
        }
        for side in 0..2 {
            self.nodes[side].handle_timeout(now);
            while let Some(transmit) = self.nodes[side].poll_transmit() {
                self.net.send(side, transmit.destination, transmit.payload);
            }
            while let Some(event) = self.nodes[side].poll_event() {
                match event {
                    NodeEvent::Candidate { candidate, .. } => {
                        // The stub portal relays candidates at once.
                        let peer = self.ids[side];
                        self.nodes[1 - side].add_remote_candidate(peer, &candidate, now);
                    }
                    NodeEvent::Connected { relayed, .. } => {
                        self.connected[side] = Some((relayed, now - self.net.started));
                    }
                    NodeEvent::Packet { packet, .. } => self.received[side].push((now, packet)),
                    NodeEvent::Dead { .. } => {
                        self.dead[side].get_or_insert(now);
                    }
                }
            }
        }
        let next = [
            self.nodes[0].poll_timeout(),
            self.nodes[1].poll_timeout(),
            self.net.next_arrival(),
        ]
        .into_iter()
        .flatten()
        .min();
        self.net.advance(next);
    }

    fn run_until(&mut self, limit: Duration, done: impl Fn(&Sim) -> bool) -> bool {
        let deadline = self.net.now + limit;
        while self.net.now < deadline {
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
        let started = self.net.now;
        let peer = self.ids[1 - from];
        self.nodes[from].send(peer, &packet, started);
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
    sim.net.down[1] = true;
    let died = sim.net.now;
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
    sim.net.loss_percent = 10;
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
    let mut sent_at = sim.net.now;
    let mut next: u8 = 0;
    let deadline = sim.net.now + Duration::from_secs(120);
    while acked < SEGMENTS {
        assert!(sim.net.now < deadline, "stream stalled at {acked}");
        // Send what the window allows; after a timeout, go back.
        if sim.net.now - sent_at > Duration::from_millis(200) {
            next = acked;
        }
        while next < acked.saturating_add(WINDOW).min(SEGMENTS) {
            sim.nodes[0].send(gateway, &ip_packet(next), sim.net.now);
            sent_at = sim.net.now;
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
            sim.nodes[1].send(client, &ip_packet(ack), sim.net.now);
        }
        for (_, ack) in sim.received[0].drain(..) {
            acked = acked.max(ack[30]);
        }
    }
    assert_eq!(delivered, (0..SEGMENTS).collect::<Vec<_>>());
    println!(
        "{SEGMENTS} segments through 10% loss in {:?} of simulated time",
        sim.net.now - sim.net.started
    );
}

#[test]
fn a_symmetric_gateway_is_reached_from_behind_a_port_restricted_nat() {
    let mut sim = Sim::new(Nat::PortRestricted, Nat::Symmetric);
    assert!(
        sim.run_until(Duration::from_secs(30), |s| s.connected[0].is_some()
            && s.connected[1].is_some()),
        "no path: {:?}",
        sim.connected
    );
    sim.ping(0, 1).expect("client -> gateway");
    sim.ping(1, 2).expect("gateway -> client");
}

#[test]
fn the_fast_path_encrypts_and_decrypts_without_queues() {
    let mut sim = Sim::new(Nat::PortRestricted, Nat::Open);
    assert!(
        sim.run_until(Duration::from_secs(20), |s| s.connected[0].is_some()
            && s.connected[1].is_some())
    );
    sim.ping(0, 1).expect("the session is up");
    let now = sim.net.now;
    let (client, gateway) = (sim.ids[0], sim.ids[1]);
    let mut wire = vec![0u8; 2048];
    let mut plain = vec![0u8; 2048];
    for (from, to, tag) in [(0usize, 1usize, 7u8), (1, 0, 8)] {
        let packet = ip_packet(tag);
        let peer = if from == 0 { gateway } else { client };
        let (destination, n) = sim.nodes[from]
            .encrypt_into(peer, &packet, now, &mut wire)
            .expect("a direct path");
        // The receiving side sees it from the sender's public address.
        let (_, source, _) = sim.nodes[to].path(sim.ids[from]).unwrap();
        let expected_destination = sim.nodes[from].path(peer).unwrap().1;
        assert_eq!(destination, expected_destination);
        let (who, m) = sim.nodes[to]
            .decrypt_into(source, &wire[..n], now, &mut plain)
            .expect("decrypted on the fast path");
        assert_eq!(who, sim.ids[from]);
        assert_eq!(&plain[..m], &packet[..]);
    }
    // Anything that is not data from a known path goes the slow way.
    assert_eq!(
        sim.nodes[1].decrypt_into("198.18.9.9:1".parse().unwrap(), &[1, 2, 3], now, &mut plain),
        None
    );
}

/// Waits for the client's path to the gateway to be (or not be) relayed and
/// says how long that took.
fn wait_for_path(sim: &mut Sim, relayed: bool, limit: Duration) -> Option<Duration> {
    let started = sim.net.now;
    let gateway = sim.ids[1];
    sim.run_until(limit, |s| {
        s.nodes[0].path(gateway).is_some_and(|p| p.2 == relayed)
            && s.nodes[1].path(s.ids[0]).is_some()
    })
    .then(|| sim.net.now - started)
}

#[test]
fn a_relayed_path_moves_to_a_direct_one_when_it_opens() {
    let mut sim = Sim::new(Nat::PortRestricted, Nat::Open);
    // A firewall lets only the relay through at first.
    sim.net.direct_blocked = true;
    wait_for_path(&mut sim, true, Duration::from_secs(20)).expect("a relayed path");
    sim.ping(0, 1).expect("traffic through the relay");
    // Long enough for ICE to give up on the direct pairs.
    sim.run_until(Duration::from_secs(60), |_| false);
    sim.ping(0, 2).expect("still through the relay");
    let stun_before = sim.net.stun_sent;
    sim.run_until(Duration::from_secs(60), |_| false);
    let stun_per_minute = sim.net.stun_sent - stun_before;
    sim.net.direct_blocked = false;
    let upgraded = wait_for_path(&mut sim, false, Duration::from_secs(60))
        .expect("the path never became direct after the firewall opened");
    assert!(upgraded <= REPROBE + Duration::from_secs(1), "{upgraded:?}");
    println!(
        "relayed -> direct {upgraded:?} after the firewall opened; \
         {stun_per_minute} STUN datagrams per idle relayed minute"
    );
    let took = sim.ping(0, 3).expect("client -> gateway, directly");
    assert!(took < Duration::from_millis(20), "one direct hop: {took:?}");
    sim.ping(1, 4).expect("gateway -> client");
    assert_eq!(sim.dead, [None, None], "the peer never looked dead");
}

#[test]
fn a_direct_path_that_dies_falls_back_to_the_relay() {
    let mut sim = Sim::new(Nat::PortRestricted, Nat::Open);
    wait_for_path(&mut sim, false, Duration::from_secs(20)).expect("a direct path");
    sim.ping(0, 1).expect("traffic flows directly");
    sim.run_until(Duration::from_secs(5), |_| false);
    let stun_before = sim.net.stun_sent;
    sim.run_until(Duration::from_secs(60), |_| false);
    let stun_per_minute = sim.net.stun_sent - stun_before;
    // The direct path breaks; the relay still gets through.
    sim.net.direct_blocked = true;
    let moved =
        wait_for_path(&mut sim, true, Duration::from_secs(30)).expect("never moved to the relay");
    assert!(moved <= Duration::from_millis(1500), "{moved:?}");
    println!(
        "direct -> relayed {moved:?} after the direct path broke; \
         {stun_per_minute} STUN datagrams per idle direct minute"
    );
    let took = sim.ping(0, 2).expect("client -> gateway through the relay");
    assert!(took >= Duration::from_millis(20), "two hops: {took:?}");
    sim.ping(1, 3).expect("gateway -> client through the relay");
    assert_eq!(sim.dead, [None, None], "the peer never looked dead");
}

/// Sends a packet each way every `every` for `duration`, stepping the sim.
fn stream_both_ways(sim: &mut Sim, duration: Duration, every: Duration) {
    let end = sim.net.now + duration;
    let mut next = sim.net.now;
    let (client, gateway) = (sim.ids[0], sim.ids[1]);
    while sim.net.now < end {
        if sim.net.now >= next {
            let now = sim.net.now;
            sim.nodes[0].send(gateway, &ip_packet(10), now);
            sim.nodes[1].send(client, &ip_packet(11), now);
            next = now + every;
        }
        sim.step();
    }
}

#[test]
fn traffic_still_in_flight_on_the_relay_does_not_pull_a_direct_path_back() {
    let mut sim = Sim::new(Nat::PortRestricted, Nat::Open);
    sim.net.direct_blocked = true;
    wait_for_path(&mut sim, true, Duration::from_secs(20)).expect("a relayed path");
    sim.net.direct_blocked = false;
    // Busy both ways while ICE finds the direct pair and after.
    stream_both_ways(
        &mut sim,
        REPROBE + Duration::from_secs(5),
        Duration::from_millis(5),
    );
    let (client, gateway) = (sim.ids[0], sim.ids[1]);
    let client_path = sim.nodes[0].path(gateway).unwrap();
    let gateway_path = sim.nodes[1].path(client).unwrap();
    assert!(
        !client_path.2 && !gateway_path.2,
        "both sides must be direct: client {client_path:?}, gateway {gateway_path:?}"
    );
    stream_both_ways(&mut sim, Duration::from_secs(2), Duration::from_millis(5));
    assert!(!sim.nodes[0].path(gateway).unwrap().2, "and stay direct");
    assert!(!sim.nodes[1].path(client).unwrap().2, "and stay direct");
}
