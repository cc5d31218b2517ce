//! A device's connections (SPEC F17, F19): one UDP socket, any number of
//! peers, each an ICE session plus a WireGuard peer, and TURN allocations on
//! the relays the portal named. Datagrams on the socket are told apart by
//! their first bytes: from a relay server they are TURN (and may carry a
//! peer's datagram), STUN with the magic cookie goes to ICE, the rest is
//! WireGuard. WireGuard runs over the pair ICE nominated, through the relay
//! when that pair's local side is a relayed candidate.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use postern_model::protocol::IceCredentials;
use postern_turn::client::{Client as TurnClient, ClientEvent as TurnEvent};
use uuid::Uuid;

use crate::ice::{IceEvent, IceSession, is_stun};
use crate::wireguard::{Action, WireguardPeer};

/// How often WireGuard's timers run.
const WIREGUARD_TICK: Duration = Duration::from_millis(100);
/// Packets kept for a peer while its path is found.
const MAX_WAITING: usize = 32;
/// A peer without a path after this long is reported dead, so the client
/// asks the portal again (perhaps for another gateway).
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// A failed relay allocation is tried again after this long, doubling up to
/// [`RELAY_RETRY_MAX`].
const RELAY_RETRY: Duration = Duration::from_secs(2);
const RELAY_RETRY_MAX: Duration = Duration::from_secs(60);
const BUFFER: usize = 65_535 + 64;
/// A path quiet this long (two missed keepalives) is given up for the next
/// best pair ICE still has, e.g. direct -> relayed; the peer is declared dead
/// only at [`crate::wireguard::LIVENESS_TIMEOUT`] if that path is quiet too.
const PATH_QUIET: Duration = Duration::from_millis(850);
/// While relayed, every pair is checked again this often, so a direct path
/// that opened since is found.
pub const REPROBE: Duration = Duration::from_secs(30);

/// A datagram to send from the node's socket.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Transmit {
    pub destination: SocketAddr,
    pub payload: Vec<u8>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NodeEvent {
    /// Send this candidate to the peer (through the portal).
    Candidate { peer: Uuid, candidate: String },
    /// WireGuard runs over a nominated path.
    Connected { peer: Uuid, relayed: bool },
    /// An IP packet from the peer, for the tunnel interface.
    Packet { peer: Uuid, packet: Vec<u8> },
    /// Nothing heard for two seconds, or every path failed.
    Dead { peer: Uuid },
}

/// A relay the portal handed out.
#[derive(Clone, Debug)]
pub struct RelayConfig {
    pub server: SocketAddr,
    pub username: String,
    pub password: String,
}

/// What the portal said about a peer.
#[derive(Clone, Debug)]
pub struct PeerConfig {
    pub public_key: [u8; 32],
    pub preshared_key: [u8; 32],
    pub local_ice: IceCredentials,
    pub remote_ice: IceCredentials,
}

struct Relay {
    config: RelayConfig,
    client: TurnClient,
    /// Announced candidates (relayed, server-reflexive), once allocated.
    candidates: Option<(SocketAddr, SocketAddr)>,
    /// After a failed allocation: when to try again.
    retry_at: Option<Instant>,
    /// The wait after the next failure.
    backoff: Duration,
}

struct Peer {
    ice: IceSession,
    wireguard: WireguardPeer,
    path: Option<(SocketAddr, SocketAddr)>,
    waiting: VecDeque<Vec<u8>>,
    alive: bool,
    added: Instant,
    /// Dead was reported (once per peer).
    reported: bool,
    /// The peer's relayed candidates: a path to one of them goes through a
    /// relay even though our end of it is our own socket.
    remote_relayed: Vec<SocketAddr>,
    /// Another path was tried in the current silence.
    switched: bool,
    /// While relayed: when to look for a direct path again.
    next_reprobe: Option<Instant>,
}

pub struct Node {
    local: SocketAddr,
    secret: [u8; 32],
    controlling: bool,
    relays: Vec<Relay>,
    peers: HashMap<Uuid, Peer>,
    /// The remote address of each peer's path, so a datagram finds its peer
    /// without a pass over all of them.
    by_remote: HashMap<SocketAddr, Uuid>,
    next_index: u32,
    next_tick: Option<Instant>,
    transmits: VecDeque<Transmit>,
    events: VecDeque<NodeEvent>,
    buffer: Vec<u8>,
    framed: Vec<u8>,
    seed: u64,
}

