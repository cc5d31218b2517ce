//! Continuous evaluation (F15): after a committed change the account's graph
//! is reloaded and only the clients the change can touch are re-evaluated:
//! their resource lists are diffed (`resource_upserted`/`resource_removed`)
//! and their grants decided again (`access_revoked` + `revoke`). Time windows
//! and tokens expire on the hub's tick.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Instant;

use jiff::Timestamp;
use postern_model::protocol::{
    DisconnectReason, PortalToClient, PortalToGateway, ResourceDescription,
};
use postern_model::{ClientId, GatewayId, ResourceId};
use postern_policy::{Decision, Facts};
use uuid::Uuid;

use super::graph::AccountGraph;
use super::hub::{ConnKind, Hub, RELAY_CREDENTIAL_LIFETIME};
use crate::change::Change;
use crate::domain::DeviceKind;
use crate::store::devices;

impl Hub {
    pub(super) async fn apply_changes(&mut self, batch: Vec<(Uuid, Change)>) {
        let mut by_account: HashMap<Uuid, Vec<Change>> = HashMap::new();
        for (account, change) in batch {
            by_account.entry(account).or_default().push(change);
        }
        let now = Timestamp::now();
        for (account, changes) in by_account {
            if !self.accounts.contains_key(&account) {
                // Nobody of this account is connected or holds a grant.
                continue;
            }
            let graph = match AccountGraph::load(&self.state.store, account).await {
                Ok(graph) => graph,
                Err(error) => {
                    tracing::error!(%account, %error, "cannot reload the policy graph; changes wait for the next one");
                    continue;
                }
            };
            let old = self.accounts.insert(account, graph);
            let mut affected: HashSet<ClientId> = HashSet::new();
            for change in changes {
                self.affected_by(account, &change, old.as_ref(), &mut affected)
                    .await;
            }
            for device in affected {
                self.reevaluate_device(account, device, now);
            }
        }
    }

    /// Adds the client devices `change` can affect; handles the changes that
    /// act directly (deleted devices, revoked tokens).
    async fn affected_by(
        &mut self,
        account: Uuid,
        change: &Change,
        old: Option<&AccountGraph>,
        affected: &mut HashSet<ClientId>,
    ) {
        match change {
            Change::Resource(resource_id) => {
                let graph = &self.accounts[&account];
                let groups: Vec<Uuid> = graph
                    .policies
                    .groups_of_resource(*resource_id)
                    .into_iter()
                    .collect();
                let actors: HashSet<Uuid> = graph.members_of(&groups).into_iter().collect();
                for conn in self.conns.values() {
                    if let ConnKind::Client(client) = &conn.kind
                        && conn.account == Some(account)
                        && (client.visible.contains_key(&ResourceId(*resource_id))
                            || actors.contains(&client.actor_id))
                    {
                        affected.insert(ClientId(client.device.id));
                    }
                }
                affected.extend(
                    self.grants
                        .values()
                        .filter(|g| g.authorization.resource.id.0 == *resource_id)
                        .map(|g| g.client_device),
                );
                // Gateways enforcing it learn new filters at once.
                let before = old.and_then(|g| g.resources.get(resource_id));
                let after = self.accounts[&account].resources.get(resource_id).cloned();
                if let Some(after) = after
                    && before != Some(&after)
                {
                    self.resource_updated(after);
                }
            }
            Change::Everything => {
                let actors: Vec<Uuid> = self.accounts[&account].actors.keys().copied().collect();
                self.devices_of_actors(account, &actors, affected);
                // Actors gone from the graph still hold connections and grants.
                for conn in self.conns.values() {
                    if let ConnKind::Client(client) = &conn.kind
                        && conn.account == Some(account)
                    {
                        affected.insert(ClientId(client.device.id));
                    }
                }
                affected.extend(
                    self.grants
                        .values()
                        .filter(|g| g.account == account)
                        .map(|g| g.client_device),
                );
            }
            Change::Groups(groups) => {
                let actors = self.accounts[&account].members_of(groups);
                self.devices_of_actors(account, &actors, affected);
            }
            Change::Actors(actors) => self.devices_of_actors(account, actors, affected),
            Change::Client(device_id) => {
                // Verification is a fact of the device: read it again.
                let verified = match self.state.store.read().await {
                    Ok(mut tx) => {
                        let device =
                            devices::get(&mut tx, account, DeviceKind::Client, *device_id).await;
                        let _ = tx.commit().await;
                        device.ok().flatten().map(|d| d.verified)
                    }
                    Err(_) => None,
                };
                if let Some(verified) = verified {
                    if let Some(conn_id) = self.clients.get(&ClientId(*device_id))
                        && let Some(conn) = self.conns.get_mut(conn_id)
                        && let ConnKind::Client(client) = &mut conn.kind
                    {
                        client.device.verified = verified;
                    }
                    for grant in self
                        .grants
                        .values_mut()
                        .filter(|g| g.client_device == ClientId(*device_id))
                    {
                        grant.client_verified = verified;
                    }
                }
                affected.insert(ClientId(*device_id));
            }
            Change::ClientDeleted(device_id) => {
                if let Some(conn_id) = self.clients.get(&ClientId(*device_id)).copied() {
                    self.disconnect(conn_id, DisconnectReason::TokenRevoked);
                }
                self.revoke_device_grants(ClientId(*device_id));
            }
            Change::TokenRevoked(token_id) => {
                let doomed: Vec<_> = self
                    .conns
                    .iter()
                    .filter(|(_, c)| c.token_id == *token_id)
                    .map(|(id, _)| *id)
                    .collect();
                for id in doomed {
                    self.disconnect(id, DisconnectReason::TokenRevoked);
                }
                let keys: Vec<_> = self
                    .grants
                    .iter()
                    .filter(|(_, g)| g.token_id == *token_id)
                    .map(|(k, _)| *k)
                    .collect();
                for key in keys {
                    self.revoke_grant(key);
                }
            }
        }
    }

