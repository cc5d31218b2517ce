//! What just happened, for the console's live parts: the latest refused
//! access requests of each account (kept in memory on the node that decided
//! them, the newest `KEPT` per account) and a counter that moves whenever
//! they or presence change, so a live page wakes at once and re-reads.
//! A leaf like `online`: the hub's shell writes, pages read.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

use jiff::Timestamp;
use postern_model::protocol::DenyReason;
use tokio::sync::watch;
use uuid::Uuid;

/// Refusals kept per account.
pub const KEPT: usize = 50;

/// One refused access request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Denial {
    /// Increases with every denial this node records (all accounts).
    pub seq: u64,
    pub at: Timestamp,
    pub actor: Uuid,
    pub client: Uuid,
    pub resource: Uuid,
    pub reason: DenyReason,
    pub violated: Vec<String>,
    /// How many times this client was refused this resource for this
    /// reason while the entry was kept (repeats move it up, not out).
    pub count: u32,
}

#[derive(Debug)]
pub struct Activity {
    denials: Mutex<Tables>,
    /// Moves on every denial and presence change.
    changed: watch::Sender<u64>,
}

#[derive(Debug, Default)]
struct Tables {
    next: u64,
    by_account: HashMap<Uuid, VecDeque<Denial>>,
}

impl Default for Activity {
    fn default() -> Self {
        Activity {
            denials: Mutex::default(),
            changed: watch::Sender::new(0),
        }
    }
}

impl Activity {
    fn tables(&self) -> std::sync::MutexGuard<'_, Tables> {
        self.denials.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records a refusal (the oldest of the account's goes past `KEPT`). A
    /// repeat of one kept (same client, resource and reason) replaces it
    /// with its count, so one client asking again and again cannot push
    /// the others out.
    pub fn denied(&self, account: Uuid, mut denial: Denial) {
        {
            let mut tables = self.tables();
            tables.next += 1;
            denial.seq = tables.next;
            let kept = tables.by_account.entry(account).or_default();
            denial.count = 1;
            if let Some(at) = kept.iter().position(|d| {
                (d.client, d.resource, d.reason, &d.violated)
                    == (
                        denial.client,
                        denial.resource,
                        denial.reason,
                        &denial.violated,
                    )
            }) && let Some(repeat) = kept.remove(at)
            {
                denial.count = repeat.count.saturating_add(1);
            }
            if kept.len() == KEPT {
                kept.pop_front();
            }
            kept.push_back(denial);
        }
        self.touch();
    }

    /// Something a live page shows changed (presence).
    pub fn touch(&self) {
        self.changed.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// The account's refusals after `seq`, newest first.
    pub fn denials_after(&self, account: Uuid, seq: u64) -> Vec<Denial> {
        self.tables()
            .by_account
            .get(&account)
            .map(|kept| {
                kept.iter()
                    .rev()
                    .take_while(|d| d.seq > seq)
                    .cloned()
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Wakes when something changed after this call.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn denial(resource: u128) -> Denial {
        Denial {
            seq: 0,
            at: Timestamp::UNIX_EPOCH,
            actor: Uuid::nil(),
            client: Uuid::nil(),
            resource: Uuid::from_u128(resource),
            reason: DenyReason::Forbidden,
            violated: vec![],
            count: 0,
        }
    }

    #[test]
    fn each_account_keeps_its_newest_refusals_and_readers_get_what_is_new() {
        let activity = Activity::default();
        let (a, b) = (Uuid::from_u128(1), Uuid::from_u128(2));
        let mut woken = activity.subscribe();
        for n in 0..(KEPT as u128 + 5) {
            activity.denied(a, denial(n));
        }
        activity.denied(b, denial(999));
        assert!(woken.has_changed().unwrap());
        let all = activity.denials_after(a, 0);
        assert_eq!(all.len(), KEPT);
        assert_eq!(
            all[0].resource,
            Uuid::from_u128(KEPT as u128 + 4),
            "newest first"
        );
        assert_eq!(
            all[KEPT - 1].resource,
            Uuid::from_u128(5),
            "the oldest went"
        );
        let newest = all[0].seq;
        assert!(activity.denials_after(a, newest).is_empty());
        assert_eq!(activity.denials_after(a, newest - 2).len(), 2);
        assert_eq!(activity.denials_after(b, 0).len(), 1, "accounts apart");
        woken.mark_unchanged();
        activity.touch();
        assert!(woken.has_changed().unwrap());
    }

    #[test]
    fn a_client_asking_again_and_again_keeps_one_entry_with_its_count() {
        let activity = Activity::default();
        let account = Uuid::from_u128(1);
        activity.denied(account, denial(7));
        for _ in 0..(KEPT * 3) {
            activity.denied(account, denial(1));
        }
        let kept = activity.denials_after(account, 0);
        assert_eq!(kept.len(), 2, "the other refusal stays");
        assert_eq!(kept[0].resource, Uuid::from_u128(1));
        assert_eq!(kept[0].count, KEPT as u32 * 3);
        assert_eq!(kept[1].resource, Uuid::from_u128(7));
        // A repeat is new to a live page (a higher seq).
        let seen = kept[0].seq;
        activity.denied(account, denial(1));
        assert_eq!(activity.denials_after(account, seen).len(), 1);
    }
}
