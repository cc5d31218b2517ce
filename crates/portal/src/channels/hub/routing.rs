//! The other portal nodes (see `cluster`): which gateways they serve, the
//! authorizations this node forwarded for them, the pairs they made with
//! gateways here, when each was last heard, and when this node's heartbeat
//! is due.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use postern_model::protocol::Peer;
use postern_model::{ClientId, GatewayId, ResourceId};
use uuid::Uuid;

use super::super::cluster::{GatewayAnnouncement, HEARTBEAT, NODE_TIMEOUT};

/// An `authorize` this node passed to a gateway here for another node: only
/// that gateway's `authorized` answers it (issue 15, L9), until the asking
/// node's deadline.
#[derive(Debug)]
struct Forwarded {
    node: Uuid,
    gateway: GatewayId,
    deadline: Instant,
}

/// A (client, gateway here) pair another node made, for the gateway's
/// candidates: the resources it was authorized for, until revoked.
#[derive(Debug)]
struct Pair {
    node: Uuid,
    resources: HashSet<ResourceId>,
}

/// A gateway another node serves.
#[derive(Debug)]
struct RemoteGateway {
    node: Uuid,
    info: GatewayAnnouncement,
}

#[derive(Debug)]
pub(super) struct Routing {
    /// This node.
    node: Uuid,
    /// Whether other nodes may exist (PostgreSQL); a single node publishes
    /// nothing.
    clustered: bool,
    gateways: HashMap<GatewayId, RemoteGateway>,
    /// Authorizations forwarded to a gateway here, by ref.
    forwarded: HashMap<String, Forwarded>,
    /// (client, gateway here) -> the client's node, for its candidates.
    pairs: HashMap<(ClientId, GatewayId), Pair>,
    /// How long a gateway has to confirm: forwarded refs are forgotten then.
    timeout: Duration,
    seen: HashMap<Uuid, Instant>,
    /// `None`: due now.
    last_heartbeat: Option<Instant>,
}

impl Routing {
    pub(super) fn new(node: Uuid, clustered: bool, timeout: Duration, now: Instant) -> Self {
        Routing {
            node,
            clustered,
            timeout,
            gateways: HashMap::new(),
            forwarded: HashMap::new(),
            pairs: HashMap::new(),
            seen: HashMap::new(),
            last_heartbeat: Some(now),
        }
    }

    pub(super) fn node(&self) -> Uuid {
        self.node
    }

    pub(super) fn clustered(&self) -> bool {
        self.clustered
    }

    pub(super) fn heard_from(&mut self, node: Uuid, now: Instant) {
        self.seen.insert(node, now);
    }

    /// The node that serves a gateway not connected here.
    pub(super) fn gateway_node(&self, device: GatewayId) -> Option<Uuid> {
        self.gateways.get(&device).map(|g| g.node)
    }

