//! The tunnel interface: a TUN device carrying the device's tunnel addresses,
//! MTU 1280 (docs/architecture.md, address plan), up, with offloads where the
//! kernel has them (docs/architecture.md, performance): with a virtio-net
//! header the kernel hands over TCP segments of up to 64 KiB in one read (split
//! here into MTU-sized packets) and takes coalesced ones in one write (GRO), so
//! one system call moves dozens of packets.

use std::io::{self, IoSlice};
use std::net::{Ipv4Addr, Ipv6Addr};

use tun_rs::{GROTable, IDEAL_BATCH_SIZE, VIRTIO_NET_HDR_LEN};

/// The tunnel MTU: fits inside any path that carries IPv6's minimum after
/// WireGuard's 32 bytes and the outer headers.
pub const MTU: u16 = 1280;
/// Headroom before each packet in the batch buffers (the virtio-net header
/// goes there on writes).
pub const HEADROOM: usize = VIRTIO_NET_HDR_LEN;
/// Room per packet buffer: one MTU-sized packet and then some (a packet
/// bigger than this is not one of the tunnel's).
const PACKET_ROOM: usize = HEADROOM + 2048;
/// Packets per batch buffer set.
pub const TUN_BATCH: usize = IDEAL_BATCH_SIZE;

#[derive(Debug, thiserror::Error)]
pub enum TunError {
    #[error("cannot create the tunnel interface {name:?} (needs root and /dev/net/tun): {source}")]
    Create { name: String, source: io::Error },
    #[error("tunnel interface {name:?}: {source}")]
    Setup { name: String, source: io::Error },
}

/// The device's addresses on the tunnel interface, with the prefix each
/// gets (a gateway takes the whole device range so replies to clients route
/// into the tunnel; a client takes a host route).
#[derive(Clone, Copy, Debug)]
pub struct TunAddresses {
    pub ipv4: Ipv4Addr,
    pub ipv4_prefix: u8,
    pub ipv6: Ipv6Addr,
    pub ipv6_prefix: u8,
}

pub struct Tun {
    device: tun_rs::AsyncDevice,
    name: String,
    index: u32,
    offload: bool,
}

/// Buffers for reading: a GSO read lands in `original` and is split into
/// `packets`.
pub struct TunReader {
    original: Vec<u8>,
    packets: Vec<Vec<u8>>,
    sizes: Vec<usize>,
}

impl Default for TunReader {
    fn default() -> Self {
        TunReader {
            original: vec![0; VIRTIO_NET_HDR_LEN + 65_535],
            packets: vec![vec![0; PACKET_ROOM]; TUN_BATCH],
            sizes: vec![0; TUN_BATCH],
        }
    }
}

impl TunReader {
    /// Packet `i` of the last read.
    pub fn packet_mut(&mut self, i: usize) -> &mut [u8] {
        let size = self.sizes[i];
        &mut self.packets[i][HEADROOM..HEADROOM + size]
    }
}

/// Packets gathered for one write (coalesced by GRO where possible).
pub struct TunWriter {
    packets: Vec<Vec<u8>>,
    used: usize,
    gro: GROTable,
}

/// Room a coalesced packet may grow to: GRO only coalesces into a buffer
/// whose capacity already holds the result (it never reallocates).
const COALESCED_ROOM: usize = HEADROOM + 65_535;

impl Default for TunWriter {
    fn default() -> Self {
        TunWriter {
            packets: (0..TUN_BATCH)
                .map(|_| {
                    let mut packet = Vec::with_capacity(2 * HEADROOM + COALESCED_ROOM);
                    packet.resize(PACKET_ROOM, 0);
                    packet
                })
                .collect(),
            used: 0,
            gro: GROTable::default(),
        }
    }
}

impl TunWriter {
    /// Room for the next packet (after the headroom); `None` when full
    /// (write first).
    pub fn slot(&mut self) -> Option<&mut [u8]> {
        let buffer = self.packets.get_mut(self.used)?;
        if buffer.len() < PACKET_ROOM {
            buffer.resize(PACKET_ROOM, 0);
        }
        Some(&mut buffer[HEADROOM..])
    }

