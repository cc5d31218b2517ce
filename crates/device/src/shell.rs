//! The one device loop (docs/architecture.md: layout, performance), for either
//! role: one task owns the role, the UDP socket and the TUN interface, so the
//! packet path takes no lock. Datagrams are received in batches (recvmmsg, GRO)
//! and decrypted straight into the TUN write batch; packets are read in batches
//! (TUN offloads) and encrypted straight into GSO sends. Everything else the
//! role asks for is applied between turns.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use jiff::Timestamp;
use postern_sys::batch::{GsoQueue, RecvBuffers, UdpBatch};
use postern_sys::channel::Channel;
use postern_sys::metrics::{DeviceMetrics, Tally};
use postern_sys::netwatch::NetworkChange;
use postern_sys::tun::{Tun, TunReader, TunWriter};
use postern_tunnel::client::servfail;
use postern_tunnel::effect::{Effect, Input, QueryId};
use postern_tunnel::role::Role;
use tokio::sync::mpsc;

use crate::apply::{HostPath, System};
use crate::portal::{LinkEvent, PortalLink};
use crate::relay_stream::RelayStreams;
use crate::resolver::Resolver;
use crate::start::{Party, Started};
use crate::status::{self, SocketFile, StatusDocument};
use crate::stub::{self, ReplyTo, StubQuery};
use crate::userspace::Userspace;
use crate::{ClientOptions, DeviceConfig, DeviceError};

const BUFFER: usize = 65_536;
/// Batched reads from one ready source before the others get a turn.
const READS_PER_TURN: usize = 8;
/// DNS queries and lookup results handled in one turn of the loop.
const INPUTS_PER_TURN: usize = 256;
/// Lookup results waiting for the loop.
const RESULTS: usize = 1024;
/// The longest the loop sleeps without publishing its counters.
const PUBLISH_AT_LEAST: Duration = Duration::from_secs(1);

pub struct Shell<R: Role> {
    role: R,
    portal: String,
    /// What the operator does when the portal refuses the token.
    sign_in_again: &'static str,
    /// What keeps working while the portal is away.
    meanwhile: &'static str,
    channel: Channel,
    link: PortalLink,
    udp: UdpBatch,
    /// TURN over TCP to relays that do not answer on UDP.
    streams: RelayStreams,
    received: RecvBuffers,
    gso: GsoQueue,
    reader: TunReader,
    writer: TunWriter,
    /// Where a packet is encrypted on its way out.
    sealed: Vec<u8>,
    system: System,
    stub_queries: mpsc::Sender<StubQuery>,
    stub_rx: mpsc::Receiver<StubQuery>,
    /// Where each app's query waits for its answer.
    replies: HashMap<QueryId, ReplyTo>,
    next_query: u64,
    results: mpsc::Sender<Input>,
    results_rx: mpsc::Receiver<Input>,
    resolver: Option<Resolver>,
    status_rx: Option<mpsc::Receiver<status::Request>>,
    _status_file: Option<SocketFile>,
    tally: Tally,
    metrics: Option<Arc<DeviceMetrics>>,
    /// The host moving to another network, or waking up.
    network: mpsc::Receiver<NetworkChange>,
    /// The UDP socket's address (the wildcard, dual-stack or IPv4): with
    /// the new source addresses, the host candidates after a move.
    bound: std::net::SocketAddr,
    /// Where the daemon keeps its files (the internet resource choice).
    state_dir: std::path::PathBuf,
    /// The userspace client: its SOCKS5 proxy and TCP/IP stack in place
    /// of the TUN.
    userspace: Option<Userspace>,
}

