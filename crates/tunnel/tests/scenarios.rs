#![allow(clippy::unwrap_used)] // a test file: unwrap is the assertion
//! End-to-end scenarios with the real role machines (`ClientTunnel`,
//! `GatewayTunnel`) on the simulated network: a client, gateways of one
//! site, a relay, a stub portal speaking the control protocol as JSON, and
//! the site behind the gateways (a resource host that echoes, a DNS
//! server), all in simulated time.

mod support;

use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

use hickory_proto::rr::{RData, RecordType};
use postern_model::dns::DnsPattern;
use postern_model::filter::IPPROTO_ICMP;
use postern_model::protocol::ResourceDescription;
use postern_model::{ResourceAddress, ResourceId};
use postern_tunnel::effect::{Effect, Input};
use postern_tunnel::packet::Packet;
use postern_tunnel::role::Role;
use support::net::{Nat, Net};
use support::portal::{CLIENT_V4, gateway_id};
use support::world::{WEB_HOST, World, tcp, web_on};

const APPS: ResourceId = ResourceId::from_u128(200);

/// A DNS resource: every name under apps.corp.test, TCP port 80.
fn apps() -> ResourceDescription {
    let pattern: DnsPattern = "*.apps.corp.test".parse().unwrap();
    ResourceDescription {
        id: APPS,
        name: "apps".into(),
        address: ResourceAddress::Dns(pattern),
        filters: web_on(80).filters,
        ..web_on(80)
    }
}

fn to_web(port: u16, tag: u8) -> Vec<u8> {
    tcp(CLIENT_V4, WEB_HOST, port, tag)
}

fn is_icmp(packet: &[u8]) -> bool {
    Packet::parse(packet).is_ok_and(|p| p.protocol() == IPPROTO_ICMP)
}

fn tag_of(packet: &[u8]) -> u8 {
    packet[43]
}

fn destination(packet: &[u8]) -> IpAddr {
    Packet::parse(packet).unwrap().destination()
}

#[test]
fn the_first_packet_to_a_new_resource_is_delivered_and_answered() {
    let mut world = World::new(
        &[Nat::PortRestricted, Nat::Open, Nat::Open],
        vec![web_on(80)],
    );
    let started = world.now();
    let syn = to_web(80, 1);
    world.app_sends(&syn);
    assert!(
        world.run_until(Duration::from_secs(10), |w| w.forwarded_total() > 0),
        "never delivered"
    );
    let (delivered_at, first) = world.forwarded.iter().flatten().next().unwrap().clone();
    assert_eq!(first, syn, "the buffered first packet itself");
    assert!(world.run_until(Duration::from_secs(5), |w| !w.at_app.is_empty()));
    let answered = world.at_app[0].0 - started;
    let first_delivered = delivered_at - started;
    println!(
        "time to first delivered packet: {first_delivered:?}; answered after {answered:?} (10 ms links, portal 20 ms)"
    );
    assert!(
        first_delivered < Duration::from_millis(500),
        "{first_delivered:?}"
    );
    assert_eq!(tag_of(&world.at_app[0].1), 1);
    assert_eq!(destination(&world.at_app[0].1), IpAddr::V4(CLIENT_V4));
    assert_eq!(world.portal.requests, 1, "one request for one resource");
}

#[test]
fn filters_hold_on_both_sides_and_spoofing_is_dropped() {
    let mut world = World::new(&[Nat::PortRestricted, Nat::Open], vec![web_on(80)]);
    world.app_sends(&to_web(80, 1));
    assert!(world.run_until(Duration::from_secs(10), |w| w.forwarded_total() > 0));
    // The client refuses port 22 itself, with an ICMP error to the app.
    let before = world.at_app.len();
    world.app_sends(&to_web(22, 2));
    let (_, icmp) = world
        .at_app
        .get(before)
        .expect("an immediate refusal")
        .clone();
    assert!(is_icmp(&icmp));
    // A client that skips its pre-check meets the gateway's filter.
    let forwarded = world.forwarded_total();
    let now = world.now();
    world
        .client
        .send_unchecked(gateway_id(1), &to_web(22, 3), now);
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
    let now = world.now();
    world.client.send_unchecked(
        gateway_id(1),
        &tcp(Ipv4Addr::new(100, 64, 0, 99), WEB_HOST, 80, 4),
        now,
    );
    world.run_for(Duration::from_millis(200));
    assert_eq!(world.forwarded_total(), forwarded);
    assert_eq!(world.gateway(1).dropped().get("spoofed"), 1);
    assert!(world.gateway(1).dropped().get("refused") >= 1);
}

