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
//!
//! A gateway's tables also keep the flow log (SPEC 7.5, [`Flows::logging`]):
//! per flow the resource that let it through, when it started and the
//! bytes each way; a flow ends when TCP closes (both FINs, or a RST) or
//! when it expires idle, and goes to [`Flows::take_ended`].

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::time::{Duration, Instant};

use postern_model::ResourceId;
use postern_model::filter::{IPPROTO_ICMP, IPPROTO_ICMPV6, IPPROTO_TCP};

use crate::packet::Packet;

/// Flows one table holds at most.
pub const MAX_FLOWS: usize = 16_384;
const TCP_IDLE: Duration = Duration::from_secs(2 * 3600 + 4 * 60);
const UDP_IDLE: Duration = Duration::from_secs(300);
const ICMP_IDLE: Duration = Duration::from_secs(60);
/// Tables are swept of idle flows this often.
pub const SWEEP: Duration = Duration::from_secs(10);
/// A closed TCP flow (both FINs, or a RST) stays this long for its last
/// segments (the final ACK, retransmitted FINs).
const TCP_CLOSED: Duration = Duration::from_secs(10);
/// Ended flows a table keeps for the log until they are taken, at most (a
/// caller that never takes them loses the oldest, counted).
pub const MAX_ENDED: usize = 4_096;
const FIN_FROM_CLIENT: u8 = 1;
const FIN_TO_CLIENT: u8 = 2;
const TCP_FIN: u8 = 0x01;
const TCP_SYN: u8 = 0x02;
const TCP_RST: u8 = 0x04;
const TCP_ACK: u8 = 0x10;

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

/// A flow's state: when it was last seen, and for the log what it carried.
#[derive(Clone, Copy, Debug)]
struct Flow {
    seen: Instant,
    started: Instant,
    resource: Option<ResourceId>,
    /// The real destination behind a DNS resource's proxy address (the
    /// key has the proxy, as the client sees it).
    real: Option<IpAddr>,
    bytes_out: u64,
    bytes_in: u64,
    /// TCP FINs seen ([`FIN_FROM_CLIENT`], [`FIN_TO_CLIENT`]).
    fins: u8,
    /// Closed (both FINs or a RST).
    closed: bool,
    /// Logged at its close: the counters and `started` restart there, so
    /// anything after the close (beyond a few closing segments) is logged
    /// again when the flow expires, never counted twice.
    logged: bool,
}

impl Flow {
    /// A flow the client's `packet` opens now.
    fn opened(
        packet: &Packet<'_>,
        resource: Option<ResourceId>,
        real: Option<IpAddr>,
        now: Instant,
    ) -> Flow {
        Flow {
            seen: now,
            started: now,
            resource,
            real,
            bytes_out: packet.bytes().len() as u64,
            bytes_in: 0,
            fins: 0,
            closed: false,
            logged: false,
        }
    }
}

/// Bytes a closed flow may still carry without a log entry of their own
/// (its last ACKs, a retransmitted FIN).
const CLOSING_SLACK: u64 = 512;

/// A flow that ended, for the flow log.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EndedFlow {
    pub protocol: u8,
    /// The client's address and port (the identifier for ICMP echo).
    pub client: (IpAddr, u16),
    pub remote: (IpAddr, u16),
    pub resource: Option<ResourceId>,
    pub started: Instant,
    pub ended: Instant,
    pub bytes_out: u64,
    pub bytes_in: u64,
}

#[derive(Debug, Default)]
pub struct Flows {
    flows: HashMap<FlowKey, Flow>,
    /// How many flows each address pair has.
    pairs: HashMap<Pair, usize>,
    /// Whether ended flows are kept for the log (a gateway's tables).
    logging: bool,
    ended: VecDeque<EndedFlow>,
    /// Ended flows dropped because nobody took them in time.
    ended_dropped: u64,
}

fn idle_limit(protocol: u8) -> Duration {
    match protocol {
        IPPROTO_TCP => TCP_IDLE,
        IPPROTO_ICMP | IPPROTO_ICMPV6 => ICMP_IDLE,
        _ => UDP_IDLE,
    }
}

/// Whether a flow has traffic no log entry covers yet: never logged, or
/// more than its closing segments since it was.
fn unlogged(flow: &Flow) -> bool {
    !flow.logged || flow.bytes_out + flow.bytes_in > CLOSING_SLACK
}

