//! Messages between a gateway and its client inside their tunnel
//! (docs/architecture.md, control protocol): UDP between the two tunnel
//! addresses on a reserved port, typed and versioned.
//!
//! - goodbye: a gateway that is stopping tells its clients, so they ask the
//!   portal for another gateway at once instead of waiting out the liveness
//!   timeout (F20);
//! - assign proxies / assigned: the client's DNS stub handed out proxy
//!   addresses for a name of a DNS resource; the gateway resolves the name
//!   itself and maps the proxies to what it found (F24), then says how that
//!   went;
//! - DNS query / answer: other questions about a resource's names (MX,
//!   SRV, TXT...) go to the gateway's resolver through the tunnel, never
//!   to the client's upstream.
//!
//! Payload: `PSTN`, version 1, a type byte, then the type's body (JSON, or
//! for DNS the resource id and the raw message). A receiver ignores versions
//! and types it does not know.

use std::net::{IpAddr, Ipv4Addr};

use postern_model::ResourceId;
use serde::{Deserialize, Serialize};

use crate::icmp::checksum;
use crate::packet::Packet;

/// UDP port on tunnel addresses reserved for these messages. Tunnel
/// addresses are never resources, so nothing else uses it.
pub const CONTROL_PORT: u16 = 51821;
const MAGIC: &[u8; 4] = b"PSTN";
const VERSION: u8 = 1;
const IPPROTO_UDP: u8 = 17;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TunnelMessage {
    /// The gateway is stopping: move elsewhere now.
    Goodbye,
    /// Client -> gateway: `proxies` stand for `name` of `resource`.
    AssignProxies(ProxyAssignment),
    /// Gateway -> client: how many proxies got an address, or why none.
    Assigned(AssignmentResult),
    /// Client -> gateway: a DNS query about a name of `resource`.
    DnsQuery {
        resource: ResourceId,
        query: Vec<u8>,
    },
    /// Gateway -> client: the answer (same DNS id as the query).
    DnsAnswer { answer: Vec<u8> },
}

