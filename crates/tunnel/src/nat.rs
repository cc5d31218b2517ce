//! Address rewriting for DNS resources (SPEC F24): the client talks to proxy
//! addresses its DNS stub handed out; the gateway maps each proxy to a real
//! address it resolved itself and rewrites packets both ways, fixing the
//! checksums incrementally (RFC 1624). Sessions time out as RFC 4787 (UDP,
//! 5 minutes) and RFC 5382 (TCP, 2 hours 4 minutes) ask; ICMP errors about a
//! rewritten packet are rewritten too, so the app sees its proxy address.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use postern_model::filter::{IPPROTO_ICMP, IPPROTO_ICMPV6, IPPROTO_TCP, IPPROTO_UDP};

use crate::packet::Packet;

pub const UDP_TIMEOUT: Duration = Duration::from_secs(300);
pub const TCP_TIMEOUT: Duration = Duration::from_secs(2 * 3600 + 4 * 60);
pub const ICMP_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    Source,
    Destination,
}

/// One's complement sum helpers for RFC 1624 updates.
fn fold(mut sum: u32) -> u16 {
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum as u16
}

/// An address as 16-bit words (on the stack: this runs for every rewritten
/// packet).
fn address_words(address: IpAddr) -> impl Iterator<Item = u16> {
    let (octets, length) = match address {
        IpAddr::V4(v4) => {
            let mut octets = [0u8; 16];
            octets[..4].copy_from_slice(&v4.octets());
            (octets, 4)
        }
        IpAddr::V6(v6) => (v6.octets(), 16),
    };
    (0..length)
        .step_by(2)
        .map(move |i| u16::from_be_bytes([octets[i], octets[i + 1]]))
}

/// Updates the checksum at `at` for `old` becoming `new` (RFC 1624 eq. 3).
fn update_checksum(packet: &mut [u8], at: usize, old: IpAddr, new: IpAddr, udp: bool) {
    let Some(field) = packet.get(at..at + 2) else {
        return;
    };
    let checksum = u16::from_be_bytes([field[0], field[1]]);
    // A zero UDP checksum over IPv4 means "none": leave it so.
    if udp && checksum == 0 {
        return;
    }
    let mut sum = u32::from(!checksum);
    for word in address_words(old) {
        sum += u32::from(!word);
    }
    for word in address_words(new) {
        sum += u32::from(word);
    }
    let mut updated = !fold(sum);
    if udp && updated == 0 {
        updated = 0xffff;
    }
    packet[at..at + 2].copy_from_slice(&updated.to_be_bytes());
}

/// Rewrites one address of an IP packet in place, with every checksum that
/// covers it; false if the packet is not of `new`'s family or is malformed.
pub fn rewrite(packet: &mut [u8], side: Side, new: IpAddr) -> bool {
    let Ok(parsed) = Packet::parse(packet) else {
        return false;
    };
    let old = match side {
        Side::Source => parsed.source(),
        Side::Destination => parsed.destination(),
    };
    if old.is_ipv4() != new.is_ipv4() {
        return false;
    }
    let protocol = parsed.protocol();
    let transport = parsed.transport_offset();
    let (offset, header_checksum) = match (old, side) {
        (IpAddr::V4(_), Side::Source) => (12, true),
        (IpAddr::V4(_), Side::Destination) => (16, true),
        (IpAddr::V6(_), Side::Source) => (8, false),
        (IpAddr::V6(_), Side::Destination) => (24, false),
    };
    if let Some(at) = transport {
        match protocol {
            IPPROTO_TCP => update_checksum(packet, at + 16, old, new, false),
            IPPROTO_UDP => update_checksum(packet, at + 6, old, new, old.is_ipv4()),
            IPPROTO_ICMPV6 => update_checksum(packet, at + 2, old, new, false),
            _ => {}
        }
    }
    if header_checksum {
        update_checksum(packet, 10, old, new, false);
    }
    match new {
        IpAddr::V4(v4) => packet[offset..offset + 4].copy_from_slice(&v4.octets()),
        IpAddr::V6(v6) => packet[offset..offset + 16].copy_from_slice(&v6.octets()),
    }
    true
}

/// The flow a packet belongs to, seen from the client: (protocol, client
/// port, remote port); ICMP echo uses its identifier for both ports.
fn flow_of(packet: &Packet<'_>, from_client: bool) -> Option<(u8, u16, u16)> {
    let protocol = packet.protocol();
    let (source_port, destination_port) = packet.ports()?;
    match protocol {
        IPPROTO_ICMP | IPPROTO_ICMPV6 => Some((protocol, source_port, source_port)),
        _ if from_client => Some((protocol, source_port, destination_port)),
        _ => Some((protocol, destination_port, source_port)),
    }
}

