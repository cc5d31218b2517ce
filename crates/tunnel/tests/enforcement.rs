#![allow(clippy::unwrap_used)] // a test file: unwrap is the assertion
//! Enforcement from the attacker's side (SPEC 7.1), with the real roles on
//! the simulated network: a modified client aiming at the gateway host,
//! cloud metadata and other clients; a host behind the gateway reaching
//! for a client; a DNS name that resolves somewhere it must not; a gateway
//! that reconnects to a portal which no longer holds the authorization;
//! and a gateway whose host was taken over, pushing packets at a client.

mod support;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::Duration;

use hickory_proto::rr::{RData, RecordType};
use postern_model::protocol::ResourceDescription;
use postern_model::{ResourceAddress, ResourceId, SiteId};
use postern_tunnel::packet::Packet;
use postern_tunnel::role::Role;
use support::net::Nat;
use support::portal::{CLIENT_ID, CLIENT_V4, gateway_id, gateway_v6};
use support::world::{GATEWAY_HOST, WEB_HOST, World, tcp, web_on};

/// Half of the IPv4 internet, as a CIDR resource (the REST API would
/// refuse it; built directly, it stands for any wide grant such as the
/// internet resource).
fn wide() -> ResourceDescription {
    ResourceDescription {
        id: ResourceId::from_u128(300),
        name: "wide".into(),
        address: ResourceAddress::Cidr("0.0.0.0/1".parse().unwrap()),
        address_description: None,
        filters: vec![],
        site_id: SiteId::from_u128(1),
    }
}

fn exactly(address: &str) -> ResourceDescription {
    ResourceDescription {
        id: ResourceId::from_u128(301),
        name: "metadata".into(),
        address: ResourceAddress::Ip(address.parse().unwrap()),
        address_description: None,
        filters: vec![],
        site_id: SiteId::from_u128(1),
    }
}

fn destination(packet: &[u8]) -> IpAddr {
    Packet::parse(packet).unwrap().destination()
}

/// A world where the client has a flow through gateway 1 already.
fn connected(resources: Vec<ResourceDescription>) -> World {
    let mut world = World::new(&[Nat::PortRestricted, Nat::Open], resources);
    world.app_sends(&tcp(CLIENT_V4, WEB_HOST, 80, 1));
    assert!(world.run_until(Duration::from_secs(10), |w| !w.at_app.is_empty()));
    world
}

#[test]
fn a_client_never_reaches_the_gateway_host_metadata_or_other_clients() {
    let mut world = connected(vec![wide(), web_on(80)]);
    let before = world.forwarded_total();
    let now = world.now();
    let targets: [IpAddr; 6] = [
        IpAddr::V4(GATEWAY_HOST),
        "169.254.169.254".parse().unwrap(),
        "100.64.0.3".parse().unwrap(),
        "127.0.0.1".parse().unwrap(),
        "0.0.0.5".parse().unwrap(),
        "100.96.0.9".parse().unwrap(),
    ];
    for target in targets {
        let IpAddr::V4(target) = target else {
            unreachable!()
        };
        world
            .client
            .send_unchecked(gateway_id(1), &tcp(CLIENT_V4, target, 80, 2), now);
    }
    // The gateway's own IPv6 tunnel address, like its IPv4 one.
    let mut to_v6 = vec![0u8; 60];
    to_v6[0] = 0x60;
    to_v6[4..6].copy_from_slice(&20u16.to_be_bytes());
    to_v6[6] = 6;
    to_v6[7] = 64;
    to_v6[8..24].copy_from_slice(&support::portal::CLIENT_V6.octets());
    to_v6[24..40].copy_from_slice(&gateway_v6(1).octets());
    world.client.send_unchecked(gateway_id(1), &to_v6, now);
    world.run_for(Duration::from_millis(200));
    assert_eq!(
        world.forwarded_total(),
        before,
        "{:?}",
        world.forwarded[1].last()
    );
    assert!(world.gateway(1).dropped().get("refused") >= targets.len() as u64);
    assert!(world.gateway(1).dropped().get("to_gateway") >= 1);
    // An admin who names the metadata address exactly opens it.
    let mut world = connected(vec![wide(), web_on(80), exactly("169.254.169.254")]);
    let now = world.now();
    let metadata = Ipv4Addr::new(169, 254, 169, 254);
    world
        .client
        .send_unchecked(gateway_id(1), &tcp(CLIENT_V4, metadata, 80, 3), now);
    // (Authorized only once the client asked for it: until then refused.)
    world.run_for(Duration::from_millis(100));
    world.app_sends(&tcp(CLIENT_V4, metadata, 80, 4));
    assert!(world.run_until(Duration::from_secs(5), |w| {
        w.forwarded[1]
            .iter()
            .any(|(_, p)| destination(p) == IpAddr::V4(metadata))
    }));
}

