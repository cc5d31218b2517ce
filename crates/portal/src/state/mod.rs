//! What every request handler and channel shares.

pub mod rate_limit;

use std::any::Any;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use tokio::sync::mpsc;
use uuid::Uuid;

use self::rate_limit::RateLimiter;
use crate::online::Online;
use crate::store::Store;

pub use crate::change::Change;
pub use crate::channels::allowance::ChannelRate;

/// Bounds on what one token, actor or channel can make the portal hold
/// (issue 15, M5).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Limits {
    /// What a client or relay channel may send (gateways get ten times).
    pub channel_rate: ChannelRate,
    /// Access requests one client channel may have waiting on gateways.
    pub pending_per_client: usize,
    /// Client devices an actor may register.
    pub devices_per_actor: u32,
    /// Devices one token may register (clients of a service account's
    /// token, gateways of a site's).
    pub devices_per_token: u32,
    /// Connecting devices waiting to be recorded, at most; past it a
    /// connect is answered 503 with `Retry-After` (load shedding).
    pub connect_queue: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            channel_rate: ChannelRate::default(),
            pending_per_client: 64,
            devices_per_actor: 100,
            devices_per_token: 25,
            // About a fifth of a second of work at the measured rate.
            connect_queue: 4096,
        }
    }
}

/// How long a gateway has to confirm an authorization (SPEC section 5).
pub const AUTHORIZE_TIMEOUT: Duration = Duration::from_secs(15);
/// Per-connection queue depth: a client far behind this is broken or
/// malicious, and is disconnected.
pub const OUTBOUND_QUEUE: usize = 1024;

pub struct AppState {
    pub store: Store,
    /// Per API token.
    pub api_limiter: RateLimiter,
    /// How long a gateway has to confirm an authorization (SPEC: 15 s).
    pub authorize_timeout: Duration,
    /// Messages a channel may have queued before it counts as too slow.
    pub outbound_queue: usize,
    /// What one channel, token or actor may make the portal hold.
    pub limits: Limits,
    /// Countries for the `country` condition; without it they are unknown.
    pub geoip: Option<crate::geoip::GeoIp>,
    /// Counters for `--metrics`.
    pub metrics: crate::metrics::PortalMetrics,
    /// Seals identity-provider secrets and keys OIDC state; without one
    /// (only in tests that do not sign in) sign-in pages answer 500.
    pub secret_key: Option<crate::secrets::SecretKey>,
    /// Where email sign-in codes go.
    pub mailer: crate::auth::email::Mailer,
    /// How browsers reach the portal (OIDC redirect URIs, secure cookies).
    pub external_url: Option<String>,
    /// Email codes asked for, per address.
    pub sign_in_limiter: RateLimiter,
    /// Sign-in forms posted, per client IP (looser: an office shares one).
    pub sign_in_ip_limiter: RateLimiter,
    /// Proxies whose forwarding header names the client (`--trusted-proxies`);
    /// none by default: the client is the TCP peer.
    pub trusted_proxies: crate::client_ip::TrustedProxies,
    /// Calls to identity providers.
    pub oidc_http: OnceLock<reqwest::Client>,
    changes: Mutex<Option<mpsc::UnboundedSender<(Uuid, Change)>>>,
    online: Online,
    /// Recent denials and a wake-up for live pages.
    activity: crate::activity::Activity,
    /// The channel hub's inbox, set once when serving starts. Held opaquely:
    /// only the channels know its type, so shared state depends on none of
    /// them.
    hub: OnceLock<Box<dyn Any + Send + Sync>>,
    next_conn: AtomicU64,
}

impl AppState {
    pub fn new(store: Store) -> Self {
        AppState {
            store,
            api_limiter: RateLimiter::new(100, 20),
            authorize_timeout: AUTHORIZE_TIMEOUT,
            geoip: None,
            outbound_queue: OUTBOUND_QUEUE,
            limits: Limits::default(),
            metrics: crate::metrics::PortalMetrics::default(),
            secret_key: None,
            mailer: crate::auth::email::Mailer::Log,
            external_url: None,
            // Five codes at once, then one a minute, per key.
            sign_in_limiter: RateLimiter::with_rate(5, 1.0 / 60.0),
            // Thirty at once, then one every two seconds, per IP.
            sign_in_ip_limiter: RateLimiter::with_rate(30, 0.5),
            trusted_proxies: crate::client_ip::TrustedProxies::default(),
            oidc_http: OnceLock::new(),
            changes: Mutex::new(None),
            online: Online::default(),
            activity: crate::activity::Activity::default(),
            hub: OnceLock::new(),
            next_conn: AtomicU64::new(1),
        }
    }

    /// Where connections send their events; set once when serving starts.
    pub fn set_hub(&self, hub: impl Any + Send + Sync) -> bool {
        self.hub.set(Box::new(hub)).is_ok()
    }

    /// The hub's inbox, if serving started with one of type `T`.
    pub fn hub<T: Any>(&self) -> Option<&T> {
        self.hub.get()?.downcast_ref()
    }

    pub fn next_connection_id(&self) -> u64 {
        self.metrics.channels_opened.fetch_add(1, Ordering::Relaxed);
        self.next_conn.fetch_add(1, Ordering::Relaxed)
    }

    /// Where committed changes go (the channel hub).
    pub fn subscribe_changes(&self) -> mpsc::UnboundedReceiver<(Uuid, Change)> {
        let (sender, receiver) = mpsc::unbounded_channel();
        *self.changes.lock().unwrap_or_else(|p| p.into_inner()) = Some(sender);
        receiver
    }

    /// Called after a change is committed.
    pub fn changed(&self, account: Uuid, change: Change) {
        let changes = self.changes.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(sender) = changes.as_ref() {
            // The hub gone means the portal is shutting down.
            let _ = sender.send((account, change));
        }
    }

    /// Who is online, as the hub last published it.
    pub fn online(&self) -> &Online {
        &self.online
    }

    /// Recent denials; what wakes live pages.
    pub(crate) fn activity(&self) -> &crate::activity::Activity {
        &self.activity
    }

    /// Gateways and clients connected to this node.
    pub fn online_counts(&self) -> (usize, usize) {
        self.online.counts()
    }

    pub fn gateway_presence(&self, gateway: Uuid) -> (bool, u64) {
        self.online.gateway(gateway)
    }

    pub fn client_online(&self, client: Uuid) -> bool {
        self.online.client(client)
    }
}

impl crate::client_ip::ProxyTrust for std::sync::Arc<AppState> {
    fn trusted_proxies(&self) -> &crate::client_ip::TrustedProxies {
        &self.trusted_proxies
    }
}
