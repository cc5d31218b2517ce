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
    probe.connect(SocketAddr::new(toward, 9))?;
    Ok(probe.local_addr()?.ip())
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
