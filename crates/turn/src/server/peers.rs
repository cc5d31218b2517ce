//! Which peers an allocation may talk to (the relay must not become a UDP
//! proxy into its own host or networks).
//!
//! Checked on CreatePermission and ChannelBind (403) and on Send indications
//! (dropped); ChannelData and peer data need a permission, which only an
//! allowed peer gets. The rules, by the address class of the peer (an
//! IPv4-mapped `::ffff:a.b.c.d` or NAT64 `64:ff9b::a.b.c.d` address is
//! judged as the IPv4 address it carries):
//!
//! | class | refused | unless |
//! |-------|---------|--------|
//! | unspecified, `0/8`, `240/4` and broadcast, `::/96`, multicast | always | - |
//! | link-local (`169.254/16`, `fe80::/10`; cloud metadata lives there) | always | - |
//! | loopback (`127/8`, `::1`) | yes | `allow_loopback` (test setups) |
//! | private (RFC 1918, `100.64/10`, `fc00::/7`, `fec0::/10`) | yes | an `allowed` network covers it |
//! | the relay's own addresses | yes | `allowed` names that exact address (a /32 or /128), or it is loopback and `allow_loopback` |
//!
//! The relay's listening port on its own addresses is refused even then: a
//! relayed datagram never comes back in as a client message.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::IpNet;

/// Why a peer is refused (for logs and tests).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// Unspecified, `0/8`, reserved, broadcast, multicast, IPv4-compatible.
    Reserved,
    LinkLocal,
    Loopback,
    /// RFC 1918, CGNAT, ULA and site-local, not named by `--allow-peer`.
    Private,
    /// One of the relay's own addresses.
    Own,
    /// The relay's own listening port.
    Loop,
}

impl Refusal {
    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::Reserved => "reserved",
            Refusal::LinkLocal => "link_local",
            Refusal::Loopback => "loopback",
            Refusal::Private => "private",
            Refusal::Own => "own_address",
            Refusal::Loop => "relay_port",
        }
    }
}

/// The address class of a peer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Class {
    Reserved,
    LinkLocal,
    Loopback,
    Private,
    Public,
}

/// The peer rules of one relay.
#[derive(Clone, Debug, Default)]
pub struct PeerPolicy {
    /// Allow 127/8 and ::1 (and the relay's own loopback addresses).
    pub allow_loopback: bool,
    /// Networks where private peers are allowed (`--allow-peer`).
    pub allowed: Vec<IpNet>,
    /// The relay host's addresses: listen, public and interface addresses.
    pub own: Vec<IpAddr>,
    /// The relay's listening port (0: none known).
    pub listen_port: u16,
}

impl PeerPolicy {
    /// Whether the relay may send to and take data from `ip` (`port` when
    /// the request names one: ChannelBind, Send; CreatePermission is for
    /// the whole address).
    pub fn check(&self, ip: IpAddr, port: Option<u16>) -> Result<(), Refusal> {
        let ip = canonical(ip);
        match class(ip) {
            Class::Reserved => return Err(Refusal::Reserved),
            Class::LinkLocal => return Err(Refusal::LinkLocal),
            Class::Loopback if !self.allow_loopback => return Err(Refusal::Loopback),
            Class::Private if !self.allowed.iter().any(|net| covers(net, ip)) => {
                return Err(Refusal::Private);
            }
            Class::Loopback | Class::Private | Class::Public => {}
        }
        if self.own.iter().any(|own| canonical(*own) == ip) {
            let named = self
                .allowed
                .iter()
                .any(|net| net.prefix_len() == net.max_prefix_len() && covers(net, ip));
            let loopback_allowed = self.allow_loopback && class(ip) == Class::Loopback;
            if !(named || loopback_allowed) {
                return Err(Refusal::Own);
            }
            if port.is_some_and(|port| port == self.listen_port && port != 0) {
                return Err(Refusal::Loop);
            }
        }
        Ok(())
    }
}