impl Node {
    /// A node on the socket bound to `local`, with this process's WireGuard
    /// secret; the client controls ICE.
    pub fn new(local: SocketAddr, secret: [u8; 32], controlling: bool, seed: u64) -> Self {
        Node {
            local,
            secret,
            controlling,
            relays: Vec::new(),
            peers: HashMap::new(),
            by_remote: HashMap::new(),
            next_index: 1,
            next_tick: None,
            transmits: VecDeque::new(),
            events: VecDeque::new(),
            buffer: vec![0; BUFFER],
            framed: Vec::new(),
            seed,
        }
    }

    /// Allocates on a relay; its candidates reach every peer when ready.
    pub fn add_relay(&mut self, relay: RelayConfig, now: Instant) {
        let client = self.turn_client(&relay, now);
        self.relays.push(Relay {
            config: relay,
            client,
            candidates: None,
            retry_at: None,
            backoff: RELAY_RETRY,
        });
        self.flush_relays(now);
    }

    fn turn_client(&mut self, relay: &RelayConfig, now: Instant) -> TurnClient {
        self.seed = self
            .seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        TurnClient::new(
            relay.server,
            &relay.username,
            &relay.password,
            self.seed,
            now,
        )
    }

    /// Starts connecting to a peer the portal paired us with.
    pub fn add_peer(&mut self, id: Uuid, config: PeerConfig, now: Instant) {
        let mut ice = IceSession::new(&config.local_ice, &config.remote_ice, self.controlling);
        let mut candidates = Vec::new();
        candidates.extend(ice.add_host(self.local));
        for relay in &self.relays {
            if let Some((relayed, mapped)) = relay.candidates {
                candidates.extend(ice.add_server_reflexive(mapped, self.local));
                candidates.extend(ice.add_relayed(relayed, self.local));
            }
        }
        let index = self.next_index;
        self.next_index += 1;
        let wireguard =
            WireguardPeer::new(self.secret, config.public_key, config.preshared_key, index);
        self.peers.insert(
            id,
            Peer {
                ice,
                wireguard,
                path: None,
                waiting: VecDeque::new(),
                alive: false,
                added: now,
                reported: false,
                remote_relayed: Vec::new(),
                switched: false,
                next_reprobe: None,
            },
        );
        for candidate in candidates {
            self.events.push_back(NodeEvent::Candidate {
                peer: id,
                candidate,
            });
        }
        self.next_tick.get_or_insert(now);
        self.drive(now);
    }

    pub fn remove_peer(&mut self, id: Uuid) {
        self.set_path(id, None);
        self.peers.remove(&id);
    }

    /// Sets a peer's path, keeping the remote-address index in step.
    fn set_path(&mut self, id: Uuid, path: Option<(SocketAddr, SocketAddr)>) {
        let Some(peer) = self.peers.get_mut(&id) else {
            return;
        };
        if let Some((_, old)) = peer.path
            && self.by_remote.get(&old) == Some(&id)
        {
            self.by_remote.remove(&old);
        }
        peer.path = path;
        if let Some((_, remote)) = path {
            self.by_remote.insert(remote, id);
        }
    }

    /// A candidate from the peer; the relays let its address in.
    pub fn add_remote_candidate(&mut self, id: Uuid, candidate: &str, now: Instant) {
        let Some(peer) = self.peers.get_mut(&id) else {
            return;
        };
        if peer.ice.add_remote(candidate).is_err() {
            return;
        }
        let address = candidate_address(candidate);
        if let Some(address) = address
            && candidate_type(candidate) == Some("relay")
            && !peer.remote_relayed.contains(&address)
        {
            peer.remote_relayed.push(address);
        }
        if let Some(address) = address {
            for relay in &mut self.relays {
                relay.client.create_permission(address.ip(), now);
            }
        }
        self.drive(now);
    }

