//! The TURN methods of RFC 8656 (and Binding): Allocate, Refresh,
//! CreatePermission and ChannelBind, after `auth` has let the caller in.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use super::allocation::{Allocation, CHANNEL_LIFETIME, Channel, MAX_PEERS, TokenBucket};
use super::auth::{Caller, KNOWN};
use super::{Now, RelaySockets, Server};
use crate::channel::{CHANNEL_MAX_ACCEPTED, CHANNEL_MIN};
use crate::stun::{Class, FAMILY_IPV4, FAMILY_IPV6, Message, MessageWriter, attr, code, method};

const UDP: u8 = 17;
/// How long a port reserved by EVEN-PORT with the R bit is held.
const RESERVATION_LIFETIME: Duration = Duration::from_secs(30);

impl Server {
    pub(super) fn request(
        &mut self,
        now: Now,
        client: SocketAddr,
        message: &Message<'_>,
        sockets: &mut impl RelaySockets,
    ) -> Option<Vec<u8>> {
        match message.method() {
            method::BINDING => Some(self.binding(client, message)),
            method::ALLOCATE => Some(self.authenticated(now, client, message, |server, caller| {
                server.allocate(now, client, message, caller, sockets)
            })),
            method::REFRESH => Some(self.authenticated(now, client, message, |server, caller| {
                server.refresh(now, client, message, caller, sockets)
            })),
            method::CREATE_PERMISSION => {
                Some(self.authenticated(now, client, message, |server, caller| {
                    server.create_permission(now, client, message, caller)
                }))
            }
            method::CHANNEL_BIND => {
                Some(self.authenticated(now, client, message, |server, caller| {
                    server.channel_bind(now, client, message, caller)
                }))
            }
            _ => Some(self.error(message, None, code::BAD_REQUEST)),
        }
    }

    fn binding(&mut self, client: SocketAddr, message: &Message<'_>) -> Vec<u8> {
        let unknown = message.unknown_required(KNOWN);
        if !unknown.is_empty() {
            return self.unknown_attributes(message, None, &unknown);
        }
        let mut buf = Vec::with_capacity(128);
        MessageWriter::new(
            &mut buf,
            method::BINDING,
            Class::Success,
            message.transaction_id(),
        )
        .xor_address(attr::XOR_MAPPED_ADDRESS, client);
        self.finish(buf, message, None)
    }