    fn devices_of_actors(&self, account: Uuid, actors: &[Uuid], affected: &mut HashSet<ClientId>) {
        let actors: HashSet<&Uuid> = actors.iter().collect();
        for conn in self.conns.values() {
            if let ConnKind::Client(client) = &conn.kind
                && conn.account == Some(account)
                && actors.contains(&client.actor_id)
            {
                affected.insert(ClientId(client.device.id));
            }
        }
        affected.extend(
            self.grants
                .values()
                .filter(|g| g.account == account && actors.contains(&g.actor_id))
                .map(|g| g.client_device),
        );
    }

    fn resource_updated(&mut self, resource: ResourceDescription) {
        let mut gateways: Vec<GatewayId> = Vec::new();
        for grant in self.grants.values_mut() {
            if grant.authorization.resource.id == resource.id {
                grant.authorization.resource = resource.clone();
                gateways.push(grant.gateway_device);
            }
        }
        gateways.sort_unstable();
        gateways.dedup();
        for gateway in gateways {
            self.deliver_to_gateway(
                gateway,
                PortalToGateway::ResourceUpdated {
                    resource: resource.clone(),
                },
            );
        }
    }

    /// Brings one client device in line with the graph: its resource list (if
    /// connected) and every grant it holds.
    pub(super) fn reevaluate_device(&mut self, account: Uuid, device: ClientId, now: Timestamp) {
        let Some(graph) = self.accounts.get(&account) else {
            return;
        };
        let mut messages: Vec<PortalToClient> = Vec::new();
        let mut drop_connection = None;
        if let Some(&conn_id) = self.clients.get(&device)
            && let Some(conn) = self.conns.get_mut(&conn_id)
            && let ConnKind::Client(client) = &mut conn.kind
        {
            if !graph.actor_active(client.actor_id) {
                drop_connection = Some(conn_id);
            } else {
                let visible: BTreeMap<ResourceId, ResourceDescription> = graph
                    .visible(client.actor_id)
                    .into_iter()
                    .map(|r| (r.id, r.clone()))
                    .collect();
                for id in client.visible.keys() {
                    if !visible.contains_key(id) {
                        messages.push(PortalToClient::ResourceRemoved { id: *id });
                    }
                }
                for (id, resource) in &visible {
                    if client.visible.get(id) != Some(resource) {
                        messages.push(PortalToClient::ResourceUpserted {
                            resource: resource.clone(),
                        });
                    }
                }
                client.visible = visible;
            }
        }
        // Grants: decide again with the facts they were made with.
        let mut revoked = Vec::new();
        let mut extended = Vec::new();
        for (key, grant) in self.grants.iter_mut().filter(|(k, _)| k.0 == device) {
            let resource_id = key.1;
            let still_visible = graph.actor_active(grant.actor_id)
                && graph.resources.contains_key(&resource_id.0)
                && graph
                    .policies
                    .visible_resources(graph.groups(grant.actor_id))
                    .contains(&resource_id.0);
            let facts = Facts {
                now,
                remote_ip: Some(grant.remote_ip),
                country: grant.country.as_deref(),
                identity_provider: grant.identity_provider,
                client_verified: grant.client_verified,
                client_os: grant.client_os.as_deref(),
            };
            match graph
                .policies
                .decide(graph.groups(grant.actor_id), resource_id.0, &facts)
            {
                Decision::Allow { expires_at, .. } if still_visible => {
                    // Another window may carry it on; the token still bounds it.
                    let expires_at = earliest(expires_at, grant.token_expires);
                    if expires_at != grant.authorization.expires_at {
                        grant.authorization.expires_at = expires_at;
                        extended.push((grant.gateway_device, grant.authorization.clone()));
                    }
                }
                _ => revoked.push(*key),
            }
        }
        for message in messages {
            if let Some(&conn_id) = self.clients.get(&device) {
                self.send_client(conn_id, message);
            }
        }
        if let Some(conn_id) = drop_connection {
            self.disconnect(conn_id, DisconnectReason::TokenRevoked);
        }
        for key in revoked {
            self.revoke_grant(key);
        }
        // The gateway enforces expiry too: give it the new one.
        for (gateway, authorization) in extended {
            let reference = self.next_ref();
            self.deliver_to_gateway(
                gateway,
                PortalToGateway::Authorize {
                    reference,
                    authorization: Box::new(authorization),
                },
            );
        }
    }

