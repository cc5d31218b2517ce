//! A worker's outgoing datagrams, coalesced per flow over a whole turn of
//! its loop.
//!
//! Clients that send one datagram per system call (browsers, phones, most
//! TURN clients) arrive interleaved: a receive batch (recvmmsg) holds a, b,
//! c, a, b, c... Coalescing only consecutive datagrams into one pending GSO
//! batch, as the worker did, then sends nearly every datagram with a
//! system call of its own, and the relay costs about what coturn costs per
//! packet. Here every flow (a sending socket and a destination) has its own
//! open [`Group`], and the groups leave when the loop's turn ends (or the
//! outbox holds enough): each group as one GSO send, and all the groups
//! leaving one socket with the same segment size in one sendmmsg. So the
//! listening socket answers many clients with one system call, and a
//! relayed socket sends a client's datagrams of a whole turn with one.
//!
//! Order: a flow has at most one open group, and a datagram that does not
//! fit it sends the group first, so a flow's datagrams leave in the order
//! they came. Different flows' datagrams may leave in another order than
//! they arrived in; no flow can observe that (and UDP promises nothing
//! across flows anyway).

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;

use crate::metrics::SendDrop;

/// Bytes one group holds at most: a GSO send is one UDP datagram to the
/// kernel, at most 64 KiB with its headers.
const GROUP_BYTES: usize = 64_512;
/// Messages per sendmmsg call.
pub(crate) const MMSG: usize = 64;
/// Spare group buffers kept for reuse: enough for a busy turn, while an
/// idle worker does not hold megabytes.
const SPARE: usize = 64;

/// Where datagrams leave from and go to; their order is kept per flow.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) struct Flow {
    /// `None` for the listening socket, else the relayed port.
    pub from_port: Option<u16>,
    /// As the socket needs it (v4-mapped on a dual-stack listening socket).
    pub to: SocketAddr,
}

/// Datagrams of one flow that leave in one GSO send: of one size, the last
/// one possibly shorter (the kernel cuts `buf` at the segment size). An
/// empty datagram (ChannelData may carry none) always stands alone: GSO
/// has no empty segment, so it would vanish from a group.
pub(crate) struct Group {
    pub flow: Flow,
    segment: usize,
    count: usize,
    /// A shorter datagram ended the group.
    closed: bool,
    pub buf: Vec<u8>,
}

impl Group {
    fn fits(&self, len: usize, max_segments: usize) -> bool {
        !self.closed
            && len != 0
            && self.segment != 0
            && len <= self.segment
            && self.count < max_segments
            && self.buf.len() + len <= GROUP_BYTES
    }

    fn add(&mut self, data: &[u8]) {
        if self.count == 0 {
            self.segment = data.len();
        } else if data.len() < self.segment {
            self.closed = true;
        }
        self.buf.extend_from_slice(data);
        self.count += 1;
    }

    /// The GSO segment size to send the group with; `None` for a single
    /// datagram.
    pub fn segment(&self) -> Option<u16> {
        // A segment is at most GROUP_BYTES, which fits.
        (self.count > 1).then(|| u16::try_from(self.segment).unwrap_or(u16::MAX))
    }
}

/// How the outbox reaches the sockets: the worker's, or a test's record.
pub(crate) trait Wire {
    /// Sends `groups` (at most [`MMSG`]) from the socket of `from_port`,
    /// each cut into datagrams of `segment` bytes if given, in one system
    /// call. Returns how many groups left, counted from the front; an error
    /// means the first did not.
    fn send(
        &mut self,
        from_port: Option<u16>,
        groups: &[Group],
        segment: Option<u16>,
    ) -> io::Result<usize>;

