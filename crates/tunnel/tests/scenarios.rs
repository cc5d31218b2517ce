#![allow(clippy::unwrap_used)] // a test file: unwrap is the assertion
//! End-to-end scenarios of the data plane on the simulated network: a client
//! (`ClientState` + `Node`), two gateways of one site (`GatewayState` +
//! `Node`), a relay and a stub portal, all in simulated time.

mod support;

use std::collections::HashSet;
use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

use postern_model::filter::{IPPROTO_ICMP, IPPROTO_TCP};
use postern_model::protocol::{IceCredentials, ResourceDescription};
use postern_model::{Filter, PortRange, Protocol, ResourceType};
use postern_tunnel::client::{ClientConfig, ClientEvent, ClientState, Verdict};
use postern_tunnel::gateway::{ClientAddresses, GatewayDrop, GatewayState, GatewayVerdict};
use postern_tunnel::node::{CONNECT_TIMEOUT, Node, NodeEvent, PeerConfig};
use postern_tunnel::packet::Packet;
use postern_tunnel::wireguard::public_key;
use support::net::{Nat, Net};
use uuid::Uuid;

const CLIENT: usize = 0;
const CLIENT_V4: Ipv4Addr = Ipv4Addr::new(100, 64, 0, 2);
/// The portal answers after this long.
const PORTAL_DELAY: Duration = Duration::from_millis(20);

fn resource() -> ResourceDescription {
    resource_on(80)
}

/// The resource with its filter opening one TCP port.
fn resource_on(port: u16) -> ResourceDescription {
    ResourceDescription {
        id: Uuid::from_u128(100),
        name: "web".into(),
        kind: ResourceType::Cidr,
        address: Some("10.0.0.0/24".into()),
        address_description: None,
        filters: vec![Filter {
            protocol: Protocol::Tcp,
            ports: Some(PortRange {
                start: port,
                end: port,
            }),
        }],
        site_id: Uuid::from_u128(200),
    }
}

fn tcp(source: Ipv4Addr, port: u16, tag: u8) -> Vec<u8> {
    let mut packet = vec![0u8; 44];
    packet[0] = 0x45;
    packet[2..4].copy_from_slice(&44u16.to_be_bytes());
    packet[8] = 64;
    packet[9] = IPPROTO_TCP;
    packet[12..16].copy_from_slice(&source.octets());
    packet[16..20].copy_from_slice(&[10, 0, 0, 5]);
    packet[20..22].copy_from_slice(&40000u16.to_be_bytes());
    packet[22..24].copy_from_slice(&port.to_be_bytes());
    packet[43] = tag;
    packet
}

/// The same packet coming back from the resource.
fn reply_to(packet: &[u8]) -> Vec<u8> {
    let mut reply = packet.to_vec();
    reply[12..16].copy_from_slice(&packet[16..20]);
    reply[16..20].copy_from_slice(&packet[12..16]);
    reply
}

fn ice(tag: String) -> IceCredentials {
    IceCredentials {
        username_fragment: format!("{}x", &tag[..4.min(tag.len())]),
        password: format!("{tag}-password-0123456789abcdef"),
    }
}

struct World {
    net: Net,
    nodes: Vec<Node>,
    ids: Vec<Uuid>,
    secrets: Vec<[u8; 32]>,
    client: ClientState,
    gateways: Vec<GatewayState>,
    /// What the resource saw, by gateway host: (when, packet).
    forwarded: Vec<Vec<(Instant, Vec<u8>)>>,
    /// Replies that reached the client's apps: (when, packet).
    at_app: Vec<(Instant, Vec<u8>)>,
    /// Drops and ICMP replies at the gateways.
    gateway_drops: Vec<GatewayDrop>,
    /// Access requests the stub portal answers after PORTAL_DELAY.
    portal_queue: Vec<(Instant, Uuid, Vec<Uuid>)>,
    /// Gateways the portal sees online.
    online: Vec<bool>,
    peered: HashSet<(usize, usize)>,
    /// Resources the policy allows.
    allowed: bool,
    /// The port the resource's filter opens now.
    port: u16,
}

