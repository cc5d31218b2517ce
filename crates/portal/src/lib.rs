//! Postern's control plane (DESIGN.md section 2): `store` (queries and
//! migrations), `domain` (the objects), `auth` (tokens; sign-in flows later),
//! `api` (REST + OpenAPI), `setup` (`portal init` and `portal relay-token`).
//! The channels, SCIM and the web UI plug in beside `api`.

pub mod api;
pub mod auth;
pub mod change;
pub mod channels;
pub mod domain;
pub mod geoip;
pub mod metrics;
pub mod online;
pub mod problem;
pub mod secrets;
pub mod serve;
pub mod setup;
pub mod state;
pub mod store;
pub mod web;

pub use store::{Store, StoreError};
