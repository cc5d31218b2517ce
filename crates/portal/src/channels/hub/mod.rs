//! The hub core: the channel protocol as a state machine without I/O. It
//! takes inputs (a channel joined with its facts, a parsed message, a
//! closed channel, a cluster message, committed changes, a loaded account,
//! a tick) with the time passed in, and gives outputs as data (see `io`);
//! the shell moves them. It runs without locks, one input at a time. The
//! state lives in sub-machines with private fields, composed here:
//! - `presence`: who is connected to this node;
//! - `access`: pending requests, grants, gateway selection, ICE pairing;
//! - `evaluation`: account graphs (loaded off the task: `accounts` keeps
//!   each account's events in order meanwhile) and re-evaluation;
//! - `routing`: the other portal nodes;
//! - `relays`: relay registrations and TURN credentials.
//!
//! This router keeps no state of its own but the outbox. Its channel side
//! (joins, closes, per-account order, ticks) is here; what devices send is
//! in `messages`, and what other nodes send in `cluster`.

/// Delivery for one step, borrowed from the hub's fields (so a sub-machine
/// can be borrowed beside it). Before the modules: `cluster` uses it too.
macro_rules! post_of {
    ($hub:ident) => {
        &mut Post::new(&$hub.presence, &$hub.routing, &mut $hub.out)
    };
}

mod access;
mod accounts;
mod cluster;
mod evaluation;
mod grants;
mod ice;
mod io;
mod messages;
mod post;
mod presence;
mod relays;
mod routing;
mod selection;
#[cfg(test)]
pub(super) mod tests;

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::Instant;

use jiff::Timestamp;
use postern_model::protocol::{
    DisconnectReason, Interface, PortalToClient, PortalToGateway, PortalToRelay,
};
use postern_model::{ClientId, GatewayId, PublicKey};
use uuid::Uuid;

use self::access::Access;
use self::accounts::{Event, LoadedFor, Next, Waiting};
use self::evaluation::Evaluation;
use self::grants::GatewayRoute;
use self::post::{Outbox, Post};
use self::presence::{Conn, ConnKind, Presence};
use self::relays::Relays;
use self::routing::Routing;
use super::cluster::ClusterMessage;
use super::keys::PairSecrets;
use crate::change::Change;
use crate::store::StoreError;

pub(crate) use self::io::{
    ConnId, DeviceDetails, DeviceFacts, Frame, GrantWrite, GraphLoad, HubConfig, HubSecrets,
    Inbound, Input, Joined, LoadRequest, Loaded, Metric, Output, Party, PresenceUpdate, TokenFacts,
};

pub(crate) struct Hub {
    presence: Presence,
    access: Access,
    evaluation: Evaluation,
    routing: Routing,
    relays: Relays,
    out: Outbox,
}

impl Hub {
    pub(crate) fn new(config: HubConfig, now: Instant) -> Self {
        Hub {
            presence: Presence::default(),
            access: Access::new(
                config.node,
                PairSecrets::new(config.secrets.pair_secret),
                config.authorize_timeout,
                config.pending_per_client,
                config.seed,
            ),
            evaluation: Evaluation::default(),
            routing: Routing::new(config.node, config.clustered, config.authorize_timeout, now),
            relays: Relays::new(config.secrets.turn_secret),
            out: Outbox::default(),
        }
    }

    /// Handles one input; what it gives out waits in `poll_output`.
    pub(crate) fn handle(&mut self, now: Instant, wall: Timestamp, input: Input) {
        let event = match input {
            Input::Joined(joined) => Event::Joined(joined),
            Input::Message { conn, message } => Event::Message { conn, message },
            Input::Closed { conn } => Event::Closed { conn },
            Input::Undeliverable { conn, overloaded } => Event::Undeliverable { conn, overloaded },
            Input::Cluster(message) => {
                self.routing.heard_from(message.from(), now);
                Event::Cluster(message)
            }
            Input::Changes(batch) => return self.committed(batch, wall),
            Input::ClusterResync => return self.resync(wall),
            Input::Loaded { account, result } => return self.loaded(account, *result, now, wall),
            Input::Tick => return self.tick(now, wall),
        };
        let after = self.out.seq();
        match self.account_of(&event) {
            Some(account) if !self.evaluation.accounts().ready(account) => {
                if let Some(load) = self.evaluation.accounts_mut().hold(account, event, after) {
                    self.out.push(Output::Load(load));
                }
            }
            // A gateway's `init` is authoritative: it lists what the store
            // holds as it joins, whichever node granted it (see `ledger`).
            Some(account) if is_gateway_join(&event) => {
                if let Some(load) = self
                    .evaluation
                    .accounts_mut()
                    .refresh(account, event, after)
                {
                    self.out.push(Output::Load(load));
                }
            }
            _ => self.run(event, now, wall),
        }
    }

