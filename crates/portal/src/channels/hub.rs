//! The hub: one task that owns every connected channel and the account graphs,
//! so the protocol logic runs without locks, one event at a time. Each
//! connection has a bounded outbound queue; a connection that cannot keep up
//! is disconnected instead of slowing everyone else down.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use jiff::Timestamp;
use postern_model::protocol::{
    Authorization, DisconnectReason, Interface, PortalToClient, PortalToGateway, PortalToRelay,
    ResourceDescription,
};
use postern_model::{ClientId, GatewayId, PublicKey, RelayId, ResourceId};
use serde::Serialize;
use tokio::sync::mpsc;
use uuid::Uuid;

use super::cluster::{ClusterMessage, GatewayAnnouncement, Heard, RelayAnnouncement};
use super::graph::AccountGraph;
use super::keys::PairSecrets;
use crate::change::Change;
use crate::domain::{Device, TokenRecord};
use crate::state::AppState;

/// Connection ids are process-local counters.
pub type ConnId = u64;

/// What the socket task writes.
#[derive(Debug)]
pub enum Outbound {
    Text(String),
    /// Close the socket (after the text frames queued before it).
    Close,
}

/// TURN credentials handed out live this long and are renewed at half-life.
pub const RELAY_CREDENTIAL_LIFETIME: Duration = Duration::from_secs(24 * 3600);

/// Who is on the other end of a new channel.
#[derive(Debug)]
pub enum Party {
    Client {
        account: Uuid,
        actor_id: Uuid,
        device: Device,
        country: Option<String>,
    },
    Gateway {
        account: Uuid,
        site_id: Uuid,
        device: Device,
    },
    Relay,
}

#[derive(Debug)]
pub struct NewConnection {
    pub id: ConnId,
    pub party: Party,
    pub token: TokenRecord,
    /// X25519 key of the device's current process (zeros for relays).
    pub public_key: PublicKey,
    pub remote_ip: IpAddr,
    pub sender: mpsc::Sender<Outbound>,
}

#[derive(Debug)]
pub enum HubEvent {
    Connected(Box<NewConnection>),
    Message {
        id: ConnId,
        text: String,
    },
    Closed {
        id: ConnId,
    },
    /// From another portal node.
    Cluster(Box<ClusterMessage>),
    /// The cluster listener reconnected: messages may have been lost.
    ClusterResync,
}

impl From<Heard> for HubEvent {
    fn from(heard: Heard) -> Self {
        match heard {
            Heard::Message(message) => HubEvent::Cluster(message),
            Heard::Resync => HubEvent::ClusterResync,
        }
    }
}

/// A connected channel.
pub(super) struct Conn {
    pub account: Option<Uuid>,
    pub token_id: Uuid,
    pub token_expires: Option<Timestamp>,
    pub public_key: PublicKey,
    pub remote_ip: IpAddr,
    pub sender: mpsc::Sender<Outbound>,
    pub kind: ConnKind,
    /// When the relay credentials it holds were issued.
    pub relays_issued: Instant,
}

pub(super) enum ConnKind {
    Client(ClientConn),
    Gateway(GatewayConn),
    Relay(RelayConn),
}

pub(super) struct ClientConn {
    pub actor_id: Uuid,
    pub device: Device,
    pub country: Option<String>,
    pub identity_provider: Option<Uuid>,
    /// What the client was told it has.
    pub visible: BTreeMap<ResourceId, ResourceDescription>,
}

pub(super) struct GatewayConn {
    pub site_id: Uuid,
    pub device: Device,
}

pub(super) struct RelayConn {
    pub relay_id: RelayId,
    pub addresses: Vec<SocketAddr>,
}

