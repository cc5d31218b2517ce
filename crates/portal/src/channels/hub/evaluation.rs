//! Continuous evaluation (F15): each account's policy graph in memory (see
//! `accounts`), and the resource list each connected client was told. When a
//! reloaded graph comes in for committed changes, only the clients the
//! changes can touch are re-evaluated: their lists are diffed
//! (`resource_upserted`/`resource_removed`) and their grants decided again
//! (`access_revoked` + `revoke`). Time windows and tokens expire on the tick.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use jiff::Timestamp;
use postern_model::protocol::{
    DisconnectReason, PortalToClient, PortalToGateway, ResourceDescription,
};
use postern_model::{ClientId, ResourceId};
use uuid::Uuid;

use super::super::graph::{AccountGraph, Offered};
use super::access::Access;
use super::accounts::Accounts;
use super::io::GraphLoad;
use super::io::{GrantKey, GrantWrite, StoredGrant};
use super::post::Post;
use crate::change::Change;

#[derive(Debug, Default)]
pub(super) struct Evaluation {
    accounts: Accounts,
    /// What each connected client device was told it has.
    told: HashMap<ClientId, Offered>,
}

impl Evaluation {
    pub(super) fn accounts(&self) -> &Accounts {
        &self.accounts
    }

    pub(super) fn accounts_mut(&mut self) -> &mut Accounts {
        &mut self.accounts
    }

    pub(super) fn graph(&self, account: Uuid) -> Option<&AccountGraph> {
        self.accounts.graph(account)
    }

    /// A client joined: the resources it is told it has.
    pub(super) fn welcome(
        &mut self,
        account: Uuid,
        device: ClientId,
        actor: Uuid,
    ) -> Vec<ResourceDescription> {
        let offered = self
            .accounts
            .graph(account)
            .map(|graph| graph.offered(actor))
            .unwrap_or_default();
        let resources = offered.iter().cloned().collect();
        self.told.insert(device, offered);
        resources
    }

    /// The client device's channel is gone.
    pub(super) fn farewell(&mut self, device: ClientId) {
        self.told.remove(&device);
    }

    /// A resource as the client was told it (`None`: not offered to it).
    pub(super) fn told(
        &self,
        device: ClientId,
        resource: ResourceId,
    ) -> Option<&ResourceDescription> {
        self.told.get(&device)?.get(resource)
    }

    /// Puts a graph loaded for `changes` (none for a first load or a
    /// refresh) in place with the stored authorizations it read (see
    /// `ledger`), and brings every client they can affect in line with it.
    /// Device facts the load read were applied before (by the router,
    /// which owns them).
    #[allow(clippy::too_many_arguments)]
    pub(super) fn apply(
        &mut self,
        account: Uuid,
        graph: GraphLoad,
        changes: &[Change],
        stored: (Option<Vec<StoredGrant>>, u64),
        access: &mut Access,
        post: &mut Post,
        now: Timestamp,
    ) {
        // The changed resources as they were, to tell their gateways only
        // of real changes.
        let before: HashMap<Uuid, Arc<ResourceDescription>> = changes
            .iter()
            .filter_map(|change| match change {
                Change::Resource(id) => Some((
                    *id,
                    self.accounts.graph(account)?.resources.get(id)?.clone(),
                )),
                _ => None,
            })
            .collect();
        match graph {
            GraphLoad::Whole(graph) => {
                self.accounts.install(account, *graph);
            }
            GraphLoad::Patch(patch) => self.accounts.patch(account, patch),
        }
        let mut affected: HashSet<ClientId> = HashSet::new();
        if let (Some(graph), (Some(rows), after)) = (self.accounts.graph(account), stored) {
            affected.extend(access.merge(account, rows, after, graph, post, now));
        }
        for change in changes {
            self.affected_by(account, change, &before, access, post, &mut affected);
        }
        for device in affected {
            self.reevaluate(account, device, access, post, now);
        }
    }