    /// Sends `data` from the socket of `from_port` to `to` as plain
    /// datagrams of `segment` bytes (the last possibly shorter; `segment`
    /// is not 0), without GSO: up to [`MMSG`] of them in one system call.
    /// Returns how many datagrams left, counted from the front; an error
    /// means the first did not.
    fn send_apart(
        &mut self,
        from_port: Option<u16>,
        to: SocketAddr,
        data: &[u8],
        segment: usize,
    ) -> io::Result<usize>;
}

/// What the outbox counted.
#[derive(Default)]
pub(crate) struct OutboxStats {
    /// Send system calls made.
    pub send_calls: u64,
    /// Datagrams dropped, by [`SendDrop`].
    pub drops: [u64; SendDrop::COUNT],
}

#[derive(Default)]
pub(crate) struct Outbox {
    groups: Vec<Group>,
    /// The open group of each flow: its index in `groups`.
    open: HashMap<Flow, usize>,
    spare: Vec<Vec<u8>>,
    /// Datagrams waiting.
    datagrams: usize,
    /// The kernel refused a GSO send (EIO or EINVAL: a device without
    /// checksum offload, say): from then on every datagram leaves as a
    /// message of its own, whatever a socket reports it could do (a
    /// socket's GSO support is the kernel's, the refusal the route's).
    gso_off: bool,
    pub stats: OutboxStats,
}

impl Outbox {
    /// Datagrams waiting to be sent.
    pub fn datagrams(&self) -> usize {
        self.datagrams
    }

    /// Queues `data` for `flow`, behind the flow's earlier datagrams. If it
    /// does not fit the flow's open group (another size, or the group is
    /// full), that group is sent now and a new one opened.
    pub fn push(&mut self, flow: Flow, data: &[u8], max_segments: usize, wire: &mut impl Wire) {
        self.datagrams += 1;
        let max_segments = if self.gso_off { 1 } else { max_segments };
        if let Some(&index) = self.open.get(&flow) {
            let group = &mut self.groups[index];
            if !group.fits(data.len(), max_segments.max(1)) {
                self.datagrams -= group.count;
                send_run(
                    &mut self.stats,
                    &mut self.gso_off,
                    std::slice::from_ref(group),
                    group.segment(),
                    wire,
                );
                group.buf.clear();
                group.count = 0;
                group.closed = false;
            }
            group.add(data);
            return;
        }
        let mut group = Group {
            flow,
            segment: 0,
            count: 0,
            closed: false,
            buf: self.spare.pop().unwrap_or_default(),
        };
        group.add(data);
        self.open.insert(flow, self.groups.len());
        self.groups.push(group);
    }

    /// Sends every waiting datagram: one sendmmsg per socket and segment
    /// size (of up to [`MMSG`] groups).
    pub fn flush(&mut self, wire: &mut impl Wire) {
        if self.groups.is_empty() {
            return;
        }
        self.open.clear();
        self.datagrams = 0;
        let mut groups = std::mem::take(&mut self.groups);
        // Each flow has one group, so sorting reorders no flow.
        groups.sort_unstable_by_key(|group| (group.flow.from_port, group.segment()));
        let mut rest = &groups[..];
        while let Some(first) = rest.first() {
            let key = (first.flow.from_port, first.segment());
            let run = rest
                .iter()
                .take_while(|group| (group.flow.from_port, group.segment()) == key)
                .count();
            for chunk in rest[..run].chunks(MMSG) {
                send_run(&mut self.stats, &mut self.gso_off, chunk, key.1, wire);
            }
            rest = &rest[run..];
        }
        for mut group in groups.drain(..) {
            if self.spare.len() < SPARE {
                group.buf.clear();
                self.spare.push(group.buf);
            }
        }
        self.groups = groups;
    }
}

