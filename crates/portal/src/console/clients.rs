//! Clients (devices): who, last seen, version, OS; verify, delete.

use std::sync::Arc;

use axum::Router;

use crate::state::AppState;

/// This part's routes.
pub fn routes() -> Router<Arc<AppState>> {
    Router::new()
}