#[test]
fn a_host_behind_the_gateway_cannot_open_connections_to_a_client() {
    let mut world = connected(vec![web_on(80)]);
    let answers = world.at_app.len();
    // From the web server the client talks to, from its allowed port, to
    // a port the client never used; and from another host of the site.
    world.site_sends(1, &tcp(WEB_HOST, CLIENT_V4, 22, 9));
    world.site_sends(1, &tcp(Ipv4Addr::new(10, 0, 0, 66), CLIENT_V4, 40000, 9));
    let mut reply = tcp(WEB_HOST, CLIENT_V4, 40000, 9);
    reply[20..22].copy_from_slice(&8080u16.to_be_bytes());
    world.site_sends(1, &reply);
    world.run_for(Duration::from_millis(200));
    assert_eq!(
        world.at_app.len(),
        answers,
        "nothing unsolicited reached the client"
    );
    assert_eq!(world.gateway(1).dropped().get("unsolicited"), 3);
    // An answer to the client's own flow still comes through.
    let mut answer = tcp(WEB_HOST, CLIENT_V4, 40000, 10);
    answer[20..22].copy_from_slice(&80u16.to_be_bytes());
    world.site_sends(1, &answer);
    assert!(world.run_until(Duration::from_secs(1), |w| w.at_app.len() > answers));
}

#[test]
fn a_client_drops_what_a_gateway_pushes_at_it_unasked() {
    let mut world = connected(vec![web_on(80)]);
    let answers = world.at_app.len();
    let now = world.now();
    // The gateway host is taken over: it pushes a SYN into the tunnel.
    world
        .gateway(1)
        .send_unchecked(CLIENT_ID, &tcp(WEB_HOST, CLIENT_V4, 22, 7), now);
    world.run_for(Duration::from_millis(200));
    assert_eq!(world.at_app.len(), answers);
    assert_eq!(world.client.dropped().get("unsolicited"), 1);
}

#[test]
fn a_dns_name_resolving_to_forbidden_addresses_maps_nothing() {
    let pattern = "*.apps.corp.test".parse().unwrap();
    let apps = ResourceDescription {
        id: ResourceId::from_u128(200),
        name: "apps".into(),
        address: ResourceAddress::Dns(pattern),
        address_description: None,
        filters: vec![],
        site_id: SiteId::from_u128(1),
    };
    let mut world = World::new(&[Nat::PortRestricted, Nat::Open], vec![apps]);
    let forbidden: Vec<IpAddr> = vec![
        "127.0.0.1".parse().unwrap(),
        "169.254.169.254".parse().unwrap(),
        IpAddr::V4(GATEWAY_HOST),
        "100.64.0.3".parse().unwrap(),
        IpAddr::V6(Ipv6Addr::LOCALHOST),
    ];
    world.site.records.insert(
        "evil.apps.corp.test".into(),
        (forbidden, Duration::from_secs(60)),
    );
    let query = world.app_asks("evil.apps.corp.test", RecordType::A);
    assert!(world.run_until(Duration::from_secs(5), |w| w.answers.contains_key(&query)));
    let proxy = world
        .answer(query)
        .unwrap()
        .answers
        .iter()
        .find_map(|r| match r.data {
            RData::A(a) => Some(a.0),
            _ => None,
        })
        .unwrap();
    for tag in 0..5 {
        world.app_sends(&tcp(CLIENT_V4, proxy, 80, tag));
        world.run_for(Duration::from_millis(300));
    }
    assert_eq!(world.forwarded_total(), 0, "{:?}", world.forwarded[1]);
    assert!(!world.site.lookups.is_empty(), "the gateway did look it up");
}

#[test]
fn a_gateway_drops_what_the_portal_no_longer_lists_when_it_reconnects() {
    let mut world = connected(vec![web_on(80)]);
    // The portal restarted and the policy went while it was down: the
    // gateway reconnects and its init lists nothing.
    world.portal.grants.clear();
    let now = world.now();
    world.portal.gateway_init(1, now);
    world.run_for(Duration::from_millis(100));
    let before = world.forwarded_total();
    // A client that keeps sending gets nothing through.
    for tag in 0..5 {
        let now = world.now();
        world
            .client
            .send_unchecked(gateway_id(1), &tcp(CLIENT_V4, WEB_HOST, 80, 20 + tag), now);
        world.run_for(Duration::from_millis(50));
    }
    assert_eq!(world.forwarded_total(), before);
    assert!(!world.gateway(1).is_authorized(CLIENT_ID, web_on(80).id));
    assert!(
        !world.gateway(1).node().has_peer(CLIENT_ID),
        "its tunnel is gone too"
    );
}

/// The portal hands gateway 1 the client's candidates at `addresses`
/// ("ip port"), and the world runs for 3 s.
fn gateway_gets_candidates(world: &mut World, addresses: &[&str]) {
    let candidates = addresses
        .iter()
        .enumerate()
        .map(|(n, at)| format!("candidate:{n} 1 udp 2130706431 {at} typ host"))
        .collect();
    let now = world.now();
    world.gateway(1).handle_portal(
        postern_model::protocol::PortalToGateway::IceCandidates {
            peer_id: CLIENT_ID,
            candidates,
        },
        now,
        jiff::Timestamp::now(),
    );
    world.run_for(Duration::from_secs(3));
}

