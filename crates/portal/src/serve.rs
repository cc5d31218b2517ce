//! `postern portal`: binds the listener and serves the REST API and the
//! channels until asked to stop, over plain HTTP or, with a certificate
//! ([`tls::TlsCert`]), over HTTPS and WSS.

pub mod acme;
pub mod tls;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::Response;
use axum::routing::get;
use axum::serve::ListenerExt;

use crate::state::AppState;
use crate::store::StoreError;

pub use tls::{TlsCert, TlsError};

/// Everything `postern portal` needs besides the store.
#[derive(Clone, Debug)]
pub struct ServeConfig {
    pub listen: SocketAddr,
    /// How users and daemons reach the portal (links, redirects).
    pub external_url: Option<String>,
}

/// The portal's whole HTTP surface.
pub fn app(state: Arc<AppState>) -> Router {
    let https = state
        .external_url
        .as_deref()
        .is_some_and(|url| url.starts_with("https://"));
    crate::api::router()
        .merge(crate::channels::router())
        .merge(crate::web::router())
        .merge(crate::directory::scim::router())
        .merge(crate::console::router())
        .route("/healthz", get(healthz))
        // The name before `/healthz`, kept for probes set up against it.
        .route("/health", get(healthz))
        .route("/readyz", get(readyz))
        .with_state(state)
        .layer(axum::middleware::map_response(
            move |response: Response| async move { security_headers(response, https) },
        ))
}

/// Liveness: the process answers HTTP. Nothing else is checked, so a
/// database outage never gets the portal restarted by its supervisor.
async fn healthz() -> &'static str {
    "ok\n"
}

/// How long `/readyz` waits for the database before calling it down (the
/// pool would wait 30 s for a connection).
const READY_WAIT: Duration = Duration::from_secs(2);

/// Readiness: 200 once the database answers a trivial query and holds every
/// migration; 503 with a short reason otherwise (the cause is logged, not
/// shown: probes may be unauthenticated).
async fn readyz(State(state): State<Arc<AppState>>) -> (StatusCode, &'static str) {
    match tokio::time::timeout(READY_WAIT, state.store.ready()).await {
        Ok(Ok(())) => (StatusCode::OK, "ready\n"),
        Ok(Err(error @ StoreError::NotMigrated { .. })) => {
            tracing::warn!(%error, "not ready");
            (
                StatusCode::SERVICE_UNAVAILABLE,
                "not ready: database migrations are not done\n",
            )
        }
        Ok(Err(error)) => {
            tracing::warn!(%error, "not ready: the database does not answer");
            (
                StatusCode::SERVICE_UNAVAILABLE,
                "not ready: the database does not answer\n",
            )
        }
        Err(_) => {
            tracing::warn!(
                wait_s = READY_WAIT.as_secs(),
                "not ready: the database did not answer in time"
            );
            (
                StatusCode::SERVICE_UNAVAILABLE,
                "not ready: the database does not answer\n",
            )
        }
    }
}

/// Headers on every answer, API and pages alike (review L11); the pages add
/// their CSP, `X-Frame-Options` and `no-store` (`web::html::page`). HSTS only
/// when browsers reach the portal over https (`--external-url`): over plain
/// http it would be ignored, and it must not pin a development portal.
fn security_headers(mut response: Response, https: bool) -> Response {
    let headers = response.headers_mut();
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    // Sign-in URLs carry the client's state and challenge: no page tells
    // another site where it came from.
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    if https {
        headers.insert(
            header::STRICT_TRANSPORT_SECURITY,
            HeaderValue::from_static("max-age=31536000"),
        );
    }
    response
}

/// Serves plain HTTP on an already bound listener until `shutdown`
/// completes.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: Arc<AppState>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    serve_with(listener, state, None, shutdown).await
}

/// [`serve`], over TLS when `tls` is given: HTTPS for the API and pages,
/// WSS for the channels. The certificate is asked for at each handshake, so
/// [`TlsCert::reload`] reaches new connections and leaves open ones be.
pub async fn serve_with(
    listener: tokio::net::TcpListener,
    state: Arc<AppState>,
    tls: Option<Arc<TlsCert>>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let acceptor = match &tls {
        Some(tls) => Some(tls.acceptor().map_err(std::io::Error::other)?),
        None => None,
    };
    crate::channels::start(state.clone())
        .await
        .map_err(std::io::Error::other)?;
    let app = app(state).into_make_service_with_connect_info::<SocketAddr>();
    match acceptor {
        None => {
            let listener = listener.tap_io(|tcp| no_delay(tcp));
            axum::serve(listener, app)
                .with_graceful_shutdown(shutdown)
                .await
        }
        Some(acceptor) => {
            // The empty tap only lends the listener axum's `ConnectInfo`
            // for `SocketAddr`, which axum gives `TapIo` but cannot give a
            // listener of this crate.
            let listener = tls::TlsListener::new(listener, acceptor).tap_io(|_| {});
            axum::serve(listener, app)
                .with_graceful_shutdown(shutdown)
                .await
        }
    }
}

/// Channel messages are small and latency matters (revocations): no Nagle.
fn no_delay(tcp: &tokio::net::TcpStream) {
    if let Err(error) = tcp.set_nodelay(true) {
        tracing::debug!(%error, "cannot set TCP_NODELAY");
    }
}
