//! The hub's outgoing side. `Outbox` collects outputs, and the channels to
//! close once the current input is handled; `Post` is borrowed from the hub
//! for one step and delivers protocol messages to devices wherever they are:
//! this node's connection, or the node that has the gateway.

use std::collections::VecDeque;

use postern_model::protocol::{
    DenyReason, DisconnectReason, PortalToClient, PortalToGateway, PortalToRelay,
};
use postern_model::{ClientId, GatewayId, ResourceId};
use uuid::Uuid;

use super::super::cluster::{ClusterMessage, chunks};
use super::grants::Asker;
use super::io::{ConnId, Frame, GrantWrite, Metric, Output, PresenceUpdate, Refused};
use super::presence::{Presence, Role};
use super::routing::Routing;

#[derive(Debug, Default)]
pub(super) struct Outbox {
    outputs: VecDeque<Output>,
    /// Channels to close once the current input is handled, and why.
    doomed: Vec<(ConnId, Option<DisconnectReason>)>,
    /// Devices whose right to relays ended during the current input.
    relay_revoked: Vec<Uuid>,
    /// The last ledger write's sequence number.
    seq: u64,
}

/// Room for outputs the queue keeps once drained.
const KEPT_OUTPUTS: usize = 1024;

impl Outbox {
    /// The sequence number of the last ledger write given out.
    pub(super) fn seq(&self) -> u64 {
        self.seq
    }

    /// A ledger write, numbered; its number.
    pub(super) fn persist(&mut self, write: GrantWrite) -> u64 {
        self.seq += 1;
        let seq = self.seq;
        self.outputs.push_back(Output::Persist { seq, write });
        seq
    }

    pub(super) fn push(&mut self, output: Output) {
        self.outputs.push_back(output);
    }

    pub(super) fn pop(&mut self) -> Option<Output> {
        let output = self.outputs.pop_front();
        // A change fanned out to every client fills the queue once with an
        // output each (hundreds of bytes): not kept for the next.
        if output.is_none() && self.outputs.capacity() > KEPT_OUTPUTS {
            self.outputs.shrink_to(KEPT_OUTPUTS);
        }
        output
    }

    /// Closes a channel after this input; with a reason, it is told why.
    pub(super) fn doom(&mut self, conn: ConnId, reason: Option<DisconnectReason>) {
        self.doomed.push((conn, reason));
    }

    /// The devices whose relay credentials were revoked since the last call.
    pub(super) fn take_relay_revoked(&mut self) -> Vec<Uuid> {
        std::mem::take(&mut self.relay_revoked)
    }

    pub(super) fn next_doomed(&mut self) -> Option<(ConnId, Option<DisconnectReason>)> {
        self.doomed.pop()
    }
}

pub(super) struct Post<'a> {
    presence: &'a Presence,
    routing: &'a Routing,
    out: &'a mut Outbox,
}

impl<'a> Post<'a> {
    pub(super) fn new(presence: &'a Presence, routing: &'a Routing, out: &'a mut Outbox) -> Self {
        Post {
            presence,
            routing,
            out,
        }
    }

    pub(super) fn presence(&self) -> &Presence {
        self.presence
    }

    pub(super) fn routing(&self) -> &Routing {
        self.routing
    }

    pub(super) fn doom(&mut self, conn: ConnId, reason: Option<DisconnectReason>) {
        self.out.doom(conn, reason);
    }

    /// A frame for a channel that is still here.
    pub(super) fn send(&mut self, conn: ConnId, frame: Frame) {
        if self.presence.get(conn).is_some() {
            self.out.push(Output::Send { conn, frame });
        }
    }

    pub(super) fn client(&mut self, conn: ConnId, message: PortalToClient) {
        self.send(conn, Frame::Client(message));
    }

    pub(super) fn gateway(&mut self, conn: ConnId, message: PortalToGateway) {
        self.send(conn, Frame::Gateway(message));
    }

