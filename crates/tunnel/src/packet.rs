//! A zero-copy view of the IP packets the tunnel carries: version, addresses,
//! the transport protocol and, for TCP/UDP, the destination port. Written by
//! hand because it runs for every packet and needs none of a general parser's
//! allocation or breadth; every length is checked before it is read, so
//! hostile bytes give an error, never a panic.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use postern_model::filter::{IPPROTO_ICMP, IPPROTO_ICMPV6, IPPROTO_TCP, IPPROTO_UDP};

/// IPv6 extension headers the parser walks past to find the transport.
const HOP_BY_HOP: u8 = 0;
const ROUTING: u8 = 43;
const FRAGMENT: u8 = 44;
const DESTINATION_OPTIONS: u8 = 60;
/// More than this many extension headers is an attack, not a packet.
const MAX_EXTENSION_HEADERS: usize = 8;

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PacketError {
    #[error("empty packet")]
    Empty,
    #[error("IP version {0} is neither 4 nor 6")]
    Version(u8),
    #[error("packet shorter than its headers")]
    Truncated,
    #[error("header length field is invalid")]
    BadHeaderLength,
    #[error("too many IPv6 extension headers")]
    TooManyExtensions,
}

/// A parsed packet borrowing its bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Packet<'a> {
    bytes: &'a [u8],
    source: IpAddr,
    destination: IpAddr,
    protocol: u8,
    /// Where the transport header starts, if this packet carries it (a
    /// non-first fragment does not).
    transport: Option<usize>,
    /// An IPv6 routing header: the packet names further hops itself.
    routed: bool,
}

impl<'a> Packet<'a> {
    pub fn parse(bytes: &'a [u8]) -> Result<Packet<'a>, PacketError> {
        let first = *bytes.first().ok_or(PacketError::Empty)?;
        match first >> 4 {
            4 => parse_v4(bytes),
            6 => parse_v6(bytes),
            other => Err(PacketError::Version(other)),
        }
    }

    pub fn bytes(&self) -> &'a [u8] {
        self.bytes
    }

    pub fn source(&self) -> IpAddr {
        self.source
    }

    pub fn destination(&self) -> IpAddr {
        self.destination
    }

    /// The transport protocol number (6 TCP, 17 UDP, 1 ICMP, 58 ICMPv6...).
    pub fn protocol(&self) -> u8 {
        self.protocol
    }

    /// The destination port of a TCP or UDP packet that carries its header.
    pub fn destination_port(&self) -> Option<u16> {
        if !matches!(self.protocol, IPPROTO_TCP | IPPROTO_UDP) {
            return None;
        }
        let at = self.transport?;
        let port = self.bytes.get(at + 2..at + 4)?;
        Some(u16::from_be_bytes([port[0], port[1]]))
    }

    /// Where the transport header starts (absent in non-first fragments).
    pub fn transport_offset(&self) -> Option<usize> {
        self.transport
    }

    /// (source, destination) ports of TCP/UDP, or the identifier twice for
    /// ICMP echo request/reply: what tells flows apart.
    pub fn ports(&self) -> Option<(u16, u16)> {
        let at = self.transport?;
        match self.protocol {
            IPPROTO_TCP | IPPROTO_UDP => {
                let ports = self.bytes.get(at..at + 4)?;
                Some((
                    u16::from_be_bytes([ports[0], ports[1]]),
                    u16::from_be_bytes([ports[2], ports[3]]),
                ))
            }
            IPPROTO_ICMP | IPPROTO_ICMPV6 => {
                let kind = *self.bytes.get(at)?;
                let echo = matches!(kind, 0 | 8 | 128 | 129);
                let id = self.bytes.get(at + 4..at + 6)?;
                echo.then(|| {
                    let id = u16::from_be_bytes([id[0], id[1]]);
                    (id, id)
                })
            }
            _ => None,
        }
    }