/// A granted (client device, resource) pair, kept while the client or the
/// gateway reconnects, until it is revoked or expires.
#[derive(Clone, Debug)]
pub(super) struct Grant {
    pub account: Uuid,
    pub actor_id: Uuid,
    pub client_device: ClientId,
    pub gateway_device: GatewayId,
    pub gateway_key: PublicKey,
    pub authorization: Authorization,
    /// The facts the decision used, kept for re-evaluation while the client
    /// is away.
    pub remote_ip: IpAddr,
    pub country: Option<String>,
    pub identity_provider: Option<Uuid>,
    pub client_verified: bool,
    pub client_os: Option<String>,
    pub token_id: Uuid,
    pub token_expires: Option<Timestamp>,
}

/// Where a gateway is connected.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum GatewayRoute {
    Local(ConnId),
    /// On another portal node.
    Remote(Uuid),
}

/// An access request waiting for the gateway's `authorized`.
pub(super) struct Pending {
    pub client_conn: ConnId,
    pub client_ref: String,
    pub gateway: GatewayRoute,
    pub gateway_peer: postern_model::protocol::Peer<GatewayId>,
    pub deadline: Instant,
    pub grant: Grant,
}

/// A gateway another portal node serves.
pub(super) struct RemoteGateway {
    pub node: Uuid,
    pub info: GatewayAnnouncement,
}

/// A relay registered with another portal node.
pub(super) struct RemoteRelay {
    pub node: Uuid,
    pub relay: RelayAnnouncement,
}

/// Secrets every portal node shares (from the store's settings).
pub struct HubSecrets {
    /// Key for the pair secrets (preshared keys, ICE credentials).
    pub pair_secret: [u8; 32],
    /// The TURN REST shared secret relays get.
    pub turn_secret: String,
}

pub struct Hub {
    pub(super) state: Arc<AppState>,
    pub(super) accounts: HashMap<Uuid, AccountGraph>,
    pub(super) conns: HashMap<ConnId, Conn>,
    pub(super) clients: HashMap<ClientId, ConnId>,
    pub(super) gateways: HashMap<GatewayId, ConnId>,
    pub(super) grants: HashMap<(ClientId, ResourceId), Grant>,
    pub(super) pending: HashMap<String, Pending>,
    pub(super) pair_secrets: PairSecrets,
    pub(super) turn_secret: String,
    /// This portal node.
    pub(super) node: Uuid,
    pub(super) cluster: Option<mpsc::UnboundedSender<ClusterMessage>>,
    pub(super) remote_gateways: HashMap<GatewayId, RemoteGateway>,
    pub(super) remote_relays: HashMap<RelayId, RemoteRelay>,
    /// Authorizations forwarded to a gateway here: ref -> the asking node.
    pub(super) remote_pending: HashMap<String, Uuid>,
    /// (client, gateway here) -> the client's node, for its candidates.
    pub(super) remote_pairs: HashMap<(ClientId, GatewayId), Uuid>,
    pub(super) nodes_seen: HashMap<Uuid, Instant>,
    pub(super) last_heartbeat: Instant,
    next_ref: u64,
    rng: u64,
    /// Connections to close after the current event.
    doomed: Vec<(ConnId, Option<DisconnectReason>)>,
}

impl Hub {
    pub fn new(
        state: Arc<AppState>,
        secrets: HubSecrets,
        node: Uuid,
        cluster: Option<mpsc::UnboundedSender<ClusterMessage>>,
    ) -> Self {
        let mut seed = [0u8; 8];
        if let Err(error) = crate::auth::token::random_bytes(&mut seed) {
            // Only gateway tie-breaking uses it; a fixed seed still works.
            tracing::warn!(%error, "no randomness for gateway selection");
        }
        Hub {
            state,
            accounts: HashMap::new(),
            conns: HashMap::new(),
            clients: HashMap::new(),
            gateways: HashMap::new(),
            grants: HashMap::new(),
            pending: HashMap::new(),
            pair_secrets: PairSecrets::new(secrets.pair_secret),
            turn_secret: secrets.turn_secret,
            node,
            cluster,
            remote_gateways: HashMap::new(),
            remote_relays: HashMap::new(),
            remote_pending: HashMap::new(),
            remote_pairs: HashMap::new(),
            nodes_seen: HashMap::new(),
            last_heartbeat: Instant::now(),
            next_ref: 0,
            rng: u64::from_le_bytes(seed) | 1,
            doomed: Vec::new(),
        }
    }

