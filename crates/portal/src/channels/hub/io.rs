//! What the hub core takes in and gives out. All of it is data: the shell
//! moves inputs in from the sockets, the cluster, the store and the clock,
//! and carries outputs out to the sockets, the cluster, the shared state and
//! the store. Time is an argument of `Hub::handle`, never read inside.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::Duration;

use jiff::Timestamp;
use postern_model::protocol::{
    ClientToPortal, DenyReason, FlowRecord, GatewayToPortal, PortalToClient, PortalToGateway,
    PortalToRelay, RelayToPortal,
};
use postern_model::{ClientId, GatewayId, PublicKey, RelayId, ResourceId};
use uuid::Uuid;

use super::super::cluster::ClusterMessage;
use super::super::graph::{AccountGraph, GraphPatch};
use crate::change::Change;
use crate::domain::{Device, TokenRecord};
use crate::store::StoreError;
pub(crate) use crate::store::grants::{GrantKey, GrantRecord, GrantWrite, StoredGrant};

/// Connection ids are process-local counters.
pub(crate) type ConnId = u64;

/// A channel that passed authentication, with the facts the portal decides by.
#[derive(Debug)]
pub(crate) struct Joined {
    pub conn: ConnId,
    pub party: Party,
    pub token: TokenFacts,
    /// X25519 key of the device's current process (zeros for relays).
    pub public_key: PublicKey,
    pub remote_ip: IpAddr,
    /// What the daemon says about itself; recorded once the channel is
    /// admitted (a refused duplicate must not rename the device it copies).
    pub details: DeviceDetails,
}

/// A device's self-description at connect: name, OS, version.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct DeviceDetails {
    pub name: String,
    pub os: Option<String>,
    pub version: Option<String>,
}

/// Who is on the other end of a new channel.
#[derive(Debug)]
pub(crate) enum Party {
    Client {
        account: Uuid,
        actor_id: Uuid,
        device: DeviceFacts,
        country: Option<String>,
    },
    Gateway {
        account: Uuid,
        site_id: Uuid,
        device: DeviceFacts,
    },
    /// Relays belong to no account; the id is minted for this connection.
    Relay { id: RelayId },
}

impl Party {
    pub(crate) fn account(&self) -> Option<Uuid> {
        match self {
            Party::Client { account, .. } | Party::Gateway { account, .. } => Some(*account),
            Party::Relay { .. } => None,
        }
    }

    pub(crate) fn device(&self) -> Option<&DeviceFacts> {
        match self {
            Party::Client { device, .. } | Party::Gateway { device, .. } => Some(device),
            Party::Relay { .. } => None,
        }
    }
}

/// What the hub needs of a device row.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct DeviceFacts {
    pub id: Uuid,
    pub ipv4: Ipv4Addr,
    pub ipv6: Ipv6Addr,
    pub verified: bool,
    pub os: Option<String>,
}

impl From<&Device> for DeviceFacts {
    fn from(device: &Device) -> Self {
        DeviceFacts {
            id: device.id,
            ipv4: device.ipv4,
            ipv6: device.ipv6,
            verified: device.verified,
            os: device.os.clone(),
        }
    }
}

/// What the hub needs of the token a channel presented.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct TokenFacts {
    pub id: Uuid,
    pub expires_at: Option<Timestamp>,
    pub identity_provider: Option<Uuid>,
}

impl From<&TokenRecord> for TokenFacts {
    fn from(token: &TokenRecord) -> Self {
        TokenFacts {
            id: token.id,
            expires_at: token.expires_at,
            identity_provider: token.identity_provider_id,
        }
    }
}

/// A frame from a connection, parsed by its socket task for the role its
/// token has.
#[derive(Debug)]
pub(crate) enum Inbound {
    Client(ClientToPortal),
    Gateway(GatewayToPortal),
    Relay(RelayToPortal),
    /// Not a message the role sends: answered with an `error` frame.
    Invalid {
        reference: Option<String>,
        message: String,
    },
}

#[derive(Debug)]
pub(crate) enum Input {
    Joined(Box<Joined>),
    Message {
        conn: ConnId,
        message: Inbound,
    },
    /// The socket closed.
    Closed {
        conn: ConnId,
    },
    /// The shell could not queue a frame: the connection's queue is full
    /// (`overloaded`) or its socket is gone.
    Undeliverable {
        conn: ConnId,
        overloaded: bool,
    },
    /// Changes this node's API committed.
    Changes(Vec<(Uuid, Change)>),
    /// From another portal node.
    Cluster(Box<ClusterMessage>),
    /// The cluster listener reconnected: messages may have been lost.
    ClusterResync,
    /// The answer to `Output::Load`.
    Loaded {
        account: Uuid,
        result: Box<Result<Loaded, StoreError>>,
    },
    /// Timeouts, expiries, renewals and the cluster heartbeat are due now.
    Tick,
}

