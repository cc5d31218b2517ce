//! Resource addresses and their validation (SPEC F9, F11).

use std::net::IpAddr;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use crate::dns::{DnsPattern, PatternError};
use crate::plan;

/// The kinds of resource.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ResourceType {
    /// An IPv4 or IPv6 prefix.
    Cidr,
    /// One address.
    Ip,
    /// A DNS name pattern.
    Dns,
    /// Everything (full tunnel).
    Internet,
}

/// A validated resource address.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum ResourceAddress {
    /// Host bits are cleared: `10.1.2.3/8` is stored as `10.0.0.0/8`.
    Cidr(IpNet),
    Ip(IpAddr),
    Dns(DnsPattern),
    /// Every address except these prefixes (SPEC 7.4: the client keeps
    /// them on the host's own path).
    Internet(Vec<IpNet>),
}

/// Exclusions one internet resource may have at most (each is a route).
pub const MAX_EXCLUSIONS: usize = 64;

/// Why an address was refused; the API reports it against the `address` field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AddressError {
    #[error("an address is required for a {0:?} resource")]
    Missing(ResourceType),
    #[error("an internet resource has no address")]
    InternetWithAddress,
    #[error("{0:?} is not a CIDR prefix like 10.0.0.0/8 or 2001:db8::/32")]
    NotCidr(String),
    #[error("{0:?} is not an IPv4 or IPv6 address")]
    NotIp(String),
    #[error("{0} covers every address; use the internet resource instead")]
    WholeInternet(String),
    #[error("{0} is a loopback address")]
    Loopback(String),
    #[error("{0} is unspecified, multicast or otherwise not routable")]
    NotRoutable(String),
    #[error("{0} overlaps Postern's own addresses (100.64.0.0/10, fd7e:5057:6e00::/48)")]
    Reserved(String),
    #[error(
        "{0} covers link-local addresses (169.254.0.0/16, fe80::/10); to open one (a metadata service, say), make it an ip resource"
    )]
    LinkLocal(String),
    #[error("{0} is an IPv4-mapped IPv6 prefix; use the IPv4 form")]
    Mapped(String),
    #[error("invalid DNS name: {0}")]
    Dns(#[from] PatternError),
    #[error("only the internet resource has exclusions")]
    ExclusionsNotInternet,
    #[error("{0:?} is not a CIDR prefix or an address to exclude")]
    NotExclusion(String),
    #[error("at most {MAX_EXCLUSIONS} exclusions")]
    TooManyExclusions,
}

impl ResourceAddress {
    /// Validates `address` for a resource of type `kind`.
    pub fn parse(kind: ResourceType, address: Option<&str>) -> Result<Self, AddressError> {
        let address = address.map(str::trim).filter(|a| !a.is_empty());
        match (kind, address) {
            (ResourceType::Internet, None) => Ok(ResourceAddress::Internet(Vec::new())),
            (ResourceType::Internet, Some(_)) => Err(AddressError::InternetWithAddress),
            (kind, None) => Err(AddressError::Missing(kind)),
            (ResourceType::Cidr, Some(text)) => parse_cidr(text).map(ResourceAddress::Cidr),
            (ResourceType::Ip, Some(text)) => parse_ip(text).map(ResourceAddress::Ip),
            (ResourceType::Dns, Some(text)) => Ok(ResourceAddress::Dns(text.parse()?)),
        }
    }

    pub fn kind(&self) -> ResourceType {
        match self {
            ResourceAddress::Cidr(_) => ResourceType::Cidr,
            ResourceAddress::Ip(_) => ResourceType::Ip,
            ResourceAddress::Dns(_) => ResourceType::Dns,
            ResourceAddress::Internet(_) => ResourceType::Internet,
        }
    }