impl<R: Role> Shell<R> {
    /// `client` is the client's own options (`None` for a gateway).
    pub fn new(
        role: R,
        started: Started,
        config: &DeviceConfig,
        client: Option<ClientOptions>,
    ) -> Result<Self, DeviceError> {
        let host_path = HostPath {
            keep: vec![started.portal_ip],
            local_networks_win: client.as_ref().is_some_and(|c| c.local_networks_win),
            firewall_changes: config.firewall_changes,
            routing: client.is_some(),
        };
        let status_socket = client.as_ref().map(|c| c.status_socket.clone());
        let socks5 = client.as_ref().and_then(|c| c.socks5);
        let dns = client.map(|c| c.dns);
        let client = matches!(started.party, Party::Client);
        let (stub_queries, stub_rx) = mpsc::channel(stub::QUEUE);
        let (results, results_rx) = mpsc::channel(RESULTS);
        let userspace = match socks5 {
            Some(listen) => {
                let seed = postern_sys::device::fresh_seed()
                    .map_err(DeviceError::io("no randomness for the userspace stack"))?;
                let userspace =
                    Userspace::start(listen, stub_queries.clone(), Instant::now(), seed).map_err(
                        DeviceError::io(format!("cannot listen for SOCKS5 on {listen}")),
                    )?;
                tracing::info!(listen = %userspace.listening, "SOCKS5 proxy listening (userspace: no TUN, no routes)");
                Some(userspace)
            }
            None => None,
        };
        let (status_rx, status_file) = match status_socket {
            Some(path) => {
                let (requests, status_rx) = mpsc::channel(8);
                status::serve(&path, requests).map_err(DeviceError::io(format!(
                    "cannot serve status on {}",
                    path.display()
                )))?;
                (Some(status_rx), Some(SocketFile(path)))
            }
            None => (None, None),
        };
        let network = postern_sys::netwatch::watch(started.portal_ip);
        let bound = started
            .udp
            .local_addr()
            .map_err(DeviceError::io("UDP socket"))?;
        Ok(Shell {
            userspace,
            network,
            bound,
            state_dir: config.state_dir.clone(),
            role,
            portal: config.portal.clone(),
            sign_in_again: if client {
                "sign in again with `postern client sign-in`"
            } else {
                "create a new gateway token"
            },
            meanwhile: if client {
                "established tunnels go on"
            } else {
                "forwarding goes on"
            },
            channel: started.channel,
            link: PortalLink::default(),
            udp: started.udp,
            received: RecvBuffers::default(),
            gso: GsoQueue::default(),
            streams: RelayStreams::new(config.trust.tls()),
            reader: TunReader::default(),
            writer: TunWriter::default(),
            sealed: vec![0u8; BUFFER],
            system: System::new(
                config.interface.clone(),
                config.state_dir.clone(),
                dns.unwrap_or_default(),
                host_path,
            ),
            stub_queries,
            stub_rx,
            replies: HashMap::new(),
            next_query: 0,
            results,
            results_rx,
            resolver: None,
            status_rx,
            _status_file: status_file,
            tally: Tally::default(),
            metrics: config.metrics.clone(),
        })
    }

    /// Runs until `stop` resolves (then the role says goodbye) or the
    /// portal refuses the device for good; either way the routing rules
    /// and table go (the rest of the host's state goes with `System`'s
    /// drop).
    pub async fn run(mut self, stop: impl Future<Output = ()>) -> Result<(), DeviceError> {
        let result = self.run_loop(stop).await;
        self.system.shutdown().await;
        result
    }