/// `net` contains `ip`, comparing IPv4 networks with IPv4 addresses in any
/// of their IPv6 forms.
fn covers(net: &IpNet, ip: IpAddr) -> bool {
    match (net, ip) {
        (IpNet::V4(net), IpAddr::V4(v4)) => net.contains(&v4),
        (IpNet::V6(net), IpAddr::V6(v6)) => net.contains(&v6),
        _ => false,
    }
}

/// The IPv4 address an IPv6 address carries for routing purposes
/// (IPv4-mapped, NAT64 well-known and local-use prefixes), as IPv4; any
/// other address unchanged.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => embedded_v4(v6).map_or(ip, IpAddr::V4),
        IpAddr::V4(_) => ip,
    }
}

fn embedded_v4(v6: Ipv6Addr) -> Option<Ipv4Addr> {
    if let Some(v4) = v6.to_ipv4_mapped() {
        return Some(v4);
    }
    let s = v6.segments();
    let last32 = || Ipv4Addr::from((u32::from(s[6]) << 16) | u32::from(s[7]));
    // 64:ff9b::/96 (RFC 6052) and 64:ff9b:1::/48 (RFC 8215): a NAT64 in
    // front of the relay would carry these to the IPv4 address inside.
    let well_known = s[..6] == [0x64, 0xff9b, 0, 0, 0, 0];
    let local_use = s[..3] == [0x64, 0xff9b, 1];
    (well_known || local_use).then(last32)
}

fn class(ip: IpAddr) -> Class {
    match ip {
        IpAddr::V4(v4) => class_v4(v4),
        IpAddr::V6(v6) => class_v6(v6),
    }
}

fn class_v4(ip: Ipv4Addr) -> Class {
    let [a, b, ..] = ip.octets();
    if a == 0 || a >= 224 {
        // "This network", multicast, 240/4 and the broadcast address.
        Class::Reserved
    } else if a == 127 {
        Class::Loopback
    } else if a == 169 && b == 254 {
        Class::LinkLocal
    } else if ip.is_private() || (a == 100 && (64..128).contains(&b)) {
        Class::Private
    } else {
        Class::Public
    }
}