    /// The destination prefixes the resource covers: the one place that
    /// says so, for the client's routes and the gateway's authorizations.
    /// DNS resources cover no fixed prefix: they are reached through proxy
    /// addresses that the client's stub hands out per name.
    pub fn prefixes(&self) -> Vec<IpNet> {
        match self {
            ResourceAddress::Cidr(net) => vec![*net],
            ResourceAddress::Ip(ip) => vec![IpNet::from(*ip)],
            ResourceAddress::Dns(_) => Vec::new(),
            ResourceAddress::Internet(_) => vec![
                IpNet::V4(ipnet::Ipv4Net::default()),
                IpNet::V6(ipnet::Ipv6Net::default()),
            ],
        }
    }

    /// The DNS name pattern of a DNS resource.
    pub fn dns_pattern(&self) -> Option<&DnsPattern> {
        match self {
            ResourceAddress::Dns(pattern) => Some(pattern),
            _ => None,
        }
    }

    /// The address as the API shows it (`None` for the internet resource).
    pub fn to_text(&self) -> Option<String> {
        match self {
            ResourceAddress::Cidr(net) => Some(net.to_string()),
            ResourceAddress::Ip(ip) => Some(ip.to_string()),
            ResourceAddress::Dns(pattern) => Some(pattern.to_string()),
            ResourceAddress::Internet(_) => None,
        }
    }

    /// What the internet resource leaves out (nothing for the others).
    pub fn exclusions(&self) -> &[IpNet] {
        match self {
            ResourceAddress::Internet(exclusions) => exclusions,
            _ => &[],
        }
    }

    /// [`ResourceAddress::parse`] with the internet resource's exclusions
    /// (prefixes or addresses, host bits cleared, duplicates dropped, in
    /// order); any other kind must have none.
    pub fn parse_with_exclusions(
        kind: ResourceType,
        address: Option<&str>,
        exclusions: &[String],
    ) -> Result<Self, AddressError> {
        let parsed = ResourceAddress::parse(kind, address)?;
        if exclusions.is_empty() {
            return Ok(parsed);
        }
        if kind != ResourceType::Internet {
            return Err(AddressError::ExclusionsNotInternet);
        }
        if exclusions.len() > MAX_EXCLUSIONS {
            return Err(AddressError::TooManyExclusions);
        }
        let mut nets: Vec<IpNet> = Vec::with_capacity(exclusions.len());
        for text in exclusions {
            let text = text.trim();
            let net = text
                .parse::<IpNet>()
                .map(|net| net.trunc())
                .or_else(|_| text.parse::<IpAddr>().map(IpNet::from))
                .map_err(|_| AddressError::NotExclusion(text.to_string()))?;
            if net.prefix_len() == 0 {
                return Err(AddressError::NotExclusion(text.to_string()));
            }
            if !nets.contains(&net) {
                nets.push(net);
            }
        }
        Ok(ResourceAddress::Internet(nets))
    }
}

/// Builds the error for an address from its text.
type Refusal = fn(String) -> AddressError;

/// What no CIDR resource may overlap (the whole prefix, not only its
/// network address: `112.0.0.0/4` contains 127.0.0.0/8), with the reason.
fn off_limits() -> [(IpNet, Refusal); 10] {
    let net = |text: &str| text.parse::<IpNet>().unwrap_or_default();
    [
        (net("127.0.0.0/8"), AddressError::Loopback),
        (net("::1/128"), AddressError::Loopback),
        (net("0.0.0.0/8"), AddressError::NotRoutable),
        (net("::/128"), AddressError::NotRoutable),
        (net("224.0.0.0/4"), AddressError::NotRoutable),
        (net("255.255.255.255/32"), AddressError::NotRoutable),
        (net("ff00::/8"), AddressError::NotRoutable),
        (net("169.254.0.0/16"), AddressError::LinkLocal),
        (net("fe80::/10"), AddressError::LinkLocal),
        (net("::ffff:0:0/96"), AddressError::Mapped),
    ]
}

