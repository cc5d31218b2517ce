//! A device's identity and address on this host: the stable device id of
//! the installation, a fresh WireGuard secret per process, and the address
//! its host candidate carries.

use std::io;
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::path::Path;

use uuid::Uuid;

/// The device id of this installation (`{state_dir}/{role}-device-id`),
/// created on first start: the portal keeps the device's tunnel addresses
/// under it.
pub fn device_id(state_dir: &Path, role: &str) -> io::Result<Uuid> {
    crate::files::private_dir(state_dir)?;
    let path = state_dir.join(format!("{role}-device-id"));
    if let Ok(bytes) = crate::files::read(&path)
        && let Ok(id) = String::from_utf8_lossy(&bytes).trim().parse()
    {
        return Ok(id);
    }
    let id = Uuid::new_v4();
    crate::files::write(&path, format!("{id}\n").as_bytes())?;
    Ok(id)
}

/// 32 random bytes: a WireGuard secret for this process only (never
/// stored, docs/architecture.md, security model).
pub fn fresh_secret() -> io::Result<[u8; 32]> {
    let mut secret = [0u8; 32];
    getrandom::fill(&mut secret).map_err(|e| io::Error::other(e.to_string()))?;
    Ok(secret)
}

/// A fresh random seed.
pub fn fresh_seed() -> io::Result<u64> {
    let mut seed = [0u8; 8];
    getrandom::fill(&mut seed).map_err(|e| io::Error::other(e.to_string()))?;
    Ok(u64::from_le_bytes(seed))
}

/// The address of this host on the route toward `toward` (no packet is
/// sent): what the host candidate advertises when the socket is bound to
/// the wildcard address.
pub fn outward_address(toward: IpAddr) -> io::Result<IpAddr> {
    let wildcard: SocketAddr = if toward.is_ipv4() {
        SocketAddr::from(([0, 0, 0, 0], 0))
    } else {
        SocketAddr::from(([0u16; 8], 0))
    };
    let probe = UdpSocket::bind(wildcard)?;
    // Looked up as the tunnel socket's datagrams are routed: past the
    // tunnel's own routes (an Internet resource covers every address).
    let _ = nix::sys::socket::setsockopt(
        &probe,
        nix::sys::socket::sockopt::Mark,
        &crate::route::FWMARK,
    );
    probe.connect(SocketAddr::new(toward, 9))?;
    Ok(probe.local_addr()?.ip())
}

/// Where the route lookup for "the internet" in a family points when the
/// portal is of the other family: documentation addresses (RFC 5737,
/// RFC 3849), which a host routes by its default route like any global
/// address and which nothing claims (fake-IP proxies such as Clash take
/// 198.18.0.0/16 for themselves).
const INTERNET_V4: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(203, 0, 113, 1));
const INTERNET_V6: IpAddr = IpAddr::V6(std::net::Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1));

/// The host candidates' addresses: the source toward the portal, and the
/// source toward the internet in the other family if the host has a
/// route there (a dual-stack host gathers both; no packet is sent).
pub fn outward_addresses(portal: IpAddr) -> io::Result<Vec<IpAddr>> {
    let mut addresses = vec![outward_address(portal)?];
    let other = if portal.is_ipv4() {
        INTERNET_V6
    } else {
        INTERNET_V4
    };
    if let Ok(address) = outward_address(other) {
        addresses.push(address);
    }
    Ok(addresses)
}

/// This host's own addresses (every interface's), which a gateway never
/// forwards a client's packet to.
pub fn host_addresses() -> io::Result<Vec<IpAddr>> {
    let mut addresses = Vec::new();
    for interface in nix::ifaddrs::getifaddrs().map_err(io::Error::from)? {
        let Some(address) = interface.address else {
            continue;
        };
        if let Some(v4) = address.as_sockaddr_in() {
            addresses.push(IpAddr::V4(v4.ip()));
        } else if let Some(v6) = address.as_sockaddr_in6() {
            addresses.push(IpAddr::V6(v6.ip()));
        }
    }
    addresses.sort();
    addresses.dedup();
    Ok(addresses)
}