impl World {
    fn new(nats: &[Nat]) -> World {
        let net = Net::new(nats);
        let now = net.now;
        let hosts = nats.len();
        let ids: Vec<Uuid> = (0..hosts).map(|n| Uuid::from_u128(n as u128 + 1)).collect();
        let secrets: Vec<[u8; 32]> = (0..hosts).map(|n| [n as u8 + 1; 32]).collect();
        let mut nodes: Vec<Node> = (0..hosts)
            .map(|n| Node::new(Net::inside(n), secrets[n], n == CLIENT, n as u64 + 7))
            .collect();
        for (n, node) in nodes.iter_mut().enumerate() {
            node.add_relay(Net::relay_config(ids[n]), now);
        }
        let mut client = ClientState::new(ClientConfig::default());
        client.set_resources(vec![resource()]);
        World {
            net,
            nodes,
            ids,
            secrets,
            client,
            gateways: (1..hosts).map(|_| GatewayState::new()).collect(),
            forwarded: vec![Vec::new(); hosts],
            at_app: Vec::new(),
            gateway_drops: Vec::new(),
            portal_queue: Vec::new(),
            online: vec![true; hosts],
            peered: HashSet::new(),
            allowed: true,
            port: 80,
        }
    }

    /// The stub portal: policy, gateway selection (connected first), pair
    /// secrets, and peering both nodes.
    fn portal_answers(&mut self, resource_id: Uuid, connected: &[Uuid]) {
        let now = self.net.now;
        if !self.allowed {
            self.client.access_denied(
                resource_id,
                postern_model::protocol::DenyReason::Forbidden,
                vec![],
                now,
            );
            return;
        }
        let alive = |h: &usize| self.online[*h];
        let chosen = (1..self.ids.len())
            .filter(alive)
            .find(|h| connected.contains(&self.ids[*h]))
            .or_else(|| (1..self.ids.len()).find(alive));
        let Some(gateway) = chosen else {
            self.client.access_denied(
                resource_id,
                postern_model::protocol::DenyReason::Offline,
                vec![],
                now,
            );
            return;
        };
        if self.peered.insert((CLIENT, gateway)) {
            let (client_ice, gateway_ice) =
                (ice(format!("c{gateway}")), ice(format!("g{gateway}")));
            let psk = [gateway as u8 + 40; 32];
            self.nodes[gateway].add_peer(
                self.ids[CLIENT],
                PeerConfig {
                    public_key: public_key(self.secrets[CLIENT]),
                    preshared_key: psk,
                    local_ice: gateway_ice.clone(),
                    remote_ice: client_ice.clone(),
                },
                now,
            );
            self.nodes[CLIENT].add_peer(
                self.ids[gateway],
                PeerConfig {
                    public_key: public_key(self.secrets[gateway]),
                    preshared_key: psk,
                    local_ice: client_ice,
                    remote_ice: gateway_ice,
                },
                now,
            );
        }
        self.gateways[gateway - 1].authorize(
            ClientAddresses {
                id: self.ids[CLIENT],
                ipv4: CLIENT_V4,
                ipv6: "fd7e:5057:6e00::2".parse().unwrap(),
            },
            resource_on(self.port),
            None,
        );
        self.client
            .access_granted(resource_id, self.ids[gateway], None);
    }

    fn host_of(&self, id: Uuid) -> usize {
        self.ids.iter().position(|i| *i == id).unwrap()
    }

    /// An app on the client sends a packet into the TUN.
    fn app_sends(&mut self, packet: &[u8]) -> Verdict {
        let now = self.net.now;
        let verdict = self.client.handle_packet(packet, now);
        match &verdict {
            Verdict::ToGateway(gateway) => self.nodes[CLIENT].send(*gateway, packet, now),
            Verdict::Reply(reply) => self.at_app.push((now, reply.clone())),
            _ => {}
        }
        self.client_events();
        verdict
    }

    fn client_events(&mut self) {
        let now = self.net.now;
        while let Some(event) = self.client.poll_event() {
            match event {
                ClientEvent::RequestAccess {
                    resource_id,
                    connected_gateway_ids,
                    ..
                } => {
                    self.portal_queue
                        .push((now + PORTAL_DELAY, resource_id, connected_gateway_ids))
                }
                ClientEvent::Deliver { gateway, packet } => {
                    self.nodes[CLIENT].send(gateway, &packet, now)
                }
                ClientEvent::Reply(reply) => self.at_app.push((now, reply)),
            }
        }
    }