    async fn run_loop(&mut self, stop: impl Future<Output = ()>) -> Result<(), DeviceError> {
        tokio::pin!(stop);
        self.tell_host_addresses();
        loop {
            let now = Instant::now();
            // At least once a second, so the metrics never lag further.
            let stack = self.userspace.as_mut().and_then(|u| u.poll_at(now));
            let deadline = [self.role.poll_timeout(), stack]
                .into_iter()
                .flatten()
                .fold(now + PUBLISH_AT_LEAST, Instant::min);
            tokio::select! {
                () = &mut stop => break,
                incoming = self.channel.incoming.recv() => {
                    match self.link.on::<R::FromPortal>(incoming, &self.portal, self.sign_in_again, self.meanwhile) {
                        LinkEvent::Fatal(error) => return Err(DeviceError::Portal(error)),
                        LinkEvent::Message(message) => {
                            self.role.handle_portal(message, Instant::now(), Timestamp::now());
                            // Authorizations changed: the gauges say so now.
                            self.publish();
                        }
                        LinkEvent::Connected(up) => {
                            self.role.handle_input(Input::PortalConnected(up), Instant::now())
                        }
                        LinkEvent::Nothing => {}
                    }
                }
                Some(query) = self.stub_rx.recv() => {
                    let now = Instant::now();
                    self.query(query, now);
                    // Whatever else is waiting, in the same turn.
                    for _ in 0..INPUTS_PER_TURN {
                        let Ok(query) = self.stub_rx.try_recv() else { break };
                        self.query(query, now);
                    }
                }
                Some(input) = self.results_rx.recv() => {
                    let now = Instant::now();
                    self.role.handle_input(input, now);
                    for _ in 0..INPUTS_PER_TURN {
                        let Ok(input) = self.results_rx.try_recv() else { break };
                        self.role.handle_input(input, now);
                    }
                }
                Some(change) = self.network.recv() => self.network_changed(change).await,
                request = next_proxy_request(&mut self.userspace) => {
                    if let (Some(userspace), Some(request)) = (&mut self.userspace, request) {
                        userspace.handle(request, Instant::now());
                    }
                }
                Some(status::Request { command, reply }) = next_request(&mut self.status_rx) => {
                    if let status::Command::Internet(on) = command {
                        if let Err(error) = crate::internet::save(&self.state_dir, on) {
                            tracing::warn!(%error, "cannot remember the internet resource choice");
                        }
                        self.role.handle_input(Input::Internet(on), Instant::now());
                        self.flush().await?;
                    }
                    let document = StatusDocument {
                        portal: self.portal.clone(),
                        interface: self.system.tun().map(|t| t.name().to_string()),
                        socks5: self.userspace.as_ref().map(|u| u.listening),
                        overlaps: self.system.overlaps().to_vec(),
                        status: self.role.status(Instant::now()),
                    };
                    if let Ok(bytes) = serde_json::to_vec(&document) {
                        let _ = reply.send(bytes);
                    }
                }
                ready = self.udp.readable() => {
                    ready.map_err(DeviceError::io("UDP socket"))?;
                    self.receive_network().await?;
                }
                Some((server, message)) = self.streams.recv() => {
                    self.receive_stream(server, &message).await?;
                }
                ready = readable(self.system.tun()), if self.system.tun().is_some() => {
                    ready.map_err(DeviceError::io("TUN interface"))?;
                    self.receive_tun()?;
                }
                () = tokio::time::sleep_until(deadline.into()) => {
                    self.role.handle_timeout(Instant::now());
                    self.publish();
                }
            }
            self.flush().await?;
        }
        self.role.stop(Instant::now());
        self.flush().await?;
        tracing::info!("stopped");
        Ok(())
    }

    /// The host moved (or woke up): the role gathers again from the new
    /// address and restarts ICE, the portal channel (likely on a dead
    /// connection) connects again now, and a gateway learns its new
    /// addresses.
    async fn network_changed(&mut self, change: NetworkChange) {
        let locals = crate::start::host_candidates(&change.sources, self.bound);
        tracing::info!(
            ?locals,
            woke = change.woke,
            "gathering again after a network change"
        );
        self.role.handle_input(
            Input::NetworkChanged {
                locals,
                woke: change.woke,
            },
            Instant::now(),
        );
        self.channel.reconnect();
        self.tell_host_addresses();
        self.system.network_changed().await;
    }

    /// The host's own addresses, for the role's destination rules.
    fn tell_host_addresses(&mut self) {
        match postern_sys::device::host_addresses() {
            Ok(addresses) => self
                .role
                .handle_input(Input::HostAddresses(addresses), Instant::now()),
            Err(error) => tracing::warn!(%error, "cannot list this host's addresses"),
        }
    }

