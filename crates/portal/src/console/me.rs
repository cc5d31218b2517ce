//! The page of a signed-in user who is not an admin: their devices and the resources they may use.

use std::sync::Arc;

use axum::Router;

use crate::state::AppState;

/// This part's routes.
pub fn routes() -> Router<Arc<AppState>> {
    Router::new()
}
