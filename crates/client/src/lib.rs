//! The client daemon (SPEC F16-F21): connects to the portal, routes the
//! resources it was given into a TUN interface, asks for access on the
//! first packet to each, and tunnels to the gateway the portal picked
//! (direct or relayed). `postern client status` asks it over a unix socket.
//!
//! One task owns the node, the state, the TUN and the socket: no locks on
//! the packet path; the portal channel and the status socket run beside it.

mod control;
mod dns;
mod names;
pub mod status;
mod system_dns;

pub use control::{DnsSettings, SystemDnsMode};

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context;
use postern_sys::batch::{GsoQueue, RecvBuffers, UdpBatch};
use postern_sys::channel::Party;
use postern_sys::device::{self, DeviceConfig, LinkEvent, PortalLink};
use postern_sys::tun::{Tun, TunReader, TunWriter};
use postern_tunnel::client::{DropReason, Verdict};
use postern_tunnel::node::Node;
use tokio::sync::mpsc;

use control::Control;

/// What `postern client up` was told.
#[derive(Clone, Debug)]
pub struct ClientDaemonConfig {
    pub device: DeviceConfig,
    /// Upstream resolvers and the resolv.conf to take over.
    pub dns: DnsSettings,
    /// Where `postern client status` asks.
    pub status_socket: PathBuf,
}

const BUFFER: usize = 65_536;
/// Batched reads from one ready source before the others get a turn.
const READS_PER_TURN: usize = 8;
/// DNS queries handled in one turn of the loop.
const DNS_PER_TURN: usize = 256;

