//! Everything a device daemon does before its loop: the device id, a fresh
//! key, the UDP socket, the host candidate's address and the portal channel
//! (with the device's identity and version in the query, SPEC section 5).

use std::io;
use std::net::SocketAddr;

use postern_model::PublicKey;
use postern_sys::batch::UdpBatch;
use postern_sys::channel::{self, Channel, ChannelConfig, ChannelError};
use postern_sys::device::{device_id, fresh_secret, fresh_seed, outward_addresses};
use uuid::Uuid;

use crate::DeviceConfig;

/// Who the device is to the portal.
#[derive(Clone, Copy, Debug)]
pub enum Party {
    Client,
    Gateway,
}

/// Why a device daemon could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("device id in {path}: {source}")]
    DeviceId { path: String, source: io::Error },
    #[error("no randomness for a key: {0}")]
    Random(io::Error),
    #[error(transparent)]
    Portal(#[from] ChannelError),
    #[error("cannot bind UDP port {port}: {source}")]
    Bind { port: u16, source: io::Error },
    #[error("no route toward the portal: {0}")]
    NoRoute(io::Error),
}

/// A started device: its identity, its socket and its portal channel.
pub struct Started {
    pub party: Party,
    pub device_id: Uuid,
    pub secret: [u8; 32],
    /// The addresses the host candidates carry: toward the portal first,
    /// then the other family's on a dual-stack host.
    pub locals: Vec<SocketAddr>,
    pub udp: UdpBatch,
    pub channel: Channel,
    /// Socket buffer sizes the kernel granted (receive, send).
    pub buffers: (usize, usize),
    /// A seed for the role's randomness (fresh per process).
    pub seed: u64,
    /// The portal's address (no resource route may cover it).
    pub portal_ip: std::net::IpAddr,
}

pub async fn start(party: Party, config: &DeviceConfig) -> Result<Started, StartError> {
    let (role, channel_party) = match party {
        Party::Client => ("client", channel::Party::Client),
        Party::Gateway => ("gateway", channel::Party::Gateway),
    };
    let device_id = device_id(&config.state_dir, role).map_err(|source| StartError::DeviceId {
        path: config.state_dir.display().to_string(),
        source,
    })?;
    let secret = fresh_secret().map_err(StartError::Random)?;
    let seed = fresh_seed().map_err(StartError::Random)?;
    let portal_ip = channel::portal_ip(&config.portal).await?;
    let bind = |source| StartError::Bind {
        port: config.port,
        source,
    };
    let (socket, receive, send) = postern_sys::udp::bind_dual_stack(config.port).map_err(bind)?;
    let bound = socket.local_addr().map_err(bind)?;
    let sources = outward_addresses(portal_ip).map_err(StartError::NoRoute)?;
    let locals = host_candidates(&sources, bound);
    let udp = UdpBatch::new(socket).map_err(bind)?;
    let public = PublicKey(postern_tunnel::wireguard::public_key(secret));
    let channel = channel::open(ChannelConfig {
        portal: config.portal.clone(),
        party: channel_party,
        token: config.token.clone(),
        query: vec![
            ("device_id".into(), device_id.to_string()),
            ("public_key".into(), public.to_base64()),
            ("name".into(), config.name.clone()),
            ("os".into(), "Linux".into()),
            // The portal refuses versions outside its window (HTTP 426).
            ("version".into(), env!("CARGO_PKG_VERSION").into()),
        ],
        trust: config.trust.clone(),
    })?;
    Ok(Started {
        party,
        device_id,
        seed,
        secret,
        locals,
        udp,
        channel,
        buffers: (receive, send),
        portal_ip,
    })
}

/// The host candidates' socket addresses: each source on the socket's
/// port, IPv6 ones only if the socket is dual-stack (an IPv4-only socket
/// cannot send from them).
pub fn host_candidates(sources: &[std::net::IpAddr], socket: SocketAddr) -> Vec<SocketAddr> {
    sources
        .iter()
        .filter(|ip| ip.is_ipv4() || socket.is_ipv6())
        .map(|ip| SocketAddr::new(*ip, socket.port()))
        .collect()
}
