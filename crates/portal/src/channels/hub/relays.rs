//! Relays (F18): the ones registered over `/v1/relay` here and the ones
//! other nodes announce, and the TURN REST credentials clients and gateways
//! get for them: in `init`, in `relays_changed` when relays come and go, and
//! renewed at half-life. Credentials are short-lived so that a device that
//! lost its access stops relaying soon even if a revocation never reached a
//! relay; revocations are also sent to every relay in the cluster, and again
//! to a relay that (re)registers while credentials issued before them may
//! still be valid. A device's credentials end no later than its token (its
//! channel is closed then, and its relays told), and the node remembers who
//! holds credentials under which token until they expire, so revoking a
//! token reaches devices whose channel is already gone.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use jiff::{SignedDuration, Timestamp};
use postern_model::RelayId;
use postern_model::protocol::{
    PortalToClient, PortalToGateway, PortalToRelay, RelayInfo, RelayTls,
};
use postern_turn::credentials::{rest_password, rest_username};
use uuid::Uuid;

use super::super::cluster::{ClusterMessage, RelayAnnouncement};
use super::io::{ConnId, Frame, TokenFacts};
use super::post::Post;
use super::presence::Role;

/// TURN credentials handed out live this long and are renewed at half-life:
/// the longest a revoked device could keep relaying at a relay that missed
/// its revocation. A relay's clock must be within half of it (7.5 minutes)
/// of the portal's, or renewed credentials arrive after it thinks the old
/// ones expired.
const RELAY_CREDENTIAL_LIFETIME: Duration = Duration::from_secs(15 * 60);

/// Revocation bounds are rounded up to this: a relay that registers hears of
/// at most one lifetime's worth of bounds (16), not one per revocation.
const BOUND_GRANULARITY_SECS: i64 = 60;

/// Devices per `revoke_credentials` message and cluster notice (a NOTIFY
/// payload stays well under PostgreSQL's 8000 bytes).
const REVOKED_PER_MESSAGE: usize = 64;

/// A relay channel here; it has addresses once it registered.
#[derive(Debug)]
struct LocalRelay {
    id: RelayId,
    addresses: Vec<SocketAddr>,
    tls: Option<RelayTls>,
}

#[derive(Debug)]
struct RemoteRelay {
    node: Uuid,
    relay: RelayAnnouncement,
}

#[derive(Debug)]
pub(super) struct Relays {
    /// The TURN REST shared secret relays get.
    turn_secret: String,
    local: HashMap<ConnId, LocalRelay>,
    remote: HashMap<RelayId, RemoteRelay>,
    /// When each client and gateway channel got its credentials.
    issued: HashMap<ConnId, Instant>,
    /// Revoked devices, until the last credential issued to them before the
    /// revocation expires; a relay registering here hears of them.
    revoked: HashMap<Uuid, Timestamp>,
    /// Devices this node gave credentials, under which token, until when.
    holders: HashMap<Uuid, Holder>,
}

/// The token a device's credentials were issued under, and their expiry.
#[derive(Debug)]
struct Holder {
    token: Uuid,
    until: Timestamp,
}

impl Relays {
    pub(super) fn new(turn_secret: String) -> Self {
        Relays {
            turn_secret,
            local: HashMap::new(),
            remote: HashMap::new(),
            issued: HashMap::new(),
            revoked: HashMap::new(),
            holders: HashMap::new(),
        }
    }

    /// A relay channel joined.
    pub(super) fn joined(&mut self, conn: ConnId, id: RelayId) {
        let addresses = Vec::new();
        self.local.insert(
            conn,
            LocalRelay {
                id,
                addresses,
                tls: None,
            },
        );
    }

    /// A relay's `register`: it gets the TURN secret, devices hear of it
    /// (the first time) and so do the other nodes.
    pub(super) fn register(
        &mut self,
        conn: ConnId,
        public_addresses: &[IpAddr],
        port: u16,
        tls: Option<RelayTls>,
        post: &mut Post,
        now: Timestamp,
    ) {
        let bad_tls = tls.as_ref().is_some_and(|tls| {
            tls.port == 0
                || tls
                    .name
                    .as_ref()
                    .is_some_and(|name| name.is_empty() || name.len() > 253)
        });
        if public_addresses.is_empty() || public_addresses.len() > 4 || port == 0 || bad_tls {
            let message =
                "register needs 1-4 public addresses, a port and a valid TLS port and name"
                    .to_string();
            post.error(conn, None, message);
            return;
        }
        let Some(relay) = self.local.get_mut(&conn) else {
            return;
        };
        let first = relay.addresses.is_empty();
        relay.addresses = public_addresses
            .iter()
            .map(|ip| SocketAddr::new(*ip, port))
            .collect();
        relay.tls = tls;
        let announcement = RelayAnnouncement {
            id: relay.id,
            addresses: relay.addresses.clone(),
            tls: relay.tls.clone(),
        };
        let relay_id = relay.id;
        let registered = PortalToRelay::Registered {
            relay_id,
            auth_secret: self.turn_secret.clone(),
        };
        post.send(conn, Frame::Relay(registered));
        self.tell_revoked(conn, post, now);
        tracing::info!(relay = %relay_id, addresses = ?public_addresses, port, "relay registered");
        if first {
            self.broadcast(&[relay_id], &[], post, now);
        }
        post.publish(ClusterMessage::RelayUp {
            from: post.routing().node(),
            relay: announcement,
        });
    }

