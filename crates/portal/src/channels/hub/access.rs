//! Access on first packet (F16, F20): `request_access` -> policy decision ->
//! gateway selection -> `authorize` -> the gateway's `authorized` ->
//! `access_granted`; a request not confirmed by its deadline fails closed
//! (`offline`). Holds the grants and the pending requests (so it also
//! knows which devices are paired, for `ice`), and decides them again on
//! changes and expiries.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use jiff::Timestamp;
use postern_model::protocol::{
    Authorization, DenyReason, PortalToClient, PortalToGateway, ResourceDescription,
};
use postern_model::{ClientId, GatewayId, ResourceId};
use postern_policy::{Decision, Denial};
use uuid::Uuid;

use super::super::graph::AccountGraph;
use super::super::keys::{PairIds, PairSecrets};
use super::grants::{Asker, GatewayRoute, Grant, Key, Refs};
use super::io::{ConnId, GrantKey, GrantWrite, Metric};
use super::post::Post;
use super::selection::{Candidate, Selection, candidates};

mod ledger;

/// Refs are the sender's labels; a long one is abuse, not a label.
pub(super) const MAX_REF: usize = 128;
/// Requests for a resource already asked for wait on that one; this many
/// refs at most are answered with it (issue 15, M5).
const MAX_COALESCED: usize = 8;

/// A request waiting for the gateway's `authorized`.
#[derive(Debug)]
struct Pending {
    client_conn: ConnId,
    /// The client's refs: its request and the repeats that wait on it.
    client_refs: Vec<String>,
    route: GatewayRoute,
    deadline: Instant,
    grant: Grant,
}

/// A client's `request_access`, with what the hub looked up for it.
pub(super) struct Request<'a> {
    pub conn: ConnId,
    pub reference: String,
    pub asker: Asker,
    /// As the client was told it (`None`: not offered to it).
    pub resource: Option<ResourceDescription>,
    pub resource_id: ResourceId,
    pub connected: &'a [GatewayId],
    pub graph: &'a AccountGraph,
}

/// What deciding a device's grants again came to.
#[derive(Debug, Default)]
pub(super) struct Redecided {
    pub revoked: Vec<Key>,
    /// Grants whose expiry moved, for their gateways.
    pub extended: Vec<(GatewayId, Authorization)>,
    /// Requests waiting on a gateway that are no longer allowed, by ref.
    pub refused: Vec<String>,
}

pub(super) struct Access {
    grants: HashMap<Key, Grant>,
    /// Rows this node deleted, with their account and write sequence,
    /// until a load read after the delete (see `ledger`).
    tombstones: HashMap<GrantKey, (Uuid, u64)>,
    /// By the portal's ref of the `authorize`.
    pending: HashMap<String, Pending>,
    secrets: PairSecrets,
    /// How long a gateway has to confirm (SPEC section 5: 15 s).
    timeout: Duration,
    /// Requests one client channel may have waiting (issue 15, M5).
    max_pending: usize,
    selection: Selection,
    refs: Refs,
}

impl Access {
    pub(super) fn new(
        node: Uuid,
        secrets: PairSecrets,
        timeout: Duration,
        max_pending: usize,
        seed: u64,
    ) -> Self {
        Access {
            max_pending,
            grants: HashMap::new(),
            tombstones: HashMap::new(),
            pending: HashMap::new(),
            secrets,
            timeout,
            selection: Selection::new(seed),
            refs: Refs::new(node),
        }
    }

