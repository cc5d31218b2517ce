//! Messages between this node's hub and the other portal nodes (see
//! `cluster`): delivering to devices connected elsewhere, and keeping the
//! tables of remote gateways and relays fresh.

use std::time::Instant;

use postern_model::protocol::{PortalToClient, PortalToGateway};
use postern_model::{ClientId, GatewayId, RelayId};
use uuid::Uuid;

use super::cluster::{
    ClusterMessage, GatewayAnnouncement, HEARTBEAT, NODE_TIMEOUT, RelayAnnouncement,
};
use super::hub::{ConnKind, GatewayRoute, Hub, RemoteGateway, RemoteRelay};
use crate::change::Change;

impl Hub {
    /// Sends to the other nodes (a no-op for a single node).
    pub(super) fn publish(&self, message: ClusterMessage) {
        if let Some(cluster) = &self.cluster {
            let _ = cluster.send(message);
        }
    }

    /// Delivers to a gateway wherever it is connected; `false` if it is not.
    pub(super) fn deliver_to_gateway(
        &mut self,
        device: GatewayId,
        message: PortalToGateway,
    ) -> bool {
        if let Some(&conn) = self.gateways.get(&device) {
            self.send_gateway(conn, message);
            return true;
        }
        let Some(node) = self.remote_gateways.get(&device).map(|r| r.node) else {
            return false;
        };
        let parts = match message {
            PortalToGateway::IceCandidates {
                peer_id,
                candidates,
            } => chunks(candidates)
                .map(|candidates| PortalToGateway::IceCandidates {
                    peer_id,
                    candidates,
                })
                .collect(),
            PortalToGateway::IceCandidatesRemoved {
                peer_id,
                candidates,
            } => chunks(candidates)
                .map(|candidates| PortalToGateway::IceCandidatesRemoved {
                    peer_id,
                    candidates,
                })
                .collect(),
            other => vec![other],
        };
        for part in parts {
            self.publish(ClusterMessage::ToGateway {
                from: self.node,
                to: node,
                device,
                message: Box::new(part),
            });
        }
        true
    }

    pub(super) fn deliver_to_remote_client(
        &self,
        node: Uuid,
        device: ClientId,
        message: PortalToClient,
    ) {
        let parts = match message {
            PortalToClient::IceCandidates {
                peer_id,
                candidates,
            } => chunks(candidates)
                .map(|candidates| PortalToClient::IceCandidates {
                    peer_id,
                    candidates,
                })
                .collect(),
            PortalToClient::IceCandidatesRemoved {
                peer_id,
                candidates,
            } => chunks(candidates)
                .map(|candidates| PortalToClient::IceCandidatesRemoved {
                    peer_id,
                    candidates,
                })
                .collect(),
            other => vec![other],
        };
        for part in parts {
            self.publish(ClusterMessage::ToClient {
                from: self.node,
                to: node,
                device,
                message: Box::new(part),
            });
        }
    }

    /// What this node announces about one of its gateways.
    pub(super) fn announcement(&self, device: GatewayId) -> Option<GatewayAnnouncement> {
        let conn = self.conns.get(self.gateways.get(&device)?)?;
        let ConnKind::Gateway(gateway) = &conn.kind else {
            return None;
        };
        Some(GatewayAnnouncement {
            account: conn.account?,
            site_id: gateway.site_id,
            device,
            public_key: conn.public_key,
            ipv4: gateway.device.ipv4,
            ipv6: gateway.device.ipv6,
            load: self.gateway_load(device),
        })
    }

    pub(super) async fn cluster_message(&mut self, message: ClusterMessage) {
        let from = message.from();
        self.nodes_seen.insert(from, Instant::now());
        match message {
            ClusterMessage::Change {
                account, change, ..
            } => {
                self.apply_changes(vec![(account, change)]).await;
            }
            ClusterMessage::Heartbeat {
                gateways, relays, ..
            } => {
                for gateway in gateways {
                    self.remote_gateway_up(from, gateway, false);
                }
                for relay in relays {
                    self.remote_relay_up(from, relay);
                }
            }
            ClusterMessage::GatewayUp { gateway, .. } => {
                self.remote_gateway_up(from, gateway, true)
            }
            ClusterMessage::GatewayDown { device, .. } => self.remote_gateway_down(device),
            ClusterMessage::RelayUp { relay, .. } => self.remote_relay_up(from, relay),
            ClusterMessage::RelayDown { id, .. } => {
                if self.remote_relays.remove(&id).is_some() {
                    self.broadcast_relays(&[], &[id]);
                }
            }
            ClusterMessage::ToGateway {
                device, message, ..
            } => {
                let Some(&conn) = self.gateways.get(&device) else {
                    return;
                };
                if let PortalToGateway::Authorize {
                    reference,
                    authorization,
                } = message.as_ref()
                {
                    self.remote_pending.insert(reference.clone(), from);
                    self.remote_pairs
                        .insert((authorization.client.id, device), from);
                }
                self.send_gateway(conn, *message);
            }
            ClusterMessage::ToClient {
                device, message, ..
            } => {
                if let Some(&conn) = self.clients.get(&device) {
                    self.send_client(conn, *message);
                }
            }
            ClusterMessage::Authorized { reference, .. } => {
                let expected = self
                    .pending
                    .get(&reference)
                    .is_some_and(|p| p.gateway == GatewayRoute::Remote(from));
                if expected {
                    self.authorized(&reference);
                }
            }
        }
    }

