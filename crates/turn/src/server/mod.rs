//! The sans-IO TURN relay server core (RFC 8656 over UDP).
//!
//! The I/O shell feeds it datagrams from clients (on the listening socket)
//! and from peers (on relayed ports) with the current time, and does what it
//! answers: send a reply, forward data, or nothing. Opening and closing the
//! relayed sockets goes through [`RelaySockets`], so the core never picks a
//! port the shell could not bind. The data paths (ChannelData and peer data)
//! allocate nothing.

mod allocation;
mod auth;
mod peers;
mod requests;
mod reservations;

pub use reservations::Reservations;

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::ops::RangeInclusive;
use std::time::{Duration, Instant};

use crate::channel;
use crate::credentials::NonceKey;
use crate::stun::{
    self, Class, HEADER_LEN, MAGIC_COOKIE, Message, attr, encode_xor_address, method,
};

use allocation::Allocation;
pub use allocation::{CHANNEL_LIFETIME, MAX_PEERS, PERMISSION_LIFETIME};
pub use peers::{PeerPolicy, Refusal};

/// The shell's relayed sockets.
pub trait RelaySockets {
    /// Binds the relayed socket for `port` on the family of `ip`; false when
    /// the port cannot be had (in use), and the core tries another.
    fn open(&mut self, ip: IpAddr, port: u16) -> bool;
    /// Closes it: the allocation is gone.
    fn close(&mut self, port: u16);
}

/// How the relay runs.
#[derive(Clone, Debug)]
pub struct ServerConfig {
    pub realm: String,
    /// Shared secret of the TURN REST credentials.
    pub auth_secret: Vec<u8>,
    /// Addresses advertised as relayed addresses; a family without one is
    /// refused with 440.
    pub relay_ipv4: Option<Ipv4Addr>,
    pub relay_ipv6: Option<Ipv6Addr>,
    /// Ports for relayed sockets. Cores on several threads split the range
    /// without talking to each other: this one uses the ports whose pair
    /// number (`port / 2`) is `shard` modulo `shards`, so every shard holds
    /// whole even/odd pairs for EVEN-PORT.
    pub ports: RangeInclusive<u16>,
    pub shard: u16,
    pub shards: u16,
    pub default_lifetime: Duration,
    pub max_lifetime: Duration,
    pub nonce_lifetime: Duration,
    pub max_allocations: usize,
    pub max_allocations_per_user: usize,
    /// Bits per second each allocation may relay in each direction; 0 for
    /// no limit.
    pub max_bps_per_allocation: u64,
    /// Which peers allocations may reach (403 otherwise): a relay must not
    /// become a way into its own host, its networks or the cloud metadata
    /// service. The relayed addresses are always among its own addresses.
    pub peers: PeerPolicy,
    /// SOFTWARE in every answer: off by default, since it names the version
    /// to anyone and makes the answers to spoofed sources (Binding, 401)
    /// bigger (RFC 8489 makes it optional).
    pub software: Option<String>,
    /// EVEN-PORT reservations; the shards of one relay share one.
    pub reservations: std::sync::Arc<Reservations>,
}

impl ServerConfig {
    /// Defaults of RFC 8656 and coturn-like quotas.
    pub fn new(realm: &str, auth_secret: &[u8], relay_ipv4: Option<Ipv4Addr>) -> Self {
        ServerConfig {
            realm: realm.to_string(),
            auth_secret: auth_secret.to_vec(),
            relay_ipv4,
            relay_ipv6: None,
            ports: 49152..=65535,
            shard: 0,
            shards: 1,
            default_lifetime: Duration::from_secs(600),
            max_lifetime: Duration::from_secs(3600),
            nonce_lifetime: Duration::from_secs(600),
            max_allocations: 10_000,
            max_allocations_per_user: 10,
            max_bps_per_allocation: 0,
            peers: PeerPolicy::default(),
            software: None,
            reservations: std::sync::Arc::default(),
        }
    }
}

/// The time, twice: a monotonic instant for lifetimes and rate limits, and
/// Unix seconds for credential and nonce expiry.
#[derive(Clone, Copy, Debug)]
pub struct Now {
    pub instant: Instant,
    pub unix_secs: u64,
}

