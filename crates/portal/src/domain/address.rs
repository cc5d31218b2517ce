//! Stable tunnel addresses of devices (docs/architecture.md, address plan): the
//! n-th device of an account gets the n-th address of both device ranges, so
//! one index in the store names both and a unique index keeps them unique.

use std::net::{Ipv4Addr, Ipv6Addr};

use postern_model::plan::{DEVICE_V4, DEVICE_V6};

/// The number of usable indexes: the IPv4 range without its first and last
/// address.
pub fn capacity() -> i64 {
    (1i64 << (32 - DEVICE_V4.prefix_len())) - 2
}

/// Addresses for index `n` (1-based), or `None` past the end of the range.
pub fn device_addresses(n: i64) -> Option<(Ipv4Addr, Ipv6Addr)> {
    if n < 1 || n > capacity() {
        return None;
    }
    let v4 = u32::from(DEVICE_V4.network()) + n as u32;
    let v6 = u128::from(DEVICE_V6.network()) + n as u128;
    Some((Ipv4Addr::from(v4), Ipv6Addr::from(v6)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn indexes_map_into_the_device_ranges() {
        assert_eq!(
            device_addresses(1),
            Some((
                "100.64.0.1".parse().unwrap(),
                "fd7e:5057:6e00::1".parse().unwrap()
            ))
        );
        let last = device_addresses(capacity()).unwrap();
        assert_eq!(last.0, "100.95.255.254".parse::<Ipv4Addr>().unwrap());
        assert!(DEVICE_V4.contains(&last.0) && DEVICE_V6.contains(&last.1));
        assert_eq!(device_addresses(0), None);
        assert_eq!(device_addresses(capacity() + 1), None);
    }
}
