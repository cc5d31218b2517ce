//! The client daemon (SPEC F16-F21): connects to the portal, routes the
//! resources it was given into a TUN interface, asks for access on the
//! first packet to each, and tunnels to the gateway the portal picked
//! (direct or relayed). `postern client status` asks it over a unix socket.
//!
//! One task owns the node, the state, the TUN and the socket: no locks on
//! the packet path; the portal channel and the status socket run beside it.

mod control;
pub mod status;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use postern_sys::channel::{self, ChannelConfig, Incoming, Party};
use postern_sys::device;
use postern_sys::metrics::DeviceMetrics;
use postern_sys::tun::Tun;
use postern_tunnel::client::{DropReason, Verdict};
use postern_tunnel::node::Node;
use postern_tunnel::wireguard::public_key;
use tokio::sync::mpsc;

use control::Control;

#[derive(Clone, Debug)]
pub struct ClientDaemonConfig {
    pub portal: String,
    pub token: String,
    pub name: String,
    pub port: u16,
    pub state_dir: PathBuf,
    pub interface: String,
    pub status_socket: PathBuf,
    /// Where the loop publishes its counters (for `--metrics`).
    pub metrics: Option<Arc<DeviceMetrics>>,
}

const BUFFER: usize = 65_536;
const BATCH: usize = 64;

/// Runs until `stop` resolves or the portal refuses the token.
pub async fn run(
    config: ClientDaemonConfig,
    stop: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()> {
    let device_id = device::device_id(&config.state_dir, "client")
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
        party: Party::Client,
        token: config.token.clone(),
        query: vec![
            ("device_id".into(), device_id.to_string()),
            ("public_key".into(), public),
            ("name".into(), config.name.clone()),
            ("os".into(), "Linux".into()),
        ],
    })?;
    let (status_tx, mut status_rx) = mpsc::channel::<status::Request>(8);
    status::serve(&config.status_socket, status_tx)
        .with_context(|| format!("cannot serve status on {}", config.status_socket.display()))?;
    let _socket_file = status::SocketFile(config.status_socket.clone());
    tracing::info!(%device_id, %local, receive_buffer, send_buffer, "client starting");
    let seed = u64::from_le_bytes(secret[..8].try_into().unwrap_or_default());
    let mut control = Control::new(
        Node::new(local, secret, true, seed),
        config.interface.clone(),
    );
    let outgoing = channel.outgoing.clone();
    let mut connected = false;
    let mut udp_buffer = vec![0u8; BUFFER];
    let mut tun_buffer = vec![0u8; BUFFER];
    let mut out_buffer = vec![0u8; BUFFER];
    let mut ever_connected = false;
    tokio::pin!(stop);
    loop {
        let now = Instant::now();
        let deadline = control
            .poll_timeout()
            .unwrap_or(now + Duration::from_secs(1));
        tokio::select! {
            () = &mut stop => break,
            incoming = channel.incoming.recv() => match incoming {
                None => anyhow::bail!("the portal channel stopped"),
                Some(Incoming::Unauthorized) => anyhow::bail!(
                    "the portal refused the token (401): sign in again"
                ),
                Some(Incoming::Connected) => {
                    connected = true;
                    ever_connected = true;
                    tracing::info!("connected to the portal");
                }
                Some(Incoming::Lost { error, .. }) if !ever_connected => {
                    anyhow::bail!("cannot reach the portal at {}: {error}", config.portal);
                }
                Some(Incoming::Lost { error, retry_in }) => {
                    connected = false;
                    tracing::warn!(
                        %error, retry_in_ms = retry_in.as_millis() as u64,
                        "portal connection lost; established tunnels go on"
                    );
                }
                Some(Incoming::Text(text)) => {
                    if let Err(fatal) = control.handle_portal(&text, Instant::now()).await {
                        anyhow::bail!(fatal);
                    }
                }
            },
            Some(reply) = status_rx.recv() => {
                let _ = reply.send(control.status(&config.portal, connected));
            }
            received = socket.recv_from(&mut udp_buffer) => {
                let (n, source) = received.context("UDP receive")?;
                from_network(&mut control, source, &udp_buffer[..n], &mut out_buffer);
                for _ in 1..BATCH {
                    match socket.try_recv_from(&mut udp_buffer) {
                        Ok((n, source)) => from_network(&mut control, source, &udp_buffer[..n], &mut out_buffer),
                        Err(_) => break,
                    }
                }
            }
            _ = readable(control.tun()), if control.tun().is_some() => {
                from_apps(&mut control, &socket, &mut tun_buffer, &mut out_buffer);
            }
            () = tokio::time::sleep_until(deadline.into()) => {
                control.handle_timeout(Instant::now());
                if let Some(metrics) = &config.metrics {
                    let (peers, resources) = control.counts();
                    metrics.publish(&control.tally, connected, peers, resources);
                }
            }
        }
        let now = Instant::now();
        loop {
            control.drain_state(now, &outgoing);
            device::flush_transmits(&mut control.node, &socket, &mut control.tally);
            let Some(event) = control.node.poll_event() else {
                break;
            };
            control.handle_node_event(event, &outgoing);
        }
    }
    tracing::info!("stopping");
    Ok(())
}

async fn readable(tun: Option<&Tun>) -> std::io::Result<()> {
    match tun {
        Some(tun) => tun.readable().await,
        None => std::future::pending().await,
    }
}

fn from_network(control: &mut Control, source: SocketAddr, datagram: &[u8], out: &mut [u8]) {
    control.tally.datagrams_received += 1;
    if let Some((gateway, n)) = control
        .node
        .decrypt_into(source, datagram, Instant::now(), out)
    {
        control.handle_from_gateway(gateway, &out[..n]);
    }
}

fn from_apps(
    control: &mut Control,
    socket: &tokio::net::UdpSocket,
    buffer: &mut [u8],
    out: &mut [u8],
) {
    let now = Instant::now();
    for _ in 0..BATCH {
        let Some(tun) = control.tun() else { return };
        let Ok(n) = tun.try_recv(buffer) else { return };
        control.tally.tun_packets_read += 1;
        control.tally.tun_bytes_read += n as u64;
        let packet = &buffer[..n];
        match control.state.handle_packet(packet, now) {
            Verdict::ToGateway(gateway) => {
                if let Some((destination, length)) =
                    control.node.encrypt_into(gateway, packet, now, out)
                {
                    device::send(socket, &out[..length], destination, &mut control.tally);
                }
            }
            Verdict::Reply(reply) => {
                control.tally.drop_reason("refused");
                control.write_to_apps(&reply);
            }
            Verdict::Dropped(reason) => control.tally.drop_reason(match reason {
                DropReason::Malformed => "malformed",
                DropReason::NoRoute => "no_route",
                DropReason::BufferFull => "buffer_full",
                DropReason::Refused => "refused",
            }),
            Verdict::Buffered => {}
        }
    }
}
