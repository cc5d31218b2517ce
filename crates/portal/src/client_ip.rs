//! The client's address (SPEC 7.2, security review M7). Behind a reverse
//! proxy the TCP peer is the proxy; with `--trusted-proxies` the portal
//! takes the client from the header the proxy appends to, but only when the
//! TCP peer is one of those proxies. It walks that header from the right,
//! skipping trusted proxies, and takes the first untrusted address: what a
//! client writes into the header itself lies to the left of what its proxy
//! appended, so prepending spoofs nothing. Anything it cannot read (garbage,
//! `unknown`, obfuscated `_names`) ends the walk at the TCP peer.
//!
//! Every use of the client address (session log, device `remote_ip`,
//! `remote_ip`/`country` conditions, sign-in rate limits and code source
//! networks) goes through [`ClientAddr`] or [`client_ip`].

use std::net::{IpAddr, SocketAddr};

use axum::extract::{ConnectInfo, FromRequestParts};
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode};
use ipnet::IpNet;

/// Which header the trusted proxies append the client to.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ForwardedHeader {
    /// `X-Forwarded-For: client, proxy1, ...` (nginx, HAProxy, most load
    /// balancers).
    #[default]
    XForwardedFor,
    /// RFC 7239 `Forwarded: for=client, for=proxy1`.
    Forwarded,
}

impl ForwardedHeader {
    pub fn name(self) -> &'static str {
        match self {
            ForwardedHeader::XForwardedFor => "x-forwarded-for",
            ForwardedHeader::Forwarded => "forwarded",
        }
    }
}

impl std::str::FromStr for ForwardedHeader {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        match text.trim().to_ascii_lowercase().as_str() {
            "x-forwarded-for" => Ok(ForwardedHeader::XForwardedFor),
            "forwarded" => Ok(ForwardedHeader::Forwarded),
            _ => Err(format!("{text:?}: expected x-forwarded-for or forwarded")),
        }
    }
}

/// The proxies whose forwarding header the portal believes. Empty (the
/// default): the headers are ignored and the client is the TCP peer.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TrustedProxies {
    pub networks: Vec<IpNet>,
    /// Only this header is read: a proxy that appends to one passes the
    /// other through as the client wrote it.
    pub header: ForwardedHeader,
}

impl TrustedProxies {
    pub fn trusts(&self, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        self.networks.iter().any(|net| net.contains(&ip))
    }
}

/// The client address of a request from `peer` carrying `headers`.
pub fn client_ip(peer: IpAddr, headers: &HeaderMap, proxies: &TrustedProxies) -> IpAddr {
    let peer = canonical(peer);
    if !proxies.trusts(peer) {
        return peer;
    }
    let mut joined = String::new();
    for value in headers.get_all(proxies.header.name()) {
        let Ok(text) = value.to_str() else {
            return peer;
        };
        if !joined.is_empty() {
            joined.push(',');
        }
        joined.push_str(text);
    }
    let entries = match proxies.header {
        ForwardedHeader::XForwardedFor => joined.split(',').map(node).collect::<Vec<_>>(),
        ForwardedHeader::Forwarded => match forwarded_for(&joined) {
            Some(entries) => entries,
            None => return peer,
        },
    };
    let mut furthest = peer;
    for entry in entries.into_iter().rev() {
        match entry {
            // A proxy that wrote nothing (nginx's `$proxy_add_x_forwarded_for`
            // with no header from the client makes no empty entries, but
            // hand-written configurations do).
            Node::Empty => continue,
            Node::Unreadable => return peer,
            Node::Ip(ip) if proxies.trusts(ip) => furthest = ip,
            Node::Ip(ip) => return ip,
        }
    }
    // Every hop is a trusted proxy: the furthest one is the client.
    furthest
}

/// IPv4-mapped IPv6 (`::ffff:192.0.2.1`, a dual-stack listener's peers) as
/// the IPv4 address it is, so it meets IPv4 networks and conditions.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        IpAddr::V4(_) => ip,
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Node {
    Ip(IpAddr),
    Empty,
    /// `unknown`, an obfuscated `_name`, or garbage.
    Unreadable,
}

