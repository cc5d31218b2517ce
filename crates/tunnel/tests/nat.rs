#![allow(clippy::unwrap_used)] // a test file: unwrap is the assertion
//! DNS-resource address rewriting: checksums stay valid, replies find their
//! proxy, ICMP errors are translated, sessions expire.

use std::net::IpAddr;
use std::time::{Duration, Instant};

use postern_model::filter::{IPPROTO_ICMP, IPPROTO_TCP, IPPROTO_UDP};
use postern_tunnel::icmp::checksum;
use postern_tunnel::nat::{ClientNat, Side, UDP_TIMEOUT, rewrite};
use postern_tunnel::packet::Packet;
use proptest::prelude::*;

fn octets(address: IpAddr) -> Vec<u8> {
    match address {
        IpAddr::V4(v4) => v4.octets().to_vec(),
        IpAddr::V6(v6) => v6.octets().to_vec(),
    }
}

/// A TCP or UDP packet with correct checksums.
fn packet(
    source: &str,
    destination: &str,
    protocol: u8,
    ports: (u16, u16),
    payload: &[u8],
) -> Vec<u8> {
    let (source, destination): (IpAddr, IpAddr) =
        (source.parse().unwrap(), destination.parse().unwrap());
    let header = if protocol == IPPROTO_TCP { 20 } else { 8 };
    let segment_length = header + payload.len();
    let mut segment = vec![0u8; segment_length];
    segment[0..2].copy_from_slice(&ports.0.to_be_bytes());
    segment[2..4].copy_from_slice(&ports.1.to_be_bytes());
    if protocol == IPPROTO_TCP {
        segment[12] = 5 << 4;
    } else {
        segment[4..6].copy_from_slice(&(segment_length as u16).to_be_bytes());
    }
    segment[header..].copy_from_slice(payload);
    let at = if protocol == IPPROTO_TCP { 16 } else { 6 };
    let sum = transport_sum(source, destination, protocol, &segment);
    segment[at..at + 2].copy_from_slice(&sum.to_be_bytes());
    let mut packet = Vec::new();
    match (source, destination) {
        (IpAddr::V4(_), IpAddr::V4(_)) => {
            packet.extend_from_slice(&[0x45, 0]);
            packet.extend_from_slice(&((20 + segment_length) as u16).to_be_bytes());
            packet.extend_from_slice(&[0, 0, 0, 0, 64, protocol, 0, 0]);
            packet.extend_from_slice(&octets(source));
            packet.extend_from_slice(&octets(destination));
            let sum = checksum(&[&packet[..20]]);
            packet[10..12].copy_from_slice(&sum.to_be_bytes());
        }
        _ => {
            packet.extend_from_slice(&[0x60, 0, 0, 0]);
            packet.extend_from_slice(&(segment_length as u16).to_be_bytes());
            packet.extend_from_slice(&[protocol, 64]);
            packet.extend_from_slice(&octets(source));
            packet.extend_from_slice(&octets(destination));
        }
    }
    packet.extend_from_slice(&segment);
    packet
}

fn transport_sum(source: IpAddr, destination: IpAddr, protocol: u8, segment: &[u8]) -> u16 {
    let length = segment.len() as u32;
    let mut pseudo = octets(source);
    pseudo.extend(octets(destination));
    if source.is_ipv4() {
        pseudo.extend_from_slice(&[0, protocol]);
        pseudo.extend_from_slice(&(length as u16).to_be_bytes());
    } else {
        pseudo.extend_from_slice(&length.to_be_bytes());
        pseudo.extend_from_slice(&[0, 0, 0, protocol]);
    }
    checksum(&[&pseudo, segment])
}