    /// An `error` frame of the channel's role.
    pub(super) fn error(&mut self, conn: ConnId, reference: Option<String>, message: String) {
        let frame = match self.presence.role(conn) {
            Some(Role::Client) => Frame::Client(PortalToClient::Error { reference, message }),
            Some(Role::Gateway) => Frame::Gateway(PortalToGateway::Error { reference, message }),
            Some(Role::Relay) => Frame::Relay(PortalToRelay::Error { reference, message }),
            None => return,
        };
        self.send(conn, frame);
    }

    /// A `disconnect` frame of the channel's role.
    pub(super) fn farewell(&mut self, conn: ConnId, reason: DisconnectReason) {
        let frame = match self.presence.role(conn) {
            Some(Role::Client) => Frame::Client(PortalToClient::Disconnect { reason }),
            Some(Role::Gateway) => Frame::Gateway(PortalToGateway::Disconnect { reason }),
            Some(Role::Relay) => Frame::Relay(PortalToRelay::Disconnect { reason }),
            None => return,
        };
        self.send(conn, frame);
    }

    /// `access_denied`, counted; reported for the console's live denials
    /// with the asker (`None`: not worth an admin's eye, such as an id the
    /// account does not have).
    pub(super) fn deny(
        &mut self,
        conn: ConnId,
        reference: String,
        resource_id: ResourceId,
        reason: DenyReason,
        violated: Vec<String>,
        asker: Option<&Asker>,
    ) {
        self.out.push(Output::Metric(Metric::Denied(reason)));
        if let Some(asker) = asker {
            self.out.push(Output::Refused(Refused {
                account: asker.account,
                actor: asker.actor_id,
                client: asker.peer.id,
                resource: resource_id,
                reason,
                violated: violated.clone(),
            }));
        }
        self.client(
            conn,
            PortalToClient::AccessDenied {
                reference,
                resource_id,
                reason,
                violated,
            },
        );
    }

    /// To a client device connected here (clients elsewhere hear from
    /// their own node).
    pub(super) fn deliver_to_client(&mut self, device: ClientId, message: PortalToClient) {
        if let Some(conn) = self.presence.client(device) {
            self.client(conn, message);
        }
    }

    /// To a gateway wherever it is connected; `false` if it is nowhere.
    pub(super) fn deliver_to_gateway(
        &mut self,
        device: GatewayId,
        message: PortalToGateway,
    ) -> bool {
        if let Some(conn) = self.presence.gateway(device) {
            self.gateway(conn, message);
            return true;
        }
        let Some(node) = self.routing.gateway_node(device) else {
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
                from: self.routing.node(),
                to: node,
                device,
                message: Box::new(part),
            });
        }
        true
    }

    /// To a client connected to another node.
    pub(super) fn deliver_to_remote_client(
        &mut self,
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
                from: self.routing.node(),
                to: node,
                device,
                message: Box::new(part),
            });
        }
    }

    /// To the other nodes (nothing for a single node).
    pub(super) fn publish(&mut self, message: ClusterMessage) {
        if self.routing.clustered() {
            self.out.push(Output::Publish(message));
        }
    }

    /// A gateway here serves a new number of clients.
    pub(super) fn gateway_load(&mut self, device: GatewayId, load: u64) {
        if self.presence.gateway(device).is_some() {
            self.out.push(Output::Presence(PresenceUpdate::Gateway {
                device,
                load: Some(load),
            }));
        }
    }

    pub(super) fn metric(&mut self, metric: Metric) {
        self.out.push(Output::Metric(metric));
    }

    /// A write to the stored authorizations; its sequence number.
    pub(super) fn persist(&mut self, write: GrantWrite) -> u64 {
        self.out.persist(write)
    }

    /// The device lost its right to be here (revoked token, deleted
    /// device, disabled actor): once the current input is handled, every
    /// relay in the cluster ends its allocations (see `Relays::revoke`).
    pub(super) fn relay_revoke(&mut self, device: Uuid) {
        if !self.out.relay_revoked.contains(&device) {
            self.out.relay_revoked.push(device);
        }
    }
}