/// Why a datagram was dropped, for metrics.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DropReason {
    Malformed,
    NoAllocation,
    NoPermission,
    NoChannel,
    RateLimited,
    Unexpected,
    /// A Send indication to a peer the policy refuses.
    ForbiddenPeer,
}

impl DropReason {
    pub const ALL: [DropReason; 7] = [
        DropReason::Malformed,
        DropReason::NoAllocation,
        DropReason::NoPermission,
        DropReason::NoChannel,
        DropReason::RateLimited,
        DropReason::Unexpected,
        DropReason::ForbiddenPeer,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            DropReason::Malformed => "malformed",
            DropReason::NoAllocation => "no_allocation",
            DropReason::NoPermission => "no_permission",
            DropReason::NoChannel => "no_channel",
            DropReason::RateLimited => "rate_limited",
            DropReason::Unexpected => "unexpected",
            DropReason::ForbiddenPeer => "forbidden_peer",
        }
    }
}

/// Counters for metrics.
#[derive(Clone, Debug, Default)]
pub struct Stats {
    pub to_peer_packets: u64,
    pub to_peer_bytes: u64,
    pub to_client_packets: u64,
    pub to_client_bytes: u64,
    pub drops: [u64; DropReason::ALL.len()],
    pub allocations_created: u64,
}

impl Stats {
    fn dropped(&mut self, reason: DropReason) {
        self.drops[reason as usize] += 1;
    }
}

/// What to do with a datagram from a client.
#[derive(Debug, PartialEq, Eq)]
pub enum ClientAction<'a> {
    /// Send these bytes back to the client.
    Reply(Vec<u8>),
    /// Send `payload` from the relayed socket of `port` to `peer`.
    Relay {
        port: u16,
        peer: SocketAddr,
        payload: &'a [u8],
    },
    /// Nothing to send (dropped datagrams are counted in [`Stats`]).
    None,
}

/// What to do with a datagram from a peer, framed in place (see
/// [`Server::handle_peer`]).
#[derive(Debug, PartialEq, Eq)]
pub enum PeerAction {
    /// Send `buf[range]` to `client` from the listening socket.
    ToClient {
        client: SocketAddr,
        range: std::ops::Range<usize>,
    },
    Drop,
}

/// Revoked ids remembered at most (each until its credentials lapse).
const MAX_REVOKED: usize = 65_536;

/// Room [`Server::handle_peer`] needs in front of the peer's data: a STUN
/// header, XOR-PEER-ADDRESS (IPv6) and the DATA attribute header.
pub const PEER_HEADROOM: usize = HEADER_LEN + 4 + 20 + 4;
/// Room needed after the data (DATA padding).
pub const PEER_TAILROOM: usize = 3;

/// The relay server core of one shard.
pub struct Server {
    config: ServerConfig,
    nonces: NonceKey,
    allocations: HashMap<SocketAddr, Allocation>,
    by_port: HashMap<u16, SocketAddr>,
    per_user: HashMap<String, usize>,
    /// Revoked TURN REST ids: credentials of the id that expire no later
    /// than the given Unix second are refused (see [`Server::revoke`]).
    revoked: HashMap<String, u64>,
    free_ports: Vec<u16>,
    expiries: BinaryHeap<Reverse<(Instant, SocketAddr)>>,
    rng: u64,
    /// Secret for reservation tokens (from the seed): unguessable, and
    /// distinct per shard.
    token_key: [u8; 32],
    tokens_made: u64,
    /// When this shard's earliest reservation may expire (kept here so the
    /// shared map is not locked on every turn of the loop).
    reservation_due: Option<Instant>,
    stats: Stats,
}

