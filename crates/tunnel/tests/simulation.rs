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
    nodes: [Node<Uuid>; 2],
    ids: [Uuid; 2],
    connected: [Option<(bool, Duration)>; 2],
    /// When each side's node said the other is dead.
    dead: [Option<Instant>; 2],
    /// Packets that reached each side, with when.
    received: [Vec<(Instant, Vec<u8>)>; 2],
    /// Where datagrams are encrypted and decrypted.
    buffer: Vec<u8>,
    /// How long the stub portal takes to pass a candidate to each side (the
    /// gateway learns the client's later than the client learns its own,
    /// as through a real portal).
    portal_delay: [Duration; 2],
    /// Candidates on their way: (when due, to side, candidate).
    candidates: Vec<(Instant, usize, String)>,
}

fn ice(tag: &str) -> IceCredentials {
    IceCredentials {
        username_fragment: format!("{tag}frag"),
        password: format!("{tag}-password-0123456789abcdef"),
    }
}

impl Sim {
    fn new(client_nat: Nat, gateway_nat: Nat) -> Sim {
        Sim::with_credentials_for(client_nat, gateway_nat, Duration::from_secs(3600))
    }

    /// Both sides get relay credentials that live `lifetime`.
    fn with_credentials_for(client_nat: Nat, gateway_nat: Nat, lifetime: Duration) -> Sim {
        let net = Net::new(&[client_nat, gateway_nat]);
        Sim::on(net, [vec![Net::inside(0)], vec![Net::inside(1)]], lifetime)
    }

    /// Each side with the addresses (families) its network gives it
    /// (`net` says which have IPv6); each allocates on the relay in each of
    /// its families.
    fn with_families(net: Net, locals: [Vec<std::net::SocketAddr>; 2]) -> Sim {
        Sim::on(net, locals, Duration::from_secs(3600))
    }

    fn on(net: Net, locals: [Vec<std::net::SocketAddr>; 2], lifetime: Duration) -> Sim {
        let now = net.now;
        let ids = [Uuid::from_u128(1), Uuid::from_u128(2)];
        let secrets = [[1u8; 32], [2u8; 32]];
        let mut nodes = [
            Node::new(&locals[0], secrets[0], true, 11),
            Node::new(&locals[1], secrets[1], false, 22),
        ];
        let expiry = net.unix() + lifetime.as_secs();
        for (n, node) in nodes.iter_mut().enumerate() {
            for local in &locals[n] {
                let server = Net::relay_server_like(*local);
                node.add_relay(Net::relay_config_on(server, ids[n], expiry), now);
            }
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
            buffer: vec![0; 65_536],
            portal_delay: [Duration::ZERO; 2],
            candidates: Vec::new(),
        }
    }

    /// `side` sends an IP packet to the other side through the one send
    /// API.
    fn send(&mut self, side: usize, packet: &[u8]) {
        let now = self.net.now;
        let peer = self.ids[1 - side];
        if let Some((destination, n)) =
            self.nodes[side].encapsulate(peer, packet, now, &mut self.buffer)
        {
            self.net.send(side, destination, self.buffer[..n].to_vec());
        }
    }