fn timeout(protocol: u8) -> Duration {
    match protocol {
        IPPROTO_TCP => TCP_TIMEOUT,
        IPPROTO_UDP => UDP_TIMEOUT,
        _ => ICMP_TIMEOUT,
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct SessionKey {
    real: IpAddr,
    protocol: u8,
    client_port: u16,
    remote_port: u16,
}

/// Sessions one client may have at once (a bound on what a peer can grow).
pub const MAX_SESSIONS: usize = crate::flows::MAX_FLOWS;

/// One client's proxy mappings and sessions.
#[derive(Debug, Default)]
pub struct ClientNat {
    /// proxy -> real
    proxies: HashMap<IpAddr, IpAddr>,
    /// real -> the proxy last mapped to it: an ICMP error about a real
    /// address finds its proxy without a scan.
    reals: HashMap<IpAddr, IpAddr>,
    /// session -> (proxy, expiry)
    sessions: HashMap<SessionKey, (IpAddr, Instant)>,
}

impl ClientNat {
    /// Maps `proxy` to `real` (a later assignment replaces it).
    pub fn map(&mut self, proxy: IpAddr, real: IpAddr) {
        self.proxies.insert(proxy, real);
        self.reals.insert(real, proxy);
    }

    pub fn unmap(&mut self, proxy: IpAddr) {
        if let Some(real) = self.proxies.remove(&proxy) {
            match self.proxies.iter().find(|(_, r)| **r == real) {
                Some((other, _)) => {
                    let other = *other;
                    self.reals.insert(real, other);
                }
                None => {
                    self.reals.remove(&real);
                }
            }
        }
        self.sessions.retain(|_, (p, _)| *p != proxy);
    }

    pub fn real_of(&self, proxy: IpAddr) -> Option<IpAddr> {
        self.proxies.get(&proxy).copied()
    }

    /// A packet from the client to a proxy: rewritten to the real address,
    /// its session noted. False when the destination is no proxy of ours,
    /// or the client has [`MAX_SESSIONS`] sessions already.
    pub fn outbound(&mut self, packet: &mut [u8], now: Instant) -> bool {
        let Ok(parsed) = Packet::parse(packet) else {
            return false;
        };
        let proxy = parsed.destination();
        let Some(real) = self.real_of(proxy) else {
            return false;
        };
        if let Some((protocol, client_port, remote_port)) = flow_of(&parsed, true) {
            let key = SessionKey {
                real,
                protocol,
                client_port,
                remote_port,
            };
            if !self.sessions.contains_key(&key) && self.sessions.len() >= MAX_SESSIONS {
                return false;
            }
            self.sessions.insert(key, (proxy, now + timeout(protocol)));
        }
        rewrite(packet, Side::Destination, real)
    }

    /// A packet from a resource back to the client: its source rewritten to
    /// the proxy the client used. ICMP errors about a rewritten packet get
    /// the quoted destination rewritten too. False when no session matches.
    pub fn inbound(&mut self, packet: &mut [u8], now: Instant) -> bool {
        let Ok(parsed) = Packet::parse(packet) else {
            return false;
        };
        if parsed.is_icmp_error() {
            return self.inbound_error(packet);
        }
        let Some((protocol, client_port, remote_port)) = flow_of(&parsed, false) else {
            return false;
        };
        let key = SessionKey {
            real: parsed.source(),
            protocol,
            client_port,
            remote_port,
        };
        let Some((proxy, expires)) = self.sessions.get_mut(&key) else {
            return false;
        };
        if *expires <= now {
            self.sessions.remove(&key);
            return false;
        }
        *expires = now + timeout(protocol);
        let proxy = *proxy;
        rewrite(packet, Side::Source, proxy)
    }

    /// An ICMP error quoting a packet we sent to a real address: the quote's
    /// destination becomes the proxy again (its checksum fields are left as
    /// the quote had them: the quote is truncated and informational), and
    /// the ICMP checksum is recomputed.
    fn inbound_error(&mut self, packet: &mut [u8]) -> bool {
        let Ok(parsed) = Packet::parse(packet) else {
            return false;
        };
        let Some(at) = parsed.transport_offset() else {
            return false;
        };
        let (source, destination) = (parsed.source(), parsed.destination());
        let quote_at = at + 8;
        let (real, proxy) = {
            let Some(quoted) = packet
                .get(quote_at..)
                .and_then(|q| Packet::parse_quoted(q).ok())
            else {
                return false;
            };
            let real = quoted.destination();
            (real, self.reals.get(&real).copied())
        };
        let Some(proxy) = proxy else {
            return false;
        };
        let offset = if real.is_ipv4() { 16 } else { 24 };
        let length = if real.is_ipv4() { 4 } else { 16 };
        let Some(field) = packet.get_mut(quote_at + offset..quote_at + offset + length) else {
            return false;
        };
        match proxy {
            IpAddr::V4(v4) if length == 4 => field.copy_from_slice(&v4.octets()),
            IpAddr::V6(v6) if length == 16 => field.copy_from_slice(&v6.octets()),
            _ => return false,
        }
        // Recompute the ICMP checksum over the message.
        packet[at + 2..at + 4].copy_from_slice(&[0, 0]);
        let sum = match (source, destination) {
            (IpAddr::V6(s), IpAddr::V6(d)) => {
                let length = ((packet.len() - at) as u32).to_be_bytes();
                crate::icmp::checksum(&[
                    &s.octets(),
                    &d.octets(),
                    &length,
                    &[0, 0, 0, IPPROTO_ICMPV6],
                    &packet[at..],
                ])
            }
            _ => crate::icmp::checksum(&[&packet[at..]]),
        };
        packet[at + 2..at + 4].copy_from_slice(&sum.to_be_bytes());
        true
    }

    /// Forgets expired sessions.
    pub fn expire(&mut self, now: Instant) {
        self.sessions.retain(|_, (_, expires)| *expires > now);
    }

    pub fn session_count(&self) -> usize {
        self.sessions.len()
    }
}
