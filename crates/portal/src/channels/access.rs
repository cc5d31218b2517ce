//! Access on first packet (F16, F20): `request_access` -> policy decision ->
//! gateway selection -> `authorize` -> the gateway's `authorized` ->
//! `access_granted`; 15 s without an answer fails closed. Also relays ICE
//! candidates between the two ends of a pair. The gateway may be connected to
//! another portal node: `routing` carries the messages there.

use std::time::Instant;

use jiff::Timestamp;
use postern_model::protocol::{
    Authorization, ClientToPortal, DenyReason, GatewayToPortal, Peer, PortalToClient,
    PortalToGateway,
};
use postern_model::{ClientId, GatewayId, ResourceId, SiteId};
use postern_policy::{Decision, Denial, Facts};
use uuid::Uuid;

use super::evaluation::earliest;
use super::hub::{ConnId, ConnKind, GatewayRoute, Grant, Hub, Pending};
use super::keys::PairIds;

/// Refs are the sender's labels; a long one is abuse, not a label.
const MAX_REF: usize = 128;

/// A gateway picked for a request.
pub(super) struct Chosen {
    pub route: GatewayRoute,
    pub peer: Peer<GatewayId>,
}

impl Hub {
    pub(super) fn client_message(&mut self, id: ConnId, message: ClientToPortal) {
        match message {
            ClientToPortal::RequestAccess {
                reference,
                resource_id,
                connected_gateway_ids,
            } => {
                if reference.len() > MAX_REF || connected_gateway_ids.len() > 64 {
                    self.error(
                        id,
                        None,
                        format!("ref longer than {MAX_REF} bytes or too many gateway ids"),
                    );
                    return;
                }
                self.request_access(id, reference, resource_id, &connected_gateway_ids)
            }
            ClientToPortal::IceCandidates {
                peer_id,
                candidates,
            } => self.forward_candidates(id, peer_id.0, candidates, false),
            ClientToPortal::IceCandidatesRemoved {
                peer_id,
                candidates,
            } => self.forward_candidates(id, peer_id.0, candidates, true),
        }
    }

    pub(super) fn gateway_message(&mut self, id: ConnId, message: GatewayToPortal) {
        match message {
            GatewayToPortal::Authorized { reference } if reference.len() <= MAX_REF => {
                self.local_authorized(id, &reference)
            }
            GatewayToPortal::Authorized { .. } => {
                self.error(id, None, format!("ref longer than {MAX_REF} bytes"))
            }
            GatewayToPortal::IceCandidates {
                peer_id,
                candidates,
            } => self.forward_candidates(id, peer_id.0, candidates, false),
            GatewayToPortal::IceCandidatesRemoved {
                peer_id,
                candidates,
            } => self.forward_candidates(id, peer_id.0, candidates, true),
        }
    }

    fn deny(
        &mut self,
        id: ConnId,
        reference: String,
        resource_id: ResourceId,
        reason: DenyReason,
        violated: Vec<String>,
    ) {
        self.state.metrics.denied(reason);
        self.send_client(
            id,
            PortalToClient::AccessDenied {
                reference,
                resource_id,
                reason,
                violated,
            },
        );
    }

