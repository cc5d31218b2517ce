//! Relays registering over `/v1/relay`, and the TURN REST credentials the
//! portal hands to clients and gateways for them (F18).

use std::net::{IpAddr, SocketAddr};
use std::time::Instant;

use jiff::{SignedDuration, Timestamp};
use postern_model::RelayId;
use postern_model::protocol::{PortalToClient, PortalToGateway, PortalToRelay, RelayInfo};
use postern_turn::credentials::{rest_password, rest_username};
use uuid::Uuid;

use super::cluster::{ClusterMessage, RelayAnnouncement};
use super::hub::{ConnId, ConnKind, Hub, RELAY_CREDENTIAL_LIFETIME};

impl Hub {
    pub(super) fn relay_registered(
        &mut self,
        id: ConnId,
        public_addresses: Vec<IpAddr>,
        port: u16,
    ) {
        if public_addresses.is_empty() || public_addresses.len() > 4 || port == 0 {
            self.error(
                id,
                None,
                "register needs 1-4 public addresses and a port".to_string(),
            );
            return;
        }
        let Some(conn) = self.conns.get_mut(&id) else {
            return;
        };
        let ConnKind::Relay(relay) = &mut conn.kind else {
            return;
        };
        let first = relay.addresses.is_empty();
        relay.addresses = public_addresses
            .iter()
            .map(|ip| SocketAddr::new(*ip, port))
            .collect();
        let relay_id = relay.relay_id;
        self.send(
            id,
            &PortalToRelay::Registered {
                relay_id,
                auth_secret: self.turn_secret.clone(),
            },
        );
        tracing::info!(relay = %relay_id, addresses = ?public_addresses, port, "relay registered");
        if first {
            self.broadcast_relays(&[relay_id], &[]);
        }
        self.publish(ClusterMessage::RelayUp {
            from: self.node,
            relay: RelayAnnouncement {
                id: relay_id,
                addresses: public_addresses
                    .iter()
                    .map(|ip| SocketAddr::new(*ip, port))
                    .collect(),
            },
        });
    }

    pub(super) fn relay_gone(&mut self, relay_id: RelayId) {
        self.broadcast_relays(&[], &[relay_id]);
        self.publish(ClusterMessage::RelayDown {
            from: self.node,
            id: relay_id,
        });
    }

    /// The relays registered with this node.
    pub(super) fn local_relays(&self) -> Vec<RelayAnnouncement> {
        self.conns
            .values()
            .filter_map(|conn| match &conn.kind {
                ConnKind::Relay(relay) if !relay.addresses.is_empty() => Some(RelayAnnouncement {
                    id: relay.relay_id,
                    addresses: relay.addresses.clone(),
                }),
                _ => None,
            })
            .collect()
    }

    /// Credentials for every registered relay, for one device.
    pub(super) fn relay_credentials(&self, device: Uuid) -> Vec<RelayInfo> {
        self.relay_infos(device, None)
    }

    fn relay_infos(&self, device: Uuid, only: Option<&[RelayId]>) -> Vec<RelayInfo> {
        let expires_at = Timestamp::now()
            + SignedDuration::try_from(RELAY_CREDENTIAL_LIFETIME).unwrap_or(SignedDuration::ZERO);
        let expiry_unix = expires_at.as_second().max(0) as u64;
        let username = rest_username(expiry_unix, &device.to_string());
        let password = rest_password(self.turn_secret.as_bytes(), &username);
        let mut relays: Vec<RelayInfo> = self
            .local_relays()
            .into_iter()
            .chain(self.remote_relays.values().map(|r| r.relay.clone()))
            .filter(|relay| only.is_none_or(|ids| ids.contains(&relay.id)))
            .map(|relay| RelayInfo {
                id: relay.id,
                addresses: relay.addresses,
                username: username.clone(),
                password: password.clone(),
                expires_at,
            })
            .collect();
        relays.sort_by_key(|r| r.id);
        relays
    }

    pub(super) fn broadcast_relays(&mut self, added: &[RelayId], removed: &[RelayId]) {
        let targets: Vec<(ConnId, Uuid, bool)> = self
            .conns
            .iter()
            .filter_map(|(id, conn)| match &conn.kind {
                ConnKind::Client(c) => Some((*id, c.device.id, true)),
                ConnKind::Gateway(g) => Some((*id, g.device.id, false)),
                ConnKind::Relay(_) => None,
            })
            .collect();
        for (id, device, is_client) in targets {
            let added = self.relay_infos(device, Some(added));
            let removed = removed.to_vec();
            if is_client {
                self.send_client(id, PortalToClient::RelaysChanged { added, removed });
            } else {
                self.send_gateway(id, PortalToGateway::RelaysChanged { added, removed });
            }
        }
    }

    /// Sends fresh credentials for every relay before the old ones expire.
    pub(super) fn renew_relay_credentials(&mut self, id: ConnId, now: Instant) {
        let Some(conn) = self.conns.get_mut(&id) else {
            return;
        };
        conn.relays_issued = now;
        let (device, is_client) = match &conn.kind {
            ConnKind::Client(c) => (c.device.id, true),
            ConnKind::Gateway(g) => (g.device.id, false),
            ConnKind::Relay(_) => return,
        };
        let added = self.relay_credentials(device);
        if added.is_empty() {
            return;
        }
        if is_client {
            self.send_client(
                id,
                PortalToClient::RelaysChanged {
                    added,
                    removed: vec![],
                },
            );
        } else {
            self.send_gateway(
                id,
                PortalToGateway::RelaysChanged {
                    added,
                    removed: vec![],
                },
            );
        }
    }
}
