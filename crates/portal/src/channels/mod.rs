//! The control channels (SPEC section 5): `/v1/client`, `/v1/gateway` and
//! `/v1/relay` WebSockets carrying JSON messages. `socket` authenticates and
//! pumps frames; the `hub` is the protocol as a state machine without I/O
//! (access requests, gateway selection, ICE candidate relay, presence and
//! continuous evaluation); `shell` is its task, which moves events in and
//! carries outputs out, with `loader` reading the store and `notify` talking
//! to the other portal nodes.

#![warn(unreachable_pub)]

mod admission;
pub(crate) mod allowance;
pub(crate) mod cluster;
pub(crate) mod graph;
pub(crate) mod hub;
mod inbound;
pub(crate) mod keys;
mod loader;
mod notify;
pub(crate) mod seal;
mod shell;
mod socket;
mod version;
mod writer;

use std::sync::Arc;
use std::time::Instant;

use axum::Router;
use axum::routing::get;
use tokio::sync::mpsc;

use self::hub::{Hub, HubConfig, HubSecrets};
use self::shell::{HubEvent, Shell};
use crate::secrets::SecretKey;
use crate::state::AppState;
use crate::store::{Engine, Store, StoreError, settings};
use uuid::Uuid;

/// Events from all sockets to the hub; a full queue slows the readers, not
/// the hub.
const HUB_QUEUE: usize = 16 * 1024;

pub(crate) fn router() -> Router<Arc<AppState>> {
    Router::new()
        .route("/v1/client", get(socket::client))
        .route("/v1/gateway", get(socket::gateway))
        .route("/v1/relay", get(socket::relay))
}

/// Why the channels cannot start.
#[derive(Debug, thiserror::Error)]
pub(crate) enum StartError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("cannot join the portal cluster: {0}")]
    Cluster(#[from] sqlx::Error),
    #[error(
        "a portal on PostgreSQL needs its secret key (POSTERN_SECRET_KEY or the key file) to \
         authenticate the other nodes"
    )]
    NoSecretKey,
    #[error("the setting {0} does not open with this secret key (a portal node with another key?)")]
    SealedSetting(&'static str),
    #[error("the setting {0} is sealed, and this portal has no secret key to open it")]
    SealedWithoutKey(&'static str),
    #[error("cannot seal a setting: {0}")]
    Seal(#[from] crate::secrets::SecretError),
}

/// What a connecting socket hands its work to: the hub's inbox and the
/// batcher that records devices.
#[derive(Clone, Debug)]
struct Inbox {
    hub: mpsc::Sender<HubEvent>,
    admission: admission::Admission,
}

/// Starts the hub task (once per state). On PostgreSQL the node also joins
/// the cluster of portal nodes sharing the database.
pub(crate) async fn start(state: Arc<AppState>) -> Result<(), StartError> {
    let (sender, receiver) = mpsc::channel::<HubEvent>(HUB_QUEUE);
    let caps = crate::store::devices::DeviceCaps {
        per_actor: state.limits.devices_per_actor,
        per_token: state.limits.devices_per_token,
    };
    let admission =
        admission::Admission::spawn(state.store.clone(), caps, state.limits.connect_queue);
    let inbox = Inbox {
        hub: sender.clone(),
        admission: admission.clone(),
    };
    if !state.set_hub(inbox) {
        return Ok(());
    }
    let secrets = shared_secrets(&state.store, state.secret_key.as_ref()).await?;
    let node = Uuid::new_v4();
    let cluster = match state.store.engine() {
        Engine::Postgres => {
            let key = state.secret_key.as_ref().ok_or(StartError::NoSecretKey)?;
            let counted = state.clone();
            let rejected: notify::Rejected =
                Arc::new(move |why| counted.metrics.cluster_rejected(why.as_str()));
            Some(notify::connect(state.store.url(), node, key, rejected, sender).await?)
        }
        Engine::Sqlite => None,
    };
    tracing::info!(%node, clustered = cluster.is_some(), "channel hub started");
    let mut seed = [0u8; 8];
    if let Err(error) = crate::auth::token::random_bytes(&mut seed) {
        // Only gateway tie-breaking uses it; a fixed seed still works.
        tracing::warn!(%error, "no randomness for gateway selection");
    }
    let config = HubConfig {
        node,
        clustered: cluster.is_some(),
        secrets,
        authorize_timeout: state.authorize_timeout,
        pending_per_client: state.limits.pending_per_client,
        seed: u64::from_le_bytes(seed),
    };
    let hub = Hub::new(config, Instant::now());
    let changes = state.subscribe_changes();
    let writer = writer::spawn(state.store.clone());
    tokio::spawn(Shell::new(hub, state, cluster, writer, admission).run(receiver, changes));
    Ok(())
}

/// The secrets all nodes must agree on, created by whichever node starts
/// first, sealed with the portal's secret key when it has one: a database
/// backup or a read-only role alone derives no preshared key and mints no
/// TURN credentials.
async fn shared_secrets(store: &Store, key: Option<&SecretKey>) -> Result<HubSecrets, StartError> {
    use base64::Engine as _;
    let encoding = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let random = |length: usize| {
        let mut bytes = vec![0u8; length];
        crate::auth::token::random_bytes(&mut bytes)
            .map_err(|e| StoreError::Corrupt {
                table: "settings",
                detail: e.to_string(),
            })
            .map(|()| encoding.encode(bytes))
    };
    let (pair, turn) = (random(32)?, random(24)?);
    let mut tx = store.write().await?;
    let pair = shared_secret(&mut tx, key, "pair_secret", pair).await?;
    let turn = shared_secret(&mut tx, key, "turn_secret", turn).await?;
    tx.commit().await.map_err(StoreError::from)?;
    let pair: [u8; 32] = encoding
        .decode(&pair)
        .ok()
        .and_then(|bytes| bytes.try_into().ok())
        .ok_or(StoreError::Corrupt {
            table: "settings",
            detail: "pair_secret is not 32 bytes of base64".to_string(),
        })?;
    Ok(HubSecrets {
        pair_secret: pair,
        turn_secret: turn,
    })
}

/// One shared secret: `fresh` unless a node stored one first. A value
/// stored in plaintext (before sealing, or by a portal without a key) is
/// sealed in place once a key is there.
async fn shared_secret(
    tx: &mut crate::store::Conn,
    key: Option<&SecretKey>,
    name: &'static str,
    fresh: String,
) -> Result<String, StartError> {
    let initial = match key {
        Some(key) => key.seal(&fresh, name)?,
        None => fresh,
    };
    let stored = settings::get_or_create(tx, name, || initial).await?;
    match key {
        Some(key) if SecretKey::is_sealed(&stored) => key
            .open(&stored, name)
            .map_err(|_| StartError::SealedSetting(name)),
        Some(key) => {
            settings::set(tx, name, &key.seal(&stored, name)?).await?;
            tracing::info!(setting = name, "sealed a shared secret stored in plaintext");
            Ok(stored)
        }
        None if SecretKey::is_sealed(&stored) => Err(StartError::SealedWithoutKey(name)),
        None => Ok(stored),
    }
}