    fn request_access(
        &mut self,
        id: ConnId,
        reference: String,
        resource_id: ResourceId,
        connected: &[GatewayId],
    ) {
        let now = Timestamp::now();
        let Some(conn) = self.conns.get(&id) else {
            return;
        };
        let (Some(account), ConnKind::Client(client)) = (conn.account, &conn.kind) else {
            return;
        };
        let Some(graph) = self.accounts.get(&account) else {
            return;
        };
        let Some(resource) = client.visible.get(&resource_id).cloned() else {
            self.deny(id, reference, resource_id, DenyReason::NotFound, vec![]);
            return;
        };
        let facts = Facts {
            now,
            remote_ip: Some(conn.remote_ip),
            country: client.country.as_deref(),
            identity_provider: client.identity_provider,
            client_verified: client.device.verified,
            client_os: client.device.os.as_deref(),
        };
        let decision = graph
            .policies
            .decide(graph.groups(client.actor_id), resource_id.0, &facts);
        let expires_at = match decision {
            Decision::Allow { expires_at, .. } => expires_at,
            Decision::Deny(denial) => {
                let violated = match denial {
                    Denial::NoPolicy => vec![],
                    Denial::Conditions(properties) => {
                        properties.iter().map(|p| p.as_str().to_string()).collect()
                    }
                };
                self.deny(id, reference, resource_id, DenyReason::Forbidden, violated);
                return;
            }
        };
        // Token expiry bounds every authorization made under the token.
        let expires_at = earliest(expires_at, conn.token_expires);
        let Some(chosen) = self.select_gateway(account, resource.site_id, connected) else {
            self.deny(id, reference, resource_id, DenyReason::Offline, vec![]);
            return;
        };
        let conn = &self.conns[&id];
        let ConnKind::Client(client) = &conn.kind else {
            return;
        };
        let client_id = ClientId(client.device.id);
        let pair = PairIds {
            client: client_id,
            client_key: &conn.public_key,
            gateway: chosen.peer.id,
            gateway_key: &chosen.peer.public_key,
        };
        let authorization = Authorization {
            client: Peer {
                id: client_id,
                public_key: conn.public_key,
                ipv4: client.device.ipv4,
                ipv6: client.device.ipv6,
            },
            resource,
            preshared_key: self.pair_secrets.preshared_key(pair),
            ice: self.pair_secrets.ice(pair),
            expires_at,
        };
        let grant = Grant {
            account,
            actor_id: client.actor_id,
            client_device: client_id,
            gateway_device: chosen.peer.id,
            gateway_key: chosen.peer.public_key,
            authorization: authorization.clone(),
            remote_ip: conn.remote_ip,
            country: client.country.clone(),
            identity_provider: client.identity_provider,
            client_verified: client.device.verified,
            client_os: client.device.os.clone(),
            token_id: conn.token_id,
            token_expires: conn.token_expires,
        };
        let gateway_device = chosen.peer.id;
        let portal_ref = self.next_ref();
        self.pending.insert(
            portal_ref.clone(),
            Pending {
                client_conn: id,
                client_ref: reference,
                gateway: chosen.route,
                gateway_peer: chosen.peer,
                deadline: Instant::now() + self.state.authorize_timeout,
                grant,
            },
        );
        self.deliver_to_gateway(
            gateway_device,
            PortalToGateway::Authorize {
                reference: portal_ref,
                authorization: Box::new(authorization),
            },
        );
    }

    /// Among the site's online gateways (on any portal node): one the client
    /// already uses, else the least loaded, ties broken at random (F20).
    fn select_gateway(
        &mut self,
        account: Uuid,
        site: SiteId,
        connected: &[GatewayId],
    ) -> Option<Chosen> {
        let mut candidates: Vec<(Chosen, u64)> = Vec::new();
        for conn_id in self.gateways.values() {
            let Some(conn) = self.conns.get(conn_id) else {
                continue;
            };
            if let ConnKind::Gateway(g) = &conn.kind
                && conn.account == Some(account)
                && g.site_id == site.0
            {
                let peer = Peer {
                    id: GatewayId(g.device.id),
                    public_key: conn.public_key,
                    ipv4: g.device.ipv4,
                    ipv6: g.device.ipv6,
                };
                candidates.push((
                    Chosen {
                        route: GatewayRoute::Local(*conn_id),
                        peer,
                    },
                    self.gateway_load(GatewayId(g.device.id)),
                ));
            }
        }
        for remote in self.remote_gateways.values() {
            let info = &remote.info;
            if info.account == account
                && info.site_id == site.0
                && !self.gateways.contains_key(&info.device)
            {
                candidates.push((
                    Chosen {
                        route: GatewayRoute::Remote(remote.node),
                        peer: Peer {
                            id: info.device,
                            public_key: info.public_key,
                            ipv4: info.ipv4,
                            ipv6: info.ipv6,
                        },
                    },
                    info.load.max(self.gateway_load(info.device)),
                ));
            }
        }
        candidates.sort_by_key(|(chosen, _)| chosen.peer.id);
        if let Some(index) = candidates
            .iter()
            .position(|(chosen, _)| connected.contains(&chosen.peer.id))
        {
            return Some(candidates.swap_remove(index).0);
        }
        let least = candidates.iter().map(|(_, load)| *load).min()?;
        let mut tied: Vec<Chosen> = candidates
            .into_iter()
            .filter(|(_, load)| *load == least)
            .map(|(chosen, _)| chosen)
            .collect();
        let pick = self.random(tied.len());
        Some(tied.swap_remove(pick))
    }

    /// `authorized` from a gateway connected here: for a request of this
    /// node, or of the node that forwarded it.
    fn local_authorized(&mut self, gateway_conn: ConnId, reference: &str) {
        if let Some(origin) = self.remote_pending.remove(reference) {
            self.publish(super::cluster::ClusterMessage::Authorized {
                from: self.node,
                to: origin,
                reference: reference.to_string(),
            });
            return;
        }
        match self.pending.get(reference) {
            // Late (already timed out) or a resync: nothing to do.
            None => {}
            Some(pending) if pending.gateway == GatewayRoute::Local(gateway_conn) => {
                self.authorized(reference)
            }
            Some(_) => self.error(
                gateway_conn,
                Some(reference.to_string()),
                "unknown ref".to_string(),
            ),
        }
    }

