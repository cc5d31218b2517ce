//! Each account's policy graph, loaded off the hub's task, and what waits
//! for it. While an account's graph is loading (its first load, or a reload
//! after a committed change) every event about its channels and every
//! later change waits in the account's queue, in arrival order; when the
//! load is in they run in that order. Other accounts go on meanwhile, so a
//! slow database stalls only the account it is loading.

use std::collections::{HashMap, VecDeque};

use postern_model::ClientId;
use uuid::Uuid;

use super::super::cluster::ClusterMessage;
use super::super::graph::{AccountGraph, GraphPatch};
use super::io::{ConnId, Inbound, Joined, LoadRequest};
use crate::change::Change;

/// An input about one account's channels: it runs in that account's order.
#[derive(Debug)]
pub(super) enum Event {
    Joined(Box<Joined>),
    Message { conn: ConnId, message: Inbound },
    Closed { conn: ConnId },
    Undeliverable { conn: ConnId, overloaded: bool },
    Cluster(Box<ClusterMessage>),
}

/// Something that waits for an account's load.
#[derive(Debug)]
pub(super) enum Waiting {
    Event(Event),
    /// Changes committed while a load was out: they need a load of their
    /// own, since that one may have read the store before they committed.
    Changes(Vec<Change>),
}

/// What a finished load was for.
#[derive(Debug, PartialEq)]
pub(super) enum LoadedFor {
    /// The account's first load: nothing to re-evaluate.
    First,
    Changes(Vec<Change>),
}

#[derive(Debug, Default)]
struct Account {
    /// `None` until the first load is in.
    graph: Option<AccountGraph>,
    /// The load out now, with the changes it is for and the ledger
    /// sequence it reads after.
    loading: Option<(LoadedFor, u64)>,
    waiting: VecDeque<Waiting>,
}

#[derive(Debug, Default)]
pub(super) struct Accounts {
    accounts: HashMap<Uuid, Account>,
}

impl Accounts {
    /// Whether an event of the account can run now.
    pub(super) fn ready(&self, account: Uuid) -> bool {
        self.accounts
            .get(&account)
            .is_some_and(|a| a.graph.is_some() && a.loading.is_none())
    }

    pub(super) fn graph(&self, account: Uuid) -> Option<&AccountGraph> {
        self.accounts.get(&account)?.graph.as_ref()
    }

    /// Every account in memory (or loading for the first time).
    pub(super) fn all(&self) -> Vec<Uuid> {
        self.accounts.keys().copied().collect()
    }

    /// Queues an event of an account that is not ready; the first load is
    /// asked for if the account is new here. `after`: the ledger sequence
    /// a load asked for now must read after.
    pub(super) fn hold(&mut self, account: Uuid, event: Event, after: u64) -> Option<LoadRequest> {
        let entry = self.accounts.entry(account).or_default();
        entry.waiting.push_back(Waiting::Event(event));
        if entry.graph.is_none() && entry.loading.is_none() {
            entry.loading = Some((LoadedFor::First, after));
            return Some(LoadRequest {
                account,
                clients: Vec::new(),
                rows: None,
                after,
            });
        }
        None
    }

    /// Queues an event of a ready account behind a fresh load of it (a
    /// gateway's join: its `init` lists what the store holds now).
    pub(super) fn refresh(
        &mut self,
        account: Uuid,
        event: Event,
        after: u64,
    ) -> Option<LoadRequest> {
        let entry = self.accounts.get_mut(&account)?;
        entry.waiting.push_back(Waiting::Event(event));
        if entry.loading.is_some() {
            return None;
        }
        Some(Self::reload(account, entry, Vec::new(), after))
    }