impl Server {
    /// `seed` drives port choice and the nonce key: give it real randomness
    /// in production, a constant in tests.
    pub fn new(mut config: ServerConfig, seed: [u8; 32]) -> Self {
        let relayed = [
            config.relay_ipv4.map(IpAddr::V4),
            config.relay_ipv6.map(IpAddr::V6),
        ];
        for ip in relayed.into_iter().flatten() {
            if !config.peers.own.contains(&ip) {
                config.peers.own.push(ip);
            }
        }
        let shards = config.shards.max(1);
        let free_ports = config
            .ports
            .clone()
            .filter(|port| (port / 2) % shards == config.shard % shards)
            .collect();
        // The shards of one relay share the seed (and so the nonce key):
        // each draws its own port sequence.
        let rng = (u64::from_le_bytes(seed[..8].try_into().unwrap_or([1; 8]))
            ^ u64::from(config.shard).wrapping_mul(0x9E37_79B9_7F4A_7C15))
            | 1;
        Server {
            nonces: NonceKey::new(seed),
            config,
            allocations: HashMap::new(),
            by_port: HashMap::new(),
            per_user: HashMap::new(),
            revoked: HashMap::new(),
            free_ports,
            expiries: BinaryHeap::new(),
            rng,
            token_key: seed,
            tokens_made: 0,
            reservation_due: None,
            stats: Stats::default(),
        }
    }

    pub fn config(&self) -> &ServerConfig {
        &self.config
    }

    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    /// Live allocations.
    pub fn allocation_count(&self) -> usize {
        self.allocations.len()
    }