#[test]
fn revocation_stops_traffic_at_once() {
    let mut world = World::new(&[Nat::PortRestricted, Nat::Open], vec![web_on(80)]);
    world.app_sends(&to_web(80, 1));
    assert!(world.run_until(Duration::from_secs(10), |w| w.forwarded_total() > 0));
    // The policy goes: the gateway forgets, the client is told.
    let now = world.now();
    world.portal.revoke_all(now);
    world.run_for(Duration::from_millis(50));
    // The client forgot the app's flow and told the shell, which closes
    // its connection (a userspace stack does at once).
    let ended: Vec<_> = world
        .client_effects
        .iter()
        .filter_map(|e| match e {
            Effect::FlowsEnded(flows) => Some(flows.clone()),
            _ => None,
        })
        .flatten()
        .collect();
    assert_eq!(ended.len(), 1, "{ended:?}");
    assert_eq!(ended[0].remote, (IpAddr::V4(WEB_HOST), 80));
    assert_eq!(ended[0].protocol, 6);
    let before = world.forwarded_total();
    // Even a client that keeps sending gets nothing through.
    for tag in 0..5 {
        let now = world.now();
        world
            .client
            .send_unchecked(gateway_id(1), &to_web(80, 10 + tag), now);
        world.run_for(Duration::from_millis(50));
    }
    assert_eq!(
        world.forwarded_total(),
        before,
        "nothing forwarded after revocation"
    );
    // The gateway dropped the client's tunnel with its last authorization:
    // what it keeps sending belongs to no session there.
    assert!(world.gateway(1).errors().get("unknown_receiver_index") >= 1);
    assert!(!world.gateway(1).node().has_peer(support::portal::CLIENT_ID));
    // And the app asking again is denied.
    world.app_sends(&to_web(80, 20));
    world.run_for(Duration::from_millis(100));
    let status = world.client.status(world.now());
    assert_eq!(status.resources[0].access, "denied");
}

/// The policy goes again while a fresh request's `authorize` is on its way
/// to the gateway: the gateway applies it on arrival, so the portal takes
/// it back as well (as the real portal's `refuse` does) and the client is
/// refused. Packets the client queued for that gateway while it was
/// granted, and whatever a modified client pushes, go nowhere.
#[test]
fn a_revocation_while_the_gateway_authorizes_takes_the_authorization_back() {
    let mut world = World::new(&[Nat::PortRestricted, Nat::Open], vec![web_on(80)]);
    world.app_sends(&to_web(80, 1));
    assert!(world.run_until(Duration::from_secs(10), |w| w.forwarded_total() > 0));
    let now = world.now();
    world.portal.revoke_all(now);
    world.run_for(Duration::from_millis(100));
    // Allowed again: the next packet asks, the portal sends `authorize`...
    world.portal.allowed = true;
    world.app_sends(&to_web(80, 2));
    assert_eq!(world.portal.requests, 2);
    // ... and the policy goes before the gateway has it.
    let now = world.now();
    world.portal.revoke_all(now);
    world.run_for(Duration::from_secs(3));
    assert!(
        !world
            .gateway(1)
            .is_authorized(support::portal::CLIENT_ID, support::world::WEB),
        "an authorization the portal revoked while it was on its way"
    );
    let before = world.forwarded_total();
    for tag in 0..5 {
        let now = world.now();
        world
            .client
            .send_unchecked(gateway_id(1), &to_web(80, 10 + tag), now);
        world.run_for(Duration::from_secs(1));
    }
    assert_eq!(
        world.forwarded_total(),
        before,
        "forwarded after revocation"
    );
    let status = world.client.status(world.now());
    assert_eq!(status.resources[0].access, "denied");
}

/// Sends a packet every `every` until one reaches the site through gateway
/// `host`; how long after `since` that took.
fn until_through(world: &mut World, host: usize, every: Duration) -> Option<Duration> {
    let since = world.now();
    let mut tag = 100u8;
    while world.now() - since < Duration::from_secs(5) {
        world.app_sends(&to_web(80, tag));
        tag = tag.wrapping_add(1);
        world.run_for(every);
        if let Some((at, _)) = world.forwarded[host].first() {
            return Some(*at - since);
        }
    }
    None
}