    /// A TCP segment's flags byte (FIN 0x01, SYN 0x02, RST 0x04, ...).
    pub fn tcp_flags(&self) -> Option<u8> {
        if self.protocol != IPPROTO_TCP {
            return None;
        }
        self.bytes.get(self.transport? + 13).copied()
    }

    /// Parses the packet an ICMP error quotes: usually cut short, so only the
    /// IP header must be whole.
    pub fn parse_quoted(bytes: &'a [u8]) -> Result<Packet<'a>, PacketError> {
        let first = *bytes.first().ok_or(PacketError::Empty)?;
        let needed = match first >> 4 {
            4 => 20,
            6 => 40,
            other => return Err(PacketError::Version(other)),
        };
        if bytes.len() < needed {
            return Err(PacketError::Truncated);
        }
        let address = |at: usize, len: usize| -> IpAddr {
            if len == 4 {
                IpAddr::V4(Ipv4Addr::new(
                    bytes[at],
                    bytes[at + 1],
                    bytes[at + 2],
                    bytes[at + 3],
                ))
            } else {
                let mut octets = [0u8; 16];
                octets.copy_from_slice(&bytes[at..at + 16]);
                IpAddr::V6(Ipv6Addr::from(octets))
            }
        };
        let (source, destination, protocol, transport) = if needed == 20 {
            let header = usize::from(bytes[0] & 0x0f) * 4;
            (address(12, 4), address(16, 4), bytes[9], Some(header))
        } else {
            (address(8, 16), address(24, 16), bytes[6], Some(40))
        };
        Ok(Packet {
            bytes,
            source,
            destination,
            protocol,
            transport,
            routed: false,
        })
    }

    /// Whether an IPv6 packet carries a routing header: a gateway never
    /// forwards one (a host that processes segment routing would bounce it
    /// past the destination the gateway checked; no client needs one).
    pub fn has_routing_header(&self) -> bool {
        self.routed
    }

    /// The ICMP or ICMPv6 type, if this is one.
    pub fn icmp_type(&self) -> Option<u8> {
        if !matches!(self.protocol, IPPROTO_ICMP | IPPROTO_ICMPV6) {
            return None;
        }
        self.bytes.get(self.transport?).copied()
    }

    /// Whether this is an ICMP error message (which must never be answered
    /// with another ICMP error, RFC 1122 3.2.2 / RFC 4443 2.4).
    pub fn is_icmp_error(&self) -> bool {
        match (self.protocol, self.icmp_type()) {
            (IPPROTO_ICMP, Some(t)) => matches!(t, 3 | 4 | 5 | 11 | 12),
            (IPPROTO_ICMPV6, Some(t)) => t < 128,
            _ => false,
        }
    }
}

fn parse_v4(bytes: &[u8]) -> Result<Packet<'_>, PacketError> {
    if bytes.len() < 20 {
        return Err(PacketError::Truncated);
    }
    let header_length = usize::from(bytes[0] & 0x0f) * 4;
    if header_length < 20 {
        return Err(PacketError::BadHeaderLength);
    }
    let total_length = usize::from(u16::from_be_bytes([bytes[2], bytes[3]]));
    if total_length < header_length || bytes.len() < total_length.max(header_length) {
        return Err(PacketError::Truncated);
    }
    let fragment_offset = u16::from_be_bytes([bytes[6], bytes[7]]) & 0x1fff;
    let source = Ipv4Addr::new(bytes[12], bytes[13], bytes[14], bytes[15]);
    let destination = Ipv4Addr::new(bytes[16], bytes[17], bytes[18], bytes[19]);
    Ok(Packet {
        bytes: &bytes[..total_length],
        source: IpAddr::V4(source),
        destination: IpAddr::V4(destination),
        protocol: bytes[9],
        transport: (fragment_offset == 0).then_some(header_length),
        routed: false,
    })
}

