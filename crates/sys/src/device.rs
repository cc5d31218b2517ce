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
    let path = state_dir.join(format!("{role}-device-id"));
    if let Ok(text) = std::fs::read_to_string(&path)
        && let Ok(id) = text.trim().parse()
    {
        return Ok(id);
    }
    std::fs::create_dir_all(state_dir)?;
    let id = Uuid::new_v4();
    std::fs::write(&path, format!("{id}\n"))?;
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
