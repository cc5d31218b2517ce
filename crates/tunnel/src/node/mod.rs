//! A device's connections (SPEC F17, F19): one UDP socket, any number of
//! peers, each an ICE session plus a WireGuard peer, and TURN allocations on
//! the relays the portal named. WireGuard runs over the pair ICE nominated,
//! through the relay when that pair's local side is a relayed candidate.
//!
//! Every datagram finds its peer in one lookup, never by trying each peer
//! (boringtun's own demultiplexing, as snownet does it):
//! - from a relay server: TURN, unwrapped in place; the data inside is then
//!   handled as below, on the relayed address;
//! - STUN: a check carries `our-ufrag:their-ufrag` in USERNAME (ufrags are
//!   per pair), a response the transaction id of a check we sent;
//! - WireGuard: a handshake initiation names the sender's static key (one
//!   X25519 to open it), everything else our receiver index, whose upper 24
//!   bits are the peer's index here.
//!
//! One send API ([`Node::encapsulate`]) and one receive API
//! ([`Node::decapsulate`]) write into the caller's buffer, direct or
//! relayed (ChannelData framed in place): no allocation per packet.
//!
//! Timers cost per peer that is due, never per peer there is (a gateway has
//! thousands): each peer's next deadline (its ICE agent's, WireGuard's
//! timers and keepalive, liveness, path upkeep, holes) sits in one ordered
//! set, [`Node::poll_timeout`] reads the first, [`Node::handle_timeout`]
//! visits only the peers due. A peer whose state changes off the data path
//! is marked and its deadline computed again before the next poll; data
//! packets only move deadlines later, and a peer woken early finds nothing
//! to do and sleeps again.

mod holes;
mod locals;
mod relays;

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::fmt::Debug;
use std::hash::Hash;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use boringtun::noise::handshake::parse_handshake_anon;
use boringtun::noise::rate_limiter::RateLimiter;
use boringtun::noise::{Packet, TunnResult};
use boringtun::x25519;
use postern_model::protocol::{IceCredentials, RelayInfo};

pub use holes::OPENER_TTL;
pub use locals::Locals;
pub use relays::{RelayConfig, Stream};

use crate::counters::Counters;
use crate::ice::{IceEvent, IceSession, RelayRtt, is_stun};
use crate::wireguard::{Action, LIVENESS_TIMEOUT, WireguardPeer, refusal};
use relays::{HEADER, Relays, frame_in_place};

/// Packets kept for a peer while its path is found.
const MAX_WAITING: usize = 32;
/// A peer without a path after this long is reported dead, so the client
/// asks the portal again (perhaps for another gateway).
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
const BUFFER: usize = 65_535 + 64;
/// A path quiet this long (two missed keepalives) is given up for the next
/// best pair ICE still has, e.g. direct -> relayed; the peer is declared dead
/// only at [`crate::wireguard::LIVENESS_TIMEOUT`] if that path is quiet too.
const PATH_QUIET: Duration = Duration::from_millis(850);
/// While relayed, every pair is checked again this often, so a direct path
/// that opened since is found. Longer than a NAT keeps an unanswered UDP
/// entry (Linux: 30 s) plus a round of checks (str0m retransmits a check
/// for about 16 s): between two
/// re-probes neither side sends anything straight to the other, so the
/// entries a clash left on the routers expire, and the next re-probe
/// starts clean (see [`holes`]).
pub const REPROBE: Duration = Duration::from_secs(60);
/// A peer woken is not woken again sooner than this (a safeguard: none of
/// its timers should be due at the instant it ran; ICE paces its own at
/// 50 ms).
const REWAKE: Duration = Duration::from_millis(10);
/// STUN checks we sent are matched to their peer for this long (a check
/// that is not answered in 30 s is long given up by ICE).
const CHECK_MEMORY: Duration = Duration::from_secs(30);
/// WireGuard peer indices are 24 bits (boringtun keeps the low 8 for
/// sessions).
const INDEX_BITS: u32 = 24;
/// Handshake messages a second before initiators must show a cookie (mac2,
/// WireGuard's DoS defence): every handshake's mac1 is checked before the
/// X25519 that finds its sender, so a flood of forged ones costs a hash
/// each, and past this rate a replayed one costs a cookie reply.
const HANDSHAKES_PER_SECOND: u64 = 100;
/// A cookie reply's size.
const COOKIE_REPLY: usize = 64;
/// Remote candidate addresses remembered per peer.
const MAX_REMOTE_ADDRESSES: usize = 32;

/// What identifies a peer: a gateway id on a client, a client id on a
/// gateway.
pub trait PeerId: Copy + Eq + Hash + Ord + Debug {}
impl<T: Copy + Eq + Hash + Ord + Debug> PeerId for T {}

/// A datagram to send from the node's socket (the slow path: STUN, TURN,
/// handshakes, keepalives; data goes through [`Node::encapsulate`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Transmit {
    pub destination: SocketAddr,
    pub payload: Vec<u8>,
    /// A hop limit of its own ([`OPENER_TTL`] for openers); `None`: the
    /// socket's.
    pub ttl: Option<u8>,
    /// To a relay reached over a stream (UDP to it went unanswered): on
    /// that stream, not the socket.
    pub stream: Option<Stream>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NodeEvent<P> {
    /// Send this candidate to the peer (through the portal).
    Candidate { peer: P, candidate: String },
    /// WireGuard runs over a nominated path.
    Connected { peer: P, relayed: bool },
    /// Nothing heard for the liveness timeout, or every path failed.
    Dead { peer: P },
}

/// What the portal said about a peer.
#[derive(Clone, Debug)]
pub struct PeerConfig {
    pub public_key: [u8; 32],
    pub preshared_key: [u8; 32],
    pub local_ice: IceCredentials,
    pub remote_ice: IceCredentials,
}

struct Peer {
    ice: IceSession,
    wireguard: WireguardPeer,
    public_key: [u8; 32],
    preshared_key: [u8; 32],
    /// Our WireGuard index for this peer (24 bits).
    index: u32,
    path: Option<(SocketAddr, SocketAddr)>,
    waiting: VecDeque<Vec<u8>>,
    alive: bool,
    added: Instant,
    /// Dead was reported (once per peer).
    reported: bool,
    /// The peer's relayed candidates: a path to one of them goes through a
    /// relay even though our end of it is our own socket.
    remote_relayed: Vec<SocketAddr>,
    /// Every address the peer's candidates named (at most
    /// [`MAX_REMOTE_ADDRESSES`]): a new relay allocation must let them in.
    remote_addresses: Vec<SocketAddr>,
    /// Another path was tried in the current silence.
    switched: bool,
    /// The pair's ICE credentials and the peer's candidates (at most
    /// [`MAX_REMOTE_ADDRESSES`]): what a fresh agent needs after a move.
    ice_credentials: (IceCredentials, IceCredentials),
    remote_candidates: Vec<String>,
    /// While relayed: when to look for a direct path again.
    next_reprobe: Option<Instant>,
    /// A re-probe's openers went out; its checks start then (or, on the
    /// controlling side, as soon as the peer's first check arrives).
    reprobe_checks_at: Option<Instant>,
    /// The peer's candidates the controlling side has not checked yet, and
    /// since when it waits for the peer's first check (see [`holes`]).
    held: Vec<String>,
    holding_since: Option<Instant>,
    /// The controlling side holds from the first candidate of the peer's
    /// that arrives (the portal may take a while to pass them on).
    hold_armed: bool,
    /// While the path is not direct: when the openers go out again.
    next_opening: Option<Instant>,
    /// The path changed: its upkeep runs at the next wake (the re-probe
    /// clock starts from the change).
    upkeep_due: bool,
    /// Its entry in [`Node::wakes`].
    wake: Option<Instant>,
    /// When [`Node::wake_peer`] last ran for it, until its deadline is
    /// computed again: a deadline at or before that wake is moved to
    /// [`REWAKE`] after it (see [`Node::refresh`]).
    woken_at: Option<Instant>,
    /// Its ICE agent's deadline when `wake` was computed: the agent's
    /// timeout runs only then (it costs more than the rest of a wake).
    ice_at: Option<Instant>,
    /// Listed in [`Node::dirty`].
    dirty: bool,
}