    /// Decides a request; if allowed, picks a gateway and asks it to
    /// authorize the client. The client hears `access_denied` otherwise.
    pub(super) fn request(
        &mut self,
        request: Request<'_>,
        post: &mut Post,
        now: Instant,
        wall: Timestamp,
    ) {
        let Request {
            conn,
            reference,
            asker,
            resource,
            resource_id,
            connected,
            graph,
        } = request;
        let Some(resource) = resource else {
            // An id the account has no resource for (made up, or gone) is
            // the client's business, not the live denials'.
            let real = graph.resources.contains_key(&resource_id.0);
            post.deny(
                conn,
                reference,
                resource_id,
                DenyReason::NotFound,
                vec![],
                real.then_some(&asker),
            );
            return;
        };
        // A key another device holds (another client's, a gateway's) gets
        // nothing: a gateway that knew it for two peers would confuse them
        // (issue 15, L12).
        if self.key_taken(&asker.peer)
            || post
                .presence()
                .key_taken(&asker.peer.public_key, asker.peer.id.0)
        {
            tracing::warn!(client = %asker.peer.id, "a client presented another device's public key; refused");
            let violated = vec!["public_key".to_string()];
            post.deny(
                conn,
                reference,
                resource_id,
                DenyReason::Forbidden,
                violated,
                Some(&asker),
            );
            return;
        }
        // A repeat of a request still waiting waits on it: one `authorize`
        // per (client, resource), however often the client asks.
        let mut waiting = 0;
        for pending in self.pending.values_mut() {
            if pending.client_conn != conn {
                continue;
            }
            if pending.grant.authorization.resource.id == resource_id {
                if pending.client_refs.len() < MAX_COALESCED {
                    pending.client_refs.push(reference);
                } else {
                    let message = "this resource was asked for already; wait for the answer";
                    post.error(conn, Some(reference), message.to_string());
                }
                return;
            }
            waiting += 1;
        }
        if waiting >= self.max_pending {
            let message = format!(
                "{waiting} access requests are waiting for gateways; wait for their answers"
            );
            post.error(conn, Some(reference), message);
            return;
        }
        let decision = graph.policies.decide(
            graph.groups(asker.actor_id),
            resource_id.0,
            &asker.facts(wall),
        );
        let expires_at = match decision {
            Decision::Allow { expires_at, .. } => expires_at,
            Decision::Deny(denial) => {
                let violated = match denial {
                    Denial::NoPolicy => vec![],
                    Denial::Conditions(properties) => {
                        properties.iter().map(|p| p.as_str().to_string()).collect()
                    }
                };
                post.deny(
                    conn,
                    reference,
                    resource_id,
                    DenyReason::Forbidden,
                    violated,
                    Some(&asker),
                );
                return;
            }
        };
        // Token expiry bounds every authorization made under the token.
        let expires_at = earliest(expires_at, asker.token_expires);
        let candidates = candidates(post, asker.account, resource.site_id.0);
        let load = |gateway| load(&self.grants, gateway);
        let Some(Candidate {
            route,
            peer: gateway,
            ..
        }) = self.selection.pick(candidates, connected, load)
        else {
            post.deny(
                conn,
                reference,
                resource_id,
                DenyReason::Offline,
                vec![],
                Some(&asker),
            );
            return;
        };
        let pair = PairIds {
            client: asker.peer.id,
            client_key: &asker.peer.public_key,
            gateway: gateway.id,
            gateway_key: &gateway.public_key,
        };
        let authorization = Authorization {
            client: asker.peer.clone(),
            resource,
            preshared_key: self.secrets.preshared_key(pair),
            ice: self.secrets.ice(pair),
            expires_at,
        };
        let gateway_device = gateway.id;
        let portal_ref = self.refs.next();
        self.pending.insert(
            portal_ref.clone(),
            Pending {
                client_conn: conn,
                client_refs: vec![reference],
                route,
                deadline: now + self.timeout,
                grant: Grant {
                    asker,
                    gateway,
                    authorization: authorization.clone(),
                    granted_at: wall,
                    own: true,
                    written: 0,
                },
            },
        );
        post.deliver_to_gateway(
            gateway_device,
            PortalToGateway::Authorize {
                reference: portal_ref,
                authorization: Box::new(authorization),
            },
        );
    }

    /// Whether a grant or a request pairs `peer`'s key with another device.
    fn key_taken(&self, peer: &postern_model::protocol::Peer<ClientId>) -> bool {
        let clash = |grant: &Grant| {
            (grant.asker.peer.public_key == peer.public_key && grant.asker.peer.id != peer.id)
                || grant.gateway.public_key == peer.public_key
        };
        self.grants.values().any(clash) || self.pending.values().any(|p| clash(&p.grant))
    }