    /// Ends a grant: the gateway stops forwarding, the client is told.
    pub(super) fn revoke_grant(&mut self, key: (ClientId, ResourceId)) {
        let Some(grant) = self.grants.remove(&key) else {
            return;
        };
        let (client_device, resource_id) = key;
        self.deliver_to_gateway(
            grant.gateway_device,
            PortalToGateway::Revoke {
                client_id: client_device,
                resource_id,
            },
        );
        if let Some(&client) = self.clients.get(&client_device) {
            self.send_client(client, PortalToClient::AccessRevoked { resource_id });
        }
        self.refresh_gateway_presence(grant.gateway_device);
    }

    pub(super) fn revoke_device_grants(&mut self, device: ClientId) {
        let keys: Vec<_> = self
            .grants
            .keys()
            .filter(|k| k.0 == device)
            .copied()
            .collect();
        for key in keys {
            self.revoke_grant(key);
        }
    }

    /// Timeouts, expiries and credential renewal.
    pub(super) async fn tick(&mut self, now: Instant, wall: Timestamp) {
        self.cluster_tick(now);
        let overdue: Vec<String> = self
            .pending
            .iter()
            .filter(|(_, p)| p.deadline <= now)
            .map(|(r, _)| r.clone())
            .collect();
        for reference in overdue {
            self.fail_pending(&reference);
        }
        let expired: Vec<(Uuid, ClientId)> = self
            .grants
            .values()
            .filter(|g| g.authorization.expires_at.is_some_and(|at| at <= wall))
            .map(|g| (g.account, g.client_device))
            .collect();
        for (account, device) in expired {
            self.reevaluate_device(account, device, wall);
        }
        let tokens_expired: Vec<_> = self
            .conns
            .iter()
            .filter(|(_, c)| c.token_expires.is_some_and(|at| at <= wall))
            .map(|(id, c)| (*id, c.token_id))
            .collect();
        for (id, token_id) in tokens_expired {
            self.disconnect(id, DisconnectReason::TokenExpired);
            let keys: Vec<_> = self
                .grants
                .iter()
                .filter(|(_, g)| g.token_id == token_id)
                .map(|(k, _)| *k)
                .collect();
            for key in keys {
                self.revoke_grant(key);
            }
        }
        let stale_relays: Vec<_> = self
            .conns
            .iter()
            .filter(|(_, c)| {
                !matches!(c.kind, ConnKind::Relay(_))
                    && now.duration_since(c.relays_issued) > RELAY_CREDENTIAL_LIFETIME / 2
            })
            .map(|(id, _)| *id)
            .collect();
        for id in stale_relays {
            self.renew_relay_credentials(id, now);
        }
    }
}

/// The earlier of two optional instants (`None` is "never").
pub(super) fn earliest(a: Option<Timestamp>, b: Option<Timestamp>) -> Option<Timestamp> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}