/// Whether every checksum of the packet verifies.
fn checksums_valid(bytes: &[u8]) -> bool {
    let parsed = Packet::parse(bytes).unwrap();
    let at = parsed.transport_offset().unwrap();
    if parsed.source().is_ipv4() && checksum(&[&bytes[..at]]) != 0 {
        return false;
    }
    let segment = &bytes[at..];
    match parsed.protocol() {
        IPPROTO_UDP if parsed.source().is_ipv4() && segment[6..8] == [0, 0] => true,
        IPPROTO_TCP | IPPROTO_UDP => {
            transport_sum(
                parsed.source(),
                parsed.destination(),
                parsed.protocol(),
                segment,
            ) == 0
        }
        _ => true,
    }
}

#[test]
fn rewriting_keeps_every_checksum_valid() {
    for (source, destination, new) in [
        ("100.64.0.2", "100.96.0.5", "10.9.0.7"),
        ("fd7e:5057:6e00::2", "fd7e:5057:6e00:8000::5", "2001:db8::7"),
    ] {
        for protocol in [IPPROTO_TCP, IPPROTO_UDP] {
            let mut bytes = packet(source, destination, protocol, (40000, 443), b"hello, world");
            assert!(checksums_valid(&bytes), "the fixture itself");
            assert!(rewrite(&mut bytes, Side::Destination, new.parse().unwrap()));
            assert!(checksums_valid(&bytes), "{protocol} {source}");
            assert_eq!(
                Packet::parse(&bytes).unwrap().destination(),
                new.parse::<IpAddr>().unwrap()
            );
            assert!(rewrite(
                &mut bytes,
                Side::Source,
                destination.parse().unwrap()
            ));
            assert!(checksums_valid(&bytes));
        }
    }
    // Families do not mix.
    let mut bytes = packet("100.64.0.2", "100.96.0.5", IPPROTO_TCP, (1, 2), b"");
    assert!(!rewrite(
        &mut bytes,
        Side::Destination,
        "2001:db8::1".parse().unwrap()
    ));
}

#[test]
fn replies_come_back_from_the_proxy_and_sessions_expire() {
    let now = Instant::now();
    let mut nat = ClientNat::default();
    let (proxy, real): (IpAddr, IpAddr) =
        ("100.96.0.5".parse().unwrap(), "10.9.0.7".parse().unwrap());
    nat.map(proxy, real);
    let mut request = packet(
        "100.64.0.2",
        "100.96.0.5",
        IPPROTO_UDP,
        (40000, 53),
        b"query",
    );
    assert!(nat.outbound(&mut request, now));
    assert_eq!(Packet::parse(&request).unwrap().destination(), real);
    assert!(checksums_valid(&request));
    let mut reply = packet(
        "10.9.0.7",
        "100.64.0.2",
        IPPROTO_UDP,
        (53, 40000),
        b"answer",
    );
    assert!(nat.inbound(&mut reply, now + Duration::from_secs(1)));
    assert_eq!(Packet::parse(&reply).unwrap().source(), proxy);
    assert!(checksums_valid(&reply));
    // Another flow is not ours.
    let mut stranger = packet("10.9.0.7", "100.64.0.2", IPPROTO_UDP, (53, 40001), b"x");
    assert!(!nat.inbound(&mut stranger, now));
    // Not a proxy: untouched.
    let mut direct = packet("100.64.0.2", "10.1.1.1", IPPROTO_UDP, (1, 2), b"");
    assert!(!nat.outbound(&mut direct, now));
    // After the UDP timeout the session is gone.
    let late = now + Duration::from_secs(1) + UDP_TIMEOUT;
    let mut reply = packet("10.9.0.7", "100.64.0.2", IPPROTO_UDP, (53, 40000), b"late");
    assert!(!nat.inbound(&mut reply, late));
    nat.expire(late);
    assert_eq!(nat.session_count(), 0);
}

