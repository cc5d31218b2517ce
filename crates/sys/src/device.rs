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

/// Why a device daemon could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("device id in {path}: {source}")]
    DeviceId { path: String, source: io::Error },
    #[error("no randomness for a key: {0}")]
    Random(io::Error),
    #[error(transparent)]
    Portal(#[from] crate::channel::ChannelError),
    #[error("cannot bind UDP port {port}: {source}")]
    Bind { port: u16, source: io::Error },
    #[error("no route toward the portal: {0}")]
    NoRoute(io::Error),
}

/// What a device daemon (client or gateway) is told on its command line.
#[derive(Clone, Debug)]
pub struct DeviceConfig {
    /// `http://...` portal URL.
    pub portal: String,
    pub token: String,
    /// Name shown in the portal.
    pub name: String,
    /// UDP port for WireGuard and ICE (0: any).
    pub port: u16,
    /// Where the device id lives.
    pub state_dir: std::path::PathBuf,
    /// Name of the TUN interface.
    pub interface: String,
    /// Where the loop publishes its counters (for `--metrics`).
    pub metrics: Option<std::sync::Arc<crate::metrics::DeviceMetrics>>,
}

/// A started device: its identity, its socket and its portal channel.
pub struct Started {
    pub device_id: Uuid,
    pub secret: [u8; 32],
    /// The address the host candidate carries.
    pub local: SocketAddr,
    pub udp: crate::batch::UdpBatch,
    pub channel: crate::channel::Channel,
    /// Socket buffer sizes the kernel granted (receive, send).
    pub buffers: (usize, usize),
    /// A seed for the node's randomness (fresh per process).
    pub seed: u64,
}

/// Everything both device daemons do before their loop: the device id, a
/// fresh key, the UDP socket, the host candidate's address and the portal
/// channel (with the device's identity in the query, SPEC section 5).
pub async fn start(
    party: crate::channel::Party,
    config: &DeviceConfig,
) -> Result<Started, StartError> {
    use crate::channel::{self, ChannelConfig, Party};
    let role = match party {
        Party::Client => "client",
        Party::Gateway => "gateway",
        Party::Relay => "relay",
    };
    let device_id = device_id(&config.state_dir, role).map_err(|source| StartError::DeviceId {
        path: config.state_dir.display().to_string(),
        source,
    })?;
    let secret = fresh_secret().map_err(StartError::Random)?;
    let portal_ip = channel::portal_ip(&config.portal).await?;
    let bind = |source| StartError::Bind {
        port: config.port,
        source,
    };
    let (socket, receive, send) =
        crate::udp::bind(SocketAddr::new([0, 0, 0, 0].into(), config.port)).map_err(bind)?;
    let port = socket.local_addr().map_err(bind)?.port();
    let local = SocketAddr::new(
        outward_address(portal_ip).map_err(StartError::NoRoute)?,
        port,
    );
    let udp = crate::batch::UdpBatch::new(socket).map_err(bind)?;
    let public = base64::Engine::encode(
        &base64::engine::general_purpose::STANDARD,
        postern_tunnel::wireguard::public_key(secret),
    );
    let channel = channel::open(ChannelConfig {
        portal: config.portal.clone(),
        party,
        token: config.token.clone(),
        query: vec![
            ("device_id".into(), device_id.to_string()),
            ("public_key".into(), public),
            ("name".into(), config.name.clone()),
            ("os".into(), "Linux".into()),
        ],
    })?;
    let mut seed = [0u8; 8];
    getrandom::fill(&mut seed).map_err(|e| StartError::Random(io::Error::other(e.to_string())))?;
    Ok(Started {
        device_id,
        seed: u64::from_le_bytes(seed),
        secret,
        local,
        udp,
        channel,
        buffers: (receive, send),
    })
}

/// The portal channel as a daemon's loop sees it: up or not, and what an
/// event means. The first connection failing is fatal (a clear error at
/// start, SPEC section 6); later losses are retried by the channel while
/// the data plane goes on (F22).
#[derive(Debug, Default)]
pub struct PortalLink {
    pub connected: bool,
    ever_connected: bool,
}

/// What the loop does with a channel event.
pub enum LinkEvent {
    /// A frame to handle.
    Frame(String),
    /// Stop with this error.
    Fatal(String),
    /// Nothing to do (logged here).
    Nothing,
}

impl PortalLink {
    /// `portal` and `sign_in_again` go into messages; `meanwhile` says what
    /// keeps working while the portal is away.
    pub fn on(
        &mut self,
        incoming: Option<crate::channel::Incoming>,
        portal: &str,
        sign_in_again: &str,
        meanwhile: &str,
    ) -> LinkEvent {
        use crate::channel::Incoming;
        match incoming {
            None => LinkEvent::Fatal("the portal channel stopped".into()),
            Some(Incoming::Unauthorized) => LinkEvent::Fatal(format!(
                "the portal refused the token (401): {sign_in_again}"
            )),
            Some(Incoming::Connected) => {
                self.connected = true;
                self.ever_connected = true;
                tracing::info!("connected to the portal");
                LinkEvent::Nothing
            }
            Some(Incoming::Lost { error, .. }) if !self.ever_connected => {
                LinkEvent::Fatal(format!("cannot reach the portal at {portal}: {error}"))
            }
            Some(Incoming::Lost { error, retry_in }) => {
                self.connected = false;
                tracing::warn!(
                    %error, retry_in_ms = retry_in.as_millis() as u64,
                    "portal connection lost; {meanwhile}"
                );
                LinkEvent::Nothing
            }
            Some(Incoming::Text(text)) => LinkEvent::Frame(text),
        }
    }
}

/// A 32-byte key from the portal's base64.
pub fn decode_key(text: &str) -> Option<[u8; 32]> {
    base64::Engine::decode(&base64::engine::general_purpose::STANDARD, text)
        .ok()?
        .try_into()
        .ok()
}

/// A peer's keys as the portal gave them; a change (the other side
/// restarted) means a new tunnel peer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerKeys {
    pub public_key: [u8; 32],
    pub preshared_key: [u8; 32],
}

impl PeerKeys {
    /// From the portal's base64; `None` if either is malformed.
    pub fn decode(public_key: &str, preshared_key: &str) -> Option<PeerKeys> {
        Some(PeerKeys {
            public_key: decode_key(public_key)?,
            preshared_key: decode_key(preshared_key)?,
        })
    }
}

/// Queues a frame for the portal; a full or closed queue drops it (the
/// frames are about a session the portal will resend state for).
pub fn send_frame(outgoing: &tokio::sync::mpsc::Sender<String>, message: &impl serde::Serialize) {
    match serde_json::to_string(message) {
        Ok(text) => {
            if outgoing.try_send(text).is_err() {
                tracing::debug!("portal queue full or closed; frame dropped");
            }
        }
        Err(error) => tracing::warn!(%error, "cannot encode a frame"),
    }
}

/// Adds the relays the node does not use yet (`known` remembers which).
pub fn add_relays(
    node: &mut postern_tunnel::node::Node,
    known: &mut std::collections::HashSet<Uuid>,
    relays: &[RelayInfo],
    now: std::time::Instant,
) {
    let ipv4 = node.local_address().is_ipv4();
    for (id, config) in relay_configs(relays, ipv4) {
        if known.insert(id) {
            tracing::info!(relay = %id, server = %config.server, "using relay");
            node.add_relay(config, now);
        }
    }
}