    /// Runs until every sender is gone.
    pub async fn run(
        mut self,
        mut events: mpsc::Receiver<HubEvent>,
        mut changes: mpsc::UnboundedReceiver<(Uuid, Change)>,
    ) {
        let mut tick = tokio::time::interval(Duration::from_millis(200));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        loop {
            tokio::select! {
                // Committed changes first: a request that follows an admin's
                // change must be decided on the changed graph.
                biased;
                change = changes.recv() => match change {
                    Some(first) => {
                        // Apply every change queued so far in one pass.
                        let mut batch = vec![first];
                        while let Ok(more) = changes.try_recv() {
                            batch.push(more);
                        }
                        for (account, change) in &batch {
                            self.publish(ClusterMessage::Change {
                                from: self.node,
                                account: *account,
                                change: change.clone(),
                            });
                        }
                        self.apply_changes(batch).await;
                    }
                    None => break,
                },
                event = events.recv() => match event {
                    Some(event) => self.handle(event).await,
                    None => break,
                },
                _ = tick.tick() => self.tick(Instant::now(), Timestamp::now()).await,
            }
            self.reap();
        }
    }

    async fn handle(&mut self, event: HubEvent) {
        match event {
            HubEvent::Connected(connection) => self.connected(*connection).await,
            HubEvent::Message { id, text } => self.message(id, &text).await,
            HubEvent::Closed { id } => self.closed(id),
            HubEvent::Cluster(message) => self.cluster_message(*message).await,
            HubEvent::ClusterResync => self.resync().await,
        }
    }

    pub(super) fn next_ref(&mut self) -> String {
        self.next_ref += 1;
        // Unique across portal nodes: replies may come back through another.
        format!("{}-{}", &self.node.simple().to_string()[..8], self.next_ref)
    }

    /// xorshift64*: picks among equally good gateways; needs no quality.
    pub(super) fn random(&mut self, bound: usize) -> usize {
        self.rng ^= self.rng >> 12;
        self.rng ^= self.rng << 25;
        self.rng ^= self.rng >> 27;
        (self.rng.wrapping_mul(0x2545_f491_4f6c_dd1d) % bound.max(1) as u64) as usize
    }

