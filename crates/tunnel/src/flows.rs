//! The flows a client opened (SPEC 7.1, "nothing reaches a client that the
//! client did not ask for"): a small connection table keyed by the
//! client's view of each flow (protocol, its address and port, the remote
//! address and port; the identifier for ICMP echo). A packet toward the
//! client passes only if it answers such a flow, or is an ICMP error about
//! one; a fragment after the first (no ports) passes if the two addresses
//! have a flow of that protocol. The table is bounded: a client that opens
//! more flows than [`MAX_FLOWS`] gets no new ones until old ones expire
//! (RFC 4787 and RFC 5382 idle times), so no peer can grow it without
//! bound.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use postern_model::filter::{IPPROTO_ICMP, IPPROTO_ICMPV6, IPPROTO_TCP};

use crate::packet::Packet;

/// Flows one table holds at most.
pub const MAX_FLOWS: usize = 16_384;
const TCP_IDLE: Duration = Duration::from_secs(2 * 3600 + 4 * 60);
const UDP_IDLE: Duration = Duration::from_secs(300);
const ICMP_IDLE: Duration = Duration::from_secs(60);
/// Tables are swept of idle flows this often.
pub const SWEEP: Duration = Duration::from_secs(10);

/// A flow as the client sees it: its own end first.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct FlowKey {
    protocol: u8,
    local: IpAddr,
    local_port: u16,
    remote: IpAddr,
    remote_port: u16,
}

/// The addresses of a flow, for fragments that carry no ports.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct Pair {
    protocol: u8,
    local: IpAddr,
    remote: IpAddr,
}

/// Why a packet toward the client was refused, or a flow not opened.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FlowRefusal {
    /// Nothing the client opened: an unsolicited packet.
    Unsolicited,
    /// The table is full: no new flow until old ones expire.
    Full,
    /// Not a packet at all.
    Malformed,
}

impl FlowRefusal {
    pub fn label(self) -> &'static str {
        match self {
            FlowRefusal::Unsolicited => "unsolicited",
            FlowRefusal::Full => "flows_full",
            FlowRefusal::Malformed => "malformed",
        }
    }
}

#[derive(Debug, Default)]
pub struct Flows {
    flows: HashMap<FlowKey, Instant>,
    /// How many flows each address pair has.
    pairs: HashMap<Pair, usize>,
}

fn idle_limit(protocol: u8) -> Duration {
    match protocol {
        IPPROTO_TCP => TCP_IDLE,
        IPPROTO_ICMP | IPPROTO_ICMPV6 => ICMP_IDLE,
        _ => UDP_IDLE,
    }
}

/// The key of a packet the client sends (`outbound`) or receives.
fn key(packet: &Packet<'_>, outbound: bool) -> FlowKey {
    let (source_port, destination_port) = packet.ports().unwrap_or((0, 0));
    let (source, destination) = (packet.source(), packet.destination());
    if outbound {
        FlowKey {
            protocol: packet.protocol(),
            local: source,
            local_port: source_port,
            remote: destination,
            remote_port: destination_port,
        }
    } else {
        FlowKey {
            protocol: packet.protocol(),
            local: destination,
            local_port: destination_port,
            remote: source,
            remote_port: source_port,
        }
    }
}

impl Flows {
    /// A packet the client sends: opens or refreshes its flow.
    pub fn outbound(&mut self, packet: &Packet<'_>, now: Instant) -> Result<(), FlowRefusal> {
        // An ICMP error the client sends about a packet it got opens
        // nothing; a fragment after the first refreshes nothing either.
        if packet.is_icmp_error() || packet.transport_offset().is_none() {
            return Ok(());
        }
        let key = key(packet, true);
        if let Some(seen) = self.flows.get_mut(&key) {
            *seen = now;
            return Ok(());
        }
        if self.flows.len() >= MAX_FLOWS {
            return Err(FlowRefusal::Full);
        }
        self.flows.insert(key, now);
        *self
            .pairs
            .entry(Pair {
                protocol: key.protocol,
                local: key.local,
                remote: key.remote,
            })
            .or_default() += 1;
        Ok(())
    }

    /// Whether a packet toward the client answers a flow it opened (or is
    /// an ICMP error about one); an answer refreshes its flow.
    pub fn inbound(&mut self, packet: &Packet<'_>, now: Instant) -> Result<(), FlowRefusal> {
        if packet.is_icmp_error() {
            return self.error_about(packet);
        }
        if packet.transport_offset().is_none() {
            let pair = Pair {
                protocol: packet.protocol(),
                local: packet.destination(),
                remote: packet.source(),
            };
            return match self.pairs.get(&pair) {
                Some(_) => Ok(()),
                None => Err(FlowRefusal::Unsolicited),
            };
        }
        match self.flows.get_mut(&key(packet, false)) {
            Some(seen) => {
                *seen = now;
                Ok(())
            }
            None => Err(FlowRefusal::Unsolicited),
        }
    }

