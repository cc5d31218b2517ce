//! `postern portal`: binds the listener and serves the REST API and the
//! channels until asked to stop, over plain HTTP or, with a certificate
//! ([`tls::TlsCert`]), over HTTPS and WSS.

pub mod tls;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::http::{HeaderValue, header};
use axum::response::Response;
use axum::routing::get;
use axum::serve::ListenerExt;

use crate::state::AppState;

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
        .route("/health", get(|| async { "ok\n" }))
        .with_state(state)
        .layer(axum::middleware::map_response(
            move |response: Response| async move { security_headers(response, https) },
        ))
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