    /// Queues a message; a full or closed queue dooms the connection.
    pub(super) fn send(&mut self, id: ConnId, message: &impl Serialize) {
        let Some(conn) = self.conns.get(&id) else {
            return;
        };
        let text = match serde_json::to_string(message) {
            Ok(text) => text,
            Err(error) => {
                tracing::error!(%error, "cannot encode a channel message");
                return;
            }
        };
        match conn.sender.try_send(Outbound::Text(text)) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(_)) => {
                tracing::warn!(conn = id, "channel cannot keep up; disconnecting it");
                self.doomed.push((id, Some(DisconnectReason::Overloaded)));
            }
            // The socket is gone; its close event is on the way.
            Err(mpsc::error::TrySendError::Closed(_)) => self.doomed.push((id, None)),
        }
    }

    pub(super) fn send_client(&mut self, id: ConnId, message: PortalToClient) {
        self.send(id, &message);
    }

    pub(super) fn send_gateway(&mut self, id: ConnId, message: PortalToGateway) {
        self.send(id, &message);
    }

    /// Closes a connection after this event, telling it why.
    pub(super) fn disconnect(&mut self, id: ConnId, reason: DisconnectReason) {
        self.doomed.push((id, Some(reason)));
    }

    fn reap(&mut self) {
        while let Some((id, reason)) = self.doomed.pop() {
            let Some(conn) = self.conns.get(&id) else {
                continue;
            };
            if let Some(reason) = reason {
                let frame = match conn.kind {
                    ConnKind::Client(_) => {
                        serde_json::to_string(&PortalToClient::Disconnect { reason })
                    }
                    ConnKind::Gateway(_) => {
                        serde_json::to_string(&PortalToGateway::Disconnect { reason })
                    }
                    ConnKind::Relay(_) => {
                        serde_json::to_string(&PortalToRelay::Disconnect { reason })
                    }
                };
                if let Ok(frame) = frame {
                    let _ = conn.sender.try_send(Outbound::Text(frame));
                }
            }
            let _ = conn.sender.try_send(Outbound::Close);
            self.closed(id);
        }
    }

    /// Forgets a connection (its socket closed or it was disconnected).
    fn closed(&mut self, id: ConnId) {
        let Some(conn) = self.conns.remove(&id) else {
            return;
        };
        match conn.kind {
            ConnKind::Client(client) => {
                let device_id = ClientId(client.device.id);
                if self.clients.get(&device_id) == Some(&id) {
                    self.clients.remove(&device_id);
                    self.state.online().set_client(device_id.0, false);
                }
                let abandoned: Vec<String> = self
                    .pending
                    .iter()
                    .filter(|(_, p)| p.client_conn == id)
                    .map(|(r, _)| r.clone())
                    .collect();
                for reference in abandoned {
                    if let Some(pending) = self.pending.remove(&reference) {
                        self.withdraw_pending(&pending.grant);
                    }
                }
            }
            ConnKind::Gateway(gateway) => {
                let device_id = GatewayId(gateway.device.id);
                if self.gateways.get(&device_id) == Some(&id) {
                    self.gateways.remove(&device_id);
                    self.state.online().set_gateway(device_id.0, None);
                    self.publish(ClusterMessage::GatewayDown {
                        from: self.node,
                        device: device_id,
                    });
                    self.remote_pairs.retain(|(_, g), _| *g != device_id);
                }
                // Requests waiting on it fail closed now rather than in 15 s.
                let waiting: Vec<String> = self
                    .pending
                    .iter()
                    .filter(|(_, p)| p.gateway == GatewayRoute::Local(id))
                    .map(|(r, _)| r.clone())
                    .collect();
                for reference in waiting {
                    self.fail_pending(&reference);
                }
            }
            ConnKind::Relay(relay) => self.relay_gone(relay.relay_id),
        }
        tracing::debug!(conn = id, "channel closed");
    }

    /// The interface of a device.
    pub(super) fn interface(device: &Device, search_domain: Option<String>) -> Interface {
        Interface {
            ipv4: device.ipv4,
            ipv6: device.ipv6,
            dns_upstreams: Vec::new(),
            search_domain,
        }
    }

    /// Loads an account's graph if it is not in memory yet.
    pub(super) async fn ensure_account(&mut self, account: Uuid) -> bool {
        if self.accounts.contains_key(&account) {
            return true;
        }
        match AccountGraph::load(&self.state.store, account).await {
            Ok(graph) => {
                self.accounts.insert(account, graph);
                true
            }
            Err(error) => {
                tracing::error!(%account, %error, "cannot load the account's policy graph");
                false
            }
        }
    }

    /// Clients the gateway serves now, for presence and load balancing.
    pub(super) fn gateway_load(&self, gateway_device: GatewayId) -> u64 {
        let mut clients: Vec<ClientId> = self
            .grants
            .values()
            .filter(|g| g.gateway_device == gateway_device)
            .map(|g| g.client_device)
            .collect();
        clients.sort_unstable();
        clients.dedup();
        clients.len() as u64
    }

    pub(super) fn refresh_gateway_presence(&self, gateway_device: GatewayId) {
        if self.gateways.contains_key(&gateway_device) {
            self.state
                .online()
                .set_gateway(gateway_device.0, Some(self.gateway_load(gateway_device)));
        }
    }
}
