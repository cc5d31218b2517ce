//! A sans-IO TURN client (RFC 8656 over UDP): one allocation on one server,
//! with its permissions and channel bindings kept fresh, retransmissions,
//! and the long-term credential dance (401 / 438 handling).
//!
//! Datagrams from the server go to [`Client::handle_packet`], which returns
//! the peer data they carry; [`Client::poll_transmit`] yields what to send to
//! the server; [`Client::handle_timeout`] runs retransmits and refreshes.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use crate::channel::{self, CHANNEL_MAX, CHANNEL_MIN};
use crate::credentials::long_term_key;
use crate::stun::{
    Class, Integrity, Message, MessageWriter, TransactionId, attr, code, is_stun, method,
};

/// First retransmission timeout (RFC 8489 section 6.2.1).
const INITIAL_RTO: Duration = Duration::from_millis(500);
/// Transmissions before a request fails.
const MAX_ATTEMPTS: u32 = 7;
/// Refresh permissions and channels this long before they expire.
const REFRESH_MARGIN: Duration = Duration::from_secs(60);

/// A permission or channel the client keeps fresh.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Renewal {
    Permission(IpAddr),
    Channel(SocketAddr),
}

/// What the client tells its owner.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientEvent {
    Allocated {
        relayed: SocketAddr,
        mapped: SocketAddr,
    },
    /// The allocation could not be made or was lost (error code, or 0 for a
    /// timeout). The client is then dead; make a new one to retry.
    Failed {
        code: u16,
        reason: String,
    },
    PermissionCreated(IpAddr),
    ChannelBound {
        peer: SocketAddr,
        number: u16,
    },
    Deallocated,
}

#[derive(Debug, Clone)]
enum Request {
    Allocate,
    Refresh {
        lifetime: u32,
    },
    /// Deletes an allocation our 5-tuple already has (its Allocate response
    /// was lost and the client that asked gave up), so we can allocate anew.
    ReleaseOrphan,
    CreatePermission(IpAddr),
    ChannelBind {
        number: u16,
        peer: SocketAddr,
    },
}

#[derive(Debug)]
struct Pending {
    request: Request,
    bytes: Vec<u8>,
    due: Instant,
    rto: Duration,
    attempts: u32,
    /// The key and username the request was signed with: its answer is
    /// checked with that key, even after [`Client::set_credentials`].
    key: Option<[u8; 16]>,
    username: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Allocating,
    Allocated,
    Dead,
}

#[derive(Debug)]
struct Credentials {
    username: String,
    password: String,
    realm: Option<String>,
    nonce: Option<String>,
    key: Option<[u8; 16]>,
}

impl Credentials {
    /// Takes a new username and password (the key follows once the realm
    /// is known).
    fn replace(&mut self, username: &str, password: &str) {
        self.username = username.to_string();
        self.password = password.to_string();
        self.key = self
            .realm
            .as_deref()
            .map(|realm| long_term_key(username, realm, password));
    }
}

/// One TURN allocation, client side.
#[derive(Debug)]
pub struct Client {
    server: SocketAddr,
    credentials: Credentials,
    state: State,
    relayed: Option<SocketAddr>,
    mapped: Option<SocketAddr>,
    refresh_at: Option<Instant>,
    pending: HashMap<TransactionId, Pending>,
    /// Permission expiry as confirmed by the server (None: asked, not yet).
    permissions: HashMap<IpAddr, Option<Instant>>,
    channels: HashMap<SocketAddr, (u16, Option<Instant>)>,
    /// The same expiries in time order: a gateway's allocation holds one
    /// permission and channel per relayed client, and its timers are
    /// polled after every turn of the device loop.
    renewals: BTreeSet<(Instant, Renewal)>,
    by_number: HashMap<u16, SocketAddr>,
    next_channel: u16,
    transmits: VecDeque<Vec<u8>>,
    events: VecDeque<ClientEvent>,
    rng: u64,
    /// An orphaned allocation was released once already.
    released_orphan: bool,
    /// The username and password the server last accepted for the
    /// allocation, to go back to if it refuses renewed ones (441).
    confirmed: Option<(String, String)>,
}