/// Sends `groups` (one socket, one segment size, at most [`MMSG`]): a full
/// send buffer drops them all, as a NIC's full queue would; another error
/// drops the group it hit, and the rest go on. A GSO send the kernel
/// refuses turns GSO off (`gso_off`): the group it hit and the rest are
/// sent again a datagram per message.
fn send_run(
    stats: &mut OutboxStats,
    gso_off: &mut bool,
    groups: &[Group],
    segment: Option<u16>,
    wire: &mut impl Wire,
) {
    let Some(first) = groups.first() else {
        return;
    };
    let from_port = first.flow.from_port;
    if segment.is_some() && *gso_off {
        // Grouped before GSO was refused.
        for group in groups {
            send_apart(stats, from_port, group, wire);
        }
        return;
    }
    let mut rest = groups;
    while let Some(first) = rest.first() {
        stats.send_calls += 1;
        match wire.send(from_port, rest, segment) {
            Ok(sent) if sent > 0 => rest = rest.get(sent..).unwrap_or_default(),
            Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
            Ok(_) => {
                stats.drops[SendDrop::BufferFull as usize] += count(rest);
                return;
            }
            Err(error) if error.kind() == io::ErrorKind::WouldBlock => {
                stats.drops[SendDrop::BufferFull as usize] += count(rest);
                return;
            }
            Err(error) if segment.is_some() && gso_refused(&error) => {
                tracing::warn!(
                    %error,
                    "GSO send refused; this worker sends a datagram per message from now on"
                );
                *gso_off = true;
                for group in rest {
                    send_apart(stats, from_port, group, wire);
                }
                return;
            }
            Err(error) => {
                tracing::debug!(to = %first.flow.to, %error, "send failed");
                stats.drops[SendDrop::Error as usize] += first.count as u64;
                rest = &rest[1..];
            }
        }
    }
}

/// What the kernel answers a GSO send that the route's device cannot take
/// (EIO: no checksum offload; EINVAL: a segment the path cannot carry, or
/// no GSO at all); quinn-udp reads it the same way.
fn gso_refused(error: &io::Error) -> bool {
    use nix::errno::Errno;
    matches!(
        error.raw_os_error().map(Errno::from_raw),
        Some(Errno::EIO | Errno::EINVAL)
    )
}

/// Sends a GSO group's datagrams without GSO, a message each (in sendmmsg
/// calls of up to [`MMSG`]); errors as in [`send_run`], per datagram.
fn send_apart(
    stats: &mut OutboxStats,
    from_port: Option<u16>,
    group: &Group,
    wire: &mut impl Wire,
) {
    // Only a lone empty datagram has segment 0, and it never uses GSO.
    let segment = group.segment.max(1);
    let data = &group.buf[..];
    let mut offset = 0;
    while offset < data.len() {
        stats.send_calls += 1;
        match wire.send_apart(from_port, group.flow.to, &data[offset..], segment) {
            Ok(sent) if sent > 0 => offset = data.len().min(offset + sent * segment),
            Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
            Ok(_) => {
                let left = (data.len() - offset).div_ceil(segment);
                stats.drops[SendDrop::BufferFull as usize] += left as u64;
                return;
            }
            Err(error) if error.kind() == io::ErrorKind::WouldBlock => {
                let left = (data.len() - offset).div_ceil(segment);
                stats.drops[SendDrop::BufferFull as usize] += left as u64;
                return;
            }
            Err(error) => {
                tracing::debug!(to = %group.flow.to, %error, "send failed");
                stats.drops[SendDrop::Error as usize] += 1;
                offset = data.len().min(offset + segment);
            }
        }
    }
}

