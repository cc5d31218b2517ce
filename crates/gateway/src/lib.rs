//! The gateway daemon (SPEC F16-F22): connects out to the portal, takes
//! authorizations, answers clients' ICE, and forwards what
//! [`GatewayState`] allows into its TUN interface, where the kernel routes it
//! to the resources and masquerades it. Replies come back through the TUN and
//! go to the client they belong to. Holds no long-term state but its device
//! id; keeps forwarding for authorized clients while the portal is away.
//!
//! One task owns everything (node, state, TUN, socket): no locks on the
//! packet path. The portal channel runs beside it and reconnects on its own.

mod control;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use postern_sys::channel::{self, ChannelConfig, Incoming, Party};
use postern_sys::device;
use postern_sys::metrics::DeviceMetrics;
use postern_sys::tun::Tun;
use postern_tunnel::node::Node;
use postern_tunnel::wireguard::public_key;
use tokio::sync::mpsc;

pub use control::Control;

/// What `postern gateway` was told.
#[derive(Clone, Debug)]
pub struct GatewayConfig {
    /// `http://...` portal URL.
    pub portal: String,
    pub token: String,
    pub name: String,
    /// UDP port for WireGuard and ICE (0: any).
    pub port: u16,
    /// Where the device id lives.
    pub state_dir: PathBuf,
    /// Name of the TUN interface.
    pub interface: String,
    /// Where the loop publishes its counters (for `--metrics`).
    pub metrics: Option<Arc<DeviceMetrics>>,
}

/// Largest datagram or packet handled.
const BUFFER: usize = 65_536;
/// Packets taken from one ready source before the others get a turn.
const BATCH: usize = 64;