    /// A datagram from `client` on the listening socket.
    pub fn handle_client<'a>(
        &mut self,
        now: Now,
        client: SocketAddr,
        packet: &'a [u8],
        sockets: &mut impl RelaySockets,
    ) -> ClientAction<'a> {
        if channel::is_channel_data(packet) {
            return self.channel_data(now.instant, client, packet);
        }
        let message = match Message::parse(packet) {
            Ok(message) => message,
            Err(_) => {
                self.stats.dropped(DropReason::Malformed);
                return ClientAction::None;
            }
        };
        match (message.class(), message.method()) {
            (Class::Indication, method::SEND) => {
                self.send_indication(now.instant, client, &message)
            }
            (Class::Request, _) => match self.request(now, client, &message, sockets) {
                Some(reply) => ClientAction::Reply(reply),
                None => ClientAction::None,
            },
            // Binding indications are keepalives; responses are not ours.
            (Class::Indication, method::BINDING) => ClientAction::None,
            _ => {
                self.stats.dropped(DropReason::Unexpected);
                ClientAction::None
            }
        }
    }

    fn channel_data<'a>(
        &mut self,
        now: Instant,
        client: SocketAddr,
        packet: &'a [u8],
    ) -> ClientAction<'a> {
        let Some((number, payload)) = channel::parse(packet) else {
            self.stats.dropped(DropReason::Malformed);
            return ClientAction::None;
        };
        let Some(allocation) = self.allocations.get_mut(&client) else {
            self.stats.dropped(DropReason::NoAllocation);
            return ClientAction::None;
        };
        let Some(peer) = allocation.channel_peer(number, now) else {
            self.stats.dropped(DropReason::NoChannel);
            return ClientAction::None;
        };
        relay_to_peer(allocation, &mut self.stats, now, peer, payload)
    }

    fn send_indication<'a>(
        &mut self,
        now: Instant,
        client: SocketAddr,
        message: &Message<'a>,
    ) -> ClientAction<'a> {
        let (Some(Some(peer)), Some(data)) = (
            message.get_xor_address(attr::XOR_PEER_ADDRESS),
            message.get(attr::DATA),
        ) else {
            self.stats.dropped(DropReason::Malformed);
            return ClientAction::None;
        };
        let Some(allocation) = self.allocations.get_mut(&client) else {
            self.stats.dropped(DropReason::NoAllocation);
            return ClientAction::None;
        };
        // A permission is for a whole address; the port may still be one
        // the policy refuses (the relay's own listening port).
        if self
            .config
            .peers
            .check(peer.ip(), Some(peer.port()))
            .is_err()
        {
            self.stats.dropped(DropReason::ForbiddenPeer);
            return ClientAction::None;
        }
        relay_to_peer(allocation, &mut self.stats, now, peer, data)
    }

    /// A datagram from `peer` on the relayed socket of `port`. The data is
    /// `buf[start..start + len]`; the core frames it for the client in place,
    /// as ChannelData when a channel is bound to the peer and as a Data
    /// indication otherwise. `start` must leave [`PEER_HEADROOM`] bytes in
    /// front and `buf` [`PEER_TAILROOM`] bytes after the data.
    pub fn handle_peer(
        &mut self,
        now: Instant,
        port: u16,
        peer: SocketAddr,
        buf: &mut [u8],
        start: usize,
        len: usize,
    ) -> PeerAction {
        if start < PEER_HEADROOM
            || buf.len() < start + len + PEER_TAILROOM
            || len > usize::from(u16::MAX) - 64
        {
            self.stats.dropped(DropReason::Malformed);
            return PeerAction::Drop;
        }
        let Some(&client) = self.by_port.get(&port) else {
            self.stats.dropped(DropReason::NoAllocation);
            return PeerAction::Drop;
        };
        let Some(allocation) = self.allocations.get_mut(&client) else {
            self.stats.dropped(DropReason::NoAllocation);
            return PeerAction::Drop;
        };
        if !allocation.has_permission(peer.ip(), now) {
            self.stats.dropped(DropReason::NoPermission);
            return PeerAction::Drop;
        }
        if !allocation.to_client.take(len, now) {
            self.stats.dropped(DropReason::RateLimited);
            return PeerAction::Drop;
        }
        let range = match allocation.channel_for(peer, now) {
            Some(number) => {
                let begin = start - channel::HEADER_LEN;
                buf[begin..start].copy_from_slice(&channel::header(number, len as u16));
                begin..start + len
            }
            None => frame_data_indication(buf, start, len, peer, self.rng_next()),
        };
        self.stats.to_client_packets += 1;
        self.stats.to_client_bytes += len as u64;
        PeerAction::ToClient { client, range }
    }

    /// Expires allocations and reservations; call at [`Server::poll_timeout`].
    pub fn handle_timeout(&mut self, now: Instant, sockets: &mut impl RelaySockets) {
        if self.reservation_due.is_some_and(|due| due <= now) {
            let returned = self.config.reservations.expire(self.config.shard, now);
            self.free_ports.extend(returned);
            self.reservation_due = self.config.reservations.next_expiry(self.config.shard);
        }
        while let Some(Reverse((due, client))) = self.expiries.peek().copied() {
            if due > now {
                break;
            }
            self.expiries.pop();
            let expired = self
                .allocations
                .get(&client)
                .is_some_and(|allocation| allocation.expires <= now);
            if expired {
                self.remove_allocation(client, sockets);
            }
        }
    }

    /// The portal revoked the devices `ids` (the id part of their TURN REST
    /// usernames): their allocations end now, and their credentials that
    /// expire no later than `not_after_unix` (every credential issued before
    /// the revocation) are refused from now on, while credentials issued
    /// later still work. Returns how many allocations ended.
    pub fn revoke(
        &mut self,
        now: Now,
        ids: &[String],
        not_after_unix: u64,
        sockets: &mut impl RelaySockets,
    ) -> usize {
        self.revoked
            .retain(|_, not_after| *not_after > now.unix_secs);
        if not_after_unix > now.unix_secs {
            for id in ids {
                if self.revoked.len() >= MAX_REVOKED && !self.revoked.contains_key(id) {
                    // The soonest to lapse makes room; its credentials have
                    // the least time left anyway.
                    let soonest = self
                        .revoked
                        .iter()
                        .min_by_key(|(_, t)| **t)
                        .map(|(id, _)| id.clone());
                    if let Some(soonest) = soonest {
                        self.revoked.remove(&soonest);
                    }
                }
                let entry = self.revoked.entry(id.clone()).or_default();
                *entry = (*entry).max(not_after_unix);
            }
        }
        let gone: Vec<SocketAddr> = self
            .allocations
            .iter()
            .filter(|(_, a)| {
                a.credential_expiry <= not_after_unix
                    && crate::credentials::rest_id(&a.username)
                        .is_some_and(|id| ids.iter().any(|revoked| revoked == id))
            })
            .map(|(client, _)| *client)
            .collect();
        for client in &gone {
            self.remove_allocation(*client, sockets);
        }
        if !gone.is_empty() {
            tracing::info!(ids = ?ids, not_after_unix, allocations = gone.len(), "revoked credentials: allocations ended");
        }
        gone.len()
    }

    /// When [`Server::handle_timeout`] next has work.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let allocation = self.expiries.peek().map(|Reverse((due, _))| *due);
        let reservation = self.reservation_due;
        allocation.into_iter().chain(reservation).min()
    }

    /// The client's connection closed (TURN over TCP or TLS): its
    /// allocation ends with it (RFC 8656 section 3.1).
    pub fn client_gone(&mut self, client: SocketAddr, sockets: &mut impl RelaySockets) {
        self.remove_allocation(client, sockets);
    }

    fn remove_allocation(&mut self, client: SocketAddr, sockets: &mut impl RelaySockets) {
        let Some(allocation) = self.allocations.remove(&client) else {
            return;
        };
        let port = allocation.port();
        self.by_port.remove(&port);
        sockets.close(port);
        self.free_ports.push(port);
        if let Some(count) = self.per_user.get_mut(&allocation.user) {
            *count -= 1;
            if *count == 0 {
                self.per_user.remove(&allocation.user);
            }
        }
        tracing::debug!(%client, port, "allocation removed");
    }

    /// A reservation token: SHA-256 of the secret, the shard and a
    /// counter, so shards never collide and nobody can guess the next.
    fn reservation_token(&mut self) -> [u8; 8] {
        use sha2::Digest as _;
        self.tokens_made += 1;
        let digest = sha2::Sha256::new()
            .chain_update(self.token_key)
            .chain_update(self.config.shard.to_be_bytes())
            .chain_update(self.tokens_made.to_be_bytes())
            .finalize();
        let mut token = [0u8; 8];
        token.copy_from_slice(&digest[..8]);
        token
    }

    fn rng_next(&mut self) -> u64 {
        // xorshift64*: enough to spread ports and transaction ids.
        self.rng ^= self.rng >> 12;
        self.rng ^= self.rng << 25;
        self.rng ^= self.rng >> 27;
        self.rng.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
}

