//! Several portal nodes on one PostgreSQL database (F30): they talk over
//! `LISTEN/NOTIFY` on one channel. Each node announces its gateways and relays
//! (and repeats them in a heartbeat), publishes the changes its API commits,
//! and forwards protocol messages to devices connected elsewhere, so a client
//! on node A and a gateway on node B still connect. Messages carry the sender
//! and, where they are for one node, the receiver; a node ignores its own.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use postern_model::protocol::{PortalToClient, PortalToGateway};
use postern_model::{ClientId, GatewayId, PublicKey, RelayId};
use serde::{Deserialize, Serialize};
use sqlx::postgres::{PgListener, PgPoolOptions};
use tokio::sync::mpsc;
use uuid::Uuid;

use crate::change::Change;

pub const CHANNEL: &str = "postern_cluster";
/// PostgreSQL refuses NOTIFY payloads of 8000 bytes or more.
pub const MAX_PAYLOAD: usize = 7900;
/// How often a node repeats what it serves.
pub const HEARTBEAT: Duration = Duration::from_secs(2);
/// A node not heard from for this long is gone, with its gateways and relays.
pub const NODE_TIMEOUT: Duration = Duration::from_secs(10);

/// A gateway connected to some node.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GatewayAnnouncement {
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
pub struct RelayAnnouncement {
    pub id: RelayId,
    pub addresses: Vec<SocketAddr>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ClusterMessage {
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
    pub fn from(&self) -> Uuid {
        match self {
            ClusterMessage::Change { from, .. }
            | ClusterMessage::Heartbeat { from, .. }
            | ClusterMessage::GatewayUp { from, .. }
            | ClusterMessage::GatewayDown { from, .. }
            | ClusterMessage::RelayUp { from, .. }
            | ClusterMessage::RelayDown { from, .. }
            | ClusterMessage::ToGateway { from, .. }
            | ClusterMessage::ToClient { from, .. }
            | ClusterMessage::Authorized { from, .. } => *from,
        }
    }

    /// Whether node `node` should act on it.
    pub fn is_for(&self, node: Uuid) -> bool {
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

/// What the listener hears for this node.
#[derive(Debug)]
pub enum Heard {
    Message(Box<ClusterMessage>),
    /// The listener reconnected: messages may have been lost.
    Resync,
}

/// Connects the node to the cluster channel: a publisher with its own
/// connection (so messages keep their order) and a listener that hands every
/// message meant for this node to `inbox` (the hub's, in arrival order with
/// the sockets' events). A listener that lost its connection asks for a
/// resync, since messages may be lost.
pub async fn connect<T: From<Heard> + Send + 'static>(
    url: &str,
    node: Uuid,
    inbox: mpsc::Sender<T>,
) -> Result<mpsc::UnboundedSender<ClusterMessage>, sqlx::Error> {
    let publisher = PgPoolOptions::new().max_connections(1).connect(url).await?;
    let mut listener = PgListener::connect(url).await?;
    listener.listen(CHANNEL).await?;
    let (sender, mut outbound) = mpsc::unbounded_channel::<ClusterMessage>();
    tokio::spawn(async move {
        while let Some(message) = outbound.recv().await {
            let Ok(payload) = serde_json::to_string(&message) else {
                continue;
            };
            if payload.len() > MAX_PAYLOAD {
                tracing::error!(
                    bytes = payload.len(),
                    "cluster message too large for NOTIFY; dropped"
                );
                continue;
            }
            if let Err(error) = sqlx::query("SELECT pg_notify($1, $2)")
                .bind(CHANNEL)
                .bind(payload)
                .execute(&publisher)
                .await
            {
                tracing::warn!(%error, "cannot publish to the portal cluster");
            }
        }
    });
    tokio::spawn(async move {
        loop {
            match listener.try_recv().await {
                Ok(Some(notification)) => {
                    let message: ClusterMessage = match serde_json::from_str(notification.payload())
                    {
                        Ok(message) => message,
                        Err(error) => {
                            tracing::warn!(%error, "unreadable cluster message (a newer portal node?)");
                            continue;
                        }
                    };
                    if message.is_for(node)
                        && inbox
                            .send(Heard::Message(Box::new(message)).into())
                            .await
                            .is_err()
                    {
                        break;
                    }
                }
                // The connection was lost and is back: what was said
                // meanwhile is gone.
                Ok(None) => {
                    tracing::warn!("cluster listener reconnected; resynchronizing");
                    if inbox.send(Heard::Resync.into()).await.is_err() {
                        break;
                    }
                }
                Err(error) => {
                    tracing::warn!(%error, "cluster listener failed; retrying");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }
    });
    Ok(sender)
}
