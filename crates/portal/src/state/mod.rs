//! What every request handler and channel shares.

pub mod rate_limit;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};

use tokio::sync::mpsc;
use uuid::Uuid;

use self::rate_limit::RateLimiter;
use crate::store::Store;

/// What a committed change touched, so continuous evaluation (F15)
/// re-evaluates only the clients it can affect.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "kind", content = "ids", rename_all = "snake_case")]
pub enum Change {
    /// A resource was created, changed or deleted.
    Resource(Uuid),
    /// Policies of these groups changed (members of them are affected).
    Groups(Vec<Uuid>),
    /// These actors' memberships, role or enabled state changed (or they
    /// were deleted with their tokens).
    Actors(Vec<Uuid>),
    /// A client's verification changed.
    Client(Uuid),
    /// A client device was deleted.
    ClientDeleted(Uuid),
    /// A token was revoked.
    TokenRevoked(Uuid),
    /// Anything may have changed (a node missed cluster messages):
    /// re-evaluate every client of the account.
    Everything,
}

pub struct AppState {
    pub store: Store,
    /// Per API token.
    pub api_limiter: RateLimiter,
    /// How long a gateway has to confirm an authorization (SPEC: 15 s).
    pub authorize_timeout: std::time::Duration,
    /// Messages a channel may have queued before it counts as too slow.
    pub outbound_queue: usize,
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
    /// Calls to identity providers.
    pub oidc_http: OnceLock<reqwest::Client>,
    changes: Mutex<Option<mpsc::UnboundedSender<(Uuid, Change)>>>,
    presence: Mutex<Presence>,
    hub: OnceLock<mpsc::Sender<crate::channels::hub::HubEvent>>,
    next_conn: AtomicU64,
}

/// Who is connected right now, for the API's `online` fields.
#[derive(Default)]
struct Presence {
    /// Gateway device id -> clients it serves.
    gateways: std::collections::HashMap<Uuid, u64>,
    clients: std::collections::HashSet<Uuid>,
}

impl AppState {
    pub fn new(store: Store) -> Self {
        AppState {
            store,
            api_limiter: RateLimiter::new(100, 20),
            authorize_timeout: crate::channels::hub::AUTHORIZE_TIMEOUT,
            geoip: None,
            outbound_queue: crate::channels::hub::OUTBOUND_QUEUE,
            metrics: crate::metrics::PortalMetrics::default(),
            secret_key: None,
            mailer: crate::auth::email::Mailer::Log,
            external_url: None,
            // Five codes at once, then one a minute, per key.
            sign_in_limiter: RateLimiter::with_rate(5, 1.0 / 60.0),
            // Thirty at once, then one every two seconds, per IP.
            sign_in_ip_limiter: RateLimiter::with_rate(30, 0.5),
            oidc_http: OnceLock::new(),
            changes: Mutex::new(None),
            presence: Mutex::new(Presence::default()),
            hub: OnceLock::new(),
            next_conn: AtomicU64::new(1),
        }
    }

    /// Where connections send their events; set once when serving starts.
    pub fn set_hub(&self, sender: mpsc::Sender<crate::channels::hub::HubEvent>) -> bool {
        self.hub.set(sender).is_ok()
    }

    pub fn hub(&self) -> Option<&mpsc::Sender<crate::channels::hub::HubEvent>> {
        self.hub.get()
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

    /// Gateways and clients connected to this node.
    pub fn online_counts(&self) -> (usize, usize) {
        let presence = self.presence.lock().unwrap_or_else(|p| p.into_inner());
        (presence.gateways.len(), presence.clients.len())
    }

    pub fn gateway_presence(&self, gateway: Uuid) -> (bool, u64) {
        let presence = self.presence.lock().unwrap_or_else(|p| p.into_inner());
        match presence.gateways.get(&gateway) {
            Some(load) => (true, *load),
            None => (false, 0),
        }
    }

    pub fn client_online(&self, client: Uuid) -> bool {
        let presence = self.presence.lock().unwrap_or_else(|p| p.into_inner());
        presence.clients.contains(&client)
    }

    pub fn set_gateway_presence(&self, gateway: Uuid, load: Option<u64>) {
        let mut presence = self.presence.lock().unwrap_or_else(|p| p.into_inner());
        match load {
            Some(load) => presence.gateways.insert(gateway, load),
            None => presence.gateways.remove(&gateway),
        };
    }

    pub fn set_client_presence(&self, client: Uuid, online: bool) {
        let mut presence = self.presence.lock().unwrap_or_else(|p| p.into_inner());
        if online {
            presence.clients.insert(client);
        } else {
            presence.clients.remove(&client);
        }
    }
}