/// Checks permission and rate for data from the client to `peer` and says
/// where to send it; the caller has found the allocation once.
fn relay_to_peer<'a>(
    allocation: &mut Allocation,
    stats: &mut Stats,
    now: Instant,
    peer: SocketAddr,
    payload: &'a [u8],
) -> ClientAction<'a> {
    if !allocation.has_permission(peer.ip(), now) {
        stats.dropped(DropReason::NoPermission);
        return ClientAction::None;
    }
    if !allocation.to_peer.take(payload.len(), now) {
        stats.dropped(DropReason::RateLimited);
        return ClientAction::None;
    }
    stats.to_peer_packets += 1;
    stats.to_peer_bytes += payload.len() as u64;
    ClientAction::Relay {
        port: allocation.port(),
        peer,
        payload,
    }
}

/// Writes a Data indication around `buf[start..start + len]` and returns its
/// range; the caller checked headroom and tailroom.
fn frame_data_indication(
    buf: &mut [u8],
    start: usize,
    len: usize,
    peer: SocketAddr,
    random: u64,
) -> std::ops::Range<usize> {
    let mut transaction = [0u8; 12];
    transaction[..8].copy_from_slice(&random.to_le_bytes());
    let mut address = [0u8; 20];
    let address_len = encode_xor_address(peer, &transaction, &mut address);
    let padding = (4 - len % 4) % 4;
    let begin = start - (HEADER_LEN + 4 + address_len + 4);
    let body_len = 4 + address_len + 4 + len + padding;
    let mut at = begin;
    let mut put = |bytes: &[u8]| {
        buf[at..at + bytes.len()].copy_from_slice(bytes);
        at += bytes.len();
    };
    put(&stun::message_type(method::DATA, Class::Indication).to_be_bytes());
    put(&(body_len as u16).to_be_bytes());
    put(&MAGIC_COOKIE.to_be_bytes());
    put(&transaction);
    put(&attr::XOR_PEER_ADDRESS.to_be_bytes());
    put(&(address_len as u16).to_be_bytes());
    put(&address[..address_len]);
    put(&attr::DATA.to_be_bytes());
    put(&(len as u16).to_be_bytes());
    buf[start + len..start + len + padding].fill(0);
    begin..start + len + padding
}

#[cfg(test)]
mod tests;