    /// A fresh ref for an `authorize`.
    pub(super) fn next_ref(&mut self) -> String {
        self.refs.next()
    }

    /// Where the gateway of a pending request is.
    pub(super) fn route(&self, reference: &str) -> Option<GatewayRoute> {
        self.pending.get(reference).map(|p| p.route)
    }

    pub(super) fn pending_account(&self, reference: &str) -> Option<Uuid> {
        self.pending.get(reference).map(|p| p.grant.asker.account)
    }

    /// The gateway confirmed: the client hears `access_granted`.
    pub(super) fn authorized(&mut self, reference: &str, post: &mut Post) {
        let Some(pending) = self.pending.remove(reference) else {
            return;
        };
        let mut grant = pending.grant;
        let granted = |reference| PortalToClient::AccessGranted {
            reference,
            resource_id: grant.authorization.resource.id,
            gateway: grant.gateway.clone(),
            preshared_key: grant.authorization.preshared_key,
            ice: grant.authorization.ice.clone(),
            expires_at: grant.authorization.expires_at,
        };
        let answers: Vec<PortalToClient> = pending.client_refs.into_iter().map(granted).collect();
        let gateway = grant.gateway.id;
        let key = grant.key();
        // A grant on another gateway for the same resource is replaced.
        if self
            .grants
            .get(&key)
            .is_some_and(|old| old.gateway.id != gateway)
        {
            self.revoke(key, post);
        }
        // In the store before anyone hears of it: a node that restarts
        // after this knows it, and so does every other node.
        grant.written = post.persist(GrantWrite::Put(Box::new(grant.record())));
        self.grants.insert(key, grant);
        post.gateway_load(gateway, self.load(gateway));
        post.metric(Metric::Granted);
        for answer in answers {
            post.client(pending.client_conn, answer);
        }
    }

    /// A pending request that cannot complete: the client hears `offline`.
    pub(super) fn fail(&mut self, reference: &str, post: &mut Post) {
        self.end_pending(reference, DenyReason::Offline, post);
    }

    /// A waiting request the graph no longer allows: the client hears
    /// `forbidden`, the gateway takes back what it may have applied.
    pub(super) fn refuse(&mut self, reference: &str, post: &mut Post) {
        self.end_pending(reference, DenyReason::Forbidden, post);
    }

    fn end_pending(&mut self, reference: &str, reason: DenyReason, post: &mut Post) {
        if let Some(pending) = self.pending.remove(reference) {
            let resource_id = pending.grant.authorization.resource.id;
            self.withdraw(&pending.grant, post);
            for reference in pending.client_refs {
                post.deny(
                    pending.client_conn,
                    reference,
                    resource_id,
                    reason,
                    vec![],
                    Some(&pending.grant.asker),
                );
            }
        }
    }

    /// Fails the pending requests `waiting` picks, at once.
    pub(super) fn fail_where(
        &mut self,
        waiting: impl Fn(GatewayRoute, GatewayId) -> bool,
        post: &mut Post,
    ) {
        let references: Vec<String> = self
            .pending
            .iter()
            .filter(|(_, p)| waiting(p.route, p.grant.gateway.id))
            .map(|(r, _)| r.clone())
            .collect();
        for reference in references {
            self.fail(&reference, post);
        }
    }

    /// Requests past their deadline fail closed.
    pub(super) fn fail_overdue(&mut self, now: Instant, post: &mut Post) {
        let overdue: Vec<String> = self
            .pending
            .iter()
            .filter(|(_, p)| p.deadline <= now)
            .map(|(r, _)| r.clone())
            .collect();
        for reference in overdue {
            self.fail(&reference, post);
        }
    }

    /// The client channel closed: its requests are withdrawn.
    pub(super) fn abandon(&mut self, conn: ConnId, post: &mut Post) {
        let abandoned: Vec<String> = self
            .pending
            .iter()
            .filter(|(_, p)| p.client_conn == conn)
            .map(|(r, _)| r.clone())
            .collect();
        for reference in abandoned {
            if let Some(pending) = self.pending.remove(&reference) {
                self.withdraw(&pending.grant, post);
            }
        }
    }