    /// Adds the client devices `change` can affect; acts at once on the
    /// changes that act directly (deleted devices, revoked tokens, changed
    /// resources).
    fn affected_by(
        &self,
        account: Uuid,
        change: &Change,
        before: &HashMap<Uuid, Arc<ResourceDescription>>,
        access: &mut Access,
        post: &mut Post,
        affected: &mut HashSet<ClientId>,
    ) {
        let Some(graph) = self.accounts.graph(account) else {
            return;
        };
        match change {
            Change::Resource(resource_id) => {
                let groups: Vec<Uuid> = graph
                    .policies
                    .groups_of_resource(*resource_id)
                    .into_iter()
                    .collect();
                let actors: HashSet<Uuid> = graph.members_of(&groups).into_iter().collect();
                let id = ResourceId(*resource_id);
                affected.extend(
                    post.presence()
                        .clients_of(account)
                        .filter(|(device, actor)| {
                            self.told(*device, id).is_some() || actors.contains(actor)
                        })
                        .map(|(device, _)| device),
                );
                affected.extend(access.clients_where(|g| g.authorization.resource.id == id));
                // Gateways enforcing it learn new filters at once.
                if let Some(after) = graph.resources.get(resource_id)
                    && before.get(resource_id) != Some(after)
                {
                    for gateway in access.update_resource(after) {
                        post.deliver_to_gateway(
                            gateway,
                            PortalToGateway::ResourceUpdated {
                                resource: ResourceDescription::clone(after),
                            },
                        );
                    }
                }
            }
            Change::Everything => {
                let actors: Vec<Uuid> = graph.actors.keys().copied().collect();
                devices_of_actors(account, &actors, access, post, affected);
                // Actors gone from the graph still hold connections and grants.
                affected.extend(
                    post.presence()
                        .clients_of(account)
                        .map(|(device, _)| device),
                );
                affected.extend(access.clients_where(|g| g.asker.account == account));
            }
            Change::Groups(groups) => {
                let actors = graph.members_of(groups);
                devices_of_actors(account, &actors, access, post, affected);
            }
            Change::Actors(actors) => devices_of_actors(account, actors, access, post, affected),
            Change::Client(device_id) => {
                affected.insert(ClientId(*device_id));
            }
            Change::ClientDeleted(device_id) => {
                let device = ClientId(*device_id);
                post.relay_revoke(*device_id);
                if let Some(conn) = post.presence().client(device) {
                    post.doom(conn, Some(DisconnectReason::TokenRevoked));
                }
                access.revoke_where(|g| g.asker.peer.id == device, post);
            }
            Change::TokenRevoked(token_id) => {
                for conn in post.presence().with_token(*token_id) {
                    if let Some(device) = post.presence().get(conn).and_then(|c| c.device()) {
                        post.relay_revoke(device.id);
                    }
                    post.doom(conn, Some(DisconnectReason::TokenRevoked));
                }
                access.revoke_where(|g| g.asker.token_id == *token_id, post);
            }
        }
    }

    /// Brings one client device in line with the graph: its resource list (if
    /// connected) and every grant it holds.
    pub(super) fn reevaluate(
        &mut self,
        account: Uuid,
        device: ClientId,
        access: &mut Access,
        post: &mut Post,
        now: Timestamp,
    ) {
        let Some(graph) = self.accounts.graph(account) else {
            return;
        };
        let mut messages: Vec<PortalToClient> = Vec::new();
        let mut drop_connection = None;
        let conn = post.presence().client(device);
        if let Some(conn) = conn
            && let Some(actor) = post.presence().actor(conn)
        {
            if !graph.actor_active(actor) {
                drop_connection = Some(conn);
            } else {
                let offered = graph.offered(actor);
                let told = self.told.entry(device).or_default();
                for resource in told.iter() {
                    if offered.get(resource.id).is_none() {
                        messages.push(PortalToClient::ResourceRemoved { id: resource.id });
                    }
                }
                for resource in offered.iter() {
                    if told.get(resource.id) != Some(resource) {
                        messages.push(PortalToClient::ResourceUpserted {
                            resource: resource.clone(),
                        });
                    }
                }
                *told = offered;
            }
        }
        // Grants: decide again with the facts they were made with.
        let redecided = access.redecide(device, graph, now);
        for message in messages {
            post.deliver_to_client(device, message);
        }
        if let Some(conn) = drop_connection {
            post.relay_revoke(device.0);
            post.doom(conn, Some(DisconnectReason::TokenRevoked));
        }
        for key in redecided.revoked {
            access.revoke(key, post);
        }
        for reference in redecided.refused {
            access.refuse(&reference, post);
        }
        // The gateway enforces expiry too: give it the new one.
        for (gateway, authorization) in redecided.extended {
            post.persist(GrantWrite::Extend {
                key: GrantKey {
                    client: authorization.client.id,
                    resource: authorization.resource.id,
                    gateway,
                },
                expires_at: authorization.expires_at,
            });
            post.deliver_to_gateway(
                gateway,
                PortalToGateway::Authorize {
                    reference: access.next_ref(),
                    authorization: Box::new(authorization),
                },
            );
        }
    }
}

/// Client devices of these actors: connected here, or holding grants.
fn devices_of_actors(
    account: Uuid,
    actors: &[Uuid],
    access: &Access,
    post: &Post,
    affected: &mut HashSet<ClientId>,
) {
    let actors: HashSet<&Uuid> = actors.iter().collect();
    affected.extend(
        post.presence()
            .clients_of(account)
            .filter(|(_, actor)| actors.contains(actor))
            .map(|(device, _)| device),
    );
    affected.extend(
        access.clients_where(|g| g.asker.account == account && actors.contains(&g.asker.actor_id)),
    );
}