fn parse_v6(bytes: &[u8]) -> Result<Packet<'_>, PacketError> {
    if bytes.len() < 40 {
        return Err(PacketError::Truncated);
    }
    let payload_length = usize::from(u16::from_be_bytes([bytes[4], bytes[5]]));
    let total = 40 + payload_length;
    if bytes.len() < total {
        return Err(PacketError::Truncated);
    }
    let bytes = &bytes[..total];
    let address = |at: usize| {
        let mut octets = [0u8; 16];
        octets.copy_from_slice(&bytes[at..at + 16]);
        Ipv6Addr::from(octets)
    };
    let mut next = bytes[6];
    let mut at = 40;
    let mut transport = Some(at);
    let mut routed = false;
    for _ in 0..=MAX_EXTENSION_HEADERS {
        match next {
            HOP_BY_HOP | ROUTING | DESTINATION_OPTIONS => {
                routed |= next == ROUTING;
                let header = bytes.get(at..at + 2).ok_or(PacketError::Truncated)?;
                next = header[0];
                at += (usize::from(header[1]) + 1) * 8;
            }
            FRAGMENT => {
                let header = bytes.get(at..at + 8).ok_or(PacketError::Truncated)?;
                next = header[0];
                let offset = u16::from_be_bytes([header[2], header[3]]) >> 3;
                at += 8;
                if offset != 0 {
                    transport = None;
                }
            }
            _ => {
                if at > bytes.len() {
                    return Err(PacketError::Truncated);
                }
                return Ok(Packet {
                    bytes,
                    source: IpAddr::V6(address(8)),
                    destination: IpAddr::V6(address(24)),
                    protocol: next,
                    transport: transport.map(|_| at),
                    routed,
                });
            }
        }
    }
    Err(PacketError::TooManyExtensions)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A minimal IPv4 packet with a transport header of `protocol`.
    pub(crate) fn v4(source: [u8; 4], destination: [u8; 4], protocol: u8, port: u16) -> Vec<u8> {
        let mut packet = vec![0u8; 28];
        packet[0] = 0x45;
        packet[2..4].copy_from_slice(&28u16.to_be_bytes());
        packet[8] = 64;
        packet[9] = protocol;
        packet[12..16].copy_from_slice(&source);
        packet[16..20].copy_from_slice(&destination);
        packet[20..22].copy_from_slice(&40000u16.to_be_bytes());
        packet[22..24].copy_from_slice(&port.to_be_bytes());
        if protocol == IPPROTO_ICMP {
            packet[20] = 8; // echo request
        }
        packet
    }

    /// A minimal IPv6 packet with a transport header of `protocol`.
    pub(crate) fn v6(source: Ipv6Addr, destination: Ipv6Addr, protocol: u8, port: u16) -> Vec<u8> {
        let mut packet = vec![0u8; 48];
        packet[0] = 0x60;
        packet[4..6].copy_from_slice(&8u16.to_be_bytes());
        packet[6] = protocol;
        packet[7] = 64;
        packet[8..24].copy_from_slice(&source.octets());
        packet[24..40].copy_from_slice(&destination.octets());
        packet[40..42].copy_from_slice(&40000u16.to_be_bytes());
        packet[42..44].copy_from_slice(&port.to_be_bytes());
        if protocol == IPPROTO_ICMPV6 {
            packet[40] = 128; // echo request
        }
        packet
    }

    #[test]
    fn an_ipv6_routing_header_is_noticed() {
        let mut bytes = v6(
            "fd00::1".parse().unwrap(),
            "2001:db8::2".parse().unwrap(),
            ROUTING,
            0,
        );
        // A routing header of 8 bytes, then UDP.
        bytes[4..6].copy_from_slice(&16u16.to_be_bytes());
        bytes.truncate(40);
        bytes.extend_from_slice(&[IPPROTO_UDP, 0, 4, 0, 0, 0, 0, 0]);
        bytes.extend_from_slice(&[0x9c, 0x40, 0, 53, 0, 8, 0, 0]);
        let packet = Packet::parse(&bytes).unwrap();
        assert!(packet.has_routing_header());
        assert_eq!(packet.destination_port(), Some(53));
        let plain = v6(
            "fd00::1".parse().unwrap(),
            "2001:db8::2".parse().unwrap(),
            IPPROTO_UDP,
            53,
        );
        assert!(!Packet::parse(&plain).unwrap().has_routing_header());
    }

    #[test]
    fn parses_v4_and_v6_transport() {
        let bytes = v4([10, 0, 0, 1], [10, 0, 0, 2], IPPROTO_TCP, 443);
        let packet = Packet::parse(&bytes).unwrap();
        assert_eq!(packet.source(), "10.0.0.1".parse::<IpAddr>().unwrap());
        assert_eq!(packet.destination_port(), Some(443));
        assert!(!packet.is_icmp_error());
        let bytes = v6(
            "fd00::1".parse().unwrap(),
            "2001:db8::2".parse().unwrap(),
            IPPROTO_UDP,
            53,
        );
        let packet = Packet::parse(&bytes).unwrap();
        assert_eq!(
            packet.destination(),
            "2001:db8::2".parse::<IpAddr>().unwrap()
        );
        assert_eq!(packet.destination_port(), Some(53));
        let ping = v6(
            "fd00::1".parse().unwrap(),
            "2001:db8::2".parse().unwrap(),
            IPPROTO_ICMPV6,
            0,
        );
        assert_eq!(Packet::parse(&ping).unwrap().icmp_type(), Some(128));
    }

    #[test]
    fn non_first_fragments_have_no_ports() {
        let mut bytes = v4([10, 0, 0, 1], [10, 0, 0, 2], IPPROTO_UDP, 53);
        bytes[6..8].copy_from_slice(&185u16.to_be_bytes());
        assert_eq!(Packet::parse(&bytes).unwrap().destination_port(), None);
    }

    #[test]
    fn v6_extension_headers_are_walked() {
        let mut bytes = vec![0u8; 56];
        bytes[0] = 0x60;
        bytes[4..6].copy_from_slice(&16u16.to_be_bytes());
        bytes[6] = HOP_BY_HOP;
        bytes[40] = IPPROTO_UDP; // next header after hop-by-hop
        bytes[41] = 0; // 8 bytes long
        bytes[50..52].copy_from_slice(&5353u16.to_be_bytes());
        let packet = Packet::parse(&bytes).unwrap();
        assert_eq!(packet.protocol(), IPPROTO_UDP);
        assert_eq!(packet.destination_port(), Some(5353));
    }

    #[test]
    fn bad_packets_are_errors() {
        assert_eq!(Packet::parse(&[]), Err(PacketError::Empty));
        assert_eq!(Packet::parse(&[0x50]), Err(PacketError::Version(5)));
        assert_eq!(Packet::parse(&[0x45; 10]), Err(PacketError::Truncated));
        let mut short_header = v4([1, 1, 1, 1], [2, 2, 2, 2], IPPROTO_TCP, 1);
        short_header[0] = 0x44;
        assert_eq!(
            Packet::parse(&short_header),
            Err(PacketError::BadHeaderLength)
        );
        let mut lying_length = v4([1, 1, 1, 1], [2, 2, 2, 2], IPPROTO_TCP, 1);
        lying_length[2..4].copy_from_slice(&2000u16.to_be_bytes());
        assert_eq!(Packet::parse(&lying_length), Err(PacketError::Truncated));
        // A port past the end of a truncated transport header is absent.
        let mut tiny = v4([1, 1, 1, 1], [2, 2, 2, 2], IPPROTO_TCP, 1);
        tiny[2..4].copy_from_slice(&21u16.to_be_bytes());
        assert_eq!(Packet::parse(&tiny).unwrap().destination_port(), None);
    }
}
