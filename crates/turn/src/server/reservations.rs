//! Ports held by EVEN-PORT reservations (RFC 8656 section 7.2), shared by
//! the relay's shards. A client's second allocation, the one that carries
//! its RESERVATION-TOKEN, comes from another socket than its first, and
//! the relay's kernel (SO_REUSEPORT) hashes each client socket to a shard
//! of its own: the shard that redeems the token takes the port over, and
//! the port is its own from then on (ports stay owned by exactly one shard
//! at a time). Touched only by Allocate requests and expiry, never on the
//! data path, so one lock is cheap.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Mutex, PoisonError};
use std::time::Instant;

/// A reservation: the port, until when, and the shard whose pool it
/// returns to when nobody redeems it.
#[derive(Clone, Debug)]
struct Held {
    port: u16,
    /// The relayed address's IP: the second allocation takes the first's
    /// family (RFC 8656 section 7.2: its request carries no family).
    ip: IpAddr,
    expires: Instant,
    owner: u16,
    /// Only the user who reserved may redeem (another user's client must
    /// not take over a port held for this one).
    user: String,
}

#[derive(Debug, Default)]
pub struct Reservations {
    held: Mutex<HashMap<[u8; 8], Held>>,
}

impl Reservations {
    fn held(&self) -> std::sync::MutexGuard<'_, HashMap<[u8; 8], Held>> {
        self.held.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Holds `port` under `token`; false if the token is taken (the
    /// caller makes another).
    pub(super) fn hold(
        &self,
        token: [u8; 8],
        (ip, port): (IpAddr, u16),
        expires: Instant,
        owner: u16,
        user: &str,
    ) -> bool {
        let mut held = self.held();
        if held.contains_key(&token) {
            return false;
        }
        held.insert(
            token,
            Held {
                port,
                ip,
                expires,
                owner,
                user: user.to_string(),
            },
        );
        true
    }

    /// The relayed IP and port `token` holds, now the caller's; `None` for
    /// an unknown, expired or another user's token (an expired one goes
    /// back to its owner's pool at the owner's next
    /// [`Reservations::expire`]).
    pub(super) fn redeem(&self, token: [u8; 8], now: Instant, user: &str) -> Option<(IpAddr, u16)> {
        let mut held = self.held();
        match held.get(&token) {
            Some(h) if h.expires > now && h.user == user => {
                held.remove(&token).map(|h| (h.ip, h.port))
            }
            _ => None,
        }
    }

    /// Removes `owner`'s reservations that expired; their ports.
    pub(super) fn expire(&self, owner: u16, now: Instant) -> Vec<u16> {
        let mut ports = Vec::new();
        self.held().retain(|_, h| {
            let gone = h.owner == owner && h.expires <= now;
            if gone {
                ports.push(h.port);
            }
            !gone
        });
        ports
    }

    /// When `owner`'s next reservation expires.
    pub(super) fn next_expiry(&self, owner: u16) -> Option<Instant> {
        self.held()
            .values()
            .filter(|h| h.owner == owner)
            .map(|h| h.expires)
            .min()
    }
}