    /// The gateway may have applied an authorization it never confirmed (or
    /// confirmed too late): take it back, unless a grant on that same
    /// gateway still covers the pair.
    fn withdraw(&self, grant: &Grant, post: &mut Post) {
        let key = grant.key();
        if self
            .grants
            .get(&key)
            .is_some_and(|g| g.gateway.id == grant.gateway.id)
        {
            return;
        }
        post.deliver_to_gateway(
            grant.gateway.id,
            PortalToGateway::Revoke {
                client_id: key.0,
                resource_id: key.1,
            },
        );
    }

    /// Ends a grant: the gateway stops forwarding, the client is told.
    pub(super) fn revoke(&mut self, key: Key, post: &mut Post) {
        let Some(grant) = self.grants.remove(&key) else {
            return;
        };
        self.forget_stored(&grant, post);
        let (client_id, resource_id) = key;
        post.deliver_to_gateway(
            grant.gateway.id,
            PortalToGateway::Revoke {
                client_id,
                resource_id,
            },
        );
        post.deliver_to_client(client_id, PortalToClient::AccessRevoked { resource_id });
        post.gateway_load(grant.gateway.id, self.load(grant.gateway.id));
    }

    /// Deletes a grant's row; until a load reads after the delete, a row
    /// of it that a load still shows is not taken back.
    fn forget_stored(&mut self, grant: &Grant, post: &mut Post) {
        let key = grant.stored_key();
        let seq = post.persist(GrantWrite::Delete(key));
        self.tombstones.insert(key, (grant.asker.account, seq));
    }

    /// Revokes every grant `pick` chooses.
    pub(super) fn revoke_where(&mut self, pick: impl Fn(&Grant) -> bool, post: &mut Post) {
        let keys = self.keys_where(pick);
        for key in keys {
            self.revoke(key, post);
        }
    }

    pub(super) fn keys_where(&self, pick: impl Fn(&Grant) -> bool) -> Vec<Key> {
        self.grants
            .iter()
            .filter(|(_, g)| pick(g))
            .map(|(k, _)| *k)
            .collect()
    }

    /// Client devices holding a grant `pick` chooses.
    pub(super) fn clients_where(&self, pick: impl Fn(&Grant) -> bool) -> Vec<ClientId> {
        self.grants
            .values()
            .filter(|g| pick(g))
            .map(|g| g.asker.peer.id)
            .collect()
    }

    /// What a gateway enforces, for its `init` or a resync.
    pub(super) fn authorizations_on(&self, gateway: GatewayId) -> Vec<Authorization> {
        self.grants
            .values()
            .filter(|g| g.gateway.id == gateway)
            .map(|g| g.authorization.clone())
            .collect()
    }

    /// Clients the gateway serves now, for presence and load balancing.
    pub(super) fn load(&self, gateway: GatewayId) -> u64 {
        load(&self.grants, gateway)
    }

    /// Whether the two devices are the ends of a grant or a pending request.
    pub(super) fn paired(&self, client: ClientId, gateway: GatewayId) -> bool {
        let pair = |g: &Grant| g.asker.peer.id == client && g.gateway.id == gateway;
        self.grants.values().any(pair) || self.pending.values().any(|p| pair(&p.grant))
    }

    /// A client device's verification changed.
    pub(super) fn set_verified(&mut self, device: ClientId, verified: bool) {
        for grant in self
            .grants
            .values_mut()
            .filter(|g| g.asker.peer.id == device)
        {
            grant.asker.verified = verified;
        }
    }

    /// Grants of a changed resource take its new form; the gateways that
    /// enforce it are returned. So are the gateways still confirming an
    /// authorization of it: the `authorize` they got carries the old
    /// filters, and the update that follows it on the same channel must
    /// reach them too (else the grant would keep the old filters for good).
    pub(super) fn update_resource(&mut self, resource: &ResourceDescription) -> Vec<GatewayId> {
        let mut gateways: Vec<GatewayId> = Vec::new();
        let pending = self.pending.values_mut().map(|p| &mut p.grant);
        for grant in self.grants.values_mut().chain(pending) {
            if grant.authorization.resource.id == resource.id {
                grant.authorization.resource = resource.clone();
                gateways.push(grant.gateway.id);
            }
        }
        gateways.sort_unstable();
        gateways.dedup();
        gateways
    }