#[test]
fn icmp_errors_about_a_rewritten_packet_name_the_proxy() {
    let now = Instant::now();
    let mut nat = ClientNat::default();
    nat.map("100.96.0.5".parse().unwrap(), "10.9.0.7".parse().unwrap());
    let mut request = packet(
        "100.64.0.2",
        "100.96.0.5",
        IPPROTO_UDP,
        (40000, 9999),
        b"probe",
    );
    assert!(nat.outbound(&mut request, now));
    // The real host answers "port unreachable", quoting what it received.
    let mut error = vec![
        0x45,
        0,
        0,
        0,
        0,
        0,
        0,
        0,
        64,
        IPPROTO_ICMP,
        0,
        0,
        10,
        9,
        0,
        7,
        100,
        64,
        0,
        2,
    ];
    error.extend_from_slice(&[3, 3, 0, 0, 0, 0, 0, 0]);
    error.extend_from_slice(&request[..28]);
    let total = error.len() as u16;
    error[2..4].copy_from_slice(&total.to_be_bytes());
    let sum = checksum(&[&error[20..]]);
    error[22..24].copy_from_slice(&sum.to_be_bytes());
    assert!(nat.inbound(&mut error, now));
    let quoted = Packet::parse_quoted(&error[28..]).unwrap();
    assert_eq!(
        quoted.destination(),
        "100.96.0.5".parse::<IpAddr>().unwrap()
    );
    assert_eq!(
        checksum(&[&error[20..]]),
        0,
        "the ICMP checksum was recomputed"
    );
}

proptest! {
    /// Any bytes: rewriting never panics, and a valid TCP/UDP packet stays
    /// valid whatever the new address.
    #[test]
    fn rewriting_is_safe(bytes in proptest::collection::vec(any::<u8>(), 0..120), a in any::<[u8; 4]>(), payload in proptest::collection::vec(any::<u8>(), 0..40), udp in any::<bool>()) {
        let mut garbage = bytes;
        let _ = rewrite(&mut garbage, Side::Destination, IpAddr::from(a));
        let mut nat = ClientNat::default();
        nat.map("100.96.0.5".parse().unwrap(), IpAddr::from(a));
        let _ = nat.inbound(&mut garbage, Instant::now());
        let protocol = if udp { IPPROTO_UDP } else { IPPROTO_TCP };
        let mut valid = packet("100.64.0.2", "100.96.0.5", protocol, (1234, 80), &payload);
        prop_assert!(nat.outbound(&mut valid, Instant::now()));
        prop_assert!(checksums_valid(&valid));
    }
}

mod gateway {
    use super::*;
    use postern_model::protocol::ResourceDescription;
    use postern_model::{ClientId, ResourceAddress, ResourceId, SiteId};
    use postern_model::{Filter, PortRange, Protocol, ResourceType};
    use postern_tunnel::gateway::{
        AssignError, ClientAddresses, GatewayDrop, GatewayState, GatewayVerdict,
    };

    fn dns_resource() -> ResourceDescription {
        ResourceDescription {
            id: ResourceId::from_u128(5),
            name: "apps".into(),
            address: ResourceAddress::parse(ResourceType::Dns, Some("**.corp.test")).unwrap(),
            address_description: None,
            filters: vec![Filter {
                protocol: Protocol::Tcp,
                ports: Some(PortRange {
                    start: 443,
                    end: 443,
                }),
            }],
            site_id: SiteId::from_u128(6),
        }
    }