    /// The next output, in the order they were given.
    pub(crate) fn poll_output(&mut self) -> Option<Output> {
        self.out.pop()
    }

    /// The account whose order an event runs in, if any.
    fn account_of(&self, event: &Event) -> Option<Uuid> {
        let accounts = self.evaluation.accounts();
        let of_conn = |conn: ConnId| match self.presence.get(conn) {
            Some(joined) => joined.account,
            None => accounts.joining(conn),
        };
        match event {
            Event::Joined(joined) => joined.party.account(),
            Event::Message { conn, .. }
            | Event::Closed { conn }
            | Event::Undeliverable { conn, .. } => of_conn(*conn),
            Event::Cluster(message) => match message.as_ref() {
                ClusterMessage::ToGateway { device, .. } => match self.presence.gateway(*device) {
                    Some(conn) => of_conn(conn),
                    None => accounts.joining_device(device.0),
                },
                ClusterMessage::ToClient { device, .. } => match self.presence.client(*device) {
                    Some(conn) => of_conn(conn),
                    None => accounts.joining_device(device.0),
                },
                ClusterMessage::Authorized { reference, .. } => {
                    self.access.pending_account(reference)
                }
                _ => None,
            },
        }
    }

    fn run(&mut self, event: Event, now: Instant, wall: Timestamp) {
        match event {
            Event::Joined(joined) => self.join(*joined, now, wall),
            Event::Message { conn, message } => self.message(conn, message, now, wall),
            Event::Closed { conn } => self.closed(conn, wall),
            Event::Undeliverable { conn, overloaded } => {
                let reason = if overloaded {
                    tracing::warn!(conn, "channel cannot keep up; disconnecting it");
                    Some(DisconnectReason::Overloaded)
                } else {
                    // The socket is gone; its close event is on the way.
                    None
                };
                self.out.doom(conn, reason);
            }
            Event::Cluster(message) => self.cluster(*message, now, wall),
        }
        self.reap(wall);
    }

    /// Changes this node's API committed: the other nodes hear of them, and
    /// each account reloads once for its share.
    fn committed(&mut self, batch: Vec<(Uuid, Change)>, wall: Timestamp) {
        let mut by_account: HashMap<Uuid, Vec<Change>> = HashMap::new();
        for (account, change) in batch {
            post_of!(self).publish(ClusterMessage::Change {
                from: self.routing.node(),
                account,
                change: change.clone(),
            });
            by_account.entry(account).or_default().push(change);
        }
        for (account, changes) in by_account {
            self.changed(account, changes, wall);
        }
    }

    fn changed(&mut self, account: Uuid, changes: Vec<Change>, wall: Timestamp) {
        // Relays hear at once, whether the account's graph is loaded or the
        // devices connected: they hold credentials either way.
        let mut revoked = Vec::new();
        for change in &changes {
            match change {
                Change::TokenRevoked(token) => revoked.extend(self.relays.token_revoked(*token)),
                Change::ClientDeleted(device) => revoked.push(*device),
                _ => {}
            }
        }
        if !revoked.is_empty() {
            self.relays.revoke(&revoked, post_of!(self), wall);
        }
        let after = self.out.seq();
        if let Some(load) = self
            .evaluation
            .accounts_mut()
            .changed(account, changes, after)
        {
            self.out.push(Output::Load(load));
        }
    }

    /// An account load is in: the graph takes its place (re-evaluating what
    /// the changes it was for affect), then what waited for it runs.
    fn loaded(
        &mut self,
        account: Uuid,
        result: Result<Loaded, StoreError>,
        now: Instant,
        wall: Timestamp,
    ) {
        let Some((loaded_for, after)) = self.evaluation.accounts_mut().answered(account) else {
            tracing::warn!(%account, "an account load answered that was not asked for");
            return;
        };
        match (result, loaded_for) {
            (Ok(loaded), loaded_for) => {
                for (device, verified) in loaded.verified {
                    self.presence.set_verified(device, verified);
                    self.access.set_verified(device, verified);
                }
                let changes = match loaded_for {
                    LoadedFor::First => Vec::new(),
                    LoadedFor::Changes(changes) => changes,
                };
                // Stored grants are decided again even on a first load: a
                // restarted node revokes what no longer holds.
                self.evaluation.apply(
                    account,
                    loaded.graph,
                    &changes,
                    (loaded.grants, after),
                    &mut self.access,
                    post_of!(self),
                    wall,
                );
            }
            (Err(error), LoadedFor::First) => {
                tracing::error!(%account, %error, "cannot load the account's policy graph");
                // Its channels cannot be served; the next one tries again.
                for waiting in self.evaluation.accounts_mut().forget(account) {
                    if let Waiting::Event(Event::Joined(joined)) = waiting {
                        self.out.push(Output::Close { conn: joined.conn });
                    }
                }
            }
            (Err(error), LoadedFor::Changes(_)) => {
                tracing::error!(%account, %error, "cannot reload the policy graph; changes wait for the next one");
            }
        }
        self.reap(wall);
        loop {
            let after = self.out.seq();
            match self.evaluation.accounts_mut().next(account, after) {
                Next::Run(event) => self.run(event, now, wall),
                Next::Load(load) => {
                    self.out.push(Output::Load(load));
                    break;
                }
                Next::Done => break,
            }
        }
    }