/// One node: `192.0.2.1`, `192.0.2.1:443`, `2001:db8::1`, `[2001:db8::1]`,
/// `[2001:db8::1]:443`, optionally quoted.
fn node(text: &str) -> Node {
    let text = text.trim();
    let text = text
        .strip_prefix('"')
        .and_then(|t| t.strip_suffix('"'))
        .unwrap_or(text)
        .trim();
    if text.is_empty() {
        return Node::Empty;
    }
    if let Ok(ip) = text.parse::<IpAddr>() {
        return Node::Ip(canonical(ip));
    }
    if let Ok(socket) = text.parse::<SocketAddr>() {
        return Node::Ip(canonical(socket.ip()));
    }
    if let Some(inner) = text.strip_prefix('[').and_then(|t| t.strip_suffix(']'))
        && let Ok(ip) = inner.parse::<std::net::Ipv6Addr>()
    {
        return Node::Ip(canonical(IpAddr::V6(ip)));
    }
    Node::Unreadable
}

/// The `for=` node of each element of a `Forwarded` value (RFC 7239 4),
/// in order; an element without `for=` is unreadable. `None`: the value is
/// not well-formed (an unterminated quoted string).
fn forwarded_for(value: &str) -> Option<Vec<Node>> {
    let mut elements = Vec::new();
    for element in split_outside_quotes(value, ',')? {
        if element.trim().is_empty() {
            elements.push(Node::Empty);
            continue;
        }
        let mut found = Node::Unreadable;
        for pair in split_outside_quotes(&element, ';')? {
            let Some((key, value)) = pair.split_once('=') else {
                continue;
            };
            if key.trim().eq_ignore_ascii_case("for") {
                found = match node(value) {
                    // `for=""` names no one.
                    Node::Empty => Node::Unreadable,
                    other => other,
                };
                break;
            }
        }
        elements.push(found);
    }
    Some(elements)
}

/// `text` split at `separator` where it is not inside a quoted string
/// (backslash escapes inside quotes, left in place); `None` if a quote is
/// left open.
fn split_outside_quotes(text: &str, separator: char) -> Option<Vec<String>> {
    let mut parts = Vec::new();
    let mut current = String::new();
    let mut quoted = false;
    let mut escaped = false;
    for c in text.chars() {
        if escaped {
            escaped = false;
        } else if quoted && c == '\\' {
            // Kept, so splitting a part again sees the same escapes.
            escaped = true;
        } else if c == '"' {
            quoted = !quoted;
        } else if c == separator && !quoted {
            parts.push(std::mem::take(&mut current));
            continue;
        }
        current.push(c);
    }
    if quoted || escaped {
        return None;
    }
    parts.push(current);
    Some(parts)
}

/// The client's address as an extractor: the TCP peer, or with trusted
/// proxies the client they forwarded for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClientAddr(pub IpAddr);

/// What the extractor needs of the router's state: the proxies it trusts
/// (the state implements it; this module stays below it).
pub trait ProxyTrust {
    fn trusted_proxies(&self) -> &TrustedProxies;
}

