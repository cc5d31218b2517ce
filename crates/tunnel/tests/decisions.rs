#![allow(clippy::unwrap_used)] // a test file: unwrap is the assertion
//! Client and gateway decisions about packets, driven with a controllable clock.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

use postern_model::filter::{IPPROTO_TCP, IPPROTO_UDP};
use postern_model::protocol::{DenyReason, ResourceDescription};
use postern_model::{ClientId, GatewayId, ResourceAddress, ResourceId, SiteId};
use postern_model::{Filter, ResourceType};
use postern_tunnel::client::{Access, ClientConfig, ClientEvent, ClientState, DropReason, Verdict};
use postern_tunnel::gateway::{ClientAddresses, GatewayDrop, GatewayState, GatewayVerdict};
use postern_tunnel::packet::Packet;
use proptest::prelude::*;

const CLIENT_V4: [u8; 4] = [100, 64, 0, 7];

fn packet(source: [u8; 4], destination: [u8; 4], protocol: u8, port: u16) -> Vec<u8> {
    let mut bytes = vec![0u8; 28];
    bytes[0] = 0x45;
    bytes[2..4].copy_from_slice(&28u16.to_be_bytes());
    bytes[8] = 64;
    bytes[9] = protocol;
    bytes[12..16].copy_from_slice(&source);
    bytes[16..20].copy_from_slice(&destination);
    bytes[20..22].copy_from_slice(&50000u16.to_be_bytes());
    bytes[22..24].copy_from_slice(&port.to_be_bytes());
    bytes
}

fn tcp(destination: [u8; 4], port: u16) -> Vec<u8> {
    packet(CLIENT_V4, destination, IPPROTO_TCP, port)
}

fn resource(id: u128, kind: ResourceType, address: &str, filters: &str) -> ResourceDescription {
    ResourceDescription {
        id: ResourceId::from_u128(id),
        name: format!("r{id}"),
        // Built directly: tests route prefixes the REST API would refuse.
        address: match kind {
            ResourceType::Cidr => ResourceAddress::Cidr(address.parse().unwrap()),
            ResourceType::Ip => ResourceAddress::Ip(address.parse().unwrap()),
            ResourceType::Dns => ResourceAddress::Dns(address.parse().unwrap()),
            ResourceType::Internet => ResourceAddress::Internet(Vec::new()),
        },
        address_description: None,
        filters: serde_json_filters(filters),
        site_id: SiteId::from_u128(99),
    }
}

