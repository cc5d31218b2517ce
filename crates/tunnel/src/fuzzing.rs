//! The fuzz entry point (crates/tunnel/fuzz, feature `fuzzing`): raw bytes
//! into both roles wherever the network or an app can put them: as an
//! app's packet and an app's DNS query into a client, as datagrams from a
//! relay and from anywhere into a client and a gateway, as a tunnel packet
//! into the gateway's authorization table and NAT, and as an in-tunnel
//! message. Nothing may panic, and every ICMP or DNS reply must itself
//! parse.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Instant;

use jiff::Timestamp;
use postern_model::protocol::{
    Authorization, IceCredentials, Interface, PairIce, Peer, PortalToClient, PortalToGateway,
    RelayInfo, ResourceDescription,
};
use postern_model::{
    ClientId, GatewayId, PresharedKey, PublicKey, RelayId, ResourceAddress, ResourceId, SiteId,
};

use crate::client::{ClientConfig, ClientTunnel};
use crate::effect::{Effect, Input, QueryId};
use crate::gateway::{ClientAddresses, GatewayState, GatewayTunnel, GatewayVerdict};
use crate::packet::Packet;
use crate::role::Role;

const RELAY: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(198, 18, 0, 3)), 3478);
const STRANGER: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(198, 18, 0, 20)), 20000);

pub fn fuzz_one(data: &[u8]) {
    let now = Instant::now();
    fuzz_client(data, now);
    fuzz_gateway(data, now);
    fuzz_gateway_state(data, now);
    let _ = crate::control::decode(data, &[IpAddr::V4(Ipv4Addr::new(100, 64, 0, 1))]);
}

fn resource(id: u128, address: ResourceAddress) -> ResourceDescription {
    ResourceDescription {
        id: ResourceId::from_u128(id),
        name: format!("r{id}"),
        address,
        address_description: None,
        filters: vec![],
        site_id: SiteId::from_u128(2),
    }
}

fn wide_resources() -> Vec<ResourceDescription> {
    let mut resources = vec![
        resource(
            1,
            ResourceAddress::Cidr("0.0.0.0/1".parse().unwrap_or_default()),
        ),
        resource(2, ResourceAddress::Cidr("::/1".parse().unwrap_or_default())),
    ];
    if let Ok(pattern) = "**.corp.test".parse() {
        resources.push(resource(3, ResourceAddress::Dns(pattern)));
    }
    resources
}

fn relays() -> Vec<RelayInfo> {
    vec![RelayInfo {
        id: RelayId::from_u128(4),
        addresses: vec![RELAY],
        username: "1:fuzz".into(),
        password: "x".into(),
        expires_at: Timestamp::UNIX_EPOCH,
        tls: None,
    }]
}

fn interface(last: u8) -> Interface {
    Interface {
        ipv4: Ipv4Addr::new(100, 64, 0, last),
        ipv6: Ipv6Addr::new(0xfd7e, 0x5057, 0x6e00, 0, 0, 0, 0, u16::from(last)),
        dns_upstreams: vec![],
        search_domain: None,
    }
}

fn ice() -> PairIce {
    let side = |tag: &str| IceCredentials {
        username_fragment: format!("{tag}frag"),
        password: format!("{tag}-password-0123456789"),
    };
    PairIce {
        client: side("client"),
        gateway: side("gateway"),
    }
}

/// Every reply a role writes to its apps must parse, and so must every DNS
/// answer.
fn check_outputs(role: &mut impl Role) {
    while let Some(packet) = role.poll_tun_packet() {
        assert!(Packet::parse(&packet).is_ok(), "an unparsable reply");
    }
    while role.poll_transmit().is_some() {}
    while role.poll_portal().is_some() {}
    while let Some(effect) = role.poll_effect() {
        if let Effect::DnsAnswer {
            answer: Some(answer),
            ..
        } = effect
        {
            assert!(
                hickory_proto::op::Message::from_vec(&answer).is_ok(),
                "an unparsable DNS answer"
            );
        }
    }
}

