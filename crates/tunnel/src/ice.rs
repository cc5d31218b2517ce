//! The ICE half of a connection (SPEC F17): str0m's sans-IO agent (crate `is`)
//! set up with the credentials the portal derived for the pair, candidates
//! carried as SDP `candidate:` strings (what `ice_candidates` messages hold),
//! and the nominated path reported as an event. The client is the controlling
//! side. Relayed and server-reflexive candidates come from the caller (TURN
//! allocations, STUN to relays); this type only checks and nominates.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::Instant;

use is::stun::{StunMessage, StunPacket};
use is::{Candidate, IceAgent, IceAgentEvent, IceConnectionState, IceCreds, Protocol};
use postern_model::protocol::IceCredentials;

/// Time between connectivity checks.
const CHECK_PACING: std::time::Duration = std::time::Duration::from_millis(10);

/// STUN's magic cookie (RFC 8489), how STUN is told apart from WireGuard and
/// TURN channel data on the one socket.
const MAGIC_COOKIE: [u8; 4] = [0x21, 0x12, 0xa4, 0x42];

/// Whether a datagram is STUN: first two bits zero, the magic cookie, and
/// a length that accounts for the whole datagram. The length check tells
/// STUN from WireGuard whose index bytes happen to spell the cookie
/// (WireGuard's bytes 1-3 are zero, so its "length" would be 0).
pub fn is_stun(datagram: &[u8]) -> bool {
    datagram.len() >= 20
        && datagram[0] & 0xc0 == 0
        && datagram[4..8] == MAGIC_COOKIE
        && usize::from(u16::from_be_bytes([datagram[2], datagram[3]])) + 20 == datagram.len()
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum IceEvent {
    /// Send WireGuard datagrams from `local` to `remote` from now on.
    Nominated {
        local: SocketAddr,
        remote: SocketAddr,
    },
    /// Every path failed: the peer is unreachable until new candidates come.
    Disconnected,
}

/// One STUN datagram to send.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IceTransmit {
    pub source: SocketAddr,
    pub destination: SocketAddr,
    pub payload: Vec<u8>,
}

#[derive(Debug, thiserror::Error)]
pub enum CandidateError {
    #[error("not an ICE candidate: {0}")]
    Parse(String),
}

/// Round trips to the relays, by the relay's address (what a relayed
/// candidate's address starts with), in milliseconds.
pub type RelayRtt =
    std::sync::Arc<std::sync::RwLock<std::collections::HashMap<std::net::IpAddr, u32>>>;

/// str0m's local preference, except that a relayed candidate ranks by its
/// relay's round trip: 16383 (str0m's top for relayed) less the
/// milliseconds, so the nearest relay's pairs win and the others stay as
/// fallback. A relay not measured yet ranks as str0m would rank it.
fn relay_preference(candidate: &Candidate, same_kind: usize, relay_rtt: &RelayRtt) -> u32 {
    if candidate.kind() == is::CandidateKind::Relayed
        && let Some(rtt) = relay_rtt
            .read()
            .ok()
            .and_then(|rtts| rtts.get(&candidate.addr().ip()).copied())
    {
        // Even for IPv4, odd for IPv6, as str0m interleaves them.
        let v6 = u32::from(candidate.addr().is_ipv6());
        return (16_383 - rtt.min(8_000) * 2 - 1 + v6).max(1);
    }
    is::default_local_preference(candidate, same_kind)
}

pub struct IceSession {
    agent: IceAgent,
    /// Our username fragment: the first half of the USERNAME in the peer's
    /// checks, how a node finds the session a check is for.
    local_ufrag: String,
    nominated: Option<(SocketAddr, SocketAddr)>,
    events: VecDeque<IceEvent>,
    /// Remote candidates given up on because traffic on them stopped; taken
    /// back on the next [`IceSession::reprobe`].
    abandoned: Vec<Candidate>,
}

fn creds(c: &IceCredentials) -> IceCreds {
    IceCreds {
        ufrag: c.username_fragment.clone(),
        pass: c.password.clone(),
    }
}

impl IceSession {
    /// `local` and `remote` are this side's and the peer's credentials from
    /// the portal; the client controls. `relay_rtt` (relay IP -> measured
    /// round trip, shared with the node) ranks relayed candidates: the
    /// nearest relay first, the others as fallback.
    pub fn new(
        local: &IceCredentials,
        remote: &IceCredentials,
        controlling: bool,
        relay_rtt: RelayRtt,
    ) -> Self {
        let mut agent = IceAgent::new(creds(local));
        agent.set_local_preference(move |candidate: &Candidate, same_kind: usize| {
            relay_preference(candidate, same_kind, &relay_rtt)
        });
        agent.set_remote_credentials(creds(remote));
        agent.set_controlling(controlling);
        // A pair has a handful of candidates, not a browser's dozens: pace
        // checks at 10 ms rather than 50 (RFC 8445 allows down to 5 ms), so the
        // first packet to a new resource waits less.
        agent.set_timing_advance(CHECK_PACING);
        IceSession {
            agent,
            local_ufrag: local.username_fragment.clone(),
            nominated: None,
            events: VecDeque::new(),
            abandoned: Vec::new(),
        }
    }

    /// Adds a local candidate; `Ok(None)` when the agent already has it (or
    /// a better one for the same base).
    fn add_local(
        &mut self,
        candidate: Result<Candidate, is::IceError>,
    ) -> Result<Option<String>, CandidateError> {
        let candidate = candidate.map_err(|e| CandidateError::Parse(e.to_string()))?;
        Ok(self
            .agent
            .add_local_candidate(candidate)
            .map(|c| c.to_sdp_string()))
    }