fn parse_cidr(text: &str) -> Result<IpNet, AddressError> {
    let net: IpNet = text
        .parse()
        .map_err(|_| AddressError::NotCidr(text.to_string()))?;
    let net = net.trunc();
    if net.prefix_len() == 0 {
        return Err(AddressError::WholeInternet(net.to_string()));
    }
    for (limit, error) in off_limits() {
        if limit.contains(&net) || net.contains(&limit) {
            return Err(error(net.to_string()));
        }
    }
    if plan::overlaps_reserved(&net) {
        return Err(AddressError::Reserved(net.to_string()));
    }
    Ok(net)
}

fn parse_ip(text: &str) -> Result<IpAddr, AddressError> {
    let ip: IpAddr = text
        .parse()
        .map_err(|_| AddressError::NotIp(text.to_string()))?;
    // ::ffff:127.0.0.1 is 127.0.0.1 on a dual-stack host.
    if let IpAddr::V6(v6) = ip
        && v6.to_ipv4_mapped().is_some()
    {
        return Err(AddressError::Mapped(text.to_string()));
    }
    check_routable(ip, text)?;
    if plan::is_reserved(ip) {
        return Err(AddressError::Reserved(ip.to_string()));
    }
    Ok(ip)
}

fn check_routable(ip: IpAddr, text: &str) -> Result<(), AddressError> {
    if ip.is_loopback() {
        return Err(AddressError::Loopback(text.to_string()));
    }
    let broadcast = matches!(ip, IpAddr::V4(v4) if v4.is_broadcast());
    if ip.is_unspecified() || ip.is_multicast() || broadcast {
        return Err(AddressError::NotRoutable(text.to_string()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_internet_resource_takes_exclusions_and_no_other_does() {
        let exclusions =
            |list: &[&str]| -> Vec<String> { list.iter().map(|s| s.to_string()).collect() };
        let parsed = ResourceAddress::parse_with_exclusions(
            ResourceType::Internet,
            None,
            &exclusions(&["198.51.100.7/24", "2001:db8::1", " 198.51.100.0/24 "]),
        )
        .unwrap();
        assert_eq!(
            parsed.exclusions(),
            &[
                "198.51.100.0/24".parse::<IpNet>().unwrap(),
                "2001:db8::1/128".parse().unwrap()
            ]
        );
        assert_eq!(
            ResourceAddress::parse_with_exclusions(
                ResourceType::Cidr,
                Some("10.0.0.0/8"),
                &exclusions(&["10.1.0.0/16"])
            ),
            Err(AddressError::ExclusionsNotInternet)
        );
        for bad in ["0.0.0.0/0", "::/0", "not-a-net", "10.0.0.0/33"] {
            assert!(
                matches!(
                    ResourceAddress::parse_with_exclusions(
                        ResourceType::Internet,
                        None,
                        &exclusions(&[bad])
                    ),
                    Err(AddressError::NotExclusion(_))
                ),
                "{bad}"
            );
        }
        let many: Vec<String> = (0..=MAX_EXCLUSIONS)
            .map(|n| format!("10.{n}.0.0/16"))
            .collect();
        assert_eq!(
            ResourceAddress::parse_with_exclusions(ResourceType::Internet, None, &many),
            Err(AddressError::TooManyExclusions)
        );
    }

    use super::*;

    fn parse(kind: ResourceType, text: &str) -> Result<ResourceAddress, AddressError> {
        ResourceAddress::parse(kind, Some(text))
    }

    #[test]
    fn valid_addresses_are_normalized() {
        assert_eq!(
            parse(ResourceType::Cidr, "10.1.2.3/8")
                .unwrap()
                .to_text()
                .as_deref(),
            Some("10.0.0.0/8")
        );
        assert_eq!(
            parse(ResourceType::Cidr, "2001:db8::1/32")
                .unwrap()
                .to_text()
                .as_deref(),
            Some("2001:db8::/32")
        );
        assert_eq!(
            parse(ResourceType::Ip, " 192.168.1.5 ").unwrap().kind(),
            ResourceType::Ip
        );
        assert_eq!(
            parse(ResourceType::Dns, "*.Corp.Test.")
                .unwrap()
                .to_text()
                .as_deref(),
            Some("*.corp.test")
        );
        assert_eq!(
            ResourceAddress::parse(ResourceType::Internet, None),
            Ok(ResourceAddress::Internet(Vec::new()))
        );
    }

    #[test]
    fn prefixes_come_from_one_place() {
        let prefixes = |kind, text: Option<&str>| {
            ResourceAddress::parse(kind, text)
                .unwrap()
                .prefixes()
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
        };
        assert_eq!(
            prefixes(ResourceType::Cidr, Some("10.1.2.3/8")),
            ["10.0.0.0/8"]
        );
        assert_eq!(
            prefixes(ResourceType::Ip, Some("2001:db8::5")),
            ["2001:db8::5/128"]
        );
        assert!(prefixes(ResourceType::Dns, Some("*.corp.test")).is_empty());
        assert_eq!(
            prefixes(ResourceType::Internet, None),
            ["0.0.0.0/0", "::/0"]
        );
    }

    #[test]
    fn bad_addresses_are_refused_with_reasons() {
        use AddressError::*;
        let cases = [
            (
                ResourceType::Cidr,
                "10.0.0.0/33",
                NotCidr("10.0.0.0/33".into()),
            ),
            (ResourceType::Cidr, "10.0.0.0", NotCidr("10.0.0.0".into())),
            (
                ResourceType::Cidr,
                "0.0.0.0/0",
                WholeInternet("0.0.0.0/0".into()),
            ),
            (ResourceType::Cidr, "::/0", WholeInternet("::/0".into())),
            (
                ResourceType::Cidr,
                "127.0.0.0/8",
                Loopback("127.0.0.0/8".into()),
            ),
            (
                ResourceType::Cidr,
                "100.64.0.0/16",
                Reserved("100.64.0.0/16".into()),
            ),
            (
                ResourceType::Cidr,
                "100.0.0.0/8",
                Reserved("100.0.0.0/8".into()),
            ),
            (
                ResourceType::Cidr,
                "224.0.0.0/4",
                NotRoutable("224.0.0.0/4".into()),
            ),
            (ResourceType::Ip, "::1", Loopback("::1".into())),
            (
                ResourceType::Ip,
                "100.100.111.1",
                Reserved("100.100.111.1".into()),
            ),
            (
                ResourceType::Ip,
                "fd7e:5057:6e00::5",
                Reserved("fd7e:5057:6e00::5".into()),
            ),
            (
                ResourceType::Ip,
                "255.255.255.255",
                NotRoutable("255.255.255.255".into()),
            ),
            (ResourceType::Ip, "10.0.0.0/8", NotIp("10.0.0.0/8".into())),
            (ResourceType::Dns, "*.com", Dns(PatternError::WholeTld)),
            // The whole prefix counts, not its network address.
            (
                ResourceType::Cidr,
                "112.0.0.0/4",
                Loopback("112.0.0.0/4".into()),
            ),
            (
                ResourceType::Cidr,
                "192.0.0.0/2",
                NotRoutable("192.0.0.0/2".into()),
            ),
            (
                ResourceType::Cidr,
                "169.254.0.0/16",
                LinkLocal("169.254.0.0/16".into()),
            ),
            (
                ResourceType::Cidr,
                "fe80::/64",
                LinkLocal("fe80::/64".into()),
            ),
            (
                ResourceType::Cidr,
                "::ffff:10.0.0.0/104",
                Mapped("::ffff:10.0.0.0/104".into()),
            ),
            (
                ResourceType::Ip,
                "::ffff:127.0.0.1",
                Mapped("::ffff:127.0.0.1".into()),
            ),
        ];
        for (kind, text, expected) in cases {
            assert_eq!(parse(kind, text), Err(expected), "{kind:?} {text}");
        }
        assert_eq!(
            ResourceAddress::parse(ResourceType::Cidr, Some("  ")),
            Err(Missing(ResourceType::Cidr))
        );
        assert_eq!(
            ResourceAddress::parse(ResourceType::Internet, Some("0.0.0.0/0")),
            Err(InternetWithAddress)
        );
    }
}
