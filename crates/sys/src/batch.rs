//! Batched UDP for the data path (docs/architecture.md, performance): one
//! system call moves many datagrams. Receiving uses recvmmsg and UDP GRO (a
//! "datagram" from the kernel may be several of the same size back to back,
//! split at its stride); sending groups datagrams to one destination into a GSO
//! batch, sent with one sendmsg. `quinn-udp` does the socket options and
//! control messages; this module keeps the buffers.

use std::io::{self, IoSliceMut};
use std::net::SocketAddr;

use quinn_udp::{RecvMeta, Transmit, UdpSocketState};
use tokio::io::Interest;

use crate::metrics::Tally;

/// Receive slots per system call.
pub const BATCH: usize = 16;
/// Room per slot: a GRO batch is at most 64 KiB.
pub const SLOT: usize = 65_536;
/// A GSO batch stays below this many bytes (the kernel's limit is 64 KiB).
const GSO_BYTES: usize = 60_000;

/// The tunnel socket with its quinn-udp state.
pub struct UdpBatch {
    socket: tokio::net::UdpSocket,
    state: UdpSocketState,
    /// An IPv6 socket (dual-stack): IPv4 destinations go as v4-mapped
    /// addresses.
    v6: bool,
}

/// Where received datagrams land.
pub struct RecvBuffers {
    buf: Vec<u8>,
    metas: [RecvMeta; BATCH],
}

impl Default for RecvBuffers {
    fn default() -> Self {
        RecvBuffers {
            buf: vec![0; BATCH * SLOT],
            metas: [RecvMeta::default(); BATCH],
        }
    }
}

impl RecvBuffers {
    /// The datagrams of the last `received` slots, GRO batches split at
    /// their stride.
    pub fn datagrams(&self, received: usize) -> impl Iterator<Item = (SocketAddr, &[u8])> + '_ {
        datagrams(&self.buf, &self.metas[..received.min(BATCH)], SLOT)
    }
}