    /// An ICMP error toward the client: the packet it quotes must be one of
    /// the client's, of a flow it opened.
    fn error_about(&self, packet: &Packet<'_>) -> Result<(), FlowRefusal> {
        let quoted = packet
            .transport_offset()
            .and_then(|at| packet.bytes().get(at + 8..))
            .and_then(|bytes| Packet::parse_quoted(bytes).ok())
            .ok_or(FlowRefusal::Malformed)?;
        if quoted.source() != packet.destination() {
            return Err(FlowRefusal::Unsolicited);
        }
        let key = key(&quoted, true);
        // A quote cut before its ports can only be matched by addresses.
        let known = match quoted.ports() {
            Some(_) => self.flows.contains_key(&key),
            None => self.pairs.contains_key(&Pair {
                protocol: key.protocol,
                local: key.local,
                remote: key.remote,
            }),
        };
        if known {
            Ok(())
        } else {
            Err(FlowRefusal::Unsolicited)
        }
    }

    /// Forgets flows idle past their protocol's limit.
    pub fn expire(&mut self, now: Instant) {
        let pairs = &mut self.pairs;
        self.flows.retain(|key, seen| {
            let keep = now.saturating_duration_since(*seen) < idle_limit(key.protocol);
            if !keep {
                let pair = Pair {
                    protocol: key.protocol,
                    local: key.local,
                    remote: key.remote,
                };
                if let Some(count) = pairs.get_mut(&pair) {
                    *count -= 1;
                    if *count == 0 {
                        pairs.remove(&pair);
                    }
                }
            }
            keep
        });
    }

    pub fn len(&self) -> usize {
        self.flows.len()
    }

    pub fn is_empty(&self) -> bool {
        self.flows.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use postern_model::filter::IPPROTO_UDP;

    fn udp(source: [u8; 4], source_port: u16, destination: [u8; 4], port: u16) -> Vec<u8> {
        let mut packet = vec![0u8; 28];
        packet[0] = 0x45;
        packet[2..4].copy_from_slice(&28u16.to_be_bytes());
        packet[8] = 64;
        packet[9] = IPPROTO_UDP;
        packet[12..16].copy_from_slice(&source);
        packet[16..20].copy_from_slice(&destination);
        packet[20..22].copy_from_slice(&source_port.to_be_bytes());
        packet[22..24].copy_from_slice(&port.to_be_bytes());
        packet
    }

    const CLIENT: [u8; 4] = [100, 64, 0, 2];
    const SERVER: [u8; 4] = [10, 0, 0, 5];

    #[test]
    fn only_answers_to_the_clients_own_flows_pass() {
        let now = Instant::now();
        let mut flows = Flows::default();
        let query = udp(CLIENT, 40000, SERVER, 53);
        flows
            .outbound(&Packet::parse(&query).unwrap(), now)
            .unwrap();
        let answer = udp(SERVER, 53, CLIENT, 40000);
        assert_eq!(flows.inbound(&Packet::parse(&answer).unwrap(), now), Ok(()));
        // The same server from another port, or to another client port: not
        // asked for.
        for stranger in [udp(SERVER, 54, CLIENT, 40000), udp(SERVER, 53, CLIENT, 22)] {
            assert_eq!(
                flows.inbound(&Packet::parse(&stranger).unwrap(), now),
                Err(FlowRefusal::Unsolicited)
            );
        }
        // Idle past the UDP limit: gone.
        flows.expire(now + UDP_IDLE);
        assert_eq!(
            flows.inbound(&Packet::parse(&answer).unwrap(), now + UDP_IDLE),
            Err(FlowRefusal::Unsolicited)
        );
        assert!(flows.is_empty());
    }

    #[test]
    fn icmp_errors_pass_only_about_the_clients_own_packets() {
        let now = Instant::now();
        let mut flows = Flows::default();
        let query = udp(CLIENT, 40000, SERVER, 53);
        flows
            .outbound(&Packet::parse(&query).unwrap(), now)
            .unwrap();
        let error = |quoted: &[u8]| {
            let mut packet = vec![0u8; 28];
            packet[0] = 0x45;
            packet[8] = 64;
            packet[9] = IPPROTO_ICMP;
            packet[12..16].copy_from_slice(&SERVER);
            packet[16..20].copy_from_slice(&CLIENT);
            packet[20] = 3; // destination unreachable
            packet[21] = 3;
            packet.extend_from_slice(quoted);
            let length = packet.len() as u16;
            packet[2..4].copy_from_slice(&length.to_be_bytes());
            packet
        };
        let about_ours = error(&query);
        assert_eq!(
            flows.inbound(&Packet::parse(&about_ours).unwrap(), now),
            Ok(())
        );
        let about_other = error(&udp(CLIENT, 40001, SERVER, 53));
        assert_eq!(
            flows.inbound(&Packet::parse(&about_other).unwrap(), now),
            Err(FlowRefusal::Unsolicited)
        );
    }

    #[test]
    fn the_table_is_bounded() {
        let now = Instant::now();
        let mut flows = Flows::default();
        for port in 0..MAX_FLOWS {
            let packet = udp(CLIENT, port as u16, SERVER, 53);
            flows
                .outbound(&Packet::parse(&packet).unwrap(), now)
                .unwrap();
        }
        let one_more = udp(CLIENT, 1, [10, 0, 0, 6], 53);
        assert_eq!(
            flows.outbound(&Packet::parse(&one_more).unwrap(), now),
            Err(FlowRefusal::Full)
        );
        assert_eq!(flows.len(), MAX_FLOWS);
    }
}