/// Runs until `stop` resolves or the portal refuses the token.
pub async fn run(
    config: ClientDaemonConfig,
    stop: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()> {
    let started = device::start(Party::Client, &config.device).await?;
    let mut channel = started.channel;
    let (status_tx, mut status_rx) = mpsc::channel::<status::Request>(8);
    status::serve(&config.status_socket, status_tx)
        .with_context(|| format!("cannot serve status on {}", config.status_socket.display()))?;
    let _socket_file = status::SocketFile(config.status_socket.clone());
    let (receive_buffer, send_buffer) = started.buffers;
    tracing::info!(
        device_id = %started.device_id, local = %started.local, receive_buffer, send_buffer,
        "client starting"
    );
    let seed = started.seed;
    let (dns_tx, mut dns_rx) = mpsc::channel(1024);
    let mut dns = config.dns.clone();
    dns.queries = Some(dns_tx);
    if dns.state_dir.as_os_str().is_empty() {
        dns.state_dir = config.device.state_dir.clone();
    }
    let mut control = Control::new(
        Node::new(started.local, started.secret, true, seed),
        config.device.interface.clone(),
        dns,
    );
    let outgoing = channel.outgoing.clone();
    let mut link = PortalLink::default();
    let mut io = Io {
        udp: started.udp,
        received: RecvBuffers::default(),
        gso: GsoQueue::default(),
        reader: TunReader::default(),
        writer: TunWriter::default(),
        sealed: vec![0u8; BUFFER],
    };
    tokio::pin!(stop);
    loop {
        let now = Instant::now();
        let deadline = control
            .poll_timeout()
            .unwrap_or(now + Duration::from_secs(1));
        tokio::select! {
            () = &mut stop => break,
            incoming = channel.incoming.recv() => {
                match link.on(incoming, &config.device.portal, "sign in again with `postern client sign-in`", "established tunnels go on") {
                    LinkEvent::Fatal(error) => anyhow::bail!(error),
                    LinkEvent::Frame(text) => {
                        if let Err(fatal) = control.handle_portal(&text, Instant::now()).await {
                            anyhow::bail!(fatal);
                        }
                    }
                    LinkEvent::Nothing => {}
                }
            }
            Some(query) = dns_rx.recv() => {
                let now = Instant::now();
                control.handle_dns(query, now);
                // Whatever else is waiting, in the same turn.
                for _ in 0..DNS_PER_TURN {
                    let Ok(query) = dns_rx.try_recv() else { break };
                    control.handle_dns(query, now);
                }
            }
            Some(reply) = status_rx.recv() => {
                let _ = reply.send(control.status(&config.device.portal, link.connected));
            }
            ready = io.udp.readable() => {
                ready.context("UDP socket")?;
                io.receive_network(&mut control).await.context("UDP receive")?;
            }
            ready = readable(control.tun()), if control.tun().is_some() => {
                ready.context("TUN interface")?;
                io.receive_apps(&mut control).context("TUN read")?;
            }
            () = tokio::time::sleep_until(deadline.into()) => {
                control.handle_timeout(Instant::now());
                if let Some(metrics) = &config.device.metrics {
                    let (peers, resources) = control.counts();
                    metrics.publish(&control.tally, link.connected, peers, resources);
                }
            }
        }
        io.flush(&mut control, &outgoing);
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

/// The data path's sockets and buffers.
struct Io {
    udp: UdpBatch,
    received: RecvBuffers,
    gso: GsoQueue,
    reader: TunReader,
    writer: TunWriter,
    /// Where a packet is encrypted on its way to a gateway.
    sealed: Vec<u8>,
}

impl Io {
    /// Everything waiting on the socket: data from gateways is decrypted
    /// straight into the TUN batch and written in one go; the rest goes
    /// through the node.
    async fn receive_network(&mut self, control: &mut Control) -> std::io::Result<()> {
        for _ in 0..READS_PER_TURN {
            let count = self.udp.try_recv(&mut self.received)?;
            if count == 0 {
                break;
            }
            let now = Instant::now();
            for (source, datagram) in self.received.datagrams(count) {
                control.tally.datagrams_received += 1;
                if self.writer.is_full()
                    && let Some(tun) = control.tun()
                {
                    tun.write(&mut self.writer).await?;
                }
                let Some(slot) = self.writer.slot() else {
                    continue;
                };
                let Some((gateway, length)) =
                    control.node.decrypt_into(source, datagram, now, slot)
                else {
                    continue;
                };
                let Some(packet) = slot.get(..length) else {
                    continue;
                };
                if control.is_for_apps(gateway, packet) {
                    control.tally.tun_packets_written += 1;
                    control.tally.tun_bytes_written += length as u64;
                    self.writer.commit(length);
                }
            }
        }
        if let Some(tun) = control.tun() {
            tun.write(&mut self.writer).await?;
        }
        Ok(())
    }

    /// Packets from apps, decided by the client state and encrypted into
    /// GSO batches per gateway.
    fn receive_apps(&mut self, control: &mut Control) -> std::io::Result<()> {
        for _ in 0..READS_PER_TURN {
            let Some(tun) = control.tun() else { break };
            let count = tun.try_read(&mut self.reader)?;
            if count == 0 {
                break;
            }
            let now = Instant::now();
            for i in 0..count {
                let packet = self.reader.packet_mut(i);
                control.tally.tun_packets_read += 1;
                control.tally.tun_bytes_read += packet.len() as u64;
                match control.state.handle_packet(packet, now) {
                    Verdict::ToGateway(gateway) => {
                        if let Some((destination, length)) =
                            control
                                .node
                                .encrypt_into(gateway, packet, now, &mut self.sealed)
                        {
                            self.udp.queue(
                                &mut self.gso,
                                destination,
                                &self.sealed[..length],
                                &mut control.tally,
                            );
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
            self.udp.flush(&mut self.gso, &mut control.tally);
        }
        Ok(())
    }

    /// What the state and the node queued: frames, datagrams, events.
    fn flush(&mut self, control: &mut Control, outgoing: &mpsc::Sender<String>) {
        self.udp.flush(&mut self.gso, &mut control.tally);
        let now = Instant::now();
        loop {
            control.drain_state(now, outgoing);
            while let Some(transmit) = control.node.poll_transmit() {
                self.udp
                    .send_one(transmit.destination, &transmit.payload, &mut control.tally);
            }
            let Some(event) = control.node.poll_event() else {
                break;
            };
            control.handle_node_event(event, outgoing);
        }
    }
}
