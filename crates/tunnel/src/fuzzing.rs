//! The fuzz entry point (crates/tunnel/fuzz): raw bytes as an app's packet
//! into a client, as a tunnel packet into a gateway, as datagrams into a
//! node (from its relay and from a peer), and as a query into the DNS stub.
//! Nothing may panic, and every ICMP or DNS reply must itself parse.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Instant;

use postern_model::ResourceType;
use postern_model::protocol::{IceCredentials, ResourceDescription};
use uuid::Uuid;

use crate::client::{ClientConfig, ClientEvent, ClientState, Verdict};
use crate::gateway::{ClientAddresses, GatewayState, GatewayVerdict};
use crate::node::{Node, PeerConfig, RelayConfig};
use crate::packet::Packet;

pub fn fuzz_one(data: &[u8]) {
    fuzz_dns(data);
    let now = Instant::now();
    let everything = ResourceDescription {
        id: Uuid::from_u128(1),
        name: "internet".into(),
        kind: ResourceType::Internet,
        address: None,
        address_description: None,
        filters: vec![],
        site_id: Uuid::from_u128(2),
    };
    let mut client = ClientState::new(ClientConfig::default());
    client.set_resources(vec![everything.clone()]);
    for _ in 0..2 {
        if let Verdict::Reply(reply) = client.handle_packet(data, now) {
            assert!(
                Packet::parse(&reply).is_ok(),
                "the client made an unparsable reply"
            );
        }
    }
    client.access_denied(
        everything.id,
        postern_model::protocol::DenyReason::Offline,
        vec![],
        now,
    );
    while let Some(event) = client.poll_event() {
        if let ClientEvent::Reply(reply) = event {
            assert!(
                Packet::parse(&reply).is_ok(),
                "the client made an unparsable reply"
            );
        }
    }
    // The gateway trusts the client's addresses to be those of the packet,
    // so the fuzzer reaches past the source check.
    let (ipv4, ipv6) = match Packet::parse(data).map(|p| p.source()) {
        Ok(std::net::IpAddr::V4(v4)) => (v4, Ipv6Addr::LOCALHOST),
        Ok(std::net::IpAddr::V6(v6)) => (Ipv4Addr::LOCALHOST, v6),
        Err(_) => (Ipv4Addr::LOCALHOST, Ipv6Addr::LOCALHOST),
    };
    let mut gateway = GatewayState::new();
    let client_id = Uuid::from_u128(3);
    let mut filtered = everything;
    filtered.filters = vec![serde_like_tcp_80()];
    gateway.authorize(
        ClientAddresses {
            id: client_id,
            ipv4,
            ipv6,
        },
        filtered,
        None,
    );
    if let GatewayVerdict::Reply(reply) = gateway.handle_from_client(client_id, data, now) {
        assert!(
            Packet::parse(&reply).is_ok(),
            "the gateway made an unparsable reply"
        );
    }

    // The same bytes as datagrams on a node's socket: from a relay (TURN),
    // and from a peer (STUN, WireGuard, anything).
    let local = SocketAddr::from(([10, 0, 0, 2], 51820));
    let relay = SocketAddr::from(([198, 18, 0, 3], 3478));
    let peer_address = SocketAddr::from(([198, 18, 0, 20], 20000));
    let mut node = Node::new(local, [1; 32], true, 7);
    node.add_relay(
        RelayConfig {
            server: relay,
            username: "1:fuzz".into(),
            password: "x".into(),
        },
        now,
    );
    let credentials = |tag: &str| IceCredentials {
        username_fragment: format!("{tag}frag"),
        password: format!("{tag}-password-0123456789"),
    };
    node.add_peer(
        Uuid::from_u128(9),
        PeerConfig {
            public_key: crate::wireguard::public_key([2; 32]),
            preshared_key: [3; 32],
            local_ice: credentials("local"),
            remote_ice: credentials("remote"),
        },
        now,
    );
    node.handle_datagram(relay, data, now);
    node.handle_datagram(peer_address, data, now);
    node.handle_timeout(now);
    while node.poll_transmit().is_some() {}
    while node.poll_event().is_some() {}

    // And through the DNS-resource NAT, both ways.
    let mut nat = crate::nat::ClientNat::default();
    nat.map(
        std::net::IpAddr::V4(Ipv4Addr::new(100, 96, 0, 5)),
        std::net::IpAddr::V4(Ipv4Addr::new(10, 9, 0, 7)),
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

fn serde_like_tcp_80() -> postern_model::Filter {
    postern_model::Filter {
        protocol: postern_model::Protocol::Tcp,
        ports: Some(postern_model::PortRange { start: 80, end: 80 }),
    }
}

/// The bytes as a query to the DNS stub: any reply must be a DNS message.
fn fuzz_dns(data: &[u8]) {
    let mut stub = crate::dns::DnsStub::new();
    stub.set_resources(&[ResourceDescription {
        id: Uuid::from_u128(3),
        name: "corp".into(),
        kind: ResourceType::Dns,
        address: Some("**.corp.test".into()),
        address_description: None,
        filters: vec![],
        site_id: Uuid::from_u128(2),
    }]);
    for _ in 0..2 {
        if let crate::dns::StubAnswer::Reply(reply) = stub.handle_query(data) {
            assert!(
                hickory_proto::op::Message::from_vec(&reply).is_ok(),
                "the stub made an unparsable reply"
            );
        }
    }
}