    fn allocate(
        &mut self,
        now: Now,
        client: SocketAddr,
        message: &Message<'_>,
        caller: &Caller,
        sockets: &mut impl RelaySockets,
    ) -> Vec<u8> {
        if self.allocations.contains_key(&client) {
            return self.error(message, Some(caller), code::ALLOCATION_MISMATCH);
        }
        match message.get(attr::REQUESTED_TRANSPORT) {
            None => return self.error(message, Some(caller), code::BAD_REQUEST),
            Some(value) if value.first() != Some(&UDP) => {
                return self.error(message, Some(caller), code::UNSUPPORTED_TRANSPORT);
            }
            Some(_) => {}
        }
        let family = message.get(attr::REQUESTED_ADDRESS_FAMILY);
        let token = message.get(attr::RESERVATION_TOKEN);
        if family.is_some() && token.is_some() {
            // RFC 8656 section 7.2: the reservation has its family.
            return self.error(message, Some(caller), code::BAD_REQUEST);
        }
        let relay_ip: IpAddr = match family.map(|v| v.first().copied()) {
            // Redeeming a reservation: its own family (below).
            None if token.is_some() => IpAddr::from([0, 0, 0, 0]),
            None | Some(Some(FAMILY_IPV4)) => match self.config.relay_ipv4 {
                Some(ip) => ip.into(),
                None => {
                    return self.error(message, Some(caller), code::ADDRESS_FAMILY_NOT_SUPPORTED);
                }
            },
            Some(Some(FAMILY_IPV6)) => match self.config.relay_ipv6 {
                Some(ip) => ip.into(),
                None => {
                    return self.error(message, Some(caller), code::ADDRESS_FAMILY_NOT_SUPPORTED);
                }
            },
            Some(_) => {
                return self.error(message, Some(caller), code::ADDRESS_FAMILY_NOT_SUPPORTED);
            }
        };
        if self.per_user.get(caller.user()).copied().unwrap_or(0)
            >= self.config.max_allocations_per_user
        {
            return self.error(message, Some(caller), code::ALLOCATION_QUOTA_REACHED);
        }
        if self.allocations.len() >= self.config.max_allocations {
            return self.error(message, Some(caller), code::INSUFFICIENT_CAPACITY);
        }
        // EVEN-PORT asks for an even port and, with the R bit, for the next
        // port to be held for a second allocation (RTP/RTCP style).
        let even_port = message
            .get(attr::EVEN_PORT)
            .map(|v| v.first().is_some_and(|b| b & 0x80 != 0));
        if even_port.is_some() && token.is_some() {
            return self.error(message, Some(caller), code::BAD_REQUEST);
        }
        let (relay_ip, port) = match token {
            Some(token) => {
                // Possibly held by another shard: redeemed, it is ours.
                let reserved = <[u8; 8]>::try_from(token).ok().and_then(|token| {
                    self.config
                        .reservations
                        .redeem(token, now.instant, caller.user())
                });
                match reserved {
                    Some((ip, port)) if sockets.open(ip, port) => (ip, port),
                    Some((_, port)) => {
                        self.free_ports.push(port);
                        return self.error(message, Some(caller), code::INSUFFICIENT_CAPACITY);
                    }
                    None => return self.error(message, Some(caller), code::INSUFFICIENT_CAPACITY),
                }
            }
            None => match self.take_port(relay_ip, sockets, even_port) {
                Some(port) => (relay_ip, port),
                None => return self.error(message, Some(caller), code::INSUFFICIENT_CAPACITY),
            },
        };
        let reservation = if even_port == Some(true) {
            self.free_ports.retain(|p| *p != port + 1);
            let expires = now.instant + RESERVATION_LIFETIME;
            let token = loop {
                let token = self.reservation_token();
                if self.config.reservations.hold(
                    token,
                    (relay_ip, port + 1),
                    expires,
                    self.config.shard,
                    caller.user(),
                ) {
                    break token;
                }
            };
            self.reservation_due =
                Some(self.reservation_due.map_or(expires, |due| due.min(expires)));
            Some(token)
        } else {
            None
        };
        let credential_left = Duration::from_secs(caller.expiry.saturating_sub(now.unix_secs));
        let lifetime = self
            .lifetime(message.get_u32(attr::LIFETIME))
            .min(credential_left);
        let relayed = SocketAddr::new(relay_ip, port);
        let mut buf = Vec::with_capacity(128);
        let mut writer = MessageWriter::new(
            &mut buf,
            method::ALLOCATE,
            Class::Success,
            message.transaction_id(),
        );
        writer
            .xor_address(attr::XOR_RELAYED_ADDRESS, relayed)
            .u32(attr::LIFETIME, lifetime.as_secs() as u32)
            .xor_address(attr::XOR_MAPPED_ADDRESS, client);
        if let Some(token) = reservation {
            writer.attr(attr::RESERVATION_TOKEN, &token);
        }
        let response = self.finish(buf, message, Some(caller));
        let expires = now.instant + lifetime;
        self.allocations.insert(
            client,
            Allocation {
                username: caller.username.clone(),
                user: caller.user().to_string(),
                credential_expiry: caller.expiry,
                credential_until: now.instant + credential_left,
                refreshed_until: expires,
                expires,
                relayed,
                transaction: message.transaction_id(),
                response: response.clone(),
                permissions: Vec::new(),
                channels: Vec::new(),
                to_peer: TokenBucket::new(self.config.max_bps_per_allocation, now.instant),
                to_client: TokenBucket::new(self.config.max_bps_per_allocation, now.instant),
            },
        );
        self.by_port.insert(port, client);
        *self.per_user.entry(caller.user().to_string()).or_default() += 1;
        self.expiries.push(std::cmp::Reverse((expires, client)));
        self.stats.allocations_created += 1;
        tracing::debug!(%client, %relayed, lifetime_s = lifetime.as_secs(), "allocation created");
        response
    }

