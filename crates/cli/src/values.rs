//! Parsers for flag values, so bad input fails at the command line with a
//! message naming what is wrong.

use std::net::SocketAddr;
use std::ops::RangeInclusive;

/// An inclusive UDP port range (`LO-HI`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PortRange(pub RangeInclusive<u16>);

pub fn parse_port_range(text: &str) -> Result<PortRange, String> {
    let (lo, hi) = text
        .split_once('-')
        .ok_or_else(|| format!("{text:?} is not a range like 49152-65535"))?;
    let port = |part: &str| -> Result<u16, String> {
        match part.trim().parse::<u16>() {
            Ok(0) | Err(_) => Err(format!("{part:?} is not a port number (1-65535)")),
            Ok(port) => Ok(port),
        }
    };
    let (lo, hi) = (port(lo)?, port(hi)?);
    if lo > hi {
        return Err(format!(
            "the range {lo}-{hi} is empty: the low port comes first"
        ));
    }
    Ok(PortRange(lo..=hi))
}

/// A portal URL: `http://` or `https://` with a host, no query or fragment.
pub fn parse_portal_url(text: &str) -> Result<String, String> {
    if !text.contains("://") {
        return Err(format!("{text:?} has no scheme: write https://{text}"));
    }
    let url = url::Url::parse(text).map_err(|e| format!("{text:?} is not a URL: {e}"))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(format!("{text:?}: the scheme must be http or https"));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(format!("{text:?} has no host"));
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(format!("{text:?}: a portal URL has no query or fragment"));
    }
    Ok(text.trim_end_matches('/').to_string())
}

/// A name for `--acme-domain`: a DNS name (no IP address, no wildcard:
/// tls-alpn-01 cannot prove either), lowercased.
pub fn parse_acme_domain(text: &str) -> Result<String, String> {
    if text.parse::<std::net::IpAddr>().is_ok() {
        return Err(format!(
            "{text:?} is an IP address; ACME certificates here are for DNS names"
        ));
    }
    if text.starts_with("*.") {
        return Err(format!(
            "{text:?}: a wildcard needs the dns-01 challenge, which the portal cannot answer"
        ));
    }
    rustls::pki_types::DnsName::try_from(text)
        .map_err(|_| format!("{text:?} is not a DNS name"))?;
    if !text.contains('.') {
        return Err(format!(
            "{text:?} is not a fully qualified name (a CA issues only for public names)"
        ));
    }
    Ok(text.trim_end_matches('.').to_ascii_lowercase())
}

/// An ACME directory: an `https://` URL.
pub fn parse_acme_directory(text: &str) -> Result<String, String> {
    let url = url::Url::parse(text).map_err(|e| format!("{text:?} is not a URL: {e}"))?;
    if url.scheme() != "https" || url.host_str().is_none_or(str::is_empty) {
        return Err(format!(
            "{text:?}: an ACME directory is an https:// URL (RFC 8555 section 6.1)"
        ));
    }
    Ok(text.to_string())
}

/// A DNS upstream: `IP` (port 53) or `IP:PORT` (`[IPv6]:PORT`).
pub fn parse_upstream(text: &str) -> Result<SocketAddr, String> {
    if let Ok(address) = text.parse::<SocketAddr>() {
        return Ok(address);
    }
    text.parse::<std::net::IpAddr>()
        .map(|ip| SocketAddr::new(ip, 53))
        .map_err(|_| format!("{text:?} is not an IP address or IP:PORT"))
}

/// A network for `--allow-peer`: `CIDR` without host bits, or one address
/// (`/32`, `/128`).
pub fn parse_network(text: &str) -> Result<ipnet::IpNet, String> {
    if let Ok(ip) = text.parse::<std::net::IpAddr>() {
        return Ok(ipnet::IpNet::from(ip));
    }
    let net = text
        .parse::<ipnet::IpNet>()
        .map_err(|_| format!("{text:?} is not an address or a CIDR like 10.0.0.0/8"))?;
    if net.trunc() != net {
        return Err(format!(
            "{text:?} has host bits set: the network is {}",
            net.trunc()
        ));
    }
    Ok(net)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn acme_domains_are_dns_names_tls_alpn_can_prove() {
        assert_eq!(
            parse_acme_domain("Portal.Example.COM."),
            Ok("portal.example.com".to_string())
        );
        for bad in [
            "",
            "portal",
            "192.0.2.1",
            "::1",
            "*.example.com",
            "a b.example.com",
            "-x.example.com",
        ] {
            assert!(parse_acme_domain(bad).is_err(), "{bad:?} accepted");
        }
        assert!(parse_acme_directory("https://acme.example/directory").is_ok());
        for bad in ["http://acme.example/directory", "acme.example", "https://"] {
            assert!(parse_acme_directory(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn port_ranges() {
        assert_eq!(
            parse_port_range("49152-65535"),
            Ok(PortRange(49152..=65535))
        );
        assert_eq!(parse_port_range("5000-5000"), Ok(PortRange(5000..=5000)));
        for bad in ["", "5000", "0-10", "10-5", "a-b", "1-70000", "-", "1--2"] {
            assert!(parse_port_range(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn networks() {
        assert_eq!(
            parse_network("10.0.0.0/8"),
            Ok("10.0.0.0/8".parse().unwrap())
        );
        assert_eq!(
            parse_network("10.0.0.5"),
            Ok("10.0.0.5/32".parse().unwrap())
        );
        assert_eq!(parse_network("fd00::/8"), Ok("fd00::/8".parse().unwrap()));
        assert_eq!(parse_network("::1"), Ok("::1/128".parse().unwrap()));
        for bad in [
            "",
            "10.0.0.5/8",
            "10.0.0.0/33",
            "ten",
            "10.0.0.0/",
            "fd00::1/8",
        ] {
            assert!(parse_network(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn portal_urls() {
        assert_eq!(
            parse_portal_url("https://portal.example.com/"),
            Ok("https://portal.example.com".to_string())
        );
        assert!(parse_portal_url("http://198.18.0.2:8080").is_ok());
        for bad in [
            "portal.example.com",
            "ftp://x",
            "http://",
            "https://x/?a=b",
            "https://x/#f",
        ] {
            assert!(parse_portal_url(bad).is_err(), "{bad:?} accepted");
        }
    }
}