    /// Sends an IP packet to a peer (queued until a path is nominated).
    pub fn send(&mut self, id: Uuid, packet: &[u8], now: Instant) {
        let Some(peer) = self.peers.get_mut(&id) else {
            return;
        };
        if peer.path.is_none() {
            if peer.waiting.len() < MAX_WAITING {
                peer.waiting.push_back(packet.to_vec());
            }
            return;
        }
        if let Ok(Action::Network(n)) = peer.wireguard.send(packet, now, &mut self.buffer) {
            let datagram = self.buffer[..n].to_vec();
            self.send_on_path(id, datagram);
        }
    }

    /// The fast path for a connected peer on a direct path: encrypts straight
    /// into `out` and says where to send `out[..n]`, with no allocation and
    /// no queue. `None` means the slow path took it ([`Node::send`]: queued,
    /// relayed, or not connected yet) and transmits follow as usual.
    pub fn encrypt_into(
        &mut self,
        id: Uuid,
        packet: &[u8],
        now: Instant,
        out: &mut [u8],
    ) -> Option<(SocketAddr, usize)> {
        let direct = self
            .peers
            .get(&id)
            .and_then(|p| p.path)
            .filter(|(local, _)| *local == self.local);
        let Some((_, remote)) = direct else {
            self.send(id, packet, now);
            return None;
        };
        let peer = self.peers.get_mut(&id)?;
        match peer.wireguard.send(packet, now, out) {
            Ok(Action::Network(n)) => Some((remote, n)),
            _ => None,
        }
    }

    /// The fast path for WireGuard data from a peer's direct path: decrypts
    /// straight into `out` and returns the peer and the packet's length.
    /// Anything else (STUN, TURN, handshakes, keepalives, unknown sources)
    /// goes through [`Node::handle_datagram`] and `None` is returned.
    pub fn decrypt_into(
        &mut self,
        source: SocketAddr,
        datagram: &[u8],
        now: Instant,
        out: &mut [u8],
    ) -> Option<(Uuid, usize)> {
        // Message type 4: transport data.
        let data = datagram.first() == Some(&4);
        let on_path = self
            .by_remote
            .get(&source)
            .copied()
            .filter(|id| self.peers.get(id).and_then(|p| p.path) == Some((self.local, source)));
        if let (true, Some(id)) = (data, on_path)
            && let Some(peer) = self.peers.get_mut(&id)
        {
            match peer.wireguard.receive(datagram, now, out) {
                Ok(Action::Tunnel(n)) => return Some((id, n)),
                // A keepalive: nothing for the tunnel.
                Ok(_) => return None,
                // Not this peer's session after all: the slow path looks
                // further.
                Err(_) => {}
            }
        }
        self.handle_datagram(source, datagram, now);
        None
    }

    /// A datagram that arrived on the socket from `source`.
    pub fn handle_datagram(&mut self, source: SocketAddr, datagram: &[u8], now: Instant) {
        if let Some(index) = self.relays.iter().position(|r| r.client.server() == source) {
            let relay = &mut self.relays[index];
            let relayed = relay.client.relayed_address();
            let inner = relay
                .client
                .handle_packet(datagram, now)
                .map(|(peer, data)| (peer, data.to_vec()));
            let touched = match (inner, relayed) {
                (Some((peer, data)), Some(relayed)) => self.handle_inner(peer, relayed, &data, now),
                _ => None,
            };
            if let Some(id) = touched {
                self.drive_peer(id, now);
            }
            self.flush_relays(now);
        } else if let Some(id) = self.handle_inner(source, self.local, datagram, now) {
            // Only the peer the datagram was for has news.
            self.drive_peer(id, now);
            self.flush_relays(now);
        }
    }