    /// A free port the shell could bind: random, even when `even` is set,
    /// with a free successor too when `even` is `Some(true)` (a
    /// reservation). A port in use by another process is skipped and kept
    /// out of the pool until an allocation frees one.
    fn take_port(
        &mut self,
        ip: IpAddr,
        sockets: &mut impl RelaySockets,
        even: Option<bool>,
    ) -> Option<u16> {
        for _ in 0..16 {
            let count = self.free_ports.len();
            if count == 0 {
                return None;
            }
            let start = (self.rng_next() % count as u64) as usize;
            let fits = |port: u16| match even {
                None => true,
                Some(false) => port.is_multiple_of(2),
                Some(true) => {
                    port.is_multiple_of(2)
                        && port < u16::MAX
                        && self.free_ports.contains(&(port + 1))
                }
            };
            let index = (0..count)
                .map(|i| (start + i) % count)
                .find(|&i| fits(self.free_ports[i]))?;
            let port = self.free_ports.swap_remove(index);
            if sockets.open(ip, port) {
                return Some(port);
            }
        }
        None
    }

    /// RFC 8656 section 7.2: min(requested, maximum), but never below the
    /// default. The callers cap it at the credentials' expiry, so that a
    /// client knows to refresh (with renewed credentials) before then.
    fn lifetime(&self, requested: Option<u32>) -> Duration {
        let requested = requested.map_or(self.config.default_lifetime, |s| {
            Duration::from_secs(u64::from(s))
        });
        requested
            .min(self.config.max_lifetime)
            .max(self.config.default_lifetime)
    }

    fn refresh(
        &mut self,
        now: Now,
        client: SocketAddr,
        message: &Message<'_>,
        caller: &Caller,
        sockets: &mut impl RelaySockets,
    ) -> Vec<u8> {
        let Some(allocation) = self.allocations.get(&client) else {
            return self.error(message, Some(caller), code::ALLOCATION_MISMATCH);
        };
        if let Some(family) = message
            .get(attr::REQUESTED_ADDRESS_FAMILY)
            .map(|v| v.first().copied())
        {
            let ours = if allocation.relayed.is_ipv4() {
                FAMILY_IPV4
            } else {
                FAMILY_IPV6
            };
            if family != Some(ours) {
                return self.error(message, Some(caller), code::PEER_ADDRESS_FAMILY_MISMATCH);
            }
        }
        let requested = message.get_u32(attr::LIFETIME);
        let lifetime = if requested == Some(0) {
            self.remove_allocation(client, sockets);
            Duration::ZERO
        } else {
            let credential_left =
                Duration::from_secs(allocation.credential_expiry.saturating_sub(now.unix_secs));
            let lifetime = self.lifetime(requested).min(credential_left);
            if let Some(allocation) = self.allocations.get_mut(&client) {
                allocation.refreshed_until = now.instant + lifetime;
                let expires = allocation.update_expiry();
                self.expiries.push(std::cmp::Reverse((expires, client)));
            }
            lifetime
        };
        let mut buf = Vec::with_capacity(128);
        MessageWriter::new(
            &mut buf,
            method::REFRESH,
            Class::Success,
            message.transaction_id(),
        )
        .u32(attr::LIFETIME, lifetime.as_secs() as u32);
        self.finish(buf, message, Some(caller))
    }

