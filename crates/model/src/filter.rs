//! Traffic filters of a resource (SPEC F12): which protocols and destination
//! ports a policy lets through. No filters means all traffic.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// IP protocol numbers the filters know.
pub const IPPROTO_ICMP: u8 = 1;
pub const IPPROTO_TCP: u8 = 6;
pub const IPPROTO_UDP: u8 = 17;
pub const IPPROTO_ICMPV6: u8 = 58;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    Tcp,
    Udp,
    /// ICMP and ICMPv6.
    Icmp,
}

/// An inclusive destination port range, written `22` or `8000-8080`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct PortRange {
    pub start: u16,
    pub end: u16,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FilterError {
    #[error("{0:?} is not a port or port range like 22 or 8000-8080 (ports are 1-65535)")]
    BadPorts(String),
    #[error("the port range {0}-{1} is empty: the low port comes first")]
    EmptyRange(u16, u16),
    #[error("icmp filters take no ports")]
    IcmpWithPorts,
}

impl PortRange {
    pub fn contains(&self, port: u16) -> bool {
        (self.start..=self.end).contains(&port)
    }
}

impl FromStr for PortRange {
    type Err = FilterError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let port = |part: &str| match part.trim().parse::<u16>() {
            Ok(0) | Err(_) => Err(FilterError::BadPorts(text.to_string())),
            Ok(port) => Ok(port),
        };
        let (start, end) = match text.split_once('-') {
            Some((lo, hi)) => (port(lo)?, port(hi)?),
            None => {
                let single = port(text)?;
                (single, single)
            }
        };
        if start > end {
            return Err(FilterError::EmptyRange(start, end));
        }
        Ok(PortRange { start, end })
    }
}

impl fmt::Display for PortRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.start == self.end {
            write!(f, "{}", self.start)
        } else {
            write!(f, "{}-{}", self.start, self.end)
        }
    }
}

impl Serialize for PortRange {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for PortRange {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// One filter: a protocol and, for TCP/UDP, optional destination ports.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "RawFilter", into = "RawFilter")]
pub struct Filter {
    pub protocol: Protocol,
    /// `None` means every port.
    pub ports: Option<PortRange>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFilter {
    protocol: Protocol,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    ports: Option<PortRange>,
}

impl TryFrom<RawFilter> for Filter {
    type Error = FilterError;

    fn try_from(raw: RawFilter) -> Result<Self, Self::Error> {
        if raw.protocol == Protocol::Icmp && raw.ports.is_some() {
            return Err(FilterError::IcmpWithPorts);
        }
        Ok(Filter {
            protocol: raw.protocol,
            ports: raw.ports,
        })
    }
}

impl From<Filter> for RawFilter {
    fn from(filter: Filter) -> Self {
        RawFilter {
            protocol: filter.protocol,
            ports: filter.ports,
        }
    }
}

impl Filter {
    /// Whether a packet with this IP protocol number and destination port
    /// (TCP/UDP only) passes this filter.
    pub fn allows(&self, ip_protocol: u8, destination_port: Option<u16>) -> bool {
        let protocol_matches = match self.protocol {
            Protocol::Tcp => ip_protocol == IPPROTO_TCP,
            Protocol::Udp => ip_protocol == IPPROTO_UDP,
            Protocol::Icmp => matches!(ip_protocol, IPPROTO_ICMP | IPPROTO_ICMPV6),
        };
        protocol_matches
            && match (self.ports, destination_port) {
                (None, _) => true,
                (Some(range), Some(port)) => range.contains(port),
                (Some(_), None) => false,
            }
    }
}

/// Whether a packet passes a resource's filter list: an empty list allows
/// everything, otherwise any one filter must allow it.
pub fn filters_allow(filters: &[Filter], ip_protocol: u8, destination_port: Option<u16>) -> bool {
    filters.is_empty()
        || filters
            .iter()
            .any(|filter| filter.allows(ip_protocol, destination_port))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn filter(json: &str) -> Result<Filter, serde_json::Error> {
        serde_json::from_str(json)
    }

    #[test]
    fn port_ranges_parse_and_print() {
        assert_eq!("22".parse(), Ok(PortRange { start: 22, end: 22 }));
        assert_eq!(
            "8000-8080".parse(),
            Ok(PortRange {
                start: 8000,
                end: 8080
            })
        );
        assert_eq!(
            "8000-8080".parse::<PortRange>().unwrap().to_string(),
            "8000-8080"
        );
        assert_eq!("22".parse::<PortRange>().unwrap().to_string(), "22");
        assert_eq!(
            "9-3".parse::<PortRange>(),
            Err(FilterError::EmptyRange(9, 3))
        );
        for bad in ["", "0", "65536", "a", "1-", "-1", "1-2-3", "22 ssh"] {
            assert!(bad.parse::<PortRange>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn filters_deserialize_with_validation() {
        let tcp = filter(r#"{"protocol":"tcp","ports":"80"}"#).unwrap();
        assert_eq!(tcp.ports, Some(PortRange { start: 80, end: 80 }));
        assert!(filter(r#"{"protocol":"icmp","ports":"1"}"#).is_err());
        assert!(filter(r#"{"protocol":"sctp"}"#).is_err());
        assert!(filter(r#"{"protocol":"tcp","ports":"0"}"#).is_err());
        assert!(
            filter(r#"{"protocol":"tcp","port":"80"}"#).is_err(),
            "unknown field"
        );
        assert_eq!(
            serde_json::to_string(&tcp).unwrap(),
            r#"{"protocol":"tcp","ports":"80"}"#
        );
    }

    #[test]
    fn packets_are_matched_by_protocol_and_port() {
        let web = filter(r#"{"protocol":"tcp","ports":"80-443"}"#).unwrap();
        let ping = filter(r#"{"protocol":"icmp"}"#).unwrap();
        let filters = [web, ping];
        assert!(filters_allow(&filters, IPPROTO_TCP, Some(80)));
        assert!(filters_allow(&filters, IPPROTO_TCP, Some(443)));
        assert!(!filters_allow(&filters, IPPROTO_TCP, Some(22)));
        assert!(!filters_allow(&filters, IPPROTO_UDP, Some(80)));
        assert!(filters_allow(&filters, IPPROTO_ICMP, None));
        assert!(filters_allow(&filters, IPPROTO_ICMPV6, None));
        assert!(
            !filters_allow(&filters, IPPROTO_TCP, None),
            "TCP without a port cannot match a port filter"
        );
        assert!(
            filters_allow(&[], 132, None),
            "no filters: everything passes"
        );
    }
}