    /// An app's DNS query: numbered, its reply kept, the role decides.
    fn query(&mut self, query: StubQuery, now: Instant) {
        self.next_query += 1;
        let id = QueryId(self.next_query);
        self.replies.insert(id, query.reply);
        self.role.handle_input(
            Input::DnsQuery {
                query: id,
                bytes: query.bytes,
            },
            now,
        );
    }

    /// Everything waiting on the socket: packets the role lets through are
    /// decrypted straight into the TUN batch and written in one go.
    async fn receive_network(&mut self) -> Result<(), DeviceError> {
        for _ in 0..READS_PER_TURN {
            let count = self
                .udp
                .try_recv(&mut self.received)
                .map_err(DeviceError::io("UDP receive"))?;
            if count == 0 {
                break;
            }
            let now = Instant::now();
            for (source, datagram) in self.received.datagrams(count) {
                self.tally.datagrams_received += 1;
                if self.writer.is_full() {
                    deliver(&mut self.writer, &mut self.userspace, self.system.tun()).await?;
                }
                let Some(slot) = self.writer.slot() else {
                    continue;
                };
                if let Some(length) = self.role.decapsulate(source, datagram, now, slot) {
                    self.tally.tun_packets_written += 1;
                    self.tally.tun_bytes_written += length as u64;
                    self.writer.commit(length);
                }
            }
        }
        self.write_tun().await
    }

    /// A message from a relay reached over TCP or TLS: handled as the
    /// datagram it would have been.
    async fn receive_stream(
        &mut self,
        server: std::net::SocketAddr,
        message: &[u8],
    ) -> Result<(), DeviceError> {
        self.tally.datagrams_received += 1;
        if let Some(slot) = self.writer.slot()
            && let Some(length) = self.role.decapsulate(server, message, Instant::now(), slot)
        {
            self.tally.tun_packets_written += 1;
            self.tally.tun_bytes_written += length as u64;
            self.writer.commit(length);
        }
        self.write_tun().await
    }

    /// Writes the packets decrypted so far to the TUN in one go (or hands
    /// them to the userspace stack).
    async fn write_tun(&mut self) -> Result<(), DeviceError> {
        deliver(&mut self.writer, &mut self.userspace, self.system.tun()).await
    }

    /// Packets from the TUN interface, encrypted by the role into GSO
    /// batches per destination.
    fn receive_tun(&mut self) -> Result<(), DeviceError> {
        for _ in 0..READS_PER_TURN {
            let Some(tun) = self.system.tun() else { break };
            let count = tun
                .try_read(&mut self.reader)
                .map_err(DeviceError::io("TUN read"))?;
            if count == 0 {
                break;
            }
            let now = Instant::now();
            for i in 0..count {
                let packet = self.reader.packet_mut(i);
                send_app_packet(
                    &mut self.role,
                    packet,
                    now,
                    Outbound {
                        sealed: &mut self.sealed,
                        streams: &mut self.streams,
                        udp: &self.udp,
                        gso: &mut self.gso,
                        tally: &mut self.tally,
                    },
                );
            }
            self.udp.flush(&mut self.gso, &mut self.tally);
        }
        Ok(())
    }

    /// The userspace stack's turn: the pipes' bytes into it, what it sends
    /// through the role (the TUN's read path); true if it sent anything.
    fn pump_userspace(&mut self) -> bool {
        let Some(userspace) = &mut self.userspace else {
            return false;
        };
        let now = Instant::now();
        userspace.pump(now);
        let mut sent = false;
        while let Some(mut packet) = userspace.poll_transmit() {
            sent = true;
            send_app_packet(
                &mut self.role,
                &mut packet,
                now,
                Outbound {
                    sealed: &mut self.sealed,
                    streams: &mut self.streams,
                    udp: &self.udp,
                    gso: &mut self.gso,
                    tally: &mut self.tally,
                },
            );
        }
        self.udp.flush(&mut self.gso, &mut self.tally);
        sent
    }

