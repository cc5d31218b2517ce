//! Who is connected to this node: every channel with the facts it joined
//! with, and which connection is each device's current one (a second
//! channel of a device replaces the first).

use std::collections::HashMap;
use std::net::IpAddr;

use jiff::Timestamp;
use postern_model::protocol::Peer;
use postern_model::{ClientId, GatewayId, PublicKey};
use uuid::Uuid;

use super::grants::Asker;
use super::io::{ConnId, DeviceFacts, TokenFacts};

/// A joined channel.
#[derive(Debug)]
pub(super) struct Conn {
    pub account: Option<Uuid>,
    pub token: TokenFacts,
    pub public_key: PublicKey,
    pub remote_ip: IpAddr,
    pub kind: ConnKind,
}

#[derive(Debug)]
pub(super) enum ConnKind {
    Client {
        actor_id: Uuid,
        device: DeviceFacts,
        country: Option<String>,
    },
    Gateway {
        site_id: Uuid,
        device: DeviceFacts,
    },
    Relay,
}

/// The three kinds of channel, for frames of the right type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Role {
    Client,
    Gateway,
    Relay,
}

impl Conn {
    pub(super) fn role(&self) -> Role {
        match self.kind {
            ConnKind::Client { .. } => Role::Client,
            ConnKind::Gateway { .. } => Role::Gateway,
            ConnKind::Relay => Role::Relay,
        }
    }

    /// The device behind a client or gateway channel.
    pub(super) fn device(&self) -> Option<&DeviceFacts> {
        match &self.kind {
            ConnKind::Client { device, .. } | ConnKind::Gateway { device, .. } => Some(device),
            ConnKind::Relay => None,
        }
    }
}

#[derive(Debug, Default)]
pub(super) struct Presence {
    conns: HashMap<ConnId, Conn>,
    clients: HashMap<ClientId, ConnId>,
    gateways: HashMap<GatewayId, ConnId>,
}

impl Presence {
    pub(super) fn get(&self, conn: ConnId) -> Option<&Conn> {
        self.conns.get(&conn)
    }

    pub(super) fn role(&self, conn: ConnId) -> Option<Role> {
        self.conns.get(&conn).map(Conn::role)
    }

    /// The device's current connection.
    pub(super) fn client(&self, device: ClientId) -> Option<ConnId> {
        self.clients.get(&device).copied()
    }

    pub(super) fn gateway(&self, device: GatewayId) -> Option<ConnId> {
        self.gateways.get(&device).copied()
    }

    /// Adds a channel and makes it its device's current one.
    pub(super) fn insert(&mut self, id: ConnId, conn: Conn) {
        match &conn.kind {
            ConnKind::Client { device, .. } => {
                self.clients.insert(ClientId(device.id), id);
            }
            ConnKind::Gateway { device, .. } => {
                self.gateways.insert(GatewayId(device.id), id);
            }
            ConnKind::Relay => {}
        }
        self.conns.insert(id, conn);
    }

    /// Forgets a channel; `true` with it if it was its device's current
    /// one (a replaced channel closing leaves its successor alone).
    pub(super) fn remove(&mut self, id: ConnId) -> Option<(Conn, bool)> {
        let conn = self.conns.remove(&id)?;
        let current = match &conn.kind {
            ConnKind::Client { device, .. } => {
                let device = ClientId(device.id);
                let current = self.clients.get(&device) == Some(&id);
                if current {
                    self.clients.remove(&device);
                }
                current
            }
            ConnKind::Gateway { device, .. } => {
                let device = GatewayId(device.id);
                let current = self.gateways.get(&device) == Some(&id);
                if current {
                    self.gateways.remove(&device);
                }
                current
            }
            ConnKind::Relay => false,
        };
        Some((conn, current))
    }

