//! The fuzz entry point (crates/tunnel/fuzz): raw bytes as an app's packet
//! into a client and as a tunnel packet into a gateway. Neither may panic,
//! and every ICMP reply either side makes must itself parse.

use std::net::{Ipv4Addr, Ipv6Addr};
use std::time::Instant;

use postern_model::ResourceType;
use postern_model::protocol::ResourceDescription;
use uuid::Uuid;

use crate::client::{ClientConfig, ClientEvent, ClientState, Verdict};
use crate::gateway::{ClientAddresses, GatewayState, GatewayVerdict};
use crate::packet::Packet;

pub fn fuzz_one(data: &[u8]) {
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
}

fn serde_like_tcp_80() -> postern_model::Filter {
    postern_model::Filter {
        protocol: postern_model::Protocol::Tcp,
        ports: Some(postern_model::PortRange { start: 80, end: 80 }),
    }
}
