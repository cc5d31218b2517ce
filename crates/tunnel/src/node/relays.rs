//! The node's TURN allocations: one sans-IO TURN client per relay address
//! the portal named, retried with backoff when an allocation fails, and
//! the framing of datagrams sent from a relayed candidate.

use std::collections::VecDeque;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use postern_turn::channel;
use postern_turn::client::{Client as TurnClient, ClientEvent as TurnEvent};

use super::Transmit;
use crate::ice::RelayRtt;

/// A failed relay allocation is tried again after this long, doubling up to
/// [`RETRY_MAX`].
const RETRY: Duration = Duration::from_secs(2);
const RETRY_MAX: Duration = Duration::from_secs(60);

/// A relay the portal handed out.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RelayConfig {
    pub server: SocketAddr,
    pub username: String,
    pub password: String,
    /// Where it takes TURN over TLS, and the name its certificate carries.
    pub tls: Option<(SocketAddr, String)>,
}

/// How a relay is reached when UDP to it goes unanswered (TURN over a
/// stream, RFC 8656 section 3.1).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Stream {
    /// TCP to the relay's own address.
    Tcp,
    /// TLS to `address`, its certificate checked for `name`.
    Tls { address: SocketAddr, name: String },
}

struct Relay {
    config: RelayConfig,
    client: TurnClient,
    /// After a failed allocation: when to try again.
    retry_at: Option<Instant>,
    /// The wait after the next failure.
    backoff: Duration,
    /// Reached over a stream: UDP to it went unanswered (a network that
    /// drops UDP).
    stream: Option<Stream>,
    /// Since when the relay has been asked on this transport without a
    /// word back; `None` once it answered.
    silent_since: Option<Instant>,
    /// How long a silence lasts before the other transport is tried.
    switch_after: Duration,
    /// The relay answered over UDP on this network: a silence later is the
    /// relay's (a restart), not a network that drops UDP; it stays on UDP.
    udp_answered: bool,
    /// When the current TURN client sent its first request; its first
    /// answer measures the round trip.
    asked_at: Option<Instant>,
    rtt: Option<Duration>,
}

/// A relay silent this long on UDP is tried over TCP (a network that drops
/// UDP); silent there too, back to UDP after twice as long, and so on up
/// to [`RETRY_MAX`] (the network may change). Far below the TURN client's
/// own give-up time (some 40 s of retransmissions).
const SILENCE_BEFORE_SWITCH: Duration = Duration::from_secs(3);

/// An allocation that came through: its relayed address and our address as
/// the relay saw it (a server-reflexive candidate).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Allocation {
    pub relayed: SocketAddr,
    pub mapped: SocketAddr,
    /// Made over TCP: `mapped` is a TCP mapping, no UDP candidate.
    pub stream: bool,
}

pub(super) struct Relays {
    relays: Vec<Relay>,
    seed: u64,
    framed: Vec<u8>,
    /// Round trips by relayed address, which the ICE agents rank relayed
    /// candidates by (nearest first).
    rtt: RelayRtt,
}

impl Relays {
    pub fn new(seed: u64, rtt: RelayRtt) -> Self {
        Relays {
            relays: Vec::new(),
            seed,
            framed: Vec::new(),
            rtt,
        }
    }

    fn turn_client(&mut self, relay: &RelayConfig, now: Instant) -> TurnClient {
        self.seed = self
            .seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        TurnClient::new(
            relay.server,
            &relay.username,
            &relay.password,
            self.seed,
            now,
        )
    }

    /// Starts allocating on `config` unless that server is in use already
    /// (fresh credentials for it replace the old ones at its next retry).
    pub fn add(&mut self, config: RelayConfig, now: Instant) -> bool {
        if let Some(relay) = self
            .relays
            .iter_mut()
            .find(|r| r.config.server == config.server)
        {
            // Renewed credentials refresh a live allocation at once, so it
            // outlives the old ones (the relay ends it when they lapse).
            relay
                .client
                .set_credentials(&config.username, &config.password, now);
            relay.config = config;
            return false;
        }
        let client = self.turn_client(&config, now);
        self.relays.push(Relay {
            config,
            client,
            retry_at: None,
            backoff: RETRY,
            stream: None,
            silent_since: Some(now),
            switch_after: SILENCE_BEFORE_SWITCH,
            udp_answered: false,
            asked_at: Some(now),
            rtt: None,
        });
        true
    }