/// An account's graph as the store has it now.
#[derive(Debug)]
pub(crate) struct Loaded {
    pub graph: GraphLoad,
    /// The verification of the client devices the load asked for (those
    /// the store could not read are missing).
    pub verified: HashMap<ClientId, bool>,
    /// The authorizations the store holds for the account, read after
    /// this node's ledger writes up to the request's `after` (whole loads
    /// only: a patch leaves the ledger as it is).
    pub grants: Option<Vec<StoredGrant>>,
}

/// What a load read: the whole graph, or the rows its changes touched.
#[derive(Debug)]
pub(crate) enum GraphLoad {
    Whole(Box<AccountGraph>),
    Patch(GraphPatch),
}

#[derive(Debug, PartialEq)]
pub(crate) enum Output {
    /// A frame for a connection, after the ones before it.
    Send {
        conn: ConnId,
        frame: Frame,
    },
    /// Close a connection after the frames queued before it.
    Close {
        conn: ConnId,
    },
    /// For the other portal nodes.
    Publish(ClusterMessage),
    /// Who is online changed.
    Presence(PresenceUpdate),
    Metric(Metric),
    /// Read an account from the store and answer with `Input::Loaded`.
    Load(LoadRequest),
    /// Write to the stored authorizations, in `seq` order (see `ledger`).
    Persist {
        seq: u64,
        write: GrantWrite,
    },
    /// A gateway's ended flows for the flow log, in its account; once
    /// stored, `flows_stored` goes back on `conn`.
    StoreFlows {
        conn: ConnId,
        account: Uuid,
        gateway: GatewayId,
        batch: u64,
        flows: Vec<FlowRecord>,
    },
    /// An access request was refused (the console's live denials).
    Refused(Refused),
    /// A client or gateway was admitted: its details and address, now.
    Seen {
        account: Uuid,
        device: Uuid,
        details: DeviceDetails,
        remote_ip: IpAddr,
    },
}

/// A message for one of the three roles.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Frame {
    Client(PortalToClient),
    Gateway(PortalToGateway),
    Relay(PortalToRelay),
}

impl Frame {
    pub(crate) fn to_json(&self) -> serde_json::Result<String> {
        match self {
            Frame::Client(message) => serde_json::to_string(message),
            Frame::Gateway(message) => serde_json::to_string(message),
            Frame::Relay(message) => serde_json::to_string(message),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum PresenceUpdate {
    Client {
        device: ClientId,
        online: bool,
    },
    /// `load: None` takes the gateway offline.
    Gateway {
        device: GatewayId,
        load: Option<u64>,
    },
}

/// A refused access request: who, what, why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Refused {
    pub account: Uuid,
    pub actor: Uuid,
    pub client: ClientId,
    pub resource: ResourceId,
    pub reason: DenyReason,
    /// The conditions that did not hold (`forbidden` by conditions).
    pub violated: Vec<String>,
}

/// Counters for `--metrics`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Metric {
    Granted,
    Denied(DenyReason),
}

/// The account's graph, and the verification of these client devices.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct LoadRequest {
    pub account: Uuid,
    pub clients: Vec<ClientId>,
    /// `Some`: only the rows these changes touched, to patch the graph in
    /// place; `None`: the whole graph (a first load, a gateway's join,
    /// `Everything`).
    pub rows: Option<Vec<Change>>,
    /// Read only once this node's `Persist` outputs up to this sequence
    /// are in the store, so the load sees every write made before it.
    pub after: u64,
}

/// Secrets every portal node shares (from the store's settings).
pub(crate) struct HubSecrets {
    /// Key for the pair secrets (preshared keys, ICE credentials).
    pub pair_secret: [u8; 32],
    /// The TURN REST shared secret relays get.
    pub turn_secret: String,
}

/// What a hub is made with.
pub(crate) struct HubConfig {
    /// This portal node.
    pub node: Uuid,
    /// Whether other nodes may share the database (PostgreSQL).
    pub clustered: bool,
    pub secrets: HubSecrets,
    /// How long a gateway has to confirm an authorization.
    pub authorize_timeout: Duration,
    /// Access requests one client channel may have waiting.
    pub pending_per_client: usize,
    /// Seeds the tie-break among equally loaded gateways.
    pub seed: u64,
}