    /// A local socket; returns the candidate to send to the peer.
    pub fn add_host(&mut self, address: SocketAddr) -> Result<Option<String>, CandidateError> {
        self.add_local(Candidate::host(address, Protocol::Udp))
    }

    /// Our public mapping of `base`, learnt from a relay's STUN answer.
    pub fn add_server_reflexive(
        &mut self,
        address: SocketAddr,
        base: SocketAddr,
    ) -> Result<Option<String>, CandidateError> {
        self.add_local(Candidate::server_reflexive(address, base, Protocol::Udp))
    }

    /// A TURN allocation made from `base`.
    pub fn add_relayed(
        &mut self,
        address: SocketAddr,
        base: SocketAddr,
    ) -> Result<Option<String>, CandidateError> {
        self.add_local(Candidate::relayed(address, base, Protocol::Udp))
    }

    /// Our candidates as SDP strings, as [`add_host`](Self::add_host) and
    /// the others returned them.
    pub fn local_candidates(&self) -> Vec<String> {
        self.agent
            .local_candidates()
            .map(|c| c.to_sdp_string())
            .collect()
    }

    /// Our username fragment (see the field).
    pub fn local_ufrag(&self) -> &str {
        &self.local_ufrag
    }

    /// Whether `sdp` is a candidate this agent can take.
    pub fn parse_candidate(sdp: &str) -> Result<Candidate, CandidateError> {
        Candidate::from_sdp_string(sdp.trim().trim_start_matches("a="))
            .map_err(|e| CandidateError::Parse(e.to_string()))
    }

    /// A candidate from the peer's `ice_candidates`.
    pub fn add_remote(&mut self, sdp: &str) -> Result<(), CandidateError> {
        let candidate = Self::parse_candidate(sdp)?;
        self.agent.add_remote_candidate(candidate);
        Ok(())
    }

    /// Feeds a STUN datagram received on `destination` from `source`; false if
    /// it is not for this session.
    pub fn handle_stun(
        &mut self,
        now: Instant,
        source: SocketAddr,
        destination: SocketAddr,
        datagram: &[u8],
    ) -> bool {
        let Ok(message) = StunMessage::parse(datagram) else {
            return false;
        };
        if !self.agent.accepts_message(&message) {
            return false;
        }
        let handled = self.agent.handle_packet(
            now,
            StunPacket {
                proto: Protocol::Udp,
                source,
                destination,
                message,
            },
        );
        self.drain_events();
        handled
    }

    /// Traffic to `remote` stopped: drop its pairs so the agent nominates the
    /// best other pair that still answers (direct -> relayed). STUN checks
    /// alone would take some 20 s to give the pair up. False if `remote` is
    /// not a candidate (a path WireGuard roamed to).
    pub fn abandon(&mut self, remote: SocketAddr, now: Instant) -> bool {
        let Some(candidate) = self.agent.remote_candidates().find(|c| c.addr() == remote) else {
            return false;
        };
        if !self.agent.invalidate_candidate(&candidate) {
            return false;
        }
        self.abandoned.push(candidate);
        if self.nominated.is_some_and(|(_, r)| r == remote) {
            self.nominated = None;
        }
        self.handle_timeout(now);
        true
    }

    /// Checks every pair again, abandoned and failed ones included, so a
    /// path that opened since (relayed -> direct) is found and, being
    /// better, nominated. Credentials stay: both sides do this on their own
    /// clocks, no signalling needed; the current path carries traffic
    /// meanwhile.
    pub fn reprobe(&mut self, now: Instant) {
        for candidate in self.abandoned.drain(..) {
            // Re-enables the discarded candidate.
            self.agent.add_remote_candidate(candidate);
        }
        self.agent.recreate_candidate_pairs();
        self.handle_timeout(now);
    }

    pub fn handle_timeout(&mut self, now: Instant) {
        self.agent.handle_timeout(now);
        self.drain_events();
    }

    pub fn poll_timeout(&mut self) -> Option<Instant> {
        self.agent.poll_timeout()
    }

    pub fn poll_transmit(&mut self) -> Option<IceTransmit> {
        self.agent.poll_transmit().map(|t| IceTransmit {
            source: t.source,
            destination: t.destination,
            payload: t.contents.into(),
        })
    }

    pub fn poll_event(&mut self) -> Option<IceEvent> {
        self.events.pop_front()
    }

    /// The path WireGuard uses now.
    pub fn nominated(&self) -> Option<(SocketAddr, SocketAddr)> {
        self.nominated
    }

    pub fn is_connected(&self) -> bool {
        self.agent.state().is_connected()
    }

    fn drain_events(&mut self) {
        while let Some(event) = self.agent.poll_event() {
            match event {
                IceAgentEvent::NominatedSend {
                    source,
                    destination,
                    ..
                } if self.nominated != Some((source, destination)) => {
                    self.nominated = Some((source, destination));
                    self.events.push_back(IceEvent::Nominated {
                        local: source,
                        remote: destination,
                    });
                }
                IceAgentEvent::IceConnectionStateChange(IceConnectionState::Disconnected) => {
                    self.nominated = None;
                    self.events.push_back(IceEvent::Disconnected);
                }
                _ => {}
            }
        }
    }
}