    /// Allocates afresh on every relay (the host moved: the old
    /// allocations belong to a 5-tuple that is gone; the relays let them
    /// expire).
    pub fn restart(&mut self, now: Instant) {
        for index in 0..self.relays.len() {
            let config = self.relays[index].config.clone();
            let client = self.turn_client(&config, now);
            let relay = &mut self.relays[index];
            relay.client = client;
            relay.retry_at = None;
            relay.backoff = RETRY;
            relay.asked_at = Some(now);
            // A new network may let UDP through.
            relay.stream = None;
            relay.silent_since = Some(now);
            relay.switch_after = SILENCE_BEFORE_SWITCH;
            relay.udp_answered = false;
        }
    }

    /// Every allocation that is live now (not one waiting to be retried).
    pub fn allocations(&self) -> impl Iterator<Item = Allocation> + '_ {
        self.relays
            .iter()
            .filter(|r| r.client.is_allocated())
            .filter_map(|r| {
                Some(Allocation {
                    relayed: r.client.relayed_address()?,
                    mapped: r.client.mapped_address()?,
                    stream: r.stream.is_some(),
                })
            })
    }

    /// Whether a datagram from `source` comes from one of the relays (a
    /// handful: a scan is cheaper than a map).
    pub fn index_of_server(&self, source: SocketAddr) -> Option<usize> {
        self.relays.iter().position(|r| r.config.server == source)
    }

    /// A datagram from relay `index`: the peer data it carries, as the
    /// relayed address it arrived on, the peer's address and the data (a
    /// slice of `datagram`, no copy).
    pub fn receive<'a>(
        &mut self,
        index: usize,
        datagram: &'a [u8],
        now: Instant,
    ) -> Option<(SocketAddr, SocketAddr, &'a [u8])> {
        let relay = self.relays.get_mut(index)?;
        // Only an answer to this client's own request counts: a late one
        // from the transport given up on must not look like this one
        // working.
        if relay.client.answers(datagram) {
            if let Some(asked) = relay.asked_at.take() {
                relay.rtt = Some(now.saturating_duration_since(asked));
            }
            relay.silent_since = None;
            relay.switch_after = SILENCE_BEFORE_SWITCH;
            relay.udp_answered |= relay.stream.is_none();
        }
        let client = &mut relay.client;
        let relayed = client.relayed_address();
        let (peer, data) = client.handle_packet(datagram, now)?;
        Some((relayed?, peer, data))
    }

    /// How relay `server` is reached now: over a stream, or (`None`) UDP;
    /// `None` as well for an address that is no relay server.
    pub fn stream_of(&self, server: SocketAddr) -> Option<Stream> {
        self.relays
            .iter()
            .find(|r| r.config.server == server)
            .and_then(|r| r.stream.clone())
    }

    /// The relay server behind our relayed address `address`.
    pub fn server_of(&self, address: SocketAddr) -> Option<SocketAddr> {
        self.relays
            .iter()
            .find(|r| r.client.relayed_address() == Some(address))
            .map(|r| r.config.server)
    }

    /// Whether `address` is one of our relayed addresses.
    pub fn is_relayed(&self, address: SocketAddr) -> bool {
        self.relays
            .iter()
            .any(|r| r.client.relayed_address() == Some(address))
    }

    fn by_relayed(&mut self, address: SocketAddr) -> Option<&mut Relay> {
        self.relays
            .iter_mut()
            .find(|r| r.client.relayed_address() == Some(address))
    }

    /// The relay server and channel for data from our relayed address
    /// `local` to `peer`, once the channel is confirmed: the caller frames
    /// in place.
    pub fn channel(&mut self, local: SocketAddr, peer: SocketAddr) -> Option<(SocketAddr, u16)> {
        let relay = self.by_relayed(local)?;
        Some((relay.config.server, relay.client.bound_channel(peer)?))
    }

    /// Lets `peer` reach every allocation.
    pub fn permit(&mut self, peer: IpAddr, now: Instant) {
        for relay in &mut self.relays {
            relay.client.create_permission(peer, now);
        }
    }

    /// Binds a channel on the allocation `local` to `peer`.
    pub fn bind(&mut self, local: SocketAddr, peer: SocketAddr, now: Instant) {
        if let Some(relay) = self.by_relayed(local) {
            relay.client.bind_channel(peer, now);
        }
    }

    /// Sends `payload` from our relayed address `local` to `peer`, framed
    /// (ChannelData or a Send indication); false if `local` is not ours or
    /// the relay has no permission for `peer` yet.
    pub fn send_from(
        &mut self,
        local: SocketAddr,
        peer: SocketAddr,
        payload: &[u8],
        transmits: &mut VecDeque<Transmit>,
    ) -> bool {
        let Some(index) = self
            .relays
            .iter()
            .position(|r| r.client.relayed_address() == Some(local))
        else {
            return false;
        };
        let relay = &mut self.relays[index];
        if !relay.client.encode_to_peer(peer, payload, &mut self.framed) {
            return false;
        }
        transmits.push_back(Transmit {
            destination: relay.config.server,
            payload: self.framed.clone(),
            ttl: None,
            stream: relay.stream.clone(),
        });
        true
    }

    /// Retries failed allocations whose time came, and runs the clients'
    /// timers.
    pub fn handle_timeout(&mut self, now: Instant) {
        for index in 0..self.relays.len() {
            let relay = &self.relays[index];
            if !relay.udp_answered
                && relay
                    .silent_since
                    .is_some_and(|since| now >= since + relay.switch_after)
            {
                let config = relay.config.clone();
                let client = self.turn_client(&config, now);
                let relay = &mut self.relays[index];
                // UDP, then TLS (what networks that let only HTTPS out
                // allow), then TCP, then UDP again.
                relay.stream = match (&relay.stream, &relay.config.tls) {
                    (None, Some((address, name))) => Some(Stream::Tls {
                        address: *address,
                        name: name.clone(),
                    }),
                    (None, None) | (Some(Stream::Tls { .. }), _) => Some(Stream::Tcp),
                    (Some(Stream::Tcp), _) => None,
                };
                relay.client = client;
                relay.retry_at = None;
                relay.asked_at = Some(now);
                relay.silent_since = Some(now);
                relay.switch_after = (relay.switch_after * 2).min(RETRY_MAX);
                tracing::info!(
                    server = %relay.config.server,
                    transport = match relay.stream {
                        None => "UDP",
                        Some(Stream::Tcp) => "TCP",
                        Some(Stream::Tls { .. }) => "TLS",
                    },
                    "no answer from the relay: trying another transport"
                );
                continue;
            }
            if self.relays[index].retry_at.is_some_and(|at| at <= now) {
                let config = self.relays[index].config.clone();
                let client = self.turn_client(&config, now);
                let relay = &mut self.relays[index];
                relay.client = client;
                relay.retry_at = None;
                relay.asked_at = Some(now);
                relay.silent_since.get_or_insert(now);
            }
        }
        for relay in &mut self.relays {
            relay.client.handle_timeout(now);
        }
    }

    pub fn poll_timeout(&self) -> Option<Instant> {
        let turn = self
            .relays
            .iter()
            .filter_map(|r| r.client.poll_timeout())
            .min();
        let retry = self.relays.iter().filter_map(|r| r.retry_at).min();
        let switch = self
            .relays
            .iter()
            .filter(|r| !r.udp_answered)
            .filter_map(|r| Some(r.silent_since? + r.switch_after))
            .min();
        turn.into_iter().chain(retry).chain(switch).min()
    }

    /// TURN requests out; returns the allocations that just came through.
    /// Failures are counted in `failed` and retried later.
    pub fn poll(
        &mut self,
        transmits: &mut VecDeque<Transmit>,
        now: Instant,
        failed: &mut u64,
    ) -> Vec<Allocation> {
        let mut announced = Vec::new();
        for relay in &mut self.relays {
            while let Some(bytes) = relay.client.poll_transmit() {
                transmits.push_back(Transmit {
                    destination: relay.config.server,
                    payload: bytes,
                    ttl: None,
                    stream: relay.stream.clone(),
                });
            }
            while let Some(event) = relay.client.poll_event() {
                match event {
                    TurnEvent::Allocated { relayed, mapped } => {
                        relay.backoff = RETRY;
                        if let Some(rtt) = relay.rtt
                            && let Ok(mut rtts) = self.rtt.write()
                        {
                            let millis = u32::try_from(rtt.as_millis()).unwrap_or(u32::MAX);
                            rtts.insert(relayed.ip(), millis);
                            tracing::debug!(server = %relay.config.server, rtt_ms = millis, "relay round trip");
                        }
                        announced.push(Allocation {
                            relayed,
                            mapped,
                            stream: relay.stream.is_some(),
                        });
                    }
                    TurnEvent::Failed { code, reason } => {
                        tracing::debug!(server = %relay.config.server, code, %reason, "relay allocation failed");
                        *failed += 1;
                        relay.retry_at = Some(now + relay.backoff);
                        relay.backoff = (relay.backoff * 2).min(RETRY_MAX);
                    }
                    _ => {}
                }
            }
        }
        announced
    }
}

/// Frames `out[HEADER..HEADER + length]` as ChannelData in place.
pub(super) fn frame_in_place(out: &mut [u8], number: u16, length: usize) -> Option<usize> {
    let header = channel::header(number, u16::try_from(length).ok()?);
    out.get_mut(..channel::HEADER_LEN)?.copy_from_slice(&header);
    Some(channel::HEADER_LEN + length)
}

/// Room a ChannelData header takes before the data.
pub(super) const HEADER: usize = channel::HEADER_LEN;
