//! Postern's data plane without I/O (DESIGN.md sections 1, 2 and 7): what the
//! client and the gateway decide about every packet. Bytes, time and events
//! come in as arguments; verdicts and events go out. The peer layer (ICE and
//! WireGuard) and the simulation harness build on these sub-machines.
//!
//! - [`packet`]: a zero-copy IP header view;
//! - [`icmp`]: unreachable replies for refused packets;
//! - [`ice`]: ICE checks and nomination for one pair (str0m's agent);
//! - [`router`]: longest-prefix routing of destinations to resources;
//! - [`nat`]: proxy-to-real address rewriting for DNS resources;
//! - [`dns`]: the client's DNS stub: proxy addresses for DNS resources;
//! - [`control`]: messages between gateway and client inside their tunnel;
//! - [`client`]: per-resource access on first packet, with bounded buffering;
//! - [`gateway`]: the authorization table with filters and source checks;
//! - [`wireguard`]: one WireGuard peer with the pair's preshared key.

pub mod client;
pub mod control;
pub mod dns;
pub mod fuzzing;
pub mod gateway;
pub mod ice;
pub mod icmp;
pub mod nat;
pub mod node;
pub mod packet;
pub mod router;
pub mod wireguard;