    /// The slot holds a packet of `length` bytes.
    pub fn commit(&mut self, length: usize) {
        if let Some(buffer) = self.packets.get_mut(self.used) {
            buffer.truncate(HEADROOM + length);
            self.used += 1;
        }
    }

    /// Copies a packet in; false when full.
    pub fn push(&mut self, packet: &[u8]) -> bool {
        let Some(slot) = self.slot() else {
            return false;
        };
        let Some(target) = slot.get_mut(..packet.len()) else {
            return true;
        };
        target.copy_from_slice(packet);
        self.commit(packet.len());
        true
    }

    pub fn is_empty(&self) -> bool {
        self.used == 0
    }

    /// Hands each gathered packet to `take` and empties the writer (a
    /// userspace network stack takes them instead of a TUN).
    pub fn take_each(&mut self, mut take: impl FnMut(&[u8])) {
        for packet in &self.packets[..self.used] {
            take(packet.get(HEADROOM..).unwrap_or_default());
        }
        self.used = 0;
    }

    pub fn is_full(&self) -> bool {
        self.used >= self.packets.len()
    }
}

impl Tun {
    /// Creates the interface `name` with `addresses` and brings it up, with
    /// offloads if the kernel takes them.
    pub fn create(name: &str, addresses: TunAddresses) -> Result<Tun, TunError> {
        let build = |offload: bool| {
            tun_rs::DeviceBuilder::new()
                .name(name)
                .mtu(MTU)
                .ipv4(addresses.ipv4, addresses.ipv4_prefix, None)
                .ipv6(addresses.ipv6, addresses.ipv6_prefix)
                .offload(offload)
                .build_async()
        };
        let device = match build(true) {
            Ok(device) => device,
            Err(error) => {
                tracing::info!(%error, "no TUN offloads here; one packet per read");
                build(false).map_err(|source| TunError::Create {
                    name: name.to_string(),
                    source,
                })?
            }
        };
        let setup = |source| TunError::Setup {
            name: name.to_string(),
            source,
        };
        let index = device.if_index().map_err(setup)?;
        let name = device.name().map_err(setup)?;
        let offload = device.tcp_gso();
        Ok(Tun {
            device,
            name,
            index,
            offload,
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The interface index, for routes.
    pub fn index(&self) -> u32 {
        self.index
    }

    /// Whether reads and writes carry segmentation offloads.
    pub fn offload(&self) -> bool {
        self.offload
    }

    /// Waits until a packet can be read.
    pub async fn readable(&self) -> io::Result<()> {
        self.device.readable().await
    }

    /// Reads what is waiting: one read, split into packets (0 if nothing).
    pub fn try_read(&self, reader: &mut TunReader) -> io::Result<usize> {
        let TunReader {
            original,
            packets,
            sizes,
        } = reader;
        match self
            .device
            .try_recv_multiple(original, packets, sizes, HEADROOM)
        {
            Ok(count) => Ok(count),
            Err(error) if error.kind() == io::ErrorKind::WouldBlock => Ok(0),
            Err(error) => Err(error),
        }
    }

    /// Writes the gathered packets (coalesced where possible) and empties
    /// the writer.
    pub async fn write(&self, writer: &mut TunWriter) -> io::Result<()> {
        if writer.used == 0 {
            return Ok(());
        }
        let used = writer.used;
        writer.used = 0;
        let result = self
            .device
            .send_multiple(&mut writer.gro, &mut writer.packets[..used], HEADROOM)
            .await;
        match result {
            Ok(_) => Ok(()),
            // A full queue drops the batch, as a NIC would.
            Err(error) if error.kind() == io::ErrorKind::WouldBlock => Ok(()),
            Err(error) => Err(error),
        }
    }

    /// One packet now (ICMP replies, the odd packet outside a batch). A full
    /// queue drops it rather than stall the loop.
    pub fn send(&self, packet: &[u8]) -> io::Result<usize> {
        let result = if self.offload {
            // A zero header: no offload asked for this one.
            let header = [0u8; VIRTIO_NET_HDR_LEN];
            self.device
                .try_send_vectored(&[IoSlice::new(&header), IoSlice::new(packet)])
        } else {
            self.device.try_send(packet)
        };
        match result {
            Err(error) if error.kind() == io::ErrorKind::WouldBlock => Ok(0),
            other => other,
        }
    }
}