/// Notes a TCP segment's FIN or RST on `flow` (`direction`: whose FIN);
/// true when this segment closed it (both FINs seen, or a RST).
fn track_close(flow: &mut Flow, packet: &Packet<'_>, direction: u8) -> bool {
    let Some(flags) = packet.tcp_flags() else {
        return false;
    };
    if flow.closed {
        return false;
    }
    if flags & TCP_FIN != 0 {
        flow.fins |= direction;
    }
    if flags & TCP_RST != 0 || flow.fins == FIN_FROM_CLIENT | FIN_TO_CLIENT {
        flow.closed = true;
        return true;
    }
    false
}

fn ended(key: &FlowKey, flow: &Flow, at: Instant) -> EndedFlow {
    EndedFlow {
        protocol: key.protocol,
        client: (key.local, key.local_port),
        remote: (flow.real.unwrap_or(key.remote), key.remote_port),
        resource: flow.resource,
        started: flow.started,
        ended: at,
        bytes_out: flow.bytes_out,
        bytes_in: flow.bytes_in,
    }
}

/// One flow of its address pair is gone.
fn forget_pair(pairs: &mut HashMap<Pair, usize>, key: &FlowKey) {
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
    /// A table that keeps ended flows for the log ([`Flows::take_ended`]).
    pub fn logging() -> Self {
        Flows {
            logging: true,
            ..Flows::default()
        }
    }

    /// A packet the client sends: opens or refreshes its flow.
    pub fn outbound(&mut self, packet: &Packet<'_>, now: Instant) -> Result<(), FlowRefusal> {
        self.outbound_for(packet, None, None, now)
    }

    /// [`Flows::outbound`] for a packet `resource` let through, toward
    /// `real` if its destination is a proxy address (logged with the flow
    /// it opens).
    pub fn outbound_for(
        &mut self,
        packet: &Packet<'_>,
        resource: Option<ResourceId>,
        real: Option<IpAddr>,
        now: Instant,
    ) -> Result<(), FlowRefusal> {
        // An ICMP error the client sends about a packet it got opens
        // nothing; a fragment after the first refreshes nothing either.
        if packet.is_icmp_error() || packet.transport_offset().is_none() {
            return Ok(());
        }
        let key = key(packet, true);
        if let Some(flow) = self.flows.get_mut(&key) {
            if flow.closed
                && packet
                    .tcp_flags()
                    .is_some_and(|f| f & (TCP_SYN | TCP_ACK) == TCP_SYN)
            {
                // A new connection on the port of one that closed moments
                // ago (logged already): a flow of its own.
                *flow = Flow::opened(packet, resource, real, now);
                return Ok(());
            }
            flow.seen = now;
            flow.bytes_out += packet.bytes().len() as u64;
            let ended = track_close(flow, packet, FIN_FROM_CLIENT);
            if ended && self.logging {
                self.log(&key, now);
            }
            return Ok(());
        }
        if self.flows.len() >= MAX_FLOWS {
            return Err(FlowRefusal::Full);
        }
        let mut flow = Flow::opened(packet, resource, real, now);
        track_close(&mut flow, packet, FIN_FROM_CLIENT);
        self.flows.insert(key, flow);
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
        let key = key(packet, false);
        match self.flows.get_mut(&key) {
            Some(flow) => {
                flow.seen = now;
                flow.bytes_in += packet.bytes().len() as u64;
                if track_close(flow, packet, FIN_TO_CLIENT) && self.logging {
                    self.log(&key, now);
                }
                Ok(())
            }
            None => Err(FlowRefusal::Unsolicited),
        }
    }

    /// Logs the flow at `key` as ended now (it stays in the table, closed).
    fn log(&mut self, key: &FlowKey, now: Instant) {
        if let Some(flow) = self.flows.get_mut(key) {
            let ended = ended(key, flow, now);
            flow.logged = true;
            flow.started = now;
            flow.bytes_out = 0;
            flow.bytes_in = 0;
            self.push_ended(ended);
        }
    }

    fn push_ended(&mut self, flow: EndedFlow) {
        if self.ended.len() >= MAX_ENDED {
            self.ended.pop_front();
            self.ended_dropped += 1;
        }
        self.ended.push_back(flow);
    }

    /// The flows that ended since the last call (oldest first), and how
    /// many were dropped meanwhile for want of room.
    pub fn take_ended(&mut self) -> (Vec<EndedFlow>, u64) {
        (
            std::mem::take(&mut self.ended).into(),
            std::mem::take(&mut self.ended_dropped),
        )
    }

    /// Whether ended flows (or a count of dropped ones) wait to be taken.
    pub fn has_ended(&self) -> bool {
        !self.ended.is_empty() || self.ended_dropped > 0
    }

    /// Ends every flow (the client is gone), each when it was last seen:
    /// the log gets those not logged yet.
    pub fn end_all(&mut self) {
        if self.logging {
            let open: Vec<EndedFlow> = self
                .flows
                .iter()
                .filter(|(_, flow)| unlogged(flow))
                .map(|(key, flow)| ended(key, flow, flow.seen))
                .collect();
            for flow in open {
                self.push_ended(flow);
            }
        }
        self.flows.clear();
        self.pairs.clear();
    }

    /// Forgets every flow `resource` let through (its access ended) and
    /// returns them, each ended now.
    pub fn end_resource(&mut self, resource: ResourceId, now: Instant) -> Vec<EndedFlow> {
        let pairs = &mut self.pairs;
        let mut gone = Vec::new();
        self.flows.retain(|key, flow| {
            if flow.resource != Some(resource) {
                return true;
            }
            gone.push(ended(key, flow, now));
            forget_pair(pairs, key);
            false
        });
        gone
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

    /// Forgets flows idle past their protocol's limit (a closed TCP flow
    /// after [`TCP_CLOSED`]); the log gets those not logged yet, ended when
    /// last seen.
    pub fn expire(&mut self, now: Instant) {
        let pairs = &mut self.pairs;
        let mut expired = Vec::new();
        let logging = self.logging;
        self.flows.retain(|key, flow| {
            let limit = if flow.closed {
                TCP_CLOSED
            } else {
                idle_limit(key.protocol)
            };
            let keep = now.saturating_duration_since(flow.seen) < limit;
            if !keep && logging && unlogged(flow) {
                expired.push(ended(key, flow, flow.seen));
            }
            if !keep {
                forget_pair(pairs, key);
            }
            keep
        });
        for flow in expired {
            self.push_ended(flow);
        }
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

    fn tcp(source: [u8; 4], sport: u16, destination: [u8; 4], dport: u16, flags: u8) -> Vec<u8> {
        let mut packet = vec![0u8; 40];
        packet[0] = 0x45;
        packet[2..4].copy_from_slice(&40u16.to_be_bytes());
        packet[8] = 64;
        packet[9] = IPPROTO_TCP;
        packet[12..16].copy_from_slice(&source);
        packet[16..20].copy_from_slice(&destination);
        packet[20..22].copy_from_slice(&sport.to_be_bytes());
        packet[22..24].copy_from_slice(&dport.to_be_bytes());
        packet[32] = 0x50;
        packet[33] = flags;
        packet
    }

    /// The flow log: a TCP flow ends when both FINs passed (logged at once
    /// with its bytes and resource, its last ACK still let through); a UDP
    /// flow when it expires idle; a client's table logs nothing.
    #[test]
    fn a_logging_table_ends_tcp_flows_at_close_and_others_when_idle() {
        let start = Instant::now();
        let resource = Some(ResourceId(uuid::Uuid::from_u128(5)));
        let mut flows = Flows::logging();
        let out = |flows: &mut Flows, packet: &[u8], at| {
            flows
                .outbound_for(&Packet::parse(packet).unwrap(), resource, None, at)
                .unwrap()
        };
        let back = |flows: &mut Flows, packet: &[u8], at| {
            flows.inbound(&Packet::parse(packet).unwrap(), at).unwrap()
        };
        out(&mut flows, &tcp(CLIENT, 40000, SERVER, 80, 0x02), start);
        back(&mut flows, &tcp(SERVER, 80, CLIENT, 40000, 0x12), start);
        for _ in 0..10 {
            back(&mut flows, &tcp(SERVER, 80, CLIENT, 40000, 0x10), start);
        }
        let later = start + Duration::from_secs(3);
        out(&mut flows, &tcp(CLIENT, 40000, SERVER, 80, 0x11), later);
        assert!(flows.take_ended().0.is_empty(), "half closed: still open");
        back(&mut flows, &tcp(SERVER, 80, CLIENT, 40000, 0x11), later);
        let (ended, dropped) = flows.take_ended();
        assert_eq!(dropped, 0);
        assert_eq!(
            ended,
            vec![EndedFlow {
                protocol: IPPROTO_TCP,
                client: (IpAddr::from(CLIENT), 40000),
                remote: (IpAddr::from(SERVER), 80),
                resource,
                started: start,
                ended: later,
                bytes_out: 80,
                bytes_in: 480,
            }]
        );
        // The last ACK passes and logs nothing more; a new connection from
        // the same port moments later is a flow of its own.
        out(&mut flows, &tcp(CLIENT, 40000, SERVER, 80, 0x10), later);
        let again = later + Duration::from_secs(1);
        out(&mut flows, &tcp(CLIENT, 40000, SERVER, 80, 0x02), again);
        out(&mut flows, &tcp(CLIENT, 40000, SERVER, 80, 0x04), again);
        let (ended, _) = flows.take_ended();
        assert_eq!(ended.len(), 1);
        assert_eq!((ended[0].started, ended[0].bytes_out), (again, 80));
        flows.expire(later + Duration::from_secs(11));
        assert!(flows.is_empty());
        assert!(flows.take_ended().0.is_empty());

        out(&mut flows, &udp(CLIENT, 5353, SERVER, 53), start);
        flows.expire(start + UDP_IDLE);
        let (ended, _) = flows.take_ended();
        assert_eq!(ended.len(), 1);
        assert_eq!((ended[0].protocol, ended[0].ended), (IPPROTO_UDP, start));

        let mut client_side = Flows::default();
        client_side
            .outbound(&Packet::parse(&udp(CLIENT, 1, SERVER, 53)).unwrap(), start)
            .unwrap();
        client_side.expire(start + UDP_IDLE);
        assert!(client_side.take_ended().0.is_empty());
    }

    /// A client that sends a RST (which the server may ignore, RFC 5961)
    /// and goes on cannot hide the rest: what follows the close is logged
    /// when the flow goes idle, counted once; a flow whose first segment
    /// closed it is logged too.
    #[test]
    fn traffic_after_a_close_is_logged_again_and_never_twice() {
        let start = Instant::now();
        let mut flows = Flows::logging();
        let out = |flows: &mut Flows, packet: &[u8], at| {
            flows
                .outbound_for(&Packet::parse(packet).unwrap(), None, None, at)
                .unwrap()
        };
        out(&mut flows, &tcp(CLIENT, 1, SERVER, 80, 0x02), start);
        out(&mut flows, &tcp(CLIENT, 1, SERVER, 80, 0x04), start);
        let (first, _) = flows.take_ended();
        assert_eq!(first.len(), 1);
        assert_eq!(first[0].bytes_out, 80);
        let later = start + Duration::from_secs(1);
        for _ in 0..100 {
            out(&mut flows, &tcp(CLIENT, 1, SERVER, 80, 0x10), later);
        }
        // A flow opened by a lone RST is closed from its start.
        out(&mut flows, &tcp(CLIENT, 2, SERVER, 80, 0x04), later);
        flows.expire(later + Duration::from_secs(11));
        let (after, _) = flows.take_ended();
        assert_eq!(after.len(), 2, "{after:?}");
        let rest = after.iter().find(|f| f.client.1 == 1).unwrap();
        assert_eq!((rest.started, rest.bytes_out), (start, 100 * 40));
        assert!(after.iter().any(|f| f.client.1 == 2 && f.bytes_out == 40));
    }

    /// A client that goes away ends its open flows; a RST ends one too.
    #[test]
    fn a_reset_or_the_end_of_the_client_ends_its_flows() {
        let now = Instant::now();
        let mut flows = Flows::logging();
        for port in [1, 2] {
            flows
                .outbound_for(
                    &Packet::parse(&tcp(CLIENT, port, SERVER, 80, 0x02)).unwrap(),
                    None,
                    None,
                    now,
                )
                .unwrap();
        }
        flows
            .inbound(
                &Packet::parse(&tcp(SERVER, 80, CLIENT, 1, 0x04)).unwrap(),
                now,
            )
            .unwrap();
        assert_eq!(flows.take_ended().0.len(), 1);
        flows.end_all();
        let (ended, _) = flows.take_ended();
        assert_eq!(ended.len(), 1, "the reset one is logged once");
        assert_eq!(ended[0].client.1, 2);
        assert!(flows.is_empty());
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
