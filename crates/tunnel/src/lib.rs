//! Postern's data plane and device roles without I/O (docs/architecture.md):
//! everything a client and a gateway decide, as state machines that take bytes,
//! portal messages and time as arguments and give transmits, packets, portal
//! messages and effects back. One device loop (crate `postern-device`) drives
//! either role and applies the effects.
//!
//! - [`client`], [`gateway`]: the two roles ([`role::Role`]);
//! - [`effect`]: what a role asks of the shell, and what comes back;
//! - [`node`]: a device's peers (ICE and WireGuard) and relays;
//! - [`packet`]: a zero-copy IP header view;
//! - [`icmp`]: unreachable replies for refused packets;
//! - [`ice`]: ICE checks and nomination for one pair (str0m's agent);
//! - [`router`]: longest-prefix routing of destinations to resources;
//! - [`nat`]: proxy-to-real address rewriting for DNS resources;
//! - [`dns`]: the client's DNS stub: proxy addresses for DNS resources;
//! - [`control`]: messages between gateway and client inside their tunnel;
//! - [`wireguard`]: one WireGuard peer with the pair's preshared key;
//! - [`flows`]: which flows a client opened (what may come back to it);
//! - [`counters`]: drops and errors by reason.

pub mod client;
pub mod control;
pub mod counters;
pub mod dns;
pub mod effect;
pub mod flows;
#[cfg(feature = "fuzzing")]
pub mod fuzzing;
pub mod gateway;
pub mod ice;
pub mod icmp;
pub mod nat;
pub mod node;
mod outbox;
pub mod packet;
pub mod role;
pub mod router;
pub mod wireguard;