impl Peer {
    /// When this peer has something to do next (see [`Node::handle_timeout`]).
    fn deadline(&mut self) -> Option<Instant> {
        // A fresh agent has no deadline before its first timeout: at once.
        let ice = Some(self.ice.poll_timeout().unwrap_or(self.added));
        self.ice_at = ice;
        let connect = (self.path.is_none() && !self.reported).then(|| self.added + CONNECT_TIMEOUT);
        // The first held candidate due (none held: nothing to wake for).
        let hold = self.holding_since.and_then(|since| {
            self.held
                .iter()
                .map(|c| since + holes::hold(holes::is_direct(candidate_type(c))))
                .min()
        });
        let opening = self.next_opening.filter(|_| self.path.is_none());
        [
            ice,
            connect,
            hold,
            opening,
            self.reprobe_checks_at,
            self.upkeep(),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// When a peer with a path needs its upkeep ([`Node::watch_path`],
    /// [`Node::tick_peer`]): WireGuard's timers or keepalive, the path
    /// going quiet, the peer going dead, a re-probe. `added` stands for
    /// "at once": it is never in the future.
    fn upkeep(&self) -> Option<Instant> {
        self.path?;
        if self.upkeep_due {
            return Some(self.added);
        }
        let mut at = self.wireguard.next_tick(self.added);
        if let Some(received) = self.wireguard.last_received() {
            if self.alive {
                at = at.min(received + LIVENESS_TIMEOUT);
            }
            if !self.switched {
                at = at.min(received + PATH_QUIET);
            }
        }
        if let Some(due) = self.next_reprobe {
            at = at.min(due);
        }
        Some(at)
    }
}

pub struct Node<P> {
    /// Our addresses on the socket, one per family.
    locals: Locals,
    secret: x25519::StaticSecret,
    public: x25519::PublicKey,
    secret_bytes: [u8; 32],
    controlling: bool,
    relays: Relays,
    /// Round trips to the relays (measured by `relays`, read by every
    /// peer's ICE agent to rank relayed candidates).
    relay_rtt: RelayRtt,
    /// Boxed: a peer is some 12 KiB (boringtun's `Tunn` keeps its eight
    /// sessions inline), and a table of thousands would otherwise hold that
    /// much in every empty slot too, and move it all when it grows.
    peers: HashMap<P, Box<Peer>>,
    by_index: HashMap<u32, P>,
    by_key: HashMap<[u8; 32], P>,
    by_ufrag: HashMap<String, P>,
    /// Transaction ids of the STUN checks we sent: (peer, its index, when).
    /// The index tells a later peer of the same id from the one that sent
    /// it, so removing a peer need not scan this.
    checks: HashMap<[u8; 12], (P, u32, Instant)>,
    /// The same ids in the order they were sent, to forget them after
    /// [`CHECK_MEMORY`] without a scan.
    check_order: VecDeque<([u8; 12], Instant)>,
    /// Every peer's next deadline, soonest first.
    wakes: BTreeSet<(Instant, P)>,
    /// The first of `wakes`, kept so a poll reads one field (the device
    /// loop polls after every turn).
    earliest: Option<Instant>,
    /// Peers whose deadline must be computed again.
    dirty: Vec<P>,
    /// Scratch list of the peers due in one timeout.
    due: Vec<P>,
    /// Peers woken so far, for the tests that hold timers to "only the
    /// peers due".
    #[cfg(test)]
    woken: usize,
    /// mac1 and cookies for every handshake on the socket (boringtun's;
    /// it reads its own clock and randomness for the cookie secret).
    limiter: RateLimiter,
    next_index: u32,
    transmits: VecDeque<Transmit>,
    events: VecDeque<NodeEvent<P>>,
    /// Scratch space for the slow path.
    buffer: Vec<u8>,
    errors: Counters,
    openers_sent: u64,
}

impl<P: PeerId> Node<P> {
    /// A node on the socket whose addresses are `locals` (one per family:
    /// a dual-stack host gathers both), with this process's WireGuard
    /// secret; the client controls ICE.
    pub fn new(locals: &[SocketAddr], secret: [u8; 32], controlling: bool, seed: u64) -> Self {
        let static_secret = x25519::StaticSecret::from(secret);
        let relay_rtt = RelayRtt::default();
        Node {
            locals: Locals::new(locals),
            public: x25519::PublicKey::from(&static_secret),
            secret: static_secret,
            secret_bytes: secret,
            controlling,
            relays: Relays::new(seed, relay_rtt.clone()),
            relay_rtt,
            peers: HashMap::new(),
            by_index: HashMap::new(),
            by_key: HashMap::new(),
            by_ufrag: HashMap::new(),
            checks: HashMap::new(),
            check_order: VecDeque::new(),
            wakes: BTreeSet::new(),
            earliest: None,
            dirty: Vec::new(),
            due: Vec::new(),
            #[cfg(test)]
            woken: 0,
            limiter: RateLimiter::new(
                &x25519::PublicKey::from(&x25519::StaticSecret::from(secret)),
                HANDSHAKES_PER_SECOND,
            ),
            next_index: 1,
            transmits: VecDeque::new(),
            events: VecDeque::new(),
            buffer: vec![0; BUFFER],
            errors: Counters::default(),
            openers_sent: 0,
        }
    }

    /// Allocates on a relay; its candidates reach every peer when ready.
    /// False if the node uses that server already (its credentials are
    /// renewed: the live allocation is refreshed with them).
    pub fn add_relay(&mut self, relay: RelayConfig, now: Instant) -> bool {
        let added = self.relays.add(relay, now);
        self.flush_relays(now);
        added
    }

    /// The portal's relays: each address of a family we have becomes a
    /// TURN server, with the credentials that came with it (a dual-stack
    /// node allocates over both, for an IPv4 and an IPv6 relayed address).
    pub fn add_relays(&mut self, relays: &[RelayInfo], now: Instant) {
        let locals = self.locals;
        for relay in relays {
            for server in relay
                .addresses
                .iter()
                .filter(|a| locals.toward(**a).is_some())
            {
                let config = RelayConfig {
                    server: *server,
                    username: relay.username.clone(),
                    password: relay.password.clone(),
                    tls: relay.tls.as_ref().map(|tls| {
                        let name = tls.name.clone().unwrap_or_else(|| server.ip().to_string());
                        (SocketAddr::new(server.ip(), tls.port), name)
                    }),
                };
                if self.add_relay(config, now) {
                    tracing::info!(relay = %relay.id, %server, "using relay");
                }
            }
        }
    }

    /// Starts connecting to a peer the portal paired us with (replacing an
    /// earlier session with it).
    pub fn add_peer(&mut self, id: P, config: PeerConfig, now: Instant) {
        self.remove_peer(id);
        let mut ice = IceSession::new(
            &config.local_ice,
            &config.remote_ice,
            self.controlling,
            self.relay_rtt.clone(),
        );
        let mut candidates = Vec::new();
        let allocations: Vec<_> = self.relays.allocations().collect();
        let mut added: Vec<_> = self.locals.iter().map(|l| ice.add_host(l)).collect();
        for allocation in allocations {
            let Some(base) = self.locals.toward(allocation.mapped) else {
                continue;
            };
            if !allocation.stream {
                // Over TCP the relay saw a TCP mapping: no UDP candidate.
                added.push(ice.add_server_reflexive(allocation.mapped, base));
            }
            added.push(ice.add_relayed(allocation.relayed, base));
        }
        for result in added {
            match result {
                Ok(candidate) => candidates.extend(candidate),
                Err(_) => self.errors.add("local_candidate"),
            }
        }
        let index = self.free_index();
        let wireguard = WireguardPeer::new(
            self.secret_bytes,
            config.public_key,
            config.preshared_key,
            index,
        );
        self.by_index.insert(index, id);
        self.by_key.insert(config.public_key, id);
        self.by_ufrag.insert(ice.local_ufrag().to_string(), id);
        self.peers.insert(
            id,
            Box::new(Peer {
                ice,
                wireguard,
                public_key: config.public_key,
                preshared_key: config.preshared_key,
                index,
                path: None,
                waiting: VecDeque::new(),
                alive: false,
                added: now,
                reported: false,
                remote_relayed: Vec::new(),
                remote_addresses: Vec::new(),
                switched: false,
                next_reprobe: None,
                reprobe_checks_at: None,
                ice_credentials: (config.local_ice.clone(), config.remote_ice.clone()),
                remote_candidates: Vec::new(),
                held: Vec::new(),
                holding_since: None,
                hold_armed: self.controlling,
                next_opening: None,
                upkeep_due: false,
                woken_at: None,
                wake: None,
                ice_at: None,
                dirty: false,
            }),
        );
        for candidate in candidates {
            self.events.push_back(NodeEvent::Candidate {
                peer: id,
                candidate,
            });
        }
        self.drive_peer(id, now);
        self.flush_relays(now);
    }

    /// The host moved to another network (its addresses or routes changed,
    /// or it woke from a suspend): what was learnt on the old one is void.
    /// The relay allocations belong to the old address and port as the
    /// relays saw them, the server-reflexive addresses and the paths are
    /// gone. Starts over from `locals`: new allocations, and for each peer a
    /// fresh ICE agent (the pair's credentials and the peer's candidates
    /// kept) whose candidates go to the peer through the portal, so its
    /// side checks toward our new addresses and opens its NAT to them.
    /// WireGuard sessions stay and move to the nominated path; packets wait
    /// for it.
    pub fn network_changed(&mut self, locals: &[SocketAddr], now: Instant) {
        let locals = Locals::new(locals);
        tracing::info!(old = %self.locals, new = %locals, peers = self.peers.len(), "network changed: gathering again");
        self.locals = locals;
        self.relays.restart(now);
        self.checks.clear();
        self.check_order.clear();
        let ids: Vec<P> = self.peers.keys().copied().collect();
        for id in ids {
            let Some(peer) = self.peers.get_mut(&id) else {
                continue;
            };
            let (local_ice, remote_ice) = &peer.ice_credentials;
            let mut ice = IceSession::new(
                local_ice,
                remote_ice,
                self.controlling,
                self.relay_rtt.clone(),
            );
            let hosts: Vec<_> = locals.iter().map(|l| ice.add_host(l)).collect();
            // From a new network our NAT has no mapping toward the peer:
            // openers first, and (controlling) checks to its direct
            // candidates once it has checked us.
            peer.held.clear();
            peer.holding_since = self.controlling.then_some(now);
            peer.hold_armed = false;
            for candidate in &peer.remote_candidates {
                if self.controlling {
                    peer.held.push(candidate.clone());
                } else {
                    // Each was parsed once already.
                    let _ = ice.add_remote(candidate);
                }
            }
            peer.next_opening = Some(now + holes::OPENER_INTERVAL);
            peer.ice = ice;
            peer.path = None;
            peer.added = now;
            peer.reported = false;
            peer.switched = false;
            peer.next_reprobe = None;
            peer.reprobe_checks_at = None;
            for host in hosts {
                match host {
                    Ok(Some(candidate)) => self.events.push_back(NodeEvent::Candidate {
                        peer: id,
                        candidate,
                    }),
                    Ok(None) => {}
                    Err(_) => self.errors.add("local_candidate"),
                }
            }
            self.open_holes(id);
            self.drive_peer(id, now);
        }
        self.flush_relays(now);
    }

    /// Our candidates for every peer again, as [`NodeEvent::Candidate`]s:
    /// the ones sent while the portal channel was down were lost with it
    /// (the peer drops the ones it has already).
    pub fn announce_candidates(&mut self) {
        for (id, peer) in &self.peers {
            for candidate in peer.ice.local_candidates() {
                self.events.push_back(NodeEvent::Candidate {
                    peer: *id,
                    candidate,
                });
            }
        }
    }

    /// A 24-bit index no peer uses.
    fn free_index(&mut self) -> u32 {
        loop {
            let index = self.next_index;
            self.next_index = (self.next_index + 1) % (1 << INDEX_BITS);
            if index != 0 && !self.by_index.contains_key(&index) {
                return index;
            }
        }
    }

    pub fn remove_peer(&mut self, id: P) {
        let Some(peer) = self.peers.remove(&id) else {
            return;
        };
        self.by_index.remove(&peer.index);
        if self.by_key.get(&peer.public_key) == Some(&id) {
            self.by_key.remove(&peer.public_key);
        }
        if self.by_ufrag.get(peer.ice.local_ufrag()) == Some(&id) {
            self.by_ufrag.remove(peer.ice.local_ufrag());
        }
        if let Some(at) = peer.wake {
            self.wakes.remove(&(at, id));
            self.earliest = self.wakes.first().map(|(at, _)| *at);
        }
    }

    pub fn has_peer(&self, id: P) -> bool {
        self.peers.contains_key(&id)
    }

    /// Whether the peer was set up with exactly these keys (a change means
    /// the other side restarted: set it up afresh).
    pub fn has_keys(&self, id: P, public_key: &[u8; 32], preshared_key: &[u8; 32]) -> bool {
        self.peers
            .get(&id)
            .is_some_and(|p| p.public_key == *public_key && p.preshared_key == *preshared_key)
    }

    pub fn peer_count(&self) -> usize {
        self.peers.len()
    }

    pub fn peers(&self) -> impl Iterator<Item = P> + '_ {
        self.peers.keys().copied()
    }

    /// A candidate from the peer; the relays let its address in.
    pub fn add_remote_candidate(&mut self, id: P, candidate: &str, now: Instant) {
        let Some(peer) = self.peers.get_mut(&id) else {
            self.errors.add("candidate_for_unknown_peer");
            return;
        };
        let address = candidate_address(candidate);
        if address.is_some_and(|address| !probe_worthy(address)) {
            // A peer's candidates make us send probes (and let relays
            // through): never at this host, link-local or Postern's own.
            self.errors.add("candidate_refused");
            tracing::debug!(?id, candidate, "candidate on an address never probed");
            return;
        }
        if peer.remote_candidates.iter().any(|c| c == candidate) {
            // Said again (after the peer's portal channel came back).
            return;
        }
        if IceSession::parse_candidate(candidate).is_err() {
            self.errors.add("bad_candidate");
            tracing::debug!(?id, candidate, "unparsable ICE candidate");
            return;
        }
        let direct = holes::is_direct(candidate_type(candidate));
        if peer.hold_armed {
            peer.hold_armed = false;
            peer.holding_since = Some(now);
        }
        if peer
            .holding_since
            .is_some_and(|since| now < since + holes::hold(direct))
        {
            peer.held.push(candidate.to_string());
        } else {
            let _ = peer.ice.add_remote(candidate);
        }
        if direct {
            peer.next_opening = Some(now + holes::OPENER_INTERVAL);
        }
        // Kept for a fresh agent after a move; the newest count most, the
        // oldest make room.
        if peer.remote_candidates.len() >= MAX_REMOTE_ADDRESSES {
            peer.remote_candidates.remove(0);
        }
        peer.remote_candidates.push(candidate.to_string());
        if let Some(address) = address
            && candidate_type(candidate) == Some("relay")
            && !peer.remote_relayed.contains(&address)
        {
            peer.remote_relayed.push(address);
        }
        if let Some(address) = address {
            if !peer.remote_addresses.contains(&address)
                && peer.remote_addresses.len() < MAX_REMOTE_ADDRESSES
            {
                peer.remote_addresses.push(address);
            }
            self.relays.permit(address.ip(), now);
            if holes::is_direct(candidate_type(candidate)) {
                // Before any check of ours to it goes out (drive_peer).
                self.open_hole(address);
            }
        }
        self.drive_peer(id, now);
        self.flush_relays(now);
    }

    /// Encrypts an IP packet for a peer into `out` and says where to send
    /// `out[..n]`: the peer's address on a direct path, the relay server
    /// (ChannelData framed in place) on a relayed one. `None`: nothing to
    /// send now (the packet waits for a path, or went out framed as a TURN
    /// Send indication before the channel is bound, through the
    /// transmits).
    pub fn encapsulate(
        &mut self,
        id: P,
        packet: &[u8],
        now: Instant,
        out: &mut [u8],
    ) -> Option<(SocketAddr, usize)> {
        let Some(peer) = self.peers.get_mut(&id) else {
            self.errors.add("send_to_unknown_peer");
            return None;
        };
        let Some((local, remote)) = peer.path else {
            if peer.waiting.len() < MAX_WAITING {
                peer.waiting.push_back(packet.to_vec());
            } else {
                self.errors.add("waiting_full");
            }
            return None;
        };
        if self.locals.contains(local) {
            return match peer.wireguard.send(packet, now, out) {
                Ok(Action::Network(n)) => Some((remote, n)),
                Ok(_) => None,
                Err(error) => {
                    self.errors.add(error.label());
                    None
                }
            };
        }
        if let Some((server, number)) = self.relays.channel(local, remote) {
            let peer = self.peers.get_mut(&id)?;
            let body = out.get_mut(HEADER..)?;
            return match peer.wireguard.send(packet, now, body) {
                Ok(Action::Network(n)) => Some((server, frame_in_place(out, number, n)?)),
                Ok(_) => None,
                Err(error) => {
                    self.errors.add(error.label());
                    None
                }
            };
        }
        // Relayed before the channel is bound: a Send indication.
        let peer = self.peers.get_mut(&id)?;
        match peer.wireguard.send(packet, now, &mut self.buffer) {
            Ok(Action::Network(n)) => self.send_from(local, remote, n),
            Ok(_) => {}
            Err(error) => self.errors.add(error.label()),
        }
        None
    }

    /// A datagram that arrived on the socket from `source`. An IP packet it
    /// carried is decrypted into `out`: `Some((peer, n))` means `out[..n]`
    /// came from `peer`. Everything else (STUN, TURN, handshakes,
    /// keepalives) is handled here; replies go out through the transmits.
    pub fn decapsulate(
        &mut self,
        source: SocketAddr,
        datagram: &[u8],
        now: Instant,
        out: &mut [u8],
    ) -> Option<(P, usize)> {
        let received = self.receive(source, datagram, now, out);
        // Deadlines a handshake or STUN moved, now rather than in the
        // next poll (data packets move none).
        self.refresh();
        received
    }

    fn receive(
        &mut self,
        source: SocketAddr,
        datagram: &[u8],
        now: Instant,
        out: &mut [u8],
    ) -> Option<(P, usize)> {
        let Some(relay) = self.relays.index_of_server(source) else {
            let Some(local) = self.locals.toward(source) else {
                // A family we have no address in: nothing of ours sent it.
                self.errors.add("unexpected_family");
                return None;
            };
            return self.receive_on_path(local, source, datagram, now, out);
        };
        let received = self.relays.receive(relay, datagram, now);
        let packet = match received {
            Some((relayed, peer, data)) => self.receive_on_path(relayed, peer, data, now, out),
            None => None,
        };
        self.flush_relays(now);
        packet
    }

    /// A datagram that came to our `local` address (the socket, or a
    /// relayed address) from `remote`.
    fn receive_on_path(
        &mut self,
        local: SocketAddr,
        remote: SocketAddr,
        datagram: &[u8],
        now: Instant,
        out: &mut [u8],
    ) -> Option<(P, usize)> {
        if is_stun(datagram) {
            self.stun(local, remote, datagram, now);
            return None;
        }
        let id = self.wireguard_peer(local, remote, datagram)?;
        let peer = self.peers.get_mut(&id)?;
        let had_session = peer.wireguard.has_session();
        let action = match peer
            .wireguard
            .receive(Some(remote.ip()), datagram, now, out)
        {
            Ok(action) => action,
            Err(error) => {
                self.errors.add(error.label());
                return None;
            }
        };
        if !had_session && peer.wireguard.has_session() {
            // Keepalives start: their deadline may come before the one set.
            self.touch(id);
        }
        // A cookie reply proves nothing of the path (anyone who saw our
        // initiation and knows the peer's public key can forge one), and
        // needs no answer: the initiation is repeated with the cookie.
        if datagram.first() == Some(&3) {
            return None;
        }
        let peer = self.peers.get_mut(&id)?;
        // Authenticated WireGuard from the peer fixes where it is, as in
        // WireGuard's own endpoint roaming, on the controlled side: it may
        // hear the handshake before ICE names the nominated pair, and a
        // client that changed networks (F21) speaks from a new address. The
        // controlling side keeps what its ICE agent nominated: following the
        // source there would let packets still in flight on the old
        // (relayed) path pull it back after ICE moved it to a direct one,
        // and both sides would stay relayed.
        if peer.path.is_none() || (!self.controlling && peer.path != Some((local, remote))) {
            peer.path = Some((local, remote));
            peer.next_reprobe = None;
            peer.reprobe_checks_at = None;
            peer.upkeep_due = true;
            self.touch(id);
            // Roamed onto one of our relayed addresses: data goes out as
            // ChannelData once the channel is bound, not as Send
            // indications.
            if !self.locals.contains(local) {
                self.relays.bind(local, remote, now);
            }
        }
        match action {
            Action::Tunnel(n) => Some((id, n)),
            Action::Nothing => None,
            Action::Network(n) => {
                // A handshake answered; packets queued meanwhile follow.
                self.touch(id);
                let mut action = Action::Network(n);
                while let Action::Network(n) = action {
                    let reply = out.get(..n)?.to_vec();
                    self.send_on_path(id, &reply);
                    let peer = self.peers.get_mut(&id)?;
                    action = match peer.wireguard.flush(out) {
                        Ok(action) => action,
                        Err(error) => {
                            self.errors.add(error.label());
                            Action::Nothing
                        }
                    };
                }
                None
            }
        }
    }

    /// The peer a WireGuard datagram from `remote` (to our `local`) is
    /// for: by its public key (handshake initiation, once its mac1 checks
    /// out) or our receiver index (everything else).
    fn wireguard_peer(
        &mut self,
        local: SocketAddr,
        remote: SocketAddr,
        datagram: &[u8],
    ) -> Option<P> {
        let mut cookie = [0u8; COOKIE_REPLY];
        if matches!(datagram.first(), Some(1 | 2)) {
            // A handshake counts toward the load: the count restarts once a
            // second (boringtun checks the second; a handshake is no data
            // packet, so this is off the fast path).
            self.limiter.reset_count();
        }
        let packet = match self
            .limiter
            .verify_packet(Some(remote.ip()), datagram, &mut cookie)
        {
            Ok(packet) => packet,
            Err(TunnResult::WriteToNetwork(reply)) => {
                let reply = reply.to_vec();
                self.errors.add("handshake_cookie_sent");
                self.transmit_from(local, remote, &reply);
                return None;
            }
            Err(TunnResult::Err(error)) => {
                self.errors.add(refusal(&error));
                return None;
            }
            Err(_) => return None,
        };
        let receiver = match packet {
            Packet::HandshakeInit(init) => {
                return match parse_handshake_anon(&self.secret, &self.public, &init) {
                    Ok(half) => {
                        let found = self.by_key.get(&half.peer_static_public).copied();
                        if found.is_none() {
                            self.errors.add("handshake_from_unknown_key");
                        }
                        found
                    }
                    Err(_) => {
                        self.errors.add("handshake_not_for_us");
                        None
                    }
                };
            }
            Packet::HandshakeResponse(response) => response.receiver_idx,
            Packet::PacketCookieReply(cookie) => cookie.receiver_idx,
            Packet::PacketData(data) => data.receiver_idx,
        };
        let found = self.by_index.get(&(receiver >> 8)).copied();
        if found.is_none() {
            self.errors.add("unknown_receiver_index");
        }
        found
    }

    /// A STUN datagram on a path: to the ICE session it is for.
    fn stun(&mut self, local: SocketAddr, remote: SocketAddr, datagram: &[u8], now: Instant) {
        if holes::is_indication(datagram) {
            // A keepalive or a peer's opener: nothing to answer.
            return;
        }
        let Some(id) = self.stun_peer(datagram) else {
            self.errors.add("stun_for_nobody");
            return;
        };
        // Straight from its socket, its NAT's mapping toward us is there
        // (a check through a relay, such as the nominated relayed pair's
        // keepalive, says nothing of it).
        let direct_check = is_check(datagram)
            && self.locals.contains(local)
            && self
                .peers
                .get(&id)
                .is_some_and(|p| !p.remote_relayed.contains(&remote));
        let Some(peer) = self.peers.get_mut(&id) else {
            return;
        };
        if !peer.ice.handle_stun(now, remote, local, datagram) {
            // Unauthenticated: it changes nothing (held candidates stay
            // held).
            self.errors.add("stun_refused");
            return;
        }
        if is_check(datagram) {
            // The peer checks us: it has our candidates, and its NAT a
            // mapping toward us (or soon will). (Its address, new to the
            // agent, became a peer-reflexive candidate: the candidate it
            // is, released now, takes its place.)
            self.release_held(id, None);
        }
        if direct_check {
            // Authenticated: a re-probe's held checks go now.
            self.reprobe_when_due(id, now, true);
        }
        // A response settles its check.
        if let Some(transaction) = datagram.get(8..20) {
            self.checks.remove(transaction);
        }
        self.drive_peer(id, now);
        self.flush_relays(now);
    }

    /// The peer of a STUN message: a check by our ufrag in its USERNAME, a
    /// response by the transaction id of our check.
    fn stun_peer(&self, datagram: &[u8]) -> Option<P> {
        let message = is::stun::StunMessage::parse(datagram).ok()?;
        if message.is_binding_request() {
            let (ours, _) = message.split_username()?;
            return self.by_ufrag.get(ours).copied();
        }
        let transaction = datagram.get(8..20)?;
        let (id, index, _) = self.checks.get(transaction)?;
        // Not a later peer of the same id.
        self.peers
            .get(id)
            .filter(|peer| peer.index == *index)
            .map(|_| *id)
    }

    /// Sends a WireGuard datagram on the peer's nominated path (slow path).
    fn send_on_path(&mut self, id: P, datagram: &[u8]) {
        let Some((local, remote)) = self.peers.get(&id).and_then(|p| p.path) else {
            return;
        };
        self.transmit_from(local, remote, datagram);
    }

    /// Sends `buffer[..n]` from `local` to `remote`.
    fn send_from(&mut self, local: SocketAddr, remote: SocketAddr, n: usize) {
        let payload = self.buffer[..n].to_vec();
        self.transmit_from(local, remote, &payload);
    }

    /// Sends `payload` as if from local address `local` (our socket, or a
    /// relayed address, which means through that relay).
    fn transmit_from(&mut self, local: SocketAddr, remote: SocketAddr, payload: &[u8]) {
        if self.locals.contains(local) {
            self.transmits.push_back(Transmit {
                destination: remote,
                payload: payload.to_vec(),
                ttl: None,
                stream: None,
            });
        } else if !self.relays.is_relayed(local) {
            // The allocation behind that path is gone: sending from our own
            // socket instead would be another path than the peer expects.
            self.errors.add("relay_gone");
        } else if !self
            .relays
            .send_from(local, remote, payload, &mut self.transmits)
        {
            self.errors.add("relay_not_permitted");
        }
    }

    /// Runs what is due: the relays' timers, and those of the peers whose
    /// deadline came (no other peer is looked at).
    pub fn handle_timeout(&mut self, now: Instant) {
        self.relays.handle_timeout(now);
        self.flush_relays(now);
        self.forget_checks(now);
        self.refresh();
        let mut due = std::mem::take(&mut self.due);
        while let Some(&(at, id)) = self.wakes.first()
            && at <= now
        {
            self.wakes.pop_first();
            if let Some(peer) = self.peers.get_mut(&id) {
                peer.wake = None;
            }
            due.push(id);
        }
        // Each at most once per call, even if it is due again at once.
        for &id in &due {
            self.wake_peer(id, now);
        }
        due.clear();
        self.due = due;
        self.flush_relays(now);
        self.refresh();
        self.earliest = self.wakes.first().map(|(at, _)| *at);
    }

    /// One peer's timers, in the order they always ran: its ICE agent,
    /// path upkeep and WireGuard, holes, re-probe checks, the connect
    /// timeout, then its ICE output.
    fn wake_peer(&mut self, id: P, now: Instant) {
        let Some(peer) = self.peers.get_mut(&id) else {
            return;
        };
        #[cfg(test)]
        {
            self.woken += 1;
        }
        peer.woken_at = Some(now);
        if peer.ice_at.is_none_or(|at| at <= now) {
            peer.ice.handle_timeout(now);
        }
        if peer.upkeep().is_some_and(|at| at <= now) {
            peer.upkeep_due = false;
            self.watch_path(id, now);
            self.tick_peer(id, now);
        }
        self.tend_holes(id, now);
        self.reprobe_when_due(id, now, false);
        // A peer that never got a path is as good as dead.
        if let Some(peer) = self.peers.get_mut(&id)
            && peer.path.is_none()
            && !peer.reported
            && now.saturating_duration_since(peer.added) >= CONNECT_TIMEOUT
        {
            peer.reported = true;
            self.events.push_back(NodeEvent::Dead { peer: id });
        }
        self.drive_peer(id, now);
    }

    /// Marks a peer whose deadline may have moved; it is computed again
    /// before the next poll or timeout.
    fn touch(&mut self, id: P) {
        if let Some(peer) = self.peers.get_mut(&id)
            && !peer.dirty
        {
            peer.dirty = true;
            self.dirty.push(id);
        }
    }

    /// The marked peers' deadlines, into [`Node::wakes`].
    fn refresh(&mut self) {
        if self.dirty.is_empty() {
            return;
        }
        let mut dirty = std::mem::take(&mut self.dirty);
        for &id in &dirty {
            let Some(peer) = self.peers.get_mut(&id) else {
                continue;
            };
            peer.dirty = false;
            let mut at = peer.deadline();
            // A peer just woken is never due again at that instant (the
            // shell would wake it at once, again and again), except for the
            // one-off upkeep of a path that changed.
            if let Some(woken) = peer.woken_at.take()
                && !peer.upkeep_due
                && at.is_some_and(|at| at <= woken)
            {
                at = Some(woken + REWAKE);
            }
            if peer.wake != at {
                if let Some(old) = peer.wake {
                    self.wakes.remove(&(old, id));
                }
                if let Some(at) = at {
                    self.wakes.insert((at, id));
                }
                peer.wake = at;
            }
        }
        dirty.clear();
        self.dirty = dirty;
        self.earliest = self.wakes.first().map(|(at, _)| *at);
    }

    /// Our STUN checks older than [`CHECK_MEMORY`] are forgotten.
    fn forget_checks(&mut self, now: Instant) {
        while let Some(&(transaction, sent)) = self.check_order.front()
            && now.saturating_duration_since(sent) >= CHECK_MEMORY
        {
            self.check_order.pop_front();
            // Unless sent again since (a retransmission keeps its id).
            if self
                .checks
                .get(&transaction)
                .is_some_and(|(_, _, at)| *at == sent)
            {
                self.checks.remove(&transaction);
            }
        }
    }

    /// WireGuard's timers and liveness for one peer with a path.
    fn tick_peer(&mut self, id: P, now: Instant) {
        let Some(peer) = self.peers.get_mut(&id) else {
            return;
        };
        if peer.path.is_none() {
            return;
        }
        match peer.wireguard.tick(now, &mut self.buffer) {
            Ok(Action::Network(n)) => {
                let datagram = self.buffer[..n].to_vec();
                self.send_on_path(id, &datagram);
            }
            Ok(_) => {}
            Err(error) => self.errors.add(error.label()),
        }
        let Some(peer) = self.peers.get_mut(&id) else {
            return;
        };
        let alive = peer.wireguard.is_alive(now);
        if peer.alive && !alive {
            self.events.push_back(NodeEvent::Dead { peer: id });
        }
        peer.alive = alive;
    }

    /// Path upkeep (see [`Peer::upkeep`]): a quiet path is swapped for the next best
    /// pair at once, and a relayed one is re-checked now and then for a
    /// direct path.
    fn watch_path(&mut self, id: P, now: Instant) {
        let locals = self.locals;
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
            // A new nomination, if any, comes out of drive_peer as
            // `Connected`.
            peer.ice.abandon(remote, now);
        }
        let relayed = !locals.contains(path_local) || peer.remote_relayed.contains(&remote);
        if !relayed {
            peer.next_reprobe = None;
            peer.reprobe_checks_at = None;
        } else if peer.next_reprobe.is_none() {
            peer.next_reprobe = Some(now + REPROBE);
        } else if let Some(due) = peer.next_reprobe.filter(|due| now >= *due) {
            // Openers first, both sides; the checks follow once both NATs
            // are open toward each other (see `holes`). From the deadline,
            // not from this tick: the two sides' clocks, started by the
            // same path change, must not drift apart.
            let next = due + REPROBE;
            // A node that did not run for a while (a suspended host) starts
            // again from now rather than re-probing to catch up.
            peer.next_reprobe = Some(if next > now { next } else { now + REPROBE });
            peer.reprobe_checks_at = Some(now + holes::reprobe_lead(self.controlling));
            self.open_holes(id);
        }
    }