/// The largest DNS message carried: the packet must fit the tunnel MTU.
pub const MAX_DNS_MESSAGE: usize = 1180;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProxyAssignment {
    pub resource: ResourceId,
    pub name: String,
    pub proxies: Vec<IpAddr>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AssignmentResult {
    pub resource: ResourceId,
    pub name: String,
    pub mapped: usize,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl TunnelMessage {
    fn code(&self) -> u8 {
        match self {
            TunnelMessage::Goodbye => 1,
            TunnelMessage::AssignProxies(_) => 2,
            TunnelMessage::Assigned(_) => 3,
            TunnelMessage::DnsQuery { .. } => 4,
            TunnelMessage::DnsAnswer { .. } => 5,
        }
    }

    fn body(&self) -> Vec<u8> {
        let body = match self {
            TunnelMessage::Goodbye => return Vec::new(),
            TunnelMessage::AssignProxies(assignment) => serde_json::to_vec(assignment),
            TunnelMessage::Assigned(result) => serde_json::to_vec(result),
            TunnelMessage::DnsQuery { resource, query } => {
                let mut body = resource.0.as_bytes().to_vec();
                body.extend_from_slice(query);
                return body;
            }
            TunnelMessage::DnsAnswer { answer } => return answer.clone(),
        };
        body.unwrap_or_default()
    }
}

/// The IPv4 packet carrying `message` from `from` to `to` (tunnel addresses).
pub fn encode(message: &TunnelMessage, from: Ipv4Addr, to: Ipv4Addr) -> Vec<u8> {
    let mut payload = Vec::with_capacity(64);
    payload.extend_from_slice(MAGIC);
    payload.extend_from_slice(&[VERSION, message.code()]);
    payload.extend_from_slice(&message.body());
    let udp_length = 8 + payload.len();
    let total = 20 + udp_length;
    let mut packet = Vec::with_capacity(total);
    packet.extend_from_slice(&[0x45, 0]);
    packet.extend_from_slice(&(total as u16).to_be_bytes());
    packet.extend_from_slice(&[0, 0, 0x40, 0, 64, IPPROTO_UDP, 0, 0]);
    packet.extend_from_slice(&from.octets());
    packet.extend_from_slice(&to.octets());
    let header = checksum(&[&packet[..20]]);
    packet[10..12].copy_from_slice(&header.to_be_bytes());
    packet.extend_from_slice(&CONTROL_PORT.to_be_bytes());
    packet.extend_from_slice(&CONTROL_PORT.to_be_bytes());
    packet.extend_from_slice(&(udp_length as u16).to_be_bytes());
    packet.extend_from_slice(&[0, 0]);
    packet.extend_from_slice(&payload);
    let pseudo = [
        &from.octets()[..],
        &to.octets()[..],
        &[0, IPPROTO_UDP],
        &(udp_length as u16).to_be_bytes()[..],
        &packet[20..],
    ];
    let sum = match checksum(&pseudo) {
        // UDP sends an all-zero checksum as all ones.
        0 => 0xffff,
        sum => sum,
    };
    packet[26..28].copy_from_slice(&sum.to_be_bytes());
    packet
}

/// The message in a packet that came through the tunnel from a peer whose
/// tunnel addresses are `peer`, if it is one.
pub fn decode(bytes: &[u8], peer: &[IpAddr]) -> Option<TunnelMessage> {
    let packet = Packet::parse(bytes).ok()?;
    if packet.protocol() != IPPROTO_UDP
        || packet.ports() != Some((CONTROL_PORT, CONTROL_PORT))
        || !peer.contains(&packet.source())
    {
        return None;
    }
    let offset = packet.transport_offset()? + 8;
    let payload = bytes.get(offset..)?;
    if payload.len() < 6 || &payload[..4] != MAGIC || payload[4] != VERSION {
        return None;
    }
    let body = &payload[6..];
    match payload[5] {
        1 => Some(TunnelMessage::Goodbye),
        2 => serde_json::from_slice(body)
            .ok()
            .map(TunnelMessage::AssignProxies),
        3 => serde_json::from_slice(body)
            .ok()
            .map(TunnelMessage::Assigned),
        4 if body.len() > 16 => Some(TunnelMessage::DnsQuery {
            resource: ResourceId(uuid::Uuid::from_slice(&body[..16]).ok()?),
            query: body[16..].to_vec(),
        }),
        5 if body.len() >= 12 => Some(TunnelMessage::DnsAnswer {
            answer: body.to_vec(),
        }),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GATEWAY: Ipv4Addr = Ipv4Addr::new(100, 64, 0, 1);
    const CLIENT: Ipv4Addr = Ipv4Addr::new(100, 64, 0, 2);

    #[test]
    fn a_goodbye_round_trips_and_checks_out() {
        let packet = encode(&TunnelMessage::Goodbye, GATEWAY, CLIENT);
        assert_eq!(checksum(&[&packet[..20]]), 0, "IPv4 header checksum");
        let pseudo = [
            &GATEWAY.octets()[..],
            &CLIENT.octets()[..],
            &[0, IPPROTO_UDP],
            &((packet.len() - 20) as u16).to_be_bytes()[..],
            &packet[20..],
        ];
        assert_eq!(checksum(&pseudo), 0, "UDP checksum");
        assert_eq!(
            decode(&packet, &[IpAddr::V4(GATEWAY)]),
            Some(TunnelMessage::Goodbye)
        );
    }

    #[test]
    fn assignments_and_results_round_trip() {
        let assignment = TunnelMessage::AssignProxies(ProxyAssignment {
            resource: ResourceId::from_u128(5),
            name: "web.apps.corp.test".into(),
            proxies: vec![
                "100.96.0.1".parse().unwrap(),
                "fd7e:5057:6e00:8000::1".parse().unwrap(),
            ],
        });
        let packet = encode(&assignment, CLIENT, GATEWAY);
        assert!(packet.len() < 1280, "fits the tunnel MTU");
        assert_eq!(decode(&packet, &[IpAddr::V4(CLIENT)]), Some(assignment));
        let result = TunnelMessage::Assigned(AssignmentResult {
            resource: ResourceId::from_u128(5),
            name: "web.apps.corp.test".into(),
            mapped: 0,
            error: Some("NXDOMAIN".into()),
        });
        let packet = encode(&result, GATEWAY, CLIENT);
        assert_eq!(decode(&packet, &[IpAddr::V4(GATEWAY)]), Some(result));
        let query = TunnelMessage::DnsQuery {
            resource: ResourceId::from_u128(5),
            query: vec![0x12, 0x34, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 15, 0, 1],
        };
        let packet = encode(&query, CLIENT, GATEWAY);
        assert_eq!(decode(&packet, &[IpAddr::V4(CLIENT)]), Some(query));
        let answer = TunnelMessage::DnsAnswer {
            answer: vec![0x12, 0x34, 0x81, 0x80, 0, 1, 0, 0, 0, 0, 0, 0, 0],
        };
        let packet = encode(&answer, GATEWAY, CLIENT);
        assert_eq!(decode(&packet, &[IpAddr::V4(GATEWAY)]), Some(answer));
        // A body that is not what the type says: ignored.
        let mut broken = encode(&TunnelMessage::Goodbye, CLIENT, GATEWAY);
        let last = broken.len() - 1;
        broken[last] = 2;
        assert_eq!(decode(&broken, &[IpAddr::V4(CLIENT)]), None);
    }

    #[test]
    fn only_the_peer_may_say_goodbye_and_only_in_this_format() {
        let packet = encode(&TunnelMessage::Goodbye, GATEWAY, CLIENT);
        // From another address: an app could send this; it is not the gateway.
        assert_eq!(decode(&packet, &[IpAddr::V4(CLIENT)]), None);
        let mut other_version = packet.clone();
        let last = other_version.len() - 2;
        other_version[last] = 2;
        assert_eq!(decode(&other_version, &[IpAddr::V4(GATEWAY)]), None);
        let mut unknown = packet.clone();
        let last = unknown.len() - 1;
        unknown[last] = 99;
        assert_eq!(decode(&unknown, &[IpAddr::V4(GATEWAY)]), None);
        for cut in 0..packet.len() {
            assert_eq!(decode(&packet[..cut], &[IpAddr::V4(GATEWAY)]), None);
        }
    }
}