    fn handle_inner(
        &mut self,
        source: SocketAddr,
        destination: SocketAddr,
        datagram: &[u8],
        now: Instant,
    ) -> Option<Uuid> {
        if is_stun(datagram) {
            for (id, peer) in self.peers.iter_mut() {
                if peer.ice.handle_stun(now, source, destination, datagram) {
                    return Some(*id);
                }
            }
            return None;
        }
        // WireGuard: the peer on that path first, then anyone (a handshake
        // from a new path).
        let on_path = self.by_remote.get(&source).copied();
        let others = self.peers.keys().copied().filter(|id| Some(*id) != on_path);
        let order: Vec<Uuid> = on_path.into_iter().chain(others).collect();
        for id in order {
            let Some(peer) = self.peers.get_mut(&id) else {
                continue;
            };
            let Ok(mut action) = peer.wireguard.receive(datagram, now, &mut self.buffer) else {
                continue;
            };
            // Authenticated WireGuard from the peer fixes where it is, as in
            // WireGuard's own endpoint roaming, on the controlled side: it
            // may hear the handshake before ICE names the nominated pair,
            // and a client that changed networks (F21) speaks from a new
            // address. The controlling side keeps what its ICE agent
            // nominated: following the source there would let packets still
            // in flight on the old (relayed) path pull it back after ICE
            // moved it to a direct one, and both sides would stay relayed.
            if peer.path.is_none()
                || (!self.controlling && peer.path != Some((destination, source)))
            {
                self.set_path(id, Some((destination, source)));
            }
            loop {
                match action {
                    Action::Nothing => break,
                    Action::Tunnel(n) => {
                        self.events.push_back(NodeEvent::Packet {
                            peer: id,
                            packet: self.buffer[..n].to_vec(),
                        });
                        break;
                    }
                    Action::Network(n) => {
                        let reply = self.buffer[..n].to_vec();
                        self.send_on_path(id, reply);
                    }
                }
                let Some(peer) = self.peers.get_mut(&id) else {
                    break;
                };
                action = peer
                    .wireguard
                    .flush(&mut self.buffer)
                    .unwrap_or(Action::Nothing);
            }
            return Some(id);
        }
        None
    }

    /// Sends a WireGuard datagram on the peer's nominated path.
    fn send_on_path(&mut self, id: Uuid, datagram: Vec<u8>) {
        let Some((local, remote)) = self.peers.get(&id).and_then(|p| p.path) else {
            return;
        };
        self.send_from(local, remote, datagram);
    }

    /// Sends `payload` as if from local address `local` (our socket, or a
    /// relayed address, which means through that relay).
    fn send_from(&mut self, local: SocketAddr, remote: SocketAddr, payload: Vec<u8>) {
        if local == self.local
            || !self
                .relays
                .iter()
                .any(|r| r.client.relayed_address() == Some(local))
        {
            self.transmits.push_back(Transmit {
                destination: remote,
                payload,
            });
            return;
        }
        for relay in &mut self.relays {
            if relay.client.relayed_address() == Some(local) {
                if relay
                    .client
                    .encode_to_peer(remote, &payload, &mut self.framed)
                {
                    self.transmits.push_back(Transmit {
                        destination: relay.client.server(),
                        payload: self.framed.clone(),
                    });
                }
                return;
            }
        }
    }

    pub fn handle_timeout(&mut self, now: Instant) {
        // Relays whose allocation failed are tried again.
        for index in 0..self.relays.len() {
            if self.relays[index].retry_at.is_some_and(|at| at <= now) {
                let config = self.relays[index].config.clone();
                let client = self.turn_client(&config, now);
                let relay = &mut self.relays[index];
                relay.client = client;
                relay.retry_at = None;
                relay.candidates = None;
            }
        }
        for relay in &mut self.relays {
            relay.client.handle_timeout(now);
        }
        self.flush_relays(now);
        for peer in self.peers.values_mut() {
            peer.ice.handle_timeout(now);
        }
        if self.next_tick.is_some_and(|at| at <= now) {
            self.next_tick = Some(now + WIREGUARD_TICK);
            let ids: Vec<Uuid> = self.peers.keys().copied().collect();
            for &id in &ids {
                self.watch_path(id, now);
            }
            for id in ids {
                let Some(peer) = self.peers.get_mut(&id) else {
                    continue;
                };
                if peer.path.is_none() {
                    continue;
                }
                if let Ok(Action::Network(n)) = peer.wireguard.tick(now, &mut self.buffer) {
                    let datagram = self.buffer[..n].to_vec();
                    self.send_on_path(id, datagram);
                }
                let Some(peer) = self.peers.get_mut(&id) else {
                    continue;
                };
                let alive = peer.wireguard.is_alive(now);
                if peer.alive && !alive {
                    self.events.push_back(NodeEvent::Dead { peer: id });
                }
                peer.alive = alive;
            }
        }
        // A peer that never got a path is as good as dead.
        for (id, peer) in &mut self.peers {
            if peer.path.is_none()
                && !peer.reported
                && now.saturating_duration_since(peer.added) >= CONNECT_TIMEOUT
            {
                peer.reported = true;
                self.events.push_back(NodeEvent::Dead { peer: *id });
            }
        }
        self.drive(now);
    }