    fn join(&mut self, joined: Joined, now: Instant, wall: Timestamp) {
        let Joined {
            conn,
            party,
            token,
            public_key,
            remote_ip,
            details,
        } = joined;
        let token_facts = token;
        let joining = |kind, account| Conn {
            account,
            token,
            public_key,
            remote_ip,
            kind,
        };
        match party {
            Party::Relay { id } => {
                self.presence.insert(conn, joining(ConnKind::Relay, None));
                self.relays.joined(conn, id);
                post_of!(self).send(conn, Frame::Relay(PortalToRelay::Init {}));
            }
            Party::Client {
                account,
                actor_id,
                device,
                country,
            } => {
                let Some(graph) = self.evaluation.graph(account) else {
                    self.out.push(Output::Close { conn });
                    return;
                };
                let interface = interface(&device, graph.search_domain.clone());
                // A second channel of the same device (same key: the same
                // process, back from another network) replaces the first.
                let device_id = ClientId(device.id);
                if let Some(old) = self.presence.client(device_id) {
                    if self.is_duplicate(old, &public_key, conn, remote_ip, device.id) {
                        return;
                    }
                    self.out.doom(old, Some(DisconnectReason::Shutdown));
                }
                // Grants made for an earlier process of this device are for
                // its old key.
                self.access.revoke_where(
                    |g| g.asker.peer.id == device_id && g.asker.peer.public_key != public_key,
                    post_of!(self),
                );
                let relays = self.relays.credentials(device.id, &token_facts, None, wall);
                self.relays.issued(conn, now);
                let kind = ConnKind::Client {
                    actor_id,
                    device,
                    country,
                };
                self.out.push(Output::Seen {
                    account,
                    device: device_id.0,
                    details,
                    remote_ip,
                });
                self.presence.insert(conn, joining(kind, Some(account)));
                let resources = self.evaluation.welcome(account, device_id, actor_id);
                self.out.push(Output::Presence(PresenceUpdate::Client {
                    device: device_id,
                    online: true,
                }));
                post_of!(self).client(
                    conn,
                    PortalToClient::Init {
                        interface,
                        resources,
                        relays,
                    },
                );
            }
            Party::Gateway {
                account,
                site_id,
                device,
            } => {
                let Some(graph) = self.evaluation.graph(account) else {
                    self.out.push(Output::Close { conn });
                    return;
                };
                let interface = interface(&device, graph.search_domain.clone());
                let device_id = GatewayId(device.id);
                if let Some(old) = self.presence.gateway(device_id) {
                    if self.is_duplicate(old, &public_key, conn, remote_ip, device.id) {
                        return;
                    }
                    self.out.doom(old, Some(DisconnectReason::Shutdown));
                }
                // A restarted gateway has a new key: what it authorized
                // before is void, and its clients must ask again.
                self.access.revoke_where(
                    |g| g.gateway.id == device_id && g.gateway.public_key != public_key,
                    post_of!(self),
                );
                let authorizations = self.access.authorizations_on(device_id);
                let relays = self.relays.credentials(device.id, &token_facts, None, wall);
                self.relays.issued(conn, now);
                self.out.push(Output::Seen {
                    account,
                    device: device_id.0,
                    details,
                    remote_ip,
                });
                let kind = ConnKind::Gateway { site_id, device };
                self.presence.insert(conn, joining(kind, Some(account)));
                self.routing.gateway_here(device_id);
                self.out.push(Output::Presence(PresenceUpdate::Gateway {
                    device: device_id,
                    load: Some(self.access.load(device_id)),
                }));
                if let Some(gateway) = self.announcement(device_id) {
                    post_of!(self).publish(ClusterMessage::GatewayUp {
                        from: self.routing.node(),
                        gateway,
                    });
                }
                post_of!(self).gateway(
                    conn,
                    PortalToGateway::Init {
                        interface,
                        relays,
                        authorizations,
                    },
                );
            }
        }
        tracing::debug!(conn, "channel joined");
    }

