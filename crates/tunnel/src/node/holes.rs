//! Opening our NAT toward a peer before the peer's checks arrive.
//!
//! A NAT router whose own WAN input is not firewalled (a bare Linux or
//! Docker host doing masquerade) answers an unsolicited packet with ICMP,
//! and the conntrack entry that packet left makes the router map our own
//! later packet to that peer to another port: the peer's checks then go to
//! a port nothing listens on, ours come from one the peer's NAT does not
//! expect, and the pair stays relayed for as long as the peer keeps
//! probing. Two rules keep the first packet at each router an outgoing one:
//! - openers: as soon as a peer's candidate is known (and again every
//!   [`OPENER_INTERVAL`] while the path is not direct), a datagram to it
//!   with a TTL of [`OPENER_TTL`], which opens our NATs' mappings and dies
//!   on the internet before the peer's router sees it;
//! - the controlling side (the client, which learns the gateway's
//!   candidates first) holds its checks to the peer's direct candidates
//!   until the peer's first check arrives (proof that the peer's mapping
//!   toward us exists) or [`CHECK_HOLD`] passes (a peer whose checks cannot
//!   reach us: a symmetric NAT on our side).
//!
//! A clash can still happen (a peer that learns our candidates late, past
//! the hold). It then lasts as long as its conntrack entries do, and each
//! packet toward the peer's direct address keeps them alive. So while the
//! path is relayed the two sides are silent toward each other's direct
//! addresses between re-probes ([`crate::node::REPROBE`], longer than the
//! entries live), and each re-probe repeats the start's order: openers
//! from both sides, then the controlled side's checks after
//! [`OPENER_LEAD`], the controlling side's once the peer's first check
//! arrives (or [`CHECK_HOLD`] passed).
//!
//! No crate does this (str0m's agent knows nothing of NATs or TTLs).

use std::time::Duration;

/// Hops an opener lives: past this host's NATs (a home router and a
/// carrier's) and the first router beyond, never as far as the peer's NAT,
/// which sits behind at least its own ISP's router. Too small a value only
/// opens fewer mappings; a peer on the same LAN is reached anyway.
pub const OPENER_TTL: u8 = 3;

/// Openers go out again this often while the path is not direct: under the
/// 30 s a Linux NAT keeps an unanswered UDP mapping.
pub const OPENER_INTERVAL: Duration = Duration::from_secs(15);

/// How long the controlling side waits for the peer's first check before it
/// checks the peer's direct candidates anyway.
pub const CHECK_HOLD: Duration = Duration::from_secs(1);

/// And its relayed candidates: briefly, so that where the peer's checks do
/// come (the usual case) every pair starts together and the direct one,
/// better, is nominated first; where they cannot (a symmetric NAT here)
/// the relay carries the first packets after this long.
pub const RELAY_HOLD: Duration = Duration::from_millis(100);

/// At a re-probe, how long the controlled side waits after its openers
/// before checking: both sides re-probe on their own clocks, started by the
/// same event (the relayed path) a round trip apart, and the peer's openers
/// must have opened its NAT before our checks arrive there.
pub const OPENER_LEAD: Duration = Duration::from_millis(500);

/// When a re-probe's checks start after its openers: see [`OPENER_LEAD`]
/// and [`CHECK_HOLD`].
pub fn reprobe_lead(controlling: bool) -> Duration {
    if controlling { CHECK_HOLD } else { OPENER_LEAD }
}

/// How long a candidate is held: see [`CHECK_HOLD`] and [`RELAY_HOLD`].
pub fn hold(direct: bool) -> Duration {
    if direct { CHECK_HOLD } else { RELAY_HOLD }
}

/// STUN's Binding Indication (RFC 8489 section 3): nothing answers it, and
/// a node that receives one (a peer on the same LAN) ignores it.
const BINDING_INDICATION: [u8; 2] = [0x00, 0x11];

/// An opener's payload: a Binding Indication with no attributes.
pub fn opener(transaction: [u8; 12]) -> Vec<u8> {
    let mut datagram = Vec::with_capacity(20);
    datagram.extend_from_slice(&BINDING_INDICATION);
    datagram.extend_from_slice(&[0, 0, 0x21, 0x12, 0xa4, 0x42]);
    datagram.extend_from_slice(&transaction);
    datagram
}

/// Whether a STUN datagram is an indication (keepalive or opener), which
/// needs no answer and belongs to no check.
pub fn is_indication(datagram: &[u8]) -> bool {
    // The class bits C1 (0x0100) and C0 (0x0010) of the message type
    // (RFC 8489 section 5): 0b01 is an indication.
    datagram.len() >= 2 && u16::from_be_bytes([datagram[0], datagram[1]]) & 0x0110 == 0x0010
}

/// Whether a peer's candidate of this type is reached straight from our
/// socket (host, server- or peer-reflexive), where our NAT's mapping
/// matters; a relayed one is the relay's address.
pub fn is_direct(candidate_type: Option<&str>) -> bool {
    candidate_type != Some("relay")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ice::is_stun;

    #[test]
    fn an_opener_is_a_stun_indication() {
        let datagram = opener([7; 12]);
        assert!(is_stun(&datagram));
        assert!(is_indication(&datagram));
        let message = is::stun::StunMessage::parse(&datagram).unwrap();
        assert!(!message.is_binding_request());
    }

    #[test]
    fn requests_and_responses_are_not_indications() {
        let mut request = opener([1; 12]);
        request[1] = 0x01; // Binding Request
        assert!(!is_indication(&request));
        let mut success = opener([1; 12]);
        success[0] = 0x01; // Binding Success Response 0x0101
        success[1] = 0x01;
        assert!(!is_indication(&success));
    }
}
