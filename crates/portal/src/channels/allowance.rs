//! What a channel may send (issue 15, M5): two token buckets per
//! connection, messages and bytes, checked in the socket task before
//! anything reaches the hub. A channel over its allowance is held back
//! (its socket is not read, so TCP slows it down; it still gets what the
//! portal sends it); one held back without a break for `abuse_after` is
//! flooding and is disconnected. Time is passed in.

use std::time::{Duration, Instant};

/// A channel's allowance.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ChannelRate {
    /// Messages a second, on average.
    pub messages_per_second: u32,
    /// Messages at once after a quiet spell.
    pub message_burst: u32,
    pub bytes_per_second: u32,
    pub byte_burst: u32,
    /// Held back this long without a break: disconnected.
    pub abuse_after: Duration,
}

impl ChannelRate {
    /// Clients and relays: a client asks for access once per resource and
    /// trickles ICE candidates; 20 a second is far above that.
    pub const CLIENT: ChannelRate = ChannelRate {
        messages_per_second: 20,
        message_burst: 200,
        bytes_per_second: 256 * 1024,
        byte_burst: 1024 * 1024,
        abuse_after: Duration::from_secs(10),
    };

    /// Gateways answer for all their clients (an `authorized` and
    /// candidates each, all at once when a site reconnects).
    pub fn gateway(self) -> ChannelRate {
        ChannelRate {
            messages_per_second: self.messages_per_second.saturating_mul(10),
            message_burst: self.message_burst.saturating_mul(10),
            bytes_per_second: self.bytes_per_second.saturating_mul(10),
            byte_burst: self.byte_burst.saturating_mul(10),
            abuse_after: self.abuse_after,
        }
    }
}

impl Default for ChannelRate {
    fn default() -> Self {
        ChannelRate::CLIENT
    }
}

#[derive(Debug)]
struct Bucket {
    rate: f64,
    capacity: f64,
    tokens: f64,
    at: Instant,
}

impl Bucket {
    fn new(rate: u32, capacity: u32, now: Instant) -> Self {
        let capacity = f64::from(capacity.max(1));
        Bucket {
            rate: f64::from(rate.max(1)),
            capacity,
            tokens: capacity,
            at: now,
        }
    }

    /// Takes `n` (into debt if need be); how long until the debt is paid.
    fn take(&mut self, n: f64, now: Instant) -> Duration {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.rate).min(self.capacity) - n;
        self.at = now;
        if self.tokens >= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(-self.tokens / self.rate)
        }
    }
}

/// What to do with a message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Within the allowance: pass it on.
    Now,
    /// Pass it on after this long, reading nothing meanwhile.
    After(Duration),
    /// Held back too long: disconnect.
    Abuse,
}

#[derive(Debug)]
pub(crate) struct Allowance {
    messages: Bucket,
    bytes: Bucket,
    abuse_after: Duration,
    /// Since when every message had to wait.
    held_since: Option<Instant>,
}

impl Allowance {
    pub(crate) fn new(rate: ChannelRate, now: Instant) -> Self {
        Allowance {
            messages: Bucket::new(rate.messages_per_second, rate.message_burst, now),
            bytes: Bucket::new(rate.bytes_per_second, rate.byte_burst, now),
            abuse_after: rate.abuse_after,
            held_since: None,
        }
    }

    /// A message of `bytes` arrived at `now`.
    pub(crate) fn admit(&mut self, bytes: usize, now: Instant) -> Verdict {
        let wait = self
            .messages
            .take(1.0, now)
            .max(self.bytes.take(bytes as f64, now));
        if wait.is_zero() {
            self.held_since = None;
            return Verdict::Now;
        }
        let since = *self.held_since.get_or_insert(now);
        if now.saturating_duration_since(since) >= self.abuse_after {
            Verdict::Abuse
        } else {
            Verdict::After(wait)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_passes_a_flood_waits_then_is_cut_off() {
        let start = Instant::now();
        let rate = ChannelRate {
            messages_per_second: 10,
            message_burst: 5,
            bytes_per_second: 1000,
            byte_burst: 1000,
            abuse_after: Duration::from_secs(2),
        };
        let mut allowance = Allowance::new(rate, start);
        for _ in 0..5 {
            assert_eq!(allowance.admit(10, start), Verdict::Now);
        }
        // The sixth at once waits a tenth of a second.
        assert_eq!(
            allowance.admit(10, start),
            Verdict::After(Duration::from_millis(100))
        );
        // A quiet second later the burst is back.
        let later = start + Duration::from_secs(1);
        assert_eq!(allowance.admit(10, later), Verdict::Now);
        // Big messages wait for the byte bucket.
        assert!(
            matches!(allowance.admit(2000, later), Verdict::After(w) if w >= Duration::from_secs(1))
        );
        // Waiting on every message for two seconds is a flood.
        let mut now = later;
        let verdict = loop {
            now += Duration::from_millis(50);
            match allowance.admit(500, now) {
                Verdict::After(_) => continue,
                other => break other,
            }
        };
        assert_eq!(verdict, Verdict::Abuse);
        assert!(now >= later + Duration::from_secs(2));
    }
}