    /// The peer addresses of a request, checked for family and policy.
    fn peers(&self, message: &Message<'_>, relayed: SocketAddr) -> Result<Vec<SocketAddr>, u16> {
        let mut peers = Vec::new();
        for peer in message.xor_addresses(attr::XOR_PEER_ADDRESS) {
            let peer = peer.ok_or(code::BAD_REQUEST)?;
            if peer.is_ipv4() != relayed.is_ipv4() {
                return Err(code::PEER_ADDRESS_FAMILY_MISMATCH);
            }
            // CreatePermission is for the address (its port is
            // meaningless); ChannelBind binds the exact transport address.
            let port = (message.method() == method::CHANNEL_BIND).then_some(peer.port());
            if let Err(refusal) = self.config.peers.check(peer.ip(), port) {
                tracing::debug!(%peer, reason = refusal.as_str(), "peer refused");
                return Err(code::FORBIDDEN);
            }
            peers.push(peer);
        }
        if peers.is_empty() {
            return Err(code::BAD_REQUEST);
        }
        Ok(peers)
    }

    fn create_permission(
        &mut self,
        now: Now,
        client: SocketAddr,
        message: &Message<'_>,
        caller: &Caller,
    ) -> Vec<u8> {
        let Some(relayed) = self.allocations.get(&client).map(|a| a.relayed) else {
            return self.error(message, Some(caller), code::ALLOCATION_MISMATCH);
        };
        let peers = match self.peers(message, relayed) {
            Ok(peers) => peers,
            Err(error) => return self.error(message, Some(caller), error),
        };
        let Some(allocation) = self.allocations.get_mut(&client) else {
            return self.error(message, Some(caller), code::ALLOCATION_MISMATCH);
        };
        if !peers
            .iter()
            .all(|peer| allocation.permit(peer.ip(), now.instant))
        {
            return self.error(message, Some(caller), code::INSUFFICIENT_CAPACITY);
        }
        let mut buf = Vec::with_capacity(128);
        MessageWriter::new(
            &mut buf,
            method::CREATE_PERMISSION,
            Class::Success,
            message.transaction_id(),
        );
        self.finish(buf, message, Some(caller))
    }

    fn channel_bind(
        &mut self,
        now: Now,
        client: SocketAddr,
        message: &Message<'_>,
        caller: &Caller,
    ) -> Vec<u8> {
        let Some(relayed) = self.allocations.get(&client).map(|a| a.relayed) else {
            return self.error(message, Some(caller), code::ALLOCATION_MISMATCH);
        };
        let number = match message.get(attr::CHANNEL_NUMBER) {
            Some(&[hi, lo, _, _]) => u16::from_be_bytes([hi, lo]),
            _ => return self.error(message, Some(caller), code::BAD_REQUEST),
        };
        if !(CHANNEL_MIN..=CHANNEL_MAX_ACCEPTED).contains(&number) {
            return self.error(message, Some(caller), code::BAD_REQUEST);
        }
        let peer = match self.peers(message, relayed).as_deref() {
            Ok([peer]) => *peer,
            Ok(_) => return self.error(message, Some(caller), code::BAD_REQUEST),
            Err(error) => return self.error(message, Some(caller), *error),
        };
        let Some(allocation) = self.allocations.get_mut(&client) else {
            return self.error(message, Some(caller), code::ALLOCATION_MISMATCH);
        };
        let now_instant = now.instant;
        allocation.channels.retain(|c| c.expires > now_instant);
        let conflict = allocation
            .channels
            .iter()
            .any(|c| (c.number == number) != (c.peer == peer));
        if conflict {
            return self.error(message, Some(caller), code::BAD_REQUEST);
        }
        if !allocation.permit(peer.ip(), now_instant) {
            return self.error(message, Some(caller), code::INSUFFICIENT_CAPACITY);
        }
        let expires = now_instant + CHANNEL_LIFETIME;
        let full = allocation.channels.len() >= MAX_PEERS;
        match allocation.channels.iter_mut().find(|c| c.number == number) {
            Some(existing) => existing.expires = expires,
            None if full => return self.error(message, Some(caller), code::INSUFFICIENT_CAPACITY),
            None => allocation.channels.push(Channel {
                number,
                peer,
                expires,
            }),
        }
        let mut buf = Vec::with_capacity(128);
        MessageWriter::new(
            &mut buf,
            method::CHANNEL_BIND,
            Class::Success,
            message.transaction_id(),
        );
        self.finish(buf, message, Some(caller))
    }
}