impl Client {
    /// Starts allocating on `server` with TURN REST (or any long-term)
    /// credentials. `seed` makes transaction ids; use randomness.
    pub fn new(
        server: SocketAddr,
        username: &str,
        password: &str,
        seed: u64,
        now: Instant,
    ) -> Self {
        let mut client = Client {
            server,
            credentials: Credentials {
                username: username.to_string(),
                password: password.to_string(),
                realm: None,
                nonce: None,
                key: None,
            },
            state: State::Allocating,
            relayed: None,
            mapped: None,
            refresh_at: None,
            pending: HashMap::new(),
            permissions: HashMap::new(),
            channels: HashMap::new(),
            renewals: BTreeSet::new(),
            by_number: HashMap::new(),
            next_channel: CHANNEL_MIN,
            transmits: VecDeque::new(),
            events: VecDeque::new(),
            rng: seed | 1,
            released_orphan: false,
            confirmed: None,
        };
        client.send(Request::Allocate, now);
        client
    }

    pub fn server(&self) -> SocketAddr {
        self.server
    }

    pub fn relayed_address(&self) -> Option<SocketAddr> {
        self.relayed
    }

    /// Our address as the server sees it (a server-reflexive candidate).
    pub fn mapped_address(&self) -> Option<SocketAddr> {
        self.mapped
    }

    pub fn is_allocated(&self) -> bool {
        self.state == State::Allocated
    }

    /// Renewed credentials for the same user (the portal renews short-lived
    /// TURN REST credentials): later requests use them, and a live
    /// allocation is refreshed with them at once, so the relay moves it to
    /// the new expiry and it survives the old one. A relay that refuses the
    /// change (441, RFC 8656 section 5: coturn does) keeps the allocation on
    /// the old credentials for as long as it accepts them.
    pub fn set_credentials(&mut self, username: &str, password: &str, now: Instant) {
        if username == self.credentials.username && password == self.credentials.password {
            return;
        }
        self.credentials.replace(username, password);
        if self.state == State::Allocated {
            self.send(Request::Refresh { lifetime: 600 }, now);
        }
    }

    /// Lets `peer` send to our relayed address (and us to it). A peer of
    /// the other family is never reachable through the allocation (the
    /// relayed address has the server's family; the server would answer
    /// 443): ignored.
    pub fn create_permission(&mut self, peer: IpAddr, now: Instant) {
        if peer.is_ipv4() != self.server.is_ipv4() || self.permissions.contains_key(&peer) {
            return;
        }
        self.permissions.insert(peer, None);
        if self.state == State::Allocated {
            self.send(Request::CreatePermission(peer), now);
        }
    }

    /// Binds a channel to `peer` (which also permits it): data to and from
    /// it then costs 4 bytes of framing instead of 36.
    pub fn bind_channel(&mut self, peer: SocketAddr, now: Instant) -> Option<u16> {
        if peer.is_ipv4() != self.server.is_ipv4() {
            return None;
        }
        if let Some((number, _)) = self.channels.get(&peer) {
            return Some(*number);
        }
        if self.next_channel > CHANNEL_MAX {
            return None;
        }
        let number = self.next_channel;
        self.next_channel += 1;
        self.channels.insert(peer, (number, None));
        self.by_number.insert(number, peer);
        if self.state == State::Allocated {
            self.send(Request::ChannelBind { number, peer }, now);
        }
        Some(number)
    }

    /// The confirmed channel to `peer`: data for it can then be framed in
    /// place, a 4-byte [`channel::header`] before the payload (the relayed
    /// data path encrypts straight behind it, no copy).
    pub fn bound_channel(&self, peer: SocketAddr) -> Option<u16> {
        match self.channels.get(&peer) {
            Some((number, Some(_))) => Some(*number),
            _ => None,
        }
    }

