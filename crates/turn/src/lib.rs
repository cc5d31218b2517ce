//! STUN/TURN for Postern: the wire format (RFC 8489, RFC 8656), TURN REST
//! credentials, and sans-IO cores for the relay server and the TURN client.
//! No I/O and no clock: time and bytes come in, replies and events go out.

pub mod channel;
pub mod client;
pub mod credentials;
/// The fuzz entry point (crates/turn/fuzz and the seed replay test only).
#[cfg(feature = "fuzzing")]
pub mod fuzzing;
pub mod server;
pub mod stream;
pub mod stun;