    fn step(&mut self) {
        let now = self.net.now;
        let answers: Vec<(Instant, Uuid, Vec<Uuid>)> = self
            .portal_queue
            .iter()
            .filter(|q| q.0 <= now)
            .cloned()
            .collect();
        self.portal_queue.retain(|q| q.0 > now);
        for (_, resource_id, connected) in answers {
            self.portal_answers(resource_id, &connected);
            self.client_events();
        }
        for (host, source, payload) in self.net.due() {
            self.nodes[host].handle_datagram(source, &payload, now);
        }
        for host in 0..self.nodes.len() {
            self.nodes[host].handle_timeout(now);
            while let Some(transmit) = self.nodes[host].poll_transmit() {
                self.net.send(host, transmit.destination, transmit.payload);
            }
            while let Some(event) = self.nodes[host].poll_event() {
                if std::env::var("SIM_DEBUG").is_ok() {
                    println!("{:?} host {host}: {event:?}", now - self.net.started);
                }
                match event {
                    NodeEvent::Candidate { peer, candidate } => {
                        let other = self.host_of(peer);
                        let me = self.ids[host];
                        self.nodes[other].add_remote_candidate(me, &candidate, now);
                    }
                    NodeEvent::Packet { peer, packet } if host == CLIENT => {
                        let _ = peer;
                        self.at_app.push((now, packet));
                    }
                    NodeEvent::Packet { peer, packet } => {
                        match self.gateways[host - 1].handle_from_client(peer, &packet, now) {
                            GatewayVerdict::Forward => {
                                self.forwarded[host].push((now, packet.clone()));
                                // The resource echoes; the gateway routes the
                                // answer back to its client.
                                let reply = reply_to(&packet);
                                let client = self.gateways[host - 1]
                                    .client_for(IpAddr::V4(CLIENT_V4))
                                    .unwrap();
                                self.nodes[host].send(client, &reply, now);
                            }
                            GatewayVerdict::Reply(icmp) => self.nodes[host].send(peer, &icmp, now),
                            GatewayVerdict::Drop(why) => self.gateway_drops.push(why),
                        }
                    }
                    NodeEvent::Dead { peer } if host == CLIENT => {
                        // As the client daemon will: ask again, and let the
                        // next grant set the pair up afresh.
                        self.client.gateway_lost(peer);
                        let gateway = self.host_of(peer);
                        self.nodes[CLIENT].remove_peer(peer);
                        self.nodes[gateway].remove_peer(self.ids[CLIENT]);
                        self.peered.remove(&(CLIENT, gateway));
                    }
                    _ => {}
                }
            }
        }
        self.client.handle_timeout(now);
        self.client_events();
        let next = self
            .nodes
            .iter_mut()
            .filter_map(|n| n.poll_timeout())
            .chain(self.net.next_arrival())
            .chain(self.portal_queue.iter().map(|q| q.0))
            .min();
        self.net.advance(next);
    }

    fn run_for(&mut self, duration: Duration) {
        let end = self.net.now + duration;
        while self.net.now < end {
            self.step();
        }
    }

    fn run_until(&mut self, limit: Duration, done: impl Fn(&World) -> bool) -> bool {
        let end = self.net.now + limit;
        while self.net.now < end {
            self.step();
            if done(self) {
                return true;
            }
        }
        false
    }

    fn forwarded_total(&self) -> usize {
        self.forwarded.iter().map(Vec::len).sum()
    }
}