    /// Path upkeep on each tick: a quiet path is swapped for the next best
    /// pair at once, and a relayed one is re-checked now and then for a
    /// direct path.
    fn watch_path(&mut self, id: Uuid, now: Instant) {
        let local = self.local;
        let Some(peer) = self.peers.get_mut(&id) else {
            return;
        };
        let Some((path_local, remote)) = peer.path else {
            return;
        };
        let quiet = peer
            .wireguard
            .last_received()
            .is_some_and(|at| now.saturating_duration_since(at) >= PATH_QUIET);
        if !quiet {
            peer.switched = false;
        } else if !peer.switched {
            peer.switched = true;
            // A new nomination, if any, comes out of drive_peer below as
            // `Connected`.
            peer.ice.abandon(remote, now);
        }
        let relayed = path_local != local || peer.remote_relayed.contains(&remote);
        if !relayed {
            peer.next_reprobe = None;
        } else if now >= *peer.next_reprobe.get_or_insert(now + REPROBE) {
            peer.next_reprobe = Some(now + REPROBE);
            peer.ice.reprobe(now);
        }
        self.drive_peer(id, now);
    }

    pub fn poll_timeout(&mut self) -> Option<Instant> {
        let ice = self
            .peers
            .values_mut()
            .filter_map(|p| p.ice.poll_timeout())
            .min();
        let turn = self
            .relays
            .iter()
            .filter_map(|r| r.client.poll_timeout())
            .min();
        let retry = self.relays.iter().filter_map(|r| r.retry_at).min();
        let connect = self
            .peers
            .values()
            .filter(|p| p.path.is_none() && !p.reported)
            .map(|p| p.added + CONNECT_TIMEOUT)
            .min();
        [ice, turn, retry, connect, self.next_tick]
            .into_iter()
            .flatten()
            .min()
    }

    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.transmits.pop_front()
    }

    pub fn poll_event(&mut self) -> Option<NodeEvent> {
        self.events.pop_front()
    }

    /// The address the node's socket is known by (its host candidate).
    pub fn local_address(&self) -> SocketAddr {
        self.local
    }

    /// Whether the peer was heard from within the liveness timeout.
    pub fn is_alive(&self, id: Uuid, now: Instant) -> bool {
        self.peers
            .get(&id)
            .is_some_and(|peer| peer.wireguard.is_alive(now))
    }

    /// Bytes sent to and received from a peer through the tunnel.
    pub fn traffic(&self, id: Uuid) -> Option<(usize, usize)> {
        self.peers.get(&id).map(|peer| peer.wireguard.traffic())
    }

    /// The nominated path to a peer and whether it is relayed (through our
    /// relay allocation or the peer's).
    pub fn path(&self, id: Uuid) -> Option<(SocketAddr, SocketAddr, bool)> {
        let peer = self.peers.get(&id)?;
        let (local, remote) = peer.path?;
        Some((local, remote, self.is_relayed(peer, local, remote)))
    }

    fn is_relayed(&self, peer: &Peer, local: SocketAddr, remote: SocketAddr) -> bool {
        local != self.local || peer.remote_relayed.contains(&remote)
    }

    /// Moves ICE's output along: STUN transmits (through relays where the
    /// local side is relayed), nominations, waiting packets.
    fn drive(&mut self, now: Instant) {
        let ids: Vec<Uuid> = self.peers.keys().copied().collect();
        for id in ids {
            self.drive_peer(id, now);
        }
        self.flush_relays(now);
    }

    /// One peer's ICE output: STUN transmits (through relays where the local
    /// side is relayed), nomination (waiting packets go out), failure.
    fn drive_peer(&mut self, id: Uuid, now: Instant) {
        let mut outgoing = Vec::new();
        let mut nominated = None;
        let mut dead = false;
        let Some(peer) = self.peers.get_mut(&id) else {
            return;
        };
        while let Some(transmit) = peer.ice.poll_transmit() {
            outgoing.push(transmit);
        }
        while let Some(event) = peer.ice.poll_event() {
            match event {
                IceEvent::Nominated { local, remote } => nominated = Some((local, remote)),
                IceEvent::Disconnected => dead = true,
            }
        }
        for transmit in outgoing {
            self.send_from(transmit.source, transmit.destination, transmit.payload);
        }
        if dead {
            self.set_path(id, None);
            self.events.push_back(NodeEvent::Dead { peer: id });
        }
        if let Some((local, remote)) = nominated {
            let relayed = self
                .peers
                .get(&id)
                .is_some_and(|peer| self.is_relayed(peer, local, remote));
            self.set_path(id, Some((local, remote)));
            let waiting: Vec<Vec<u8>> = match self.peers.get_mut(&id) {
                Some(peer) => peer.waiting.drain(..).collect(),
                None => return,
            };
            if local != self.local {
                for relay in &mut self.relays {
                    if relay.client.relayed_address() == Some(local) {
                        relay.client.bind_channel(remote, now);
                    }
                }
            }
            self.events
                .push_back(NodeEvent::Connected { peer: id, relayed });
            // An established session moving to a new path: a handshake the
            // peer must answer moves its side too, within one round trip.
            if let Some(peer) = self.peers.get_mut(&id)
                && peer.wireguard.last_received().is_some()
                && let Ok(Action::Network(n)) = peer.wireguard.probe(now, &mut self.buffer)
            {
                let probe = self.buffer[..n].to_vec();
                self.send_on_path(id, probe);
            }
            for packet in waiting {
                self.send(id, &packet, now);
            }
        }
    }

    /// TURN requests out, allocations in (new candidates for every peer).
    fn flush_relays(&mut self, now: Instant) {
        let mut announced = Vec::new();
        for relay in &mut self.relays {
            while let Some(bytes) = relay.client.poll_transmit() {
                self.transmits.push_back(Transmit {
                    destination: relay.client.server(),
                    payload: bytes,
                });
            }
            while let Some(event) = relay.client.poll_event() {
                match event {
                    TurnEvent::Allocated { relayed, mapped } => {
                        relay.candidates = Some((relayed, mapped));
                        relay.backoff = RELAY_RETRY;
                        announced.push((relayed, mapped));
                    }
                    TurnEvent::Failed { .. } => {
                        relay.retry_at = Some(now + relay.backoff);
                        relay.backoff = (relay.backoff * 2).min(RELAY_RETRY_MAX);
                    }
                    _ => {}
                }
            }
        }
        for (relayed, mapped) in announced {
            let ids: Vec<Uuid> = self.peers.keys().copied().collect();
            for id in ids {
                let Some(peer) = self.peers.get_mut(&id) else {
                    continue;
                };
                let mut fresh = Vec::new();
                fresh.extend(peer.ice.add_server_reflexive(mapped, self.local));
                fresh.extend(peer.ice.add_relayed(relayed, self.local));
                for candidate in fresh {
                    self.events.push_back(NodeEvent::Candidate {
                        peer: id,
                        candidate,
                    });
                }
            }
        }
    }
}

/// The address of an SDP candidate (`candidate:F C udp P ADDR PORT typ ...`).
fn candidate_address(candidate: &str) -> Option<SocketAddr> {
    let mut fields = candidate.split_whitespace().skip(4);
    let ip = fields.next()?.parse().ok()?;
    let port = fields.next()?.parse().ok()?;
    Some(SocketAddr::new(ip, port))
}

/// The `typ` of an SDP candidate (`host`, `srflx`, `prflx`, `relay`).
fn candidate_type(candidate: &str) -> Option<&str> {
    let mut fields = candidate.split_whitespace().skip_while(|f| *f != "typ");
    fields.next()?;
    fields.next()
}
