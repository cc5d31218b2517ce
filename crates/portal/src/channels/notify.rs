//! The cluster's wire: PostgreSQL `LISTEN/NOTIFY` on one channel, with a
//! publisher and a listener per node (see `cluster` for the messages).
//! Every payload is sealed, and one that does not open is dropped and
//! counted (see `seal`).

use std::sync::Arc;
use std::time::Duration;

use jiff::Timestamp;
use sqlx::postgres::{PgListener, PgPoolOptions};
use tokio::sync::mpsc;
use uuid::Uuid;

use super::cluster::{CHANNEL, ClusterMessage, MAX_PAYLOAD};
use super::seal::{Rejection, Seal};
use crate::secrets::SecretKey;

/// Counts a message dropped from the bus.
pub(super) type Rejected = Arc<dyn Fn(Rejection) + Send + Sync>;

/// What the listener hears for this node.
#[derive(Debug)]
pub(super) enum Heard {
    Message(Box<ClusterMessage>),
    /// The listener reconnected: messages may have been lost.
    Resync,
}

/// Connects the node to the cluster channel: a publisher with its own
/// connection (so messages keep their order) and a listener that hands every
/// message meant for this node to `inbox` (the hub's, in arrival order with
/// the sockets' events). A listener that lost its connection asks for a
/// resync, since messages may be lost.
pub(super) async fn connect<T: From<Heard> + Send + 'static>(
    url: &str,
    node: Uuid,
    key: &SecretKey,
    rejected: Rejected,
    inbox: mpsc::Sender<T>,
) -> Result<mpsc::UnboundedSender<ClusterMessage>, sqlx::Error> {
    let sealer = Seal::new(key);
    let mut opener = Seal::new(key);
    let publisher = PgPoolOptions::new().max_connections(1).connect(url).await?;
    let mut listener = PgListener::connect(url).await?;
    listener.listen(CHANNEL).await?;
    let (sender, mut outbound) = mpsc::unbounded_channel::<ClusterMessage>();
    tokio::spawn(async move {
        while let Some(message) = outbound.recv().await {
            let Ok(json) = serde_json::to_string(&message) else {
                continue;
            };
            let payload = sealer.seal(node, Timestamp::now().as_millisecond(), &json);
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
                    let now = Timestamp::now().as_millisecond();
                    let message = match opener.open(notification.payload(), now) {
                        Ok((sender, json)) => match serde_json::from_str::<ClusterMessage>(json) {
                            // The seal names the node that speaks.
                            Ok(message) if message.from() == sender => message,
                            Ok(_) => {
                                rejected(Rejection::Malformed);
                                tracing::warn!(%sender, "a sealed cluster message speaks for another node; dropped");
                                continue;
                            }
                            Err(error) => {
                                rejected(Rejection::Malformed);
                                tracing::warn!(%error, "unreadable cluster message (a newer portal node?)");
                                continue;
                            }
                        },
                        Err(rejection) => {
                            rejected(rejection);
                            tracing::warn!(reason = rejection.as_str(), "cluster message dropped");
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
