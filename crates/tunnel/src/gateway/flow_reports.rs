//! The flow log's way to the portal (SPEC 7.5). Ended flows come from the
//! clients' tables ([`crate::flows`]), get wall-clock times, and go out in
//! batches of at most [`MAX_FLOWS_PER_BATCH`] every [`REPORT_EVERY`] while
//! the portal is connected. A batch stays here until the portal answers
//! `flows_stored`; after a lost connection the batches not confirmed go
//! again (at least once: a batch stored just before the connection broke
//! may be stored twice). Memory is bounded: past [`MAX_WAITING`] flows
//! waiting, the oldest are dropped and counted.

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

use jiff::Timestamp;
use postern_model::ClientId;
use postern_model::protocol::{FlowRecord, GatewayToPortal, MAX_FLOWS_PER_BATCH};

use crate::flows::EndedFlow;

/// How often waiting flows go to the portal.
pub const REPORT_EVERY: Duration = Duration::from_secs(1);
/// Flows kept at most (waiting and sent but not confirmed): about 150
/// bytes each, so some 15 MiB.
pub const MAX_WAITING: usize = 100_000;
/// Batches sent and not yet confirmed, at most: a portal that stores
/// slowly gets no more until it catches up.
const MAX_UNCONFIRMED: usize = 8;
/// A batch not confirmed this long is sent again (its confirmation was
/// lost, or the portal could not store it).
pub const CONFIRM_WITHIN: Duration = Duration::from_secs(30);

#[derive(Debug, Default)]
pub struct FlowReports {
    waiting: VecDeque<FlowRecord>,
    /// Sent batches: when, and what.
    unconfirmed: BTreeMap<u64, (Instant, Vec<FlowRecord>)>,
    next_batch: u64,
    next_report: Option<Instant>,
    /// A monotonic instant and the wall-clock time at it (the last portal
    /// message's), to date flows.
    clock: Option<(Instant, Timestamp)>,
    dropped: u64,
}

impl FlowReports {
    /// The wall-clock time at `now`.
    pub fn set_clock(&mut self, now: Instant, wall: Timestamp) {
        self.clock = Some((now, wall));
    }

    /// Unix milliseconds at `at`, by the last clock reading (`None`
    /// before the first).
    fn unix_ms(&self, at: Instant) -> Option<i64> {
        let (anchor, wall) = self.clock?;
        let wall = wall.as_millisecond();
        Some(if at >= anchor {
            wall.saturating_add(i64::try_from((at - anchor).as_millis()).unwrap_or(i64::MAX))
        } else {
            wall.saturating_sub(i64::try_from((anchor - at).as_millis()).unwrap_or(i64::MAX))
        })
    }

    /// Flows that ended, and how many the tables dropped (counted with
    /// ours). A flow of no resource (none let it through: it cannot be)
    /// or before the first clock reading is dropped.
    pub fn add(&mut self, ended: Vec<(ClientId, EndedFlow)>, dropped_before: u64, now: Instant) {
        self.dropped += dropped_before;
        for (client, flow) in ended {
            let (Some(resource), Some(started), Some(ended)) = (
                flow.resource,
                self.unix_ms(flow.started),
                self.unix_ms(flow.ended),
            ) else {
                self.dropped += 1;
                continue;
            };
            if self.len() >= MAX_WAITING {
                self.waiting.pop_front();
                self.dropped += 1;
            }
            self.waiting.push_back(FlowRecord {
                client_id: client,
                resource_id: resource,
                protocol: flow.protocol,
                source: flow.client.into(),
                destination: flow.remote.into(),
                bytes_out: flow.bytes_out,
                bytes_in: flow.bytes_in,
                started_ms: started,
                ended_ms: ended,
            });
        }
        if !self.waiting.is_empty() {
            self.next_report.get_or_insert(now + REPORT_EVERY);
        }
    }

    fn len(&self) -> usize {
        self.waiting.len()
            + self
                .unconfirmed
                .values()
                .map(|(_, f)| f.len())
                .sum::<usize>()
    }