    /// A channel closed; if it was a relay, devices and other nodes hear
    /// it is gone.
    pub(super) fn closed(&mut self, conn: ConnId, post: &mut Post, now: Timestamp) {
        self.issued.remove(&conn);
        if let Some(relay) = self.local.remove(&conn) {
            self.broadcast(&[], &[relay.id], post, now);
            post.publish(ClusterMessage::RelayDown {
                from: post.routing().node(),
                id: relay.id,
            });
        }
    }

    /// The relays registered with this node.
    pub(super) fn local(&self) -> Vec<RelayAnnouncement> {
        self.local
            .values()
            .filter(|relay| !relay.addresses.is_empty())
            .map(|relay| RelayAnnouncement {
                id: relay.id,
                addresses: relay.addresses.clone(),
                tls: relay.tls.clone(),
            })
            .collect()
    }

    /// Another node has a relay; devices here hear of a new one.
    pub(super) fn remote_up(
        &mut self,
        node: Uuid,
        relay: RelayAnnouncement,
        post: &mut Post,
        now: Timestamp,
    ) {
        let id = relay.id;
        if self
            .remote
            .insert(id, RemoteRelay { node, relay })
            .is_none()
        {
            self.broadcast(&[id], &[], post, now);
        }
    }

    pub(super) fn remote_down(&mut self, id: RelayId, post: &mut Post, now: Timestamp) {
        if self.remote.remove(&id).is_some() {
            self.broadcast(&[], &[id], post, now);
        }
    }

    /// A silent node's relays are gone.
    pub(super) fn forget_node(&mut self, node: Uuid, post: &mut Post, now: Timestamp) {
        let gone: Vec<RelayId> = self
            .remote
            .iter()
            .filter(|(_, r)| r.node == node)
            .map(|(id, _)| *id)
            .collect();
        for id in &gone {
            self.remote.remove(id);
        }
        if !gone.is_empty() {
            self.broadcast(&[], &gone, post, now);
        }
    }

    /// Credentials for every relay (or `only` these), for one device whose
    /// channel joined with `token`. They end with the token, and always
    /// after the device's last revocation bound (a relay refuses those that
    /// expire at or before it).
    pub(super) fn credentials(
        &mut self,
        device: Uuid,
        token: &TokenFacts,
        only: Option<&[RelayId]>,
        now: Timestamp,
    ) -> Vec<RelayInfo> {
        let mut expires_at = credential_expiry(now);
        if let Some(token_ends) = token.expires_at {
            expires_at = expires_at.min(token_ends);
        }
        if let Some(bound) = self.revoked.get(&device) {
            let past_bound = Timestamp::from_second(bound.as_second().saturating_add(1));
            expires_at = expires_at.max(past_bound.unwrap_or(expires_at));
        }
        let holder = self.holders.entry(device).or_insert(Holder {
            token: token.id,
            until: expires_at,
        });
        holder.token = token.id;
        holder.until = holder.until.max(expires_at);
        let expiry_unix = expires_at.as_second().max(0) as u64;
        let username = rest_username(expiry_unix, &device.to_string());
        let password = rest_password(self.turn_secret.as_bytes(), &username);
        let mut relays: Vec<RelayInfo> = self
            .local()
            .into_iter()
            .chain(self.remote.values().map(|r| r.relay.clone()))
            .filter(|relay| only.is_none_or(|ids| ids.contains(&relay.id)))
            .map(|relay| RelayInfo {
                id: relay.id,
                addresses: relay.addresses,
                username: username.clone(),
                password: password.clone(),
                expires_at,
                tls: relay.tls,
            })
            .collect();
        relays.sort_by_key(|r| r.id);
        relays
    }

    /// Devices whose right to relays ended here: every relay of this node and
    /// (through the other nodes) of the cluster ends their allocations and
    /// refuses the credentials they got so far.
    pub(super) fn revoke(&mut self, devices: &[Uuid], post: &mut Post, now: Timestamp) {
        let not_after = revocation_bound(now);
        for chunk in devices.chunks(REVOKED_PER_MESSAGE) {
            self.remember_revoked(chunk, not_after);
            self.tell_local(chunk, not_after, post);
            post.publish(ClusterMessage::RelayRevoke {
                from: post.routing().node(),
                devices: chunk.to_vec(),
                not_after,
            });
        }
        tracing::info!(devices = devices.len(), "relay credentials revoked");
    }

    /// A token was revoked: the devices holding credentials under it lose
    /// them, connected here or not.
    pub(super) fn token_revoked(&self, token: Uuid) -> Vec<Uuid> {
        self.holders
            .iter()
            .filter(|(_, holder)| holder.token == token)
            .map(|(device, _)| *device)
            .collect()
    }