    #[test]
    fn one_clients_proxies_are_not_another_clients() {
        let now = Instant::now();
        let alice = ClientAddresses {
            id: ClientId::from_u128(1),
            ipv4: "100.64.0.2".parse().unwrap(),
            ipv6: "fd7e:5057:6e00::2".parse().unwrap(),
        };
        let bob = ClientAddresses {
            id: ClientId::from_u128(2),
            ipv4: "100.64.0.3".parse().unwrap(),
            ipv6: "fd7e:5057:6e00::3".parse().unwrap(),
        };
        let mut gateway = GatewayState::new();
        gateway.authorize(alice, dns_resource(), None);
        gateway.authorize(bob, dns_resource(), None);
        let proxy: IpAddr = "100.96.0.5".parse().unwrap();
        assert_eq!(
            gateway.assign_proxies(
                alice.id,
                dns_resource().id,
                "secret.corp.test",
                &[proxy],
                &["10.9.0.7".parse().unwrap()]
            ),
            Ok(1)
        );
        // Bob sends to Alice's proxy: he never assigned it, so it leads nowhere.
        let mut bytes = packet(
            "100.64.0.3",
            "100.96.0.5",
            IPPROTO_TCP,
            (40000, 443),
            b"GET /",
        );
        let verdict = gateway.forward_from_client(bob.id, &mut bytes, now);
        assert_ne!(verdict, GatewayVerdict::Forward);
        assert_eq!(
            Packet::parse(&bytes).unwrap().destination(),
            proxy,
            "nothing was rewritten to the real address"
        );
        // Bob's own assignment of the same proxy maps it for him alone.
        assert_eq!(
            gateway.assign_proxies(
                bob.id,
                dns_resource().id,
                "other.corp.test",
                &[proxy],
                &["10.9.0.9".parse().unwrap()]
            ),
            Ok(1)
        );
        let mut bytes = packet(
            "100.64.0.3",
            "100.96.0.5",
            IPPROTO_TCP,
            (40000, 443),
            b"GET /",
        );
        assert_eq!(
            gateway.forward_from_client(bob.id, &mut bytes, now),
            GatewayVerdict::Forward
        );
        assert_eq!(
            Packet::parse(&bytes).unwrap().destination().to_string(),
            "10.9.0.9"
        );
        let mut bytes = packet(
            "100.64.0.2",
            "100.96.0.5",
            IPPROTO_TCP,
            (40001, 443),
            b"GET /",
        );
        assert_eq!(
            gateway.forward_from_client(alice.id, &mut bytes, now),
            GatewayVerdict::Forward
        );
        assert_eq!(
            Packet::parse(&bytes).unwrap().destination().to_string(),
            "10.9.0.7"
        );
    }

