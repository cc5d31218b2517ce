//! What a role has queued for its shell, and the slow-path send both roles
//! share: packets of their own (in-tunnel messages, ICMP replies, buffered
//! first packets) are encrypted into a scratch buffer and copied into a
//! transmit; the data path never comes here.

use std::collections::VecDeque;
use std::time::Instant;

use crate::counters::Counters;
use crate::effect::Effect;
use crate::node::{Node, PeerId, Transmit};

/// Room for one encrypted packet on the slow path.
const SCRATCH: usize = 65_535 + 64;

pub(crate) struct Outbox<M> {
    pub transmits: VecDeque<Transmit>,
    pub tun_packets: VecDeque<Vec<u8>>,
    pub portal: VecDeque<M>,
    pub effects: VecDeque<Effect>,
    /// Packets dropped or refused, by reason.
    pub dropped: Counters,
    scratch: Vec<u8>,
}

impl<M> Outbox<M> {
    pub fn new() -> Self {
        Outbox {
            transmits: VecDeque::new(),
            tun_packets: VecDeque::new(),
            portal: VecDeque::new(),
            effects: VecDeque::new(),
            dropped: Counters::default(),
            scratch: vec![0; SCRATCH],
        }
    }

    /// A packet to `peer` on the slow path.
    pub fn send_packet<P: PeerId>(
        &mut self,
        node: &mut Node<P>,
        peer: P,
        packet: &[u8],
        now: Instant,
    ) {
        if let Some((destination, n)) = node.encapsulate(peer, packet, now, &mut self.scratch) {
            self.transmits.push_back(Transmit {
                destination,
                payload: self.scratch[..n].to_vec(),
                ttl: None,
                stream: node.relay_stream(destination),
            });
        }
    }

    /// The role's own transmits first, then the node's.
    pub fn poll_transmit<P: PeerId>(&mut self, node: &mut Node<P>) -> Option<Transmit> {
        self.transmits.pop_front().or_else(|| node.poll_transmit())
    }
}
