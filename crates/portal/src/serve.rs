//! `postern portal`: binds the listener and serves the REST API and the
//! channels until asked to stop.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::routing::get;
use axum::serve::ListenerExt;

use crate::state::AppState;

/// Everything `postern portal` needs besides the store.
#[derive(Clone, Debug)]
pub struct ServeConfig {
    pub listen: SocketAddr,
    /// How users and daemons reach the portal (links, redirects).
    pub external_url: Option<String>,
}

/// The portal's whole HTTP surface.
pub fn app(state: Arc<AppState>) -> Router {
    crate::api::router()
        .merge(crate::channels::router())
        .merge(crate::web::router())
        .route("/health", get(|| async { "ok\n" }))
        .with_state(state)
}

/// Serves on an already bound listener until `shutdown` completes.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: Arc<AppState>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    crate::channels::start(state.clone())
        .await
        .map_err(std::io::Error::other)?;
    // Channel messages are small and latency matters (revocations): no Nagle.
    let listener = listener.tap_io(|tcp| {
        if let Err(error) = tcp.set_nodelay(true) {
            tracing::debug!(%error, "cannot set TCP_NODELAY");
        }
    });
    axum::serve(
        listener,
        app(state).into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(shutdown)
    .await
}