    fn step(&mut self) {
        let now = self.net.now;
        let (due, later): (Vec<_>, Vec<_>) = std::mem::take(&mut self.candidates)
            .into_iter()
            .partition(|(at, _, _)| *at <= now);
        self.candidates = later;
        for (_, to, candidate) in due {
            let peer = self.ids[1 - to];
            self.nodes[to].add_remote_candidate(peer, &candidate, now);
        }
        // Deliver what is due, then let both nodes act on it at once.
        for (side, source, payload) in self.net.due() {
            if let Some((_, n)) =
                self.nodes[side].decapsulate(source, &payload, now, &mut self.buffer)
            {
                self.received[side].push((now, self.buffer[..n].to_vec()));
            }
        }
        for side in 0..2 {
            self.nodes[side].handle_timeout(now);
            while let Some(transmit) = self.nodes[side].poll_transmit() {
                self.net.send_transmit(side, transmit);
            }
            while let Some(event) = self.nodes[side].poll_event() {
                match event {
                    NodeEvent::Candidate { candidate, .. } => {
                        let to = 1 - side;
                        if self.portal_delay[to].is_zero() {
                            // The stub portal relays candidates at once.
                            let peer = self.ids[side];
                            self.nodes[to].add_remote_candidate(peer, &candidate, now);
                        } else {
                            self.candidates
                                .push((now + self.portal_delay[to], to, candidate));
                        }
                    }
                    NodeEvent::Connected { relayed, .. } => {
                        self.connected[side] = Some((relayed, now - self.net.started));
                    }
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
            self.candidates.iter().map(|(at, _, _)| *at).min(),
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
        self.send(from, &packet);
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

/// Whether the client's path to the gateway is direct.
fn direct(sim: &Sim) -> bool {
    sim.nodes[0]
        .path(sim.ids[1])
        .is_some_and(|(_, _, relayed)| !relayed)
}

/// Issue 20: NAT routers whose own WAN input is not firewalled keep a
/// conntrack entry for the first unsolicited check and map their host's
/// later packets to that peer to another port. The gateway learns the
/// client's candidates 50 ms after the client learns its (through the
/// portal), so without openers the client's first checks reach the
/// office router before the gateway ever sent anything to the client.
#[test]
fn routers_with_an_open_wan_input_still_give_a_direct_path() {
    let mut sim = Sim::new(Nat::PortRestrictedOpenWan, Nat::PortRestrictedOpenWan);
    sim.portal_delay[1] = Duration::from_millis(50);
    let started = sim.net.now;
    assert!(
        sim.run_until(Duration::from_secs(10), direct),
        "still relayed after 10 s: {:?}",
        sim.nodes[0].path(sim.ids[1])
    );
    println!("direct after {:?} of simulated time", sim.net.now - started);
    // The first path already, not a later switch.
    assert_eq!(sim.connected[0].map(|(relayed, _)| relayed), Some(false));
    let took = sim.ping(0, 1).expect("client -> gateway packet");
    assert!(took < Duration::from_millis(100), "{took:?}");
}

/// The same with a symmetric NAT at home: nothing direct is possible, and
/// holding the checks costs the relayed path no more than the relay hold.
#[test]
fn a_symmetric_nat_goes_relayed_without_waiting_for_the_peers_checks() {
    let mut sim = Sim::new(Nat::Symmetric, Nat::PortRestrictedOpenWan);
    sim.portal_delay[1] = Duration::from_millis(50);
    assert!(sim.run_until(Duration::from_secs(5), |s| s.connected[0].is_some()));
    let (relayed, after) = sim.connected[0].unwrap();
    assert!(relayed);
    println!("relayed path after {after:?} of simulated time");
    assert!(after < Duration::from_millis(400), "{after:?}");
}

/// A network that drops all outgoing UDP (but lets TCP out): the relay
/// goes unanswered on UDP, the client tries it over TCP after 3 s, and the
/// tunnel runs relayed over that stream.
#[test]
fn a_client_whose_network_drops_udp_reaches_the_gateway_over_turn_tcp() {
    let mut sim = Sim::new(Nat::PortRestricted, Nat::PortRestricted);
    sim.net.udp_blocked[0] = true;
    assert!(
        sim.run_until(Duration::from_secs(15), |s| s.connected[0].is_some()),
        "no path at all"
    );
    let (relayed, after) = sim.connected[0].unwrap();
    assert!(relayed, "nothing direct can work without UDP");
    println!("relayed over TURN/TCP after {after:?} of simulated time");
    assert!(after < Duration::from_secs(6), "{after:?}");
    sim.ping(0, 1).expect("client -> gateway packet");
    sim.ping(1, 2).expect("gateway -> client packet");
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
            sim.send(0, &ip_packet(next));
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
            sim.send(1, &ip_packet(ack));
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
fn one_send_and_one_receive_api_write_into_the_callers_buffer() {
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
            .encapsulate(peer, &packet, now, &mut wire)
            .expect("a direct path");
        assert_eq!(
            n,
            packet.len() + 32,
            "WireGuard adds 32 bytes, nothing else"
        );
        // The receiving side sees it from the sender's public address.
        let (_, source, _) = sim.nodes[to].path(sim.ids[from]).unwrap();
        let expected_destination = sim.nodes[from].path(peer).unwrap().1;
        assert_eq!(destination, expected_destination);
        let (who, m) = sim.nodes[to]
            .decapsulate(source, &wire[..n], now, &mut plain)
            .expect("decrypted");
        assert_eq!(who, sim.ids[from]);
        assert_eq!(&plain[..m], &packet[..]);
        assert!(
            sim.nodes[to].poll_transmit().is_none(),
            "nothing queued for data"
        );
    }
    // Garbage from anywhere finds no peer and is counted, not tried on
    // every peer.
    let before = sim.nodes[1].errors().total();
    assert_eq!(
        sim.nodes[1].decapsulate("198.18.9.9:1".parse().unwrap(), &[1, 2, 3], now, &mut plain),
        None
    );
    assert_eq!(sim.nodes[1].errors().total(), before + 1);
    // Data with a receiver index nobody here has.
    let mut forged = vec![4u8, 0, 0, 0];
    forged.extend_from_slice(&0xdead_beefu32.to_le_bytes());
    forged.resize(64, 0);
    sim.nodes[1].decapsulate("198.18.9.9:1".parse().unwrap(), &forged, now, &mut plain);
    assert_eq!(sim.nodes[1].errors().get("unknown_receiver_index"), 1);
}

#[test]
fn relayed_data_is_framed_in_place_and_unwrapped_without_copies() {
    let mut sim = Sim::new(Nat::Symmetric, Nat::Symmetric);
    wait_for_path(&mut sim, true, Duration::from_secs(30)).expect("a relayed path");
    sim.ping(0, 1).expect("traffic through the relay");
    sim.ping(1, 2).expect("and back");
    // Whichever side sends from its relayed candidate frames in place: once
    // the channel is bound, data leaves as ChannelData straight from the
    // caller's buffer, 4 bytes of header before the WireGuard datagram.
    sim.run_until(Duration::from_secs(2), |_| false);
    let relaying = (0..2)
        .find(|side| {
            let peer = sim.ids[1 - side];
            sim.nodes[*side]
                .path(peer)
                .is_some_and(|(local, _, _)| local != Net::inside(*side))
        })
        .expect("one side sends from its relayed address");
    let now = sim.net.now;
    let peer = sim.ids[1 - relaying];
    let mut wire = vec![0u8; 2048];
    let packet = ip_packet(9);
    let (destination, n) = sim.nodes[relaying]
        .encapsulate(peer, &packet, now, &mut wire)
        .expect("a bound channel: no slow path");
    assert_eq!(
        destination.ip(),
        std::net::IpAddr::V4(support::net::RELAY_IP)
    );
    assert_eq!(n, 4 + packet.len() + 32, "ChannelData header + WireGuard");
    assert_eq!(wire[0] & 0xc0, 0x40, "a channel number");
    assert_eq!(usize::from(u16::from_be_bytes([wire[2], wire[3]])), n - 4);
    assert!(
        sim.nodes[relaying].poll_transmit().is_none(),
        "nothing queued"
    );
    let before = sim.received[1 - relaying].len();
    sim.net.send(relaying, destination, wire[..n].to_vec());
    assert!(
        sim.run_until(Duration::from_secs(1), |s| s.received[1 - relaying].len()
            > before)
    );
    assert_eq!(sim.received[1 - relaying].last().unwrap().1, packet);
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
fn renewed_relay_credentials_keep_a_relayed_path_past_the_old_expiry() {
    for renew in [false, true] {
        let mut sim =
            Sim::with_credentials_for(Nat::Symmetric, Nat::Symmetric, Duration::from_secs(60));
        assert!(wait_for_path(&mut sim, true, Duration::from_secs(30)).is_some());
        sim.run_until(Duration::from_secs(30), |_| false);
        let paths = |sim: &Sim| [sim.nodes[0].path(sim.ids[1]), sim.nodes[1].path(sim.ids[0])];
        let before = paths(&sim);
        if renew {
            // The portal renews at half-life.
            let (now, expiry) = (sim.net.now, sim.net.unix() + 3600);
            for side in 0..2 {
                let config = Net::relay_config_until(sim.ids[side], expiry);
                sim.nodes[side].add_relay(config, now);
            }
        }
        // A packet each way every second, well past the first expiry.
        let mut lost = 0;
        for tag in 0..60 {
            sim.run_until(Duration::from_secs(1), |_| false);
            if sim.ping(0, tag).is_none() || sim.ping(1, tag).is_none() {
                lost += 1;
            }
        }
        println!("renewed: {renew}, seconds with a lost packet: {lost}");
        if renew {
            // The same allocations carry on: no break, no new path.
            assert_eq!(lost, 0);
            assert_eq!(paths(&sim), before);
        } else {
            // The relay ends the allocations with their credentials (what a
            // revoked device meets).
            assert!(lost > 0);
        }
    }
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
    while sim.net.now < end {
        if sim.net.now >= next {
            sim.send(0, &ip_packet(10));
            sim.send(1, &ip_packet(11));
            next = sim.net.now + every;
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

/// Several clients on one gateway: every datagram finds its peer by key
/// (handshakes) or receiver index (everything else), never by trying each.
#[test]
fn one_gateway_tells_many_clients_apart_by_key_and_index() {
    const CLIENTS: usize = 4;
    let mut nats = vec![Nat::Open];
    nats.extend(std::iter::repeat_n(Nat::PortRestricted, CLIENTS));
    let mut net = Net::new(&nats);
    let now = net.now;
    let secret = |n: usize| [n as u8 + 1; 32];
    let mut gateway: Node<usize> = Node::new(&[Net::inside(0)], secret(0), false, 1);
    let mut clients: Vec<Node<usize>> = (1..=CLIENTS)
        .map(|n| Node::new(&[Net::inside(n)], secret(n), true, n as u64))
        .collect();
    gateway.add_relay(Net::relay_config(Uuid::from_u128(0)), now);
    for (i, client) in clients.iter_mut().enumerate() {
        client.add_relay(Net::relay_config(Uuid::from_u128(i as u128 + 1)), now);
    }
    for (i, client) in clients.iter_mut().enumerate() {
        let n = i + 1;
        let (client_ice, gateway_ice) = (ice(&format!("c{n}")), ice(&format!("g{n}")));
        let psk = [n as u8 + 40; 32];
        gateway.add_peer(
            n,
            PeerConfig {
                public_key: public_key(secret(n)),
                preshared_key: psk,
                local_ice: gateway_ice.clone(),
                remote_ice: client_ice.clone(),
            },
            now,
        );
        client.add_peer(
            0,
            PeerConfig {
                public_key: public_key(secret(0)),
                preshared_key: psk,
                local_ice: client_ice,
                remote_ice: gateway_ice,
            },
            now,
        );
    }
    let mut buffer = vec![0u8; 65_536];
    let mut heard: Vec<Vec<u8>> = vec![Vec::new(); CLIENTS + 1];
    let deadline = net.now + Duration::from_secs(20);
    let mut sent = false;
    while net.now < deadline {
        let now = net.now;
        for (host, source, payload) in net.due() {
            let node = if host == 0 {
                &mut gateway
            } else {
                &mut clients[host - 1]
            };
            // At the gateway: which client's tunnel it came out of, and the
            // tag it carries.
            if let Some((peer, _)) = node.decapsulate(source, &payload, now, &mut buffer)
                && host == 0
            {
                heard[peer].push(buffer[30]);
            }
        }
        // The stub portal passes candidates on: (to host, as peer, candidate).
        let mut trickled = Vec::new();
        for host in 0..=CLIENTS {
            let node = if host == 0 {
                &mut gateway
            } else {
                &mut clients[host - 1]
            };
            node.handle_timeout(now);
            while let Some(transmit) = node.poll_transmit() {
                net.send_transmit(host, transmit);
            }
            while let Some(event) = node.poll_event() {
                if let NodeEvent::Candidate { peer, candidate } = event {
                    // The gateway's peers are the clients (by host); each
                    // client's one peer is the gateway (0).
                    let (to, from) = if host == 0 { (peer, 0) } else { (0, host) };
                    trickled.push((to, from, candidate));
                }
            }
        }
        for (to, from, candidate) in trickled {
            let node = if to == 0 {
                &mut gateway
            } else {
                &mut clients[to - 1]
            };
            node.add_remote_candidate(from, &candidate, now);
        }
        let ready = (1..=CLIENTS).all(|n| clients[n - 1].path(0).is_some());
        if ready && !sent {
            sent = true;
            for n in 1..=CLIENTS {
                let packet = ip_packet(n as u8);
                if let Some((destination, len)) =
                    clients[n - 1].encapsulate(0, &packet, now, &mut buffer)
                {
                    net.send(n, destination, buffer[..len].to_vec());
                }
            }
        }
        if (1..=CLIENTS).all(|n| !heard[n].is_empty()) {
            break;
        }
        let next = std::iter::once(gateway.poll_timeout())
            .chain(clients.iter_mut().map(|c| c.poll_timeout()))
            .flatten()
            .chain(net.next_arrival())
            .min();
        net.advance(next);
    }
    for n in 1..=CLIENTS {
        assert_eq!(
            heard[n],
            [n as u8],
            "client {n}'s packet came out of its own tunnel; heard {heard:?}"
        );
    }
    assert_eq!(gateway.errors().get("handshake_from_unknown_key"), 0);
    assert_eq!(gateway.errors().get("unknown_receiver_index"), 0);
}

/// WireGuard's DoS defence on the one socket: a forged handshake is refused
/// by its mac1 before any X25519, and past the rate a replayed valid one
/// gets a cookie reply instead of a Diffie-Hellman; the real peer's session
/// is untouched.
#[test]
fn forged_and_replayed_handshakes_cost_a_hash_then_a_cookie() {
    let mut sim = Sim::new(Nat::PortRestricted, Nat::Open);
    wait_for_path(&mut sim, false, Duration::from_secs(20)).expect("a direct path");
    sim.ping(0, 1).expect("the session is up");
    let now = sim.net.now;
    let attacker: std::net::SocketAddr = "198.18.9.9:4444".parse().unwrap();
    let mut out = vec![0u8; 2048];
    // Random bytes shaped like an initiation: refused at mac1.
    for seed in 0..200u32 {
        let mut forged = vec![0u8; 148];
        forged[0] = 1;
        for (i, byte) in forged.iter_mut().enumerate().skip(4) {
            *byte = (seed.wrapping_mul(2654435761).wrapping_add(i as u32) >> 7) as u8;
        }
        assert_eq!(
            sim.nodes[1].decapsulate(attacker, &forged, now, &mut out),
            None
        );
    }
    assert_eq!(sim.nodes[1].errors().get("wireguard_bad_mac"), 200);
    assert_eq!(
        sim.nodes[1].errors().get("handshake_not_for_us"),
        0,
        "no X25519 spent"
    );
    // A valid initiation (the attacker knows the gateway's public key),
    // replayed faster than the limit: cookies.
    let mut attacker_peer =
        postern_tunnel::wireguard::WireguardPeer::new([9; 32], public_key([2u8; 32]), [0; 32], 7);
    let mut initiation = vec![0u8; 256];
    let postern_tunnel::wireguard::Action::Network(n) =
        attacker_peer.probe(now, &mut initiation).unwrap()
    else {
        panic!("an initiation")
    };
    while sim.nodes[1].poll_transmit().is_some() {}
    for _ in 0..300 {
        sim.nodes[1].decapsulate(attacker, &initiation[..n], now, &mut out);
    }
    let cookies = std::iter::from_fn(|| sim.nodes[1].poll_transmit())
        .filter(|t| t.destination == attacker && t.payload.len() == 64 && t.payload[0] == 3)
        .count();
    assert!(cookies >= 150, "cookie replies past the rate: {cookies}");
    assert_eq!(
        sim.nodes[1].errors().get("handshake_cookie_sent"),
        cookies as u64
    );
    // The real client still gets through.
    sim.ping(0, 2).expect("the session survives the flood");
}

/// A sans-IO core must never ask to be woken in the past: the held checks
/// of the controlling side (waiting for the peer's candidates, then its
/// first check) report their deadline once, not again and again.
#[test]
fn holding_checks_never_asks_for_a_deadline_already_past() {
    let net = Net::new(&[Nat::PortRestricted, Nat::PortRestricted]);
    let mut now = net.now;
    let mut node = Node::new(&[Net::inside(0)], [1u8; 32], true, 11);
    node.add_peer(
        Uuid::from_u128(2),
        PeerConfig {
            public_key: public_key([2u8; 32]),
            preshared_key: [7; 32],
            local_ice: ice("client"),
            remote_ice: ice("gateway"),
        },
        now,
    );
    for _ in 0..200 {
        node.handle_timeout(now);
        while node.poll_transmit().is_some() {}
        while node.poll_event().is_some() {}
        let next = node.poll_timeout().expect("a peer has timers");
        assert!(next > now, "woken for {next:?} at {now:?}: a busy loop");
        now = next;
    }
}

/// The client's path's remote end (the gateway's address as the client
/// sends to it) and whether it is relayed.
fn client_path(sim: &Sim) -> Option<(std::net::SocketAddr, bool)> {
    sim.nodes[0]
        .path(sim.ids[1])
        .map(|(_, remote, relayed)| (remote, relayed))
}

/// Issue 20: both sites dual-stack (IPv4 behind NAT, IPv6 behind the
/// routers' stateful firewalls): the direct IPv6 pair wins over the
/// direct IPv4 one (ICE ranks IPv6 host candidates higher, and no NAT
/// stands in its way).
#[test]
fn a_dual_stack_pair_prefers_the_direct_ipv6_path() {
    let mut net = Net::new(&[Nat::PortRestricted, Nat::PortRestricted]);
    net.give_ipv6(0, false);
    net.give_ipv6(1, false);
    let mut sim = Sim::with_families(
        net,
        [
            vec![Net::inside(0), Net::inside6(0)],
            vec![Net::inside(1), Net::inside6(1)],
        ],
    );
    assert!(
        sim.run_until(Duration::from_secs(10), |s| client_path(s)
            .is_some_and(|(remote, relayed)| remote.is_ipv6() && !relayed)),
        "no direct IPv6 path: {:?}",
        client_path(&sim)
    );
    assert_eq!(client_path(&sim).map(|(r, _)| r), Some(Net::inside6(1)));
    sim.ping(0, 1).expect("client -> gateway packet");
    sim.ping(1, 2).expect("gateway -> client packet");
}

/// An IPv6-only site: the gateway has no IPv4 at all, the client is
/// dual-stack. They meet directly over IPv6.
#[test]
fn an_ipv6_only_gateway_is_reached_directly_from_a_dual_stack_client() {
    let mut net = Net::new(&[Nat::PortRestricted, Nat::PortRestricted]);
    net.give_ipv6(0, false);
    net.give_ipv6(1, true);
    let mut sim = Sim::with_families(
        net,
        [vec![Net::inside(0), Net::inside6(0)], vec![Net::inside6(1)]],
    );
    assert!(
        sim.run_until(Duration::from_secs(10), direct),
        "no direct path: {:?}",
        client_path(&sim)
    );
    assert_eq!(client_path(&sim).map(|(r, _)| r), Some(Net::inside6(1)));
    sim.ping(0, 1).expect("client -> gateway packet");
    sim.ping(1, 2).expect("gateway -> client packet");
}

/// The same IPv6-only gateway where nothing direct gets through: the
/// relay carries it over IPv6 (allocations made over IPv6 ask for an IPv6
/// relayed address; without that the relay gives IPv4 ones, useless to
/// an IPv6-only gateway, and this fails).
#[test]
fn an_ipv6_only_gateway_is_reached_through_the_relay_over_ipv6() {
    let mut net = Net::new(&[Nat::PortRestricted, Nat::PortRestricted]);
    net.give_ipv6(0, false);
    net.give_ipv6(1, true);
    net.direct_blocked = true;
    let mut sim = Sim::with_families(
        net,
        [vec![Net::inside(0), Net::inside6(0)], vec![Net::inside6(1)]],
    );
    assert!(
        sim.run_until(Duration::from_secs(10), |s| s.connected[0].is_some()),
        "no path at all"
    );
    let (remote, relayed) = client_path(&sim).unwrap();
    assert!(relayed && remote.is_ipv6(), "{remote} relayed={relayed}");
    sim.ping(0, 1).expect("client -> gateway packet");
    sim.ping(1, 2).expect("gateway -> client packet");
}

/// Issue 20: a clash that happened anyway (the gateway learnt the client's
/// candidates 3 s late, past the client's hold, so the client's checks
/// reached the office router first and left a conntrack entry there) is
/// recovered: the path goes direct within a few re-probes.
#[test]
fn a_path_a_clash_spoiled_goes_direct_later() {
    let mut sim = Sim::new(Nat::PortRestrictedOpenWan, Nat::PortRestrictedOpenWan);
    sim.portal_delay[1] = Duration::from_secs(3);
    let started = sim.net.now;
    assert!(sim.run_until(Duration::from_secs(10), |s| s.connected[0].is_some()));
    assert_eq!(
        sim.connected[0].map(|(relayed, _)| relayed),
        Some(true),
        "the clash spoiled the first path"
    );
    // Traffic both ways all along, as a tunnel in use has.
    let mut direct_at = None;
    for second in 0..300 {
        sim.ping(0, (second % 250) as u8)
            .expect("client -> gateway");
        sim.run_until(Duration::from_millis(900), |_| false);
        if direct(&sim) {
            direct_at = Some(sim.net.now - started);
            break;
        }
    }
    let direct_at = direct_at.expect("still relayed after 5 minutes");
    println!("direct after {direct_at:?} of simulated time");
}