    /// What the role queued: effects first (the interface before anything
    /// is written to it), then datagrams, packets and portal messages.
    async fn flush(&mut self) -> Result<(), DeviceError> {
        // The stack's packets may ask for access or be answered at once
        // (ICMP back into the stack): a few rounds until it is quiet.
        for _ in 0..4 {
            self.pump_userspace();
            if !self.flush_role().await? {
                break;
            }
        }
        Ok(())
    }

    /// What the role queued; true if packets went back to the userspace
    /// stack.
    async fn flush_role(&mut self) -> Result<bool, DeviceError> {
        let mut to_stack = false;
        self.udp.flush(&mut self.gso, &mut self.tally);
        while let Some(effect) = self.role.poll_effect() {
            self.apply(effect).await?;
        }
        while let Some(transmit) = self.role.poll_transmit() {
            // Every transmit says how it goes: a relay the node reaches over
            // UDP again has its stream closed.
            if let Some(stream) = &transmit.stream {
                if !self
                    .streams
                    .send(transmit.destination, Some(stream), &transmit.payload)
                {
                    self.tally.send_dropped += 1;
                }
                continue;
            }
            if self.streams.has(transmit.destination) {
                self.streams.close(transmit.destination);
            }
            match transmit.ttl {
                None => self
                    .udp
                    .send_one(transmit.destination, &transmit.payload, &mut self.tally),
                Some(ttl) => self.udp.send_with_ttl(
                    transmit.destination,
                    &transmit.payload,
                    ttl,
                    &mut self.tally,
                ),
            }
        }
        while let Some(packet) = self.role.poll_tun_packet() {
            if let Some(userspace) = &mut self.userspace {
                userspace.receive(&packet);
                to_stack = true;
                continue;
            }
            let Some(tun) = self.system.tun() else { break };
            match tun.send(&packet) {
                Ok(_) => {
                    self.tally.tun_packets_written += 1;
                    self.tally.tun_bytes_written += packet.len() as u64;
                }
                Err(error) => tracing::debug!(%error, "TUN write failed"),
            }
        }
        while let Some(message) = self.role.poll_portal() {
            self.send_to_portal(&message);
        }
        if to_stack {
            self.write_tun().await?;
        }
        Ok(to_stack)
    }

    /// Queues a frame for the portal; a full or closed queue drops it (the
    /// frames are about a session the portal resends state for).
    fn send_to_portal(&self, message: &R::ToPortal) {
        match serde_json::to_string(message) {
            Ok(text) => {
                if self.channel.outgoing.try_send(text).is_err() {
                    tracing::debug!("portal queue full or closed; frame dropped");
                }
            }
            Err(error) => tracing::warn!(%error, "cannot encode a frame"),
        }
    }

    async fn apply(&mut self, effect: Effect) -> Result<(), DeviceError> {
        match effect {
            Effect::Interface(config) => {
                match &mut self.userspace {
                    Some(userspace) => userspace.configure(&config, Instant::now()),
                    None => self.system.interface(&config).await?,
                }
                self.tell_host_addresses();
            }
            // The userspace stack sends everything to the role, which
            // routes (and refuses what no resource covers).
            Effect::Routes { .. } if self.userspace.is_some() => {}
            Effect::Routes { routes, exclusions } => self.system.routes(routes, exclusions).await,
            Effect::Dns(config) if self.userspace.is_some() => self.system.upstreams_only(&config),
            Effect::Dns(config) => self.system.dns(&config, &self.stub_queries).await?,
            Effect::Masquerade(sources) => self.system.masquerade(&sources)?,
            Effect::DnsAnswer { query, answer } => {
                if let (Some(reply), Some(answer)) = (self.replies.remove(&query), answer) {
                    reply.send_now(answer);
                }
            }
            Effect::ForwardDns { query, bytes } => {
                if let Some(reply) = self.replies.remove(&query) {
                    let upstreams = self.system.upstreams();
                    tokio::spawn(async move {
                        let answer = match postern_sys::dns::forward(&bytes, &upstreams).await {
                            Some(answer) => Some(answer),
                            None => servfail(&bytes),
                        };
                        if let Some(answer) = answer {
                            reply.send(answer).await;
                        }
                    });
                }
            }
            Effect::Resolve { lookup, name } => self.resolver().resolve(lookup, name),
            Effect::AskResolvers { lookup, query } => self.resolver().ask(lookup, query),
            Effect::FlowsEnded(flows) => self.flows_ended(&flows),
            Effect::Stop(stop) => return Err(DeviceError::Stopped(stop)),
        }
        Ok(())
    }

