//! Where a gateway never sends a client's packet (SPEC 7.1), whatever the
//! client is authorized for: loopback, link-local (so no cloud metadata at
//! 169.254.169.254), multicast, unspecified and broadcast addresses, the
//! gateway's own addresses (its tunnel addresses and its host's), and
//! Postern's own ranges (other clients' tunnel addresses, proxy addresses).
//! The same holds for the addresses a DNS resource's name resolves to: a
//! dangling record must not open the gateway host. Only an admin naming
//! that exact address as an IP resource lifts it.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use postern_model::plan;

/// Whether `address` is one the gateway never forwards to (`own`: the
/// gateway's addresses).
pub fn never_forwarded(address: IpAddr, own: &[IpAddr]) -> bool {
    // ::ffff:a.b.c.d reaches a.b.c.d on a dual-stack host.
    let address = match address {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
        v4 => v4,
    };
    if own.contains(&address) || plan::is_reserved(address) {
        return true;
    }
    match address {
        IpAddr::V4(v4) => forbidden_v4(v4),
        IpAddr::V6(v6) => forbidden_v6(v6),
    }
}

fn forbidden_v4(v4: Ipv4Addr) -> bool {
    v4.is_loopback()
        || v4.is_link_local()
        || v4.is_multicast()
        || v4.is_unspecified()
        || v4.is_broadcast()
        // 0.0.0.0/8: "this network", never a destination.
        || v4.octets()[0] == 0
}

fn forbidden_v6(v6: Ipv6Addr) -> bool {
    v6.is_loopback() || v6.is_multicast() || v6.is_unspecified() || v6.is_unicast_link_local()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_gateway_host_metadata_and_postern_itself_are_off_limits() {
        let own: [IpAddr; 2] = [
            "10.0.1.2".parse().unwrap(),
            "fd7e:5057:6e00::1".parse().unwrap(),
        ];
        for forbidden in [
            "127.0.0.1",
            "169.254.169.254",
            "224.0.0.1",
            "0.0.0.0",
            "0.1.2.3",
            "255.255.255.255",
            "10.0.1.2",
            "100.64.0.3",
            "100.96.0.7",
            "::1",
            "fe80::1",
            "ff02::1",
            "::",
            "::ffff:127.0.0.1",
            "::ffff:169.254.169.254",
            "fd7e:5057:6e00::5",
        ] {
            assert!(
                never_forwarded(forbidden.parse().unwrap(), &own),
                "{forbidden}"
            );
        }
        for fine in [
            "10.0.1.3",
            "192.0.2.1",
            "2001:db8::1",
            "::ffff:10.0.1.3",
            "fd00::1",
        ] {
            assert!(!never_forwarded(fine.parse().unwrap(), &own), "{fine}");
        }
    }
}