fn fuzz_client(data: &[u8], now: Instant) {
    let local = SocketAddr::from(([10, 0, 0, 2], 51820));
    let mut client = ClientTunnel::new(&[local], [1; 32], 7, ClientConfig::default());
    client.handle_portal(
        PortalToClient::Init {
            interface: interface(2),
            resources: wide_resources(),
            relays: relays(),
        },
        now,
        Timestamp::UNIX_EPOCH,
    );
    let mut out = vec![0u8; 2048];
    for _ in 0..2 {
        let mut packet = data.to_vec();
        client.encapsulate(&mut packet, now, &mut out);
        client.handle_input(
            Input::DnsQuery {
                query: QueryId(1),
                bytes: data.to_vec(),
            },
            now,
        );
        check_outputs(&mut client);
    }
    client.handle_portal(
        PortalToClient::AccessGranted {
            reference: "1".into(),
            resource_id: ResourceId::from_u128(1),
            gateway: Peer {
                id: GatewayId::from_u128(9),
                public_key: PublicKey(crate::wireguard::public_key([2; 32])),
                ipv4: Ipv4Addr::new(100, 64, 0, 1),
                ipv6: Ipv6Addr::LOCALHOST,
            },
            preshared_key: PresharedKey([3; 32]),
            ice: ice(),
            expires_at: None,
        },
        now,
        Timestamp::UNIX_EPOCH,
    );
    client.decapsulate(RELAY, data, now, &mut out);
    client.decapsulate(STRANGER, data, now, &mut out);
    client.handle_timeout(now);
    check_outputs(&mut client);
}

fn fuzz_gateway(data: &[u8], now: Instant) {
    let local = SocketAddr::from(([10, 0, 1, 2], 51820));
    let mut gateway = GatewayTunnel::new(&[local], [2; 32], 8);
    let authorization = Authorization {
        client: Peer {
            id: ClientId::from_u128(5),
            public_key: PublicKey(crate::wireguard::public_key([1; 32])),
            ipv4: Ipv4Addr::new(100, 64, 0, 2),
            ipv6: Ipv6Addr::LOCALHOST,
        },
        resource: wide_resources().remove(0),
        preshared_key: PresharedKey([3; 32]),
        ice: ice(),
        expires_at: None,
    };
    gateway.handle_portal(
        PortalToGateway::Init {
            interface: interface(1),
            relays: relays(),
            authorizations: vec![authorization],
        },
        now,
        Timestamp::UNIX_EPOCH,
    );
    let mut out = vec![0u8; 2048];
    gateway.decapsulate(RELAY, data, now, &mut out);
    gateway.decapsulate(STRANGER, data, now, &mut out);
    let mut packet = data.to_vec();
    gateway.encapsulate(&mut packet, now, &mut out);
    gateway.handle_timeout(now);
    check_outputs(&mut gateway);
}

/// The authorization table and the DNS-resource NAT, past the tunnel.
fn fuzz_gateway_state(data: &[u8], now: Instant) {
    // The gateway trusts the client's addresses to be those of the packet,
    // so the fuzzer reaches past the source check.
    let (ipv4, ipv6) = match Packet::parse(data).map(|p| p.source()) {
        Ok(IpAddr::V4(v4)) => (v4, Ipv6Addr::LOCALHOST),
        Ok(IpAddr::V6(v6)) => (Ipv4Addr::LOCALHOST, v6),
        Err(_) => (Ipv4Addr::LOCALHOST, Ipv6Addr::LOCALHOST),
    };
    let mut state = GatewayState::new();
    let client = ClientId::from_u128(3);
    let mut filtered = wide_resources().remove(0);
    filtered.filters = vec![postern_model::Filter {
        protocol: postern_model::Protocol::Tcp,
        ports: Some(postern_model::PortRange { start: 80, end: 80 }),
    }];
    state.authorize(
        ClientAddresses {
            id: client,
            ipv4,
            ipv6,
        },
        filtered,
        None,
    );
    let mut packet = data.to_vec();
    if let GatewayVerdict::Reply(reply) = state.forward_from_client(client, &mut packet, now) {
        assert!(
            Packet::parse(&reply).is_ok(),
            "the gateway made an unparsable reply"
        );
    }
    let mut nat = crate::nat::ClientNat::default();
    nat.map(
        IpAddr::V4(Ipv4Addr::new(100, 96, 0, 5)),
        IpAddr::V4(Ipv4Addr::new(10, 9, 0, 7)),
    );
    let mut copy = data.to_vec();
    if nat.outbound(&mut copy, now) {
        assert!(
            Packet::parse(&copy).is_ok(),
            "a rewritten packet must parse"
        );
    }
    let mut copy = data.to_vec();
    let _ = nat.inbound(&mut copy, now);
}
