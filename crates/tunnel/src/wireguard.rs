//! One WireGuard peer (SPEC F19): boringtun's Noise_IKpsk2 `Tunn` with the
//! portal-issued preshared key, encrypting straight into the caller's buffer.
//! Both ends send a keepalive after 400 ms without sending anything, so
//! each hears the other about three times a second and a peer silent for
//! 1.25 s is dead (F20 failover within two seconds).
//!
//! boringtun reads the system's monotonic clock for its handshake timers; its
//! `mock-instant` feature would freeze that clock for every crate built in the
//! same test run (features unify), daemons included, so it is not used.
//! Keepalives and liveness run on the time the caller passes in instead, which
//! also keeps them deterministic in simulations.

use std::net::IpAddr;
use std::time::{Duration, Instant};

use boringtun::noise::errors::WireGuardError;
use boringtun::noise::{Tunn, TunnResult};
use boringtun::x25519::{PublicKey, StaticSecret};

/// Silence after which a peer counts as dead: three keepalive intervals, so
/// two lost keepalives are no alarm, and failover (F20) fits in two seconds.
pub const LIVENESS_TIMEOUT: Duration = Duration::from_millis(1250);
/// Quiet time after which a keepalive (32 bytes) is sent.
pub const KEEPALIVE: Duration = Duration::from_millis(400);
/// An unanswered handshake initiation is repeated after this long (on the
/// caller's clock: boringtun's own 5 s retry runs on the system clock).
pub const HANDSHAKE_RETRY: Duration = Duration::from_secs(1);
/// boringtun's timers (rekeying, session expiry, its 5 s handshake
/// retries) run at least this often. Their limits are whole seconds
/// (boringtun rounds them to a second itself), and a gateway with
/// thousands of peers should wake each only when something is due: our
/// keepalives, liveness and retries have deadlines of their own.
pub const TIMERS: Duration = Duration::from_secs(1);
/// WireGuard adds 32 bytes to a packet; handshakes need 148.
pub const OVERHEAD: usize = 32;
pub const MIN_BUFFER: usize = 148;

/// What the caller must do with its buffer after a call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    Nothing,
    /// Send `buffer[..n]` to the peer.
    Network(usize),
    /// Write `buffer[..n]` (an IP packet) to the tunnel interface.
    Tunnel(usize),
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PeerError {
    #[error("the buffer is too small (at least {MIN_BUFFER} bytes and packet + {OVERHEAD})")]
    BufferTooSmall,
    /// WireGuard's reason (wrong key, bad MAC, replay...), as the label
    /// the error counters use.
    #[error("WireGuard refused the datagram: {0}")]
    Refused(&'static str),
    #[error("the session expired without a new handshake")]
    Expired,
}

impl PeerError {
    /// A short label for the error counters (`postern_errors_total`).
    pub fn label(&self) -> &'static str {
        match self {
            PeerError::BufferTooSmall => "wireguard_buffer_too_small",
            PeerError::Refused(reason) => reason,
            PeerError::Expired => "wireguard_session_expired",
        }
    }
}

/// boringtun's reasons as counter labels.
pub(crate) fn refusal(error: &WireGuardError) -> &'static str {
    match error {
        WireGuardError::InvalidMac | WireGuardError::InvalidAeadTag => "wireguard_bad_mac",
        WireGuardError::DuplicateCounter | WireGuardError::InvalidCounter => "wireguard_replay",
        WireGuardError::WrongIndex | WireGuardError::NoCurrentSession => {
            "wireguard_unknown_session"
        }
        WireGuardError::WrongKey => "wireguard_wrong_key",
        WireGuardError::InvalidTai64nTimestamp | WireGuardError::WrongTai64nTimestamp => {
            "wireguard_stale_handshake"
        }
        WireGuardError::UnderLoad => "wireguard_under_load",
        _ => "wireguard_malformed",
    }
}

/// The X25519 public key of a secret, for the portal's `public_key`.
pub fn public_key(secret: [u8; 32]) -> [u8; 32] {
    PublicKey::from(&StaticSecret::from(secret)).to_bytes()
}

pub struct WireguardPeer {
    tunn: Tunn,
    last_received: Option<Instant>,
    /// When we last sent, or last tried a keepalive that could not go: the
    /// keepalive clock runs from here.
    last_sent: Option<Instant>,
    /// Whether boringtun has a current session, as last looked at: on
    /// receiving while it had none, on sending data, and when its timers
    /// fail (the only time it drops its sessions). A keepalive goes out only
    /// with one: without, boringtun would queue the
    /// empty packet and start a handshake of its own: on a responder that
    /// has not yet had the initiator's first data packet, a second
    /// handshake; during a handshake, nothing, and the keepalive would stay
    /// due.
    session: bool,
    /// When the handshake initiation still unanswered was sent.
    initiated: Option<Instant>,
    /// When [`WireguardPeer::tick`] last ran boringtun's timers.
    ticked: Option<Instant>,
}

