//! One allocation: its relayed port, permissions, channels and rate limit.

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use crate::stun::TransactionId;

/// Permissions last 300 s (RFC 8656 section 9).
pub const PERMISSION_LIFETIME: Duration = Duration::from_secs(300);
/// Channel bindings last 600 s (RFC 8656 section 12).
pub const CHANNEL_LIFETIME: Duration = Duration::from_secs(600);
/// Cap on permissions and channels per allocation, so that one client
/// cannot grow the relay's memory without bound.
pub const MAX_PEERS: usize = 128;

#[derive(Debug)]
pub(crate) struct Channel {
    pub number: u16,
    pub peer: SocketAddr,
    pub expires: Instant,
}

#[derive(Debug)]
pub(crate) struct Allocation {
    /// The credentials in use: those of the Allocate, or renewed ones of
    /// the same user.
    pub username: String,
    /// Whom the quota counts: the TURN REST id, else the username.
    pub user: String,
    /// When the credentials in use expire (Unix seconds, and as an instant).
    pub credential_expiry: u64,
    pub credential_until: Instant,
    /// The lifetime granted by the last Allocate or Refresh.
    pub refreshed_until: Instant,
    /// The earlier of the two: the allocation ends then.
    pub expires: Instant,
    /// The relayed transport address handed to the client.
    pub relayed: SocketAddr,
    /// The Allocate request that made it, and the success answer, so a
    /// retransmitted request gets the same answer (RFC 8656 section 7.2).
    pub transaction: TransactionId,
    pub response: Vec<u8>,
    pub permissions: Vec<(IpAddr, Instant)>,
    pub channels: Vec<Channel>,
    /// Rate limits, one per direction.
    pub to_peer: TokenBucket,
    pub to_client: TokenBucket,
}

impl Allocation {
    pub fn port(&self) -> u16 {
        self.relayed.port()
    }

    /// Recomputes [`Allocation::expires`]; returns it.
    pub fn update_expiry(&mut self) -> Instant {
        self.expires = self.refreshed_until.min(self.credential_until);
        self.expires
    }

    pub fn has_permission(&self, peer: IpAddr, now: Instant) -> bool {
        self.permissions
            .iter()
            .any(|(ip, expires)| *ip == peer && *expires > now)
    }

    /// Installs or refreshes a permission; false when the cap is reached.
    pub fn permit(&mut self, peer: IpAddr, now: Instant) -> bool {
        self.permissions.retain(|(_, expires)| *expires > now);
        let expires = now + PERMISSION_LIFETIME;
        if let Some(entry) = self.permissions.iter_mut().find(|(ip, _)| *ip == peer) {
            entry.1 = expires;
            return true;
        }
        if self.permissions.len() >= MAX_PEERS {
            return false;
        }
        self.permissions.push((peer, expires));
        true
    }

    /// The peer a live channel number leads to.
    pub fn channel_peer(&self, number: u16, now: Instant) -> Option<SocketAddr> {
        self.channels
            .iter()
            .find(|c| c.number == number && c.expires > now)
            .map(|c| c.peer)
    }

    /// The live channel bound to a peer.
    pub fn channel_for(&self, peer: SocketAddr, now: Instant) -> Option<u16> {
        self.channels
            .iter()
            .find(|c| c.peer == peer && c.expires > now)
            .map(|c| c.number)
    }
}

/// A byte-rate limit with a burst of a tenth of a second (at least one
/// maximum-size datagram). A rate of 0 means unlimited.
#[derive(Debug)]
pub(crate) struct TokenBucket {
    rate_bytes_per_sec: u64,
    capacity: u64,
    tokens: u64,
    last: Instant,
}

impl TokenBucket {
    pub fn new(rate_bits_per_sec: u64, now: Instant) -> Self {
        let rate_bytes_per_sec = rate_bits_per_sec / 8;
        let capacity = (rate_bytes_per_sec / 10).max(65_536);
        TokenBucket {
            rate_bytes_per_sec,
            capacity,
            tokens: capacity,
            last: now,
        }
    }

    /// Takes `bytes` if available.
    pub fn take(&mut self, bytes: usize, now: Instant) -> bool {
        if self.rate_bytes_per_sec == 0 {
            return true;
        }
        let elapsed = now.saturating_duration_since(self.last);
        // Refill at most once per microsecond of elapsed time to keep the
        // arithmetic in integers.
        let micros = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX);
        if micros > 0 {
            let refill = micros.saturating_mul(self.rate_bytes_per_sec) / 1_000_000;
            self.tokens = self.tokens.saturating_add(refill).min(self.capacity);
            self.last = now;
        }
        let bytes = bytes as u64;
        if self.tokens >= bytes {
            self.tokens -= bytes;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_bucket_enforces_the_rate() {
        let start = Instant::now();
        // 8 Mbit/s = 1 MB/s, burst max(100 kB, 64 KiB) = 100 kB.
        let mut bucket = TokenBucket::new(8_000_000, start);
        let mut sent = 0;
        while bucket.take(1000, start) {
            sent += 1000;
        }
        assert_eq!(sent, 100_000, "the burst");
        // Over one more second, about 1 MB more.
        let mut later = 0;
        for ms in 1..=1000 {
            let now = start + Duration::from_millis(ms);
            while bucket.take(1000, now) {
                later += 1000;
            }
        }
        assert!((990_000..=1_000_000).contains(&later), "{later}");
        let mut unlimited = TokenBucket::new(0, start);
        assert!((0..10_000).all(|_| unlimited.take(65_535, start)));
    }
}