    /// Frames `payload` for `peer` into `out`: ChannelData on a confirmed
    /// channel, a Send indication otherwise. False when the peer has neither
    /// a permission nor a channel yet (the server would drop it).
    pub fn encode_to_peer(&mut self, peer: SocketAddr, payload: &[u8], out: &mut Vec<u8>) -> bool {
        out.clear();
        if let Some((number, Some(_))) = self.channels.get(&peer) {
            let Ok(len) = u16::try_from(payload.len()) else {
                return false;
            };
            out.extend_from_slice(&channel::header(*number, len));
            out.extend_from_slice(payload);
            return true;
        }
        let permitted = matches!(self.permissions.get(&peer.ip()), Some(Some(_)))
            || self
                .channels
                .get(&peer)
                .is_some_and(|(_, confirmed)| confirmed.is_some());
        if !permitted {
            return false;
        }
        let transaction = self.transaction_id();
        MessageWriter::new(out, method::SEND, Class::Indication, transaction)
            .xor_address(attr::XOR_PEER_ADDRESS, peer)
            .attr(attr::DATA, payload);
        true
    }

    /// Releases the allocation (Refresh with lifetime 0).
    pub fn deallocate(&mut self, now: Instant) {
        if self.state == State::Allocated {
            self.send(Request::Refresh { lifetime: 0 }, now);
        }
    }

    /// Whether `packet` answers a request this client waits on (by its
    /// transaction id): proof that the server hears this client, where any
    /// datagram from the server's address might be a late one meant for an
    /// earlier client (or a forgery).
    pub fn answers(&self, packet: &[u8]) -> bool {
        is_stun(packet)
            && Message::parse(packet).is_ok_and(|message| {
                matches!(message.class(), Class::Success | Class::Error)
                    && self.pending.contains_key(&message.transaction_id())
            })
    }