    /// The gateway confirmed: the client hears `access_granted`.
    pub(super) fn authorized(&mut self, reference: &str) {
        let Some(pending) = self.pending.remove(reference) else {
            return;
        };
        let grant = pending.grant;
        let granted = PortalToClient::AccessGranted {
            reference: pending.client_ref,
            resource_id: grant.authorization.resource.id,
            gateway: pending.gateway_peer,
            preshared_key: grant.authorization.preshared_key,
            ice: grant.authorization.ice.clone(),
            expires_at: grant.authorization.expires_at,
        };
        let gateway_device = grant.gateway_device;
        let key = (grant.client_device, grant.authorization.resource.id);
        // A grant on another gateway for the same resource is replaced.
        if let Some(old) = self.grants.get(&key)
            && old.gateway_device != gateway_device
        {
            self.revoke_grant(key);
        }
        self.grants.insert(key, grant);
        self.refresh_gateway_presence(gateway_device);
        self.state
            .metrics
            .access_granted
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.send_client(pending.client_conn, granted);
    }

    /// A pending request that cannot complete: the client hears `offline`.
    pub(super) fn fail_pending(&mut self, reference: &str) {
        if let Some(pending) = self.pending.remove(reference) {
            let resource_id = pending.grant.authorization.resource.id;
            self.withdraw_pending(&pending.grant);
            self.deny(
                pending.client_conn,
                pending.client_ref,
                resource_id,
                DenyReason::Offline,
                vec![],
            );
        }
    }

    /// The gateway may have applied an authorization it never confirmed (or
    /// confirmed too late): take it back, unless a grant on that same
    /// gateway still covers the pair.
    pub(super) fn withdraw_pending(&mut self, grant: &Grant) {
        let key = (grant.client_device, grant.authorization.resource.id);
        if self
            .grants
            .get(&key)
            .is_some_and(|g| g.gateway_device == grant.gateway_device)
        {
            return;
        }
        self.deliver_to_gateway(
            grant.gateway_device,
            PortalToGateway::Revoke {
                client_id: key.0,
                resource_id: key.1,
            },
        );
    }

    /// Passes candidates to the peer, only between the two ends of a grant
    /// or a pending request (or, for a gateway here, of a pair another node
    /// made).
    fn forward_candidates(
        &mut self,
        from: ConnId,
        peer_device: Uuid,
        candidates: Vec<String>,
        removed: bool,
    ) {
        let Some(conn) = self.conns.get(&from) else {
            return;
        };
        if candidates.len() > 64 || candidates.iter().any(|c| c.len() > 512) {
            self.error(from, None, "too many or too long candidates".to_string());
            return;
        }
        match &conn.kind {
            ConnKind::Client(client) => {
                let me = ClientId(client.device.id);
                let peer_device = GatewayId(peer_device);
                if !self.paired(me, peer_device) {
                    return;
                }
                let message = if removed {
                    PortalToGateway::IceCandidatesRemoved {
                        peer_id: me,
                        candidates,
                    }
                } else {
                    PortalToGateway::IceCandidates {
                        peer_id: me,
                        candidates,
                    }
                };
                self.deliver_to_gateway(peer_device, message);
            }
            ConnKind::Gateway(gateway) => {
                let me = GatewayId(gateway.device.id);
                let peer_device = ClientId(peer_device);
                let message = if removed {
                    PortalToClient::IceCandidatesRemoved {
                        peer_id: me,
                        candidates,
                    }
                } else {
                    PortalToClient::IceCandidates {
                        peer_id: me,
                        candidates,
                    }
                };
                if self.paired(peer_device, me) {
                    if let Some(&target) = self.clients.get(&peer_device) {
                        self.send_client(target, message);
                    }
                } else if let Some(&node) = self.remote_pairs.get(&(peer_device, me)) {
                    self.deliver_to_remote_client(node, peer_device, message);
                }
            }
            ConnKind::Relay(_) => {}
        }
    }

    fn paired(&self, client_device: ClientId, gateway_device: GatewayId) -> bool {
        self.grants
            .values()
            .any(|g| g.client_device == client_device && g.gateway_device == gateway_device)
            || self.pending.values().any(|p| {
                p.grant.client_device == client_device && p.grant.gateway_device == gateway_device
            })
    }
}