    /// A re-probe's checks, once due, or on the controlling side as soon as
    /// the peer checked us (`checked`: its NAT is open toward us, ours
    /// toward it since our openers).
    fn reprobe_when_due(&mut self, id: P, now: Instant, checked: bool) {
        let Some(peer) = self.peers.get_mut(&id) else {
            return;
        };
        let Some(at) = peer.reprobe_checks_at else {
            return;
        };
        if now >= at || (checked && self.controlling) {
            peer.reprobe_checks_at = None;
            peer.ice.reprobe(now);
        }
    }

    /// The earliest deadline: the first peer's (see [`Node::handle_timeout`])
    /// or the relays'.
    pub fn poll_timeout(&mut self) -> Option<Instant> {
        self.refresh();
        [self.earliest, self.relays.poll_timeout()]
            .into_iter()
            .flatten()
            .min()
    }

    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.transmits.pop_front()
    }

    pub fn poll_event(&mut self) -> Option<NodeEvent<P>> {
        self.events.pop_front()
    }

    /// Whether the peer was heard from within the liveness timeout.
    pub fn is_alive(&self, id: P, now: Instant) -> bool {
        self.peers
            .get(&id)
            .is_some_and(|peer| peer.wireguard.is_alive(now))
    }

    /// Bytes sent to and received from a peer through the tunnel.
    pub fn traffic(&self, id: P) -> Option<(usize, usize)> {
        self.peers.get(&id).map(|peer| peer.wireguard.traffic())
    }

    /// The nominated path to a peer and whether it is relayed (through our
    /// relay allocation or the peer's).
    pub fn path(&self, id: P) -> Option<(SocketAddr, SocketAddr, bool)> {
        let peer = self.peers.get(&id)?;
        let (local, remote) = peer.path?;
        Some((local, remote, self.is_relayed(peer, local, remote)))
    }

    /// How a datagram to `destination` goes: on the stream to that relay
    /// server if it is reached over one, else (`None`) on the socket. The
    /// device loop asks for what [`Node::encapsulate`] returned.
    pub fn relay_stream(&self, destination: SocketAddr) -> Option<Stream> {
        self.relays.stream_of(destination)
    }

    /// The relay a relayed path goes through: our relay server when our
    /// end is relayed, else the peer's relayed address (its relay's IP).
    pub fn path_relay(&self, id: P) -> Option<SocketAddr> {
        let peer = self.peers.get(&id)?;
        let (local, remote) = peer.path?;
        if !self.locals.contains(local) {
            return self.relays.server_of(local);
        }
        peer.remote_relayed.contains(&remote).then_some(remote)
    }

    /// What went wrong so far, by reason.
    pub fn errors(&self) -> &Counters {
        &self.errors
    }

    /// An opener to `remote` (see [`holes`]).
    fn open_hole(&mut self, remote: SocketAddr) {
        if self.locals.toward(remote).is_none() {
            // A family we have no address in.
            return;
        }
        // Nothing answers an opener: its transaction id only has to differ
        // from the last one.
        self.openers_sent += 1;
        let mut transaction = [0u8; 12];
        transaction[4..].copy_from_slice(&self.openers_sent.to_be_bytes());
        self.transmits.push_back(Transmit {
            destination: remote,
            payload: holes::opener(transaction),
            ttl: Some(holes::OPENER_TTL),
            stream: None,
        });
    }

    /// The controlling side checks the peer's held candidates: all of them
    /// once the peer checked us, those held long enough otherwise.
    fn release_held(&mut self, id: P, now: Option<Instant>) {
        let Some(peer) = self.peers.get_mut(&id) else {
            return;
        };
        if now.is_none() {
            // Checked by the peer before its candidates came: no need to
            // hold them.
            peer.hold_armed = false;
        }
        let Some(since) = peer.holding_since else {
            return;
        };
        let (release, keep): (Vec<String>, Vec<String>) =
            std::mem::take(&mut peer.held).into_iter().partition(|c| {
                now.is_none_or(|now| {
                    now >= since + holes::hold(holes::is_direct(candidate_type(c)))
                })
            });
        for candidate in release {
            let _ = peer.ice.add_remote(&candidate);
        }
        peer.held = keep;
        if now.is_none_or(|now| now >= since + holes::CHECK_HOLD) {
            peer.holding_since = None;
        }
    }

    /// Holds that ran out are released; openers go out again to the
    /// direct candidates of a peer still without a path. A relayed peer
    /// gets openers only with its re-probes: sent between them, they would
    /// keep alive an entry a clash left on our router.
    fn tend_holes(&mut self, id: P, now: Instant) {
        self.release_held(id, Some(now));
        let Some(peer) = self.peers.get_mut(&id) else {
            return;
        };
        if peer.path.is_some() || peer.next_opening.is_none_or(|at| at > now) {
            return;
        }
        peer.next_opening = Some(now + holes::OPENER_INTERVAL);
        self.open_holes(id);
    }

    /// Openers to each of the peer's direct candidates.
    fn open_holes(&mut self, id: P) {
        let Some(peer) = self.peers.get(&id) else {
            return;
        };
        let addresses: Vec<SocketAddr> = peer
            .remote_candidates
            .iter()
            .filter(|c| holes::is_direct(candidate_type(c)))
            .filter_map(|c| candidate_address(c))
            .collect();
        for address in addresses {
            self.open_hole(address);
        }
    }

    fn is_relayed(&self, peer: &Peer, local: SocketAddr, remote: SocketAddr) -> bool {
        !self.locals.contains(local) || peer.remote_relayed.contains(&remote)
    }

    /// One peer's ICE output: STUN transmits (through relays where the
    /// local side is relayed), nomination (waiting packets go out),
    /// failure.
    fn drive_peer(&mut self, id: P, now: Instant) {
        let mut outgoing = Vec::new();
        let mut nominated = None;
        let mut dead = false;
        self.touch(id);
        let Some(peer) = self.peers.get_mut(&id) else {
            return;
        };
        let index = peer.index;
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
            if is_check(&transmit.payload)
                && let Some(transaction) = transmit.payload.get(8..20)
                && let Ok(transaction) = <[u8; 12]>::try_from(transaction)
            {
                self.checks.insert(transaction, (id, index, now));
                self.check_order.push_back((transaction, now));
            }
            self.transmit_from(transmit.source, transmit.destination, &transmit.payload);
        }
        if dead {
            if let Some(peer) = self.peers.get_mut(&id) {
                peer.path = None;
            }
            self.events.push_back(NodeEvent::Dead { peer: id });
        }
        if let Some((local, remote)) = nominated {
            self.nominated(id, local, remote, now);
        }
    }

    /// ICE nominated a pair: WireGuard moves there, waiting packets follow.
    fn nominated(&mut self, id: P, local: SocketAddr, remote: SocketAddr, now: Instant) {
        let Some(peer) = self.peers.get_mut(&id) else {
            return;
        };
        if peer.path != Some((local, remote)) {
            // Both sides' re-probe clocks start from the path change.
            peer.next_reprobe = None;
            peer.reprobe_checks_at = None;
            peer.upkeep_due = true;
        }
        peer.path = Some((local, remote));
        let waiting: Vec<Vec<u8>> = peer.waiting.drain(..).collect();
        let relayed = !self.locals.contains(local) || peer.remote_relayed.contains(&remote);
        if !self.locals.contains(local) {
            self.relays.bind(local, remote, now);
        }
        self.events
            .push_back(NodeEvent::Connected { peer: id, relayed });
        // An established session moving to a new path: a handshake the peer
        // must answer moves its side too, within one round trip.
        if let Some(peer) = self.peers.get_mut(&id)
            && peer.wireguard.last_received().is_some()
        {
            match peer.wireguard.probe(now, &mut self.buffer) {
                Ok(Action::Network(n)) => {
                    let probe = self.buffer[..n].to_vec();
                    self.send_on_path(id, &probe);
                }
                Ok(_) => {}
                Err(error) => self.errors.add(error.label()),
            }
        }
        if waiting.is_empty() {
            return;
        }
        let mut out = vec![0u8; BUFFER];
        for packet in waiting {
            if let Some((destination, n)) = self.encapsulate(id, &packet, now, &mut out) {
                let stream = self.relays.stream_of(destination);
                self.transmits.push_back(Transmit {
                    destination,
                    payload: out[..n].to_vec(),
                    ttl: None,
                    stream,
                });
            }
        }
    }

    /// TURN requests out, allocations in (new candidates for every peer).
    fn flush_relays(&mut self, now: Instant) {
        let mut failed = 0;
        let announced = self.relays.poll(&mut self.transmits, now, &mut failed);
        for _ in 0..failed {
            self.errors.add("relay_allocation_failed");
        }
        if !announced.is_empty() {
            // A new (or renewed) allocation starts without permissions: the
            // peers' addresses are let in again.
            let addresses: Vec<SocketAddr> = self
                .peers
                .values()
                .flat_map(|p| p.remote_addresses.iter().copied())
                .collect();
            for address in addresses {
                self.relays.permit(address.ip(), now);
            }
        }
        for allocation in announced {
            let ids: Vec<P> = self.peers.keys().copied().collect();
            for id in ids {
                // New candidates: its agent's deadline moves.
                self.touch(id);
                let Some(peer) = self.peers.get_mut(&id) else {
                    continue;
                };
                let Some(base) = self.locals.toward(allocation.mapped) else {
                    continue;
                };
                let mut added = Vec::with_capacity(2);
                if !allocation.stream {
                    added.push(peer.ice.add_server_reflexive(allocation.mapped, base));
                }
                added.push(peer.ice.add_relayed(allocation.relayed, base));
                for result in added {
                    match result {
                        Ok(Some(candidate)) => self.events.push_back(NodeEvent::Candidate {
                            peer: id,
                            candidate,
                        }),
                        Ok(None) => {}
                        Err(_) => self.errors.add("local_candidate"),
                    }
                }
            }
        }
    }
}