    fn remote_gateway_up(&mut self, node: Uuid, info: GatewayAnnouncement, announced: bool) {
        let device = info.device;
        if self.gateways.contains_key(&device) {
            // It moved here; the other node's news is stale.
            return;
        }
        let key = info.public_key;
        self.state.online().set_gateway(device.0, Some(info.load));
        let known = self
            .remote_gateways
            .insert(device, RemoteGateway { node, info })
            .is_some_and(|old| old.info.public_key == key);
        if known && !announced {
            return;
        }
        // The gateway (re)joined: resync what this node granted on it, or
        // void it if the gateway restarted with a new key.
        let grants: Vec<_> = self
            .grants
            .values()
            .filter(|g| g.gateway_device == device)
            .map(|g| {
                (
                    g.client_device,
                    g.authorization.resource.id,
                    g.gateway_key == key,
                    g.authorization.clone(),
                )
            })
            .collect();
        for (client, resource, same_key, authorization) in grants {
            if same_key {
                let reference = self.next_ref();
                self.deliver_to_gateway(
                    device,
                    PortalToGateway::Authorize {
                        reference,
                        authorization: Box::new(authorization),
                    },
                );
            } else {
                self.revoke_grant((client, resource));
            }
        }
    }

    fn remote_gateway_down(&mut self, device: GatewayId) {
        if self.remote_gateways.remove(&device).is_none() {
            return;
        }
        if !self.gateways.contains_key(&device) {
            self.state.online().set_gateway(device.0, None);
        }
        // Requests waiting on it fail closed now.
        let waiting: Vec<String> = self
            .pending
            .iter()
            .filter(|(_, p)| {
                matches!(p.gateway, GatewayRoute::Remote(_)) && p.grant.gateway_device == device
            })
            .map(|(r, _)| r.clone())
            .collect();
        for reference in waiting {
            self.fail_pending(&reference);
        }
    }

    fn remote_relay_up(&mut self, node: Uuid, relay: RelayAnnouncement) {
        let id = relay.id;
        let new = self
            .remote_relays
            .insert(id, RemoteRelay { node, relay })
            .is_none();
        if new {
            self.broadcast_relays(&[id], &[]);
        }
    }

    /// Heartbeat and forgetting silent nodes; from the hub's tick.
    pub(super) fn cluster_tick(&mut self, now: Instant) {
        if self.cluster.is_none() {
            return;
        }
        if now.duration_since(self.last_heartbeat) >= HEARTBEAT {
            self.last_heartbeat = now;
            let devices: Vec<GatewayId> = self.gateways.keys().copied().collect();
            let gateways = devices
                .into_iter()
                .filter_map(|d| self.announcement(d))
                .collect();
            let relays = self.local_relays();
            self.publish(ClusterMessage::Heartbeat {
                from: self.node,
                gateways,
                relays,
            });
        }
        let gone: Vec<Uuid> = self
            .nodes_seen
            .iter()
            .filter(|(_, seen)| now.duration_since(**seen) > NODE_TIMEOUT)
            .map(|(node, _)| *node)
            .collect();
        for node in gone {
            tracing::warn!(%node, "portal node silent; forgetting its gateways and relays");
            self.nodes_seen.remove(&node);
            let devices: Vec<GatewayId> = self
                .remote_gateways
                .iter()
                .filter(|(_, g)| g.node == node)
                .map(|(d, _)| *d)
                .collect();
            for device in devices {
                self.remote_gateway_down(device);
            }
            let relays: Vec<RelayId> = self
                .remote_relays
                .iter()
                .filter(|(_, r)| r.node == node)
                .map(|(id, _)| *id)
                .collect();
            for id in &relays {
                self.remote_relays.remove(id);
            }
            if !relays.is_empty() {
                self.broadcast_relays(&[], &relays);
            }
        }
    }

    /// After lost cluster messages: re-evaluate everyone, re-announce.
    pub(super) async fn resync(&mut self) {
        let accounts: Vec<Uuid> = self.accounts.keys().copied().collect();
        self.apply_changes(
            accounts
                .into_iter()
                .map(|a| (a, Change::Everything))
                .collect(),
        )
        .await;
        self.last_heartbeat = Instant::now() - HEARTBEAT;
    }
}

/// Candidates cross nodes in NOTIFY payloads (under 8000 bytes): eight of at
/// most 512 bytes each fit.
fn chunks(candidates: Vec<String>) -> impl Iterator<Item = Vec<String>> {
    let mut candidates = candidates.into_iter().peekable();
    std::iter::from_fn(move || {
        candidates.peek()?;
        Some(candidates.by_ref().take(8).collect())
    })
}