fn serde_json_filters(text: &str) -> Vec<Filter> {
    if text.is_empty() {
        return vec![];
    }
    text.split(',')
        .map(|f| {
            let (protocol, ports) = f.split_once('/').unwrap_or((f, ""));
            let json = if ports.is_empty() {
                format!(r#"{{"protocol": "{protocol}"}}"#)
            } else {
                format!(r#"{{"protocol": "{protocol}", "ports": "{ports}"}}"#)
            };
            serde_json_from(&json)
        })
        .collect()
}

fn serde_json_from(json: &str) -> Filter {
    // The model's own JSON form, as the portal sends it.
    postern_model_json(json)
}

fn postern_model_json(json: &str) -> Filter {
    serde_json::from_str(json).unwrap()
}

fn events(client: &mut ClientState) -> Vec<ClientEvent> {
    std::iter::from_fn(|| client.poll_event()).collect()
}

#[test]
fn the_first_packets_wait_for_access_and_are_delivered() {
    let start = Instant::now();
    let mut client = ClientState::new(ClientConfig::default());
    client.set_resources(vec![resource(
        1,
        ResourceType::Cidr,
        "10.0.0.0/24",
        "tcp/80",
    )]);
    let syn = tcp([10, 0, 0, 5], 80);
    assert_eq!(client.handle_packet(&syn, start), Verdict::Buffered);
    let retransmit = tcp([10, 0, 0, 5], 80);
    assert_eq!(client.handle_packet(&retransmit, start), Verdict::Buffered);
    let requests = events(&mut client);
    assert_eq!(
        requests.len(),
        1,
        "one request for the resource, not one per packet"
    );
    let ClientEvent::RequestAccess {
        resource_id,
        connected_gateway_ids,
        ..
    } = &requests[0]
    else {
        panic!("{requests:?}");
    };
    assert_eq!(
        (*resource_id, connected_gateway_ids.len()),
        (ResourceId::from_u128(1), 0)
    );
    let gateway = GatewayId::from_u128(50);
    client.access_granted(ResourceId::from_u128(1), gateway, None);
    assert_eq!(
        events(&mut client),
        vec![
            ClientEvent::Deliver {
                gateway,
                resource: ResourceId::from_u128(1),
                packet: syn
            },
            ClientEvent::Deliver {
                gateway,
                resource: ResourceId::from_u128(1),
                packet: retransmit
            },
        ]
    );
    assert_eq!(
        client.handle_packet(&tcp([10, 0, 0, 5], 80), start),
        Verdict::ToGateway {
            gateway,
            resource: ResourceId::from_u128(1)
        }
    );
    // The client-side filter pre-check answers at once, without asking.
    let Verdict::Reply(reply) = client.handle_packet(&tcp([10, 0, 0, 5], 22), start) else {
        panic!("a filtered port must be answered");
    };
    let reply = Packet::parse(&reply).unwrap();
    assert_eq!(reply.destination(), IpAddr::V4(Ipv4Addr::from(CLIENT_V4)));
    assert!(reply.is_icmp_error());
    assert!(events(&mut client).is_empty());
    // Not ours at all.
    assert_eq!(
        client.handle_packet(&tcp([192, 0, 2, 1], 80), start),
        Verdict::Dropped(DropReason::NoRoute)
    );
    assert_eq!(
        client.handle_packet(&[0x45, 0, 1], start),
        Verdict::Dropped(DropReason::Malformed)
    );
}

#[test]
fn buffering_is_bounded_and_keeps_the_first_packets() {
    let start = Instant::now();
    let mut client = ClientState::new(ClientConfig {
        max_buffered_packets: 3,
        ..ClientConfig::default()
    });
    client.set_resources(vec![resource(1, ResourceType::Ip, "10.0.0.5", "")]);
    let sent: Vec<Vec<u8>> = (0..5).map(|n| tcp([10, 0, 0, 5], 1000 + n)).collect();
    let verdicts: Vec<Verdict> = sent
        .iter()
        .map(|p| client.handle_packet(p, start))
        .collect();
    assert_eq!(
        verdicts[..3],
        [Verdict::Buffered, Verdict::Buffered, Verdict::Buffered]
    );
    assert_eq!(
        verdicts[3..],
        [
            Verdict::Dropped(DropReason::BufferFull),
            Verdict::Dropped(DropReason::BufferFull)
        ]
    );
    events(&mut client);
    client.access_granted(ResourceId::from_u128(1), GatewayId::from_u128(50), None);
    let delivered: Vec<Vec<u8>> = events(&mut client)
        .into_iter()
        .map(|e| match e {
            ClientEvent::Deliver { packet, .. } => packet,
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(delivered, sent[..3]);
}

#[test]
fn denial_answers_the_app_and_is_remembered_for_a_while() {
    let start = Instant::now();
    let mut client = ClientState::new(ClientConfig::default());
    client.set_resources(vec![resource(1, ResourceType::Cidr, "10.0.0.0/24", "")]);
    client.handle_packet(&tcp([10, 0, 0, 5], 80), start);
    events(&mut client);
    client.access_denied(
        ResourceId::from_u128(1),
        DenyReason::Forbidden,
        vec!["time".into()],
        start,
    );
    let replies = events(&mut client);
    assert!(
        matches!(&replies[..], [ClientEvent::Reply(r)] if Packet::parse(r).unwrap().is_icmp_error()),
        "{replies:?}"
    );
    let status = client.status();
    assert!(
        matches!(&status[0].access, Access::Denied { violated, .. } if violated == &vec!["time".to_string()])
    );
    // Within the hold: answered at once, no new request.
    assert!(matches!(
        client.handle_packet(&tcp([10, 0, 0, 5], 80), start + Duration::from_secs(1)),
        Verdict::Reply(_)
    ));
    assert!(events(&mut client).is_empty());
    // After it: asked again.
    assert_eq!(
        client.handle_packet(&tcp([10, 0, 0, 5], 80), start + Duration::from_secs(6)),
        Verdict::Buffered
    );
    assert!(matches!(
        events(&mut client)[..],
        [ClientEvent::RequestAccess { .. }]
    ));
}

#[test]
fn unanswered_requests_time_out_with_host_unreachable() {
    let start = Instant::now();
    let mut client = ClientState::new(ClientConfig::default());
    client.set_resources(vec![resource(1, ResourceType::Cidr, "10.0.0.0/24", "")]);
    client.handle_packet(&tcp([10, 0, 0, 5], 80), start);
    events(&mut client);
    let deadline = client.poll_timeout().unwrap();
    assert_eq!(deadline, start + Duration::from_secs(20));
    client.handle_timeout(deadline - Duration::from_millis(1));
    assert!(events(&mut client).is_empty());
    client.handle_timeout(deadline);
    let replies = events(&mut client);
    let [ClientEvent::Reply(reply)] = &replies[..] else {
        panic!("{replies:?}")
    };
    assert_eq!((reply[20], reply[21]), (3, 1), "ICMP host unreachable");
    assert_eq!(client.poll_timeout(), None);
}

/// A userspace stack hands the role every destination: one that no
/// resource covers is refused as a denial is (ICMP administratively
/// prohibited, which the SOCKS5 proxy turns into "not allowed"), never
/// asked for; with a routing table (the TUN) it cannot arrive and is
/// only counted.
#[test]
fn unrouted_destinations_are_refused_when_every_destination_comes_to_the_role() {
    let start = Instant::now();
    let mut userspace = ClientState::new(ClientConfig {
        refuse_unrouted: true,
        ..ClientConfig::default()
    });
    userspace.set_resources(vec![resource(1, ResourceType::Cidr, "10.0.0.0/24", "")]);
    let Verdict::Reply(reply) = userspace.handle_packet(&tcp([10, 0, 1, 5], 80), start) else {
        panic!("an unrouted destination must be refused");
    };
    assert_eq!((reply[20], reply[21]), (3, 13), "ICMP prohibited");
    assert!(
        events(&mut userspace).is_empty(),
        "nothing asked of the portal"
    );
    // A routed one is still asked for.
    assert_eq!(
        userspace.handle_packet(&tcp([10, 0, 0, 5], 80), start),
        Verdict::Buffered
    );
    let mut routed = ClientState::new(ClientConfig::default());
    routed.set_resources(vec![resource(1, ResourceType::Cidr, "10.0.0.0/24", "")]);
    assert_eq!(
        routed.handle_packet(&tcp([10, 0, 1, 5], 80), start),
        Verdict::Dropped(DropReason::NoRoute)
    );
}

#[test]
fn longest_prefix_picks_the_resource_and_lost_gateways_are_asked_again() {
    let start = Instant::now();
    let mut client = ClientState::new(ClientConfig::default());
    client.set_resources(vec![
        resource(1, ResourceType::Cidr, "10.0.0.0/8", ""),
        resource(2, ResourceType::Cidr, "10.1.0.0/16", ""),
    ]);
    client.handle_packet(&tcp([10, 1, 2, 3], 80), start);
    client.handle_packet(&tcp([10, 2, 2, 3], 80), start);
    let asked: Vec<ResourceId> = events(&mut client)
        .into_iter()
        .map(|e| match e {
            ClientEvent::RequestAccess { resource_id, .. } => resource_id,
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(asked, [ResourceId::from_u128(2), ResourceId::from_u128(1)]);
    let (first, second) = (GatewayId::from_u128(50), GatewayId::from_u128(51));
    client.access_granted(ResourceId::from_u128(1), first, None);
    client.access_granted(ResourceId::from_u128(2), second, None);
    events(&mut client);
    client.gateway_lost(second);
    client.handle_packet(&tcp([10, 1, 2, 3], 80), start);
    let requests = events(&mut client);
    let [
        ClientEvent::RequestAccess {
            resource_id,
            connected_gateway_ids,
            ..
        },
    ] = &requests[..]
    else {
        panic!("{requests:?}")
    };
    assert_eq!(*resource_id, ResourceId::from_u128(2));
    assert_eq!(
        connected_gateway_ids,
        &vec![first],
        "the portal hears which gateway still works"
    );
    // Removing a resource answers what waited for it.
    client.remove_resource(ResourceId::from_u128(2));
    assert!(matches!(events(&mut client)[..], [ClientEvent::Reply(_)]));
    assert_eq!(
        client.handle_packet(&tcp([10, 1, 2, 3], 80), start),
        Verdict::ToGateway {
            gateway: first,
            resource: ResourceId::from_u128(1)
        }
    );
}

fn addresses() -> ClientAddresses {
    ClientAddresses {
        id: ClientId::from_u128(7),
        ipv4: Ipv4Addr::from(CLIENT_V4),
        ipv6: "fd7e:5057:6e00::7".parse().unwrap(),
    }
}

/// Expiries run in time order without a walk over every client: the
/// timer names the first, handling it ends only that authorization, a
/// renewed one moves its deadline (the old one never fires), and a revoked
/// one leaves none behind.
#[test]
fn authorizations_expire_in_order_and_renewals_move_the_deadline() {
    let start = Instant::now();
    let mut gateway = GatewayState::new();
    let client = |n: u8| ClientAddresses {
        id: ClientId::from_u128(u128::from(n)),
        ipv4: Ipv4Addr::new(100, 64, 0, n),
        ipv6: format!("fd7e:5057:6e00::{n}").parse().unwrap(),
    };
    let web = || resource(1, ResourceType::Cidr, "10.0.0.0/24", "");
    let at = |seconds| start + Duration::from_secs(seconds);
    for (n, seconds) in [(1, 30), (2, 10), (3, 20)] {
        gateway.authorize(client(n), web(), Some(at(seconds)));
    }
    assert_eq!(gateway.poll_timeout(), Some(at(10)));
    gateway.handle_timeout(at(10));
    assert!(!gateway.has_client(client(2).id));
    assert!(gateway.has_client(client(1).id) && gateway.has_client(client(3).id));
    // Renewed before it ran out: the old deadline is gone.
    gateway.authorize(client(3), web(), Some(at(40)));
    assert_eq!(gateway.poll_timeout(), Some(at(30)));
    gateway.revoke(client(1).id, web().id);
    assert_eq!(gateway.poll_timeout(), Some(at(40)));
    gateway.handle_timeout(at(39));
    assert!(gateway.is_authorized(client(3).id, web().id));
    gateway.handle_timeout(at(40));
    assert_eq!(gateway.client_count(), 0);
    assert_eq!(gateway.poll_timeout(), None);
}

/// Idle flows are swept per client, every 10 s from its first flow, and a
/// flow that ends (here a UDP flow gone idle) reaches the log once: its
/// client is listed when the flow ends, so taking the ended flows walks no
/// other client. A client left without flows is not swept again.
#[test]
fn idle_flows_are_swept_per_client_and_reach_the_log_once() {
    let start = Instant::now();
    let mut gateway = GatewayState::new();
    let first = addresses();
    let second = ClientAddresses {
        id: ClientId::from_u128(8),
        ipv4: Ipv4Addr::new(100, 64, 0, 8),
        ipv6: "fd7e:5057:6e00::8".parse().unwrap(),
    };
    let web = || resource(1, ResourceType::Cidr, "10.0.0.0/24", "");
    for (client, opened) in [(first, 0), (second, 5)] {
        gateway.authorize(client, web(), None);
        let mut query = packet(client.ipv4.octets(), [10, 0, 0, 53], IPPROTO_UDP, 53);
        assert_eq!(
            gateway.forward_from_client(client.id, &mut query, start + Duration::from_secs(opened)),
            GatewayVerdict::Forward
        );
    }
    assert!(gateway.take_ended_flows().0.is_empty());
    // Idle after 5 minutes: each flow ends at its own client's sweep.
    let mut ended = Vec::new();
    while let Some(at) = gateway.poll_timeout()
        && at <= start + Duration::from_secs(400)
    {
        gateway.handle_timeout(at);
        let (flows, dropped) = gateway.take_ended_flows();
        assert_eq!(dropped, 0);
        ended.extend(flows.into_iter().map(|(client, _)| (client, at - start)));
    }
    assert_eq!(
        ended,
        vec![
            (first.id, Duration::from_secs(300)),
            (second.id, Duration::from_secs(305))
        ]
    );
    assert_eq!(gateway.poll_timeout(), None, "no flows left: no sweep");
}

#[test]
fn the_gateway_enforces_source_filters_revocation_and_expiry() {
    let start = Instant::now();
    let mut gateway = GatewayState::new();
    let client = addresses();
    gateway.authorize(
        client,
        resource(1, ResourceType::Cidr, "10.0.0.0/24", "tcp/80,icmp"),
        Some(start + Duration::from_secs(60)),
    );
    assert_eq!(
        gateway.handle_from_client(client.id, &tcp([10, 0, 0, 5], 80), start),
        GatewayVerdict::Forward
    );
    let GatewayVerdict::Reply(reply) =
        gateway.handle_from_client(client.id, &tcp([10, 0, 0, 5], 22), start)
    else {
        panic!("a filtered port gets ICMP administratively prohibited");
    };
    assert_eq!((reply[20], reply[21]), (3, 13));
    assert!(matches!(
        gateway.handle_from_client(client.id, &tcp([10, 0, 1, 5], 80), start),
        GatewayVerdict::Reply(_)
    ));
    // Spoofed sources are dropped silently.
    let spoofed = packet([100, 64, 0, 8], [10, 0, 0, 5], IPPROTO_TCP, 80);
    assert_eq!(
        gateway.handle_from_client(client.id, &spoofed, start),
        GatewayVerdict::Drop(GatewayDrop::Spoofed)
    );
    assert_eq!(
        gateway.handle_from_client(ClientId::from_u128(8), &tcp([10, 0, 0, 5], 80), start),
        GatewayVerdict::Drop(GatewayDrop::UnknownClient)
    );
    // Return traffic finds its client.
    assert_eq!(gateway.client_for(IpAddr::V4(client.ipv4)), Some(client.id));
    // Live filter change.
    gateway.update_resource(resource(1, ResourceType::Cidr, "10.0.0.0/24", "tcp/22"));
    assert_eq!(
        gateway.handle_from_client(client.id, &tcp([10, 0, 0, 5], 22), start),
        GatewayVerdict::Forward
    );
    assert!(matches!(
        gateway.handle_from_client(client.id, &tcp([10, 0, 0, 5], 80), start),
        GatewayVerdict::Reply(_)
    ));
    // Expiry.
    assert_eq!(
        gateway.poll_timeout(),
        Some(start + Duration::from_secs(60))
    );
    assert!(matches!(
        gateway.handle_from_client(
            client.id,
            &tcp([10, 0, 0, 5], 22),
            start + Duration::from_secs(60)
        ),
        GatewayVerdict::Reply(_)
    ));
    assert!(!gateway.is_authorized(client.id, ResourceId::from_u128(1)));
    // Revocation.
    gateway.authorize(client, resource(2, ResourceType::Ip, "10.9.9.9", ""), None);
    assert_eq!(
        gateway.handle_from_client(
            client.id,
            &packet(CLIENT_V4, [10, 9, 9, 9], IPPROTO_UDP, 53),
            start
        ),
        GatewayVerdict::Forward
    );
    gateway.revoke(client.id, ResourceId::from_u128(2));
    assert_eq!(
        gateway.handle_from_client(client.id, &tcp([10, 9, 9, 9], 80), start),
        GatewayVerdict::Drop(GatewayDrop::UnknownClient)
    );
    assert_eq!(gateway.client_for(IpAddr::V4(client.ipv4)), None);
}

/// What the gateway must do, computed the slow and obvious way.
#[derive(Clone, Debug)]
struct Grant {
    net: ipnet::Ipv4Net,
    port: Option<u16>,
}

#[derive(Clone, Debug)]
enum Action {
    Authorize(u128, Grant),
    Revoke(u128),
    Send([u8; 4], [u8; 4], u16),
}

fn action() -> impl Strategy<Value = Action> {
    let grant = (
        0u8..4,
        8u8..=32,
        proptest::option::of(prop_oneof![Just(80u16), Just(443u16)]),
    )
        .prop_map(|(third, len, port)| Grant {
            net: ipnet::Ipv4Net::new(Ipv4Addr::new(10, 0, third, 0), len)
                .unwrap()
                .trunc(),
            port,
        });
    prop_oneof![
        3 => (0u128..4, grant).prop_map(|(id, g)| Action::Authorize(id, g)),
        1 => (0u128..4).prop_map(Action::Revoke),
        6 => (prop_oneof![Just(CLIENT_V4), Just([100, 64, 0, 9])], (0u8..4, any::<u8>()), prop_oneof![Just(80u16), Just(443u16), Just(22u16)])
            .prop_map(|(source, (third, fourth), port)| Action::Send(source, [10, 0, third, fourth], port)),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    /// Random authorizations, revocations and packets against a reference
    /// model of what must be forwarded.
    #[test]
    fn gateway_matches_the_reference_model(actions in proptest::collection::vec(action(), 1..60)) {
        let now = Instant::now();
        let client = addresses();
        let mut gateway = GatewayState::new();
        let mut model: HashMap<u128, Grant> = HashMap::new();
        for action in actions {
            match action {
                Action::Authorize(id, grant) => {
                    let filters = grant.port.map(|p| format!("tcp/{p}")).unwrap_or_default();
                    gateway.authorize(client, resource(id, ResourceType::Cidr, &grant.net.to_string(), &filters), None);
                    model.insert(id, grant);
                }
                Action::Revoke(id) => {
                    gateway.revoke(client.id, ResourceId::from_u128(id));
                    model.remove(&id);
                }
                Action::Send(source, destination, port) => {
                    let verdict = gateway.handle_from_client(client.id, &packet(source, destination, IPPROTO_TCP, port), now);
                    let address = Ipv4Addr::from(destination);
                    let best = model
                        .iter()
                        .filter(|(_, g)| g.net.contains(&address))
                        .max_by_key(|(_, g)| g.net.prefix_len())
                        .map(|(_, g)| g.net.prefix_len());
                    // Every grant of the longest matching prefix counts.
                    let expected_forward = source == CLIENT_V4 && best.is_some_and(|len| {
                        model.values().any(|g| g.net.prefix_len() == len && g.net.contains(&address) && g.port.is_none_or(|p| p == port))
                    });
                    if model.is_empty() {
                        prop_assert_eq!(verdict, GatewayVerdict::Drop(GatewayDrop::UnknownClient));
                    } else if source != CLIENT_V4 {
                        prop_assert_eq!(verdict, GatewayVerdict::Drop(GatewayDrop::Spoofed));
                    } else if expected_forward {
                        prop_assert_eq!(verdict, GatewayVerdict::Forward);
                    } else {
                        prop_assert!(matches!(verdict, GatewayVerdict::Reply(_)), "{:?}", verdict);
                    }
                }
            }
        }
    }

    /// Hostile bytes never panic either side.
    #[test]
    fn hostile_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..200), first in prop_oneof![Just(0x45u8), Just(0x60u8), any::<u8>()]) {
        let mut bytes = bytes;
        if let Some(b) = bytes.first_mut() {
            *b = first;
        }
        let now = Instant::now();
        let mut client = ClientState::new(ClientConfig::default());
        client.set_resources(vec![
            resource(1, ResourceType::Cidr, "0.0.0.0/1", ""),
            resource(2, ResourceType::Cidr, "128.0.0.0/1", ""),
            resource(3, ResourceType::Cidr, "::/1", ""),
        ]);
        let _ = client.handle_packet(&bytes, now);
        let mut gateway = GatewayState::new();
        gateway.authorize(addresses(), resource(1, ResourceType::Cidr, "0.0.0.0/1", ""), None);
        let _ = gateway.handle_from_client(addresses().id, &bytes, now);
    }
}

#[test]
fn proxy_addresses_of_a_dns_resource_ask_for_that_resource() {
    let start = Instant::now();
    let mut client = ClientState::new(ClientConfig::default());
    client.set_resources(vec![
        resource(5, ResourceType::Dns, "*.apps.corp.test", "tcp/443"),
        resource(6, ResourceType::Cidr, "10.0.0.0/24", ""),
    ]);
    let proxy = [100, 96, 0, 1];
    // Before the stub handed the address out, nothing routes it.
    assert_eq!(
        client.handle_packet(&tcp(proxy, 443), start),
        Verdict::Dropped(DropReason::NoRoute)
    );
    client.route_proxies(
        ResourceId::from_u128(5),
        &[
            IpAddr::V4(Ipv4Addr::from(proxy)),
            "fd7e:5057:6e00:8000::1".parse().unwrap(),
        ],
    );
    // Routes to unknown resources are ignored.
    client.route_proxies(
        ResourceId::from_u128(77),
        &[IpAddr::V4(Ipv4Addr::new(100, 96, 0, 9))],
    );
    assert_eq!(
        client.handle_packet(&tcp([100, 96, 0, 9], 443), start),
        Verdict::Dropped(DropReason::NoRoute)
    );
    assert_eq!(
        client.handle_packet(&tcp(proxy, 443), start),
        Verdict::Buffered
    );
    let requests = events(&mut client);
    let [ClientEvent::RequestAccess { resource_id, .. }] = requests.as_slice() else {
        panic!("{requests:?}")
    };
    assert_eq!(*resource_id, ResourceId::from_u128(5));
    // The filter applies to proxies as to any address of the resource.
    let gateway = GatewayId::from_u128(50);
    client.access_granted(ResourceId::from_u128(5), gateway, None);
    events(&mut client);
    assert!(matches!(
        client.handle_packet(&tcp(proxy, 22), start),
        Verdict::Reply(_)
    ));
    assert_eq!(
        client.handle_packet(&tcp(proxy, 443), start),
        Verdict::ToGateway {
            gateway,
            resource: ResourceId::from_u128(5)
        }
    );
    // An update of the resource keeps the proxies routed.
    client.upsert_resource(resource(
        5,
        ResourceType::Dns,
        "*.apps.corp.test",
        "tcp/443",
    ));
    assert_eq!(
        client.handle_packet(&tcp(proxy, 443), start),
        Verdict::ToGateway {
            gateway,
            resource: ResourceId::from_u128(5)
        }
    );
}