#[test]
fn candidates_on_loopback_or_metadata_addresses_are_never_probed() {
    let mut world = connected(vec![web_on(80)]);
    let forbidden = [
        "127.0.0.1 22",
        "169.254.169.254 80",
        "224.0.0.251 5353",
        "::1 22",
    ];
    gateway_gets_candidates(&mut world, &forbidden);
    let probed: Vec<_> = world
        .net
        .destinations
        .iter()
        .filter(|(host, to)| {
            *host == 1 && (to.ip().is_loopback() || to.ip().is_multicast() || to.port() == 80)
        })
        .collect();
    assert!(probed.is_empty(), "{probed:?}");
    assert_eq!(world.gateway(1).errors().get("candidate_refused"), 4);
    // A candidate on an ordinary private address is taken.
    gateway_gets_candidates(&mut world, &["192.168.7.7 40000"]);
    assert!(
        world
            .net
            .destinations
            .iter()
            .any(|(host, to)| *host == 1 && to.to_string() == "192.168.7.7:40000")
    );
}

/// An IPv6 UDP packet from the client to `to`, with a routing header
/// (type 4, segment routing) naming `via` when `via` is given.
fn udp_v6(to: Ipv6Addr, via: Option<Ipv6Addr>) -> Vec<u8> {
    let mut extension = Vec::new();
    let mut next = 17u8;
    if let Some(via) = via {
        // Next header, length in 8-octet units past the first 8, type 4,
        // segments left 1, last entry 0, flags, tag; then one segment.
        extension.extend_from_slice(&[17, 2, 4, 1, 0, 0, 0, 0]);
        extension.extend_from_slice(&via.octets());
        next = 43;
    }
    let udp = [
        0x9c, 0x40, 0x00, 0x35, 0x00, 0x0c, 0x00, 0x00, b'p', b'i', b'n', b'g',
    ];
    let mut packet = vec![0x60, 0, 0, 0];
    let length = (extension.len() + udp.len()) as u16;
    packet.extend_from_slice(&length.to_be_bytes());
    packet.extend_from_slice(&[next, 64]);
    packet.extend_from_slice(&support::portal::CLIENT_V6.octets());
    packet.extend_from_slice(&to.octets());
    packet.extend_from_slice(&extension);
    packet.extend_from_slice(&udp);
    packet
}

#[test]
fn an_ipv6_packet_with_a_routing_header_is_not_forwarded() {
    let documentation = ResourceDescription {
        id: ResourceId::from_u128(302),
        name: "v6 office".into(),
        address: ResourceAddress::Cidr("2001:db8::/32".parse().unwrap()),
        address_description: None,
        filters: vec![],
        site_id: SiteId::from_u128(1),
    };
    let mut world = connected(vec![web_on(80), documentation]);
    let server: Ipv6Addr = "2001:db8::80".parse().unwrap();
    world.app_sends(&udp_v6(server, None));
    assert!(world.run_until(Duration::from_secs(5), |w| {
        w.forwarded[1]
            .iter()
            .any(|(_, p)| destination(p) == IpAddr::V6(server))
    }));
    let before = world.forwarded_total();
    // Allowed destination, but a segment onward to the gateway's host.
    let now = world.now();
    let onward: Ipv6Addr = "fe80::1".parse().unwrap();
    world
        .client
        .send_unchecked(gateway_id(1), &udp_v6(server, Some(onward)), now);
    world.run_for(Duration::from_millis(200));
    assert_eq!(world.forwarded_total(), before);
    assert_eq!(world.gateway(1).dropped().get("routing_header"), 1);
}

fn cidr(id: u128, prefix: &str) -> ResourceDescription {
    ResourceDescription {
        id: ResourceId::from_u128(id),
        name: prefix.into(),
        address: ResourceAddress::Cidr(prefix.parse().unwrap()),
        address_description: None,
        filters: vec![],
        site_id: SiteId::from_u128(1),
    }
}

/// Defence in depth against whoever speaks for the portal: resources
/// whose routes would take the laptop over (the two halves of the
/// internet, a /7, 2000::/3, a prefix over the relay the client reaches
/// the gateways through) are not routed; the site's own prefix is.
#[test]
fn a_client_does_not_route_prefixes_that_would_take_it_over() {
    let world = World::new(
        &[Nat::PortRestricted, Nat::Open],
        vec![
            web_on(80),
            cidr(310, "0.0.0.0/1"),
            cidr(311, "128.0.0.0/1"),
            cidr(312, "10.0.0.0/7"),
            cidr(313, "198.18.0.0/16"),
            cidr(314, "2000::/3"),
        ],
    );
    let routes = world
        .client_effects
        .iter()
        .rev()
        .find_map(|effect| match effect {
            postern_tunnel::effect::Effect::Routes { routes, .. } => Some(routes.clone()),
            _ => None,
        })
        .expect("the client set its routes");
    let routes: Vec<String> = routes.iter().map(|r| r.to_string()).collect();
    assert_eq!(routes, vec!["10.0.0.0/24"]);
    // The two halves never get this far: they cover Postern's own and
    // link-local ranges, which the resource address rules refuse as the
    // client reads the portal's message. The other three are not routed.
    assert_eq!(world.client.dropped().get("route_refused"), 3);
}