impl<S: ProxyTrust + Send + Sync> FromRequestParts<S> for ClientAddr {
    type Rejection = (StatusCode, &'static str);

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let Some(ConnectInfo(peer)) = parts.extensions.get::<ConnectInfo<SocketAddr>>() else {
            return Err((
                StatusCode::INTERNAL_SERVER_ERROR,
                "the portal does not know the peer address",
            ));
        };
        // A `[::]` listener names IPv4 peers by v4-mapped addresses;
        // conditions and logs see the IPv4 address.
        Ok(ClientAddr(client_ip(
            peer.ip().to_canonical(),
            &parts.headers,
            state.trusted_proxies(),
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    fn proxies(header: ForwardedHeader, networks: &[&str]) -> TrustedProxies {
        TrustedProxies {
            networks: networks.iter().map(|n| n.parse().unwrap()).collect(),
            header,
        }
    }

    fn headers(name: &'static str, values: &[&str]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for value in values {
            map.append(name, HeaderValue::from_str(value).unwrap());
        }
        map
    }

    const XFF: ForwardedHeader = ForwardedHeader::XForwardedFor;
    const FWD: ForwardedHeader = ForwardedHeader::Forwarded;

    fn xff(peer: &str, values: &[&str]) -> IpAddr {
        let trusted = proxies(XFF, &["10.0.0.0/8", "127.0.0.1/32", "2001:db8:ffff::/48"]);
        client_ip(ip(peer), &headers("x-forwarded-for", values), &trusted)
    }

    fn fwd(peer: &str, values: &[&str]) -> IpAddr {
        let trusted = proxies(FWD, &["10.0.0.0/8", "127.0.0.1/32", "2001:db8:ffff::/48"]);
        client_ip(ip(peer), &headers("forwarded", values), &trusted)
    }

    #[test]
    fn without_trusted_proxies_the_headers_are_ignored() {
        let none = TrustedProxies::default();
        let mut map = headers("x-forwarded-for", &["203.0.113.9"]);
        map.append("forwarded", HeaderValue::from_static("for=203.0.113.9"));
        assert_eq!(client_ip(ip("127.0.0.1"), &map, &none), ip("127.0.0.1"));
        let forwarded = TrustedProxies {
            header: FWD,
            ..TrustedProxies::default()
        };
        assert_eq!(
            client_ip(ip("127.0.0.1"), &map, &forwarded),
            ip("127.0.0.1")
        );
    }

    #[test]
    fn an_untrusted_peer_spoofs_nothing() {
        assert_eq!(xff("198.51.100.7", &["203.0.113.9"]), ip("198.51.100.7"));
        assert_eq!(
            fwd("198.51.100.7", &["for=203.0.113.9"]),
            ip("198.51.100.7")
        );
    }

    #[test]
    fn x_forwarded_for_walks_from_the_right() {
        assert_eq!(xff("127.0.0.1", &["203.0.113.9"]), ip("203.0.113.9"));
        // The client prepended a lie; the proxy appended the truth.
        assert_eq!(
            xff("127.0.0.1", &["1.2.3.4, 203.0.113.9"]),
            ip("203.0.113.9")
        );
        // Two trusted proxies in a row are skipped.
        assert_eq!(
            xff("127.0.0.1", &["1.2.3.4, 203.0.113.9, 10.1.2.3"]),
            ip("203.0.113.9")
        );
        // Several header lines are one list, in order.
        assert_eq!(
            xff("127.0.0.1", &["1.2.3.4", "203.0.113.9", "10.1.2.3"]),
            ip("203.0.113.9")
        );
        // No header from a trusted proxy: the proxy itself.
        assert_eq!(xff("127.0.0.1", &[]), ip("127.0.0.1"));
        // Every hop trusted: the furthest.
        assert_eq!(xff("127.0.0.1", &["10.9.9.9, 10.1.1.1"]), ip("10.9.9.9"));
    }

    #[test]
    fn x_forwarded_for_reads_ports_brackets_quotes_and_ipv6() {
        assert_eq!(xff("127.0.0.1", &["203.0.113.9:5555"]), ip("203.0.113.9"));
        assert_eq!(xff("127.0.0.1", &["2001:db8::7"]), ip("2001:db8::7"));
        assert_eq!(xff("127.0.0.1", &["[2001:db8::7]"]), ip("2001:db8::7"));
        assert_eq!(xff("127.0.0.1", &["[2001:db8::7]:443"]), ip("2001:db8::7"));
        assert_eq!(xff("127.0.0.1", &["\"203.0.113.9\""]), ip("203.0.113.9"));
        assert_eq!(xff("127.0.0.1", &["  203.0.113.9  ,"]), ip("203.0.113.9"));
        assert_eq!(xff("127.0.0.1", &["::ffff:203.0.113.9"]), ip("203.0.113.9"));
        // An IPv4-mapped peer meets IPv4 networks.
        assert_eq!(xff("::ffff:127.0.0.1", &["203.0.113.9"]), ip("203.0.113.9"));
        assert_eq!(xff("2001:db8:ffff::1", &["203.0.113.9"]), ip("203.0.113.9"));
    }

    #[test]
    fn x_forwarded_for_garbage_falls_back_to_the_peer() {
        for value in [
            "unknown",
            "_hidden",
            "not an address",
            "203.0.113.9, garbage",
            "256.1.1.1",
            "[2001:db8::7",
            "2001:db8::7]:80",
            "203.0.113.9:99999",
            "\"",
        ] {
            assert_eq!(xff("127.0.0.1", &[value]), ip("127.0.0.1"), "{value}");
        }
        // Garbage left of the first untrusted address is never looked at.
        assert_eq!(
            xff("127.0.0.1", &["garbage, 203.0.113.9"]),
            ip("203.0.113.9")
        );
        // A value that is not text.
        let mut map = HeaderMap::new();
        map.append(
            "x-forwarded-for",
            HeaderValue::from_bytes(b"203.0.113.9\xff").unwrap(),
        );
        let trusted = proxies(XFF, &["127.0.0.1/32"]);
        assert_eq!(client_ip(ip("127.0.0.1"), &map, &trusted), ip("127.0.0.1"));
    }

    #[test]
    fn forwarded_reads_rfc_7239() {
        assert_eq!(fwd("127.0.0.1", &["for=203.0.113.9"]), ip("203.0.113.9"));
        assert_eq!(
            fwd("127.0.0.1", &["For=\"203.0.113.9:80\""]),
            ip("203.0.113.9")
        );
        assert_eq!(
            fwd("127.0.0.1", &["for=\"[2001:db8:cafe::17]:4711\""]),
            ip("2001:db8:cafe::17")
        );
        assert_eq!(
            fwd("127.0.0.1", &["for=\"[2001:db8:cafe::17]\""]),
            ip("2001:db8:cafe::17")
        );
        assert_eq!(
            fwd(
                "127.0.0.1",
                &["for=192.0.2.60;proto=http;by=203.0.113.43;host=\"a;b,c\""]
            ),
            ip("192.0.2.60")
        );
        assert_eq!(
            fwd("127.0.0.1", &["proto=https; for=192.0.2.60"]),
            ip("192.0.2.60")
        );
        // Right to left, over elements and header lines.
        assert_eq!(
            fwd(
                "127.0.0.1",
                &["for=1.2.3.4, for=198.51.100.17;by=x", "for=10.0.0.1"]
            ),
            ip("198.51.100.17")
        );
        // A quoted comma does not split elements.
        assert_eq!(
            fwd("127.0.0.1", &["for=1.2.3.4;host=\"x,for=9.9.9.9\""]),
            ip("1.2.3.4")
        );
        assert_eq!(
            fwd("127.0.0.1", &["for=1.2.3.4;host=\"x\\\"y,z\""]),
            ip("1.2.3.4")
        );
    }

    #[test]
    fn forwarded_obfuscated_or_garbage_falls_back_to_the_peer() {
        for value in [
            "for=unknown",
            "for=_hidden",
            "for=\"_SEVKISEK\"",
            "for=1.2.3.4, for=_gazonk",
            "for=1.2.3.4, proto=https",
            "for=\"",
            "for=\"203.0.113.9",
            "for=\"[2001:db8::1\"",
            "for=",
            "for=\"\"",
            "===,,;;\"\\",
            "for=203.0.113.9\\",
        ] {
            assert_eq!(fwd("127.0.0.1", &[value]), ip("127.0.0.1"), "{value}");
        }
    }

    #[test]
    fn only_the_configured_header_counts() {
        let trusted = proxies(XFF, &["127.0.0.1/32"]);
        let map = headers("forwarded", &["for=203.0.113.9"]);
        assert_eq!(client_ip(ip("127.0.0.1"), &map, &trusted), ip("127.0.0.1"));
        let trusted = proxies(FWD, &["127.0.0.1/32"]);
        let map = headers("x-forwarded-for", &["203.0.113.9"]);
        assert_eq!(client_ip(ip("127.0.0.1"), &map, &trusted), ip("127.0.0.1"));
    }

    #[test]
    fn header_names_parse() {
        assert_eq!("X-Forwarded-For".parse(), Ok(XFF));
        assert_eq!("forwarded".parse(), Ok(FWD));
        assert!("x-real-ip".parse::<ForwardedHeader>().is_err());
    }

    proptest::proptest! {
        #[test]
        fn never_panics(value in "\\PC{0,80}", peer in proptest::prelude::any::<[u8; 4]>()) {
            let Ok(value) = HeaderValue::from_str(&value) else { return Ok(()); };
            for header in [XFF, FWD] {
                let trusted = proxies(header, &["0.0.0.0/0"]);
                let mut map = HeaderMap::new();
                map.append(header.name(), value.clone());
                let _ = client_ip(IpAddr::from(peer), &map, &trusted);
            }
        }
    }
}