#[test]
fn the_first_packet_to_a_new_resource_is_delivered_and_answered() {
    let mut world = World::new(&[Nat::PortRestricted, Nat::Open, Nat::Open]);
    let started = world.net.now;
    let syn = tcp(CLIENT_V4, 80, 1);
    assert_eq!(world.app_sends(&syn), Verdict::Buffered);
    assert!(
        world.run_until(Duration::from_secs(10), |w| w.forwarded_total() > 0),
        "never delivered"
    );
    let delivered_at = world
        .forwarded
        .iter()
        .flatten()
        .map(|(at, _)| *at)
        .min()
        .unwrap();
    let first = delivered_at - started;
    assert_eq!(
        world.forwarded.iter().flatten().next().unwrap().1,
        syn,
        "the buffered first packet itself"
    );
    assert!(world.run_until(Duration::from_secs(5), |w| !w.at_app.is_empty()));
    let answered = world.at_app[0].0 - started;
    println!(
        "time to first delivered packet: {first:?}; answered after {answered:?} (10 ms links, portal 20 ms)"
    );
    assert!(first < Duration::from_millis(500), "{first:?}");
    assert_eq!(world.at_app[0].1, reply_to(&syn));
}

#[test]
fn filters_hold_on_both_sides_and_spoofing_is_dropped() {
    let mut world = World::new(&[Nat::PortRestricted, Nat::Open]);
    world.app_sends(&tcp(CLIENT_V4, 80, 1));
    assert!(world.run_until(Duration::from_secs(10), |w| w.forwarded_total() > 0));
    // The client refuses port 22 itself.
    let Verdict::Reply(icmp) = world.app_sends(&tcp(CLIENT_V4, 22, 2)) else {
        panic!("the client pre-check must refuse port 22")
    };
    assert_eq!(Packet::parse(&icmp).unwrap().protocol(), IPPROTO_ICMP);
    // A client that skips its pre-check meets the gateway's filter.
    let gateway = world.ids[1];
    let before = world.forwarded_total();
    world.nodes[CLIENT].send(gateway, &tcp(CLIENT_V4, 22, 3), world.net.now);
    let is_icmp = |p: &Vec<u8>| Packet::parse(p).is_ok_and(|p| p.protocol() == IPPROTO_ICMP);
    let icmp_before = world.at_app.iter().filter(|(_, p)| is_icmp(p)).count();
    assert!(world.run_until(Duration::from_secs(2), |w| {
        w.at_app.iter().filter(|(_, p)| is_icmp(p)).count() > icmp_before
    }));
    let icmp = &world
        .at_app
        .iter()
        .rev()
        .find(|(_, p)| is_icmp(p))
        .unwrap()
        .1;
    assert_eq!(
        (icmp[20], icmp[21]),
        (3, 13),
        "administratively prohibited from the gateway"
    );
    // A forged source never gets through.
    world.nodes[CLIENT].send(
        gateway,
        &tcp(Ipv4Addr::new(100, 64, 0, 99), 80, 4),
        world.net.now,
    );
    world.run_for(Duration::from_millis(200));
    assert_eq!(world.forwarded_total(), before);
    assert!(world.gateway_drops.contains(&GatewayDrop::Spoofed));
}

#[test]
fn revocation_stops_traffic_at_once() {
    let mut world = World::new(&[Nat::PortRestricted, Nat::Open]);
    world.app_sends(&tcp(CLIENT_V4, 80, 1));
    assert!(world.run_until(Duration::from_secs(10), |w| w.forwarded_total() > 0));
    // The portal revokes: the gateway forgets, the client is told.
    world.allowed = false;
    world.gateways[0].revoke(world.ids[CLIENT], resource().id);
    world.client.access_revoked(resource().id);
    let before = world.forwarded_total();
    // Even a client that keeps sending gets nothing through.
    let gateway = world.ids[1];
    for tag in 0..5 {
        world.nodes[CLIENT].send(gateway, &tcp(CLIENT_V4, 80, 10 + tag), world.net.now);
        world.run_for(Duration::from_millis(50));
    }
    assert_eq!(
        world.forwarded_total(),
        before,
        "nothing forwarded after revocation"
    );
    assert!(world.gateway_drops.contains(&GatewayDrop::UnknownClient));
    // And the app asking again is denied.
    world.app_sends(&tcp(CLIENT_V4, 80, 20));
    world.run_for(Duration::from_millis(100));
    assert!(matches!(
        world.client.status()[0].access,
        postern_tunnel::client::Access::Denied { .. }
    ));
}

