//! The control channels (SPEC section 5): `/v1/client`, `/v1/gateway` and
//! `/v1/relay` WebSockets carrying JSON messages. `socket` authenticates and
//! pumps frames; the `hub` owns the protocol: access requests, gateway
//! selection, ICE candidate relay, presence and continuous evaluation.

mod access;
mod connect;
mod evaluation;
pub mod graph;
pub mod hub;
pub mod keys;
mod relays;
mod socket;

use std::sync::Arc;

use axum::Router;
use axum::routing::get;
use tokio::sync::mpsc;

use crate::state::AppState;

/// Events from all sockets to the hub; a full queue slows the readers, not
/// the hub.
const HUB_QUEUE: usize = 16 * 1024;

pub fn router() -> Router<Arc<AppState>> {
    Router::new()
        .route("/v1/client", get(socket::client))
        .route("/v1/gateway", get(socket::gateway))
        .route("/v1/relay", get(socket::relay))
}

/// Starts the hub task (once per state).
pub fn start(state: Arc<AppState>) {
    let (sender, receiver) = mpsc::channel(HUB_QUEUE);
    if !state.set_hub(sender) {
        return;
    }
    let changes = state.subscribe_changes();
    tokio::spawn(hub::Hub::new(state).run(receiver, changes));
}