    /// Changes committed for an account: a reload is asked for now, or once
    /// what waits before them has run. An account nobody here uses is left
    /// alone.
    pub(super) fn changed(
        &mut self,
        account: Uuid,
        changes: Vec<Change>,
        after: u64,
    ) -> Option<LoadRequest> {
        let entry = self.accounts.get_mut(&account)?;
        if entry.loading.is_some() || !entry.waiting.is_empty() {
            // Changes that wait side by side share one reload.
            if let Some(Waiting::Changes(queued)) = entry.waiting.back_mut() {
                queued.extend(changes);
            } else {
                entry.waiting.push_back(Waiting::Changes(changes));
            }
            return None;
        }
        Some(Self::reload(account, entry, changes, after))
    }

    fn reload(account: Uuid, entry: &mut Account, changes: Vec<Change>, after: u64) -> LoadRequest {
        // Verification is a fact of the device: the load reads it again.
        let clients = changes
            .iter()
            .filter_map(|change| match change {
                Change::Client(device) => Some(ClientId(*device)),
                _ => None,
            })
            .collect();
        // A refresh (no changes) and `Everything` read the whole graph;
        // other changes only the rows they touched.
        let rows = (!changes.is_empty() && !changes.contains(&Change::Everything))
            .then(|| changes.clone());
        entry.loading = Some((LoadedFor::Changes(changes), after));
        LoadRequest {
            account,
            clients,
            rows,
            after,
        }
    }

    /// A load answered; what it was for and the ledger sequence it read
    /// after (`None` if none was out).
    pub(super) fn answered(&mut self, account: Uuid) -> Option<(LoadedFor, u64)> {
        self.accounts.get_mut(&account)?.loading.take()
    }

    /// Puts a loaded graph in place; the one it replaces.
    pub(super) fn install(&mut self, account: Uuid, graph: AccountGraph) -> Option<AccountGraph> {
        self.accounts
            .entry(account)
            .or_default()
            .graph
            .replace(graph)
    }

    /// Patches a loaded graph in place (a no-op for an account with none).
    pub(super) fn patch(&mut self, account: Uuid, patch: GraphPatch) {
        if let Some(graph) = self
            .accounts
            .get_mut(&account)
            .and_then(|a| a.graph.as_mut())
        {
            graph.patch(patch);
        }
    }

    /// The first load failed: the account is forgotten (the next channel
    /// tries again) and what waited for it is returned.
    pub(super) fn forget(&mut self, account: Uuid) -> VecDeque<Waiting> {
        self.accounts
            .remove(&account)
            .map(|a| a.waiting)
            .unwrap_or_default()
    }

    /// The next event to run for a ready account. Waiting changes start
    /// their reload here, which stops the run until it is in.
    pub(super) fn next(&mut self, account: Uuid, after: u64) -> Next {
        let Some(entry) = self.accounts.get_mut(&account) else {
            return Next::Done;
        };
        if entry.loading.is_some() || entry.graph.is_none() {
            return Next::Done;
        }
        match entry.waiting.pop_front() {
            None => Next::Done,
            Some(Waiting::Event(event)) => Next::Run(event),
            Some(Waiting::Changes(changes)) => {
                Next::Load(Self::reload(account, entry, changes, after))
            }
        }
    }

    /// The account a waiting `Joined` of this connection is for.
    pub(super) fn joining(&self, conn: ConnId) -> Option<Uuid> {
        self.find(|event| matches!(event, Event::Joined(joined) if joined.conn == conn))
    }

    /// The account a waiting `Joined` of this device is for.
    pub(super) fn joining_device(&self, device: Uuid) -> Option<Uuid> {
        self.find(|event| {
            matches!(event, Event::Joined(joined)
                if joined.party.device().is_some_and(|d| d.id == device))
        })
    }

    fn find(&self, pick: impl Fn(&Event) -> bool) -> Option<Uuid> {
        self.accounts.iter().find_map(|(account, entry)| {
            entry
                .waiting
                .iter()
                .any(|w| matches!(w, Waiting::Event(event) if pick(event)))
                .then_some(*account)
        })
    }
}

/// What runs next for an account.
#[derive(Debug)]
pub(super) enum Next {
    Run(Event),
    Load(LoadRequest),
    Done,
}