fn count(groups: &[Group]) -> u64 {
    groups.iter().map(|group| group.count as u64).sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One recorded send call: the socket, the segment size and each
    /// message's destination with its datagrams.
    type Call = (Option<u16>, Option<u16>, Vec<(SocketAddr, Vec<Vec<u8>>)>);

    /// A wire that records what would have been sent, cutting GSO
    /// messages as the kernel does; it refuses calls from `full` on, and
    /// the first `refuse_gso` GSO calls with EIO.
    #[derive(Default)]
    struct Record {
        calls: Vec<Call>,
        full: Option<usize>,
        refuse_gso: usize,
    }

    impl Wire for Record {
        fn send(
            &mut self,
            from_port: Option<u16>,
            groups: &[Group],
            segment: Option<u16>,
        ) -> io::Result<usize> {
            if self.full.is_some_and(|full| self.calls.len() >= full) {
                return Err(io::ErrorKind::WouldBlock.into());
            }
            if segment.is_some() && self.refuse_gso > 0 {
                self.refuse_gso -= 1;
                return Err(io::Error::from_raw_os_error(nix::libc::EIO));
            }
            let messages = groups
                .iter()
                .map(|group| {
                    // An empty message is one empty datagram; GSO with
                    // segment size 0 does not exist (the kernel refuses it).
                    let datagrams = match segment {
                        _ if group.buf.is_empty() => vec![Vec::new()],
                        None => vec![group.buf.clone()],
                        Some(0) => panic!("GSO with segment size 0"),
                        Some(size) => group
                            .buf
                            .chunks(usize::from(size))
                            .map(<[u8]>::to_vec)
                            .collect(),
                    };
                    (group.flow.to, datagrams)
                })
                .collect();
            self.calls.push((from_port, segment, messages));
            Ok(groups.len())
        }

        /// Records one message per datagram, at most [`MMSG`].
        fn send_apart(
            &mut self,
            from_port: Option<u16>,
            to: SocketAddr,
            data: &[u8],
            segment: usize,
        ) -> io::Result<usize> {
            if self.full.is_some_and(|full| self.calls.len() >= full) {
                return Err(io::ErrorKind::WouldBlock.into());
            }
            let messages: Vec<(SocketAddr, Vec<Vec<u8>>)> = data
                .chunks(segment)
                .take(MMSG)
                .map(|datagram| (to, vec![datagram.to_vec()]))
                .collect();
            let sent = messages.len();
            self.calls.push((from_port, None, messages));
            Ok(sent)
        }
    }

    fn flow(port: Option<u16>, to: u16) -> Flow {
        Flow {
            from_port: port,
            to: SocketAddr::from(([127, 0, 0, 1], to)),
        }
    }

    /// Datagram `n` of a flow: `size` bytes, the first two the number.
    fn datagram(n: u16, size: usize) -> Vec<u8> {
        let mut data = vec![0x5A; size];
        data[..2].copy_from_slice(&n.to_be_bytes());
        data
    }

    /// What left per flow, in order.
    fn delivered(calls: &[Call]) -> HashMap<Flow, Vec<Vec<u8>>> {
        let mut flows: HashMap<Flow, Vec<Vec<u8>>> = HashMap::new();
        for (from_port, _, messages) in calls {
            for (to, datagrams) in messages {
                let flow = Flow {
                    from_port: *from_port,
                    to: *to,
                };
                flows
                    .entry(flow)
                    .or_default()
                    .extend(datagrams.iter().cloned());
            }
        }
        flows
    }

    /// Eight clients, each sending one datagram per call, interleave in a
    /// receive batch; each one's relayed socket sends its datagrams in one
    /// GSO send, in order.
    #[test]
    fn interleaved_flows_leave_in_order_with_one_send_each() {
        let mut outbox = Outbox::default();
        let mut wire = Record::default();
        let flows: Vec<Flow> = (0..8).map(|i| flow(Some(40_000 + i), 9000)).collect();
        for n in 0..4 {
            for flow in &flows {
                outbox.push(*flow, &datagram(n, 1200), 64, &mut wire);
            }
        }
        assert!(wire.calls.is_empty(), "nothing leaves before the flush");
        assert_eq!(outbox.datagrams(), 32);
        outbox.flush(&mut wire);
        assert_eq!(outbox.datagrams(), 0);
        assert_eq!(wire.calls.len(), 8, "one system call per relayed socket");
        assert_eq!(outbox.stats.send_calls, 8);
        let sent = delivered(&wire.calls);
        for flow in &flows {
            let expected: Vec<Vec<u8>> = (0..4).map(|n| datagram(n, 1200)).collect();
            assert_eq!(sent[flow], expected, "{flow:?}");
        }
        assert!(
            wire.calls
                .iter()
                .all(|(_, segment, _)| *segment == Some(1200))
        );
    }

    /// Replies and peers' data to many clients from the listening socket
    /// leave in one sendmmsg per segment size; a flow whose sizes vary
    /// keeps its order (a shorter datagram ends a group, a longer one
    /// sends it first).
    #[test]
    fn the_listening_socket_sends_to_many_clients_at_once_in_per_flow_order() {
        let mut outbox = Outbox::default();
        let mut wire = Record::default();
        let clients: Vec<Flow> = (0..100).map(|i| flow(None, 10_000 + i)).collect();
        // Client 0's flow: 500, 500, 300 (ends the group), 500 (new group),
        // 900 (bigger: sends the open group first), 900.
        let sizes_0 = [500, 500, 300, 500, 900, 900];
        for (n, size) in sizes_0.iter().enumerate() {
            for (i, client) in clients.iter().enumerate() {
                let size = if i == 0 { *size } else { 700 };
                outbox.push(*client, &datagram(n as u16, size), 64, &mut wire);
            }
        }
        let early = wire.calls.len();
        assert_eq!(
            early, 2,
            "client 0's groups that ended early, one call each"
        );
        outbox.flush(&mut wire);
        let sent = delivered(&wire.calls);
        let expected_0: Vec<Vec<u8>> = sizes_0
            .iter()
            .enumerate()
            .map(|(n, size)| datagram(n as u16, *size))
            .collect();
        assert_eq!(sent[&clients[0]], expected_0);
        for client in &clients[1..] {
            let expected: Vec<Vec<u8>> = (0..6).map(|n| datagram(n, 700)).collect();
            assert_eq!(sent[client], expected);
        }
        // 99 groups of 700 bytes: two sendmmsg calls (64 + 35); client 0's
        // last group (900) a third.
        assert_eq!(wire.calls.len() - early, 3);
    }

    #[test]
    fn a_group_stops_at_the_segment_limit_and_below_64_kib() {
        let mut outbox = Outbox::default();
        let mut wire = Record::default();
        let one = flow(Some(40_000), 9000);
        for n in 0..10 {
            outbox.push(one, &datagram(n, 100), 4, &mut wire);
        }
        outbox.flush(&mut wire);
        let counts: Vec<usize> = wire.calls.iter().map(|(_, _, m)| m[0].1.len()).collect();
        assert_eq!(counts, vec![4, 4, 2]);

        let mut wire = Record::default();
        for n in 0..60 {
            outbox.push(one, &datagram(n, 1400), 64, &mut wire);
        }
        outbox.flush(&mut wire);
        let counts: Vec<usize> = wire.calls.iter().map(|(_, _, m)| m[0].1.len()).collect();
        assert_eq!(counts, vec![46, 14], "46 * 1400 <= 64512 < 47 * 1400");
        let sent = delivered(&wire.calls);
        assert_eq!(sent[&one].len(), 60);
        assert!(
            sent[&one]
                .iter()
                .enumerate()
                .all(|(n, d)| d[..2] == (n as u16).to_be_bytes())
        );
    }

    /// An empty datagram (ChannelData of length 0) joins no group: GSO
    /// has no empty segment, so it would vanish uncounted.
    #[test]
    fn empty_datagrams_stand_alone() {
        let one = flow(Some(40_000), 9000);
        for sizes in [
            &[100, 0][..],
            &[0, 0],
            &[0, 100],
            &[100, 0, 100, 0, 0, 100, 100],
        ] {
            let mut outbox = Outbox::default();
            let mut wire = Record::default();
            for size in sizes {
                let data = vec![0x5A; *size];
                outbox.push(one, &data, 64, &mut wire);
            }
            outbox.flush(&mut wire);
            let sent = delivered(&wire.calls);
            let lens: Vec<usize> = sent[&one].iter().map(Vec::len).collect();
            assert_eq!(lens, sizes, "every datagram, empty ones too, in order");
            assert_eq!(outbox.stats.drops, [0; SendDrop::COUNT]);
            for (_, segment, messages) in &wire.calls {
                for (_, datagrams) in messages {
                    if datagrams.iter().any(Vec::is_empty) {
                        assert_eq!((segment, datagrams.len()), (&None, 1), "{sizes:?}");
                    }
                }
            }
        }
    }

    /// A GSO send the kernel refuses (EIO) is sent again a datagram per
    /// message, and so is every later group: nothing is lost, and GSO stays
    /// off.
    #[test]
    fn a_refused_gso_send_is_sent_again_without_gso() {
        let mut outbox = Outbox::default();
        let mut wire = Record {
            refuse_gso: 1,
            ..Record::default()
        };
        // The listening socket to three clients (their groups in one GSO
        // sendmmsg: refused, then each group apart) and two relayed
        // sockets (apart at once). 100 datagrams per group (a kernel may
        // take 128): more than one sendmmsg's worth each.
        let clients: Vec<Flow> = (0..3).map(|i| flow(None, 10_000 + i)).collect();
        let relayed: Vec<Flow> = (0..2).map(|i| flow(Some(40_000 + i), 9000)).collect();
        for n in 0..100 {
            for flow in clients.iter().chain(&relayed) {
                outbox.push(*flow, &datagram(n, 500), 100, &mut wire);
            }
        }
        assert!(wire.calls.is_empty());
        outbox.flush(&mut wire);
        assert!(outbox.gso_off);
        assert_eq!(outbox.stats.drops, [0; SendDrop::COUNT]);
        assert_eq!(outbox.datagrams(), 0);
        let sent = delivered(&wire.calls);
        let expected: Vec<Vec<u8>> = (0..100).map(|n| datagram(n, 500)).collect();
        for flow in clients.iter().chain(&relayed) {
            assert_eq!(sent[flow], expected, "{flow:?}");
        }
        // Five groups, each in two plain sendmmsg calls (64 + 36), and the
        // refused call.
        assert!(wire.calls.iter().all(|(_, segment, _)| segment.is_none()));
        assert_eq!(wire.calls.len(), 10);
        assert_eq!(outbox.stats.send_calls, 11);

        // Later pushes no longer group.
        let calls = wire.calls.len();
        for n in 0..3 {
            outbox.push(relayed[0], &datagram(n, 500), 100, &mut wire);
        }
        outbox.flush(&mut wire);
        assert!(wire.calls[calls..].iter().all(|(_, s, _)| s.is_none()));
        assert_eq!(wire.calls.len() - calls, 3);
        assert_eq!(outbox.stats.drops, [0; SendDrop::COUNT]);
    }

    /// A full send buffer drops the datagrams of that call (counted), and
    /// the outbox is empty and usable after.
    #[test]
    fn a_full_send_buffer_drops_and_counts() {
        let mut outbox = Outbox::default();
        let mut wire = Record {
            full: Some(0),
            ..Record::default()
        };
        for i in 0..3 {
            for n in 0..5 {
                outbox.push(
                    flow(Some(40_000 + i), 9000),
                    &datagram(n, 100),
                    64,
                    &mut wire,
                );
            }
        }
        outbox.flush(&mut wire);
        assert_eq!(outbox.stats.drops[SendDrop::BufferFull as usize], 15);
        assert_eq!(outbox.datagrams(), 0);
        wire.full = None;
        outbox.push(flow(None, 1), &datagram(0, 10), 64, &mut wire);
        outbox.flush(&mut wire);
        assert_eq!(delivered(&wire.calls)[&flow(None, 1)].len(), 1);
    }
}