    #[test]
    fn proxy_addresses_reach_the_real_ones_and_come_back() {
        let now = Instant::now();
        let client = ClientAddresses {
            id: ClientId::from_u128(1),
            ipv4: "100.64.0.2".parse().unwrap(),
            ipv6: "fd7e:5057:6e00::2".parse().unwrap(),
        };
        let mut gateway = GatewayState::new();
        gateway.authorize(client, dns_resource(), None);
        let proxies: Vec<IpAddr> = ["100.96.0.5", "100.96.0.6", "fd7e:5057:6e00:8000::5"]
            .iter()
            .map(|p| p.parse().unwrap())
            .collect();
        let answers: Vec<IpAddr> = ["10.9.0.7", "10.9.0.8", "2001:db8::7"]
            .iter()
            .map(|a| a.parse().unwrap())
            .collect();
        assert_eq!(
            gateway.assign_proxies(
                client.id,
                dns_resource().id,
                "web.corp.test",
                &proxies,
                &answers
            ),
            Ok(3)
        );
        // Round robin per family.
        for (proxy, real) in [("100.96.0.5", "10.9.0.7"), ("100.96.0.6", "10.9.0.8")] {
            let mut bytes = packet("100.64.0.2", proxy, IPPROTO_TCP, (40000, 443), b"GET /");
            assert_eq!(
                gateway.forward_from_client(client.id, &mut bytes, now),
                GatewayVerdict::Forward
            );
            assert_eq!(
                Packet::parse(&bytes).unwrap().destination(),
                real.parse::<IpAddr>().unwrap()
            );
            assert!(checksums_valid(&bytes));
        }
        let mut v6 = packet(
            "fd7e:5057:6e00::2",
            "fd7e:5057:6e00:8000::5",
            IPPROTO_TCP,
            (40000, 443),
            b"x",
        );
        assert_eq!(
            gateway.forward_from_client(client.id, &mut v6, now),
            GatewayVerdict::Forward
        );
        assert_eq!(
            Packet::parse(&v6).unwrap().destination(),
            "2001:db8::7".parse::<IpAddr>().unwrap()
        );
        // The resource's filters hold for proxies too.
        let mut http = packet("100.64.0.2", "100.96.0.5", IPPROTO_TCP, (40000, 80), b"");
        assert!(matches!(
            gateway.forward_from_client(client.id, &mut http, now),
            GatewayVerdict::Reply(_)
        ));
        // The answer comes back from the proxy address.
        let mut reply = packet(
            "10.9.0.7",
            "100.64.0.2",
            IPPROTO_TCP,
            (443, 40000),
            b"200 OK",
        );
        assert_eq!(gateway.handle_to_client(&mut reply, now), Ok(client.id));
        assert_eq!(
            Packet::parse(&reply).unwrap().source(),
            "100.96.0.5".parse::<IpAddr>().unwrap()
        );
        assert!(checksums_valid(&reply));
        // Assignments are checked.
        assert_eq!(
            gateway.assign_proxies(
                client.id,
                ResourceId::from_u128(99),
                "web.corp.test",
                &proxies,
                &answers
            ),
            Err(AssignError::NotAuthorized)
        );
        assert_eq!(
            gateway.assign_proxies(
                client.id,
                dns_resource().id,
                "web.corp.test",
                &["10.0.0.1".parse().unwrap()],
                &answers
            ),
            Err(AssignError::NotProxy)
        );
        // Only names of the resource: the gateway resolves nothing else.
        assert_eq!(
            gateway.assign_proxies(
                client.id,
                dns_resource().id,
                "intranet.example",
                &["100.96.0.9".parse().unwrap()],
                &answers
            ),
            Err(AssignError::NameMismatch)
        );
        // A second name of the resource keeps the first one's proxies.
        assert_eq!(
            gateway.assign_proxies(
                client.id,
                dns_resource().id,
                "db.corp.test",
                &["100.96.0.20".parse().unwrap()],
                &["10.9.0.20".parse().unwrap()]
            ),
            Ok(1)
        );
        let mut bytes = packet("100.64.0.2", "100.96.0.5", IPPROTO_TCP, (40001, 443), b"x");
        assert_eq!(
            gateway.forward_from_client(client.id, &mut bytes, now),
            GatewayVerdict::Forward,
            "the first name's proxy still maps"
        );
        let mut bytes = packet("100.64.0.2", "100.96.0.20", IPPROTO_TCP, (40002, 443), b"x");
        assert_eq!(
            gateway.forward_from_client(client.id, &mut bytes, now),
            GatewayVerdict::Forward
        );
        assert_eq!(
            Packet::parse(&bytes).unwrap().destination().to_string(),
            "10.9.0.20"
        );
        // Revocation forgets the mappings.
        gateway.revoke(client.id, dns_resource().id);
        let mut after = packet("100.64.0.2", "100.96.0.5", IPPROTO_TCP, (40000, 443), b"");
        assert_eq!(
            gateway.forward_from_client(client.id, &mut after, now),
            GatewayVerdict::Drop(GatewayDrop::UnknownClient)
        );
        assert_eq!(
            Packet::parse(&after).unwrap().destination(),
            "100.96.0.5".parse::<IpAddr>().unwrap(),
            "not rewritten"
        );
    }

    #[test]
    fn cidr_resources_take_no_proxies() {
        let mut gateway = GatewayState::new();
        let client = ClientAddresses {
            id: ClientId::from_u128(1),
            ipv4: "100.64.0.2".parse().unwrap(),
            ipv6: "fd7e:5057:6e00::2".parse().unwrap(),
        };
        let mut cidr = dns_resource();
        cidr.address = ResourceAddress::Cidr("10.0.0.0/24".parse().unwrap());
        gateway.authorize(client, cidr.clone(), None);
        assert_eq!(
            gateway.assign_proxies(
                client.id,
                cidr.id,
                "web.corp.test",
                &["100.96.0.5".parse().unwrap()],
                &["10.0.0.1".parse().unwrap()]
            ),
            Err(AssignError::NotDns)
        );
    }
}
