//! When to renew and when to retry: pure functions of the certificate's
//! validity, the failures so far and the time, tested without a CA.

use std::time::{Duration, SystemTime};

/// From when to when a certificate is valid.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Validity {
    pub not_before: SystemTime,
    pub not_after: SystemTime,
}

impl Validity {
    /// With a third of its life left, as Let's Encrypt advises (30 of 90
    /// days): time for a few retries before it expires, and the same rule
    /// for a CA that issues 6-day or 1-year certificates.
    pub fn renew_at(&self) -> SystemTime {
        let life = self
            .not_after
            .duration_since(self.not_before)
            .unwrap_or_default();
        self.not_after
            .checked_sub(life / 3)
            .unwrap_or(self.not_before)
    }
}

/// First retry after a minute, doubling, at most an hour apart: gentle on
/// the CA's rate limits (Let's Encrypt allows 5 failed validations per
/// hour), quick after a short outage.
pub fn retry_delay(failures: u32) -> Duration {
    const FIRST: Duration = Duration::from_secs(60);
    const MOST: Duration = Duration::from_secs(3600);
    let doublings = failures.saturating_sub(1).min(6);
    FIRST.saturating_mul(1 << doublings).min(MOST)
}

/// RFC 3339 for the logs.
pub(super) fn display(time: SystemTime) -> String {
    jiff::Timestamp::try_from(time)
        .map(|timestamp| timestamp.to_string())
        .unwrap_or_else(|_| "(out of range)".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(secs)
    }

    #[test]
    fn renewal_comes_with_a_third_of_the_life_left() {
        let day = 86_400;
        let ninety_days = Validity {
            not_before: at(1_000 * day),
            not_after: at(1_090 * day),
        };
        assert_eq!(ninety_days.renew_at(), at(1_060 * day));
        let thirty_seconds = Validity {
            not_before: at(100),
            not_after: at(130),
        };
        assert_eq!(thirty_seconds.renew_at(), at(120));
    }

    #[test]
    fn a_certificate_that_ends_before_it_starts_is_renewed_at_once() {
        let backwards = Validity {
            not_before: at(500),
            not_after: at(400),
        };
        assert_eq!(backwards.renew_at(), at(400));
        assert!(backwards.renew_at() < SystemTime::now());
    }

    #[test]
    fn retries_back_off_from_a_minute_to_an_hour() {
        let delays: Vec<u64> = (1..=9).map(|n| retry_delay(n).as_secs()).collect();
        assert_eq!(delays, [60, 120, 240, 480, 960, 1920, 3600, 3600, 3600]);
        assert_eq!(retry_delay(u32::MAX), Duration::from_secs(3600));
    }
}