    /// Batches unconfirmed past [`CONFIRM_WITHIN`] go back to the front of
    /// the queue.
    fn resend_late(&mut self, now: Instant) {
        let late: Vec<u64> = self
            .unconfirmed
            .iter()
            .filter(|(_, (sent, _))| now.saturating_duration_since(*sent) >= CONFIRM_WITHIN)
            .map(|(batch, _)| *batch)
            .collect();
        for batch in late.into_iter().rev() {
            if let Some((_, flows)) = self.unconfirmed.remove(&batch) {
                for flow in flows.into_iter().rev() {
                    self.waiting.push_front(flow);
                }
            }
        }
    }

    /// The next batch for the portal, if one is due (and the portal
    /// connected, and not too many wait for confirmation).
    pub fn poll(&mut self, now: Instant, connected: bool) -> Option<GatewayToPortal> {
        self.resend_late(now);
        if !connected
            || self.waiting.is_empty()
            || self.unconfirmed.len() >= MAX_UNCONFIRMED
            || self.next_report.is_some_and(|at| at > now)
        {
            return None;
        }
        let count = self.waiting.len().min(MAX_FLOWS_PER_BATCH);
        let flows: Vec<FlowRecord> = self.waiting.drain(..count).collect();
        self.next_batch += 1;
        self.unconfirmed
            .insert(self.next_batch, (now, flows.clone()));
        // A full batch leaves at once behind the last; a part one waits
        // for more company.
        self.next_report = (!self.waiting.is_empty()).then(|| {
            if self.waiting.len() >= MAX_FLOWS_PER_BATCH {
                now
            } else {
                now + REPORT_EVERY
            }
        });
        Some(GatewayToPortal::Flows {
            batch: self.next_batch,
            flows,
        })
    }

    /// The portal stored `batch`.
    pub fn stored(&mut self, batch: u64) {
        self.unconfirmed.remove(&batch);
    }

    /// The portal connection broke: what it did not confirm goes again,
    /// first, in order.
    pub fn disconnected(&mut self, now: Instant) {
        for (_, (_, flows)) in std::mem::take(&mut self.unconfirmed).into_iter().rev() {
            for flow in flows.into_iter().rev() {
                self.waiting.push_front(flow);
            }
        }
        if !self.waiting.is_empty() {
            self.next_report = Some(now);
        }
    }

    /// When [`FlowReports::poll`] has something to do: a batch due (only
    /// while connected and with room for it), or a confirmation overdue.
    pub fn poll_timeout(&self, connected: bool) -> Option<Instant> {
        let send = self.next_report.filter(|_| {
            connected && !self.waiting.is_empty() && self.unconfirmed.len() < MAX_UNCONFIRMED
        });
        let resend = self
            .unconfirmed
            .values()
            .map(|(sent, _)| *sent + CONFIRM_WITHIN)
            .min();
        send.into_iter().chain(resend).min()
    }