fn class_v6(ip: Ipv6Addr) -> Class {
    let first = ip.segments()[0];
    if ip.is_loopback() {
        Class::Loopback
    } else if ip.segments()[..6] == [0; 6] || first & 0xff00 == 0xff00 {
        // ::, IPv4-compatible (deprecated) and multicast.
        Class::Reserved
    } else if first & 0xffc0 == 0xfe80 {
        Class::LinkLocal
    } else if first & 0xfe00 == 0xfc00 || first & 0xffc0 == 0xfec0 {
        // Unique local and the deprecated site-local.
        Class::Private
    } else {
        Class::Public
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    fn relay_policy() -> PeerPolicy {
        PeerPolicy {
            allow_loopback: false,
            allowed: Vec::new(),
            own: vec![ip("198.18.0.3"), ip("2001:db8::3"), ip("10.0.0.7")],
            listen_port: 3478,
        }
    }

    #[test]
    fn classes_by_default() {
        let policy = relay_policy();
        for (peer, expected) in [
            ("198.18.0.20", Ok(())),
            ("8.8.8.8", Ok(())),
            ("2001:db8::20", Ok(())),
            ("0.0.0.0", Err(Refusal::Reserved)),
            ("0.1.2.3", Err(Refusal::Reserved)),
            ("255.255.255.255", Err(Refusal::Reserved)),
            ("224.0.0.251", Err(Refusal::Reserved)),
            ("240.0.0.1", Err(Refusal::Reserved)),
            ("::", Err(Refusal::Reserved)),
            ("::10.0.0.5", Err(Refusal::Reserved)),
            ("ff02::1", Err(Refusal::Reserved)),
            ("127.0.0.1", Err(Refusal::Loopback)),
            ("127.8.9.10", Err(Refusal::Loopback)),
            ("::1", Err(Refusal::Loopback)),
            ("::ffff:127.0.0.1", Err(Refusal::Loopback)),
            ("169.254.169.254", Err(Refusal::LinkLocal)),
            ("::ffff:169.254.169.254", Err(Refusal::LinkLocal)),
            ("fe80::1", Err(Refusal::LinkLocal)),
            ("10.0.0.5", Err(Refusal::Private)),
            ("172.16.0.1", Err(Refusal::Private)),
            ("172.31.255.255", Err(Refusal::Private)),
            ("192.168.1.1", Err(Refusal::Private)),
            ("100.64.0.1", Err(Refusal::Private)),
            ("100.127.255.255", Err(Refusal::Private)),
            ("fd00::1", Err(Refusal::Private)),
            ("fec0::1", Err(Refusal::Private)),
            ("::ffff:10.0.0.5", Err(Refusal::Private)),
            ("64:ff9b::10.0.0.5", Err(Refusal::Private)),
            ("64:ff9b:1::a00:5", Err(Refusal::Private)),
            ("64:ff9b::8.8.8.8", Ok(())),
            ("198.18.0.3", Err(Refusal::Own)),
            ("::ffff:198.18.0.3", Err(Refusal::Own)),
            ("2001:db8::3", Err(Refusal::Own)),
        ] {
            assert_eq!(policy.check(ip(peer), None), expected, "{peer}");
        }
        // Neighbours of the private ranges are public.
        for public in ["172.32.0.1", "100.128.0.1", "11.0.0.1", "192.169.0.1"] {
            assert_eq!(policy.check(ip(public), None), Ok(()), "{public}");
        }
    }

    #[test]
    fn allow_peer_lifts_the_private_rule_only() {
        let mut policy = relay_policy();
        policy.allowed = vec!["10.0.0.0/8".parse().unwrap(), "fd00::/8".parse().unwrap()];
        assert_eq!(policy.check(ip("10.0.0.5"), Some(53)), Ok(()));
        assert_eq!(policy.check(ip("::ffff:10.0.0.5"), None), Ok(()));
        assert_eq!(policy.check(ip("fd00::1"), None), Ok(()));
        assert_eq!(policy.check(ip("192.168.0.1"), None), Err(Refusal::Private));
        // The relay's own 10.0.0.7 is inside the allowed network, but the
        // network does not name it.
        assert_eq!(policy.check(ip("10.0.0.7"), None), Err(Refusal::Own));
        // Nothing lifts link-local, loopback or the reserved classes.
        policy.allowed.push("0.0.0.0/0".parse().unwrap());
        policy.allowed.push("::/0".parse().unwrap());
        for peer in ["169.254.169.254", "127.0.0.1", "0.0.0.0", "fe80::1", "::1"] {
            assert!(policy.check(ip(peer), None).is_err(), "{peer}");
        }
    }

    #[test]
    fn own_addresses_need_an_exact_allow_and_never_the_listen_port() {
        let mut policy = relay_policy();
        policy.allowed = vec!["198.18.0.3/32".parse().unwrap()];
        assert_eq!(policy.check(ip("198.18.0.3"), None), Ok(()));
        assert_eq!(policy.check(ip("198.18.0.3"), Some(50000)), Ok(()));
        assert_eq!(
            policy.check(ip("198.18.0.3"), Some(3478)),
            Err(Refusal::Loop)
        );
        assert_eq!(
            policy.check(ip("::ffff:198.18.0.3"), Some(3478)),
            Err(Refusal::Loop)
        );
        // Loopback test setups: the relay on 127.0.0.1 relays to itself.
        let mut policy = relay_policy();
        policy.own.push(ip("127.0.0.1"));
        policy.allow_loopback = true;
        assert_eq!(policy.check(ip("127.0.0.1"), Some(50000)), Ok(()));
        assert_eq!(
            policy.check(ip("127.0.0.1"), Some(3478)),
            Err(Refusal::Loop)
        );
        assert_eq!(policy.check(ip("198.18.0.3"), None), Err(Refusal::Own));
    }
}
