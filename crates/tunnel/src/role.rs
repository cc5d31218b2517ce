//! The shape both role machines share ([`crate::client::ClientTunnel`],
//! [`crate::gateway::GatewayTunnel`]), so one device loop drives either
//! (connlib's `Tunnel<TRoleState>`): typed portal messages, datagrams, TUN
//! packets, inputs and time in; transmits, TUN packets, portal messages and
//! effects out.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use jiff::Timestamp;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::counters::Counters;
use crate::effect::{Effect, Input};
use crate::node::Transmit;

/// Counts the loop publishes as metrics.
#[derive(Clone, Debug, Default)]
pub struct Gauges {
    /// Tunnel peers (gateways of a client, clients of a gateway).
    pub peers: usize,
    /// Resources a client may ask for; clients a gateway authorized.
    pub entries: usize,
}

pub trait Role {
    /// What the portal sends this role.
    type FromPortal: DeserializeOwned;
    /// What this role sends the portal.
    type ToPortal: Serialize;
    /// What `status` shows.
    type Status: Serialize;

    /// A message from the portal. `wall` converts its timestamps.
    fn handle_portal(&mut self, message: Self::FromPortal, now: Instant, wall: Timestamp);

    fn handle_input(&mut self, input: Input, now: Instant);

    /// A packet read from the TUN interface: encrypted into `out` for
    /// `out[..n]` to go to the returned address, or handled here (buffered,
    /// refused, queued).
    fn encapsulate(
        &mut self,
        packet: &mut [u8],
        now: Instant,
        out: &mut [u8],
    ) -> Option<(SocketAddr, usize)>;

    /// A datagram from the socket: `Some(n)` when `out[..n]` is a packet
    /// for the TUN interface.
    fn decapsulate(
        &mut self,
        source: SocketAddr,
        datagram: &[u8],
        now: Instant,
        out: &mut [u8],
    ) -> Option<usize>;

    fn handle_timeout(&mut self, now: Instant);

    fn poll_timeout(&mut self) -> Option<Instant>;

    fn poll_transmit(&mut self) -> Option<Transmit>;

    /// A packet to write to the TUN interface (slow path: ICMP replies,
    /// the odd packet outside a batch).
    fn poll_tun_packet(&mut self) -> Option<Vec<u8>>;

    fn poll_portal(&mut self) -> Option<Self::ToPortal>;

    fn poll_effect(&mut self) -> Option<Effect>;

    /// The daemon is stopping: say goodbye where it helps.
    fn stop(&mut self, now: Instant);

    fn status(&self, now: Instant) -> Self::Status;

    fn gauges(&self) -> Gauges;

    /// Packets dropped or refused, by reason.
    fn dropped(&self) -> &Counters;

    /// Errors met (candidates, WireGuard, relays), by reason.
    fn errors(&self) -> &Counters;
}

/// A portal timestamp on the monotonic clock, given both clocks' now.
pub fn deadline(at: Option<Timestamp>, now: Instant, wall: Timestamp) -> Option<Instant> {
    let left = at?.duration_since(wall);
    Some(now + Duration::try_from(left).unwrap_or(Duration::ZERO))
}