impl WireguardPeer {
    /// A peer talking to `peer_public` with our `local_secret` and the pair's
    /// preshared key; `index` tells this peer's sessions apart from others'.
    pub fn new(
        local_secret: [u8; 32],
        peer_public: [u8; 32],
        preshared_key: [u8; 32],
        index: u32,
    ) -> Self {
        WireguardPeer {
            tunn: Tunn::new(
                StaticSecret::from(local_secret),
                PublicKey::from(peer_public),
                Some(preshared_key),
                None,
                index,
                None,
            ),
            last_received: None,
            last_sent: None,
            initiated: None,
            ticked: None,
            session: false,
        }
    }

    fn action(result: TunnResult<'_>) -> Result<Action, PeerError> {
        match result {
            TunnResult::Done => Ok(Action::Nothing),
            TunnResult::WriteToNetwork(bytes) => Ok(Action::Network(bytes.len())),
            TunnResult::WriteToTunnelV4(bytes, _) | TunnResult::WriteToTunnelV6(bytes, _) => {
                Ok(Action::Tunnel(bytes.len()))
            }
            TunnResult::Err(WireGuardError::ConnectionExpired) => Err(PeerError::Expired),
            TunnResult::Err(WireGuardError::DestinationBufferTooSmall) => {
                Err(PeerError::BufferTooSmall)
            }
            TunnResult::Err(error) => Err(PeerError::Refused(refusal(&error))),
        }
    }

    /// Encrypts an IP packet into `buffer` (or, before the first handshake,
    /// queues it and writes the handshake initiation instead).
    pub fn send(
        &mut self,
        packet: &[u8],
        now: Instant,
        buffer: &mut [u8],
    ) -> Result<Action, PeerError> {
        if buffer.len() < MIN_BUFFER.max(packet.len() + OVERHEAD) {
            return Err(PeerError::BufferTooSmall);
        }
        let action = Self::action(self.tunn.encapsulate(packet, buffer))?;
        self.sent(action, now, buffer);
        Ok(action)
    }

    /// Handles a datagram from the peer at `source` (its address lets
    /// boringtun answer a handshake under load with a cookie instead of
    /// refusing it). After `Action::Network`, call [`WireguardPeer::flush`]
    /// until it returns `Nothing`: packets queued during the handshake
    /// follow.
    pub fn receive(
        &mut self,
        source: Option<IpAddr>,
        datagram: &[u8],
        now: Instant,
        buffer: &mut [u8],
    ) -> Result<Action, PeerError> {
        if datagram.is_empty() {
            return Ok(Action::Nothing);
        }
        if buffer.len() < MIN_BUFFER.max(datagram.len()) {
            return Err(PeerError::BufferTooSmall);
        }
        let action = Self::action(self.tunn.decapsulate(source, datagram, buffer))?;
        if !self.session && matches!(datagram[0], 2 | 4) {
            // A handshake response (initiator) or the first data packet of
            // a new session (responder) makes it current.
            self.session = self.has_current_session();
        }
        if let Action::Network(_) = action {
            // The handshake response the caller sends: the keepalive clock
            // starts.
            self.last_sent = Some(now);
        }
        // A cookie reply (type 3: the peer is under load) answers nothing:
        // the initiation is repeated, now with the cookie, after
        // HANDSHAKE_RETRY rather than boringtun's 5 s. Nor does it count as
        // hearing from the peer: anyone who saw our initiation and knows
        // the peer's public key can forge one.
        if datagram[0] == 3 {
            return Ok(action);
        }
        self.last_received = Some(now);
        self.initiated = None;
        Ok(action)
    }

    /// The next queued datagram after a handshake, if any.
    pub fn flush(&mut self, buffer: &mut [u8]) -> Result<Action, PeerError> {
        Self::action(self.tunn.decapsulate(None, &[], buffer))
    }

