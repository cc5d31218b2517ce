//! The default address plan (docs/architecture.md, address plan). Resource
//! addresses must not overlap it: traffic to these ranges belongs to Postern
//! itself.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};

/// Tunnel addresses of devices (clients and gateways), IPv4.
pub const DEVICE_V4: Ipv4Net = net4(Ipv4Addr::new(100, 64, 0, 0), 11);
/// Tunnel addresses of devices (clients and gateways), IPv6.
pub const DEVICE_V6: Ipv6Net = net6(Ipv6Addr::new(0xfd7e, 0x5057, 0x6e00, 0, 0, 0, 0, 0), 64);
/// Proxy addresses the client's DNS stub hands out for DNS resources, IPv4.
/// [`DNS_SENTINEL_V4`] lies inside it: an allocator must skip it.
pub const DNS_PROXY_V4: Ipv4Net = net4(Ipv4Addr::new(100, 96, 0, 0), 11);
/// Proxy addresses the client's DNS stub hands out for DNS resources, IPv6.
pub const DNS_PROXY_V6: Ipv6Net = net6(
    Ipv6Addr::new(0xfd7e, 0x5057, 0x6e00, 0x8000, 0, 0, 0, 0),
    80,
);
/// Where the client's DNS stub resolver listens, IPv4.
pub const DNS_SENTINEL_V4: Ipv4Addr = Ipv4Addr::new(100, 100, 111, 1);
/// Where the client's DNS stub resolver listens, IPv6.
pub const DNS_SENTINEL_V6: Ipv6Addr =
    Ipv6Addr::new(0xfd7e, 0x5057, 0x6e00, 0x8000, 0x100, 0x100, 0x111, 1);
/// MTU of the tunnel interfaces: fits WireGuard over TURN over IPv6 paths.
pub const TUNNEL_MTU: u16 = 1280;
/// Default UDP port for WireGuard and ICE on clients and gateways.
pub const DEFAULT_TUNNEL_PORT: u16 = 51820;
/// Default STUN/TURN port of a relay.
pub const DEFAULT_RELAY_PORT: u16 = 3478;
/// Default UDP port range for relay allocations.
pub const DEFAULT_RELAY_PORTS: std::ops::RangeInclusive<u16> = 49152..=65535;

const fn net4(addr: Ipv4Addr, prefix: u8) -> Ipv4Net {
    match Ipv4Net::new(addr, prefix) {
        Ok(net) => net,
        Err(_) => panic!("invalid IPv4 prefix length"),
    }
}

const fn net6(addr: Ipv6Addr, prefix: u8) -> Ipv6Net {
    match Ipv6Net::new(addr, prefix) {
        Ok(net) => net,
        Err(_) => panic!("invalid IPv6 prefix length"),
    }
}

/// Every range of the plan. The sentinels fall inside the 100.64.0.0/10
/// shared space and the fd7e:5057:6e00::/48 prefix, which are reserved whole so
/// that a resource can never shadow a Postern address.
pub fn reserved_ranges() -> [IpNet; 2] {
    [
        IpNet::V4(net4(Ipv4Addr::new(100, 64, 0, 0), 10)),
        IpNet::V6(net6(
            Ipv6Addr::new(0xfd7e, 0x5057, 0x6e00, 0, 0, 0, 0, 0),
            48,
        )),
    ]
}

/// Whether `net` overlaps a range that Postern reserves for itself.
pub fn overlaps_reserved(net: &IpNet) -> bool {
    reserved_ranges()
        .iter()
        .any(|reserved| reserved.contains(net) || net.contains(reserved))
}

/// Whether the address is one of Postern's own.
pub fn is_reserved(addr: IpAddr) -> bool {
    reserved_ranges()
        .iter()
        .any(|reserved| reserved.contains(&addr))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plan_ranges_are_inside_the_reserved_ranges() {
        for net in [
            IpNet::V4(DEVICE_V4),
            IpNet::V4(DNS_PROXY_V4),
            IpNet::V6(DEVICE_V6),
            IpNet::V6(DNS_PROXY_V6),
        ] {
            assert!(overlaps_reserved(&net), "{net}");
        }
        assert!(is_reserved(IpAddr::V4(DNS_SENTINEL_V4)));
        assert!(is_reserved(IpAddr::V6(DNS_SENTINEL_V6)));
        assert!(
            DNS_PROXY_V4.contains(&DNS_SENTINEL_V4),
            "the v4 allocator must skip the sentinel"
        );
        assert!(
            !DEVICE_V4.contains(&DNS_PROXY_V4.network()),
            "device and proxy ranges are disjoint"
        );
    }

    #[test]
    fn ordinary_networks_are_not_reserved() {
        for text in [
            "10.0.0.0/8",
            "192.168.1.0/24",
            "100.128.0.0/16",
            "2001:db8::/32",
            "fd00::/16",
            "fd00::/8",
        ] {
            let net: IpNet = text.parse().unwrap();
            // fd00::/8 contains our /48: a resource that wide would shadow us.
            assert_eq!(overlaps_reserved(&net), text == "fd00::/8", "{text}");
        }
    }
}