/// The datagrams of a receive batch whose slot `i` starts at `i * slot` in
/// `buf`, GRO batches split at their stride.
pub fn datagrams<'a>(
    buf: &'a [u8],
    metas: &'a [RecvMeta],
    slot: usize,
) -> impl Iterator<Item = (SocketAddr, &'a [u8])> + 'a {
    metas.iter().enumerate().flat_map(move |(index, meta)| {
        let start = index * slot;
        let data = buf.get(start..start + meta.len).unwrap_or_default();
        let stride = if meta.stride == 0 {
            meta.len
        } else {
            meta.stride
        };
        // A dual-stack socket names IPv4 peers by v4-mapped addresses.
        let source = SocketAddr::new(meta.addr.ip().to_canonical(), meta.addr.port());
        data.chunks(stride.max(1))
            .map(move |datagram| (source, datagram))
    })
}

/// Datagrams to one destination, same size (the last may be shorter),
/// waiting to leave in one GSO send.
#[derive(Default)]
pub struct GsoQueue {
    to: Option<SocketAddr>,
    segment: usize,
    count: usize,
    /// A shorter datagram ended the batch.
    closed: bool,
    buf: Vec<u8>,
}

impl GsoQueue {
    /// Appends `data` for `to`; false if it does not fit the pending batch
    /// (send the queue, then push again).
    pub fn push(&mut self, to: SocketAddr, data: &[u8], max_segments: usize) -> bool {
        if self.count > 0
            && (self.to != Some(to)
                || self.closed
                || data.len() > self.segment
                || self.count >= max_segments
                || self.buf.len() + data.len() > GSO_BYTES)
        {
            return false;
        }
        if self.count == 0 {
            self.to = Some(to);
            self.segment = data.len();
        } else if data.len() < self.segment {
            self.closed = true;
        }
        self.buf.extend_from_slice(data);
        self.count += 1;
        true
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    fn clear(&mut self) {
        self.to = None;
        self.count = 0;
        self.closed = false;
        self.buf.clear();
    }
}

impl UdpBatch {
    pub fn new(socket: tokio::net::UdpSocket) -> io::Result<Self> {
        let state = UdpSocketState::new((&socket).into())?;
        let v6 = socket.local_addr()?.is_ipv6();
        Ok(UdpBatch { socket, state, v6 })
    }

    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.socket.local_addr()
    }

    /// How many datagrams one GSO send may carry (1 without GSO).
    pub fn max_segments(&self) -> usize {
        self.state.max_gso_segments().max(1)
    }

    /// Waits until datagrams are waiting.
    pub async fn readable(&self) -> io::Result<()> {
        self.socket.readable().await
    }

    /// Receives what is waiting (0 if nothing is).
    pub fn try_recv(&self, buffers: &mut RecvBuffers) -> io::Result<usize> {
        let RecvBuffers { buf, metas } = buffers;
        let mut chunks = buf.chunks_exact_mut(SLOT);
        let mut slices: [IoSliceMut<'_>; BATCH] =
            std::array::from_fn(|_| IoSliceMut::new(chunks.next().unwrap_or_default()));
        match self.socket.try_io(Interest::READABLE, || {
            self.state.recv((&self.socket).into(), &mut slices, metas)
        }) {
            Ok(received) => Ok(received),
            Err(error) if error.kind() == io::ErrorKind::WouldBlock => Ok(0),
            Err(error) => Err(error),
        }
    }

    /// Queues a datagram, sending the pending batch first if it does not
    /// fit.
    pub fn queue(&self, queue: &mut GsoQueue, to: SocketAddr, data: &[u8], tally: &mut Tally) {
        let max = self.max_segments();
        if !queue.push(to, data, max) {
            self.flush(queue, tally);
            queue.push(to, data, max);
        }
    }

    /// Sends the pending batch in one system call; a full send buffer drops
    /// it (counted), as a NIC would.
    pub fn flush(&self, queue: &mut GsoQueue, tally: &mut Tally) {
        let Some(to) = queue.to else {
            return;
        };
        let destination = match to {
            SocketAddr::V4(v4) if self.v6 => {
                SocketAddr::new(v4.ip().to_ipv6_mapped().into(), v4.port())
            }
            _ => to,
        };
        let transmit = Transmit {
            destination,
            ecn: None,
            contents: &queue.buf,
            segment_size: (queue.count > 1).then_some(queue.segment),
            src_ip: None,
        };
        match self.state.try_send((&self.socket).into(), &transmit) {
            Ok(()) => tally.datagrams_sent += queue.count as u64,
            Err(error) => {
                if error.kind() != io::ErrorKind::WouldBlock {
                    tracing::debug!(%to, %error, "send failed");
                }
                tally.send_dropped += queue.count as u64;
            }
        }
        queue.clear();
    }

    /// One datagram now (control traffic: STUN, TURN, handshakes).
    pub fn send_one(&self, to: SocketAddr, data: &[u8], tally: &mut Tally) {
        let mut queue = GsoQueue::default();
        queue.push(to, data, 1);
        self.flush(&mut queue, tally);
    }

    /// One datagram with a hop limit of its own (an opener that must die
    /// on the internet). The socket's own limit is set around the send and
    /// put back: the device loop is the socket's only sender.
    pub fn send_with_ttl(&self, to: SocketAddr, data: &[u8], ttl: u8, tally: &mut Tally) {
        let socket = socket2::SockRef::from(&self.socket);
        // By the destination's family: an IPv4 datagram from a dual-stack
        // socket takes IP_TTL (Linux takes IP-level options on IPv6
        // sockets for their v4-mapped traffic).
        let v6 = to.is_ipv6();
        let before = if v6 {
            socket.unicast_hops_v6()
        } else {
            socket.ttl_v4()
        };
        let set = |hops: u32| {
            if v6 {
                socket.set_unicast_hops_v6(hops)
            } else {
                socket.set_ttl_v4(hops)
            }
        };
        let Ok(before) = before else {
            return;
        };
        if let Err(error) = set(u32::from(ttl)) {
            tracing::debug!(%error, "cannot set a datagram's TTL");
            return;
        }
        self.send_one(to, data, tally);
        if let Err(error) = set(before) {
            tracing::warn!(%error, "cannot restore the socket's TTL");
        }
    }
}

#[cfg(test)]
mod tests {
    /// One dual-stack socket serves both families: an IPv4 peer's datagram
    /// comes out with its IPv4 address (not v4-mapped), and the answer to
    /// that address reaches it; an IPv6 peer likewise.
    #[tokio::test]
    async fn a_dual_stack_batch_speaks_ipv4_and_ipv6_by_their_own_addresses() {
        let (socket, _, _) = crate::udp::bind_dual_stack(0).unwrap();
        let batch = super::UdpBatch::new(socket).unwrap();
        assert!(batch.local_addr().unwrap().is_ipv6(), "a host with IPv6");
        let port = batch.local_addr().unwrap().port();
        let mut buffers = super::RecvBuffers::default();
        let mut tally = crate::metrics::Tally::default();
        for peer in ["127.0.0.1:0", "[::1]:0"] {
            let client = std::net::UdpSocket::bind(peer).unwrap();
            client
                .set_read_timeout(Some(std::time::Duration::from_secs(2)))
                .unwrap();
            let client_address = client.local_addr().unwrap();
            client
                .send_to(b"hello", SocketAddr::new(client_address.ip(), port))
                .unwrap();
            batch.readable().await.unwrap();
            let count = batch.try_recv(&mut buffers).unwrap();
            let received: Vec<(SocketAddr, Vec<u8>)> = buffers
                .datagrams(count)
                .map(|(from, data)| (from, data.to_vec()))
                .collect();
            assert_eq!(received, vec![(client_address, b"hello".to_vec())]);
            batch.send_one(client_address, b"answer", &mut tally);
            let mut buf = [0u8; 16];
            let (n, _) = client.recv_from(&mut buf).unwrap();
            assert_eq!(&buf[..n], b"answer");
        }
    }

    use super::*;

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([198, 18, 0, 1], port))
    }

    #[test]
    fn a_batch_takes_equal_sizes_to_one_destination_and_one_shorter_last() {
        let mut queue = GsoQueue::default();
        assert!(queue.push(addr(1), &[0; 100], 64));
        assert!(queue.push(addr(1), &[0; 100], 64));
        assert!(!queue.push(addr(2), &[0; 100], 64), "another destination");
        assert!(!queue.push(addr(1), &[0; 101], 64), "a bigger datagram");
        assert!(queue.push(addr(1), &[0; 40], 64), "a shorter last one");
        assert!(
            !queue.push(addr(1), &[0; 40], 64),
            "nothing after the shorter one"
        );
        assert_eq!((queue.count, queue.segment, queue.buf.len()), (3, 100, 240));
        queue.clear();
        assert!(queue.is_empty());
        assert!(queue.push(addr(2), &[0; 10], 1));
        assert!(!queue.push(addr(2), &[0; 10], 1), "max segments");
    }

    #[test]
    fn a_batch_stays_below_the_gso_limit() {
        let mut queue = GsoQueue::default();
        let mut pushed = 0;
        while queue.push(addr(1), &[0; 1312], 1000) {
            pushed += 1;
        }
        assert!(pushed * 1312 <= GSO_BYTES && (pushed + 1) * 1312 > GSO_BYTES);
    }
}
