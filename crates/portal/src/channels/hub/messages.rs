//! The router's message side: what clients, gateways and relays send,
//! handed to the sub-machine each concerns.

use std::time::Instant;

use jiff::Timestamp;
use postern_model::GatewayId;
use postern_model::protocol::{
    ClientToPortal, FlowRecord, GatewayToPortal, MAX_FLOWS_PER_BATCH, RelayToPortal,
};

use super::Hub;
use super::access::{MAX_REF, Request};
use super::grants::GatewayRoute;
use super::ice;
use super::io::{ConnId, Inbound, Output};
use super::post::Post;
use super::presence::Role;
use crate::channels::cluster::ClusterMessage;

impl Hub {
    pub(super) fn message(
        &mut self,
        conn: ConnId,
        message: Inbound,
        now: Instant,
        wall: Timestamp,
    ) {
        let Some(role) = self.presence.role(conn) else {
            return;
        };
        match (message, role) {
            (Inbound::Client(message), Role::Client) => {
                self.client_message(conn, message, now, wall)
            }
            (Inbound::Gateway(message), Role::Gateway) => self.gateway_message(conn, message),
            (
                Inbound::Relay(RelayToPortal::Register {
                    public_addresses,
                    port,
                    tls,
                }),
                Role::Relay,
            ) => self
                .relays
                .register(conn, &public_addresses, port, tls, post_of!(self), wall),
            (Inbound::Invalid { reference, message }, _) => {
                post_of!(self).error(conn, reference, message)
            }
            // Sockets parse for their token's role: another role's message
            // cannot come.
            (_, role) => tracing::debug!(conn, ?role, "a message of another role; ignored"),
        }
    }

    fn client_message(
        &mut self,
        conn: ConnId,
        message: ClientToPortal,
        now: Instant,
        wall: Timestamp,
    ) {
        match message {
            ClientToPortal::RequestAccess {
                reference,
                resource_id,
                connected_gateway_ids,
            } => {
                if reference.len() > MAX_REF || connected_gateway_ids.len() > 64 {
                    let message =
                        format!("ref longer than {MAX_REF} bytes or too many gateway ids");
                    post_of!(self).error(conn, None, message);
                    return;
                }
                let Some(asker) = self.presence.asker(conn) else {
                    return;
                };
                let Some(graph) = self.evaluation.graph(asker.account) else {
                    return;
                };
                let resource = self.evaluation.told(asker.peer.id, resource_id).cloned();
                let request = Request {
                    conn,
                    reference,
                    asker,
                    resource,
                    resource_id,
                    connected: &connected_gateway_ids,
                    graph,
                };
                self.access.request(request, post_of!(self), now, wall);
            }
            ClientToPortal::IceCandidates {
                peer_id,
                candidates,
            } => ice::forward(
                &self.access,
                conn,
                peer_id.0,
                candidates,
                false,
                post_of!(self),
            ),
            ClientToPortal::IceCandidatesRemoved {
                peer_id,
                candidates,
            } => ice::forward(
                &self.access,
                conn,
                peer_id.0,
                candidates,
                true,
                post_of!(self),
            ),
        }
    }

    fn gateway_message(&mut self, conn: ConnId, message: GatewayToPortal) {
        match message {
            GatewayToPortal::Flows { batch, flows } => self.gateway_flows(conn, batch, flows),
            GatewayToPortal::Authorized { reference } if reference.len() <= MAX_REF => {
                self.gateway_authorized(conn, &reference)
            }
            GatewayToPortal::Authorized { .. } => {
                post_of!(self).error(conn, None, format!("ref longer than {MAX_REF} bytes"))
            }
            GatewayToPortal::IceCandidates {
                peer_id,
                candidates,
            } => ice::forward(
                &self.access,
                conn,
                peer_id.0,
                candidates,
                false,
                post_of!(self),
            ),
            GatewayToPortal::IceCandidatesRemoved {
                peer_id,
                candidates,
            } => ice::forward(
                &self.access,
                conn,
                peer_id.0,
                candidates,
                true,
                post_of!(self),
            ),
        }
    }

    /// `flows` from a gateway: stored in the gateway's own account (a
    /// gateway cannot write another account's log), answered once stored.
    fn gateway_flows(&mut self, conn: ConnId, batch: u64, flows: Vec<FlowRecord>) {
        if flows.len() > MAX_FLOWS_PER_BATCH {
            post_of!(self).error(
                conn,
                None,
                format!("at most {MAX_FLOWS_PER_BATCH} flows per message"),
            );
            return;
        }
        let Some(connection) = self.presence.get(conn) else {
            return;
        };
        let (Some(account), Some(device)) = (connection.account, connection.device()) else {
            return;
        };
        let gateway = GatewayId(device.id);
        self.out.push(Output::StoreFlows {
            conn,
            account,
            gateway,
            batch,
            flows,
        });
    }

    /// `authorized` from a gateway connected here: for a request of this
    /// node, or of the node that forwarded it.
    fn gateway_authorized(&mut self, conn: ConnId, reference: &str) {
        let gateway = self
            .presence
            .get(conn)
            .and_then(|c| c.device())
            .map(|d| GatewayId(d.id));
        if let Some(gateway) = gateway
            && let Some(origin) = self.routing.take_forwarded(reference, gateway)
        {
            post_of!(self).publish(ClusterMessage::Authorized {
                from: self.routing.node(),
                to: origin,
                reference: reference.to_string(),
            });
            return;
        }
        if self.routing.is_forwarded(reference) {
            // Forwarded to another gateway: not this one's to confirm.
            tracing::warn!(conn, "a gateway confirmed an authorization it was not sent");
            post_of!(self).error(conn, Some(reference.to_string()), "unknown ref".to_string());
            return;
        }
        match self.access.route(reference) {
            // Late (already timed out) or a resync: nothing to do.
            None => {}
            Some(route) if route == GatewayRoute::Local(conn) => {
                self.access.authorized(reference, post_of!(self))
            }
            Some(_) => {
                post_of!(self).error(conn, Some(reference.to_string()), "unknown ref".to_string())
            }
        }
    }
}
