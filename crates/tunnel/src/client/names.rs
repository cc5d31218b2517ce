//! DNS resources on the client (SPEC F24): which names the stub gave proxy
//! addresses, and what waits on the gateway. A gateway learns each name's
//! proxies through the tunnel before traffic to them flows: a grant for a
//! DNS resource waits until the gateway confirmed every name it has (or a
//! short timeout), and so does the DNS answer for a name that is new while
//! the resource is already granted. Questions only the gateway's resolver
//! can answer (MX, TXT...) wait for access and then for its answer.
//!
//! Only tables and decisions: [`super::ClientTunnel`] sends what these say.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use postern_model::{GatewayId, ResourceId};

use crate::control::AssignmentResult;
use crate::dns::Assignment;
use crate::effect::QueryId;

/// How long an answer or a grant waits for the gateway's confirmation.
pub const CONFIRM_WAIT: Duration = Duration::from_secs(2);
/// How long a query for the gateway's resolver waits (access, then answer).
pub const GATEWAY_QUERY_WAIT: Duration = Duration::from_secs(5);

/// A grant waiting for the gateway to confirm the resource's names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PendingGrant {
    pub gateway: GatewayId,
    pub expires: Option<Instant>,
    waiting: HashSet<String>,
    deadline: Instant,
}

/// A query only the gateway can answer.
struct GatewayQuery {
    resource: ResourceId,
    bytes: Vec<u8>,
    query: QueryId,
    deadline: Instant,
    /// Sent to this gateway (its answer carries the same DNS id).
    sent_to: Option<GatewayId>,
}

/// A DNS answer held until the gateway mapped the name.
struct Held {
    resource: ResourceId,
    name: String,
    answer: Vec<u8>,
    query: QueryId,
    deadline: Instant,
}

/// What timed out.
#[derive(Default)]
pub struct Expired {
    /// Answers that waited long enough: send them anyway.
    pub answers: Vec<(QueryId, Vec<u8>)>,
    /// Grants whose names were not all confirmed: grant anyway.
    pub grants: Vec<(ResourceId, PendingGrant)>,
    /// Gateway queries nobody answered: SERVFAIL.
    pub queries: Vec<(QueryId, Vec<u8>)>,
}

#[derive(Default)]
pub struct Names {
    /// Resource -> the names the stub gave proxies.
    assigned: HashMap<ResourceId, Vec<Assignment>>,
    pending: HashMap<ResourceId, PendingGrant>,
    held: Vec<Held>,
    queries: Vec<GatewayQuery>,
}

impl Names {
    pub fn poll_timeout(&self) -> Option<Instant> {
        let held = self.held.iter().map(|h| h.deadline);
        let pending = self.pending.values().map(|p| p.deadline);
        let queries = self.queries.iter().map(|q| q.deadline);
        held.chain(pending).chain(queries).min()
    }

    /// A name the stub just gave proxies.
    pub fn record(&mut self, assignment: Assignment) {
        self.assigned
            .entry(assignment.resource)
            .or_default()
            .push(assignment);
    }

    /// The names of a resource that have proxies.
    pub fn of(&self, resource: ResourceId) -> &[Assignment] {
        self.assigned.get(&resource).map_or(&[], Vec::as_slice)
    }

    /// A gateway is gone: grants waiting on it are dropped (the resource
    /// asks again), and queries sent to it are marked unsent, so a grant
    /// through another gateway sends them again (or they time out into
    /// SERVFAIL).
    pub fn forget_gateway(&mut self, gateway: GatewayId) {
        self.pending.retain(|_, p| p.gateway != gateway);
        for query in &mut self.queries {
            if query.sent_to == Some(gateway) {
                query.sent_to = None;
            }
        }
    }

    /// Access to `resource` was revoked: a grant waiting for names is off.
    pub fn cancel(&mut self, resource: ResourceId) {
        self.pending.remove(&resource);
    }

    /// The gateway a grant of `resource` waits on, if one does.
    pub fn pending_gateway(&self, resource: ResourceId) -> Option<GatewayId> {
        self.pending.get(&resource).map(|p| p.gateway)
    }

    /// A name that got proxies while the resource's grant waits: the grant
    /// waits for it too (else its traffic would reach a gateway that never
    /// mapped it).
    pub fn also_wait(&mut self, resource: ResourceId, name: &str) {
        if let Some(pending) = self.pending.get_mut(&resource) {
            pending.waiting.insert(name.to_string());
        }
    }