/// Runs until `stop` resolves (then says goodbye) or the portal refuses the
/// token.
pub async fn run(
    config: GatewayConfig,
    stop: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()> {
    let device_id = device::device_id(&config.state_dir, "gateway")
        .with_context(|| format!("device id in {}", config.state_dir.display()))?;
    let secret = device::fresh_secret().context("random key")?;
    let portal_ip = postern_sys::channel::portal_ip(&config.portal).await?;
    let (socket, receive_buffer, send_buffer) =
        postern_sys::udp::bind(SocketAddr::new([0, 0, 0, 0].into(), config.port))
            .with_context(|| format!("cannot bind UDP port {}", config.port))?;
    let local = SocketAddr::new(
        device::outward_address(portal_ip).context("no route toward the portal")?,
        socket.local_addr()?.port(),
    );
    let public = base64::Engine::encode(
        &base64::engine::general_purpose::STANDARD,
        public_key(secret),
    );
    let mut channel = channel::open(ChannelConfig {
        portal: config.portal.clone(),
        party: Party::Gateway,
        token: config.token.clone(),
        query: vec![
            ("device_id".into(), device_id.to_string()),
            ("public_key".into(), public),
            ("name".into(), config.name.clone()),
            ("os".into(), "Linux".into()),
        ],
    })?;
    tracing::info!(%device_id, %local, receive_buffer, send_buffer, name = %config.name, "gateway starting");
    let seed = u64::from_le_bytes(secret[..8].try_into().unwrap_or_default());
    let node = Node::new(local, secret, false, seed);
    let mut gateway = Gateway {
        control: Control::new(node, config.interface.clone()),
        socket,
        outgoing: channel.outgoing.clone(),
    };
    let mut udp_buffer = vec![0u8; BUFFER];
    let mut tun_buffer = vec![0u8; BUFFER];
    let mut out_buffer = vec![0u8; BUFFER];
    let mut ever_connected = false;
    let mut connected = false;
    tokio::pin!(stop);
    loop {
        let now = Instant::now();
        let deadline = gateway
            .control
            .poll_timeout()
            .unwrap_or(now + Duration::from_secs(1));
        tokio::select! {
            () = &mut stop => break,
            incoming = channel.incoming.recv() => match incoming {
                None => anyhow::bail!("the portal channel stopped"),
                Some(Incoming::Unauthorized) => anyhow::bail!(
                    "the portal refused the token (401): create a new gateway token"
                ),
                Some(Incoming::Connected) => {
                    ever_connected = true;
                    connected = true;
                    tracing::info!("connected to the portal");
                }
                Some(Incoming::Lost { error, .. }) if !ever_connected => {
                    anyhow::bail!("cannot reach the portal at {}: {error}", config.portal);
                }
                Some(Incoming::Lost { error, retry_in }) => {
                    connected = false;
                    tracing::warn!(
                        %error, retry_in_ms = retry_in.as_millis() as u64,
                        "portal connection lost; forwarding goes on"
                    );
                }
                Some(Incoming::Text(text)) => {
                    if let Some(fatal) = gateway.control.handle_portal(&text, Instant::now(), &gateway.outgoing) {
                        anyhow::bail!(fatal);
                    }
                }
            },
            received = gateway.socket.recv_from(&mut udp_buffer) => {
                let (n, source) = received.context("UDP receive")?;
                gateway.handle_network(source, n, &mut udp_buffer, &mut out_buffer);
                for _ in 1..BATCH {
                    match gateway.socket.try_recv_from(&mut udp_buffer) {
                        Ok((n, source)) => gateway.handle_network(source, n, &mut udp_buffer, &mut out_buffer),
                        Err(_) => break,
                    }
                }
            }
            received = recv_tun(gateway.control.tun()) , if gateway.control.tun().is_some() => {
                let _ = received;
                gateway.handle_resources(&mut tun_buffer, &mut out_buffer);
            }
            () = tokio::time::sleep_until(deadline.into()) => {
                gateway.control.handle_timeout(Instant::now());
                if let Some(metrics) = &config.metrics {
                    let control = &gateway.control;
                    metrics.publish(&control.tally, connected, control.peer_count(), control.state.client_count());
                }
            }
        }
        gateway.flush().await;
    }
    let told = gateway.control.goodbye(Instant::now());
    gateway.flush().await;
    tracing::info!(clients_told = told, "stopping");
    Ok(())
}

/// Waits until the TUN has a packet (the read happens in the handler).
async fn recv_tun(tun: Option<&Tun>) -> std::io::Result<()> {
    match tun {
        Some(tun) => tun.readable().await,
        None => std::future::pending().await,
    }
}

struct Gateway {
    control: Control,
    socket: tokio::net::UdpSocket,
    outgoing: mpsc::Sender<String>,
}

impl Gateway {
    /// A datagram from the network: data from a client goes straight to the
    /// TUN if the state allows it; everything else through the node.
    fn handle_network(
        &mut self,
        source: SocketAddr,
        n: usize,
        datagram: &mut [u8],
        out: &mut [u8],
    ) {
        self.control.tally.datagrams_received += 1;
        let now = Instant::now();
        let Some((client, length)) =
            self.control
                .node
                .decrypt_into(source, &datagram[..n], now, out)
        else {
            return;
        };
        self.control
            .handle_from_client(client, &mut out[..length], now);
    }

    /// Packets from resources back to their clients.
    fn handle_resources(&mut self, buffer: &mut [u8], out: &mut [u8]) {
        let now = Instant::now();
        for _ in 0..BATCH {
            let Some(tun) = self.control.tun() else {
                return;
            };
            let n = match tun.try_recv(buffer) {
                Ok(n) => n,
                Err(_) => return,
            };
            self.control.tally.tun_packets_read += 1;
            self.control.tally.tun_bytes_read += n as u64;
            let packet = &mut buffer[..n];
            let Some(client) = self.control.state.handle_to_client(packet, now) else {
                self.control.tally.drop_reason("no_client");
                continue;
            };
            if let Some((destination, length)) =
                self.control.node.encrypt_into(client, packet, now, out)
            {
                device::send(
                    &self.socket,
                    &out[..length],
                    destination,
                    &mut self.control.tally,
                );
            }
        }
    }

    /// Datagrams the node queued, node events, frames for the portal.
    async fn flush(&mut self) {
        loop {
            device::flush_transmits(
                &mut self.control.node,
                &self.socket,
                &mut self.control.tally,
            );
            let Some(event) = self.control.node.poll_event() else {
                break;
            };
            self.control
                .handle_node_event(event, Instant::now(), &self.outgoing);
        }
    }
}
