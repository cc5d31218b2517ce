//! Longest-prefix match from destination address to resource (SPEC F9): a
//! hash map per prefix length, tried from the longest length present, so a
//! lookup costs at most one probe per distinct length (a handful in practice).
//! Several resources may share one prefix; a lookup returns them all, oldest
//! first.

use std::cmp::Reverse;
use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;

use ipnet::IpNet;
use postern_model::ResourceId;

#[derive(Clone, Debug, Default)]
pub struct Router {
    v4: BTreeMap<Reverse<u8>, HashMap<u32, Vec<ResourceId>>>,
    v6: BTreeMap<Reverse<u8>, HashMap<u128, Vec<ResourceId>>>,
}

fn mask_v4(bits: u32, len: u8) -> u32 {
    if len == 0 {
        0
    } else {
        bits & (u32::MAX << (32 - u32::from(len)))
    }
}

fn mask_v6(bits: u128, len: u8) -> u128 {
    if len == 0 {
        0
    } else {
        bits & (u128::MAX << (128 - u32::from(len)))
    }
}

impl Router {
    /// Routes `net` to `resource` (too).
    pub fn insert(&mut self, net: IpNet, resource: ResourceId) {
        let len = net.prefix_len();
        let ids = match net.trunc() {
            IpNet::V4(v4) => self
                .v4
                .entry(Reverse(len))
                .or_default()
                .entry(v4.network().to_bits())
                .or_default(),
            IpNet::V6(v6) => self
                .v6
                .entry(Reverse(len))
                .or_default()
                .entry(v6.network().to_bits())
                .or_default(),
        };
        if !ids.contains(&resource) {
            ids.push(resource);
        }
    }

    /// Forgets every prefix of `resource`.
    pub fn remove_resource(&mut self, resource: ResourceId) {
        for table in self.v4.values_mut() {
            for ids in table.values_mut() {
                ids.retain(|r| *r != resource);
            }
            table.retain(|_, ids| !ids.is_empty());
        }
        self.v4.retain(|_, table| !table.is_empty());
        for table in self.v6.values_mut() {
            for ids in table.values_mut() {
                ids.retain(|r| *r != resource);
            }
            table.retain(|_, ids| !ids.is_empty());
        }
        self.v6.retain(|_, table| !table.is_empty());
    }

    /// The resources whose most specific prefix contains `address`.
    pub fn lookup_all(&self, address: IpAddr) -> &[ResourceId] {
        let found = match address {
            IpAddr::V4(v4) => {
                let bits = v4.to_bits();
                self.v4
                    .iter()
                    .find_map(|(Reverse(len), table)| table.get(&mask_v4(bits, *len)))
            }
            IpAddr::V6(v6) => {
                let bits = v6.to_bits();
                self.v6
                    .iter()
                    .find_map(|(Reverse(len), table)| table.get(&mask_v6(bits, *len)))
            }
        };
        found.map_or(&[], Vec::as_slice)
    }

    /// The (oldest) resource whose most specific prefix contains `address`.
    pub fn lookup(&self, address: IpAddr) -> Option<ResourceId> {
        self.lookup_all(address).first().copied()
    }

    pub fn is_empty(&self) -> bool {
        self.v4.is_empty() && self.v6.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn longest_prefix_wins() {
        let mut router = Router::default();
        let (wide, narrow, host, all) = (
            ResourceId::from_u128(1),
            ResourceId::from_u128(2),
            ResourceId::from_u128(3),
            ResourceId::from_u128(4),
        );
        router.insert("10.0.0.0/8".parse().unwrap(), wide);
        router.insert("10.1.0.0/16".parse().unwrap(), narrow);
        router.insert("10.1.2.3/32".parse().unwrap(), host);
        assert_eq!(router.lookup("10.1.2.3".parse().unwrap()), Some(host));
        assert_eq!(router.lookup("10.1.2.4".parse().unwrap()), Some(narrow));
        assert_eq!(router.lookup("10.2.0.1".parse().unwrap()), Some(wide));
        assert_eq!(router.lookup("192.0.2.1".parse().unwrap()), None);
        router.insert("0.0.0.0/0".parse().unwrap(), all);
        assert_eq!(router.lookup("192.0.2.1".parse().unwrap()), Some(all));
        router.remove_resource(narrow);
        assert_eq!(router.lookup("10.1.2.4".parse().unwrap()), Some(wide));
        router.insert("2001:db8::/32".parse().unwrap(), wide);
        assert_eq!(router.lookup("2001:db8::1".parse().unwrap()), Some(wide));
        assert_eq!(router.lookup("2001:db9::1".parse().unwrap()), None);
    }

    proptest! {
        /// Against a naive scan of every prefix.
        #[test]
        fn matches_a_naive_scan(
            nets in proptest::collection::vec((any::<u32>(), 0u8..=32, 0u128..6), 0..30),
            probes in proptest::collection::vec(any::<u32>(), 1..50),
        ) {
            let mut router = Router::default();
            let mut naive: HashMap<ipnet::Ipv4Net, ResourceId> = HashMap::new();
            for (bits, len, id) in nets {
                let net = ipnet::Ipv4Net::new(std::net::Ipv4Addr::from(bits), len).unwrap().trunc();
                router.insert(IpNet::V4(net), ResourceId::from_u128(id));
                // The oldest resource of a prefix comes first.
                naive.entry(net).or_insert(ResourceId::from_u128(id));
            }
            for probe in probes {
                let address = std::net::Ipv4Addr::from(probe);
                let expected = naive
                    .iter()
                    .filter(|(net, _)| net.contains(&address))
                    .max_by_key(|(net, _)| net.prefix_len())
                    .map(|(_, id)| *id);
                prop_assert_eq!(router.lookup(IpAddr::V4(address)), expected);
            }
        }
    }
}