#[test]
fn a_dead_gateway_hands_over_to_the_second_within_two_seconds() {
    let mut world = World::new(
        &[Nat::PortRestricted, Nat::Open, Nat::Open],
        vec![web_on(80)],
    );
    world.app_sends(&to_web(80, 0));
    assert!(world.run_until(Duration::from_secs(10), |w| w.forwarded_total() > 0));
    let first = world.granted_gateway().unwrap();
    let second = 3 - first;
    // A steady stream: a packet every 50 ms.
    let mut tag = 1u8;
    for _ in 0..20 {
        world.app_sends(&to_web(80, tag));
        tag = tag.wrapping_add(1);
        world.run_for(Duration::from_millis(50));
    }
    assert!(
        world.forwarded[second].is_empty(),
        "all traffic on the first gateway so far"
    );
    world.kill_gateway(first);
    let moved = until_through(&mut world, second, Duration::from_millis(50))
        .expect("traffic never moved to the second gateway");
    println!("traffic moved to the second gateway {moved:?} after the first died");
    assert!(moved <= Duration::from_secs(2), "{moved:?}");
}

#[test]
fn a_gateway_that_stops_sends_its_clients_on_at_once() {
    let mut world = World::new(
        &[Nat::PortRestricted, Nat::Open, Nat::Open],
        vec![web_on(80)],
    );
    world.app_sends(&to_web(80, 0));
    assert!(world.run_until(Duration::from_secs(10), |w| w.forwarded_total() > 0));
    let first = world.granted_gateway().unwrap();
    let second = 3 - first;
    // SIGTERM: the gateway says goodbye through the tunnel, then is gone.
    let now = world.now();
    world.gateway(first).stop(now);
    world.run_for(Duration::from_millis(1));
    world.kill_gateway(first);
    let moved = until_through(&mut world, second, Duration::from_millis(20))
        .expect("traffic never moved to the second gateway");
    println!("traffic moved {moved:?} after the first gateway said goodbye");
    // Without the goodbye the client would wait out the liveness timeout
    // (1.25 s) before asking again.
    assert!(moved < Duration::from_millis(600), "{moved:?}");
}

