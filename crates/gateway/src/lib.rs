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
mod resolve;

use std::time::{Duration, Instant};

use anyhow::Context;
use postern_sys::batch::{GsoQueue, RecvBuffers, UdpBatch};
use postern_sys::channel::Party;
use postern_sys::device::{self, DeviceConfig, LinkEvent, PortalLink};
use postern_sys::tun::{Tun, TunReader, TunWriter};
use postern_tunnel::node::Node;
use tokio::sync::mpsc;

pub use control::Control;

/// What `postern gateway` was told.
pub type GatewayConfig = DeviceConfig;

/// Largest datagram or packet handled.
const BUFFER: usize = 65_536;
/// Batched reads from one ready source before the others get a turn.
const READS_PER_TURN: usize = 8;

/// Runs until `stop` resolves (then says goodbye) or the portal refuses the
/// token.
pub async fn run(
    config: GatewayConfig,
    stop: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()> {
    let started = device::start(Party::Gateway, &config).await?;
    let mut channel = started.channel;
    let (receive_buffer, send_buffer) = started.buffers;
    tracing::info!(
        device_id = %started.device_id, local = %started.local, receive_buffer, send_buffer,
        name = %config.name, "gateway starting"
    );
    let node = Node::new(started.local, started.secret, false, started.seed);
    let (resolver, mut resolved) = resolve::NameResolver::new();
    let mut gateway = Gateway {
        control: Control::new(node, config.interface.clone(), resolver),
        udp: started.udp,
        outgoing: channel.outgoing.clone(),
        received: RecvBuffers::default(),
        gso: GsoQueue::default(),
        reader: TunReader::default(),
        writer: TunWriter::default(),
        sealed: vec![0u8; BUFFER],
    };
    let mut link = PortalLink::default();
    tokio::pin!(stop);
    loop {
        let now = Instant::now();
        let deadline = gateway
            .control
            .poll_timeout()
            .unwrap_or(now + Duration::from_secs(1));
        tokio::select! {
            () = &mut stop => break,
            incoming = channel.incoming.recv() => {
                match link.on(incoming, &config.portal, "create a new gateway token", "forwarding goes on") {
                    LinkEvent::Fatal(error) => anyhow::bail!(error),
                    LinkEvent::Frame(text) => {
                        if let Some(fatal) = gateway.control.handle_portal(&text, Instant::now(), &gateway.outgoing) {
                            anyhow::bail!(fatal);
                        }
                    }
                    LinkEvent::Nothing => {}
                }
            }
            ready = gateway.udp.readable() => {
                ready.context("UDP socket")?;
                gateway.receive_network().await.context("UDP receive")?;
            }
            ready = tun_readable(gateway.control.tun()), if gateway.control.tun().is_some() => {
                ready.context("TUN interface")?;
                gateway.receive_resources().context("TUN read")?;
            }
            Some(result) = resolved.recv() => {
                gateway.control.on_lookup(result, Instant::now());
            }
            () = tokio::time::sleep_until(deadline.into()) => {
                gateway.control.handle_timeout(Instant::now());
                if let Some(metrics) = &config.metrics {
                    let control = &gateway.control;
                    metrics.publish(&control.tally, link.connected, control.peer_count(), control.state.client_count());
                }
            }
        }
        gateway.flush();
    }
    let told = gateway.control.goodbye(Instant::now());
    gateway.flush();
    tracing::info!(clients_told = told, "stopping");
    Ok(())
}

/// Waits until the TUN has a packet (the read happens in the handler).
async fn tun_readable(tun: Option<&Tun>) -> std::io::Result<()> {
    match tun {
        Some(tun) => tun.readable().await,
        None => std::future::pending().await,
    }
}

struct Gateway {
    control: Control,
    udp: UdpBatch,
    outgoing: mpsc::Sender<String>,
    received: RecvBuffers,
    gso: GsoQueue,
    reader: TunReader,
    writer: TunWriter,
    /// Where a packet is encrypted on its way to a client.
    sealed: Vec<u8>,
}

impl Gateway {
    /// Everything waiting on the socket: data from clients is decrypted
    /// straight into the TUN batch and written in one go; the rest goes
    /// through the node.
    async fn receive_network(&mut self) -> std::io::Result<()> {
        for _ in 0..READS_PER_TURN {
            let count = self.udp.try_recv(&mut self.received)?;
            if count == 0 {
                break;
            }
            let now = Instant::now();
            for (source, datagram) in self.received.datagrams(count) {
                self.control.tally.datagrams_received += 1;
                if self.writer.is_full()
                    && let Some(tun) = self.control.tun()
                {
                    tun.write(&mut self.writer).await?;
                }
                let Some(slot) = self.writer.slot() else {
                    continue;
                };
                let Some((client, length)) =
                    self.control.node.decrypt_into(source, datagram, now, slot)
                else {
                    continue;
                };
                let Some(packet) = slot.get_mut(..length) else {
                    continue;
                };
                if self.control.admit(client, packet, now) {
                    self.writer.commit(length);
                }
            }
        }
        if let Some(tun) = self.control.tun() {
            tun.write(&mut self.writer).await?;
        }
        Ok(())
    }

    /// Packets from resources back to their clients, encrypted into GSO
    /// batches per client.
    fn receive_resources(&mut self) -> std::io::Result<()> {
        for _ in 0..READS_PER_TURN {
            let Some(tun) = self.control.tun() else { break };
            let count = tun.try_read(&mut self.reader)?;
            if count == 0 {
                break;
            }
            let now = Instant::now();
            for i in 0..count {
                let packet = self.reader.packet_mut(i);
                self.control.tally.tun_packets_read += 1;
                self.control.tally.tun_bytes_read += packet.len() as u64;
                let Some(client) = self.control.state.handle_to_client(packet, now) else {
                    self.control.tally.drop_reason("no_client");
                    continue;
                };
                if let Some((destination, length)) =
                    self.control
                        .node
                        .encrypt_into(client, packet, now, &mut self.sealed)
                {
                    self.udp.queue(
                        &mut self.gso,
                        destination,
                        &self.sealed[..length],
                        &mut self.control.tally,
                    );
                }
            }
            self.udp.flush(&mut self.gso, &mut self.control.tally);
        }
        Ok(())
    }

    /// Datagrams the node queued, node events, frames for the portal.
    fn flush(&mut self) {
        self.udp.flush(&mut self.gso, &mut self.control.tally);
        loop {
            while let Some(transmit) = self.control.node.poll_transmit() {
                self.udp.send_one(
                    transmit.destination,
                    &transmit.payload,
                    &mut self.control.tally,
                );
            }
            let Some(event) = self.control.node.poll_event() else {
                break;
            };
            self.control
                .handle_node_event(event, Instant::now(), &self.outgoing);
        }
    }
}
