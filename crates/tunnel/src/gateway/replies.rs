//! Notices forwarding that gets no answers: clients' packets leave for the
//! resources but nothing comes back, which is what a host firewall dropping
//! forwarded packets looks like (or resources that send their replies
//! elsewhere). Without this the gateway would fail silently.

use std::time::{Duration, Instant};

/// How long forwarding is watched before judging it.
const WINDOW: Duration = Duration::from_secs(10);
/// Fewer forwarded packets than this say nothing (a probe or two).
const ENOUGH: u64 = 20;
/// The warning repeats at most this often.
const REPEAT: Duration = Duration::from_secs(300);

#[derive(Debug, Default)]
pub(super) struct ReplyWatch {
    since: Option<Instant>,
    forwarded: u64,
    replies: u64,
    warned: Option<Instant>,
}

impl ReplyWatch {
    /// A client's packet went to the resources.
    pub(super) fn forwarded(&mut self, now: Instant) {
        self.since.get_or_insert(now);
        self.forwarded += 1;
    }

    /// A packet from the resources went to a client.
    pub(super) fn replied(&mut self) {
        self.replies += 1;
    }

    /// At the window's end: whether it forwarded plenty and heard nothing
    /// back (at most once per [`REPEAT`]); the next window starts.
    pub(super) fn check(&mut self, now: Instant) -> Option<u64> {
        let since = self.since?;
        if now < since + WINDOW {
            return None;
        }
        let forwarded = self.forwarded;
        let silent = forwarded >= ENOUGH && self.replies == 0;
        *self = ReplyWatch {
            warned: self.warned,
            ..ReplyWatch::default()
        };
        if silent && self.warned.is_none_or(|at| now >= at + REPEAT) {
            self.warned = Some(now);
            return Some(forwarded);
        }
        None
    }

    pub(super) fn next_check(&self) -> Option<Instant> {
        self.since.map(|since| since + WINDOW)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plenty_forwarded_and_nothing_back_is_reported_once_per_five_minutes() {
        let start = Instant::now();
        let mut watch = ReplyWatch::default();
        for n in 0..30 {
            watch.forwarded(start + Duration::from_millis(100 * n));
        }
        assert_eq!(
            watch.check(start + Duration::from_secs(5)),
            None,
            "too early"
        );
        assert_eq!(watch.check(start + Duration::from_secs(10)), Some(30));
        for n in 0..30 {
            watch.forwarded(start + Duration::from_secs(11) + Duration::from_millis(n));
        }
        assert_eq!(
            watch.check(start + Duration::from_secs(21)),
            None,
            "not again so soon"
        );
    }

    #[test]
    fn any_reply_or_a_few_packets_say_nothing() {
        let start = Instant::now();
        let mut watch = ReplyWatch::default();
        for _ in 0..30 {
            watch.forwarded(start);
        }
        watch.replied();
        assert_eq!(watch.check(start + Duration::from_secs(10)), None);
        for _ in 0..5 {
            watch.forwarded(start + Duration::from_secs(11));
        }
        assert_eq!(watch.check(start + Duration::from_secs(21)), None);
    }
}