    /// Grants with an expiry (theirs or their token's) at or before `now`:
    /// (account, client device).
    pub(super) fn expired(&self, now: Timestamp) -> Vec<(Uuid, ClientId)> {
        let mut expired: Vec<(Uuid, ClientId)> = self
            .grants
            .values()
            .filter(|g| {
                g.authorization.expires_at.is_some_and(|at| at <= now)
                    || g.asker.token_expires.is_some_and(|at| at <= now)
            })
            .map(|g| (g.asker.account, g.asker.peer.id))
            .collect();
        expired.sort_unstable();
        expired.dedup();
        expired
    }

    /// Decides a device's grants again, with the facts they were made with;
    /// and its requests still waiting on a gateway, which were decided on
    /// an older graph (a grant must not come of them if that no longer
    /// allows it).
    pub(super) fn redecide(
        &mut self,
        device: ClientId,
        graph: &AccountGraph,
        now: Timestamp,
    ) -> Redecided {
        let mut redecided = Redecided::default();
        for (key, grant) in self.grants.iter_mut().filter(|(k, _)| k.0 == device) {
            match decide_again(grant, graph, now) {
                Some(expires_at) => {
                    if expires_at != grant.authorization.expires_at {
                        grant.authorization.expires_at = expires_at;
                        redecided
                            .extended
                            .push((grant.gateway.id, grant.authorization.clone()));
                    }
                }
                None => redecided.revoked.push(*key),
            }
        }
        redecided.refused = self
            .pending
            .iter()
            .filter(|(_, p)| p.grant.asker.peer.id == device)
            .filter(|(_, p)| decide_again(&p.grant, graph, now).is_none())
            .map(|(reference, _)| reference.clone())
            .collect();
        redecided
    }

    /// The grants a gateway holds, split by whether they were made by this
    /// node for `key` (its current process) or for an earlier one.
    pub(super) fn on_gateway(
        &self,
        gateway: GatewayId,
        key: &postern_model::PublicKey,
    ) -> (Vec<Authorization>, Vec<Key>) {
        let mut same = Vec::new();
        let mut stale = Vec::new();
        for grant in self.grants.values().filter(|g| g.gateway.id == gateway) {
            if grant.gateway.public_key == *key {
                if grant.own {
                    same.push(grant.authorization.clone());
                }
            } else {
                stale.push(grant.key());
            }
        }
        (same, stale)
    }
}

fn load(grants: &HashMap<Key, Grant>, gateway: GatewayId) -> u64 {
    let mut clients: Vec<ClientId> = grants
        .values()
        .filter(|g| g.gateway.id == gateway)
        .map(|g| g.asker.peer.id)
        .collect();
    clients.sort_unstable();
    clients.dedup();
    clients.len() as u64
}

/// A grant's expiry if the graph still allows it with the facts it was
/// made with (the token bounds it), `None` if not.
fn decide_again(grant: &Grant, graph: &AccountGraph, now: Timestamp) -> Option<Option<Timestamp>> {
    let resource_id = grant.authorization.resource.id;
    let actor = grant.asker.actor_id;
    // A token that expired ends what was granted under it (the policy may
    // still allow the pair).
    let token_live = grant.asker.token_expires.is_none_or(|at| at > now);
    let still_visible = token_live
        && graph.actor_active(actor)
        && graph.resources.contains_key(&resource_id.0)
        && graph
            .policies
            .visible_resources(graph.groups(actor))
            .contains(&resource_id.0);
    match graph
        .policies
        .decide(graph.groups(actor), resource_id.0, &grant.asker.facts(now))
    {
        // Another window may carry it on; the token still bounds it.
        Decision::Allow { expires_at, .. } if still_visible => {
            Some(earliest(expires_at, grant.asker.token_expires))
        }
        _ => None,
    }
}

/// The earlier of two optional instants (`None` is "never").
pub(super) fn earliest(a: Option<Timestamp>, b: Option<Timestamp>) -> Option<Timestamp> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}