    /// Whether a device other than `device` is connected here with `key`.
    pub(super) fn key_taken(&self, key: &PublicKey, device: Uuid) -> bool {
        self.conns
            .values()
            .any(|conn| conn.public_key == *key && conn.device().is_some_and(|d| d.id != device))
    }

    /// Connected client devices of an account, with their actors.
    pub(super) fn clients_of(&self, account: Uuid) -> impl Iterator<Item = (ClientId, Uuid)> + '_ {
        self.conns
            .values()
            .filter_map(move |conn| match &conn.kind {
                ConnKind::Client {
                    actor_id, device, ..
                } if conn.account == Some(account) => Some((ClientId(device.id), *actor_id)),
                _ => None,
            })
    }

    pub(super) fn actor(&self, conn: ConnId) -> Option<Uuid> {
        match self.conns.get(&conn)?.kind {
            ConnKind::Client { actor_id, .. } => Some(actor_id),
            _ => None,
        }
    }

    /// Channels opened with a token.
    pub(super) fn with_token(&self, token: Uuid) -> Vec<ConnId> {
        self.conns
            .iter()
            .filter(|(_, c)| c.token.id == token)
            .map(|(id, _)| *id)
            .collect()
    }

    /// Channels whose token has expired, with the token.
    pub(super) fn expired_tokens(&self, now: Timestamp) -> Vec<(ConnId, Uuid)> {
        self.conns
            .iter()
            .filter(|(_, c)| c.token.expires_at.is_some_and(|at| at <= now))
            .map(|(id, c)| (*id, c.token.id))
            .collect()
    }

    /// The account's gateways of a site connected here, as peers.
    pub(super) fn gateways_at(&self, account: Uuid, site: Uuid) -> Vec<(ConnId, Peer<GatewayId>)> {
        self.gateways
            .values()
            .filter_map(|id| {
                let conn = self.conns.get(id)?;
                match &conn.kind {
                    ConnKind::Gateway { site_id, device }
                        if conn.account == Some(account) && *site_id == site =>
                    {
                        Some((
                            *id,
                            Peer {
                                id: GatewayId(device.id),
                                public_key: conn.public_key,
                                ipv4: device.ipv4,
                                ipv6: device.ipv6,
                            },
                        ))
                    }
                    _ => None,
                }
            })
            .collect()
    }

    /// Every gateway device connected here.
    pub(super) fn gateway_devices(&self) -> Vec<GatewayId> {
        self.gateways.keys().copied().collect()
    }

    /// Client and gateway channels (relays get no relay lists).
    pub(super) fn device_conns(&self) -> Vec<(ConnId, Uuid, Role)> {
        self.conns
            .iter()
            .filter_map(|(id, conn)| Some((*id, conn.device()?.id, conn.role())))
            .collect()
    }

    /// A client device's verification changed.
    pub(super) fn set_verified(&mut self, device: ClientId, verified: bool) {
        if let Some(id) = self.clients.get(&device)
            && let Some(Conn {
                kind: ConnKind::Client { device, .. },
                ..
            }) = self.conns.get_mut(id)
        {
            device.verified = verified;
        }
    }

    /// Who asks for access on a client channel, with the facts a decision
    /// uses.
    pub(super) fn asker(&self, conn: ConnId) -> Option<Asker> {
        let Conn {
            account: Some(account),
            token,
            public_key,
            remote_ip,
            kind:
                ConnKind::Client {
                    actor_id,
                    device,
                    country,
                },
        } = self.conns.get(&conn)?
        else {
            return None;
        };
        Some(Asker {
            account: *account,
            actor_id: *actor_id,
            peer: Peer {
                id: ClientId(device.id),
                public_key: *public_key,
                ipv4: device.ipv4,
                ipv6: device.ipv6,
            },
            remote_ip: *remote_ip,
            country: country.clone(),
            identity_provider: token.identity_provider,
            verified: device.verified,
            os: device.os.clone(),
            token_id: token.id,
            token_expires: token.expires_at,
        })
    }
}