#[test]
fn a_dead_gateway_hands_over_to_the_second_within_two_seconds() {
    let mut world = World::new(&[Nat::PortRestricted, Nat::Open, Nat::Open]);
    world.app_sends(&tcp(CLIENT_V4, 80, 0));
    assert!(world.run_until(Duration::from_secs(10), |w| w.forwarded_total() > 0));
    let first = (1..3).find(|h| !world.forwarded[*h].is_empty()).unwrap();
    let second = 3 - first;
    // A steady stream: a packet every 50 ms.
    let mut tag = 1u8;
    for _ in 0..20 {
        world.app_sends(&tcp(CLIENT_V4, 80, tag));
        tag = tag.wrapping_add(1);
        world.run_for(Duration::from_millis(50));
    }
    assert!(
        world.forwarded[second].is_empty(),
        "all traffic on the first gateway so far"
    );
    // The first gateway dies; the portal sees it go offline.
    world.net.down[first] = true;
    world.online[first] = false;
    let died = world.net.now;
    let mut moved = None;
    while world.net.now - died < Duration::from_secs(5) {
        world.app_sends(&tcp(CLIENT_V4, 80, tag));
        tag = tag.wrapping_add(1);
        world.run_for(Duration::from_millis(50));
        if let Some((at, _)) = world.forwarded[second].first() {
            moved = Some(*at - died);
            break;
        }
    }
    let moved = moved.expect("traffic never moved to the second gateway");
    println!("traffic moved to the second gateway {moved:?} after the first died");
    assert!(moved <= Duration::from_secs(2), "{moved:?}");
}

mod model {
    //! Random sequences of portal changes, gateway deaths and traffic against
    //! what must (safety) and what must eventually (liveness) be reachable.

    use super::*;
    use proptest::prelude::*;

    #[derive(Clone, Debug)]
    pub enum Action {
        Send(u16),
        Revoke,
        Allow,
        OpenPort(u16),
        Kill(usize),
        Revive(usize),
        Wait(u64),
    }

    fn action() -> impl Strategy<Value = Action> {
        prop_oneof![
            6 => prop_oneof![Just(80u16), Just(22u16), Just(443u16)].prop_map(Action::Send),
            1 => Just(Action::Revoke),
            2 => Just(Action::Allow),
            1 => prop_oneof![Just(80u16), Just(443u16)].prop_map(Action::OpenPort),
            1 => (1usize..3).prop_map(Action::Kill),
            1 => (1usize..3).prop_map(Action::Revive),
            3 => (10u64..1500).prop_map(Action::Wait),
        ]
    }

    impl World {
        pub fn apply(&mut self, action: &Action) {
            let now = self.net.now;
            match action {
                Action::Send(port) => {
                    let packet = tcp(CLIENT_V4, *port, 1);
                    self.app_sends(&packet);
                }
                Action::Revoke => {
                    self.allowed = false;
                    for gateway in &mut self.gateways {
                        gateway.revoke(self.ids[CLIENT], resource().id);
                    }
                    self.client.access_revoked(resource().id);
                }
                Action::Allow => self.allowed = true,
                Action::OpenPort(port) => {
                    self.port = *port;
                    for gateway in &mut self.gateways {
                        gateway.update_resource(resource_on(*port));
                    }
                    self.client.upsert_resource(resource_on(*port));
                }
                Action::Kill(host) => {
                    self.net.down[*host] = true;
                    self.online[*host] = false;
                }
                Action::Revive(host) => {
                    self.net.down[*host] = false;
                    self.online[*host] = true;
                }
                Action::Wait(ms) => {
                    let end = now + Duration::from_millis(*ms);
                    while self.net.now < end {
                        self.step_checked();
                    }
                }
            }
            self.step_checked();
        }

