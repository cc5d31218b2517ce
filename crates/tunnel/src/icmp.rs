//! ICMP "destination unreachable" replies to the app that sent a packet the
//! tunnel will not carry (SPEC F12, F16): administratively prohibited for a
//! filter or a denial, host unreachable when no gateway can be had. The reply
//! appears to come from the destination, quotes the packet as RFC 792/4443
//! ask (within the minimum MTU), and is never sent for an ICMP error.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use postern_model::filter::{IPPROTO_ICMP, IPPROTO_ICMPV6};

use crate::packet::Packet;

/// Why a packet is refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unreachable {
    /// A policy or filter forbids it (ICMP 3/13, ICMPv6 1/1).
    Prohibited,
    /// Nothing can carry it now (ICMP 3/1, ICMPv6 1/3).
    Host,
}

/// IPv4 replies stay within the 576 bytes every host accepts.
const MAX_V4_REPLY: usize = 576;
/// IPv6 replies stay within the minimum MTU (RFC 4443 2.4 (c)).
const MAX_V6_REPLY: usize = 1280;

/// The reply to send back to the sender of `packet`, or `None` if it must
/// not get one (it is an ICMP error itself).
pub fn unreachable(packet: &Packet<'_>, why: Unreachable) -> Option<Vec<u8>> {
    if packet.is_icmp_error() {
        return None;
    }
    match (packet.source(), packet.destination()) {
        (IpAddr::V4(source), IpAddr::V4(destination)) => {
            Some(reply_v4(packet.bytes(), destination, source, why))
        }
        (IpAddr::V6(source), IpAddr::V6(destination)) => {
            Some(reply_v6(packet.bytes(), destination, source, why))
        }
        _ => None,
    }
}

fn reply_v4(original: &[u8], from: Ipv4Addr, to: Ipv4Addr, why: Unreachable) -> Vec<u8> {
    let quoted = &original[..original.len().min(MAX_V4_REPLY - 28)];
    let total = 28 + quoted.len();
    let mut reply = Vec::with_capacity(total);
    reply.extend_from_slice(&[0x45, 0]);
    reply.extend_from_slice(&(total as u16).to_be_bytes());
    reply.extend_from_slice(&[0, 0, 0, 0, 64, IPPROTO_ICMP, 0, 0]);
    reply.extend_from_slice(&from.octets());
    reply.extend_from_slice(&to.octets());
    let header_checksum = checksum(&[&reply[..20]]);
    reply[10..12].copy_from_slice(&header_checksum.to_be_bytes());
    let code = match why {
        Unreachable::Prohibited => 13,
        Unreachable::Host => 1,
    };
    reply.extend_from_slice(&[3, code, 0, 0, 0, 0, 0, 0]);
    reply.extend_from_slice(quoted);
    let icmp_checksum = checksum(&[&reply[20..]]);
    reply[22..24].copy_from_slice(&icmp_checksum.to_be_bytes());
    reply
}

fn reply_v6(original: &[u8], from: Ipv6Addr, to: Ipv6Addr, why: Unreachable) -> Vec<u8> {
    let quoted = &original[..original.len().min(MAX_V6_REPLY - 48)];
    let payload = 8 + quoted.len();
    let mut reply = Vec::with_capacity(40 + payload);
    reply.extend_from_slice(&[0x60, 0, 0, 0]);
    reply.extend_from_slice(&(payload as u16).to_be_bytes());
    reply.extend_from_slice(&[IPPROTO_ICMPV6, 64]);
    reply.extend_from_slice(&from.octets());
    reply.extend_from_slice(&to.octets());
    let code = match why {
        Unreachable::Prohibited => 1,
        Unreachable::Host => 3,
    };
    reply.extend_from_slice(&[1, code, 0, 0, 0, 0, 0, 0]);
    reply.extend_from_slice(quoted);
    let pseudo_length = (payload as u32).to_be_bytes();
    let pseudo_tail = [0, 0, 0, IPPROTO_ICMPV6];
    let sum = checksum(&[&reply[8..40], &pseudo_length, &pseudo_tail, &reply[40..]]);
    reply[42..44].copy_from_slice(&sum.to_be_bytes());
    reply
}

/// The Internet checksum (RFC 1071) over the concatenation of `parts`.
pub fn checksum(parts: &[&[u8]]) -> u16 {
    let mut sum: u32 = 0;
    let mut odd: Option<u8> = None;
    for part in parts {
        for &byte in *part {
            match odd.take() {
                Some(high) => sum += u32::from(u16::from_be_bytes([high, byte])),
                None => odd = Some(byte),
            }
        }
    }
    if let Some(high) = odd {
        sum += u32::from(u16::from_be_bytes([high, 0]));
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::packet::tests::{v4, v6};
    use postern_model::filter::IPPROTO_TCP;

    #[test]
    fn v4_reply_is_well_formed() {
        let bytes = v4([100, 64, 0, 5], [10, 0, 0, 9], IPPROTO_TCP, 22);
        let reply = unreachable(&Packet::parse(&bytes).unwrap(), Unreachable::Prohibited).unwrap();
        let parsed = Packet::parse(&reply).unwrap();
        assert_eq!(parsed.source(), "10.0.0.9".parse::<IpAddr>().unwrap());
        assert_eq!(
            parsed.destination(),
            "100.64.0.5".parse::<IpAddr>().unwrap()
        );
        assert_eq!((reply[20], reply[21]), (3, 13));
        assert_eq!(checksum(&[&reply[..20]]), 0, "header checksum verifies");
        assert_eq!(checksum(&[&reply[20..]]), 0, "ICMP checksum verifies");
        assert_eq!(&reply[28..], &bytes[..], "the packet is quoted");
        assert!(parsed.is_icmp_error());
        // Never an error about an error.
        assert_eq!(unreachable(&parsed, Unreachable::Host), None);
    }

    #[test]
    fn v6_reply_is_well_formed_and_bounded() {
        let source: Ipv6Addr = "fd7e:5057:6e00::5".parse().unwrap();
        let destination: Ipv6Addr = "2001:db8::9".parse().unwrap();
        let mut bytes = v6(source, destination, IPPROTO_TCP, 22);
        // A big packet: the quote is cut to fit 1280 bytes.
        bytes.resize(1500, 7);
        bytes[4..6].copy_from_slice(&((1500 - 40) as u16).to_be_bytes());
        let reply = unreachable(&Packet::parse(&bytes).unwrap(), Unreachable::Host).unwrap();
        assert_eq!(reply.len(), 1280);
        let parsed = Packet::parse(&reply).unwrap();
        assert_eq!(parsed.destination(), IpAddr::V6(source));
        assert_eq!((reply[40], reply[41]), (1, 3));
        let length = ((reply.len() - 40) as u32).to_be_bytes();
        let sum = checksum(&[
            &reply[8..40],
            &length,
            &[0, 0, 0, IPPROTO_ICMPV6],
            &reply[40..],
        ]);
        assert_eq!(sum, 0, "ICMPv6 checksum verifies");
    }
}