    /// Another node revoked these devices: this node's relays hear of it.
    pub(super) fn remote_revoke(
        &mut self,
        devices: &[Uuid],
        not_after: Timestamp,
        post: &mut Post,
        now: Timestamp,
    ) {
        // A forged or confused far-future bound would refuse the device's
        // future credentials; no credential outlives one lifetime.
        let not_after = not_after.min(revocation_bound(now));
        for chunk in devices.chunks(REVOKED_PER_MESSAGE) {
            self.remember_revoked(chunk, not_after);
            self.tell_local(chunk, not_after, post);
        }
    }

    fn remember_revoked(&mut self, devices: &[Uuid], not_after: Timestamp) {
        for device in devices {
            let until = self.revoked.entry(*device).or_insert(not_after);
            *until = (*until).max(not_after);
        }
    }

    /// `revoke_credentials` to every registered relay of this node.
    fn tell_local(&self, devices: &[Uuid], not_after: Timestamp, post: &mut Post) {
        for (conn, relay) in &self.local {
            if !relay.addresses.is_empty() {
                post.send(*conn, revoke_credentials(devices, not_after));
            }
        }
    }

    /// A relay that just registered hears of every revocation whose
    /// credentials may still be valid, one message per bound (a later bound
    /// would also refuse credentials a device got after its revocation).
    fn tell_revoked(&self, conn: ConnId, post: &mut Post, now: Timestamp) {
        let mut by_bound: BTreeMap<Timestamp, Vec<Uuid>> = BTreeMap::new();
        for (device, not_after) in &self.revoked {
            if *not_after > now {
                by_bound.entry(*not_after).or_default().push(*device);
            }
        }
        for (not_after, mut devices) in by_bound {
            devices.sort();
            for chunk in devices.chunks(REVOKED_PER_MESSAGE) {
                post.send(conn, revoke_credentials(chunk, not_after));
            }
        }
    }

    /// Revocations and holders remembered (for tests of their pruning).
    #[cfg(test)]
    pub(super) fn remembered(&self) -> (usize, usize) {
        (self.revoked.len(), self.holders.len())
    }

    /// A client or gateway channel got its credentials in `init`.
    pub(super) fn issued(&mut self, conn: ConnId, at: Instant) {
        self.issued.insert(conn, at);
    }

    /// Sends fresh credentials for every relay before the old ones expire.
    pub(super) fn renew(&mut self, post: &mut Post, at: Instant, now: Timestamp) {
        self.revoked.retain(|_, not_after| *not_after > now);
        self.holders.retain(|_, holder| holder.until > now);
        let stale: Vec<ConnId> = self
            .issued
            .iter()
            .filter(|(_, issued)| at.duration_since(**issued) > RELAY_CREDENTIAL_LIFETIME / 2)
            .map(|(conn, _)| *conn)
            .collect();
        for conn in stale {
            self.issued.insert(conn, at);
            let Some((device, token)) = post
                .presence()
                .get(conn)
                .and_then(|c| Some((c.device()?.id, c.token)))
            else {
                continue;
            };
            let added = self.credentials(device, &token, None, now);
            if !added.is_empty() {
                relays_changed(post, conn, added, Vec::new());
            }
        }
    }

    /// Tells every client and gateway here of relays added and removed.
    fn broadcast(
        &mut self,
        added: &[RelayId],
        removed: &[RelayId],
        post: &mut Post,
        now: Timestamp,
    ) {
        for (conn, device, _) in post.presence().device_conns() {
            let Some(token) = post.presence().get(conn).map(|c| c.token) else {
                continue;
            };
            let added = self.credentials(device, &token, Some(added), now);
            relays_changed(post, conn, added, removed.to_vec());
        }
    }
}

/// When credentials issued at `now` expire.
fn credential_expiry(now: Timestamp) -> Timestamp {
    now + SignedDuration::try_from(RELAY_CREDENTIAL_LIFETIME).unwrap_or(SignedDuration::ZERO)
}

/// The bound of a revocation at `now`: past every credential issued so
/// far, rounded up to `BOUND_GRANULARITY_SECS`.
fn revocation_bound(now: Timestamp) -> Timestamp {
    let exact = credential_expiry(now).as_second();
    let rounded = exact.saturating_add(BOUND_GRANULARITY_SECS - 1) / BOUND_GRANULARITY_SECS
        * BOUND_GRANULARITY_SECS;
    Timestamp::from_second(rounded).unwrap_or_else(|_| credential_expiry(now))
}

fn revoke_credentials(devices: &[Uuid], not_after: Timestamp) -> Frame {
    Frame::Relay(PortalToRelay::RevokeCredentials {
        ids: devices.to_vec(),
        not_after,
    })
}

/// `relays_changed` of the channel's role.
fn relays_changed(post: &mut Post, conn: ConnId, added: Vec<RelayInfo>, removed: Vec<RelayId>) {
    let frame = match post.presence().role(conn) {
        Some(Role::Client) => Frame::Client(PortalToClient::RelaysChanged { added, removed }),
        Some(Role::Gateway) => Frame::Gateway(PortalToGateway::RelaysChanged { added, removed }),
        Some(Role::Relay) | None => return,
    };
    post.send(conn, frame);
}
