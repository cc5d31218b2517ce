//! What a grant is: who asked (with the facts the decision used), the
//! gateway that enforces it, and the authorization it holds; and the refs
//! that label `authorize` messages.

use std::net::IpAddr;

use jiff::Timestamp;
use postern_model::ClientId;
use postern_model::protocol::{Authorization, Peer};
use postern_model::{GatewayId, ResourceId};
use postern_policy::Facts;
use uuid::Uuid;

use super::io::{ConnId, GrantKey, GrantRecord};

/// A grant is keyed by the client device and the resource.
pub(super) type Key = (ClientId, ResourceId);

/// Labels for the `authorize` messages this node sends.
#[derive(Debug)]
pub(super) struct Refs {
    prefix: String,
    next: u64,
}

impl Refs {
    pub(super) fn new(node: Uuid) -> Self {
        Refs {
            prefix: node.simple().to_string()[..8].to_string(),
            next: 0,
        }
    }

    /// Unique across portal nodes: replies may come back through another.
    pub(super) fn next(&mut self) -> String {
        self.next += 1;
        format!("{}-{}", self.prefix, self.next)
    }
}

/// Who asked for access, with the facts the decision used, kept for
/// re-evaluation while the client is away.
#[derive(Clone, Debug)]
pub(super) struct Asker {
    pub account: Uuid,
    pub actor_id: Uuid,
    pub peer: Peer<ClientId>,
    pub remote_ip: IpAddr,
    pub country: Option<String>,
    pub identity_provider: Option<Uuid>,
    pub verified: bool,
    pub os: Option<String>,
    pub token_id: Uuid,
    pub token_expires: Option<Timestamp>,
}

impl Asker {
    pub(super) fn facts(&self, now: Timestamp) -> Facts<'_> {
        Facts {
            now,
            remote_ip: Some(self.remote_ip),
            country: self.country.as_deref(),
            identity_provider: self.identity_provider,
            client_verified: self.verified,
            client_os: self.os.as_deref(),
        }
    }
}

/// A granted (client device, resource) pair, kept while the client or the
/// gateway reconnects, until it is revoked or expires. It is in the store
/// too (see `ledger`).
#[derive(Clone, Debug)]
pub(super) struct Grant {
    pub asker: Asker,
    pub gateway: Peer<GatewayId>,
    pub authorization: Authorization,
    /// When it was decided: of two grants of a pair on different gateways,
    /// the later one stands.
    pub granted_at: Timestamp,
    /// Made by this node (it re-sends its own when their gateway rejoins
    /// another node); `false` for one learnt from the store.
    pub own: bool,
    /// The ledger sequence of this node's write of it (0: learnt from the
    /// store).
    pub written: u64,
}

impl Grant {
    pub(super) fn key(&self) -> Key {
        (self.asker.peer.id, self.authorization.resource.id)
    }

    /// Its row's key in the store.
    pub(super) fn stored_key(&self) -> GrantKey {
        GrantKey {
            client: self.asker.peer.id,
            resource: self.authorization.resource.id,
            gateway: self.gateway.id,
        }
    }

    /// Its row in the store.
    pub(super) fn record(&self) -> GrantRecord {
        let asker = &self.asker;
        GrantRecord {
            account_id: asker.account,
            client: asker.peer.clone(),
            resource_id: self.authorization.resource.id,
            gateway: self.gateway.clone(),
            actor_id: asker.actor_id,
            token_id: asker.token_id,
            token_expires_at: asker.token_expires,
            identity_provider_id: asker.identity_provider,
            remote_ip: asker.remote_ip,
            country: asker.country.clone(),
            os: asker.os.clone(),
            verified: asker.verified,
            expires_at: self.authorization.expires_at,
            granted_at: self.granted_at,
        }
    }
}

/// Where a gateway is connected.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum GatewayRoute {
    Local(ConnId),
    /// On another portal node.
    Remote(Uuid),
}