    /// Flows whose access ended: nothing answers them any more. Through
    /// the TUN the kernel's TCP finds out when it gives up (it takes no
    /// reset without the right sequence number).
    fn flows_ended(&mut self, flows: &[postern_tunnel::flows::EndedFlow]) {
        match &mut self.userspace {
            Some(userspace) => userspace.flows_ended(flows),
            None => tracing::debug!(flows = flows.len(), "flows ended with their access"),
        }
    }

    fn resolver(&mut self) -> &Resolver {
        self.resolver
            .get_or_insert_with(|| Resolver::new(self.results.clone()))
    }

    /// Counters into the metrics endpoint (on each timer tick and portal
    /// message).
    fn publish(&mut self) {
        let Some(metrics) = &self.metrics else {
            return;
        };
        self.tally.dropped = self.role.dropped().iter().collect();
        self.tally.errors = self.role.errors().iter().collect();
        let gauges = self.role.gauges();
        metrics.publish(
            &self.tally,
            self.link.connected,
            gauges.peers,
            gauges.entries,
        );
    }
}

async fn readable(tun: Option<&Tun>) -> std::io::Result<()> {
    match tun {
        Some(tun) => tun.readable().await,
        None => std::future::pending().await,
    }
}

async fn next_proxy_request(
    userspace: &mut Option<Userspace>,
) -> Option<crate::userspace::ProxyRequest> {
    match userspace {
        Some(userspace) => userspace.next().await,
        None => std::future::pending().await,
    }
}

/// The packets decrypted so far, to the TUN in one write or into the
/// userspace stack.
async fn deliver(
    writer: &mut TunWriter,
    userspace: &mut Option<Userspace>,
    tun: Option<&Tun>,
) -> Result<(), DeviceError> {
    if let Some(userspace) = userspace {
        writer.take_each(|packet| userspace.receive(packet));
        return Ok(());
    }
    if let Some(tun) = tun {
        tun.write(writer)
            .await
            .map_err(DeviceError::io("TUN write"))?;
    }
    Ok(())
}

/// Where a packet from the apps goes once the role encrypted it.
struct Outbound<'a> {
    sealed: &'a mut Vec<u8>,
    streams: &'a mut RelayStreams,
    udp: &'a UdpBatch,
    gso: &'a mut GsoQueue,
    tally: &'a mut Tally,
}

/// One packet from the apps (read from the TUN, or sent by the userspace
/// stack): the role decides, a datagram is queued for its destination.
fn send_app_packet<R: Role>(role: &mut R, packet: &mut [u8], now: Instant, out: Outbound<'_>) {
    out.tally.tun_packets_read += 1;
    out.tally.tun_bytes_read += packet.len() as u64;
    let Some((destination, length)) = role.encapsulate(packet, now, out.sealed) else {
        return;
    };
    if out.streams.has(destination) {
        if !out.streams.send(destination, None, &out.sealed[..length]) {
            out.tally.send_dropped += 1;
        }
        return;
    }
    out.udp
        .queue(out.gso, destination, &out.sealed[..length], out.tally);
}

async fn next_request(
    requests: &mut Option<mpsc::Receiver<status::Request>>,
) -> Option<status::Request> {
    match requests {
        Some(requests) => requests.recv().await,
        None => std::future::pending().await,
    }
}
