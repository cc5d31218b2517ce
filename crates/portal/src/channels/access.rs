//! Access on first packet (F16, F20): `request_access` -> policy decision ->
//! gateway selection -> `authorize` -> the gateway's `authorized` ->
//! `access_granted`; 15 s without an answer fails closed. Also relays ICE
//! candidates between the two ends of a pair.

use std::time::Instant;

use jiff::Timestamp;
use postern_model::protocol::{
    Authorization, ClientToPortal, DenyReason, GatewayToPortal, Peer, PortalToClient,
    PortalToGateway,
};
use postern_policy::{Decision, Denial, Facts};
use uuid::Uuid;

use super::evaluation::earliest;
use super::hub::{ConnId, ConnKind, Grant, Hub, Pending};
use super::keys::PairIds;

/// Refs are the sender's labels; a long one is abuse, not a label.
const MAX_REF: usize = 128;

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
            } => self.forward_candidates(id, peer_id, candidates, false),
            ClientToPortal::IceCandidatesRemoved {
                peer_id,
                candidates,
            } => self.forward_candidates(id, peer_id, candidates, true),
        }
    }

    pub(super) fn gateway_message(&mut self, id: ConnId, message: GatewayToPortal) {
        match message {
            GatewayToPortal::Authorized { reference } if reference.len() <= MAX_REF => {
                self.authorized(id, &reference)
            }
            GatewayToPortal::Authorized { .. } => {
                self.error(id, None, format!("ref longer than {MAX_REF} bytes"))
            }
            GatewayToPortal::IceCandidates {
                peer_id,
                candidates,
            } => self.forward_candidates(id, peer_id, candidates, false),
            GatewayToPortal::IceCandidatesRemoved {
                peer_id,
                candidates,
            } => self.forward_candidates(id, peer_id, candidates, true),
        }
    }

    fn deny(
        &mut self,
        id: ConnId,
        reference: String,
        resource_id: Uuid,
        reason: DenyReason,
        violated: Vec<String>,
    ) {
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
        resource_id: Uuid,
        connected: &[Uuid],
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
            .decide(graph.groups(client.actor_id), resource_id, &facts);
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
        let Some(gateway_conn) = self.select_gateway(account, resource.site_id, connected) else {
            self.deny(id, reference, resource_id, DenyReason::Offline, vec![]);
            return;
        };
        let conn = &self.conns[&id];
        let ConnKind::Client(client) = &conn.kind else {
            return;
        };
        let gateway = &self.conns[&gateway_conn];
        let ConnKind::Gateway(gateway_kind) = &gateway.kind else {
            return;
        };
        let pair = PairIds {
            client: client.device.id,
            client_key: &conn.public_key,
            gateway: gateway_kind.device.id,
            gateway_key: &gateway.public_key,
        };
        let authorization = Authorization {
            client: Peer {
                id: client.device.id,
                public_key: conn.public_key.clone(),
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
            client_device: client.device.id,
            gateway_device: gateway_kind.device.id,
            gateway_key: gateway.public_key.clone(),
            authorization: authorization.clone(),
            remote_ip: conn.remote_ip,
            country: client.country.clone(),
            identity_provider: client.identity_provider,
            client_verified: client.device.verified,
            client_os: client.device.os.clone(),
            token_id: conn.token_id,
            token_expires: conn.token_expires,
        };
        let portal_ref = self.next_ref();
        self.pending.insert(
            portal_ref.clone(),
            Pending {
                client_conn: id,
                client_ref: reference,
                gateway_conn,
                deadline: Instant::now() + self.state.authorize_timeout,
                grant,
            },
        );
        self.send_gateway(
            gateway_conn,
            PortalToGateway::Authorize {
                reference: portal_ref,
                authorization: Box::new(authorization),
            },
        );
    }

    /// Among the site's online gateways: one the client already uses, else
    /// the least loaded, ties broken at random (F20).
    fn select_gateway(&mut self, account: Uuid, site: Uuid, connected: &[Uuid]) -> Option<ConnId> {
        let mut candidates: Vec<(ConnId, Uuid)> = self
            .gateways
            .iter()
            .filter_map(|(device, conn_id)| {
                let conn = self.conns.get(conn_id)?;
                match &conn.kind {
                    ConnKind::Gateway(g) if conn.account == Some(account) && g.site_id == site => {
                        Some((*conn_id, *device))
                    }
                    _ => None,
                }
            })
            .collect();
        candidates.sort_unstable();
        if let Some(preferred) = candidates
            .iter()
            .find(|(_, device)| connected.contains(device))
        {
            return Some(preferred.0);
        }
        let loads: Vec<u64> = candidates
            .iter()
            .map(|(_, d)| self.gateway_load(*d))
            .collect();
        let least = *loads.iter().min()?;
        let tied: Vec<ConnId> = candidates
            .iter()
            .zip(&loads)
            .filter(|(_, load)| **load == least)
            .map(|((conn, _), _)| *conn)
            .collect();
        let pick = self.random(tied.len());
        tied.get(pick).copied()
    }

    fn authorized(&mut self, gateway_conn: ConnId, reference: &str) {
        let Some(pending) = self.pending.get(reference) else {
            // Late (already timed out) or unknown: nothing to do.
            return;
        };
        if pending.gateway_conn != gateway_conn {
            self.error(
                gateway_conn,
                Some(reference.to_string()),
                "unknown ref".to_string(),
            );
            return;
        }
        let Some(pending) = self.pending.remove(reference) else {
            return;
        };
        let grant = pending.grant;
        let gateway = &self.conns[&gateway_conn];
        let ConnKind::Gateway(gateway_kind) = &gateway.kind else {
            return;
        };
        let granted = PortalToClient::AccessGranted {
            reference: pending.client_ref,
            resource_id: grant.authorization.resource.id,
            gateway: Peer {
                id: gateway_kind.device.id,
                public_key: gateway.public_key.clone(),
                ipv4: gateway_kind.device.ipv4,
                ipv6: gateway_kind.device.ipv6,
            },
            preshared_key: grant.authorization.preshared_key.clone(),
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
        if let Some(&gateway) = self.gateways.get(&grant.gateway_device) {
            self.send_gateway(
                gateway,
                PortalToGateway::Revoke {
                    client_id: key.0,
                    resource_id: key.1,
                },
            );
        }
    }

    /// Passes candidates to the peer, only between the two ends of a grant
    /// or a pending request.
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
                let me = client.device.id;
                if !self.paired(me, peer_device) {
                    return;
                }
                let Some(&target) = self.gateways.get(&peer_device) else {
                    return;
                };
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
                self.send_gateway(target, message);
            }
            ConnKind::Gateway(gateway) => {
                let me = gateway.device.id;
                if !self.paired(peer_device, me) {
                    return;
                }
                let Some(&target) = self.clients.get(&peer_device) else {
                    return;
                };
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
                self.send_client(target, message);
            }
            ConnKind::Relay(_) => {}
        }
    }

    fn paired(&self, client_device: Uuid, gateway_device: Uuid) -> bool {
        self.grants
            .values()
            .any(|g| g.client_device == client_device && g.gateway_device == gateway_device)
            || self.pending.values().any(|p| {
                p.grant.client_device == client_device && p.grant.gateway_device == gateway_device
            })
    }
}