    /// A datagram from the server: returns the peer data it carries, if any.
    pub fn handle_packet<'a>(
        &mut self,
        packet: &'a [u8],
        now: Instant,
    ) -> Option<(SocketAddr, &'a [u8])> {
        if let Some((number, data)) = channel::parse(packet) {
            return self.by_number.get(&number).map(|peer| (*peer, data));
        }
        if !is_stun(packet) {
            return None;
        }
        let message = Message::parse(packet).ok()?;
        match message.class() {
            Class::Indication if message.method() == method::DATA => {
                let peer = message.get_xor_address(attr::XOR_PEER_ADDRESS)??;
                Some((peer, message.get(attr::DATA)?))
            }
            Class::Success | Class::Error => {
                self.handle_response(&message, now);
                None
            }
            _ => None,
        }
    }

    fn handle_response(&mut self, message: &Message<'_>, now: Instant) {
        let Some(pending) = self.pending.get(&message.transaction_id()) else {
            return;
        };
        // Answers to authenticated requests must carry the integrity of the
        // key they were signed with; a forged success is ignored (its
        // retransmission timer still runs).
        let signed = pending.key.is_some_and(|key| {
            matches!(
                message.verify_integrity(&key),
                Integrity::Sha1 | Integrity::Sha256
            )
        });
        if message.class() == Class::Success && pending.key.is_some() && !signed {
            return;
        }
        let Some(pending) = self.pending.remove(&message.transaction_id()) else {
            return;
        };
        let request = pending.request;
        if message.class() == Class::Error {
            let (error, reason) = message.error_code().unwrap_or((code::SERVER_ERROR, ""));
            if error == code::WRONG_CREDENTIALS && self.refused_renewal(&pending.username) {
                self.send(request, now);
                return;
            }
            self.handle_error(request, message, error, reason.to_string(), now);
            return;
        }
        // The server accepted these credentials for the allocation.
        if pending.key.is_some() && self.state != State::Dead {
            self.confirm(pending.username);
        }
        match request {
            Request::Allocate => {
                let relayed = message.get_xor_address(attr::XOR_RELAYED_ADDRESS).flatten();
                let mapped = message.get_xor_address(attr::XOR_MAPPED_ADDRESS).flatten();
                let (Some(relayed), Some(mapped)) = (relayed, mapped) else {
                    self.fail(
                        code::SERVER_ERROR,
                        "allocate success without addresses".into(),
                    );
                    return;
                };
                self.state = State::Allocated;
                self.relayed = Some(relayed);
                self.mapped = Some(mapped);
                self.schedule_refresh(message.get_u32(attr::LIFETIME), now);
                // Credentials renewed while the Allocate was under way.
                if self
                    .confirmed
                    .as_ref()
                    .is_some_and(|(username, _)| *username != self.credentials.username)
                {
                    self.send(Request::Refresh { lifetime: 600 }, now);
                }
                self.events
                    .push_back(ClientEvent::Allocated { relayed, mapped });
                // Asked for before the allocation existed: send now.
                let peers: Vec<IpAddr> = self.permissions.keys().copied().collect();
                for peer in peers {
                    self.send(Request::CreatePermission(peer), now);
                }
                let channels: Vec<(SocketAddr, u16)> =
                    self.channels.iter().map(|(p, (n, _))| (*p, *n)).collect();
                for (peer, number) in channels {
                    self.send(Request::ChannelBind { number, peer }, now);
                }
            }
            Request::Refresh { lifetime: 0 } => {
                self.state = State::Dead;
                self.events.push_back(ClientEvent::Deallocated);
            }
            Request::ReleaseOrphan => self.send(Request::Allocate, now),
            Request::Refresh { .. } => self.schedule_refresh(message.get_u32(attr::LIFETIME), now),
            Request::CreatePermission(peer) => {
                let first = matches!(self.permissions.get(&peer), Some(None));
                self.set_permission(peer, Some(now + crate::server::PERMISSION_LIFETIME));
                if first {
                    self.events.push_back(ClientEvent::PermissionCreated(peer));
                }
            }
            Request::ChannelBind { number, peer } => {
                let first = matches!(self.channels.get(&peer), Some((_, None)));
                // The binding lasts 600 s, but the permission it installs
                // only 300 s (RFC 8656 sections 9 and 12) and data needs
                // both: rebinding before the permission lapses refreshes
                // the two.
                let lifetime =
                    crate::server::CHANNEL_LIFETIME.min(crate::server::PERMISSION_LIFETIME);
                self.set_channel(peer, number, Some(now + lifetime));
                if first {
                    self.events
                        .push_back(ClientEvent::ChannelBound { peer, number });
                }
            }
        }
    }

    /// The credentials `username` were accepted: they are the ones to go
    /// back to from now on. When the allocation still holds older ones than
    /// the current, a Refresh moves it.
    fn confirm(&mut self, username: String) {
        let password = if username == self.credentials.username {
            self.credentials.password.clone()
        } else {
            match &self.confirmed {
                Some((confirmed, password)) if *confirmed == username => password.clone(),
                _ => return,
            }
        };
        self.confirmed = Some((username, password));
    }

    /// A 441 to a request signed with renewed credentials: the relay keeps
    /// the allocation on the ones it was made with. Goes back to those and
    /// returns true (the caller resends the request); false when the
    /// request used them already.
    fn refused_renewal(&mut self, username: &str) -> bool {
        let Some((confirmed, password)) = self.confirmed.clone() else {
            return false;
        };
        if confirmed == username {
            return false;
        }
        tracing::debug!(server = %self.server, "the relay keeps the allocation on its first credentials (441)");
        self.credentials.replace(&confirmed, &password);
        true
    }

    fn handle_error(
        &mut self,
        request: Request,
        message: &Message<'_>,
        error: u16,
        reason: String,
        now: Instant,
    ) {
        match error {
            code::UNAUTHORIZED if self.credentials.key.is_none() => {
                // The challenge: learn realm and nonce, then ask again signed.
                let (Some(realm), Some(nonce)) =
                    (message.get_str(attr::REALM), message.get_str(attr::NONCE))
                else {
                    self.fail(error, "401 without realm or nonce".into());
                    return;
                };
                self.credentials.key = Some(long_term_key(
                    &self.credentials.username,
                    realm,
                    &self.credentials.password,
                ));
                self.credentials.realm = Some(realm.to_string());
                self.credentials.nonce = Some(nonce.to_string());
                self.send(request, now);
            }
            code::STALE_NONCE => match message.get_str(attr::NONCE) {
                Some(nonce) => {
                    self.credentials.nonce = Some(nonce.to_string());
                    self.send(request, now);
                }
                None => self.fail(error, "438 without a nonce".into()),
            },
            // RFC 8656 7.3: our 5-tuple already holds an allocation, from an
            // Allocate whose answer was lost. Release it once, then retry.
            code::ALLOCATION_MISMATCH
                if matches!(request, Request::Allocate) && !self.released_orphan =>
            {
                self.released_orphan = true;
                self.send(Request::ReleaseOrphan, now);
            }
            _ => match request {
                Request::Allocate | Request::Refresh { .. } | Request::ReleaseOrphan => {
                    self.fail(error, reason)
                }
                Request::CreatePermission(peer) => {
                    if let Some(Some(at)) = self.permissions.remove(&peer) {
                        self.renewals.remove(&(at, Renewal::Permission(peer)));
                    }
                    tracing::debug!(%peer, error, "permission refused");
                }
                Request::ChannelBind { number, peer } => {
                    if let Some((_, Some(at))) = self.channels.remove(&peer) {
                        self.renewals.remove(&(at, Renewal::Channel(peer)));
                    }
                    self.by_number.remove(&number);
                    tracing::debug!(%peer, error, "channel bind refused");
                }
            },
        }
    }

    fn fail(&mut self, code: u16, reason: String) {
        if self.state != State::Dead {
            self.state = State::Dead;
            self.pending.clear();
            self.events.push_back(ClientEvent::Failed { code, reason });
        }
    }

    fn schedule_refresh(&mut self, lifetime: Option<u32>, now: Instant) {
        let lifetime = Duration::from_secs(u64::from(lifetime.unwrap_or(600)));
        let early = if lifetime > 2 * REFRESH_MARGIN {
            lifetime - REFRESH_MARGIN
        } else {
            lifetime / 2
        };
        self.refresh_at = Some(now + early);
    }

    /// Retransmits and refreshes.
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.state == State::Dead {
            return;
        }
        let due: Vec<TransactionId> = self
            .pending
            .iter()
            .filter(|(_, p)| p.due <= now)
            .map(|(t, _)| *t)
            .collect();
        for transaction in due {
            let Some(pending) = self.pending.get_mut(&transaction) else {
                continue;
            };
            if pending.attempts >= MAX_ATTEMPTS {
                let request = pending.request.clone();
                self.pending.remove(&transaction);
                match request {
                    Request::Allocate | Request::Refresh { .. } | Request::ReleaseOrphan => {
                        self.fail(0, "the server did not answer".into())
                    }
                    Request::CreatePermission(_) | Request::ChannelBind { .. } => {}
                }
                continue;
            }
            pending.attempts += 1;
            pending.rto *= 2;
            pending.due = now + pending.rto;
            self.transmits.push_back(pending.bytes.clone());
        }
        if self.state != State::Allocated {
            return;
        }
        if self.refresh_at.is_some_and(|at| at <= now) {
            self.refresh_at = None;
            self.send(Request::Refresh { lifetime: 600 }, now);
        }
        // Those close to expiry are renewed, soonest first; each is looked
        // at again 30 s on if the answer is lost.
        let retry = Some(now + REFRESH_MARGIN + Duration::from_secs(30));
        while let Some(&(expiry, renewal)) = self.renewals.first()
            && expiry <= now + REFRESH_MARGIN
        {
            match renewal {
                Renewal::Permission(peer) => {
                    self.set_permission(peer, retry);
                    self.send(Request::CreatePermission(peer), now);
                }
                Renewal::Channel(peer) => {
                    let Some(&(number, _)) = self.channels.get(&peer) else {
                        self.renewals.pop_first();
                        continue;
                    };
                    self.set_channel(peer, number, retry);
                    self.send(Request::ChannelBind { number, peer }, now);
                }
            }
        }
    }

    /// A permission's expiry, kept in `renewals` too.
    fn set_permission(&mut self, peer: IpAddr, expiry: Option<Instant>) {
        if let Some(Some(old)) = self.permissions.insert(peer, expiry) {
            self.renewals.remove(&(old, Renewal::Permission(peer)));
        }
        if let Some(at) = expiry {
            self.renewals.insert((at, Renewal::Permission(peer)));
        }
    }

    /// A channel's expiry, kept in `renewals` too.
    fn set_channel(&mut self, peer: SocketAddr, number: u16, expiry: Option<Instant>) {
        if let Some((_, Some(old))) = self.channels.insert(peer, (number, expiry)) {
            self.renewals.remove(&(old, Renewal::Channel(peer)));
        }
        if let Some(at) = expiry {
            self.renewals.insert((at, Renewal::Channel(peer)));
        }
    }

    /// The next time [`Client::handle_timeout`] has work.
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.state == State::Dead {
            return None;
        }
        let retransmit = self.pending.values().map(|p| p.due).min();
        let refresh = self.refresh_at;
        let renewals = self
            .renewals
            .first()
            .map(|(e, _)| e.checked_sub(REFRESH_MARGIN).unwrap_or(*e));
        [retransmit, refresh, renewals].into_iter().flatten().min()
    }

    /// The next datagram to send to the server.
    pub fn poll_transmit(&mut self) -> Option<Vec<u8>> {
        self.transmits.pop_front()
    }

    pub fn poll_event(&mut self) -> Option<ClientEvent> {
        self.events.pop_front()
    }

    fn transaction_id(&mut self) -> TransactionId {
        let mut id = [0u8; 12];
        for chunk in id.chunks_mut(4) {
            self.rng ^= self.rng << 13;
            self.rng ^= self.rng >> 7;
            self.rng ^= self.rng << 17;
            chunk.copy_from_slice(&self.rng.to_le_bytes()[..4]);
        }
        id
    }

    fn send(&mut self, request: Request, now: Instant) {
        let transaction = self.transaction_id();
        let mut bytes = Vec::with_capacity(128);
        let method = match request {
            Request::Allocate => method::ALLOCATE,
            Request::Refresh { .. } | Request::ReleaseOrphan => method::REFRESH,
            Request::CreatePermission(_) => method::CREATE_PERMISSION,
            Request::ChannelBind { .. } => method::CHANNEL_BIND,
        };
        let mut writer = MessageWriter::new(&mut bytes, method, Class::Request, transaction);
        match &request {
            Request::Allocate => {
                writer.attr(attr::REQUESTED_TRANSPORT, &[17, 0, 0, 0]);
                // The relayed address in the family we reach the server
                // by (without this, RFC 8656 says IPv4): an IPv6-only host
                // gets a relayed address its peers can reach over IPv6.
                if self.server.is_ipv6() {
                    writer.attr(attr::REQUESTED_ADDRESS_FAMILY, &[2, 0, 0, 0]);
                }
            }
            Request::Refresh { lifetime } => {
                writer.u32(attr::LIFETIME, *lifetime);
            }
            Request::ReleaseOrphan => {
                writer.u32(attr::LIFETIME, 0);
            }
            Request::CreatePermission(peer) => {
                writer.xor_address(attr::XOR_PEER_ADDRESS, SocketAddr::new(*peer, 0));
            }
            Request::ChannelBind { number, peer } => {
                writer.u32(attr::CHANNEL_NUMBER, u32::from(*number) << 16);
                writer.xor_address(attr::XOR_PEER_ADDRESS, *peer);
            }
        }
        let mut signed_with = None;
        if let (Some(key), Some(realm), Some(nonce)) = (
            self.credentials.key,
            &self.credentials.realm,
            &self.credentials.nonce,
        ) {
            writer
                .attr(attr::USERNAME, self.credentials.username.as_bytes())
                .attr(attr::REALM, realm.as_bytes())
                .attr(attr::NONCE, nonce.as_bytes())
                .integrity_sha1(&key);
            signed_with = Some(key);
        }
        self.transmits.push_back(bytes.clone());
        self.pending.insert(
            transaction,
            Pending {
                request,
                bytes,
                due: now + INITIAL_RTO,
                rto: INITIAL_RTO,
                attempts: 1,
                key: signed_with,
                username: self.credentials.username.clone(),
            },
        );
    }
}