/// Whether an outgoing STUN message is a request (a check whose response
/// must find its way back here): class bits 0b00.
fn is_check(payload: &[u8]) -> bool {
    payload.len() >= 2 && u16::from_be_bytes([payload[0], payload[1]]) & 0x0110 == 0
}

/// The address of an SDP candidate (`candidate:F C udp P ADDR PORT typ ...`).
fn candidate_address(candidate: &str) -> Option<SocketAddr> {
    let mut fields = candidate.split_whitespace().skip(4);
    let ip = fields.next()?.parse().ok()?;
    let port = fields.next()?.parse().ok()?;
    Some(SocketAddr::new(ip, port))
}

/// Whether a peer's candidate address may be probed: not loopback,
/// unspecified, multicast, broadcast, link-local (cloud metadata),
/// IPv4-mapped, or port 0. The shared space 100.64.0.0/10 stays allowed:
/// carrier-grade NATs hand it to hosts, so it is a real host candidate.
fn probe_worthy(address: SocketAddr) -> bool {
    let ip = address.ip();
    let refused = match ip {
        IpAddr::V4(v4) => {
            v4.is_loopback()
                || v4.is_unspecified()
                || v4.is_multicast()
                || v4.is_broadcast()
                || v4.is_link_local()
                || v4.octets()[0] == 0
        }
        IpAddr::V6(v6) => {
            v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || v6.is_unicast_link_local()
                || v6.to_ipv4_mapped().is_some()
        }
    };
    !refused && address.port() != 0
}

