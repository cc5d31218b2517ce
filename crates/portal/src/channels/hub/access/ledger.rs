//! The ledger: the authorizations the portal holds are the store's, not
//! one node's memory (issue 15, H1). A gateway's `init` is authoritative
//! (it drops what is not listed), so what the portal lists there is what
//! the gateway enforces.
//!
//! **Writes.** The hub gives them as `Output::Persist`, numbered in order:
//! a `Put` when a gateway confirmed an authorization (before the client
//! hears `access_granted`), an `Extend` when re-evaluation moved its expiry
//! (an update: a row another node deleted meanwhile stays deleted), and a
//! `Delete` on every revocation (policy, expiry, token, device, a
//! gateway's new key, a replacement on another gateway). The shell applies
//! them in that order on one writer task.
//!
//! **Loads.** Every load of an account (its first, every reload for
//! committed changes, and one before each gateway joins) reads the stored
//! rows, with whether their token, client device and gateway device still
//! exist, after this node's writes up to the request's `after` are in (the
//! loader waits for the writer). `merge` then brings memory in line:
//! - a row this node does not hold is adopted (the pair's secrets derive
//!   from the portal's pair secret and both public keys, so the
//!   authorization is the very one the gateway and client have), then
//!   decided again against the current graph with the facts it was made
//!   with; what no longer holds is revoked (the gateway hears `revoke` if
//!   it is connected anywhere, the row is deleted);
//! - a row whose token, device or gateway is gone, or that expired, is
//!   revoked at once;
//! - a grant held here that was written (or adopted) before the load but
//!   is missing from it was revoked or replaced by another node: it is
//!   dropped here, and its gateway and client are told again (a repeat
//!   is harmless);
//! - a row this node deleted after the load read it (a tombstone newer
//!   than `after`) is not taken back;
//! - of two grants of one (client, resource) on different gateways the
//!   later stands and the other is revoked at its gateway only (the
//!   client holds the later one).
//!
//! **Why this is enough.** A revocation decided on any node deletes the
//! row and tells the gateway where it is connected. A gateway that was
//! offline then gets an `init` built from a load made as it joined, so it
//! drops what was revoked meanwhile, whichever node revoked it and even if
//! every node restarted. A change handled by node B reloads the account on
//! every node that serves it, so B (and every other) learns a grant node A
//! made from the store and decides it again. Several nodes may revoke the
//! same grant: a `revoke` for an authorization a gateway no longer has,
//! and the delete of a deleted row, do nothing, so at-least-once is
//! enough. Pending requests are not stored: a gateway that applied an
//! `authorize` nobody confirmed drops it at its next `init`.

use std::collections::HashSet;

use jiff::Timestamp;
use postern_model::ClientId;
use postern_model::protocol::{
    Authorization, PortalToClient, PortalToGateway, ResourceDescription,
};
use uuid::Uuid;

use super::super::super::graph::AccountGraph;
use super::super::super::keys::PairIds;
use super::super::grants::{Asker, Grant, Key};
use super::super::io::{GrantKey, GrantRecord, GrantWrite, StoredGrant};
use super::super::post::Post;
use super::Access;