#[test]
fn a_client_that_changes_networks_keeps_its_traffic_flowing() {
    let mut world = World::new(&[Nat::PortRestricted, Nat::Open], vec![web_on(80)]);
    world.app_sends(&to_web(80, 1));
    assert!(world.run_until(Duration::from_secs(10), |w| !w.at_app.is_empty()));
    // The laptop moves to another network: a new public address, no NAT
    // state, the old path gone.
    world.net.roam(0, Ipv4Addr::new(198, 18, 1, 10));
    let moved = world.now();
    let answers_before = world.at_app.len();
    let mut resumed = None;
    for tag in 2..100u8 {
        world.app_sends(&to_web(80, tag));
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

/// Traffic after the client moved at `moved`: how long until the first
/// answer came back, sending every 50 ms.
fn resumed_after_move(world: &mut World, moved: Instant) -> Option<Duration> {
    let answers_before = world.at_app.len();
    for tag in 2..100u8 {
        world.app_sends(&to_web(80, tag));
        world.run_for(Duration::from_millis(50));
        if world.at_app.len() > answers_before {
            return Some(world.at_app[answers_before].0 - moved);
        }
    }
    None
}

/// The laptop moves from one NAT to another and both ends are behind
/// port-restricted NATs (home routers): the gateway's NAT lets nothing in
/// from the client's new public address until the gateway itself sends
/// there, so the client must gather again (new allocation, new
/// server-reflexive address) and the gateway must hear the new candidates
/// through the portal and check toward them. Without the restart the path
/// stays dead until the gateway's liveness gives up and access is asked
/// again, and the stale relay allocation helps nobody.
#[test]
fn a_client_that_moves_between_restricted_nats_resumes_within_two_seconds() {
    let mut world = World::new(
        &[Nat::PortRestricted, Nat::PortRestricted],
        vec![web_on(80)],
    );
    world.app_sends(&to_web(80, 1));
    assert!(world.run_until(Duration::from_secs(10), |w| !w.at_app.is_empty()));
    let direct = |w: &World| {
        w.client
            .node()
            .path(World::gateway_id(1))
            .is_some_and(|(_, _, relayed)| !relayed)
    };
    assert!(
        world.run_until(Duration::from_secs(5), direct),
        "direct at first"
    );

    world.net.roam(0, Ipv4Addr::new(198, 18, 1, 10));
    let moved = world.now();
    // The shell saw the move (netlink or its periodic check).
    world.client.handle_input(
        Input::NetworkChanged {
            locals: vec![Net::inside(0)],
            woke: false,
        },
        moved,
    );
    let resumed = resumed_after_move(&mut world, moved).expect("traffic never resumed");
    println!("traffic resumed {resumed:?} after the move between restricted NATs");
    assert!(resumed < Duration::from_secs(2), "{resumed:?}");
    assert!(
        world.run_until(Duration::from_secs(3), direct),
        "direct again on the new network: {:?}",
        world.client.node().path(World::gateway_id(1))
    );
}

/// The new network is a symmetric NAT (a phone's hotspot, a carrier):
/// no direct path, so the new allocation carries the traffic.
#[test]
fn a_client_that_moves_behind_a_symmetric_nat_resumes_through_the_relay() {
    let mut world = World::new(
        &[Nat::PortRestricted, Nat::PortRestricted],
        vec![web_on(80)],
    );
    world.app_sends(&to_web(80, 1));
    assert!(world.run_until(Duration::from_secs(10), |w| !w.at_app.is_empty()));
    world
        .net
        .roam_to(0, Ipv4Addr::new(198, 18, 2, 10), Nat::Symmetric);
    let moved = world.now();
    world.client.handle_input(
        Input::NetworkChanged {
            locals: vec![Net::inside(0)],
            woke: false,
        },
        moved,
    );
    let resumed = resumed_after_move(&mut world, moved).expect("traffic never resumed");
    println!("traffic resumed {resumed:?} after the move behind a symmetric NAT");
    assert!(resumed < Duration::from_secs(2), "{resumed:?}");
    let path = world.client.node().path(World::gateway_id(1)).unwrap();
    assert!(path.2, "relayed from behind the symmetric NAT: {path:?}");
}

#[test]
fn a_restarted_gateway_with_a_new_key_serves_again() {
    let mut world = World::new(&[Nat::PortRestricted, Nat::Open], vec![web_on(80)]);
    world.app_sends(&to_web(80, 1));
    assert!(world.run_until(Duration::from_secs(10), |w| !w.at_app.is_empty()));
    world.restart_gateway(1);
    let restarted = world.now();
    let answers_before = world.at_app.len();
    let mut resumed = None;
    for tag in 2..100u8 {
        world.app_sends(&to_web(80, tag));
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

/// The proxy addresses the stub answered for `name`.
fn proxies(world: &mut World, name: &str) -> Vec<Ipv4Addr> {
    let query = world.app_asks(name, RecordType::A);
    assert!(
        world.run_until(Duration::from_secs(5), |w| w.answers.contains_key(&query)),
        "no answer for {name}"
    );
    world
        .answer(query)
        .unwrap()
        .answers
        .iter()
        .filter_map(|r| match r.data {
            RData::A(a) => Some(a.0),
            _ => None,
        })
        .collect()
}

#[test]
fn a_dns_resource_grant_waits_until_the_gateway_mapped_the_name() {
    let mut world = World::new(&[Nat::PortRestricted, Nat::Open], vec![apps()]);
    let real: IpAddr = "10.0.1.80".parse().unwrap();
    world.site.records.insert(
        "web.apps.corp.test".into(),
        (vec![real], Duration::from_secs(60)),
    );
    // The stub answers with proxies of its own, which the client routes.
    let proxies = proxies(&mut world, "web.apps.corp.test");
    assert_eq!(proxies.len(), 4);
    assert!(
        proxies
            .iter()
            .all(|p| postern_model::plan::DNS_PROXY_V4.contains(p))
    );
    assert!(world.client_effects.iter().any(|e| matches!(
        e,
        Effect::Routes { routes, .. } if routes.contains(&postern_model::plan::DNS_PROXY_V4.into())
    )));
    assert!(
        world.site.lookups.is_empty(),
        "nothing asked of the site yet"
    );
    // The first packet to a proxy asks for access; the grant waits until
    // the gateway resolved the name and mapped the proxies, so that very
    // packet reaches the real address.
    world.app_sends(&tcp(CLIENT_V4, proxies[0], 80, 1));
    assert!(world.run_until(Duration::from_secs(10), |w| w.forwarded_total() > 0));
    let (forwarded_at, first) = world.forwarded[1][0].clone();
    assert_eq!(tag_of(&first), 1, "the first packet itself");
    assert_eq!(
        destination(&first),
        real,
        "rewritten to what the gateway resolved"
    );
    let (looked_up_at, _, name) = world.site.lookups[0].clone();
    assert_eq!(name, "web.apps.corp.test");
    assert!(looked_up_at < forwarded_at);
    // The answer comes back from the proxy the app used.
    assert!(world.run_until(Duration::from_secs(2), |w| !w.at_app.is_empty()));
    let reply = Packet::parse(&world.at_app[0].1).unwrap();
    assert_eq!(reply.source(), IpAddr::V4(proxies[0]));
}

#[test]
fn a_new_name_of_a_granted_dns_resource_is_answered_once_the_gateway_mapped_it() {
    let mut world = World::new(&[Nat::PortRestricted, Nat::Open], vec![apps()]);
    let (web, db): (IpAddr, IpAddr) = ("10.0.1.80".parse().unwrap(), "10.0.1.5".parse().unwrap());
    for (name, address) in [("web.apps.corp.test", web), ("db.apps.corp.test", db)] {
        world
            .site
            .records
            .insert(name.into(), (vec![address], Duration::from_secs(60)));
    }
    let web_proxies = proxies(&mut world, "web.apps.corp.test");
    world.app_sends(&tcp(CLIENT_V4, web_proxies[0], 80, 1));
    assert!(world.run_until(Duration::from_secs(10), |w| w.forwarded_total() > 0));
    // Granted now: a new name's answer waits for the gateway's mapping.
    let query = world.app_asks("db.apps.corp.test", RecordType::A);
    assert!(
        !world.answers.contains_key(&query),
        "held until the gateway confirmed"
    );
    let asked = world.now();
    assert!(world.run_until(Duration::from_secs(5), |w| w.answers.contains_key(&query)));
    let waited = world.now() - asked;
    assert!(waited >= support::world::RESOLVER_DELAY, "{waited:?}");
    let db_proxy = world
        .answer(query)
        .unwrap()
        .answers
        .iter()
        .find_map(|r| match r.data {
            RData::A(a) => Some(a.0),
            _ => None,
        })
        .unwrap();
    world.app_sends(&tcp(CLIENT_V4, db_proxy, 80, 2));
    assert!(world.run_until(Duration::from_secs(2), |w| w.forwarded[1].len() > 1));
    let (_, second) = world.forwarded[1].last().unwrap();
    assert_eq!((tag_of(second), destination(second)), (2, db));
}

#[test]
fn the_gateway_looks_names_up_again_when_their_answers_expire() {
    let mut world = World::new(&[Nat::PortRestricted, Nat::Open], vec![apps()]);
    let (old, new): (IpAddr, IpAddr) = ("10.0.1.80".parse().unwrap(), "10.0.1.81".parse().unwrap());
    let ttl = postern_tunnel::gateway::MIN_RENEW;
    world
        .site
        .records
        .insert("web.apps.corp.test".into(), (vec![old], ttl));
    let proxy = proxies(&mut world, "web.apps.corp.test")[0];
    world.app_sends(&tcp(CLIENT_V4, proxy, 80, 1));
    assert!(world.run_until(Duration::from_secs(10), |w| w.forwarded_total() > 0));
    assert_eq!(destination(&world.forwarded[1][0].1), old);
    assert_eq!(world.gateway(1).renewals(), 1);
    // The name moves; when its answer expires the gateway asks again and
    // maps the proxies to the new address.
    world
        .site
        .records
        .insert("web.apps.corp.test".into(), (vec![new], ttl));
    world.run_for(ttl + Duration::from_millis(100));
    let lookups = world
        .site
        .lookups
        .iter()
        .filter(|(_, _, n)| n == "web.apps.corp.test")
        .count();
    assert_eq!(lookups, 2, "looked up again once the TTL ran out");
    world.app_sends(&tcp(CLIENT_V4, proxy, 80, 2));
    assert!(world.run_until(Duration::from_secs(2), |w| w.forwarded[1].len() > 1));
    assert_eq!(destination(&world.forwarded[1].last().unwrap().1), new);
}

#[test]
fn other_questions_about_resource_names_go_to_the_gateway_and_others_upstream() {
    let mut world = World::new(&[Nat::PortRestricted, Nat::Open], vec![apps()]);
    // An MX question about a resource name: access is asked for, then the
    // gateway's resolvers answer through the tunnel.
    let query = world.app_asks("web.apps.corp.test", RecordType::MX);
    assert!(world.run_until(Duration::from_secs(10), |w| w.answers.contains_key(&query)));
    let answer = world.answer(query).unwrap();
    assert!(
        answer.metadata.authoritative,
        "answered by the site's server, through the gateway"
    );
    assert_eq!(answer.queries[0].query_type(), RecordType::MX);
    assert!(
        world.upstream.is_empty(),
        "a resource name never leaks upstream"
    );
    // Anything else goes to the client's upstream resolvers.
    let other = world.app_asks("example.org", RecordType::A);
    assert_eq!(world.upstream, [other]);
    // Resolvers that do not answer: SERVFAIL through the tunnel at once,
    // not after the client's own wait.
    world.site.resolvers_silent = true;
    let asked = world.now();
    let query = world.app_asks("db.apps.corp.test", RecordType::TXT);
    assert!(world.run_until(Duration::from_secs(10), |w| w.answers.contains_key(&query)));
    assert_eq!(
        world.answer(query).unwrap().metadata.response_code,
        hickory_proto::op::ResponseCode::ServFail
    );
    assert!(
        world.now() - asked < Duration::from_secs(1),
        "{:?}",
        world.now() - asked
    );
    // The Firefox canary is answered NXDOMAIN by the stub itself.
    let canary = world.app_asks("use-application-dns.net", RecordType::A);
    assert_eq!(
        world.answer(canary).unwrap().metadata.response_code,
        hickory_proto::op::ResponseCode::NXDomain
    );
}

#[test]
fn a_portal_reconnect_with_a_fresh_init_keeps_what_works() {
    let mut world = World::new(&[Nat::PortRestricted, Nat::Open], vec![web_on(80)]);
    world.app_sends(&to_web(80, 1));
    assert!(world.run_until(Duration::from_secs(10), |w| !w.at_app.is_empty()));
    let interfaces = |w: &World| {
        w.client_effects
            .iter()
            .filter(|e| matches!(e, Effect::Interface(_)))
            .count()
    };
    assert_eq!(interfaces(&world), 1);
    // Both channels drop and come back: each device gets a fresh init, the
    // gateway's listing what it enforces.
    let now = world.now();
    world.portal.client_init(now);
    world.portal.gateway_init(1, now);
    world.run_for(Duration::from_millis(100));
    let (requests, forwarded, answers) = (
        world.portal.requests,
        world.forwarded_total(),
        world.at_app.len(),
    );
    for tag in 2..6 {
        world.app_sends(&to_web(80, tag));
        world.run_for(Duration::from_millis(50));
    }
    assert_eq!(world.forwarded_total(), forwarded + 4, "forwarding went on");
    assert_eq!(world.at_app.len(), answers + 4);
    assert_eq!(world.portal.requests, requests, "no new request needed");
    assert_eq!(interfaces(&world), 1, "the interface is made once");
    assert_eq!(
        world.gateway_effects[1]
            .iter()
            .filter(|e| matches!(e, Effect::Masquerade(_)))
            .count(),
        1
    );
}

/// A request that went into a dead portal connection (the laptop had just
/// moved) is asked again as soon as the channel is back, not at the next
/// packet after the 20 s request timeout.
#[test]
fn a_request_lost_with_the_portal_connection_is_asked_again_on_reconnect() {
    let mut world = World::new(&[Nat::PortRestricted, Nat::Open], vec![web_on(80)]);
    world.client_channel_down = true;
    world.app_sends(&to_web(80, 1));
    world.run_for(Duration::from_millis(500));
    assert_eq!(
        world.portal.requests, 0,
        "the request went into the dead connection"
    );
    let reconnected = world.now();
    world.client_channel_down = false;
    world
        .client
        .handle_input(Input::PortalConnected(false), reconnected);
    world
        .client
        .handle_input(Input::PortalConnected(true), reconnected);
    world.portal.client_init(reconnected);
    // (Simulated time jumps to the next timer: without the new request,
    // that is the request timeout and its "host unreachable".)
    assert!(world.run_until(Duration::from_secs(30), |w| !w.at_app.is_empty()));
    assert_eq!(
        world.forwarded_total(),
        1,
        "the buffered packet reached the resource, not an unreachable: {:?}",
        world.at_app
    );
    assert_eq!(world.portal.requests, 1);
    let answered = world.at_app[0].0 - reconnected;
    println!("answered {answered:?} after the reconnect");
    assert!(answered < Duration::from_secs(2), "{answered:?}");
}

#[test]
fn a_grant_waiting_for_names_is_not_applied_after_a_revocation() {
    let mut world = World::new(&[Nat::PortRestricted, Nat::Open], vec![apps()]);
    world.site.records.insert(
        "web.apps.corp.test".into(),
        (vec!["10.0.1.80".parse().unwrap()], Duration::from_secs(60)),
    );
    let proxy = proxies(&mut world, "web.apps.corp.test")[0];
    world.app_sends(&tcp(CLIENT_V4, proxy, 80, 1));
    // The gateway confirmed the authorization: the grant is on its way to
    // the client, which will then wait for the names. The policy goes now.
    assert!(world.run_until(Duration::from_secs(10), |w| !w.portal.grants.is_empty()));
    let now = world.now();
    world.portal.revoke_all(now);
    world.run_for(Duration::from_secs(3));
    let status = world.client.status(world.now());
    assert_ne!(
        status.resources[0].access, "granted",
        "a grant that was revoked while it waited for the gateway"
    );
    assert_eq!(world.forwarded_total(), 0);
}

/// A gateway whose forwarded packets never get an answer (its host's
/// firewall drops them, say) says so once, instead of failing silently; a
/// site that answers raises nothing.
#[test]
fn a_gateway_whose_forwarding_gets_no_answers_says_so() {
    for echo in [true, false] {
        let mut world = World::new(&[Nat::PortRestricted, Nat::Open], vec![web_on(80)]);
        world.echo = echo;
        for tag in 0..30u8 {
            world.app_sends(&to_web(80, tag));
            world.run_for(Duration::from_millis(400));
        }
        world.run_for(Duration::from_secs(2));
        assert!(world.forwarded_total() >= 25, "the packets were forwarded");
        let reported = world.gateway(1).dropped().get("unanswered");
        assert_eq!(reported, u64::from(!echo), "echo: {echo}");
    }
}

/// Waking from a long sleep, the client asks the portal afresh (the
/// gateway's side of the session may be gone) and traffic resumes at once.
#[test]
fn a_client_that_wakes_up_asks_again_and_resumes() {
    let mut world = World::new(
        &[Nat::PortRestricted, Nat::PortRestricted],
        vec![web_on(80)],
    );
    world.app_sends(&to_web(80, 1));
    assert!(world.run_until(Duration::from_secs(10), |w| !w.at_app.is_empty()));
    let requests = world.portal.requests;
    let woke = world.now();
    world.client.handle_input(
        Input::NetworkChanged {
            locals: vec![Net::inside(0)],
            woke: true,
        },
        woke,
    );
    let resumed = resumed_after_move(&mut world, woke).expect("traffic never resumed");
    println!("traffic resumed {resumed:?} after waking");
    assert!(resumed < Duration::from_secs(2), "{resumed:?}");
    assert_eq!(
        world.portal.requests,
        requests + 1,
        "asked the portal again"
    );
}

/// The flow log (SPEC 7.5): a TCP flow through the gateway, opened,
/// answered and closed by both sides, reaches the portal once, with its
/// resource, addresses, ports and bytes each way; the portal's
/// confirmation lets the gateway forget it.
#[test]
fn a_closed_tcp_flow_reaches_the_portal_with_its_bytes() {
    let mut world = World::new(&[Nat::PortRestricted, Nat::Open], vec![web_on(80)]);
    world.echo = true;
    let segment = |flags: u8, tag: u8| {
        let mut packet = to_web(80, tag);
        packet[32] = 0x50;
        packet[33] = flags;
        packet
    };
    world.app_sends(&segment(0x02, 1));
    assert!(world.run_until(Duration::from_secs(10), |w| !w.at_app.is_empty()));
    for tag in 2..12 {
        world.app_sends(&segment(0x10, tag));
    }
    world.app_sends(&segment(0x11, 12));
    world.run_for(Duration::from_secs(3));
    assert_eq!(world.at_app.len(), 12, "every segment echoed");
    let flows = &world.portal.flows;
    assert_eq!(flows.len(), 1, "{flows:?}");
    let (host, flow) = &flows[0];
    assert_eq!(*host, 1);
    assert_eq!(flow.resource_id, web_on(80).id);
    assert_eq!(flow.protocol, 6);
    assert_eq!(flow.source, std::net::SocketAddr::from((CLIENT_V4, 40000)));
    assert_eq!(flow.destination, std::net::SocketAddr::from((WEB_HOST, 80)));
    assert_eq!((flow.bytes_out, flow.bytes_in), (12 * 44, 12 * 44));
    assert!(flow.ended_ms >= flow.started_ms);
    // Nothing more later: confirmed, forgotten, not sent again.
    world.run_for(Duration::from_secs(5));
    assert_eq!(world.portal.flows.len(), 1);
}

/// SPEC 7.4: the internet resource routes 0.0.0.0/0 and ::/0 into the
/// tunnel, keeping its exclusions and the relays' addresses on the host's
/// own path; its first packet asks for access like any resource's; the
/// user turns it off and on again, and the status says which.
#[test]
fn the_internet_resource_routes_everything_but_its_exclusions_and_can_be_turned_off() {
    use postern_model::{ResourceAddress, SiteId};
    let internet = ResourceDescription {
        id: ResourceId::from_u128(0x1e7),
        name: "internet".into(),
        address: ResourceAddress::parse_with_exclusions(
            postern_model::ResourceType::Internet,
            None,
            &["203.0.113.0/24".to_string()],
        )
        .unwrap(),
        address_description: None,
        filters: Vec::new(),
        site_id: SiteId::from_u128(1),
    };
    let mut world = World::new(&[Nat::PortRestricted, Nat::Open], vec![internet]);
    world.run_for(Duration::from_secs(1));
    let last_routes = |world: &World| {
        world
            .client_effects
            .iter()
            .rev()
            .find_map(|effect| match effect {
                Effect::Routes { routes, exclusions } => Some((routes.clone(), exclusions.clone())),
                _ => None,
            })
            .expect("the client set its routes")
    };
    let (routes, exclusions) = last_routes(&world);
    let text = |set: &std::collections::BTreeSet<ipnet::IpNet>| {
        set.iter().map(|n| n.to_string()).collect::<Vec<_>>()
    };
    assert_eq!(text(&routes), vec!["0.0.0.0/0", "::/0"]);
    assert!(
        exclusions.contains(&"203.0.113.0/24".parse().unwrap()),
        "{exclusions:?}"
    );
    assert!(
        exclusions
            .iter()
            .any(|e| support::world::is_relay(e.addr())),
        "the relay stays on the host's path: {exclusions:?}"
    );
    assert_eq!(
        world.client.status(world.now()).internet.as_deref(),
        Some("on")
    );
    // A packet to any address asks for the internet resource and goes.
    world.echo = true;
    let somewhere = tcp(CLIENT_V4, Ipv4Addr::new(10, 0, 0, 9), 443, 1);
    world.app_sends(&somewhere);
    assert!(
        world.run_until(Duration::from_secs(10), |w| !w.at_app.is_empty()),
        "the internet resource's first packet went through: forwarded {}, {:?}, gateway drops {:?}",
        world.forwarded_total(),
        world.client.status(world.now()),
        world.gateway(1).dropped()
    );
    // Names too are resolved at the far end, through the tunnel.
    let query = world.app_asks("example.org", RecordType::A);
    assert!(world.run_until(Duration::from_secs(5), |w| w.answers.contains_key(&query)));
    assert!(
        world.answer(query).unwrap().metadata.authoritative,
        "answered by the site's resolver, through the gateway"
    );
    assert!(
        world.upstream.is_empty(),
        "nothing asked on the host's path"
    );
    // Off: no default routes, nothing excluded, names upstream again; on
    // again: back.
    world
        .client
        .handle_input(Input::Internet(false), world.now());
    world.run_for(Duration::from_millis(50));
    let (routes, exclusions) = last_routes(&world);
    assert!(
        routes.is_empty() && exclusions.is_empty(),
        "{routes:?} {exclusions:?}"
    );
    assert_eq!(
        world.client.status(world.now()).internet.as_deref(),
        Some("off")
    );
    let other = world.app_asks("example.net", RecordType::A);
    assert_eq!(world.upstream, [other]);
    world
        .client
        .handle_input(Input::Internet(true), world.now());
    world.run_for(Duration::from_millis(50));
    assert_eq!(text(&last_routes(&world).0), vec!["0.0.0.0/0", "::/0"]);
}