/// The `typ` of an SDP candidate (`host`, `srflx`, `prflx`, `relay`).
fn candidate_type(candidate: &str) -> Option<&str> {
    let mut fields = candidate.split_whitespace().skip_while(|f| *f != "typ");
    fields.next()?;
    fields.next()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wireguard::{KEEPALIVE, public_key};

    const GATEWAY: SocketAddr =
        SocketAddr::new(IpAddr::V4(std::net::Ipv4Addr::new(198, 51, 100, 1)), 51820);
    const GATEWAY_SECRET: [u8; 32] = [7; 32];

    fn client_address(i: u32) -> SocketAddr {
        SocketAddr::new(
            IpAddr::V4(std::net::Ipv4Addr::new(198, 18, 0, 10 + i as u8)),
            40000,
        )
    }

    fn credentials(tag: &str) -> IceCredentials {
        IceCredentials {
            username_fragment: format!("{tag}uf"),
            password: format!("{tag}-password-0123456789abcdef"),
        }
    }

    /// Peer `i` of a gateway's node, a bare WireGuard client that does its
    /// handshake at `now` from its own address (the controlled side takes
    /// the path from it); the node's timers then run at `now`.
    fn connect(node: &mut Node<u32>, i: u32, now: Instant) -> WireguardPeer {
        let secret = [10 + i as u8; 32];
        let psk = [20 + i as u8; 32];
        node.add_peer(
            i,
            PeerConfig {
                public_key: public_key(secret),
                preshared_key: psk,
                local_ice: credentials(&format!("g{i}")),
                remote_ice: credentials(&format!("c{i}")),
            },
            now,
        );
        let mut client = WireguardPeer::new(secret, public_key(GATEWAY_SECRET), psk, 100 + i);
        let (mut buffer, mut out) = (vec![0u8; 2048], vec![0u8; 2048]);
        let Ok(Action::Network(n)) = client.send(&[], now, &mut buffer) else {
            panic!("no initiation");
        };
        node.decapsulate(client_address(i), &buffer[..n], now, &mut out);
        while let Some(transmit) = node.poll_transmit() {
            assert_eq!(transmit.destination, client_address(i));
            if let Ok(Action::Network(n)) =
                client.receive(Some(GATEWAY.ip()), &transmit.payload, now, &mut buffer)
            {
                // The client's keepalive after the handshake.
                node.decapsulate(client_address(i), &buffer[..n], now, &mut out);
            }
        }
        node.handle_timeout(now);
        while node.poll_transmit().is_some() {}
        while node.poll_event().is_some() {}
        assert!(node.is_alive(i, now));
        client
    }

    /// Timers visit only the peers that are due: a peer whose keepalive is
    /// due sends it on time, a peer that is not due is not woken (its
    /// deadline stays), and liveness still ends each peer at its own time.
    #[test]
    fn a_timeout_wakes_only_the_peers_due() {
        let start = Instant::now();
        let mut node = Node::<u32>::new(&[GATEWAY], GATEWAY_SECRET, false, 1);
        let _first = connect(&mut node, 0, start);
        let later = start + Duration::from_millis(200);
        let _second = connect(&mut node, 1, later);
        let second_wake = node.peers.get(&1).and_then(|p| p.wake);

        // The first peer's keepalive: 400 ms after the gateway last sent.
        let due = node.poll_timeout().expect("a deadline");
        assert_eq!(due, start + KEEPALIVE);
        assert!(second_wake.is_some_and(|at| at > due));
        let woken = node.woken;
        node.handle_timeout(due);
        assert_eq!(node.woken - woken, 1, "only the peer due is woken");
        let sent: Vec<Transmit> = std::iter::from_fn(|| node.poll_transmit()).collect();
        assert_eq!(sent.len(), 1, "{sent:?}");
        assert_eq!(sent[0].destination, client_address(0));
        assert_eq!(sent[0].payload.len(), 32, "a keepalive");
        assert_eq!(node.peers.get(&1).and_then(|p| p.wake), second_wake);
        assert_eq!(node.poll_timeout(), Some(later + KEEPALIVE));

        // Neither client says anything more: each is dead 1.25 s after it
        // was last heard, not before, whatever the other does.
        let mut dead = Vec::new();
        while let Some(at) = node.poll_timeout()
            && at <= later + Duration::from_secs(2)
        {
            node.handle_timeout(at);
            while node.poll_transmit().is_some() {}
            while let Some(event) = node.poll_event() {
                if let NodeEvent::Dead { peer } = event {
                    dead.push((peer, at));
                }
            }
        }
        assert_eq!(
            dead,
            vec![(0, start + LIVENESS_TIMEOUT), (1, later + LIVENESS_TIMEOUT)]
        );
    }

    /// A gateway that answered a handshake has no current session until
    /// the client's first data packet: its timers meanwhile start no
    /// handshake of their own (boringtun would, for a keepalive sent
    /// without a session), and the peer, whose keepalive cannot go yet, is
    /// never due again at the instant it was woken.
    #[test]
    fn a_gateway_waiting_for_the_clients_confirmation_starts_no_handshake() {
        let start = Instant::now();
        let mut node = Node::<u32>::new(&[GATEWAY], GATEWAY_SECRET, false, 1);
        let (secret, psk) = ([10; 32], [20; 32]);
        node.add_peer(
            0,
            PeerConfig {
                public_key: public_key(secret),
                preshared_key: psk,
                local_ice: credentials("g0"),
                remote_ice: credentials("c0"),
            },
            start,
        );
        let mut client = WireguardPeer::new(secret, public_key(GATEWAY_SECRET), psk, 100);
        let (mut buffer, mut out) = (vec![0u8; 2048], vec![0u8; 2048]);
        let Ok(Action::Network(n)) = client.send(&[], start, &mut buffer) else {
            panic!("no initiation");
        };
        node.decapsulate(client_address(0), &buffer[..n], start, &mut out);
        let response: Vec<Transmit> = std::iter::from_fn(|| node.poll_transmit()).collect();
        assert_eq!(response.len(), 1);
        assert_eq!(response[0].payload[0], 2, "a handshake response");

        // The confirmation is late: the gateway's timers run meanwhile.
        let mut at = start;
        let mut wakes = 0;
        while at <= start + Duration::from_millis(900) {
            let woken = node.woken;
            node.handle_timeout(at);
            wakes += node.woken - woken;
            for transmit in std::iter::from_fn(|| node.poll_transmit()) {
                assert_ne!(
                    transmit.payload.first(),
                    Some(&1),
                    "a handshake initiation from the gateway at {:?}",
                    at - start
                );
                assert_ne!(transmit.payload.len(), 32, "a keepalive without a session");
            }
            let next = node.poll_timeout().expect("a deadline");
            assert!(next > at, "due again at once ({:?})", at - start);
            at = next.max(at + Duration::from_millis(100));
        }
        assert!(wakes < 40, "{wakes} wakes in 900 ms");

        // The confirmation: keepalives start, 400 ms after the response.
        let confirmed = start + Duration::from_millis(900);
        let Ok(Action::Network(n)) = client.receive(
            Some(GATEWAY.ip()),
            &response[0].payload,
            confirmed,
            &mut buffer,
        ) else {
            panic!("no confirmation");
        };
        node.decapsulate(client_address(0), &buffer[..n], confirmed, &mut out);
        assert!(node.is_alive(0, confirmed));
        let due = node.poll_timeout().expect("a deadline");
        assert_eq!(
            due,
            start + KEEPALIVE,
            "the keepalive is overdue since the response"
        );
        node.handle_timeout(confirmed);
        let sent: Vec<Transmit> = std::iter::from_fn(|| node.poll_transmit()).collect();
        assert_eq!(sent.len(), 1, "{sent:?}");
        assert_eq!(sent[0].payload.len(), 32, "a keepalive");
        assert_eq!(node.poll_timeout(), Some(confirmed + KEEPALIVE));
    }

    /// A cookie reply is no sign of the peer: anyone who saw the gateway's
    /// initiation and knows the client's public key can make one, from
    /// anywhere. It moves neither the path (the controlled side otherwise
    /// follows authenticated WireGuard) nor the time the peer was heard.
    #[test]
    fn a_cookie_reply_moves_no_path_and_is_not_hearing_from_the_peer() {
        let start = Instant::now();
        let mut node = Node::<u32>::new(&[GATEWAY], GATEWAY_SECRET, false, 1);
        let _client = connect(&mut node, 0, start);
        let path = node.path(0);
        let heard = node.peers.get(&0).and_then(|p| p.wireguard.last_received());
        // The gateway's initiation (as after an ICE nomination), seen by an
        // attacker who answers it with a cookie from elsewhere.
        let later = start + Duration::from_millis(300);
        let mut buffer = vec![0u8; 2048];
        let peer = node.peers.get_mut(&0).expect("the peer");
        let Ok(Action::Network(n)) = peer.wireguard.probe(later, &mut buffer) else {
            panic!("no initiation");
        };
        let attacker = SocketAddr::new(IpAddr::V4(std::net::Ipv4Addr::new(203, 0, 113, 9)), 666);
        // Under load from the first handshake: a cookie, with the client's key.
        let load = RateLimiter::new(&x25519::PublicKey::from(public_key([10; 32])), 0);
        let mut reply = vec![0u8; 2048];
        let Err(TunnResult::WriteToNetwork(cookie)) =
            load.verify_packet(Some(GATEWAY.ip()), &buffer[..n], &mut reply)
        else {
            panic!("no cookie");
        };
        let cookie = cookie.to_vec();
        assert_eq!(cookie[0], 3);
        let mut out = vec![0u8; 2048];
        assert_eq!(node.decapsulate(attacker, &cookie, later, &mut out), None);
        assert_eq!(node.path(0), path, "the path stays");
        assert_eq!(
            node.peers.get(&0).and_then(|p| p.wireguard.last_received()),
            heard,
            "not heard from"
        );
        assert!(!node.is_alive(0, start + LIVENESS_TIMEOUT));
    }

    /// The first check a peer sends us, from a node that knows us by
    /// `remote_ice` (right or wrong password).
    fn first_check(remote_ice: IceCredentials, now: Instant) -> Transmit {
        let mut peer = Node::<u32>::new(&[client_address(0)], [10; 32], false, 2);
        peer.add_peer(
            0,
            PeerConfig {
                public_key: public_key(GATEWAY_SECRET),
                preshared_key: [20; 32],
                local_ice: credentials("c0"),
                remote_ice,
            },
            now,
        );
        let ours = format!(
            "candidate:1 1 udp 2130706431 {} {} typ host",
            GATEWAY.ip(),
            GATEWAY.port()
        );
        peer.add_remote_candidate(0, &ours, now);
        let mut at = now;
        loop {
            peer.handle_timeout(at);
            if let Some(check) = std::iter::from_fn(|| peer.poll_transmit())
                .find(|t| t.destination == GATEWAY && is_check(&t.payload))
            {
                return check;
            }
            at = peer.poll_timeout().expect("a deadline").max(at);
            assert!(at < now + Duration::from_secs(5), "no check");
        }
    }

    /// The controlling side holds the peer's candidates until the peer's
    /// first check: an unauthenticated one (a wrong password) changes
    /// nothing, an authenticated one releases them.
    #[test]
    fn only_an_authenticated_check_releases_held_candidates() {
        let start = Instant::now();
        let mut node = Node::<u32>::new(&[GATEWAY], GATEWAY_SECRET, true, 1);
        node.add_peer(
            0,
            PeerConfig {
                public_key: public_key([10; 32]),
                preshared_key: [20; 32],
                local_ice: credentials("g0"),
                remote_ice: credentials("c0"),
            },
            start,
        );
        let theirs = format!(
            "candidate:1 1 udp 2130706431 {} {} typ host",
            client_address(0).ip(),
            client_address(0).port()
        );
        node.add_remote_candidate(0, &theirs, start);
        let held = |node: &Node<u32>| node.peers.get(&0).map(|p| p.held.len());
        assert_eq!(held(&node), Some(1));
        let mut out = vec![0u8; 2048];

        let mut wrong = credentials("g0");
        wrong.password = "not-the-password-0123456789abcdef".into();
        let forged = first_check(wrong, start);
        node.decapsulate(client_address(0), &forged.payload, start, &mut out);
        assert_eq!(node.errors().get("stun_refused"), 1);
        assert_eq!(held(&node), Some(1), "still held");

        let check = first_check(credentials("g0"), start);
        node.decapsulate(client_address(0), &check.payload, start, &mut out);
        assert_eq!(node.errors().get("stun_refused"), 1);
        assert_eq!(held(&node), Some(0), "released");
    }
}