impl Access {
    /// Brings the account's grants in line with the rows a load read (see
    /// the module doc); the client devices whose grants changed, to be
    /// decided again.
    pub(in super::super) fn merge(
        &mut self,
        account: Uuid,
        stored: Vec<StoredGrant>,
        after: u64,
        graph: &AccountGraph,
        post: &mut Post,
        now: Timestamp,
    ) -> Vec<ClientId> {
        let mut touched: Vec<ClientId> = Vec::new();
        // Deletes the load read after need no tombstone any more.
        self.tombstones
            .retain(|_, (owner, seq)| *owner != account || *seq > after);
        let in_store: HashSet<GrantKey> = stored.iter().map(|s| s.record.key()).collect();
        let gone: Vec<Key> = self
            .grants
            .iter()
            .filter(|(_, g)| {
                g.asker.account == account
                    && g.written <= after
                    && !in_store.contains(&g.stored_key())
            })
            .map(|(key, _)| *key)
            .collect();
        for key in gone {
            if let Some(grant) = self.grants.remove(&key) {
                tracing::debug!(client = %key.0, resource = %key.1, "grant revoked by another node");
                self.tell_revoked(&grant, true, post);
                touched.push(key.0);
            }
        }
        for row in stored {
            let key = row.record.key();
            if self.tombstones.contains_key(&key) {
                continue;
            }
            let pair: Key = (key.client, key.resource);
            let mut take = true;
            if let Some(held) = self.grants.get(&pair) {
                let newer =
                    (row.record.granted_at, key.gateway) > (held.granted_at, held.gateway.id);
                if held.gateway.id == key.gateway {
                    // The same row: memory is as new unless another node
                    // wrote it again since.
                    take = held.written <= after && newer;
                } else if newer {
                    // Ours lost to a later grant on another gateway.
                    if let Some(old) = self.grants.remove(&pair) {
                        self.forget_stored(&old, post);
                        self.tell_revoked(&old, false, post);
                    }
                } else {
                    // The row lost to ours.
                    self.revoke_row(&row.record, false, post);
                    take = false;
                }
            }
            if !take {
                continue;
            }
            let resource = graph.resources.get(&key.resource.0);
            let dead = !row.token_live
                || row.client_verified.is_none()
                || !row.gateway_live
                || row.record.token_expires_at.is_some_and(|at| at <= now)
                || row.record.expires_at.is_some_and(|at| at <= now)
                || resource.is_none();
            let Some(resource) = resource.filter(|_| !dead) else {
                if let Some(held) = self.grants.remove(&pair) {
                    self.forget_stored(&held, post);
                    self.tell_revoked(&held, true, post);
                } else {
                    self.revoke_row(&row.record, true, post);
                }
                touched.push(key.client);
                continue;
            };
            let grant = self.adopt(row, ResourceDescription::clone(resource));
            self.grants.insert(pair, grant);
            touched.push(key.client);
        }
        for gateway in self.gateways_of(account) {
            post.gateway_load(gateway, self.load(gateway));
        }
        touched.sort_unstable();
        touched.dedup();
        touched
    }

    /// A stored row as a grant held here.
    fn adopt(
        &self,
        row: StoredGrant,
        resource: postern_model::protocol::ResourceDescription,
    ) -> Grant {
        let StoredGrant {
            record,
            client_verified,
            ..
        } = row;
        let pair = PairIds {
            client: record.client.id,
            client_key: &record.client.public_key,
            gateway: record.gateway.id,
            gateway_key: &record.gateway.public_key,
        };
        let authorization = Authorization {
            client: record.client.clone(),
            resource,
            preshared_key: self.secrets.preshared_key(pair),
            ice: self.secrets.ice(pair),
            expires_at: record.expires_at,
        };
        Grant {
            asker: Asker {
                account: record.account_id,
                actor_id: record.actor_id,
                peer: record.client,
                remote_ip: record.remote_ip,
                country: record.country,
                identity_provider: record.identity_provider_id,
                verified: client_verified.unwrap_or(record.verified),
                os: record.os,
                token_id: record.token_id,
                token_expires: record.token_expires_at,
            },
            gateway: record.gateway,
            authorization,
            granted_at: record.granted_at,
            own: false,
            written: 0,
        }
    }

    /// Revokes a stored row this node does not hold: its gateway hears
    /// `revoke`, the row is deleted, and (if `client`) the client too.
    fn revoke_row(&mut self, record: &GrantRecord, client: bool, post: &mut Post) {
        let key = record.key();
        let seq = post.persist(GrantWrite::Delete(key));
        self.tombstones.insert(key, (record.account_id, seq));
        post.deliver_to_gateway(
            key.gateway,
            PortalToGateway::Revoke {
                client_id: key.client,
                resource_id: key.resource,
            },
        );
        if client {
            post.deliver_to_client(
                key.client,
                PortalToClient::AccessRevoked {
                    resource_id: key.resource,
                },
            );
        }
    }

    /// Tells a grant's gateway (and, if `client`, its client) it is over.
    fn tell_revoked(&self, grant: &Grant, client: bool, post: &mut Post) {
        let (client_id, resource_id) = grant.key();
        post.deliver_to_gateway(
            grant.gateway.id,
            PortalToGateway::Revoke {
                client_id,
                resource_id,
            },
        );
        if client {
            post.deliver_to_client(client_id, PortalToClient::AccessRevoked { resource_id });
        }
    }

    /// Gateways that enforce grants of the account.
    fn gateways_of(&self, account: Uuid) -> Vec<postern_model::GatewayId> {
        let mut gateways: Vec<_> = self
            .grants
            .values()
            .filter(|g| g.asker.account == account)
            .map(|g| g.gateway.id)
            .collect();
        gateways.sort_unstable();
        gateways.dedup();
        gateways
    }
}
