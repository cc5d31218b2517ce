//! Identity providers and directories.

use std::sync::Arc;

use axum::Router;

use crate::state::AppState;

/// This part's routes.
pub fn routes() -> Router<Arc<AppState>> {
    Router::new()
}