    /// Forgets a channel (its socket closed or it was disconnected).
    fn closed(&mut self, conn: ConnId, wall: Timestamp) {
        let Some((closed, current)) = self.presence.remove(conn) else {
            return;
        };
        self.relays.closed(conn, post_of!(self), wall);
        match closed.kind {
            ConnKind::Client { device, .. } => {
                let device = ClientId(device.id);
                if current {
                    self.evaluation.farewell(device);
                    self.out.push(Output::Presence(PresenceUpdate::Client {
                        device,
                        online: false,
                    }));
                }
                self.access.abandon(conn, post_of!(self));
            }
            ConnKind::Gateway { device, .. } => {
                let device = GatewayId(device.id);
                if current {
                    self.out.push(Output::Presence(PresenceUpdate::Gateway {
                        device,
                        load: None,
                    }));
                    post_of!(self).publish(ClusterMessage::GatewayDown {
                        from: self.routing.node(),
                        device,
                    });
                    self.routing.gateway_gone(device);
                }
                // Requests waiting on it fail closed now, not at their deadline.
                self.access.fail_where(
                    |route, _| route == GatewayRoute::Local(conn),
                    post_of!(self),
                );
            }
            ConnKind::Relay => {}
        }
        tracing::debug!(conn, "channel closed");
    }

    /// Whether `conn`, joining under a device id whose channel `old` is
    /// live with another key, is a second device (a copied state directory,
    /// a cloned VM image) rather than the same one: if so it is refused
    /// with `duplicate_device` and the first keeps serving, untouched. A
    /// restarted daemon (a new key per process) finds its old channel
    /// closed already (its sockets closed with the process), or refused
    /// until the old one's silence deadline ends it.
    fn is_duplicate(
        &mut self,
        old: ConnId,
        public_key: &PublicKey,
        conn: ConnId,
        remote_ip: IpAddr,
        device: Uuid,
    ) -> bool {
        let Some(first) = self.presence.get(old) else {
            return false;
        };
        if first.public_key == *public_key {
            return false;
        }
        tracing::warn!(
            %device,
            first = %first.remote_ip,
            second = %remote_ip,
            "refused a second device with the same device id and another key (a copied state directory?)"
        );
        let reason = DisconnectReason::DuplicateDevice;
        let frame = match first.kind {
            ConnKind::Client { .. } => Frame::Client(PortalToClient::Disconnect { reason }),
            ConnKind::Gateway { .. } => Frame::Gateway(PortalToGateway::Disconnect { reason }),
            ConnKind::Relay => return false,
        };
        self.out.push(Output::Send { conn, frame });
        self.out.push(Output::Close { conn });
        true
    }

    /// Closes the channels doomed while handling an input, telling each why.
    fn reap(&mut self, wall: Timestamp) {
        while let Some((conn, reason)) = self.out.next_doomed() {
            if self.presence.get(conn).is_none() {
                continue;
            }
            if let Some(reason) = reason {
                post_of!(self).farewell(conn, reason);
            }
            self.out.push(Output::Close { conn });
            self.closed(conn, wall);
        }
        let revoked = self.out.take_relay_revoked();
        if !revoked.is_empty() {
            self.relays.revoke(&revoked, post_of!(self), wall);
        }
    }

    /// Timeouts, expiries, credential renewal and the cluster heartbeat.
    fn tick(&mut self, now: Instant, wall: Timestamp) {
        self.cluster_tick(now, wall);
        self.access.fail_overdue(now, post_of!(self));
        for (account, device) in self.access.expired(wall) {
            self.evaluation
                .reevaluate(account, device, &mut self.access, post_of!(self), wall);
        }
        for (conn, token) in self.presence.expired_tokens(wall) {
            if let Some(device) = self.presence.get(conn).and_then(|c| c.device()) {
                post_of!(self).relay_revoke(device.id);
            }
            self.out.doom(conn, Some(DisconnectReason::TokenExpired));
            self.access
                .revoke_where(|g| g.asker.token_id == token, post_of!(self));
        }
        // Channels closed above get no fresh relay credentials.
        self.reap(wall);
        self.relays.renew(post_of!(self), now, wall);
        self.reap(wall);
    }
}

/// Whether an event is a gateway's channel joining.
fn is_gateway_join(event: &Event) -> bool {
    matches!(event, Event::Joined(joined) if matches!(joined.party, Party::Gateway { .. }))
}

/// The interface of a device.
fn interface(device: &DeviceFacts, search_domain: Option<String>) -> Interface {
    Interface {
        ipv4: device.ipv4,
        ipv6: device.ipv6,
        dns_upstreams: Vec::new(),
        search_domain,
    }
}
