//! The other portal nodes (see `cluster`): which gateways they serve, the
//! authorizations this node forwarded for them, the pairs they made with
//! gateways here, when each was last heard, and when this node's heartbeat
//! is due.

use std::collections::HashMap;
use std::time::Instant;

use postern_model::protocol::Peer;
use postern_model::{ClientId, GatewayId};
use uuid::Uuid;

use super::super::cluster::{GatewayAnnouncement, HEARTBEAT, NODE_TIMEOUT};

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
    /// Authorizations forwarded to a gateway here: ref -> the asking node.
    forwarded: HashMap<String, Uuid>,
    /// (client, gateway here) -> the client's node, for its candidates.
    pairs: HashMap<(ClientId, GatewayId), Uuid>,
    seen: HashMap<Uuid, Instant>,
    /// `None`: due now.
    last_heartbeat: Option<Instant>,
}

impl Routing {
    pub(super) fn new(node: Uuid, clustered: bool, now: Instant) -> Self {
        Routing {
            node,
            clustered,
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
        gateway: GatewayId,
        from: Uuid,
    ) {
        self.forwarded.insert(reference, from);
        self.pairs.insert((client, gateway), from);
    }

    /// The node that forwarded an authorization, once.
    pub(super) fn take_forwarded(&mut self, reference: &str) -> Option<Uuid> {
        self.forwarded.remove(reference)
    }

    /// The node of a client paired with a gateway here.
    pub(super) fn pair_node(&self, client: ClientId, gateway: GatewayId) -> Option<Uuid> {
        self.pairs.get(&(client, gateway)).copied()
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
