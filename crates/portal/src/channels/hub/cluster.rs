//! The router's cluster side: messages from the other portal nodes, this
//! node's heartbeat, and the gateways other nodes serve coming and going.
//! The tables live in `routing`; this side composes them with `access` and
//! `presence`.

use std::time::Instant;

use jiff::Timestamp;
use postern_model::GatewayId;
use postern_model::protocol::PortalToGateway;
use uuid::Uuid;

use super::Hub;
use super::grants::GatewayRoute;
use super::io::{Output, PresenceUpdate};
use super::post::Post;
use super::presence::ConnKind;
use crate::change::Change;
use crate::channels::cluster::{ClusterMessage, GatewayAnnouncement};

impl Hub {
    /// What this node announces about one of its gateways.
    pub(super) fn announcement(&self, device: GatewayId) -> Option<GatewayAnnouncement> {
        let conn = self.presence.get(self.presence.gateway(device)?)?;
        let ConnKind::Gateway {
            site_id,
            device: facts,
        } = &conn.kind
        else {
            return None;
        };
        Some(GatewayAnnouncement {
            account: conn.account?,
            site_id: *site_id,
            device,
            public_key: conn.public_key,
            ipv4: facts.ipv4,
            ipv6: facts.ipv6,
            load: self.access.load(device),
        })
    }

    /// The heartbeat, and forgetting nodes gone silent.
    pub(super) fn cluster_tick(&mut self, now: Instant, wall: Timestamp) {
        if !self.routing.clustered() {
            return;
        }
        self.routing.prune(now);
        if self.routing.heartbeat_due(now) {
            let gateways = self
                .presence
                .gateway_devices()
                .into_iter()
                .filter_map(|device| self.announcement(device))
                .collect();
            let relays = self.relays.local();
            post_of!(self).publish(ClusterMessage::Heartbeat {
                from: self.routing.node(),
                gateways,
                relays,
            });
        }
        for (node, gateways) in self.routing.forget_silent(now) {
            tracing::warn!(%node, "portal node silent; forgetting its gateways and relays");
            for device in gateways {
                self.remote_gateway_down(device);
            }
            self.relays.forget_node(node, post_of!(self), wall);
        }
    }

    pub(super) fn cluster(&mut self, message: ClusterMessage, now: Instant, wall: Timestamp) {
        let from = message.from();
        match message {
            ClusterMessage::Change {
                account, change, ..
            } => self.changed(account, vec![change], wall),
            ClusterMessage::Heartbeat {
                gateways, relays, ..
            } => {
                for gateway in gateways {
                    self.remote_gateway_up(from, gateway, false);
                }
                for relay in relays {
                    self.relays.remote_up(from, relay, post_of!(self), wall);
                }
            }
            ClusterMessage::GatewayUp { gateway, .. } => {
                self.remote_gateway_up(from, gateway, true)
            }
            ClusterMessage::GatewayDown { device, .. } => self.remote_gateway_down(device),
            ClusterMessage::RelayUp { relay, .. } => {
                self.relays.remote_up(from, relay, post_of!(self), wall)
            }
            ClusterMessage::RelayDown { id, .. } => {
                self.relays.remote_down(id, post_of!(self), wall)
            }
            ClusterMessage::RelayRevoke {
                devices, not_after, ..
            } => self
                .relays
                .remote_revoke(&devices, not_after, post_of!(self), wall),
            ClusterMessage::ToGateway {
                device, message, ..
            } => {
                let Some(conn) = self.presence.gateway(device) else {
                    return;
                };
                match message.as_ref() {
                    PortalToGateway::Authorize {
                        reference,
                        authorization,
                    } => self.routing.forwarded(
                        reference.clone(),
                        authorization.client.id,
                        authorization.resource.id,
                        device,
                        from,
                        now,
                    ),
                    PortalToGateway::Revoke {
                        client_id,
                        resource_id,
                    } => self.routing.revoked(*client_id, *resource_id, device),
                    _ => {}
                }
                post_of!(self).gateway(conn, *message);
            }
            ClusterMessage::ToClient {
                device, message, ..
            } => post_of!(self).deliver_to_client(device, *message),
            ClusterMessage::Authorized { reference, .. } => {
                if self.access.route(&reference) == Some(GatewayRoute::Remote(from)) {
                    self.access.authorized(&reference, post_of!(self));
                }
            }
        }
    }

    fn remote_gateway_up(&mut self, node: Uuid, info: GatewayAnnouncement, announced: bool) {
        let device = info.device;
        if self.presence.gateway(device).is_some() {
            // It moved here; the other node's news is stale.
            return;
        }
        let key = info.public_key;
        self.out.push(Output::Presence(PresenceUpdate::Gateway {
            device,
            load: Some(info.load),
        }));
        let repeat = self.routing.gateway_up(node, info);
        if repeat && !announced {
            return;
        }
        // The gateway (re)joined: resync what this node granted on it, or
        // void it if the gateway restarted with a new key.
        let (current, stale) = self.access.on_gateway(device, &key);
        for authorization in current {
            let reference = self.access.next_ref();
            post_of!(self).deliver_to_gateway(
                device,
                PortalToGateway::Authorize {
                    reference,
                    authorization: Box::new(authorization),
                },
            );
        }
        for key in stale {
            self.access.revoke(key, post_of!(self));
        }
    }

    fn remote_gateway_down(&mut self, device: GatewayId) {
        if !self.routing.gateway_down(device) {
            return;
        }
        if self.presence.gateway(device).is_none() {
            self.out.push(Output::Presence(PresenceUpdate::Gateway {
                device,
                load: None,
            }));
        }
        // Requests waiting on it fail closed now.
        self.access.fail_where(
            |route, gateway| matches!(route, GatewayRoute::Remote(_)) && gateway == device,
            post_of!(self),
        );
    }

    /// After lost cluster messages: re-evaluate everyone, re-announce.
    pub(super) fn resync(&mut self, wall: Timestamp) {
        for account in self.evaluation.accounts().all() {
            self.changed(account, vec![Change::Everything], wall);
        }
        self.routing.heartbeat_now();
    }
}