    /// Gateways of a site on other nodes: (node, peer, announced load).
    pub(super) fn gateways_at(
        &self,
        account: Uuid,
        site: Uuid,
    ) -> impl Iterator<Item = (Uuid, Peer<GatewayId>, u64)> + '_ {
        self.gateways
            .values()
            .filter(move |g| g.info.account == account && g.info.site_id == site)
            .map(|g| {
                let info = &g.info;
                let peer = Peer {
                    id: info.device,
                    public_key: info.public_key,
                    ipv4: info.ipv4,
                    ipv6: info.ipv6,
                };
                (g.node, peer, info.load)
            })
    }

    /// Another node has the gateway; `true` if it was known there with the
    /// same key already (a repeat, not news).
    pub(super) fn gateway_up(&mut self, node: Uuid, info: GatewayAnnouncement) -> bool {
        let device = info.device;
        let key = info.public_key;
        self.gateways
            .insert(device, RemoteGateway { node, info })
            .is_some_and(|old| old.info.public_key == key)
    }

    /// `false` if the gateway was not known elsewhere.
    pub(super) fn gateway_down(&mut self, device: GatewayId) -> bool {
        self.gateways.remove(&device).is_some()
    }

    /// The gateway connected here: other nodes' news of it is stale.
    pub(super) fn gateway_here(&mut self, device: GatewayId) {
        self.gateways.remove(&device);
    }

    /// The gateway here left: pairs other nodes made with it are gone.
    pub(super) fn gateway_gone(&mut self, device: GatewayId) {
        self.pairs.retain(|(_, g), _| *g != device);
    }

    /// Another node asked a gateway here to authorize a client.
    pub(super) fn forwarded(
        &mut self,
        reference: String,
        client: ClientId,
        resource: ResourceId,
        gateway: GatewayId,
        from: Uuid,
        now: Instant,
    ) {
        let deadline = now + self.timeout;
        let forwarded = Forwarded {
            node: from,
            gateway,
            deadline,
        };
        self.forwarded.insert(reference, forwarded);
        let pair = self.pairs.entry((client, gateway)).or_insert(Pair {
            node: from,
            resources: HashSet::new(),
        });
        pair.node = from;
        pair.resources.insert(resource);
    }

    /// Another node revoked a client's resource on a gateway here.
    pub(super) fn revoked(&mut self, client: ClientId, resource: ResourceId, gateway: GatewayId) {
        if let Some(pair) = self.pairs.get_mut(&(client, gateway)) {
            pair.resources.remove(&resource);
            if pair.resources.is_empty() {
                self.pairs.remove(&(client, gateway));
            }
        }
    }

    /// The node that forwarded an authorization, once, if `gateway` is the
    /// one it was forwarded to (another gateway's `authorized` for a ref it
    /// never got is refused).
    pub(super) fn take_forwarded(&mut self, reference: &str, gateway: GatewayId) -> Option<Uuid> {
        match self.forwarded.get(reference) {
            Some(forwarded) if forwarded.gateway == gateway => {
                self.forwarded.remove(reference).map(|f| f.node)
            }
            _ => None,
        }
    }

    /// Whether a ref was forwarded to a gateway here (by any node).
    pub(super) fn is_forwarded(&self, reference: &str) -> bool {
        self.forwarded.contains_key(reference)
    }

    /// Forgets forwarded refs nobody answered in time.
    pub(super) fn prune(&mut self, now: Instant) {
        self.forwarded.retain(|_, f| f.deadline > now);
    }

    /// The node of a client paired with a gateway here.
    pub(super) fn pair_node(&self, client: ClientId, gateway: GatewayId) -> Option<Uuid> {
        self.pairs.get(&(client, gateway)).map(|p| p.node)
    }

    /// Whether this node should announce itself now; if so, the next
    /// announcement is due a heartbeat later.
    pub(super) fn heartbeat_due(&mut self, now: Instant) -> bool {
        let due = self
            .last_heartbeat
            .is_none_or(|last| now.duration_since(last) >= HEARTBEAT);
        if due {
            self.last_heartbeat = Some(now);
        }
        due
    }

    /// Announce at the next tick (after lost messages).
    pub(super) fn heartbeat_now(&mut self) {
        self.last_heartbeat = None;
    }

    /// Nodes silent for too long, forgotten here with their gateways,
    /// which are returned.
    pub(super) fn forget_silent(&mut self, now: Instant) -> Vec<(Uuid, Vec<GatewayId>)> {
        let silent: Vec<Uuid> = self
            .seen
            .iter()
            .filter(|(_, seen)| now.duration_since(**seen) > NODE_TIMEOUT)
            .map(|(node, _)| *node)
            .collect();
        silent
            .into_iter()
            .map(|node| {
                self.seen.remove(&node);
                self.pairs.retain(|_, p| p.node != node);
                self.forwarded.retain(|_, f| f.node != node);
                let gateways = self
                    .gateways
                    .iter()
                    .filter(|(_, g)| g.node == node)
                    .map(|(d, _)| *d)
                    .collect();
                (node, gateways)
            })
            .collect()
    }
}