    /// Timers: handshake retries and rekeying (boringtun's), and a keepalive
    /// once [`KEEPALIVE`] of quiet has passed since we last sent. Call a few
    /// times a second.
    pub fn tick(&mut self, now: Instant, buffer: &mut [u8]) -> Result<Action, PeerError> {
        if buffer.len() < MIN_BUFFER {
            return Err(PeerError::BufferTooSmall);
        }
        self.ticked = Some(now);
        let action = match Self::action(self.tunn.update_timers(buffer)) {
            Ok(action) => action,
            Err(error) => {
                // boringtun drops its sessions only here, with an error
                // (ConnectionExpired).
                self.session = self.has_current_session();
                // No keepalive this time: its clock moves on too, so the
                // peer is not due again at once.
                if self.keepalive_due(now) {
                    self.last_sent = Some(now);
                }
                return Err(error);
            }
        };
        if action != Action::Nothing {
            self.sent(action, now, buffer);
            return Ok(action);
        }
        if let Some(at) = self.initiated
            && now.saturating_duration_since(at) >= HANDSHAKE_RETRY
        {
            self.initiated = None;
            let action = Self::action(self.tunn.format_handshake_initiation(buffer, true))?;
            self.sent(action, now, buffer);
            return Ok(action);
        }
        if self.keepalive_due(now) {
            let result = self.send(&[], now, buffer);
            if result != Ok(Action::Network(OVERHEAD)) {
                // Nothing went out: tried now all the same, so the
                // keepalive is not due again at once.
                self.last_sent = Some(now);
            }
            return result;
        }
        Ok(Action::Nothing)
    }

    /// Whether a keepalive is due: [`KEEPALIVE`] of quiet, the peer heard
    /// (before that, the handshake is what goes out), and a current session
    /// to send it in.
    fn keepalive_due(&self, now: Instant) -> bool {
        self.keepalives()
            && self
                .last_sent
                .is_none_or(|at| now.saturating_duration_since(at) >= KEEPALIVE)
    }

    /// Whether keepalives run at all (see [`WireguardPeer::keepalive_due`]).
    fn keepalives(&self) -> bool {
        self.session && self.last_received.is_some()
    }

    /// Whether boringtun has a current session (it reads the system clock:
    /// not for every packet).
    fn has_current_session(&self) -> bool {
        self.tunn.time_since_last_handshake().is_some()
    }

    /// Whether a current session was there when last looked at: a caller
    /// that sees this turn true after [`WireguardPeer::receive`] has a
    /// keepalive deadline that may come earlier than [`WireguardPeer::next_tick`]
    /// said before.
    pub fn has_session(&self) -> bool {
        self.session
    }

    /// When [`WireguardPeer::tick`] has something to do next: boringtun's
    /// timers every [`TIMERS`], a handshake retry, a keepalive (only with a
    /// current session). Sending and receiving only move these later, except
    /// a receive that makes a session current (see
    /// [`WireguardPeer::has_session`]), so a caller may compute this after a
    /// tick and sleep until then (waking early is harmless).
    pub fn next_tick(&self, now: Instant) -> Instant {
        let mut at = self.ticked.map_or(now, |at| at + TIMERS);
        if let Some(initiated) = self.initiated {
            at = at.min(initiated + HANDSHAKE_RETRY);
        }
        if self.keepalives() {
            at = at.min(self.last_sent.map_or(now, |sent| sent + KEEPALIVE));
        }
        at
    }

    /// A fresh handshake initiation: the peer must answer it, so it proves a
    /// new path both ways within one round trip (keepalives are one-way).
    pub fn probe(&mut self, now: Instant, buffer: &mut [u8]) -> Result<Action, PeerError> {
        if buffer.len() < MIN_BUFFER {
            return Err(PeerError::BufferTooSmall);
        }
        let action = Self::action(self.tunn.format_handshake_initiation(buffer, true))?;
        self.sent(action, now, buffer);
        Ok(action)
    }

    /// Notes what went out: the time, and an initiation to retry if unanswered.
    fn sent(&mut self, action: Action, now: Instant, buffer: &[u8]) {
        if let Action::Network(n) = action {
            self.last_sent = Some(now);
            // Message type 4: data, so a session is current.
            if n > 0 && buffer[0] == 4 {
                self.session = true;
            }
            // Message type 1: a handshake initiation.
            if n > 0 && buffer[0] == 1 && self.initiated.is_none() {
                self.initiated = Some(now);
            }
        }
    }

    /// Whether the peer was heard from within [`LIVENESS_TIMEOUT`].
    pub fn is_alive(&self, now: Instant) -> bool {
        self.last_received
            .is_some_and(|at| now.saturating_duration_since(at) < LIVENESS_TIMEOUT)
    }

    pub fn last_received(&self) -> Option<Instant> {
        self.last_received
    }

    /// Bytes sent and received through the tunnel.
    pub fn traffic(&self) -> (usize, usize) {
        let (_, sent, received, _, _) = self.tunn.stats();
        (sent, received)
    }
}
