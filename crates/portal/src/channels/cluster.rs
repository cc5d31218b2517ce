//! Several portal nodes on one PostgreSQL database (F30): they talk over
//! `LISTEN/NOTIFY` on one channel (see `notify`). Each node announces its
//! gateways and relays (and repeats them in a heartbeat), publishes the
//! changes its API commits, and forwards protocol messages to devices
//! connected elsewhere, so a client on node A and a gateway on node B still
//! connect. Messages carry the sender and, where they are for one node, the
//! receiver; a node ignores its own.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use jiff::Timestamp;
use postern_model::protocol::{PortalToClient, PortalToGateway};
use postern_model::{ClientId, GatewayId, PublicKey, RelayId};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::change::Change;

pub(crate) const CHANNEL: &str = "postern_cluster";
/// PostgreSQL refuses NOTIFY payloads of 8000 bytes or more.
pub(crate) const MAX_PAYLOAD: usize = 7900;
/// How often a node repeats what it serves.
pub(crate) const HEARTBEAT: Duration = Duration::from_secs(2);
/// A node not heard from for this long is gone, with its gateways and relays.
pub(crate) const NODE_TIMEOUT: Duration = Duration::from_secs(10);

/// A gateway connected to some node.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct GatewayAnnouncement {
    pub account: Uuid,
    pub site_id: Uuid,
    pub device: GatewayId,
    pub public_key: PublicKey,
    pub ipv4: Ipv4Addr,
    pub ipv6: Ipv6Addr,
    pub load: u64,
}

/// A relay registered with some node.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct RelayAnnouncement {
    pub id: RelayId,
    pub addresses: Vec<SocketAddr>,
    /// Older nodes announce none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<postern_model::protocol::RelayTls>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub(crate) enum ClusterMessage {
    Change {
        from: Uuid,
        account: Uuid,
        change: Change,
    },
    Heartbeat {
        from: Uuid,
        gateways: Vec<GatewayAnnouncement>,
        relays: Vec<RelayAnnouncement>,
    },
    GatewayUp {
        from: Uuid,
        gateway: GatewayAnnouncement,
    },
    GatewayDown {
        from: Uuid,
        device: GatewayId,
    },
    RelayUp {
        from: Uuid,
        relay: RelayAnnouncement,
    },
    RelayDown {
        from: Uuid,
        id: RelayId,
    },
    /// These devices' relay credentials issued until `not_after` are void
    /// (see `PortalToRelay::RevokeCredentials`); every node tells its relays.
    RelayRevoke {
        from: Uuid,
        devices: Vec<Uuid>,
        not_after: Timestamp,
    },
    /// For a gateway connected to node `to`.
    ToGateway {
        from: Uuid,
        to: Uuid,
        device: GatewayId,
        message: Box<PortalToGateway>,
    },
    /// For a client connected to node `to`.
    ToClient {
        from: Uuid,
        to: Uuid,
        device: ClientId,
        message: Box<PortalToClient>,
    },
    /// A gateway on `from` confirmed an authorization node `to` asked for.
    Authorized {
        from: Uuid,
        to: Uuid,
        reference: String,
    },
}

impl ClusterMessage {
    pub(crate) fn from(&self) -> Uuid {
        match self {
            ClusterMessage::Change { from, .. }
            | ClusterMessage::Heartbeat { from, .. }
            | ClusterMessage::GatewayUp { from, .. }
            | ClusterMessage::GatewayDown { from, .. }
            | ClusterMessage::RelayUp { from, .. }
            | ClusterMessage::RelayDown { from, .. }
            | ClusterMessage::RelayRevoke { from, .. }
            | ClusterMessage::ToGateway { from, .. }
            | ClusterMessage::ToClient { from, .. }
            | ClusterMessage::Authorized { from, .. } => *from,
        }
    }

    /// Whether node `node` should act on it.
    pub(crate) fn is_for(&self, node: Uuid) -> bool {
        if self.from() == node {
            return false;
        }
        match self {
            ClusterMessage::ToGateway { to, .. }
            | ClusterMessage::ToClient { to, .. }
            | ClusterMessage::Authorized { to, .. } => *to == node,
            _ => true,
        }
    }
}

/// Candidates cross nodes in NOTIFY payloads (under 8000 bytes): eight of at
/// most 512 bytes each fit.
pub(crate) fn chunks(candidates: Vec<String>) -> impl Iterator<Item = Vec<String>> {
    let mut candidates = candidates.into_iter().peekable();
    std::iter::from_fn(move || {
        candidates.peek()?;
        Some(candidates.by_ref().take(8).collect())
    })
}