        /// One step, then the safety check on whatever the gateways forwarded.
        fn step_checked(&mut self) {
            let before: Vec<usize> = self.forwarded.iter().map(Vec::len).collect();
            self.step();
            for (host, (forwarded, seen)) in self.forwarded.iter().zip(before).enumerate().skip(1) {
                for (_, packet) in &forwarded[seen..] {
                    let port = u16::from_be_bytes([packet[22], packet[23]]);
                    assert!(self.allowed, "forwarded while revoked");
                    assert_eq!(port, self.port, "forwarded a port the filter closes");
                    assert!(!self.net.down[host], "a dead gateway forwarded");
                }
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]

        #[test]
        fn traffic_matches_the_reference_model(actions in proptest::collection::vec(action(), 1..40)) {
            let mut world = World::new(&[Nat::PortRestricted, Nat::Open, Nat::Symmetric]);
            for action in &actions {
                world.apply(action);
            }
            // Liveness: allowed, a gateway alive, then quiet long enough for
            // a revived gateway's relay allocation to come back (TURN
            // retransmissions back off to 32 s, then a failed allocation is
            // retried) and for any denial to be
            // forgotten: an allowed packet then arrives, at worst after a
            // connection attempt times out and the client asks again.
            world.apply(&Action::Allow);
            world.apply(&Action::Revive(2));
            world.apply(&Action::Wait(80_000));
            let delivered_before = world.forwarded_total();
            let port = world.port;
            let deadline = world.net.now + CONNECT_TIMEOUT + Duration::from_secs(2);
            let mut arrived = false;
            while world.net.now < deadline && !arrived {
                world.apply(&Action::Send(port));
                world.apply(&Action::Wait(100));
                arrived = world.forwarded_total() > delivered_before;
            }
            prop_assert!(arrived, "an allowed packet never arrived after {:?}", actions);
        }
    }
}

#[test]
fn a_client_that_changes_networks_keeps_its_traffic_flowing() {
    let mut world = World::new(&[Nat::PortRestricted, Nat::Open]);
    world.app_sends(&tcp(CLIENT_V4, 80, 1));
    assert!(world.run_until(Duration::from_secs(10), |w| !w.at_app.is_empty()));
    // The laptop moves to another network: a new public address, no NAT
    // state, the old path gone.
    world.net.roam(CLIENT, Ipv4Addr::new(198, 18, 1, 10));
    let moved = world.net.now;
    let answers_before = world.at_app.len();
    let mut resumed = None;
    for tag in 2..100u8 {
        world.app_sends(&tcp(CLIENT_V4, 80, tag));
        world.run_for(Duration::from_millis(50));
        if world.at_app.len() > answers_before {
            resumed = Some(world.at_app[answers_before].0 - moved);
            break;
        }
    }
    let resumed = resumed.expect("traffic never resumed after roaming");
    println!("traffic resumed {resumed:?} after the client changed networks");
    assert!(resumed < Duration::from_secs(2), "{resumed:?}");
}

impl World {
    /// A gateway process restarts: a new WireGuard key, nothing remembered.
    /// The portal sees it reconnect with another key, so it voids the
    /// client's grant there (`access_revoked`) and the client asks again.
    fn restart_gateway(&mut self, host: usize) {
        let now = self.net.now;
        self.secrets[host] = [host as u8 + 100; 32];
        self.nodes[host] = Node::new(
            Net::inside(host),
            self.secrets[host],
            false,
            host as u64 + 70,
        );
        self.nodes[host].add_relay(Net::relay_config(self.ids[host]), now);
        self.gateways[host - 1] = GatewayState::new();
        if self.peered.remove(&(CLIENT, host)) {
            self.nodes[CLIENT].remove_peer(self.ids[host]);
        }
        self.client.gateway_lost(self.ids[host]);
        self.client.access_revoked(resource().id);
    }
}

#[test]
fn a_restarted_gateway_with_a_new_key_serves_again() {
    let mut world = World::new(&[Nat::PortRestricted, Nat::Open]);
    world.app_sends(&tcp(CLIENT_V4, 80, 1));
    assert!(world.run_until(Duration::from_secs(10), |w| !w.at_app.is_empty()));
    world.restart_gateway(1);
    let restarted = world.net.now;
    let answers_before = world.at_app.len();
    let mut resumed = None;
    for tag in 2..100u8 {
        world.app_sends(&tcp(CLIENT_V4, 80, tag));
        world.run_for(Duration::from_millis(50));
        if world.at_app.len() > answers_before {
            resumed = Some(world.at_app[answers_before].0 - restarted);
            break;
        }
    }
    let resumed = resumed.expect("traffic never resumed after the gateway restarted");
    println!("traffic resumed {resumed:?} after the gateway restarted with a new key");
    assert!(resumed < Duration::from_secs(1), "{resumed:?}");
}