    /// Flows dropped so far (room, or no resource or clock).
    pub fn dropped(&self) -> u64 {
        self.dropped
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use postern_model::ResourceId;
    use std::net::{IpAddr, Ipv4Addr};

    fn flow(n: u16, at: Instant) -> (ClientId, EndedFlow) {
        (
            ClientId(uuid::Uuid::from_u128(7)),
            EndedFlow {
                protocol: 6,
                client: (IpAddr::V4(Ipv4Addr::new(100, 64, 0, 2)), n),
                remote: (IpAddr::V4(Ipv4Addr::new(10, 0, 1, 80)), 80),
                resource: Some(ResourceId(uuid::Uuid::from_u128(9))),
                started: at,
                ended: at + Duration::from_secs(2),
                bytes_out: 100,
                bytes_in: 16 << 20,
            },
        )
    }

    fn batch(message: GatewayToPortal) -> (u64, Vec<FlowRecord>) {
        match message {
            GatewayToPortal::Flows { batch, flows } => (batch, flows),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn flows_are_dated_batched_and_sent_again_until_stored() {
        let now = Instant::now();
        let mut reports = FlowReports::default();
        let wall: Timestamp = "2026-12-02T10:00:00Z".parse().unwrap();
        reports.set_clock(now, wall);
        let count = 2 * MAX_FLOWS_PER_BATCH as u16 + 100;
        reports.add((0..count).map(|n| flow(n, now)).collect(), 0, now);
        assert!(reports.poll(now, true).is_none(), "waits for company");
        let later = now + REPORT_EVERY;
        assert!(reports.poll(later, false).is_none(), "not while away");
        let (first, flows) = batch(reports.poll(later, true).unwrap());
        assert_eq!(flows.len(), MAX_FLOWS_PER_BATCH);
        assert_eq!(flows[0].started_ms, wall.as_millisecond());
        assert_eq!(flows[0].ended_ms, wall.as_millisecond() + 2_000);
        assert_eq!(flows[0].bytes_in, 16 << 20);
        // A full batch's successor goes at once, the rest later.
        let (second, _) = batch(reports.poll(later, true).unwrap());
        assert!(reports.poll(later, true).is_none());
        reports.stored(first);
        // The connection breaks before the second is confirmed: it goes
        // again, before the rest.
        reports.disconnected(later);
        let (_, again) = batch(reports.poll(later, true).unwrap());
        assert_eq!(again.len(), MAX_FLOWS_PER_BATCH);
        assert_eq!(again[0].source.port(), MAX_FLOWS_PER_BATCH as u16);
        let _ = second;
        let (_, rest) = batch(reports.poll(later + REPORT_EVERY, true).unwrap());
        assert_eq!(rest.len(), 100);
        assert_eq!(reports.dropped(), 0);
    }

    /// Nothing to wake up for while the portal is away or the window is
    /// full (a past deadline would spin the daemon); a lost confirmation
    /// gets its batch sent again.
    #[test]
    fn away_or_full_it_sleeps_and_a_lost_confirmation_is_resent() {
        let now = Instant::now();
        let mut reports = FlowReports::default();
        reports.set_clock(now, Timestamp::UNIX_EPOCH);
        let count = 10 * MAX_FLOWS_PER_BATCH as u16;
        reports.add((0..count).map(|n| flow(n, now)).collect(), 0, now);
        let later = now + REPORT_EVERY;
        assert_eq!(reports.poll_timeout(true), Some(later));
        assert_eq!(reports.poll_timeout(false), None, "away: nothing to do");
        let mut sent = Vec::new();
        while let Some(message) = reports.poll(later, true) {
            sent.push(batch(message).0);
        }
        assert_eq!(sent.len(), MAX_UNCONFIRMED);
        // The window is full: the next wake-up is the first resend, not now.
        assert_eq!(reports.poll_timeout(true), Some(later + CONFIRM_WITHIN));
        for batch in &sent[1..] {
            reports.stored(*batch);
        }
        let resent = batch(reports.poll(later + CONFIRM_WITHIN, true).unwrap()).1;
        assert_eq!(
            resent[0].source.port(),
            0,
            "the unconfirmed first batch again"
        );
    }

    #[test]
    fn memory_is_bounded_and_what_is_dropped_is_counted() {
        let now = Instant::now();
        let mut reports = FlowReports::default();
        reports.set_clock(now, Timestamp::UNIX_EPOCH);
        for _ in 0..(MAX_WAITING / 1_000 + 5) {
            reports.add((0..1_000).map(|n| flow(n, now)).collect(), 0, now);
        }
        assert_eq!(reports.len(), MAX_WAITING);
        assert_eq!(reports.dropped(), 5_000);
        // Nothing dated before a clock reading.
        let mut undated = FlowReports::default();
        undated.add(vec![flow(1, now)], 3, now);
        assert_eq!(undated.dropped(), 4);
        assert!(undated.poll(now + REPORT_EVERY, true).is_none());
    }
}
