//! Postern's control plane (docs/architecture.md, layout): `store` (queries and
//! migrations), `domain` (the objects), `auth` (tokens, sign-in flows),
//! `api` (REST + OpenAPI), `channels` (the device WebSockets), `web` (the
//! sign-in pages), `setup` (`portal init` and `portal relay-token`).
//!
//! The public surface is what `postern portal` (crates/cli) and the
//! integration tests use: the state it configures, the store it opens,
//! `serve`, and `setup`. Everything else is the crate's own; the tests'
//! few extra handles are in `testing`, behind the `testing` feature.

pub mod auth;
pub mod client_ip;
pub mod domain;
pub mod geoip;
pub mod metrics;
pub mod retention;
pub mod secrets;
pub mod serve;
pub mod setup;
pub mod state;

pub(crate) mod activity;
pub(crate) mod api;
pub(crate) mod change;
pub(crate) mod channels;
pub(crate) mod console;
pub(crate) mod directory;
pub(crate) mod online;
pub(crate) mod problem;
pub(crate) mod store;
pub(crate) mod web;

/// The REST API's OpenAPI document (as served at `/api/v1/openapi.json`).
pub fn openapi_document() -> &'static serde_json::Value {
    &api::openapi::DOCUMENT
}

pub use store::{Store, StoreError, backup};

/// Syncs the LDAP directories every `interval_secs`, for as long as the
/// runtime runs (SCIM directories push their changes themselves).
pub fn spawn_directory_sync(state: std::sync::Arc<state::AppState>) {
    directory::ldap::spawn_scheduler(state);
}

/// What the integration tests reach inside the portal: the REST router on
/// its own, the rate limiter to loosen, and the store's token and device
/// rows to seed. Only this crate's own dev-dependency turns it on.
#[cfg(feature = "testing")]
#[doc(hidden)]
pub mod testing {
    pub use crate::api::router as api_router;
    pub use crate::state::rate_limit::RateLimiter;
    pub use crate::store::{devices, settings, tokens};

    /// This build's store, plus one migration of a next release (`sql`,
    /// the same for SQLite and PostgreSQL) after its own: a node of the
    /// next release, for the rolling-upgrade test.
    pub async fn open_store_with_next_migration(
        url: &str,
        sql: &'static str,
    ) -> crate::store::Result<crate::Store> {
        crate::Store::open_migrating(url, |engine| {
            let mut known = crate::store::migrations(engine);
            let next = known.iter().map(|m| m.version).max().unwrap_or(0) + 1;
            known.push(sqlx::migrate::Migration::new(
                next,
                std::borrow::Cow::Borrowed("next release"),
                sqlx::migrate::MigrationType::Simple,
                sqlx::SqlStr::from_static(sql),
                false,
            ));
            known
        })
        .await
    }

    /// A cluster bus payload sealed with `key` as node `node` at `sent_ms`
    /// (for tests that replay or forge bus messages).
    pub fn seal_cluster_message(
        key: &crate::secrets::SecretKey,
        node: uuid::Uuid,
        sent_ms: i64,
        json: &str,
    ) -> String {
        crate::channels::seal::Seal::new(key).seal(node, sent_ms, json)
    }
}
