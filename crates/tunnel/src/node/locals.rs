//! The node's own addresses on its socket: at most one per address family
//! (the source the host uses toward the internet in that family), one port.
//! A dual-stack host gathers a host candidate of each family; ICE pairs
//! candidates of a family only with the peer's of the same family, so a
//! datagram's family says which of ours it came to.

use std::net::SocketAddr;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Locals {
    v4: Option<SocketAddr>,
    v6: Option<SocketAddr>,
}

impl Locals {
    /// The first address of each family in `addresses` (others are
    /// ignored: one socket, one source per family).
    pub fn new(addresses: &[SocketAddr]) -> Self {
        Locals {
            v4: addresses.iter().copied().find(SocketAddr::is_ipv4),
            v6: addresses.iter().copied().find(SocketAddr::is_ipv6),
        }
    }

    /// Whether `address` is one of ours (a path from it is direct).
    pub fn contains(&self, address: SocketAddr) -> bool {
        self.v4 == Some(address) || self.v6 == Some(address)
    }

    /// Ours of `other`'s family: where a datagram from `other` came to, or
    /// the base of a candidate the relay at `other` gave us.
    pub fn toward(&self, other: SocketAddr) -> Option<SocketAddr> {
        if other.is_ipv4() { self.v4 } else { self.v6 }
    }

    pub fn iter(&self) -> impl Iterator<Item = SocketAddr> + '_ {
        self.v4.iter().chain(self.v6.iter()).copied()
    }

    pub fn is_empty(&self) -> bool {
        self.v4.is_none() && self.v6.is_none()
    }
}

impl std::fmt::Display for Locals {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let all: Vec<String> = self.iter().map(|a| a.to_string()).collect();
        write!(f, "{}", all.join(" "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_address_per_family_and_datagrams_find_theirs_by_family() {
        let v4: SocketAddr = "192.168.1.10:51820".parse().unwrap();
        let v6: SocketAddr = "[2001:2:10::10]:51820".parse().unwrap();
        let other_v6: SocketAddr = "[2001:2:10::99]:51820".parse().unwrap();
        let locals = Locals::new(&[v4, v6, other_v6]);
        assert!(locals.contains(v4) && locals.contains(v6));
        assert!(!locals.contains(other_v6));
        assert_eq!(locals.toward("198.18.0.3:3478".parse().unwrap()), Some(v4));
        assert_eq!(locals.toward("[2001:2::3]:3478".parse().unwrap()), Some(v6));
        let only_v6 = Locals::new(&[v6]);
        assert_eq!(only_v6.toward("198.18.0.3:3478".parse().unwrap()), None);
        assert_eq!(only_v6.iter().collect::<Vec<_>>(), vec![v6]);
    }
}