    /// A grant that must wait until `gateway` confirmed every name.
    pub fn wait_for(
        &mut self,
        resource: ResourceId,
        gateway: GatewayId,
        expires: Option<Instant>,
        now: Instant,
    ) {
        let waiting = self.of(resource).iter().map(|a| a.name.clone()).collect();
        self.pending.insert(
            resource,
            PendingGrant {
                gateway,
                expires,
                waiting,
                deadline: now + CONFIRM_WAIT,
            },
        );
    }

    /// An answer that waits for the gateway to map `name`.
    pub fn hold(
        &mut self,
        resource: ResourceId,
        name: String,
        answer: Vec<u8>,
        query: QueryId,
        now: Instant,
    ) {
        self.held.push(Held {
            resource,
            name,
            answer,
            query,
            deadline: now + CONFIRM_WAIT,
        });
    }

    /// The gateway's answer to an assignment: the answers it releases, and
    /// the grant it completes (if this was the last name).
    pub fn confirmed(
        &mut self,
        gateway: GatewayId,
        result: &AssignmentResult,
    ) -> (Vec<(QueryId, Vec<u8>)>, Option<PendingGrant>) {
        let (ready, held): (Vec<Held>, Vec<Held>) = std::mem::take(&mut self.held)
            .into_iter()
            .partition(|h| h.resource == result.resource && h.name == result.name);
        self.held = held;
        let answers = ready.into_iter().map(|h| (h.query, h.answer)).collect();
        let complete = match self.pending.get_mut(&result.resource) {
            Some(pending) if pending.gateway == gateway => {
                pending.waiting.remove(&result.name);
                pending.waiting.is_empty()
            }
            _ => false,
        };
        let grant = if complete {
            self.pending.remove(&result.resource)
        } else {
            None
        };
        (answers, grant)
    }

    /// A query for the gateway's resolver, sent once access is granted.
    pub fn queue_query(
        &mut self,
        resource: ResourceId,
        bytes: Vec<u8>,
        query: QueryId,
        now: Instant,
    ) {
        self.queries.push(GatewayQuery {
            resource,
            bytes,
            query,
            deadline: now + GATEWAY_QUERY_WAIT,
            sent_to: None,
        });
    }

    /// Queries whose resource is granted through a gateway now (and not
    /// waiting for names): marked sent, returned to be sent.
    pub fn ready_queries(
        &mut self,
        gateway_of: impl Fn(ResourceId) -> Option<GatewayId>,
    ) -> Vec<(GatewayId, ResourceId, Vec<u8>)> {
        let mut ready = Vec::new();
        for query in &mut self.queries {
            if query.sent_to.is_some() || self.pending.contains_key(&query.resource) {
                continue;
            }
            if let Some(gateway) = gateway_of(query.resource) {
                query.sent_to = Some(gateway);
                ready.push((gateway, query.resource, query.bytes.clone()));
            }
        }
        ready
    }

    /// A gateway's answer: the query it answers (same gateway, same DNS id).
    pub fn answered(&mut self, gateway: GatewayId, answer: &[u8]) -> Option<QueryId> {
        let index = self
            .queries
            .iter()
            .position(|q| q.sent_to == Some(gateway) && q.bytes.get(..2) == answer.get(..2))?;
        Some(self.queries.swap_remove(index).query)
    }

    /// What waited too long.
    pub fn expire(&mut self, now: Instant) -> Expired {
        let mut expired = Expired::default();
        let (late, held): (Vec<Held>, Vec<Held>) = std::mem::take(&mut self.held)
            .into_iter()
            .partition(|h| h.deadline <= now);
        self.held = held;
        expired.answers = late.into_iter().map(|h| (h.query, h.answer)).collect();
        let late: Vec<ResourceId> = self
            .pending
            .iter()
            .filter(|(_, p)| p.deadline <= now)
            .map(|(resource, _)| *resource)
            .collect();
        for resource in late {
            if let Some(pending) = self.pending.remove(&resource) {
                expired.grants.push((resource, pending));
            }
        }
        let (late, waiting): (Vec<GatewayQuery>, Vec<GatewayQuery>) =
            std::mem::take(&mut self.queries)
                .into_iter()
                .partition(|q| q.deadline <= now);
        self.queries = waiting;
        expired.queries = late.into_iter().map(|q| (q.query, q.bytes)).collect();
        expired
    }
}
