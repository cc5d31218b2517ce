//! What a device daemon (client or gateway) needs around its
//! [`postern_tunnel::node::Node`]: a stable device id, a fresh WireGuard
//! key per process, the address its host candidate carries, relays from the
//! portal's list.

use std::io;
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::path::Path;
use std::time::{Duration, Instant};

use postern_model::protocol::RelayInfo;
use postern_tunnel::node::RelayConfig;
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

/// A WireGuard secret for this process only (never stored, DESIGN.md 6).
pub fn fresh_secret() -> io::Result<[u8; 32]> {
    let mut secret = [0u8; 32];
    getrandom::fill(&mut secret).map_err(|e| io::Error::other(e.to_string()))?;
    Ok(secret)
}

/// The address of this host on the route toward `toward` (no packet is
/// sent): what the host candidate advertises when the socket is bound to
/// the wildcard address.
pub fn outward_address(toward: IpAddr) -> io::Result<IpAddr> {
    let wildcard: SocketAddr = if toward.is_ipv4() {
        "0.0.0.0:0".parse().map_err(io::Error::other)?
    } else {
        "[::]:0".parse().map_err(io::Error::other)?
    };
    let probe = UdpSocket::bind(wildcard)?;
    probe.connect(SocketAddr::new(toward, 9))?;
    Ok(probe.local_addr()?.ip())
}

/// The portal's relays as TURN servers for the node, one per address of the
/// socket's family.
pub fn relay_configs(relays: &[RelayInfo], ipv4: bool) -> Vec<(Uuid, RelayConfig)> {
    relays
        .iter()
        .flat_map(|relay| {
            relay
                .addresses
                .iter()
                .filter(move |a| a.is_ipv4() == ipv4)
                .map(move |address| {
                    (
                        relay.id,
                        RelayConfig {
                            server: *address,
                            username: relay.username.clone(),
                            password: relay.password.clone(),
                        },
                    )
                })
        })
        .collect()
}

/// A portal timestamp on the monotonic clock.
pub fn deadline(at: Option<jiff::Timestamp>, now: Instant) -> Option<Instant> {
    let at = at?;
    let left = at.duration_since(jiff::Timestamp::now());
    let left = Duration::try_from(left).unwrap_or(Duration::ZERO);
    Some(now + left)
}
