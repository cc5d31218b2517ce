//! (XOR-)address attribute values (RFC 8489 sections 14.1 and 14.2).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use super::{FAMILY_IPV4, FAMILY_IPV6, MAGIC_COOKIE, TransactionId};

/// Decodes a MAPPED-ADDRESS style value.
pub fn decode_address(value: &[u8]) -> Option<SocketAddr> {
    let port = u16::from_be_bytes([*value.get(2)?, *value.get(3)?]);
    match (*value.get(1)?, value.len()) {
        (FAMILY_IPV4, 8) => {
            let ip: [u8; 4] = value[4..8].try_into().ok()?;
            Some(SocketAddr::new(IpAddr::V4(Ipv4Addr::from(ip)), port))
        }
        (FAMILY_IPV6, 20) => {
            let ip: [u8; 16] = value[4..20].try_into().ok()?;
            Some(SocketAddr::new(IpAddr::V6(Ipv6Addr::from(ip)), port))
        }
        _ => None,
    }
}

/// Decodes an XOR-MAPPED-ADDRESS style value.
pub fn decode_xor_address(value: &[u8], transaction: &TransactionId) -> Option<SocketAddr> {
    let plain = decode_address(value)?;
    let port = plain.port() ^ (MAGIC_COOKIE >> 16) as u16;
    let ip = match plain.ip() {
        IpAddr::V4(v4) => IpAddr::V4(Ipv4Addr::from(u32::from(v4) ^ MAGIC_COOKIE)),
        IpAddr::V6(v6) => IpAddr::V6(Ipv6Addr::from(u128::from(v6) ^ xor_key_v6(transaction))),
    };
    Some(SocketAddr::new(ip, port))
}

/// Encodes an XOR address value into `out` (8 or 20 bytes); returns its length.
pub fn encode_xor_address(
    addr: SocketAddr,
    transaction: &TransactionId,
    out: &mut [u8; 20],
) -> usize {
    let port = addr.port() ^ (MAGIC_COOKIE >> 16) as u16;
    out[0] = 0;
    out[2..4].copy_from_slice(&port.to_be_bytes());
    match addr.ip() {
        IpAddr::V4(v4) => {
            out[1] = FAMILY_IPV4;
            out[4..8].copy_from_slice(&(u32::from(v4) ^ MAGIC_COOKIE).to_be_bytes());
            8
        }
        IpAddr::V6(v6) => {
            out[1] = FAMILY_IPV6;
            out[4..20].copy_from_slice(&(u128::from(v6) ^ xor_key_v6(transaction)).to_be_bytes());
            20
        }
    }
}

/// Encodes a plain (non-XOR) address value; returns its length.
pub fn encode_address(addr: SocketAddr, out: &mut [u8; 20]) -> usize {
    out[0] = 0;
    out[2..4].copy_from_slice(&addr.port().to_be_bytes());
    match addr.ip() {
        IpAddr::V4(v4) => {
            out[1] = FAMILY_IPV4;
            out[4..8].copy_from_slice(&v4.octets());
            8
        }
        IpAddr::V6(v6) => {
            out[1] = FAMILY_IPV6;
            out[4..20].copy_from_slice(&v6.octets());
            20
        }
    }
}

fn xor_key_v6(transaction: &TransactionId) -> u128 {
    let mut key = [0u8; 16];
    key[..4].copy_from_slice(&MAGIC_COOKIE.to_be_bytes());
    key[4..].copy_from_slice(transaction);
    u128::from_be_bytes(key)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn xor_addresses_round_trip_and_match_rfc5769() {
        // RFC 5769 section 2.2: 192.0.2.1:32853 XORed.
        let tid = [
            0xb7, 0xe7, 0xa7, 0x01, 0xbc, 0x34, 0xd6, 0x86, 0xfa, 0x87, 0xdf, 0xae,
        ];
        let value = [0x00, 0x01, 0xa1, 0x47, 0xe1, 0x12, 0xa6, 0x43];
        assert_eq!(
            decode_xor_address(&value, &tid),
            Some("192.0.2.1:32853".parse().unwrap())
        );
        for text in [
            "198.18.0.3:3478",
            "[2001:db8:1234:5678:11:2233:4455:6677]:32853",
        ] {
            let addr: SocketAddr = text.parse().unwrap();
            let mut out = [0u8; 20];
            let n = encode_xor_address(addr, &tid, &mut out);
            assert_eq!(decode_xor_address(&out[..n], &tid), Some(addr));
            let n = encode_address(addr, &mut out);
            assert_eq!(decode_address(&out[..n]), Some(addr));
        }
        assert_eq!(decode_address(&[0, 1, 0, 1, 1, 2, 3]), None, "short");
        assert_eq!(
            decode_address(&[0, 3, 0, 1, 1, 2, 3, 4]),
            None,
            "bad family"
        );
        assert_eq!(
            decode_address(&[0, 2, 0, 1, 1, 2, 3, 4]),
            None,
            "v6 family, v4 length"
        );
    }
}
